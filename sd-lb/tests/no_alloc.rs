//! A pick makes no allocation: a counting global allocator observes 100 000 picks of round
//! robin (both rotations, borrowed and owned picks and the local handle), random, P2C (both loads, with its completion
//! guard; weighted and with equal weights; with an avoided endpoint, whose redraws keep the
//! two choices distinct), weighted and consistent hashing (weighted and not), slow start
//! over round robin and P2C while endpoints warm up, outlier ejection in panic mode, and
//! zone-aware routing (all local, and spilling), and drain's in-flight counting.

use sd_core::{
    BoxError, DefaultEndpointer, Endpoint, Endpointer, Event, Factory, FixedEndpointer,
    FixedInstancer, Health, Instance,
};
use sd_lb::{
    Balancer, ConsistentHash, Drain, DrainFactory, LocalRoundRobin, Outlier, OutlierConfig, P2c,
    Random, Request, RoundRobin, SlowStart, SlowStartConfig, Weighted, ZoneAware,
};

use sd_testkit::alloc::thread_allocs;

// Counts per thread, so the test harness's threads and the other test of this file do not
// count.
#[global_allocator]
static GLOBAL: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

const PICKS: usize = 100_000;

/// Allocations made by `PICKS` calls of `pick` on this thread, after a warm-up.
fn allocations(mut pick: impl FnMut() -> u64) -> (u64, u64) {
    // Warm up: thread-locals, arc-swap's debt slots, tables derived from the snapshot.
    for _ in 0..10 {
        pick();
    }
    let before = thread_allocs();
    let mut sum = 0u64;
    for _ in 0..PICKS {
        sum = sum.wrapping_add(pick());
    }
    let after = thread_allocs();
    (after - before, sum)
}

fn count(name: &str, pick: impl FnMut() -> u64) {
    let (allocs, sum) = allocations(pick);
    assert!(sum > 0, "{name}: picks returned something");
    assert_eq!(allocs, 0, "{name}: picks allocated");
}

#[test]
fn the_counter_sees_allocations() {
    let (allocs, _) = allocations(|| std::hint::black_box(Box::new(1u64)).wrapping_add(1));
    assert_eq!(allocs, PICKS as u64);
}

