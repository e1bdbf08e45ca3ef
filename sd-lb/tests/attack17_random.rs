//! `Random::pick`, the borrowed pick from the per-thread cache it shares with `RoundRobin`:
//! distribution and seeded sequences, updates, and borrowed picks that outlive their entry,
//! their balancer and their endpointer, also with balancers of other endpoint types on the
//! same thread (the cache's type invariant). Run under valgrind too (see `docs/TESTING.md`):
//! `valgrind --error-exitcode=1 target/debug/deps/attack17_random-*`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sd_core::{
    BoxError, DefaultEndpointer, Endpoint, Event, FixedEndpointer, Instance, InstanceCache,
};
use sd_lb::{Balancer, Random, RoundRobin};

fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..n).map(|p| (Instance::new("10.0.0.1", p), p)),
    ))
}

fn chi2(counts: &[usize], expected: f64) -> f64 {
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// A value with a heap part (so a read after free is a real one under valgrind) that
/// counts its drops.
struct Tracked {
    name: String,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// A current-thread runtime for the endpointer's task (entered by the caller).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tracked(drops: &Arc<AtomicUsize>) -> Arc<DefaultEndpointer<Tracked>> {
    let src = InstanceCache::new();
    let drops = drops.clone();
    Arc::new(DefaultEndpointer::new(
        &src,
        move |i: &Instance| -> Result<Tracked, BoxError> {
            Ok(Tracked {
                name: format!("value of {}", i.addr()),
                drops: drops.clone(),
            })
        },
    ))
}

fn set(ports: &[u16]) -> Event {
    Event::instances(
        ports
            .iter()
            .map(|&p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn borrowed_picks_are_uniform_and_follow_the_seeded_sequence() {
    // 10 endpoints, 100 000 borrowed picks: chi-squared, 9 degrees of freedom, p = 0.001.
    for seed in [11u64, 12] {
        let r = Random::with_seed(fixed(10), seed);
        let mut c = [0usize; 10];
        for _ in 0..100_000 {
            c[**r.pick().unwrap() as usize] += 1;
        }
        assert!(chi2(&c, 10_000.0) < 27.9, "seed {seed}: {c:?}");
    }
    // The unseeded generator (this thread's entry's) too.
    let r = Random::new(fixed(10));
    let mut c = [0usize; 10];
    for _ in 0..100_000 {
        c[**r.pick().unwrap() as usize] += 1;
    }
    assert!(chi2(&c, 10_000.0) < 27.9, "unseeded: {c:?}");

    // The borrowed pick, the owned pick and `pick_with` draw the same seeded sequence, the
    // cached path (every pick after the first) as the slow one.
    let borrowed: Vec<u16> = {
        let r = Random::with_seed(fixed(10), 99);
        (0..200).map(|_| **r.pick().unwrap()).collect()
    };
    let owned: Vec<u16> = {
        let r = Random::with_seed(fixed(10), 99);
        (0..200).map(|_| *Balancer::pick(&r).unwrap()).collect()
    };
    let with: Vec<u16> = {
        let r = Random::with_seed(fixed(10), 99);
        (0..200)
            .map(|_| **r.pick_with(&Default::default()).unwrap().endpoint())
            .collect()
    };
    assert_eq!(borrowed, owned);
    assert_eq!(borrowed, with);
    // Not a constant: the picks cover the set.
    let mut seen = borrowed.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 10);
}

#[test]
fn a_borrowed_pick_sees_the_new_set_after_an_update() {
    let rt = runtime();
    let _rt = rt.enter();
    let drops = Arc::new(AtomicUsize::new(0));
    let ep = tracked(&drops);
    ep.apply(set(&[1, 2, 3]));
    let r = Random::with_seed(ep.clone(), 5);
    for _ in 0..50 {
        assert!([1, 2, 3].contains(&r.pick().unwrap().instance().port()));
    }
    ep.apply(set(&[7, 8]));
    // The very next pick, and every one after it, is from the new set.
    let mut seen = [false; 2];
    for _ in 0..200 {
        let p = r.pick().unwrap();
        let port = p.instance().port();
        assert!(port == 7 || port == 8, "picked {port} after the update");
        assert_eq!(p.name, format!("value of 10.0.0.1:{port}"));
        seen[usize::from(port - 7)] = true;
    }
    assert_eq!(seen, [true, true]);
    ep.apply(set(&[]));
    assert!(r.pick().is_err(), "an empty set is reported at once");
    ep.apply(set(&[9]));
    assert_eq!(r.pick().unwrap().instance().port(), 9);
}

#[test]
fn a_borrowed_pick_outlives_its_entry_its_balancer_and_its_endpointer() {
    let rt = runtime();
    let _rt = rt.enter();
    let drops = Arc::new(AtomicUsize::new(0));
    let ep = tracked(&drops);
    ep.apply(set(&[1]));
    let r = Random::new(ep.clone());
    let held = r.pick().unwrap();
    let twin = held.clone();
    // The set changes entirely: the next pick replaces this thread's entry, whose snapshot
    // held the only other count of the old value.
    ep.apply(set(&[2]));
    assert_eq!(r.pick().unwrap().instance().port(), 2);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "the held pick keeps its value"
    );
    // Balancers of other endpoint types on this thread: enough to evict every entry, and
    // to sweep the dropped balancer's at their refreshes.
    drop(r);
    drop(ep);
    let others: Vec<RoundRobin<_, u16>> = (0..20).map(|i| RoundRobin::new(fixed(1 + i))).collect();
    let randoms: Vec<Random<_, u16>> = (0..20).map(|i| Random::new(fixed(1 + i))).collect();
    for _ in 0..3 {
        for (o, q) in others.iter().zip(&randoms) {
            let _ = o.pick().unwrap();
            let _ = q.pick().unwrap();
        }
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "only the replaced set's value is gone"
    );
    assert_eq!(held.instance().port(), 1);
    assert_eq!(held.name, "value of 10.0.0.1:1");
    drop(held);
    assert_eq!(twin.name, "value of 10.0.0.1:1");
    let owned: Endpoint<Tracked> = twin.into_endpoint();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(owned.name, "value of 10.0.0.1:1");
    drop(owned);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        2,
        "the last count frees the value"
    );
}

/// Round robin and random balancers over different endpoint types, interleaved on one
/// thread, created and dropped in a loop while borrowed picks are held: each pick must read
/// its own type's value (an entry confused with another balancer's would read a `String`
/// as a `u64` or the other way round).
#[test]
fn balancers_of_different_types_share_the_thread_cache() {
    let strings: Arc<FixedEndpointer<String>> = Arc::new(FixedEndpointer::new(
        (0..4u16).map(|p| (Instance::new("10.0.0.2", p), format!("s{p}"))),
    ));
    let numbers: Arc<FixedEndpointer<u64>> = Arc::new(FixedEndpointer::new(
        (0..4u16).map(|p| (Instance::new("10.0.0.3", p), 1000 + u64::from(p))),
    ));
    let mut held_s = Vec::new();
    let mut held_n = Vec::new();
    for round in 0..40 {
        let rs = Random::new(strings.clone());
        let rn = RoundRobin::new(numbers.clone());
        let qs = RoundRobin::new(strings.clone());
        let qn = Random::with_seed(numbers.clone(), round);
        for _ in 0..5 {
            let s = rs.pick().unwrap();
            assert_eq!(*s.as_str(), format!("s{}", s.instance().port()));
            let n = rn.pick().unwrap();
            assert_eq!(**n, 1000 + u64::from(n.instance().port()));
            let s2 = qs.pick().unwrap();
            assert_eq!(*s2.as_str(), format!("s{}", s2.instance().port()));
            let n2 = qn.pick().unwrap();
            assert_eq!(**n2, 1000 + u64::from(n2.instance().port()));
            if round % 3 == 0 {
                held_s.push(s);
                held_n.push(n2);
            }
        }
        // The four balancers drop here; their entries are swept by later refreshes.
    }
    for s in &held_s {
        assert_eq!(*s.as_str(), format!("s{}", s.instance().port()));
    }
    for n in &held_n {
        assert_eq!(***n, 1000 + u64::from(n.instance().port()));
    }
}

/// A borrowed random pick held on a thread that ends: the thread's cache is destroyed
/// under it, the pick stays valid until it is dropped at the thread's end.
#[test]
fn a_borrowed_pick_held_across_the_threads_end() {
    let rt = runtime();
    let _rt = rt.enter();
    let drops = Arc::new(AtomicUsize::new(0));
    let ep = tracked(&drops);
    ep.apply(set(&[1, 2]));
    let r = Arc::new(Random::with_seed(ep.clone(), 3));
    thread_local! {
        static HELD: std::cell::RefCell<Vec<sd_lb::EndpointRef<Tracked>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let r2 = r.clone();
    std::thread::spawn(move || {
        let p = Random::pick(&*r2).unwrap();
        assert!(p.name.starts_with("value of 10.0.0.1:"));
        HELD.with(|h| h.borrow_mut().push(p));
        HELD.with(|h| {
            for p in h.borrow().iter() {
                assert!(p.name.starts_with("value of"));
            }
        });
    })
    .join()
    .unwrap();
    drop(r);
    ep.apply(set(&[]));
    assert_eq!(drops.load(Ordering::SeqCst), 2, "every value freed once");
}
