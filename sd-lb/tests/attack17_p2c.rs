//! Adversarial tests of P2C's weighted draws through the guide table (issue 17, b31834c):
//! hostile weights (0, `u32::MAX`, one huge and many tiny, N = 1, N = 10 000, health
//! subsets, avoided endpoints) never panic, never pick a zero weight while a positive one
//! can be picked, and draw in proportion to the weights. (The guide table's exact agreement
//! with a binary search is checked inside the crate, `p2c::tests`.)

mod common;

use std::sync::Arc;

use common::weighted;
use sd_core::{Endpoint, FixedEndpointer, Health, Instance};
use sd_lb::{Balancer, Load, P2c, Request};

const MAX: u32 = u32::MAX;

/// How often each endpoint value `0..n` is picked in `picks` untracked picks (every load is
/// then 0: the tie goes to the first draw, so the counts follow the weights), for both loads
/// and two seeds.
fn counts(weights: &[u32], picks: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for load in [Load::PendingRequests, Load::peak_ewma()] {
        for seed in [1u64, 0xDEAD_BEEF] {
            let p2c = P2c::new(weighted(weights), load).seed(seed);
            let mut c = vec![0usize; weights.len()];
            for _ in 0..picks {
                c[*p2c.pick().unwrap() as usize] += 1;
            }
            out.push(c);
        }
    }
    out
}

#[test]
fn a_zero_weight_beside_u32_max_is_never_picked() {
    for ws in [
        vec![0, MAX],
        vec![MAX, 0],
        vec![MAX, 0, 0],
        vec![0, 0, MAX, 0],
    ] {
        let huge = ws.iter().position(|&w| w == MAX).unwrap();
        for c in counts(&ws, 2_000) {
            assert_eq!(c[huge], 2_000, "{ws:?}: {c:?}");
        }
    }
}

#[test]
fn one_endpoint_of_any_weight() {
    for w in [0, 1, MAX] {
        for c in counts(&[w], 100) {
            assert_eq!(c, [100], "weight {w}");
        }
    }
}

#[test]
fn equal_extreme_weights_are_uniform() {
    for c in counts(&[MAX; 4], 8_000) {
        assert!(c.iter().all(|&k| (1_700..2_300).contains(&k)), "{c:?}");
    }
    let c = counts(&vec![MAX; 10_000], 20_000);
    assert!(c.iter().all(|c| c.iter().sum::<usize>() == 20_000));
}

/// One huge weight and 9 999 of weight 1, the huge one first, last, or in the middle: the
/// tiny ones share 9 999 / (2^32 + 9 998) of the first draws (about 1 in 430 000).
#[test]
fn one_huge_and_many_tiny() {
    for at in [0usize, 5_000, 9_999] {
        let mut ws = vec![1u32; 10_000];
        ws[at] = MAX;
        for c in counts(&ws, 20_000) {
            assert!(c[at] >= 19_990, "huge at {at}: {}", c[at]);
        }
    }
    // And with many zeros between them: the zeros are never picked.
    let mut ws = vec![0u32; 10_000];
    ws[0] = MAX;
    for k in (1..10_000).step_by(97) {
        ws[k] = 1;
    }
    for c in counts(&ws, 20_000) {
        for (k, n) in c.iter().enumerate() {
            assert!(*n == 0 || ws[k] > 0, "weight 0 picked: {k}");
        }
    }
}

/// Two weights a unit apart at the top of the range, and 1 : 3 : 0 : 2^31: proportions within
/// five standard deviations.
#[test]
fn proportions_hold_at_extremes() {
    for c in counts(&[MAX, MAX - 1], 20_000) {
        assert!((9_500..10_500).contains(&c[0]), "{c:?}");
    }
    let ws = [1u32, 3, 0, 1 << 31];
    let total: f64 = ws.iter().map(|&w| w as f64).sum();
    for c in counts(&ws, 40_000) {
        assert_eq!(c[2], 0);
        for k in [0usize, 1, 3] {
            let p = ws[k] as f64 / total;
            let mean = p * 40_000.0;
            let sd = (40_000.0 * p * (1.0 - p)).sqrt().max(1.0);
            assert!(
                (c[k] as f64 - mean).abs() <= 5.0 * sd + 1.0,
                "endpoint {k}: {} picks, expected {mean:.2}: {c:?}",
                c[k]
            );
        }
    }
}

/// 10 000 endpoints with weights cycling 0, 1, 2, 3: zero weights never picked, the others
/// in proportion 1 : 2 : 3.
#[test]
fn ten_thousand_mixed_weights() {
    let ws: Vec<u32> = (0..10_000).map(|i| i % 4).collect();
    for c in counts(&ws, 60_000) {
        let mut class = [0usize; 4];
        for (k, n) in c.iter().enumerate() {
            class[ws[k] as usize] += n;
        }
        assert_eq!(class[0], 0);
        for (w, n) in class.iter().enumerate().skip(1) {
            let mean = 60_000.0 * w as f64 / 6.0;
            assert!(((*n as f64) - mean).abs() < 1_000.0, "{class:?}");
        }
    }
}

/// Hostile weights under health preferences (the guide table over a subset of the list) and
/// with avoided endpoints (the weighted redraws).
#[test]
fn hostile_weights_with_health_and_avoid() {
    let ep = Arc::new(FixedEndpointer::new(
        [
            (MAX, Health::Critical),
            (1, Health::Passing),
            (0, Health::Passing),
            (3, Health::Passing),
            (MAX, Health::Passing),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (w, h))| {
            (
                Instance::builder("10.0.0.1", 1000 + i as u16)
                    .weight(w)
                    .health(h)
                    .build(),
                i as u16,
            )
        }),
    ));
    let p2c = P2c::pending_requests(ep).seed(9);
    let avoid_huge = |e: &Endpoint<u16>| **e == 4;
    let avoid_all_positive = |e: &Endpoint<u16>| **e != 2;
    for _ in 0..5_000 {
        let v = *p2c.pick().unwrap();
        assert!(
            matches!(v, 1 | 3 | 4),
            "critical or zero weight picked: {v}"
        );
        let v = **p2c
            .pick_with(&Request::new().avoid(&avoid_huge))
            .unwrap()
            .endpoint();
        assert!(matches!(v, 1 | 3), "avoided or zero weight picked: {v}");
        // Every positive-weight candidate avoided: any passing one, no panic.
        let v = **p2c
            .pick_with(&Request::new().avoid(&avoid_all_positive))
            .unwrap()
            .endpoint();
        assert!(matches!(v, 1..=4), "{v}");
    }
}

/// Loads compared against `u32::MAX` weights with many requests in flight: no overflow, and
/// the less loaded per unit of weight wins.
#[test]
fn in_flight_counts_against_extreme_weights() {
    let p2c = P2c::pending_requests(weighted(&[MAX, 1])).seed(3);
    let mut held = Vec::new();
    for _ in 0..10_000 {
        held.push(p2c.pick_with(&Request::new()).unwrap());
    }
    let on_small = held.iter().filter(|p| **p.endpoint() == 1).count();
    // 10 000 in flight on a weight of 2^32 - 1 is still lighter per unit than 1 on weight 1.
    assert!(on_small <= 1, "{on_small}");
}
