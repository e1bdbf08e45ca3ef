//! Consistent hashing on a request key: Maglev.

use std::hash::Hash;
use std::marker::PhantomData;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, hash_key, pick_fallback, redraw_accepted, splitmix, thread_random,
    Balancer, Current, Picked, Request, Viewed,
};
use crate::error::LbError;

/// Consistent hashing with Google's Maglev lookup table.
///
/// Each endpoint (identified by its instance's `(addr, id)`, so the mapping is the same in
/// every client process) fills the slots of a table of prime size `M ≥ 100 × N` in the order
/// of its own permutation; a key picks `table[hash(key) mod M]`. A pick is one table read,
/// whatever the number of endpoints. When one of N endpoints leaves, the keys it served move
/// and only a few percent of the others do, so about 1/N of all keys move (measured in
/// `tests/balancers.rs`).
///
/// **Rebuilds happen off the request path.** The table is built at construction, then on a
/// background thread started by the first pick after the endpoint set changes (about 9 ms at
/// 1 000 endpoints and 100+ ms at 10 000; see `docs/BENCHMARKS.md`). Until it is ready, picks
/// use the previous table; when that has nothing to serve (start-up from an empty set,
/// recovery from a failed one), a key picks `hash(key) mod N` over the new set (the same in
/// every client that sees the same set, but not the Maglev mapping: keys move once more when
/// the table is ready). A pick never reports "no endpoints" while the endpointer has some.
/// [`refresh`](ConsistentHash::refresh) brings the table up to date on the calling thread.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not, the table holds the passing ones only, so the keys of a failing
/// endpoint move to the others (the same way in every client that sees the same health).
///
/// **Table size tiers.** `M` depends only on N, in doubling tiers: 65 537 slots for up to
/// 655 endpoints, then the smallest prime above 131 072 up to 1 310 endpoints, 262 144 up
/// to 2 621, and so on (about 1 M slots at 10 000). Within a tier an ordinary change of the
/// set keeps `M`, and only about 1/N of the keys move. **Crossing a tier boundary (e.g. 655
/// ↔ 656 endpoints) changes `M` and remaps nearly every key**, like a rehash: caches behind
/// the balancer go cold once. If your set hovers around a boundary, keep it on one side.
/// (There is no hysteresis on purpose: `M` must be a function of N alone, or two clients
/// that saw different histories would map keys differently.)
///
/// The key comes from [`Request::with_key`] / [`Request::key_of`], or from
/// [`pick_key`](ConsistentHash::pick_key). A pick without a key picks at random. An avoided
/// endpoint (e.g. one that failed in this call) makes the key fall through to a second,
/// third... table position, so retries of the same key also agree across clients.
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::ConsistentHash;
/// let ep = Arc::new(FixedEndpointer::new((1..=5).map(|p| (Instance::new("10.0.0.1", p), p))));
/// let hash = ConsistentHash::new(ep);
/// let a = *hash.pick_key("user-42").unwrap();
/// assert_eq!(*hash.pick_key("user-42").unwrap(), a);
/// ```
pub struct ConsistentHash<P, E: 'static> {
    endpointer: P,
    table: Viewed<Table, E>,
    _e: PhantomData<fn() -> E>,
}

