//! The instancer and the registrar against the real BIND server of `scripts/registries`.
//! Records are written with BIND's own `nsupdate`, under a unique service name per test.

mod common;

use std::time::Duration;

use common::{nsupdate, owner, registry, wait_for_addrs, BOUND};
use hickory_proto::rr::Name;
use sd_core::{
    Event, Instance, Instancer, Registrar, Registration, Registry, ServiceQuery, Source, Step,
};
use sd_dnssrv::{LookupOptions, SrvSource, META_PRIORITY, META_TARGET};
use sd_testkit::{require, shared, unique_name, Server};

fn zone() -> String {
    sd_testkit::dns_zone()
}

/// Records added and removed by another client are published by the first lookup after the
/// change: the instancer keeps no cache (at most the round in flight plus one more).
#[tokio::test]
async fn added_and_removed_records_are_seen_on_the_next_round() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("dns-add");
    let reg = registry(&addr, "");
    let instancer = reg.dns_instancer(&ServiceQuery::new(&svc)).await.unwrap();
    let mut sub = instancer.subscribe();
    // NXDOMAIN is an empty set, not an error.
    let first = sub.next().await.unwrap();
    assert_eq!(first.as_instances().map(|s| s.len()), Some(0), "{first:?}");

    let z = zone();
    nsupdate(
        &addr,
        &format!(
            "update add {o} 0 IN SRV 0 1 8080 a.{z}.\nupdate add {o} 0 IN SRV 0 1 8081 b.{z}.",
            o = owner(&svc)
        ),
    )
    .await;
    let before = reg.client().srv_queries();
    let a = format!("a.{z}:8080");
    let b = format!("b.{z}:8081");
    wait_for_addrs(&mut sub, &[&a, &b]).await;
    let rounds = reg.client().srv_queries() - before;
    assert!(
        rounds <= 2,
        "the change took {rounds} lookups to be published"
    );

    nsupdate(
        &addr,
        &format!("update delete {} IN SRV 0 1 8080 a.{z}.", owner(&svc)),
    )
    .await;
    let before = reg.client().srv_queries();
    wait_for_addrs(&mut sub, &[&b]).await;
    assert!(reg.client().srv_queries() - before <= 2);

    nsupdate(&addr, &format!("update delete {} SRV", owner(&svc))).await;
    wait_for_addrs(&mut sub, &[]).await;
    instancer.stop().await;
}

/// One round of the source against the real server, returning what it published and the
/// wait it chose before the next round.
async fn one_round(
    reg: &sd_dnssrv::DnsRegistry,
    svc: &str,
    options: LookupOptions,
) -> (Step, Duration) {
    let name: Name = reg.srv_name(svc).unwrap();
    let mut source = SrvSource::new(reg.client().clone(), name, ServiceQuery::new(svc), options);
    let step = source.next_step().await;
    let wait = source
        .refresh_after()
        .expect("a successful round sets the refresh");
    (step, wait)
}

/// The refresh follows the record TTL inside [min_refresh, max_refresh]: a TTL 2 record is
/// re-read after about 2 s, a TTL 300 record after max_refresh, not sooner than 0.9 × it.
/// (The watch loop waits exactly `refresh_after`: sd-core's
/// `refresh_after_overrides_the_interval_per_round` checks that with paused time.)
#[tokio::test]
async fn the_record_ttl_paces_the_refresh() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let reg = registry(&addr, "");
    let options = LookupOptions {
        min_refresh: Duration::from_secs(1),
        max_refresh: Duration::from_secs(10),
        ..LookupOptions::default()
    };
    let z = zone();
    let short = unique_name("dns-ttl2");
    let long = unique_name("dns-ttl300");
    nsupdate(
        &addr,
        &format!(
            "update add {} 2 IN SRV 0 1 80 a.{z}.\nupdate add {} 300 IN SRV 0 1 80 a.{z}.",
            owner(&short),
            owner(&long)
        ),
    )
    .await;
    for _ in 0..20 {
        let (step, wait) = one_round(&reg, &short, options.clone()).await;
        assert!(
            matches!(step, Step::Publish(ref v) if v.len() == 1),
            "{step:?}"
        );
        assert!(
            wait >= Duration::from_millis(1800) && wait <= Duration::from_millis(2200),
            "TTL 2: {wait:?}"
        );
        let (_, wait) = one_round(&reg, &long, options.clone()).await;
        assert!(
            wait >= Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "TTL 300: {wait:?}"
        );
    }
    // An empty answer (NXDOMAIN) is re-read at min_refresh: the zone's negative TTL is 0.
    let (step, wait) = one_round(&reg, &unique_name("dns-none"), options.clone()).await;
    assert!(
        matches!(step, Step::Publish(ref v) if v.is_empty()),
        "{step:?}"
    );
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1100),
        "{wait:?}"
    );
    nsupdate(
        &addr,
        &format!(
            "update delete {} SRV\nupdate delete {} SRV",
            owner(&short),
            owner(&long)
        ),
    )
    .await;
}

