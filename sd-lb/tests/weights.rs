//! Instance weights in P2C and consistent hashing (issue 18): picks in proportion to weight,
//! two distinct choices, `load ÷ weight`, weight 0, state kept across updates.
//!
//! Every run is seeded (P2C's `seed`, fixed keys for hashing), so the outcome is the same on
//! every run; the tolerances are still derived from the sample size (five binomial standard
//! deviations), not tuned to the seed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::weighted;
use proptest::prelude::*;
use sd_core::{
    BoxError, DefaultEndpointer, Endpoint, Endpointer, Event, FixedEndpointer, Instance,
    InstanceCache,
};
use sd_lb::{Balancer, Clock, ConsistentHash, Load, P2c, Request};

/// Asserts that `counts` (out of their sum) follow `weights` within five binomial standard
/// deviations per endpoint, plus `slack` (a share: e.g. a table's rounding); zero weights
/// must get nothing.
fn assert_proportional(what: &str, counts: &[usize], weights: &[u32], slack: f64) {
    let n: usize = counts.iter().sum();
    let total: f64 = weights.iter().map(|w| *w as f64).sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        if w == 0 {
            assert_eq!(c, 0, "{what}: weight 0 picked: {counts:?}");
            continue;
        }
        let p = w as f64 / total;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let tolerance = 5.0 * sd + slack * n as f64;
        let expected = n as f64 * p;
        assert!(
            (c as f64 - expected).abs() <= tolerance,
            "{what}: endpoint {i} (weight {w}) got {c} of {n}, expected {expected:.0} ± {tolerance:.0}: {counts:?}"
        );
    }
}

fn count_picks<B: Balancer<u16>>(b: &B, n: usize, len: usize) -> Vec<usize> {
    let mut c = vec![0usize; len];
    for _ in 0..n {
        c[*b.pick().unwrap() as usize] += 1;
    }
    c
}

/// Idle endpoints (no request outlives its pick) tie on load, and the tie goes to the first
/// choice, drawn by weight: picks follow the weights. Both loads.
#[test]
fn p2c_idle_picks_follow_weights() {
    let weights = [1, 2, 3, 4, 0, 10];
    for (name, p2c) in [
        (
            "in-flight",
            P2c::pending_requests(weighted(&weights)).seed(5),
        ),
        ("peak EWMA", P2c::peak_ewma(weighted(&weights)).seed(6)),
    ] {
        let c = count_picks(&p2c, 100_000, weights.len());
        assert_proportional(name, &c, &weights, 0.0);
        // The same set with weights ignored is uniform over all six (zero weight included).
        let plain = P2c::pending_requests(weighted(&weights))
            .seed(5)
            .ignore_weights();
        let c = count_picks(&plain, 60_000, weights.len());
        assert_proportional(&format!("{name}, ignored"), &c, &[1; 6], 0.0);
    }
}

/// Held requests pile up in proportion to weight: `load ÷ weight` evens out. 1 000 requests
/// held on weights 1:2:3:4 end within two requests per unit of weight of the ideal 100 per
/// unit (unweighted, the loads would be equal: 250 each).
#[test]
fn p2c_held_requests_spread_in_proportion_to_weight() {
    let weights = [1u32, 2, 3, 4];
    for seed in 0..8 {
        let p2c = P2c::pending_requests(weighted(&weights)).seed(seed);
        let held: Vec<_> = (0..1_000)
            .map(|_| p2c.pick_with(&Request::new()).unwrap())
            .collect();
        let mut c = [0usize; 4];
        for p in &held {
            c[**p.endpoint() as usize] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let per_weight = c[i] as f64 / *w as f64;
            assert!(
                (per_weight - 100.0).abs() <= 2.0,
                "seed {seed}: {c:?} (per unit of weight {per_weight})"
            );
        }
    }
}

