//! Not decoding again what has not changed: [`InstanceReuse`].
//!
//! A watch receives the complete set on every change, and from one answer to the next most
//! entries are byte for byte the same. A backend decoding an answer asks its
//! `InstanceReuse` for each entry's instance, giving the entry's raw form (its JSON text, a
//! record's bytes) and how to decode it: an entry whose raw form the previous answer had
//! gets the previous answer's [`Instance`] handle back, without decoding, allocating or
//! dropping anything for it. The instance cache's merge then finds it pointer-equal to the
//! published one (one pointer comparison), and so does the endpointer.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::instance::Instance;

/// Remembers the instances decoded from the previous answer of one watch, by a fingerprint
/// of the raw form of their entries, and hands them back for entries that did not change.
///
/// One per watch (the previous answer is that watch's). An answer is decoded between two
/// calls to [`finish`](Self::finish): each entry through [`instance`](Self::instance), then
/// `finish` makes what this answer decoded the previous answer of the next one (entries
/// that left are forgotten, and their instances dropped unless published).
///
/// A changed entry is not served as the old one: the previous entry must have the same
/// fingerprint, two 64-bit foldhash hashes of the raw bytes with different per-hasher seeds
/// (they share foldhash's process-wide seed, so they are not fully independent: a changed
/// entry passes for the old one only if both collide at once, heuristically about one
/// chance in 2^128, not a proven bound). An entry that fails to decode is not remembered:
/// it is decoded (and fails, alone) again next time.
///
/// What it holds: one slot (24 bytes: the fingerprint and the instance handle), the
/// entry's place in the last sorted order (4 bytes) and one hash-table index per entry of
/// the previous answer; not the raw bytes.
///
/// It also remembers the order: [`sort`](Self::sort) sorts an answer's instances using the
/// place each unchanged entry had in the last sorted answer, so an answer whose entries
/// mostly come back (in any order: a registry usually answers in the same order every
/// time, which is rarely the address order) is sorted without comparing them; only the
/// entries that changed are compared, and inserted.
///
/// ```
/// use sd_core::{Instance, InstanceReuse};
/// let decode = |raw: &[u8]| -> Result<Instance, String> {
///     Instance::parse(std::str::from_utf8(raw).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
/// };
/// let mut reuse = InstanceReuse::new();
/// let a = reuse.instance(b"10.0.0.1:80", || decode(b"10.0.0.1:80")).unwrap();
/// reuse.finish();
/// // The next answer has the same entry: the same handle, not decoded again.
/// let b = reuse.instance(b"10.0.0.1:80", || -> Result<Instance, String> { unreachable!() }).unwrap();
/// assert!(Instance::ptr_eq(&a, &b));
/// ```
#[derive(Default)]
pub struct InstanceReuse {
    /// The entries of the previous answer.
    prev: Table,
    /// The entries of the answer being decoded.
    next: Table,
    hasher: foldhash::fast::RandomState,
    /// Another per-hasher seed than `hasher`'s (the process-wide seed is shared): the
    /// fingerprint's second half.
    checker: foldhash::quality::RandomState,
    /// The length of the last order [`sort`](Self::sort) made: the ranks in the tables are
    /// places in it.
    ranked: usize,
    /// Scratch space of `sort`, kept between answers (no allocation per answer).
    scratch: SortScratch,
}

/// The working arrays of [`InstanceReuse::sort`].
#[derive(Default)]
struct SortScratch {
    /// For each place of the last order, the instance now holding it.
    place: Vec<u32>,
    /// The instances without a usable place (new entries, duplicates, foreign handles).
    fresh: Vec<u32>,
    /// Each instance's slot in the table, or [`NONE`].
    slot_of: Vec<u32>,
    /// The instances that kept a place, in the last order's order.
    kept: Vec<u32>,
    /// The sorted order, as indexes into the instances.
    order: Vec<u32>,
}

impl SortScratch {
    fn clear(&mut self) {
        self.place.clear();
        self.fresh.clear();
        self.slot_of.clear();
        self.kept.clear();
        self.order.clear();
    }

