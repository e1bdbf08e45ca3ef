//! The instancer: blocking queries on `/v1/health/service/<name>`, run on the shared loop.
//!
//! [`HealthSource`] is one [`Source`]: each round is one health query, blocking on the
//! last index. [`ConsulInstancer`] runs it on [`WatchedInstancer`], which does the first
//! round before returning (CONSUL-1), publishes errors at once, backs off from 10 ms to
//! 1 min with jitter (CONSUL-7) and cancels the request in flight on `stop` (fixes CONSUL-9).
//!
//! What a round does with the answer (CONSUL-6, with CONSUL-8 fixed):
//!
//! | answer | step | next query |
//! |---|---|---|
//! | entries with index `i > 0`, `i >= last` | publish the set | blocks on `i`; no sooner than [`UNCHANGED_INDEX_PACE`] after this one was sent if `i == last` or the set is the one last published |
//! | index `0` | skip (nothing published), back off | non-blocking (index reset to 0), paced |
//! | index `< last` | none yet: the round goes on | non-blocking (index reset to 0), paced, in the same round |
//! | an error (transport, status, malformed body) | publish the error, back off | **non-blocking** (index 0), so recovery is published at once |
//!
//! go-kit kept the old index after an error, so after the agent came back the next query
//! blocked on it and the error state lasted until something changed or the wait ended
//! (up to 5 minutes, CONSUL-8).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::{
    Backoff, Event, Health, Instance, InstanceReuse, Instancer, LoopConfig, ServiceQuery, Source,
    Step, Subscription, WatchedInstancer,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::client::{Client, HealthAnswer, BACKEND};

/// The least time between the start of a query whose answer changed nothing and the start
/// of the next one (or the `wait`, when shorter).
///
/// Consul's guidance for blocking queries: an early return that changes nothing (the same
/// index, a new index with the same instances, or an index that went backwards) is a
/// spurious wake-up or an agent or proxy that does not block, and the client must
/// rate-limit such loops. Without this, such an agent was polled as fast as the round trip
/// allows, forever. An answer that changes the published set is never delayed: the next
/// query goes out at once. An answer that took longer than the pace is not delayed either
/// (the pace counts from when the query was sent).
pub const UNCHANGED_INDEX_PACE: Duration = Duration::from_secs(1);

/// Metadata key holding the Consul node name of an instance.
pub const META_NODE: &str = "consul.node";

