//! Deterministic subsetting (the Google SRE book, ch. 20): each client uses a stable subset
//! of the endpoints, and across clients every endpoint gets the same number of clients.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sd_core::{Changes, Endpoint, Endpointer, Endpoints, Snapshot};

use crate::balancer::{hash_key, splitmix};

/// An [`Endpointer`] that passes on a deterministic subset of another's endpoints: the
/// Google SRE book's algorithm (ch. 20, "Load Balancing in the Datacenter"), with the
/// client's id and the subset size as inputs. Put any balancer on top of it.
///
/// **Why.** With many clients and many endpoints, every client connecting to every endpoint
/// costs memory, connections and health checks on both sides; a random subset per client
/// spreads connections unevenly (some endpoints get twice the average). Deterministic
/// subsetting gives each client `size` endpoints such that every endpoint gets the same
/// number of clients, within one.
///
/// **How.** The `n` endpoints are split into `count = round(n / size)` subsets (at least 1).
/// Clients are grouped in *rounds* of `count` consecutive ids: round `r = id / count`. Each
/// round orders the endpoints by a hash of `(r, instance key)` (a shuffle seeded by the round
/// number, the same in every client) and cuts that order into `count` contiguous subsets of
/// `⌊n / count⌋` or `⌈n / count⌉` endpoints; client `id` takes subset `id mod count`. Every
/// round uses every endpoint exactly once, so with client ids `0..C` each endpoint serves
/// `⌊C / count⌋` or `⌈C / count⌉` clients: **the spread is at most 1** (300 clients × 300
/// endpoints × size 10: exactly 10 clients per endpoint, `tests/subset.rs`).
///
/// **Stable, small churn.** A client's subset depends only on its id, the size and the set
/// of instance keys (`(addr, id)`): not on the order of discovery, health, weights or
/// metadata, and not on time. Because the shuffle is an order by hash rather than a
/// shuffle of positions, an endpoint that comes or goes leaves the relative order of the
/// others intact: while `count` stays the same, each client's subset changes by at most
/// one endpoint dropped and one added (measured in `tests/subset.rs`). `count` changes
/// only when `n` crosses `(m + ½) × size` (e.g. 305 ↔ 306 for size 10); then clients are
/// regrouped into rounds and most subsets change, once, like a rehash.
///
/// Subset sizes are `⌊n / count⌋` or `⌈n / count⌉`: exactly `size` when `size` divides `n`,
/// otherwise between about `¾ × size` and `1½ × size` (rounding `n / size` keeps churn small
/// on both sides of a multiple of `size`, where the book's `⌊n / size⌋` regroups every
/// client when one endpoint leaves). With `n ≤ size`, or `size` 0, every endpoint is used.
///
/// Client ids must be dense (`0..C`, e.g. a StatefulSet ordinal or a task index) for the
/// spread guarantee; each client must use a different id. Weights are not used for the
/// subset (the balancer on top still uses them), and health neither: a subset keeps an
/// endpoint that turns critical, and balancers prefer the passing ones inside it.
///
/// **Cost.** [`endpoints`](Endpointer::endpoints) is one load of the inner snapshot, one
/// `arc-swap` load and a reference-count increment. The first call after the inner
/// endpointer changes recomputes the subset (sorting `n` hashes: microseconds at 300, about
/// a millisecond at 10 000) under a mutex; [`changes`](Endpointer::changes) is the inner
/// endpointer's notifier, so balancers on top see every change.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{Endpointer, FixedEndpointer, Instance};
/// use sd_lb::{RoundRobin, Subset};
/// let all = Arc::new(FixedEndpointer::new((0..30).map(|p| (Instance::new("10.0.0.1", 1000 + p), p))));
/// // Client 7 of the fleet talks to 5 of the 30 endpoints.
/// let mine = Arc::new(Subset::new(all.clone(), 7, 5));
/// assert_eq!(mine.endpoints().all().len(), 5);
/// let rr = RoundRobin::new(mine.clone());
/// let picked = **rr.pick().unwrap();
/// assert!(mine.endpoints().all().iter().any(|e| **e == picked));
/// // The same inputs give the same subset in every process.
/// let again = Subset::new(all, 7, 5);
/// let ports = |s: &Subset<_, u16>| s.endpoints().all().iter().map(|e| **e).collect::<Vec<_>>();
/// assert_eq!(ports(&again), ports(&mine));
/// ```
pub struct Subset<P, E: 'static> {
    inner: P,
    client: u64,
    size: usize,
    current: ArcSwap<Derived<E>>,
    rebuild: Mutex<()>,
}

