//! Registries composed by URL (issue 19), against the real Consul agent and etcd server of the
//! harness, through `sdkit::connect`: `failover:consul://…,etcd://…` registers in both,
//! serves Consul's set, switches to etcd's when Consul cannot be reached (a proxy in front of
//! the agent cuts every connection; the shared agent is not disturbed) and back when it
//! returns; `merge:` serves the union with each instance's source; a registration made while
//! one member is unreachable reaches it once it is back.
#![cfg(all(feature = "consul", feature = "etcd"))]

use std::time::Duration;

use sd_testkit::proxy::Proxy;
use sd_testkit::{require, shared, unique_name, Server};
use sdkit::compose::SOURCE_META;
use sdkit::{Event, Freshness, Instance, Instancer, Registration, Registry, ServiceQuery};

const BOUND: Duration = Duration::from_secs(30);

/// Waits until the instancer publishes a state that `pred` accepts; returns it.
async fn until(
    sub: &mut sdkit::Subscription,
    what: &str,
    pred: impl Fn(&Event, &Freshness) -> bool,
) -> Event {
    let mut last = None;
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let (event, freshness) = sub.next_with_freshness().await.expect("not ended");
            if pred(&event, &freshness) {
                return event;
            }
            last = Some((event, freshness));
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}; last: {last:?}"))
}

/// `(addr, source scheme)` of each instance.
fn sources(event: &Event) -> Vec<(String, String)> {
    event
        .as_instances()
        .map(|set| {
            set.iter()
                .map(|i| {
                    let source = &i.meta().get(SOURCE_META).unwrap();
                    let scheme = source.split("://").next().unwrap_or_default();
                    (i.addr().to_string(), scheme.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The addresses `registry` holds for `service`, read once.
async fn held(registry: &dyn Registry, service: &str) -> Vec<String> {
    let instancer = registry
        .instancer(&ServiceQuery::new(service))
        .await
        .unwrap();
    let event = instancer.subscribe().first().await.unwrap();
    instancer.stop().await;
    event.addrs()
}

#[tokio::test]
async fn failover_consul_to_etcd_and_back_with_registration_in_both() {
    let consul = require!(Server::Consul);
    let etcd = require!(Server::Etcd);
    let _locks = (shared(Server::Consul), shared(Server::Etcd));
    let proxy = Proxy::start(&consul).await;
    let url = format!(
        "failover:consul://{}?wait=1s&timeout=1s,etcd://{etcd}",
        proxy.addr
    );
    let registry = sdkit::connect(&url).unwrap();
    assert_eq!(registry.scheme(), "failover");
    let service = unique_name("compose-failover");

    // Registered through the composed registry: in both members.
    let registrar = registry
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24001).id("cf-1").build(),
        ))
        .await
        .unwrap();
    registrar.register().await.unwrap();
    let direct_consul = sdkit::connect(&format!("consul://{consul}")).unwrap();
    let direct_etcd = sdkit::connect(&format!("etcd://{etcd}")).unwrap();
    assert_eq!(held(&*direct_consul, &service).await, ["127.0.0.1:24001"]);
    assert_eq!(held(&*direct_etcd, &service).await, ["127.0.0.1:24001"]);

    // Tell the members apart: one more instance in etcd only.
    let etcd_only = direct_etcd
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24002).id("cf-2").build(),
        ))
        .await
        .unwrap();
    etcd_only.register().await.unwrap();

    let instancer = registry
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    let consul_set = |e: &Event, f: &Freshness| {
        sources(e) == [("127.0.0.1:24001".to_string(), "consul".to_string())] && !f.is_stale()
    };
    let etcd_set = |e: &Event, f: &Freshness| {
        sources(e)
            == [
                ("127.0.0.1:24001".to_string(), "etcd".to_string()),
                ("127.0.0.1:24002".to_string(), "etcd".to_string()),
            ]
            && !f.is_stale()
    };
    until(&mut sub, "Consul's set (the primary)", consul_set).await;

    // Consul unreachable: etcd's set, fresh.
    proxy.cut();
    until(&mut sub, "etcd's set after Consul is cut", etcd_set).await;
    // Consul back: its set again.
    proxy.restore();
    until(&mut sub, "Consul's set once it is back", consul_set).await;

    // Deregistered through the composed registry: gone from both.
    registrar.deregister().await.unwrap();
    etcd_only.deregister().await.unwrap();
    assert!(held(&*direct_consul, &service).await.is_empty());
    assert!(held(&*direct_etcd, &service).await.is_empty());
    instancer.stop().await;
}

