//! Interoperability with go-kit itself (v0.13.0 `sd/zk`, driven by the Go program in
//! `bench/gokit-zk`): go-kit's registrar → our instancer, our registrar → go-kit's instancer,
//! on one real ZooKeeper server.
//!
//! The Go program's path is `SD_GOKIT_ZK`; `scripts/test` builds it and sets it. Without it
//! the tests are skipped, or fail with `SD_INTEGRATION=1`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{by_id, registry, wait_for_set, BOUND};
use sd_core::{Instance, Instancer, Registrar, Registration};
use sd_testkit::{require, shared, unique_name, Server};

const BIN_ENV: &str = "SD_GOKIT_ZK";

fn gokit_bin() -> Option<String> {
    match std::env::var(BIN_ENV).ok().filter(|v| !v.is_empty()) {
        Some(bin) => Some(bin),
        None if sd_testkit::integration_required() => panic!(
            "{BIN_ENV} is not set but SD_INTEGRATION=1: build the go-kit program with \
             `(cd bench/gokit-zk && go build -o ../../target/gokit-zk .)` and set \
             {BIN_ENV}=target/gokit-zk (scripts/test does both)"
        ),
        None => {
            eprintln!("skipping go-kit interop test: {BIN_ENV} not set");
            None
        }
    }
}

/// go-kit's `zk.Registrar` registers plain `host:port` data; our instancer reads it (ZK-10),
/// and sees it go when go-kit's client stops (its own Deregister fails, ZK-6).
#[tokio::test]
async fn gokit_registrar_is_discovered_by_the_rust_instancer() {
    let addr = require!(Server::Zk);
    let Some(bin) = gokit_bin() else { return };
    let _shared = shared(Server::Zk);
    let registry = registry(&addr, "");
    let service = unique_name("interop-go");
    let (instancer, mut sub) = common::watch(&registry, &service).await;
    let base = registry.client().config().base.clone();
    let mut go = Command::new(&bin)
        .args(["register", &addr, &base, &service, "10.7.7.7:7001"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdin = go.stdin.take().unwrap();
    let mut lines = BufReader::new(go.stdout.take().unwrap()).lines();
    let registered = tokio::task::spawn_blocking(move || {
        let seen = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l == "REGISTERED");
        (seen, lines)
    });
    let (seen, mut lines) = tokio::time::timeout(BOUND, registered)
        .await
        .expect("go-kit registered in time")
        .unwrap();
    assert!(seen, "the go-kit program ended before registering");
    let set = wait_for_set(&mut sub, "go-kit's instance", |s| s.len() == 1).await;
    let i = &set[0];
    assert_eq!(i.addr(), "10.7.7.7:7001");
    assert!(
        i.id().starts_with("_c_"),
        "go-kit's protected node name: {}",
        i.id()
    );

    drop(stdin); // go-kit deregisters (fails, ZK-6) and stops its client: the session ends
    let stopped = tokio::task::spawn_blocking(move || {
        lines.by_ref().map_while(Result::ok).any(|l| l == "STOPPED")
    });
    assert!(tokio::time::timeout(BOUND, stopped).await.unwrap().unwrap());
    assert!(go.wait().unwrap().success());
    wait_for_set(&mut sub, "gone with go-kit's session", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// go-kit's `zk.Instancer` sees what our registrar wrote: go-kit's plain data with
/// `payload=plain`; with the default JSON payload, the payload string itself (go-kit's
/// instance strings are the raw node data, ZK-10).
#[tokio::test]
async fn rust_registrar_is_seen_by_the_gokit_instancer() {
    let addr = require!(Server::Zk);
    let Some(bin) = gokit_bin() else { return };
    let _shared = shared(Server::Zk);
    for (extra, port) in [("&payload=plain", 7002), ("", 7003)] {
        let registry = registry(&addr, extra);
        let service = unique_name("interop-rust");
        let r = registry
            .zk_registrar(Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", port).id("rust-1").build(),
            ))
            .unwrap();
        r.register().await.unwrap();
        let want = String::from_utf8(r.data().to_vec()).unwrap();
        if extra.is_empty() {
            assert!(want.starts_with('{'), "{want}");
        } else {
            assert_eq!(want, format!("127.0.0.1:{port}"));
        }
        let dir = r.dir().to_string();
        let bin = bin.clone();
        let addr2 = addr.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&bin)
                .args(["watch", &addr2, &dir, &want, "20"])
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "go-kit did not see it ({extra}):\n{stdout}"
        );
        assert!(stdout.contains("SEEN "), "{stdout}");
        // Our own instancer agrees.
        let (instancer, mut sub) = common::watch(&registry, &service).await;
        let set = wait_for_set(&mut sub, "rust instance", |s| s.len() == 1).await;
        assert_eq!(set[0].port(), port);
        if extra.is_empty() {
            assert!(by_id(&set, "rust-1").is_some(), "{set:?}");
        }
        r.deregister().await.unwrap();
        instancer.stop().await;
    }
}
