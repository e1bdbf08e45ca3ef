//! Attack on commit 21d299a: a watch whose resume fails because etcd cannot answer now
//! (`Resume::Later`) publishes the error and tries to resume again after the backoff,
//! instead of reading the directory again; after such a failure the set is published again.
//!
//! Against the three-member `etcd-cluster` (the watcher knows one member only, a follower:
//! `common::fault::only_member`; faults through `sd_testkit::cluster`, healed by the
//! cluster guard even when a test fails) and,
//! for a server that lost its data, the single `etcd` server.

mod common;

use std::time::{Duration, Instant};

use common::fault::{cluster_registry, delete, leader, only_member, put, FAULT_BOUND as BOUND};
use common::{ids, wait_for_error, wait_for_error_within, wait_for_set_within};
use sd_core::{
    Backoff, BoxError, DefaultEndpointer, Endpointer, Event, Instance, Instancer, ServiceQuery,
};
use sd_etcdv3::{EtcdInstancer, EtcdRegistry};
use sd_testkit::cluster::{self, Cluster};
use sd_testkit::{unique_name, Server};

/// Compacts the cluster up to its current revision (physical: waits until it is done).
async fn compact_now(client: &sd_etcdv3::Client) -> i64 {
    let mut raw = client.etcd().await.unwrap();
    let rev = raw
        .get("attack-resume-probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(
        rev,
        Some(sd_etcdv3::etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    rev
}

/// Stops `instancer`, failing the test if that hangs.
async fn stop_bounded(instancer: &EtcdInstancer, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), instancer.stop())
        .await
        .unwrap_or_else(|_| panic!("stop() of {what} hung"));
}

