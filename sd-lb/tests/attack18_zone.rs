//! Attack on zone-aware routing (issue 18): `ZoneAware`.
//!
//! Findings:
//! - over `Weighted`, a small local zone loses its weights: the zone is passed to the
//!   inner balancer as endpoints to avoid, and `Weighted`'s redraw falls back to a
//!   *uniform* choice among the accepted endpoints after 32 missed draws, which happens on
//!   most picks when the zone is a small share of the weight:
//!   `weights_hold_inside_a_small_local_zone_over_weighted`;
//! - a pick in a small zone is `O(N)`, not "about `1 / s` random draws" (docs) or "up to a
//!   few inner picks" (rustdoc): the docs now state the real bound, which
//!   `a_pick_in_a_small_zone_is_about_one_over_share_draws` asserts.
//!
//! Held up: weighted P2C keeps the weights inside a small zone (its redraw is weighted);
//! a caller spread that names zones without endpoints or gives the local zone 0 callers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sd_core::{Endpoint, FixedEndpointer, Instance};
use sd_lb::{Balancer, P2c, Request, RoundRobin, Weighted, ZoneAware};

/// Endpoints `(zone, weight)`, valued by their port `1000 + i`.
fn zoned(list: &[(&str, u32)]) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(list.iter().enumerate().map(
        |(i, &(z, w))| {
            let port = 1000 + i as u16;
            (
                Instance::builder("10.0.0.1", port)
                    .meta("zone", z)
                    .weight(w)
                    .build(),
                port,
            )
        },
    )))
}

/// Zone a: two endpoints of weights 1 and 9 (ports 1000, 1001); zone b: 98 of weight 10.
fn small_weighted_zone() -> Arc<FixedEndpointer<u16>> {
    let mut list = vec![("a", 1), ("a", 9)];
    list.extend(std::iter::repeat(("b", 10)).take(98));
    zoned(&list)
}

fn counts<B: Balancer<u16>>(lb: &B, n: usize) -> BTreeMap<u16, usize> {
    let mut c = BTreeMap::new();
    for _ in 0..n {
        *c.entry(**lb.pick_with(&Request::new()).unwrap().endpoint())
            .or_insert(0) += 1;
    }
    c
}

/// Docs: "Inside the chosen zone the inner balancer picks as usual (weights, health, P2C
/// load)". Zone a holds weights 1 and 9: the weight-9 endpoint should take ~90 % of zone
/// a's picks. Over `Weighted` it gets ~61 %: `weighted.rs` `redraw` (the 32 schedule draws
/// mostly miss a zone holding 1 % of the weight, (0.99)^32 ≈ 72 %) then picks uniformly
/// (`(0..list.len()).filter(ok).nth(bounded(..))`).
#[test]
fn weights_hold_inside_a_small_local_zone_over_weighted() {
    let lb = ZoneAware::new(Weighted::new(small_weighted_zone()), "a");
    assert_eq!(lb.local_share(), 1.0);
    let n = 40_000;
    let c = counts(&lb, n);
    assert_eq!(
        c.keys().copied().collect::<Vec<_>>(),
        vec![1000, 1001],
        "all local"
    );
    let heavy = c[&1001] as f64 / n as f64;
    assert!(
        (heavy - 0.9).abs() < 0.03,
        "weight-9 endpoint's share of zone a: {heavy:.3}, expected 0.9 ({c:?})"
    );
}

/// The same over weighted P2C holds (its redraw is weighted).
#[test]
fn weights_hold_inside_a_small_local_zone_over_weighted_p2c() {
    let lb = ZoneAware::new(P2c::pending_requests(small_weighted_zone()), "a");
    lb.inner().refresh();
    let n = 40_000;
    let c = counts(&lb, n);
    assert_eq!(
        c.keys().copied().collect::<Vec<_>>(),
        vec![1000, 1001],
        "all local"
    );
    let heavy = c[&1001] as f64 / n as f64;
    assert!(
        (heavy - 0.9).abs() < 0.03,
        "weight-9 endpoint's share of zone a: {heavy:.3}, expected 0.9 ({c:?})"
    );
}

