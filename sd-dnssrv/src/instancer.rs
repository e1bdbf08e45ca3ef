//! The instancer: SRV lookups paced by the records' TTL, run on sd-core's shared loop.
//!
//! [`SrvSource`] is one [`Source`]: each round is one SRV query (plus, with
//! `resolve_targets`, one address lookup per distinct target). [`DnsInstancer`] runs it on
//! [`WatchedInstancer`], which runs the first round before returning (DNS-2), publishes
//! errors at once and backs off after them.
//!
//! | answer | published | next round |
//! |---|---|---|
//! | SRV records | the usable records of the lowest priority (or all, with `all_priorities`) | after the smallest TTL, clamped to `[min_refresh, max_refresh]`, with ±10 % jitter inside that range |
//! | NXDOMAIN, or no SRV records | the **empty** set | after the negative TTL, clamped the same way |
//! | SERVFAIL, REFUSED, timeout, socket error | an error event; subscribers keep the last good set | backoff from 10 ms, capped at `max_refresh` |
//!
//! go-kit re-resolved on a fixed ticker and ignored TTLs (DNS-4), and one record with port
//! 0 failed the whole resolution (DNS-3, go-kit issue #892). Here a record with port 0, the
//! target `.` (RFC 2782: "decidedly not available"), or (with `resolve_targets`) a target
//! that does not resolve is skipped alone, with the reason logged once. The lowest priority
//! is chosen among the records left, so a group whose every record is bad (with
//! `resolve_targets`: whose targets all fail to resolve) never hides a good backup group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use hickory_proto::rr::Name;
use sd_core::backoff::jittered;
use sd_core::{
    Backoff, Event, Instance, Instancer, LoopConfig, Result, ServiceQuery, Source, Step,
    Subscription, WatchedInstancer,
};
use tokio::time::Instant;

use crate::client::{fqdn, Addresses, Client, SrvRecord, BACKEND};

/// Metadata key holding the SRV target host name (without the trailing dot).
pub const META_TARGET: &str = "dns.target";

/// Metadata key holding the SRV priority.
pub const META_PRIORITY: &str = "dns.priority";

/// Default lower bound of the refresh interval.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);

/// Default upper bound of the refresh interval.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(30);

/// Jitter of the refresh interval (±10 %), kept inside `[min_refresh, max_refresh]`.
pub const REFRESH_JITTER: f64 = 0.1;

/// How many target address lookups run at once with `resolve_targets`.
const RESOLVE_CONCURRENCY: usize = 16;

/// How an instancer reads and paces SRV answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOptions {
    /// Never re-read sooner than this, whatever the TTL (a TTL of 0 is common).
    pub min_refresh: Duration,
    /// Never re-read later than this, whatever the TTL: the propagation bound.
    pub max_refresh: Duration,
    /// Resolve each target to its addresses; the instance address is then `ip:port`, and the
    /// target name stays in [`META_TARGET`].
    pub resolve_targets: bool,
    /// Publish every priority group, not only the lowest (RFC 2782 clients use the lowest).
    pub all_priorities: bool,
}

impl Default for LookupOptions {
    fn default() -> Self {
        LookupOptions {
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            resolve_targets: false,
            all_priorities: false,
        }
    }
}

impl LookupOptions {
    /// The wait before the next round for an answer with `ttl`: the TTL clamped to
    /// `[min_refresh, max_refresh]`, jittered by ±10 %, and clamped again so the bounds hold.
    pub fn refresh(&self, ttl: Option<Duration>) -> Duration {
        let base = ttl
            .unwrap_or(self.min_refresh)
            .clamp(self.min_refresh, self.max_refresh);
        jittered(base, REFRESH_JITTER).clamp(self.min_refresh, self.max_refresh)
    }
}

