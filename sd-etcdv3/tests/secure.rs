//! Auth and TLS against the `etcd-secure` server of `scripts/registries`: etcd 3.5 speaking
//! TLS only, requiring client certificates, with auth on (user `sdkit`, password generated at
//! start). Certificates and the password are files in `sd_testkit::etcd_secure_dir()`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ttl_registration, wait_for_set};
use sd_core::{Error, Instancer, Registrar, Registry, ServiceQuery};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::{etcd_secure_dir, require, shared, unique_name, Server};

fn password() -> String {
    std::fs::read_to_string(etcd_secure_dir().join("password"))
        .expect("etcd-secure password file")
        .trim()
        .to_string()
}

fn url(addr: &str, dir: &Path, extra: &str) -> String {
    format!(
        "etcd://{addr}?prefix=/sdtest/{}&timeout=3s&dial_timeout=2s{extra}&ca={}",
        unique_name("secure"),
        dir.join("ca.pem").display()
    )
}

fn cert_options(dir: &Path, name: &str) -> String {
    format!(
        "&cert={}&key={}",
        dir.join(format!("{name}.pem")).display(),
        dir.join(format!("{name}.key")).display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_client_certificate_register_and_discover() {
    let addr = require!(Server::EtcdSecure);
    let _lock = shared(Server::EtcdSecure);
    let dir = etcd_secure_dir();
    std::env::set_var("SD_ETCD_SECURE_TEST_PW", password());
    let reg = EtcdRegistry::from_url(&url(
        &addr,
        &dir,
        &format!(
            "&user=sdkit&password_env=SD_ETCD_SECURE_TEST_PW{}",
            cert_options(&dir, "client")
        ),
    ))
    .unwrap();
    assert!(!format!("{reg:?}").contains(&password()));
    let service = unique_name("secure");
    let r = reg
        .registrar(ttl_registration(
            &service,
            4000,
            "s1",
            Duration::from_secs(2),
        ))
        .await
        .unwrap();
    r.register().await.unwrap();
    let instancer = reg
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered over TLS with auth", |s| s.len() == 1).await;
    // The keep-alive works with the auth token: still there after several TTLs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, entries) = reg
        .client()
        .get_prefix(&reg.client().service_dir(&service))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    r.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_rejected_without_showing_it() {
    let addr = require!(Server::EtcdSecure);
    let _lock = shared(Server::EtcdSecure);
    let dir = etcd_secure_dir();
    let wrong = "wr0ng-pa55word-for-sdkit";
    let reg = EtcdRegistry::from_url(&url(
        &addr,
        &dir,
        &format!(
            "&user=sdkit&password={wrong}{}",
            cert_options(&dir, "client")
        ),
    ))
    .unwrap();
    let service = unique_name("wrongpw");
    let r = reg
        .registrar(ttl_registration(
            &service,
            4001,
            "w1",
            Duration::from_secs(2),
        ))
        .await
        .unwrap();
    let err = r.register().await.unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(!err.to_string().contains(wrong) && !format!("{err:?}").contains(wrong));
    // The instancer publishes the rejection as its error event.
    let instancer = reg
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    match instancer.subscribe().current() {
        Some(sd_core::Event::Error(e)) => {
            assert!(matches!(e, Error::Rejected { .. }), "{e}");
            assert!(!e.to_string().contains(wrong));
        }
        other => panic!("expected the rejection, got {other:?}"),
    }
    instancer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_the_certificate_alone_names_no_user() {
    let addr = require!(Server::EtcdSecure);
    let _lock = shared(Server::EtcdSecure);
    let dir = etcd_secure_dir();
    // etcd takes the client certificate's CN as the user when no password is given; the test
    // certificate's CN ("sdkit test client") is no user, so every request is refused.
    let reg = EtcdRegistry::from_url(&url(&addr, &dir, &cert_options(&dir, "client"))).unwrap();
    let (_, _) = (reg.client(), ());
    let err = reg.client().get_prefix("/anything/").await.unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_errors_that_say_so() {
    let addr = require!(Server::EtcdSecure);
    let _lock = shared(Server::EtcdSecure);
    let dir = etcd_secure_dir();
    std::env::set_var("SD_ETCD_SECURE_TEST_PW2", password());
    let auth = "&user=sdkit&password_env=SD_ETCD_SECURE_TEST_PW2";
    for (what, url) in [
        (
            "server certificate from an untrusted CA",
            format!(
                "etcd://{addr}?timeout=3s&dial_timeout=2s{auth}&ca={}{}",
                dir.join("other-ca.pem").display(),
                cert_options(&dir, "client")
            ),
        ),
        (
            "no client certificate",
            format!(
                "etcd://{addr}?timeout=3s&dial_timeout=2s{auth}&ca={}",
                dir.join("ca.pem").display()
            ),
        ),
        (
            "a client certificate from another CA",
            format!(
                "etcd://{addr}?timeout=3s&dial_timeout=2s{auth}&ca={}{}",
                dir.join("ca.pem").display(),
                cert_options(&dir, "other-client")
            ),
        ),
        (
            "plain gRPC to the TLS port",
            format!("etcd://{addr}?timeout=3s&dial_timeout=2s{auth}"),
        ),
    ] {
        let reg = EtcdRegistry::from_url(&url).unwrap();
        let err = reg.client().get_prefix("/x/").await.unwrap_err();
        assert!(
            matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
            "{what}: {err}"
        );
        assert!(!err.to_string().contains(&password()), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
}
