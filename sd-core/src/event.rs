//! Events: the complete instance set, or an error. Never a delta.

use std::cmp::Ordering;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::Error;
use crate::instance::Instance;

/// A sorted set of instances with unique `(addr, id)` keys, cheap to clone.
///
/// Built with [`InstanceSet::new`], which sorts and collapses entries with the same
/// [`Instance::key`] (keeping the healthiest, then the first in sort order), so every holder
/// sees the same deterministic order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InstanceSet(Arc<[Instance]>);

impl InstanceSet {
    /// Sorts `instances` and removes entries whose key repeats one already kept, keeping
    /// the healthiest of each key ([`Health::Passing`](crate::Health::Passing) first, then
    /// warning, critical, unknown; the first in sort order among equally healthy ones).
    ///
    /// Returns the set and how many entries were collapsed, so a backend can log them.
    pub fn new_counting(mut instances: Vec<Instance>) -> (Self, usize) {
        // One pass tells a sorted answer (registry answers usually come in a stable order,
        // and `InstanceReuse::sort` sorts one), and whether two neighbours share a key.
        let mut repeats = false;
        let sorted = instances.windows(2).all(|w| match key_order(&w[0], &w[1]) {
            Ordering::Equal => {
                repeats = true;
                w[0] <= w[1]
            }
            o => o == Ordering::Less,
        });
        if !sorted {
            sort(&mut instances);
            repeats = true;
        }
        if !repeats {
            return (InstanceSet(instances.into()), 0);
        }
        let before = instances.len();
        instances.dedup_by(|later, kept| {
            if later.key() != kept.key() {
                return false;
            }
            if later.health() < kept.health() {
                std::mem::swap(later, kept);
            }
            true
        });
        let dropped = before - instances.len();
        (InstanceSet(instances.into()), dropped)
    }

    /// Sorts `instances` and removes entries whose key repeats one already kept.
    pub fn new(instances: Vec<Instance>) -> Self {
        Self::new_counting(instances).0
    }

    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The instances, sorted.
    pub fn as_slice(&self) -> &[Instance] {
        &self.0
    }

    /// Whether both handles share one allocation.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// A copy of `self` in which every instance equal to one in `previous` is replaced by
    /// `previous`'s handle, so that consumers can detect "unchanged" with a pointer
    /// comparison. Both sets are sorted, so this is one linear merge. Returns `None` when
    /// `self` equals `previous` (nothing to publish).
    pub(crate) fn canonicalize(&self, previous: &InstanceSet) -> Option<InstanceSet> {
        let mut reused = 0;
        // Built only once an instance needs the previous handle: when the new set already
        // carries the previous handles (a backend decoding through an
        // `InstanceReuse`), the set is published as it is, without a copy.
        let mut out: Option<Vec<Instance>> = None;
        let mut old = previous.0.iter().peekable();
        for (k, inst) in self.0.iter().enumerate() {
            // One comparison per pair: both sets are strictly increasing (keys are unique).
            // The same handle compares in one pointer comparison (`Instance::cmp`).
            let mut same = None;
            while let Some(o) = old.peek() {
                match (*o).cmp(inst) {
                    Ordering::Less => {
                        old.next();
                    }
                    Ordering::Equal => {
                        same = old.next();
                        break;
                    }
                    Ordering::Greater => break,
                }
            }
            match same {
                // The same handle (also past entries that left): nothing to replace, so
                // nothing to copy.
                Some(o) if Instance::ptr_eq(o, inst) => {
                    reused += 1;
                    if let Some(out) = out.as_mut() {
                        out.push(o.clone());
                    }
                }
                Some(o) => {
                    reused += 1;
                    out.get_or_insert_with(|| {
                        let mut v = Vec::with_capacity(self.0.len());
                        v.extend_from_slice(&self.0[..k]);
                        v
                    })
                    .push(o.clone());
                }
                None => {
                    if let Some(out) = out.as_mut() {
                        out.push(inst.clone());
                    }
                }
            }
        }
        if reused == self.0.len() && reused == previous.0.len() {
            return None;
        }
        Some(match out {
            Some(v) => InstanceSet(v.into()),
            None => self.clone(),
        })
    }
}

impl Deref for InstanceSet {
    type Target = [Instance];
    fn deref(&self) -> &[Instance] {
        &self.0
    }
}

impl From<Vec<Instance>> for InstanceSet {
    fn from(v: Vec<Instance>) -> Self {
        Self::new(v)
    }
}

impl FromIterator<Instance> for InstanceSet {
    fn from_iter<I: IntoIterator<Item = Instance>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// The order of two instances' keys (`(addr, id)`), which the full order refines: `Less`
/// implies `a < b`, `Greater` implies `a > b`. The same handle answers `Equal` at once.
fn key_order(a: &Instance, b: &Instance) -> Ordering {
    if Instance::ptr_eq(a, b) {
        return Ordering::Equal;
    }
    a.addr().cmp(b.addr()).then_with(|| a.id().cmp(b.id()))
}

/// Sorts `instances` as `sort` does, without chasing a pointer per comparison: each
/// instance's first 16 address bytes are read once into an inline key, the keys are sorted,
/// and only instances whose keys tie are compared in full. (The key orders as the address
/// does: bytes past an address's end count as 0, and a tie falls back to the full order.)
fn sort(instances: &mut Vec<Instance>) {
    if instances.len() < 64 {
        instances.sort();
        return;
    }
    let mut keyed: Vec<(u128, Instance)> = instances
        .drain(..)
        .map(|i| (addr_prefix(i.addr()), i))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    instances.extend(keyed.into_iter().map(|(_, i)| i));
}

/// Sorts `order`, indexes into `instances`, into the order of the instances they point
/// at, as [`sort`] sorts instances (on the inline address prefix first).
pub(crate) fn sort_indexes(instances: &[Instance], order: &mut Vec<u32>) {
    let mut keyed: Vec<(u128, u32)> = order
        .iter()
        .map(|&i| (addr_prefix(instances[i as usize].addr()), i))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| instances[a.1 as usize].cmp(&instances[b.1 as usize]))
    });
    order.clear();
    order.extend(keyed.iter().map(|k| k.1));
}

