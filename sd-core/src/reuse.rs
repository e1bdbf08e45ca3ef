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
/// What it holds: one slot (24 bytes: the fingerprint and the instance handle) and one
/// hash-table index per entry of the previous answer; not the raw bytes.
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
}

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

    /// Hands the instance of `fp` over (moved, not cloned: it is needed once per answer).
    fn take(&mut self, fp: Fingerprint) -> Option<Instance> {
        let i = self.slot(fp)?;
        self.slots[i].instance.take()
    }

    /// Remembers a fingerprint that is not in the table yet.
    fn insert(&mut self, fp: Fingerprint, instance: Instance) {
        let Ok(i) = u32::try_from(self.slots.len()) else {
            return;
        };
        self.slots.push(Slot {
            fp,
            instance: Some(instance),
        });
        let slots = &self.slots;
        self.index
            .insert_unique(fp.hash, i, |&j| slots[j as usize].fp.hash);
    }

    fn clear(&mut self) {
        self.slots.clear();
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
        if let Some(old) = self.prev.take(fp) {
            self.next.insert(fp, old.clone());
            return Ok(old);
        }
        // The same entry twice in one answer: one slot, one instance.
        if let Some(seen) = self.next.find(fp) {
            return Ok(seen.clone());
        }
        let instance = decode()?;
        self.next.insert(fp, instance.clone());
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
            self.next.index.shrink_to(slots, |_| 0);
        }
    }

    /// Forgets everything (after an answer that could not be read: the next one is decoded
    /// in full). The entries given to [`instance`](Self::instance) since the last
    /// [`finish`](Self::finish) are forgotten too.
    pub fn clear(&mut self) {
        self.prev = Table::default();
        self.next = Table::default();
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

    /// Entries whose first hashes collide are told apart by the second: each keeps its own
    /// instance.
    #[test]
    fn colliding_hashes_are_told_apart_by_the_check() {
        let mut t = Table::default();
        let x = Instance::new("10.0.0.1", 80);
        let y = Instance::new("10.0.0.2", 80);
        let fp = |check| Fingerprint { hash: 7, check };
        t.insert(fp(1), x.clone());
        t.insert(fp(2), y.clone());
        assert!(Instance::ptr_eq(t.find(fp(1)).unwrap(), &x));
        assert!(Instance::ptr_eq(t.find(fp(2)).unwrap(), &y));
        assert!(t.find(fp(3)).is_none());
        assert!(t.find(Fingerprint { hash: 8, check: 1 }).is_none());
    }
}
