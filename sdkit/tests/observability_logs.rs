//! No secret in the `sdkit.*` spans: every span (with its fields, on creation and close) and
//! every event, at TRACE for all targets, is captured while registries from `sdkit::connect`
//! with a Consul ACL token (`token_env`, the real `consul-secure` agent) and an etcd password
//! (`password_env`, the real `etcd-secure` server) register, discover, deregister, and fail
//! with a wrong token and a wrong password. Then the spans are in the logs with their backend,
//! service and outcome, and no token or password is.
//!
//! A test binary of its own with a single test: it installs the global subscriber and sets
//! environment variables before any other thread exists.
#![cfg(all(feature = "consul", feature = "etcd"))]

use std::sync::Arc;
use std::time::Duration;

use sd_testkit::{etcd_secure_dir, require, shared, unique_name, LogCapture, Server};
use sdkit::{HealthCheck, Instance, Registration, Registry, ServiceQuery};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

const BOUND: Duration = Duration::from_secs(30);
const CONSUL_WRONG: &str = "00000000-dead-beef-0000-5ecre7t0ken1";
const ETCD_WRONG: &str = "Wr0ngButSecretPassw0rd-0b5e";

/// Registers `service` through `registry`, waits until an instancer sees it, deregisters.
async fn round_trip(registry: Arc<dyn Registry>, service: &str) {
    let registration = Registration::new(
        service,
        Instance::builder("127.0.0.1", 4321).id("obs-1").build(),
    )
    .check(HealthCheck::Ttl(Duration::from_secs(5)));
    let registrar = registry.registrar(registration).await.unwrap();
    registrar.register().await.unwrap();
    let instancer = registry
        .instancer(&ServiceQuery::new(service))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    tokio::time::timeout(BOUND, async {
        while let Some(event) = sub.next().await {
            if event.addrs() == ["127.0.0.1:4321"] {
                return;
            }
        }
    })
    .await
    .expect("registered instance seen");
    registrar.deregister().await.unwrap();
    instancer.stop().await;
}

/// The same calls with a wrong secret: every one that reaches the registry fails.
async fn fail(registry: Arc<dyn Registry>, service: &str) {
    let registration = Registration::new(service, Instance::new("127.0.0.1", 4322))
        .check(HealthCheck::Ttl(Duration::from_secs(5)));
    if let Ok(registrar) = registry.registrar(registration).await {
        assert!(
            registrar.register().await.is_err(),
            "a wrong secret registered"
        );
    }
    if let Ok(instancer) = registry.instancer(&ServiceQuery::new(service)).await {
        instancer.stop().await;
    }
}

#[test]
fn no_token_or_password_in_spans() {
    let consul = require!(Server::ConsulSecure);
    let etcd = require!(Server::EtcdSecure);
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .expect("the only subscriber in this binary");

    let cdir = sd_testkit::consul_secure_dir();
    let token = std::fs::read_to_string(cdir.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let edir = etcd_secure_dir();
    let password = std::fs::read_to_string(edir.join("password"))
        .unwrap()
        .trim()
        .to_string();
    std::env::set_var("SD_OBS_CONSUL_TOKEN", &token);
    std::env::set_var("SD_OBS_CONSUL_WRONG", CONSUL_WRONG);
    std::env::set_var("SD_OBS_ETCD_PASSWORD", &password);
    std::env::set_var("SD_OBS_ETCD_WRONG", ETCD_WRONG);
    let consul_url = |var: &str| {
        let d = cdir.display();
        format!(
            "consul://{consul}?ca={d}/ca.pem&cert={d}/client.pem&key={d}/client.key\
             &token_env={var}&wait=1s&timeout=5s"
        )
    };
    let prefix = format!("/sdtest/{}", unique_name("obs"));
    let etcd_url = |var: &str| {
        let d = edir.display();
        format!(
            "etcd://{etcd}?prefix={prefix}&user=sdkit&password_env={var}\
             &ca={d}/ca.pem&cert={d}/client.pem&key={d}/client.key"
        )
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _consul = shared(Server::ConsulSecure);
        let _etcd = shared(Server::EtcdSecure);
        let service = unique_name("obs");
        round_trip(
            sdkit::connect(&consul_url("SD_OBS_CONSUL_TOKEN")).unwrap(),
            &service,
        )
        .await;
        round_trip(
            sdkit::connect(&etcd_url("SD_OBS_ETCD_PASSWORD")).unwrap(),
            &service,
        )
        .await;
        fail(
            sdkit::connect(&consul_url("SD_OBS_CONSUL_WRONG")).unwrap(),
            &service,
        )
        .await;
        fail(
            sdkit::connect(&etcd_url("SD_OBS_ETCD_WRONG")).unwrap(),
            &service,
        )
        .await;
    });
    drop(rt);

    let logs = capture.text();
    for secret in [token.as_str(), password.as_str(), CONSUL_WRONG, ETCD_WRONG] {
        assert!(!secret.is_empty());
        assert!(
            !logs.contains(secret),
            "a secret is in the logs (first 200 chars around it):\n{}",
            around(&logs, secret)
        );
    }
    // The spans were captured, with their fields, for both backends and both outcomes.
    for needle in [
        "sdkit.registry{backend=\"consul\"",
        "sdkit.registry{backend=\"etcd\"",
        "sdkit.discover{backend=\"consul\"",
        "sdkit.discover{backend=\"etcd\"",
        "op=\"register\"",
        "outcome=\"ok\"",
        "outcome=\"error\"",
    ] {
        assert!(logs.contains(needle), "{needle:?} not logged:\n{logs}");
    }
}

fn around(logs: &str, needle: &str) -> String {
    let at = logs.find(needle).unwrap_or(0);
    let start = logs[..at]
        .char_indices()
        .rev()
        .nth(100)
        .map_or(0, |(i, _)| i);
    logs[start..].chars().take(200 + needle.len()).collect()
}
