//! The Consul backend against the real agent started by `scripts/registries up`
//! (`SD_TEST_CONSUL`). Each test uses its own service name, so tests run in parallel; each
//! holds `sd_testkit::shared`, so none runs while a fault test (tests/faults.rs, in any
//! process) has the agent killed or frozen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{by_id, ids, wait_for_set, BOUND};
use sd_consul::{ConsulRegistry, META_DATACENTER, META_NODE};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Health, HealthCheck, Instance,
    Instancer, Registrar, Registration, RegistrationGuard, Registry, ServiceQuery,
};
use sd_testkit::{require, shared, unique_name, Server};

fn registry(addr: &str, options: &str) -> ConsulRegistry {
    ConsulRegistry::from_url(&format!("consul://{addr}?wait=2s&timeout=5s{options}")).unwrap()
}

fn instance(host: &str, port: u16, id: &str) -> sd_core::InstanceBuilder {
    Instance::builder(host, port).id(id)
}

#[tokio::test]
async fn register_and_a_passing_only_instancer_sees_it_passing_at_once() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    std::env::set_var("SD_CONSUL_TEST_TOKEN", "ignored-by-a-dev-agent");
    let reg: Arc<dyn Registry> = Arc::new(registry(&addr, "&token_env=SD_CONSUL_TEST_TOKEN"));
    let service = unique_name("consul-register");
    let registrar = reg
        .registrar(
            Registration::new(service.as_str(), instance("127.0.0.1", 20001, "r1").build())
                .check(HealthCheck::Ttl(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    registrar.register().await.unwrap();

    let instancer = reg
        .instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    // The TTL check is registered passing, so the very first (synchronous) query sees it.
    match sub.current() {
        Some(Event::Instances(set)) => {
            let i = by_id(&set, "r1").expect("registered instance in the first state");
            assert_eq!(i.addr(), "127.0.0.1:20001");
            assert_eq!(i.health(), Health::Passing);
        }
        other => panic!("first state: {other:?}"),
    }
    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test]
async fn tags_are_anded_across_several_tags() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-tags");
    let mut registrars = Vec::new();
    for (id, tags) in [
        ("ab", &["a", "b"][..]),
        ("a", &["a"]),
        ("bc", &["b", "c"]),
        ("cab", &["c", "a", "b"]),
    ] {
        let r = reg
            .consul_registrar(Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20000 + registrars.len() as u16, id)
                    .tags(tags.iter().copied())
                    .build(),
            ))
            .unwrap();
        r.register().await.unwrap();
        registrars.push(r);
    }
    let both = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).tag("a").tag("b"))
        .await;
    let set = wait_for_set(&mut both.subscribe(), "a AND b", |s| s.len() == 2).await;
    assert_eq!(ids(&set), ["ab", "cab"]);
    let b_only = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).tag("b"))
        .await;
    let set = wait_for_set(&mut b_only.subscribe(), "b", |s| s.len() == 3).await;
    assert_eq!(ids(&set), ["ab", "bc", "cab"]);
    let none = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).tag("c").tag("nope"))
        .await;
    assert_eq!(none.state(), Some(Event::Instances(Default::default())));
    for r in &registrars {
        r.deregister().await.unwrap();
    }
    for i in [both, b_only, none] {
        i.stop().await;
    }
}

