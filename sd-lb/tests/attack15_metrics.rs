//! Attack on issue 15's balancer metrics: counts that do not match what happened.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sd_core::{
    Backoff, BoxError, Changes, Endpoint, Endpointer, Endpoints, Error, FixedEndpointer, Instance,
    Snapshot, Status,
};
use sd_lb::{Balancer, BalancerMetrics, Metered, Request, Retry, RoundRobin};

fn metrics() -> (BalancerMetrics, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let m = metrics::with_local_recorder(&recorder, || BalancerMetrics::new("test", "web"));
    (m, snapshotter)
}

fn counter(s: &Snapshotter, name: &str) -> u64 {
    s.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..n).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ))
}

/// docs/OBSERVABILITY.md: `sdkit_balancer_retries_total` counts "attempts after the first".
/// When the overall timeout ends the call during the backoff before attempt 2, attempt 2
/// never happens, yet it is counted (retry.rs counts before sleeping).
#[tokio::test(start_paused = true)]
async fn a_retry_cut_off_by_the_overall_timeout_is_not_an_attempt() {
    let (m, s) = metrics();
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .max_attempts(5)
        .backoff(Backoff::new(
            Duration::from_secs(100),
            Duration::from_secs(100),
        ))
        .timeout(Duration::from_secs(1))
        .metrics(m);
    let attempts = AtomicUsize::new(0);
    let r = retry
        .call(|_: Endpoint<u16>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("down".into()) }
        })
        .await;
    assert!(r.is_err());
    let made = attempts.load(Ordering::SeqCst);
    assert_eq!(made, 1, "one attempt before the timeout");
    assert_eq!(
        counter(&s, "sdkit_balancer_retries_total"),
        (made - 1) as u64,
        "retries_total counts a retry that never ran"
    );
}

/// An endpointer whose discovery failed (go-kit LB-1: picks return LbError::Discovery).
struct Failing {
    state: Arc<Endpoints<u16>>,
    tx: tokio::sync::watch::Sender<u64>,
}

impl Endpointer<u16> for Failing {
    fn endpoints(&self) -> Snapshot<u16> {
        Snapshot::new(self.state.clone())
    }
    fn changes(&self) -> Changes {
        Changes::new(self.tx.subscribe())
    }
}

/// A pick through `Metered` that fails because discovery failed (no endpoint to give) is
/// counted nowhere: neither a pick nor a no-endpoint error. The series an operator alerts on
/// ("requests found no endpoint") stays at 0 during a registry outage that emptied the set.
#[test]
fn a_pick_failing_on_a_discovery_error_is_counted_somewhere() {
    let (m, s) = metrics();
    let (tx, _rx) = tokio::sync::watch::channel(1);
    let failing = Arc::new(Failing {
        state: Arc::new(Endpoints::new(
            Vec::new(),
            Status::Failed(Error::unavailable("consul", "connection refused")),
            1,
        )),
        tx,
    });
    let lb = Metered::new(RoundRobin::new(failing), m);
    for _ in 0..10 {
        assert!(lb.pick_with(&Request::new()).is_err());
    }
    // One snapshot: DebuggingRecorder's snapshot resets the counters it reads.
    let all = s.snapshot().into_vec();
    let read = |name: &str| -> u64 {
        all.iter()
            .filter(|(k, _, _, _)| k.key().name() == name)
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    let picks = read("sdkit_balancer_picks_total");
    let none = read("sdkit_balancer_no_endpoints_total");
    let errors = read("sdkit_balancer_pick_errors_total");
    assert_eq!(
        (picks, none, errors),
        (0, 0, 10),
        "10 picks failing on the discovery error: picks_total={picks} \
         no_endpoints_total={none} pick_errors_total={errors}"
    );
}
