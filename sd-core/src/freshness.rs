//! How fresh the data of an instancer or an endpointer is: [`Freshness`].
//!
//! Every state an [`InstanceCache`](crate::InstanceCache) publishes carries a [`Freshness`]
//! next to its [`Event`](crate::Event), and every endpoint [`Snapshot`](crate::Snapshot) of
//! a [`DefaultEndpointer`](crate::DefaultEndpointer) exposes it
//! ([`Endpoints::freshness`](crate::Endpoints::freshness)). Data is **stale** when it is
//! served without the registry confirming it:
//!
//! - [`StaleReason::Error`]: the instancer is in an error state, serving the last known
//!   good set (the registry cannot be reached, or answers with errors);
//! - [`StaleReason::Disk`]: the set was loaded from the on-disk last-known-good file at start
//!   because the registry could not be reached ([`crate::lkg`]);
//! - [`StaleReason::Stopped`]: the instancer stopped, the set will not change any more;
//! - [`StaleReason::Protected`]: empty-set protection keeps the previous set through a sudden
//!   shrink the registry has not confirmed yet ([`crate::protect`]).
//!
//! A stale state remembers since when the registry has not confirmed the data
//! ([`Freshness::as_of`]): the start of the error state, or the time the disk file was
//! written. [`Freshness::age`] is the time since then, on tokio's clock, so tests under
//! `tokio::time::pause` control it. A balancer can refuse data stale for too long
//! (`sd_lb::RefuseStale`).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Why data is stale; see [`Freshness`].
///
/// `#[non_exhaustive]`: match with a wildcard arm, new reasons may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleReason {
    /// The instancer is in an error state and the last known good set is served.
    Error,
    /// The set was read from the on-disk last-known-good file ([`crate::lkg`]) because the
    /// registry could not be reached at start; it has not answered since.
    Disk,
    /// The instancer stopped: the set will not change any more.
    Stopped,
    /// Empty-set protection holds the previous set back from a sudden shrink that the
    /// registry has not confirmed yet ([`crate::protect`]).
    Protected,
}

impl StaleReason {
    /// A short lower-case name (`error`, `disk`, `stopped`, `protected`), for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::Error => "error",
            StaleReason::Disk => "disk",
            StaleReason::Stopped => "stopped",
            StaleReason::Protected => "protected",
        }
    }
}

/// Whether data reflects the registry now, and if not, since when it has not.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
/// use std::time::Duration;
/// use sd_core::{Freshness, StaleReason};
///
/// assert!(!Freshness::Fresh.is_stale());
/// assert_eq!(Freshness::Fresh.age(), Duration::ZERO);
///
/// let stale = Freshness::stale_now(StaleReason::Error);
/// tokio::time::advance(Duration::from_secs(30)).await;
/// assert!(stale.is_stale());
/// assert_eq!(stale.age(), Duration::from_secs(30));
/// assert!(stale.stale_beyond(Duration::from_secs(10)));
/// assert_eq!(stale.reason(), Some(StaleReason::Error));
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Freshness {
    /// The data is what the registry answered last, and the instancer is following it.
    #[default]
    Fresh,
    /// The data is served, but the registry has not confirmed it since `as_of`.
    Stale {
        /// When the data was last known to match the registry (the start of the error
        /// state, or when the disk file was written), on tokio's clock.
        as_of: Instant,
        /// Why the data is stale.
        reason: StaleReason,
    },
}

impl Freshness {
    /// Stale for `reason` from now on.
    pub fn stale_now(reason: StaleReason) -> Self {
        Freshness::Stale {
            as_of: Instant::now(),
            reason,
        }
    }

    /// Stale for `reason` since the wall-clock time `written` (e.g. a file's timestamp from
    /// another process), converted to tokio's clock. A time in the future counts as now.
    pub fn stale_since_wall(written: SystemTime, reason: StaleReason) -> Self {
        let ago = SystemTime::now()
            .duration_since(written)
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        Freshness::Stale {
            as_of: now.checked_sub(ago).unwrap_or(now),
            reason,
        }
    }

    /// Whether the data is stale.
    pub fn is_stale(&self) -> bool {
        matches!(self, Freshness::Stale { .. })
    }

    /// Why the data is stale; `None` when fresh.
    pub fn reason(&self) -> Option<StaleReason> {
        match self {
            Freshness::Stale { reason, .. } => Some(*reason),
            Freshness::Fresh => None,
        }
    }

    /// Since when the registry has not confirmed the data; `None` when fresh.
    pub fn as_of(&self) -> Option<Instant> {
        match self {
            Freshness::Stale { as_of, .. } => Some(*as_of),
            Freshness::Fresh => None,
        }
    }

    /// How old the data is: zero when fresh, else the time since [`as_of`](Self::as_of)
    /// (reads tokio's clock).
    pub fn age(&self) -> Duration {
        match self {
            Freshness::Stale { as_of, .. } => Instant::now().saturating_duration_since(*as_of),
            Freshness::Fresh => Duration::ZERO,
        }
    }

    /// Whether the data is stale and older than `max`.
    pub fn stale_beyond(&self, max: Duration) -> bool {
        self.is_stale() && self.age() > max
    }

    /// The freshness after the registry failed again: fresh data turns stale
    /// ([`StaleReason::Error`]) from now; stale data keeps its time and reason.
    pub(crate) fn after_error(&self) -> Self {
        match self {
            Freshness::Fresh => Freshness::stale_now(StaleReason::Error),
            stale => stale.clone(),
        }
    }

    /// The freshness once the data will not change any more: fresh data turns stale
    /// ([`StaleReason::Stopped`]) from now; stale data keeps its time and reason.
    pub(crate) fn after_stop(&self) -> Self {
        match self {
            Freshness::Fresh => Freshness::stale_now(StaleReason::Stopped),
            stale => stale.clone(),
        }
    }
}
