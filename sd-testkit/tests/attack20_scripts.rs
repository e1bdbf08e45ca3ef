//! attack20: `scripts/registries`' cluster verbs against the running Consul cluster (each
//! test takes the cluster's exclusive lock, breaks the cluster in a bounded way and puts it
//! back before releasing it). The cluster is started on demand like every other server
//! (`SD_INTEGRATION=0` skips). The script run is `SD_ATTACK20_SCRIPT` (default: this
//! checkout's).
//!
//! ```text
//! cargo test -p sd-testkit --test attack20_scripts -- --test-threads=1 --nocapture
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sd_testkit::cluster::{self, Cluster};

/// Whether the Consul cluster is there (started on demand; `SD_INTEGRATION=0` skips).
fn enabled() -> bool {
    cluster::require(Cluster::Consul).is_some()
}

fn script(args: &[&str], timeout_s: u32) -> (Output, Duration) {
    let path = std::env::var("SD_ATTACK20_SCRIPT")
        .unwrap_or_else(|_| sd_testkit::script_path().display().to_string());
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .env("SD_REGISTRIES_TIMEOUT", timeout_s.to_string())
        .output()
        .unwrap();
    let took = t0.elapsed();
    eprintln!(
        "$ registries {} -> {:?} in {took:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}

/// `GET path` on 127.0.0.1:port, the body (tiny HTTP/1.0 client).
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// FINDING (medium, script): `heal CLUSTER` heals the members one after the other and
/// waits for each to be ready before the next, and "ready" for an etcd / ZooKeeper /
/// Consul member means "in a cluster with a leader". After a fault that took the quorum
/// (two of three servers killed), the first member heal finds never becomes ready without
/// the second, which heal never reaches: `heal consul-cluster` fails after
/// SD_REGISTRIES_TIMEOUT (120 s by default) and every later `heal consul-cluster` (and so
/// every `ClusterGuard` drop) fails the same way: the running first member sends heal into
/// `wait_ready` again. Only healing the second member by name brings the cluster back.
/// (Same for etcd-cluster and zk-ensemble.) Fix: in `heal CLUSTER`, resume every paused
/// and start every dead member first, then wait for each.
#[test]
fn heal_of_a_cluster_that_lost_its_quorum() {
    if !enabled() {
        return;
    }
    let _guard = cluster::exclusive(Cluster::Consul);
    let (ok, _) = script(&["heal", "consul-cluster"], 120);
    assert!(ok.status.success(), "the cluster was healthy to start with");
    for m in ["consul-cluster-2", "consul-cluster-3"] {
        assert!(script(&["kill", m], 30).0.status.success());
    }
    // Member 1 loses its leader within a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let (healed, took) = script(&["heal", "consul-cluster"], 20);
    // Put it back whatever happened (member by member: what heal should have done).
    for m in ["consul-cluster-2", "consul-cluster-3"] {
        let (o, _) = script(&["heal", m], 120);
        assert!(o.status.success(), "could not heal {m} by hand");
    }
    let (o, _) = script(&["heal", "consul-cluster"], 120);
    assert!(o.status.success(), "healed in the end");
    assert!(
        healed.status.success(),
        "`heal consul-cluster` after losing two of three servers failed after {took:?} \
         (member 1 waits for a leader that members 2 and 3, not yet restarted, would give): {}",
        String::from_utf8_lossy(&healed.stderr)
    );
}

/// FINDING (high, script; seen live on this machine): `launch` closes the script's own lock
/// fds in the server but not the fds the script inherited. The documented bash form of the
/// cluster lock, `flock <locks>/<cluster>.lock <command>`, runs the command with the lock's
/// fd open (flock(1) without -o); a command that restarts a member (directly or through a
/// Go/bash tool: inherited fds are not close-on-exec) starts the member holding the lock
/// fd, so the cluster's exclusive lock is never released while that member runs: every
/// `cluster::exclusive` (cluster_real) and every later flock waits forever. On this
/// machine at 13:00 `etcd-cluster.lock` was held by `etcd --name sd-etcd-cluster-3`
/// (fd 3) with four waiters (cluster_real among them). Fix: close every fd above 2 in
/// `launch`'s subshell before exec (e.g. loop over /proc/self/fd), and document
/// `flock -o`.
#[test]
fn a_member_restarted_under_flock_inherits_the_lock() {
    if !enabled() {
        return;
    }
    let _guard = cluster::exclusive(Cluster::Consul);
    let member = "consul-cluster-client";
    let lock = std::env::temp_dir().join(format!("attack20-{}.lock", std::process::id()));
    std::fs::write(&lock, b"").unwrap();
    let path = std::env::var("SD_ATTACK20_SCRIPT")
        .unwrap_or_else(|_| sd_testkit::script_path().display().to_string());
    let out = Command::new("flock")
        .arg(&lock)
        .args(["bash", &path, "restart", member])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "restarted {member}");
    // The member's pid, from the script's "<member> ready after ... (pid N)" (its pid file
    // is in the runtime dir of whichever checkout started the cluster).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pid = stderr
        .lines()
        .filter(|l| l.contains(&format!("{member} ready after")))
        .filter_map(|l| {
            l.rsplit_once("(pid ")
                .map(|(_, p)| p.trim_end_matches(')').to_string())
        })
        .next_back()
        .unwrap_or_else(|| panic!("no pid for {member} in: {stderr}"));
    let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|t| t == lock);
    // The lock is free again only if nothing holds it now.
    let free = Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .success();
    if holds {
        // Restart it again without the inherited fd, so nothing stays wedged.
        let (o, _) = script(&["restart", member], 120);
        assert!(o.status.success());
    }
    let _ = std::fs::remove_file(&lock);
    assert!(
        !holds && free,
        "{member} (pid {pid}) started under `flock {} ...` holds the lock fd (free: {free})",
        lock.display()
    );
}

