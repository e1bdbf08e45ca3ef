//! Adversarial tests of issue 17's sd-core changes: the compact `Instance`, the keyed sort
//! and `is_sorted` fast path of `InstanceSet::new`, the cache merge's `ptr_eq` fast path
//! and no-copy publication, and `InstanceReuse`.

use std::cell::Cell;

use sd_core::{Event, Health, Instance, InstanceCache, InstanceReuse, InstanceSet};

fn set_of(state: Option<Event>) -> InstanceSet {
    match state {
        Some(Event::Instances(s)) => s,
        other => panic!("expected a set, got {other:?}"),
    }
}

/// The reference of `InstanceSet::new`: the full `Ord`, a stable sort, then the documented
/// dedup (the healthiest of each key, the first in sort order among equally healthy ones).
fn reference(mut v: Vec<Instance>) -> Vec<Instance> {
    v.sort();
    let mut out: Vec<Instance> = Vec::new();
    for i in v {
        match out.last_mut() {
            Some(k) if k.key() == i.key() => {
                if i.health() < k.health() {
                    *k = i;
                }
            }
            _ => out.push(i),
        }
    }
    out
}

/// Hosts sharing their first 16 bytes (and more), non-ASCII ones, IPv6, an empty host,
/// hosts with brackets, NUL-padded look-alikes: at least 64 of them, so the keyed sort runs.
fn hostile_hosts() -> Vec<String> {
    let mut hosts = Vec::new();
    for i in 0..40 {
        hosts.push(format!("service-0123456789abcdef-{i}.internal"));
        hosts.push(format!("service-0123456789abcdef{}", "x".repeat(i)));
    }
    hosts.extend(
        [
            "",
            "a",
            "a\0",
            "a\0\0",
            "é",
            "ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ",
            "\u{10FFFF}",
            "[x",
            "x]",
            "[[::1]]",
            "::1",
            "fe80::1%eth0",
            "10.0.0.1",
            "10.0.0.10",
            "10.0.0.1\u{0}",
            "service-0123456",
            "service-01234567",
            "service-012345678",
        ]
        .map(String::from),
    );
    hosts
}

/// The keyed sort (64 entries or more) and the sorted fast path give exactly the full
/// order and the documented dedup, on prefix ties, non-ASCII bytes, NUL bytes, duplicates
/// by value and by key, in every input order tried.
#[test]
fn instance_set_order_and_dedup_match_the_full_ord() {
    let hosts = hostile_hosts();
    let mut v = Vec::new();
    for (k, h) in hosts.iter().enumerate() {
        let port = [80u16, 8080, 1][k % 3];
        v.push(Instance::builder(h.clone(), port).id("a").build());
        // Same key, other health: the healthiest must win.
        v.push(
            Instance::builder(h.clone(), port)
                .id("a")
                .health(Health::Critical)
                .tag("t")
                .build(),
        );
        // Equal by value, another handle.
        v.push(Instance::builder(h.clone(), port).id("a").build());
        // Same address, other id: another instance.
        v.push(Instance::builder(h.clone(), port).id("").weight(3).build());
    }
    assert!(v.len() >= 64);
    let want = reference(v.clone());
    let orders: Vec<Vec<Instance>> = vec![
        v.clone(),
        v.iter().rev().cloned().collect(),
        {
            let mut s = v.clone();
            s.sort(); // already sorted, with duplicates: the fast path
            s
        },
        {
            // A fixed shuffle.
            let mut s = v.clone();
            let n = s.len();
            for i in 0..n {
                s.swap(i, (i * 7919 + 13) % n);
            }
            s
        },
    ];
    for (k, order) in orders.into_iter().enumerate() {
        let (set, dropped) = InstanceSet::new_counting(order);
        assert_eq!(set.as_slice(), want.as_slice(), "order {k}");
        assert_eq!(dropped, v.len() - want.len(), "order {k}");
        assert!(set
            .windows(2)
            .all(|w| w[0] < w[1] && w[0].key() < w[1].key()));
        assert!(set.iter().all(|i| i.health() == Health::Passing));
    }
}

