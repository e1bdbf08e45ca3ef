//! Zone-aware routing: all local while the local zone can take its callers, the residual
//! spilled in proportion to the other zones' spare capacity, health and ejection respected,
//! and (a property) when every zone's callers route this way each endpoint gets the same
//! load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sd_core::{FixedEndpointer, Health, Instance};
use sd_lb::{
    Balancer, Outlier, OutlierConfig, P2c, Random, Request, RoundRobin, Weighted, ZoneAware,
};

/// Endpoints in the given zones (`(zone, health)` each), whose values are their zone.
fn zoned(zones: &[(&'static str, Health)]) -> Arc<FixedEndpointer<&'static str>> {
    Arc::new(FixedEndpointer::new(zones.iter().enumerate().map(
        |(i, &(z, h))| {
            let inst = Instance::builder("10.0.0.1", 1000 + i as u16)
                .meta("zone", z)
                .health(h)
                .build();
            (inst, z)
        },
    )))
}

/// `n` passing endpoints in each zone of `counts`.
fn spread(counts: &[(&'static str, usize)]) -> Arc<FixedEndpointer<&'static str>> {
    let list: Vec<_> = counts
        .iter()
        .flat_map(|&(z, n)| std::iter::repeat((z, Health::Passing)).take(n))
        .collect();
    zoned(&list)
}

/// Share of `n` picks per zone.
fn shares<B: Balancer<&'static str>>(lb: &B, n: usize) -> BTreeMap<&'static str, f64> {
    let mut c = BTreeMap::new();
    for _ in 0..n {
        *c.entry(**lb.pick_with(&Request::new()).unwrap().endpoint())
            .or_insert(0.0) += 1.0 / n as f64;
    }
    c
}

fn near(got: &BTreeMap<&str, f64>, want: &[(&str, f64)]) {
    for &(z, w) in want {
        let g = got.get(z).copied().unwrap_or(0.0);
        assert!(
            (g - w).abs() < 0.015,
            "zone {z}: {g}, expected {w} ({got:?})"
        );
    }
}

#[test]
fn all_local_while_the_local_zone_can_take_its_callers() {
    let ep = spread(&[("a", 4), ("b", 4), ("c", 2)]);
    let all: Vec<(&str, Box<dyn Balancer<&'static str>>)> = vec![
        (
            "round robin",
            Box::new(ZoneAware::new(RoundRobin::new(ep.clone()), "c")),
        ),
        (
            "random",
            Box::new(ZoneAware::new(Random::new(ep.clone()), "c")),
        ),
        (
            "weighted",
            Box::new(ZoneAware::new(Weighted::new(ep.clone()), "c")),
        ),
        (
            "p2c",
            Box::new(ZoneAware::new(P2c::pending_requests(ep.clone()), "c")),
        ),
    ];
    for (name, lb) in all {
        // Callers spread like the endpoints: everything stays local.
        assert!((0..2000).all(|_| *lb.pick().unwrap() == "c"), "{name}");
    }
    // Callers listed: zone c holds 20 % of the endpoints and 20 % of the callers: all local.
    let lb = ZoneAware::new(RoundRobin::new(ep), "c")
        .callers([("a", 4.0), ("b", 4.0), ("c", 2.0)])
        .unwrap();
    assert_eq!(lb.local_share(), 1.0);
    near(&shares(&lb, 2000), &[("c", 1.0)]);
}

/// Zone a has 20 % of the endpoints and 50 % of the callers: 40 % of its requests stay
/// local; the rest goes to b and c in proportion to their spare capacity (15 % each: 30 %
/// of all requests each).
#[test]
fn the_residual_spills_in_proportion_to_spare_capacity() {
    let ep = spread(&[("a", 2), ("b", 4), ("c", 4)]);
    let callers = [("a", 50.0), ("b", 25.0), ("c", 25.0)];
    let lb = ZoneAware::new(RoundRobin::new(ep.clone()), "a")
        .callers(callers)
        .unwrap();
    assert!((lb.local_share() - 0.4).abs() < 1e-9);
    near(&shares(&lb, 40_000), &[("a", 0.4), ("b", 0.3), ("c", 0.3)]);
    let shares_b = lb.zone_shares();
    assert_eq!(shares_b.len(), 3, "{shares_b:?}");
    // Unequal spare capacity: b has 60 % of the endpoints and 25 % of the callers (35 %
    // spare), c 20 % and 15 % (5 % spare): the spill goes 7:1.
    let ep = spread(&[("a", 2), ("b", 6), ("c", 2)]);
    let lb = ZoneAware::new(P2c::pending_requests(ep), "a")
        .callers([("a", 60.0), ("b", 25.0), ("c", 15.0)])
        .unwrap();
    let stay = 0.2 / 0.6;
    near(
        &shares(&lb, 40_000),
        &[
            ("a", stay),
            ("b", (1.0 - stay) * 7.0 / 8.0),
            ("c", (1.0 - stay) / 8.0),
        ],
    );
}

/// Health counts: critical endpoints are not capacity. When too few pass overall (the inner
/// balancer's panic threshold), all count again.
#[test]
fn unhealthy_endpoints_are_not_capacity() {
    use Health::*;
    let ep = zoned(&[
        ("a", Passing),
        ("a", Critical),
        ("a", Critical),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
    ]);
    // 10 endpoints, 8 passing: zone a has 1 of 8 healthy (12.5 %) for half the callers.
    let lb = ZoneAware::new(RoundRobin::new(ep), "a")
        .callers([("a", 1.0), ("b", 1.0)])
        .unwrap();
    assert!(
        (lb.local_share() - 0.25).abs() < 1e-9,
        "{}",
        lb.local_share()
    );
    near(&shares(&lb, 40_000), &[("a", 0.25), ("b", 0.75)]);
}

/// No healthy endpoint in the local zone, or fewer endpoints than `min_endpoints`: no zone
/// preference.
#[test]
fn no_local_endpoint_or_a_small_set_means_no_preference() {
    use Health::*;
    let ep = zoned(&[
        ("a", Critical),
        ("b", Passing),
        ("b", Passing),
        ("b", Passing),
        ("c", Passing),
        ("c", Passing),
        ("c", Passing),
    ]);
    let lb = ZoneAware::new(RoundRobin::new(ep), "a");
    assert_eq!(lb.local_share(), 0.0);
    assert!(lb.zone_shares().is_empty());
    near(&shares(&lb, 6000), &[("a", 0.0), ("b", 0.5), ("c", 0.5)]);
    let ep = spread(&[("a", 1), ("b", 4)]);
    let small = ZoneAware::new(RoundRobin::new(ep.clone()), "a");
    assert_eq!(small.local_share(), 0.0, "5 endpoints, fewer than 6");
    near(&shares(&small, 5000), &[("a", 0.2), ("b", 0.8)]);
    let lb = ZoneAware::new(RoundRobin::new(ep), "a").min_endpoints(1);
    assert_eq!(lb.local_share(), 1.0);
}

/// Outlier ejection outside: ejected local endpoints are avoided inside the zone, and when
/// the whole local zone is ejected, requests spill instead of failing.
#[test]
fn with_outlier_outside_an_ejected_zone_spills() {
    let ep = spread(&[("a", 2), ("b", 4), ("c", 4)]);
    let lb = Outlier::new(
        ZoneAware::new(RoundRobin::new(ep), "a"),
        OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(3600),
            max_ejection: Duration::from_secs(3600),
            max_ejected_share: 0.5,
        },
    );
    near(&shares(&lb, 1000), &[("a", 1.0)]);
    // Both endpoints of zone a fail once.
    for _ in 0..2 {
        let p = lb.pick_with(&Request::new()).unwrap();
        assert_eq!(**p.endpoint(), "a");
        p.failure();
    }
    assert_eq!(lb.ejected_count(), 2);
    near(&shares(&lb, 8000), &[("a", 0.0), ("b", 0.5), ("c", 0.5)]);
}

#[test]
fn the_zone_key_is_configurable_and_a_missing_zone_is_zone_empty() {
    let ep = Arc::new(FixedEndpointer::new((0..8u16).map(|i| {
        let mut b = Instance::builder("10.0.0.1", 1000 + i);
        if i < 4 {
            b = b.meta("topology.kubernetes.io/zone", "eu-1a");
        }
        (b.build(), i)
    })));
    let lb = ZoneAware::new(RoundRobin::new(ep.clone()), "eu-1a")
        .zone_key("topology.kubernetes.io/zone");
    assert!((0..100).all(|_| *lb.pick().unwrap() < 4));
    // Under the default key no endpoint has a zone: all are in zone "".
    let lb = ZoneAware::new(RoundRobin::new(ep.clone()), "eu-1a");
    assert_eq!(lb.local_share(), 0.0);
    let lb = ZoneAware::new(RoundRobin::new(ep), "").zone_key("topology.kubernetes.io/zone");
    assert!((0..100).all(|_| *lb.pick().unwrap() >= 4));
}

#[test]
fn invalid_callers_are_refused() {
    let ep = spread(&[("a", 6)]);
    for bad in [
        vec![("a", -1.0)],
        vec![("a", f64::NAN)],
        vec![("a", 0.0)],
        vec![],
    ] {
        let err = ZoneAware::new(RoundRobin::new(ep.clone()), "a")
            .callers(bad)
            .unwrap_err();
        assert!(err.to_string().contains("zone callers"), "{err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Envoy's goal: when the callers of every zone route this way, every zone receives
    /// traffic in proportion to its healthy endpoints (so each endpoint gets the same load),
    /// whatever the spread of endpoints and callers.
    #[test]
    fn every_endpoint_gets_the_same_load_when_all_callers_route_this_way(
        endpoints in proptest::collection::vec(1usize..8, 2..5),
        callers in proptest::collection::vec(0u32..10, 2..5),
    ) {
        const NAMES: [&str; 4] = ["a", "b", "c", "d"];
        let zones = endpoints.len();
        let callers: Vec<f64> = (0..zones).map(|z| *callers.get(z).unwrap_or(&0) as f64).collect();
        prop_assume!(callers.iter().sum::<f64>() > 0.0);
        let counts: Vec<(&'static str, usize)> = (0..zones).map(|z| (NAMES[z], endpoints[z])).collect();
        let ep = spread(&counts);
        let total: usize = endpoints.iter().sum();
        let sum_callers: f64 = callers.iter().sum();
        let mut traffic = BTreeMap::<String, f64>::new();
        for (z, &c) in callers.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let lb = ZoneAware::new(RoundRobin::new(ep.clone()), NAMES[z])
                .min_endpoints(1)
                .callers((0..zones).map(|k| (NAMES[k], callers[k])))
                .unwrap();
            let shares = lb.zone_shares();
            prop_assert!(!shares.is_empty());
            let sum: f64 = shares.iter().map(|(_, s)| s).sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "{:?}", shares);
            for (name, s) in shares {
                *traffic.entry(name).or_insert(0.0) += c / sum_callers * s;
            }
        }
        for z in 0..zones {
            let got = traffic.get(NAMES[z]).copied().unwrap_or(0.0);
            let want = endpoints[z] as f64 / total as f64;
            prop_assert!((got - want).abs() < 1e-9, "zone {}: {} of the traffic, {} of the endpoints", NAMES[z], got, want);
        }
    }
}
