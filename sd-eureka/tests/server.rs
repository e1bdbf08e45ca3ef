//! Tests against the real Spring Cloud Netflix Eureka server started by
//! `scripts/registries up eureka` (`SD_TEST_EUREKA`). None of them disturbs the server;
//! they take `shared(Server::Eureka)` so they wait while a fault test restarts it.

mod common;

use std::time::{Duration, Instant};

use common::{by_id, ids, register_unusable, registry, wait_for_set};
use sd_core::{
    Event, Health, HealthCheck, Instance, Instancer, Registrar, Registration, RegistrationGuard,
    Registry, ServiceQuery,
};
use sd_eureka::{EurekaRegistry, Status, META_SECURE, META_STATUS};
use sd_testkit::{require, shared, unique_name, Server};

#[tokio::test]
async fn register_discover_round_trip_and_deregister_to_an_empty_set() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let reg = registry(&addr);
    let service = unique_name("eureka-rt");
    let registrar = reg
        .eureka_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 21001)
                    .id("rt-1")
                    .tag("v2")
                    .tag("eu")
                    .meta("zone", "a")
                    .meta("build.id", "42")
                    .build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(10))),
        )
        .unwrap();
    registrar.register().await.unwrap();
    // Idempotent: a second register re-sends and keeps one renewal task.
    registrar.register().await.unwrap();

    // The service name as typed, in another case: Eureka matches app names upper-cased.
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.to_uppercase()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "registered", |s| by_id(s, "rt-1").is_some()).await;
    let i = by_id(&set, "rt-1").unwrap();
    assert_eq!(i.addr(), "127.0.0.1:21001");
    assert_eq!(i.tags(), ["v2", "eu"]);
    assert_eq!(i.meta().get("zone").unwrap(), "a");
    assert_eq!(i.meta().get("build.id").unwrap(), "42");
    assert_eq!(i.meta().get(META_STATUS).unwrap(), "UP");
    assert!(!i.meta().contains_key(META_SECURE));
    assert_eq!(i.health(), Health::Passing);

    // Tags are ANDed, client-side.
    let tagged = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()).tag("v2").tag("us"))
        .await;
    assert_eq!(tagged.state().unwrap().addrs(), Vec::<String>::new());
    tagged.stop().await;

    registrar.deregister().await.unwrap();
    registrar.deregister().await.unwrap();
    // The last instance leaving is an empty set, not an error (go-kit EU-4).
    let set = wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    assert!(set.is_empty());
    instancer.stop().await;
    instancer.stop().await;
}

#[tokio::test]
async fn an_unknown_app_is_an_empty_set_not_an_error() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let instancer = registry(&addr)
        .instancer(&ServiceQuery::new(unique_name("eureka-none")))
        .await
        .unwrap();
    assert_eq!(
        instancer.subscribe().next().await,
        Some(Event::Instances(Default::default()))
    );
    instancer.stop().await;
}

#[tokio::test]
async fn out_of_service_and_down_are_left_out_by_passing_only_and_shown_otherwise() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let reg = registry(&addr);
    let service = unique_name("eureka-status");
    let mut registrars = Vec::new();
    for (n, id) in ["up", "oos", "down"].iter().enumerate() {
        let r = reg
            .eureka_registrar(Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 22000 + n as u16)
                    .id(*id)
                    .build(),
            ))
            .unwrap();
        r.register().await.unwrap();
        registrars.push(r);
    }
    let all = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let passing = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let (mut all_sub, mut passing_sub) = (all.subscribe(), passing.subscribe());
    wait_for_set(&mut passing_sub, "three up", |s| s.len() == 3).await;

    registrars[1]
        .set_status(Status::OutOfService)
        .await
        .unwrap();
    registrars[2].set_status(Status::Down).await.unwrap();
    let set = wait_for_set(&mut passing_sub, "only UP", |s| ids(s) == ["up"]).await;
    assert_eq!(set.len(), 1);
    let set = wait_for_set(&mut all_sub, "statuses shown", |s| {
        by_id(s, "down").is_some_and(|i| i.meta().get(META_STATUS).unwrap() == "DOWN")
            && by_id(s, "oos")
                .is_some_and(|i| i.meta().get(META_STATUS).unwrap() == "OUT_OF_SERVICE")
    })
    .await;
    assert_eq!(set.len(), 3);
    assert_eq!(by_id(&set, "oos").unwrap().health(), Health::Critical);
    assert_eq!(by_id(&set, "down").unwrap().health(), Health::Critical);
    assert_eq!(by_id(&set, "up").unwrap().health(), Health::Passing);

    // Back in rotation without registering again.
    registrars[1].set_status(Status::Up).await.unwrap();
    wait_for_set(&mut passing_sub, "oos back", |s| ids(s) == ["oos", "up"]).await;
    assert_eq!(registrars[1].reregistrations(), 0);

    // A registration's health is its initial status.
    let starting = reg
        .eureka_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 22010)
                .id("starting")
                .health(Health::Unknown)
                .build(),
        ))
        .unwrap();
    starting.register().await.unwrap();
    let set = wait_for_set(&mut all_sub, "starting shown", |s| {
        by_id(s, "starting").is_some()
    })
    .await;
    assert_eq!(by_id(&set, "starting").unwrap().health(), Health::Unknown);
    assert_eq!(
        by_id(&set, "starting")
            .unwrap()
            .meta()
            .get(META_STATUS)
            .unwrap(),
        "STARTING"
    );
    let passing_now = passing.state().unwrap();
    assert!(by_id(passing_now.as_instances().unwrap(), "starting").is_none());

    for r in registrars.iter().chain([&starting]) {
        r.deregister().await.unwrap();
    }
    all.stop().await;
    passing.stop().await;
}

