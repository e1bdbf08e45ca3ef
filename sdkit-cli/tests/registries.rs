//! The `sdkit` binary against the real registries of the harness (scripts/registries, on
//! 127.0.0.1): one process registers, another watches; the registrant is killed (no
//! deregistration) and the watcher sees it go; a second registrant is stopped with SIGTERM
//! and deregisters. `list` and `pick` read the same registration.
//!
//! Each test holds `sd_testkit::shared(server)`, so fault tests of other crates (which kill
//! the server) never run at the same time.

mod common;

use common::{is_event, run, Running};
use sd_testkit::Server;
use serde_json::Value;

/// What a backend can show.
struct Backend {
    server: Server,
    url: String,
    /// A crashed registrant is removed on its own (TTL, lease, session).
    expiry: bool,
    /// Tags and metadata round-trip.
    tags: bool,
    /// `list URL` names the services (`list_services`).
    lists: bool,
}

/// `list URL --json` (no service), until it names `service` (case-insensitively: Eureka
/// upper-cases names); Eureka's `/apps` answer is cached, so this polls, within 60 s.
fn expect_listed(url: &str, service: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = run(&["list", url, "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(v["capabilities"]["list_services"], true, "{v}");
        let names: Vec<&str> = v["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no service list: {v}"))
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        if names.iter().any(|n| n.eq_ignore_ascii_case(service)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service} never listed: {names:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Whether `v` is a watch event `event` about the instance at `addr`.
fn about(v: &Value, event: &str, addr: &str) -> bool {
    v["event"] == event && v["instance"]["address"] == addr
}

/// Register, watch, list, pick, crash, deregister, against `b.url`. The registrant's TTL is
/// 2 s, so where the backend has expiry the crashed one is gone from the `--passing` watch
/// soon after.
fn register_watch_kill(b: Backend) {
    let _shared = sd_testkit::shared(b.server);
    let url = b.url.as_str();
    let service = sd_testkit::unique_name("cli");
    let mut watch = Running::start(&["watch", url, &service, "--passing", "--json"]);
    let v = watch.expect_json("initial state", |v| v["event"] == "initial");
    assert_eq!(v["count"], 0, "a new service has no instance");

    // 1. A registrant that crashes: the registry drops it once its TTL/lease/session lapses.
    let first = "127.0.0.1:7001";
    let id = format!("{service}-1");
    let mut args = vec![
        "register", url, &service, first, "--id", &id, "--ttl", "2s", "--json",
    ];
    if b.tags {
        args.extend(["--tag", "blue", "--meta", "zone=eu"]);
    }
    let mut reg = Running::start(&args);
    let v = reg.expect_json("registered", |v| v["event"] == "registered");
    assert_eq!(v["id"], id.as_str());
    let added = watch.expect_json("the registrant appears", |v| about(v, "added", first));
    assert_eq!(added["service"], service.as_str());
    if b.tags {
        assert_eq!(added["instance"]["tags"][0], "blue", "{added}");
        assert_eq!(added["instance"]["meta"]["zone"], "eu", "{added}");
    }

    // list and pick, from a third and fourth process, see the same instance.
    let out = run(&["list", url, &service, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let addrs: Vec<&str> = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [first]);
    let out = run(&["pick", url, &service, "-n", "10", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let picked: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(picked["distribution"][0]["picks"], 10);
    // `list URL` names the service where the registry can list, and says it cannot where not.
    if b.lists {
        expect_listed(url, &service);
    } else {
        let out = run(&["list", url]);
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(
            out.stderr.contains("cannot list their services"),
            "{}",
            out.stderr
        );
    }

    if b.expiry {
        reg.crash();
        watch.expect_json("the crashed registrant goes", |v| {
            about(v, "removed", first)
        });
    } else {
        // Nothing would ever remove a crashed registrant: stop this one properly too.
        assert_eq!(reg.terminate().0, 0);
        watch.expect_json("the first registrant goes", |v| about(v, "removed", first));
    }

    // 2. A registrant stopped with SIGTERM deregisters and exits 0. Its TTL (600 s) is far
    // beyond the deadline: only the deregistration (or, in ZooKeeper, the end of its
    // session) can remove it in time.
    let second = "127.0.0.1:7002";
    let id2 = format!("{service}-2");
    let mut reg = Running::start(&[
        "register", url, &service, second, "--id", &id2, "--ttl", "600s", "--json",
    ]);
    reg.expect_json("registered", |v| v["event"] == "registered");
    watch.expect_json("the second registrant appears", |v| {
        about(v, "added", second)
    });
    let (code, lines) = reg.terminate();
    assert_eq!(code, 0, "register exits 0 after deregistering: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("\"deregistered\"")),
        "{lines:?}"
    );
    watch.expect_json("the deregistered one goes", |v| about(v, "removed", second));

    let (code, _) = watch.terminate();
    assert_eq!(code, 0, "watch exits 0 on SIGTERM");
}

#[test]
fn consul_register_watch_kill() {
    let addr = sd_testkit::require!(Server::Consul);
    register_watch_kill(Backend {
        server: Server::Consul,
        url: format!("consul://{addr}"),
        expiry: true,
        tags: true,
        lists: true,
    });
}

#[test]
fn etcd_register_watch_kill() {
    let addr = sd_testkit::require!(Server::Etcd);
    register_watch_kill(Backend {
        server: Server::Etcd,
        url: format!("etcd://{addr}?prefix=/sdkit-cli"),
        expiry: true,
        tags: true,
        lists: true,
    });
}

#[test]
fn zk_register_watch_kill() {
    let addr = sd_testkit::require!(Server::Zk);
    // The session timeout is what removes a crashed registrant's ephemeral node.
    register_watch_kill(Backend {
        server: Server::Zk,
        url: format!("zk://{addr}/sdkit-cli?session_timeout=2s&connect_timeout=5s"),
        expiry: true,
        tags: true,
        lists: true,
    });
}

#[test]
fn eureka_register_watch_kill() {
    let addr = sd_testkit::require!(Server::Eureka);
    let rest = addr.strip_prefix("http://").unwrap_or(&addr);
    // The server evicts a lapsed 2 s lease about a second after it lapses; polled every 1 s.
    register_watch_kill(Backend {
        server: Server::Eureka,
        url: format!("eureka://{rest}?poll=1s&timeout=20s"),
        expiry: true,
        tags: true,
        lists: true,
    });
}

#[test]
fn dnssrv_register_watch_deregister() {
    let addr = sd_testkit::require!(Server::Dns);
    let zone = sd_testkit::dns_zone();
    // DNS has no expiry, tags or metadata: both registrants are stopped with SIGTERM.
    register_watch_kill(Backend {
        server: Server::Dns,
        url: format!(
            "dns+srv://{addr}/?zone={zone}&min_refresh=100ms&max_refresh=1s&resolve_targets=1&record_ttl=5s"
        ),
        expiry: false,
        tags: false,
        lists: false,
    });
}

#[test]
fn an_unknown_service_in_a_real_registry_is_exit_1() {
    let addr = sd_testkit::require!(Server::Consul);
    let _shared = sd_testkit::shared(Server::Consul);
    let service = sd_testkit::unique_name("cli-unknown");
    let out = run(&["list", &format!("consul://{addr}"), &service]);
    common::assert_one_line_error(&out, 1, "no instances of");
}

/// The registry dies under a running `watch` and `register`: the watch prints an error line
/// (keeping the last good set), then a recovery line once the server is back, and the
/// registrant registers again in the restarted (empty) -dev agent.
#[test]
fn fault_consul_restart_shows_error_then_recovery() {
    let addr = sd_testkit::require!(Server::Consul);
    let _lock = sd_testkit::exclusive(Server::Consul);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(sd_testkit::wait_ready(Server::Consul)).unwrap();
    let url = format!("consul://{addr}");
    let service = sd_testkit::unique_name("cli-fault");
    let id = format!("{service}-1");
    let mut reg = Running::start(&[
        "register",
        &url,
        &service,
        "127.0.0.1:7003",
        "--id",
        &id,
        "--ttl",
        "5s",
        "--json",
    ]);
    reg.expect_json("registered", |v| v["event"] == "registered");
    let mut watch = Running::start(&["watch", &url, &service, "--json"]);
    watch.expect_json("the registrant", |v| is_event(v, "added", &id));

    rt.block_on(sd_testkit::kill(Server::Consul)).unwrap();
    let err = watch.expect_json("an error line", |v| v["event"] == "error");
    assert!(err["error"].as_str().unwrap().contains("consul"), "{err}");

    rt.block_on(sd_testkit::restart(Server::Consul)).unwrap();
    watch.expect_json("a recovery line", |v| v["event"] == "recovered");
    // The -dev agent restarted empty; the registrar registers again.
    let end = std::time::Instant::now() + common::DEADLINE;
    let out = loop {
        let out = run(&["list", &url, &service, "--json"]);
        if out.code == 0 || std::time::Instant::now() > end {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        out.code,
        0,
        "re-registered within {:?}: {}",
        common::DEADLINE,
        out.stderr
    );
    assert!(out.stdout.contains(&id), "{}", out.stdout);
    let (code, _) = reg.terminate();
    assert_eq!(code, 0);
    let (code, _) = watch.terminate();
    assert_eq!(code, 0);
}

/// Without `--passing`, a crashed Consul registrant does not vanish: its TTL check turns
/// critical, and the watch prints a `changed` line saying so.
#[test]
fn consul_lapsed_ttl_is_a_changed_line_without_passing() {
    let addr = sd_testkit::require!(Server::Consul);
    let _shared = sd_testkit::shared(Server::Consul);
    let url = format!("consul://{addr}");
    let service = sd_testkit::unique_name("cli-changed");
    let mut watch = Running::start(&["watch", &url, &service, "--json"]);
    watch.expect_json("initial state", |v| v["event"] == "initial");
    let reg = Running::start(&["register", &url, &service, "127.0.0.1:7004", "--ttl", "2s"]);
    let added = watch.expect_json("the registrant", |v| about(v, "added", "127.0.0.1:7004"));
    assert_eq!(added["instance"]["health"], "passing");
    reg.crash();
    let changed = watch.expect_json("health turns critical", |v| v["event"] == "changed");
    assert_eq!(changed["before"]["health"], "passing", "{changed}");
    assert_eq!(changed["instance"]["health"], "critical", "{changed}");
    assert_eq!(changed["instance"]["address"], "127.0.0.1:7004");
    let (code, _) = watch.terminate();
    assert_eq!(code, 0);
}