/// The subset of one inner snapshot.
struct Derived<E: 'static> {
    /// The inner snapshot it was computed from (held, so its address is not reused).
    source: Snapshot<E>,
    out: Arc<Endpoints<E>>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> Subset<P, E> {
    /// The subset of `inner`'s endpoints for client `client_id`, about `size` endpoints
    /// (see [`Subset`]); computed now, and again after each change of `inner`.
    pub fn new(inner: P, client_id: u64, size: usize) -> Self {
        let derived = derive(inner.endpoints().detach(), client_id, size);
        Subset {
            inner,
            client: client_id,
            size,
            current: ArcSwap::from_pointee(derived),
            rebuild: Mutex::new(()),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The subset size asked for.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The inner endpointer.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

/// The subset of `source` for `client`.
fn derive<E>(source: Snapshot<E>, client: u64, size: usize) -> Derived<E> {
    let list = subset_of(source.all(), client, size);
    let out = Arc::new(Endpoints::new(
        list,
        source.status().clone(),
        source.version(),
    ));
    Derived { source, out }
}

/// The subset of `all` for `client` (see [`Subset`]).
fn subset_of<E>(all: &[Endpoint<E>], client: u64, size: usize) -> Vec<Endpoint<E>> {
    let n = all.len();
    if size == 0 || n <= size {
        return all.to_vec();
    }
    // round(n / size), at least 1.
    let count = ((n + size / 2) / size).max(1);
    let round = client / count as u64;
    let id = (client % count as u64) as usize;
    // The round's shuffle: the endpoints ordered by a hash of (round, instance key). Unlike a
    // Fisher-Yates shuffle of positions, an endpoint that comes or goes leaves the others'
    // relative order intact. Ties (a 64-bit collision) fall back to the key itself.
    let seed = splitmix(round ^ 0x5EED_5B5E_7C0F_FEE5);
    let mut order: Vec<(u64, usize)> = all
        .iter()
        .enumerate()
        .map(|(i, e)| (splitmix(hash_key(&e.instance().key()) ^ seed), i))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| all[a.1].instance().key().cmp(&all[b.1].instance().key()))
    });
    // `count` contiguous subsets: the first `n mod count` take one endpoint more.
    let (base, extra) = (n / count, n % count);
    let start = id * base + id.min(extra);
    let len = base + usize::from(id < extra);
    order[start..start + len]
        .iter()
        .map(|&(_, i)| all[i].clone())
        .collect()
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> Endpointer<E> for Subset<P, E> {
    fn endpoints(&self) -> Snapshot<E> {
        let src = self.inner.endpoints();
        let cur = self.current.load();
        if std::ptr::eq::<Endpoints<E>>(&*cur.source, &*src) {
            return Snapshot::new(cur.out.clone());
        }
        drop(cur);
        // Not `try_lock`: a caller that marked the inner notifier seen must get the subset of
        // the inner state that follows, not the previous one.
        let _lock = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let src = self.inner.endpoints();
        let cur = self.current.load();
        if std::ptr::eq::<Endpoints<E>>(&*cur.source, &*src) {
            return Snapshot::new(cur.out.clone());
        }
        let next = Arc::new(derive(src.detach(), self.client, self.size));
        self.current.store(next.clone());
        Snapshot::new(next.out.clone())
    }

    fn changes(&self) -> Changes {
        self.inner.changes()
    }
}

impl<P, E: 'static> std::fmt::Debug for Subset<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("client_id", &self.client)
            .field("size", &self.size)
            .finish()
    }
}
