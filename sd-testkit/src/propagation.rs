//! Propagation latency through any [`Registry`]: a registration or deregistration → a
//! [`DefaultEndpointer`] following an instancer of the same registry shows it. For the
//! backends' `cargo bench` propagation benchmarks (sd-zk's; sd-consul's `bench` module does
//! the same with its typed registry).

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
