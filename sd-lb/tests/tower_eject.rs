//! `sd_lb::tower::Eject`: failure ejection through readiness, for tower's own balancers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::poll_fn;
use sd_lb::tower::{Eject, EjectConfig, EjectLayer};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Svc = tower::util::BoxCloneSyncService<bool, &'static str, BoxError>;

/// A service that fails when asked to (`call(true)`).
fn flaky() -> Svc {
    tower::util::BoxCloneSyncService::new(service_fn(|fail: bool| async move {
        if fail {
            Err::<&'static str, BoxError>("refused".into())
        } else {
            Ok("ok")
        }
    }))
}

fn config(n: u32) -> EjectConfig {
    EjectConfig {
        consecutive_failures: n,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
    }
}

/// Whether `poll_ready` is ready right now (registering no lasting interest).
async fn ready_now(svc: &mut Eject<Svc>) -> bool {
    poll_fn(|cx| Poll::Ready(svc.poll_ready(cx).is_ready())).await
}

async fn call(svc: &mut Eject<Svc>, fail: bool) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(fail).await
}

#[tokio::test(start_paused = true)]
async fn ejects_after_consecutive_failures_for_a_growing_time() {
    let mut svc = Eject::new(flaky(), config(3));
    for _ in 0..2 {
        assert!(call(&mut svc, true).await.is_err());
    }
    assert!(!svc.is_ejected(), "two failures of three");
    assert!(ready_now(&mut svc).await);
    assert!(call(&mut svc, true).await.is_err());
    assert!(svc.is_ejected());
    assert!(!ready_now(&mut svc).await, "ejected: unready");

    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(
        !ready_now(&mut svc).await,
        "still ejected before the base time"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ready_now(&mut svc).await, "back after the base time");
    assert!(!svc.is_ejected());

    // The probe fails: ejected again at once, for twice the base time.
    assert!(call(&mut svc, true).await.is_err());
    assert!(
        svc.is_ejected(),
        "one failure after an ejection ejects again"
    );
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(!ready_now(&mut svc).await, "second ejection: 2 × base");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ready_now(&mut svc).await);

    // Third ejection: 3 × base = 30 s, capped at 25 s.
    assert!(call(&mut svc, true).await.is_err());
    tokio::time::advance(Duration::from_secs(24)).await;
    assert!(!ready_now(&mut svc).await);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ready_now(&mut svc).await, "capped at max_ejection");

    // A success resets everything: the next ejection is base time again, after 3 failures.
    assert_eq!(call(&mut svc, false).await.unwrap(), "ok");
    for _ in 0..2 {
        assert!(call(&mut svc, true).await.is_err());
        assert!(!svc.is_ejected(), "the count restarted after a success");
    }
    assert!(call(&mut svc, true).await.is_err());
    assert!(svc.is_ejected());
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        ready_now(&mut svc).await,
        "back to the base time after a success"
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_between_failures_restarts_the_count() {
    let mut svc = Eject::new(flaky(), config(2));
    for _ in 0..5 {
        assert!(call(&mut svc, true).await.is_err());
        assert!(call(&mut svc, false).await.is_ok());
    }
    assert!(!svc.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn zero_failures_never_ejects() {
    let mut svc = Eject::new(flaky(), config(0));
    for _ in 0..50 {
        assert!(call(&mut svc, true).await.is_err());
    }
    assert!(!svc.is_ejected());
    assert!(ready_now(&mut svc).await);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_state_and_a_waiter_is_woken_when_the_ejection_ends() {
    let mut svc = EjectLayer::new(config(1)).layer(flaky());
    let mut other = svc.clone();
    assert!(call(&mut svc, true).await.is_err());
    assert!(other.is_ejected(), "a clone sees the ejection");
    // A task waiting for readiness is woken by the ejection's end, with no one polling it
    // in between (a balancer parks unready endpoints and waits for their wake-up).
    let woken = Arc::new(AtomicBool::new(false));
    let w = woken.clone();
    let waiter = tokio::spawn(async move {
        other.ready().await.unwrap();
        w.store(true, Ordering::SeqCst);
    });
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!woken.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_secs(2)).await;
    waiter.await.unwrap();
    assert!(woken.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_completing_counts_nothing() {
    let slow = tower::util::BoxCloneSyncService::new(service_fn(|_: bool| async {
        std::future::pending::<Result<&'static str, BoxError>>().await
    }));
    let mut svc = Eject::new(slow, config(1));
    for _ in 0..3 {
        let fut = svc.ready().await.unwrap().call(true);
        assert!(tokio::time::timeout(Duration::from_millis(10), fut)
            .await
            .is_err());
    }
    assert!(!svc.is_ejected());
}

/// tower's P2C over two endpoints, one of them dead (fails fast): without `Eject` peak EWMA
/// keeps choosing the dead one (its failures are its fastest answers); with it, after the
/// ejection every call goes to the live one.
#[tokio::test(start_paused = true)]
async fn tower_p2c_stops_picking_an_ejected_endpoint() {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PeakEwma};

    let calls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let endpoint = |i: usize, dead: bool| {
        let calls = calls[i].clone();
        let svc = tower::util::BoxCloneSyncService::new(service_fn(move |_: ()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if dead {
                    Err::<usize, BoxError>("connection refused".into())
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(i)
                }
            }
        }));
        PeakEwma::new(
            Eject::new(svc, config(2)),
            Duration::from_millis(5),
            Duration::from_secs(10).as_nanos() as f64,
            CompleteOnResponse::default(),
        )
    };
    let mut balance = Balance::new(ServiceList::new(vec![
        endpoint(0, true),
        endpoint(1, false),
    ]));
    let mut failures = 0;
    for _ in 0..200 {
        if balance.ready().await.unwrap().call(()).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "the dead endpoint failed exactly twice, then was ejected"
    );
    assert_eq!(calls[0].load(Ordering::SeqCst), 2);
    assert_eq!(calls[1].load(Ordering::SeqCst), 198);
}

#[tokio::test(start_paused = true)]
async fn a_handle_reports_ejection_and_keeps_nothing_alive() {
    let mut svc = Eject::new(flaky(), config(1));
    let handle = svc.handle();
    assert!(!handle.is_ejected() && !handle.is_gone());
    assert!(call(&mut svc, true).await.is_err());
    assert!(handle.is_ejected());
    let clone = svc.clone();
    drop(svc);
    assert!(!handle.is_gone(), "a clone is left");
    drop(clone);
    assert!(handle.is_gone());
    assert!(!handle.is_ejected(), "nothing to eject any more");
}

/// The probe slot is given back when its holder goes away without an outcome: a clone told
/// "ready" and dropped, or a probe call dropped before it completed. Otherwise the endpoint
/// would stay unready for ever.
#[tokio::test(start_paused = true)]
async fn a_probe_that_goes_away_frees_the_slot() {
    let mut svc = Eject::new(flaky(), config(1));
    assert!(call(&mut svc, true).await.is_err());
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut holder = svc.clone();
    assert!(ready_now(&mut holder).await, "holder takes the probe slot");
    assert!(!ready_now(&mut svc).await, "one probe at a time");
    drop(holder);
    assert!(
        ready_now(&mut svc).await,
        "the slot came back with the holder's drop"
    );
    // A probe call dropped before its outcome.
    let fut = svc.call(false);
    let mut other = svc.clone();
    assert!(!ready_now(&mut other).await, "the probe is in flight");
    drop(fut);
    assert!(
        ready_now(&mut other).await,
        "a dropped probe frees the slot"
    );
    // Its outcome decides: a success ends probation for everyone.
    assert!(other.call(false).await.is_ok());
    assert!(ready_now(&mut svc).await && ready_now(&mut other).await);
}
