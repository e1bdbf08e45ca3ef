//! Fault tests on the real Eureka server: kill it, restart it (it comes back empty). Each
//! holds `sd_testkit::exclusive(Server::Eureka)` for its whole duration and leaves the
//! server healthy (the guard heals it on drop even if the test fails).
//!
//! Every wait is bounded; recovery times are printed, never asserted (the bounds are hang
//! guards).

mod common;

use std::time::{Duration, Instant};

use common::{by_id, registry, wait_for_set, BOUND};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, HealthCheck, Instance, Instancer, Registrar,
    Registration, ServiceQuery,
};
use sd_testkit::{exclusive, require, unique_name, Server};

#[tokio::test]
async fn fault_restart_keeps_the_last_good_set_then_reregisters_through_the_404() {
    let addr = require!(Server::Eureka);
    let _lock = exclusive(Server::Eureka);
    sd_testkit::wait_ready(Server::Eureka).await.unwrap();
    let reg = registry(&addr);
    let service = unique_name("eureka-restart");
    // TTL 3 s: lease 3 s, renewed every second.
    let registrar = reg
        .eureka_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 26001).id("r1").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(3))),
        )
        .unwrap();
    let renew = registrar.lease().renew;
    registrar.register().await.unwrap();
    let mut reregistered = registrar.watch_reregistrations();
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| by_id(s, "r1").is_some()).await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });

    sd_testkit::kill(Server::Eureka).await.unwrap();
    sd_testkit::conformance::wait_error(&mut sub, BOUND, "server killed").await;
    // The server is dead: the current state is that error.
    let err = instancer
        .state()
        .and_then(|e| e.as_error().cloned())
        .expect("an error state");
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("query of app"), "{err}");
    // Last known good: the endpoint is still served, flagged with the error.
    let mut changes = endpointer.changes();
    tokio::time::timeout(BOUND, async {
        while endpointer.endpoints().last_error().is_none() {
            changes.changed().await;
        }
    })
    .await
    .expect("the endpointer sees the error");
    let snap = endpointer.endpoints();
    let served: Vec<&str> = snap.get().unwrap().iter().map(|e| e.as_str()).collect();
    assert_eq!(served, ["r1"]);
    drop(snap);

    // The server comes back empty: the next renewal gets a 404 and registers again.
    sd_testkit::restart(Server::Eureka).await.unwrap();
    let ready = Instant::now();
    tokio::time::timeout(BOUND, reregistered.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered after the restart")
        .unwrap();
    let reregistered_after = ready.elapsed();
    wait_for_set(&mut sub, "visible again", |s| by_id(s, "r1").is_some()).await;
    eprintln!(
        "server ready -> re-registered through the 404 in {reregistered_after:?} \
         (renewal interval {renew:?}; target: interval + 2 s); visible to the instancer {:?} after ready",
        ready.elapsed()
    );
    assert_eq!(registrar.reregistrations(), 1);

    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    endpointer.close().await;
    instancer.stop().await;
}
