//! Attack on issue 15's `sdkit` CLI: secrets in the registry URL must never be echoed,
//! non-UTF-8 arguments and closed pipes must end cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "S3CRETv4lue";

fn sdkit() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("sdkit").expect("the sdkit binary");
    c.env_remove("SD_REGISTRY")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(120));
    c
}

struct Out {
    code: i32,
    all: String,
}

fn run(cmd: &mut assert_cmd::Command, args: &[&str]) -> Out {
    let out = cmd.args(args).output().expect("run sdkit");
    Out {
        code: out.status.code().unwrap_or(-1),
        all: format!(
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// docs/URLS.md: an inline secret "is redacted as token=*** in every error". The CLI puts the
/// raw URL (as typed, or from SD_REGISTRY) in its own error lines.
#[test]
fn secrets_in_the_url_are_never_echoed_by_any_command() {
    let urls = [
        format!("consul://127.0.0.1:1?token={SECRET}"),
        format!("eureka://127.0.0.1:1/eureka?user=sd&password={SECRET}"),
        format!("etcd://sd:{SECRET}@127.0.0.1:1"),
    ];
    let mut leaks = Vec::new();
    for url in &urls {
        for cmd in [
            vec!["list", url.as_str(), "web", "--timeout", "3s"],
            vec!["watch", url.as_str(), "web", "--timeout", "3s"],
            vec!["pick", url.as_str(), "web", "--timeout", "3s"],
            vec![
                "register",
                url.as_str(),
                "web",
                "127.0.0.1:8080",
                "--timeout",
                "3s",
            ],
            vec![
                "list",
                url.as_str(),
                "web",
                "--timeout",
                "3s",
                "--json",
                "-vv",
            ],
        ] {
            let out = run(&mut sdkit(), &cmd);
            assert_ne!(out.code, 0, "{cmd:?}: {}", out.all);
            if out.all.contains(SECRET) {
                leaks.push(format!("{cmd:?} ->\n{}", out.all));
            }
        }
        // The same URL from SD_REGISTRY.
        let out = run(
            sdkit().env("SD_REGISTRY", url),
            &["list", "web", "--timeout", "3s"],
        );
        if out.all.contains(SECRET) {
            leaks.push(format!("SD_REGISTRY={url} list web ->\n{}", out.all));
        }
    }
    assert!(
        leaks.is_empty(),
        "secret echoed {} time(s):\n{}",
        leaks.len(),
        leaks.join("\n---\n")
    );
}

/// A non-UTF-8 argument is one line and exit 2, not a panic.
#[cfg(unix)]
#[test]
fn non_utf8_arguments_are_a_usage_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"we\xffb");
    for args in [
        vec![OsStr::new("list"), OsStr::new("static://10.0.0.1:80"), bad],
        vec![
            OsStr::new("pick"),
            OsStr::new("static://10.0.0.1:80"),
            OsStr::new("web"),
            OsStr::new("--balancer"),
            OsStr::new("hash"),
            OsStr::new("--key"),
            bad,
        ],
        vec![
            OsStr::new("register"),
            OsStr::new("memory://x"),
            OsStr::new("web"),
            OsStr::new("h:1"),
            OsStr::new("--meta"),
            bad,
        ],
    ] {
        let out = sdkit().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().filter(|l| !l.is_empty()).count(), 1, "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
    }
}

/// Pick's limits: -n 0 and beyond 10M are refused, -n at the maximum finishes.
#[test]
fn pick_n_bounds() {
    for n in ["0", "10000001", "-1", "99999999999999999999"] {
        let out = run(
            &mut sdkit(),
            &["pick", "static://10.0.0.1:80", "web", "-n", n],
        );
        assert_eq!(out.code, 2, "-n {n}: {}", out.all);
    }
    let start = Instant::now();
    let out = run(
        &mut sdkit(),
        &[
            "pick",
            "static://10.0.0.1:80,10.0.0.2:80",
            "web",
            "-n",
            "10000000",
            "-b",
            "hash",
            "--key",
            "user-{}-{}",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.all);
    assert!(start.elapsed() < Duration::from_secs(110));
}

/// `watch --json` whose reader is already gone ends quietly with exit 0 (docs: like `| head`).
#[test]
fn watch_into_a_closed_pipe_ends_quietly() {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("sdkit"))
        .args(["watch", "static://10.0.0.1:80", "web", "--json"])
        .env_remove("SD_REGISTRY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("watch kept running with its reader gone");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// Issue 15: "`sdkit list URL [SERVICE]`: the services (where the registry can list them; a
/// clear message where it cannot, driven by the backend's capabilities)". Consul can list its
/// services (its catalog), yet `list URL` refuses for every registry.
#[test]
fn list_without_a_service_lists_consuls_services() {
    let Some(addr) = sd_testkit::require(sd_testkit::Server::Consul) else {
        return;
    };
    let _hold = sd_testkit::shared(sd_testkit::Server::Consul);
    let url = format!("consul://{addr}");
    let service = sd_testkit::unique_name("listme");
    let mut reg = Command::new(assert_cmd::cargo::cargo_bin("sdkit"))
        .args([
            "register",
            &url,
            &service,
            "127.0.0.1:19002",
            "--ttl",
            "30s",
        ])
        .env_remove("SD_REGISTRY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for "registered".
    let mut stdout = std::io::BufReader::new(reg.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("registered"), "{line}");
    let out = run(&mut sdkit(), &["list", &url, "--json"]);
    let _ = Command::new("kill")
        .args(["-TERM", &reg.id().to_string()])
        .status();
    let _ = reg.wait();
    assert!(
        out.code == 0 && out.all.contains(&service),
        "exit {}; {}",
        out.code,
        out.all
    );
}

/// The "unknown service" error of `list`/`pick` against a reachable registry echoes the URL
/// with its token (list.rs: `no instances of .. at {ctx.url}`).
#[test]
fn unknown_service_error_does_not_echo_the_token() {
    let Some(addr) = sd_testkit::require(sd_testkit::Server::Consul) else {
        return;
    };
    let _hold = sd_testkit::shared(sd_testkit::Server::Consul);
    let url = format!("consul://{addr}?token={SECRET}");
    let service = sd_testkit::unique_name("nosuch");
    for cmd in ["list", "pick"] {
        let out = run(&mut sdkit(), &[cmd, &url, &service]);
        assert_eq!(out.code, 1, "{}", out.all);
        assert!(!out.all.contains(SECRET), "{cmd}: {}", out.all);
    }
}
