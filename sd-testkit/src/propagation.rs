//! Propagation latency through any [`Registry`]: a registration or deregistration → a
//! [`DefaultEndpointer`] following an instancer of the same registry shows it. The loop of
//! every backend's `cargo bench -p <backend> --bench propagation` ([`bench_main`]) and of
//! the go-kit comparison's registry scenarios (`bench/rust`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Instance, Registration, Registry, ServiceQuery,
};

/// Which change was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A registration became visible.
    Register,
    /// A deregistration became visible.
    Deregister,
}

/// One measured change.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What changed.
    pub change: Change,
    /// From just before the registrar's call to the moment the endpointer shows the change.
    pub latency: Duration,
    /// How long the registrar's call itself took (part of `latency`).
    pub request: Duration,
}

/// p50 / p99 / max / mean of some latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// How many.
    pub n: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

/// Summarises latencies (nearest-rank percentiles).
pub fn summarize(latencies: impl IntoIterator<Item = Duration>) -> Summary {
    let mut v: Vec<Duration> = latencies.into_iter().collect();
    v.sort();
    let rank = |p: f64| {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    let total: Duration = v.iter().sum();
    Summary {
        n: v.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        max: v.last().copied().unwrap_or_default(),
        mean: u32::try_from(v.len())
            .ok()
            .filter(|n| *n > 0)
            .map_or(Duration::ZERO, |n| total / n),
    }
}

/// Measures `changes` alternating registrations and deregistrations of one instance of
/// `service` (unique to the run) through `registry`. Each change waits at most
/// `per_change_timeout` (an error then); the instance is deregistered at the end.
pub async fn propagation(
    registry: &dyn Registry,
    service: &str,
    changes: usize,
    per_change_timeout: Duration,
) -> Result<Vec<Sample>, Error> {
    let instancer = registry.instancer(&ServiceQuery::new(service)).await?;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });
    endpointer.ready().await;
    let id = format!("{service}-1");
    let registrar = registry
        .registrar(Registration::new(
            service,
            Instance::builder("127.0.0.1", 18_080)
                .id(id.clone())
                .build(),
        ))
        .await?;
    let mut changed = endpointer.changes();
    let mut samples = Vec::with_capacity(changes);
    let mut outcome = Ok(());
    for k in 0..changes {
        let change = if k % 2 == 0 {
            Change::Register
        } else {
            Change::Deregister
        };
        let t0 = Instant::now();
        let sent = match change {
            Change::Register => registrar.register().await,
            Change::Deregister => registrar.deregister().await,
        };
        if let Err(e) = sent {
            outcome = Err(e);
            break;
        }
        let request = t0.elapsed();
        let want = change == Change::Register;
        let seen = tokio::time::timeout(per_change_timeout, async {
            loop {
                let present = endpointer.endpoints().all().iter().any(|e| **e == id);
                if present == want {
                    return true;
                }
                if !changed.changed().await {
                    return false;
                }
            }
        })
        .await;
        if seen != Ok(true) {
            outcome = Err(Error::config(format!(
                "propagation: change {k} ({change:?}) not visible within {per_change_timeout:?}"
            )));
            break;
        }
        samples.push(Sample {
            change,
            latency: t0.elapsed(),
            request,
        });
    }
    let _ = registrar.deregister().await;
    endpointer.close().await;
    instancer.stop().await;
    outcome.map(|()| samples)
}

/// The `main` of a backend's propagation benchmark (`harness = false`): when run by
/// `cargo bench`, with the registry server's address in the environment variable `env`,
/// measures `SD_BENCH_CHANGES` changes (default 400) through the registry `make` builds from
/// that address, after 20 warm-up changes, and prints one JSON line per kind of change, the
/// registrar's call alone, and a summary line naming `target`. Prints why and returns when
/// not run by `cargo bench` or when `env` is unset (so `cargo test` does nothing).
pub fn bench_main(
    backend: &str,
    env: &str,
    target: &str,
    make: impl Fn(&str) -> Result<Arc<dyn Registry>, Error>,
) {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("propagation: run with `cargo bench -p sd-{backend} --bench propagation`");
        return;
    }
    let Some(addr) = std::env::var(env).ok().filter(|a| !a.is_empty()) else {
        eprintln!("propagation: skipped, {env} not set (eval \"$(scripts/registries up)\")");
        return;
    };
    let changes: usize = std::env::var("SD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
        .clamp(2, 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();
    let registry = make(&addr).expect("registry");
    let service = format!("bench-propagation-{}", std::process::id());
    let timeout = Duration::from_secs(5);
    rt.block_on(propagation(
        &*registry,
        &format!("{service}-warm"),
        20,
        timeout,
    ))
    .expect("warm-up");
    let samples = rt
        .block_on(propagation(&*registry, &service, changes, timeout))
        .expect("propagation run");
    let of = |c: Change| summarize(samples.iter().filter(|s| s.change == c).map(|s| s.latency));
    let all = summarize(samples.iter().map(|s| s.latency));
    let request = summarize(samples.iter().map(|s| s.request));
    for (kind, s) in [
        ("register", of(Change::Register)),
        ("deregister", of(Change::Deregister)),
        ("all", all),
        ("request_only", request),
    ] {
        println!(
            "{{\"bench\":\"{backend}_propagation\",\"kind\":\"{kind}\",\"n\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"mean_us\":{}}}",
            s.n,
            s.p50.as_micros(),
            s.p99.as_micros(),
            s.max.as_micros(),
            s.mean.as_micros()
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{backend} propagation over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (registrar call alone: p50 {:.2} ms); target {target}",
        all.n,
        ms(all.p50),
        ms(all.p99),
        ms(all.max),
        ms(request.p50),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        let s = summarize(v.iter().rev().copied());
        assert_eq!(s.n, 200);
        assert_eq!(s.p50, Duration::from_millis(100));
        assert_eq!(s.p99, Duration::from_millis(198));
        assert_eq!(s.max, Duration::from_millis(200));
        assert_eq!(summarize([]).mean, Duration::ZERO);
        assert_eq!(summarize([]).p99, Duration::ZERO);
    }

    #[tokio::test]
    async fn measures_the_embedded_registry() {
        let registry = sd_core::MemoryRegistry::new();
        let samples = propagation(&registry, "svc", 10, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(samples.len(), 10);
        assert_eq!(samples[0].change, Change::Register);
        assert_eq!(samples[1].change, Change::Deregister);
        assert!(samples.iter().all(|s| s.request <= s.latency));
    }
}
