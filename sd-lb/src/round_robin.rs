//! Round robin: a rotation per thread (the default) or go-kit's strict shared counter (LB-2),
//! both picking from a per-thread cache of the balancer's view.

use std::any::Any;
use std::cell::RefCell;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use arc_swap::Guard;
use sd_core::{Changes, Endpoint, Endpointer, Endpoints, Snapshot, Status};

use crate::balancer::{
    endpoints_of, first_accepted, panic_threshold_builder, pick_fallback, thread_random, Balancer,
    Current, PaddedCounter, PanicThreshold, Picked, Request, View, Viewed,
};
use crate::error::LbError;

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
/// time), the balancer's current view (snapshot and list of passing endpoints) and its
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
    /// Names this balancer's entries in the threads' caches: unique in the process, never
    /// reused (a global counter), so a new balancer never finds a dropped one's entry.
    id: u64,
    /// Held while the balancer lives: the threads' caches drop entries whose token is dead.
    alive: Arc<()>,
}

/// Numbers balancers for the threads' caches; starts at 1.
static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How many balancers a thread's cache holds at once.
const WAYS: usize = 16;

/// What a thread caches for one balancer.
struct Entry {
    id: u64,
    alive: Weak<()>,
    /// The next position in this thread's rotation (per-thread mode).
    next: usize,
    /// An `Rc<Local<E>>` of the balancer's `E`.
    view: Rc<dyn Any>,
}

/// A thread's cache: up to [`WAYS`] entries, replaced in turn when full.
struct Table {
    entries: Vec<Entry>,
    hand: usize,
}

thread_local! {
    static TABLE: RefCell<Table> = const {
        RefCell::new(Table {
            entries: Vec::new(),
            hand: 0,
        })
    };
}

/// What a thread caches for one balancer, and what an [`EndpointRef`] holds.
enum Local<E: 'static> {
    /// The balancer's view.
    View {
        view: Arc<View<(), E>>,
        /// The view's notifier (marked seen when its snapshot was taken).
        changes: Changes,
        /// The candidates a pick rotates over when the snapshot's status cannot change
        /// without a new version (every status but `Invalidating`, whose deadline passes with
        /// time) and there are some; 0 otherwise: such picks take the slow path, which reports
        /// the status's error or the empty set.
        fast: usize,
    },
    /// An endpoint picked outside any view (before the balancer has one that can serve).
    One(Endpoint<E>),
}

impl<E: 'static> Local<E> {
    fn of(view: Arc<View<(), E>>) -> Self {
        let fast = match view.snapshot.status() {
            Status::Pending | Status::Current | Status::Stale(_) => view.cands().len(),
            _ => 0,
        };
        Local::View {
            changes: view.changes.clone(),
            view,
            fast,
        }
    }
}

/// An endpoint picked by [`RoundRobin::pick`], borrowed from the picking thread's cached
/// snapshot: dereferences to the [`Endpoint`].
///
/// Holding it keeps that snapshot alive (a non-atomic reference count: no traffic between
/// cores), which is why it is neither `Send` nor `Sync`. For an owned [`Endpoint`] (to keep
/// across an `.await` in a `Send` future, to store, to send to another thread) call
/// [`into_endpoint`](Self::into_endpoint) or [`to_endpoint`](Self::to_endpoint).
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{Endpoint, FixedEndpointer, Instance};
/// use sd_lb::RoundRobin;
/// let ep = Arc::new(FixedEndpointer::new([(Instance::new("10.0.0.1", 80), "a")]));
/// let rr = RoundRobin::new(ep);
/// let picked = rr.pick().unwrap();
/// assert_eq!(picked.instance().port(), 80); // an `Endpoint`'s methods
/// assert_eq!(**picked, "a"); // its value
/// let owned: Endpoint<&str> = picked.into_endpoint();
/// assert_eq!(*owned, "a");
/// ```
pub struct EndpointRef<E: 'static> {
    local: Rc<Local<E>>,
    index: usize,
}

