//! Second attack on issue 15: `sd_lb::tower::Eject` (commit 1179f94).
//!
//! Run: `CARGO_INCREMENTAL=0 cargo test -p sd-lb --test attack2_eject`
//!
//! - `after_an_ejection_only_one_probe_is_admitted_until_its_outcome` (failed before the fix in ee5b0e2; a regression test now): the
//!   docs say that after the ejection time "the next call is a probe (one more failure ejects
//!   it again, for longer)", "the way linkerd's failure accrual does" (linkerd admits one
//!   request in probation). `Eject::poll_ready` (sd-lb/src/tower/eject.rs, the `Some(t)` arm
//!   of `poll_ready`) clears the ejection and stays ready for every caller until the first
//!   outcome comes back, so a burst is sent to a still-dead endpoint.
//! - `tower_balance_sends_a_burst_to_a_dead_endpoint_after_its_ejection` (failed before the fix in ee5b0e2; a regression test now): the
//!   same through `tower::balance::p2c::Balance` + `PeakEwma`, as in examples/grpc's tower
//!   build: after the dead endpoint's ejection ends, every call dispatched before the first
//!   failure returns goes to it and fails.
//! - `a_call_in_flight_at_the_ejection_re_ejects_after_it_ends` (failed before the fix in ee5b0e2; a regression test now): eject.rs says
//!   "Calls already in flight when the endpoint was ejected do not extend the ejection", and
//!   the docs that after the ejection "the next outcome decides"; a call sent *before* the
//!   ejection that fails after the ejection ended ejects the endpoint again, for twice as
//!   long, with no call ever sent after the ejection.
//! - `an_ejection_time_near_instants_limit_does_not_panic` (failed before the fix in ee5b0e2; a regression test now): an ejection time
//!   that `Instant::checked_add` accepts but that lies within 1 ms of `Instant`'s limit is
//!   handed to `tokio::time::sleep_until`, whose timer adds 999 999 ns and panics
//!   ("overflow when adding duration to instant") inside `poll_ready` — inside a balancer or
//!   a Buffer's worker. `far_future()` only covers `checked_add` returning `None`.
//! - `duration_max_config_is_for_ever_without_a_panic`, `balance_with_every_endpoint_ejected_wakes_when_the_first_returns`
//!   (PASS: the code holds up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::poll_fn;
use sd_lb::tower::{Eject, EjectConfig};
use tower::{service_fn, BoxError, Service, ServiceExt};

type Svc = tower::util::BoxCloneSyncService<(), &'static str, BoxError>;

/// A dead endpoint: every call fails after `after` (a refused or timed-out connect).
fn dead(after: Duration, calls: Arc<AtomicUsize>) -> Svc {
    tower::util::BoxCloneSyncService::new(service_fn(move |_: ()| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(after).await;
            Err::<&'static str, BoxError>("connection refused".into())
        }
    }))
}

fn config(n: u32) -> EjectConfig {
    EjectConfig {
        consecutive_failures: n,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
    }
}

async fn ready_now<S: Service<()>>(svc: &mut S) -> bool {
    poll_fn(|cx| Poll::Ready(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))))).await
}

#[tokio::test(start_paused = true)]
async fn after_an_ejection_only_one_probe_is_admitted_until_its_outcome() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = Eject::new(dead(Duration::from_millis(50), calls.clone()), config(1));
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    assert!(svc.is_ejected());
    tokio::time::advance(Duration::from_secs(10)).await;

    // The probe: sent, its outcome not known yet.
    assert!(ready_now(&mut svc).await, "ready again after the ejection");
    let probe = tokio::spawn(svc.call(()));
    // Others ask while the probe is in flight.
    let mut admitted = Vec::new();
    for _ in 0..10 {
        if ready_now(&mut svc).await {
            admitted.push(tokio::spawn(svc.call(())));
        }
    }
    let n = admitted.len();
    let mut failed = 0;
    for f in admitted {
        if f.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert!(probe.await.unwrap().is_err());
    assert_eq!(
        n, 0,
        "while the probe was in flight Eject admitted {n} more calls to the dead endpoint \
         ({failed} of them failed): not one probe"
    );
}

