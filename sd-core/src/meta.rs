//! [`Meta`]: an instance's string metadata, compact and immutable.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::iter::FusedIterator;

/// An instance's string metadata (Consul `Meta` plus node and datacenter, Eureka
/// `metadata`, ...): a map from key to value, sorted by key, each key once.
///
/// Compact: every key and value sit back to back in one string, with their end offsets in
/// one slice, so metadata of any size is two allocations (none when empty). A `BTreeMap`
/// of `String`s, which this replaces, takes a 544-byte node for even one pair plus one
/// allocation per key and value: Consul's node and datacenter alone cost some 700 bytes
/// an instance that way, about 100 this way.
///
/// Read it like a map: [`get`](Meta::get), [`contains_key`](Meta::contains_key),
/// [`iter`](Meta::iter) in key order, `meta["key"]`. Build one from pairs (a key given twice
/// keeps its last value, as `BTreeMap::insert` would), or through
/// [`InstanceBuilder::meta`](crate::InstanceBuilder::meta).
///
/// ```
/// use sd_core::Meta;
/// let m: Meta = [("zone", "a"), ("version", "2"), ("zone", "b")].into_iter().collect();
/// assert_eq!(m.len(), 2);
/// assert_eq!(m.get("zone"), Some("b"));
/// assert_eq!(&m["version"], "2"); // `m["k"]` is a `str`: compare it by reference
/// assert_eq!(m.iter().collect::<Vec<_>>(), [("version", "2"), ("zone", "b")]);
/// assert!(m.get("region").is_none());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Key 0, value 0, key 1, value 1, ... back to back, keys in ascending order.
    text: Box<str>,
    /// The end offset in `text` of each key and value: two entries per pair.
    ends: Box<[usize]>,
}

impl Meta {
    /// Empty metadata (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Packs pairs already sorted by key, each key once.
    fn from_sorted(pairs: &[(String, String)]) -> Self {
        let len = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(2 * pairs.len());
        for (k, v) in pairs {
            text.push_str(k);
            ends.push(text.len());
            text.push_str(v);
            ends.push(text.len());
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// Packs pairs in any order; a key given twice keeps its last value.
    pub(crate) fn from_pairs(mut pairs: Vec<(String, String)>) -> Self {
        // Stable: of equal keys, the one given last stays last, and is the one kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Self::from_sorted(&kept)
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `j` of `text` (key `j / 2` or its value).
    fn part(&self, j: usize) -> &str {
        let start = if j == 0 { 0 } else { self.ends[j - 1] };
        &self.text[start..self.ends[j]]
    }

    /// Pair `i`.
    fn pair(&self, i: usize) -> (&str, &str) {
        (self.part(2 * i), self.part(2 * i + 1))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        let mut lo = 0;
        let mut hi = self.len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.part(2 * mid).cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(self.part(2 * mid + 1)),
            }
        }
        None
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            meta: self,
            front: 0,
            back: self.len(),
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// The values, in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The pairs as a `BTreeMap` of owned strings.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The pairs as owned strings, in key order.
    pub(crate) fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The pairs of a [`Meta`], in key order; see [`Meta::iter`].
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    meta: &'a Meta,
    front: usize,
    back: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.front += 1;
        Some(self.meta.pair(self.front - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        Some(self.meta.pair(self.back))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl FusedIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Meta {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self::from_pairs(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self::from_sorted(&map.into_iter().collect::<Vec<_>>())
    }
}

impl From<&Meta> for BTreeMap<String, String> {
    fn from(meta: &Meta) -> Self {
        meta.to_map()
    }
}

impl std::ops::Index<&str> for Meta {
    type Output = str;

    /// The value of `key`.
    ///
    /// # Panics
    ///
    /// When `key` is absent, as `BTreeMap`'s index does; [`Meta::get`] does not panic.
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!("metadata key {key:?} absent"),
        }
    }
}

impl Ord for Meta {
    /// The pairs compared in key order, as two `BTreeMap`s compare.
    fn cmp(&self, other: &Self) -> Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Meta {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<BTreeMap<String, String>> for Meta {
    fn eq(&self, other: &BTreeMap<String, String>) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|((k, v), (ok, ov))| k == ok && v == ov)
    }
}

impl serde::Serialize for Meta {
    /// As a map of strings, in key order.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_like_the_btreemap_it_replaces() {
        // Empty keys and values, a key that is a prefix of another, keys that sort
        // before and after each probe.
        let sets: [&[(&str, &str)]; 5] = [
            &[],
            &[("", "")],
            &[("a", ""), ("", "x")],
            &[("ab", "1"), ("a", "2"), ("b", "3"), ("abc", "")],
            &[
                ("zone", "eu-1"),
                ("consul.node", "n1"),
                ("consul.datacenter", "dc1"),
            ],
        ];
        let probes = [
            "",
            "a",
            "ab",
            "abc",
            "abd",
            "b",
            "c",
            "zone",
            "consul.node",
            "z",
        ];
        for pairs in sets {
            let want = map(pairs);
            let got: Meta = pairs.iter().copied().collect();
            assert_eq!(got, want, "{pairs:?}");
            assert_eq!(got.len(), want.len());
            assert_eq!(got.is_empty(), want.is_empty());
            assert_eq!(got.to_map(), want);
            assert_eq!(Meta::from(want.clone()), got);
            for p in probes {
                assert_eq!(
                    got.get(p),
                    want.get(p).map(String::as_str),
                    "{pairs:?} {p:?}"
                );
                assert_eq!(got.contains_key(p), want.contains_key(p));
            }
            let fwd: Vec<_> = got.iter().collect();
            let want_fwd: Vec<_> = want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(fwd, want_fwd);
            let mut back: Vec<_> = got.iter().rev().collect();
            back.reverse();
            assert_eq!(back, want_fwd);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            assert_eq!(got.iter().len(), want.len());
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value() {
        let m: Meta = [("k", "1"), ("a", "x"), ("k", "2"), ("k", "3")]
            .into_iter()
            .collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), [("a", "x"), ("k", "3")]);
    }

    #[test]
    fn orders_and_hashes_like_the_pairs() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let h = |m: &Meta| {
            let mut s = DefaultHasher::new();
            m.hash(&mut s);
            s.finish()
        };
        let sets: [&[(&str, &str)]; 6] = [
            &[],
            &[("a", "1")],
            &[("a", "1"), ("b", "")],
            &[("a", "2")],
            &[("ab", "")],
            &[("a", "b1")],
        ];
        for x in sets {
            for y in sets {
                let (mx, my): (Meta, Meta) =
                    (x.iter().copied().collect(), y.iter().copied().collect());
                assert_eq!(mx.cmp(&my), map(x).cmp(&map(y)), "{x:?} {y:?}");
                assert_eq!(mx == my, map(x) == map(y));
                if mx == my {
                    assert_eq!(h(&mx), h(&my));
                }
            }
        }
        // The same text split differently is not the same metadata.
        let a: Meta = [("ab", "c")].into_iter().collect();
        let b: Meta = [("a", "bc")].into_iter().collect();
        assert_ne!(a, b);
    }

    #[test]
    #[should_panic(expected = "metadata key \"nope\" absent")]
    fn index_of_an_absent_key_panics_like_a_map() {
        let m: Meta = [("k", "v")].into_iter().collect();
        let _ = &m["nope"];
    }
}
