//! Last-known-good on disk against the real Consul agent of the harness (issue 19), through
//! `sdkit::connect` and its `cache=` option: a client discovers with the cache on; the
//! registry becomes unreachable (a proxy in front of it cuts every connection, so the
//! registry address and hence the snapshot file stay the same, and the shared agent is not
//! disturbed); a new client started then serves the endpoints from disk, marked stale; the
//! registry comes back and the data is fresh again.
#![cfg(feature = "consul")]

use std::path::PathBuf;
use std::time::Duration;

use sd_testkit::proxy::Proxy;
use sd_testkit::{exclusive, require, shared, unique_name, Server};
use sdkit::lb::{Balancer, LbError, RefuseStale, RoundRobin};
use sdkit::{
    BoxError, DefaultEndpointer, Endpointer, Freshness, HealthCheck, Instance, Instancer,
    Registrar, Registration, ServiceQuery, StaleReason,
};

const BOUND: Duration = Duration::from_secs(30);
/// Sent with every request; the shared agent runs without ACLs and ignores it. It must
/// never reach the cache directory.
const TOKEN: &str = "sdkit-lkg-test-secret-token";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.id().to_string())
}

async fn wait_until<E: Send + Sync + 'static>(
    ep: &DefaultEndpointer<E>,
    what: &str,
    pred: impl Fn(&sdkit::Snapshot<E>) -> bool,
) {
    let mut changes = ep.changes();
    tokio::time::timeout(BOUND, async {
        while !pred(&ep.endpoints()) {
            changes.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}; last: {:?}", ep.endpoints()));
}

/// Every file in `dir`, as (name, contents).
fn files(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect()
        })
        .unwrap_or_default()
}

