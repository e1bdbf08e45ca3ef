//! The per-thread cache of a balancer's view, shared by [`RoundRobin`](crate::RoundRobin) and
//! [`Random`](crate::Random), and the [`EndpointRef`] their own picks return.
//!
//! Each thread keeps one table of up to [`WAYS`] entries, one per balancer it picks from. An
//! entry holds the balancer's view (snapshot and passing endpoints), a word of per-thread
//! state (round robin's rotation, random's generator) and the balancer's liveness token. A
//! pick finds its entry, checks the endpointer's version (one atomic load) and picks by
//! index; an [`EndpointRef`] keeps the entry's view alive with a non-atomic count.
//!
//! # Why the `unsafe` here is sound
//!
//! Three invariants, each stated where it is relied on:
//!
//! - **(T) Type.** An entry's `local` is `Rc::into_raw` of an `Rc<Local<E>>`, and its `id` is
//!   the address of the liveness token (`alive`) of the one [`ThreadView<E>`] that made it. A
//!   `ThreadView<E>` only ever makes entries of its own `E` (the type parameter of the struct,
//!   not of a method). The entry holds a `Weak` on that token, so the token's allocation is
//!   not freed (and its address not reused by another `ThreadView`, of any type) while the
//!   entry exists: an entry whose `id` equals a live `ThreadView<E>`'s id was made by that
//!   `ThreadView<E>`, and holds a `Local<E>`.
//! - **(B) Borrow.** The table's entry list is only touched through [`Table::busy`]: the slow
//!   path sets it while it holds a `&mut` to the list (and runs no code that could pick except
//!   the allocator), the fast path gives up when it is set and, while it holds a shared
//!   reference to the list, runs no code of anyone else (cell reads and writes, an atomic
//!   load, a reference-count increment). So a shared and a mutable reference to the list never
//!   overlap, also when a pick runs from inside the allocator, a destructor or a thread-local
//!   destructor. Entries are dropped only after the list is released (their destructors may
//!   pick again).
//! - **(L) Lifetime.** A [`Local`]'s raw pointers (`list`, `preferred`) point into the heap
//!   memory of the `Arc<View>` it owns, which is immutable; they are valid for as long as the
//!   `Local` lives. An [`EndpointRef`] holds an `Rc` of its `Local`, and its `endpoint` points
//!   into that `Local`'s view (or at the endpoint the `Local` owns, at a fixed place inside the
//!   `Rc`'s allocation): valid for as long as the `EndpointRef` lives, whatever the table does
//!   meanwhile (a refresh, an eviction, a sweep or the thread's end only drop the table's own
//!   count).

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use arc_swap::Guard;
use sd_core::{Changes, Endpoint, Endpointer, Endpoints, Snapshot, Status};

use crate::balancer::{
    endpoints_of, first_accepted, pick_fallback, Current, Request, View, Viewed,
};
use crate::error::LbError;

/// How many balancers a thread's cache holds at once.
pub(crate) const WAYS: usize = 16;

/// How a balancer chooses among the candidates of a cached view.
pub(crate) trait Choose {
    /// The state of a new thread entry (a rotation's start, a generator's seed).
    fn start(&self) -> u64;
    /// A candidate position in `0..n` (`n > 0`); `state` is this thread's entry's word, `None`
    /// when the pick has no entry (the thread's cache is in use or gone).
    fn choose(&self, n: usize, state: Option<&Cell<u64>>) -> usize;
    /// A random draw, for a pick outside any view (see [`pick_fallback`]).
    fn draw(&self) -> u64;
}

/// A balancer's key into the threads' caches, typed by its endpoint value.
pub(crate) struct ThreadView<E: 'static> {
    /// Held while the balancer lives: the threads' caches drop entries whose token is dead.
    /// Its address names this balancer's entries (see (T) in the module's documentation).
    alive: Arc<()>,
    _e: PhantomData<fn() -> E>,
}

/// What a thread caches for one balancer.
struct Entry {
    /// The address of the maker's `alive` token.
    id: usize,
    alive: Weak<()>,
    /// The balancer's per-thread word ([`Choose::choose`]).
    state: Cell<u64>,
    /// `Rc::into_raw` of an `Rc<Local<E>>` (see (T)).
    local: NonNull<()>,
    /// Gives `local`'s count back, as the `Rc<Local<E>>` it is.
    release: unsafe fn(NonNull<()>),
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: `local` and `release` were made together for the same `E` in
        // `ThreadView::<E>::entry`, and each entry gives its count back once.
        unsafe { (self.release)(self.local) }
    }
}

