//! The cost of counting picks (feature `metrics`): a round-robin pick bare, through
//! `Metered` with no recorder installed (the facade's no-op handles), and through `Metered`
//! with handles from metrics-exporter-prometheus's recorder (an atomic add per pick), on
//! one thread, 10 endpoints.
//!
//! Run: `cargo bench -p sd-lb --features metrics --bench metered`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::{FixedEndpointer, Instance};
use sd_lb::{Balancer, BalancerMetrics, Metered, RoundRobin};

fn endpointer() -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..10).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("metered_pick");
    let bare = RoundRobin::new(endpointer());
    // Through the trait, as `Metered` picks (an owned endpoint).
    g.bench_function("rr_bare", |b| {
        b.iter(|| *Balancer::pick(black_box(&bare)).unwrap())
    });
    let noop = Metered::new(
        RoundRobin::new(endpointer()),
        BalancerMetrics::new("bench", "web"),
    );
    g.bench_function("rr_metered_no_recorder", |b| {
        b.iter(|| *black_box(&noop).pick().unwrap())
    });
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let prom = Metered::new(
        RoundRobin::new(endpointer()),
        metrics::with_local_recorder(&recorder, || BalancerMetrics::new("bench", "web")),
    );
    g.bench_function("rr_metered_prometheus", |b| {
        b.iter(|| *black_box(&prom).pick().unwrap())
    });
    g.finish();
    assert!(handle.render().contains("sdkit_balancer_picks_total"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
