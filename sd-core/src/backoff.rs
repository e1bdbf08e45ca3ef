//! Capped exponential backoff with jitter, shared by every backend loop.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Capped exponential backoff with jitter.
///
/// Each [`next_delay`](Backoff::next_delay) returns the current base delay multiplied by a
/// random factor in `[0.5, 1.5)`, capped at `max`, and doubles the base. This matches
/// go-kit's `conn.Exponential` growth (CONSUL-7: from 10 ms up to 1 min) while keeping the
/// jitter at the cap, so many clients that failed together do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use sd_core::Backoff;
/// let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(60)).with_seed(7);
/// let first = b.next_delay();
/// assert!(first >= Duration::from_millis(5) && first < Duration::from_millis(15));
/// b.reset();
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
    rng: StdRng,
}

impl Backoff {
    /// go-kit's Consul values: 10 ms initial, 1 minute cap.
    pub const GOKIT_INITIAL: Duration = Duration::from_millis(10);
    /// go-kit's cap.
    pub const GOKIT_MAX: Duration = Duration::from_secs(60);

    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_micros(1));
        Backoff {
            initial,
            max: max.max(initial),
            base: initial,
            rng: StdRng::from_entropy(),
        }
    }

    /// The same backoff with a fixed random seed, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// The delay to wait now; advances the backoff.
    pub fn next_delay(&mut self) -> Duration {
        let factor: f64 = self.rng.gen_range(0.5..1.5);
        // Saturating arithmetic: a cap near `Duration::MAX` must not make this panic.
        let delay = Duration::try_from_secs_f64(self.base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .min(self.max);
        self.base = self.base.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.base = self.initial;
    }

    /// The configured cap.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::GOKIT_INITIAL, Self::GOKIT_MAX)
    }
}

/// A registry's request to wait before the next request: the HTTP `Retry-After` of a 429 or
/// 503 answer, carried as the source of an [`Error::Unavailable`](crate::Error::Unavailable)
/// by [`Error::with_retry_after`](crate::Error::with_retry_after).
///
/// The watch loop ([`WatchedInstancer`](crate::WatchedInstancer)) waits after such a failure
/// the longer of its backoff delay and this wait, the wait capped at the backoff's
/// [`max`](Backoff::max) (1 min by default): a registry cannot park a client for an hour,
/// and a client never comes back sooner than it was asked to (up to that cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the registry asked to retry after {:?}", self.0)
    }
}

impl std::error::Error for RetryAfter {}

/// The wait an HTTP `Retry-After` header value asks for, at `now`: delay-seconds (`120`) or
/// an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`, zero when it has passed). `None` when the
/// value is neither.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use sd_core::backoff::retry_after;
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
/// assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
/// // `now` is Sun, 09 Sep 2001 01:46:40 GMT.
/// assert_eq!(retry_after("Sun, 09 Sep 2001 01:47:00 GMT", now), Some(Duration::from_secs(20)));
/// assert_eq!(retry_after("Sun, 09 Sep 2001 01:00:00 GMT", now), Some(Duration::ZERO));
/// assert_eq!(retry_after("soon", now), None);
/// ```
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 is as good as forever: the loop caps it anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What an HTTP backend's failure answer says beyond its status: the wait its `Retry-After`
/// asks for, and where a redirect pointed (redirects are never followed: a credential
/// would go with them). Read from the raw header values, so the HTTP backends share it
/// whatever their HTTP library.
///
/// ```
/// use std::time::Duration;
/// use sd_core::backoff::FailureHints;
/// use sd_core::Error;
/// let hints = FailureHints::new(Some(b"3"), Some(b"http://elsewhere/"));
/// assert_eq!(hints.retry_after, Some(Duration::from_secs(3)));
/// assert_eq!(
///     hints.note("give the server's own address"),
///     " (a redirect to http://elsewhere/, not followed: give the server's own address) (Retry-After: 3s)"
/// );
/// let e = hints.apply(Error::unavailable("x", "HTTP 503"));
/// assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureHints {
    /// The wait the `Retry-After` header asks for ([`retry_after`], at the time of reading).
    pub retry_after: Option<Duration>,
    /// The `Location` of a redirect (at most 200 bytes of it, lossily decoded).
    pub location: Option<String>,
}

impl FailureHints {
    /// The hints in a failure answer's `Retry-After` and (for a 3xx) `Location` header values.
    pub fn new(retry_after: Option<&[u8]>, location: Option<&[u8]>) -> Self {
        FailureHints {
            retry_after: retry_after
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| self::retry_after(v, std::time::SystemTime::now())),
            location: location
                .map(|l| String::from_utf8_lossy(&l[..l.len().min(200)]).into_owned()),
        }
    }

    /// What to add to the error message: where a redirect pointed and that it was not
    /// followed (with `advice`), and the wait asked for. Empty when there is neither.
    pub fn note(&self, advice: &str) -> String {
        let mut note = String::new();
        if let Some(location) = &self.location {
            note.push_str(&format!(
                " (a redirect to {location}, not followed: {advice})"
            ));
        }
        if let Some(delay) = self.retry_after {
            note.push_str(&format!(" (Retry-After: {delay:?})"));
        }
        note
    }

    /// `error` carrying the wait asked for, if any ([`crate::Error::with_retry_after`]).
    pub fn apply(&self, error: crate::Error) -> crate::Error {
        match self.retry_after {
            Some(delay) => error.with_retry_after(delay),
            None => error,
        }
    }
}

/// `d` scaled by a random factor in `[1 - spread, 1 + spread]`, for poll intervals.
///
/// `spread` is clamped to at most 1; a spread that is zero, negative or not a number (NaN,
/// infinite) means no jitter: `d` is returned as is. Saturates at `Duration::MAX` instead of
/// overflowing for huge `d`.
pub fn jittered(d: Duration, spread: f64) -> Duration {
    // `clamp` keeps NaN, which `gen_range` would panic on.
    if !spread.is_finite() || spread <= 0.0 || d.is_zero() {
        return d;
    }
    let spread = spread.min(1.0);
    let factor = rand::thread_rng().gen_range(1.0 - spread..=1.0 + spread);
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::default().with_seed(1);
        let mut base = Duration::from_millis(10);
        for _ in 0..20 {
            let d = b.next_delay();
            let lo = base.mul_f64(0.5).min(Backoff::GOKIT_MAX);
            let hi = base.mul_f64(1.5).min(Backoff::GOKIT_MAX);
            assert!(d >= lo && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
            base = (base * 2).min(Backoff::GOKIT_MAX);
        }
        // At the cap the delay stays within [30 s, 60 s].
        let d = b.next_delay();
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(15));
    }

    #[test]
    fn a_huge_cap_saturates_instead_of_panicking() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX).with_seed(3);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::MAX);
        }
    }

    /// Issue 9 item 8: a huge interval saturates instead of panicking in `mul_f64`.
    #[test]
    fn jittered_saturates_on_huge_durations() {
        for _ in 0..100 {
            assert!(jittered(Duration::MAX, 0.5) >= Duration::MAX / 2);
            assert!(jittered(Duration::from_secs(u64::MAX / 2), 1.0) <= Duration::MAX);
        }
    }

    #[test]
    fn seeded_backoffs_repeat() {
        let mut a = Backoff::default().with_seed(42);
        let mut b = Backoff::default().with_seed(42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10), 0.1);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
        assert_eq!(
            jittered(Duration::from_secs(1), 0.0),
            Duration::from_secs(1)
        );
    }
}