/// The cost of a zone pick, as documented after this attack (docs/BALANCERS.md, "Zone-aware
/// routing"; `ZoneAware`'s rustdoc, "Cost"). The attack showed the original claim ("about
/// `1 / s` random draws" for a zone holding a share `s`) false for a small zone: after
/// `REDRAWS` (32) missed draws the inner balancer counts the accepted endpoints (`O(N)`),
/// which at `s` = 0.5 % happens on most picks (0.995^32 ≈ 85 %): ~2 600 candidates looked at
/// per pick instead of 200. The docs now state the real bound: at most `2 N + 34` zone
/// checks per pick (1 first candidate, 32 redraws, a count of the N candidates, a walk to
/// the chosen one, ZoneAware's own check of the result), about `1 / s` only while
/// `(1 - s)^32` is small (a zone of a tenth of the endpoints or more). This asserts both:
/// the `O(N)` bound per pick in a 0.5 % zone, and about `1 / s` at 50 %.
/// The request's own avoid predicate is asked once per candidate the inner balancer looks at
/// (ZoneAware's avoid asks it first), so it counts them.
#[test]
fn a_pick_in_a_small_zone_is_about_one_over_share_draws() {
    fn looked_per_pick(list: &[(&str, u32)], picks: usize) -> (f64, usize) {
        let lb = ZoneAware::new(RoundRobin::new(zoned(list)), "a");
        assert_eq!(lb.local_share(), 1.0);
        let local = list.iter().filter(|(z, _)| *z == "a").count() as u16;
        let looked = AtomicUsize::new(0);
        let avoid = |_: &Endpoint<u16>| {
            looked.fetch_add(1, Ordering::Relaxed);
            false
        };
        let (mut total, mut max) = (0, 0);
        for _ in 0..picks {
            let p = lb.pick_with(&Request::new().avoid(&avoid)).unwrap();
            assert!(**p.endpoint() < 1000 + local, "stays in zone a");
            let n = looked.swap(0, Ordering::Relaxed);
            total += n;
            max = max.max(n);
        }
        (total as f64 / picks as f64, max)
    }
    let n = 2000;
    // s = 0.5 %: 10 endpoints of 2 000.
    let mut list = vec![("a", 1); 10];
    list.extend(std::iter::repeat(("b", 1)).take(n - 10));
    let (mean, max) = looked_per_pick(&list, 1000);
    assert!(
        max <= 2 * n + 34,
        "{max} candidates looked at in one pick: above the documented 2 N + 34 = {}",
        2 * n + 34
    );
    // (The mean, ~2 600 here, is far above 1 / s = 200: the docs no longer claim 1 / s
    // for such a zone.)
    let _ = mean;
    // s = 50 %: about 1 / s = 2 draws (plus the first candidate and ZoneAware's check).
    let mut list = vec![("a", 1); n / 2];
    list.extend(std::iter::repeat(("b", 1)).take(n / 2));
    let (mean, max) = looked_per_pick(&list, 1000);
    assert!(
        mean <= 2.0 * 2.0 + 2.0,
        "{mean:.1} candidates looked at per pick in a 50 % zone (about 1 / s = 2 documented)"
    );
    assert!(max <= 2 * n + 34, "{max}");
}

/// Callers in a zone without endpoints, and the local zone given no callers: the local
/// zone carries its (zero) callers, everything stays local; a caller spread whose only
/// other zone has no endpoints leaves the residual with zone b.
#[test]
fn callers_in_zones_without_endpoints() {
    let mut list = vec![("a", 1); 2];
    list.extend(std::iter::repeat(("b", 1)).take(8));
    let ep = zoned(&list);
    let lb = ZoneAware::new(RoundRobin::new(ep.clone()), "a")
        .callers([("a", 0.0), ("z", 5.0)])
        .unwrap();
    assert_eq!(lb.local_share(), 1.0);
    let lb = ZoneAware::new(RoundRobin::new(ep), "a")
        .callers([("a", 1.0), ("z", 1.0)])
        .unwrap();
    // e[a] = 0.2 < c[a] = 0.5: 40 % local, the rest to b (r[b] = 0.8).
    let shares = lb.zone_shares();
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert!(
        (shares[0].1 - 0.4).abs() < 1e-9 && shares[1].0 == "b",
        "{shares:?}"
    );
    let c = counts(&lb, 20_000);
    let local = c.range(..1002).map(|(_, n)| n).sum::<usize>() as f64 / 20_000.0;
    assert!((local - 0.4).abs() < 0.02, "{local}");
}

/// `min_endpoints` is a count of *healthy* endpoints, inclusive: 6 healthy (default) route
/// by zone, 5 do not; `min_endpoints(0)` acts as 1.
#[test]
fn min_endpoints_boundary() {
    use sd_core::Health;
    let make = |healthy: usize| {
        Arc::new(FixedEndpointer::new((0..8u16).map(move |i| {
            let z = if i % 2 == 0 { "a" } else { "b" };
            let h = if (i as usize) < healthy {
                Health::Passing
            } else {
                Health::Critical
            };
            (
                Instance::builder("10.0.0.1", 1000 + i)
                    .meta("zone", z)
                    .health(h)
                    .build(),
                1000 + i,
            )
        })))
    };
    // 6 of 8 passing (75 %: no panic): a zone preference.
    let lb = ZoneAware::new(RoundRobin::new(make(6)), "a");
    assert_eq!(lb.local_share(), 1.0);
    // 5 of 8 passing: below min_endpoints, no preference.
    let lb = ZoneAware::new(RoundRobin::new(make(5)), "a");
    assert_eq!(lb.local_share(), 0.0);
    assert!(lb.zone_shares().is_empty());
    let lb = ZoneAware::new(RoundRobin::new(make(5)), "a").min_endpoints(5);
    assert_eq!(lb.local_share(), 1.0);
    let lb = ZoneAware::new(RoundRobin::new(make(1)), "a").min_endpoints(0);
    // 1 of 8 passing is below 50 %: panic, all 8 count; zone a has 4.
    assert_eq!(lb.local_share(), 1.0);
    let c = counts(&lb, 2000);
    assert!(c.keys().all(|p| p % 2 == 0), "{c:?}");
}
