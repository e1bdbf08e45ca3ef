//! Runs the `sd-compare` binary the way `bench/compare.sh` does and checks the JSON lines it
//! prints (the shape the go-kit side prints too), its skip line without Consul, and its
//! errors.

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str], consul: Option<&str>) -> (bool, Vec<Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sd-compare"));
    cmd.args(args);
    match consul {
        Some(addr) => cmd.env("SD_TEST_CONSUL", addr),
        None => cmd.env_remove("SD_TEST_CONSUL"),
    };
    let out = cmd.output().expect("run sd-compare");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn update_prints_one_line_per_variant_with_the_common_shape() {
    let (ok, lines, err) = run(&["--quick", "--scenarios", "update"], None);
    assert!(ok, "{err}");
    let scenarios: Vec<&str> = lines
        .iter()
        .map(|l| l["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["update", "update_path"]);
    for l in &lines {
        assert_eq!(l["impl"], "sdkit");
        assert_eq!(l["n"], 10_000);
        assert_eq!(l["threads"], 1);
        assert!(num(l, "ns_per_op") > 0.0);
        assert!(num(l, "allocs_per_op") > 0.0, "an update allocates: {l}");
    }
    // The whole path reports percentiles; its p99 is never below its p50.
    assert!(num(&lines[1], "p99_ns") >= num(&lines[1], "p50_ns"));
}

#[test]
fn retry_reports_both_variants() {
    let (ok, lines, err) = run(&["--quick", "--scenarios", "retry"], None);
    assert!(ok, "{err}");
    let scenarios: Vec<&str> = lines
        .iter()
        .map(|l| l["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["retry", "retry_one_down"]);
    for l in &lines {
        assert_eq!(l["n"], 2);
        assert!(num(l, "ns_per_op") > 0.0);
    }
    // A failed attempt records its error: the variant with a down endpoint allocates.
    assert!(num(&lines[1], "allocs_per_op") > num(&lines[0], "allocs_per_op"));
}

#[test]
fn memory_reports_bytes_per_instance() {
    let (ok, lines, err) = run(&["--scenarios", "memory"], None);
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["scenario"], "memory");
    assert_eq!(l["n"], 100_000);
    // An instance and its endpoint take more than a pointer and less than a page.
    let heap = num(l, "heap_bytes_per_instance");
    assert!((64.0..4096.0).contains(&heap), "{l}");
    assert!(num(l, "bytes_per_instance") > 0.0, "{l}");
}

#[test]
fn consul_without_an_agent_prints_a_skip_line() {
    let (ok, lines, err) = run(&["--scenarios", "consul"], None);
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["scenario"], "consul");
    assert!(lines[0]["skipped"]
        .as_str()
        .unwrap()
        .contains("SD_TEST_CONSUL"));

    // Port 1 on loopback: nothing listens there.
    let (ok, lines, err) = run(&["--scenarios", "consul"], Some("127.0.0.1:1"));
    assert!(ok, "{err}");
    assert!(lines[0]["skipped"]
        .as_str()
        .unwrap()
        .contains("not reachable"));
}

#[test]
fn unknown_scenario_and_argument_fail_with_a_message() {
    let (ok, lines, err) = run(&["--scenarios", "nope"], None);
    assert!(!ok);
    assert!(lines.is_empty());
    assert!(err.contains("unknown scenario \"nope\""), "{err}");

    let (ok, _, err) = run(&["--bogus"], None);
    assert!(!ok);
    assert!(err.contains("unknown argument"), "{err}");
}
