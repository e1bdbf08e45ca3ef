//! Consistent hashing on a request key: Maglev.

use std::hash::Hash;
use std::marker::PhantomData;

use sd_core::{Endpoint, Endpointer, Snapshot};

use crate::balancer::{
    bounded, endpoints_of, hash_key, panic_threshold_builder, pick_fallback, redraw_accepted,
    splitmix, thread_random, Balancer, Cands, Current, PanicThreshold, Picked, Request, Viewed,
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
/// **Weights.** An endpoint owns a share of the table in proportion to its
/// [`Instance::weight`](sd_core::Instance::weight) (weighted Maglev, as in Envoy: in each
/// filling round an endpoint takes a slot only when its weight has earned one), so it gets
/// that share of the keys; every endpoint of positive weight owns at least one slot. An
/// endpoint of weight 0 owns none while one of positive weight exists (when all weigh 0 they
/// count as 1). With equal weights the table is the unweighted one, slot for slot. A weight
/// change is an update like any other: the keys that move are about the share that changed
/// hands. [`ignore_weights`](ConsistentHash::ignore_weights) gives every endpoint an equal
/// share.
///
/// Health (see [`Balancer`]): when some endpoints are [`Passing`](sd_core::Health::Passing)
/// and some are not (and no fewer pass than the [panic
/// threshold](crate::PanicThreshold)), the table holds the passing ones only, so the keys of a failing
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
    weights: bool,
    table: Viewed<Table, E>,
    _e: PhantomData<fn() -> E>,
}

struct Table {
    /// Endpoint index per slot; `M` entries (prime).
    slots: Vec<u32>,
    /// The endpoints that own slots (indices into the list), for the last-resort choice
    /// when a request avoids most of them.
    members: Box<[u32]>,
}

