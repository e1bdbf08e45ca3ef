//! Panic mode with outlier ejection: when fewer than the panic threshold of the endpoints
//! are healthy (passing and not ejected), the ejected endpoints serve again, so the few
//! healthy ones are not overloaded; below the ejection cap, or with panic mode off, the
//! ejected ones stay out. Time is tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use sd_core::{FixedEndpointer, Health, Instance};
use sd_lb::{Balancer, Clock, Outlier, OutlierConfig, PanicThreshold, Request, RoundRobin};

/// Ten endpoints `0..10`; those in `critical` fail their health checks.
fn ten(critical: &[u16]) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new((0..10).map(|i| {
        let h = if critical.contains(&i) {
            Health::Critical
        } else {
            Health::Passing
        };
        (Instance::builder("10.0.0.1", 1000 + i).health(h).build(), i)
    })))
}

fn ejecting<B: Balancer<u16> + 'static>(inner: B) -> Outlier<B, u16> {
    Outlier::new(
        inner,
        OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(60),
            max_ejection: Duration::from_secs(60),
            max_ejected_share: 0.5,
        },
    )
    .clock(Clock::tokio())
}

/// Fails one request on each endpoint of `bad` (picked in turn).
fn fail_once<B: Balancer<u16>>(lb: &B, bad: &[u16]) {
    for &b in bad {
        for _ in 0..100 {
            let p = lb.pick_with(&Request::new()).unwrap();
            if **p.endpoint() == b {
                p.failure();
                break;
            }
            p.success();
        }
    }
}

/// Picks per endpoint over `n` picks.
fn spread<B: Balancer<u16>>(lb: &B, n: usize) -> [usize; 10] {
    let mut c = [0usize; 10];
    for _ in 0..n {
        c[**lb.pick_with(&Request::new()).unwrap().endpoint() as usize] += 1;
    }
    c
}

/// `c` is zero exactly where `want` is, and elsewhere within 25 % of `want` (an ejected
/// endpoint's turn is redrawn at random among the others).
fn assert_near(c: [usize; 10], want: [usize; 10]) {
    for (got, want) in c.iter().zip(want) {
        let ok = if want == 0 {
            *got == 0
        } else {
            (*got as f64 - want as f64).abs() <= 0.25 * want as f64
        };
        assert!(ok, "{c:?}, expected about {want:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn ejections_on_top_of_failing_health_checks_trigger_panic_mode() {
    // 4 of 10 critical: 6 passing (60 %, above the default 50 %).
    let lb = ejecting(RoundRobin::new(ten(&[0, 1, 2, 3])));
    fail_once(&lb, &[4]);
    assert_eq!(lb.ejected_count(), 1);
    // 5 healthy of 10: not below 50 %; endpoint 4 stays out, the other five share.
    let c = spread(&lb, 1000);
    assert_near(c, [0, 0, 0, 0, 0, 200, 200, 200, 200, 200]);
    fail_once(&lb, &[5]);
    assert_eq!(lb.ejected_count(), 2);
    // 4 healthy of 10 (40 %): panic. The ejected endpoints serve again (among the passing
    // six the round robin prefers): each of the six gets 1/6 instead of 1/4.
    let c = spread(&lb, 1200);
    assert_near(c, [0, 0, 0, 0, 200, 200, 200, 200, 200, 200]);
    // The ejections end: still 6 of 10 passing, no panic, everything as before.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(lb.ejected_count(), 0);
    let c = spread(&lb, 1200);
    assert_near(c, [0, 0, 0, 0, 200, 200, 200, 200, 200, 200]);
}

#[tokio::test(start_paused = true)]
async fn with_panic_mode_off_the_ejected_stay_out() {
    let inner = RoundRobin::new(ten(&[0, 1, 2, 3])).with_panic_threshold(PanicThreshold::OFF);
    let lb = ejecting(inner);
    assert_eq!(lb.panic_threshold(), PanicThreshold::OFF);
    fail_once(&lb, &[4, 5]);
    assert_eq!(lb.ejected_count(), 2);
    let c = spread(&lb, 1000);
    assert_near(c, [0, 0, 0, 0, 0, 0, 250, 250, 250, 250]);
}

#[tokio::test(start_paused = true)]
async fn ejections_alone_stay_under_the_cap_and_never_panic() {
    // Every endpoint passes; half of them fail. The cap (50 %) stops ejection at five, which
    // leaves 50 % healthy: no panic, the five ejected stay out.
    let lb = ejecting(RoundRobin::new(ten(&[])));
    fail_once(&lb, &[0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(lb.ejected_count(), 5);
    let c = spread(&lb, 1000);
    assert_eq!(c[..5], [0, 0, 0, 0, 0]);
    assert!(c[5..].iter().all(|&n| n > 0), "{c:?}");
}
