//! The errors of a pick and of a retried call.

use std::fmt;
use std::time::Duration;

use sd_core::BoxError;

/// Why a balancer could not pick an endpoint (go-kit LB-1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LbError {
    /// The endpointer holds no endpoints (go-kit's `ErrNoEndpoints`).
    #[error("no endpoints available")]
    NoEndpoints,
    /// The endpointer reported this discovery error; it is passed on unchanged.
    #[error(transparent)]
    Discovery(#[from] sd_core::Error),
    /// The endpoints are stale for longer than a [`RefuseStale`](crate::RefuseStale) allows.
    #[error("endpoints are stale ({}) for {age:?}, more than the {max:?} allowed", reason.as_str())]
    Stale {
        /// Why they are stale.
        reason: sd_core::StaleReason,
        /// How old they are.
        age: Duration,
        /// The limit that was exceeded.
        max: Duration,
    },
}

/// How a retried call ended without success; see [`RetryError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryErrorKind {
    /// The maximum number of attempts was reached.
    Exhausted,
    /// The callback said to stop (go-kit LB-12).
    Aborted,
    /// The overall timeout expired.
    Timeout,
    /// A retry was needed but the retry budget was empty.
    BudgetExhausted,
}

/// The error of a retried call (go-kit's `RetryError`, LB-10/LB-11): every attempt's raw
/// error, and the final error.
///
/// Its message is go-kit's: the final error alone when there was at most one raw error,
/// otherwise `"<final> (previously: <raw 1>; <raw 2>; ...)"`, listing every kept raw error
/// except the last one. Unlike go-kit (LB-9), a timeout keeps the errors of the attempts
/// before it: the timeout becomes the final error and the last raw error.
///
/// **Bounded.** Only the first [`KEEP_FIRST`] and the last [`KEEP_LAST`] raw errors are kept,
/// with a count of the ones left out between them (go-kit kept all of them: an unlimited
/// retry without backoff collected close to a million errors a second). The message then
/// reads `"<final> (previously: <raw 1>; <raw 2>; (N more); <raw N+3>; ...)"`.
///
/// ```
/// use sd_lb::RetryError;
/// let e = RetryError::new(vec!["error one".into(), "error two".into()], "error two".into());
/// assert_eq!(e.to_string(), "error two (previously: error one)");
/// ```
pub struct RetryError {
    /// The first `KEEP_FIRST` and the last `KEEP_LAST` raw errors.
    raw: Vec<BoxError>,
    /// Raw errors left out between the first and the last ones.
    omitted: usize,
    /// `None`: the final error is the last raw error.
    replacement: Option<BoxError>,
    kind: RetryErrorKind,
}

impl RetryError {
    /// A `RetryError` of kind [`RetryErrorKind::Exhausted`] (keeping the first and last raw
    /// errors, as every `RetryError` does).
    pub fn new(raw: Vec<BoxError>, final_error: BoxError) -> Self {
        let mut log = ErrorLog::default();
        raw.into_iter().for_each(|e| log.push(e));
        Self::with_kind(log, Some(final_error), RetryErrorKind::Exhausted)
    }

    /// `replacement: None` makes the last raw error the final one.
    pub(crate) fn with_kind(
        log: ErrorLog,
        replacement: Option<BoxError>,
        kind: RetryErrorKind,
    ) -> Self {
        let ErrorLog { kept: raw, omitted } = log;
        let replacement = match (replacement, raw.is_empty()) {
            (None, true) => Some(Box::<dyn std::error::Error + Send + Sync>::from(
                "no attempt was made",
            )),
            (r, _) => r,
        };
        RetryError {
            raw,
            omitted,
            replacement,
            kind,
        }
    }