/// FINDING (low/medium, script + sd_testkit::cluster::leader docs): `leader consul-cluster`
/// answers only when autopilot reports every server healthy (FailureTolerance 1). With one
/// server down the raft has a leader (`/v1/status/leader` names it, writes succeed), but
/// `leader` fails and `cluster::leader(Cluster::Consul)` returns `None`, documented as
/// "while there is none (an election)". A test waiting for the leader (cluster_real's
/// `target`) waits for the whole cluster instead; one that asks "who leads now?" during a
/// fault (e.g. to kill the new leader too) gets no answer. Fix: report the leader from
/// `/v1/status/leader` and give the healthy-cluster wait its own verb (or document it).
#[test]
fn consul_leader_while_one_server_is_down() {
    if !enabled() {
        return;
    }
    let _guard = cluster::exclusive(Cluster::Consul);
    let (ok, _) = script(&["heal", "consul-cluster"], 120);
    assert!(ok.status.success(), "the cluster was healthy to start with");
    let (l, _) = script(&["leader", "consul-cluster"], 30);
    let leader = String::from_utf8_lossy(&l.stdout).trim().to_string();
    assert!(
        leader.starts_with("consul-cluster-"),
        "a leader: {leader:?}"
    );
    let victim = ["consul-cluster-1", "consul-cluster-2", "consul-cluster-3"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap();
    let leader_port: u16 = 18520 + leader.rsplit('-').next().unwrap().parse::<u16>().unwrap();
    assert!(script(&["kill", victim], 30).0.status.success());
    // Over 25 s: each time raft names a leader, does the script?
    let t0 = Instant::now();
    let (mut raft_has_one, mut script_says_none) = (0, 0);
    while t0.elapsed() < Duration::from_secs(25) {
        let raft = http_get(leader_port, "/v1/status/leader").unwrap_or_default();
        let (l, _) = script(&["leader", "consul-cluster"], 30);
        if raft.trim().trim_matches('"').len() > 3 {
            raft_has_one += 1;
            if !l.status.success() {
                script_says_none += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (h, _) = script(&["heal", victim], 120);
    assert!(h.status.success(), "healed {victim}");
    assert!(raft_has_one > 0, "raft had a leader with one server down");
    assert_eq!(
        script_says_none, 0,
        "`leader consul-cluster` answered none {script_says_none} times of {raft_has_one} \
         when raft named a leader (one server of three down)"
    );
}
