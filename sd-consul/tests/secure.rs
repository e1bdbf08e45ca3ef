//! ACL tokens and TLS against a **real** Consul agent: the `consul-secure` agent of
//! `scripts/registries` (`SD_TEST_CONSUL_SECURE`), which has ACLs on with
//! `default_policy = "deny"` and serves HTTPS only, requiring a client certificate signed
//! by its test CA. Its CA, certificates and management token are files in
//! `sd_testkit::consul_secure_dir()`.
//!
//! ```sh
//! eval "$(scripts/registries up)"
//! cargo test -p sd-consul --test secure
//! ```

mod common;

use std::time::Duration;

use common::secure::{file, management_token, tls_config, TestToken};
use common::{by_id, register_and_watch, ttl_registration, wait_for_set, Watched};
use sd_consul::{Client, ClientConfig, ConsulRegistry};
use sd_core::{Error, Event, Health, Instancer, Registrar, Secret, ServiceQuery};
use sd_testkit::{require, shared, unique_name, Server};

fn registry(config: ClientConfig) -> ConsulRegistry {
    ConsulRegistry::new(Client::new(config).expect("client"))
}

fn admin(addr: &str) -> ConsulRegistry {
    registry(tls_config(addr).token(Secret::new(management_token())))
}

/// The TTL of the registrations here: long, so no test depends on heartbeat timing.
const TTL: Duration = Duration::from_secs(30);

/// Asserts `err` is a 403 rejection and mentions none of `secrets`.
fn assert_rejected_403(err: &Error, secrets: &[&str]) {
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains("403"), "{text}");
    for s in secrets {
        assert!(!text.contains(s), "secret in the error: {text}");
        assert!(!format!("{err:?}").contains(s), "secret in Debug: {err:?}");
    }
}

#[tokio::test]
async fn the_management_token_registers_and_discovers_over_mutual_tls() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let token = management_token();
    let reg = admin(&addr);
    assert_eq!(reg.client().base_url().scheme(), "https");
    let service = unique_name("secure-ok");
    let Watched {
        registrar,
        instancer,
        mut sub,
        set,
    } = register_and_watch(&reg, ttl_registration(&service, 22001, "s1", TTL)).await;
    assert_eq!(by_id(&set, "s1").unwrap().health(), Health::Passing);
    assert_eq!(by_id(&set, "s1").unwrap().addr(), "127.0.0.1:22001");
    assert!(!format!("{reg:?} {registrar:?} {instancer:?}").contains(&token));
    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_rejected_and_never_shown() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let service = unique_name("secure-denied");
    // A real instance, registered with the management token.
    let owner = admin(&addr)
        .consul_registrar(ttl_registration(&service, 22002, "d1", TTL))
        .unwrap();
    owner.register().await.unwrap();

    // No token: the anonymous token may do nothing under default_policy = "deny".
    let anon = registry(tls_config(&addr));
    let err = anon
        .consul_registrar(ttl_registration(&service, 22003, "d2", TTL))
        .unwrap()
        .register()
        .await
        .unwrap_err();
    eprintln!("no token, register: {err}");
    assert_rejected_403(&err, &[]);
    assert!(err.to_string().contains("Permission denied"), "{err}");
    // Reads are not refused but filtered: Consul answers 200 with nothing the anonymous
    // token may see (documented in docs/CONSUL.md), so the real instance is invisible.
    let instancer = anon
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(
        instancer.state(),
        Some(Event::Instances(Default::default()))
    );
    instancer.stop().await;

    // A wrong token (well-formed, unknown to the agent): 403 "ACL not found" for both.
    let wrong = "6f1c0d2e-5b7a-4c3e-9d8f-0123456789ab";
    let bad = registry(tls_config(&addr).token(Secret::new(wrong)));
    let err = bad
        .consul_registrar(ttl_registration(&service, 22004, "d3", TTL))
        .unwrap()
        .register()
        .await
        .unwrap_err();
    eprintln!("wrong token, register: {err}");
    assert_rejected_403(&err, &[wrong]);
    assert!(err.to_string().contains("ACL not found"), "{err}");
    let instancer = bad
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    match instancer.state() {
        Some(Event::Error(err)) => {
            eprintln!("wrong token, discover: {err}");
            assert_rejected_403(&err, &[wrong]);
            assert!(err.to_string().contains("health query"), "{err}");
        }
        other => panic!("expected a 403 error, got {other:?}"),
    }
    instancer.stop().await;
    owner.deregister().await.unwrap();
}