#[tokio::test(start_paused = true)]
async fn tower_balance_sends_a_burst_to_a_dead_endpoint_after_its_ejection() {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PeakEwma};

    let dead_calls = Arc::new(AtomicUsize::new(0));
    let live_calls = Arc::new(AtomicUsize::new(0));
    let live = {
        let calls = live_calls.clone();
        tower::util::BoxCloneSyncService::new(service_fn(move |_: ()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<&'static str, BoxError>("ok")
            }
        }))
    };
    let ewma = |s: Svc| {
        PeakEwma::new(
            Eject::new(s, config(1)),
            Duration::from_millis(20),
            Duration::from_secs(10).as_nanos() as f64,
            CompleteOnResponse::default(),
        )
    };
    let mut balance = Balance::new(ServiceList::new(vec![
        ewma(dead(Duration::from_millis(5), dead_calls.clone())),
        ewma(live),
    ]));
    // Sequential calls until the dead endpoint has failed once and is ejected.
    for _ in 0..50 {
        let _ = balance.ready().await.unwrap().call(()).await;
        if dead_calls.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    assert_eq!(dead_calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(11)).await;

    // A burst of 20 concurrent calls, dispatched as a Buffer's worker does (poll_ready,
    // call, next), after the ejection ended.
    let before = dead_calls.load(Ordering::SeqCst);
    let mut futs = Vec::new();
    for _ in 0..20 {
        let f = balance.ready().await.unwrap().call(());
        futs.push(tokio::spawn(f));
    }
    let mut failed = 0;
    for f in futs {
        if f.await.unwrap().is_err() {
            failed += 1;
        }
    }
    let probes = dead_calls.load(Ordering::SeqCst) - before;
    assert!(
        failed <= 1,
        "after the ejection {probes} calls of a burst of 20 went to the dead endpoint and \
         {failed} failed (one probe expected)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_at_the_ejection_re_ejects_after_it_ends() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Call A fails after 15 s (a slow timeout); the next ones after 1 ms.
    let slow_first = {
        let calls = calls.clone();
        tower::util::BoxCloneSyncService::new(service_fn(move |_: ()| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let d = if n == 0 { 15_000 } else { 1 };
                tokio::time::sleep(Duration::from_millis(d)).await;
                Err::<&'static str, BoxError>("refused".into())
            }
        }))
    };
    let mut svc = Eject::new(slow_first, config(2));
    let a = tokio::spawn(svc.ready().await.unwrap().call(())); // in flight
    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
    }
    assert!(svc.is_ejected(), "two fast failures ejected it (for 10 s)");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(ready_now(&mut svc).await, "the ejection is over");
    // A, sent before the ejection, now fails. No call was sent after the ejection.
    assert!(a.await.unwrap().is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        !svc.is_ejected(),
        "a call in flight when the endpoint was ejected, failing after the ejection ended, \
         ejected it again (for 2 × base) without any probe"
    );
}

/// The largest `d` with `now.checked_add(d)` defined (the paused clock does not move).
fn largest_addable(now: tokio::time::Instant) -> Duration {
    let (mut lo, mut hi) = (0u128, u64::MAX as u128 * 1_000_000_000 + 999_999_999);
    let dur = |n: u128| Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if now.checked_add(dur(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    dur(lo)
}

#[tokio::test(start_paused = true)]
async fn an_ejection_time_near_instants_limit_does_not_panic() {
    let d = largest_addable(tokio::time::Instant::now());
    let config = EjectConfig {
        consecutive_failures: 1,
        base_ejection: d,
        max_ejection: d,
    };
    let svc = Eject::new(dead(Duration::ZERO, Arc::default()), config);
    let outcome = tokio::spawn(async move {
        let mut svc = svc;
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
        assert!(svc.is_ejected());
        // A balancer polls it for readiness.
        ready_now(&mut svc).await
    })
    .await;
    match outcome {
        Ok(ready) => assert!(!ready, "ejected for ever: unready"),
        Err(e) => panic!(
            "poll_ready panicked with an ejection time of {d:?}: {:?}",
            e.into_panic().downcast_ref::<String>()
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn duration_max_config_is_for_ever_without_a_panic() {
    let config = EjectConfig {
        consecutive_failures: 1,
        base_ejection: Duration::MAX,
        max_ejection: Duration::MAX,
    };
    let mut svc = Eject::new(dead(Duration::ZERO, Arc::default()), config);
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    assert!(!ready_now(&mut svc).await);
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    assert!(svc.is_ejected());
    assert!(!ready_now(&mut svc).await);
}

#[tokio::test(start_paused = true)]
async fn balance_with_every_endpoint_ejected_wakes_when_the_first_returns() {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PendingRequests};
    let calls = Arc::new(AtomicUsize::new(0));
    let ep = || {
        PendingRequests::new(
            Eject::new(dead(Duration::from_millis(1), calls.clone()), config(1)),
            CompleteOnResponse::default(),
        )
    };
    let mut balance = Balance::new(ServiceList::new(vec![ep(), ep()]));
    for _ in 0..2 {
        let _ = balance.ready().await.unwrap().call(()).await;
    }
    let start = tokio::time::Instant::now();
    // Both ejected: the next readiness comes when the first ejection ends (10 s).
    tokio::time::timeout(Duration::from_secs(30), balance.ready())
        .await
        .expect("woken when an ejection ended")
        .unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
}
