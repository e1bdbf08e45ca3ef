//! Fault tests on the real ZooKeeper server: freeze it longer than the session timeout,
//! restart it. Each holds `sd_testkit::exclusive(Server::Zk)` for its whole duration and
//! leaves the server healthy (the guard heals it on drop even if the test fails).
//!
//! Recovery times are printed, never asserted: the bounds are hang guards.

mod common;

use std::time::{Duration, Instant};

use common::{by_id, register_and_watch, registry, wait_for_error, wait_for_set, Watched, SESSION};
use sd_core::{Instance, Instancer, Registrar, Registration};
use sd_testkit::{exclusive, require, unique_name, PauseGuard, Server};

fn reg(service: &str, port: u16, id: &str) -> Registration {
    Registration::new(service, Instance::builder("127.0.0.1", port).id(id).build())
}

/// The server frozen (SIGSTOP) for longer than the session timeout: on resume it expires the
/// session, deleting the node; the registrar opens a new session and creates the node again,
/// and the instancer publishes an error, then recovers. (If the client's reconnection reaches
/// the resumed server before its session expirer runs, the session survives and so does the
/// node; the test accepts both and prints which happened. The expiry path itself is tested
/// deterministically by `zk9_*` in tests/zk.rs.)
#[tokio::test]
async fn fault_pause_longer_than_the_session_brings_the_node_back() {
    let addr = require!(Server::Zk);
    let _lock = exclusive(Server::Zk);
    sd_testkit::wait_ready(Server::Zk).await.unwrap();
    let registry = registry(&addr, "");
    let service = unique_name("zk-pause");
    let Watched {
        registrar: r,
        instancer,
        mut sub,
    } = register_and_watch(&registry, &service, 9101, "p1").await;
    let before = r.node_path().unwrap();

    let paused = PauseGuard::pause(Server::Zk).await.unwrap();
    // The client notices the silent server (connection timeout 2/5 of the session).
    wait_for_error(&mut sub, "server frozen").await;
    // The scenario, not a synchronisation: stay frozen past the session timeout.
    tokio::time::sleep(SESSION * 2).await;
    paused.resume().await.unwrap();
    let resumed = Instant::now();
    // The instancer's first set after the resume; then the one holding the node again.
    wait_for_set(&mut sub, "instancer recovered", |_| true).await;
    let set = match sub.current() {
        Some(sd_core::Event::Instances(s)) if by_id(&s, "p1").is_some() => s,
        _ => wait_for_set(&mut sub, "node back", |s| by_id(s, "p1").is_some()).await,
    };
    let back_after = resumed.elapsed();
    assert_eq!(set.len(), 1, "{set:?}");
    let now = r.node_path().unwrap();
    let zk = common::raw(&addr).await;
    assert!(zk.check_stat(&now).await.unwrap().is_some(), "{now} exists");
    eprintln!(
        "session {SESSION:?}: the instance was back {back_after:?} after the resume; \
         session {}, node re-created {} time(s) ({before} -> {now})",
        if now == before { "survived" } else { "expired" },
        r.recreations()
    );
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// The server killed and restarted: the instancer publishes an error during the outage,
/// keeps going afterwards, and the node is there (ZooKeeper keeps sessions across a restart;
/// if the session expired meanwhile, the registrar creates the node again).
#[tokio::test]
async fn fault_restart_keeps_the_node_and_the_watch() {
    let addr = require!(Server::Zk);
    let _lock = exclusive(Server::Zk);
    sd_testkit::wait_ready(Server::Zk).await.unwrap();
    let registry = registry(&addr, "");
    let service = unique_name("zk-restart");
    let Watched {
        registrar: r,
        instancer,
        mut sub,
    } = register_and_watch(&registry, &service, 9111, "k1").await;

    sd_testkit::kill(Server::Zk).await.unwrap();
    wait_for_error(&mut sub, "server killed").await;
    sd_testkit::restart(Server::Zk).await.unwrap();
    let ready = Instant::now();
    wait_for_set(&mut sub, "recovered after the restart", |s| {
        by_id(s, "k1").is_some()
    })
    .await;
    eprintln!(
        "instancer recovered {:?} after the server was ready (node re-created {} times)",
        ready.elapsed(),
        r.recreations()
    );
    // Still watching after the restart.
    let r2 = registry.zk_registrar(reg(&service, 9112, "k2")).unwrap();
    r2.register().await.unwrap();
    wait_for_set(&mut sub, "new registration after the restart", |s| {
        s.len() == 2
    })
    .await;
    r.deregister().await.unwrap();
    r2.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// Registering while the server is down is a returned, transient error; an instancer
/// started then recovers once the server is back.
#[tokio::test]
async fn fault_register_and_watch_while_the_server_is_down() {
    let addr = require!(Server::Zk);
    let _lock = exclusive(Server::Zk);
    sd_testkit::wait_ready(Server::Zk).await.unwrap();
    let registry = registry(&addr, "");
    let service = unique_name("zk-down");
    sd_testkit::kill(Server::Zk).await.unwrap();
    let r = registry.zk_registrar(reg(&service, 9121, "d1")).unwrap();
    let err = r.register().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    r.deregister().await.unwrap(); // nothing was registered
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    assert!(instancer.state().unwrap().as_error().is_some());
    sd_testkit::restart(Server::Zk).await.unwrap();
    r.register().await.unwrap();
    wait_for_set(&mut sub, "recovered", |s| by_id(s, "d1").is_some()).await;
    r.deregister().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), instancer.stop())
        .await
        .expect("stop");
}