impl<E: 'static> EndpointRef<E> {
    /// The endpoint.
    #[inline]
    pub fn endpoint(&self) -> &Endpoint<E> {
        match &*self.local {
            Local::View { view, .. } => &view.snapshot.all()[self.index],
            Local::One(e) => e,
        }
    }

    /// An owned endpoint (one reference-count increment), releasing the snapshot.
    #[inline]
    pub fn into_endpoint(self) -> Endpoint<E> {
        self.endpoint().clone()
    }

    /// An owned endpoint (one reference-count increment).
    #[inline]
    pub fn to_endpoint(&self) -> Endpoint<E> {
        self.endpoint().clone()
    }
}

impl<E: 'static> Deref for EndpointRef<E> {
    type Target = Endpoint<E>;
    #[inline]
    fn deref(&self) -> &Endpoint<E> {
        self.endpoint()
    }
}

impl<E: 'static> Clone for EndpointRef<E> {
    fn clone(&self) -> Self {
        EndpointRef {
            local: self.local.clone(),
            index: self.index,
        }
    }
}

impl<E: 'static> From<EndpointRef<E>> for Endpoint<E> {
    fn from(r: EndpointRef<E>) -> Self {
        r.into_endpoint()
    }
}

impl<E: 'static> std::fmt::Debug for EndpointRef<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EndpointRef").field(self.endpoint()).finish()
    }
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> RoundRobin<P, E> {
    /// Round robin with one rotation per thread (the default; see [`RoundRobin`]).
    pub fn new(endpointer: P) -> Self {
        RoundRobin {
            view: Viewed::new(&endpointer, false, |_, _, _| ()),
            endpointer,
            counter: PaddedCounter::default(),
            strict: false,
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            alive: Arc::new(()),
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
        match self.cached() {
            Some(picked) => Ok(picked),
            None => self.refresh_and_pick(&Request::new()),
        }
    }

    /// The pick from this thread's entry, when it is there, up to date and has candidates
    /// (see [`Local`]); `None` sends the pick to the slow path.
    #[inline]
    fn cached(&self) -> Option<EndpointRef<E>> {
        TABLE
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                let e = t.entries.iter_mut().find(|e| e.id == self.id)?;
                let local = e.view.clone().downcast::<Local<E>>().ok()?;
                let index = match &*local {
                    Local::View {
                        view,
                        changes,
                        fast,
                    } if *fast > 0 && !changes.has_changed() => {
                        view.cands().at(self.turn(*fast, Some(&mut e.next)))
                    }
                    _ => return None,
                };
                Some(EndpointRef { local, index })
            })
            .ok()
            .flatten()
    }

    /// The next position among `n` candidates: this thread's rotation (`next`), or the
    /// shared counter when `strict` or without a thread entry.
    #[inline]
    fn turn(&self, n: usize, next: Option<&mut usize>) -> usize {
        match next {
            Some(next) if !self.strict => {
                let mut k = *next;
                if k >= n {
                    // Wrapped, or the set shrank.
                    k = if k == n { 0 } else { k % n };
                }
                *next = k + 1;
                k
            }
            _ => (self.counter.next() % n as u64) as usize,
        }
    }

    /// The slow path: no entry on this thread, the endpointer changed since it was made, or
    /// the snapshot has an error, no endpoints or a deadline. Brings the balancer's view up
    /// to date (the first pick after an update lists the passing endpoints), stores it in
    /// this thread's entry and picks.
    #[cold]
    #[inline(never)]
    fn refresh_and_pick(&self, request: &Request<'_, E>) -> Result<EndpointRef<E>, LbError> {
        let current: Arc<View<(), E>> = match self.view.get(&self.endpointer) {
            Current::View(v) => {
                if v.changes.has_changed() {
                    // The view is older than the endpointer's state: another thread is
                    // rebuilding it (this one could not take the rebuild lock). Pick from the
                    // newer snapshot directly (one linear scan) rather than serve the
                    // previous set after the update is visible.
                    let cur = self.endpointer.endpoints();
                    if !std::ptr::eq::<Endpoints<E>>(&*cur, &*v.snapshot) {
                        return self.fallback(&cur, request);
                    }
                }
                Guard::into_inner(v)
            }
            Current::Fallback(s) => return self.fallback(&s, request),
        };
        endpoints_of(&current.snapshot)?;
        let n = current.cands().len();
        // Entries taken out of the table are dropped after it is released: dropping a
        // snapshot runs the endpoints' destructors, which may pick again.
        let mut dropped: Vec<Entry> = Vec::new();
        let mut replaced: Option<Rc<dyn Any>> = None;
        let picked = TABLE
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                sweep(&mut t, &mut dropped);
                let fresh = || Rc::new(Local::of(current.clone()));
                let (at, local) = match t.entries.iter().position(|e| e.id == self.id) {
                    Some(at) => {
                        let e = &mut t.entries[at];
                        match e.view.clone().downcast::<Local<E>>() {
                            Ok(l) if matches!(&*l, Local::View { view, .. } if Arc::ptr_eq(view, &current)) => (at, l),
                            _ => {
                                let l = fresh();
                                replaced = Some(std::mem::replace(&mut e.view, l.clone()));
                                (at, l)
                            }
                        }
                    }
                    None => {
                        let l = fresh();
                        (self.insert(&mut t, l.clone(), &mut dropped), l)
                    }
                };
                let e = &mut t.entries[at];
                let index = current.cands().at(self.turn(n, Some(&mut e.next)));
                Some(EndpointRef { local, index })
            })
            .ok()
            .flatten();
        drop(dropped);
        drop(replaced);
        Ok(match picked {
            Some(p) => p,
            // No thread cache (the thread is ending, or a pick from inside this thread's
            // cache update): pick uncached, on the shared counter.
            None => {
                let index = current.cands().at(self.turn(n, None));
                EndpointRef {
                    local: Rc::new(Local::of(current)),
                    index,
                }
            }
        })
    }

    /// Makes this balancer's entry in `t`, holding `view` (replacing one in turn if the
    /// table is full), and returns its position. The thread's first entry allocates the
    /// whole table at once.
    #[cold]
    fn insert(&self, t: &mut Table, view: Rc<dyn Any>, dropped: &mut Vec<Entry>) -> usize {
        let entry = Entry {
            id: self.id,
            alive: Arc::downgrade(&self.alive),
            // Each thread's rotation starts one further than the previous thread's.
            next: if self.strict {
                0
            } else {
                self.counter.next() as usize
            },
            view,
        };
        if t.entries.len() < WAYS {
            t.entries.reserve_exact(WAYS - t.entries.len());
            t.entries.push(entry);
            t.entries.len() - 1
        } else {
            let at = t.hand % WAYS;
            t.hand = t.hand.wrapping_add(1);
            dropped.push(std::mem::replace(&mut t.entries[at], entry));
            at
        }
    }

    /// A pick from `s` when the balancer has no view to serve yet (see [`Viewed`]).
    #[cold]
    fn fallback(
        &self,
        s: &Snapshot<E>,
        request: &Request<'_, E>,
    ) -> Result<EndpointRef<E>, LbError> {
        pick_fallback(s, thread_random(), request, false, self.view.threshold()).map(|p| {
            EndpointRef {
                local: Rc::new(Local::One(p.into_endpoint())),
                index: 0,
            }
        })
    }
}

/// Moves the entries of dropped balancers out of `t` into `dropped` (dropped by the caller
/// once the table is released: their snapshots' destructors may pick again).
fn sweep(t: &mut Table, dropped: &mut Vec<Entry>) {
    let mut i = 0;
    while i < t.entries.len() {
        if t.entries[i].alive.strong_count() == 0 {
            dropped.push(t.entries.swap_remove(i));
        } else {
            i += 1;
        }
    }
}

impl<P, E: 'static> std::fmt::Debug for RoundRobin<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("strict", &self.strict)
            .field("id", &self.id)
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
        let picked = match self.cached() {
            Some(p) => p,
            None => self.refresh_and_pick(request)?,
        };
        Ok(Picked::new(match &*picked.local {
            Local::View { view, .. } => {
                let list = view.snapshot.all();
                list[first_accepted(list, view.cands(), picked.index, request)].clone()
            }
            Local::One(e) => e.clone(),
        }))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.view.threshold()
    }
}
