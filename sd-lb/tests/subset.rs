//! Deterministic subsetting (issue 18): the connection spread over 300 clients × 300
//! endpoints × subset 10, the churn when one endpoint leaves or arrives, stability, and a
//! balancer on top following updates.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Event, FixedEndpointer, Instance, InstanceCache,
};
use sd_lb::{RoundRobin, Subset};

/// Endpoints `10.0.<i/256>.<i%256>:8080` for the given indices; values are the indices.
fn fleet(ids: impl IntoIterator<Item = u32>) -> Arc<FixedEndpointer<u32>> {
    Arc::new(FixedEndpointer::new(ids.into_iter().map(|i| {
        (
            Instance::new(format!("10.0.{}.{}", i / 256, i % 256), 8080),
            i,
        )
    })))
}

/// The subset (endpoint values) of every client `0..clients`.
fn subsets(ep: &Arc<FixedEndpointer<u32>>, clients: u64, size: usize) -> Vec<BTreeSet<u32>> {
    (0..clients)
        .map(|c| {
            Subset::new(ep.clone(), c, size)
                .endpoints()
                .all()
                .iter()
                .map(|e| **e)
                .collect()
        })
        .collect()
}

/// Clients per endpoint.
fn spread(subsets: &[BTreeSet<u32>]) -> HashMap<u32, usize> {
    let mut per = HashMap::new();
    for s in subsets {
        for e in s {
            *per.entry(*e).or_insert(0) += 1;
        }
    }
    per
}

/// The SRE book's example: 300 clients, 300 endpoints, subsets of 10: every endpoint gets
/// exactly 10 clients. With 299 or 301 endpoints (not a multiple of 10), or 317 clients (a
/// partial round), the spread is still at most 1, the algorithm's guarantee (every round
/// uses every endpoint once).
#[test]
fn connection_spread_is_within_one() {
    for (n, clients, size) in [
        (300u32, 300u64, 10usize),
        (299, 300, 10),
        (301, 300, 10),
        (300, 317, 10),
        (1_000, 250, 25),
        (57, 40, 6),
    ] {
        let ep = fleet(0..n);
        let s = subsets(&ep, clients, size);
        let per = spread(&s);
        assert_eq!(
            per.len(),
            n as usize,
            "every endpoint is used ({n}, {clients}, {size})"
        );
        let (min, max) = (per.values().min().unwrap(), per.values().max().unwrap());
        assert!(
            max - min <= 1,
            "{n} endpoints, {clients} clients, size {size}: {min}..{max} clients per endpoint"
        );
        if n == 300 && clients == 300 {
            assert_eq!((*min, *max), (10, 10), "the book's figure 20-5");
        }
        // Sizes: exactly `size` when it divides n; otherwise n / round(n / size), rounded.
        let count = ((n as usize + size / 2) / size).max(1);
        for sub in &s {
            let len = sub.len();
            assert!(
                len == n as usize / count || len == (n as usize).div_ceil(count),
                "subset of {len}"
            );
        }
    }
}

/// Removing or adding one endpoint changes each client's subset by at most one endpoint
/// out and one in (300 clients × 300 endpoints × 10), and most subsets not at all.
#[test]
fn one_endpoint_more_or_less_moves_at_most_one_per_client() {
    let base = subsets(&fleet(0..300), 300, 10);
    for (what, changed) in [
        (
            "removed",
            subsets(&fleet((0..300).filter(|i| *i != 123)), 300, 10),
        ),
        ("added", subsets(&fleet(0..301), 300, 10)),
        ("removed first", subsets(&fleet(1..300), 300, 10)),
    ] {
        let mut touched = 0;
        for (c, (old, new)) in base.iter().zip(&changed).enumerate() {
            let out = old.difference(new).count();
            let came = new.difference(old).count();
            assert!(
                out <= 1 && came <= 1,
                "{what}: client {c} lost {out}, gained {came}: {old:?} → {new:?}"
            );
            touched += usize::from(out + came > 0);
        }
        // Each round's order loses (or gains) one position: the subsets after it shift by
        // one, the ones before it do not move. Averaged over rounds, about half move.
        assert!(
            touched <= 300 * 3 / 4,
            "{what}: {touched} of 300 clients changed"
        );
        eprintln!("{what}: {touched} of 300 clients' subsets changed (by one endpoint each)");
        // The spread after the change is still within one.
        let per = spread(&changed);
        let (min, max) = (per.values().min().unwrap(), per.values().max().unwrap());
        assert!(max - min <= 1, "{what}: {min}..{max}");
    }
}

