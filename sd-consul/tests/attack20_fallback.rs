//! attack20: several agent addresses (`ClientConfig::fallback`) under races and faults,
//! without a cluster: scripted agents ([`HostileServer`]) behind proxies that can cut or
//! stall the path. Each test states the defect it exposes; they fail against the code as
//! of ac03808.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_consul::{Client, ClientConfig, ConsulRegistrar};
use sd_core::HealthCheck;
use sd_core::{Instance, Registrar, Registration};
use sd_testkit::hostile::{HostileServer, Reply, Request};
use sd_testkit::proxy::Proxy;

/// An agent that knows which services are registered with it: register adds, deregister
/// removes, a TTL update of an unknown check is 404 (the registrar then registers again),
/// `GET /v1/agent/service/<id>` is 404 for an unknown id, health answers `[]`.
#[derive(Clone, Default)]
struct Agent {
    services: Arc<Mutex<HashMap<String, ()>>>,
}

impl Agent {
    fn script(&self) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
        let services = self.services.clone();
        move |r: &Request| {
            let mut s = services.lock().unwrap();
            let t = r.target.split('?').next().unwrap_or("").to_string();
            if t.starts_with("/v1/agent/service/register") {
                // The test registrations all use id web-1.
                s.insert("web-1".into(), ());
                Reply::json(200, "")
            } else if let Some(id) = t.strip_prefix("/v1/agent/service/deregister/") {
                if s.remove(id).is_some() {
                    Reply::json(200, "")
                } else {
                    Reply::status(404, None)
                }
            } else if let Some(check) = t.strip_prefix("/v1/agent/check/update/") {
                let id = check.strip_prefix("service:").unwrap_or(check);
                if s.contains_key(id) {
                    Reply::json(200, "")
                } else {
                    Reply::status(404, None)
                }
            } else if let Some(id) = t.strip_prefix("/v1/agent/service/") {
                if s.contains_key(id) {
                    Reply::json(
                        200,
                        format!(
                            r#"{{"ID":"{id}","Service":"web","Address":"127.0.0.1","Port":8080}}"#
                        ),
                    )
                } else {
                    Reply::status(404, None)
                }
            } else {
                Reply::json(200, "[]").header("X-Consul-Index", "7")
            }
        }
    }

    fn holds(&self, id: &str) -> bool {
        self.services.lock().unwrap().contains_key(id)
    }
}

async fn agent() -> (HostileServer, Agent) {
    let a = Agent::default();
    let s = HostileServer::start(Reply::json(200, "")).await;
    s.set_fn(a.script());
    (s, a)
}