/// DNS-3 regression: a port-0 record and a `.` target next to good records. go-kit failed
/// the whole resolution; here the good records are published and the bad ones skipped.
#[tokio::test]
async fn a_port_zero_record_is_skipped_alone() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("dns-port0");
    let z = zone();
    nsupdate(
        &addr,
        &format!(
            "update add {o} 0 IN SRV 0 1 8080 good1.{z}.\n\
             update add {o} 0 IN SRV 0 1 0 bad.{z}.\n\
             update add {o} 0 IN SRV 0 1 8081 good2.{z}.\n\
             update add {o} 0 IN SRV 0 1 9000 .",
            o = owner(&svc)
        ),
    )
    .await;
    let reg = registry(&addr, "");
    let instancer = reg.dns_instancer(&ServiceQuery::new(&svc)).await.unwrap();
    let state = instancer.state().unwrap();
    let mut want = vec![format!("good1.{z}:8080"), format!("good2.{z}:8081")];
    want.sort();
    assert_eq!(state.addrs(), want, "{state:?}");
    instancer.stop().await;
    nsupdate(&addr, &format!("update delete {} SRV", owner(&svc))).await;
}

/// RFC 2782: only the lowest priority group by default, every group with `all_priorities`;
/// weights go to `Instance::weight`, the priority to metadata.
#[tokio::test]
async fn priority_groups_and_weights() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("dns-prio");
    let z = zone();
    nsupdate(
        &addr,
        &format!(
            "update add {o} 0 IN SRV 10 60 8080 a.{z}.\n\
             update add {o} 0 IN SRV 10 40 8081 b.{z}.\n\
             update add {o} 0 IN SRV 20 0 8082 c.{z}.",
            o = owner(&svc)
        ),
    )
    .await;
    let lowest = registry(&addr, "")
        .dns_instancer(&ServiceQuery::new(&svc))
        .await
        .unwrap();
    let state = lowest.state().unwrap();
    let got: Vec<(String, u32, String)> = state
        .as_instances()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i.addr().to_string(),
                i.weight(),
                i.meta().get(META_PRIORITY).unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (format!("a.{z}:8080"), 60, "10".to_string()),
            (format!("b.{z}:8081"), 40, "10".to_string())
        ]
    );
    let all = registry(&addr, "&all_priorities=1")
        .dns_instancer(&ServiceQuery::new(&svc))
        .await
        .unwrap();
    let state = all.state().unwrap();
    let weights: Vec<u32> = state
        .as_instances()
        .unwrap()
        .iter()
        .map(Instance::weight)
        .collect();
    assert_eq!(weights, [60, 40, 0]);

    // When the lowest group goes, the next one takes over.
    let mut sub = lowest.subscribe();
    nsupdate(
        &addr,
        &format!(
            "update delete {o} IN SRV 10 60 8080 a.{z}.\nupdate delete {o} IN SRV 10 40 8081 b.{z}.",
            o = owner(&svc)
        ),
    )
    .await;
    let c = format!("c.{z}:8082");
    wait_for_addrs(&mut sub, &[&c]).await;
    lowest.stop().await;
    all.stop().await;
    nsupdate(&addr, &format!("update delete {} SRV", owner(&svc))).await;
}

/// `resolve_targets`: one instance per address of each target, the target name kept in
/// metadata and as the id; a target that does not resolve is skipped alone.
#[tokio::test]
async fn targets_resolve_to_addresses() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("dns-resolve");
    let z = zone();
    nsupdate(
        &addr,
        &format!(
            "update add {svc}-a.{z}. 0 IN A 127.0.0.11\n\
             update add {svc}-a.{z}. 0 IN A 127.0.0.12\n\
             update add {svc}-a.{z}. 0 IN AAAA ::1\n\
             update add {o} 0 IN SRV 0 5 8080 {svc}-a.{z}.\n\
             update add {o} 0 IN SRV 0 5 8081 {svc}-missing.{z}.",
            o = owner(&svc)
        ),
    )
    .await;
    let instancer = registry(&addr, "&resolve_targets=1")
        .dns_instancer(&ServiceQuery::new(&svc))
        .await
        .unwrap();
    let state = instancer.state().unwrap();
    assert_eq!(
        state.addrs(),
        ["127.0.0.11:8080", "127.0.0.12:8080", "[::1]:8080"],
        "{state:?}"
    );
    for i in state.as_instances().unwrap().iter() {
        assert_eq!(i.meta().get(META_TARGET).unwrap(), format!("{svc}-a.{z}"));
        assert_eq!(i.id(), format!("{svc}-a.{z}"));
        assert_eq!(i.weight(), 5);
    }
    instancer.stop().await;
    nsupdate(
        &addr,
        &format!(
            "update delete {} SRV\nupdate delete {svc}-a.{z}.",
            owner(&svc)
        ),
    )
    .await;
}