/// # Safety
/// `p` is `Rc::into_raw` of an `Rc<Local<E>>` whose count has not been given back yet.
unsafe fn release<E: 'static>(p: NonNull<()>) {
    drop(Rc::from_raw(p.cast::<Local<E>>().as_ptr()));
}

/// A thread's cache: up to [`WAYS`] entries, replaced in turn when full.
struct Table {
    /// Set while the slow path holds the entry list mutably (see (B)).
    busy: Cell<bool>,
    entries: UnsafeCell<Vec<Entry>>,
    hand: Cell<usize>,
}

thread_local! {
    static TABLE: Table = const {
        Table {
            busy: Cell::new(false),
            entries: UnsafeCell::new(Vec::new()),
            hand: Cell::new(0),
        }
    };
}

/// Clears [`Table::busy`] when the slow path is done with the list, also by unwinding.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// What a thread caches for one balancer, and what an [`EndpointRef`] holds.
pub(crate) struct Local<E: 'static> {
    /// The candidates a pick chooses among when the snapshot's status cannot change without
    /// a new version (every status but `Invalidating`, whose deadline passes with time) and
    /// there are some; 0 otherwise (and for [`Keep::One`]): such picks take the slow path,
    /// which reports the status's error or the empty set.
    fast: usize,
    /// The snapshot's endpoints (see (L)).
    list: NonNull<Endpoint<E>>,
    /// The passing endpoints' indices into `list`, `fast` of them, or null when every
    /// endpoint is a candidate (see (L)).
    preferred: *const u32,
    keep: Keep<E>,
}

/// What a [`Local`] owns.
enum Keep<E: 'static> {
    /// The balancer's view, and its notifier (marked seen when its snapshot was taken).
    View(Arc<View<(), E>>, Changes),
    /// An endpoint picked outside any view (before the balancer has one that can serve).
    One(Endpoint<E>),
}

impl<E: 'static> Local<E> {
    fn of(view: Arc<View<(), E>>) -> Self {
        let c = view.cands();
        let fast = match view.snapshot.status() {
            Status::Pending | Status::Current | Status::Stale(_) => c.len(),
            _ => 0,
        };
        // Both into `view`'s heap memory, which `keep` owns (L).
        let list = NonNull::from(view.snapshot.all()).cast();
        let preferred = c.preferred().map_or(std::ptr::null(), <[u32]>::as_ptr);
        let changes = view.changes.clone();
        Local {
            fast,
            list,
            preferred,
            keep: Keep::View(view, changes),
        }
    }

    fn one(endpoint: Endpoint<E>) -> Self {
        Local {
            fast: 0,
            list: NonNull::dangling(),
            preferred: std::ptr::null(),
            keep: Keep::One(endpoint),
        }
    }

    /// The index into the snapshot's list of candidate `k` (`k < fast`).
    #[inline]
    fn at(&self, k: usize) -> usize {
        debug_assert!(k < self.fast);
        if self.preferred.is_null() {
            k
        } else {
            // SAFETY: `preferred` holds `fast` indices (L) and `k < fast`.
            unsafe { *self.preferred.add(k) as usize }
        }
    }
}

/// An endpoint picked by [`RoundRobin::pick`](crate::RoundRobin::pick) or
/// [`Random::pick`](crate::Random::pick), borrowed from the picking thread's cached snapshot:
/// dereferences to the [`Endpoint`].
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
    /// Into `local`'s view, or at the endpoint `local` owns (see (L)).
    endpoint: NonNull<Endpoint<E>>,
    /// The endpoint's index in the view's list (0 for [`Keep::One`]).
    index: usize,
    local: Rc<Local<E>>,
}