/// Every accessor reads back what the builder was given, on every shape of address.
#[test]
fn accessors_on_every_shape() {
    let mut hosts = hostile_hosts();
    for len in [
        0usize, 1, 15, 16, 17, 240, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256,
        65_530, 65_536, 70_000,
    ] {
        hosts.push("h".repeat(len));
        hosts.push(format!("{}::1", "a:".repeat(len / 2)));
        hosts.push("é".repeat(len / 2));
    }
    for host in hosts {
        // What the builder keeps of a host: brackets around the whole host are dropped.
        let kept = if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
            host[1..host.len() - 1].to_string()
        } else {
            host.clone()
        };
        for port in [0u16, 1, 80, 65535] {
            for id in ["", "x", ":1]", &"i".repeat(300)] {
                let i = Instance::builder(host.clone(), port)
                    .id(id)
                    .tags(["b", "a"])
                    .meta("k", "v")
                    .weight(7)
                    .health(Health::Warning)
                    .build();
                let addr = if kept.contains(':') {
                    format!("[{kept}]:{port}")
                } else {
                    format!("{kept}:{port}")
                };
                assert_eq!(i.host(), kept, "{host:?}");
                assert_eq!(i.port(), port);
                assert_eq!(i.addr(), addr);
                assert_eq!(i.id(), id);
                assert_eq!(i.key(), (addr.as_str(), id));
                assert_eq!(i.tags(), ["b", "a"]);
                assert_eq!(i.meta().get("k").unwrap(), "v");
                assert_eq!((i.weight(), i.health()), (7, Health::Warning));
                let plain = Instance::builder(host.clone(), port).id(id).build();
                assert_eq!(plain.host(), kept);
                assert_eq!(plain.addr(), addr);
                assert_eq!(plain.id(), id);
                assert!(plain.tags().is_empty() && plain.meta().is_empty());
                assert_ne!(plain, i);
            }
        }
    }
}

/// Issue 17 claim (sd-core/src/event.rs, docs/BENCHMARKS.md): the cache publishes the new
/// set as it is, without a copy, when it already carries the old handles. An entry that
/// left (or one whose new value sorts before its old one) must not defeat that.
#[test]
fn a_departure_does_not_make_the_cache_copy_a_set_of_old_handles() {
    let old: InstanceSet = (1..=5)
        .map(|i| Instance::new(format!("10.0.0.{i}"), 80))
        .collect();
    let cases: Vec<(&str, Vec<Instance>)> = vec![
        ("first left", old[1..].to_vec()),
        (
            "middle left",
            vec![
                old[0].clone(),
                old[1].clone(),
                old[3].clone(),
                old[4].clone(),
            ],
        ),
        ("last left", old[..4].to_vec()),
        (
            "a change sorting earlier",
            vec![
                old[0].clone(),
                old[1].clone(),
                old[2].to_builder().weight(0).build(),
                old[3].clone(),
                old[4].clone(),
            ],
        ),
    ];
    for (what, v) in cases {
        let cache = InstanceCache::new();
        cache.update(Event::Instances(old.clone()));
        let new = InstanceSet::new(v);
        assert!(cache.update(Event::Instances(new.clone())), "{what}");
        let published = set_of(cache.state());
        assert_eq!(published, new, "{what}");
        assert!(
            InstanceSet::ptr_eq(&published, &new),
            "{what}: the set carrying the old handles was copied"
        );
    }
}

/// The merge must publish exactly the answer (by value), with the old handles for the
/// unchanged instances, whatever the mix of fast-path and slow-path entries; and a change
/// must never be missed by a subscriber.
#[test]
fn the_merge_publishes_exactly_the_answer() {
    let base: Vec<Instance> = (0..8)
        .map(|i| Instance::builder(format!("10.0.0.{i}"), 80).id("a").build())
        .collect();
    // Every subset of the 8, each with instance 3 optionally changed (tags reordered).
    for mask in 0u32..256 {
        for change in [false, true] {
            let cache = InstanceCache::new();
            let mut sub = cache.subscribe();
            let old = InstanceSet::new(base.clone());
            cache.update(Event::Instances(old.clone()));
            let mut v = Vec::new();
            for (k, i) in base.iter().enumerate() {
                if mask & (1 << k) == 0 {
                    continue;
                }
                if change && k == 3 {
                    v.push(i.to_builder().tags(["y", "x"]).build());
                } else {
                    v.push(i.clone());
                }
            }
            // A fresh copy of one unchanged instance too (equal value, another handle).
            if mask & 1 != 0 {
                v[0] = v[0].to_builder().build();
            }
            let new = InstanceSet::new(v);
            let changed = new != old;
            assert_eq!(cache.update(Event::Instances(new.clone())), changed);
            let published = set_of(cache.state());
            assert_eq!(published, new, "mask {mask:#b} change {change}");
            for i in published.iter() {
                let was = old.iter().find(|o| *o == i);
                if let Some(o) = was {
                    assert!(Instance::ptr_eq(o, i), "old handle kept: {i:?}");
                }
            }
            // The subscriber sees the first set, then the change (if any).
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let first = set_of(Some(sub.next().await.unwrap()));
                assert_eq!(first, if changed { new.clone() } else { old.clone() });
            });
        }
    }
}

