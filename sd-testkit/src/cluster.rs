//! Registry clusters on 127.0.0.1 (`scripts/registries`'s cluster variants): their
//! addresses, faults on a single member, and which member leads.
//!
//! Each member is its own process with its own ports and data directory, started and
//! stopped like the single servers (`scripts/registries up etcd-cluster`). A test that
//! injects faults holds [`exclusive`] for its whole run; on drop the guard heals
//! every member (resumes the paused, restarts the killed) and waits until each is ready.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_testkit::ControlError> {
//! use sd_testkit::cluster::{self, Cluster};
//! let Some(addrs) = cluster::require(Cluster::Etcd) else { return Ok(()) };
//! let _lock = cluster::exclusive(Cluster::Etcd);
//! let leader = cluster::leader(Cluster::Etcd).await?.expect("a leader");
//! leader.kill().await?;
//! // ... the other two elect a new leader; clients move to them ...
//! leader.restart().await?;
//! # let _ = addrs; Ok(()) }
//! ```

use std::fmt;
use std::fs::File;

use crate::control::{run, run_blocking, run_output, ControlError, Verb};

/// A registry cluster `scripts/registries` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cluster {
    /// `etcd-cluster`: three etcd 3.4 members (raft); `SD_TEST_ETCD_CLUSTER` holds their
    /// client addresses, `127.0.0.1:23810,127.0.0.1:23811,127.0.0.1:23812`.
    Etcd,
    /// `zk-ensemble`: three ZooKeeper servers (a quorum of two); `SD_TEST_ZK_ENSEMBLE` holds
    /// their client addresses, `127.0.0.1:21811,...,127.0.0.1:21813`.
    Zk,
    /// `consul-cluster`: three Consul servers (raft) and one client agent joined to them
    /// ([`consul_client_agent`]); `SD_TEST_CONSUL_CLUSTER` holds the servers' HTTP
    /// addresses `127.0.0.1:18521,...,127.0.0.1:18523` and `SD_TEST_CONSUL_CLUSTER_CLIENT`
    /// the client agent's, `127.0.0.1:18524`.
    Consul,
    /// `eureka-peers`: two Spring Eureka servers replicating to each other;
    /// `SD_TEST_EUREKA_PEERS` holds their base URLs,
    /// `http://127.0.0.1:18762/eureka,http://127.0.0.1:18763/eureka`.
    Eureka,
}

impl Cluster {
    /// Every cluster.
    pub const ALL: [Cluster; 4] = [Cluster::Etcd, Cluster::Zk, Cluster::Consul, Cluster::Eureka];

    /// The name `scripts/registries` uses (`etcd-cluster`, `zk-ensemble`, `consul-cluster`,
    /// `eureka-peers`).
    pub fn name(self) -> &'static str {
        match self {
            Cluster::Etcd => "etcd-cluster",
            Cluster::Zk => "zk-ensemble",
            Cluster::Consul => "consul-cluster",
            Cluster::Eureka => "eureka-peers",
        }
    }

    /// The variable holding the members' addresses, comma separated.
    pub fn env_var(self) -> &'static str {
        match self {
            Cluster::Etcd => "SD_TEST_ETCD_CLUSTER",
            Cluster::Zk => "SD_TEST_ZK_ENSEMBLE",
            Cluster::Consul => "SD_TEST_CONSUL_CLUSTER",
            Cluster::Eureka => "SD_TEST_EUREKA_PEERS",
        }
    }

    /// The members that hold the registry's data (for Consul the three servers, not the
    /// client agent), in the order of the addresses in [`Cluster::env_var`].
    pub fn members(self) -> Vec<Member> {
        let n = if self == Cluster::Eureka { 2 } else { 3 };
        (1..=n)
            .map(|index| Member {
                cluster: self,
                index,
            })
            .collect()
    }
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One member of a [`Cluster`]: a process `scripts/registries` can kill, pause, resume and
/// restart on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    cluster: Cluster,
    /// 1-based; 4 is the Consul client agent.
    index: u8,
}

/// The Consul client agent of [`Cluster::Consul`]: the agent applications talk to (as
/// Consul recommends), joined to the three servers; it holds no data of its own.
pub fn consul_client_agent() -> Member {
    Member {
        cluster: Cluster::Consul,
        index: 4,
    }
}

impl Member {
    /// The cluster this member belongs to.
    pub fn cluster(self) -> Cluster {
        self.cluster
    }

    /// Its position, 1-based, in [`Cluster::members`] (and in the addresses).
    pub fn index(self) -> usize {
        usize::from(self.index)
    }

    /// The name `scripts/registries` uses, e.g. `etcd-cluster-2`, `consul-cluster-client`.
    pub fn name(self) -> String {
        if self.cluster == Cluster::Consul && self.index == 4 {
            "consul-cluster-client".to_string()
        } else {
            format!("{}-{}", self.cluster.name(), self.index)
        }
    }

