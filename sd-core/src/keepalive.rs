//! The shared keep-alive loop every registrar runs while registered.
//!
//! Registries forget an instance that stops proving it is alive: a Consul TTL check goes
//! critical, an etcd lease expires, a ZooKeeper session ends, Eureka evicts an instance that
//! stops renewing, the embedded registry expires a TTL entry. A registrar therefore renews
//! its registration periodically and, when the registry has lost it anyway (the agent
//! restarted, the lease expired during a partition), registers it again. go-kit did this
//! only for Eureka (a heartbeat 404 re-registers, EU-8) and never for Consul, etcd or
//! ZooKeeper.
//!
//! A backend implements [`KeepAlive`] (one round: renew, and re-register if lost) and starts
//! [`spawn_keepalive`] when it registers. The loop waits one period, runs a round, and on
//! failure retries with a capped, jittered [`Backoff`] (never slower than the period, so a
//! registration is not given up to its TTL because of one failed heartbeat). A round that
//! panics (a backend bug, a `tracing` layer that panics on a log line) counts as a failed
//! round, and the loop's own log line is written with a panic in it caught, so the loop
//! survives both.
//!
//! Stopping the returned [`KeepAliveTask`] ends the loop so that it sends nothing more: a
//! loop waiting between rounds (nearly always: a round takes a request or two every period)
//! is shut at once through its gate, without waiting for the task to be scheduled and see its
//! cancellation; a round in flight is cancelled (dropped) and waited for until it has ended.
//! A deregistration therefore costs no hand-off between tasks in the common case.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::observe::KeepAliveMetrics;
use crate::task::{panic_message, sleep_or_cancel, survive, BackgroundTask};
use tokio_util::sync::CancellationToken;

/// One round of keeping a registration alive.
#[async_trait]
pub trait KeepAlive: Send + Sync + 'static {
    /// Renews the registration (heartbeat, check pass, lease keep-alive, presence check) and
    /// registers it again if the registry lost it. An error is logged and retried with
    /// backoff.
    async fn keep_alive(&self) -> Result<()>;
}

/// How the keep-alive loop paces itself.
#[derive(Debug, Clone)]
pub struct KeepAliveConfig {
    /// The backend name, for logs.
    pub backend: &'static str,
    /// What is kept alive (service and instance id), for logs.
    pub target: String,
    /// The service name, for the `service` label of metrics and spans; `None` uses
    /// `target` up to its first `/` or space. Never an instance id (docs/OBSERVABILITY.md).
    pub service: Option<String>,
    /// The time between successful rounds, e.g. a third of the TTL.
    pub period: Duration,
    /// The first retry delay after a failed round (default 100 ms); retries grow up to
    /// `period`.
    pub retry_initial: Duration,
}

impl KeepAliveConfig {
    /// Rounds every `period` (at least 10 ms), retries from 100 ms up to `period`.
    pub fn new(backend: &'static str, target: impl Into<String>, period: Duration) -> Self {
        KeepAliveConfig {
            backend,
            target: target.into(),
            service: None,
            period: period.max(Duration::from_millis(10)),
            retry_initial: Duration::from_millis(100),
        }
    }

    /// Sets the service name used in metrics and spans.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The `service` label: [`service`](Self::service), else `target` up to its first `/`
    /// or space (backends name their target `service/id`).
    pub fn service_label(&self) -> &str {
        match &self.service {
            Some(s) => s,
            None => self.target.split(['/', ' ']).next().unwrap_or_default(),
        }
    }

    /// The period for a TTL: a third of it, so two heartbeats can fail before it lapses.
    pub fn period_for_ttl(ttl: Duration) -> Duration {
        ttl / 3
    }
}

/// A running keep-alive loop, from [`spawn_keepalive`]. Dropping it cancels the loop
/// without waiting, as [`cancel`](Self::cancel) does: no round starts after the drop.
#[derive(Debug)]
pub struct KeepAliveTask {
    task: BackgroundTask,
    gate: Arc<Gate>,
}

impl KeepAliveTask {
    /// Ends the loop; when this returns, the loop sends nothing more to the registry.
    ///
    /// Between rounds (the common case) this closes the loop's gate and returns at once: no
    /// round can start any more, and the task ends on its own when it is next scheduled.
    /// With a round in flight the round is cancelled and the task waited for until it has
    /// ended. (A request the round had already written may still reach the registry: a
    /// cancelled future cannot recall bytes sent.) Idempotent.
    pub async fn stop(&self) {
        if self.gate.close() {
            self.task.cancel();
        } else {
            self.task.stop().await;
        }
    }

    /// Cancels without waiting; no round starts after this returns, but one in flight may
    /// still finish its request.
    pub fn cancel(&self) {
        self.gate.close();
        self.task.cancel();
    }