/// `InstanceReuse`: an entry that failed to decode and then decodes (the decoder's verdict
/// changed) is served fresh; duplicates share one instance; `clear` mid-answer forgets what
/// that answer decoded; growing and shrinking answers keep exactly the last answer.
#[test]
fn reuse_edges() {
    let mut reuse = InstanceReuse::new();
    let decodes = Cell::new(0);
    let ok = |s: &str| -> Result<Instance, String> {
        decodes.set(decodes.get() + 1);
        Instance::parse(s).map_err(|e| e.to_string())
    };
    // Fails, then succeeds for the same bytes: not remembered as a failure.
    assert!(reuse
        .instance(b"e1", || Err::<Instance, _>("nope".to_string()))
        .is_err());
    reuse.finish();
    assert!(reuse.is_empty());
    let a = reuse.instance(b"e1", || ok("10.0.0.1:80")).unwrap();
    let a2 = reuse.instance(b"e1", || ok("10.0.0.9:80")).unwrap();
    assert!(Instance::ptr_eq(&a, &a2), "a duplicate shares the instance");
    assert_eq!(decodes.get(), 1);
    reuse.finish();
    assert_eq!(reuse.len(), 1);
    // clear() mid-answer: what this answer gave is forgotten, and so is the previous.
    let b = reuse.instance(b"e2", || ok("10.0.0.2:80")).unwrap();
    reuse.clear();
    let a3 = reuse.instance(b"e1", || ok("10.0.0.1:80")).unwrap();
    assert!(!Instance::ptr_eq(&a, &a3));
    let b2 = reuse.instance(b"e2", || ok("10.0.0.2:80")).unwrap();
    assert!(!Instance::ptr_eq(&b, &b2));
    reuse.finish();
    assert_eq!(reuse.len(), 2);
    // Grow to 50 000 entries, shrink to 3, grow again: `len` is the last answer's.
    for n in [50_000usize, 3, 0, 20_000, 1] {
        for k in 0..n {
            let raw = format!("10.{}.{}.{}:80", k >> 16, (k >> 8) & 255, k & 255);
            let i = reuse
                .instance(raw.as_bytes(), || Instance::parse(&raw))
                .unwrap();
            assert_eq!(i.addr(), raw);
        }
        reuse.finish();
        assert_eq!(reuse.len(), n);
    }
}

/// The same entries in another order: every handle kept, nothing decoded, and the set is
/// the same set (so the cache publishes nothing).
#[test]
fn reuse_same_entries_other_order() {
    let mut reuse = InstanceReuse::new();
    let raws: Vec<String> = (0..100).map(|k| format!("10.0.0.{k}:80")).collect();
    let first: Vec<Instance> = raws
        .iter()
        .map(|r| reuse.instance(r.as_bytes(), || Instance::parse(r)).unwrap())
        .collect();
    reuse.finish();
    let cache = InstanceCache::new();
    cache.update(Event::Instances(InstanceSet::new(first.clone())));
    let second: Vec<Instance> = raws
        .iter()
        .rev()
        .map(|r| {
            reuse
                .instance(r.as_bytes(), || -> Result<Instance, sd_core::Error> {
                    panic!("decoded again: {r}")
                })
                .unwrap()
        })
        .collect();
    reuse.finish();
    for (x, y) in first.iter().zip(second.iter().rev()) {
        assert!(Instance::ptr_eq(x, y));
    }
    assert!(!cache.update(Event::Instances(InstanceSet::new(second))));
}

