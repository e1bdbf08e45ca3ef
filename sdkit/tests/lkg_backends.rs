//! Last-known-good on disk (issue 19) on the other backends of the harness (Consul has its own
//! file, `lkg_consul.rs`, with the killed-agent variant): a client discovers with `cache=` on
//! through a proxy in front of the real server; the proxy cuts every connection (the registry
//! is unreachable, its address and so the snapshot file unchanged, the shared server
//! undisturbed); a new client started then serves the instance from disk, stale (`Disk`);
//! the proxy is restored and the data is fresh again. DNS is left out: the proxy speaks TCP
//! and the resolver asks over UDP.
#![cfg(all(feature = "etcd", feature = "zk", feature = "eureka"))]

use std::path::PathBuf;
use std::time::Duration;

use sd_testkit::proxy::Proxy;
use sd_testkit::{require, shared, unique_name, Server};
use sdkit::{Freshness, Instance, Instancer, Registration, ServiceQuery, StaleReason};

const BOUND: Duration = Duration::from_secs(60);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `sub` publishes a state `pred` accepts.
async fn until(
    sub: &mut sdkit::Subscription,
    what: &str,
    pred: impl Fn(&[String], &Freshness) -> bool,
) {
    let mut last = None;
    let r = tokio::time::timeout(BOUND, async {
        loop {
            let (event, freshness) = sub.next_with_freshness().await.expect("not ended");
            if pred(&event.addrs(), &freshness) {
                return;
            }
            last = Some((event, freshness));
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: not within {BOUND:?}; last {last:?}");
}

/// The story for one backend. `url(addr)` is the client URL for a server at `addr` (without
/// `cache=`); `server` is the real server's address.
async fn restarted_while_unreachable_serves_disk_then_fresh(
    backend: &str,
    server: &str,
    url: impl Fn(&str) -> String,
) {
    let proxy = Proxy::start(server).await;
    let via = proxy.addr.to_string();
    let dir = TempDir(std::env::temp_dir().join(unique_name(&format!("sdkit-lkg-{backend}"))));
    let cached = |addr: &str| format!("{}&cache={}", url(addr), dir.0.display());
    let service = unique_name(&format!("lkg-{backend}"));
    let query = ServiceQuery::new(service.as_str());
    let addr = "127.0.0.1:26001".to_string();

    // Registered straight at the server, not through the proxy: it stays registered.
    let direct = sdkit::connect(&url(server)).unwrap();
    let registrar = direct
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 26001)
                .id(format!("{backend}-lkg-1"))
                .build(),
        ))
        .await
        .unwrap();
    registrar.register().await.unwrap();

    // First client: sees the instance, which writes the snapshot; then it stops.
    let first = sdkit::connect(&cached(&via)).unwrap();
    let instancer = first.instancer(&query).await.unwrap();
    let mut sub = instancer.subscribe();
    until(&mut sub, "first client sees the instance", |a, f| {
        a == [addr.clone()] && !f.is_stale()
    })
    .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let written = std::fs::read_dir(&dir.0)
            .map(|d| {
                d.flatten()
                    .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|b| b.contains("26001")))
            })
            .unwrap_or(false);
        if written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{backend}: snapshot never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    instancer.stop().await;

    // The registry becomes unreachable; a new client starts and serves the disk set, stale.
    proxy.cut();
    let second = sdkit::connect(&cached(&via)).unwrap();
    let instancer = second.instancer(&query).await.unwrap();
    let mut sub = instancer.subscribe();
    until(&mut sub, "served from disk", |a, f| {
        a == [addr.clone()] && f.reason() == Some(StaleReason::Disk)
    })
    .await;

    // The registry is back: fresh.
    proxy.restore();
    until(&mut sub, "fresh once the registry is back", |a, f| {
        a == [addr.clone()] && !f.is_stale()
    })
    .await;
    instancer.stop().await;
    registrar.deregister().await.unwrap();
}

#[tokio::test]
async fn lkg_etcd_restart_while_unreachable_serves_disk_then_fresh() {
    let etcd = require!(Server::Etcd);
    let _lock = shared(Server::Etcd);
    restarted_while_unreachable_serves_disk_then_fresh("etcd", &etcd, |a| {
        format!("etcd://{a}?prefix=/sdkit-lkg&timeout=2s")
    })
    .await;
}

#[tokio::test]
async fn lkg_zk_restart_while_unreachable_serves_disk_then_fresh() {
    let zk = require!(Server::Zk);
    let _lock = shared(Server::Zk);
    restarted_while_unreachable_serves_disk_then_fresh("zk", &zk, |a| {
        format!("zk://{a}/sdkit-lkg?session_timeout=4s&connect_timeout=2s&create_parents=true")
    })
    .await;
}

#[tokio::test]
async fn lkg_eureka_restart_while_unreachable_serves_disk_then_fresh() {
    let eureka = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    // SD_TEST_EUREKA is a base URL: http://host:port/eureka.
    let rest = eureka.trim_start_matches("http://");
    let (server, path) = rest.split_once('/').unwrap_or((rest, "eureka"));
    let path = path.to_string();
    restarted_while_unreachable_serves_disk_then_fresh("eureka", server, move |a| {
        format!("eureka://{a}/{path}?poll=1s&timeout=5s")
    })
    .await;
}
