//! Zone-aware routing with spillover (Envoy's algorithm): prefer endpoints in the caller's
//! zone, and send to other zones only the share the local zone cannot take.

use std::collections::BTreeMap;
use std::sync::Arc;

use sd_core::{Endpoint, Snapshot};

use crate::balancer::{
    is_passing, splitmix, thread_random, unit, value_ptr as ptr, Balancer, Picked, Request,
};
use crate::derived::PerSnapshot;
use crate::error::{InvalidOption, LbError};

/// Wraps any [`Balancer`] with zone-aware routing: requests go to endpoints in the caller's
/// zone while that zone has enough healthy endpoints for its callers, and the rest spill to
/// the other zones in proportion to their spare capacity. Envoy's zone-aware routing,
/// simplified to what a client library can know.
///
/// **Inputs.** The caller's zone; the metadata key that holds an endpoint's zone
/// ([`zone_key`](ZoneAware::zone_key), default `"zone"`; an endpoint without it is in zone
/// `""`); optionally how the callers are spread over the zones
/// ([`callers`](ZoneAware::callers): a count or share per zone, e.g. from discovering your
/// own service).
///
/// **The algorithm** (per snapshot, off the pick path). Let `e[z]` be zone `z`'s share of
/// the healthy endpoints (passing their health checks; all of them when the inner
/// balancer is in [panic mode](crate::PanicThreshold)) and `c[z]` its share of the callers.
///
/// 1. Fewer than [`min_endpoints`](ZoneAware::min_endpoints) healthy endpoints (default 6),
///    or none in the local zone: no zone preference (the inner balancer picks among all).
/// 2. `e[local] ≥ c[local]`: the local zone can take its callers' traffic: **every** request
///    stays local.
/// 3. Otherwise a request stays local with probability `e[local] / c[local]` (the local
///    endpoints then get exactly their fair share of all traffic); the rest spills to the
///    zones that have capacity to spare, `r[z] = e[z] − c[z] > 0`, each in proportion to
///    `r[z]`.
///
/// Without [`callers`](ZoneAware::callers) the callers are taken to be spread like the
/// endpoints, so step 2 always applies: every request stays local while the local zone has
/// a healthy endpoint (and the set has `min_endpoints`). Give the caller spread to protect
/// a zone that has few endpoints and many callers.
///
/// **How it composes.** Inside the chosen zone the inner balancer picks as usual (round
/// robin, weighted, random, P2C; their health rule, weights and load): the zone is passed as
/// endpoints to avoid (the others), so a request's own avoided endpoints are honoured too.
/// When the chosen zone has nothing the request accepts, the pick is made again without the
/// zone preference. Put [`Outlier`](crate::Outlier) **outside** (`Outlier::new(ZoneAware::new(..))`):
/// ejected endpoints are then avoided within the zone, and a zone whose endpoints are all
/// ejected spills. [`SlowStart`](crate::SlowStart) composes in either order. Over
/// [`ConsistentHash`](crate::ConsistentHash) it splits keys by zone first, which breaks
/// the key-to-endpoint mapping across zones: leave it out there.
///
/// **Cost.** A pick adds one `arc-swap` load and the inner balancer's snapshot; when the
/// zones differ, one random draw, and for each candidate the inner balancer checks a binary
/// search of the endpoint's zone (`O(log N)`). The inner balancer finds an endpoint of a
/// zone holding a share `s` of the candidates in about `1 / s` random redraws, but gives up
/// after 32 and then scans all N candidates (`O(N)`: at most `2 N + 34` zone checks per
/// pick); that scan is rare for a zone of a tenth or more (`0.9^32` ≈ 3 % of its picks) and
/// the usual case for a small one (85 % of the picks at `s` = 0.5 %). No allocation,
/// except on the first pick after an update (zones are derived: one metadata lookup per
/// endpoint).
///
/// ```
/// use std::sync::Arc;
/// use sd_core::{FixedEndpointer, Instance};
/// use sd_lb::{Balancer, RoundRobin, ZoneAware};
/// let zones = ["a", "a", "a", "b", "b", "b", "b", "b", "b", "b"];
/// let ep = Arc::new(FixedEndpointer::new(zones.iter().enumerate().map(|(i, z)| {
///     (Instance::builder("10.0.0.1", 1000 + i as u16).meta("zone", *z).build(), *z)
/// })));
/// // Callers spread like the endpoints: everything stays in zone a.
/// let lb = ZoneAware::new(RoundRobin::new(ep.clone()), "a");
/// assert!((0..100).all(|_| *lb.pick().unwrap() == "a"));
/// // Half of the callers are in zone a, which has 30 % of the endpoints: 60 % stay local
/// // (0.3 / 0.5), 40 % spill to zone b.
/// let lb = ZoneAware::new(RoundRobin::new(ep), "a").callers([("a", 50.0), ("b", 50.0)]).unwrap();
/// assert!((lb.local_share() - 0.6).abs() < 1e-9);
/// ```
pub struct ZoneAware<B, E: 'static> {
    inner: B,
    local: String,
    key: String,
    min_endpoints: usize,
    /// Callers' share per zone (sums to 1); empty: spread like the endpoints.
    callers: BTreeMap<String, f64>,
    routes: PerSnapshot<Routes, (), E>,
}

