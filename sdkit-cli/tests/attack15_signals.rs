//! Attack on `sdkit register`: SIGTERM / SIGINT at every moment of its life (before the
//! handlers, during registration, right after) must never leave a registration behind in a
//! real Consul, and the exit code must say what happened.
#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sd_testkit::Server;

fn sdkit_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("sdkit")
}

#[test]
fn a_signal_at_any_moment_leaves_no_registration() {
    let Some(addr) = sd_testkit::require(Server::Consul) else {
        return;
    };
    let _hold = sd_testkit::shared(Server::Consul);
    let url = format!("consul://{addr}");
    let mut leaked = Vec::new();
    for (i, delay_ms) in [0u64, 5, 15, 30, 60, 100, 150, 250, 400, 700, 1200, 2500]
        .into_iter()
        .enumerate()
    {
        // SIGINT only once the handlers are surely installed: a test run from a
        // non-interactive shell's background job inherits SIGINT *ignored*, and a SIGINT
        // before sdkit installs its handler is then dropped by the kernel (not sdkit's fault).
        let sig = if i % 2 == 1 && delay_ms >= 400 {
            "-INT"
        } else {
            "-TERM"
        };
        let service = sd_testkit::unique_name("sigreg");
        let mut child = Command::new(sdkit_bin())
            .args([
                "register",
                &url,
                &service,
                "127.0.0.1:19001",
                "--ttl",
                "60s",
                "--json",
            ])
            .env_remove("SD_REGISTRY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < end,
                "sdkit register did not end after {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // Whatever the moment, nothing of it stays in the registry.
        let list = Command::new(sdkit_bin())
            .args(["list", &url, &service, "--json"])
            .env_remove("SD_REGISTRY")
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&list.stdout).to_string();
        if listed.contains("127.0.0.1:19001") {
            leaked.push(format!(
                "{sig} after {delay_ms} ms: status {:?}, stdout {stdout:?}, stderr {stderr:?}",
                out.status
            ));
        }
        // Registered and then deregistered: exit 0 and a `deregistered` line.
        if stdout.contains("\"registered\"") {
            assert!(
                out.status.success() && stdout.contains("\"deregistered\""),
                "{sig} after {delay_ms} ms: {:?} {stdout} {stderr}",
                out.status
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(leaked.is_empty(), "left registered:\n{}", leaked.join("\n"));
}

/// `register` whose stdout reader is gone before the `registered` line: register.rs prints
/// that line with `say(...)?` after registering, the BrokenPipe becomes a quiet exit 0
/// (failure.rs), and the process ends at once, neither waiting for a signal nor
/// deregistering: the registration is abandoned in the registry, and the exit code says
/// success ("0 after a clean deregistration", docs/CLI.md).
#[test]
fn register_with_a_closed_stdout_does_not_abandon_its_registration() {
    let Some(addr) = sd_testkit::require(Server::Consul) else {
        return;
    };
    let _hold = sd_testkit::shared(Server::Consul);
    let url = format!("consul://{addr}");
    let service = sd_testkit::unique_name("closedout");
    let mut child = Command::new(sdkit_bin())
        .args([
            "register",
            &url,
            &service,
            "127.0.0.1:19003",
            "--ttl",
            "60s",
        ])
        .env_remove("SD_REGISTRY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    // Give it time to register (or to end).
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended_early = child.try_wait().unwrap();
    if ended_early.is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let out = child.wait_with_output().unwrap();
    let list = Command::new(sdkit_bin())
        .args(["list", &url, &service, "--json"])
        .env_remove("SD_REGISTRY")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        !listed.contains("127.0.0.1:19003"),
        "ended on its own: {ended_early:?} (status {:?}, stderr {:?}); still registered: {listed}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
