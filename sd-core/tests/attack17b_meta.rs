//! Attack on `sd_core::Meta` (issue 17): it replaced `BTreeMap<String, String>` as
//! `Instance::meta()`, so everything it answers must be what the map answered. Checked
//! against a `BTreeMap` model with proptest, on keys chosen to be hard: empty strings,
//! keys that are prefixes of each other, multi-byte UTF-8 (so that offsets would land
//! inside a character if they were miscounted), and duplicates in any order.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use proptest::prelude::*;
use sd_core::{Health, Instance, Meta};

/// Keys and values from a small alphabet, so that duplicates, prefixes and equal texts
/// split differently are common.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["", "a", "b", "ab", "é", "\u{10348}", "z", "\u{7f}"]),
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..8)
}

/// What the `BTreeMap` the builder used to fill held: `insert` in order, last value wins.
fn model(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in pairs {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn hash<T: Hash>(t: &T) -> u64 {
    let mut s = DefaultHasher::new();
    t.hash(&mut s);
    s.finish()
}

fn instance(pairs: &[(String, String)], tags: &[String]) -> Instance {
    let mut b = Instance::builder("h", 1).id("x").tags(tags.iter().cloned());
    for (k, v) in pairs {
        b = b.meta(k.clone(), v.clone());
    }
    b.build()
}

/// An instance's order as it was with the map: every field in turn, meta as the map.
type OldKey = (
    String,
    String,
    Vec<String>,
    BTreeMap<String, String>,
    u32,
    Health,
);

fn old_key(i: &Instance) -> OldKey {
    (
        i.addr().to_string(),
        i.id().to_string(),
        i.tags().to_vec(),
        i.meta().to_map(),
        i.weight(),
        i.health(),
    )
}

/// Many pairs on few keys: past 20 pairs a sort that is not stable (`sort_unstable`)
/// really reorders equal keys, so the value kept would not be the last one given.
fn many_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["", "a", "ab", "é", "b"]).prop_map(String::from),
            "[0-9]{1,3}",
        ),
        20..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_repeated_key_keeps_its_last_value_among_many(p in many_pairs()) {
        let want = model(&p);
        let got: Meta = p.iter().cloned().collect();
        prop_assert_eq!(&got, &want);
        let i = instance(&p, &[]);
        prop_assert_eq!(i.meta(), &want);
    }

    #[test]
    fn meta_reads_like_the_map(p in pairs(), probes in prop::collection::vec(text(), 0..6)) {
        let want = model(&p);
        let got: Meta = p.iter().cloned().collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(got.len(), want.len());
        prop_assert_eq!(got.is_empty(), want.is_empty());
        prop_assert_eq!(got.to_map(), want.clone());
        let from_map = Meta::from(want.clone());
        prop_assert_eq!(&from_map, &got);
        prop_assert_eq!(hash(&from_map), hash(&got));
        let keys = want.keys().cloned().collect::<Vec<_>>();
        for probe in probes.iter().chain(keys.iter()) {
            prop_assert_eq!(got.get(probe), want.get(probe).map(String::as_str));
            prop_assert_eq!(from_map.get(probe), want.get(probe).map(String::as_str));
            prop_assert_eq!(got.contains_key(probe), want.contains_key(probe));
            if let Some(v) = want.get(probe) {
                prop_assert_eq!(&got[probe.as_str()], v.as_str());
            }
        }
        let fwd: Vec<(String, String)> =
            got.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(&fwd, &want.clone().into_iter().collect::<Vec<_>>());
        let mut back: Vec<(String, String)> =
            got.iter().rev().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        back.reverse();
        prop_assert_eq!(&back, &fwd);
        // Mixed ends meet once.
        let mut it = got.iter();
        let mut seen = 0;
        while (if seen % 2 == 0 { it.next() } else { it.next_back() }).is_some() {
            seen += 1;
            prop_assert_eq!(it.len(), want.len() - seen);
        }
        prop_assert_eq!(seen, want.len());
        prop_assert_eq!(it.next(), None);
        prop_assert_eq!(got.values().collect::<Vec<_>>(),
            want.values().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(serde_json::to_string(&got).unwrap(),
            serde_json::to_string(&want).unwrap());
        prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    #[test]
    fn meta_orders_equals_and_hashes_like_the_map(a in pairs(), b in pairs()) {
        let (ma, mb) = (model(&a), model(&b));
        let (ga, gb): (Meta, Meta) = (a.iter().cloned().collect(), b.iter().cloned().collect());
        prop_assert_eq!(ga.cmp(&gb), ma.cmp(&mb));
        prop_assert_eq!(ga.partial_cmp(&gb), ma.partial_cmp(&mb));
        prop_assert_eq!(ga == gb, ma == mb);
        prop_assert_eq!(ga == mb, ma == mb);
        if ga == gb {
            prop_assert_eq!(hash(&ga), hash(&gb));
        }
        // The same pairs given in another order (keeping each key's last value last).
        let mut shuffled = a.clone();
        shuffled.reverse();
        let last: BTreeMap<_, _> = model(&a);
        shuffled.extend(last.clone());
        let gs: Meta = shuffled.into_iter().collect();
        prop_assert_eq!(&gs, &ga);
        prop_assert_eq!(hash(&gs), hash(&ga));
    }

    #[test]
    fn instances_order_equal_and_hash_as_with_the_map(
        a in pairs(), b in pairs(),
        ta in prop::collection::vec(text(), 0..2), tb in prop::collection::vec(text(), 0..2),
    ) {
        let (ia, ib) = (instance(&a, &ta), instance(&b, &tb));
        prop_assert_eq!(ia.cmp(&ib), old_key(&ia).cmp(&old_key(&ib)));
        prop_assert_eq!(ia == ib, old_key(&ia) == old_key(&ib));
        prop_assert_eq!(ia.meta(), &model(&a));
        if ia == ib {
            prop_assert_eq!(hash(&ia), hash(&ib));
        }
        // The round trip through the builder changes nothing, adding a pair again
        // replaces its value, and an added new key is found.
        let again = ia.to_builder().build();
        prop_assert_eq!(&again, &ia);
        prop_assert_eq!(hash(&again), hash(&ia));
        prop_assert_eq!(again.cmp(&ia), std::cmp::Ordering::Equal);
        if let Some((k, _)) = a.first() {
            let replaced = ia.to_builder().meta(k.clone(), "new value").build();
            prop_assert_eq!(replaced.meta().get(k), Some("new value"));
            prop_assert_eq!(replaced.meta().len(), ia.meta().len());
        }
        // No metadata and no tags: the same instance as one never given any.
        if a.is_empty() && ta.is_empty() {
            prop_assert_eq!(&ia, &Instance::builder("h", 1).id("x").build());
        }
    }
}

#[test]
fn an_instance_without_metadata_answers_empty_meta() {
    let i = Instance::builder("h", 1).build();
    assert!(i.meta().is_empty());
    assert_eq!(i.meta().get(""), None);
    assert_eq!(i.meta(), &Meta::new());
    assert_eq!(serde_json::to_string(i.meta()).unwrap(), "{}");
    // Metadata given only as an empty key and value is still metadata.
    let j = Instance::builder("h", 1).meta("", "").build();
    assert_ne!(i, j);
    assert_eq!(j.meta().get(""), Some(""));
    assert!(i < j);
}

#[test]
fn multi_byte_keys_around_each_other_are_found() {
    // Offsets right after multi-byte characters, keys that differ only past them.
    let pairs = [
        ("é", "\u{10348}"),
        ("éé", ""),
        ("\u{10348}", "é"),
        ("e", "é"),
        ("", "\u{10348}\u{10348}"),
    ];
    let m: Meta = pairs.iter().copied().collect();
    for (k, v) in pairs {
        assert_eq!(m.get(k), Some(v), "{k:?}");
        assert_eq!(&m[k], v);
    }
    assert_eq!(m.get("ée"), None);
    assert_eq!(m.get("\u{10347}"), None);
}
