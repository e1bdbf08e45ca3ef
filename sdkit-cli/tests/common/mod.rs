//! Running the `sdkit` binary: short commands through assert_cmd, long-running ones (watch,
//! register) as children whose output lines arrive on a channel, read with deadlines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one expected line may take. Generous: the machine is shared and slow.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `sdkit` with a clean environment for the registry URL.
pub fn sdkit() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("sdkit").expect("the sdkit binary");
    c.env_remove("SD_REGISTRY")
        .env_remove("RUST_LOG")
        .env_remove("CLICOLOR_FORCE")
        .timeout(DEADLINE);
    c
}

/// What a finished command printed.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sdkit args...` to its end.
pub fn run(args: &[&str]) -> Output {
    run_with(&mut sdkit(), args)
}

/// Runs a prepared command to its end.
pub fn run_with(cmd: &mut assert_cmd::Command, args: &[&str]) -> Output {
    let out = cmd.args(args).output().expect("run sdkit");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts the command failed with `code` and exactly one line on stderr containing `needle`,
/// and no panic or backtrace.
pub fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    assert_eq!(
        out.code, code,
        "exit code; stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| !l.contains("note:")).collect();
    assert_eq!(errors.len(), 1, "one error line, got: {:?}", out.stderr);
    assert!(errors[0].starts_with("sdkit: "), "{:?}", errors[0]);
    assert!(
        errors[0].contains(needle),
        "{:?} should contain {needle:?}",
        errors[0]
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
        assert!(!out.stderr.contains(bad), "{bad} in {:?}", out.stderr);
    }
}

/// A running `sdkit` whose stdout lines arrive on a channel.
pub struct Running {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `sdkit args...`.
    pub fn start(args: &[&str]) -> Running {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("sdkit"))
            .args(args)
            .env_remove("SD_REGISTRY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sdkit");
        let (tx, rx) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a JSON line for which `pred` holds and returns it. Panics, showing every line
    /// seen, when the deadline passes or the process closes its output first.
    pub fn expect_json(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line for {what} within {DEADLINE:?}; seen: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let stderr = self.stderr_now();
                    panic!(
                        "output closed before {what}; seen: {:#?}; stderr: {stderr}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Waits for the next `n` lines (any text) and returns them.
    pub fn expect_lines(&mut self, n: usize) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    got.push(line);
                }
                Err(e) => panic!("{e:?} after {got:?}; stderr: {}", self.stderr_now()),
            }
        }
        got
    }

    fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Sends SIGTERM (as `kill -TERM` would) and waits for the exit code.
    pub fn terminate(mut self) -> (i32, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let code = self.wait();
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(rest);
        (code, self.seen.clone())
    }

    /// Kills the process outright (SIGKILL): no deregistration, as in a crash.
    pub fn crash(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Waits for the exit (bounded by [`DEADLINE`]) and returns the code.
    pub fn wait(&mut self) -> i32 {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("sdkit did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a child behind, even when a test fails half-way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `v` is a watch event `event` about the instance with `id`.
pub fn is_event(v: &Value, event: &str, id: &str) -> bool {
    v["event"] == event && v["instance"]["id"] == id
}
