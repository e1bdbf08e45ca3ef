//! Round robin (go-kit LB-2) and its per-thread variant.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    endpoints_of, first_accepted, thread_random, Balancer, PaddedCounter, Picked, Request,
};
use crate::error::LbError;

/// How a [`RoundRobin`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// One atomic counter shared by every thread, starting at 0: go-kit's exact semantics
    /// (LB-2, the first pick is index 0, the rotation is strict across threads). On several
    /// cores the shared counter's cache line bounces between them (about 10-30 ns a pick).
    Shared,
    /// One counter per thread and balancer, starting at a random offset: each thread rotates
    /// fairly over each balancer, and threads do not share a cache line, so picks scale with
    /// cores. The global order is no longer strict. (Counters live in the balancer, in
    /// [`PER_THREAD_SLOTS`] cache-padded slots; beyond that many threads, two threads may
    /// share a slot, which costs contention, not fairness.)
    PerThread,
}

/// Round robin over an [`Endpointer`]'s current endpoints.
///
/// [`RoundRobin::new`] is go-kit's balancer: a shared counter starting at 0, never reset when
/// the set changes (LB-2). [`RoundRobin::per_thread`] keeps one counter per thread, for hot
/// paths on many cores. Both take one `arc-swap` load per pick and no lock or allocation.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::{BoxError, DefaultEndpointer, FixedInstancer, Instance};
/// use sd_lb::{Balancer, RoundRobin};
///
/// let instancer = FixedInstancer::from_addrs(["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
/// let endpointer = Arc::new(DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
///     Ok(format!("http://{}", i.addr()))
/// }));
/// let rr = RoundRobin::new(endpointer.clone());
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.1:80");
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.2:80");
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.1:80");
/// # });
/// ```
pub struct RoundRobin<P> {
    endpointer: P,
    counter: PaddedCounter,
    mode: Counter,
    /// Per-thread counters ([`Counter::PerThread`] only), indexed by the thread's slot.
    slots: Box<[Slot]>,
}

/// How many per-thread counters a [`RoundRobin::per_thread`] balancer keeps.
pub const PER_THREAD_SLOTS: usize = 16;

/// One per-thread counter on its own cache line.
#[repr(align(128))]
struct Slot(AtomicU64);

/// This thread's slot number, assigned in order of first use.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s) % PER_THREAD_SLOTS
}

impl<P> RoundRobin<P> {
    /// go-kit's round robin: one shared counter starting at 0.
    pub fn new(endpointer: P) -> Self {
        RoundRobin {
            endpointer,
            counter: PaddedCounter::default(),
            mode: Counter::Shared,
            slots: Box::new([]),
        }
    }

    /// Round robin with one counter per thread (see [`Counter::PerThread`]).
    pub fn per_thread(endpointer: P) -> Self {
        RoundRobin {
            mode: Counter::PerThread,
            slots: (0..PER_THREAD_SLOTS)
                .map(|_| Slot(AtomicU64::new(thread_random() >> 1)))
                .collect(),
            ..Self::new(endpointer)
        }
    }

    /// How this balancer counts.
    pub fn counter(&self) -> Counter {
        self.mode
    }

    /// The endpointer.
    pub fn endpointer(&self) -> &P {
        &self.endpointer
    }

    #[inline]
    fn next(&self) -> u64 {
        match self.mode {
            Counter::Shared => self.counter.next(),
            // Uncontended unless more than `PER_THREAD_SLOTS` threads pick at once.
            Counter::PerThread => self.slots[thread_slot()].0.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl<P> std::fmt::Debug for RoundRobin<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("counter", &self.mode)
            .finish()
    }
}

impl<E, P> Balancer<E> for RoundRobin<P>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        let snap = self.endpointer.endpoints();
        let list = endpoints_of(&snap)?;
        let i = (self.next() % list.len() as u64) as usize;
        Ok(list[i].clone())
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let snap = self.endpointer.endpoints();
        let list = endpoints_of(&snap)?;
        let i = (self.next() % list.len() as u64) as usize;
        let i = first_accepted(list, i, request);
        Ok(Picked::new(list[i].clone()))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }
}
