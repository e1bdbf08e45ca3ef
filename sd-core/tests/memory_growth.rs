//! `MemoryRegistry` bookkeeping: instancers that come and go, on a quiet service and on names
//! that do not exist, leave nothing behind (this leaked ~16 MB and ~42 MB per 100 000 before).

#[global_allocator]
static ALLOC: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

use sd_core::{Instance, Instancer, MemoryRegistry, ServiceQuery};

/// An application that builds a short-lived instancer per request (or per job) on a service
/// that does not change, or probes services that do not exist: every `instancer_for` pushes a
/// `View` (query + `Weak` to the cache, which keeps the cache's allocation) that is pruned
/// only when that service next publishes, and creates a `Service` entry per name that is
/// never removed. Memory grows without bound.
#[test]
fn dropped_instancers_do_not_accumulate() {
    let reg = MemoryRegistry::new();
    reg.insert("quiet", Instance::new("10.0.0.1", 80), None);
    // Warm up (first allocations of the map, the logger, ...).
    for _ in 0..1_000 {
        drop(reg.instancer_for(&ServiceQuery::new("quiet").tag("v1")));
    }
    let before = sd_testkit::alloc::live_bytes();
    for _ in 0..100_000 {
        drop(reg.instancer_for(&ServiceQuery::new("quiet").tag("v1")));
    }
    let grown = sd_testkit::alloc::live_bytes() - before;
    // Probing names that do not exist.
    let before = sd_testkit::alloc::live_bytes();
    for n in 0..100_000 {
        drop(reg.instancer_for(&ServiceQuery::new(format!("missing-{n}"))));
    }
    let grown_names = sd_testkit::alloc::live_bytes() - before;
    assert!(
        grown < 1_000_000 && grown_names < 1_000_000,
        "100 000 dropped instancers of one quiet service left {grown} bytes live; \
         100 000 dropped instancers of absent services left {grown_names} bytes live"
    );
}

/// Forgetting dropped views never forgets a live one: a service with no instance is kept while
/// a view of it (an instancer, or only a subscription) lives, and a forgotten service comes
/// back for the next instancer.
#[tokio::test]
async fn live_views_are_kept_while_dropped_ones_go() {
    let reg = MemoryRegistry::new();
    let kept = reg.instancer_for(&ServiceQuery::new("svc"));
    let mut sub = kept.subscribe();
    drop(kept); // only the subscription holds the view now
    for _ in 0..10 {
        drop(reg.instancer_for(&ServiceQuery::new("svc")));
    }
    assert!(sub.next().await.unwrap().as_instances().unwrap().is_empty());
    reg.insert("svc", Instance::new("10.0.0.1", 1), None);
    assert_eq!(sub.next().await.unwrap().addrs(), ["10.0.0.1:1"]);
    assert!(reg.remove("svc", &Instance::new("10.0.0.1", 1)));
    assert!(sub.next().await.unwrap().as_instances().unwrap().is_empty());
    drop(sub);
    // Forgotten now; a new instancer sees later inserts all the same.
    let again = reg.instancer_for(&ServiceQuery::new("svc"));
    let mut sub = again.subscribe();
    assert!(sub.next().await.unwrap().as_instances().unwrap().is_empty());
    reg.insert("svc", Instance::new("10.0.0.1", 2), None);
    assert_eq!(sub.next().await.unwrap().addrs(), ["10.0.0.1:2"]);
}
