//! Propagation latency on the real Eureka server: a registration → a `DefaultEndpointer`
//! over a polling instancer shows it, with the poll interval set to 1 s.
//!
//! ```sh
//! eval "$(scripts/registries up eureka)"
//! cargo bench -p sd-eureka --bench propagation
//! ```
//!
//! Target: every sample within the bound **poll interval (+10 % jitter) + the server's
//! response-cache refresh + one request**. The test server serves `GET /apps/{APP}` from its
//! read-write cache, invalidated on every change (`use-read-only-response-cache=false`), so
//! its cache refresh is 0 and the bound is 1.1 s plus a request; a server with the default
//! read-only cache adds up to `response-cache-update-interval-ms` (30 s). Set
//! `SD_EUREKA_CACHE_REFRESH_MS` when benchmarking such a server. Expected mean: half a poll.
//!
//! Each registration waits a random 0..1 poll first, so changes are not in phase with the
//! polls. Criterion measures register → visible (`iter_custom`); the bench also prints every
//! sample's p50 / p99 / max and the bound, and the count of samples over it. Skips (exit 0)
//! when `SD_TEST_EUREKA` is not set.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Instance, Registrar, Registration, ServiceQuery,
};
use sd_eureka::EurekaRegistry;

const POLL: Duration = Duration::from_secs(1);

static SAMPLES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

/// Registers one instance, waits until the endpointer shows it, deregisters it and waits
/// until it is gone; returns the register → visible time.
async fn one(
    registry: &EurekaRegistry,
    endpointer: &DefaultEndpointer<String>,
    service: &str,
    n: u64,
) -> Duration {
    let port = 20000 + u16::try_from(n % 20000).unwrap_or(0);
    let registrar = registry
        .eureka_registrar(Registration::new(
            service,
            Instance::builder("127.0.0.1", port)
                .id(format!("p{n}"))
                .build(),
        ))
        .expect("registrar");
    let addr = format!("127.0.0.1:{port}");
    let mut changes = endpointer.changes();
    // A random 0..1 poll first: otherwise each registration would follow the poll that
    // showed the previous deregistration, and always wait a whole interval.
    tokio::time::sleep(sd_core::backoff::jittered(POLL / 2, 1.0)).await;
    let start = Instant::now();
    registrar.register().await.expect("register");
    while !endpointer
        .endpoints()
        .all()
        .iter()
        .any(|e| e.as_str() == addr)
    {
        tokio::time::timeout(Duration::from_secs(60), changes.changed())
            .await
            .expect("visible within 60 s");
    }
    let latency = start.elapsed();
    registrar.deregister().await.expect("deregister");
    while !endpointer.endpoints().all().is_empty() {
        tokio::time::timeout(Duration::from_secs(60), changes.changed())
            .await
            .expect("gone within 60 s");
    }
    latency
}

fn bench(c: &mut Criterion) {
    let Some(addr) = std::env::var("SD_TEST_EUREKA")
        .ok()
        .filter(|a| !a.is_empty())
    else {
        eprintln!("propagation: skipped, SD_TEST_EUREKA not set (eval \"$(scripts/registries up eureka)\")");
        return;
    };
    let cache_refresh = Duration::from_millis(
        std::env::var("SD_EUREKA_CACHE_REFRESH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rest = addr.strip_prefix("http://").expect("http:// URL");
    let registry = EurekaRegistry::from_url(&format!("eureka://{rest}?poll=1s")).expect("registry");
    let service = format!("bench-propagation-{}", std::process::id());
    let (instancer, endpointer) = rt.block_on(async {
        let instancer = registry
            .eureka_instancer(&ServiceQuery::new(service.as_str()))
            .await;
        let endpointer =
            DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
                Ok(i.addr().to_string())
            });
        (instancer, endpointer)
    });
    let mut n = 0u64;
    let mut group = c.benchmark_group("eureka");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group.bench_function("propagation_register_poll_1s", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let d = one(&registry, &endpointer, &service, n).await;
                    SAMPLES.lock().unwrap().push(d);
                    total += d;
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(async {
        endpointer.close().await;
        sd_core::Instancer::stop(&instancer).await;
    });

    let mut samples = SAMPLES.lock().unwrap().clone();
    samples.sort();
    let at =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let bound = POLL.mul_f64(1.1) + cache_refresh + Duration::from_millis(250);
    let over = samples.iter().filter(|d| **d > bound).count();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    println!(
        "{{\"bench\":\"eureka_propagation\",\"poll_ms\":{},\"cache_refresh_ms\":{},\"bound_ms\":{},\"n\":{},\"mean_ms\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"over_bound\":{}}}",
        POLL.as_millis(),
        cache_refresh.as_millis(),
        bound.as_millis(),
        samples.len(),
        mean.as_millis(),
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        samples.last().copied().unwrap_or_default().as_millis(),
        over
    );
    println!(
        "eureka propagation (register -> endpointer), poll interval {POLL:?} + server cache refresh {cache_refresh:?}: \
         n={} mean {mean:?} p50 {:?} p99 {:?} max {:?}; bound {bound:?} (poll +10 % jitter + cache refresh + 250 ms for the request); {over} over",
        samples.len(),
        at(0.5),
        at(0.99),
        samples.last().copied().unwrap_or_default()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