#[test]
fn picks_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let inst = FixedInstancer::new(Vec::<Instance>::new());
    let ep = std::sync::Arc::new(DefaultEndpointer::new(
        &inst,
        |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
    ));
    ep.apply(Event::instances(
        (1..=100)
            .map(|p| {
                Instance::builder("10.0.0.1", p)
                    .weight(p as u32 % 3)
                    .build()
            })
            .collect::<Vec<_>>(),
    ));
    let _ = ep.endpoints();

    let rr = RoundRobin::new(ep.clone());
    count("round robin", || **rr.pick().unwrap());
    count("round robin, owned", || *Balancer::pick(&rr).unwrap());
    let rr = RoundRobin::strict(ep.clone());
    count("round robin strict", || **rr.pick().unwrap());
    count("round robin strict, owned", || {
        *Balancer::pick(&rr).unwrap()
    });
    let mut local = LocalRoundRobin::new(ep.clone());
    count("local round robin", || **local.pick().unwrap());
    let random = Random::new(ep.clone());
    count("random", || **random.pick().unwrap());
    count("random, owned", || *Balancer::pick(&random).unwrap());
    let seeded = Random::with_seed(ep.clone(), 1);
    count("random seeded", || **seeded.pick().unwrap());
    count("random seeded, owned", || *Balancer::pick(&seeded).unwrap());
    let p2c = P2c::pending_requests(ep.clone());
    count("p2c in-flight", || {
        let p = p2c.pick_with(&Request::new()).unwrap();
        let v = **p.endpoint();
        p.success();
        v
    });
    let ewma = P2c::peak_ewma(ep.clone());
    count("p2c peak-ewma", || {
        let p = ewma.pick_with(&Request::new()).unwrap();
        let v = **p.endpoint();
        drop(p); // a dropped guard reports too
        v
    });
    // Weighted P2C (the weights above are 0, 1, 2: the weighted sampler), with endpoints to
    // avoid (weighted redraws, distinct choices).
    let avoid = |e: &Endpoint<u64>| **e % 7 == 0;
    let p2c = P2c::pending_requests(ep.clone());
    let mut held = std::collections::VecDeque::with_capacity(64);
    count("p2c in-flight, weighted, avoiding, held", || {
        let p = p2c.pick_with(&Request::new().avoid(&avoid)).unwrap();
        let v = **p.endpoint();
        // Keep some requests in flight so that loads differ.
        if held.len() == 32 {
            held.pop_front();
        }
        held.push_back(p);
        v
    });
    let ewma = P2c::peak_ewma(ep.clone());
    count("p2c peak-ewma, weighted, avoiding", || {
        let p = ewma.pick_with(&Request::new().avoid(&avoid)).unwrap();
        let v = **p.endpoint();
        p.success();
        v
    });
    // Equal weights: the uniform path, with the same avoid filter.
    let equal = P2c::pending_requests(ep.clone()).ignore_weights();
    count("p2c in-flight, weights ignored, avoiding", || {
        let p = equal.pick_with(&Request::new().avoid(&avoid)).unwrap();
        let v = **p.endpoint();
        p.success();
        v
    });
    let hash = ConsistentHash::new(ep.clone()).ignore_weights();
    let mut k = 0u64;
    count("consistent hash, weights ignored", || {
        k += 1;
        **hash
            .pick_with(&Request::new().with_key(k))
            .unwrap()
            .endpoint()
    });
    let weighted = Weighted::new(ep.clone());
    count("weighted", || *weighted.pick().unwrap());
    let hash = ConsistentHash::new(ep.clone());
    let mut k = 0u64;
    count("consistent hash", || {
        k += 1;
        **hash
            .pick_with(&Request::new().with_key(k))
            .unwrap()
            .endpoint()
    });

    // Slow start while ten new endpoints warm up (a rejected pick is picked again).
    fn warm<B: Balancer<u64>>(inner: B) -> SlowStart<B, u64> {
        SlowStart::new(
            inner,
            SlowStartConfig::new(std::time::Duration::from_secs(3600)),
        )
        .unwrap()
    }
    let ss_rr = warm(Box::new(RoundRobin::new(ep.clone())) as Box<dyn Balancer<u64>>);
    let ss_p2c = warm(P2c::pending_requests(ep.clone()));
    ep.apply(Event::instances(
        (1..=110)
            .map(|p| {
                Instance::builder("10.0.0.1", p)
                    .weight(1 + p as u32 % 3)
                    .build()
            })
            .collect::<Vec<_>>(),
    ));
    ss_rr.pick().unwrap();
    assert_eq!(ss_rr.warming(), 10);
    count("slow start over round robin, warming", || {
        *ss_rr.pick().unwrap()
    });
    ss_p2c.pick().unwrap();
    // The table rebuild that pick started runs on another thread: wait for it, so that no
    // pick below sees the update again.
    ss_p2c.inner().refresh();
    assert_eq!(ss_p2c.warming(), 10);
    count("slow start over p2c, warming", || {
        let p = ss_p2c.pick_with(&Request::new()).unwrap();
        let v = **p.endpoint();
        p.success();
        v
    });

    // Outlier ejection in panic mode (4 of 10 critical, 2 ejected: 40 % healthy), whose
    // decision is remembered per snapshot and ejected list.
    let ten = std::sync::Arc::new(FixedEndpointer::new((0..10u16).map(|i| {
        let h = if i < 4 {
            Health::Critical
        } else {
            Health::Passing
        };
        let inst = Instance::builder("10.0.0.1", 1000 + i).health(h).build();
        (inst, i as u64 + 1)
    })));
    let config = OutlierConfig {
        consecutive_failures: 1,
        ..Default::default()
    };
    let outlier = Outlier::new(RoundRobin::new(ten), config);
    let mut ejected = 0;
    while ejected < 2 {
        let p = outlier.pick_with(&Request::new()).unwrap();
        if **p.endpoint() >= 5 + ejected {
            p.failure();
            ejected += 1;
        } else {
            p.success();
        }
    }
    assert_eq!(outlier.ejected_count(), 2);
    count("outlier in panic mode", || {
        **outlier.pick_with(&Request::new()).unwrap().endpoint()
    });

    // Zone-aware routing that spills (zone a: 20 % of the endpoints, half the callers).
    let zoned = std::sync::Arc::new(FixedEndpointer::new((0..20u16).map(|i| {
        let z = ["a", "b", "c", "b", "c"][i as usize % 5];
        let inst = Instance::builder("10.0.0.1", 1000 + i)
            .meta("zone", z)
            .build();
        (inst, i as u64 + 1)
    })));
    let zone = ZoneAware::new(P2c::pending_requests(zoned.clone()), "a")
        .callers([("a", 2.0), ("b", 1.0), ("c", 1.0)])
        .unwrap();
    assert!((zone.local_share() - 0.4).abs() < 1e-9);
    count("zone-aware over p2c, spilling", || {
        let p = zone.pick_with(&Request::new()).unwrap();
        let v = **p.endpoint();
        p.success();
        v
    });
    let zone = ZoneAware::new(RoundRobin::new(zoned), "a");
    count("zone-aware over round robin, all local", || {
        *zone.pick().unwrap()
    });

    // In-flight counting for graceful drain.
    let factory = DrainFactory::new(
        |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
        std::time::Duration::from_secs(30),
    );
    let drained = std::sync::Arc::new(FixedEndpointer::new((1..=10u16).map(|p| {
        let i = Instance::new("10.0.0.1", p);
        let v = factory.make(&i).unwrap();
        (i, v)
    })));
    let drain = Drain::new(RoundRobin::new(drained));
    count("drain over round robin", || {
        let p = drain.pick_with(&Request::new()).unwrap();
        let v = ***p.endpoint();
        p.success();
        v
    });
}
