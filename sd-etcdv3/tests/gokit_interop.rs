//! Interop with go-kit itself (v0.13.0, `sd/etcdv3`), on the real etcd 3.4 and 3.5:
//!
//! - a Go program registers with go-kit's `etcdv3.Registrar` (a plain `host:port` value under
//!   a lease it keeps alive); the Rust instancer discovers it, and sees it go when go-kit
//!   deregisters;
//! - the Rust registrar with `format=plain` writes go-kit's layout; go-kit's
//!   `etcdv3.Instancer` (in the Go program) discovers it.
//!
//! The Go program is `bench/gokit-etcd` (built here with `go build`; the first build fetches
//! its modules through the Go module proxy). Without `go` on PATH the test is skipped with a
//! notice, or fails under `SD_INTEGRATION=1`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{addr, by_id, registry, wait_for_set, BOUND};
use sd_core::{Instancer, Registrar, Registration, ServiceQuery};
use sd_testkit::{integration_required, shared, unique_name, Server};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Builds the Go program once per test binary; `None` (skip) without Go.
async fn gokit_binary() -> Option<PathBuf> {
    static BUILT: tokio::sync::OnceCell<Option<PathBuf>> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let src = sd_testkit::repo_root().join("bench").join("gokit-etcd");
            let out = sd_testkit::repo_root()
                .join("target")
                .join("gokit-etcd")
                .join("gokit-etcd");
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env("GOFLAGS", "-mod=mod")
                .status()
                .await;
            match status {
                Ok(s) if s.success() => Some(out),
                Ok(s) => panic!("go build in {} failed: {s}", src.display()),
                Err(e) if !integration_required() => {
                    eprintln!("skipping go-kit interop: cannot run go ({e})");
                    None
                }
                Err(e) => panic!("go-kit interop needs Go on PATH (SD_INTEGRATION=1): {e}"),
            }
        })
        .await
        .clone()
}

async fn gokit_registers_and_the_rust_instancer_discovers(server: Server) {
    let Some(addr) = addr(server) else { return };
    let Some(bin) = gokit_binary().await else {
        return;
    };
    let _lock = shared(server);
    let reg = registry(&addr, "interop-in", "");
    let service = unique_name("gokit");
    let key = reg.client().instance_key(&service, "gokit-1");
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    let mut child = Command::new(&bin)
        .args(["-etcd", &addr, "-mode", "register", "-key", &key, "-value"])
        .arg("http://127.0.0.1:9301")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the go-kit program");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(BOUND, lines.next_line())
        .await
        .expect("go-kit registers in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("registered"));
    let set = wait_for_set(&mut sub, "go-kit's registration", |s| s.len() == 1).await;
    let i = by_id(&set, "gokit-1").expect("the id is the key's last part");
    assert_eq!(
        i.addr(),
        "127.0.0.1:9301",
        "go-kit's URL value, scheme dropped"
    );
    // Closing stdin makes the program call go-kit's Deregister (a delete).
    drop(child.stdin.take());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("go-kit exits")
        .unwrap();
    assert!(status.success());
    wait_for_set(&mut sub, "go-kit deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}
both_servers!(gokit_registers_and_the_rust_instancer_discovers);

async fn the_rust_registrar_is_discovered_by_gokit(server: Server) {
    let Some(addr) = addr(server) else { return };
    let Some(bin) = gokit_binary().await else {
        return;
    };
    let _lock = shared(server);
    let reg = registry(&addr, "interop-out", "&format=plain");
    let service = unique_name("rust");
    let registrar = reg
        .etcd_registrar(
            Registration::new(
                service.as_str(),
                sd_core::Instance::builder("127.0.0.1", 9302)
                    .id("rust-1")
                    .build(),
            )
            .check(sd_core::HealthCheck::Ttl(Duration::from_secs(3))),
        )
        .unwrap();
    registrar.register().await.unwrap();
    let dir = reg.client().service_dir(&service);
    let out = tokio::time::timeout(
        BOUND,
        Command::new(&bin)
            .args(["-etcd", &addr, "-mode", "discover", "-prefix", &dir])
            .args(["-want", "127.0.0.1:9302", "-timeout", "15s"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("go-kit answers in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go-kit did not discover the Rust registration: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("found 127.0.0.1:9302"), "{stdout}");
    registrar.deregister().await.unwrap();
}
both_servers!(the_rust_registrar_is_discovered_by_gokit);
