//! The TSIG secret never appears in logs: every `tracing` event (TRACE, all targets, so
//! hickory's too) is captured while signed registries register, discover, deregister and
//! get refused on the real BIND; then the secret is in neither the logs nor any `Debug`.
//!
//! A test binary of its own with a single test: it installs the global subscriber.

mod common;

use common::{tsig_zone, wait_for_addrs};
use sd_core::{Instance, Instancer, Registrar, Registration, Registry, ServiceQuery};
use sd_dnssrv::DnsRegistry;
use sd_testkit::LogCapture as Capture;
use sd_testkit::{require, shared, unique_name, Server};
use tracing_subscriber::util::SubscriberInitExt;

const WRONG: &str = "d3JvbmctLXNlY3JldC0tMTIzNDU2Nzg5MA==";

#[test]
fn no_tsig_secret_in_logs_or_debug_output() {
    let addr = require!(Server::Dns);
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let debug = rt.block_on(async {
        let tsig = tsig_zone(&addr).await;
        let _lock = shared(Server::Dns);
        let url = |extra: &str| {
            format!(
                "dns+srv://{addr}/?zone={}&min_refresh=50ms&max_refresh=500ms&resolve_targets=1&tsig_name={}{extra}",
                tsig.zone, tsig.key
            )
        };
        let good = DnsRegistry::from_url(&url(&format!("&tsig_secret_env={}", tsig.secret_var))).unwrap();
        let bad = DnsRegistry::from_url(&url(&format!("&tsig_secret={WRONG}"))).unwrap();
        let svc = unique_name("dns-logs");
        let instancer = good.instancer(&ServiceQuery::new(&svc)).await.unwrap();
        let mut sub = instancer.subscribe();
        let r = good
            .registrar(Registration::new(&svc, Instance::builder("127.0.0.51", 7200).id("l1").build()))
            .await
            .unwrap();
        r.register().await.unwrap();
        wait_for_addrs(&mut sub, &["127.0.0.51:7200"]).await;
        let refused = bad
            .registrar(Registration::new(&svc, Instance::new("127.0.0.52", 7201)))
            .await
            .unwrap();
        let err = refused.register().await.unwrap_err();
        tracing::warn!(error = %err, ?err, "refused as expected");
        r.deregister().await.unwrap();
        wait_for_addrs(&mut sub, &[]).await;
        instancer.stop().await;
        format!("{good:?} {bad:?} {r:?} {refused:?} {err:?} {instancer:?}")
    });
    let secret = std::env::var(common::TSIG_SECRET_VAR).unwrap();
    let logs = capture.text();
    assert!(logs.contains("refused as expected"), "the capture works");
    assert!(
        logs.len() > 1000,
        "TRACE logs were captured: {} bytes",
        logs.len()
    );
    for s in [
        secret.as_str(),
        secret.trim_end_matches('='),
        WRONG,
        WRONG.trim_end_matches('='),
    ] {
        assert!(!logs.contains(s), "secret in the logs");
        assert!(!debug.contains(s), "secret in Debug output: {debug}");
    }
}