    /// Keeps no more room than `n` entries need (as the tables do).
    fn trim(&mut self, n: usize) {
        for v in [
            &mut self.place,
            &mut self.fresh,
            &mut self.slot_of,
            &mut self.kept,
            &mut self.order,
        ] {
            if v.capacity() > 2 * n + 64 {
                v.shrink_to(n);
            }
        }
    }
}

/// No rank, no slot.
const NONE: u32 = u32::MAX;

/// An entry's fingerprint: two differently seeded 64-bit hashes of its raw form (the
/// first also places it in the hash table). Two different raw forms share a fingerprint
/// only if both hashes collide at once: heuristically about one chance in 2^128 per pair.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    hash: u64,
    check: u64,
}

/// Entries by the fingerprint of their raw form: a slot per entry, a hash table of slot
/// indexes. The raw bytes themselves are not kept (at 1 000 watched services they would
/// be tens of megabytes).
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    /// Each slot's place in the last order [`InstanceReuse::sort`] made ([`NONE`]: none);
    /// beside the slots, not in them, to keep a slot at 24 bytes.
    ranks: Vec<u32>,
    index: HashTable<u32>,
}

struct Slot {
    fp: Fingerprint,
    /// `None` once handed over to the next answer.
    instance: Option<Instance>,
}

impl Table {
    /// The slot of the entry with fingerprint `fp` (each fingerprint has at most one).
    fn slot(&self, fp: Fingerprint) -> Option<usize> {
        let i = self
            .index
            .find(fp.hash, |&i| self.slots[i as usize].fp == fp)?;
        Some(*i as usize)
    }

    fn find(&self, fp: Fingerprint) -> Option<&Instance> {
        self.slots[self.slot(fp)?].instance.as_ref()
    }

    /// Hands the instance of `fp` over (moved, not cloned: it is needed once per answer),
    /// with its rank.
    fn take(&mut self, fp: Fingerprint) -> Option<(Instance, u32)> {
        let i = self.slot(fp)?;
        Some((self.slots[i].instance.take()?, self.ranks[i]))
    }

    /// Remembers a fingerprint that is not in the table yet.
    fn insert(&mut self, fp: Fingerprint, instance: Instance, rank: u32) {
        let Ok(i) = u32::try_from(self.slots.len()) else {
            return;
        };
        self.slots.push(Slot {
            fp,
            instance: Some(instance),
        });
        self.ranks.push(rank);
        let slots = &self.slots;
        self.index
            .insert_unique(fp.hash, i, |&j| slots[j as usize].fp.hash);
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.ranks.clear();
        self.index.clear();
    }
}

impl InstanceReuse {
    /// Nothing remembered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The instance of the entry whose raw form is `raw`: the previous answer's handle when
    /// it had an entry with the same fingerprint (see above), else what `decode` makes of
    /// it (an error is returned as is, and the entry is not remembered).
    pub fn instance<E>(
        &mut self,
        raw: &[u8],
        decode: impl FnOnce() -> Result<Instance, E>,
    ) -> Result<Instance, E> {
        let fp = Fingerprint {
            hash: self.hasher.hash_one(raw),
            check: self.checker.hash_one(raw),
        };
        // One probe for an unchanged entry: its handle moves from the previous answer's
        // table to this one's.
        if let Some((old, rank)) = self.prev.take(fp) {
            self.next.insert(fp, old.clone(), rank);
            return Ok(old);
        }
        // The same entry twice in one answer: one slot, one instance.
        if let Some(seen) = self.next.find(fp) {
            return Ok(seen.clone());
        }
        let instance = decode()?;
        self.next.insert(fp, instance.clone(), NONE);
        Ok(instance)
    }

