//! Round robin: go-kit LB-1 and LB-2, the per-thread variant, and concurrency.

use std::sync::Arc;
use std::time::Duration;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Event, FixedEndpointer, Instance, InstanceCache,
};
use sd_lb::{Balancer, Counter, LbError, Request, RoundRobin};

fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..n).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ))
}

#[test]
fn lb2_first_pick_is_index_zero_and_counts_rotate() {
    // go-kit's test: counts go {1,0,0},{1,1,0},{1,1,1},{2,1,1},...
    let rr = RoundRobin::new(fixed(3));
    assert_eq!(rr.counter(), Counter::Shared);
    let mut counts = [0usize; 3];
    let expected = [
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
        [2, 1, 1],
        [2, 2, 1],
        [2, 2, 2],
        [3, 2, 2],
    ];
    for want in expected {
        let ep = rr.pick().unwrap();
        counts[*ep as usize] += 1;
        assert_eq!(counts, want);
    }
}

#[tokio::test]
async fn lb2_counter_is_not_reset_when_the_set_changes() {
    let cache = InstanceCache::new();
    let ep = Arc::new(DefaultEndpointer::new(
        &cache,
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    ep.apply(Event::instances(vec![
        Instance::new("10.0.0.1", 1),
        Instance::new("10.0.0.1", 2),
    ]));
    let rr = RoundRobin::new(ep.clone());
    assert_eq!(*rr.pick().unwrap(), 1); // counter 0
    ep.apply(Event::instances(vec![
        Instance::new("10.0.0.1", 1),
        Instance::new("10.0.0.1", 2),
        Instance::new("10.0.0.1", 3),
    ]));
    assert_eq!(*rr.pick().unwrap(), 2); // counter 1
    assert_eq!(*rr.pick().unwrap(), 3); // counter 2
    assert_eq!(*rr.pick().unwrap(), 1); // counter 3
    ep.close().await;
}

#[tokio::test]
async fn lb1_no_endpoints_and_discovery_errors() {
    let empty: Arc<FixedEndpointer<u16>> = Arc::new(FixedEndpointer::new([]));
    let err = RoundRobin::new(empty).pick().unwrap_err();
    assert_eq!(err, LbError::NoEndpoints);
    assert_eq!(err.to_string(), "no endpoints available");

    let cache = InstanceCache::new();
    let ep = Arc::new(
        DefaultEndpointer::builder(&cache, |i: &Instance| -> Result<u16, BoxError> {
            Ok(i.port())
        })
        .invalidate_on_error(Duration::ZERO)
        .build(),
    );
    let boom = sd_core::Error::unavailable("consul", "connection refused");
    ep.apply(Event::Error(boom.clone()));
    let err = RoundRobin::new(ep.clone()).pick().unwrap_err();
    assert_eq!(err, LbError::Discovery(boom.clone()));
    assert_eq!(err.to_string(), boom.to_string(), "passed on unchanged");

    // Pending (no state yet) reads as no endpoints.
    let pending = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    assert_eq!(
        RoundRobin::new(pending).pick().unwrap_err(),
        LbError::NoEndpoints
    );

    // A closed endpointer reports Stopped.
    let closed = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    closed.close().await;
    assert_eq!(
        RoundRobin::new(closed).pick().unwrap_err(),
        LbError::Discovery(sd_core::Error::Stopped)
    );
}

#[test]
fn works_over_a_trait_object_endpointer() {
    let ep: Arc<dyn Endpointer<u16>> = fixed(2);
    let rr = RoundRobin::new(ep);
    assert_eq!(*rr.pick().unwrap(), 0);
    assert_eq!(*rr.pick().unwrap(), 1);
}

#[test]
fn avoid_skips_to_the_next_accepted_endpoint() {
    let rr = RoundRobin::new(fixed(4));
    let avoid = |e: &sd_core::Endpoint<u16>| **e == 0 || **e == 1;
    let p = rr.pick_with(&Request::new().avoid(&avoid)).unwrap();
    assert_eq!(**p.endpoint(), 2);
    let all = |_: &sd_core::Endpoint<u16>| true;
    // Everything avoided: the plain round-robin choice (a preference, not a failure).
    let p = rr.pick_with(&Request::new().avoid(&all)).unwrap();
    assert_eq!(**p.endpoint(), 1);
}

#[test]
fn shared_counter_is_exact_under_concurrency() {
    // 4 threads × 30 000 picks over 3 endpoints: a strict rotation gives exactly 40 000 each.
    let rr = Arc::new(RoundRobin::new(fixed(3)));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || {
                let mut c = [0usize; 3];
                for _ in 0..30_000 {
                    c[*rr.pick().unwrap() as usize] += 1;
                }
                c
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for h in handles {
        let c = h.join().unwrap();
        for i in 0..3 {
            total[i] += c[i];
        }
    }
    assert_eq!(total, [40_000; 3]);
}

#[test]
fn per_thread_counter_rotates_fairly_on_each_thread() {
    let rr = Arc::new(RoundRobin::per_thread(fixed(5)));
    assert_eq!(rr.counter(), Counter::PerThread);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let rr = rr.clone();
            std::thread::spawn(move || {
                let mut c = [0usize; 5];
                let mut prev = None;
                for _ in 0..10_000 {
                    let v = *rr.pick().unwrap();
                    if let Some(p) = prev {
                        assert_eq!(v, (p + 1) % 5, "consecutive picks on a thread rotate");
                    }
                    prev = Some(v);
                    c[v as usize] += 1;
                }
                c
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), [2_000; 5]);
    }
}