fn registration(check: bool) -> Registration {
    let r = Registration::new(
        "web",
        Instance::builder("127.0.0.1", 8080).id("web-1").build(),
    );
    if check {
        // A TTL check, no deregister_critical_after: the default of a Registration.
        r.check(HealthCheck::Ttl(Duration::from_secs(3)))
    } else {
        r
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// FINDING (high): `deregister` reads the current agent once, deregisters the "others",
/// then sends the last deregistration to whatever agent is current *then*
/// (`client.deregister(id)` re-reads it) and forgets the agent it read first
/// (`agents.remove(&current)`). When the shared client moves during the deregistration
/// (an instancer on the same `ConsulRegistry` saw a transport failure), the registration
/// stays at the agent it was on, `deregister` returns `Ok`, and a second `deregister` is a
/// no-op (`registered` is false): the instance is served until that agent loses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_during_deregister_leaves_the_registration_behind() {
    let (s0, a0) = agent().await;
    let (s1, a1) = agent().await;
    let (s2, _a2) = agent().await;
    let p0 = Proxy::start(&s0.addr().to_string()).await;
    let p1 = Proxy::start(&s1.addr().to_string()).await;
    let client = Client::new(
        ClientConfig::new(p0.addr.to_string())
            .fallback([p1.addr.to_string(), s2.addr().to_string()])
            .timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let registrar = Arc::new(
        ConsulRegistrar::new(client.clone(), registration(true))
            .unwrap()
            .period(Duration::from_millis(100)),
    );
    registrar.register().await.unwrap();
    assert!(a0.holds("web-1"));
    // Agent 0 dies: the heartbeat moves the client to agent 1 and registers there.
    p0.cut();
    wait_until("registered again at agent 1", || a1.holds("web-1")).await;
    assert_eq!(client.current_agent(), 1);
    // Agent 0 is frozen now (answers nothing): the deregistration there takes `timeout`.
    p0.stall();
    let r = registrar.clone();
    let dereg = tokio::spawn(async move { r.deregister().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile an instancer on the same client sees agent 1 fail once (a reset): the client
    // moves to agent 2. Agent 1 is fine again right after.
    p1.cut();
    let _ = client.health_service("web", None, false, 0).await;
    p1.restore();
    assert_eq!(client.current_agent(), 2, "the client moved to agent 2");
    let result = dereg.await.unwrap();
    // A second call, as the docs advise after a failure.
    let again = registrar.deregister().await;
    assert!(
        !a1.holds("web-1"),
        "deregister returned {result:?} (then {again:?}), yet agent 1 still holds web-1: \
         the deregistration went to agent 2 (current at that moment) and agent 1 was \
         dropped from the agents set without ever being sent one"
    );
}

/// FINDING (medium): an earlier agent that cannot be reached during `deregister` keeps the
/// registration and `deregister` still returns `Ok` and marks itself done, so a retry never
/// reaches that agent again. The comment in `deregister` says Consul removes it "once its
/// check has been critical for the deregister-after time" — but that time is only set when
/// the registration has `deregister_critical_after`, which a `Registration` does not have by
/// default (nor can a registration without a TTL check have it): the agent restores the
/// registration from its data directory when it comes back and holds it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_earlier_agent_keeps_the_registration_forever() {
    let (s0, a0) = agent().await;
    let (s1, a1) = agent().await;
    let p0 = Proxy::start(&s0.addr().to_string()).await;
    let client = Client::new(
        ClientConfig::new(p0.addr.to_string())
            .fallback([s1.addr().to_string()])
            .timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let registrar = ConsulRegistrar::new(client.clone(), registration(true))
        .unwrap()
        .period(Duration::from_millis(100));
    registrar.register().await.unwrap();
    p0.cut();
    wait_until("registered again at agent 1", || a1.holds("web-1")).await;
    // Shutdown while agent 0 is still down.
    let first = registrar.deregister().await;
    assert!(!a1.holds("web-1"));
    // Agent 0 comes back (with the registration it persisted); the application retries.
    p0.restore();
    let second = registrar.deregister().await;
    assert!(
        !a0.holds("web-1") || first.is_err(),
        "deregister returned {first:?} then {second:?} without ever reaching agent 0, which \
         still holds web-1 and, without deregister_critical_after, will hold it forever"
    );
}

/// FINDING (medium): only a transport failure moves the client. A server that lost its
/// quorum (partitioned from the others: the servers-directly set-up `consul://a,b,c` is
/// meant for) answers every read with `500 No cluster leader`; a client agent cut from the
/// servers answers `500 ... No known Consul servers`. The client stays there forever
/// while the next address serves.
#[tokio::test]
async fn a_server_without_a_leader_keeps_the_client_forever() {
    let lost = HostileServer::start(Reply::json(500, "No cluster leader")).await;
    let good = HostileServer::start(Reply::json(200, "[]").header("X-Consul-Index", "7")).await;
    let client = Client::new(
        ClientConfig::new(lost.addr().to_string())
            .fallback([good.addr().to_string()])
            .timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let mut last = None;
    for _ in 0..10 {
        last = Some(client.health_service("web", None, false, 0).await);
        if matches!(last, Some(Ok(_))) {
            break;
        }
    }
    assert!(
        matches!(last, Some(Ok(_))),
        "10 requests, all at the leaderless server ({} there, {} at the healthy fallback): \
         {last:?}",
        lost.count(),
        good.count()
    );
}

/// FINDING (medium): a blocking query in flight to an agent that froze is not cut when the
/// client moves away from it. Another request (the registrar's heartbeat, with the short
/// `timeout`) finds the agent dead and moves the client at once, but the instancer's
/// blocking query waits out `wait + wait/16 + timeout` (about 71 s with the defaults) on the
/// frozen agent, publishing nothing, although the client already talks to a live agent.
#[tokio::test]
async fn a_blocking_query_stays_on_a_frozen_agent_after_the_client_moved() {
    let (s0, _a0) = agent().await;
    let (s1, _a1) = agent().await;
    let p0 = Proxy::start(&s0.addr().to_string()).await;
    let client = Client::new(
        ClientConfig::new(p0.addr.to_string())
            .fallback([s1.addr().to_string()])
            .timeout(Duration::from_secs(1)),
    )
    .unwrap();
    assert_eq!(client.config().wait, sd_consul::DEFAULT_WAIT);
    // Agent 0 freezes (SIGSTOP: the socket accepts, nothing answers).
    p0.stall();
    let c = client.clone();
    let blocking = tokio::spawn(async move { c.health_service("web", None, false, 7).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A short request finds it dead and moves the client.
    assert!(client.health_service("web", None, false, 0).await.is_err());
    assert_eq!(client.current_agent(), 1, "moved to agent 1");
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), blocking).await;
    assert!(
        r.is_ok(),
        "the blocking query was still waiting on the frozen agent {:?} after the client had \
         moved to a live one",
        t0.elapsed()
    );
}

/// FINDING (low, secrets): a fallback address is not checked like a URL host: userinfo
/// (`user:password@host:port`) is accepted, and the password is shown by `Client`'s
/// `Debug` (its `base`) and by `base_url()` once the client has moved there.
#[tokio::test]
async fn a_password_in_a_fallback_address_shows_in_debug() {
    let good = HostileServer::start(Reply::json(200, "[]").header("X-Consul-Index", "7")).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let built = Client::new(
        ClientConfig::new(dead)
            .fallback([format!("ops:hunter2-secret@{}", good.addr())])
            .timeout(Duration::from_secs(1)),
    );
    let client = match built {
        Err(e) => {
            assert!(!e.to_string().contains("hunter2-secret"), "{e}");
            return; // rejected: fine
        }
        Ok(c) => c,
    };
    let _ = client.health_service("web", None, false, 0).await;
    let shown = format!("{client:?}");
    assert!(
        !shown.contains("hunter2-secret"),
        "userinfo accepted in a fallback address; Debug shows it: {shown}"
    );
}

/// Companion of the above (HOLDS): the error of a request to such a fallback (here a dead
/// one) does not show the password, and `consul://user:pw@a,b` does not leak it either.
#[tokio::test]
async fn a_password_in_a_fallback_address_shows_in_errors() {
    let closed = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let Ok(client) = Client::new(
        ClientConfig::new(closed())
            .fallback([format!("ops:hunter2-secret@{}", closed())])
            .timeout(Duration::from_secs(1)),
    ) else {
        return; // rejected: fine
    };
    let first = client.health_service("web", None, false, 0).await;
    let second = client.health_service("web", None, false, 0).await;
    let shown = format!("{first:?} {second:?}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    // And through the URL, where the token has its own option:
    let url = "consul://ops:hunter2-secret@127.0.0.1:1,127.0.0.1:2";
    match sd_consul::ConsulRegistry::from_url(url) {
        Err(e) => assert!(!e.to_string().contains("hunter2-secret"), "{e}"),
        Ok(r) => {
            let shown = format!("{:?} {:?}", r.client(), r.client().config());
            assert!(!shown.contains("hunter2-secret"), "from_url: {shown}");
        }
    }
}