/// The routing of one snapshot.
#[derive(Debug, Default)]
struct Routes {
    /// Value pointer and zone number of each endpoint, sorted by pointer.
    zone_of: Box<[(usize, u32)]>,
    /// The local zone's number (`u32::MAX`: none of the endpoints is in it).
    local: u32,
    /// Probability that a request stays local (1: all; 0 with `spill` empty: no preference).
    stay: f64,
    /// Zones that take the spill: (zone number, cumulative share up to 1).
    spill: Box<[(u32, f64)]>,
    /// The zone names, by number.
    names: Box<[String]>,
}

impl Routes {
    /// The zone number of the endpoint whose value is at `p`.
    #[inline]
    fn zone(&self, p: usize) -> Option<u32> {
        self.zone_of
            .binary_search_by_key(&p, |&(q, _)| q)
            .ok()
            .map(|i| self.zone_of[i].1)
    }

    /// The zone a request should go to (`None`: any).
    #[inline]
    fn choose(&self) -> Option<u32> {
        if self.stay >= 1.0 {
            return Some(self.local);
        }
        if self.spill.is_empty() {
            return None;
        }
        let r = thread_random();
        if unit(r) < self.stay {
            return Some(self.local);
        }
        let x = unit(splitmix(r));
        self.spill
            .iter()
            .find(|&&(_, cum)| x < cum)
            .or(self.spill.last())
            .map(|&(z, _)| z)
    }
}

