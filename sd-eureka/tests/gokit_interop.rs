//! Interop with go-kit itself against the real Eureka server: go-kit's `eureka.Registrar`
//! (over fargo) registers and sdkit's instancer discovers it; sdkit's registrar registers
//! and go-kit's `eureka.Instancer` sees it.
//!
//! The Go side is `bench/gokit-eureka` (go-kit v0.13.0, fargo v1.4.0), built here with
//! `go build` (Go's build cache makes later builds quick). Without `go` on the PATH the
//! tests skip, loudly, unless `SD_INTEGRATION=1`, where they fail.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{by_id, registry, wait_for_set};
use sd_core::{Health, HealthCheck, Instance, Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::{integration_required, repo_root, require, shared, unique_name, Server};

/// Builds the Go program once per test binary; `None` (skip) without Go.
fn gokit_binary() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if Command::new("go").arg("version").output().is_err() {
            assert!(
                !integration_required(),
                "go is not on the PATH but SD_INTEGRATION=1 needs the go-kit interop program"
            );
            let _ =
                std::io::stderr().write_all(b"skipping go-kit interop: go is not on the PATH\n");
            return None;
        }
        let out = repo_root().join("target").join("gokit-eureka");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(repo_root().join("bench").join("gokit-eureka"))
            .status()
            .expect("run go build");
        assert!(status.success(), "go build of bench/gokit-eureka failed");
        Some(out)
    })
    .clone()
}

#[tokio::test]
async fn gokit_registrar_is_discovered_by_the_sdkit_instancer() {
    let addr = require!(Server::Eureka);
    let Some(bin) = gokit_binary() else { return };
    let _lock = shared(Server::Eureka);
    let service = unique_name("eureka-gokit-reg");
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "register", "-eureka", &addr, "-app", &service, "-id", "gk-1",
        ])
        .args(["-port", "28101", "-lease", "10", "-renew", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the go-kit registrar");
    let instancer = registry(&addr)
        .eureka_instancer(&ServiceQuery::new(service.as_str()).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    let set = wait_for_set(&mut sub, "go-kit's registration", |s| {
        by_id(s, "gk-1").is_some()
    })
    .await;
    let i = by_id(&set, "gk-1").unwrap();
    assert_eq!(i.addr(), "127.0.0.1:28101");
    assert_eq!(i.health(), Health::Passing);
    assert_eq!(i.meta().get("gokit").unwrap(), "true");
    assert!(i.tags().is_empty());

    // Closing its stdin makes the Go program deregister (go-kit's Deregister) and exit.
    drop(child.stdin.take());
    let status = tokio::time::timeout(common::BOUND, child.wait())
        .await
        .expect("the go-kit registrar exits")
        .unwrap();
    assert!(status.success(), "{status}");
    wait_for_set(&mut sub, "go-kit's deregistration", |s| s.is_empty()).await;
    instancer.stop().await;
}

#[tokio::test]
async fn sdkit_registrar_is_seen_by_the_gokit_instancer() {
    let addr = require!(Server::Eureka);
    let Some(bin) = gokit_binary() else { return };
    let _lock = shared(Server::Eureka);
    let service = unique_name("eureka-gokit-inst");
    let reg = registry(&addr);
    let mut registrars = Vec::new();
    for (id, port) in [("rs-1", 28201), ("rs-2", 28202)] {
        let r = reg
            .eureka_registrar(
                Registration::new(
                    service.as_str(),
                    Instance::builder("127.0.0.1", port)
                        .id(id)
                        .tag("v2")
                        .meta("zone", "a")
                        .build(),
                )
                .check(HealthCheck::Ttl(Duration::from_secs(10))),
            )
            .unwrap();
        r.register().await.unwrap();
        registrars.push(r);
    }
    let watch = |want: &str| {
        tokio::process::Command::new(&bin)
            .args(["watch", "-eureka", &addr, "-app", &service.to_uppercase()])
            .args(["-want", want, "-timeout", "60s"])
            .kill_on_drop(true)
            .output()
    };
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        watch("127.0.0.1:28201,127.0.0.1:28202"),
    )
    .await
    .expect("go-kit's watch ends")
    .unwrap();
    assert!(
        out.status.success(),
        "go-kit's instancer did not see both: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"instances":["127.0.0.1:28201","127.0.0.1:28202"]}"#
    );
    // One leaves: go-kit sees the smaller set.
    registrars[1].deregister().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(90), watch("127.0.0.1:28201"))
        .await
        .expect("go-kit's watch ends")
        .unwrap();
    assert!(
        out.status.success(),
        "go-kit's instancer did not see the smaller set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    registrars[0].deregister().await.unwrap();
}