    /// Whether the loop has ended, or has been stopped and can start no round any more.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished() || self.gate.is_shut()
    }
}

impl Drop for KeepAliveTask {
    /// Like [`cancel`](Self::cancel): closes the gate too, so no round starts after the drop
    /// (the task's own drop only cancels its token, which the loop's waits may see after a
    /// timer that is due at the same time).
    fn drop(&mut self) {
        self.gate.close();
    }
}

/// The gate of one keep-alive loop: whether it may still start a round, and whether a round
/// is running. Closing it with no round running means the loop can send nothing more.
#[derive(Debug, Default)]
struct Gate(std::sync::Mutex<GateState>);

#[derive(Debug, Default)]
struct GateState {
    running: bool,
    closed: bool,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The lock is held for a flag update only, never across user code: no poisoning in
        // practice, and a poisoned flag pair is still meaningful.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a round, unless the gate is closed; the round lasts as long as the guard.
    fn enter(&self) -> Option<Round<'_>> {
        let mut state = self.state();
        if state.closed {
            return None;
        }
        state.running = true;
        Some(Round(self))
    }

    /// Closes the gate: no round starts any more. Returns whether no round is running
    /// either (then the loop will send nothing more).
    fn close(&self) -> bool {
        let mut state = self.state();
        state.closed = true;
        !state.running
    }

    /// Closed with no round running.
    fn is_shut(&self) -> bool {
        let state = self.state();
        state.closed && !state.running
    }
}

/// A keep-alive round in progress (ends when dropped: finished, or cancelled mid-way).
struct Round<'a>(&'a Gate);

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.0.state().running = false;
    }
}

/// Runs `keeper` every `config.period` until the returned task is stopped or dropped.
///
/// # Panics
/// Outside a tokio runtime.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use sd_core::keepalive::{spawn_keepalive, KeepAlive, KeepAliveConfig};
///
/// struct Beat(AtomicUsize);
/// #[async_trait::async_trait]
/// impl KeepAlive for Beat {
///     async fn keep_alive(&self) -> sd_core::Result<()> {
///         self.0.fetch_add(1, Ordering::SeqCst);
///         Ok(())
///     }
/// }
///
/// let beat = Arc::new(Beat(AtomicUsize::new(0)));
/// let task = spawn_keepalive(beat.clone(), KeepAliveConfig::new("doc", "web-1", Duration::from_secs(1)));
/// tokio::time::sleep(Duration::from_millis(3500)).await;
/// task.stop().await;
/// assert_eq!(beat.0.load(Ordering::SeqCst), 3);
/// # });
/// ```
pub fn spawn_keepalive<K: KeepAlive + ?Sized>(
    keeper: Arc<K>,
    config: KeepAliveConfig,
) -> KeepAliveTask {
    let metrics = KeepAliveMetrics::new(config.backend, config.service_label());
    let gate = Arc::new(Gate::default());
    let loop_gate = gate.clone();
    let task = BackgroundTask::spawn(move |token| run(keeper, config, metrics, loop_gate, token));
    KeepAliveTask { task, gate }
}

/// The loop of [`spawn_keepalive`].
async fn run<K: KeepAlive + ?Sized>(
    keeper: Arc<K>,
    config: KeepAliveConfig,
    metrics: KeepAliveMetrics,
    gate: Arc<Gate>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::new(config.retry_initial, config.period);
    let mut delay = config.period;
    loop {
        if !sleep_or_cancel(&token, delay).await {
            return;
        }
        // Closed by `stop` while the loop waited: nothing more may be sent.
        let Some(round) = gate.enter() else {
            return;
        };
        // A panicking round (a backend bug, or a `tracing` layer that panics while the
        // round logs) fails that round; it must not end the loop, or the registration
        // lapses while its registrar lives.
        let span = tracing::debug_span!(
            "sdkit.keepalive",
            backend = config.backend,
            service = config.service_label(),
            outcome = tracing::field::Empty
        );
        let outcome = tokio::select! {
            _ = token.cancelled() => return,
            r = AssertUnwindSafe(keeper.keep_alive().instrument(span.clone())).catch_unwind() => r.unwrap_or_else(|panic| {
                Err(Error::unavailable(config.backend,
                    format!("keep-alive round panicked: {}", panic_message(&*panic))))
            }),
        };
        // The round's requests are over: `stop` need not wait for the logging below.
        drop(round);
        metrics.round(outcome.is_ok());
        survive(|| {
            span.record("outcome", crate::observe::outcome(&outcome));
        });
        delay = match outcome {
            Ok(()) => {
                backoff.reset();
                config.period
            }
            Err(e) => {
                let d = backoff.next_delay();
                survive(|| {
                    tracing::warn!(backend = config.backend, target = %config.target,
                        error = %e, retry_in = ?d, "keep-alive failed")
                });
                d
            }
        };
    }
}
