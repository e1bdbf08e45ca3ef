//! Attack on issue 18's "the pick must stay allocation-free": the whole documented stack at
//! once — `Drain(Outlier(SlowStart(ZoneAware(P2c))))` — while endpoints warm up, the zone
//! spills and one endpoint is ejected, with outcomes reported. Held up (no allocation in
//! 100 000 picks).

use std::time::Duration;

use sd_core::{BoxError, DefaultEndpointer, Event, FixedInstancer, Instance};
use sd_lb::{
    Balancer, Drain, DrainFactory, Outlier, OutlierConfig, P2c, Request, SlowStart,
    SlowStartConfig, ZoneAware,
};
use sd_testkit::alloc::thread_allocs;

#[global_allocator]
static GLOBAL: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

fn set(n: u16) -> Event {
    Event::instances(
        (1..=n)
            .map(|p| {
                let z = ["a", "b", "c", "b", "c"][p as usize % 5];
                Instance::builder("10.0.0.1", p)
                    .meta("zone", z)
                    .weight(1 + p as u32 % 3)
                    .build()
            })
            .collect::<Vec<_>>(),
    )
}

#[test]
fn the_full_stack_picks_without_allocating() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let inst = FixedInstancer::new(Vec::<Instance>::new());
    let ep = std::sync::Arc::new(DefaultEndpointer::new(
        &inst,
        DrainFactory::new(
            |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
            Duration::from_secs(30),
        ),
    ));
    ep.apply(set(20));
    let zone = ZoneAware::new(P2c::pending_requests(ep.clone()), "a")
        .callers([("a", 2.0), ("b", 1.0), ("c", 1.0)])
        .unwrap();
    let ss = SlowStart::new(zone, SlowStartConfig::new(Duration::from_secs(3600))).unwrap();
    let outlier = Outlier::new(
        ss,
        OutlierConfig {
            consecutive_failures: 1,
            ..Default::default()
        },
    );
    let lb = Drain::new(outlier);
    lb.pick().unwrap();
    ep.apply(set(25));
    lb.pick().unwrap();
    lb.inner().inner().inner().inner().refresh();
    lb.pick().unwrap();
    assert_eq!(lb.inner().inner().warming(), 5);
    // Eject one endpoint of zone b.
    loop {
        let p = lb.pick_with(&Request::new()).unwrap();
        if ***p.endpoint() == 3 {
            p.failure();
            break;
        }
    }
    assert_eq!(lb.inner().ejected_count(), 1);
    let pick = || {
        let p = lb.pick_with(&Request::new()).unwrap();
        let v = ***p.endpoint();
        p.success();
        v
    };
    for _ in 0..100 {
        pick();
    }
    let before = thread_allocs();
    let mut sum = 0u64;
    for _ in 0..100_000 {
        sum = sum.wrapping_add(pick());
    }
    let allocs = thread_allocs() - before;
    assert!(sum > 0);
    assert_eq!(lb.inner().ejected_count(), 1, "still ejected");
    assert_eq!(allocs, 0, "picks allocated");
}
