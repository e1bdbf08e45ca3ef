//! `RefuseStale` (issue 19): picks fail with a clear error once the endpoints are stale for
//! longer than the limit, and succeed again when the registry is back. Time is paused.

use std::sync::Arc;
use std::time::Duration;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Instance, InstanceCache, StaleReason,
};
use sd_lb::{Balancer, LbError, P2c, RefuseStale, RoundRobin};

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.addr().to_string())
}

async fn settle<E: Send + Sync + 'static>(ep: &DefaultEndpointer<E>, after: u64) {
    let mut changes = ep.changes();
    while ep.endpoints().version() <= after {
        assert!(changes.changed().await);
    }
}

#[tokio::test(start_paused = true)]
async fn picks_fail_when_stale_beyond_the_limit_and_recover() {
    let cache = InstanceCache::new();
    cache.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let ep = Arc::new(DefaultEndpointer::new(&cache, factory));
    let rr = RefuseStale::new(RoundRobin::new(ep.clone()), Duration::from_secs(10));
    let p2c = RefuseStale::new(P2c::pending_requests(ep.clone()), Duration::from_secs(10));

    // Fresh data never ages out, however long it stays unchanged.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(rr.pick().is_ok());

    let v = ep.endpoints().version();
    cache.update(Event::Error(Error::unavailable("test", "down")));
    settle(&ep, v).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        rr.pick().is_ok(),
        "stale for exactly the limit: still served"
    );
    assert!(p2c.pick_with(&Default::default()).is_ok());

    tokio::time::advance(Duration::from_secs(1)).await;
    let err = rr.pick().unwrap_err();
    match &err {
        LbError::Stale { reason, age, max } => {
            assert_eq!(*reason, StaleReason::Error);
            assert_eq!(*age, Duration::from_secs(11));
            assert_eq!(*max, Duration::from_secs(10));
        }
        other => panic!("expected a stale error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("stale (error)") && msg.contains("11s"),
        "{msg}"
    );
    assert!(matches!(
        p2c.pick_with(&Default::default()),
        Err(LbError::Stale { .. })
    ));
    // The inner balancer alone still serves the last known good endpoint.
    assert!(rr.inner().pick().is_ok());

    let v = ep.endpoints().version();
    cache.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    settle(&ep, v).await;
    assert_eq!(rr.pick().unwrap().as_str(), "10.0.0.1:80");
    ep.close().await;
}

/// A snapshot that serves nothing gets the inner balancer's own error (LB-1), not a stale
/// error: after invalidation, reads fail with the discovery error.
#[tokio::test(start_paused = true)]
async fn failed_snapshots_keep_the_discovery_error() {
    let cache = InstanceCache::new();
    cache.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let ep = Arc::new(
        DefaultEndpointer::builder(&cache, factory)
            .invalidate_on_error(Duration::ZERO)
            .build(),
    );
    let lb = RefuseStale::new(RoundRobin::new(ep.clone()), Duration::ZERO);
    let v = ep.endpoints().version();
    cache.update(Event::Error(Error::unavailable("test", "down")));
    settle(&ep, v).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(ep.endpoints().is_stale());
    assert!(
        matches!(lb.pick(), Err(LbError::Discovery(_))),
        "{:?}",
        lb.pick()
    );
    ep.close().await;
}
