//! Against the three-member `etcd-cluster` of `scripts/registries` (issue 20): when the
//! member an instancer watches through dies, the watch resumes on another member from the
//! last revision it applied — no second read of the directory, no change lost — and a
//! server that lost its data (revision behind) is read again instead.

mod common;

use std::time::{Duration, Instant};

use common::fault::{
    cluster_registry, delete_until, leader, only_member, put_until, FAULT_BOUND as BOUND,
};
use common::{ids, wait_for_error, wait_for_set_within};
use sd_core::{Instancer, ServiceQuery};
use sd_testkit::cluster::{self, Cluster};
use sd_testkit::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_watch_resumes_on_another_member_from_the_last_revision() {
    let Some(mut addrs) = cluster::require(Cluster::Etcd) else {
        return;
    };
    let _lock = cluster::exclusive(Cluster::Etcd);
    for m in Cluster::Etcd.members() {
        m.wait_ready().await.unwrap();
    }
    let victim = leader().await;
    // The instancer's client talks to the leader first; the writer to the others.
    addrs.rotate_left(victim.index() - 1);
    let prefix = format!("/sdtest/{}", unique_name("etcd-cluster-resume"));
    let watcher = cluster_registry(&addrs, &prefix, "");
    let writer = cluster_registry(&addrs[1..], &prefix, "");
    let service = unique_name("resume");
    let dir = writer.client().service_dir(&service);
    writer
        .client()
        .put(&format!("{dir}a"), b"10.0.0.1:80", 0)
        .await
        .unwrap();
    let instancer = watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| s.len() == 1).await;
    assert_eq!(instancer.stats().full_reads(), 1);

    victim.kill().await.unwrap();
    // Changes while the watch is moving: all arrive, in order, from the watch alone.
    let deadline = Instant::now() + BOUND;
    for (key, value) in [("b", "10.0.0.2:80"), ("c", "10.0.0.3:80")] {
        put_until(writer.client(), &format!("{dir}{key}"), value, deadline).await;
    }
    writer.client().delete(&format!("{dir}a")).await.unwrap();
    let set =
        wait_for_set_within(&mut sub, "b and c, a gone", BOUND, |s| ids(s) == ["b", "c"]).await;
    assert_eq!(ids(&set), ["b", "c"]);
    let stats = instancer.stats();
    assert!(
        stats.resumes() >= 1,
        "the watch was resumed, not re-read: {} resumes, {} full reads",
        stats.resumes(),
        stats.full_reads()
    );
    assert_eq!(
        stats.full_reads(),
        1,
        "the directory was read only once: the watch resumed from its revision"
    );
    assert_eq!(stats.events(), 3, "each change arrived once, by the watch");

    victim.restart().await.unwrap();
    instancer.stop().await;
    writer.client().delete(&format!("{dir}b")).await.unwrap();
    writer.client().delete(&format!("{dir}c")).await.unwrap();
}

/// A frozen member holds a watch open and silent (only gRPC keep-alive would notice, here
/// set to two minutes): when another request of the same client times out there and the
/// client moves, the watch resumes on the new endpoint at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_watch_on_a_frozen_member_follows_the_client_when_it_moves() {
    let Some(mut addrs) = cluster::require(Cluster::Etcd) else {
        return;
    };
    let _lock = cluster::exclusive(Cluster::Etcd);
    for m in Cluster::Etcd.members() {
        m.wait_ready().await.unwrap();
    }
    let victim = leader().await;
    addrs.rotate_left(victim.index() - 1);
    let prefix = format!("/sdtest/{}", unique_name("etcd-cluster-frozen"));
    let client = cluster_registry(&addrs, &prefix, "&keep_alive=120s");
    let service = unique_name("frozen");
    let dir = client.client().service_dir(&service);
    client
        .client()
        .put(&format!("{dir}a"), b"10.0.0.1:80", 0)
        .await
        .unwrap();
    let instancer = client
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| s.len() == 1).await;

    victim.pause().await.unwrap();
    // The same client writes: the first attempt times out at the frozen member and moves
    // the client; the write is retried (as an application would) on the next member.
    put_until(
        client.client(),
        &format!("{dir}b"),
        "10.0.0.2:80",
        Instant::now() + BOUND,
    )
    .await;
    // Well within the keep-alive's two minutes: the watch followed the move.
    let set = wait_for_set_within(
        &mut sub,
        "b, by the resumed watch",
        Duration::from_secs(40),
        |s| s.len() == 2,
    )
    .await;
    assert_eq!(ids(&set), ["a", "b"]);
    let stats = instancer.stats();
    assert!(stats.resumes() >= 1, "resumed: {}", stats.resumes());
    assert_eq!(stats.full_reads(), 1, "no second read");
    victim.resume().await.unwrap();
    victim.wait_ready().await.unwrap();
    instancer.stop().await;
    for k in ["a", "b"] {
        client.client().delete(&format!("{dir}{k}")).await.unwrap();
    }
}

