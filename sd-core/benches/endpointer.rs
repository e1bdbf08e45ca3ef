//! Endpointer hot paths (issue 2 targets): reading a snapshot (a few ns, no allocation) and
//! applying one change to a 10 000-instance set (≤ 50 µs).
//!
//! Run: `cargo bench -p sd-core --bench endpointer`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Event, Instance, InstanceCache, InstanceSet,
};

fn instances(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            Instance::new(
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                8080,
            )
        })
        .collect()
}

fn factory(i: &Instance) -> Result<u64, BoxError> {
    Ok(i.port() as u64)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut read = c.benchmark_group("snapshot_read");
    for n in [10usize, 1000, 10_000] {
        let src = InstanceCache::new();
        let ep = DefaultEndpointer::new(&src, factory);
        ep.apply(Event::instances(instances(n)));
        read.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let snap = ep.endpoints();
                black_box(snap.get().map(|l| l.len()).unwrap_or(0))
            })
        });
    }
    read.finish();

    let mut update = c.benchmark_group("apply_one_change");
    for n in [1000usize, 10_000] {
        let src = InstanceCache::new();
        let ep = DefaultEndpointer::new(&src, factory);
        let base = instances(n);
        let a = InstanceSet::new(base.clone());
        // b = a with one instance replaced by a new one; shared instances keep their handles,
        // as the InstanceCache arranges for real instancers.
        let mut changed = base.clone();
        changed[n / 2] = Instance::new("192.168.0.1", 9);
        let b = InstanceSet::new(changed);
        ep.apply(Event::Instances(a.clone()));
        let mut flip = false;
        update.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                flip = !flip;
                ep.apply(Event::Instances(if flip { b.clone() } else { a.clone() }));
            })
        });
    }
    update.finish();

    // The cache side of an update: compare, canonicalize handles, publish.
    let mut cache_update = c.benchmark_group("cache_publish_one_change");
    let n = 10_000;
    let base = instances(n);
    let mut changed = base.clone();
    changed[n / 2] = Instance::new("192.168.0.1", 9);
    let (a, b) = (InstanceSet::new(base), InstanceSet::new(changed));
    let cache = InstanceCache::new();
    let mut flip = false;
    cache_update.bench_function(BenchmarkId::from_parameter(n), |bench| {
        bench.iter(|| {
            flip = !flip;
            cache.update(Event::Instances(if flip { b.clone() } else { a.clone() }))
        })
    });

    // The same, with the sets parsed fresh from the wire as a backend does: no handle is
    // shared with the published state, so every instance is compared field by field. The
    // fresh sets are built outside the timed region; dropping them is timed (it is part of
    // the update's cost), but happens after the cache's locks are released.
    let fresh = |changed: bool| {
        let mut list = instances(n);
        if changed {
            list[n / 2] = Instance::new("192.168.0.1", 9);
        }
        InstanceSet::new(list)
    };
    let mut flip = false;
    cache_update.bench_function(BenchmarkId::new("fresh", n), |bench| {
        bench.iter_batched(
            || {
                flip = !flip;
                fresh(flip)
            },
            |set| cache.update(Event::Instances(set)),
            BatchSize::SmallInput,
        )
    });
    cache_update.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
