//! Balancer metrics (feature `metrics`): picks and no-endpoint picks through `Metered`,
//! retries and retry exhaustion through `Retry::metrics`, ejections through
//! `Outlier::metrics`, each read back from a `DebuggingRecorder` of the test's own (the
//! handles are registered once, under `metrics::with_local_recorder`).
#![cfg(feature = "metrics")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixed;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sd_core::{BoxError, Endpoint, FixedEndpointer, Instance};
use sd_lb::{
    Balancer, BalancerMetrics, Metered, Outlier, OutlierConfig, Request, Retry, RoundRobin,
    TpsBudget,
};

/// Fresh counters for backend `test`, service `web`, on a recorder of this test's own.
fn metrics() -> (BalancerMetrics, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let m = metrics::with_local_recorder(&recorder, || BalancerMetrics::new("test", "web"));
    (m, snapshotter)
}

/// Every counter in one snapshot, as `name{extra label values}` → value.
fn counters(s: &Snapshotter) -> Vec<(String, u64)> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            assert!(labels.contains(&("backend", "test")) && labels.contains(&("service", "web")));
            let extra: Vec<_> = labels
                .iter()
                .filter(|(k, _)| *k != "backend" && *k != "service")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let name = if extra.is_empty() {
                key.name().to_string()
            } else {
                format!("{}{{{}}}", key.name(), extra.join(","))
            };
            match value {
                DebugValue::Counter(n) => Some((name, n)),
                _ => None,
            }
        })
        .collect()
}

fn get(all: &[(String, u64)], name: &str) -> u64 {
    all.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not recorded: {all:?}"))
        .1
}

#[test]
fn metered_counts_picks_and_picks_without_endpoints() {
    let (m, s) = metrics();
    let lb = Metered::new(RoundRobin::new(fixed(3)), m.clone());
    for _ in 0..10 {
        lb.pick().unwrap();
    }
    for _ in 0..5 {
        lb.pick_with(&Request::new()).unwrap().success();
    }
    let empty = Metered::new(
        RoundRobin::new(Arc::new(FixedEndpointer::<u16>::new(
            Vec::<(Instance, u16)>::new(),
        ))),
        m,
    );
    assert!(empty.pick().is_err());
    assert!(empty.pick_with(&Request::new()).is_err());
    let all = counters(&s);
    assert_eq!(get(&all, "sdkit_balancer_picks_total"), 15);
    assert_eq!(get(&all, "sdkit_balancer_no_endpoints_total"), 2);
}

#[tokio::test]
async fn retry_counts_retries_and_exhaustion() {
    let (m, s) = metrics();
    let retry = Retry::new(Metered::new(RoundRobin::new(fixed(3)), m.clone()))
        .max_attempts(3)
        .metrics(m.clone());
    // Every attempt fails: two retries, then exhausted.
    let failed = retry
        .call(|_: Endpoint<u16>| async { Err::<(), BoxError>("down".into()) })
        .await;
    assert!(failed.is_err());
    // The first attempt fails, the second succeeds: one retry, not exhausted.
    let mut first = true;
    retry
        .call(|_: Endpoint<u16>| {
            let fail = std::mem::replace(&mut first, false);
            async move {
                if fail {
                    Err::<(), BoxError>("once".into())
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    // An empty budget refuses the retry.
    let budgeted = Retry::new(RoundRobin::new(fixed(3)))
        .budget(Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.0)))
        .metrics(m);
    assert!(budgeted
        .call(|_: Endpoint<u16>| async { Err::<(), BoxError>("down".into()) })
        .await
        .is_err());
    let all = counters(&s);
    assert_eq!(get(&all, "sdkit_balancer_retries_total"), 3);
    assert_eq!(get(&all, "sdkit_balancer_picks_total"), 5);
    assert_eq!(
        get(
            &all,
            "sdkit_balancer_retries_exhausted_total{reason=attempts}"
        ),
        1
    );
    assert_eq!(
        get(
            &all,
            "sdkit_balancer_retries_exhausted_total{reason=budget}"
        ),
        1
    );
}

#[test]
fn outlier_counts_ejections() {
    let (m, s) = metrics();
    let config = OutlierConfig {
        consecutive_failures: 2,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(60),
        max_ejected_share: 0.5,
    };
    let lb = Outlier::new(RoundRobin::new(fixed(4)), config).metrics(m);
    // Endpoint 0 fails every time it is picked until it is ejected.
    let mut picks = 0;
    while lb.ejected_count() == 0 {
        picks += 1;
        assert!(picks < 100, "never ejected");
        let p = lb.pick_with(&Request::new()).unwrap();
        if **p.endpoint() == 0 {
            p.failure()
        } else {
            p.success()
        }
    }
    assert_eq!(get(&counters(&s), "sdkit_balancer_ejections_total"), 1);
}