    /// Ends an answer: the entries given to [`instance`](Self::instance) since the last
    /// call become the previous answer, the others are forgotten.
    pub fn finish(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.next);
        self.next.clear();
        // Keep no more room than the answers need (a large answer once does not hold its
        // memory for ever).
        let slots = self.prev.slots.len();
        if self.next.slots.capacity() > 2 * slots + 64 {
            self.next.slots.shrink_to(slots);
            self.next.ranks.shrink_to(slots);
            self.next.index.shrink_to(slots, |_| 0);
        }
        self.scratch.trim(slots.max(self.ranked));
    }

    /// Sorts the instances of the answer just decoded (call it after
    /// [`finish`](Self::finish)) into the order [`InstanceSet`](crate::InstanceSet) keeps
    /// (`instances.sort()` gives the same sequence), and remembers the order for the next
    /// answer.
    ///
    /// `instances` are what [`instance`](Self::instance) returned for this answer, in the
    /// answer's order (duplicates included, entries that failed left out). An instance
    /// whose entry the last sorted answer had takes its place from that order, without a
    /// comparison; only the others (entries that are new or changed, duplicates) are sorted
    /// and inserted, each by a binary search. So an answer whose entries mostly come back,
    /// in whatever order, costs a few passes over arrays of indexes; when more than about a
    /// quarter of them are new (the first answer, say), it is an ordinary sort.
    ///
    /// Any other vector is sorted correctly too (slower: what is not an instance of this
    /// answer, in its order, is sorted as new). [`InstanceSet::new`](crate::InstanceSet::new)
    /// checks the order again in one pass and collapses duplicate keys.
    ///
    /// ```
    /// use sd_core::{Instance, InstanceReuse, InstanceSet};
    /// let mut reuse = InstanceReuse::new();
    /// let mut answer = |entries: &[&str], reuse: &mut InstanceReuse| {
    ///     let mut v: Vec<Instance> = entries
    ///         .iter()
    ///         .map(|e| reuse.instance(e.as_bytes(), || Instance::parse(e)).unwrap())
    ///         .collect();
    ///     reuse.finish();
    ///     reuse.sort(&mut v);
    ///     InstanceSet::new(v)
    /// };
    /// let a = answer(&["10.0.0.9:80", "10.0.0.10:80", "10.0.0.2:80"], &mut reuse);
    /// // The same entries, one changed: no comparison but for the changed one.
    /// let b = answer(&["10.0.0.9:80", "10.0.0.10:80", "10.0.0.3:80"], &mut reuse);
    /// assert_eq!(b.iter().map(|i| i.addr()).collect::<Vec<_>>(), ["10.0.0.10:80", "10.0.0.3:80", "10.0.0.9:80"]);
    /// assert!(Instance::ptr_eq(&a[0], &b[0]));
    /// ```
    pub fn sort(&mut self, instances: &mut [Instance]) {
        let n = instances.len();
        let Ok(n32) = u32::try_from(n) else {
            instances.sort_unstable();
            return;
        };
        let table = &mut self.prev;
        let sc = &mut self.scratch;
        sc.clear();
        sc.place.resize(self.ranked, NONE);
        sc.slot_of.reserve(n);
        // Each instance's place in the last order: this answer's slots are in the answer's
        // order (first occurrences), so a walk in step with them finds each instance's
        // slot by one pointer comparison. A duplicate or an instance from elsewhere does
        // not match and is sorted as new.
        let mut k = 0;
        for (i, inst) in (0..n32).zip(instances.iter()) {
            let matched = table
                .slots
                .get(k)
                .and_then(|s| s.instance.as_ref())
                .is_some_and(|s| Instance::ptr_eq(s, inst));
            if !matched {
                sc.slot_of.push(NONE);
                sc.fresh.push(i);
                continue;
            }
            sc.slot_of.push(k as u32);
            let rank = table.ranks[k];
            k += 1;
            match sc.place.get_mut(rank as usize) {
                Some(p) if *p == NONE => *p = i,
                _ => sc.fresh.push(i),
            }
        }
        // Slots not matched have no place in the order made here.
        for r in &mut table.ranks[k..] {
            *r = NONE;
        }
        if sc.fresh.len() > n / 4 + 8 {
            // Mostly new: an ordinary sort, on the indexes.
            sc.order.extend(0..n32);
            crate::event::sort_indexes(instances, &mut sc.order);
        } else {
            // The instances that kept a place are in order already (they are the same
            // handles, and the last order was sorted); the others are sorted among
            // themselves and inserted.
            let by = |a: &u32, b: &u32| instances[*a as usize].cmp(&instances[*b as usize]);
            sc.fresh.sort_unstable_by(by);
            sc.kept
                .extend(sc.place.iter().copied().filter(|&i| i != NONE));
            sc.order.reserve(n);
            let mut rest = &sc.kept[..];
            for &f in &sc.fresh {
                let fi = &instances[f as usize];
                let at = rest.partition_point(|&j| instances[j as usize] < *fi);
                sc.order.extend_from_slice(&rest[..at]);
                sc.order.push(f);
                rest = &rest[at..];
            }
            sc.order.extend_from_slice(rest);
        }
        // The places of this order, for the next answer.
        for (r, &i) in (0..n32).zip(sc.order.iter()) {
            let slot = sc.slot_of[i as usize];
            if slot != NONE {
                table.ranks[slot as usize] = r;
            }
        }
        self.ranked = n;
        // Moves the instances into that order, one cycle of the permutation at a time
        // (`order[r]` is the index of the instance that goes to `r`; a done place is
        // marked NONE).
        for start in 0..n {
            let mut cur = start;
            loop {
                let next = std::mem::replace(&mut sc.order[cur], NONE);
                if next == NONE || next as usize == start {
                    break;
                }
                instances.swap(cur, next as usize);
                cur = next as usize;
            }
        }
    }

    /// Forgets everything (after an answer that could not be read: the next one is decoded
    /// in full). The entries given to [`instance`](Self::instance) since the last
    /// [`finish`](Self::finish) are forgotten too.
    pub fn clear(&mut self) {
        self.prev = Table::default();
        self.next = Table::default();
        self.ranked = 0;
        self.scratch = SortScratch::default();
    }

    /// How many entries the previous answer had (that decoded).
    pub fn len(&self) -> usize {
        self.prev.slots.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.prev.slots.is_empty()
    }
}

