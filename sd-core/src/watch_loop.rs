//! The shared watch loop every backend instancer runs.
//!
//! A backend implements [`Source`]: one round of talking to its registry, which is a
//! blocking query (Consul), a wait for a watch event followed by a read (etcd, ZooKeeper),
//! or a plain poll (Eureka, DNS). [`WatchedInstancer::start`] runs the first round before it
//! returns (go-kit's constructors do the same, e.g. CONSUL-1), then loops in the background:
//!
//! - a [`Step::Publish`] publishes the set and resets the backoff, then waits the poll
//!   interval, if any;
//! - a [`Step::Fail`] publishes the error **at once** (go-kit publishes it only after the
//!   backoff sleep, CONSUL-6.2) and backs off; when the error carries the registry's
//!   `Retry-After` ([`Error::retry_after`]), the wait is the longer of the backoff delay and
//!   that (capped at the backoff's cap);
//! - a [`Step::Skip`] publishes nothing and backs off (go-kit's "index is not sane").
//!
//! Stopping cancels the round in flight (dropping its future aborts the HTTP request or
//! watch) and any sleep, and waits for the loop to end (fixes CONSUL-9).
//!
//! The loop survives user code: a round that panics (a backend bug, or a `tracing` layer
//! that panics while the round logs) counts as a failed round, and the loop's own log lines
//! are written after the state is published, with a panic in them caught. If the loop ends
//! anyway (its runtime shuts down while the instancer lives on), the cache is closed: every
//! subscription ends, and an endpointer following it turns `Stale(Stopped)` and says so.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use tracing::Instrument;

use crate::backoff::{jittered, Backoff};
use crate::cache::{InstanceCache, Subscription};
use crate::error::Error;
use crate::event::{Event, InstanceSet};
use crate::instance::Instance;
use crate::instancer::Instancer;
use crate::observe::LoopMetrics;
use crate::task::{panic_message, sleep_or_cancel, survive, BackgroundTask};

/// The outcome of one round of a [`Source`].
///
/// `#[non_exhaustive]`: a `match` on it needs a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// The complete current set.
    Publish(Vec<Instance>),
    /// Discovery failed; the error is published and the loop backs off.
    Fail(Error),
    /// Nothing to publish, but the loop should back off before the next round
    /// (e.g. a blocking-query index that is not sane).
    Skip(String),
}

/// One backend's way of reading its registry, one round at a time.
#[async_trait]
pub trait Source: Send + 'static {
    /// Performs one round. Long-polling sources block here until something changes or their
    /// wait time ends. The future is dropped when the instancer stops.
    async fn next_step(&mut self) -> Step;

    /// The wait before the next round after a successful one (a [`Step::Publish`]), when
    /// the source knows better than the fixed [`LoopConfig::interval`]: a DNS answer's TTL,
    /// say. Used as given (the source applies its own jitter); `None`, the default, keeps
    /// `LoopConfig::interval` with its jitter.
    fn refresh_after(&self) -> Option<Duration> {
        None
    }

    /// The registry's own time of the latest change in the set the last round returned
    /// (a modification time, a last-updated timestamp), if it gives one. With the `metrics`
    /// feature the loop records how long after that time the change reached subscribers
    /// (`sdkit_instancer_propagation_delay_seconds`), for a set that changed. Until a round
    /// has published a set, the loop ignores it: the first read finds registrations, not
    /// changes. `None`, the default, records nothing. See [`unix_millis`].
    fn changed_at(&self) -> Option<SystemTime> {
        None
    }
}