impl<P: Endpointer<E>, E: Send + Sync + 'static> ConsistentHash<P, E> {
    /// A Maglev balancer over `endpointer` (its table is built now, on this thread).
    pub fn new(endpointer: P) -> Self {
        ConsistentHash {
            table: Self::view(&endpointer, true),
            endpointer,
            weights: true,
            _e: PhantomData,
        }
    }

    panic_threshold_builder!(table);

    fn view(endpointer: &P, weights: bool) -> Viewed<Table, E> {
        Viewed::new(endpointer, true, move |l, preferred, _| {
            build(l, preferred, weights)
        })
    }

    /// Ignores [`Instance::weight`](sd_core::Instance::weight): every endpoint owns the same
    /// share of the table (the table is rebuilt now, on this thread). For a set whose weights
    /// are all equal this changes nothing: the table is the same slot for slot. Every client
    /// of a service must make the same choice, or they map keys differently.
    pub fn ignore_weights(mut self) -> Self {
        self.weights = false;
        let next = Self::view(&self.endpointer, false);
        self.table.replace(next, &self.endpointer);
        self
    }

    /// Whether instance weights count (see [`ignore_weights`](ConsistentHash::ignore_weights)).
    pub fn honours_weights(&self) -> bool {
        self.weights
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

fn build<E>(list: &[Endpoint<E>], preferred: Option<&[u32]>, weights: bool) -> Table {
    // The candidates: the preferred (passing) endpoints when there are some.
    let cands: Vec<u32> = match preferred {
        Some(p) => p.to_vec(),
        None => (0..list.len() as u32).collect(),
    };
    let weight_of = |i: u32| {
        if weights {
            list[i as usize].instance().weight() as u64
        } else {
            1
        }
    };
    // The members own slots: candidates of positive weight, or all of them (as weight 1)
    // when every one weighs 0.
    let (members, weight): (Vec<u32>, Vec<u64>) = if cands.iter().all(|&i| weight_of(i) == 0) {
        cands.iter().map(|&i| (i, 1)).unzip()
    } else {
        cands
            .iter()
            .map(|&i| (i, weight_of(i)))
            .filter(|&(_, w)| w > 0)
            .unzip()
    };
    let n = members.len();
    if n == 0 {
        return Table {
            slots: Vec::new(),
            members: Box::new([]),
        };
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
    // Weighted Maglev, as Envoy builds it: in round `t` (from 1) a member takes its next
    // preferred slot only if `t × weight ≥ its target`, and each slot taken raises the target
    // by the largest weight. The heaviest member takes a slot every round, one of half its
    // weight every other round, and so on, so slot counts follow the weights (every member
    // takes at least one, in round 1). With equal weights every member takes a slot every
    // round: the plain Maglev table, slot for slot. Bounds: rounds ≤ M (the heaviest
    // member fills one slot per round), so `t × weight < 2^32 · M` and targets stay far
    // from overflowing `u64`.
    let wmax = weight.iter().copied().max().unwrap_or(1);
    let mut target = vec![0u64; n];
    let mut round = 0u64;
    'outer: loop {
        round += 1;
        for i in 0..n {
            if round * weight[i] < target[i] {
                continue;
            }
            target[i] += wmax;
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
    Table {
        slots,
        members: members.into_boxed_slice(),
    }
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
            Current::Fallback(s) => {
                return pick_fallback(
                    &s,
                    splitmix(key),
                    request,
                    self.weights,
                    self.table.threshold(),
                )
            }
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
        let members = Cands::new(list.len(), Some(&table.value.members));
        Ok(Picked::new(
            list[redraw_accepted(list, members, first, request, h)].clone(),
        ))
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.endpointer.endpoints()
    }

    fn panic_threshold(&self) -> PanicThreshold {
        self.table.threshold()
    }
}

#[cfg(test)]
mod tests {
    use super::{build, table_size};
    use sd_core::{Endpoint, Instance};

    fn endpoints(weights: &[u32]) -> Vec<Endpoint<()>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Endpoint::new(
                    Instance::builder("10.0.0.1", 1000 + i as u16)
                        .weight(*w)
                        .build(),
                    (),
                )
            })
            .collect()
    }

    fn slot_counts(weights: &[u32], honour: bool) -> Vec<usize> {
        let table = build(&endpoints(weights), None, honour);
        let mut c = vec![0usize; weights.len()];
        for &s in &table.slots {
            c[s as usize] += 1;
        }
        c
    }

    /// Each endpoint owns `M × weight / total` slots: exactly, up to the rounding of the
    /// filling rounds. Endpoint i takes a slot in round 1 and then once per `wmax / w_i`
    /// rounds, so after `T` rounds it holds `T·w_i/wmax + 1` slots at most and
    /// `T·w_i/wmax - 1` at least, and the last round is cut short: an error of at most 2 slots
    /// per endpoint before normalisation, which shifts the others by at most 2 each, hence
    /// the bound `2 + 2n` slots.
    #[test]
    fn weighted_table_shares_follow_weights() {
        for weights in [
            vec![1u32, 2, 3, 4],
            vec![100, 1, 1, 50, 7],
            vec![5, 5, 5, 0],
            vec![u32::MAX, 1, u32::MAX / 2],
            (1..=40).collect(),
        ] {
            let c = slot_counts(&weights, true);
            let m: usize = c.iter().sum();
            assert_eq!(
                m as u64,
                table_size(weights.iter().filter(|w| **w > 0).count())
            );
            let total: f64 = weights.iter().map(|w| *w as f64).sum();
            let bound = 2.0 + 2.0 * weights.len() as f64;
            for (i, w) in weights.iter().enumerate() {
                let expected = m as f64 * *w as f64 / total;
                if *w == 0 {
                    assert_eq!(c[i], 0, "weight 0 owns no slot: {weights:?} {c:?}");
                } else {
                    assert!(c[i] >= 1, "every positive weight owns a slot: {c:?}");
                    assert!(
                        (c[i] as f64 - expected).abs() <= bound.max(1.0),
                        "{weights:?}: endpoint {i} owns {} slots, expected {expected:.1} ± {bound}",
                        c[i]
                    );
                }
            }
        }
    }

    /// With equal weights (any value) the weighted build is the plain Maglev table, slot for
    /// slot: sets without weights map keys exactly as before weights counted.
    #[test]
    fn equal_weights_build_the_unweighted_table() {
        for w in [1u32, 7, u32::MAX] {
            let eps = endpoints(&[w; 13]);
            assert_eq!(
                build(&eps, None, true).slots,
                build(&eps, None, false).slots
            );
        }
        // All zero counts as all one.
        let eps = endpoints(&[0; 5]);
        assert_eq!(
            build(&eps, None, true).slots,
            build(&endpoints(&[1; 5]), None, true).slots
        );
    }

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
