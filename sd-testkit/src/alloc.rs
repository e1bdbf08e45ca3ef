//! A counting global allocator, for tests and benchmarks that prove a hot path allocates
//! nothing (or count what it allocates).
//!
//! Install it in a test binary and read the counters around the code under test:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;
//!
//! fn hot_path(v: &[u64]) -> u64 {
//!     v.iter().sum()
//! }
//!
//! let data = vec![1u64, 2, 3];
//! let before = sd_testkit::alloc::thread_allocs();
//! assert_eq!(hot_path(&data), 6);
//! assert_eq!(sd_testkit::alloc::thread_allocs() - before, 0);
//! let grown: Vec<u64> = data.iter().map(|x| x * 2).collect(); // this one allocates
//! assert!(sd_testkit::alloc::thread_allocs() > before);
//! # drop(grown);
//! ```
//!
//! [`thread_allocs`] counts the calling thread only, so the test harness and other tests
//! running at the same time cannot disturb a zero-allocation check. [`total_allocs`] and
//! [`live_bytes`] count every thread (what a benchmark reports, like Go's allocs/op).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

static TOTAL: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

thread_local! {
    // A const-initialised `Cell` needs no allocation of its own.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Forwards every call to the system allocator and counts allocations (a `realloc` counts as
/// one) and live bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

fn count(bytes: i64) {
    TOTAL.fetch_add(1, Relaxed);
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
    // `try_with`: the slot may already be gone while a thread is being torn down.
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; the counters do not affect it.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made so far by the calling thread.
pub fn thread_allocs() -> u64 {
    THREAD.with(Cell::get)
}

/// Allocations made so far by every thread.
pub fn total_allocs() -> u64 {
    TOTAL.load(Relaxed)
}

/// Bytes currently allocated by every thread (requested sizes, without the allocator's own
/// overhead).
pub fn live_bytes() -> i64 {
    LIVE.load(Relaxed)
}

/// The most bytes allocated at once by every thread since the last [`reset_peak`] (or the
/// start), as [`live_bytes`] counts them.
pub fn peak_live_bytes() -> i64 {
    PEAK.load(Relaxed)
}

/// Restarts [`peak_live_bytes`] from the bytes allocated now; returns that starting point.
///
/// To measure what one piece of code costs at most, reset, run it, and subtract:
/// `peak_live_bytes() - start`. Other threads allocating meanwhile count too.
pub fn reset_peak() -> i64 {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}
