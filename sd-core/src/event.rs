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
        instances.sort();
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
        let mut out = Vec::with_capacity(self.0.len());
        let mut old = previous.0.iter().peekable();
        for inst in self.0.iter() {
            // One comparison per pair: both sets are strictly increasing (keys are unique).
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
                Some(o) => {
                    reused += 1;
                    out.push(o.clone());
                }
                None => out.push(inst.clone()),
            }
        }
        if reused == self.0.len() && reused == previous.0.len() {
            return None;
        }
        Some(InstanceSet(out.into()))
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
