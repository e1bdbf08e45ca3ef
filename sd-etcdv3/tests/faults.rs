//! Fault tests on the real etcd servers (3.4 and 3.5): kill and restart with the data, kill
//! for longer than the lease TTL, frozen (SIGSTOP) for longer than the TTL, restart without
//! the data. Each holds `sd_testkit::exclusive(server)` for its whole duration and leaves the
//! server healthy (the guard heals it on drop even if the test fails).
//!
//! The instancers use the default backoff (10 ms doubling to 1 min, jittered), as in
//! production. Every wait is bounded; recovery times are printed, never asserted, except
//! the requirement that the registrar re-registers within TTL + 2 s of the server
//! being ready again (measured from the readiness the control script reports).

mod common;

use std::time::{Duration, Instant};

use common::{
    addr, by_id, registry, ttl_registration, wait_for_error, wait_for_set, wait_for_set_within,
    BOUND,
};
use sd_core::ServiceQuery;
use sd_core::{BoxError, DefaultEndpointer, Endpointer, Error, Instance, Instancer, Registrar};
use sd_testkit::{exclusive, unique_name, Server};

const TTL: Duration = Duration::from_secs(2);

/// The registrar must be back within the TTL plus 2 s of the server answering again.
const REREGISTER_BOUND: Duration = Duration::from_secs(4);

struct Live {
    registrar: sd_etcdv3::EtcdRegistrar,
    instancer: sd_etcdv3::EtcdInstancer,
    sub: sd_core::Subscription,
}

/// Takes the exclusive lock on `server`, waits until it is ready, and registers and watches
/// `id`. `None` (skip) when the server is not configured.
async fn fault_setup(
    server: Server,
    what: &str,
    id: &str,
) -> Option<(sd_testkit::ExclusiveGuard, String, Live)> {
    let addr = addr(server)?;
    let lock = exclusive(server);
    sd_testkit::wait_ready(server).await.unwrap();
    let live = live(&addr, what, id).await;
    Some((lock, addr, live))
}

async fn live(addr: &str, what: &str, id: &str) -> Live {
    let reg = registry(addr, what, "");
    let service = unique_name(what);
    let registrar = reg
        .etcd_registrar(ttl_registration(&service, 7000, id, TTL))
        .unwrap();
    registrar.register().await.unwrap();
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| by_id(s, id).is_some()).await;
    Live {
        registrar,
        instancer,
        sub,
    }
}

