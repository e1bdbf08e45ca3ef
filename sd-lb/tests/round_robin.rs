//! Round robin: go-kit LB-1 and LB-2 (strict and per-thread rotations), the per-thread cache
//! (invalidation, eviction, ids, thread exit), and concurrency.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{combined_counts, fixed};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Event, FixedEndpointer, Instance, InstanceCache,
};
use sd_lb::{Balancer, LbError, Request, RoundRobin};

#[test]
fn lb2_first_pick_is_index_zero_and_counts_rotate() {
    // go-kit's test: counts go {1,0,0},{1,1,0},{1,1,1},{2,1,1},...; the strict rotation, and
    // the default's on one thread.
    let expected = [
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
        [2, 1, 1],
        [2, 2, 1],
        [2, 2, 2],
        [3, 2, 2],
    ];
    for rr in [RoundRobin::strict(fixed(3)), RoundRobin::new(fixed(3))] {
        let mut counts = [0usize; 3];
        for want in expected {
            let ep = rr.pick().unwrap();
            counts[**ep as usize] += 1;
            assert_eq!(counts, want, "{rr:?}");
        }
    }
}

#[tokio::test]
async fn lb2_counter_is_not_reset_when_the_set_changes() {
    let cache = InstanceCache::new();
    let ep = Arc::new(DefaultEndpointer::new(
        &cache,
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    let two = || {
        Event::instances(vec![
            Instance::new("10.0.0.1", 1),
            Instance::new("10.0.0.1", 2),
        ])
    };
    for strict in [true, false] {
        ep.apply(two());
        let rr = if strict {
            RoundRobin::strict(ep.clone())
        } else {
            RoundRobin::new(ep.clone())
        };
        assert_eq!(**rr.pick().unwrap(), 1); // counter 0
        ep.apply(Event::instances(vec![
            Instance::new("10.0.0.1", 1),
            Instance::new("10.0.0.1", 2),
            Instance::new("10.0.0.1", 3),
        ]));
        assert_eq!(**rr.pick().unwrap(), 2, "strict: {strict}"); // counter 1
        assert_eq!(**rr.pick().unwrap(), 3, "strict: {strict}"); // counter 2
        assert_eq!(**rr.pick().unwrap(), 1, "strict: {strict}"); // counter 3
    }
    ep.close().await;
}

#[tokio::test]
async fn lb1_no_endpoints_and_discovery_errors() {
    let empty: Arc<FixedEndpointer<u16>> = Arc::new(FixedEndpointer::new([]));
    let err = RoundRobin::new(empty.clone()).pick().unwrap_err();
    assert_eq!(err, LbError::NoEndpoints);
    assert_eq!(
        RoundRobin::strict(empty.clone()).pick().unwrap_err(),
        LbError::NoEndpoints
    );
    assert_eq!(
        Balancer::pick(&RoundRobin::new(empty)).unwrap_err(),
        LbError::NoEndpoints
    );
    assert_eq!(err.to_string(), "no endpoints available");

    let cache = InstanceCache::new();
    let ep = Arc::new(
        DefaultEndpointer::builder(&cache, |i: &Instance| -> Result<u16, BoxError> {
            Ok(i.port())
        })
        .invalidate_on_error(Duration::ZERO)
        .build(),
    );
    let boom = sd_core::Error::unavailable("consul", "connection refused");
    ep.apply(Event::Error(boom.clone()));
    let err = RoundRobin::new(ep.clone()).pick().unwrap_err();
    assert_eq!(err, LbError::Discovery(boom.clone()));
    assert_eq!(
        RoundRobin::strict(ep.clone()).pick().unwrap_err(),
        LbError::Discovery(boom.clone())
    );
    assert_eq!(err.to_string(), boom.to_string(), "passed on unchanged");

    // Pending (no state yet) reads as no endpoints.
    let pending = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    assert_eq!(
        RoundRobin::new(pending).pick().unwrap_err(),
        LbError::NoEndpoints
    );

    // A closed endpointer reports Stopped.
    let closed = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    closed.close().await;
    assert_eq!(
        RoundRobin::new(closed).pick().unwrap_err(),
        LbError::Discovery(sd_core::Error::Stopped)
    );
}

#[test]
fn works_over_a_trait_object_endpointer() {
    let ep: Arc<dyn Endpointer<u16>> = fixed(2);
    let rr = RoundRobin::new(ep);
    assert_eq!(**rr.pick().unwrap(), 0);
    assert_eq!(**rr.pick().unwrap(), 1);
}

#[test]
fn avoid_moves_the_pick_to_an_accepted_endpoint() {
    let rr = RoundRobin::new(fixed(4));
    let avoid = |e: &sd_core::Endpoint<u16>| **e == 0 || **e == 1;
    // The counter would give 0, then 1: both avoided, so both land on 2 or 3 (drawn among
    // the accepted endpoints, not always the next one, so no neighbour takes the whole
    // share; the spread is tested in tests/outlier.rs).
    for _ in 0..2 {
        let p = rr.pick_with(&Request::new().avoid(&avoid)).unwrap();
        assert!(matches!(**p.endpoint(), 2 | 3), "{}", **p.endpoint());
    }
    let all = |_: &sd_core::Endpoint<u16>| true;
    // Everything avoided: the plain round-robin choice (a preference, not a failure).
    let p = rr.pick_with(&Request::new().avoid(&all)).unwrap();
    assert_eq!(**p.endpoint(), 2);
}

#[test]
fn shared_counter_is_exact_under_concurrency() {
    // 4 threads × 30 000 picks over 3 endpoints: a strict rotation gives exactly 40 000 each.
    let total = combined_counts(Arc::new(RoundRobin::strict(fixed(3))), 4, 30_000, 3);
    assert_eq!(total, [40_000; 3]);
}

/// The default rotation: each thread's picks rotate strictly over every endpoint, so each
/// thread covers every endpoint evenly, whatever the other threads do.
#[test]
fn each_thread_rotates_fairly_on_its_own() {
    let rr = Arc::new(RoundRobin::new(fixed(5)));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || {
                let mut c = [0usize; 5];
                let mut prev = None;
                for _ in 0..10_000 {
                    let v = **RoundRobin::pick(&rr).unwrap();
                    if let Some(p) = prev {
                        assert_eq!(v, (p + 1) % 5, "consecutive picks on a thread rotate");
                    }
                    prev = Some(v);
                    c[v as usize] += 1;
                }
                c
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), [2_000; 5]);
    }
}

