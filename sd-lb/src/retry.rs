//! Retrying a call over a balancer (go-kit's `lb.Retry`, LB-4..LB-12, with its flaws fixed).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::tower::retry::budget::Budget;
use sd_core::{Backoff, BoxError, Endpoint};
use tokio::time::Instant;

use crate::balancer::{Balancer, Outcome, Request, Running};
use crate::error::{
    AttemptTimeout, BudgetExhausted, ErrorLog, RetryError, RetryErrorKind, Timeout,
};
use crate::metrics::Meter;

/// What the retry callback decides after a failed attempt (go-kit's `(keepTrying, replacement)`).
#[derive(Debug)]
pub enum Decision {
    /// Try again (if attempts, time and budget allow).
    Retry,
    /// Stop; the raw error of this attempt is the final error.
    Stop,
    /// Stop, with this error as the final error (go-kit LB-12).
    StopWith(BoxError),
}

type Callback = dyn Fn(usize, &BoxError) -> Decision + Send + Sync;

/// Calls a function on endpoints picked by a balancer until it succeeds, with go-kit's
/// retry semantics and its flaws fixed.
///
/// - **Attempts** (LB-4): at most [`max_attempts`](Retry::max_attempts) attempts (default
///   3, and never fewer than one). A pick error such as "no endpoints available" counts as
///   a failed attempt (LB-6).
/// - **Callback** (LB-8, LB-12): [`callback`](Retry::callback) sees the 1-based attempt number
///   and the raw error, and can stop early and replace the final error.
/// - **Errors** (LB-10, LB-11): the error is a [`RetryError`] holding the raw errors and the
///   final one, with go-kit's message format. On the overall [`timeout`](Retry::timeout) it
///   still holds the attempts' errors (go-kit dropped them, LB-9). It keeps the first and
///   the last few raw errors and counts the rest, so an unlimited retry uses bounded memory.
/// - **Backoff**: [`backoff`](Retry::backoff) sleeps a jittered, growing delay between
///   attempts (go-kit retried at once and busy-looped on "no endpoints").
/// - **Per-attempt timeout**: [`attempt_timeout`](Retry::attempt_timeout), beside the
///   overall one.
/// - **No repeats**: a retry does not pick an endpoint that already failed in this call while
///   another is available ([`avoid_failed`](Retry::avoid_failed), on by default).
/// - **Budget**: an optional shared retry budget caps retries at a fraction of requests:
///   tower's [`TpsBudget`](crate::TpsBudget) (re-exported), or any [`Budget`].
/// - **Timeout by default** (go-kit requires one): [`DEFAULT_TIMEOUT`](Retry::DEFAULT_TIMEOUT)
///   unless [`timeout`](Retry::timeout) says otherwise (`Duration::MAX` for none).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sd_core::{Endpoint, FixedEndpointer, Instance};
/// use sd_lb::{Retry, RoundRobin};
///
/// let endpointer = Arc::new(FixedEndpointer::new([
///     (Instance::new("10.0.0.1", 80), "down"),
///     (Instance::new("10.0.0.2", 80), "up"),
/// ]));
/// let retry = Retry::new(RoundRobin::new(endpointer)).max_attempts(3).timeout(Duration::from_secs(5));
/// let answer = retry
///     .call(|ep: Endpoint<&'static str>| async move {
///         if *ep == "down" { Err(std::io::Error::other("connection refused")) } else { Ok(*ep) }
///     })
///     .await
///     .unwrap();
/// assert_eq!(answer, "up");
/// # });
/// ```
pub struct Retry<B> {
    balancer: B,
    max_attempts: Option<usize>,
    timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    backoff: Option<Backoff>,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
    callback: Option<Arc<Callback>>,
    avoid_failed: bool,
    meter: Meter,
}

impl<B> std::fmt::Debug for Retry<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("backoff", &self.backoff.is_some())
            .field("budget", &self.budget.is_some())
            .field("callback", &self.callback.is_some())
            .field("avoid_failed", &self.avoid_failed)
            .finish()
    }
}

impl<B> Retry<B> {
    /// The overall timeout of a [`Retry::new`]: 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Retries over `balancer`: 3 attempts, an overall timeout of
    /// [`DEFAULT_TIMEOUT`](Retry::DEFAULT_TIMEOUT), no backoff, no budget, failed endpoints
    /// avoided.
    pub fn new(balancer: B) -> Self {
        Retry {
            balancer,
            max_attempts: Some(3),
            timeout: Some(Self::DEFAULT_TIMEOUT),
            attempt_timeout: None,
            backoff: None,
            budget: None,
            callback: None,
            avoid_failed: true,
            meter: Meter::default(),
        }
    }