/// Known limit (not fixed): once a watch's `InstanceReuse` holds handles other than the
/// published ones (after `clear` on a failed answer, or an entry whose bytes changed but
/// whose instance did not, e.g. a Consul check's `Output`), the cache's merge never sees
/// pointer-equal instances again for those entries: it compares them in full and copies
/// the set on every later change, for as long as the entries stay unchanged.
#[test]
#[ignore = "known limit of issue 17's design: the reuse does not learn the published handles"]
fn after_a_failed_answer_the_fast_path_comes_back() {
    let raws: Vec<String> = (0..5).map(|k| format!("10.0.0.{k}:80")).collect();
    let mut reuse = InstanceReuse::new();
    let answer = |raws: &[String], reuse: &mut InstanceReuse| -> InstanceSet {
        let v = raws
            .iter()
            .map(|r| reuse.instance(r.as_bytes(), || Instance::parse(r)).unwrap())
            .collect();
        reuse.finish();
        InstanceSet::new(v)
    };
    let cache = InstanceCache::new();
    cache.update(Event::Instances(answer(&raws, &mut reuse)));
    reuse.clear(); // a body that failed to decode
    assert!(!cache.update(Event::Instances(answer(&raws, &mut reuse))));
    let mut changed = raws.clone();
    changed.push("10.0.0.9:80".into());
    let new = answer(&changed, &mut reuse);
    assert!(cache.update(Event::Instances(new.clone())));
    assert!(
        InstanceSet::ptr_eq(&set_of(cache.state()), &new),
        "the set was copied: the reuse's handles are not the published ones"
    );
}

/// `Endpoint` as two handles: under flapping attributes (same key), the value is kept
/// (`same_value`, no new `make`), each endpoint's instance is the published instance (no
/// instance/value mismatch), and `close` runs exactly once per value made, with a departure
/// and a return in the middle.
#[tokio::test]
async fn endpoints_under_flapping_attributes() {
    use sd_core::{BoxError, DefaultEndpointer, Endpoint, Endpointer, Factory};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct F {
        made: Arc<AtomicUsize>,
        closed: Arc<Mutex<Vec<usize>>>,
    }
    impl Factory<usize> for F {
        fn make(&self, _: &Instance) -> Result<usize, BoxError> {
            Ok(self.made.fetch_add(1, Ordering::SeqCst))
        }
        fn close(&self, _: &Instance, v: &usize) {
            self.closed.lock().unwrap().push(*v);
        }
    }

    let cache = InstanceCache::new();
    let inst = |w: u32, h: Health| {
        Instance::builder("::1", 80)
            .id("a")
            .weight(w)
            .health(h)
            .tags(if w % 2 == 0 { ["x", "y"] } else { ["y", "x"] })
            .build()
    };
    let other = Instance::new("10.0.0.1", 80);
    cache.update(Event::instances(vec![
        inst(1, Health::Passing),
        other.clone(),
    ]));
    let f = F::default();
    let ep = DefaultEndpointer::new(&cache, f.clone());
    let first: Endpoint<usize> = ep
        .endpoints()
        .get()
        .unwrap()
        .iter()
        .find(|e| e.instance().id() == "a")
        .unwrap()
        .clone();
    let mut made_values = 1;
    for round in 0..40u32 {
        let h = [Health::Passing, Health::Warning, Health::Critical][round as usize % 3];
        let want = inst(round % 3, h);
        let gone = round == 20;
        let mut v = vec![other.clone()];
        if !gone {
            v.push(want.clone());
        }
        cache.update(Event::instances(v));
        let mut changes = ep.changes();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let snap = ep.endpoints();
                let all = snap.get().unwrap();
                let a = all.iter().find(|e| e.instance().id() == "a");
                let ok = match a {
                    None => gone,
                    Some(e) => !gone && *e.instance() == want,
                };
                if ok {
                    break;
                }
                changes.changed().await;
            }
        })
        .await
        .expect("endpointer reached the state");
        if round == 21 {
            made_values += 1;
        }
        let snap = ep.endpoints();
        let all = snap.get().unwrap();
        // The published instances and the endpoints' instances agree, handle for handle.
        let published = set_of(cache.state());
        for e in all.iter() {
            let p = published
                .iter()
                .find(|p| p.key() == e.instance().key())
                .unwrap();
            assert!(Instance::ptr_eq(p, e.instance()), "round {round}");
        }
        if let Some(a) = all.iter().find(|e| e.instance().id() == "a") {
            assert_eq!(Endpoint::same_value(a, &first), round < 20, "round {round}");
            assert_eq!(*a.instance(), want);
        }
    }
    // `other` and the two values made for "a".
    assert_eq!(f.made.load(Ordering::SeqCst), 1 + made_values);
    assert_eq!(f.closed.lock().unwrap().as_slice(), [*first.value()]);
    ep.close().await;
    let mut closed = f.closed.lock().unwrap().clone();
    closed.sort();
    assert_eq!(closed, [0, 1, 2], "each value closed exactly once");
}
