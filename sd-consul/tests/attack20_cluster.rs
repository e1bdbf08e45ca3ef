//! attack20: `consul://a,b,c` (servers directly) against the real three-server cluster
//! (`scripts/registries up consul-cluster`), for what only a real agent shows: a Consul
//! agent keeps the services registered through its API in its data directory and restores
//! them when it starts again. Uses the cluster of `SD_TEST_CONSUL_CLUSTER` (started on
//! demand; `SD_INTEGRATION=0` skips); it kills the leader of the shared cluster, under the
//! cluster's exclusive lock. Faults go through `SD_ATTACK20_SCRIPT` (default: this checkout's
//! `scripts/registries`).

use std::process::Command;
use std::time::{Duration, Instant};

use sd_consul::{Client, ClientConfig, ConsulRegistrar};
use sd_core::{HealthCheck, Instance, Registrar, Registration};
use sd_testkit::cluster::{self, Cluster};

fn script(args: &[&str]) {
    let path = std::env::var("SD_ATTACK20_SCRIPT")
        .unwrap_or_else(|_| sd_testkit::script_path().display().to_string());
    let out = Command::new("bash").arg(&path).args(args).output().unwrap();
    eprintln!(
        "$ registries {} -> {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "registries {args:?}");
}

/// The nodes the catalog lists `service` on (asked of `addr`).
async fn catalog_nodes(addr: &str, service: &str) -> Option<Vec<String>> {
    let url = format!("http://{addr}/v1/catalog/service/{service}");
    let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|e| e["Node"].as_str().map(str::to_string))
            .collect(),
    )
}

/// FINDING (medium, real cluster): the servers-directly set-up, the leader dies, the
/// registrar moves to the next server and registers there; the application shuts down
/// while the dead server is still down: `deregister()` returns `Ok` (the dead one is "best
/// effort"). The dead server comes back, restores the registration from its data directory
/// and the catalog lists the instance again, critical, on that node, for good: the
/// registration has no `deregister_critical_after` (the default), so Consul never reaps it
/// and the registrar, which believes itself deregistered, never comes back for it (a second
/// `deregister()` is a no-op). Fix: keep the unreached agents and make `deregister` return
/// an error naming them (so a retry reaches them), or keep trying them in the background
/// for a while; and register with a `DeregisterCriticalServiceAfter` by default when a
/// fallback exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_restores_the_registration_after_deregister() {
    let Some(addrs) = cluster::require(Cluster::Consul) else {
        return;
    };
    let _guard = cluster::exclusive(Cluster::Consul);
    script(&["heal", "consul-cluster"]);
    let t0 = Instant::now();
    let leader = loop {
        if let Some(m) = cluster::leader(Cluster::Consul).await.unwrap() {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The leader first: the client talks to it.
    let mut ordered = addrs.clone();
    ordered.rotate_left(leader.index() - 1);
    let client = Client::new(
        ClientConfig::new(ordered[0].clone())
            .fallback(ordered[1..].to_vec())
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let service = sd_testkit::unique_name("attack20-restored");
    let registrar = ConsulRegistrar::new(
        client.clone(),
        Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 27999)
                .id(format!("{service}-1"))
                .build(),
        )
        .check(HealthCheck::Ttl(Duration::from_secs(3))),
    )
    .unwrap();
    registrar.register().await.unwrap();
    script(&["kill", &leader.name()]);
    let mut reregs = registrar.watch_reregistrations();
    tokio::time::timeout(Duration::from_secs(60), reregs.wait_for(|n| *n >= 1))
        .await
        .expect("registered again at another server")
        .unwrap();
    let moved_to = client.current_agent();
    // Shutdown while the old leader is down.
    let first = registrar.deregister().await;
    script(&["heal", &leader.name()]);
    // Give the restarted server time to restore and sync its services, and the application
    // time to retry.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let second = registrar.deregister().await;
    let other = &ordered[moved_to];
    let mut nodes = None;
    for _ in 0..20 {
        nodes = catalog_nodes(other, &service).await;
        if nodes.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nodes = nodes.expect("catalog answered");
    // Clean up whatever is left, directly at the old leader (index 0).
    let _ = client.deregister_at(0, &format!("{service}-1")).await;
    assert!(
        nodes.is_empty(),
        "deregister returned {first:?}, then {second:?}; 8 s after the old leader came back \
         the catalog lists {service} on {nodes:?}"
    );
}
