//! Scenario 4: propagation on the real Consul agent. Not measured yet: it needs the
//! `sd-consul` backend, which has not landed in the workspace.

use crate::Record;

pub fn run(_scale: usize) -> Result<(), String> {
    let mut r = Record::new("consul", 0, 1);
    r.skipped = Some("the sdkit side needs sd-consul, not in the workspace yet".into());
    eprintln!("sdkit consul scenario skipped: sd-consul is not in the workspace yet");
    r.emit();
    Ok(())
}