/// The first 16 bytes of `addr`, big-endian, zero-padded: `a < b` for two keys implies
/// the same order of the addresses.
fn addr_prefix(addr: &str) -> u128 {
    let mut b = [0u8; 16];
    let n = addr.len().min(16);
    b[..n].copy_from_slice(&addr.as_bytes()[..n]);
    u128::from_be_bytes(b)
}

/// What an [`Instancer`](crate::Instancer) publishes: the complete current set, or an error.
///
/// After an error event, consumers decide whether the previous set is still usable (the
/// [`DefaultEndpointer`](crate::DefaultEndpointer) keeps it by default). Recovery is
/// always a full set again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The complete, sorted set of instances.
    Instances(InstanceSet),
    /// Discovery failed.
    Error(Error),
}

impl Event {
    /// An instances event from any collection (sorted and de-duplicated by key).
    pub fn instances(instances: impl Into<InstanceSet>) -> Self {
        Event::Instances(instances.into())
    }

    /// The instances, if this is not an error.
    pub fn as_instances(&self) -> Option<&InstanceSet> {
        match self {
            Event::Instances(s) => Some(s),
            Event::Error(_) => None,
        }
    }

    /// The error, if this is one.
    pub fn as_error(&self) -> Option<&Error> {
        match self {
            Event::Error(e) => Some(e),
            Event::Instances(_) => None,
        }
    }

    /// The instance addresses, in order (handy in tests and logs).
    pub fn addrs(&self) -> Vec<String> {
        self.as_instances()
            .map(|s| s.iter().map(|i| i.addr().to_string()).collect())
            .unwrap_or_default()
    }
}

impl From<Result<Vec<Instance>, Error>> for Event {
    fn from(r: Result<Vec<Instance>, Error>) -> Self {
        match r {
            Ok(v) => Event::instances(v),
            Err(e) => Event::Error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Health;
    use proptest::prelude::*;

    fn arb_instance() -> impl Strategy<Value = Instance> {
        (
            // Hosts sharing long prefixes, so that the 16-byte keys tie often.
            prop_oneof![
                "10\\.0\\.[0-9]{1,2}\\.[0-9]{1,2}",
                "svc-[ab]{0,3}\\.example\\.internal",
                "[a-c]{0,20}",
                Just("fe80::1".to_string()),
            ],
            prop_oneof![Just(80u16), Just(8080), 1u16..3],
            "[xy]{0,2}",
            0u32..3,
            prop_oneof![Just(Health::Passing), Just(Health::Critical)],
        )
            .prop_map(|(h, p, id, w, health)| {
                Instance::builder(h, p)
                    .id(id)
                    .weight(w)
                    .health(health)
                    .build()
            })
    }

    proptest! {
        /// The keyed sort gives exactly the order of `sort` (equal instances are equal).
        #[test]
        fn keyed_sort_is_the_full_order(v in prop::collection::vec(arb_instance(), 0..300)) {
            let mut want = v.clone();
            want.sort();
            let mut got = v;
            sort(&mut got);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_sorted_answer_is_kept_and_an_unsorted_one_is_sorted() {
        let v: Vec<Instance> = (0..200)
            .map(|i| Instance::new(format!("10.0.{}.{}", i / 100, i % 100), 80))
            .collect();
        let mut sorted = v.clone();
        sorted.sort();
        let set = InstanceSet::new(v);
        assert_eq!(set.as_slice(), sorted.as_slice());
        assert_eq!(
            InstanceSet::new(sorted.clone()).as_slice(),
            sorted.as_slice()
        );
    }

    /// A new set that already carries the previous handles (decoded through an
    /// `InstanceReuse`) is published as it is, not copied; one built afresh gets the
    /// previous handles for its unchanged instances.
    #[test]
    fn canonicalize_copies_only_when_it_must() {
        let old: InstanceSet = (1..=5)
            .map(|i| Instance::new(format!("10.0.0.{i}"), 80))
            .collect();
        let mut v = old.to_vec();
        v[2] = Instance::new("10.0.0.3", 81);
        let reused = InstanceSet::new(v);
        let merged = reused.canonicalize(&old).unwrap();
        assert!(InstanceSet::ptr_eq(&merged, &reused), "no copy");
        let fresh: InstanceSet = reused.iter().map(|i| i.to_builder().build()).collect();
        let merged = fresh.canonicalize(&old).unwrap();
        assert!(!InstanceSet::ptr_eq(&merged, &fresh));
        for (k, i) in merged.iter().enumerate() {
            assert_eq!(Instance::ptr_eq(i, &old[k]), k != 2, "{k}");
        }
        assert_eq!(merged, reused);
        assert!(old.canonicalize(&old).is_none());
        assert!(fresh.canonicalize(&reused).is_none());
    }
}