#[tokio::test]
async fn merge_consul_and_etcd_serves_the_union_with_sources() {
    let consul = require!(Server::Consul);
    let etcd = require!(Server::Etcd);
    let _locks = (shared(Server::Consul), shared(Server::Etcd));
    let registry =
        sdkit::connect(&format!("merge:consul://{consul}?wait=1s,etcd://{etcd}")).unwrap();
    let service = unique_name("compose-merge");
    let direct_consul = sdkit::connect(&format!("consul://{consul}")).unwrap();
    let direct_etcd = sdkit::connect(&format!("etcd://{etcd}")).unwrap();
    let mut registrars = Vec::new();
    for (registry, port) in [(&direct_consul, 24011), (&direct_etcd, 24012)] {
        let r = registry
            .registrar(Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", port)
                    .id(format!("cm-{port}"))
                    .build(),
            ))
            .await
            .unwrap();
        r.register().await.unwrap();
        registrars.push(r);
    }
    let instancer = registry
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    until(&mut sub, "the union", |e, f| {
        sources(e)
            == [
                ("127.0.0.1:24011".to_string(), "consul".to_string()),
                ("127.0.0.1:24012".to_string(), "etcd".to_string()),
            ]
            && !f.is_stale()
    })
    .await;
    // One member's instance goes: the union follows (through Consul's empty-set protection,
    // on by default: confirmed by Consul's next answer).
    registrars[0].deregister().await.unwrap();
    until(&mut sub, "the union without Consul's instance", |e, f| {
        e.addrs() == ["127.0.0.1:24012"] && !f.is_stale()
    })
    .await;
    registrars[1].deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn a_registration_made_while_a_member_is_down_reaches_it_when_it_returns() {
    let consul = require!(Server::Consul);
    let etcd = require!(Server::Etcd);
    let _locks = (shared(Server::Consul), shared(Server::Etcd));
    let proxy = Proxy::start(&consul).await;
    proxy.cut();
    let registry = sdkit::connect(&format!(
        "merge:consul://{}?timeout=1s,etcd://{etcd}",
        proxy.addr
    ))
    .unwrap();
    let service = unique_name("compose-retry");
    let registrar = registry
        .registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 24021).id("cr-1").build(),
        ))
        .await
        .unwrap();
    registrar
        .register()
        .await
        .expect("etcd accepts while Consul is unreachable");
    // wait=1s: the empty answer after the deregistration below is confirmed within a second
    // (empty-set protection is on by default).
    let direct_consul = sdkit::connect(&format!("consul://{consul}?wait=1s")).unwrap();
    let direct_etcd = sdkit::connect(&format!("etcd://{etcd}")).unwrap();
    assert_eq!(held(&*direct_etcd, &service).await, ["127.0.0.1:24021"]);
    assert!(held(&*direct_consul, &service).await.is_empty());

    proxy.restore();
    let instancer = direct_consul
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    until(&mut sub, "the retried registration in Consul", |e, _| {
        e.addrs() == ["127.0.0.1:24021"]
    })
    .await;
    registrar.deregister().await.unwrap();
    until(&mut sub, "deregistered from Consul", |e, _| {
        e.addrs().is_empty()
    })
    .await;
    assert!(held(&*direct_etcd, &service).await.is_empty());
    instancer.stop().await;
}
