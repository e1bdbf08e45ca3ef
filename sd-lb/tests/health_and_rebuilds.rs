//! Issue 9, items 10 and 11: tables rebuilt off the request path without false "no
//! endpoints", and health-aware picking in every balancer.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use sd_core::{DefaultEndpointer, Event, FixedEndpointer, Health, Instance};
use sd_lb::{
    Balancer, ConsistentHash, LocalRoundRobin, P2c, PanicThreshold, Random, Request, RoundRobin,
    Weighted,
};

/// A runtime (for the endpointer's tasks) and an empty endpointer fed by hand.
fn endpointer() -> (tokio::runtime::Runtime, Arc<DefaultEndpointer<u32>>) {
    common::hand_fed(|i| i.port() as u32)
}

fn many(n: u32) -> Event {
    Event::instances(
        (0..n)
            .map(|i| Instance::new(format!("10.0.{}.{}", i >> 8, i & 255), 8080))
            .collect::<Vec<_>>(),
    )
}

/// Regression (issue 9, item 10): after an update from an empty set to 10 000 endpoints, the
/// first pick built the Maglev table (or weighted schedule, or P2C statistics) on its own
/// thread while every other thread picked from the previous, empty table and failed with "no
/// endpoints". Now no pick fails while the endpointer has endpoints, on any thread.
#[test]
fn table_rebuilds_never_report_no_endpoints_while_endpoints_exist() {
    let (_rt, ep) = endpointer();
    let balancers: Vec<(&str, Arc<dyn Balancer<u32>>)> = vec![
        ("hash", Arc::new(ConsistentHash::new(ep.clone()))),
        ("weighted", Arc::new(Weighted::new(ep.clone()))),
        ("p2c", Arc::new(P2c::pending_requests(ep.clone()))),
    ];
    ep.apply(many(10_000));
    for (name, b) in balancers {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicUsize::new(0));
        let picker =
            |b: Arc<dyn Balancer<u32>>, stop: Arc<AtomicBool>, errors: Arc<AtomicUsize>| {
                move || {
                    let mut picks = 0usize;
                    while picks < 300 || !stop.load(Ordering::Relaxed) {
                        if b.pick_with(&Request::new().with_key(picks as u64)).is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        picks += 1;
                    }
                }
            };
        let threads: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(picker(b.clone(), stop.clone(), errors.clone())))
            .collect();
        // This thread picks too (on the old code, whichever thread picked first built the
        // table while the others failed).
        for k in 0..300u64 {
            if b.pick_with(&Request::new().with_key(k)).is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "{name}: \"no endpoints\" while 10 000 endpoints exist"
        );
    }
}

/// Consistent hashing serves the Maglev mapping again once the background rebuild is done,
/// the same as a table built from scratch.
#[test]
fn rebuilt_tables_match_tables_built_from_scratch() {
    let (_rt, ep) = endpointer();
    let hash = ConsistentHash::new(ep.clone());
    ep.apply(many(50));
    let _ = hash.pick_key("start the rebuild");
    hash.refresh();
    let fresh = ConsistentHash::new(ep.clone());
    for k in 0..2_000 {
        assert_eq!(*hash.pick_key(&k).unwrap(), *fresh.pick_key(&k).unwrap());
    }
}

/// Endpoints 0 and 1 pass, 2 is critical, 3 has a warning, 4 is unknown.
fn mixed(health: [Health; 5]) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(health.iter().enumerate().map(
        |(i, h)| {
            (
                Instance::builder("10.0.0.1", 1000 + i as u16)
                    .health(*h)
                    .weight(1 + i as u32)
                    .build(),
                i as u16,
            )
        },
    )))
}

fn all_balancers(
    ep: &Arc<FixedEndpointer<u16>>,
    t: PanicThreshold,
) -> Vec<(&'static str, Box<dyn Balancer<u16>>)> {
    vec![
        (
            "round robin",
            Box::new(RoundRobin::new(ep.clone()).with_panic_threshold(t)),
        ),
        (
            "round robin strict",
            Box::new(RoundRobin::strict(ep.clone()).with_panic_threshold(t)),
        ),
        (
            "random",
            Box::new(Random::with_seed(ep.clone(), 3).with_panic_threshold(t)),
        ),
        (
            "weighted",
            Box::new(Weighted::new(ep.clone()).with_panic_threshold(t)),
        ),
        (
            "p2c pending",
            Box::new(
                P2c::pending_requests(ep.clone())
                    .with_panic_threshold(t)
                    .seed(4),
            ),
        ),
        (
            "p2c peak ewma",
            Box::new(P2c::peak_ewma(ep.clone()).with_panic_threshold(t).seed(5)),
        ),
        (
            "hash",
            // Set before `ignore_weights`, which rebuilds the table: the threshold stays.
            Box::new(
                ConsistentHash::new(ep.clone())
                    .with_panic_threshold(t)
                    .ignore_weights(),
            ),
        ),
    ]
}

fn counts(b: &dyn Balancer<u16>) -> [usize; 5] {
    let mut c = [0usize; 5];
    for k in 0..1_000u64 {
        c[**b.pick_with(&Request::new().with_key(k)).unwrap().endpoint() as usize] += 1;
    }
    c
}

