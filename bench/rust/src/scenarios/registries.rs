//! Propagation on the real registries started by `scripts/registries`: Consul
//! (`SD_TEST_CONSUL=host:port`), ZooKeeper (`SD_TEST_ZK=host:port`) and etcd 3.4
//! (`SD_TEST_ETCD=host:port`). One instance of a
//! fresh service is registered and deregistered in turn through the backend's registrar;
//! each time, the time from issuing the registrar's call to the `DefaultEndpointer`
//! following the backend's instancer showing it. The loop is sd-testkit's
//! `propagation::propagation` (it waits on `Endpointer::changes`); 20 warm-up changes on
//! another service first, as on the Go side.
//!
//! For ZooKeeper the Go side creates and deletes a plain ephemeral node (go-kit's registrar
//! cannot deregister, ZK-6), while ours goes through `ZkRegistrar`, whose `register()` also
//! sets a watch on its node (one more round trip inside the measured time).
//!
//! For etcd both sides go through their registrar (lease grant, put with the lease,
//! keep-alive; deregister deletes the key) and their instancer watching the prefix: go-kit
//! re-reads the whole prefix on every watch event, ours applies the event itself.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use sd_consul::ConsulRegistry;
use sd_core::Registry;
use sd_etcdv3::EtcdRegistry;
use sd_testkit::propagation::propagation;
use sd_zk::ZkRegistry;

use super::{multi_thread, percentiles, unique_service};
use crate::Record;

fn skip(scenario: &'static str, why: String) {
    eprintln!("sdkit {scenario} scenario skipped: {why}");
    let mut r = Record::new(scenario, 0, 1);
    r.skipped = Some(why);
    r.emit();
}

/// The Consul scenario.
pub fn run(scale: usize) -> Result<(), String> {
    registry_propagation("consul", "SD_TEST_CONSUL", scale, |addr| {
        Ok(Arc::new(
            ConsulRegistry::from_url(&format!("consul://{addr}")).map_err(|e| e.to_string())?,
        ))
    })
}

/// The ZooKeeper scenario.
pub fn run_zk(scale: usize) -> Result<(), String> {
    registry_propagation("zk", "SD_TEST_ZK", scale, |addr| {
        Ok(Arc::new(
            ZkRegistry::from_url(&format!("zk://{addr}/sdbench-sdkit"))
                .map_err(|e| e.to_string())?,
        ))
    })
}

/// The etcd scenario (etcd 3.4, the server `SD_TEST_ETCD` names).
pub fn run_etcd(scale: usize) -> Result<(), String> {
    registry_propagation("etcd", "SD_TEST_ETCD", scale, |addr| {
        Ok(Arc::new(
            EtcdRegistry::from_url(&format!("etcd://{addr}?prefix=/sdbench-sdkit"))
                .map_err(|e| e.to_string())?,
        ))
    })
}

/// The registry address in `env` if it is set and reachable; otherwise reports `scenario`
/// as skipped (one JSON line) and returns `None`.
pub fn registry_addr(scenario: &'static str, env: &str) -> Result<Option<String>, String> {
    let addr = match std::env::var(env) {
        Ok(a) if !a.is_empty() => a,
        _ => {
            skip(
                scenario,
                format!("{env} is not set (run: eval \"$(scripts/registries up)\")"),
            );
            return Ok(None);
        }
    };
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|sa| TcpStream::connect_timeout(&sa, Duration::from_secs(1)));
    match reachable {
        Some(Ok(_)) => return Ok(Some(addr)),
        Some(Err(e)) => skip(scenario, format!("{addr} is not reachable: {e}")),
        None => skip(scenario, format!("{env}={addr:?} is not host:port")),
    }
    Ok(None)
}

fn registry_propagation(
    scenario: &'static str,
    env: &str,
    scale: usize,
    make: impl Fn(&str) -> Result<Arc<dyn Registry>, String>,
) -> Result<(), String> {
    let changes = 200 / scale;
    let Some(addr) = registry_addr(scenario, env)? else {
        return Ok(());
    };
    let rt = multi_thread()?;
    let _guard = rt.enter();
    let registry = make(&addr)?;
    let service = unique_service("sdbench-sdkit");
    let timeout = Duration::from_secs(10);
    rt.block_on(propagation(
        &*registry,
        &format!("{service}-warm"),
        20,
        timeout,
    ))
    .map_err(|e| format!("warm-up: {e}"))?;
    let samples = rt
        .block_on(propagation(&*registry, &service, changes, timeout))
        .map_err(|e| e.to_string())?;
    let lat: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_nanos() as f64)
        .collect();
    let (p50, p99) = percentiles(&lat);
    let req: Vec<f64> = samples
        .iter()
        .map(|s| s.request.as_nanos() as f64)
        .collect();
    let mut r = Record::new(scenario, 1, 1);
    r.ops = Some(lat.len());
    r.ns_per_op = Some(p50);
    r.p50_ns = Some(p50);
    r.p99_ns = Some(p99);
    r.request_p50_ns = Some(percentiles(&req).0);
    r.emit();
    Ok(())
}