/// The subset depends on the client id, the size and the instance keys only: not on the
/// order the instances arrive in, their weights or metadata.
#[test]
fn subsets_are_stable_across_processes_and_metadata() {
    let a = fleet(0..100);
    let b = Arc::new(FixedEndpointer::new((0..100u32).rev().map(|i| {
        (
            Instance::builder(format!("10.0.{}.{}", i / 256, i % 256), 8080)
                .weight(1 + i % 5)
                .meta("zone", "b")
                .build(),
            i,
        )
    })));
    for client in [0u64, 1, 9, 10, 11, 99, 1_000_003] {
        let sa: Vec<u32> = Subset::new(a.clone(), client, 10)
            .endpoints()
            .all()
            .iter()
            .map(|e| **e)
            .collect();
        let sb: Vec<u32> = Subset::new(b.clone(), client, 10)
            .endpoints()
            .all()
            .iter()
            .map(|e| **e)
            .collect();
        assert_eq!(sa, sb, "client {client}");
        assert_eq!(sa.len(), 10);
    }
    // Different clients of one round get disjoint subsets.
    let s = subsets(&a, 10, 10);
    for i in 0..10 {
        for j in 0..i {
            assert!(s[i].is_disjoint(&s[j]), "clients {i} and {j} overlap");
        }
    }
    // Small sets, size 0: everything.
    assert_eq!(Subset::new(fleet(0..5), 3, 10).endpoints().all().len(), 5);
    assert_eq!(Subset::new(fleet(0..50), 3, 0).endpoints().all().len(), 50);
}

/// A balancer on top follows the inner endpointer's updates: after one, it picks only from
/// the new subset, and the status (an error) passes through.
#[tokio::test]
async fn balancer_on_a_subset_follows_updates() {
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    let set = |ports: std::ops::Range<u16>| {
        Event::instances(
            ports
                .map(|p| Instance::new("10.0.0.1", p))
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(set(1..41));
    let sub = Arc::new(Subset::new(ep.clone(), 2, 4));
    let rr = RoundRobin::new(sub.clone());
    let mine =
        |s: &Subset<_, u16>| -> BTreeSet<u16> { s.endpoints().all().iter().map(|e| **e).collect() };
    let before = mine(&sub);
    assert_eq!(before.len(), 4);
    for _ in 0..20 {
        assert!(before.contains(&*rr.pick().unwrap()));
    }
    // Drop one of this client's endpoints.
    let gone = *before.iter().next().unwrap();
    ep.apply(Event::instances(
        (1..41u16)
            .filter(|p| *p != gone)
            .map(|p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    ));
    let after = mine(&sub);
    assert!(!after.contains(&gone));
    assert_eq!(
        before.intersection(&after).count(),
        3,
        "{before:?} → {after:?}"
    );
    for _ in 0..20 {
        let p = **rr.pick().unwrap();
        assert!(after.contains(&p), "{p} not in {after:?}");
    }
    // An error event: the last good subset stays, and the status says why.
    ep.apply(Event::Error(sd_core::Error::Timeout {
        backend: "test",
        message: "registry down".into(),
    }));
    assert_eq!(mine(&sub), after);
    assert!(sub.endpoints().last_error().is_some());
    assert!(after.contains(&*rr.pick().unwrap()));
    ep.close().await;
}
