//! Scenario 1: round robin pick. Not measured yet: it needs `sd_lb::RoundRobin`, which has
//! not landed in the workspace.

use crate::Record;

pub fn run(_scale: usize) -> Result<(), String> {
    let mut r = Record::new("pick", 0, 1);
    r.skipped = Some("the sdkit side needs sd-lb, not in the workspace yet".into());
    eprintln!("sdkit pick scenario skipped: sd-lb is not in the workspace yet");
    r.emit();
    Ok(())
}