/// The name looked up for `service`.
///
/// A name whose first label starts with `_` is a full SRV name (`_http._tcp.example.com`)
/// and is used as given (fully qualified; the zone is not appended). Any other service name
/// must be one DNS label and becomes `_<service>._<proto>.<zone>`.
///
/// ```
/// use sd_dnssrv::instancer::srv_name;
/// let zone = sd_dnssrv::client::fqdn("sd.test").unwrap();
/// assert_eq!(srv_name("web", "tcp", Some(&zone)).unwrap().to_ascii(), "_web._tcp.sd.test.");
/// assert_eq!(srv_name("_ldap._udp.example.org", "tcp", None).unwrap().to_ascii(), "_ldap._udp.example.org.");
/// assert!(srv_name("web", "tcp", None).unwrap_err().to_string().contains("zone"));
/// ```
pub fn srv_name(service: &str, proto: &str, zone: Option<&Name>) -> Result<Name> {
    let service = service.trim();
    if service.is_empty() {
        return Err(sd_core::Error::config("dnssrv: empty service name"));
    }
    if service.starts_with('_') {
        return fqdn(service).map_err(|e| sd_core::Error::config(format!("dnssrv: {e}")));
    }
    if service.contains('.') {
        return Err(sd_core::Error::config(format!(
            "dnssrv: service name {service:?} must be one DNS label (looked up as \
             _<service>._{proto}.<zone>) or a full SRV name starting with '_'"
        )));
    }
    let zone = zone.ok_or_else(|| {
        sd_core::Error::config(format!(
            "dnssrv: service {service:?} needs a zone to build _{service}._{proto}.<zone>: \
             add ?zone=example.com to the URL, or use a full SRV name"
        ))
    })?;
    let name = fqdn(&format!("_{service}._{proto}"))
        .and_then(|n| {
            n.append_domain(zone)
                .map_err(|e| format!("_{service}._{proto}.{zone}: {e}"))
        })
        .map_err(|e| sd_core::Error::config(format!("dnssrv: {e}")))?;
    Ok(name)
}

/// Why a record was left out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// The record, as `priority weight port target`.
    pub record: String,
    /// Why.
    pub reason: String,
}

fn describe(r: &SrvRecord) -> String {
    format!("{} {} {} {}.", r.priority, r.weight, r.port, r.target)
}

/// Drops unusable records (port 0, target `.`) with their reasons, then keeps the lowest
/// priority group unless `all_priorities`. A bad record never hides a good group.
pub fn select(records: &[SrvRecord], all_priorities: bool) -> (Vec<SrvRecord>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut usable: Vec<SrvRecord> = Vec::with_capacity(records.len());
    for r in records {
        let reason = if r.port == 0 {
            Some("port 0 is not usable")
        } else if r.target.is_empty() {
            Some("target '.' means the service is decidedly not available here (RFC 2782)")
        } else if sd_core::instance::usable_host(&r.target).as_deref() != Ok(r.target.as_str()) {
            Some("the target is not a usable host name")
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                record: describe(r),
                reason: reason.to_string(),
            }),
            None => usable.push(r.clone()),
        }
    }
    if !all_priorities {
        if let Some(lowest) = usable.iter().map(|r| r.priority).min() {
            usable.retain(|r| r.priority == lowest);
        }
    }
    (usable, skipped)
}

pub(crate) fn instance(r: &SrvRecord, host: &str) -> Instance {
    Instance::builder(host, r.port)
        .id(r.target.clone())
        .weight(u32::from(r.weight))
        .meta(META_TARGET, r.target.clone())
        .meta(META_PRIORITY, r.priority.to_string())
        .build()
}

/// One SRV name read on the shared loop.
pub struct SrvSource {
    client: Client,
    name: Name,
    query: ServiceQuery,
    options: LookupOptions,
    next: Option<Duration>,
    /// Resolved target addresses and when they expire (`resolve_targets`).
    addresses: BTreeMap<String, (Vec<IpAddr>, Instant)>,
    /// The skip reasons logged last round, so a lasting bad record is warned about once.
    logged: BTreeSet<Skipped>,
}