impl std::fmt::Debug for InstanceReuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceReuse")
            .field("entries", &self.prev.slots.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceSet;
    use std::cell::Cell;

    fn decode(raw: &[u8]) -> Result<Instance, String> {
        let s = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
        let (addr, id) = s.split_once(' ').unwrap_or((s, ""));
        Instance::parse(addr)
            .map(|i| i.to_builder().id(id).build())
            .map_err(|e| e.to_string())
    }

    /// Decodes `answer` through `reuse`, counting the decodes.
    fn answer(
        reuse: &mut InstanceReuse,
        answer: &[&str],
        decodes: &Cell<usize>,
    ) -> Vec<Result<Instance, String>> {
        let out = answer
            .iter()
            .map(|e| {
                reuse.instance(e.as_bytes(), || {
                    decodes.set(decodes.get() + 1);
                    decode(e.as_bytes())
                })
            })
            .collect();
        reuse.finish();
        out
    }

    #[test]
    fn unchanged_entries_keep_their_handles_changed_ones_are_decoded() {
        let mut reuse = InstanceReuse::new();
        let n = Cell::new(0);
        let a = answer(
            &mut reuse,
            &["10.0.0.1:80 a", "10.0.0.2:80 b", "10.0.0.3:80 c"],
            &n,
        );
        assert_eq!(n.get(), 3);
        let b = answer(
            &mut reuse,
            &["10.0.0.1:80 a", "10.0.0.2:81 b", "10.0.0.3:80 c"],
            &n,
        );
        assert_eq!(n.get(), 4, "only the changed entry is decoded");
        assert!(Instance::ptr_eq(
            a[0].as_ref().unwrap(),
            b[0].as_ref().unwrap()
        ));
        assert!(Instance::ptr_eq(
            a[2].as_ref().unwrap(),
            b[2].as_ref().unwrap()
        ));
        assert_eq!(b[1].as_ref().unwrap().addr(), "10.0.0.2:81");
        // An entry that left and came back (not in the answer just before) is decoded anew.
        let c = answer(
            &mut reuse,
            &["10.0.0.1:80 a", "10.0.0.2:80 b", "10.0.0.3:80 c"],
            &n,
        );
        assert_eq!(n.get(), 5);
        assert!(!Instance::ptr_eq(
            a[1].as_ref().unwrap(),
            c[1].as_ref().unwrap()
        ));
        assert_eq!(reuse.len(), 3);
    }

    #[test]
    fn a_byte_identical_answer_decodes_nothing_and_reorders_freely() {
        let mut reuse = InstanceReuse::new();
        let n = Cell::new(0);
        let entries: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let a = answer(&mut reuse, &refs, &n);
        let mut rev = refs.clone();
        rev.reverse();
        let b = answer(&mut reuse, &rev, &n);
        assert_eq!(n.get(), 1000);
        for (x, y) in a.iter().zip(b.iter().rev()) {
            assert!(Instance::ptr_eq(x.as_ref().unwrap(), y.as_ref().unwrap()));
        }
    }

    /// A bad entry fails alone, every time, and is not remembered; duplicates share a slot.
    #[test]
    fn bad_entries_fail_alone_and_are_not_remembered() {
        let mut reuse = InstanceReuse::new();
        let n = Cell::new(0);
        let a = answer(&mut reuse, &["10.0.0.1:80", "nope", "10.0.0.1:80"], &n);
        assert!(a[1].is_err() && a[0].is_ok() && a[2].is_ok());
        // A duplicate within one answer is decoded once and remembered once.
        assert_eq!(n.get(), 2);
        assert!(Instance::ptr_eq(
            a[0].as_ref().unwrap(),
            a[2].as_ref().unwrap()
        ));
        assert_eq!(reuse.len(), 1);
        let b = answer(&mut reuse, &["10.0.0.1:80", "nope"], &n);
        assert!(b[1].is_err() && b[0].is_ok());
        assert_eq!(
            n.get(),
            3,
            "the bad entry is decoded again, the good one is not"
        );
        reuse.clear();
        assert!(reuse.is_empty());
        answer(&mut reuse, &["10.0.0.1:80"], &n);
        assert_eq!(n.get(), 4, "cleared: decoded again");
    }

    /// A seeded generator (splitmix64): the cases below are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// An entry: hosts that share long prefixes (the sort's 16-byte keys tie), ids, and a
    /// weight, so that entries share keys with other attributes; an entry `bad` fails.
    fn entry(rng: &mut Rng) -> String {
        if rng.below(40) == 0 {
            return "bad".into();
        }
        let host = match rng.below(3) {
            0 => format!("10.0.{}.{}", rng.below(3), rng.below(300)),
            1 => format!("svc-{}.example.internal", rng.below(50)),
            _ => format!("h{}", rng.below(30)),
        };
        let port = [80, 8080, 9][rng.below(3)];
        format!("{host}:{port} {} {}", rng.below(3), rng.below(2))
    }

    fn decode_weighted(raw: &[u8]) -> Result<Instance, String> {
        let s = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
        let mut parts = s.split(' ');
        let addr = parts.next().unwrap_or("");
        let id = parts.next().unwrap_or("");
        let weight = parts.next().and_then(|w| w.parse().ok()).unwrap_or(1);
        Instance::parse(addr)
            .map(|i| i.to_builder().id(id).weight(weight).build())
            .map_err(|e| e.to_string())
    }

    /// The next answer: the last one with a few random edits (the common case: the same
    /// order, one entry changed), or reshuffled, or mostly new.
    fn edit(rng: &mut Rng, answer: &mut Vec<String>) {
        match rng.below(10) {
            0 => {
                for i in (1..answer.len()).rev() {
                    answer.swap(i, rng.below(i + 1));
                }
            }
            1 => answer.reverse(),
            2 => {
                let n = rng.below(150);
                *answer = (0..n).map(|_| entry(rng)).collect();
            }
            _ => {}
        }
        for _ in 0..rng.below(4) {
            let n = answer.len();
            match rng.below(5) {
                0 if n > 0 => answer[rng.below(n)] = entry(rng),
                1 if n > 0 => {
                    answer.remove(rng.below(n));
                }
                2 if n > 0 => {
                    let dup = answer[rng.below(n)].clone();
                    answer.insert(rng.below(n + 1), dup);
                }
                3 if n > 1 => answer.swap(rng.below(n), rng.below(n)),
                _ => answer.insert(rng.below(n + 1), entry(rng)),
            }
        }
    }

    /// `sort` gives exactly `sort()`'s sequence (the same handles in the same places) on
    /// seeded random answer sequences: same order with a few changes, duplicates,
    /// removals, insertions, shuffles, mostly new answers, bad entries, answers not sorted
    /// through the reuse, and `clear`; and then `InstanceSet::new` gives the set it gives
    /// from the unsorted answer.
    #[test]
    fn sort_is_the_full_sort_on_random_answer_sequences() {
        let mut fast = 0;
        for seed in 0..400u64 {
            let mut rng = Rng(seed);
            let mut reuse = InstanceReuse::new();
            let n = rng.below(120);
            let mut answer: Vec<String> = (0..n).map(|_| entry(&mut rng)).collect();
            for step in 0..10 {
                if step > 0 {
                    edit(&mut rng, &mut answer);
                }
                let mut v: Vec<Instance> = answer
                    .iter()
                    .filter_map(|e| {
                        reuse
                            .instance(e.as_bytes(), || decode_weighted(e.as_bytes()))
                            .ok()
                    })
                    .collect();
                reuse.finish();
                match rng.below(12) {
                    0 => continue, // not sorted through the reuse
                    1 => reuse.clear(),
                    _ => {}
                }
                let unsorted = v.clone();
                let len = v.len();
                let mut want = v.clone();
                want.sort();
                reuse.sort(&mut v);
                assert_eq!(v.len(), want.len());
                for (k, (got, want)) in v.iter().zip(&want).enumerate() {
                    assert!(
                        Instance::ptr_eq(got, want),
                        "seed {seed} step {step}: place {k}: {got:?}, want {want:?}"
                    );
                }
                assert_eq!(InstanceSet::new(v), InstanceSet::new(unsorted));
                if len > 20 && reuse.scratch.fresh.len() * 4 < len {
                    fast += 1;
                }
            }
        }
        assert!(fast > 1000, "the order memory served {fast} answers");
    }

    /// An answer in the same order as the last, one entry changed: one instance is sorted
    /// (the changed one), the others take their places from the last order.
    #[test]
    fn an_answer_in_the_same_order_compares_only_what_changed() {
        let entries: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect();
        let mut reuse = InstanceReuse::new();
        let decode_all = |reuse: &mut InstanceReuse, entries: &[String]| {
            let mut v: Vec<Instance> = entries
                .iter()
                .map(|e| {
                    reuse
                        .instance(e.as_bytes(), || decode(e.as_bytes()))
                        .unwrap()
                })
                .collect();
            reuse.finish();
            reuse.sort(&mut v);
            v
        };
        let a = decode_all(&mut reuse, &entries);
        assert_eq!(
            reuse.scratch.fresh.len(),
            1000,
            "the first answer is all new"
        );
        let mut changed = entries.clone();
        changed[500] = "10.0.1.244:81".into();
        let b = decode_all(&mut reuse, &changed);
        assert_eq!(
            reuse.scratch.fresh.len(),
            1,
            "only the changed entry is sorted"
        );
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.iter().filter(|i| i.port() == 81).count(), 0);
        assert_eq!(b.iter().filter(|i| i.port() == 81).count(), 1);
        changed.reverse();
        decode_all(&mut reuse, &changed);
        assert_eq!(reuse.scratch.fresh.len(), 0, "reordered, nothing new");
    }

    /// Entries whose first hashes collide are told apart by the second: each keeps its own
    /// instance.
    #[test]
    fn colliding_hashes_are_told_apart_by_the_check() {
        let mut t = Table::default();
        let x = Instance::new("10.0.0.1", 80);
        let y = Instance::new("10.0.0.2", 80);
        let fp = |check| Fingerprint { hash: 7, check };
        t.insert(fp(1), x.clone(), NONE);
        t.insert(fp(2), y.clone(), NONE);
        assert!(Instance::ptr_eq(t.find(fp(1)).unwrap(), &x));
        assert!(Instance::ptr_eq(t.find(fp(2)).unwrap(), &y));
        assert!(t.find(fp(3)).is_none());
        assert!(t.find(Fingerprint { hash: 8, check: 1 }).is_none());
    }
}
