//! Round robin: a rotation per thread (the default) or go-kit's strict shared counter (LB-2),
//! both picking from a per-thread cache of the balancer's view.

use std::cell::Cell;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    panic_threshold_builder, thread_random, Balancer, PaddedCounter, PanicThreshold, Picked,
    Request, Viewed,
};
use crate::error::LbError;
use crate::thread_view::{Choose, EndpointRef, ThreadView};

/// Round robin over an [`Endpointer`]'s current endpoints.
///
/// **Two rotations.** [`RoundRobin::new`] (the default) keeps **one rotation per thread**:
/// each thread that picks runs through the endpoints in turn on its own counter, so two
/// threads never write to a shared cache line and a pick costs a few nanoseconds on any
/// number of cores. The first thread to pick starts at the first endpoint, the next one at
/// the second, and so on (the threads' first picks spread over the set); on one thread the
/// order is exactly go-kit's (from index 0, never reset when the set changes). Across
/// threads the order is no longer one strict rotation: each thread's picks cover every
/// endpoint evenly, so the total is even too, within one pick per endpoint and thread.
/// [`RoundRobin::strict`] is go-kit's balancer (LB-2): one shared counter starting at 0,
/// never reset when the set changes, a strict rotation across all threads; every pick
/// increments that counter, which on several cores at once costs tens of nanoseconds (the
/// cache line moves between cores). Choose `strict` when the global order matters (tests
/// that count picks across threads, parity with a go-kit service); `new` otherwise. Why
/// the per-thread rotation is the default: the rotation is what balances, and it stays even
/// per thread; the strict order only buys the interleaving between threads, at the price of
/// the contended counter (see `docs/BENCHMARKS.md`).
///
/// **The pick borrows.** [`RoundRobin::pick`] returns an [`EndpointRef`]: a handle on this
/// thread's cached snapshot and the index of the endpoint picked, which dereferences to the
/// [`Endpoint`]. It is not `Send`: use it on the thread that picked, and call
/// [`into_endpoint`](EndpointRef::into_endpoint) (one reference-count increment) for an
/// owned `Endpoint` to keep across an `.await` in a `Send` future or to hand to another
/// thread. The [`Balancer`] trait's [`pick`](Balancer::pick) and
/// [`pick_with`](Balancer::pick_with) (used by [`Retry`](crate::Retry), the tower adapters
/// and every wrapper) return owned endpoints as before. Note that method-call syntax picks
/// the trait's method for an `Arc<RoundRobin>` (also a `Box` or a `&Arc`) when [`Balancer`]
/// is in scope: write `RoundRobin::pick(&rr)` there for the borrowing pick.
///
/// **The per-thread cache.** Each thread keeps, per balancer it picks from (up to 16 at a
/// time, shared with [`Random`](crate::Random)'s borrowing pick), the balancer's current view (snapshot and list of passing endpoints) and its
/// counter. A pick finds that entry, checks the endpointer's version (one atomic load,
/// [`Changes::has_changed`](sd_core::Changes::has_changed)), so an update is seen by the
/// very next pick on every thread, and picks by index: no `arc-swap` load, no atomic
/// read-modify-write (except `strict`'s counter), no allocation. The first pick on a thread
/// and the first after an update refresh the entry (one small allocation; a thread's very
/// first pick also allocates its table of 16 entries); a thread that
/// picks from more than 16 balancers in turn evicts entries and refreshes on each pick (its
/// rotation then restarts from the balancer's shared start counter, which keeps the picks
/// even). A thread's entry holds the snapshot it last used until the thread picks from that
/// balancer again, the entry is evicted, or the thread ends; entries of dropped balancers are
/// removed at the thread's next refresh (of any of its entries). A thread that stops picking
/// (an idle worker) thus keeps up to 16 snapshots, with their endpoints' values, until it
/// ends, even after their balancers and endpointers are dropped.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), the rotation runs over the passing ones only.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::{BoxError, DefaultEndpointer, Endpoint, FixedInstancer, Instance};
/// use sd_lb::{Balancer, RoundRobin};
///
/// let instancer = FixedInstancer::from_addrs(["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
/// let endpointer = Arc::new(DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
///     Ok(format!("http://{}", i.addr()))
/// }));
/// let rr = RoundRobin::new(endpointer.clone());
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.1:80");
/// assert_eq!(rr.pick().unwrap().as_str(), "http://10.0.0.2:80");
/// // To keep the endpoint (across an `.await`, in another thread): an owned `Endpoint`.
/// let kept: Endpoint<String> = rr.pick().unwrap().into_endpoint();
/// assert_eq!(kept.as_str(), "http://10.0.0.1:80");
/// # });
/// ```
pub struct RoundRobin<P, E: 'static> {
    endpointer: P,
    view: Viewed<(), E>,
    /// `strict`: the shared counter of every pick. Otherwise: where a thread's rotation
    /// starts (advanced once per thread entry made).
    counter: PaddedCounter,
    strict: bool,
    /// This balancer's entries in the threads' caches.
    cache: ThreadView<E>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> RoundRobin<P, E> {
    /// Round robin with one rotation per thread (the default; see [`RoundRobin`]).
    pub fn new(endpointer: P) -> Self {
        RoundRobin {
            view: Viewed::new(&endpointer, false, |_, _, _| ()),
            endpointer,
            counter: PaddedCounter::default(),
            strict: false,
            cache: ThreadView::default(),
        }
    }

    /// go-kit's round robin (LB-2): one counter shared by every thread, starting at 0 and
    /// never reset, a strict rotation across threads (see [`RoundRobin`] for its cost).
    pub fn strict(endpointer: P) -> Self {
        RoundRobin {
            strict: true,
            ..Self::new(endpointer)
        }
    }

    /// Round robin with one rotation per thread: what [`RoundRobin::new`] now is.
    #[deprecated(note = "the per-thread rotation is the default now: use `RoundRobin::new`")]
    pub fn per_thread(endpointer: P) -> Self {
        Self::new(endpointer)
    }

    panic_threshold_builder!(view);

    /// The endpointer.
    pub fn endpointer(&self) -> &P {
        &self.endpointer
    }

    /// Whether this is the strict shared rotation ([`RoundRobin::strict`]).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Picks the next endpoint, borrowed from this thread's cached snapshot (see
    /// [`EndpointRef`]; LB-1 errors as every balancer). The fastest way to pick from a
    /// shared balancer; [`Balancer::pick`] is the same pick returning an owned endpoint.
    #[inline]
    pub fn pick(&self) -> Result<EndpointRef<E>, LbError> {
        self.cache
            .pick(self, &self.endpointer, &self.view, &Request::new())
    }
}