impl fmt::Debug for SrvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrvSource")
            .field("name", &self.name.to_ascii())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SrvSource {
    /// A source reading `name` (see [`srv_name`]), keeping what matches `query`.
    pub fn new(client: Client, name: Name, query: ServiceQuery, options: LookupOptions) -> Self {
        SrvSource {
            client,
            name,
            query,
            options,
            next: None,
            addresses: BTreeMap::new(),
            logged: BTreeSet::new(),
        }
    }

    async fn round(&mut self) -> Result<(Vec<Instance>, Option<Duration>)> {
        let answer = self.client.lookup_srv(&self.name).await?;
        let mut ttl = answer.ttl;
        // With resolve_targets the priority group is chosen among the records whose target
        // resolved, so an unresolvable lowest group does not hide a good backup group.
        let (usable, mut skipped) = select(
            &answer.records,
            self.options.all_priorities || self.options.resolve_targets,
        );
        let mut out = Vec::with_capacity(usable.len());
        if self.options.resolve_targets {
            let targets: BTreeSet<String> = usable.iter().map(|r| r.target.clone()).collect();
            // Addresses are kept for their TTL: only expired or new targets are looked up
            // (with TTL 0, every round), the rest come from the last lookups.
            let now = Instant::now();
            self.addresses
                .retain(|t, (_, expires)| targets.contains(t) && *expires > now);
            let missing: Vec<String> = targets
                .iter()
                .filter(|t| !self.addresses.contains_key(*t))
                .cloned()
                .collect();
            let client = self.client.clone();
            let resolved: Vec<(String, Result<Addresses>)> = stream::iter(missing)
                .map(move |t: String| {
                    let client = client.clone();
                    async move {
                        let found = client.lookup_ips(&t).await;
                        (t, found)
                    }
                })
                .buffer_unordered(RESOLVE_CONCURRENCY)
                .collect()
                .await;
            let mut unresolved = BTreeMap::new();
            for (target, result) in resolved {
                // A failing nameserver fails the round (last good set kept); a target that
                // does not exist only skips its records.
                match result? {
                    Addresses::Found(ips, t) => {
                        self.addresses.insert(target, (ips, now + t));
                    }
                    Addresses::None(reason) => {
                        unresolved.insert(target, reason);
                    }
                }
            }
            let lowest = usable
                .iter()
                .filter(|r| self.addresses.contains_key(&r.target))
                .map(|r| r.priority)
                .min();
            for r in &usable {
                if let Some((ips, expires)) = self.addresses.get(&r.target) {
                    if !self.options.all_priorities && Some(r.priority) != lowest {
                        continue; // a backup group, not in use
                    }
                    let left = expires.saturating_duration_since(now);
                    ttl = Some(ttl.map_or(left, |x| x.min(left)));
                    out.extend(ips.iter().map(|ip| instance(r, &ip.to_string())));
                } else if let Some(reason) = unresolved.get(&r.target) {
                    skipped.push(Skipped {
                        record: describe(r),
                        reason: format!("target does not resolve: {reason}"),
                    });
                }
            }
        } else {
            out.extend(usable.iter().map(|r| instance(r, &r.target)));
        }
        out.retain(|i| self.query.matches(i));
        self.log_skipped(skipped);
        Ok((out, ttl))
    }

    fn log_skipped(&mut self, skipped: Vec<Skipped>) {
        let now: BTreeSet<Skipped> = skipped.into_iter().collect();
        for s in now.difference(&self.logged) {
            tracing::warn!(backend = BACKEND, name = %self.name, record = %s.record,
                reason = %s.reason, "SRV record skipped");
        }
        self.logged = now;
    }
}

#[async_trait]
impl Source for SrvSource {
    async fn next_step(&mut self) -> Step {
        match self.round().await {
            Ok((instances, ttl)) => {
                self.next = Some(self.options.refresh(ttl));
                Step::Publish(instances)
            }
            Err(e) => {
                self.next = None;
                Step::Fail(e)
            }
        }
    }

    fn refresh_after(&self) -> Option<Duration> {
        self.next
    }
}

/// A DNS SRV instancer: a [`SrvSource`] on the shared watch loop.
pub struct DnsInstancer {
    inner: WatchedInstancer,
    name: Name,
}

impl fmt::Debug for DnsInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsInstancer")
            .field("name", &self.name.to_ascii())
            .finish_non_exhaustive()
    }
}

impl DnsInstancer {
    /// Looks `name` up once, publishes the result, and starts refreshing. Failures back off
    /// from 10 ms up to `options.max_refresh`.
    pub async fn start(
        client: Client,
        name: Name,
        query: ServiceQuery,
        options: LookupOptions,
    ) -> Self {
        let backoff = Backoff::new(Backoff::GOKIT_INITIAL, options.max_refresh);
        let config = LoopConfig::new(BACKEND, name.to_ascii())
            .service(query.service.clone())
            .backoff(backoff);
        let source = SrvSource::new(client, name.clone(), query, options);
        DnsInstancer {
            inner: WatchedInstancer::start(source, config).await,
            name,
        }
    }