#[tokio::test]
async fn an_unusable_instance_is_skipped_alone() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let reg = registry(&addr);
    let service = unique_name("eureka-bad");
    register_unusable(&addr, &service, "bad-1").await;
    let good = reg
        .eureka_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 23001).id("good-1").build(),
        ))
        .unwrap();
    good.register().await.unwrap();
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let set = wait_for_set(&mut instancer.subscribe(), "good one", |s| {
        by_id(s, "good-1").is_some()
    })
    .await;
    assert_eq!(ids(&set), ["good-1"]);
    good.deregister().await.unwrap();
    reg.client()
        .cancel(&service.to_uppercase(), "bad-1")
        .await
        .unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn renewals_stop_then_the_server_evicts_and_the_instancer_publishes_the_smaller_set() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let reg = registry(&addr);
    let service = unique_name("eureka-evict");
    let keep = reg
        .eureka_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 24001).id("keep").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(2))),
        )
        .unwrap();
    keep.register().await.unwrap();
    let dying = reg
        .registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 24002).id("dies").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(2))),
        )
        .await
        .unwrap();
    let guard = RegistrationGuard::register(dying).await.unwrap();
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "both", |s| s.len() == 2).await;

    // The registering process dies: its renewals stop, nothing is cancelled.
    guard.abandon();
    let died = Instant::now();
    // Lease 2 s: evicted after about 2 x 2 s + the 1 s eviction interval.
    let set = wait_for_set(&mut sub, "evicted", |s| ids(s) == ["keep"]).await;
    eprintln!(
        "evicted {:?} after the renewals stopped (lease 2 s, eviction interval 1 s)",
        died.elapsed()
    );
    assert_eq!(set.len(), 1);
    // The survivor, renewed all along, was never lost.
    assert_eq!(keep.reregistrations(), 0);
    keep.deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn a_second_server_in_the_list_takes_over_while_the_first_is_down() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    // The first server is down (nothing listens on port 1).
    let live = addr.strip_prefix("http://").unwrap();
    let reg = EurekaRegistry::from_url(&format!(
        "eureka://127.0.0.1:1,{live}?poll=200ms&timeout=2s"
    ))
    .unwrap();
    assert_eq!(reg.client().servers().len(), 2);
    let service = unique_name("eureka-failover");
    let registrar = reg
        .eureka_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 25001).id("f1").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(3))),
        )
        .unwrap();
    registrar.register().await.unwrap();
    assert_eq!(
        reg.client().preferred_server().port(),
        url::Url::parse(&addr).unwrap().port()
    );
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "via the second server", |s| {
        by_id(s, "f1").is_some()
    })
    .await;
    let later = reg
        .eureka_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 25002).id("f2").build(),
        ))
        .unwrap();
    later.register().await.unwrap();
    wait_for_set(&mut sub, "both", |s| ids(s) == ["f1", "f2"]).await;
    registrar.set_status(Status::OutOfService).await.unwrap();
    wait_for_set(&mut sub, "f1 out of service", |s| ids(s) == ["f2"]).await;
    registrar.deregister().await.unwrap();
    later.deregister().await.unwrap();
    wait_for_set(&mut sub, "all gone", |s| s.is_empty()).await;
    assert_eq!(registrar.reregistrations(), 0);
    instancer.stop().await;
}

#[tokio::test]
async fn vip_lookup_finds_the_instances_announcing_the_vip_address() {
    let addr = require!(Server::Eureka);
    let _lock = shared(Server::Eureka);
    let by_vip =
        EurekaRegistry::from_url(&common::url(&addr, "poll=200ms&timeout=2s&vip=true")).unwrap();
    let service = unique_name("eureka-vip");
    // The registrar announces the service name as typed as the VIP address.
    let registrar = by_vip
        .eureka_registrar(Registration::new(
            service.as_str(),
            Instance::builder("127.0.0.1", 29001).id("v1").build(),
        ))
        .unwrap();
    registrar.register().await.unwrap();
    let instancer = by_vip
        .eureka_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "found by VIP", |s| by_id(s, "v1").is_some()).await;
    assert_eq!(set.len(), 1);
    registrar.deregister().await.unwrap();
    // No instance announces the VIP any more: the empty set.
    wait_for_set(&mut sub, "VIP gone", |s| s.is_empty()).await;
    instancer.stop().await;
}
