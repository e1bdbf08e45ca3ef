//! Fault tests on the real agent: kill it, restart it, freeze it. Each holds
//! `sd_testkit::exclusive(Server::Consul)` for its whole duration and leaves the agent
//! healthy (the guard heals it on drop even if the test fails).
//!
//! Short waits (`wait=1s`, `timeout=1s`) keep them fast; the instancers use the DEFAULT
//! backoff (10 ms doubling to 1 min, with jitter), as in production. Every wait is bounded;
//! recovery times are printed, never asserted (the bounds are hang guards).

mod common;

use std::time::{Duration, Instant};

use common::{
    by_id, register_and_watch, ttl_registration, wait_for_error, wait_for_set, wait_for_set_within,
    Watched,
};
use sd_consul::ConsulRegistry;
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Instance, Instancer, Registrar, Registration,
    ServiceQuery,
};
use sd_testkit::{exclusive, require, unique_name, PauseGuard, Server};

/// No `with_backoff`: the default backoff.
fn registry(addr: &str) -> ConsulRegistry {
    ConsulRegistry::from_url(&format!("consul://{addr}?wait=1s&timeout=1s")).unwrap()
}

/// Hang guard for a recovery after a short outage: with the default backoff the instancer's
/// retry in progress when the agent comes back is about as long as the outage so far
/// (capped at 1 min), so a few-second outage recovers within a few seconds. 30 s only
/// catches a hang; the measured time is printed.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// How long the kill test keeps the agent down (from the kill to the restart).
const OUTAGE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn fault_kill_keeps_the_last_good_set_then_restart_reregisters_and_recovers() {
    let addr = require!(Server::Consul);
    let _lock = exclusive(Server::Consul);
    sd_testkit::wait_ready(Server::Consul).await.unwrap();
    let reg = registry(&addr);
    let service = unique_name("consul-kill");
    let Watched {
        registrar,
        instancer,
        mut sub,
        ..
    } = register_and_watch(
        &reg,
        ttl_registration(&service, 21001, "k1", Duration::from_secs(3)),
    )
    .await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });

    sd_testkit::kill(Server::Consul).await.unwrap();
    let killed = Instant::now();
    let err = wait_for_error(&mut sub, "agent killed").await;
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("health query"), "{err}");
    // Last known good: the endpoint is still served, flagged with the error (the
    // endpointer applies events on its own task, so wait for it to catch up).
    let mut changes = endpointer.changes();
    tokio::time::timeout(common::BOUND, async {
        while endpointer.endpoints().last_error().is_none() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer sees the error");
    let snap = endpointer.endpoints();
    assert_eq!(
        snap.get()
            .unwrap()
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>(),
        ["k1"]
    );
    assert!(snap.last_error().unwrap().is_transient());
    drop(snap);

    // The scenario, not a synchronization: the agent stays down for a realistic short
    // outage (a real agent restart takes seconds), so the instancer's default backoff has
    // grown to about a second by the time the agent is back.
    tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;

    // A -dev agent restarts empty: the registrar must notice and register again.
    sd_testkit::restart(Server::Consul).await.unwrap();
    let ready = Instant::now();
    let outage = killed.elapsed();
    // The instancer's first successful query after the outage (it already shows the
    // instance if the registrar has re-registered it by then).
    let mut set = wait_for_set_within(
        &mut sub,
        "instancer recovered after restart",
        RECOVERY_BOUND,
        |_| true,
    )
    .await;
    let instancer_recovered = ready.elapsed();
    if by_id(&set, "k1").is_none() {
        set = wait_for_set_within(
            &mut sub,
            "re-registered after restart",
            RECOVERY_BOUND,
            |s| by_id(s, "k1").is_some(),
        )
        .await;
    }
    eprintln!(
        "default backoff, outage {outage:?}: instancer recovered {instancer_recovered:?} and \
         the re-registered instance visible {:?} after the agent was ready",
        ready.elapsed()
    );
    assert_eq!(set.len(), 1);
    let mut rereg = registrar.watch_reregistrations();
    tokio::time::timeout(common::BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("the registrar counted its re-registration")
        .unwrap();
    tokio::time::timeout(common::BOUND, async {
        while endpointer.endpoints().last_error().is_some() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer clears the error");

    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    endpointer.close().await;
    instancer.stop().await;
}

#[tokio::test]
async fn fault_pause_longer_than_the_wait_errors_without_panic_and_recovers() {
    let addr = require!(Server::Consul);
    let _lock = exclusive(Server::Consul);
    sd_testkit::wait_ready(Server::Consul).await.unwrap();
    let reg = registry(&addr);
    let service = unique_name("consul-pause");
    let Watched {
        registrar,
        instancer,
        mut sub,
        ..
    } = register_and_watch(
        &reg,
        ttl_registration(&service, 21002, "p1", Duration::from_secs(10)),
    )
    .await;

    let paused = PauseGuard::pause(Server::Consul).await.unwrap();
    // The blocking query (wait 1 s) cannot finish: its timeout (wait + wait/16 + 1 s) fires.
    let err = wait_for_error(&mut sub, "agent frozen").await;
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Stays an error state while frozen; the set is not replaced by anything else.
    assert!(sub.current().unwrap().as_error().is_some());
    paused.resume().await.unwrap();
    sd_testkit::wait_ready(Server::Consul).await.unwrap();
    let ready = Instant::now();
    wait_for_set_within(&mut sub, "recovered after resume", RECOVERY_BOUND, |s| {
        by_id(s, "p1").is_some()
    })
    .await;
    eprintln!(
        "default backoff: recovered {:?} after the agent was ready",
        ready.elapsed()
    );

    registrar.deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn fault_stop_during_backoff_and_register_while_the_agent_is_down() {
    let addr = require!(Server::Consul);
    let _lock = exclusive(Server::Consul);
    sd_testkit::wait_ready(Server::Consul).await.unwrap();
    let reg = ConsulRegistry::from_url(&format!("consul://{addr}?wait=1s&timeout=1s")).unwrap();
    let service = unique_name("consul-down");
    sd_testkit::kill(Server::Consul).await.unwrap();
    // The first query fails and is the first state; the loop is then in its backoff.
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert!(instancer.state().unwrap().as_error().is_some());
    tokio::time::timeout(Duration::from_secs(5), instancer.stop())
        .await
        .expect("stop interrupts the backoff");
    // Registering against a dead agent is a returned, transient error — not a panic.
    let r = reg
        .consul_registrar(Registration::new(
            service.as_str(),
            Instance::new("127.0.0.1", 21003),
        ))
        .unwrap();
    let err = r.register().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    r.deregister().await.unwrap(); // nothing was registered
    sd_testkit::restart(Server::Consul).await.unwrap();
}