impl<E: 'static> EndpointRef<E> {
    /// The endpoint at `index` of `local`'s view, or the one it owns.
    #[inline]
    fn new(local: Rc<Local<E>>, index: usize) -> Self {
        let endpoint = match &local.keep {
            // SAFETY: `index` comes from `Local::at` or a candidate list of the same view,
            // so it is within the list (L); the list outlives `local`'s count held here.
            Keep::View(..) => unsafe { local.list.add(index) },
            // Inside the `Rc`'s allocation, which does not move while `local` holds it.
            Keep::One(e) => NonNull::from(e),
        };
        EndpointRef {
            endpoint,
            index,
            local,
        }
    }

    /// The endpoint.
    #[inline]
    pub fn endpoint(&self) -> &Endpoint<E> {
        // SAFETY: valid while `self.local` lives (L), and `&self` borrows it.
        unsafe { self.endpoint.as_ref() }
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

    /// The first endpoint from this pick on that `request` accepts (see [`first_accepted`]).
    pub(crate) fn accepted(&self, request: &Request<'_, E>) -> Endpoint<E> {
        match &self.local.keep {
            Keep::View(view, _) => {
                let list = view.snapshot.all();
                list[first_accepted(list, view.cands(), self.index, request)].clone()
            }
            Keep::One(e) => e.clone(),
        }
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
            endpoint: self.endpoint,
            index: self.index,
            local: self.local.clone(),
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

impl<E: 'static> Default for ThreadView<E> {
    fn default() -> Self {
        ThreadView {
            alive: Arc::new(()),
            _e: PhantomData,
        }
    }
}

impl<E: 'static> std::fmt::Debug for ThreadView<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ThreadView").field(&self.id()).finish()
    }
}

impl<E: 'static> ThreadView<E> {
    /// This balancer's entries' name (see (T)).
    #[inline]
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.alive) as usize
    }
}

