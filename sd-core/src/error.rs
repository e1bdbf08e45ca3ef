//! One error type for every backend, so callers match on kinds, not on backend crates.

use std::fmt;
use std::sync::Arc;

/// A boxed error from user code (factories) or from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used across sdkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend.
///
/// Errors are cheap to clone (events are fanned out to many subscribers) and compare equal
/// when their kind and message are equal, which is how the instance cache suppresses a
/// repeated identical error (go-kit compares errors "deeply"; this is the Rust equivalent).
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry could not be reached or answered with a failure status.
    #[error("{backend}: registry unavailable: {message}")]
    Unavailable {
        /// Backend name, e.g. `consul`.
        backend: &'static str,
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The registry answered, but the answer could not be understood.
    #[error("{backend}: malformed answer: {message}")]
    Malformed {
        /// Backend name, e.g. `consul`.
        backend: &'static str,
        /// What was wrong with the answer.
        message: String,
    },
    /// A URL, option or registration is invalid. The message says what to fix.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The registry rejected a request (e.g. a registration) for a reason that retrying won't fix.
    #[error("{backend}: rejected: {message}")]
    Rejected {
        /// Backend name, e.g. `consul`.
        backend: &'static str,
        /// The registry's reason.
        message: String,
    },
    /// A request did not finish in time.
    #[error("{backend}: timed out: {message}")]
    Timeout {
        /// Backend name, e.g. `consul`.
        backend: &'static str,
        /// What timed out.
        message: String,
    },
    /// The component was stopped or closed; no more results will come.
    #[error("stopped")]
    Stopped,
    /// The backend cannot do this at all (e.g. a `dns+srv://` registry cannot list its
    /// services). Retrying won't help; the message says what to do instead.
    #[error("{backend}: unsupported: {message}")]
    Unsupported {
        /// Backend name, e.g. `dns+srv`.
        backend: &'static str,
        /// What cannot be done, and what to do instead.
        message: String,
    },
}

impl Error {
    /// An [`Error::Unavailable`] with no source.
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Unavailable {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Unavailable`] keeping the underlying error as its source.
    pub fn unavailable_from<E>(backend: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Unavailable {
            backend,
            message: source.to_string(),
            source: Some(Arc::new(source)),
        }
    }

    /// An [`Error::Malformed`].
    pub fn malformed(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Malformed {
            backend,
            message: message.into(),
        }
    }

    /// An [`Error::Unsupported`].
    pub fn unsupported(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Unsupported {
            backend,
            message: message.into(),
        }
    }

    /// An [`Error::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    /// The same error carrying the registry's request to wait `delay` before the next
    /// request (an HTTP `Retry-After`, parsed by [`crate::backoff::retry_after`]): for an
    /// [`Error::Unavailable`], a [`RetryAfter`](crate::backoff::RetryAfter) becomes its
    /// source (replacing any other); other kinds are returned as they are. The watch loop
    /// reads it back with [`retry_after`](Self::retry_after).
    pub fn with_retry_after(self, delay: std::time::Duration) -> Self {
        match self {
            Error::Unavailable {
                backend, message, ..
            } => Error::Unavailable {
                backend,
                message,
                source: Some(Arc::new(crate::backoff::RetryAfter(delay))),
            },
            other => other,
        }
    }

    /// The wait the registry asked for with this error ([`with_retry_after`](Self::with_retry_after)),
    /// if any: found anywhere in the source chain of an [`Error::Unavailable`].
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let Error::Unavailable {
            source: Some(source),
            ..
        } = self
        else {
            return None;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        // Bounded by the length of the chain, which is finite.
        while let Some(e) = cause {
            if let Some(r) = e.downcast_ref::<crate::backoff::RetryAfter>() {
                return Some(r.0);
            }
            cause = e.source();
        }
        None
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Malformed { .. }
        )
    }

    fn kind(&self) -> u8 {
        match self {
            Error::Unavailable { .. } => 0,
            Error::Malformed { .. } => 1,
            Error::Config(_) => 2,
            Error::Rejected { .. } => 3,
            Error::Timeout { .. } => 4,
            Error::Stopped => 5,
            Error::Unsupported { .. } => 6,
        }
    }
}

/// The message of `e` followed by the messages of its sources that it does not already
/// contain, joined by `": "`: e.g. reqwest's "error sending request" plus the
/// "Connection refused" its `Display` leaves out. For backends' transport errors.
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "connection refused");
/// assert_eq!(sd_core::error::error_chain(&io), "connection refused");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    msg
}

impl PartialEq for Error {
    /// Equal when the kind and the message are equal (sources are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.to_string() == other.to_string()
    }
}

impl Eq for Error {}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Display text is what matters; it never contains secrets because no
        // constructor is ever handed one (see `config::Secret`).
        write!(f, "Error({self})")
    }
}
