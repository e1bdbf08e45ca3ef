//! Pick cost of every balancer at N = 1, 10, 100, 1 000 and 10 000 endpoints, on one thread
//! and on two threads picking concurrently from the same balancer.
//!
//! Run: `cargo bench -p sd-lb --bench pick`
//!
//! Each figure is the time of one pick on one thread (for two threads: wall time of the
//! concurrent run divided by the picks of one thread). A pick returns an owned `Endpoint`
//! (one reference-count increment and decrement) except `rr_local`, which returns a
//! reference, and `rr_shared` and `rr_strict`, which call `RoundRobin::pick` (what users
//! call on a `RoundRobin`): an `EndpointRef` borrowed from the thread's cached snapshot.
//! `rr_shared` is `RoundRobin::new` (a rotation per thread, the default), `rr_strict` is
//! `RoundRobin::strict` (go-kit's shared counter), `rr_shared_owned` is `RoundRobin::new`
//! through `Balancer::pick` (an owned endpoint, what `Retry` and the tower adapters use).
//! `random` is `Random::pick` (borrowed from the same per-thread cache, since 2026-12-02;
//! before, an owned endpoint), `random_owned` the same through `Balancer::pick`.
//! (Until 2026-12 `rr_shared` was go-kit's shared counter returning an owned endpoint and
//! `rr_per_thread` the per-thread counter, both through an `arc-swap` load per pick.) The `p2c_*` figures include ending the request (dropping the guard), which is
//! where peak-EWMA reads the clock a second time; `p2c_*_pick_only` time the pick alone.
//! Consistent hashing picks a different key each time.
//!
//! The endpoints have weights 1 to 4, so `p2c_*` and `consistent_hash` are the weighted
//! balancers (P2C draws by weight: a binary search over cumulative weights);
//! `p2c_inflight_unweighted*` is the same P2C with `ignore_weights()` (uniform draws, the
//! cost of any set whose weights are all equal).
//!
//! `slow_start_*` wrap round robin and P2C in [`SlowStart`]: `_idle` with nothing warming
//! (the wrapper's fixed cost), `_warming` right after the set grew by a tenth (at least one
//! endpoint), every new endpoint at the 10 % floor of a one-hour ramp, so most of its turns
//! are picked again.
//!
//! `drain_rr` is round robin under [`Drain`] (in-flight counting for graceful drain), the
//! guard dropped at once (one thread only).
//!
//! `zone_*` wrap them in [`ZoneAware`] for a caller in zone a (a fifth of the endpoints):
//! `zone_rr_local` keeps every request local (callers spread like the endpoints);
//! `zone_p2c_inflight_spill` is told half the callers are in zone a, so 40 % of the picks
//! stay local and the rest spill to b and c. Below 6 endpoints there is no zone preference.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sd_core::{BoxError, DefaultEndpointer, Endpointer, Event, Instance, InstanceCache};
use sd_lb::{
    Balancer, ConsistentHash, Drain, DrainFactory, LocalRoundRobin, P2c, Random, Request,
    RoundRobin, SlowStart, SlowStartConfig, Weighted, ZoneAware,
};

const SIZES: [usize; 5] = [1, 10, 100, 1_000, 10_000];

type Ep = Arc<DefaultEndpointer<u64>>;

fn endpointer(n: usize) -> Ep {
    let src = InstanceCache::new();
    let ep = Arc::new(DefaultEndpointer::new(
        &src,
        |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
    ));
    ep.apply(instances(n));
    ep
}

/// `n` instances `10.x.y.z:8080` with weights 1 to 4, in zones a (a fifth), b and c.
fn instances(n: usize) -> Event {
    Event::instances(
        (0..n)
            .map(|i| {
                Instance::builder(
                    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                    8080,
                )
                .weight(1 + (i % 4) as u32)
                .meta("zone", ["a", "b", "c", "b", "c"][i % 5])
                .build()
            })
            .collect::<Vec<_>>(),
    )
}

/// `inner` under slow start (a one-hour window), after `ep` grew by a tenth (at least one):
/// the new endpoints are warming up while the benchmark runs.
fn warming<B: Balancer<u64>>(ep: &Ep, inner: B) -> SlowStart<B, u64> {
    let lb = SlowStart::new(inner, SlowStartConfig::new(Duration::from_secs(3600))).unwrap();
    let n = ep.endpoints().all().len();
    ep.apply(instances(n + (n / 10).max(1)));
    lb.pick().unwrap();
    lb
}

/// A picker: something that can be cloned into each thread and picks once per call.
trait Picker: Send + Sync {
    fn pick_once(&self, i: u64) -> u64;
}

struct Plain<B>(B);
impl<B: Balancer<u64>> Picker for Plain<B> {
    #[inline]
    fn pick_once(&self, _: u64) -> u64 {
        *self.0.pick().unwrap()
    }
}

/// `RoundRobin::pick` itself: the endpoint borrowed from the thread's cached snapshot.
struct Borrowed(RoundRobin<Ep, u64>);
impl Picker for Borrowed {
    #[inline]
    fn pick_once(&self, _: u64) -> u64 {
        **self.0.pick().unwrap()
    }
}

/// `Random::pick` itself: borrowed from the same per-thread cache.
struct BorrowedRandom(Random<Ep, u64>);
impl Picker for BorrowedRandom {
    #[inline]
    fn pick_once(&self, _: u64) -> u64 {
        **self.0.pick().unwrap()
    }
}