/// The only member a watcher knows dies under its watch: every attempt to resume fails
/// (connection refused) until the member is back. The failure is published (subscribers keep
/// the last good set), and the watch keeps trying to *resume*, after the backoff, instead of
/// giving up on the revision and reading the directory again: when the member returns, the
/// changes made meanwhile (through the other members) arrive by the resumed watch, the
/// directory having been read once, and the set is published again after the error. (The
/// same happens when a resume's history check times out during an election.)
async fn a_watch_resumes_when_its_only_member_returns(watch: &str) {
    let Some(s) = only_member("etcd-cluster-only-member", watch, None, "").await else {
        return;
    };
    let (victim, watcher, writer) = (s.victim, &s.watcher, &s.writer);
    let service = unique_name("only");
    let dir = writer.client().service_dir(&service);
    writer
        .client()
        .put(&format!("{dir}a"), b"10.0.0.1:80", 0)
        .await
        .unwrap();
    let instancer = watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(instancer.is_shared(), watch == "shared");
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| s.len() == 1).await;
    assert_eq!(instancer.stats().full_reads(), 1);

    victim.kill().await.unwrap();
    // The watcher cannot reach etcd: an error is published.
    wait_for_error(&mut sub, "the watcher's only member is down").await;
    // Changes while the watcher's member is down, made through the others (retried, in
    // case leadership moved meanwhile and a write met an election).
    let deadline = Instant::now() + BOUND;
    for (key, value) in [("b", "10.0.0.2:80"), ("c", "10.0.0.3:80")] {
        put_until(writer.client(), &format!("{dir}{key}"), value, deadline).await;
    }
    delete_until(writer.client(), &format!("{dir}a"), deadline).await;
    victim.restart().await.unwrap();
    let set =
        wait_for_set_within(&mut sub, "b and c, a gone", BOUND, |s| ids(s) == ["b", "c"]).await;
    assert_eq!(ids(&set), ["b", "c"]);
    let stats = instancer.stats();
    assert!(
        stats.resumes() >= 1,
        "the watch was resumed, not re-read: {} resumes, {} full reads",
        stats.resumes(),
        stats.full_reads()
    );
    assert_eq!(
        stats.full_reads(),
        1,
        "the directory was read only once: the watch resumed from its revision"
    );
    assert_eq!(stats.events(), 3, "each change arrived once, by the watch");
    if watch == "shared" {
        let shared = watcher.client().shared_watch_stats().unwrap();
        assert_eq!(
            shared.full_reads, 0,
            "the prefix was never read: {shared:?}"
        );
        assert!(shared.resumes >= 1, "{shared:?}");
    }

    // The recovery with nothing changed is published too: the error does not linger.
    victim.kill().await.unwrap();
    wait_for_error(&mut sub, "the member is down again").await;
    victim.restart().await.unwrap();
    wait_for_set_within(&mut sub, "b and c again, after the error", BOUND, |s| {
        ids(s) == ["b", "c"]
    })
    .await;
    assert_eq!(instancer.stats().full_reads(), 1, "still read once");

    instancer.stop().await;
    writer.client().delete(&format!("{dir}b")).await.unwrap();
    writer.client().delete(&format!("{dir}c")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_watch_resumes_when_its_only_member_returns() {
    a_watch_resumes_when_its_only_member_returns("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_shared_watch_resumes_when_its_only_member_returns() {
    a_watch_resumes_when_its_only_member_returns("shared").await;
}
