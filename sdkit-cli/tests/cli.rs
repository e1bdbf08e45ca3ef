//! The `sdkit` binary without a registry server: static:// answers, and every kind of bad
//! input gets one clear line and a non-zero exit code.

mod common;

use common::{assert_one_line_error, run, run_with, sdkit};
use serde_json::Value;

const TWO: &str = "static://10.0.0.1:80,10.0.0.2:80";

#[test]
fn list_shows_the_instances_as_a_table() {
    let out = run(&["list", TWO, "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ADDRESS") && l.contains("HEALTH")),
        "{}",
        out.stdout
    );
    let a = lines
        .iter()
        .position(|l| l.contains("10.0.0.1:80"))
        .unwrap();
    let b = lines
        .iter()
        .position(|l| l.contains("10.0.0.2:80"))
        .unwrap();
    assert!(a < b, "sorted: {}", out.stdout);
    assert!(out.stdout.contains("2 instances of web"), "{}", out.stdout);
    // Piped: no colour codes.
    assert!(!out.stdout.contains('\x1b'), "{:?}", out.stdout);
}

#[test]
fn sd_registry_is_the_default_url() {
    let out = run_with(sdkit().env("SD_REGISTRY", TWO), &["list", "web", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["service"], "web");
    let addrs: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
    // A URL on the command line wins over SD_REGISTRY.
    let out = run_with(
        sdkit().env("SD_REGISTRY", TWO),
        &["list", "static://10.9.9.9:1", "web", "--json"],
    );
    assert!(
        out.stdout.contains("10.9.9.9:1") && !out.stdout.contains("10.0.0.1"),
        "{}",
        out.stdout
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let out = run(&["list", TWO, "web", "--color", "always"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains('\x1b'), "{:?}", out.stdout);
    let out = run_with(
        sdkit().env("CLICOLOR_FORCE", "1"),
        &["list", TWO, "web", "--color", "never"],
    );
    assert!(!out.stdout.contains('\x1b'), "{:?}", out.stdout);
}

#[test]
fn pick_shows_the_distribution() {
    let out = run(&["pick", TWO, "web", "-n", "10"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("first picks: 10.0.0.1:80 10.0.0.2:80 10.0.0.1:80"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("50.0%"), "{}", out.stdout);

    let out = run(&[
        "pick", TWO, "web", "-b", "hash", "--key", "user-{}", "-n", "1000", "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["balancer"], "hash");
    assert_eq!(v["picks"], 1000);
    let counts: Vec<u64> = v["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["picks"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 1000);
    assert!(counts.iter().all(|&c| c > 300), "{counts:?}");

    for balancer in ["rr", "random", "weighted", "p2c"] {
        let out = run(&[
            "pick",
            TWO,
            "web",
            "--balancer",
            balancer,
            "-n",
            "50",
            "--json",
        ]);
        assert_eq!(out.code, 0, "{balancer}: {}", out.stderr);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(v["sequence"].as_array().unwrap().len(), 20, "{balancer}");
    }
}

#[test]
fn watch_prints_the_initial_state_and_stops_on_sigterm() {
    let mut w = common::Running::start(&["watch", TWO, "web", "--json"]);
    let v = w.expect_json("initial", |v| v["event"] == "initial");
    assert_eq!(v["count"], 2);
    assert_eq!(v["service"], "web");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    w.expect_json("first added", |v| {
        v["event"] == "added" && v["instance"]["address"] == "10.0.0.1:80"
    });
    w.expect_json("second added", |v| {
        v["event"] == "added" && v["instance"]["address"] == "10.0.0.2:80"
    });
    let (code, _) = w.terminate();
    assert_eq!(code, 0);
}

#[test]
fn watch_text_lines_have_a_timestamp_the_service_and_the_change() {
    let mut w = common::Running::start(&["watch", TWO, "web"]);
    let lines = w.expect_lines(3);
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.splitn(4, ' ').collect()).collect();
    for f in &fields {
        assert!(f[0].ends_with('Z') && f[0].contains('T'), "{lines:?}");
        assert_eq!(f[1], "web", "{lines:?}");
    }
    assert_eq!(fields[0][2..], ["=", "2 instances"]);
    assert_eq!(fields[1][2..], ["+", "10.0.0.1:80 health=passing weight=1"]);
    assert_eq!(fields[2][2..], ["+", "10.0.0.2:80 health=passing weight=1"]);
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "piped: no colour"
    );
    assert_eq!(w.terminate().0, 0);
}

#[test]
fn a_bad_url_is_one_line_naming_the_problem() {
    let out = run(&["list", "foo://x", "web"]);
    assert_one_line_error(&out, 2, "unknown registry scheme foo://");
    let out = run(&["watch", "consul://127.0.0.1:8500?bogus=1", "web"]);
    assert_one_line_error(&out, 2, "bogus");
    let out = run(&["pick", "static://", "web"]);
    assert_one_line_error(&out, 2, "static:// needs at least one host:port");
    let out = run_with(sdkit().env("SD_REGISTRY", "nope://"), &["list", "web"]);
    assert_one_line_error(&out, 2, "unknown registry scheme nope://");
}

#[test]
fn unknown_options_and_missing_arguments_are_one_line() {
    let out = run(&["watch", TWO, "web", "--bogus"]);
    assert_one_line_error(&out, 2, "--bogus");
    let out = run(&["frobnicate"]);
    assert_one_line_error(&out, 2, "frobnicate");
    let out = run(&["pick", TWO, "web", "--balancer", "fastest"]);
    assert_one_line_error(&out, 2, "fastest");
    let out = run(&["register", TWO, "web", "10.0.0.1:80", "--meta", "novalue"]);
    assert_one_line_error(&out, 2, "KEY=VALUE");
    let out = run(&["register", TWO, "web", "10.0.0.1:80", "--ttl", "soon"]);
    assert_one_line_error(&out, 2, "soon");
    let out = run(&["watch", "web"]);
    assert_one_line_error(&out, 2, "set SD_REGISTRY");
    let out = run(&["watch", TWO, "web", "extra"]);
    assert_one_line_error(&out, 2, "'extra'");
    let out = run(&["pick", TWO, "web", "-b", "hash"]);
    assert_one_line_error(&out, 2, "needs --key");
    let out = run(&["register", "memory://cli", "web", "localhost"]);
    assert_one_line_error(&out, 2, "HOST:PORT");
    let out = run(&["register", "memory://cli", "web", "h:1", "--ttl", "100ms"]);
    assert_one_line_error(&out, 2, "1 s minimum");
}

#[test]
fn help_and_version_succeed() {
    let out = run(&["--help"]);
    assert_eq!(out.code, 0);
    for cmd in ["watch", "list", "register", "pick"] {
        assert!(out.stdout.contains(cmd), "{}", out.stdout);
    }
    let out = run(&["watch", "--help"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("sdkit watch [OPTIONS] [URL] <SERVICE>"),
        "{}",
        out.stdout
    );
    let out = run(&["--version"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("sdkit "), "{}", out.stdout);
}

#[test]
fn an_unreachable_registry_is_one_line_and_exit_1() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    for args in [
        vec!["list", "consul://127.0.0.1:1", "web"],
        vec!["watch", "consul://127.0.0.1:1", "web"],
        vec!["pick", "eureka://127.0.0.1:1", "web"],
        vec!["register", "consul://127.0.0.1:1", "web", "127.0.0.1:8080"],
        vec!["watch", "etcd://127.0.0.1:1", "web", "--timeout", "3s"],
    ] {
        let out = run(&args);
        assert_ne!(out.code, 0, "{args:?}");
        assert_one_line_error(&out, 1, "127.0.0.1:1");
    }
}

#[test]
fn an_unknown_service_is_an_error_for_list_and_pick() {
    let out = run(&["list", "memory://cli-empty", "nope"]);
    assert_one_line_error(&out, 1, "no instances of \"nope\"");
    let out = run(&["pick", "memory://cli-empty", "nope", "--passing"]);
    assert_one_line_error(&out, 1, "matching the --tag/--passing filters");
    // A static:// list for one service says which one it serves.
    let out = run(&["list", "static://10.0.0.1:80/web", "nope"]);
    assert_one_line_error(&out, 2, "of service \"web\" only");
}

#[test]
fn list_without_a_service_shows_capabilities_and_says_why_it_cannot_list() {
    let out = run(&["list", TWO]);
    assert_one_line_error(&out, 1, "cannot list their services");
    assert!(out.stdout.contains("static:// registry"), "{}", out.stdout);
    assert!(out.stdout.contains("registration"), "{}", out.stdout);
    let out = run(&["list", TWO, "--json"]);
    assert_eq!(out.code, 1);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["scheme"], "static");
    assert_eq!(v["capabilities"]["list_services"], false);
    assert!(v["services"].is_null());
    assert!(v["services_error"]
        .as_str()
        .unwrap()
        .contains("cannot list their services"));
    // A registry that can list but cannot be reached: one clear error line.
    let out = run(&["list", "consul://127.0.0.1:1", "--json", "--timeout", "5s"]);
    assert_one_line_error(&out, 1, "listing the services of consul://127.0.0.1:1");
}

#[test]
fn list_without_a_service_lists_the_services_of_a_memory_registry() {
    // memory:// is this process's own registry: empty, but listable.
    let out = run(&["list", "memory://cli-list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["capabilities"]["list_services"], true);
    assert_eq!(v["services"], serde_json::json!([]));
    let out = run(&["list", "memory://cli-list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("SERVICE"), "{}", out.stdout);
    assert!(
        out.stdout.contains("0 services at memory://cli-list"),
        "{}",
        out.stdout
    );
}

#[test]
fn registering_in_a_read_only_registry_fails() {
    let out = run(&["register", TWO, "web", "10.0.0.3:80"]);
    assert_ne!(out.code, 0);
    assert_one_line_error(&out, out.code, "static");
}

#[test]
fn memory_urls_warn_that_other_processes_cannot_see_them() {
    let out = run(&["list", "memory://x", "web"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("note: memory:// is this process's own registry"),
        "{}",
        out.stderr
    );
}

#[test]
fn filters_the_registry_cannot_apply_get_a_note() {
    let out = run(&[
        "list",
        "static://10.0.0.1:80",
        "web",
        "--tag",
        "x",
        "--passing",
    ]);
    assert_eq!(out.code, 0, "static:// ignores filters: {}", out.stderr);
    assert!(
        out.stderr
            .contains("sdkit: note: static:// does not carry tags"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("does not carry health"),
        "{}",
        out.stderr
    );
    let out = run(&["list", "static://10.0.0.1:80", "web"]);
    assert_eq!(out.stderr, "", "no note without filters");
}

#[test]
fn sigterm_while_waiting_for_a_silent_registry_ends_watch_cleanly() {
    // A "registry" on loopback that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("consul://{}", silent.local_addr().unwrap());
    let w = common::Running::start(&["watch", &url, "web", "--timeout", "300s"]);
    // Once it has connected it is waiting for the first answer, signal handlers installed.
    let (_conn, _) = silent.accept().unwrap();
    let (code, lines) = w.terminate();
    assert_eq!(code, 0, "{lines:?}");
    assert!(lines.is_empty(), "{lines:?}");
}