#[tokio::test]
async fn passing_only_drops_an_instance_whose_ttl_check_goes_critical() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-ttl");
    // A 1 s TTL and a heartbeat far beyond it: the check is left to go critical.
    let lazy = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20010, "lazy").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(1))),
        )
        .unwrap()
        .period(Duration::from_secs(3600));
    // The heartbeated instance: a TTL of ALIVE_TTL and a heartbeat every ALIVE_PERIOD, so
    // it goes critical only if no heartbeat gets through for ALIVE_TTL - ALIVE_PERIOD =
    // 3.6 s (a stall far beyond what a loaded 2-core box shows), while the test still
    // outlives the TTL by half (so passing at the end proves the heartbeats kept it so).
    const ALIVE_TTL: Duration = Duration::from_secs(4);
    const ALIVE_PERIOD: Duration = Duration::from_millis(400);
    let alive = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20011, "alive").build(),
            )
            .check(HealthCheck::Ttl(ALIVE_TTL)),
        )
        .unwrap()
        .period(ALIVE_PERIOD);
    lazy.register().await.unwrap();
    alive.register().await.unwrap();
    let alive_since = std::time::Instant::now();

    let passing = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let all = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let (mut p, mut a) = (passing.subscribe(), all.subscribe());
    let set = wait_for_set(&mut p, "only the heartbeating instance", |s| {
        ids(s) == ["alive"]
    })
    .await;
    assert_eq!(by_id(&set, "alive").unwrap().health(), Health::Passing);
    let set = wait_for_set(&mut a, "lazy critical", |s| {
        by_id(s, "lazy").is_some_and(|i| i.health() == Health::Critical)
    })
    .await;
    assert_eq!(
        by_id(&set, "lazy").unwrap().weight(),
        1,
        "critical instances keep their registered weight (health says critical)"
    );
    // Use the lazy instance as a clock: re-registering makes it passing again and its
    // 1 s TTL lapses again (each round takes at least 1 s, measured by the agent). Go on
    // until 1.5 x ALIVE_TTL has passed since "alive" registered: it is then still passing
    // only because its heartbeats kept it so. (The round cap is only a bound.)
    let mut round = 0;
    while alive_since.elapsed() < ALIVE_TTL + ALIVE_TTL / 2 {
        round += 1;
        assert!(round <= 30, "the lazy clock does not tick");
        lazy.register().await.unwrap();
        wait_for_set(&mut a, "lazy passing again", |s| {
            by_id(s, "lazy").is_some_and(|i| i.health() == Health::Passing)
        })
        .await;
        let set = wait_for_set(&mut a, "lazy critical again", |s| {
            by_id(s, "lazy").is_some_and(|i| i.health() == Health::Critical)
        })
        .await;
        assert_eq!(
            by_id(&set, "alive").unwrap().health(),
            Health::Passing,
            "round {round}"
        );
    }
    assert_eq!(alive.reregistrations(), 0);
    lazy.deregister().await.unwrap();
    alive.deregister().await.unwrap();
    passing.stop().await;
    all.stop().await;
}

