//! Slow start: a new endpoint's share ramps up over the window (with the inner balancers
//! round robin, weighted, random and P2C, and under outlier ejection); the first set is not
//! slow-started; first-seen times survive updates. Time is tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::find;
use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::{
    Balancer, Clock, Outlier, OutlierConfig, P2c, Random, Request, RoundRobin, SlowStart,
    SlowStartConfig, Weighted,
};

const WINDOW: Duration = Duration::from_secs(100);

fn endpointer() -> Arc<DefaultEndpointer<u16>> {
    Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ))
}

/// Instances on ports `ports`, with weight `weight(port)`.
fn set(ports: impl IntoIterator<Item = u16>, weight: impl Fn(u16) -> u32) -> Event {
    Event::instances(
        ports
            .into_iter()
            .map(|p| Instance::builder("10.0.0.1", p).weight(weight(p)).build())
            .collect::<Vec<_>>(),
    )
}

fn slow<B: Balancer<u16>>(inner: B, config: SlowStartConfig) -> SlowStart<B, u16> {
    SlowStart::new(inner, config).unwrap().clock(Clock::tokio())
}

/// The share of `picks` picks that went to `port` (each pick's guard is dropped at once).
fn share<B: Balancer<u16>>(lb: &B, port: u16, picks: usize) -> f64 {
    let hits = (0..picks)
        .filter(|_| **lb.pick_with(&Request::new()).unwrap().endpoint() == port)
        .count();
    hits as f64 / picks as f64
}

#[tokio::test(start_paused = true)]
async fn the_first_set_is_not_slow_started() {
    let ep = endpointer();
    ep.apply(set(1..=4, |_| 1));
    let lb = slow(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW));
    for p in 1..=4 {
        assert_eq!(lb.factor(&find(&lb, p)), 1.0);
        assert!((share(&lb, p, 4000) - 0.25).abs() < 1e-9);
    }
    assert_eq!(lb.warming(), 0);

    // Built over an empty endpointer (discovery has not answered yet): the first non-empty
    // set is the first set.
    let ep = endpointer();
    let lb = slow(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW));
    assert!(lb.pick().is_err());
    ep.apply(set(1..=4, |_| 1));
    lb.pick().unwrap();
    assert_eq!(lb.warming(), 0);
    assert_eq!(lb.factor(&find(&lb, 1)), 1.0);
}

/// The share of a new endpoint follows `factor / (n - 1 + factor)` over the window with
/// round robin: the share of its weight scaled by the factor (a rejected turn moves the
/// rotation on).
#[tokio::test(start_paused = true)]
async fn a_new_endpoint_ramps_up_linearly() {
    let ep = endpointer();
    ep.apply(set(1..=9, |_| 1));
    let lb = slow(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW));
    ep.apply(set(1..=10, |_| 1));
    lb.pick().unwrap(); // notices the update: port 10 is first seen now
    assert_eq!(lb.warming(), 1);
    for (step, factor) in [(0, 0.1), (25, 0.25), (25, 0.5), (25, 0.75), (25, 1.0)] {
        tokio::time::advance(Duration::from_secs(step)).await;
        let got = share(&lb, 10, 40_000);
        let want = factor / (9.0 + factor);
        assert!(
            (got - want).abs() < 0.003,
            "{factor}: share {got}, expected {want}"
        );
    }
    assert_eq!(lb.warming(), 0);
}

#[tokio::test(start_paused = true)]
async fn aggression_and_the_floor_shape_the_factor() {
    let ep = endpointer();
    ep.apply(set(1..=3, |_| 1));
    let fast = slow(
        RoundRobin::new(ep.clone()),
        SlowStartConfig::new(WINDOW).aggression(2.0),
    );
    let late = slow(
        RoundRobin::new(ep.clone()),
        SlowStartConfig::new(WINDOW)
            .aggression(0.5)
            .min_weight_percent(0.0),
    );
    let floor = slow(
        RoundRobin::new(ep.clone()),
        SlowStartConfig::new(WINDOW).min_weight_percent(30.0),
    );
    ep.apply(set(1..=4, |_| 1));
    for lb in [&fast, &late, &floor] {
        lb.pick().unwrap();
    }
    let new = find(&fast, 4);
    assert_eq!(late.factor(&new), 0.0, "no floor: nothing at first");
    assert_eq!(floor.factor(&new), 0.3);
    tokio::time::advance(WINDOW / 4).await;
    // (1/4)^(1/2) = 1/2: fast at first.
    assert!(
        (fast.factor(&new) - 0.5).abs() < 1e-9,
        "{}",
        fast.factor(&new)
    );
    assert!((floor.factor(&new) - 0.3).abs() < 1e-9, "the floor holds");
    tokio::time::advance(WINDOW / 4).await;
    // (1/2)^2 = 1/4: slow at first.
    assert!(
        (late.factor(&new) - 0.25).abs() < 1e-9,
        "{}",
        late.factor(&new)
    );
    assert!(
        (floor.factor(&new) - 0.5).abs() < 1e-9,
        "linear above the floor"
    );
    tokio::time::advance(WINDOW / 2).await;
    for lb in [&fast, &late, &floor] {
        assert_eq!(lb.factor(&new), 1.0);
    }
}

