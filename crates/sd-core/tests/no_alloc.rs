//! Reading the current endpoints takes no allocation (issue 2): a counting global allocator
//! observes a million snapshot reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sd_core::{BoxError, DefaultEndpointer, Endpointer, Event, FixedInstancer, Instance};

struct Counting;

thread_local! {
    // Per thread: the harness and other threads may allocate while we measure; only this
    // thread's reads are under test. A const-initialised `Cell` needs no allocation itself.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the slot may already be gone while a thread is being torn down.
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let before = allocs();
    let mut sum = 0u64;
    for i in 0..1_000_000usize {
        let snap = ep.endpoints();
        let list = snap.get().unwrap();
        sum += *list[i % list.len()].value() as u64;
    }
    let after = allocs();
    assert!(sum > 0);
    assert_eq!(after - before, 0, "snapshot reads allocated");
    // The counter does see this thread's allocations.
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocs() > after);
    drop(v);
}