    /// The SRV name this instancer reads.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> Option<Event> {
        self.inner.state()
    }
}

#[async_trait]
impl Instancer for DnsInstancer {
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    async fn stop(&self) {
        self.inner.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
            ttl: Duration::from_secs(5),
        }
    }

    #[test]
    fn lowest_priority_group_and_bad_records_skipped_alone() {
        let records = [
            rec(10, 60, 8080, "a.example"),
            rec(10, 40, 0, "b.example"),
            rec(5, 1, 0, "c.example"),
            rec(20, 1, 9000, "d.example"),
            rec(1, 1, 80, ""),
        ];
        let (usable, skipped) = select(&records, false);
        assert_eq!(usable, [rec(10, 60, 8080, "a.example")]);
        assert_eq!(skipped.len(), 3);
        assert!(skipped[0].reason.contains("port 0") && skipped[0].record == "10 40 0 b.example.");
        assert!(skipped[2].reason.contains("not available"));
        let (usable, _) = select(&records, true);
        assert_eq!(
            usable,
            [
                rec(10, 60, 8080, "a.example"),
                rec(20, 1, 9000, "d.example")
            ]
        );
        assert_eq!(select(&[], false), (vec![], vec![]));
    }

    /// The host rule fuzzing established for every decoder (`sd_core::instance::usable_host`):
    /// a target that is not a host name skips its record alone.
    #[test]
    fn targets_that_are_not_host_names_are_skipped() {
        let records = [
            rec(1, 1, 80, "a b.example"),
            rec(1, 1, 80, "0::1"),
            rec(1, 1, 80, "a.example"),
        ];
        let (usable, skipped) = select(&records, false);
        assert_eq!(usable, [rec(1, 1, 80, "a.example")]);
        assert_eq!(skipped.len(), 2);
        assert!(skipped
            .iter()
            .all(|s| s.reason.contains("not a usable host")));
    }

    #[test]
    fn instances_carry_weight_priority_and_target() {
        let i = instance(&rec(10, 60, 8080, "a.example"), "127.0.0.1");
        assert_eq!(i.addr(), "127.0.0.1:8080");
        assert_eq!(i.weight(), 60);
        assert_eq!(i.id(), "a.example");
        assert_eq!(i.meta().get(META_TARGET).unwrap(), "a.example");
        assert_eq!(i.meta().get(META_PRIORITY).unwrap(), "10");
        let i = instance(&rec(1, 0, 80, "a.example"), "a.example");
        assert_eq!((i.addr(), i.weight()), ("a.example:80", 0));
    }

    #[test]
    fn refresh_is_the_ttl_clamped_with_jitter_inside_the_bounds() {
        let o = LookupOptions {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(10),
            ..LookupOptions::default()
        };
        for _ in 0..200 {
            let d = o.refresh(Some(Duration::from_secs(5)));
            assert!(
                d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500),
                "{d:?}"
            );
            let d = o.refresh(Some(Duration::from_secs(300)));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(10),
                "{d:?}"
            );
            let d = o.refresh(Some(Duration::ZERO));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            let d = o.refresh(None);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn naming_rule() {
        let zone = fqdn("sd.test").unwrap();
        assert_eq!(
            srv_name("web", "tcp", Some(&zone)).unwrap().to_ascii(),
            "_web._tcp.sd.test."
        );
        assert_eq!(
            srv_name("web", "udp", Some(&zone)).unwrap().to_ascii(),
            "_web._udp.sd.test."
        );
        assert_eq!(
            srv_name("_x._tcp.other.org.", "tcp", Some(&zone))
                .unwrap()
                .to_ascii(),
            "_x._tcp.other.org."
        );
        for (bad, needle) in [
            ("", "empty service name"),
            ("web.prod", "one DNS label"),
            ("_a..b", "bad DNS name"),
        ] {
            let err = srv_name(bad, "tcp", Some(&zone)).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