#[tokio::test]
async fn deregister_removes_the_instance_and_both_calls_are_idempotent() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-dereg");
    let r = reg
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20020, "d1").build(),
        ))
        .unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    r.register().await.unwrap();
    r.register().await.unwrap(); // an upsert: still one instance
    let set = wait_for_set(&mut sub, "registered", |s| !s.is_empty()).await;
    assert_eq!(ids(&set), ["d1"]);
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    r.deregister().await.unwrap(); // already gone: fine
    assert_eq!(
        reg.client().agent_service("d1").await.unwrap(),
        None,
        "the agent no longer knows the service"
    );
    // A guard deregisters too.
    let guard = RegistrationGuard::register(Arc::new(
        reg.consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20021, "d2").build(),
        ))
        .unwrap(),
    ))
    .await
    .unwrap();
    wait_for_set(&mut sub, "guard registered", |s| ids(s) == ["d2"]).await;
    guard.deregister().await.unwrap();
    wait_for_set(&mut sub, "guard deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test]
async fn datacenter_node_meta_and_weights_show_up_on_the_instance() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-meta");
    let r = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20030, "m1")
                    .tag("v2")
                    .meta("version", "2.1")
                    .meta("zone", "a")
                    .weight(7)
                    .build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(30))),
        )
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "registered", |s| !s.is_empty()).await;
    let i = by_id(&set, "m1").unwrap();
    assert_eq!(i.tags(), ["v2"]);
    assert_eq!(i.meta().get("version").unwrap(), "2.1");
    assert_eq!(i.meta().get("zone").unwrap(), "a");
    assert_eq!(i.meta().get(META_DATACENTER).unwrap(), "dc1");
    assert_eq!(i.meta().get(META_NODE).unwrap(), "sd-test");
    assert_eq!((i.health(), i.weight()), (Health::Passing, 7));

    // Warning: the Warning weight applies; sdkit registers it as the weight, so it reads
    // back as registered.
    let check = r.ttl_check_id().unwrap().to_string();
    let url = reg
        .client()
        .base_url()
        .join(&format!("v1/agent/check/warn/{check}"))
        .unwrap();
    let status = reqwest::Client::new()
        .put(url)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let set = wait_for_set(&mut sub, "warning", |s| {
        by_id(s, "m1").is_some_and(|i| i.health() == Health::Warning)
    })
    .await;
    assert_eq!(by_id(&set, "m1").unwrap().weight(), 7);
    r.deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn service_address_wins_over_node_address_ipv6_is_bracketed_and_same_addr_ids_stay_apart() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-addr");
    let mut rs = Vec::new();
    for (host, port, id) in [
        ("10.1.2.3", 9000, "v4"),
        ("::1", 9001, "v6"),
        ("10.1.2.3", 9000, "v4-twin"),
    ] {
        let r = reg
            .consul_registrar(Registration::new(
                service.as_str(),
                instance(host, port, id).build(),
            ))
            .unwrap();
        r.register().await.unwrap();
        rs.push(r);
    }
    // Registered through the raw API without an address: the node address (127.0.0.1) is used.
    let url = reg
        .client()
        .base_url()
        .join("v1/agent/service/register")
        .unwrap();
    let body = serde_json::json!({"ID": "noaddr", "Name": service, "Port": 9002});
    let status = reqwest::Client::new()
        .put(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");

    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let set = wait_for_set(&mut instancer.subscribe(), "four instances", |s| {
        s.len() == 4
    })
    .await;
    let addrs: Vec<(String, String)> = set
        .iter()
        .map(|i| (i.addr().to_string(), i.id().to_string()))
        .collect();
    assert_eq!(
        addrs,
        [
            ("10.1.2.3:9000".to_string(), "v4".to_string()),
            ("10.1.2.3:9000".to_string(), "v4-twin".to_string()),
            ("127.0.0.1:9002".to_string(), "noaddr".to_string()),
            ("[::1]:9001".to_string(), "v6".to_string()),
        ]
    );
    for r in &rs {
        r.deregister().await.unwrap();
    }
    reg.client().deregister("noaddr").await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn deregister_critical_after_is_sent_and_accepted() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-dcsa");
    let r = reg
        .consul_registrar(
            Registration::new(service.as_str(), instance("127.0.0.1", 20040, "x1").build())
                .check(HealthCheck::Ttl(Duration::from_secs(10)))
                .deregister_critical_after(Duration::from_secs(90)),
        )
        .unwrap();
    assert_eq!(
        r.registration_body()["Check"]["DeregisterCriticalServiceAfter"],
        "90000ms"
    );
    r.register().await.unwrap();
    // Consul 1.19 does not echo DeregisterCriticalServiceAfter back for TTL checks; what the
    // agent shows is that it accepted the check, under our id, passing.
    let checks = reg.client().agent_checks().await.unwrap();
    let check = &checks["service:x1"];
    assert_eq!(check["Type"], "ttl");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["ServiceID"], "x1");
    r.deregister().await.unwrap();
}