/// Metadata key holding the datacenter of an instance.
///
/// Consul restricts service `Meta` keys to `[A-Za-z0-9_-]`, so the dotted keys sdkit adds
/// can never collide with a service's own metadata.
pub const META_DATACENTER: &str = "consul.datacenter";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryJson {
    node: Option<NodeJson>,
    service: Option<ServiceJson>,
    #[serde(default)]
    checks: Option<Vec<CheckJson>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct NodeJson {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<WeightsJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WeightsJson {
    #[serde(default = "one")]
    passing: i64,
    #[serde(default = "one")]
    warning: i64,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson {
    #[serde(default)]
    status: String,
}

/// Consul's aggregated status over every check of an entry (node checks included, as the
/// agent's `?passing` filter does): any `critical` or `maintenance` makes it
/// [`Health::Critical`], else any unrecognised status [`Health::Unknown`], else any
/// `warning` [`Health::Warning`], else (including no checks at all) [`Health::Passing`].
pub fn aggregate_health<'a>(statuses: impl IntoIterator<Item = &'a str>) -> Health {
    let (mut critical, mut unknown, mut warning) = (false, false, false);
    for s in statuses {
        match s {
            "passing" => {}
            "warning" => warning = true,
            "critical" | "maintenance" => critical = true,
            _ => unknown = true,
        }
    }
    if critical {
        Health::Critical
    } else if unknown {
        Health::Unknown
    } else if warning {
        Health::Warning
    } else {
        Health::Passing
    }
}

fn clamp_weight(w: i64) -> u32 {
    u32::try_from(w.max(0)).unwrap_or(u32::MAX)
}

/// Converts one entry of a `/v1/health/service` answer into an [`Instance`].
///
/// - address: the service address, else the node address (CONSUL-4); IPv6 is bracketed in
///   [`Instance::addr`];
/// - id: the service ID; tags and `Meta` as given, plus [`META_NODE`] and
///   [`META_DATACENTER`];
/// - health: [`aggregate_health`] over the entry's checks;
/// - weight: `Weights.Warning` when warning, else `Weights.Passing` (both default to 1).
///   The sdkit registrar sends both as the instance's weight, so the weight reads back as
///   registered whatever the health; the health itself is [`Instance::health`], which
///   balancers use to prefer passing instances.
///
/// The entry is decoded straight from its JSON text into typed structs (no generic JSON
/// tree); fields sdkit does not use are skipped unread.
///
/// Fails, with the reason, when the entry has no usable address or port.
pub fn entry_to_instance(entry: &RawValue) -> Result<Instance, String> {
    let e: EntryJson = serde_json::from_str(entry.get())
        .map_err(|err| format!("unexpected entry shape: {err}"))?;
    let svc = e.service.ok_or("entry has no Service")?;
    let node = e.node.unwrap_or_default();
    let host = if svc.address.trim().is_empty() {
        node.address.trim()
    } else {
        svc.address.trim()
    };
    if host.is_empty() {
        return Err(format!(
            "service {:?} has neither a service nor a node address",
            svc.id
        ));
    }
    let host =
        sd_core::instance::usable_host(host).map_err(|e| format!("service {:?}: {e}", svc.id))?;
    let port = match svc.port {
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(format!("service {:?} has port {p}", svc.id)),
        None => return Err(format!("service {:?} has no port", svc.id)),
    };
    let health = aggregate_health(
        e.checks
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|c| c.status.as_str()),
    );
    let (w_pass, w_warn) = svc
        .weights
        .map(|w| (clamp_weight(w.passing), clamp_weight(w.warning)))
        .unwrap_or((1, 1));
    let weight = match health {
        Health::Warning => w_warn,
        // Passing, critical, unknown, and any health added later (`Health` is
        // non-exhaustive): the weight as registered. Being critical is said by `health`.
        _ => w_pass,
    };
    let mut b = Instance::builder(host, port)
        .id(svc.id)
        .tags(svc.tags.unwrap_or_default())
        .weight(weight)
        .health(health);
    for (k, v) in svc.meta.unwrap_or_default() {
        b = b.meta(k, v);
    }
    if !node.node.is_empty() {
        b = b.meta(META_NODE, node.node);
    }
    if !node.datacenter.is_empty() {
        b = b.meta(META_DATACENTER, node.datacenter);
    }
    Ok(b.build())
}

/// Lower-cases a tag the way Consul compares tags: Go's `strings.ToLower`, which maps each
/// character on its own with Go's `unicode.ToLower` (Unicode's simple case mapping).
///
/// Rust's `str::to_lowercase` differs in two ways, both handled here: it maps `İ`
/// (U+0130) to two characters (`i` and a combining dot; Go maps it to `i`, the first of
/// them), and it lower-cases a word-final `Σ` to `ς` (Go: `σ`, as everywhere). Characters
/// added in Unicode 16 are lower-cased by Rust's tables and not by Go's (Unicode 15 up to
/// Go 1.26), so a tag with one of them may match here and not on the agent.
pub fn tag_lowercase(tag: &str) -> String {
    tag.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// One Consul health watch as a [`Source`]: each round is one (blocking) health query.
///
/// Tags are ANDed: the first is filtered by the agent (`?tag=`), the others here
/// (CONSUL-2; Consul issue #294). Passing-only is the agent's `?passing` filter
/// (CONSUL-3), which keeps only entries whose checks are **all** passing (warning excluded).
/// Tags match case-insensitively (`V2` is `v2`), with the agent's own rule
/// ([`tag_lowercase`]).
///
/// A query whose answer changes nothing (the index unchanged or gone backwards, or the
/// instances the same as last published) is followed by the next one no sooner than
/// [`UNCHANGED_INDEX_PACE`] after it was sent. An index that goes backwards resets the
/// index to 0 and the round goes on with a non-blocking query (after that pace), logged at
/// `warn` the first time and at `debug` after that.
pub struct HealthSource {
    client: Client,
    query: ServiceQuery,
    /// The query's tags after the first, lower-cased (Consul compares `ToLower`ed tags).
    other_tags: Vec<String>,
    index: u64,
    not_before: Option<Instant>,
    /// The instances last published (sorted), to tell an answer that changes nothing;
    /// `None` before the first and after an error.
    last: Option<Vec<Instance>>,
    /// Whether an index going backwards was logged at `warn` already.
    warned_backwards: bool,
    /// The previous answer's entries: an entry unchanged byte for byte is not decoded
    /// again, it keeps its instance handle (so the cache and the endpointer see it
    /// unchanged in one pointer comparison).
    reuse: InstanceReuse,
    filtered_by_acls: Arc<AtomicBool>,
    warned_acls: bool,
}

impl fmt::Debug for HealthSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthSource")
            .field("query", &self.query)
            .field("index", &self.index)
            .finish()
    }
}

