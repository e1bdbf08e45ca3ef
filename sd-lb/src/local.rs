//! A round robin handle with a cached snapshot: the fastest pick, for one thread or task.

use sd_core::{Changes, Endpoint, Endpointer, Snapshot};

use crate::balancer::{endpoints_of, preferred_of, Cands, PanicThreshold};
use crate::error::LbError;

/// Round robin with its own cached snapshot and counter, for hot loops.
///
/// A shared balancer pays an `arc-swap` load per pick (about 6 ns on our machines; see
/// `docs/BENCHMARKS.md`). This handle keeps the snapshot and checks one atomic version number
/// per pick ([`Changes::has_changed`]), reloading only after an update; it returns the
/// endpoint by reference, so there is no reference-count traffic either. Its counter starts
/// at 0 (go-kit LB-2) and is its own.
///
/// It is `Send` but picks through `&mut self`: make one per thread or task.
///
/// Health (see [`Balancer`](crate::Balancer)): when some endpoints are
/// [`Passing`](sd_core::Health::Passing) and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), the rotation runs over the passing
/// ones only (the handle lists them when it reloads: one linear scan of the new set, on the
/// picking thread, once per update).
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::LocalRoundRobin;
/// let ep = Arc::new(FixedEndpointer::new((1..=3).map(|p| (Instance::new("10.0.0.1", p), p))));
/// let mut rr = LocalRoundRobin::new(ep);
/// let picks: Vec<u16> = (0..4).map(|_| **rr.pick().unwrap()).collect();
/// assert_eq!(picks, [1, 2, 3, 1]);
/// ```
pub struct LocalRoundRobin<P, E: 'static> {
    endpointer: P,
    changes: Changes,
    snapshot: Snapshot<E>,
    preferred: Option<Box<[u32]>>,
    threshold: PanicThreshold,
    counter: u64,
}

impl<P: Endpointer<E>, E: 'static> LocalRoundRobin<P, E> {
    /// A handle over `endpointer`, its counter at 0.
    pub fn new(endpointer: P) -> Self {
        let mut changes = endpointer.changes();
        changes.mark_seen();
        let snapshot = endpointer.endpoints().detach();
        LocalRoundRobin {
            endpointer,
            changes,
            preferred: preferred_of(snapshot.all(), PanicThreshold::default()),
            snapshot,
            threshold: PanicThreshold::default(),
            counter: 0,
        }
    }

    /// Uses every endpoint when fewer than `threshold` of them pass their health checks
    /// (see [`PanicThreshold`]; the default is 50 %).
    pub fn with_panic_threshold(mut self, threshold: PanicThreshold) -> Self {
        self.threshold = threshold;
        self.preferred = preferred_of(self.snapshot.all(), threshold);
        self
    }

    /// Picks the next endpoint (LB-1 errors as every balancer).
    #[inline]
    pub fn pick(&mut self) -> Result<&Endpoint<E>, LbError> {
        if self.changes.has_changed() {
            self.reload();
        }
        let list = endpoints_of(&self.snapshot)?;
        let c = Cands::new(list.len(), self.preferred.as_deref());
        let i = c.at((self.counter % c.len() as u64) as usize);
        self.counter = self.counter.wrapping_add(1);
        Ok(&list[i])
    }

    #[cold]
    fn reload(&mut self) {
        self.changes.mark_seen();
        self.snapshot = self.endpointer.endpoints().detach();
        self.preferred = preferred_of(self.snapshot.all(), self.threshold);
    }
}

impl<P, E: 'static> std::fmt::Debug for LocalRoundRobin<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoundRobin")
            .field("version", &self.snapshot.version())
            .field("counter", &self.counter)
            .finish()
    }
}