/// A registry timestamp in milliseconds since the Unix epoch (ZooKeeper's `mtime`, Eureka's
/// `lastUpdatedTimestamp`) as a time, for [`Source::changed_at`]; `None` when not positive.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(sd_core::watch_loop::unix_millis(1_500), Some(UNIX_EPOCH + Duration::from_millis(1_500)));
/// assert_eq!(sd_core::watch_loop::unix_millis(0), None);
/// ```
pub fn unix_millis(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0)?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// How the loop paces itself.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The backend name, for logs.
    pub backend: &'static str,
    /// What is watched (service name, prefix, path), for logs.
    pub target: String,
    /// The service name, for the `service` label of metrics and spans; `None` uses
    /// `target`. Never an instance id or address (docs/OBSERVABILITY.md).
    pub service: Option<String>,
    /// Wait this long after a successful round (poll-based sources). `None` for sources that
    /// block by themselves.
    pub interval: Option<Duration>,
    /// Jitter applied to `interval`, as a fraction (0.1 = ±10 %).
    pub interval_jitter: f64,
    /// Backoff after failures.
    pub backoff: Backoff,
}

impl LoopConfig {
    /// A config with go-kit's backoff (10 ms .. 1 min) and no poll interval.
    pub fn new(backend: &'static str, target: impl Into<String>) -> Self {
        LoopConfig {
            backend,
            target: target.into(),
            service: None,
            interval: None,
            interval_jitter: 0.1,
            backoff: Backoff::default(),
        }
    }

    /// Sets the service name used in metrics and spans (default: `target`).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The `service` label: [`service`](Self::service), else `target`.
    pub fn service_label(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.target)
    }

    /// Sets the poll interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Replaces the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// An [`Instancer`] driven by a [`Source`] on the shared loop. Backends return this (or wrap it).
///
/// The loop runs until [`stop`](Instancer::stop), or until this instancer **and** every
/// subscription to it are dropped: an endpointer built from it keeps it running.
pub struct WatchedInstancer {
    watch: Arc<Watch>,
}

/// The loop and its cache, shared by the instancer and its subscriptions.
struct Watch {
    cache: Arc<InstanceCache>,
    task: BackgroundTask,
    config: LoopConfig,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.cancel();
        self.cache.close();
    }
}

impl fmt::Debug for WatchedInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedInstancer")
            .field("backend", &self.watch.config.backend)
            .field("target", &self.watch.config.target)
            .finish()
    }
}

/// Publishes the outcome of one round and returns whether it failed (`Fail` or `Skip`).
///
/// The cache is updated first and only then is anything logged, and the logging runs under
/// [`survive`]: a `tracing` layer is user code and may panic, and the loop must carry on
/// with a consistent state (the panic is dropped).
fn publish(
    cache: &InstanceCache,
    config: &LoopConfig,
    metrics: &mut LoopMetrics,
    step: Step,
    changed_at: Option<SystemTime>,
) -> bool {
    match step {
        Step::Publish(list) => {
            let (set, dropped) = InstanceSet::new_counting(list);
            let n = set.len();
            let changed = cache.update(Event::Instances(set));
            metrics.succeeded(n, changed, changed_at);
            survive(|| {
                if dropped > 0 {
                    tracing::warn!(backend = config.backend, target = %config.target, dropped,
                        "registry returned entries with the same address and id; kept one of each");
                }
                if changed {
                    tracing::debug!(backend = config.backend, target = %config.target, instances = n, "instances changed");
                }
            });
            false
        }
        Step::Fail(e) => {
            let published = cache.update(Event::Error(e.clone()));
            metrics.failed(published);
            survive(
                || tracing::warn!(backend = config.backend, target = %config.target, error = %e, "discovery failed"),
            );
            true
        }
        Step::Skip(reason) => {
            metrics.failed(false);
            survive(
                || tracing::warn!(backend = config.backend, target = %config.target, reason = %reason, "discovery round skipped"),
            );
            true
        }
    }
}

/// One round of `source`. A panic in it (a backend's code, or a `tracing` layer it logs
/// through) fails the round instead of ending the loop; the next round follows the backoff.
///
/// The round runs in a `sdkit.discover` span (`backend`, `service`, `outcome`).
async fn round<S: Source>(source: &mut S, config: &LoopConfig) -> Step {
    let span = tracing::debug_span!(
        "sdkit.discover",
        backend = config.backend,
        service = config.service_label(),
        outcome = tracing::field::Empty
    );
    let step = match AssertUnwindSafe(source.next_step().instrument(span.clone()))
        .catch_unwind()
        .await
    {
        Ok(step) => step,
        Err(panic) => Step::Fail(Error::unavailable(
            config.backend,
            format!("discovery round panicked: {}", panic_message(&*panic)),
        )),
    };
    let outcome = match step {
        Step::Publish(_) => "ok",
        Step::Fail(_) => "error",
        _ => "skipped",
    };
    survive(|| {
        span.record("outcome", outcome);
    });
    step
}