struct Table {
    /// Endpoint index per slot; `M` entries (prime).
    slots: Vec<u32>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> ConsistentHash<P, E> {
    /// A Maglev balancer over `endpointer` (its table is built now, on this thread).
    pub fn new(endpointer: P) -> Self {
        ConsistentHash {
            table: Viewed::new(&endpointer, true, |l, preferred, _| build(l, preferred)),
            endpointer,
            _e: PhantomData,
        }
    }

    /// Brings the table up to date with the endpointer now, on this thread (waiting for a
    /// background rebuild in progress). Picks never need this; it is for warming up after an
    /// update before sending traffic, and for tests.
    pub fn refresh(&self) {
        self.table.refresh(&self.endpointer);
    }

    /// Picks the endpoint for `key` (hashed with [`hash_key`]).
    pub fn pick_key<K: Hash + ?Sized>(&self, key: &K) -> Result<Endpoint<E>, LbError> {
        self.pick_with(&Request::new().key_of(key))
            .map(Picked::into_endpoint)
    }
}

impl<P, E: 'static> std::fmt::Debug for ConsistentHash<P, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistentHash").finish()
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// The table size for `n` endpoints: the smallest prime ≥ 65 536 · 2^k that is ≥ 100·n.
///
/// The size must not follow every change of `n` (a new size reshuffles every key), so it
/// moves in doubling tiers: 65 537 up to 655 endpoints, about 1 M at 10 000. Crossing a tier
/// boundary does reshuffle every key (see [`ConsistentHash`]).
pub(crate) fn table_size(n: usize) -> u64 {
    let mut base = 1u64 << 16;
    while base < 100 * n as u64 {
        base *= 2;
    }
    let mut m = base + 1;
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn build<E>(list: &[Endpoint<E>], preferred: Option<&[u32]>) -> Table {
    // The members: the preferred (passing) endpoints when there are some.
    let members: Vec<u32> = match preferred {
        Some(p) => p.to_vec(),
        None => (0..list.len() as u32).collect(),
    };
    let n = members.len();
    if n == 0 {
        return Table { slots: Vec::new() };
    }
    let m = table_size(n);
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|&i| {
            let e = &list[i as usize];
            let k = e.instance().key();
            let h = hash_key(&k);
            let offset = h % m;
            let skip = splitmix(h ^ 0x5bd1_e995) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut slots = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    'outer: loop {
        for i in 0..n {
            let (offset, skip) = perms[i];
            let mut c = (offset + next[i] * skip) % m;
            while slots[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            slots[c as usize] = members[i];
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'outer;
            }
        }
    }
    Table { slots }
}

impl<E, P> Balancer<E> for ConsistentHash<P, E>
where
    E: Send + Sync + 'static,
    P: Endpointer<E>,
{
    #[inline]
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let key = request.key().unwrap_or_else(thread_random);
        let table = match self.table.get(&self.endpointer) {
            Current::View(v) => v,
            Current::Fallback(s) => return pick_fallback(&s, splitmix(key), request, false),
        };
        let list = endpoints_of(&table.snapshot)?;
        let slots = &table.value.slots;
        let mut h = splitmix(key);
        let first = slots[bounded(h, slots.len())] as usize;
        if !request.has_avoid() || !request.avoids(&list[first]) {
            return Ok(Picked::new(list[first].clone()));
        }
        // Fall through to further positions for this key, then scan.
        for _ in 0..8 {
            h = splitmix(h);
            let i = slots[bounded(h, slots.len())] as usize;
            if !request.avoids(&list[i]) {
                return Ok(Picked::new(list[i].clone()));
            }
        }
        // Most endpoints are avoided: a choice among the accepted ones, still a function of
        // the key (the same in every client) and uniform over keys.
        Ok(Picked::new(
            list[redraw_accepted(list, table.cands(), first, request, h)].clone(),
        ))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }
}

#[cfg(test)]
mod tests {
    use super::table_size;

    #[test]
    fn table_size_tiers_are_a_function_of_n_alone() {
        // The documented boundaries: one tier for 1..=655, the next starts at 656.
        assert_eq!(table_size(1), 65_537);
        assert_eq!(table_size(655), 65_537);
        let next = table_size(656);
        assert!(next > 131_072 && next < 131_072 + 1_000, "{next}");
        assert_eq!(table_size(1_310), next);
        assert!(table_size(1_311) > 262_144);
        let big = table_size(10_000);
        assert!((1_048_576..1_049_576).contains(&big), "{big}");
        for n in [1usize, 655, 656, 10_000] {
            assert!(table_size(n) >= 100 * n as u64);
        }
    }
}