#[tokio::test]
async fn a_read_only_token_discovers_but_cannot_register() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let service = unique_name("secure-ro");
    let token = TestToken::create(
        &addr,
        &format!(
            "service \"{service}\" {{ policy = \"read\" }}\nnode_prefix \"\" {{ policy = \"read\" }}"
        ),
    )
    .await;
    let owner = admin(&addr)
        .consul_registrar(ttl_registration(&service, 22005, "ro1", TTL))
        .unwrap();
    owner.register().await.unwrap();

    let secret = token.secret.clone();
    let reader = registry(tls_config(&addr).token(Secret::new(secret.clone())));
    let instancer = reader
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "visible to service:read", |s| {
        by_id(s, "ro1").is_some()
    })
    .await;
    let err = reader
        .consul_registrar(ttl_registration(&service, 22006, "ro2", TTL))
        .unwrap()
        .register()
        .await
        .unwrap_err();
    eprintln!("read-only token, register: {err}");
    assert_rejected_403(&err, &[&secret]);
    assert!(err.to_string().contains("service:write"), "{err}");
    // Nothing was registered by the refused call.
    let set = match sub.current() {
        Some(Event::Instances(set)) => set,
        other => panic!("{other:?}"),
    };
    assert!(by_id(&set, "ro2").is_none());

    instancer.stop().await;
    owner.deregister().await.unwrap();
    token.delete().await;
}

/// A one-shot health query through `config`, returning its error.
async fn health_error(config: ClientConfig) -> Error {
    Client::new(config)
        .expect("client")
        .health_service("consul", None, false, 0)
        .await
        .expect_err("the TLS handshake must fail")
}

#[tokio::test]
async fn the_test_ca_and_client_certificate_work_through_the_url() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let d = sd_testkit::consul_secure_dir();
    let d = d.display();
    // The URL options; the token from the file via an inline option (the env-var form is
    // exercised in tests/logs.rs).
    let reg = ConsulRegistry::from_url(&format!(
        "consul://{addr}?ca={d}/ca.pem&cert={d}/client.pem&key={d}/client.key&token={}&timeout=5s",
        management_token()
    ))
    .unwrap();
    let answer = reg
        .client()
        .health_service("consul", None, false, 0)
        .await
        .unwrap();
    // The "consul" service is the agent itself (a server in -dev mode).
    assert_eq!(answer.instances.len(), 1, "{:?}", answer.instances);
    assert!(answer.index > 0);
}

#[tokio::test]
async fn an_untrusted_server_certificate_fails_clearly() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    for (what, config) in [
        (
            "unrelated CA",
            ClientConfig::new(&addr)
                .ca_file(file("other-ca.pem"))
                .client_cert(file("client.pem"), file("client.key")),
        ),
        (
            "built-in roots only",
            ClientConfig::new(&addr)
                .tls(true)
                .client_cert(file("client.pem"), file("client.key")),
        ),
    ] {
        let err = health_error(config.timeout(Duration::from_secs(5))).await;
        eprintln!("{what}: {err}");
        assert!(matches!(err, Error::Unavailable { .. }), "{what}: {err}");
        let text = err.to_string();
        assert!(text.contains("health query"), "{what}: {text}");
        assert!(
            text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
            "{what}: {text}"
        );
        assert!(
            text.contains("the agent's TLS certificate is not trusted"),
            "{what}: {text}"
        );
    }
}

