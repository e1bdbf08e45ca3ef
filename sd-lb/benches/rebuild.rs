//! Derived-table rebuilds (issue 9, item 10): what a rebuild costs, and what a pick costs
//! while one runs. Short runs (10 samples); the figures and the machine load at the time are
//! in `docs/BENCHMARKS.md`.
//!
//! Run: `cargo bench -p sd-lb --bench rebuild`
//!
//! - `rebuild/<balancer>/<n>`: building the table for `n` endpoints from scratch (the
//!   constructor builds it on the calling thread; after an update the same work runs on a
//!   background thread).
//! - `first_pick_after_update/<balancer>/<n>`: the first pick after an update of `n`
//!   endpoints (one endpoint replaced): it starts the background rebuild and answers from the
//!   previous table. (Before item 10 this pick built the table itself.)
//! - `pick_during_rebuild/<balancer>/<n>`: one pick while the background rebuild of `n`
//!   endpoints runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::{Balancer, ConsistentHash, P2c, Request, Weighted};

const SIZES: [u32; 2] = [1_000, 10_000];

fn instances(n: u32, variant: u32) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let i = if i == 0 { 1_000_000 + variant } else { i };
            Instance::builder(
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                8080,
            )
            .weight(1 + i % 4)
            .build()
        })
        .collect()
}

fn endpointer(rt: &tokio::runtime::Runtime, n: u32) -> Arc<DefaultEndpointer<u32>> {
    let _rt = rt.enter();
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u32, BoxError> { Ok(i.port() as u32) },
    ));
    ep.apply(Event::instances(instances(n, 0)));
    ep
}

/// A balancer under test, with its blocking refresh.
struct Subject {
    name: &'static str,
    balancer: Box<dyn Balancer<u32>>,
    refresh: Box<dyn Fn()>,
}

fn subjects(ep: &Arc<DefaultEndpointer<u32>>) -> Vec<Subject> {
    let hash = Arc::new(ConsistentHash::new(ep.clone()));
    let weighted = Arc::new(Weighted::new(ep.clone()));
    let p2c = Arc::new(P2c::pending_requests(ep.clone()));
    vec![
        Subject {
            name: "maglev",
            balancer: Box::new(hash.clone()),
            refresh: Box::new(move || hash.refresh()),
        },
        Subject {
            name: "weighted",
            balancer: Box::new(weighted.clone()),
            refresh: Box::new(move || weighted.refresh()),
        },
        Subject {
            name: "p2c",
            balancer: Box::new(p2c.clone()),
            refresh: Box::new(move || p2c.refresh()),
        },
    ]
}

fn rebuild(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("rebuild");
    for n in SIZES {
        let ep = endpointer(&rt, n);
        g.bench_with_input(BenchmarkId::new("maglev", n), &n, |b, _| {
            b.iter(|| black_box(ConsistentHash::new(ep.clone())))
        });
        g.bench_with_input(BenchmarkId::new("weighted", n), &n, |b, _| {
            b.iter(|| black_box(Weighted::new(ep.clone())))
        });
        g.bench_with_input(BenchmarkId::new("p2c", n), &n, |b, _| {
            b.iter(|| black_box(P2c::pending_requests(ep.clone())))
        });
    }
    g.finish();
}

fn during(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in SIZES {
        let ep = endpointer(&rt, n);
        let sets = [
            Event::instances(instances(n, 1)),
            Event::instances(instances(n, 2)),
        ];
        for s in subjects(&ep) {
            let mut g = c.benchmark_group("first_pick_after_update");
            g.bench_with_input(BenchmarkId::new(s.name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        (s.refresh)();
                        ep.apply(sets[(i % 2) as usize].clone());
                        let t = Instant::now();
                        black_box(s.balancer.pick_with(&Request::new().with_key(i)).unwrap());
                        total += t.elapsed();
                    }
                    total
                })
            });
            g.finish();
            let mut g = c.benchmark_group("pick_during_rebuild");
            g.bench_with_input(BenchmarkId::new(s.name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    let mut round = 0u64;
                    while left > 0 {
                        (s.refresh)();
                        ep.apply(sets[(round % 2) as usize].clone());
                        round += 1;
                        // Starts the rebuild.
                        black_box(s.balancer.pick().unwrap());
                        // Picks while it runs (a few, well within one rebuild's time).
                        let batch = left.min(64);
                        let t = Instant::now();
                        for k in 0..batch {
                            black_box(s.balancer.pick_with(&Request::new().with_key(k)).unwrap());
                        }
                        total += t.elapsed();
                        left -= batch;
                    }
                    total
                })
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = rebuild, during
}
criterion_main!(benches);
