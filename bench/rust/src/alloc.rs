//! The counting global allocator: sd-testkit's, counting every thread (as Go's
//! `runtime.MemStats.Mallocs` does) plus live bytes.

pub use sd_testkit::alloc::{live_bytes, total_allocs as allocs};
pub use sd_testkit::CountingAllocator as Counting;