impl HealthSource {
    /// A source for `query`, starting with a non-blocking query.
    pub fn new(client: Client, query: ServiceQuery) -> Self {
        let other_tags = query
            .tags
            .iter()
            .skip(1)
            .map(|t| tag_lowercase(t))
            .collect();
        HealthSource {
            client,
            query,
            other_tags,
            index: 0,
            not_before: None,
            last: None,
            warned_backwards: false,
            reuse: InstanceReuse::new(),
            filtered_by_acls: Arc::new(AtomicBool::new(false)),
            warned_acls: false,
        }
    }

    /// Whether the last answer was filtered by ACLs (the agent's
    /// `X-Consul-Results-Filtered-By-ACLs`): the token may not see some instances.
    pub fn filtered_by_acls(&self) -> bool {
        self.filtered_by_acls.load(Ordering::Relaxed)
    }

    fn note_acl_filtering(&mut self, filtered: bool) {
        self.filtered_by_acls.store(filtered, Ordering::Relaxed);
        if filtered && !self.warned_acls {
            self.warned_acls = true;
            tracing::warn!(
                backend = BACKEND,
                service = %self.query.service,
                "the agent left out instances the ACL token may not read \
                 (X-Consul-Results-Filtered-By-ACLs); the published set may be partial or empty: \
                 give the token service:read on the service and node:read on its nodes \
                 (ConsulInstancer::results_filtered_by_acls tells it; an instancer from \
                 ConsulRegistry::consul_instancer has it)"
            );
        }
    }

    /// The index the next query blocks on (0: non-blocking).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Sorts the instances (through the watch's `InstanceReuse`: the order of the last
    /// answer's entries is remembered, so only new or changed entries are compared) and
    /// keeps those with every tag after the first (the first was the agent's filter),
    /// compared the way the agent compares it; logs the skipped entries.
    fn instances(&mut self, answer: HealthAnswer) -> Vec<Instance> {
        for reason in &answer.skip_reasons {
            tracing::warn!(
                backend = BACKEND,
                service = %self.query.service,
                %reason,
                "skipping an unusable entry"
            );
        }
        let unlogged = answer.skipped - answer.skip_reasons.len();
        if unlogged > 0 {
            tracing::warn!(
                backend = BACKEND,
                service = %self.query.service,
                skipped = unlogged,
                "skipping more unusable entries (reasons not logged)"
            );
        }
        let mut out = answer.instances;
        // Before the filter: the reuse knows the answer's instances in the answer's order.
        self.reuse.sort(&mut out);
        if !self.other_tags.is_empty() {
            out.retain(|i| {
                self.other_tags
                    .iter()
                    .all(|want| i.tags().iter().any(|t| tag_lowercase(t) == *want))
            });
        }
        out
    }

    /// After an answer that changed nothing: the next query no sooner than the pace after
    /// this one was sent.
    fn pace_from(&mut self, sent: Instant) {
        let pace = UNCHANGED_INDEX_PACE.min(self.client.config().wait);
        self.not_before = Some(sent + pace);
    }
}