/// The set the instancer publishes must equal the store's: the directory as etcd holds it.
async fn store_ids(client: &sd_etcdv3::Client, dir: &str) -> Vec<String> {
    let (_, entries) = client.get_prefix(dir).await.unwrap();
    let mut v: Vec<String> = entries
        .iter()
        .map(|e| e.key.strip_prefix(dir).unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The only member a watcher knows dies; meanwhile the directory changes and the cluster
/// is compacted past the revision the watcher applied. When the member returns, the resume
/// retried after the failure must find the revision compacted and read the directory again
/// (ending with the store's set, and watching again), not keep trying to resume for ever.
async fn compaction_while_the_only_member_is_down_ends_in_a_read(watch: &str) {
    let Some(s) = only_member("attack-resume-compact", watch, None, "").await else {
        return;
    };
    let w = s.writer.client();
    let service = unique_name("compacted");
    let dir = w.service_dir(&service);
    put(w, &format!("{dir}a"), "10.0.0.1:80").await;
    let instancer = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(instancer.is_shared(), watch == "shared");
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;

    s.victim.kill().await.unwrap();
    wait_for_error(&mut sub, "the only member is down").await;
    put(w, &format!("{dir}b"), "10.0.0.2:80").await;
    delete(w, &format!("{dir}a")).await;
    put(w, &format!("{dir}c"), "10.0.0.3:80").await;
    let compacted = compact_now(w).await;
    s.victim.restart().await.unwrap();
    // Shared: another instancer joins now, while the watch still waits to retry its resume
    // (or just after): whichever tries first finds the revision compacted; one read of the
    // prefix either way.
    let other_service = unique_name("compacted-joiner");
    let other_dir = w.service_dir(&other_service);
    let other = if watch == "shared" {
        put(w, &format!("{other_dir}o"), "10.0.5.1:80").await;
        Some(
            s.watcher
                .etcd_instancer(&ServiceQuery::new(other_service.as_str()))
                .await,
        )
    } else {
        None
    };

    let set = wait_for_set_within(&mut sub, "b and c after the compaction", BOUND, |s| {
        ids(s) == ["b", "c"]
    })
    .await;
    assert_eq!(ids(&set), store_ids(w, &dir).await);
    let stats = instancer.stats();
    eprintln!(
        "{watch}: compacted up to {compacted}; resumes {}, full reads {}, events {}; shared {:?}",
        stats.resumes(),
        stats.full_reads(),
        stats.events(),
        s.watcher.client().shared_watch_stats()
    );
    assert_eq!(
        stats.full_reads(),
        2,
        "the compacted revision was read again once"
    );
    if let Some(other) = &other {
        let mut sub_o = other.subscribe();
        wait_for_set_within(&mut sub_o, "the joiner's o", BOUND, |s| ids(s) == ["o"]).await;
        let shared = s.watcher.client().shared_watch_stats().unwrap();
        assert_eq!(shared.full_reads, 1, "one read of the prefix: {shared:?}");
        assert_eq!(shared.members, 2, "{shared:?}");
        stop_bounded(other, "the joiner").await;
        delete(w, &format!("{other_dir}o")).await;
    }
    // The new watch works.
    put(w, &format!("{dir}d"), "10.0.0.4:80").await;
    wait_for_set_within(&mut sub, "d, by the new watch", BOUND, |s| {
        ids(s) == ["b", "c", "d"]
    })
    .await;
    stop_bounded(&instancer, "the instancer").await;
    for k in ["b", "c", "d"] {
        delete(w, &format!("{dir}{k}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_compaction_while_the_only_member_is_down_ends_in_a_read_own() {
    compaction_while_the_only_member_is_down_ends_in_a_read("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_compaction_while_the_only_member_is_down_ends_in_a_read_shared() {
    compaction_while_the_only_member_is_down_ends_in_a_read("shared").await;
}

/// The shared watch is in its resume retry (its only member down): a new instancer joins
/// (its first round fails, it keeps trying), then the member returns. Both instancers end
/// with the store's sets, the prefix never read. Then, the member down again, every
/// instancer is stopped during the retry: stop returns, the shared watch ends
/// (`shared_watch_stats()` is `None`), and a later instancer starts a new one that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_shared_join_during_the_resume_retry_and_stop_all_during_it() {
    let Some(s) = only_member("attack-resume-join", "shared", None, "").await else {
        return;
    };
    let w = s.writer.client();
    let (sa, sb) = (unique_name("joined"), unique_name("joining"));
    let (da, db) = (w.service_dir(&sa), w.service_dir(&sb));
    put(w, &format!("{da}a1"), "10.0.0.1:80").await;
    put(w, &format!("{db}b1"), "10.0.1.1:80").await;
    let a = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sa.as_str()))
        .await;
    let mut sub_a = a.subscribe();
    wait_for_set_within(&mut sub_a, "a1", BOUND, |s| ids(s) == ["a1"]).await;

    s.victim.kill().await.unwrap();
    wait_for_error(&mut sub_a, "A: the only member is down").await;
    // B joins while the watch retries its resume: its first round fails.
    let b = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sb.as_str()))
        .await;
    assert!(b.is_shared());
    assert!(
        matches!(b.state(), Some(Event::Error(_))),
        "B could not join: {:?}",
        b.state()
    );
    let mut sub_b = b.subscribe();
    put(w, &format!("{da}a2"), "10.0.0.2:80").await;
    put(w, &format!("{db}b2"), "10.0.1.2:80").await;
    delete(w, &format!("{db}b1")).await;
    s.victim.restart().await.unwrap();
    wait_for_set_within(&mut sub_a, "A: a1 and a2", BOUND, |s| {
        ids(s) == ["a1", "a2"]
    })
    .await;
    wait_for_set_within(&mut sub_b, "B: b2", BOUND, |s| ids(s) == ["b2"]).await;
    let shared = s.watcher.client().shared_watch_stats().unwrap();
    assert_eq!(shared.members, 2, "{shared:?}");
    assert_eq!(
        shared.full_reads, 0,
        "the prefix was never read: {shared:?}"
    );
    assert_eq!(shared.opened, 1, "{shared:?}");
    assert!(shared.resumes >= 1, "{shared:?}");
    assert_eq!(a.stats().full_reads(), 1, "A read its directory once");
    // Changes after the recovery reach both.
    put(w, &format!("{da}a3"), "10.0.0.3:80").await;
    put(w, &format!("{db}b3"), "10.0.1.3:80").await;
    wait_for_set_within(&mut sub_a, "A: a3", BOUND, |s| ids(s) == ["a1", "a2", "a3"]).await;
    wait_for_set_within(&mut sub_b, "B: b3", BOUND, |s| ids(s) == ["b2", "b3"]).await;

    // Down again; stop everyone during the retry.
    s.victim.kill().await.unwrap();
    wait_for_error(&mut sub_a, "A: down again").await;
    wait_for_error(&mut sub_b, "B: down again").await;
    stop_bounded(&a, "A").await;
    stop_bounded(&b, "B").await;
    drop((sub_a, sub_b, a, b));
    let deadline = Instant::now() + BOUND;
    while let Some(stats) = s.watcher.client().shared_watch_stats() {
        assert!(
            Instant::now() < deadline,
            "the shared watch outlived its instancers: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.victim.restart().await.unwrap();
    let c = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sa.as_str()))
        .await;
    let mut sub_c = c.subscribe();
    wait_for_set_within(&mut sub_c, "C: a1..a3", BOUND, |s| {
        ids(s) == ["a1", "a2", "a3"]
    })
    .await;
    let shared = s.watcher.client().shared_watch_stats().unwrap();
    assert_eq!((shared.members, shared.opened), (1, 1), "{shared:?}");
    stop_bounded(&c, "C").await;
    for k in ["a1", "a2", "a3"] {
        delete(w, &format!("{da}{k}")).await;
    }
    for k in ["b2", "b3"] {
        delete(w, &format!("{db}{k}")).await;
    }
}

/// While the shared watch retries its resume, every instancer trying to join makes it try
/// at once, and each failure is handed to every member already joined, queued in its
/// channel. A member that takes one queued failure per round (each followed by its
/// backoff, doubling) is still publishing stale errors long after the watch is back: its
/// recovery must not wait behind failures the watch has already moved past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_shared_member_recovers_without_draining_stale_failures() {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let Some(s) = only_member("attack-resume-stale", "shared", Some(backoff), "").await else {
        return;
    };
    let w = s.writer.client();
    let sa = unique_name("member");
    let da = w.service_dir(&sa);
    put(w, &format!("{da}a1"), "10.0.0.1:80").await;
    let a = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sa.as_str()))
        .await;
    let mut sub_a = a.subscribe();
    wait_for_set_within(&mut sub_a, "a1", BOUND, |s| ids(s) == ["a1"]).await;

    s.victim.kill().await.unwrap();
    wait_for_error(&mut sub_a, "A: the only member is down").await;
    // Ten instancers try to join (and are stopped): ten more failures handed to A.
    for i in 0..10 {
        let other = s
            .watcher
            .etcd_instancer(&ServiceQuery::new(format!("{sa}-other{i}").as_str()))
            .await;
        assert!(
            matches!(other.state(), Some(Event::Error(_))),
            "{i}: could not join: {:?}",
            other.state()
        );
        stop_bounded(&other, "a joining instancer").await;
    }
    put(w, &format!("{da}a2"), "10.0.0.2:80").await;
    s.victim.restart().await.unwrap();
    // The shared watch resumes at once when an instancer joins (its own backoff, after a
    // dozen failures, may be a minute)...
    let joiner = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(format!("{sa}-joiner").as_str()))
        .await;
    assert!(
        matches!(joiner.state(), Some(Event::Instances(_))),
        "the joiner: {:?}",
        joiner.state()
    );
    let deadline = Instant::now() + BOUND;
    loop {
        let shared = s.watcher.client().shared_watch_stats().unwrap();
        if shared.resumes >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never resumed: {shared:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = Instant::now();
    // ...and A follows within its next rounds, not after ten more backoffs (0.5 s doubling
    // to 1 min: minutes).
    wait_for_set_within(&mut sub_a, "A: a1 and a2 after the resume", BOUND, |s| {
        ids(s) == ["a1", "a2"]
    })
    .await;
    eprintln!(
        "A recovered {:?} after the shared watch resumed",
        resumed.elapsed()
    );
    assert_eq!(a.stats().full_reads(), 1, "A read its directory once");
    stop_bounded(&joiner, "the joiner").await;
    stop_bounded(&a, "A").await;
    for k in ["a1", "a2"] {
        delete(w, &format!("{da}{k}")).await;
    }
}

/// Stop during the backoff that follows a failed resume returns at once (the backoff here
/// is a minute), and, in shared mode, ends the shared watch.
async fn stop_during_the_backoff_of_a_failed_resume(watch: &str) {
    let backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
    let Some(s) = only_member("attack-resume-stop", watch, Some(backoff), "").await else {
        return;
    };
    let w = s.writer.client();
    let service = unique_name("stopped");
    let dir = w.service_dir(&service);
    put(w, &format!("{dir}a"), "10.0.0.1:80").await;
    let instancer = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    s.victim.kill().await.unwrap();
    let e = wait_for_error(&mut sub, "the only member is down").await;
    eprintln!("{watch}: {e}");
    stop_bounded(&instancer, "an instancer in its backoff").await;
    drop((sub, instancer));
    if watch == "shared" {
        let deadline = Instant::now() + BOUND;
        while let Some(stats) = s.watcher.client().shared_watch_stats() {
            assert!(Instant::now() < deadline, "shared watch leaked: {stats:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s.victim.restart().await.unwrap();
    delete(w, &format!("{dir}a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stop_during_the_backoff_of_a_failed_resume_own() {
    stop_during_the_backoff_of_a_failed_resume("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stop_during_the_backoff_of_a_failed_resume_shared() {
    stop_during_the_backoff_of_a_failed_resume("shared").await;
}

/// The single etcd dies under a watch (the resume is retried while it is down) and comes
/// back **without its data**, then is written past the instancer's revision: the retried
/// resume must see the other history and read again, ending with the store's set.
async fn lost_data_during_the_resume_retry(watch: &str) {
    let Some(addr) = sd_testkit::require(Server::Etcd) else {
        return;
    };
    let _lock = sd_testkit::exclusive(Server::Etcd);
    sd_testkit::wait_ready(Server::Etcd).await.unwrap();
    // Start from a small revision, so writing past it is quick.
    sd_testkit::restart_empty(Server::Etcd).await.unwrap();
    let prefix = format!("/sdtest/{}", unique_name("attack-resume-wiped"));
    let reg = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s&watch={watch}"
    ))
    .unwrap();
    let c = reg.client();
    let service = unique_name("wiped");
    let dir = c.service_dir(&service);
    put(c, &format!("{dir}a"), "10.0.0.1:80").await;
    put(c, &format!("{dir}x"), "10.0.0.9:80").await;
    let instancer = reg
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a and x", BOUND, |s| ids(s) == ["a", "x"]).await;
    let (applied, _) = c.get_prefix(&dir).await.unwrap();

    sd_testkit::kill(Server::Etcd).await.unwrap();
    wait_for_error(&mut sub, "etcd is down").await;
    sd_testkit::restart_empty(Server::Etcd).await.unwrap();
    // Written past the applied revision: `x` again (another revision), `b` new, no `a`.
    put(c, &format!("{dir}x"), "10.0.0.9:80").await;
    put(c, &format!("{dir}b"), "10.0.0.2:80").await;
    let mut i = 0;
    loop {
        let (rev, _) = c.get_prefix(&dir).await.unwrap();
        if rev > applied + 2 {
            break;
        }
        put(c, &format!("{prefix}/filler"), &i.to_string()).await;
        i += 1;
    }
    let set = wait_for_set_within(&mut sub, "b and x, a gone with the data", BOUND, |s| {
        ids(s) == ["b", "x"]
    })
    .await;
    assert_eq!(ids(&set), store_ids(c, &dir).await);
    let stats = instancer.stats();
    eprintln!(
        "{watch}: resumes {}, full reads {}",
        stats.resumes(),
        stats.full_reads()
    );
    stop_bounded(&instancer, "the instancer").await;
    for k in ["b", "x"] {
        delete(c, &format!("{dir}{k}")).await;
    }
    let _ = c.delete(&format!("{prefix}/filler")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_lost_data_during_the_resume_retry_own() {
    lost_data_during_the_resume_retry("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_lost_data_during_the_resume_retry_shared() {
    lost_data_during_the_resume_retry("shared").await;
}

/// Waits until the endpointer's state satisfies `pred` (bounded).
async fn wait_endpointer(
    endpointer: &DefaultEndpointer<String>,
    what: &str,
    pred: impl Fn(&DefaultEndpointer<String>) -> bool,
) {
    let mut changes = endpointer.changes();
    tokio::time::timeout(BOUND, async {
        while !pred(endpointer) {
            changes.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("endpointer: {what}: not within {BOUND:?}"));
}

fn served(endpointer: &DefaultEndpointer<String>) -> Vec<String> {
    let mut v: Vec<String> = endpointer
        .endpoints()
        .get()
        .map(|l| l.iter().map(|e| e.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The watcher's only member dies and returns three times, with changes made through the
/// others each time: every change arrives once (no loss, nothing applied twice), by the
/// resumed watch, the directory read once; after each return the endpointer serves the
/// store's set and its error is cleared (the recovery is published).
async fn a_flapping_member_loses_and_doubles_nothing(watch: &str) {
    let Some(s) = only_member("attack-resume-flap", watch, None, "").await else {
        return;
    };
    let w = s.writer.client();
    let service = unique_name("flap");
    let dir = w.service_dir(&service);
    put(w, &format!("{dir}k0"), "10.0.0.1:80").await;
    let instancer = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_eq!(instancer.is_shared(), watch == "shared");
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "k0", BOUND, |s| ids(s) == ["k0"]).await;
    let mut changes = 0;
    for round in 1..=3 {
        s.victim.kill().await.unwrap();
        wait_for_error(&mut sub, "the only member is down").await;
        wait_endpointer(&endpointer, "the error", |e| {
            e.endpoints().last_error().is_some()
        })
        .await;
        // A new key, the previous one rewritten then deleted.
        put(
            w,
            &format!("{dir}k{round}"),
            &format!("10.0.0.{}:80", round + 1),
        )
        .await;
        put(w, &format!("{dir}k{}", round - 1), "10.0.9.9:80").await;
        delete(w, &format!("{dir}k{}", round - 1)).await;
        changes += 3;
        s.victim.restart().await.unwrap();
        let want = store_ids(w, &dir).await;
        assert_eq!(want, [format!("k{round}")]);
        wait_for_set_within(&mut sub, "the store's set", BOUND, |s| ids(s) == want).await;
        wait_endpointer(&endpointer, "recovered, error cleared", |e| {
            e.endpoints().last_error().is_none() && served(e) == want
        })
        .await;
    }
    let stats = instancer.stats();
    eprintln!(
        "{watch}: resumes {}, full reads {}, events {}; shared {:?}",
        stats.resumes(),
        stats.full_reads(),
        stats.events(),
        s.watcher.client().shared_watch_stats()
    );
    assert_eq!(stats.full_reads(), 1, "read once, resumed each time");
    assert_eq!(stats.events(), changes, "each change applied once");
    assert!(stats.resumes() >= 3, "resumed: {}", stats.resumes());
    drop(endpointer);
    stop_bounded(&instancer, "the instancer").await;
    delete(w, &format!("{dir}k3")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_flapping_member_loses_and_doubles_nothing_own() {
    a_flapping_member_loses_and_doubles_nothing("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_flapping_member_loses_and_doubles_nothing_shared() {
    a_flapping_member_loses_and_doubles_nothing("shared").await;
}

/// The shared watch retries its resume with one member joined and one instancer waiting to
/// join (its joins fail). The member leaves (stopped): nobody is joined, the watch's resume
/// retry has nobody to resume for. When etcd returns, the waiting instancer joins a watch
/// opened afresh, with its directory as etcd holds it, and changes reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_shared_last_member_leaves_during_the_resume_retry_while_one_waits_to_join() {
    let Some(s) = only_member("attack-resume-leave", "shared", None, "").await else {
        return;
    };
    let w = s.writer.client();
    let (sa, sb) = (unique_name("leaving"), unique_name("waiting"));
    let (da, db) = (w.service_dir(&sa), w.service_dir(&sb));
    put(w, &format!("{da}a1"), "10.0.0.1:80").await;
    put(w, &format!("{db}b1"), "10.0.1.1:80").await;
    let a = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sa.as_str()))
        .await;
    let mut sub_a = a.subscribe();
    wait_for_set_within(&mut sub_a, "a1", BOUND, |s| ids(s) == ["a1"]).await;
    s.victim.kill().await.unwrap();
    wait_for_error(&mut sub_a, "A: the only member is down").await;
    let b = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(sb.as_str()))
        .await;
    assert!(
        matches!(b.state(), Some(Event::Error(_))),
        "{:?}",
        b.state()
    );
    let mut sub_b = b.subscribe();
    stop_bounded(&a, "A").await;
    drop((sub_a, a));
    let deadline = Instant::now() + BOUND;
    loop {
        let shared = s.watcher.client().shared_watch_stats().unwrap();
        if shared.members == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never left: {shared:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(w, &format!("{db}b2"), "10.0.1.2:80").await;
    s.victim.restart().await.unwrap();
    wait_for_set_within(&mut sub_b, "B: b1 and b2", BOUND, |s| {
        ids(s) == ["b1", "b2"]
    })
    .await;
    put(w, &format!("{db}b3"), "10.0.1.3:80").await;
    wait_for_set_within(&mut sub_b, "B: b3 by the watch", BOUND, |s| {
        ids(s) == ["b1", "b2", "b3"]
    })
    .await;
    let shared = s.watcher.client().shared_watch_stats().unwrap();
    eprintln!("{shared:?}");
    assert_eq!(shared.members, 1, "{shared:?}");
    stop_bounded(&b, "B").await;
    delete(w, &format!("{da}a1")).await;
    for k in ["b1", "b2", "b3"] {
        delete(w, &format!("{db}{k}")).await;
    }
}

/// The watcher's only member freezes (SIGSTOP) under the watch: gRPC keep-alive (2 s here)
/// ends the stream, the resume's history check times out (`Timeout`, not a refused
/// connection) and is retried after the backoff. Changes made meanwhile through the other
/// members arrive by the resumed watch once the member thaws, read once, each once.
async fn a_frozen_only_member_is_resumed_after_it_thaws(watch: &str) {
    let Some(s) = only_member("attack-resume-frozen", watch, None, "&keep_alive=2s").await else {
        return;
    };
    let w = s.writer.client();
    let service = unique_name("frozen");
    let dir = w.service_dir(&service);
    put(w, &format!("{dir}a"), "10.0.0.1:80").await;
    let instancer = s
        .watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    s.victim.pause().await.unwrap();
    let e = wait_for_error_within(&mut sub, "the frozen member's error", BOUND).await;
    eprintln!("{watch}: {e}");
    put(w, &format!("{dir}b"), "10.0.0.2:80").await;
    delete(w, &format!("{dir}a")).await;
    s.victim.resume().await.unwrap();
    s.victim.wait_ready().await.unwrap();
    wait_for_set_within(&mut sub, "b, a gone", BOUND, |s| ids(s) == ["b"]).await;
    let stats = instancer.stats();
    eprintln!(
        "{watch}: resumes {}, full reads {}, events {}; shared {:?}",
        stats.resumes(),
        stats.full_reads(),
        stats.events(),
        s.watcher.client().shared_watch_stats()
    );
    assert_eq!(stats.full_reads(), 1, "read once");
    assert_eq!(stats.events(), 2, "each change once");
    stop_bounded(&instancer, "the instancer").await;
    delete(w, &format!("{dir}b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_frozen_only_member_is_resumed_after_it_thaws_own() {
    a_frozen_only_member_is_resumed_after_it_thaws("own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_frozen_only_member_is_resumed_after_it_thaws_shared() {
    a_frozen_only_member_is_resumed_after_it_thaws("shared").await;
}

/// The leader dies under a shared watch whose client knows every member (the watch is on
/// the leader): during the election the resume may be refused or time out (`Later`), and
/// is tried again; the changes made meanwhile arrive by the resumed watch, the prefix never
/// read (the own-watch case is `tests/cluster.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_shared_watch_on_the_leader_resumes_through_the_election() {
    let Some(mut addrs) = cluster::require(Cluster::Etcd) else {
        return;
    };
    let _lock = cluster::exclusive(Cluster::Etcd);
    for m in Cluster::Etcd.members() {
        m.wait_ready().await.unwrap();
    }
    let victim = leader().await;
    addrs.rotate_left(victim.index() - 1);
    let prefix = format!("/sdtest/{}", unique_name("attack-resume-leader"));
    let watcher = cluster_registry(&addrs, &prefix, "&watch=shared");
    let writer = cluster_registry(&addrs[1..], &prefix, "");
    let w = writer.client();
    let service = unique_name("leader");
    let dir = w.service_dir(&service);
    put(w, &format!("{dir}a"), "10.0.0.1:80").await;
    let instancer = watcher
        .etcd_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert!(instancer.is_shared());
    let mut sub = instancer.subscribe();
    wait_for_set_within(&mut sub, "a", BOUND, |s| ids(s) == ["a"]).await;
    victim.kill().await.unwrap();
    put(w, &format!("{dir}b"), "10.0.0.2:80").await;
    delete(w, &format!("{dir}a")).await;
    put(w, &format!("{dir}c"), "10.0.0.3:80").await;
    wait_for_set_within(&mut sub, "b and c", BOUND, |s| ids(s) == ["b", "c"]).await;
    let stats = instancer.stats();
    let shared = watcher.client().shared_watch_stats().unwrap();
    eprintln!(
        "resumes {}, full reads {}, events {}; {shared:?}",
        stats.resumes(),
        stats.full_reads(),
        stats.events()
    );
    assert_eq!(stats.full_reads(), 1, "read once");
    assert_eq!(stats.events(), 3, "each change once");
    assert_eq!(
        shared.full_reads, 0,
        "the prefix was never read: {shared:?}"
    );
    victim.restart().await.unwrap();
    stop_bounded(&instancer, "the instancer").await;
    for k in ["b", "c"] {
        delete(w, &format!("{dir}{k}")).await;
    }
}