struct Guarded<B>(B);
impl<B: Balancer<u64>> Picker for Guarded<B> {
    #[inline]
    fn pick_once(&self, _: u64) -> u64 {
        let p = self.0.pick_with(&Request::new()).unwrap();
        **p.endpoint()
    }
}

struct Keyed<B>(B);
impl<B: Balancer<u64>> Picker for Keyed<B> {
    #[inline]
    fn pick_once(&self, i: u64) -> u64 {
        **self
            .0
            .pick_with(&Request::new().with_key(i))
            .unwrap()
            .endpoint()
    }
}

fn run<P: Picker + 'static>(c: &mut Criterion, name: &str, make: impl Fn(Ep) -> P) {
    let mut one = c.benchmark_group(format!("{name}/1thread"));
    for n in SIZES {
        let picker = make(endpointer(n));
        one.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                black_box(picker.pick_once(i))
            })
        });
    }
    one.finish();

    let mut two = c.benchmark_group(format!("{name}/2threads"));
    for n in SIZES {
        let picker = Arc::new(make(endpointer(n)));
        two.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2u64 {
                        let picker = picker.clone();
                        s.spawn(move || {
                            for i in 0..iters {
                                black_box(picker.pick_once(i.wrapping_mul(2) + t));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    two.finish();
}

/// The local round robin picks through `&mut self`: one handle per thread.
fn run_local(c: &mut Criterion) {
    let mut one = c.benchmark_group("rr_local/1thread");
    for n in SIZES {
        let ep = endpointer(n);
        let mut rr = LocalRoundRobin::new(ep.clone());
        one.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(**rr.pick().unwrap()))
        });
    }
    one.finish();
    let mut two = c.benchmark_group("rr_local/2threads");
    for n in SIZES {
        let ep = endpointer(n);
        two.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        let mut rr = LocalRoundRobin::new(ep.clone());
                        s.spawn(move || {
                            for _ in 0..iters {
                                black_box(**rr.pick().unwrap());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    two.finish();
}

/// P2C's pick alone: the guards are dropped (ending the requests) outside the timed region,
/// in chunks of 10 000.
fn run_pick_only(c: &mut Criterion, name: &str, make: impl Fn(Ep) -> P2c<Ep, u64>) {
    let mut g = c.benchmark_group(format!("{name}/1thread"));
    for n in SIZES {
        let p2c = make(endpointer(n));
        let mut held = Vec::with_capacity(10_000);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(10_000);
                    let start = Instant::now();
                    for _ in 0..chunk {
                        held.push(p2c.pick_with(&Request::new()).unwrap());
                    }
                    total += start.elapsed();
                    held.clear();
                    left -= chunk;
                }
                total
            })
        });
    }
    g.finish();
}

/// `Drain` over round robin: endpoints made by a `DrainFactory`, each pick counted in flight
/// until its guard drops.
fn run_drain(c: &mut Criterion) {
    let mut one = c.benchmark_group("drain_rr/1thread");
    for n in SIZES {
        let src = InstanceCache::new();
        let factory = DrainFactory::new(
            |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
            Duration::from_secs(30),
        );
        let ep = Arc::new(DefaultEndpointer::new(&src, factory));
        ep.apply(instances(n));
        let lb = Drain::new(RoundRobin::new(ep));
        one.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(***lb.pick_with(&Request::new()).unwrap().endpoint()))
        });
    }
    one.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    run(c, "rr_shared", |ep| Borrowed(RoundRobin::new(ep)));
    run(c, "rr_shared_owned", |ep| Plain(RoundRobin::new(ep)));
    run(c, "rr_strict", |ep| Borrowed(RoundRobin::strict(ep)));
    run_local(c);
    run(c, "random", |ep| BorrowedRandom(Random::new(ep)));
    run(c, "random_owned", |ep| Plain(Random::new(ep)));
    run(c, "weighted", |ep| Plain(Weighted::new(ep)));
    run(c, "p2c_inflight", |ep| Guarded(P2c::pending_requests(ep)));
    run(c, "p2c_peak_ewma", |ep| Guarded(P2c::peak_ewma(ep)));
    run(c, "p2c_inflight_unweighted", |ep| {
        Guarded(P2c::pending_requests(ep).ignore_weights())
    });
    run_pick_only(c, "p2c_inflight_pick_only", P2c::pending_requests);
    run_pick_only(c, "p2c_inflight_unweighted_pick_only", |ep| {
        P2c::pending_requests(ep).ignore_weights()
    });
    run_pick_only(c, "p2c_peak_ewma_pick_only", P2c::peak_ewma);
    run(c, "consistent_hash", |ep| Keyed(ConsistentHash::new(ep)));
    run(c, "slow_start_rr_idle", |ep| {
        let cfg = SlowStartConfig::new(Duration::from_secs(3600));
        Plain(SlowStart::new(RoundRobin::new(ep), cfg).unwrap())
    });
    run(c, "slow_start_rr_warming", |ep| {
        Plain(warming(&ep, RoundRobin::new(ep.clone())))
    });
    run(c, "slow_start_p2c_inflight_warming", |ep| {
        Guarded(warming(&ep, P2c::pending_requests(ep.clone())))
    });
    run_drain(c);
    run(c, "zone_rr_local", |ep| {
        Plain(ZoneAware::new(RoundRobin::new(ep), "a"))
    });
    run(c, "zone_p2c_inflight_spill", |ep| {
        let callers = [("a", 2.0), ("b", 1.0), ("c", 1.0)];
        Guarded(
            ZoneAware::new(P2c::pending_requests(ep), "a")
                .callers(callers)
                .unwrap(),
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