impl<B: Balancer<E>, E: Send + Sync + 'static> ZoneAware<B, E> {
    /// Zone-aware routing over `inner` for a caller in zone `local` (see [`ZoneAware`]).
    pub fn new(inner: B, local: impl Into<String>) -> Self {
        ZoneAware {
            inner,
            local: local.into(),
            key: "zone".to_owned(),
            min_endpoints: 6,
            callers: BTreeMap::new(),
            routes: PerSnapshot::new(Routes::default(), ()),
        }
    }

    /// The instance metadata key that holds an endpoint's zone (default `"zone"`; e.g.
    /// `"topology.kubernetes.io/zone"`).
    pub fn zone_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self.routes = PerSnapshot::new(Routes::default(), ());
        self
    }

    /// Below this many healthy endpoints, no zone preference (default 6, as Envoy's
    /// `min_cluster_size`): a small set split by zone leaves too few endpoints per zone.
    pub fn min_endpoints(mut self, n: usize) -> Self {
        self.min_endpoints = n;
        self.routes = PerSnapshot::new(Routes::default(), ());
        self
    }

    /// How the callers are spread over the zones: a count (or any non-negative weight) per
    /// zone, normalised here. Zones not listed have no callers. An error when a weight is
    /// negative or not finite, or when they add up to 0.
    pub fn callers<Z: Into<String>>(
        mut self,
        callers: impl IntoIterator<Item = (Z, f64)>,
    ) -> Result<Self, InvalidOption> {
        let mut spread = BTreeMap::new();
        for (z, w) in callers {
            if !(w.is_finite() && w >= 0.0) {
                return Err(InvalidOption::new(
                    "zone callers",
                    format!("{w} given; each zone's callers must be a finite number ≥ 0"),
                ));
            }
            *spread.entry(z.into()).or_insert(0.0) += w;
        }
        let total: f64 = spread.values().sum();
        if total <= 0.0 {
            return Err(InvalidOption::new(
                "zone callers",
                "they add up to 0; give at least one zone with callers",
            ));
        }
        spread.values_mut().for_each(|w| *w /= total);
        self.callers = spread;
        self.routes = PerSnapshot::new(Routes::default(), ());
        Ok(self)
    }

    /// The inner balancer.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The caller's zone.
    pub fn local_zone(&self) -> &str {
        &self.local
    }

    /// The share of requests that stay in the local zone for the current snapshot (1: all;
    /// 0: no zone preference, or no local endpoint).
    pub fn local_share(&self) -> f64 {
        let routes = self.current();
        if routes.value.stay == 0.0 && routes.value.spill.is_empty() {
            return 0.0;
        }
        routes.value.stay
    }

    /// Where requests go for the current snapshot: each zone's share of the requests
    /// (zones that get none are left out). Empty when there is no zone preference (the
    /// inner balancer picks among all endpoints).
    pub fn zone_shares(&self) -> Vec<(String, f64)> {
        let routes = self.current();
        let r = &routes.value;
        if r.stay == 0.0 && r.spill.is_empty() {
            return Vec::new();
        }
        let mut shares = vec![(r.names[r.local as usize].clone(), r.stay)];
        let mut prev = 0.0;
        for &(z, cum) in r.spill.iter() {
            shares.push((r.names[z as usize].clone(), (1.0 - r.stay) * (cum - prev)));
            prev = cum;
        }
        shares
    }

    #[inline]
    fn current(&self) -> arc_swap::Guard<Arc<crate::derived::Derived<Routes, E>>> {
        self.routes
            .get(self.inner.snapshot(), |_, list| self.derive(list))
    }

    /// The routing of `list` (see [`ZoneAware`]).
    fn derive(&self, list: &[Endpoint<E>]) -> Routes {
        // Zone numbers in order of first appearance; the local zone is looked up by name.
        let mut names: Vec<&str> = Vec::new();
        let mut zone_of: Vec<(usize, u32)> = Vec::with_capacity(list.len());
        for e in list {
            let z = e.instance().meta().get(&self.key).unwrap_or("");
            let n = match names.iter().position(|&x| x == z) {
                Some(n) => n,
                None => {
                    names.push(z);
                    names.len() - 1
                }
            };
            zone_of.push((ptr(e), n as u32));
        }
        zone_of.sort_unstable();
        let local = names
            .iter()
            .position(|&x| x == self.local)
            .map_or(u32::MAX, |n| n as u32);
        let mut routes = Routes {
            zone_of: zone_of.into_boxed_slice(),
            local,
            stay: 0.0,
            spill: Box::new([]),
            names: names.iter().map(|&n| n.to_owned()).collect(),
        };
        // Healthy endpoints per zone (all of them when the inner balancer panics).
        let passing = list.iter().filter(|e| is_passing(e)).count();
        let all = self.inner.panic_threshold().panics(passing, list.len());
        let mut healthy = vec![0usize; names.len()];
        for e in list.iter().filter(|e| all || is_passing(e)) {
            if let Some(z) = routes.zone(ptr(e)) {
                healthy[z as usize] += 1;
            }
        }
        let total: usize = healthy.iter().sum();
        if total < self.min_endpoints.max(1) || local == u32::MAX || healthy[local as usize] == 0 {
            return routes;
        }
        let e = |z: usize| healthy[z] as f64 / total as f64;
        let c = |z: usize| match self.callers.is_empty() {
            true => e(z),
            false => self.callers.get(names[z]).copied().unwrap_or(0.0),
        };
        let l = local as usize;
        if e(l) >= c(l) {
            routes.stay = 1.0;
            return routes;
        }
        routes.stay = e(l) / c(l);
        let residual: Vec<(u32, f64)> = (0..names.len())
            .filter(|&z| z != l)
            .map(|z| (z as u32, e(z) - c(z)))
            .filter(|&(_, r)| r > 0.0)
            .collect();
        let sum: f64 = residual.iter().map(|&(_, r)| r).sum();
        if sum <= 0.0 {
            // No other zone has capacity to spare (callers listed in zones without
            // endpoints): no zone preference.
            routes.stay = 0.0;
            return routes;
        }
        let mut cum = 0.0;
        routes.spill = residual
            .into_iter()
            .map(|(z, r)| {
                cum += r / sum;
                (z, cum)
            })
            .collect();
        routes
    }
}

impl<B, E> Balancer<E> for ZoneAware<B, E>
where
    B: Balancer<E>,
    E: Send + Sync + 'static,
{
    fn pick_with(&self, request: &Request<'_, E>) -> Result<Picked<E>, LbError> {
        let routes = self.current();
        let routes = &routes.value;
        let Some(zone) = routes.choose() else {
            return self.inner.pick_with(request);
        };
        let avoid = |e: &Endpoint<E>| request.avoids(e) || routes.zone(ptr(e)) != Some(zone);
        let mut inner = Request::new().avoid(&avoid);
        if let Some(k) = request.key() {
            inner = inner.with_key(k);
        }
        let picked = self.inner.pick_with(&inner)?;
        if avoid(picked.endpoint()) {
            // Nothing in the zone that the request accepts: no zone preference.
            drop(picked.into_endpoint());
            return self.inner.pick_with(request);
        }
        Ok(picked)
    }

    fn snapshot(&self) -> Snapshot<E> {
        self.inner.snapshot()
    }

    fn panic_threshold(&self) -> crate::PanicThreshold {
        self.inner.panic_threshold()
    }
}

impl<B: std::fmt::Debug, E: 'static> std::fmt::Debug for ZoneAware<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneAware")
            .field("inner", &self.inner)
            .field("local", &self.local)
            .field("key", &self.key)
            .field("min_endpoints", &self.min_endpoints)
            .field("callers", &self.callers)
            .finish()
    }
}
