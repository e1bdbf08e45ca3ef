//! go-kit behaviours SD-1..SD-5 and C-1..C-9 (reference §2.A, §2.B), each as a test or as
//! its better-defined replacement.

use std::time::Duration;

use sd_core::{Error, Event, FixedInstancer, Instance, InstanceCache, InstanceSet, Instancer};

fn set(addrs: &[&str]) -> InstanceSet {
    addrs.iter().map(|a| Instance::parse(a).unwrap()).collect()
}

fn err(msg: &str) -> Error {
    Error::unavailable("test", msg)
}

/// C-1 (replaced): a new cache has no state (`None`), so "unknown" and "no instances" differ.
#[tokio::test]
async fn c1_new_cache_has_no_state() {
    let cache = InstanceCache::new();
    assert_eq!(cache.state(), None);
    let mut sub = cache.subscribe();
    assert_eq!(
        sub.try_next(),
        None,
        "nothing to deliver before the first event"
    );
    cache.update(Event::instances(vec![]));
    assert_eq!(
        sub.next().await,
        Some(Event::Instances(InstanceSet::empty()))
    );
}

/// C-2: events are sorted byte-wise ascending; the caller's data is not mutated.
#[tokio::test]
async fn c2_sorted() {
    let cache = InstanceCache::new();
    let input = vec![
        Instance::new("c", 1),
        Instance::new("a", 1),
        Instance::new("b", 1),
    ];
    let copy = input.clone();
    cache.update(Event::instances(input.clone()));
    assert_eq!(cache.state().unwrap().addrs(), ["a:1", "b:1", "c:1"]);
    assert_eq!(input, copy, "caller's vector untouched");
}

/// C-3: identical updates are suppressed (no broadcast); equal errors count as identical
/// (C-3b); duplicates collapse by (addr, id) instead of being kept (C-3c, deliberate fix).
#[tokio::test]
async fn c3_identical_updates_are_suppressed() {
    let cache = InstanceCache::new();
    assert!(cache.update(Event::Instances(set(&["a:1", "b:1"]))));
    let mut sub = cache.subscribe();
    assert!(sub.try_next().is_some());
    assert!(
        !cache.update(Event::Instances(set(&["b:1", "a:1"]))),
        "same set"
    );
    assert_eq!(sub.try_next(), None);
    assert!(cache.update(Event::Error(err("x"))));
    assert!(!cache.update(Event::Error(err("x"))), "equal error");
    assert!(cache.update(Event::Error(err("y"))));
    // C-3c: a set with the same instance twice keeps one.
    let dup = InstanceSet::new(vec![Instance::new("a", 1), Instance::new("a", 1)]);
    assert_eq!(dup.len(), 1);
    // Same address, different ids: two instances.
    let two = InstanceSet::new(vec![
        Instance::builder("a", 1).id("x").build(),
        Instance::builder("a", 1).id("y").build(),
    ]);
    assert_eq!(two.len(), 2);
}

/// C-4 (replaced): a change reaches every subscriber; the event is shared and immutable, so
/// no deep copy is needed and no subscriber can corrupt another's view.
#[tokio::test]
async fn c4_broadcast_to_every_subscriber() {
    let cache = InstanceCache::new();
    let mut subs: Vec<_> = (0..3).map(|_| cache.subscribe()).collect();
    cache.update(Event::Instances(set(&["a:1"])));
    for s in &mut subs {
        assert_eq!(s.next().await.unwrap().addrs(), ["a:1"]);
    }
}

/// C-5 / SD-2: a new subscriber receives the current complete state at once.
#[tokio::test]
async fn c5_sd2_register_receives_current_state() {
    let cache = InstanceCache::new();
    cache.update(Event::Instances(set(&["a:1", "b:2"])));
    let mut sub = cache.subscribe();
    assert_eq!(sub.try_next().unwrap().addrs(), ["a:1", "b:2"]);
    // Later events are complete snapshots, not deltas.
    cache.update(Event::Instances(set(&["b:2", "c:3"])));
    assert_eq!(sub.next().await.unwrap().addrs(), ["b:2", "c:3"]);
}

/// C-6: after unsubscribing (dropping), broadcasts go on without it and without panicking.
#[tokio::test]
async fn c6_dropped_subscription_is_gone() {
    let cache = InstanceCache::new();
    let sub = cache.subscribe();
    drop(sub);
    assert!(cache.update(Event::Instances(set(&["a:1"]))));
    let mut other = cache.subscribe();
    assert_eq!(other.next().await.unwrap().addrs(), ["a:1"]);
}

/// C-7: `state()` is a value; `close()` is idempotent. C-8: an error replaces the state, so
/// a late subscriber sees only the error.
#[tokio::test]
async fn c7_c8_state_and_errors() {
    let cache = InstanceCache::new();
    cache.update(Event::Instances(set(&["a:1"])));
    cache.update(Event::Error(err("down")));
    let mut late = cache.subscribe();
    assert_eq!(late.next().await, Some(Event::Error(err("down"))));
    cache.close();
    cache.close();
    assert!(cache.is_closed());
    assert!(
        !cache.update(Event::Instances(set(&["b:1"]))),
        "nothing after close"
    );
    assert_eq!(late.next().await, None);
}