    /// The raw error of every attempt, in order (go-kit's `RawErrors`), followed, when the
    /// call ended for a reason other than an attempt's error, by that reason: a [`Timeout`]
    /// when the overall timeout expired, or [`BudgetExhausted`] when a retry was refused by
    /// the budget. [`kind`](Self::kind) tells which.
    ///
    /// Bounded: the first [`KEEP_FIRST`] and the last [`KEEP_LAST`] of them;
    /// [`omitted_errors`](Self::omitted_errors) counts the ones left out in between.
    pub fn raw_errors(&self) -> &[BoxError] {
        &self.raw
    }

    /// How many raw errors were left out between the first and the last ones kept.
    pub fn omitted_errors(&self) -> usize {
        self.omitted
    }

    /// The final error: the last raw error, the callback's replacement, or the timeout
    /// (go-kit's `Final`).
    pub fn final_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match (&self.replacement, self.raw.last()) {
            (Some(r), _) => &**r,
            (None, Some(last)) => &**last,
            // Unreachable by construction (`with_kind`); kept total for safety.
            (None, None) => &NO_ATTEMPT,
        }
    }

    /// Whether the final error is a replacement from the callback rather than a raw error.
    pub fn is_replaced(&self) -> bool {
        self.replacement.is_some()
    }

    /// How the call ended.
    pub fn kind(&self) -> RetryErrorKind {
        self.kind
    }

    /// Whether the overall timeout expired.
    pub fn is_timeout(&self) -> bool {
        self.kind == RetryErrorKind::Timeout
    }
}

/// How many of the first raw errors a [`RetryError`] keeps.
pub const KEEP_FIRST: usize = 2;
/// How many of the last raw errors a [`RetryError`] keeps.
pub const KEEP_LAST: usize = 8;

/// The raw errors of a retried call, bounded: the first [`KEEP_FIRST`], the last
/// [`KEEP_LAST`], and a count of the ones in between.
#[derive(Default)]
pub(crate) struct ErrorLog {
    kept: Vec<BoxError>,
    omitted: usize,
}

impl ErrorLog {
    pub(crate) fn push(&mut self, e: BoxError) {
        if self.kept.len() == KEEP_FIRST + KEEP_LAST {
            // Drop the oldest of the last ones (a shift of `KEEP_LAST` pointers).
            self.kept.remove(KEEP_FIRST);
            self.omitted += 1;
        }
        self.kept.push(e);
    }

    /// How many errors were pushed.
    pub(crate) fn total(&self) -> usize {
        self.kept.len() + self.omitted
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no attempt was made")]
struct NoAttempt;
static NO_ATTEMPT: NoAttempt = NoAttempt;

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.final_error())?;
        if self.raw.len() > 1 {
            f.write_str(" (previously: ")?;
            for (i, e) in self.raw[..self.raw.len() - 1].iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                if i == KEEP_FIRST && self.omitted > 0 {
                    write!(f, "({} more); ", self.omitted)?;
                }
                write!(f, "{e}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryError")
            .field("kind", &self.kind)
            .field("omitted", &self.omitted)
            .field("final", &self.final_error().to_string())
            .field(
                "raw",
                &self.raw.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.final_error())
    }
}

/// The overall deadline of a retried call passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Timeout(pub Duration);

/// One attempt ran past the per-attempt timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attempt timed out after {0:?}")]
pub struct AttemptTimeout(pub Duration);

/// A retry was refused because the retry budget is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry budget exhausted")]
pub struct BudgetExhausted;

/// An option of a balancer or wrapper ([`SlowStart`](crate::SlowStart),
/// [`ZoneAware`](crate::ZoneAware), [`PanicThreshold`](crate::PanicThreshold)) is out of
/// range; the message says which one and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid option {option}: {reason}")]
pub struct InvalidOption {
    /// The option.
    pub option: &'static str,
    /// What is wrong with it and what it accepts.
    pub reason: String,
}

impl InvalidOption {
    pub(crate) fn new(option: &'static str, reason: impl Into<String>) -> Self {
        InvalidOption {
            option,
            reason: reason.into(),
        }
    }
}