#[tokio::test]
async fn http_tcp_and_grpc_checks_are_run_by_the_agent() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-checks");
    // The agent's own HTTP port is something that answers on loopback.
    let tcp = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20050, "tcp").build(),
            )
            .check(HealthCheck::Tcp {
                addr: addr.clone(),
                interval: Duration::from_secs(1),
            }),
        )
        .unwrap();
    let http = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20051, "http").build(),
            )
            .check(HealthCheck::Http {
                url: format!("http://{addr}/v1/status/leader"),
                interval: Duration::from_secs(1),
            }),
        )
        .unwrap();
    tcp.register().await.unwrap();
    http.register().await.unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let set = wait_for_set(&mut instancer.subscribe(), "both checks passing", |s| {
        s.len() == 2
    })
    .await;
    assert_eq!(ids(&set), ["http", "tcp"]);
    // A gRPC check (nothing serves gRPC here, so it is critical): the agent runs it as one.
    let grpc = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20052, "grpc").build(),
            )
            .check(HealthCheck::Grpc {
                target: "127.0.0.1:1/health".into(),
                interval: Duration::from_secs(30),
            }),
        )
        .unwrap();
    grpc.register().await.unwrap();
    let checks = reg.client().agent_checks().await.unwrap();
    assert_eq!(checks["service:tcp"]["Type"], "tcp");
    assert_eq!(checks["service:http"]["Type"], "http");
    assert_eq!(checks["service:grpc"]["Type"], "grpc");
    grpc.deregister().await.unwrap();
    tcp.deregister().await.unwrap();
    http.deregister().await.unwrap();
    instancer.stop().await;
}

#[tokio::test]
async fn a_registration_lost_behind_the_registrars_back_is_registered_again() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-lost");
    let ttl = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", 20060, "ttl").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(3))),
        )
        .unwrap();
    let plain = reg
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20061, "plain").build(),
        ))
        .unwrap()
        .period(Duration::from_millis(300));
    ttl.register().await.unwrap();
    plain.register().await.unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "both", |s| s.len() == 2).await;
    // Someone removes both from the agent; the heartbeat (404) and the presence check notice.
    assert!(reg.client().deregister("ttl").await.unwrap());
    assert!(reg.client().deregister("plain").await.unwrap());
    wait_for_set(&mut sub, "both back", |s| {
        s.len() == 2 && ids(s) == ["plain", "ttl"]
    })
    .await;
    let (mut a, mut b) = (ttl.watch_reregistrations(), plain.watch_reregistrations());
    tokio::time::timeout(BOUND, async {
        a.wait_for(|n| *n >= 1).await.unwrap();
        b.wait_for(|n| *n >= 1).await.unwrap();
    })
    .await
    .expect("both registrars counted a re-registration");
    ttl.deregister().await.unwrap();
    plain.deregister().await.unwrap();
    wait_for_set(&mut sub, "gone for good", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test]
async fn datacenter_namespace_and_partition_reach_the_agent() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let service = unique_name("consul-opts");
    for (options, needle) in [
        ("&dc=nosuchdc", "No path to datacenter"),
        ("&ns=team", "Namespaces are a Consul Enterprise feature"),
        (
            "&partition=p1",
            "Partitions are a Consul Enterprise feature",
        ),
    ] {
        let reg = registry(&addr, options);
        let instancer = reg
            .consul_instancer(&ServiceQuery::new(service.as_str()))
            .await;
        match instancer.state() {
            Some(Event::Error(e)) => assert!(e.to_string().contains(needle), "{options}: {e}"),
            other => panic!("{options}: expected the agent's error, got {other:?}"),
        }
        instancer.stop().await;
    }
    let reg = registry(&addr, "&dc=dc1");
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(
        instancer.state(),
        Some(Event::Instances(Default::default()))
    );
    instancer.stop().await;
}

#[tokio::test]
async fn stop_cancels_a_blocking_query_at_once_consul_9() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = ConsulRegistry::from_url(&format!("consul://{addr}?wait=10m")).unwrap();
    let service = unique_name("consul-stop");
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    assert!(sub.next().await.is_some());
    // The loop now blocks on a 10-minute query; stop must not wait for it.
    tokio::time::timeout(Duration::from_secs(10), instancer.stop())
        .await
        .expect("stop returned while the blocking query was in flight");
    assert_eq!(sub.next().await, None, "nothing after stop");
    instancer.stop().await; // idempotent
}