impl<E: Send + Sync + 'static> ThreadView<E> {
    /// Picks from this thread's entry when it is there, up to date and has candidates;
    /// otherwise brings the view up to date and picks on the slow path.
    #[inline]
    pub(crate) fn pick<P: Endpointer<E>, C: Choose>(
        &self,
        c: &C,
        endpointer: &P,
        viewed: &Viewed<(), E>,
        request: &Request<'_, E>,
    ) -> Result<EndpointRef<E>, LbError> {
        match self.cached(c) {
            Some(picked) => Ok(picked),
            None => self.refresh_and_pick(c, endpointer, viewed, request),
        }
    }

    /// The pick from this thread's entry, when it is there, up to date and has candidates;
    /// `None` sends the pick to the slow path.
    #[inline]
    fn cached<C: Choose>(&self, c: &C) -> Option<EndpointRef<E>> {
        let id = self.id();
        TABLE
            .try_with(|t| {
                if t.busy.get() {
                    return None;
                }
                // SAFETY (B): not busy, so no mutable reference to the list exists, and none
                // is made before this shared one ends: nothing below runs anyone's code.
                let entries = unsafe { &*t.entries.get() };
                let e = entries.iter().find(|e| e.id == id)?;
                // SAFETY (T): the entry has this `ThreadView<E>`'s id, so it holds a
                // `Local<E>`, alive while the entry is (the entry holds a count).
                let local = unsafe { e.local.cast::<Local<E>>().as_ref() };
                let n = local.fast;
                if n == 0 {
                    return None;
                }
                match &local.keep {
                    Keep::View(_, changes) if !changes.has_changed() => {}
                    _ => return None,
                }
                let index = local.at(c.choose(n, Some(&e.state)));
                // SAFETY: `local` is `Rc::into_raw` of an `Rc<Local<E>>` (T) whose count the
                // entry holds; the increment gives the new `Rc` its own.
                let local = unsafe {
                    let p = e.local.cast::<Local<E>>().as_ptr();
                    Rc::increment_strong_count(p);
                    Rc::from_raw(p)
                };
                Some(EndpointRef::new(local, index))
            })
            .ok()
            .flatten()
    }

    /// The slow path: no entry on this thread, the endpointer changed since it was made, or
    /// the snapshot has an error, no endpoints or a deadline. Brings the balancer's view up
    /// to date (the first pick after an update lists the passing endpoints), stores it in
    /// this thread's entry and picks.
    #[cold]
    #[inline(never)]
    pub(crate) fn refresh_and_pick<P: Endpointer<E>, C: Choose>(
        &self,
        c: &C,
        endpointer: &P,
        viewed: &Viewed<(), E>,
        request: &Request<'_, E>,
    ) -> Result<EndpointRef<E>, LbError> {
        let current: Arc<View<(), E>> = match viewed.get(endpointer) {
            Current::View(v) => {
                if v.changes.has_changed() {
                    // The view is older than the endpointer's state: another thread is
                    // rebuilding it (this one could not take the rebuild lock). Pick from the
                    // newer snapshot directly (one linear scan) rather than serve the
                    // previous set after the update is visible.
                    let cur = endpointer.endpoints();
                    if !std::ptr::eq::<Endpoints<E>>(&*cur, &*v.snapshot) {
                        return self.fallback(c, &cur, viewed, request);
                    }
                }
                Guard::into_inner(v)
            }
            Current::Fallback(s) => return self.fallback(c, &s, viewed, request),
        };
        endpoints_of(&current.snapshot)?;
        let n = current.cands().len();
        let id = self.id();
        // Entries taken out of the table are dropped after it is released: dropping a
        // snapshot runs the endpoints' destructors, which may pick again.
        let mut dropped: Vec<Entry> = Vec::new();
        let mut replaced: Option<Entry> = None;
        let picked = TABLE
            .try_with(|t| {
                if t.busy.replace(true) {
                    // A pick from inside this thread's cache update (from the allocator).
                    return None;
                }
                let _busy = Busy(&t.busy);
                // SAFETY (B): `busy` was clear and is now set until `_busy` drops: no other
                // reference to the list exists or is made meanwhile (the fast path and this
                // path give up on `busy`).
                let entries = unsafe { &mut *t.entries.get() };
                sweep(entries, &mut dropped);
                let at = match entries.iter().position(|e| e.id == id) {
                    Some(at) => {
                        let e = &entries[at];
                        // SAFETY (T): the entry has this `ThreadView<E>`'s id.
                        let l = unsafe { e.local.cast::<Local<E>>().as_ref() };
                        if !matches!(&l.keep, Keep::View(v, _) if Arc::ptr_eq(v, &current)) {
                            // The rotation (or generator) goes on with the new view.
                            let fresh = self.entry(Local::of(current.clone()), e.state.get());
                            replaced = Some(std::mem::replace(&mut entries[at], fresh));
                        }
                        at
                    }
                    None => {
                        let e = self.entry(Local::of(current.clone()), c.start());
                        insert(entries, &t.hand, e, &mut dropped)
                    }
                };
                let e = &entries[at];
                let index = current.cands().at(c.choose(n, Some(&e.state)));
                // SAFETY: the entry has this `ThreadView<E>`'s id (T) and holds a count of
                // its `Rc<Local<E>>`; the increment gives the new `Rc` its own.
                let local = unsafe {
                    let p = e.local.cast::<Local<E>>().as_ptr();
                    Rc::increment_strong_count(p);
                    Rc::from_raw(p)
                };
                Some(EndpointRef::new(local, index))
            })
            .ok()
            .flatten();
        drop(dropped);
        drop(replaced);
        Ok(match picked {
            Some(p) => p,
            // No thread cache (the thread is ending, or a pick from inside this thread's
            // cache update): pick uncached.
            None => {
                let index = current.cands().at(c.choose(n, None));
                EndpointRef::new(Rc::new(Local::of(current)), index)
            }
        })
    }

    /// An entry of this balancer holding `local`.
    fn entry(&self, local: Local<E>, state: u64) -> Entry {
        Entry {
            id: self.id(),
            alive: Arc::downgrade(&self.alive),
            state: Cell::new(state),
            local: NonNull::new(Rc::into_raw(Rc::new(local)).cast_mut())
                .expect("Rc::into_raw is never null")
                .cast(),
            release: release::<E>,
        }
    }

    /// A pick from `s` when the balancer has no view to serve yet (see [`Viewed`]).
    #[cold]
    fn fallback<C: Choose>(
        &self,
        c: &C,
        s: &Snapshot<E>,
        viewed: &Viewed<(), E>,
        request: &Request<'_, E>,
    ) -> Result<EndpointRef<E>, LbError> {
        pick_fallback(s, c.draw(), request, false, viewed.threshold())
            .map(|p| EndpointRef::new(Rc::new(Local::one(p.into_endpoint())), 0))
    }
}

/// Adds `entry` to `entries` (replacing one in turn if the table is full) and returns its
/// position. The thread's first entry allocates the whole table at once.
fn insert(
    entries: &mut Vec<Entry>,
    hand: &Cell<usize>,
    entry: Entry,
    dropped: &mut Vec<Entry>,
) -> usize {
    if entries.len() < WAYS {
        entries.reserve_exact(WAYS - entries.len());
        entries.push(entry);
        entries.len() - 1
    } else {
        let at = hand.get() % WAYS;
        hand.set(hand.get().wrapping_add(1));
        dropped.push(std::mem::replace(&mut entries[at], entry));
        at
    }
}

/// Moves the entries of dropped balancers out of `entries` into `dropped` (dropped by the
/// caller once the table is released: their snapshots' destructors may pick again).
fn sweep(entries: &mut Vec<Entry>, dropped: &mut Vec<Entry>) {
    let mut i = 0;
    while i < entries.len() {
        if entries[i].alive.strong_count() == 0 {
            dropped.push(entries.swap_remove(i));
        } else {
            i += 1;
        }
    }
}
