//! Found by the review of issue 9 (sd-lb): the P2C tie rule with in-flight counts, request
//! keys through `Retry` and the tower adapters, and allocations right after an update.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::fixed;

use sd_core::{BoxError, Endpoint, Event, FixedEndpointer, Instance};
use sd_lb::{hash_key, tower::Balanced, Balancer, ConsistentHash, P2c, Request, Retry, RoundRobin};

// Counts per thread, so the harness's other threads do not count.
#[global_allocator]
static GLOBAL: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

fn allocs() -> u64 {
    sd_testkit::alloc::thread_allocs()
}

/// P2C over requests in flight compares exact integer counts: the tie rule made for
/// peak-EWMA noise (p2c.rs, `TIE = 0.999`) must not apply to them, or from 1 000 requests in
/// flight on a difference of one request would be a "tie" and the more loaded endpoint would
/// win half the draws.
#[test]
fn p2c_pending_requests_picks_the_less_loaded_of_two() {
    let p2c = P2c::pending_requests(fixed(2));
    // Hold 1 999 requests: P2C keeps them at 1 000 / 999.
    let held: Vec<_> = (0..1_999)
        .map(|_| p2c.pick_with(&Request::new()).unwrap())
        .collect();
    let on0 = held.iter().filter(|p| **p.endpoint() == 0).count();
    let busier: u16 = if on0 == 1_000 { 0 } else { 1 };
    assert_eq!(
        held.iter().filter(|p| **p.endpoint() == busier).count(),
        1_000
    );
    // Plain picks (finished at once, so the loads stay 1 000 / 999).
    let to_busier = (0..1_000)
        .filter(|_| *p2c.pick().unwrap() == busier)
        .count();
    assert_eq!(
        to_busier, 0,
        "{to_busier} of 1 000 picks went to the endpoint with 1 000 requests in flight rather \
         than the one with 999"
    );
}

/// `Retry::call_keyed` carries a request key: over `ConsistentHash` every call of one key
/// goes to the key's owner (with plain `call` they went to random endpoints).
#[tokio::test]
async fn retry_over_consistent_hash_keeps_a_key_on_one_endpoint() {
    let retry = Retry::new(ConsistentHash::new(fixed(10)));
    let mut seen = HashSet::new();
    for _ in 0..40 {
        // The same logical key ("user-42") every time.
        let v = retry
            .call_keyed(hash_key("user-42"), |e: Endpoint<u16>| async move {
                Ok::<_, std::io::Error>(*e)
            })
            .await
            .unwrap();
        seen.insert(v);
    }
    assert_eq!(
        seen.len(),
        1,
        "40 calls for one key went to {} different endpoints",
        seen.len()
    );
}

/// The same for the tower adapters: `Balanced::key` derives the key from the request.
#[tokio::test]
async fn balanced_over_consistent_hash_keeps_a_key_on_one_endpoint() {
    use tower::{service_fn, ServiceExt};
    let backend = |p: u16| service_fn(move |_req: String| async move { Ok::<_, BoxError>(p) });
    let ep = Arc::new(FixedEndpointer::new(
        (0..10).map(|p| (Instance::new("10.0.0.1", 1000 + p), backend(p))),
    ));
    let svc = Balanced::new(Arc::new(ConsistentHash::new(ep))).key(|r: &String| hash_key(r));
    let mut seen = HashSet::new();
    for _ in 0..40 {
        seen.insert(svc.clone().oneshot("user-42".to_string()).await.unwrap());
    }
    assert_eq!(
        seen.len(),
        1,
        "40 identical requests went to {} different endpoints through ConsistentHash",
        seen.len()
    );
}

/// lib.rs: "a pick never waits for a lock and makes no allocation, except the first pick
/// after an update, which starts the rebuild". The first pick after an update may allocate
/// (round robin builds the new list of passing endpoints, P2C starts its rebuild thread);
/// once the new table is in place, picks allocate nothing again.
#[test]
fn only_the_first_pick_after_an_update_allocates() {
    let (_rt, ep) = common::hand_fed(|i| i.port());
    let set = |n: u16| {
        Event::instances(
            (1..=n)
                .map(|p| Instance::new("10.0.0.1", p))
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(set(3));
    let rr = RoundRobin::new(ep.clone());
    let p2c = P2c::pending_requests(ep.clone());
    let _ = (rr.pick().unwrap(), p2c.pick().unwrap());
    ep.apply(set(4));
    // The first picks: allowed to allocate (not asserted).
    let _ = (rr.pick().unwrap(), p2c.pick().unwrap());
    p2c.refresh();
    let before = allocs();
    for _ in 0..100 {
        let _ = rr.pick().unwrap();
    }
    let rr_allocs = allocs() - before;
    let before = allocs();
    for _ in 0..100 {
        let _ = p2c.pick().unwrap();
    }
    let p2c_allocs = allocs() - before;
    assert_eq!(
        (rr_allocs, p2c_allocs),
        (0, 0),
        "allocations by 100 picks after the first one after an update (round robin, p2c)"
    );
}