#[tokio::test]
async fn the_endpointer_follows_registrations() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg = registry(&addr, "");
    let service = unique_name("consul-endpointer");
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(format!("http://{}", i.addr()))
        });
    assert!(endpointer.ready().await);
    let r = reg
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20070, "e1").build(),
        ))
        .unwrap();
    r.register().await.unwrap();
    let mut changes = endpointer.changes();
    tokio::time::timeout(BOUND, async {
        while endpointer.endpoints().get().map(|e| e.len()) != Ok(1) {
            changes.changed().await;
        }
    })
    .await
    .expect("endpoint made");
    assert_eq!(
        endpointer.endpoints().get().unwrap()[0].as_str(),
        "http://127.0.0.1:20070"
    );
    r.deregister().await.unwrap();
    endpointer.close().await;
    instancer.stop().await;
}

#[tokio::test]
async fn an_unknown_service_is_an_empty_set_not_an_error() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul); // wait while a fault test has the agent down
    let reg: Arc<dyn Registry> = Arc::new(registry(&addr, ""));
    let instancer = reg
        .instancer(&ServiceQuery::new(unique_name("consul-nobody")))
        .await
        .unwrap();
    assert_eq!(
        instancer.subscribe().current(),
        Some(Event::Instances(Default::default()))
    );
    instancer.stop().await;
    let err = reg.instancer(&ServiceQuery::new(" ")).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Issue 9, item 17 (orphaned registrations): a `register()` that times out, or is
/// cancelled, after the agent applied it must still be undone by `deregister()`.
#[tokio::test]
async fn orphaned_registration_a_timed_out_or_cancelled_register_is_still_deregistered() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul);
    let direct = registry(&addr, "");
    let service = unique_name("consul-orphan");
    let proxy = common::HoldingProxy::start(&addr).await;
    // Through the proxy: the agent gets the requests, the client gets no answer while held.
    let via_proxy =
        ConsulRegistry::from_url(&format!("consul://{}?wait=2s&timeout=3s", proxy.addr)).unwrap();

    // 1. A timeout: the agent registered it, the registrar saw only Error::Timeout.
    let r = via_proxy
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20090, "orphan-timeout").build(),
        ))
        .unwrap();
    let err = r.register().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    common::wait_agent_knows(direct.client(), "orphan-timeout", true).await;
    proxy.hold(false);
    r.deregister().await.unwrap();
    assert_eq!(
        direct
            .client()
            .agent_service("orphan-timeout")
            .await
            .unwrap(),
        None,
        "deregister() after a timed-out register() must remove what the agent applied"
    );

    // 2. A cancellation: the register() future is dropped once the agent has applied it.
    proxy.hold(true);
    let r = via_proxy
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20091, "orphan-cancel").build(),
        ))
        .unwrap();
    tokio::select! {
        res = r.register() => panic!("register answered through a holding proxy: {res:?}"),
        () = common::wait_agent_knows(direct.client(), "orphan-cancel", true) => {}
    }
    proxy.hold(false);
    r.deregister().await.unwrap();
    assert_eq!(
        direct
            .client()
            .agent_service("orphan-cancel")
            .await
            .unwrap(),
        None,
        "deregister() after a cancelled register() must remove what the agent applied"
    );
}