/// With one endpoint avoided (an outlier ejection, a retry), the other two are still both
/// compared: the loaded one is never picked while the idle one is accepted. Before, each
/// avoided draw was redrawn on its own and both could land on the same endpoint.
#[test]
fn p2c_compares_two_distinct_endpoints_when_some_are_avoided() {
    for weights in [[1u32, 1, 1], [1, 5, 1]] {
        let ep = weighted(&weights);
        let p2c = P2c::pending_requests(ep.clone()).seed(9);
        let busy = loop {
            let p = p2c.pick_with(&Request::new()).unwrap();
            if **p.endpoint() == 1 {
                break p;
            }
        };
        let avoid = |e: &Endpoint<u16>| **e == 0;
        for _ in 0..2_000 {
            let p = p2c.pick_with(&Request::new().avoid(&avoid)).unwrap();
            assert_eq!(**p.endpoint(), 2, "weights {weights:?}");
        }
        drop(busy);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For any weights and held load: a zero-weight endpoint is never picked while one of
    /// positive weight exists, and an endpoint whose `load ÷ weight` is strictly the highest
    /// is never picked (the other choice is always a distinct, lighter endpoint).
    #[test]
    fn p2c_never_picks_zero_weight_or_the_heaviest_per_weight(
        weights in prop::collection::vec(0u32..20, 2..8),
        held in 0usize..40,
        seed in any::<u64>(),
    ) {
        let n = weights.len();
        let p2c = P2c::pending_requests(weighted(&weights)).seed(seed);
        let _held: Vec<_> = (0..held).map(|_| p2c.pick_with(&Request::new()).unwrap()).collect();
        let positive: Vec<usize> = (0..n).filter(|&i| weights[i] > 0).collect();
        let snap = p2c.snapshot();
        let load = |i: usize| p2c.load_of(&snap.all()[i]).unwrap().pending_requests() as f64;
        // The endpoint whose load per weight is strictly above every other's, if any.
        let heaviest = if positive.len() >= 2 {
            let per = |i: usize| load(i) / weights[i] as f64;
            let top = positive.iter().copied().max_by(|&a, &b| per(a).total_cmp(&per(b))).unwrap();
            positive.iter().all(|&i| i == top || per(i) < per(top)).then_some(top)
        } else {
            None
        };
        for _ in 0..200 {
            let i = *p2c.pick().unwrap() as usize;
            if !positive.is_empty() {
                prop_assert!(weights[i] > 0, "picked {i}, weight 0: {weights:?}");
            }
            prop_assert!(Some(i) != heaviest, "picked the heaviest per weight {i}: {weights:?}");
        }
    }
}

/// Statistics are keyed by the endpoint, not by its position: an update that inserts an
/// endpoint before it (shifting every index) and changes its weight keeps its in-flight count
/// and latency estimate, and the new weight is used at once.
#[tokio::test(start_paused = true)]
async fn p2c_state_survives_reordering_and_weight_changes() {
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    let set = |ports: &[(u16, u32)]| {
        Event::instances(
            ports
                .iter()
                .map(|&(p, w)| Instance::builder("10.0.0.1", p).weight(w).build())
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(set(&[(20, 1), (30, 1)]));
    let p2c = P2c::new(
        ep.clone(),
        Load::PeakEwma {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(1),
        },
    )
    .clock(Clock::tokio())
    .seed(4);
    let inflight = P2c::pending_requests(ep.clone()).seed(8);
    let on = |port: u16| loop {
        let p = p2c.pick_with(&Request::new()).unwrap();
        if **p.endpoint() == port {
            break p;
        }
    };
    let slow = on(20);
    tokio::time::advance(Duration::from_millis(100)).await;
    slow.success();
    let held = on(30);
    let find = |port: u16| {
        let snap = ep.endpoints();
        let e = snap.all().iter().find(|e| ***e == port).unwrap().clone();
        p2c.load_of(&e).unwrap()
    };
    let (l20, l30) = (find(20), find(30));
    assert!(l20.rtt_estimate() >= Duration::from_millis(100));
    assert_eq!(l30.pending_requests(), 1);

    // Port 10 sorts first: every index shifts. Port 20's weight goes 1 → 8.
    ep.apply(set(&[(10, 1), (20, 8), (30, 1)]));
    p2c.refresh();
    assert!(Arc::ptr_eq(&find(20), &l20), "port 20 keeps its statistics");
    assert!(Arc::ptr_eq(&find(30), &l30), "port 30 keeps its statistics");
    assert!(find(20).rtt_estimate() >= Duration::from_millis(100));
    assert_eq!(find(30).pending_requests(), 1);
    assert_eq!(find(10).pending_requests(), 0);
    drop(held);
    // The new weights are used by a balancer made before the update (once its table is
    // rebuilt; until then picks use the previous table).
    inflight.refresh();
    let snap = ep.endpoints();
    let mut c = [0usize; 3];
    for _ in 0..20_000 {
        let v = *inflight.pick().unwrap();
        c[snap.all().iter().position(|e| **e == v).unwrap()] += 1;
    }
    assert_proportional("after the weight change", &c, &[1, 8, 1], 0.0);
    ep.close().await;
}

/// Consistent hashing gives each endpoint the share of keys its weight asks for (five binomial
/// standard deviations, plus the table's rounding of `(2 + 2n)` slots of 65 537); weight 0
/// gets no key; with weights ignored the shares are equal again.
#[test]
fn consistent_hash_key_share_follows_weights() {
    let weights = [1u32, 2, 3, 4, 0, 10];
    let keys = 200_000;
    let shares = |h: &ConsistentHash<Arc<FixedEndpointer<u16>>, u16>| {
        let mut c = vec![0usize; weights.len()];
        for k in 0..keys {
            c[*h.pick_key(&format!("key-{k}")).unwrap() as usize] += 1;
        }
        c
    };
    let slack = (2.0 + 2.0 * weights.len() as f64) / 65_537.0;
    let h = ConsistentHash::new(weighted(&weights));
    assert!(h.honours_weights());
    assert_proportional("weighted", &shares(&h), &weights, slack);
    let h = ConsistentHash::new(weighted(&weights)).ignore_weights();
    assert_proportional("ignored", &shares(&h), &[1; 6], slack);
    // Equal weights: the same mapping as with weights ignored (sets without weights map keys
    // exactly as before weights counted).
    let a = ConsistentHash::new(weighted(&[3; 12]));
    let b = ConsistentHash::new(weighted(&[3; 12])).ignore_weights();
    for k in 0..10_000 {
        assert_eq!(*a.pick_key(&k).unwrap(), *b.pick_key(&k).unwrap());
    }
}
