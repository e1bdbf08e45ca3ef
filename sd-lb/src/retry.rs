//! Retrying a call over a balancer (go-kit's `lb.Retry`, LB-4..LB-12, with its flaws fixed).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{Backoff, BoxError, Endpoint};
use tokio::time::Instant;

use crate::balancer::{Balancer, Outcome, Picked, Request};
use crate::error::{
    AttemptTimeout, BudgetExhausted, ErrorLog, RetryError, RetryErrorKind, Timeout,
};

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
/// - **Budget**: an optional shared [`RetryBudget`] caps retries at a fraction of requests.
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
    budget: Option<Arc<RetryBudget>>,
    callback: Option<Arc<Callback>>,
    avoid_failed: bool,
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
    /// Retries over `balancer`: 3 attempts, no timeout, no backoff, no budget, failed endpoints
    /// avoided.
    pub fn new(balancer: B) -> Self {
        Retry {
            balancer,
            max_attempts: Some(3),
            timeout: None,
            attempt_timeout: None,
            backoff: None,
            budget: None,
            callback: None,
            avoid_failed: true,
        }
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

    /// One deadline for the whole call, attempts and backoff included (LB-6).
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

    /// Allows retries only while `budget` has room. Share one budget between the `Retry`s of a
    /// service to cap its retry load.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
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
    pub async fn call<E, F, Fut, T, Er>(&self, mut f: F) -> Result<T, RetryError>
    where
        B: Balancer<E>,
        E: Send + Sync + 'static,
        F: FnMut(Endpoint<E>) -> Fut,
        Fut: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
    {
        let mut raw = ErrorLog::default();
        let mut running: Option<Picked<E>> = None;
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        // A timeout too large for the clock (e.g. `Duration::MAX`) is no timeout.
        let deadline = self
            .timeout
            .and_then(|t| Instant::now().checked_add(t).map(|d| (t, d)));
        let outcome = match deadline {
            None => self.attempts(&mut f, &mut raw, &mut running, None).await,
            Some((t, deadline)) => {
                match tokio::time::timeout_at(
                    deadline,
                    self.attempts(&mut f, &mut raw, &mut running, Some((t, deadline))),
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
        f: &mut F,
        raw: &mut ErrorLog,
        running: &mut Option<Picked<E>>,
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
            }
            let picked = {
                let avoid = |e: &Endpoint<E>| tried.iter().any(|t| Endpoint::same_value(t, e));
                let mut req = Request::new();
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
                    // Held by `call` while the attempt runs: if the overall timeout drops
                    // this future, `call` reports the attempt as timed out.
                    *running = Some(picked);
                    let r = match self.attempt_timeout {
                        None => fut.await.map_err(Into::into),
                        Some(t) => match tokio::time::timeout(t, fut).await {
                            Ok(r) => r.map_err(Into::into),
                            Err(_) => Err(Box::new(AttemptTimeout(t)) as BoxError),
                        },
                    };
                    let picked = running.take();
                    match &r {
                        Ok(_) => picked.into_iter().for_each(Picked::success),
                        Err(_) => {
                            picked.into_iter().for_each(Picked::failure);
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
                return Err((None, RetryErrorKind::Exhausted));
            }
        }
    }
}

/// A retry budget, as in Finagle and tower: retries may add at most `ratio` of the requests
/// made over the last `ttl`, plus a floor of `min_per_sec` retries per second.
///
/// Each call deposits one request; each retry withdraws one. Share one budget (in an `Arc`)
/// between all the calls to a service. Time follows tokio's clock.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use sd_lb::RetryBudget;
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
/// for _ in 0..10 { budget.deposit(); }
/// assert!(budget.withdraw());   // 10 requests × 20 % = 2 retries
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// # });
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    ttl: Duration,
    min_per_sec: u32,
    ratio: f64,
    state: Mutex<BudgetState>,
}

const SLOTS: usize = 10;

#[derive(Debug)]
struct BudgetState {
    /// Start of slot 0's period; slot `i` covers `[origin + i·w, origin + (i+1)·w)` modulo
    /// the window.
    origin: Instant,
    /// The absolute slot number last written.
    current: u64,
    deposits: [u64; SLOTS],
    withdrawals: [u64; SLOTS],
}

impl RetryBudget {
    /// A budget over a window of `ttl` (clamped to 1 s .. 60 s), with a floor of
    /// `min_per_sec` retries per second and `ratio` (clamped to 0 .. 1 000) retries per request.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        RetryBudget {
            ttl: ttl.clamp(Duration::from_secs(1), Duration::from_secs(60)),
            min_per_sec,
            ratio,
            state: Mutex::new(BudgetState {
                origin: Instant::now(),
                current: 0,
                deposits: [0; SLOTS],
                withdrawals: [0; SLOTS],
            }),
        }
    }

    fn slot_width(&self) -> Duration {
        self.ttl / SLOTS as u32
    }

    /// Advances the window to now, clearing expired slots; returns the current slot index.
    fn advance(&self, st: &mut BudgetState) -> usize {
        let now = Instant::now();
        let slot = (now.saturating_duration_since(st.origin).as_nanos()
            / self.slot_width().as_nanos().max(1)) as u64;
        if slot > st.current {
            let gap = (slot - st.current).min(SLOTS as u64);
            for k in 1..=gap {
                let i = ((st.current + k) % SLOTS as u64) as usize;
                st.deposits[i] = 0;
                st.withdrawals[i] = 0;
            }
            st.current = slot;
        }
        (st.current % SLOTS as u64) as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one request.
    pub fn deposit(&self) {
        let mut st = self.lock();
        let i = self.advance(&mut st);
        st.deposits[i] += 1;
    }

    /// Takes one retry from the budget; `false` when it is empty.
    pub fn withdraw(&self) -> bool {
        let mut st = self.lock();
        let i = self.advance(&mut st);
        if self.available(&st) >= 1.0 {
            st.withdrawals[i] += 1;
            true
        } else {
            false
        }
    }

    fn available(&self, st: &BudgetState) -> f64 {
        let deposits: u64 = st.deposits.iter().sum();
        let withdrawals: u64 = st.withdrawals.iter().sum();
        let floor = self.min_per_sec as f64 * self.ttl.as_secs_f64();
        floor + deposits as f64 * self.ratio - withdrawals as f64
    }

    /// How many retries the budget allows right now.
    pub fn remaining(&self) -> usize {
        let mut st = self.lock();
        self.advance(&mut st);
        self.available(&st).max(0.0) as usize
    }
}
