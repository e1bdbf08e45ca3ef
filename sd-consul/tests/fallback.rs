//! Several agent addresses (`consul://a,b,c`, [`ClientConfig::fallback`]), without a
//! cluster: a dead first address (a closed port) and scripted agents on 127.0.0.1
//! ([`HostileServer`]). The real three-server cluster is exercised by
//! `sdkit/tests/cluster_real.rs`.
//!
//! - a transport failure at the current agent moves the client to the next one, and the
//!   failed request's caller sees the error (its own retry goes to the next agent);
//! - a failure of a request that went to an earlier agent does not move the client again;
//! - a registration moved to another agent is removed from every agent it reached.

use std::time::Duration;

use sd_consul::{Client, ClientConfig, ConsulRegistrar};
use sd_core::HealthCheck;
use sd_core::{Instance, Registrar, Registration};
use sd_testkit::hostile::{HostileServer, Reply};
use sd_testkit::proxy::Proxy;

/// A 127.0.0.1 port nothing listens on (bound, then closed).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

fn agent_replies() -> impl Fn(&sd_testkit::hostile::Request) -> Reply + Send + Sync {
    |r| {
        if r.target.starts_with("/v1/agent/check/update/") {
            // This agent never saw the registration's check: the registration is lost.
            Reply::status(404, None)
        } else if r.target.starts_with("/v1/agent/service/") {
            // register, deregister
            Reply::json(200, "")
        } else {
            Reply::json(200, "[]").header("X-Consul-Index", "7")
        }
    }
}

#[tokio::test]
async fn a_dead_agent_moves_the_client_to_the_next_address_once() {
    let dead = closed_port();
    let next = HostileServer::start(Reply::json(200, "[]").header("X-Consul-Index", "7")).await;
    let client = Client::new(
        ClientConfig::new(dead.clone())
            .fallback([next.addr().to_string()])
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    assert_eq!(client.agents(), 2);
    assert_eq!(client.current_agent(), 0);

    // Two requests in flight to the dead agent: both fail, the client moves once.
    let (a, b) = tokio::join!(
        client.health_service("web", None, false, 0),
        client.health_service("web", None, false, 0)
    );
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    assert_eq!(
        client.current_agent(),
        1,
        "two failures of one agent move the client once, not past the next agent"
    );
    assert_eq!(
        client.base_url().as_str(),
        format!("http://{}/", next.addr())
    );

    // The next request goes to the fallback and succeeds there.
    let answer = client.health_service("web", None, false, 0).await.unwrap();
    assert_eq!(answer.index, 7);
    assert_eq!(next.count(), 1);
}

#[tokio::test]
async fn a_single_address_never_moves() {
    let client =
        Client::new(ClientConfig::new(closed_port()).timeout(Duration::from_secs(2))).unwrap();
    for _ in 0..3 {
        assert!(client.health_service("web", None, false, 0).await.is_err());
        assert_eq!(client.current_agent(), 0);
    }
}

#[tokio::test]
async fn a_moved_registration_is_registered_again_and_deregistered_everywhere() {
    let first = HostileServer::start(Reply::json(200, "")).await;
    first.set_fn(agent_replies());
    // The client reaches the first agent through a proxy that can cut the path.
    let path = Proxy::start(&first.addr().to_string()).await;
    let second = HostileServer::start(Reply::json(200, "")).await;
    second.set_fn(agent_replies());
    let client = Client::new(
        ClientConfig::new(path.addr.to_string())
            .fallback([second.addr().to_string()])
            .timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let registrar = ConsulRegistrar::new(
        client.clone(),
        Registration::new(
            "web",
            Instance::builder("127.0.0.1", 8080).id("web-1").build(),
        )
        .check(HealthCheck::Ttl(Duration::from_secs(3))),
    )
    .unwrap()
    .period(Duration::from_millis(100));
    // The first agent accepts the registration, then "dies" (the path is cut: a transport
    // failure).
    registrar.register().await.unwrap();
    let registered = |s: &HostileServer| {
        s.requests()
            .iter()
            .filter(|r| r.target.starts_with("/v1/agent/service/register"))
            .count()
    };
    assert_eq!(registered(&first), 1);
    path.cut();
    // The heartbeat times out there, moves the client, finds the check unknown at the
    // second agent and registers again there.
    let mut reregs = registrar.watch_reregistrations();
    tokio::time::timeout(Duration::from_secs(30), reregs.wait_for(|n| *n >= 1))
        .await
        .expect("registered again at the next agent")
        .unwrap();
    assert_eq!(client.current_agent(), 1);
    assert_eq!(registered(&second), 1);

    // The first agent answers again: deregister removes the registration from both.
    path.restore();
    registrar.deregister().await.unwrap();
    for (name, s) in [("first", &first), ("second", &second)] {
        let n = s
            .requests()
            .iter()
            .filter(|r| r.target.starts_with("/v1/agent/service/deregister/web-1"))
            .count();
        assert_eq!(n, 1, "deregistered at the {name} agent");
    }
}
