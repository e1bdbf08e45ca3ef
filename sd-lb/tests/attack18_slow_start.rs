//! Attack on slow start (issue 18): `SlowStart`.
//!
//! Finding: "an endpoint that leaves and comes back is new again" holds only if a pick
//! happens while it is away. A restarted instance (removed, then re-added with a new,
//! cold endpoint value) that no pick saw missing keeps its old first-seen time and gets
//! full traffic at once: `a_restarted_endpoint_is_new_again_without_a_pick_in_between`.
//!
//! Held up: the factor stays in `[floor, 1]` for extreme aggressions and a huge window;
//! invalid options are refused; an empty first set then a set makes the latter the first
//! set; the ramp and the share over round robin.

use std::sync::Arc;
use std::time::Duration;

use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::{Balancer, Clock, RoundRobin, SlowStart, SlowStartConfig};

const WINDOW: Duration = Duration::from_secs(60);

fn set(ports: impl IntoIterator<Item = u16>) -> Event {
    Event::instances(
        ports
            .into_iter()
            .map(|p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    )
}

type Ep = Arc<DefaultEndpointer<u16>>;

fn endpointer() -> Ep {
    Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ))
}

fn find<B: Balancer<u16>>(lb: &B, v: u16) -> sd_core::Endpoint<u16> {
    lb.snapshot()
        .all()
        .iter()
        .find(|e| ***e == v)
        .unwrap()
        .clone()
}

/// docs/BALANCERS.md: "an endpoint that leaves and comes back is new again". Port 4 joins,
/// warms up fully, then its instance restarts: discovery removes it and adds it back (a new
/// endpoint value: the factory made it again, the process behind it is cold). No pick
/// happens in between (a client idle for a moment). `slow_start.rs` `Book::update` only
/// runs on a pick and keys first-seen times by `(addr, id)`, so it never sees the absence
/// and keeps the old time: factor 1.0 at once.
#[tokio::test(start_paused = true)]
async fn a_restarted_endpoint_is_new_again_without_a_pick_in_between() {
    let ep = endpointer();
    ep.apply(set(1..=3));
    let lb = SlowStart::new(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW))
        .unwrap()
        .clock(Clock::tokio());
    lb.pick().unwrap();
    ep.apply(set(1..=4));
    lb.pick().unwrap();
    assert_eq!(lb.factor(&find(&lb, 4)), 0.1);
    tokio::time::advance(WINDOW).await;
    lb.pick().unwrap();
    assert_eq!(lb.factor(&find(&lb, 4)), 1.0);
    let before = find(&lb, 4);
    // The instance restarts: out, then back in.
    ep.apply(set(1..=3));
    ep.apply(set(1..=4));
    let after = find(&lb, 4);
    assert!(
        !sd_core::Endpoint::same_value(&before, &after),
        "a new endpoint value"
    );
    lb.pick().unwrap();
    assert_eq!(
        lb.factor(&after),
        0.1,
        "the restarted endpoint is not slow-started (warming: {})",
        lb.warming()
    );
}

/// The same with a pick while it is away: new again (the documented case).
#[tokio::test(start_paused = true)]
async fn a_restarted_endpoint_with_a_pick_in_between_is_new_again() {
    let ep = endpointer();
    ep.apply(set(1..=3));
    let lb = SlowStart::new(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW))
        .unwrap()
        .clock(Clock::tokio());
    lb.pick().unwrap();
    ep.apply(set(1..=4));
    lb.pick().unwrap();
    tokio::time::advance(WINDOW).await;
    lb.pick().unwrap();
    ep.apply(set(1..=3));
    lb.pick().unwrap();
    ep.apply(set(1..=4));
    lb.pick().unwrap();
    assert_eq!(lb.factor(&find(&lb, 4)), 0.1);
}

/// Extreme but valid options keep the factor in `[floor, 1]` and finite, at every point of
/// the window; invalid ones are refused.
#[tokio::test(start_paused = true)]
async fn extreme_options_keep_the_factor_in_range() {
    for (window, aggression, floor) in [
        (Duration::from_nanos(1), 1.0, 10.0),
        (Duration::MAX, 1.0, 10.0),
        (WINDOW, f64::MIN_POSITIVE, 0.0),
        (WINDOW, 1e-300, 10.0),
        (WINDOW, f64::MAX, 0.0),
        (WINDOW, 5e-324, 0.0),
        (WINDOW, 1.0, 100.0),
        (WINDOW, 1.0, -0.0),
    ] {
        let ep = endpointer();
        ep.apply(set(1..=3));
        let cfg = SlowStartConfig::new(window)
            .aggression(aggression)
            .min_weight_percent(floor);
        let lb = SlowStart::new(RoundRobin::new(ep.clone()), cfg)
            .unwrap()
            .clock(Clock::tokio());
        lb.pick().unwrap();
        ep.apply(set(1..=4));
        lb.pick().unwrap();
        let new = find(&lb, 4);
        for _ in 0..12 {
            let f = lb.factor(&new);
            assert!(
                f.is_finite() && f >= floor / 100.0 && f <= 1.0,
                "{window:?} {aggression} {floor}: factor {f}"
            );
            for _ in 0..20 {
                lb.pick().unwrap();
            }
            tokio::time::advance(WINDOW / 10).await;
        }
    }
    for bad in [
        SlowStartConfig::new(Duration::ZERO),
        SlowStartConfig::new(WINDOW).aggression(0.0),
        SlowStartConfig::new(WINDOW).aggression(-1.0),
        SlowStartConfig::new(WINDOW).aggression(f64::NAN),
        SlowStartConfig::new(WINDOW).aggression(f64::INFINITY),
        SlowStartConfig::new(WINDOW).min_weight_percent(f64::NAN),
        SlowStartConfig::new(WINDOW).min_weight_percent(100.000_001),
        SlowStartConfig::new(WINDOW).min_weight_percent(-1.0),
    ] {
        assert!(
            SlowStart::new(RoundRobin::new(endpointer()), bad).is_err(),
            "{bad:?} accepted"
        );
    }
}

/// Built over an empty set: the first non-empty set is not slow-started; a later addition
/// is.
#[tokio::test(start_paused = true)]
async fn an_empty_first_set_then_the_first_real_set() {
    let ep = endpointer();
    let lb = SlowStart::new(RoundRobin::new(ep.clone()), SlowStartConfig::new(WINDOW))
        .unwrap()
        .clock(Clock::tokio());
    assert!(lb.pick().is_err());
    ep.apply(set([]));
    assert!(lb.pick().is_err());
    ep.apply(set(1..=3));
    lb.pick().unwrap();
    assert_eq!(lb.warming(), 0);
    ep.apply(set(1..=4));
    lb.pick().unwrap();
    assert_eq!(lb.warming(), 1);
}