    /// Counts retries (`sdkit_balancer_retries_total`) and calls that gave up with every
    /// attempt used or the budget empty (`sdkit_balancer_retries_exhausted_total`) into
    /// `metrics` (feature `metrics`; docs/OBSERVABILITY.md).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::BalancerMetrics) -> Self {
        self.meter.metrics = Some(metrics);
        self
    }

    /// The total number of attempts; 0 counts as 1 (go-kit LB-4).
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// No attempt limit: retry until the callback stops, the timeout or the budget (go-kit's
    /// `RetryWithCallback` with no callback, LB-5). Set a [`timeout`](Retry::timeout) too,
    /// and a [`backoff`](Retry::backoff): without one, attempts that fail at once (e.g. "no
    /// endpoints") run back to back until the timeout, yielding to the runtime in between.
    pub fn unlimited(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// One deadline for the whole call, attempts and backoff included (LB-6); default
    /// [`DEFAULT_TIMEOUT`](Retry::DEFAULT_TIMEOUT). A timeout too large for the clock (e.g.
    /// `Duration::MAX`) is no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A deadline for each attempt; an attempt that passes it fails with [`AttemptTimeout`].
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Sleeps between attempts: `backoff`'s jittered, doubling delays (a fresh sequence per
    /// call). Without it, the next attempt starts at once (go-kit).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Allows retries only while `budget` has room: each call deposits once, each retry
    /// withdraws once. Share one budget between the `Retry`s of a service to cap its retry
    /// load. Tower's [`TpsBudget`](crate::TpsBudget) is the usual one (Finagle's: retries may
    /// add `retry_percent` of the requests over the last `ttl`, plus `min_per_sec`; it follows
    /// tokio's clock):
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use sd_core::{FixedEndpointer, Instance};
    /// use sd_lb::{Retry, RoundRobin, TpsBudget};
    /// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), ())]));
    /// let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    /// let retry = Retry::new(RoundRobin::new(ep)).budget(budget.clone());
    /// ```
    pub fn budget<Bu: Budget + Send + Sync + 'static>(mut self, budget: Arc<Bu>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Called after every failed attempt with the 1-based attempt number and the raw error
    /// (go-kit's `RetryWithCallback`, LB-8). The attempt limit still applies.
    pub fn callback<F>(mut self, callback: F) -> Self
    where
        F: Fn(usize, &BoxError) -> Decision + Send + Sync + 'static,
    {
        self.callback = Some(Arc::new(callback));
        self
    }

    /// Whether a retry avoids endpoints that already failed in this call while others are
    /// available (default `true`).
    pub fn avoid_failed(mut self, avoid: bool) -> Self {
        self.avoid_failed = avoid;
        self
    }

    /// The balancer.
    pub fn balancer(&self) -> &B {
        &self.balancer
    }

    /// Calls `f` on picked endpoints until it succeeds or the retry policy gives up.
    ///
    /// `f` runs once per attempt with that attempt's endpoint. Its outcome is reported to
    /// the balancer (load tracking, outlier ejection). Timeouts and backoff use tokio's timer,
    /// so call this inside a tokio runtime with time enabled when either is set.
    pub async fn call<E, F, Fut, T, Er>(&self, f: F) -> Result<T, RetryError>
    where
        B: Balancer<E>,
        E: Send + Sync + 'static,
        F: FnMut(Endpoint<E>) -> Fut,
        Fut: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
    {
        self.run(None, f).await
    }

    /// [`call`](Self::call) for a request with a consistent-hashing key (see
    /// [`Request::with_key`]; [`hash_key`](crate::hash_key) makes one from any `Hash` value):
    /// a [`ConsistentHash`](crate::ConsistentHash) balancer sends the first attempt to the
    /// key's owner, and retries (avoiding the endpoints that failed) to the next ones of the
    /// key's own order, the same in every client. Other balancers ignore the key.
    pub async fn call_keyed<E, F, Fut, T, Er>(&self, key: u64, f: F) -> Result<T, RetryError>
    where
        B: Balancer<E>,
        E: Send + Sync + 'static,
        F: FnMut(Endpoint<E>) -> Fut,
        Fut: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
    {
        self.run(Some(key), f).await
    }

    async fn run<E, F, Fut, T, Er>(&self, key: Option<u64>, mut f: F) -> Result<T, RetryError>
    where
        B: Balancer<E>,
        E: Send + Sync + 'static,
        F: FnMut(Endpoint<E>) -> Fut,
        Fut: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
    {
        let mut raw = ErrorLog::default();
        // The attempt in flight. Dropped with this future (a timeout of the caller's around
        // `call`), it reports the attempt as timed out, so a hanging endpoint is ejected.
        let mut running: Option<Running<E>> = None;
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        // A timeout too large for the clock (e.g. `Duration::MAX`) is no timeout.
        let deadline = self
            .timeout
            .and_then(|t| Instant::now().checked_add(t).map(|d| (t, d)));
        let outcome = match deadline {
            None => {
                self.attempts(key, &mut f, &mut raw, &mut running, None)
                    .await
            }
            Some((t, deadline)) => {
                match tokio::time::timeout_at(
                    deadline,
                    self.attempts(key, &mut f, &mut raw, &mut running, Some((t, deadline))),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        if let Some(cut_off) = running.take() {
                            cut_off.finish(Outcome::Timeout);
                        }
                        tracing::debug!(attempts = raw.total(), "retry: overall timeout");
                        raw.push(Box::new(Timeout(t)));
                        Err((None, RetryErrorKind::Timeout))
                    }
                }
            }
        };
        match outcome {
            Ok(v) => Ok(v),
            Err((replacement, kind)) => Err(RetryError::with_kind(raw, replacement, kind)),
        }
    }

    /// The attempt loop. On failure returns the replacement final error (if any) and the kind;
    /// the raw errors are in `raw` (kept when the overall timeout drops this future).
    ///
    /// `deadline` is the overall timeout, also checked between attempts: attempts that fail
    /// at once (no endpoints, an endpoint refusing instantly) never give the timer a chance
    /// to fire otherwise.
    async fn attempts<E, F, Fut, T, Er>(
        &self,
        key: Option<u64>,
        f: &mut F,
        raw: &mut ErrorLog,
        running: &mut Option<Running<E>>,
        deadline: Option<(Duration, Instant)>,
    ) -> Result<T, (Option<BoxError>, RetryErrorKind)>
    where
        B: Balancer<E>,
        E: Send + Sync + 'static,
        F: FnMut(Endpoint<E>) -> Fut,
        Fut: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
    {
        let mut tried: Vec<Endpoint<E>> = Vec::new();
        let mut backoff: Option<Backoff> = None;
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            if attempt > 1 {
                if let Some(budget) = &self.budget {
                    if !budget.withdraw() {
                        tracing::debug!(attempt, "retry: budget exhausted");
                        self.meter.exhausted(true);
                        raw.push(Box::new(BudgetExhausted));
                        return Err((None, RetryErrorKind::BudgetExhausted));
                    }
                }
                if let Some(template) = &self.backoff {
                    let b =
                        backoff.get_or_insert_with(|| template.clone().with_seed(rand::random()));
                    tokio::time::sleep(b.next_delay()).await;
                } else {
                    // Back to back: still let the runtime (and the timeout) run in between.
                    tokio::task::yield_now().await;
                }
                if let Some((t, at)) = deadline {
                    if Instant::now() >= at {
                        tracing::debug!(attempts = raw.total(), "retry: overall timeout");
                        raw.push(Box::new(Timeout(t)));
                        return Err((None, RetryErrorKind::Timeout));
                    }
                }
                // Counted here, when the retry really happens (not cut off by the timeout
                // during the backoff).
                self.meter.retry();
            }
            let picked = {
                let avoid = |e: &Endpoint<E>| tried.iter().any(|t| Endpoint::same_value(t, e));
                let mut req = Request::new();
                if let Some(k) = key {
                    req = req.with_key(k);
                }
                if self.avoid_failed && !tried.is_empty() {
                    req = req.avoid(&avoid);
                }
                self.balancer.pick_with(&req)
            };
            let result: Result<T, BoxError> = match picked {
                Err(e) => Err(Box::new(e)),
                Ok(picked) => {
                    let ep = picked.endpoint().clone();
                    let fut = f(ep.clone());
                    // Held by `call` while the attempt runs: if the overall timeout (or a
                    // caller's timeout around `call`) drops this future, the attempt is
                    // reported as timed out.
                    let mut guard = Running::new(picked);
                    guard.start();
                    *running = Some(guard);
                    let r = match self.attempt_timeout {
                        None => fut.await.map_err(Into::into),
                        Some(t) => match tokio::time::timeout(t, fut).await {
                            Ok(r) => r.map_err(Into::into),
                            Err(_) => Err(Box::new(AttemptTimeout(t)) as BoxError),
                        },
                    };
                    let picked = running.take();
                    match &r {
                        Ok(_) => picked.into_iter().for_each(|p| p.finish(Outcome::Success)),
                        Err(_) => {
                            picked.into_iter().for_each(|p| p.finish(Outcome::Failure));
                            if self.avoid_failed
                                && !tried.iter().any(|t| Endpoint::same_value(t, &ep))
                            {
                                tried.push(ep);
                            }
                        }
                    }
                    r
                }
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            tracing::debug!(attempt, error = %err, "retry: attempt failed");
            let decision = match &self.callback {
                Some(cb) => cb(attempt, &err),
                None => Decision::Retry,
            };
            raw.push(err);
            match decision {
                Decision::StopWith(replacement) => {
                    return Err((Some(replacement), RetryErrorKind::Aborted))
                }
                Decision::Stop => return Err((None, RetryErrorKind::Aborted)),
                Decision::Retry => {}
            }
            if self.max_attempts.is_some_and(|max| attempt >= max) {
                self.meter.exhausted(false);
                return Err((None, RetryErrorKind::Exhausted));
            }
        }
    }
}