    /// Kills the member with SIGKILL (a crash). Bring it back with [`Member::restart`].
    pub async fn kill(self) -> Result<(), ControlError> {
        run(Verb::Kill, &self.name()).await
    }

    /// Freezes the member with SIGSTOP: its sockets stay open and it answers nothing.
    pub async fn pause(self) -> Result<(), ControlError> {
        run(Verb::Pause, &self.name()).await
    }

    /// Resumes a paused member (SIGCONT); [`Member::wait_ready`] waits until it serves.
    pub async fn resume(self) -> Result<(), ControlError> {
        run(Verb::Resume, &self.name()).await
    }

    /// Stops (or, after [`Member::kill`], just starts) the member and starts it again on
    /// the same ports with its data, returning once it serves again (it rejoins).
    pub async fn restart(self) -> Result<(), ControlError> {
        run(Verb::Restart, &self.name()).await
    }

    /// Waits until the member serves: etcd healthy (in a cluster with a leader), ZooKeeper
    /// leader or follower, Consul knowing its leader, Eureka answering `/apps`.
    pub async fn wait_ready(self) -> Result<(), ControlError> {
        run(Verb::Wait, &self.name()).await
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The members' addresses from [`Cluster::env_var`], or starts the cluster on demand (see
/// [`require()`](crate::require())); `None` when `SD_INTEGRATION=0` skips the test.
#[track_caller]
pub fn require(cluster: Cluster) -> Option<Vec<String>> {
    let value = crate::env::require_var(
        cluster.name(),
        cluster.env_var(),
        std::panic::Location::caller(),
    )?;
    Some(split_addrs(&value))
}

/// The Consul client agent's address (`SD_TEST_CONSUL_CLUSTER_CLIENT`), starting the
/// cluster on demand.
#[track_caller]
pub fn require_consul_client() -> Option<String> {
    crate::env::require_var(
        Cluster::Consul.name(),
        "SD_TEST_CONSUL_CLUSTER_CLIENT",
        std::panic::Location::caller(),
    )
}

fn split_addrs(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// The member leading `cluster` now (raft leader for etcd and Consul, ZooKeeper's leader),
/// or `None` while there is none (an election). Eureka peers have no leader: an error.
pub async fn leader(cluster: Cluster) -> Result<Option<Member>, ControlError> {
    let out = match run_output(&["leader", cluster.name()]).await {
        Ok(out) => out,
        Err(ControlError::Failed { stderr, .. }) if stderr.is_empty() => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = out.trim();
    Ok(cluster.members().into_iter().find(|m| m.name() == name))
}

/// Holds the exclusive fault-test lock of a whole cluster (`<machine dir>/locks/<name>.lock`,
/// like [`exclusive`](crate::exclusive) for a server); released on drop, after healing every
/// member (`scripts/registries heal <cluster>`: resume the paused, restart the killed, wait
/// until each serves), so a failing test does not leave the cluster broken.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ClusterGuard {
    cluster: Cluster,
    _files: Vec<File>,
}

impl ClusterGuard {
    /// The locked cluster.
    pub fn cluster(&self) -> Cluster {
        self.cluster
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if let Err(e) = run_blocking(Verb::Heal, self.cluster.name()) {
            eprintln!(
                "sd-testkit: could not heal {} after a fault test: {e}",
                self.cluster
            );
        }
    }
}

/// Takes the exclusive fault-test lock of `cluster`, waiting (blocking the thread) while
/// another test in any process holds it. Fault tests on a cluster hold it for their whole
/// duration.
pub fn exclusive(cluster: Cluster) -> ClusterGuard {
    ClusterGuard {
        cluster,
        _files: crate::lock::lock_all(cluster.name(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_match_the_script() {
        let names: Vec<String> = Cluster::ALL
            .iter()
            .flat_map(|c| c.members())
            .map(Member::name)
            .collect();
        assert_eq!(
            names,
            [
                "etcd-cluster-1",
                "etcd-cluster-2",
                "etcd-cluster-3",
                "zk-ensemble-1",
                "zk-ensemble-2",
                "zk-ensemble-3",
                "consul-cluster-1",
                "consul-cluster-2",
                "consul-cluster-3",
                "eureka-peers-1",
                "eureka-peers-2",
            ]
        );
        assert_eq!(consul_client_agent().name(), "consul-cluster-client");
        // Every name is one the script knows.
        let script = std::fs::read_to_string(crate::script_path()).unwrap();
        for c in Cluster::ALL {
            assert!(script.contains(c.name()), "{c} not in scripts/registries");
            assert!(script.contains(c.env_var()), "{} not printed", c.env_var());
        }
    }

    #[test]
    fn addresses_split_on_commas() {
        assert_eq!(
            split_addrs(" 127.0.0.1:1, 127.0.0.1:2,,"),
            ["127.0.0.1:1", "127.0.0.1:2"]
        );
    }
}
