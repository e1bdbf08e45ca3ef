//! What an instance costs on the heap, counted by the allocator (issue 17, Consul scale):
//! Consul gives every instance two metadata pairs (node and datacenter) at least. Kept in a
//! `BTreeMap<String, String>` they cost a 544-byte node and four strings, some 700 bytes an
//! instance, more than three times the rest of it; packed into [`sd_core::Meta`] they cost
//! two small allocations.
//!
//! Its own test binary: the counting allocator is global.

#[global_allocator]
static ALLOC: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

use sd_core::Instance;
use sd_testkit::alloc::live_bytes;

const N: usize = 1_000;

/// Live bytes per value of `N` values built by `make` (the only test of this binary, so
/// nothing else allocates meanwhile).
fn per_value<T>(make: impl Fn(usize) -> T) -> f64 {
    // Warm up whatever is allocated once.
    drop(make(0));
    let b0 = live_bytes();
    let kept: Vec<T> = (0..N).map(&make).collect();
    let bytes = live_bytes() - b0 - (kept.capacity() * std::mem::size_of::<T>()) as i64;
    drop(kept);
    bytes as f64 / N as f64
}

/// The instance a Consul health answer makes: an id, `Meta` of its own, node, datacenter.
fn consul_like(i: usize) -> Instance {
    Instance::builder(format!("10.1.{}.{}", i / 250, i % 250), 8080)
        .id(format!("s{}-{i}", i % 1000))
        .meta("consul.node", format!("node-{}", i % 20))
        .meta("consul.datacenter", "dc1")
        .build()
}

#[test]
fn metadata_is_packed_not_a_tree() {
    let plain = per_value(|i| {
        Instance::builder(format!("10.1.{}.{}", i / 250, i % 250), 8080)
            .id(format!("s{}-{i}", i % 1000))
            .build()
    });
    let consul = per_value(consul_like);
    // What the same two pairs cost as the map they used to be kept in.
    let tree = per_value(|i| {
        let i = consul_like(i);
        i.meta().to_map()
    });
    // The record: 56 bytes, one allocation (address and id inline).
    assert!(plain <= 56.0, "an instance without metadata: {plain} B");
    // Metadata: the extra record (tags, metadata, long-address length: 64 bytes) plus the
    // packed text of the two pairs (37 bytes here) and their four end offsets (32 bytes):
    // 134 bytes, where the map took 544 for its node and four strings besides.
    let extra = consul - plain;
    assert!(
        extra <= 140.0 && tree >= 544.0,
        "two metadata pairs cost {extra} bytes an instance, against {tree} as a BTreeMap"
    );
    // Reads back what was built.
    let i = consul_like(7);
    assert_eq!(i.meta().get("consul.node"), Some("node-7"));
    assert_eq!(i.meta().get("consul.datacenter"), Some("dc1"));
    assert_eq!(i.meta().len(), 2);
    // The builder of an instance gives the same instance again.
    assert_eq!(i.to_builder().build(), i);
    // A key given twice keeps its last value, as BTreeMap::insert did.
    let j = i.to_builder().meta("consul.node", "other").build();
    assert_eq!(j.meta().get("consul.node"), Some("other"));
    assert_ne!(i, j);
}
