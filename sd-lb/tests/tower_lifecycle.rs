//! From the review of issue 9, item 16 (the tower integration) under drops and cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sd_core::{BoxError, DefaultEndpointer, Event, Factory, Instance, InstanceCache};
use sd_lb::tower::{Balanced, Discover};
use sd_lb::{Balancer, Outlier, OutlierConfig, P2c};
use tower::discover::Change;
use tower::{service_fn, Service, ServiceExt};

struct Counting(Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Factory<u16> for Counting {
    fn make(&self, i: &Instance) -> Result<u16, BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(i.port())
    }
    fn close(&self, _: &Instance, _: &u16) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

fn set(ports: &[u16]) -> Event {
    Event::instances(
        ports
            .iter()
            .map(|&p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    )
}

/// Closing the endpointer under a `Discover` removes every service, yields `Err(Stopped)`
/// once and ends the stream; a `Discover` made
/// with `from_instancer` owns its endpointer and closes every endpoint once when dropped
/// mid-wait. Passes.
#[tokio::test]
async fn discover_ends_on_close_and_closes_what_it_owns() {
    let (made, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        Counting(made.clone(), closed.clone()),
    ));
    ep.apply(set(&[1, 2]));
    let mut d = Discover::new(ep.clone());
    let mut inserted = 0;
    for _ in 0..2 {
        match d.next().await {
            Some(Ok(Change::Insert(..))) => inserted += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(inserted, 2);
    ep.close().await;
    let (mut removed, mut stopped) = (0, 0);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match d.next().await {
                Some(Ok(Change::Remove(_))) => removed += 1,
                Some(Err(sd_core::Error::Stopped)) => stopped += 1,
                None => break,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream did not end after close");
    assert_eq!(removed, 2);
    assert_eq!(stopped, 1, "the end is announced as Err(Stopped), once");

    // Owned endpointer, dropped while the stream waits for a change.
    let cache = InstanceCache::new();
    let (made, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut d = Discover::from_instancer(&cache, Counting(made.clone(), closed.clone()));
    cache.update(set(&[5, 6, 7]));
    let mut n = 0;
    while n < 3 {
        if let Some(Ok(Change::Insert(..))) = d.next().await {
            n += 1;
        }
    }
    // Poll once more (it waits for a change), then drop it.
    assert!(tokio::time::timeout(Duration::from_millis(50), d.next())
        .await
        .is_err());
    drop(d);
    assert_eq!(made.load(Ordering::SeqCst), 3);
    assert_eq!(
        closed.load(Ordering::SeqCst),
        3,
        "endpoints closed once each"
    );
}

/// A `Balanced` request whose response future is created and dropped without ever being
/// polled (a caller that gave up before the request started, e.g. a `select!` that lost)
/// reports `Outcome::Timeout`, which outlier ejection counts as a failure, although the
/// endpoint was never contacted: five such cancellations in a row eject a healthy
/// endpoint. (tower.rs: `Running::drop` reports `Timeout` whether or not the inner future
/// ever ran.)
#[tokio::test]
async fn never_started_requests_do_not_eject_an_endpoint() {
    let backend = |p: u16| service_fn(move |_req: ()| async move { Ok::<_, BoxError>(p) });
    let ep = Arc::new(sd_core::FixedEndpointer::new(
        (0..4).map(|p| (Instance::new("10.0.0.1", 1000 + p), backend(p))),
    ));
    let lb = Arc::new(Outlier::new(
        P2c::pending_requests(ep.clone()),
        OutlierConfig::default(),
    ));
    let mut svc = Balanced::new(lb.clone());
    for _ in 0..40 {
        let svc = svc.ready().await.unwrap();
        // The future is dropped before its first poll: nothing was sent anywhere.
        drop(svc.call(()));
    }
    let all = lb.snapshot().all().to_vec();
    let ejected = all.iter().filter(|e| lb.is_ejected(e)).count();
    assert_eq!(
        ejected, 0,
        "{ejected} healthy endpoints ejected by requests that were never sent"
    );
}
