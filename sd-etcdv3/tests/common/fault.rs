//! Helpers of the fault tests against the three-member `etcd-cluster` of
//! `scripts/registries` (`tests/cluster.rs`, `tests/attack_resume.rs`): finding the
//! leader, a watcher that knows one member only, and writes retried through an election.

use std::time::{Duration, Instant};

use sd_core::Backoff;
use sd_etcdv3::{Client, EtcdRegistry};
use sd_testkit::cluster::{self, Cluster, ClusterGuard, Member};
use sd_testkit::unique_name;

/// The longest a fault test waits for one step (a hang guard, not a timing claim).
pub const FAULT_BOUND: Duration = Duration::from_secs(60);

/// The member leading the etcd cluster now, waiting (bounded) through an election.
pub async fn leader() -> Member {
    let deadline = Instant::now() + FAULT_BOUND;
    loop {
        if let Some(m) = cluster::leader(Cluster::Etcd).await.unwrap() {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no etcd leader within {FAULT_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A registry whose client knows `addrs`, in that order, under `prefix`, with the fault
/// tests' short timeouts; `extra` is appended to the URL query (e.g. `&watch=shared`).
pub fn cluster_registry<A: AsRef<str>>(addrs: &[A], prefix: &str, extra: &str) -> EtcdRegistry {
    let addrs: Vec<&str> = addrs.iter().map(AsRef::as_ref).collect();
    EtcdRegistry::from_url(&format!(
        "etcd://{}?prefix={prefix}&timeout=2s&dial_timeout=1s{extra}",
        addrs.join(",")
    ))
    .unwrap()
}

/// A watcher that knows one member only (the victim, a follower), and a writer on the two
/// others, under a prefix of their own; the cluster-wide fault lock held (its guard heals
/// every member on drop, even when the test fails).
pub struct OnlyMember {
    _lock: ClusterGuard,
    /// The member the watcher knows: a follower, so the writes through the others meet
    /// no election when it is killed (a write that timed out in one and was retried might
    /// have been applied twice: two events).
    pub victim: Member,
    /// Knows the victim only; `watch=<mode>` and the caller's backoff.
    pub watcher: EtcdRegistry,
    /// Knows the two other members.
    pub writer: EtcdRegistry,
}

/// [`OnlyMember`] with `watch=<watch>` and `extra` on the watcher's URL, and `backoff` if
/// given; `None` (skip) when the cluster is not configured.
pub async fn only_member(
    what: &str,
    watch: &str,
    backoff: Option<Backoff>,
    extra: &str,
) -> Option<OnlyMember> {
    let addrs = cluster::require(Cluster::Etcd)?;
    let lock = cluster::exclusive(Cluster::Etcd);
    for m in Cluster::Etcd.members() {
        m.wait_ready().await.unwrap();
    }
    let leading = leader().await;
    let victim = Cluster::Etcd
        .members()
        .into_iter()
        .find(|m| *m != leading)
        .unwrap();
    let mine = &addrs[victim.index() - 1];
    let others: Vec<&String> = addrs.iter().filter(|a| *a != mine).collect();
    let prefix = format!("/sdtest/{}", unique_name(what));
    let mut watcher = cluster_registry(&[mine], &prefix, &format!("&watch={watch}{extra}"));
    if let Some(b) = backoff {
        watcher = watcher.with_backoff(b);
    }
    Some(OnlyMember {
        _lock: lock,
        victim,
        watcher,
        writer: cluster_registry(&others, &prefix, ""),
    })
}

/// Puts `key`, retrying every 100 ms (a write can time out during an election) until
/// `deadline`, then fails the test.
pub async fn put_until(client: &Client, key: &str, value: &str, deadline: Instant) {
    while let Err(e) = client.put(key, value.as_bytes(), 0).await {
        assert!(Instant::now() < deadline, "put {key}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes `key`, retrying like [`put_until`].
pub async fn delete_until(client: &Client, key: &str, deadline: Instant) {
    while let Err(e) = client.delete(key).await {
        assert!(Instant::now() < deadline, "delete {key}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`put_until`] within [`FAULT_BOUND`].
pub async fn put(client: &Client, key: &str, value: &str) {
    put_until(client, key, value, Instant::now() + FAULT_BOUND).await;
}

/// [`delete_until`] within [`FAULT_BOUND`].
pub async fn delete(client: &Client, key: &str) {
    delete_until(client, key, Instant::now() + FAULT_BOUND).await;
}