/// Many threads (more than the old design's 32 slots): every one has a rotation of its own.
#[test]
fn every_thread_has_its_own_rotation() {
    let rr = Arc::new(RoundRobin::new(fixed(4)));
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || {
                let mut c = [0usize; 4];
                for _ in 0..400 {
                    // Through the trait (an owned endpoint): the same rotation.
                    c[*Balancer::pick(&*rr).unwrap() as usize] += 1;
                }
                c
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), [100; 4]);
    }
}

/// The first picks of successive threads start one endpoint further each: threads that
/// start together do not all hit the first endpoint.
#[test]
fn threads_start_their_rotations_at_successive_endpoints() {
    let rr = Arc::new(RoundRobin::new(fixed(3)));
    let firsts: Vec<u16> = (0..4)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || **RoundRobin::pick(&rr).unwrap())
                .join()
                .unwrap()
        })
        .collect();
    assert_eq!(firsts, [0, 1, 2, 0]);
}

/// Regression: per-thread counters used to be one thread-local shared by every per-thread
/// balancer, so a thread alternating between two balancers advanced each by two and sent all
/// of balancer A's picks to the same endpoint. Each balancer has its own counters.
#[test]
fn per_thread_counters_belong_to_their_balancer() {
    let a = RoundRobin::new(fixed(2));
    let b = RoundRobin::new(fixed(2));
    let mut counts = [[0usize; 2]; 2];
    for _ in 0..1000 {
        counts[0][**a.pick().unwrap() as usize] += 1;
        counts[1][**b.pick().unwrap() as usize] += 1;
    }
    assert_eq!(counts, [[500, 500], [500, 500]]);
}

/// A thread picking from more balancers than its cache holds (16): entries are evicted and
/// remade, and every balancer still picks from its own endpoints, rotating evenly (a remade
/// entry continues from the balancer's shared start counter).
#[test]
fn many_balancers_on_one_thread() {
    for count in [10u16, 40] {
        let balancers: Vec<_> = (0..count)
            .map(|b| {
                let ep =
                    Arc::new(FixedEndpointer::new((0..3).map(|i| {
                        (Instance::new("10.0.0.1", 1000 + 3 * b + i), 3 * b + i)
                    })));
                RoundRobin::new(ep)
            })
            .collect();
        let mut counts = vec![[0usize; 3]; count as usize];
        for _ in 0..300 {
            for (b, rr) in balancers.iter().enumerate() {
                let v = **rr.pick().unwrap();
                assert_eq!(v / 3, b as u16, "balancer {b} picked another's endpoint");
                counts[b][(v % 3) as usize] += 1;
            }
        }
        assert!(counts.iter().all(|c| *c == [100; 3]), "{count}: {counts:?}");
    }
}

/// A balancer's cache entries are named by an id from a global counter, never reused: a new
/// balancer (same endpoint type, likely at the same address) never finds a dropped one's
/// cached snapshot.
#[test]
fn a_new_balancer_never_uses_a_dropped_ones_cache() {
    for round in 0..50u16 {
        let a = RoundRobin::new(fixed(3));
        assert_eq!(**a.pick().unwrap(), 0);
        drop(a);
        let other = Arc::new(FixedEndpointer::new([(
            Instance::new("10.0.0.2", 80),
            500 + round,
        )]));
        let b = RoundRobin::new(other);
        assert_eq!(**b.pick().unwrap(), 500 + round, "round {round}");
    }
}

