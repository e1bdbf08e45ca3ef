//! The password never appears in logs: every `tracing` event (TRACE level, all targets, so
//! tonic's, h2's and hyper's too) is captured while registries built from
//! `etcd://...?user=sdkit&password_env=VAR` authenticate, register, renew the lease, discover,
//! deregister, lose the path to the server and recover (through a proxy that cuts every
//! connection), and fail with a wrong password on the real `etcd-secure` server (TLS with
//! client certificates, auth on). Then neither password appears in the logs, nor in the
//! `Debug` of anything involved.
//!
//! A test binary of its own with a single test: it installs the global subscriber and sets
//! environment variables before any other thread exists.

mod common;

use std::time::Duration;

use common::{ttl_registration, wait_for_set};
use sd_core::{Instancer, Registrar, Registry, ServiceQuery};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::LogCapture as Capture;
use sd_testkit::{etcd_secure_dir, require, shared, unique_name, Server};
use tracing_subscriber::util::SubscriberInitExt;

const PASSWORD_VAR: &str = "SD_ETCD_LOGS_TEST_PASSWORD";
const WRONG_VAR: &str = "SD_ETCD_LOGS_TEST_WRONG";
const WRONG: &str = "Wr0ngButSecretPassw0rd-7d1e";

#[test]
fn no_password_in_logs_or_debug_output() {
    let addr = require!(Server::EtcdSecure);
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .expect("the only subscriber in this binary");
    let dir = etcd_secure_dir();
    let password = std::fs::read_to_string(dir.join("password"))
        .unwrap()
        .trim()
        .to_string();
    std::env::set_var(PASSWORD_VAR, &password);
    std::env::set_var(WRONG_VAR, WRONG);
    let tls = format!(
        "&ca={}&cert={}&key={}",
        dir.join("ca.pem").display(),
        dir.join("client.pem").display(),
        dir.join("client.key").display()
    );
    let prefix = format!("/sdtest/{}", unique_name("logs"));
    let good_url =
        format!("etcd://{addr}?prefix={prefix}&user=sdkit&password_env={PASSWORD_VAR}{tls}");
    let wrong_url =
        format!("etcd://{addr}?prefix={prefix}&user=sdkit&password_env={WRONG_VAR}{tls}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let debug_output = rt.block_on(async {
        let _lock = shared(Server::EtcdSecure);
        let mut debug = String::new();
        let good = EtcdRegistry::from_url(&good_url).unwrap();
        let service = unique_name("logs");
        let registrar = good
            .etcd_registrar(ttl_registration(
                &service,
                4100,
                "l1",
                Duration::from_secs(1),
            ))
            .unwrap();
        registrar.register().await.unwrap();
        let instancer = good
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        let mut sub = instancer.subscribe();
        wait_for_set(&mut sub, "registered", |s| s.len() == 1).await;
        // Lose the registration behind the registrar's back: it puts it again.
        good.client().delete(registrar.key()).await.unwrap();
        let mut rereg = registrar.watch_reregistrations();
        tokio::time::timeout(common::BOUND, rereg.wait_for(|n| *n >= 1))
            .await
            .expect("re-registered")
            .unwrap();
        wait_for_set(&mut sub, "back", |s| s.len() == 1).await;

        // Fail and recover: a registry reaching the server through a proxy loses the path
        // (its watch fails and reconnecting is refused) and gets it back (it connects and
        // authenticates again).
        let proxy = sd_testkit::proxy::Proxy::start(&addr).await;
        let via = EtcdRegistry::from_url(&format!(
            "etcd://{}?prefix={prefix}&user=sdkit&password_env={PASSWORD_VAR}{tls}&timeout=2s",
            proxy.addr
        ))
        .unwrap();
        let via_instancer = via
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        let mut via_sub = via_instancer.subscribe();
        wait_for_set(&mut via_sub, "seen through the proxy", |s| s.len() == 1).await;
        proxy.cut();
        let cut_err = common::wait_for_error(&mut via_sub, "the path is cut").await;
        proxy.restore();
        wait_for_set(&mut via_sub, "recovered through the proxy", |s| {
            s.len() == 1
        })
        .await;
        debug.push_str(&format!("{via:?} {via_instancer:?} {cut_err:?} {cut_err} "));
        via_instancer.stop().await;

        let wrong = EtcdRegistry::from_url(&wrong_url).unwrap();
        let wrong_registrar = wrong
            .registrar(ttl_registration(
                &service,
                4101,
                "l2",
                Duration::from_secs(1),
            ))
            .await
            .unwrap();
        let err = wrong_registrar.register().await.unwrap_err();
        let wrong_instancer = wrong
            .instancer(&ServiceQuery::new(service.as_str()))
            .await
            .unwrap();
        debug.push_str(&format!(
            "{good:?} {:?} {:?} {registrar:?} {instancer:?} {wrong:?} {wrong_registrar:?} \
             {wrong_instancer:?} {err:?} {err} {:?}",
            good.client(),
            good.client().config(),
            wrong_instancer.subscribe().current(),
        ));
        registrar.deregister().await.unwrap();
        instancer.stop().await;
        wrong_instancer.stop().await;
        debug
    });
    drop(rt);
    let logs = capture.text();
    assert!(
        logs.contains("action=\"register\"") || logs.contains("action=register"),
        "the capture works: {} bytes",
        logs.len()
    );
    assert!(logs.contains("reregister"), "the re-registration is logged");
    for secret in [password.as_str(), WRONG] {
        assert!(!logs.contains(secret), "a password is in the logs");
        assert!(
            !debug_output.contains(secret),
            "a password is in Debug output"
        );
    }
    // The variable names are fine to show.
    assert!(debug_output.contains("***"), "{debug_output}");
}
