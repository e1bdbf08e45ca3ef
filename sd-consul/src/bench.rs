//! Propagation-latency measurement, shared by `benches/propagation.rs` and by comparisons
//! with other implementations. Not part of the stable API.

use std::time::{Duration, Instant};

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Instance, Registrar, Registration, ServiceQuery,
};

use crate::client::BACKEND;
use crate::registry::ConsulRegistry;

/// Which change was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A registration became visible.
    Register,
    /// A deregistration became visible.
    Deregister,
}

impl Change {
    /// `register` or `deregister`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Register => "register",
            Change::Deregister => "deregister",
        }
    }
}

/// One measured change.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What changed.
    pub change: Change,
    /// From just before the agent request to the moment the endpointer shows the change.
    pub latency: Duration,
    /// How long the agent request itself took (part of `latency`).
    pub request: Duration,
}

/// p50 / p99 / max of some latencies.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// How many.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

/// Nearest-rank percentile of `sorted` (ascending); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises latencies.
pub fn summarize(latencies: impl IntoIterator<Item = Duration>) -> Summary {
    let mut v: Vec<Duration> = latencies.into_iter().collect();
    v.sort();
    let total: Duration = v.iter().sum();
    Summary {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied().unwrap_or_default(),
        mean: if v.is_empty() {
            Duration::ZERO
        } else {
            total / v.len() as u32
        },
    }
}

/// Measures `changes` alternating registrations and deregistrations of one instance of
/// `service` (which should be unique to this run): for each, the time from just before the
/// agent request until a [`DefaultEndpointer`] following a [`ConsulInstancer`](crate::ConsulInstancer)
/// shows it. Each change waits at most `per_change_timeout`; the instance is deregistered
/// at the end.
pub async fn propagation(
    registry: &ConsulRegistry,
    service: &str,
    changes: usize,
    per_change_timeout: Duration,
) -> Result<Vec<Sample>, Error> {
    let instancer = registry.consul_instancer(&ServiceQuery::new(service)).await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });
    endpointer.ready().await;
    let id = format!("{service}-1");
    let registrar = registry.consul_registrar(Registration::new(
        service,
        Instance::builder("127.0.0.1", 18_080)
            .id(id.clone())
            .build(),
    ))?;
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
                let present = endpointer
                    .endpoints()
                    .all()
                    .iter()
                    .any(|e| e.as_str() == id);
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
            outcome = Err(Error::Timeout {
                backend: BACKEND,
                message: format!(
                    "change {k} ({}) not visible within {per_change_timeout:?}",
                    change.as_str()
                ),
            });
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
    sd_core::Instancer::stop(&instancer).await;
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
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(summarize([]).mean, Duration::ZERO);
    }
}
