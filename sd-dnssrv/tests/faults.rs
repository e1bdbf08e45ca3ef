//! Fault tests on the real BIND server: kill it, restart it, freeze it. Each holds
//! `sd_testkit::exclusive(Server::Dns)` for its whole duration (the guard heals the server on
//! drop even if the test fails). A restart resets the zone to its seed records, so these
//! tests watch the seeded `_web._tcp` service, plus a registration that must come back.

mod common;

use std::time::{Duration, Instant};

use common::{registry, wait_for, wait_for_addrs, BOUND};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Instance, Instancer, Registrar,
    Registration, Registry, ServiceQuery,
};
use sd_testkit::{exclusive, require, unique_name, PauseGuard, Server};

fn seeded() -> Vec<String> {
    let z = sd_testkit::dns_zone();
    vec![format!("web1.{z}:8080"), format!("web2.{z}:8081")]
}

async fn wait_for_error(sub: &mut sd_core::Subscription, what: &str) -> Error {
    match wait_for(sub, what, |e| matches!(e, Event::Error(_))).await {
        Event::Error(e) => e,
        _ => unreachable!(),
    }
}

/// Nameserver killed → an error event, the endpointer keeps the last good endpoints;
/// restarted → the instancer recovers, and a registrar puts back the record the restart lost.
#[tokio::test]
async fn fault_kill_keeps_the_last_good_set_then_restart_recovers_and_reregisters() {
    let addr = require!(Server::Dns);
    let _lock = exclusive(Server::Dns);
    sd_testkit::wait_ready(Server::Dns).await.unwrap();
    // record_ttl=1s: the registrar re-asserts its record every second.
    let reg = registry(
        &addr,
        "&resolve_targets=1&timeout=500ms&attempts=1&record_ttl=1s",
    );
    let service = unique_name("dns-kill");
    let registrar = reg
        .registrar(Registration::new(
            &service,
            Instance::builder("127.0.0.31", 7001).id("k1").build(),
        ))
        .await
        .unwrap();
    registrar.register().await.unwrap();
    let mine = reg
        .dns_instancer(&ServiceQuery::new(&service))
        .await
        .unwrap();
    let mut mine_sub = mine.subscribe();
    wait_for_addrs(&mut mine_sub, &["127.0.0.31:7001"]).await;

    let plain = registry(&addr, "&timeout=500ms&attempts=1");
    let web = plain
        .dns_instancer(&ServiceQuery::new("web"))
        .await
        .unwrap();
    let mut sub = web.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), seeded());
    let endpointer = DefaultEndpointer::new(&web, |i: &Instance| -> Result<String, BoxError> {
        Ok(i.addr().to_string())
    });
    assert!(endpointer.ready().await);

    sd_testkit::kill(Server::Dns).await.unwrap();
    let killed = Instant::now();
    let err = wait_for_error(&mut sub, "nameserver killed").await;
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("_web._tcp"), "{err}");
    let mut changes = endpointer.changes();
    tokio::time::timeout(BOUND, async {
        while endpointer.endpoints().last_error().is_none() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer sees the error");
    let snap = endpointer.endpoints();
    let kept: Vec<String> = snap.get().unwrap().iter().map(|e| e.to_string()).collect();
    assert_eq!(kept, seeded(), "last known good kept");
    drop(snap);

    sd_testkit::restart(Server::Dns).await.unwrap();
    let ready = Instant::now();
    wait_for_addrs(
        &mut sub,
        &seeded().iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    eprintln!(
        "outage {:?}: instancer recovered {:?} after the server was ready",
        ready.duration_since(killed),
        ready.elapsed()
    );
    tokio::time::timeout(BOUND, async {
        while endpointer.endpoints().last_error().is_some() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer clears the error");

    // The restart reset the zone; the registrar's keep-alive puts the record back.
    wait_for_addrs(&mut mine_sub, &["127.0.0.31:7001"]).await;
    eprintln!(
        "registration back {:?} after the server was ready",
        ready.elapsed()
    );

    registrar.deregister().await.unwrap();
    wait_for_addrs(&mut mine_sub, &[]).await;
    endpointer.close().await;
    web.stop().await;
    mine.stop().await;
}

/// A frozen nameserver (SIGSTOP) → a timeout error event; resumed → recovery.
#[tokio::test]
async fn fault_frozen_nameserver_times_out_then_recovers() {
    let addr = require!(Server::Dns);
    let _lock = exclusive(Server::Dns);
    sd_testkit::wait_ready(Server::Dns).await.unwrap();
    let reg = registry(&addr, "&timeout=300ms&attempts=1");
    let web = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let mut sub = web.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), seeded());

    let paused = PauseGuard::pause(Server::Dns).await.unwrap();
    let err = wait_for_error(&mut sub, "nameserver frozen").await;
    assert!(
        matches!(err, Error::Timeout { .. } | Error::Unavailable { .. }),
        "{err}"
    );
    paused.resume().await.unwrap();
    sd_testkit::wait_ready(Server::Dns).await.unwrap();
    wait_for_addrs(
        &mut sub,
        &seeded().iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    web.stop().await;
    let _ = Duration::ZERO;
}