/// Issue 9, item 18 (tag case): Consul matches tags case-insensitively; every tag of a
/// query, not only the first (which the agent filters), must match the same way.
#[tokio::test]
async fn tag_case_is_ignored_on_every_tag_as_consul_does() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul);
    let reg = registry(&addr, "");
    let service = unique_name("consul-tagcase");
    let r = reg
        .consul_registrar(Registration::new(
            service.as_str(),
            instance("127.0.0.1", 20095, "tc1")
                .tags(["V2", "Zone-A"])
                .build(),
        ))
        .unwrap();
    r.register().await.unwrap();
    for tags in [["v2", "zone-a"], ["zone-a", "v2"], ["V2", "ZONE-A"]] {
        let i = reg
            .consul_instancer(
                &ServiceQuery::new(service.as_str())
                    .tag(tags[0])
                    .tag(tags[1]),
            )
            .await;
        let set = wait_for_set(&mut i.subscribe(), "matched whatever the case", |s| {
            !s.is_empty()
        })
        .await;
        assert_eq!(ids(&set), ["tc1"], "{tags:?}");
        assert_eq!(
            by_id(&set, "tc1").unwrap().tags(),
            ["V2", "Zone-A"],
            "tags kept as registered"
        );
        i.stop().await;
    }
    // A tag that differs by more than case still filters it out.
    let none = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).tag("v2").tag("zone-b"))
        .await;
    assert_eq!(none.state(), Some(Event::Instances(Default::default())));
    none.stop().await;
    r.deregister().await.unwrap();
}

/// Conformance `health` capability: a registration's `Instance::health()` is what
/// instancers see; the TTL check carries it on register and on every heartbeat.
#[tokio::test]
async fn registration_health_is_what_instancers_see_through_the_ttl_check() {
    let addr = require!(Server::Consul);
    let _shared = shared(Server::Consul);
    let reg = registry(&addr, "");
    let service = unique_name("consul-health");
    let registrar = |port, id: &str, health| {
        reg.consul_registrar(
            Registration::new(
                service.as_str(),
                instance("127.0.0.1", port, id).health(health).build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(10))),
        )
        .unwrap()
        // Heartbeats every 100 ms: many of them during the test.
        .period(Duration::from_millis(100))
    };
    let critical = registrar(20096, "h-critical", Health::Critical);
    let warning = registrar(20097, "h-warning", Health::Warning);
    let passing = registrar(20098, "h-passing", Health::Passing);
    for r in [&critical, &warning, &passing] {
        r.register().await.unwrap();
    }
    let all = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let passing_only = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    // Seen at once (the first query runs before the instancer is returned), each with
    // its own health.
    let health_of = |set: &sd_core::InstanceSet| {
        let mut v: Vec<(String, Health)> = set
            .iter()
            .map(|i| (i.id().to_string(), i.health()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let expected = vec![
        ("h-critical".to_string(), Health::Critical),
        ("h-passing".to_string(), Health::Passing),
        ("h-warning".to_string(), Health::Warning),
    ];
    match all.state() {
        Some(Event::Instances(set)) => assert_eq!(health_of(&set), expected),
        other => panic!("first state: {other:?}"),
    }
    match passing_only.state() {
        Some(Event::Instances(set)) => assert_eq!(ids(&set), ["h-passing"]),
        other => panic!("first state: {other:?}"),
    }
    // The heartbeats (every 100 ms) keep each check at its health: in 1 s (about ten of
    // them) no change may be published, in particular not the warning or critical one
    // turning passing.
    let mut sub = all.subscribe();
    let changed = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match sub.next().await {
                Some(Event::Instances(set)) if health_of(&set) != expected => return set,
                Some(_) => continue,
                None => panic!("instancer ended"),
            }
        }
    })
    .await;
    assert!(
        changed.is_err(),
        "health changed under heartbeats: {changed:?}"
    );
    // Re-registering keeps it too (Consul would otherwise keep the old check status).
    critical.register().await.unwrap();
    let agent_checks = reg.client().agent_checks().await.unwrap();
    assert_eq!(agent_checks["service:h-critical"]["Status"], "critical");
    assert_eq!(agent_checks["service:h-warning"]["Status"], "warning");
    for r in [&critical, &warning, &passing] {
        r.deregister().await.unwrap();
    }
    all.stop().await;
    passing_only.stop().await;
}