/// The version check: after an update, the next pick on every thread uses the new set, even
/// though each thread had the old one cached.
#[test]
fn an_update_is_seen_by_the_next_pick_on_every_thread() {
    let (_rt, ep) = common::hand_fed(|i| i.port());
    let set = |ports: &[u16]| {
        Event::instances(
            ports
                .iter()
                .map(|&p| Instance::new("10.0.0.1", p))
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(set(&[1, 2]));
    for strict in [false, true] {
        ep.apply(set(&[1, 2]));
        let rr = Arc::new(if strict {
            RoundRobin::strict(ep.clone())
        } else {
            RoundRobin::new(ep.clone())
        });
        // Two threads, each with the old set cached, waiting.
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let rr = rr.clone();
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let (tell, told) = std::sync::mpsc::channel::<Vec<u16>>();
                let t = std::thread::spawn(move || {
                    let first: Vec<u16> =
                        (0..2).map(|_| **RoundRobin::pick(&rr).unwrap()).collect();
                    tell.send(first).unwrap();
                    wait.recv().unwrap();
                    let after: Vec<u16> =
                        (0..4).map(|_| **RoundRobin::pick(&rr).unwrap()).collect();
                    tell.send(after).unwrap();
                });
                let mut first = told.recv().unwrap();
                first.sort();
                assert_eq!(first, [1, 2]);
                (go, told, t)
            })
            .collect();
        ep.apply(set(&[3, 4]));
        // One thread after the other (a thread racing another's rebuild picks from the new
        // snapshot directly: tests/attack17_rr.rs, no_stale_pick_while_another_thread_...).
        for (go, told, t) in threads {
            go.send(()).unwrap();
            let after = told.recv().unwrap();
            assert!(
                after.iter().all(|p| [3, 4].contains(p)),
                "strict {strict}: the cached set was used after the update: {after:?}"
            );
            t.join().unwrap();
        }
    }
}

/// A borrowed pick keeps its snapshot: an update after the pick does not change what it
/// refers to; the next pick sees the update.
#[test]
fn a_borrowed_pick_outlives_an_update() {
    let (_rt, ep) = common::hand_fed(|i| i.port());
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 1)]));
    let rr = RoundRobin::new(ep.clone());
    let held = rr.pick().unwrap();
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 2)]));
    assert_eq!(**rr.pick().unwrap(), 2);
    assert_eq!(**held, 1);
    assert_eq!(held.instance().port(), 1);
    let owned: sd_core::Endpoint<u16> = held.clone().into_endpoint();
    drop(held);
    assert_eq!(*owned, 1);
}

/// A thread's cache entry holds the snapshot it last used; the thread's end frees it.
#[test]
fn a_threads_end_frees_its_cache() {
    let (_rt, ep) = common::hand_fed(|i| i.port());
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 1)]));
    let rr = Arc::new(RoundRobin::new(ep.clone()));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (tell, told) = std::sync::mpsc::channel::<std::sync::Weak<u16>>();
    let t = {
        let rr = rr.clone();
        std::thread::spawn(move || {
            let picked = RoundRobin::pick(&rr).unwrap();
            tell.send(Arc::downgrade(picked.value_arc())).unwrap();
            drop(picked);
            wait.recv().unwrap();
        })
    };
    let value = told.recv().unwrap();
    // The endpoint leaves the set; this thread's pick brings the balancer's view up to date.
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 2)]));
    assert_eq!(**RoundRobin::pick(&rr).unwrap(), 2);
    assert!(
        value.upgrade().is_some(),
        "the other thread's cache still holds the old snapshot"
    );
    go.send(()).unwrap();
    t.join().unwrap();
    assert!(
        value.upgrade().is_none(),
        "the thread ended: its cache entry and the snapshot are gone"
    );
}

/// Entries of a dropped balancer are swept out of a thread's cache when it next refreshes an
/// entry, releasing their snapshots.
#[test]
fn a_dropped_balancers_entry_is_swept() {
    let (_rt, ep) = common::hand_fed(|i| i.port());
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 1)]));
    let rr = RoundRobin::new(ep.clone());
    let value = Arc::downgrade(rr.pick().unwrap().value_arc());
    drop(rr);
    ep.apply(Event::instances(vec![Instance::new("10.0.0.1", 2)]));
    assert!(value.upgrade().is_some(), "held by this thread's cache");
    // Another balancer's first pick on this thread sweeps the dead entry.
    let other = RoundRobin::new(fixed(1));
    assert_eq!(**other.pick().unwrap(), 0);
    assert!(value.upgrade().is_none(), "swept");
}