#[async_trait]
impl Source for HealthSource {
    async fn next_step(&mut self) -> Step {
        loop {
            if let Some(not_before) = self.not_before.take() {
                tokio::time::sleep_until(not_before).await;
            }
            let sent = Instant::now();
            let tag = self.query.tags.first().map(String::as_str);
            let answer = self
                .client
                .health_service_reusing(
                    &self.query.service,
                    tag,
                    self.query.passing_only,
                    self.index,
                    &mut self.reuse,
                )
                .await;
            return match answer {
                Err(e) => {
                    // CONSUL-8 fix: do not block on the old index once the agent is back.
                    self.index = 0;
                    self.last = None;
                    Step::Fail(e)
                }
                Ok(a) if a.index == 0 => {
                    self.index = 0;
                    self.pace_from(sent);
                    Step::Skip("index is not sane (0); next query is non-blocking".into())
                }
                Ok(a) if a.index < self.index => {
                    // Consul's guidance: reset to 0 and start over. The non-blocking query
                    // goes out in this same round, paced (an agent or proxy that does this
                    // on every query must not be hammered).
                    let last = self.index;
                    self.index = 0;
                    self.pace_from(sent);
                    if self.warned_backwards {
                        tracing::debug!(backend = BACKEND, service = %self.query.service,
                            "index went backwards ({} < {last}); resetting to 0", a.index);
                    } else {
                        self.warned_backwards = true;
                        tracing::warn!(backend = BACKEND, service = %self.query.service,
                            "index went backwards ({} < {last}); resetting to 0 (logged once; \
                             later ones at debug)", a.index);
                    }
                    continue;
                }
                Ok(a) => {
                    let unchanged_index = a.index == self.index;
                    self.index = a.index;
                    self.note_acl_filtering(a.filtered_by_acls);
                    let set = self.instances(a);
                    if unchanged_index || self.last.as_ref() == Some(&set) {
                        // Nothing changed (an early return): rate-limit the next query.
                        self.pace_from(sent);
                    }
                    self.last = Some(set.clone());
                    Step::Publish(set)
                }
            };
        }
    }
}

/// Watches the instances of one service in Consul.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use sd_consul::{Client, ClientConfig, ConsulInstancer};
/// use sd_core::{Instancer, ServiceQuery};
///
/// let client = Client::new(ClientConfig::new("127.0.0.1:8500"))?;
/// let instancer = ConsulInstancer::start(client, ServiceQuery::new("web").tag("v2").passing_only(true)).await;
/// let mut events = instancer.subscribe();
/// println!("{:?}", events.next().await); // the first query already ran
/// instancer.stop().await; // cancels the blocking query in flight
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConsulInstancer {
    inner: WatchedInstancer,
    filtered_by_acls: Arc<AtomicBool>,
}

impl ConsulInstancer {
    /// Runs the first query, publishes its result, and starts watching, with go-kit's
    /// backoff (10 ms .. 1 min, jittered).
    pub async fn start(client: Client, query: ServiceQuery) -> Self {
        Self::start_with_backoff(client, query, Backoff::default()).await
    }

    /// Like [`start`](Self::start), with another backoff after failures.
    pub async fn start_with_backoff(client: Client, query: ServiceQuery, backoff: Backoff) -> Self {
        let target = if query.tags.is_empty() {
            query.service.clone()
        } else {
            format!("{} tags={:?}", query.service, query.tags)
        };
        let config = LoopConfig::new(BACKEND, target)
            .service(query.service.clone())
            .backoff(backoff);
        let source = HealthSource::new(client, query);
        let filtered_by_acls = source.filtered_by_acls.clone();
        let inner = WatchedInstancer::start(source, config).await;
        ConsulInstancer {
            inner,
            filtered_by_acls,
        }
    }

    /// The current state.
    pub fn state(&self) -> Option<Event> {
        self.inner.state()
    }