/// C-9 [BUG] regression: a subscriber that never reads blocks neither the publisher nor the
/// other subscribers (go-kit deadlocks on an unbuffered channel with no reader).
#[tokio::test(start_paused = true)]
async fn c9_slow_subscriber_blocks_nobody() {
    let cache = InstanceCache::new();
    let _never_reads = cache.subscribe();
    let mut reader = cache.subscribe();
    for i in 0..1000u16 {
        assert!(cache.update(Event::Instances(set(&[&format!("h:{}", i + 1)]))));
    }
    // The reader gets the latest state (latest-value semantics), without waiting on anyone.
    let got = tokio::time::timeout(Duration::from_secs(1), reader.next())
        .await
        .unwrap();
    assert_eq!(got.unwrap().addrs(), ["h:1000"]);
}

/// SD-1: an event is the full set or an error, never both.
#[test]
fn sd1_event_is_set_or_error() {
    let ok = Event::Instances(set(&["a:1"]));
    assert!(ok.as_instances().is_some() && ok.as_error().is_none());
    let e = Event::Error(err("x"));
    assert!(e.as_instances().is_none() && e.as_error().is_some());
    assert!(e.addrs().is_empty());
    assert_eq!(Event::from(Err::<Vec<Instance>, _>(err("x"))), e);
}

/// SD-3 (fixed): subscribing to a FixedInstancer never blocks, and the caller's list is not
/// reordered; stop is a no-op that may be called twice.
#[tokio::test]
async fn sd3_fixed_instancer() {
    let list = vec![Instance::new("b", 1), Instance::new("a", 1)];
    let inst = FixedInstancer::new(list.clone());
    let mut s1 = inst.subscribe();
    let mut s2 = inst.subscribe();
    assert_eq!(s1.try_next().unwrap().addrs(), ["a:1", "b:1"]);
    assert_eq!(s2.try_next().unwrap().addrs(), ["a:1", "b:1"]);
    assert_eq!(list[0].addr(), "b:1");
    inst.stop().await;
    inst.stop().await;
    assert_eq!(s1.next().await, None);
    assert!(FixedInstancer::from_addrs(["nope"]).is_err());
}

/// SD-5 (replaced): registrars return a Result; see tests/memory.rs for the behaviour.
/// SD-4: a FixedEndpointer returns its endpoints and no error.
#[test]
fn sd4_fixed_endpointer() {
    use sd_core::{Endpointer, FixedEndpointer};
    let ep = FixedEndpointer::new([(Instance::new("b", 1), 2), (Instance::new("a", 1), 1)]);
    let snap = ep.endpoints();
    let values: Vec<i32> = snap.get().unwrap().iter().map(|e| **e).collect();
    assert_eq!(values, [1, 2]);
}

/// Subscriptions are streams too.
#[tokio::test]
async fn subscription_as_stream() {
    use futures::StreamExt;
    let cache = InstanceCache::new();
    cache.update(Event::Instances(set(&["a:1"])));
    let mut stream = cache.subscribe().into_stream();
    assert_eq!(stream.next().await.unwrap().addrs(), ["a:1"]);
    cache.close();
    assert_eq!(stream.next().await, None);
}

/// Unchanged instances keep their handles across updates, so consumers can compare pointers.
#[tokio::test]
async fn unchanged_instances_keep_their_handles() {
    let cache = InstanceCache::new();
    cache.update(Event::Instances(set(&["a:1", "b:1"])));
    let first = cache.state().unwrap();
    cache.update(Event::Instances(set(&["a:1", "c:1"])));
    let second = cache.state().unwrap();
    let (f, s) = (
        first.as_instances().unwrap(),
        second.as_instances().unwrap(),
    );
    assert!(Instance::ptr_eq(&f[0], &s[0]), "a:1 kept its handle");
}

/// Issue 9 item 4: `try_next()` returns the last state of an instancer that stopped before
/// the subscriber read it.
#[test]
fn try_next_returns_the_final_state_of_a_stopped_instancer() {
    let cache = InstanceCache::new();
    let mut sub = cache.subscribe();
    cache.update(Event::Instances(set(&["a:1"])));
    cache.close();
    assert_eq!(sub.try_next(), Some(Event::Instances(set(&["a:1"]))));
    assert_eq!(sub.try_next(), None);
}

/// Issue 9 item 4: `first()` waits for a state without marking it seen, as documented: the
/// next `next()` still returns it.
#[tokio::test]
async fn first_does_not_mark_the_state_seen() {
    let cache = InstanceCache::new();
    let mut sub = cache.subscribe();
    cache.update(Event::Instances(set(&["a:1"])));
    assert_eq!(sub.first().await, Some(Event::Instances(set(&["a:1"]))));
    assert_eq!(sub.try_next(), Some(Event::Instances(set(&["a:1"]))));
}

/// Issue 9 item 8: when a registry returns the same `(addr, id)` twice with different
/// health, de-duplication keeps the healthiest entry, whatever the rest of the entries sort by.
#[test]
fn duplicates_keep_the_passing_instance() {
    let critical = Instance::builder("10.0.0.1", 80)
        .id("web-1")
        .tag("a")
        .health(sd_core::Health::Critical)
        .build();
    let passing = Instance::builder("10.0.0.1", 80)
        .id("web-1")
        .tag("b")
        .build();
    for list in [
        vec![critical.clone(), passing.clone()],
        vec![passing.clone(), critical.clone()],
    ] {
        let (set, dropped) = InstanceSet::new_counting(list);
        assert_eq!(dropped, 1);
        assert_eq!(set.as_slice(), std::slice::from_ref(&passing));
    }
}
