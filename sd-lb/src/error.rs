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
/// otherwise `"<final> (previously: <raw 1>; <raw 2>; ...)"`, listing every raw error except
/// the last one. Unlike go-kit (LB-9), a timeout keeps the errors of the attempts before it:
/// the timeout becomes the final error and the last raw error.
///
/// ```
/// use sd_lb::RetryError;
/// let e = RetryError::new(vec!["error one".into(), "error two".into()], "error two".into());
/// assert_eq!(e.to_string(), "error two (previously: error one)");
/// ```
pub struct RetryError {
    raw: Vec<BoxError>,
    /// `None`: the final error is the last raw error.
    replacement: Option<BoxError>,
    kind: RetryErrorKind,
}

impl RetryError {
    /// A `RetryError` of kind [`RetryErrorKind::Exhausted`].
    pub fn new(raw: Vec<BoxError>, final_error: BoxError) -> Self {
        Self::with_kind(raw, Some(final_error), RetryErrorKind::Exhausted)
    }

    /// `replacement: None` makes the last raw error the final one.
    pub(crate) fn with_kind(
        raw: Vec<BoxError>,
        replacement: Option<BoxError>,
        kind: RetryErrorKind,
    ) -> Self {
        let replacement = match (replacement, raw.is_empty()) {
            (None, true) => Some(Box::<dyn std::error::Error + Send + Sync>::from(
                "no attempt was made",
            )),
            (r, _) => r,
        };
        RetryError {
            raw,
            replacement,
            kind,
        }
    }

    /// The raw error of every attempt, in order (go-kit's `RawErrors`), followed, when the
    /// call ended for a reason other than an attempt's error, by that reason: a [`Timeout`]
    /// when the overall timeout expired, or [`BudgetExhausted`] when a retry was refused by
    /// the budget. [`kind`](Self::kind) tells which.
    pub fn raw_errors(&self) -> &[BoxError] {
        &self.raw
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
