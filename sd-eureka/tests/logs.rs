//! The basic-auth password never appears in logs: every `tracing` event (TRACE level, all
//! targets, so reqwest's and hyper's too) is captured while a registry built from
//! `eureka://...?user=..&password_env=VAR` registers, renews, fails over from a dead first
//! server, changes its status, loses and re-creates its registration, and discovers. Then
//! neither the password nor the `Authorization` header value (base64 of `user:password`)
//! is in the logs, nor in the `Debug` of anything involved.
//!
//! The test server does not check credentials (Spring Security is not in it), so this shows
//! what is logged around every request that carries them.
//!
//! A test binary of its own with a single test: it installs the global subscriber and sets
//! the environment variable before any other thread exists.

mod common;

use std::time::Duration;

use common::{by_id, wait_for_set, BOUND};
use sd_core::{HealthCheck, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_eureka::{EurekaRegistry, Status};
use sd_testkit::LogCapture as Capture;
use sd_testkit::{require, shared, unique_name, Server};
use tracing_subscriber::util::SubscriberInitExt;

const PASSWORD_VAR: &str = "SD_EUREKA_LOGS_TEST_PASSWORD";
const PASSWORD: &str = "pa55-W0rd-e1c9f3";
/// base64("sd:pa55-W0rd-e1c9f3"), the `Authorization: Basic` value.
const HEADER_VALUE: &str = "c2Q6cGE1NS1XMHJkLWUxYzlmMw==";

#[test]
fn no_password_in_logs_or_debug_output() {
    let addr = require!(Server::Eureka);
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .unwrap();
    std::env::set_var(PASSWORD_VAR, PASSWORD);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&addr));
    let logs = capture.text();
    let lines = logs.lines().count();
    eprintln!("captured {lines} log lines");
    assert!(lines > 50, "suspiciously few logs captured:\n{logs}");
    for secret in [PASSWORD, HEADER_VALUE] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The capture saw the interesting paths.
    for needle in [
        "action=\"register\"",
        "renewal",
        "registering again",
        "action=\"reregister\"",
        "action=\"status\"",
        "trying the next",
        "hyper_util::client",
    ] {
        assert!(logs.contains(needle), "{needle:?} not logged:\n{logs}");
    }
}

fn assert_debug_clean(what: &str, value: &dyn std::fmt::Debug) {
    let text = format!("{value:?} {value:#?}");
    for s in [PASSWORD, HEADER_VALUE] {
        assert!(!text.contains(s), "{what}: the password in Debug: {text}");
    }
}

async fn run(addr: &str) {
    let _shared = shared(Server::Eureka);
    let live = addr.strip_prefix("http://").unwrap();
    // A dead first server: every request logs a failover.
    let reg = EurekaRegistry::from_url(&format!(
        "eureka://127.0.0.1:1,{live}?user=sd&password_env={PASSWORD_VAR}&poll=200ms&timeout=5s"
    ))
    .unwrap();
    assert_eq!(
        reg.client().config().password.as_ref().map(|p| p.expose()),
        Some(PASSWORD)
    );
    assert_debug_clean("registry", &reg);
    assert_debug_clean("client", reg.client());
    assert_debug_clean("client config", reg.client().config());

    // TTL 1 s: renewals every ~333 ms.
    let service = unique_name("eureka-logs");
    let registrar = reg
        .eureka_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 27101).id("l1").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(1))),
        )
        .unwrap();
    assert_debug_clean("registrar", &registrar);
    registrar.register().await.unwrap();
    let instancer = reg
        .eureka_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_debug_clean("instancer", &instancer);
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| by_id(s, "l1").is_some()).await;
    registrar.set_status(Status::OutOfService).await.unwrap();

    // Lose the registration behind the registrar's back: the renewal gets a 404 and the
    // registrar registers again.
    reg.client()
        .cancel(registrar.app(), registrar.instance_id())
        .await
        .unwrap();
    let mut rereg = registrar.watch_reregistrations();
    tokio::time::timeout(BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered")
        .unwrap();
    wait_for_set(&mut sub, "back, out of service", |s| {
        by_id(s, "l1").is_some_and(|i| i.meta().get("eureka.status").unwrap() == "OUT_OF_SERVICE")
    })
    .await;
    registrar.deregister().await.unwrap();
    instancer.stop().await;
}