/// Closes the cache when dropped: lives in the loop, so subscribers see their subscription
/// end (and an endpointer turns `Stale`) however the loop ends: stopped, or dropped with the
/// runtime it ran on while the instancer lives on.
pub(crate) struct CloseOnDrop(pub(crate) Arc<InstanceCache>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The wait a failed round's error asks for (an HTTP `Retry-After`, see
/// [`Error::retry_after`]).
fn retry_hint(step: &Step) -> Option<Duration> {
    match step {
        Step::Fail(e) => e.retry_after(),
        _ => None,
    }
}

/// The wait after a failed round: the backoff's next delay, or the registry's
/// `Retry-After` when longer, capped at the backoff's cap.
fn failure_delay(cfg: &mut LoopConfig, hint: Option<Duration>) -> Duration {
    let delay = cfg.backoff.next_delay();
    match hint {
        Some(asked) => delay.max(asked.min(cfg.backoff.max())),
        None => delay,
    }
}

/// The wait after a successful round: the source's own, else the configured interval.
fn next_interval<S: Source>(source: &S, cfg: &LoopConfig) -> Option<Duration> {
    source
        .refresh_after()
        .or_else(|| cfg.interval.map(|i| jittered(i, cfg.interval_jitter)))
}

impl WatchedInstancer {
    /// Runs the first round now, publishes it, and starts the loop.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start<S: Source>(mut source: S, config: LoopConfig) -> Self {
        let cache = Arc::new(InstanceCache::new());
        let mut metrics = LoopMetrics::new(config.backend, config.service_label());
        let first = round(&mut source, &config).await;
        let first_hint = retry_hint(&first);
        // The first read finds registrations, not changes: no propagation delay.
        let first_failed = publish(&cache, &config, &mut metrics, first, None);
        let loop_cache = cache.clone();
        let mut loop_config = config.clone();
        // Built outside the future, so it also runs if the future is dropped unpolled.
        let close_on_drop = CloseOnDrop(cache.clone());
        let task = BackgroundTask::spawn(move |token| async move {
            let _close_on_drop = close_on_drop;
            let cfg = &mut loop_config;
            // A set has been published: later changes are changes.
            let mut primed = !first_failed;
            let mut wait = if first_failed {
                Some(failure_delay(cfg, first_hint))
            } else {
                next_interval(&source, cfg)
            };
            loop {
                if let Some(d) = wait.take() {
                    if !sleep_or_cancel(&token, d).await {
                        return;
                    }
                }
                let step = tokio::select! {
                    _ = token.cancelled() => return,
                    step = round(&mut source, cfg) => step,
                };
                if token.is_cancelled() {
                    return;
                }
                let changed_at = if primed { source.changed_at() } else { None };
                let hint = retry_hint(&step);
                wait = if publish(&loop_cache, cfg, &mut metrics, step, changed_at) {
                    Some(failure_delay(cfg, hint))
                } else {
                    primed = true;
                    cfg.backoff.reset();
                    next_interval(&source, cfg)
                };
            }
        });
        WatchedInstancer {
            watch: Arc::new(Watch {
                cache,
                task,
                config,
            }),
        }
    }

    /// The current state (for tests and diagnostics).
    pub fn state(&self) -> Option<Event> {
        self.watch.cache.state()
    }
}

#[async_trait]
impl Instancer for WatchedInstancer {
    /// The subscription keeps the loop running after the instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.watch.cache.subscribe().keeping(self.watch.clone())
    }

    async fn stop(&self) {
        self.watch.task.stop().await;
        self.watch.cache.close();
    }
}