#[tokio::test]
async fn the_agent_refuses_a_missing_or_foreign_client_certificate() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let token = management_token();
    for (what, config) in [
        (
            "no client certificate",
            ClientConfig::new(&addr).ca_file(file("ca.pem")),
        ),
        (
            "client certificate from another CA",
            ClientConfig::new(&addr)
                .ca_file(file("ca.pem"))
                .client_cert(file("other-client.pem"), file("other-client.key")),
        ),
    ] {
        let err = health_error(
            config
                .token(Secret::new(token.clone()))
                .timeout(Duration::from_secs(5)),
        )
        .await;
        eprintln!("{what}: {err}");
        assert!(matches!(err, Error::Unavailable { .. }), "{what}: {err}");
        let text = err.to_string();
        assert!(!text.contains(&token), "{text}");
        assert!(
            text.contains("refused the TLS handshake over the client certificate"),
            "{what}: the error should say the client certificate was refused: {text}"
        );
    }
}

#[tokio::test]
async fn plain_http_to_the_https_port_fails() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let err = Client::new(ClientConfig::new(&addr).timeout(Duration::from_secs(5)))
        .unwrap()
        .health_service("consul", None, false, 0)
        .await
        .unwrap_err();
    eprintln!("plain HTTP: {err}");
    // Go's TLS server answers a plain HTTP request with a 400 and a hint.
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("the agent speaks HTTPS"), "{err}");
}

#[tokio::test]
async fn fault_secure_agent_restart_reregisters_with_the_token() {
    let addr = require!(Server::ConsulSecure);
    let _lock = sd_testkit::exclusive(Server::ConsulSecure);
    sd_testkit::wait_ready(Server::ConsulSecure).await.unwrap();
    let reg = admin(&addr);
    let service = unique_name("secure-restart");
    let Watched {
        registrar,
        instancer,
        mut sub,
        ..
    } = register_and_watch(
        &reg,
        ttl_registration(&service, 22201, "sr1", Duration::from_secs(3)),
    )
    .await;

    // A -dev agent restarts empty, with the same management token and certificates: the
    // registrar's heartbeat gets a 404 and registers again, over mutual TLS, with its token.
    sd_testkit::restart(Server::ConsulSecure).await.unwrap();
    let mut rereg = registrar.watch_reregistrations();
    tokio::time::timeout(common::BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered after the restart")
        .unwrap();
    let mut set = wait_for_set(&mut sub, "seen after the restart", |_| true).await;
    if by_id(&set, "sr1").is_none() {
        set = wait_for_set(&mut sub, "re-registered instance seen", |s| {
            by_id(s, "sr1").is_some()
        })
        .await;
    }
    assert_eq!(by_id(&set, "sr1").unwrap().health(), Health::Passing);
    registrar.deregister().await.unwrap();
    instancer.stop().await;
}

/// Issue 9, item 22 (ACL-filtered results): an answer the agent filtered by ACLs
/// (`X-Consul-Results-Filtered-By-ACLs`) is exposed on the instancer, so "my service has
/// no instances" is explainable; an unfiltered one is not flagged.
#[tokio::test]
async fn acl_filtered_results_are_exposed_on_the_instancer() {
    let addr = require!(Server::ConsulSecure);
    let _shared = shared(Server::ConsulSecure);
    let service = unique_name("secure-aclf");
    let owner = admin(&addr)
        .consul_registrar(ttl_registration(&service, 22010, "f1", TTL))
        .unwrap();
    owner.register().await.unwrap();
    // service:read but no node:read: the agent drops every entry (they include their node)
    // and says so.
    let no_nodes = TestToken::create(
        &addr,
        &format!("service \"{service}\" {{ policy = \"read\" }}"),
    )
    .await;
    let blind = registry(tls_config(&addr).token(Secret::new(no_nodes.secret.clone())))
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(blind.state(), Some(Event::Instances(Default::default())));
    assert!(
        blind.results_filtered_by_acls(),
        "the empty set must be explained as ACL filtering"
    );
    // The management token sees it, unfiltered.
    let admin_view = admin(&addr)
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    match admin_view.state() {
        Some(Event::Instances(set)) => assert!(by_id(&set, "f1").is_some()),
        other => panic!("{other:?}"),
    }
    assert!(!admin_view.results_filtered_by_acls());
    blind.stop().await;
    admin_view.stop().await;
    owner.deregister().await.unwrap();
    no_nodes.delete().await;
}
