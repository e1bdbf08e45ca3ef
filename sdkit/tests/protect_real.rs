//! Empty-set protection (issue 19), on by default in `sdkit::connect`, against the real
//! registries of the harness: a registry that suddenly empties does not empty the client.
//! - etcd (a watch: nothing confirms a shrink but the hold): every instance goes and comes
//!   back within the hold → the client never publishes an empty set, only the previous set
//!   marked stale (`Protected`), then the new one, fresh;
//! - Consul (blocking queries: the next answer confirms): every instance goes → the previous
//!   set stale, then the empty set once Consul says it again;
//! - `protect=false` turns it off: the empty set at once.
#![cfg(all(feature = "consul", feature = "etcd"))]

use std::sync::Arc;
use std::time::Duration;

use sd_testkit::{require, shared, unique_name, Server};
use sdkit::{
    Event, Freshness, Instance, Instancer, Registrar, Registration, Registry, ServiceQuery,
    StaleReason,
};

const BOUND: Duration = Duration::from_secs(30);

/// Registers `ports` of `service` straight in `registry`.
async fn register(
    registry: &dyn Registry,
    service: &str,
    ports: &[u16],
) -> Vec<Arc<dyn Registrar>> {
    let mut out = Vec::new();
    for port in ports {
        let r = registry
            .registrar(Registration::new(
                service,
                Instance::builder("127.0.0.1", *port)
                    .id(format!("{service}-{port}"))
                    .build(),
            ))
            .await
            .unwrap();
        r.register().await.unwrap();
        out.push(r);
    }
    out
}

/// Every state the subscription publishes until `done` accepts one (inclusive).
async fn states_until(
    sub: &mut sdkit::Subscription,
    what: &str,
    done: impl Fn(&Event, &Freshness) -> bool,
) -> Vec<(Vec<String>, Option<StaleReason>)> {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(BOUND, async {
        loop {
            let (event, freshness) = sub.next_with_freshness().await.expect("not ended");
            seen.push((event.addrs(), freshness.reason()));
            if done(&event, &freshness) {
                return;
            }
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: not within {BOUND:?}; seen {seen:?}");
    seen
}

#[tokio::test]
async fn etcd_emptied_and_refilled_within_the_hold_never_empties_the_client() {
    let etcd = require!(Server::Etcd);
    let _lock = shared(Server::Etcd);
    let service = unique_name("protect-etcd");
    let direct = sdkit::connect(&format!("etcd://{etcd}")).unwrap();
    let registrars = register(&*direct, &service, &[25001, 25002]).await;

    // The default protection, a longer hold so the test never races it.
    let client = sdkit::connect(&format!("etcd://{etcd}?protect=60s")).unwrap();
    let instancer = client
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    states_until(&mut sub, "both instances", |e, _| e.addrs().len() == 2).await;

    // The registry empties (every registration goes at once)...
    for r in &registrars {
        r.deregister().await.unwrap();
    }
    let seen = states_until(&mut sub, "the previous set, held", |_, f| {
        f.reason() == Some(StaleReason::Protected)
    })
    .await;
    // ...and is filled again: the new set, fresh, and never an empty one in between.
    let again = register(&*direct, &service, &[25003]).await;
    let rest = states_until(&mut sub, "the new set", |e, f| {
        e.addrs() == ["127.0.0.1:25003"] && !f.is_stale()
    })
    .await;
    for (addrs, reason) in seen.iter().chain(&rest) {
        assert!(
            !addrs.is_empty(),
            "the client published an empty set ({reason:?}); seen {seen:?} then {rest:?}"
        );
    }
    // The first deregistration is a small loss (2 → 1), published; the second empties the
    // set, and the last set is held.
    assert_eq!(
        seen.last().unwrap().0,
        ["127.0.0.1:25002"],
        "held: the previous set"
    );
    again[0].deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn consul_empty_answer_is_held_until_consul_confirms_it_and_protect_false_turns_it_off() {
    let consul = require!(Server::Consul);
    let _lock = shared(Server::Consul);
    let direct = sdkit::connect(&format!("consul://{consul}")).unwrap();
    for (options, protected) in [("wait=1s", true), ("wait=1s&protect=false", false)] {
        let service = unique_name("protect-consul");
        let registrars = register(&*direct, &service, &[25011]).await;
        let client = sdkit::connect(&format!("consul://{consul}?{options}")).unwrap();
        let instancer = client
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        let mut sub = instancer.subscribe();
        states_until(&mut sub, "the instance", |e, _| e.addrs().len() == 1).await;
        registrars[0].deregister().await.unwrap();
        let seen = states_until(&mut sub, "the empty set", |e, f| {
            e.addrs().is_empty() && !f.is_stale()
        })
        .await;
        let held = seen
            .iter()
            .any(|(addrs, r)| *r == Some(StaleReason::Protected) && addrs.len() == 1);
        assert_eq!(held, protected, "{options}: seen {seen:?}");
        instancer.stop().await;
    }
}
