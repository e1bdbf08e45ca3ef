//! Reading the current endpoints takes no allocation (issue 2): a counting global allocator
//! observes a million snapshot reads.

use sd_core::{BoxError, DefaultEndpointer, Endpointer, Event, FixedInstancer, Instance};
use sd_testkit::alloc::thread_allocs;

// Counts per thread: the harness and other threads may allocate while we measure.
#[global_allocator]
static GLOBAL: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

#[test]
fn snapshot_reads_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let inst = FixedInstancer::new(Vec::<Instance>::new());
    let ep = DefaultEndpointer::new(&inst, |i: &Instance| -> Result<u16, BoxError> {
        Ok(i.port())
    });
    ep.apply(Event::instances(
        (1..=100)
            .map(|p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    ));
    // Warm up arc-swap's thread-local debt slots.
    let _ = ep.endpoints();
    let before = thread_allocs();
    let mut sum = 0u64;
    for i in 0..1_000_000usize {
        let snap = ep.endpoints();
        let list = snap.get().unwrap();
        sum += *list[i % list.len()].value() as u64;
    }
    let after = thread_allocs();
    assert!(sum > 0);
    assert_eq!(after - before, 0, "snapshot reads allocated");
    // The counter does see this thread's allocations.
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(thread_allocs() > after);
    drop(v);
}