/// A full SRV name is used as given; a service name becomes `_<service>._tcp.<zone>`.
#[tokio::test]
async fn full_srv_names_and_the_seeded_service() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let reg = registry(&addr, "");
    let z = zone();
    let by_service = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let by_name = reg
        .dns_instancer(&ServiceQuery::new(format!("_web._tcp.{z}")))
        .await
        .unwrap();
    let want = [format!("web1.{z}:8080"), format!("web2.{z}:8081")];
    assert_eq!(by_service.state().unwrap().addrs(), want);
    assert_eq!(by_name.state().unwrap().addrs(), want);
    by_service.stop().await;
    by_name.stop().await;
}

/// The registrar: RFC 2136 add, replace (same id, new port), idempotent register and
/// deregister, deregister before register.
#[tokio::test]
async fn registrar_adds_replaces_and_deletes_records() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let svc = unique_name("dns-reg");
    let reg = registry(&addr, "&resolve_targets=1");
    let instancer = reg.dns_instancer(&ServiceQuery::new(&svc)).await.unwrap();
    let mut sub = instancer.subscribe();

    let one = reg
        .registrar(Registration::new(
            &svc,
            Instance::builder("127.0.0.21", 9001)
                .id("one")
                .weight(3)
                .build(),
        ))
        .await
        .unwrap();
    one.deregister().await.unwrap(); // before register: harmless
    one.register().await.unwrap();
    one.register().await.unwrap(); // twice: harmless
    let e = wait_for_addrs(&mut sub, &["127.0.0.21:9001"]).await;
    let i = &e.as_instances().unwrap().iter().next().unwrap().clone();
    assert_eq!(i.weight(), 3);
    assert_eq!(i.id(), format!("one.{svc}.{}", zone()));

    let host = reg
        .registrar(Registration::new(
            &svc,
            Instance::builder(format!("web1.{}", zone()), 9002).build(),
        ))
        .await
        .unwrap();
    host.register().await.unwrap();
    wait_for_addrs(&mut sub, &["127.0.0.21:9001", "127.0.0.1:9002"]).await;

    // The same id with a new port and address replaces the old record. The old registrar
    // goes first (dropped: its keep-alive stops), as when a process restarts on a new port;
    // two live registrars of one id would each keep re-asserting their own record.
    drop(one);
    let moved = reg
        .registrar(Registration::new(
            &svc,
            Instance::builder("127.0.0.22", 9003).id("one").build(),
        ))
        .await
        .unwrap();
    moved.register().await.unwrap();
    wait_for_addrs(&mut sub, &["127.0.0.22:9003", "127.0.0.1:9002"]).await;

    moved.deregister().await.unwrap();
    moved.deregister().await.unwrap();
    host.deregister().await.unwrap();
    wait_for_addrs(&mut sub, &[]).await;
    instancer.stop().await;
}

/// Updates to a zone the server is not primary for are refused with an error that says what
/// to configure.
#[tokio::test]
async fn a_refused_update_says_why() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let reg =
        sd_dnssrv::DnsRegistry::from_url(&format!("dns+srv://{addr}/?zone=not-served.example"))
            .unwrap();
    let r = reg
        .registrar(Registration::new("web", Instance::new("127.0.0.1", 80)))
        .await
        .unwrap();
    let err = r.register().await.unwrap_err();
    assert!(matches!(err, sd_core::Error::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("not-served.example") && text.contains("answered"),
        "{text}"
    );
    assert!(
        text.contains("allow-update") && text.contains("tsig_name"),
        "{text}"
    );
}

/// A service query with tags matches nothing (SRV records carry no tags), like any backend
/// whose instances lack the tag; passing-only keeps everything (DNS has no health).
#[tokio::test]
async fn tags_filter_everything_out_and_passing_only_keeps_all() {
    let addr = require!(Server::Dns);
    let _lock = shared(Server::Dns);
    let reg = registry(&addr, "");
    let tagged = reg
        .dns_instancer(&ServiceQuery::new("web").tag("v2"))
        .await
        .unwrap();
    assert_eq!(tagged.state().unwrap().addrs(), Vec::<String>::new());
    let passing = reg
        .dns_instancer(&ServiceQuery::new("web").passing_only(true))
        .await
        .unwrap();
    assert_eq!(passing.state().unwrap().addrs().len(), 2);
    tagged.stop().await;
    passing.stop().await;
}

/// `stop` is idempotent and no event follows it.
#[tokio::test]
async fn stop_is_idempotent_and_final() {
    let addr = require!(Server::Dns);
    let reg = registry(&addr, "");
    let instancer = reg.dns_instancer(&ServiceQuery::new("web")).await.unwrap();
    let mut sub = instancer.subscribe();
    assert!(matches!(sub.next().await, Some(Event::Instances(_))));
    instancer.stop().await;
    instancer.stop().await;
    let after = reg.client().srv_queries();
    let end = tokio::time::timeout(BOUND, sub.next())
        .await
        .expect("closed, not hanging");
    assert!(end.is_none(), "{end:?}");
    assert_eq!(reg.client().srv_queries(), after, "no lookup after stop");
}
