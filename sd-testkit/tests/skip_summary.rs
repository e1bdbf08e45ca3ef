//! Issue 21/13: a run that skipped integration tests says so in one line at the end, after
//! libtest's `test result: ok`, which `cargo test` shows. The parent test runs this very test
//! binary again with `SD_INTEGRATION=0` and no `SD_TEST_*` variables, filtered to the `child_`
//! tests, and reads what the child prints.

use std::process::Command;

use sd_testkit::Server;

const CHILD: &str = "SD_TESTKIT_SKIP_SUMMARY_CHILD";

fn child() -> bool {
    std::env::var_os(CHILD).is_some()
}

#[test]
fn child_skips_zk() {
    if child() {
        assert_eq!(sd_testkit::require(Server::Zk), None);
    }
}

#[test]
fn child_skips_etcd_twice() {
    if child() {
        // Two skips in one test count once.
        assert_eq!(sd_testkit::require(Server::Etcd), None);
        assert_eq!(sd_testkit::require(Server::Etcd35), None);
    }
}

#[test]
fn child_skips_nothing() {}

/// Runs this binary's `filter` tests as the child; returns (stdout, stderr).
fn run_child(filter: &str) -> (String, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(filter).arg("--test-threads=2").env(CHILD, "1");
    cmd.env("SD_INTEGRATION", "0");
    for s in Server::ALL {
        cmd.env_remove(s.env_var());
    }
    let out = cmd.output().expect("run the test binary again");
    assert!(out.status.success(), "child run failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn skipped_tests_are_counted_in_one_line_at_exit() {
    if child() {
        return;
    }
    let (stdout, stderr) = run_child("child_");
    assert!(
        stdout.contains("test result: ok. 3 passed"),
        "child stdout: {stdout}"
    );
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("sd-testkit: SKIPPED (not run):"))
        .collect();
    assert_eq!(
        summary,
        [
            "sd-testkit: SKIPPED (not run): 2 integration tests of this test binary, because \
          SD_INTEGRATION=0; `ok`/`passed` above does not mean they were tested"
        ],
        "child stderr: {stderr}"
    );
    // It is the last thing the child prints.
    assert!(
        stderr.trim_end().ends_with("they were tested"),
        "child stderr: {stderr}"
    );
}

#[test]
fn no_summary_when_nothing_skipped() {
    if child() {
        return;
    }
    let (_, stderr) = run_child("child_skips_nothing");
    assert!(!stderr.contains("SKIPPED"), "child stderr: {stderr}");
}