/// First-seen times are kept by instance key across updates (a weight change does not
/// restart a ramp); an endpoint that leaves and comes back starts again.
#[tokio::test(start_paused = true)]
async fn first_seen_survives_updates_and_a_return_starts_again() {
    let ep = endpointer();
    ep.apply(set(1..=3, |_| 1));
    let lb = slow(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW));
    ep.apply(set(1..=4, |_| 1));
    lb.pick().unwrap();
    tokio::time::advance(WINDOW / 2).await;
    // Another endpoint joins and every weight changes: port 4 stays half-way.
    ep.apply(set(1..=5, |_| 2));
    lb.pick().unwrap();
    assert!((lb.factor(&find(&lb, 4)) - 0.5).abs() < 1e-9);
    assert_eq!(lb.factor(&find(&lb, 5)), 0.1);
    assert_eq!(lb.factor(&find(&lb, 1)), 1.0);
    // Port 4 leaves and comes back: new again.
    ep.apply(set([1, 2, 3, 5], |_| 2));
    lb.pick().unwrap();
    ep.apply(set(1..=5, |_| 2));
    lb.pick().unwrap();
    assert_eq!(lb.factor(&find(&lb, 4)), 0.1);
    // An empty set in between leaves the record alone.
    tokio::time::advance(WINDOW / 4).await;
    ep.apply(set([], |_| 1));
    assert!(lb.pick().is_err());
    ep.apply(set(1..=5, |_| 2));
    lb.pick().unwrap();
    assert!((lb.factor(&find(&lb, 4)) - 0.25).abs() < 1e-9);
    assert_eq!(lb.factor(&find(&lb, 1)), 1.0, "not new after the empty set");
}

/// With weighted round robin, random and P2C inside, a new endpoint gets about `factor ×`
/// what it gets without slow start.
#[tokio::test(start_paused = true)]
async fn weighted_random_and_p2c_are_slowed_too() {
    let ep = endpointer();
    ep.apply(set(1..=4, |p| p as u32));
    let weighted = slow(Weighted::new(ep.clone()), SlowStartConfig::new(WINDOW));
    let random = slow(Random::new(ep.clone()), SlowStartConfig::new(WINDOW));
    let p2c = slow(
        P2c::pending_requests(ep.clone()),
        SlowStartConfig::new(WINDOW),
    );
    let plain_p2c = P2c::pending_requests(ep.clone());
    // Port 5 joins with weight 5 of 15: a third of the weighted picks without slow start.
    ep.apply(set(1..=5, |p| p as u32));
    for lb in [&weighted as &dyn Balancer<u16>, &random, &p2c, &plain_p2c] {
        lb.pick().unwrap();
    }
    weighted.inner().refresh();
    p2c.inner().refresh();
    plain_p2c.refresh();
    tokio::time::advance(WINDOW / 2).await;
    // Between factor × its share (1/6) and the share of its weight scaled by the factor
    // (2.5 of 12.5): a rejected pick also moves the schedule on.
    let w = share(&weighted, 5, 30_000);
    assert!(
        (0.5 * 5.0 / 15.0 - 0.01..2.5 / 12.5 + 0.01).contains(&w),
        "weighted: {w}"
    );
    let r = share(&random, 5, 30_000);
    assert!((r - 0.5 / 5.0).abs() < 0.01, "random: {r}");
    // P2C (weighted: load ÷ weight, picks released at once): its usual share, halved.
    let base = share(&plain_p2c, 5, 30_000);
    let p = share(&p2c, 5, 30_000);
    assert!(
        (p - 0.5 * base).abs() < 0.02,
        "p2c: {p} with slow start, {base} without"
    );
}

/// Slow start over outlier ejection: an ejected endpoint stays out; the new endpoint still
/// ramps, and the rest share what it does not take.
#[tokio::test(start_paused = true)]
async fn composes_with_outlier_ejection() {
    let ep = endpointer();
    ep.apply(set(1..=4, |_| 1));
    let outlier = Outlier::new(
        RoundRobin::new(ep.clone()),
        OutlierConfig {
            consecutive_failures: 1,
            base_ejection: WINDOW * 10,
            max_ejection: WINDOW * 10,
            ..Default::default()
        },
    )
    .clock(Clock::tokio());
    let lb = slow(outlier, SlowStartConfig::new(WINDOW));
    ep.apply(set(1..=5, |_| 1));
    lb.pick().unwrap();
    // Port 1 fails once: ejected.
    loop {
        let p = lb.pick_with(&Request::new()).unwrap();
        if **p.endpoint() == 1 {
            p.failure();
            break;
        }
        p.success();
    }
    tokio::time::advance(WINDOW / 10 * 3).await;
    let mut counts = [0usize; 6];
    for _ in 0..40_000 {
        counts[**lb.pick_with(&Request::new()).unwrap().endpoint() as usize] += 1;
    }
    assert_eq!(counts[1], 0, "ejected");
    // Four endpoints in the rotation; the new one's turns are kept 30 % of the time: between
    // 0.3 × its share (1/4) and the share of a weight scaled by 0.3 (0.3 / 3.3).
    let new = counts[5] as f64 / 40_000.0;
    assert!(
        (0.3 / 4.0 - 0.01..0.3 / 3.3 + 0.01).contains(&new),
        "new endpoint: {new}"
    );
}

#[test]
fn invalid_options_are_refused() {
    let ep = Arc::new(sd_core::FixedEndpointer::new([(
        Instance::new("10.0.0.1", 1),
        1u16,
    )]));
    let bad = [
        SlowStartConfig::new(Duration::ZERO),
        SlowStartConfig::new(WINDOW).aggression(0.0),
        SlowStartConfig::new(WINDOW).aggression(f64::NAN),
        SlowStartConfig::new(WINDOW).min_weight_percent(101.0),
        SlowStartConfig::new(WINDOW).min_weight_percent(-1.0),
    ];
    for config in bad {
        let err = SlowStart::new(RoundRobin::new(ep.clone()), config).unwrap_err();
        assert!(err.to_string().contains("slow start"), "{err}");
    }
    assert!(SlowStart::new(RoundRobin::new(ep), SlowStartConfig::new(WINDOW)).is_ok());
}