/// The endpoints `endpointer` serves now (instance ids).
fn served(endpointer: &DefaultEndpointer<String>) -> Vec<String> {
    endpointer
        .endpoints()
        .get()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

/// Waits (at most [`REREGISTER_BOUND`]) until the registrar's key is in etcd under the
/// registrar's current lease: a bounded poll of the server, as there is no event for "a key
/// exists".
async fn registered_within(
    probe: &sd_etcdv3::EtcdRegistry,
    registrar: &sd_etcdv3::EtcdRegistrar,
    since: &str,
) {
    tokio::time::timeout(REREGISTER_BOUND, async {
        loop {
            if let Ok(Some(lease)) = probe.client().key_lease(registrar.key()).await {
                if lease == registrar.lease_id() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the registration is in etcd within TTL + 2 s of {since}"));
}

async fn fault_kill_keeps_the_last_good_set_then_restart_with_data_recovers(server: Server) {
    let Some((_lock, _, live)) = fault_setup(server, "kill", "k1").await else {
        return;
    };
    let Live {
        registrar,
        instancer,
        mut sub,
    } = live;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });

    sd_testkit::kill(server).await.unwrap();
    let killed = Instant::now();
    let err = wait_for_error(&mut sub, "server killed").await;
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err}"
    );
    eprintln!(
        "{server}: error published {:?} after the kill: {err}",
        killed.elapsed()
    );
    // Last known good: the endpoint is still served, flagged with the error.
    let mut changes = endpointer.changes();
    tokio::time::timeout(BOUND, async {
        while endpointer.endpoints().last_error().is_none() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer sees the error");
    assert_eq!(served(&endpointer), ["k1"]);

    // A short outage (less than the TTL): the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sd_testkit::restart(server).await.unwrap();
    let ready = Instant::now();
    let set = wait_for_set(&mut sub, "recovered after restart", |s| {
        by_id(s, "k1").is_some()
    })
    .await;
    eprintln!(
        "{server}: outage {:?}; instancer showed k1 again {:?} after the server was ready",
        ready - killed,
        ready.elapsed()
    );
    assert_eq!(set.len(), 1);
    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    endpointer.close().await;
    instancer.stop().await;
}
both_servers!(fault_kill_keeps_the_last_good_set_then_restart_with_data_recovers);

async fn fault_killed_longer_than_the_ttl(server: Server) {
    let Some((_lock, addr, live)) = fault_setup(server, "longkill", "k2").await else {
        return;
    };
    let Live {
        registrar,
        instancer,
        mut sub,
    } = live;
    sd_testkit::kill(server).await.unwrap();
    let killed = Instant::now();
    wait_for_error(&mut sub, "server killed").await;
    // Down for more than twice the TTL.
    tokio::time::sleep(TTL * 2 + Duration::from_secs(1)).await;
    sd_testkit::restart(server).await.unwrap();
    let ready = Instant::now();
    // etcd restores leases with a fresh TTL on restart; whether the lease survived or the
    // registrar had to grant a new one, the key is back within TTL + 2 s (a bounded poll of
    // the server: there is no event for "a key exists").
    let probe = registry(&addr, "probe", "");
    registered_within(&probe, &registrar, "the restart").await;
    let registered = ready.elapsed();
    // The instancer's retry in progress is as long as the outage so far (default backoff),
    // and the outage is longer when `scripts/registries restart` waits for its lock (other
    // tests restarting servers): it shows the instance within a minute (a hang guard), time
    // printed.
    wait_for_set_within(
        &mut sub,
        "instancer recovered after the long outage",
        Duration::from_secs(60),
        |s| by_id(s, "k2").is_some(),
    )
    .await;
    eprintln!(
        "{server}: after a {:?} outage, the registration was in etcd {registered:?} and the \
         instancer showed it {:?} after the server was ready (re-registrations: {})",
        ready - killed,
        ready.elapsed(),
        registrar.reregistrations()
    );
    // ...and it stays: the keep-alive works on the restarted server.
    tokio::time::sleep(TTL * 2).await;
    let key_lease = probe.client().key_lease(registrar.key()).await.unwrap();
    assert_eq!(key_lease, Some(registrar.lease_id()));
    registrar.deregister().await.unwrap();
    instancer.stop().await;
}
both_servers!(fault_killed_longer_than_the_ttl);

async fn fault_restarted_empty_the_registrar_registers_again(server: Server) {
    let Some((_lock, _, live)) = fault_setup(server, "empty", "k3").await else {
        return;
    };
    let Live {
        registrar,
        instancer,
        mut sub,
    } = live;
    let old_lease = registrar.lease_id();
    let mut rereg = registrar.watch_reregistrations();
    sd_testkit::restart_empty(server).await.unwrap();
    let ready = Instant::now();
    tokio::time::timeout(REREGISTER_BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("the registrar re-registers within TTL + 2 s")
        .unwrap();
    assert_ne!(registrar.lease_id(), old_lease);
    // The instancer shows it: its state already, or the next sets (after the error and the
    // empty set of the restarted server).
    let shows = |e: &Option<sd_core::Event>| matches!(e, Some(sd_core::Event::Instances(s)) if by_id(s, "k3").is_some());
    if !shows(&instancer.state()) {
        wait_for_set_within(&mut sub, "visible again", REREGISTER_BOUND, |s| {
            by_id(s, "k3").is_some()
        })
        .await;
    }
    let took = ready.elapsed();
    // The instancer did notice the restart (it read the new server's directory), rather than
    // showing a stale set.
    tokio::time::timeout(BOUND, async {
        while instancer.stats().full_reads() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the instancer read the restarted server");
    eprintln!(
        "{server}: restarted empty; re-registered and visible {took:?} after the server was ready"
    );
    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}
both_servers!(fault_restarted_empty_the_registrar_registers_again);

/// The server frozen (SIGSTOP) for longer than the lease TTL, then resumed: while it is
/// frozen the instancer publishes an error (keep-alive pings end the watch, the re-read
/// times out) and the endpointer keeps serving the last good set; after the resume etcd finds the lease overdue and revokes it, or the
/// keep-alive gets there first and the lease lives on; either way the registration is in
/// etcd under the registrar's current lease within TTL + 2 s of the resume, stays there,
/// and the instancer shows it.
async fn fault_paused_longer_than_the_ttl(server: Server) {
    let Some((_lock, addr, live)) = fault_setup(server, "pause", "p1").await else {
        return;
    };
    let Live {
        registrar,
        instancer,
        mut sub,
    } = live;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });
    let old_lease = registrar.lease_id();
    let paused = sd_testkit::PauseGuard::pause(server).await.unwrap();
    let frozen = Instant::now();
    // The silent server is noticed: HTTP/2 keep-alive pings (6 s here) end the watch, and
    // the re-read times out (2 s). hyper sends a ping once a whole interval has passed
    // without data, so that is between 6 + 6 + 2 and 6 + 6 + 6 + 2 s; bounded by 40 s.
    sd_testkit::conformance::wait_error(&mut sub, Duration::from_secs(40), "server frozen").await;
    let err = match sub.current() {
        Some(sd_core::Event::Error(e)) => e,
        other => panic!("the error was replaced at once by {other:?}"),
    };
    eprintln!(
        "{server}: error published {:?} after the freeze: {err}",
        frozen.elapsed()
    );
    // The scenario, not a synchronisation: frozen for more than twice the TTL.
    tokio::time::sleep((TTL * 2 + Duration::from_secs(1)).saturating_sub(frozen.elapsed())).await;
    assert_eq!(
        served(&endpointer),
        ["p1"],
        "last good set served while the server is frozen"
    );
    paused.resume().await.unwrap();
    let resumed = Instant::now();

    let probe = registry(&addr, "probe", "");
    registered_within(&probe, &registrar, "the resume").await;
    let registered = resumed.elapsed();
    if !matches!(instancer.state(), Some(sd_core::Event::Instances(ref s)) if by_id(s, "p1").is_some())
    {
        wait_for_set(&mut sub, "instancer shows p1 after the resume", |s| {
            by_id(s, "p1").is_some()
        })
        .await;
    }
    eprintln!(
        "{server}: frozen {:?}; registration in etcd {registered:?} after the resume, \
         lease {} (re-registrations: {})",
        resumed - frozen,
        if registrar.lease_id() == old_lease {
            "survived"
        } else {
            "expired and was granted again"
        },
        registrar.reregistrations()
    );
    // It stays: the keep-alive works after the freeze.
    tokio::time::sleep(TTL * 2).await;
    let key_lease = probe.client().key_lease(registrar.key()).await.unwrap();
    assert_eq!(key_lease, Some(registrar.lease_id()));
    assert_eq!(served(&endpointer), ["p1"]);
    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    endpointer.close().await;
    instancer.stop().await;
}
both_servers!(fault_paused_longer_than_the_ttl);
