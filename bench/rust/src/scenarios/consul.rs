//! Scenario 4: propagation on the real Consul agent started by `scripts/registries`
//! (`SD_TEST_CONSUL=host:port`). One instance of a fresh service is registered and
//! deregistered in turn; each time, the time from issuing the agent request to the
//! `DefaultEndpointer` following a `ConsulInstancer` showing it. The loop is sd-consul's own
//! `bench::propagation` (it waits on `Endpointer::changes`); 20 warm-up changes on another
//! service first, as on the Go side.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sd_consul::bench::propagation;
use sd_consul::ConsulRegistry;

use super::emit_propagation;
use crate::Record;

fn skip(why: String) -> Result<(), String> {
    eprintln!("sdkit consul scenario skipped: {why}");
    let mut r = Record::new("consul", 0, 1);
    r.skipped = Some(why);
    r.emit();
    Ok(())
}

pub fn run(scale: usize) -> Result<(), String> {
    let changes = 200 / scale;
    let addr = match std::env::var("SD_TEST_CONSUL") {
        Ok(a) if !a.is_empty() => a,
        _ => {
            return skip(
                "SD_TEST_CONSUL is not set (run: eval \"$(scripts/registries up)\")".into(),
            )
        }
    };
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|sa| TcpStream::connect_timeout(&sa, Duration::from_secs(1)));
    match reachable {
        Some(Ok(_)) => {}
        Some(Err(e)) => return skip(format!("Consul at {addr} is not reachable: {e}")),
        None => return skip(format!("SD_TEST_CONSUL={addr:?} is not host:port")),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let registry =
        ConsulRegistry::from_url(&format!("consul://{addr}")).map_err(|e| e.to_string())?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let service = format!("sdbench-sdkit-{}-{nanos}", std::process::id());
    let timeout = Duration::from_secs(10);
    rt.block_on(propagation(
        &registry,
        &format!("{service}-warm"),
        20,
        timeout,
    ))
    .map_err(|e| format!("warm-up: {e}"))?;
    let samples = rt
        .block_on(propagation(&registry, &service, changes, timeout))
        .map_err(|e| e.to_string())?;
    let lat: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_nanos() as f64)
        .collect();
    let req: Vec<f64> = samples
        .iter()
        .map(|s| s.request.as_nanos() as f64)
        .collect();
    emit_propagation("consul", &lat, &req);
    Ok(())
}