/// Regression (issue 9, item 11): round robin, random and P2C sent traffic to a critical
/// instance when `passing_only` was off. Every balancer now prefers passing endpoints (here
/// 2 of 5, with panic mode off: see the panic tests below for the default).
#[test]
fn every_balancer_prefers_passing_endpoints() {
    use Health::*;
    let ep = mixed([Passing, Passing, Critical, Warning, Unknown]);
    for (name, b) in all_balancers(&ep, PanicThreshold::OFF) {
        let c = counts(&*b);
        assert_eq!(c[2..], [0, 0, 0], "{name}: {c:?}");
        assert!(c[0] > 0 && c[1] > 0, "{name}: {c:?}");
    }
    let mut local = LocalRoundRobin::new(ep.clone()).with_panic_threshold(PanicThreshold::OFF);
    let picks: Vec<u16> = (0..6).map(|_| **local.pick().unwrap()).collect();
    assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
    // Round robin rotates strictly over the passing ones.
    let rr = RoundRobin::new(ep.clone()).with_panic_threshold(PanicThreshold::OFF);
    let picks: Vec<u16> = (0..6).map(|_| **rr.pick().unwrap()).collect();
    assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
}

/// When no endpoint passes, every endpoint is used (panic mode): a registry that marks the
/// whole service critical must not take it down.
#[test]
fn every_balancer_uses_all_endpoints_when_none_passes() {
    use Health::*;
    let ep = mixed([Critical, Critical, Critical, Warning, Unknown]);
    for (name, b) in all_balancers(&ep, PanicThreshold::OFF)
        .into_iter()
        .chain(all_balancers(&ep, PanicThreshold::default()))
    {
        let c = counts(&*b);
        assert!(c.iter().all(|&n| n > 0), "{name}: {c:?}");
    }
    let mut local = LocalRoundRobin::new(ep.clone());
    let picks: Vec<u16> = (0..5).map(|_| **local.pick().unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 3, 4]);
}

/// Panic threshold (default 50 %): with 2 of 5 passing every balancer uses all five; with 3
/// of 5 only the passing ones; a threshold of 70 % panics at 3 of 5 too.
#[test]
fn below_the_panic_threshold_every_endpoint_is_used() {
    use Health::*;
    let two = mixed([Passing, Passing, Critical, Warning, Unknown]);
    let three = mixed([Passing, Passing, Passing, Warning, Unknown]);
    let t70 = PanicThreshold::percent(70.0).unwrap();
    for (ep, t, panic) in [
        (&two, PanicThreshold::default(), true),
        (&three, PanicThreshold::default(), false),
        (&three, t70, true),
    ] {
        for (name, b) in all_balancers(ep, t) {
            assert_eq!(b.panic_threshold(), t, "{name}");
            let c = counts(&*b);
            if panic {
                assert!(c.iter().all(|&n| n > 0), "{name}, {t:?}: {c:?}");
            } else {
                assert_eq!(c[3..], [0, 0], "{name}, {t:?}: {c:?}");
            }
        }
        let mut local = LocalRoundRobin::new(ep.clone()).with_panic_threshold(t);
        let picked: std::collections::BTreeSet<u16> =
            (0..10).map(|_| **local.pick().unwrap()).collect();
        assert_eq!(picked.len(), if panic { 5 } else { 3 }, "local, {t:?}");
    }
    assert!(PanicThreshold::percent(-1.0).is_err());
    assert!(PanicThreshold::percent(f64::NAN).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any mix of health and any threshold, round robin uses exactly the passing
    /// endpoints, or every endpoint when fewer than the threshold pass (or none does).
    #[test]
    fn the_panic_rule_holds_for_any_health_mix(
        passing in proptest::collection::vec(any::<bool>(), 1..40),
        percent in 0u32..=100,
    ) {
        let ep = Arc::new(FixedEndpointer::new(passing.iter().enumerate().map(|(i, &p)| {
            let h = if p { Health::Passing } else { Health::Critical };
            (Instance::builder("10.0.0.1", 1000 + i as u16).health(h).build(), i as u16)
        })));
        let t = PanicThreshold::percent(percent as f64).unwrap();
        let rr = RoundRobin::new(ep.clone()).with_panic_threshold(t);
        let n = passing.len();
        let used: std::collections::BTreeSet<u16> = (0..2 * n).map(|_| **rr.pick().unwrap()).collect();
        let healthy = passing.iter().filter(|p| **p).count();
        let panic = healthy == 0 || (healthy as f64) * 100.0 < percent as f64 * n as f64;
        let want: std::collections::BTreeSet<u16> = (0..n as u16)
            .filter(|&i| panic || passing[i as usize])
            .collect();
        prop_assert_eq!(used, want);
    }
}

/// Health changes on update: an endpoint that turns critical stops getting traffic once the
/// tables follow the update, and comes back when it passes again.
#[test]
fn health_changes_are_followed_on_update() {
    let (_rt, ep) = endpointer();
    let set = |critical: bool| {
        Event::instances(vec![
            Instance::new("10.0.0.1", 1),
            Instance::builder("10.0.0.1", 2)
                .health(if critical {
                    Health::Critical
                } else {
                    Health::Passing
                })
                .build(),
        ])
    };
    ep.apply(set(false));
    let rr = RoundRobin::new(ep.clone());
    let hash = ConsistentHash::new(ep.clone());
    let owners = |h: &ConsistentHash<_, u32>| {
        (0..200)
            .map(|k| *h.pick_key(&k).unwrap())
            .collect::<Vec<u32>>()
    };
    assert!(owners(&hash).contains(&2));
    ep.apply(set(true));
    assert!((0..10).all(|_| **rr.pick().unwrap() == 1));
    hash.refresh();
    assert!(owners(&hash).iter().all(|&p| p == 1));
    ep.apply(set(false));
    hash.refresh();
    assert!(owners(&hash).contains(&2));
    assert_eq!(
        (0..10).filter(|_| **rr.pick().unwrap() == 2).count(),
        5,
        "back in the rotation"
    );
}