impl<P, E: 'static> Choose for RoundRobin<P, E> {
    /// Each thread's rotation starts one further than the previous thread's.
    fn start(&self) -> u64 {
        if self.strict {
            0
        } else {
            self.counter.next()
        }
    }

    /// This thread's rotation, or the shared counter when `strict` or without a thread
    /// entry.
    #[inline]
    fn choose(&self, n: usize, next: Option<&Cell<u64>>) -> usize {
        match next {
            Some(next) if !self.strict => {
                let mut k = next.get();
                if k >= n as u64 {
                    // Wrapped, or the set shrank.
                    k = if k == n as u64 { 0 } else { k % n as u64 };
                }
                next.set(k + 1);
                k as usize
            }
            _ => (self.counter.next() % n as u64) as usize,
        }
    }

    fn draw(&self) -> u64 {
        thread_random()
    }
}

impl<P, E: 'static> std::fmt::Debug for RoundRobin<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("strict", &self.strict)
            .field("cache", &self.cache)
            .finish()
    }
}

impl<E, P> Balancer<E> for RoundRobin<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick(&self) -> Result<Endpoint<E>, LbError> {
        RoundRobin::pick(self).map(EndpointRef::into_endpoint)
    }

    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let picked = self
            .cache
            .pick(self, &self.endpointer, &self.view, request)?;
        Ok(Picked::new(picked.accepted(request)))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.view.threshold()
    }
}