    /// Whether the agent's last answer left out instances the ACL token may not read
    /// (`X-Consul-Results-Filtered-By-ACLs: true`), so the published set may be partial or
    /// empty. The first such answer is also logged at `warn`.
    ///
    /// The agent says so only for a token that is not the anonymous one: without a token,
    /// a filtered answer looks like any other.
    pub fn results_filtered_by_acls(&self) -> bool {
        self.filtered_by_acls.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Instancer for ConsulInstancer {
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    async fn stop(&self) {
        self.inner.stop().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: &serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn entry(svc_addr: &str, node_addr: &str, port: i64, checks: &[&str]) -> Box<RawValue> {
        raw(&json!({
            "Node": {"Node": "n1", "Address": node_addr, "Datacenter": "dc1"},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["a", "b"], "Address": svc_addr,
                        "Port": port, "Meta": {"version": "2"},
                        "Weights": {"Passing": 10, "Warning": 3}},
            "Checks": checks.iter().map(|s| json!({"Status": s})).collect::<Vec<_>>(),
        }))
    }

    #[test]
    fn consul_4_service_address_else_node_address() {
        let i = entry_to_instance(&entry("10.0.0.10", "10.0.0.1", 9000, &[])).unwrap();
        assert_eq!(i.addr(), "10.0.0.10:9000");
        let i = entry_to_instance(&entry("", "10.0.0.1", 9000, &[])).unwrap();
        assert_eq!(i.addr(), "10.0.0.1:9000");
    }

    /// The host rule fuzzing established for every decoder (`sd_core::instance::usable_host`):
    /// an address that is not a host skips the entry, with the reason; an IPv6 address is
    /// kept in its canonical form, so the instance's go-kit plain form parses back.
    #[test]
    fn addresses_that_are_not_hosts_skip_the_entry() {
        for bad in ["w/b.internal", "[]", "a:b", "[web]", "a b", "h\u{1}"] {
            let err = entry_to_instance(&entry(bad, "10.0.0.1", 80, &[])).unwrap_err();
            assert!(err.contains("host"), "{bad}: {err}");
            let err = entry_to_instance(&entry("", bad, 80, &[])).unwrap_err();
            assert!(err.contains("host"), "{bad}: {err}");
        }
        let i = entry_to_instance(&entry("[0:0::1]", "10.0.0.1", 80, &[])).unwrap();
        assert_eq!(i.addr(), "[::1]:80");
    }

    #[test]
    fn ipv6_is_bracketed() {
        let i = entry_to_instance(&entry("fe80::1", "10.0.0.1", 80, &[])).unwrap();
        assert_eq!(i.addr(), "[fe80::1]:80");
        assert_eq!(i.host(), "fe80::1");
        let i = entry_to_instance(&entry("", "::1", 80, &[])).unwrap();
        assert_eq!(i.addr(), "[::1]:80");
    }

    #[test]
    fn id_tags_meta_node_dc_and_weights() {
        let i = entry_to_instance(&entry("", "10.0.0.1", 80, &["passing", "passing"])).unwrap();
        assert_eq!(i.id(), "web-1");
        assert_eq!(i.tags(), ["a", "b"]);
        assert_eq!(i.meta().get("version").unwrap(), "2");
        assert_eq!(i.meta().get(META_NODE).unwrap(), "n1");
        assert_eq!(i.meta().get(META_DATACENTER).unwrap(), "dc1");
        assert_eq!(i.health(), Health::Passing);
        assert_eq!(i.weight(), 10);
        let i = entry_to_instance(&entry("", "10.0.0.1", 80, &["passing", "warning"])).unwrap();
        assert_eq!((i.health(), i.weight()), (Health::Warning, 3));
        // Critical: the registered (passing) weight; the health says it is critical.
        let i = entry_to_instance(&entry("", "10.0.0.1", 80, &["warning", "critical"])).unwrap();
        assert_eq!((i.health(), i.weight()), (Health::Critical, 10));
        let i = entry_to_instance(&entry("", "10.0.0.1", 80, &["maintenance"])).unwrap();
        assert_eq!(i.health(), Health::Critical);
        let i = entry_to_instance(&entry("", "10.0.0.1", 80, &["bogus", "warning"])).unwrap();
        assert_eq!((i.health(), i.weight()), (Health::Unknown, 10));
    }

    #[test]
    fn missing_weights_default_to_one() {
        let v = raw(&json!({"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "x", "Port": 1}}));
        let i = entry_to_instance(&v).unwrap();
        assert_eq!((i.weight(), i.health()), (1, Health::Passing));
        assert!(i.meta().is_empty());
        assert!(i.tags().is_empty());
    }

    #[test]
    fn unusable_entries_say_why() {
        for (v, why) in [
            (
                entry("", "", 80, &[]),
                "neither a service nor a node address",
            ),
            (entry("10.0.0.1", "", 0, &[]), "port 0"),
            (entry("10.0.0.1", "", 70000, &[]), "port 70000"),
            (
                raw(&json!({"Node": {"Address": "h"}, "Service": {"ID": "x"}})),
                "no port",
            ),
            (raw(&json!({"Node": {"Address": "h"}})), "no Service"),
            (
                raw(&json!({"Service": {"Port": "eighty"}})),
                "unexpected entry shape",
            ),
            (raw(&json!(42)), "unexpected entry shape"),
        ] {
            let err = entry_to_instance(&v).unwrap_err();
            assert!(err.contains(why), "{v}: {err}");
        }
    }

    /// Decodes `entries` as one answer body through `reuse`.
    fn decode_with(
        reuse: &mut InstanceReuse,
        entries: &[serde_json::Value],
    ) -> crate::client::Decoded {
        let body = serde_json::to_vec(entries).unwrap();
        crate::client::decode_health_body(&body, 1 << 20, Some(reuse)).unwrap()
    }

    fn entry_json(i: usize) -> serde_json::Value {
        json!({
            "Node": {"Node": format!("n{i}"), "Address": format!("10.0.1.{i}"), "Datacenter": "dc1"},
            "Service": {"ID": format!("web-{i}"), "Service": "web", "Tags": ["a"], "Address": format!("10.0.0.{i}"),
                        "Port": 8080, "Meta": {"version": "2"}, "Weights": {"Passing": 10, "Warning": 3}},
            "Checks": [{"Status": "passing"}],
        })
    }

    /// A change to one entry's JSON, and whether an instance shows it.
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    type Seen = Box<dyn Fn(&Instance) -> bool>;

    /// With a watch's `InstanceReuse`, an unchanged entry keeps its instance handle and a
    /// change to any field of one entry is seen in that entry alone: address (service or
    /// node), port, id, tags, meta, weight, health, node, datacenter.
    #[test]
    fn reuse_keeps_unchanged_entries_and_sees_every_change() {
        let base: Vec<serde_json::Value> = (1..=5).map(entry_json).collect();
        let changes: Vec<(&str, Change, Seen)> = vec![
            (
                "service address",
                Box::new(|e| e["Service"]["Address"] = json!("10.9.9.9")),
                Box::new(|i| i.host() == "10.9.9.9"),
            ),
            (
                "node address",
                Box::new(|e| {
                    e["Service"]["Address"] = json!("");
                    e["Node"]["Address"] = json!("10.8.8.8")
                }),
                Box::new(|i| i.host() == "10.8.8.8"),
            ),
            (
                "port",
                Box::new(|e| e["Service"]["Port"] = json!(8081)),
                Box::new(|i| i.port() == 8081),
            ),
            (
                "id",
                Box::new(|e| e["Service"]["ID"] = json!("web-x")),
                Box::new(|i| i.id() == "web-x"),
            ),
            (
                "tags",
                Box::new(|e| e["Service"]["Tags"] = json!(["a", "b"])),
                Box::new(|i| i.tags() == ["a", "b"]),
            ),
            (
                "meta",
                Box::new(|e| e["Service"]["Meta"]["version"] = json!("3")),
                Box::new(|i| i.meta().get("version").unwrap() == "3"),
            ),
            (
                "weight",
                Box::new(|e| e["Service"]["Weights"]["Passing"] = json!(11)),
                Box::new(|i| i.weight() == 11),
            ),
            (
                "health",
                Box::new(|e| e["Checks"][0]["Status"] = json!("critical")),
                Box::new(|i| i.health() == Health::Critical),
            ),
            (
                "node",
                Box::new(|e| e["Node"]["Node"] = json!("other")),
                Box::new(|i| i.meta().get(META_NODE).unwrap() == "other"),
            ),
            (
                "datacenter",
                Box::new(|e| e["Node"]["Datacenter"] = json!("dc2")),
                Box::new(|i| i.meta().get(META_DATACENTER).unwrap() == "dc2"),
            ),
        ];
        for (what, change, seen) in changes {
            let mut reuse = InstanceReuse::new();
            let first = decode_with(&mut reuse, &base).instances;
            let mut changed = base.clone();
            change(&mut changed[2]);
            let second = decode_with(&mut reuse, &changed).instances;
            assert_eq!(second.len(), 5, "{what}");
            for k in [0, 1, 3, 4] {
                assert!(
                    Instance::ptr_eq(&first[k], &second[k]),
                    "{what}: entry {k} kept"
                );
            }
            assert!(!Instance::ptr_eq(&first[2], &second[2]), "{what}");
            assert!(seen(&second[2]), "{what}: {:?}", second[2]);
            assert!(!seen(&first[2]), "{what}");
            assert_eq!(
                second[2],
                entry_to_instance(&raw(&changed[2])).unwrap(),
                "{what}"
            );
            // And back: the original entry is decoded again, equal to the first.
            let third = decode_with(&mut reuse, &base).instances;
            assert_eq!(third[2], first[2], "{what}");
            assert!(Instance::ptr_eq(&third[0], &first[0]), "{what}");
        }
    }

    /// With reuse, a malformed entry is still skipped alone, with its reason, on every
    /// answer; a body that fails makes the next answer decode in full.
    #[test]
    fn reuse_skips_a_bad_entry_alone_every_time() {
        let mut reuse = InstanceReuse::new();
        let mut entries: Vec<serde_json::Value> = (1..=3).map(entry_json).collect();
        entries[1]["Service"]["Port"] = json!(0);
        for _ in 0..2 {
            let d = decode_with(&mut reuse, &entries);
            assert_eq!((d.instances.len(), d.skipped), (2, 1));
            assert!(d.skip_reasons[0].contains("port 0"), "{:?}", d.skip_reasons);
        }
        let kept = decode_with(&mut reuse, &entries).instances;
        assert!(crate::client::decode_health_body(b"[{}, 7", 1 << 20, Some(&mut reuse)).is_err());
        assert!(reuse.is_empty(), "a failed body forgets");
        let again = decode_with(&mut reuse, &entries).instances;
        assert_eq!(again, kept);
        assert!(
            !Instance::ptr_eq(&again[0], &kept[0]),
            "decoded anew after the failure"
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                "[a-z:.0-9]{0,8}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("Node".to_string()),
                            Just("Service".to_string()),
                            Just("Checks".to_string()),
                            Just("Address".to_string()),
                            Just("Port".to_string()),
                            Just("Weights".to_string()),
                            Just("Meta".to_string()),
                            Just("Tags".to_string()),
                            Just("Status".to_string()),
                            "[A-Za-z]{1,6}",
                        ],
                        inner,
                        0..5
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Whatever the agent (or something in between) sends, converting an entry never
            /// panics, and an accepted entry always has a host and a non-zero port.
            #[test]
            fn any_entry_converts_or_is_rejected_with_a_reason(v in json_value()) {
                match entry_to_instance(&raw(&v)) {
                    Ok(i) => prop_assert!(!i.host().is_empty() && i.port() != 0),
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            /// Realistic entries with one field replaced by anything.
            #[test]
            fn damaged_entries_never_panic(
                field in prop_oneof![Just("Address"), Just("Port"), Just("Weights"), Just("Meta"), Just("Tags"), Just("ID")],
                value in json_value(),
            ) {
                let mut e: serde_json::Value =
                    serde_json::from_str(entry("10.0.0.1", "10.0.0.2", 80, &["passing"]).get()).unwrap();
                e["Service"][field] = value;
                let _ = entry_to_instance(&raw(&e));
            }
        }
    }

    /// Go's `strings.ToLower` (per character, simple mapping), not Rust's
    /// `str::to_lowercase`: `İ` is `i`, a final `Σ` is `σ`.
    #[test]
    fn tags_are_lower_cased_like_go() {
        assert_eq!(tag_lowercase("İ"), "i");
        assert_eq!(tag_lowercase("ΟΔΟΣ"), "οδοσ");
        assert_eq!(tag_lowercase("V2-Beta"), "v2-beta");
        assert_eq!(tag_lowercase("ÀÉ"), "àé");
        assert_ne!("ΟΔΟΣ".to_lowercase(), "οδοσ");
    }

    #[test]
    fn health_aggregation_matches_consul() {
        assert_eq!(aggregate_health([]), Health::Passing);
        assert_eq!(aggregate_health(["passing", "warning"]), Health::Warning);
        assert_eq!(
            aggregate_health(["warning", "critical", "passing"]),
            Health::Critical
        );
        assert_eq!(aggregate_health(["maintenance"]), Health::Critical);
    }
}