/// A first client: discovers `query` with the cache on, until it sees one instance and the
/// snapshot holding `id` is written; then stops (a process exit).
async fn first_client_writes_the_snapshot(
    url: &str,
    query: &ServiceQuery,
    dir: &TempDir,
    id: &str,
) {
    let first = sdkit::connect(url).unwrap();
    let instancer = first.instancer(query).await.unwrap();
    let ep = DefaultEndpointer::new(&instancer, factory);
    wait_until(&ep, "first client sees the instance", |s| {
        s.get().is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(ep.endpoints().freshness(), &Freshness::Fresh);
    let deadline = tokio::time::Instant::now() + BOUND;
    while !files(&dir.0).iter().any(|(_, body)| body.contains(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshot never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ep.close().await;
    instancer.stop().await;
}

#[tokio::test]
async fn lkg_consul_restart_while_unreachable_serves_disk_then_fresh() {
    let addr = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let dir = TempDir(std::env::temp_dir().join(unique_name("sdkit-lkg-consul")));
    let proxy = Proxy::start(&addr).await;
    let url = format!(
        "consul://{}?wait=1s&timeout=1s&token={TOKEN}&cache={}",
        proxy.addr,
        dir.0.display()
    );
    let service = unique_name("lkg-consul");
    let query = ServiceQuery::new(service.as_str());

    // Registered straight at the agent (not through the proxy), so it stays registered.
    let direct = sdkit::connect(&format!("consul://{addr}")).unwrap();
    let registrar = direct
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 23001).id("lkg-1").build(),
        ))
        .await
        .unwrap();
    registrar.register().await.unwrap();

    // First client: discovers with the cache on, which writes the snapshot.
    first_client_writes_the_snapshot(&url, &query, &dir, "lkg-1").await;
    let written = files(&dir.0);
    assert_eq!(written.len(), 1, "{written:?}");
    let (name, body) = &written[0];
    assert!(
        name.starts_with("k-consul+127.0.0.1%3A") && name.contains(&service),
        "{name}"
    );
    assert!(
        !name.contains(TOKEN) && !body.contains(TOKEN),
        "the token leaked: {name} {body}"
    );
    // The registry becomes unreachable; a new client starts.
    proxy.cut();
    let second = sdkit::connect(&url).unwrap();
    let instancer = second.instancer(&query).await.unwrap();
    let ep = DefaultEndpointer::new(&instancer, factory);
    let snap = ep.endpoints();
    let served: Vec<&str> = snap.get().unwrap().iter().map(|e| e.as_str()).collect();
    assert_eq!(
        served,
        ["lkg-1"],
        "served from disk while the registry is unreachable"
    );
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Disk));
    // A balancer told to refuse data stale for more than an hour still picks; one told to
    // refuse any staleness fails with a clear error.
    let ep = std::sync::Arc::new(ep);
    assert!(
        RefuseStale::new(RoundRobin::new(ep.clone()), Duration::from_secs(3600))
            .pick()
            .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let strict = RefuseStale::new(RoundRobin::new(ep.clone()), Duration::ZERO);
    assert!(matches!(
        strict.pick(),
        Err(LbError::Stale {
            reason: StaleReason::Disk,
            ..
        })
    ));

    // The registry is back: the instancer's retry reaches it and the data is fresh.
    proxy.restore();
    wait_until(&ep, "fresh after the registry returns", |s| !s.is_stale()).await;
    let snap = ep.endpoints();
    let served: Vec<&str> = snap.get().unwrap().iter().map(|e| e.as_str()).collect();
    assert_eq!(served, ["lkg-1"]);
    assert!(strict.pick().is_ok());

    // And the registry's changes flow again (and reach the file).
    registrar.deregister().await.unwrap();
    wait_until(&ep, "deregistration seen", |s| {
        s.get().is_ok_and(|l| l.is_empty())
    })
    .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while files(&dir.0).iter().any(|(_, body)| body.contains("lkg-1")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshot never updated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ep.close().await;
    instancer.stop().await;
}

/// The same story with the agent itself killed (the scenario): a process restarted
/// while the registry is down serves the endpoints from disk, stale; after the agent's
/// restart (a -dev agent restarts empty) the registrar registers again and the client is
/// fresh. Holds `exclusive(Server::Consul)` throughout; the guard heals the agent on drop.
#[tokio::test]
async fn fault_lkg_consul_killed_then_restarted_client_serves_disk_then_fresh() {
    let addr = require!(Server::Consul);
    let _lock = exclusive(Server::Consul);
    sd_testkit::wait_ready(Server::Consul).await.unwrap();
    let dir = TempDir(std::env::temp_dir().join(unique_name("sdkit-lkg-kill")));
    let url = format!(
        "consul://{addr}?wait=1s&timeout=1s&cache={}",
        dir.0.display()
    );
    let service = unique_name("lkg-kill");
    let query = ServiceQuery::new(service.as_str());
    let direct = sdkit::connect(&format!("consul://{addr}?wait=1s&timeout=1s")).unwrap();
    let registrar = direct
        .registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 23002).id("kill-1").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(2))),
        )
        .await
        .unwrap();
    registrar.register().await.unwrap();

    first_client_writes_the_snapshot(&url, &query, &dir, "kill-1").await;

    sd_testkit::kill(Server::Consul).await.unwrap();
    let second = sdkit::connect(&url).unwrap();
    let instancer = second.instancer(&query).await.unwrap();
    let ep = DefaultEndpointer::new(&instancer, factory);
    let snap = ep.endpoints();
    let served: Vec<&str> = snap.get().unwrap().iter().map(|e| e.as_str()).collect();
    assert_eq!(
        served,
        ["kill-1"],
        "served from disk while the agent is down"
    );
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Disk));

    sd_testkit::restart(Server::Consul).await.unwrap();
    wait_until(&ep, "fresh with the re-registered instance", |s| {
        !s.is_stale()
            && s.get()
                .is_ok_and(|l| l.iter().any(|e| e.as_str() == "kill-1"))
    })
    .await;
    registrar.deregister().await.unwrap();
    ep.close().await;
    instancer.stop().await;
}
