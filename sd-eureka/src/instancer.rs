//! The instancer: polls one Eureka application (or VIP address) on sd-core's watch loop.
//!
//! Each round is one `GET /apps/{APP}` (or `GET /vips/{vip}`) with `Accept:
//! application/json`; the loop ([`WatchedInstancer`]) waits the poll interval (±10 %
//! jitter) between successful rounds and backs off after failures. An app the server does
//! not know, or whose last instance left, is an **empty set** (go-kit publishes an error
//! instead, EU-4, so the last instance leaving was never seen). A failure (server
//! unreachable, 5xx, a body that is not Eureka's JSON) publishes an error and keeps the
//! last good set in service; one unusable instance is skipped alone, with the reason
//! logged.
//!
//! ## What an instance carries
//!
//! | [`Instance`] | from Eureka's InstanceInfo |
//! |---|---|
//! | `host()` | `ipAddr`, else `hostName` (go-kit uses `ipAddr`) |
//! | `port()` | `securePort` when `securePort.@enabled` is true (as Spring Cloud's `EurekaServiceInstance`), else `port` when enabled |
//! | `id()` | `instanceId`, else `hostName` (Eureka's own `InstanceInfo.getId()`) |
//! | `tags()` | the JSON array in metadata key [`META_TAGS`] (`sdkit.tags`), written by sdkit's registrar |
//! | `meta()` | `metadata` (without `@class` and [`META_TAGS`]), plus [`META_STATUS`] (`eureka.status`) and, for a secure port, [`META_SECURE`] (`eureka.secure` = `true`) |
//! | `health()` | `status`: see [`status_health`]; `OUT_OF_SERVICE` with metadata [`META_HEALTH`] = `warning` is `Warning` |
//! | `weight()` | always the default (Eureka has no weights) |
//!
//! Each round also reports, through [`Source::changed_at`], the latest
//! `lastUpdatedTimestamp` (the server's time of a registration or status change) of the
//! instances that are new or updated since the previous answer, so the watch loop records
//! `sdkit_instancer_propagation_delay_seconds` with the `metrics` feature (poll interval and
//! the server's response cache included). The first answer reports nothing (registrations,
//! not changes), nor does a round that only lost instances.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sd_core::{
    Backoff, Health, Instance, LoopConfig, ServiceQuery, Source, Step, WatchedInstancer,
};
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Client, BACKEND};

/// Metadata key of the instance's Eureka status as given by the server (`UP`, `DOWN`,
/// `OUT_OF_SERVICE`, `STARTING`, `UNKNOWN`), for what [`Health`] cannot tell apart.
pub const META_STATUS: &str = "eureka.status";

/// Metadata key set to `true` when the address uses the instance's secure port.
pub const META_SECURE: &str = "eureka.secure";

/// Metadata key that carries an instance's tags, as a JSON array of strings. Eureka has no
/// tags; sdkit's registrar writes them here and the instancer reads them back, so tag
/// queries work the same as on other registries.
pub const META_TAGS: &str = "sdkit.tags";

/// Metadata key that marks an `OUT_OF_SERVICE` instance as registered with
/// [`Health::Warning`] (value `warning`). Eureka has no "serving with a warning" status:
/// sdkit's registrar announces such an instance as `OUT_OF_SERVICE` (so Eureka's own
/// clients send it nothing) with this key, and sdkit's instancer reads it back as `Warning`.
pub const META_HEALTH: &str = "sdkit.health";

/// The default poll interval (fargo's and the Netflix Java client's 30 s).
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// The [`Health`] of an Eureka status.
///
/// | Eureka `status` | [`Health`] | in a `passing_only` query |
/// |---|---|---|
/// | `UP` | `Passing` | yes |
/// | `DOWN` | `Critical` | no |
/// | `OUT_OF_SERVICE` | `Critical` | no |
/// | `STARTING` | `Unknown` | no |
/// | `UNKNOWN`, missing, anything else | `Unknown` | no |
///
/// Only `UP` instances take traffic in Eureka's own clients; so it is here with
/// `passing_only`. One exception, read by [`instance_from_json`]: an `OUT_OF_SERVICE`
/// instance carrying metadata [`META_HEALTH`]` = warning` (what sdkit's registrar writes for
/// a [`Health::Warning`] registration) is `Warning`.
pub fn status_health(status: &str) -> Health {
    match status {
        "UP" => Health::Passing,
        "DOWN" | "OUT_OF_SERVICE" => Health::Critical,
        _ => Health::Unknown,
    }
}

/// `{"$": 8080, "@enabled": "true"}`; both fields are strings or native JSON values
/// depending on the server's codec.
#[derive(Deserialize, Default)]
struct PortJson {
    #[serde(rename = "$", default)]
    port: Value,
    #[serde(rename = "@enabled", default)]
    enabled: Value,
}

impl PortJson {
    fn enabled(&self) -> bool {
        match &self.enabled {
            Value::Bool(b) => *b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    fn number(&self) -> Result<u16, String> {
        let n = match &self.port {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
            Some(p) => Err(format!("port {p}")),
            None => Err(format!("port {} is not a number", self.port)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceJson {
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    host_name: Option<String>,
    #[serde(default)]
    ip_addr: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    port: Option<PortJson>,
    #[serde(default)]
    secure_port: Option<PortJson>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Converts one InstanceInfo of a Eureka JSON answer into an [`Instance`] (see the module
/// documentation for the mapping). Fails, with the reason, when it has no usable host,
/// id or port, or its metadata or [`META_TAGS`] cannot be read.
pub fn instance_from_json(v: &Value) -> Result<Instance, String> {
    let i = InstanceJson::deserialize(v).map_err(|e| format!("unexpected instance shape: {e}"))?;
    let host = non_empty(&i.ip_addr)
        .or(non_empty(&i.host_name))
        .ok_or("instance has neither ipAddr nor hostName")?;
    let id = non_empty(&i.instance_id)
        .or(non_empty(&i.host_name))
        .ok_or("instance has neither instanceId nor hostName")?;
    let host = sd_core::instance::usable_host(host).map_err(|e| format!("{id}: {e}"))?;
    let secure = i.secure_port.as_ref().filter(|p| p.enabled());
    let (port, is_secure) = match (secure, i.port.as_ref().filter(|p| p.enabled())) {
        (Some(p), _) => (p.number().map_err(|e| format!("{id}: secure {e}"))?, true),
        (None, Some(p)) => (p.number().map_err(|e| format!("{id}: {e}"))?, false),
        (None, None) => return Err(format!("{id}: neither port nor securePort is enabled")),
    };
    let status = i.status.as_deref().unwrap_or("UNKNOWN");
    let mut health = status_health(status);
    let mut b = Instance::builder(host, port).id(id);
    for (k, v) in i.metadata.unwrap_or_default() {
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(x) => x.to_string(),
            other => return Err(format!("{id}: metadata {k:?} is not a string: {other}")),
        };
        if k == "@class" {
            continue;
        }
        if k == META_HEALTH {
            if v == "warning" && status == "OUT_OF_SERVICE" {
                health = Health::Warning;
            }
            continue;
        }
        if k == META_TAGS {
            let tags: Vec<String> = serde_json::from_str(&v).map_err(|e| {
                format!("{id}: metadata {META_TAGS} is not a JSON array of strings ({e})")
            })?;
            b = b.tags(tags);
            continue;
        }
        b = b.meta(k, v);
    }
    // Set last: a metadata entry of the same name (another client's) does not hide the
    // server's status.
    b = b.meta(META_STATUS, status);
    if is_secure {
        b = b.meta(META_SECURE, "true");
    }
    Ok(b.health(health).build())
}

/// The InstanceInfo values of `{"application": {"instance": [...]}}` (or a single object,
/// as older codecs write one instance).
fn app_instances<'a>(app: &'a Value, what: &str) -> Result<Vec<&'a Value>, String> {
    match app.get("instance") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => Ok(list.iter().collect()),
        Some(one @ Value::Object(_)) => Ok(vec![one]),
        Some(other) => Err(format!("{what}: \"instance\" is {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The InstanceInfo values of a `GET /apps/{APP}` answer.
pub fn instances_of_app(doc: &Value) -> Result<Vec<&Value>, String> {
    match doc.get("application") {
        Some(app @ Value::Object(_)) => app_instances(app, "application"),
        Some(other) => Err(format!("\"application\" is {}", kind(other))),
        None => Err("the answer has no \"application\"".into()),
    }
}

/// The InstanceInfo values of a `GET /vips/{vip}` (or `GET /apps`) answer, every app.
pub fn instances_of_apps(doc: &Value) -> Result<Vec<&Value>, String> {
    let apps = match doc.get("applications") {
        Some(apps @ Value::Object(_)) => apps,
        Some(other) => return Err(format!("\"applications\" is {}", kind(other))),
        None => return Err("the answer has no \"applications\"".into()),
    };
    let list: Vec<&Value> = match apps.get("application") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(other) => return Err(format!("\"application\" is {}", kind(other))),
    };
    let mut out = Vec::new();
    for app in list {
        out.extend(app_instances(app, "application")?);
    }
    Ok(out)
}

/// The names of the applications of a `GET /apps` answer that have at least one instance,
/// sorted, without duplicates (Eureka upper-cases them).
pub fn app_names(doc: &Value) -> Result<Vec<String>, String> {
    let list: Vec<&Value> = match doc.get("applications") {
        Some(apps @ Value::Object(_)) => match apps.get("application") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            Some(other) => return Err(format!("\"application\" is {}", kind(other))),
        },
        Some(other) => return Err(format!("\"applications\" is {}", kind(other))),
        None => return Err("the answer has no \"applications\"".into()),
    };
    let mut names = Vec::with_capacity(list.len());
    for app in list {
        if app_instances(app, "application")?.is_empty() {
            continue;
        }
        match app.get("name") {
            Some(Value::String(name)) if !name.is_empty() => names.push(name.clone()),
            Some(other) => return Err(format!("an application's \"name\" is {}", kind(other))),
            None => return Err("an application has no \"name\"".into()),
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// A `lastUpdatedTimestamp`: a number, or a string of digits (Eureka's JSON codec writes
/// either).
fn timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// What an instancer polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `GET /apps/{APP}`: the application named by the service, upper-cased (Eureka stores
    /// and matches app names in upper case).
    App(String),
    /// `GET /vips/{vip}`: every instance announcing this VIP address, whatever its app.
    Vip(String),
}

impl Target {
    /// The app target of `service` (upper-cased).
    pub fn app(service: &str) -> Self {
        Target::App(service.to_uppercase())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::App(a) => write!(f, "app {a}"),
            Target::Vip(v) => write!(f, "VIP {v}"),
        }
    }
}

/// One Eureka poll as a [`Source`]: each round is one `GET` of the target; the query's tags
/// (ANDed) and `passing_only` (status `UP`) are applied here.
pub struct AppSource {
    client: Client,
    target: Target,
    query: ServiceQuery,
    /// `instanceId` → `lastUpdatedTimestamp` of the previous answer.
    seen: HashMap<String, i64>,
    /// The latest `lastUpdatedTimestamp` (ms, the server's clock) of the instances this round
    /// found new or updated; see [`Source::changed_at`].
    round_updated: Option<i64>,
}

impl fmt::Debug for AppSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSource")
            .field("target", &self.target)
            .field("query", &self.query)
            .finish()
    }
}

impl AppSource {
    /// A source polling `target` for `query`.
    pub fn new(client: Client, target: Target, query: ServiceQuery) -> Self {
        AppSource {
            client,
            target,
            query,
            seen: HashMap::new(),
            round_updated: None,
        }
    }

    /// Remembers the `lastUpdatedTimestamp` of every instance of an answer and returns the
    /// latest among the instances that are new or were updated since the previous answer.
    /// Instances are known by `instanceId` (else `hostName`, as [`Instance::id`]); one
    /// without an id or a readable timestamp is left out.
    fn note_updates(&mut self, entries: &[&Value]) -> Option<i64> {
        let mut seen = HashMap::with_capacity(entries.len());
        let mut latest: Option<i64> = None;
        for entry in entries {
            let (Some(id), Some(at)) = (
                entry
                    .get("instanceId")
                    .or_else(|| entry.get("hostName"))
                    .and_then(Value::as_str),
                entry.get("lastUpdatedTimestamp").and_then(timestamp),
            ) else {
                continue;
            };
            if self.seen.get(id) != Some(&at) {
                latest = Some(latest.map_or(at, |l| l.max(at)));
            }
            seen.insert(id.to_string(), at);
        }
        self.seen = seen;
        latest
    }

    /// The instances of one answer that pass the query; unusable ones are logged and
    /// skipped.
    pub fn instances(&self, entries: &[&Value]) -> Vec<Instance> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match instance_from_json(entry) {
                Ok(i) if self.query.matches(&i) => out.push(i),
                Ok(_) => {}
                Err(reason) => tracing::warn!(
                    backend = BACKEND,
                    target = %self.target,
                    %reason,
                    "skipping an unusable instance"
                ),
            }
        }
        out
    }

    /// One round: `None` when the server has no such app.
    async fn fetch(&self) -> sd_core::Result<Option<Value>> {
        match &self.target {
            Target::App(app) => self.client.app(app).await,
            Target::Vip(vip) => self.client.vip(vip).await,
        }
    }
}

#[async_trait]
impl Source for AppSource {
    async fn next_step(&mut self) -> Step {
        self.round_updated = None;
        self.round().await
    }

    /// The latest `lastUpdatedTimestamp` (the Eureka server's time of a registration or
    /// status change) of the instances the round found new or updated. A round that only
    /// lost instances has none (Eureka keeps no time for a removal). (The watch loop ignores
    /// the first answer's.)
    fn changed_at(&self) -> Option<SystemTime> {
        sd_core::watch_loop::unix_millis(self.round_updated?)
    }
}

impl AppSource {
    /// One poll: the step, with `round_updated` set.
    async fn round(&mut self) -> Step {
        let doc = match self.fetch().await {
            Err(e) => return Step::Fail(e),
            // EU-4 fixed: no app is no instance, not an error.
            Ok(None) => {
                self.seen.clear();
                return Step::Publish(Vec::new());
            }
            Ok(Some(doc)) => doc,
        };
        let entries = match &self.target {
            Target::App(_) => instances_of_app(&doc),
            Target::Vip(_) => instances_of_apps(&doc),
        };
        match entries {
            Ok(entries) => {
                self.round_updated = self.note_updates(&entries);
                Step::Publish(self.instances(&entries))
            }
            Err(e) => Step::Fail(sd_core::Error::malformed(
                BACKEND,
                format!(
                    "query of {}: {e}: {}",
                    self.target,
                    crate::client::quote(&doc.to_string())
                ),
            )),
        }
    }
}

/// The instancer of one Eureka application: sd-core's [`WatchedInstancer`] running an
/// [`AppSource`]. It has nothing of its own to add, so it is that type.
pub type EurekaInstancer = WatchedInstancer;

/// Polls `target` once, publishes the result, and keeps polling every `poll` (±10 %), with
/// `backoff` after failures ([`Backoff::default`]: go-kit's 10 ms .. 1 min, jittered).
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use std::time::Duration;
/// use sd_eureka::{start_instancer, Client, ClientConfig, Target};
/// use sd_core::{Backoff, Instancer, ServiceQuery};
///
/// let client = Client::new(ClientConfig::new(["http://127.0.0.1:8761/eureka"]))?;
/// let query = ServiceQuery::new("web").passing_only(true);
/// let instancer =
///     start_instancer(client, Target::app("web"), query, Duration::from_secs(5), Backoff::default()).await;
/// let mut events = instancer.subscribe();
/// println!("{:?}", events.next().await); // the first poll already ran
/// instancer.stop().await;
/// # Ok(()) }
/// ```
pub async fn start_instancer(
    client: Client,
    target: Target,
    query: ServiceQuery,
    poll: Duration,
    backoff: Backoff,
) -> EurekaInstancer {
    let name = if query.tags.is_empty() {
        target.to_string()
    } else {
        format!("{target} tags={:?}", query.tags)
    };
    let config = LoopConfig::new(BACKEND, name)
        .service(query.service.clone())
        .interval(poll)
        .backoff(backoff);
    WatchedInstancer::start(AppSource::new(client, target, query), config).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An InstanceInfo as the Spring Eureka server (2.0.x, Jackson codec) writes it.
    fn info() -> Value {
        json!({
            "instanceId": "web-1", "hostName": "web1.local", "app": "WEB", "ipAddr": "10.0.0.1",
            "status": "UP", "overriddenStatus": "UNKNOWN",
            "port": {"$": 8080, "@enabled": "true"},
            "securePort": {"$": 8443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
            "metadata": {"zone": "a", "sdkit.tags": "[\"v2\",\"eu\"]"},
            "vipAddress": "web", "lastUpdatedTimestamp": "1", "lastDirtyTimestamp": "1", "actionType": "ADDED"
        })
    }

    #[test]
    fn an_instance_info_maps_onto_an_instance() {
        let i = instance_from_json(&info()).unwrap();
        assert_eq!(i.addr(), "10.0.0.1:8080");
        assert_eq!(i.id(), "web-1");
        assert_eq!(i.tags(), ["v2", "eu"]);
        assert_eq!(i.meta().get("zone").unwrap(), "a");
        assert_eq!(i.meta().get(META_STATUS).unwrap(), "UP");
        assert!(!i.meta().contains_key(META_TAGS));
        assert!(!i.meta().contains_key(META_SECURE));
        assert_eq!(i.health(), Health::Passing);
    }

    #[test]
    fn fallbacks_secure_port_and_string_ports() {
        let mut v = info();
        v["ipAddr"] = json!("");
        v["instanceId"] = json!(null);
        v["securePort"] = json!({"$": "8443", "@enabled": true});
        v["metadata"] = json!({"@class": "java.util.Collections$EmptyMap"});
        let i = instance_from_json(&v).unwrap();
        assert_eq!(i.addr(), "web1.local:8443");
        assert_eq!(i.id(), "web1.local");
        assert_eq!(i.meta().get(META_SECURE).unwrap(), "true");
        assert!(!i.meta().contains_key("@class"));
        assert!(i.tags().is_empty());
    }

    #[test]
    fn statuses_map_onto_health() {
        for (status, health) in [
            ("UP", Health::Passing),
            ("DOWN", Health::Critical),
            ("OUT_OF_SERVICE", Health::Critical),
            ("STARTING", Health::Unknown),
            ("UNKNOWN", Health::Unknown),
            ("up", Health::Unknown),
        ] {
            let mut v = info();
            v["status"] = json!(status);
            let i = instance_from_json(&v).unwrap();
            assert_eq!(i.health(), health, "{status}");
            assert_eq!(i.meta().get(META_STATUS).unwrap(), status);
        }
        let mut v = info();
        v.as_object_mut().unwrap().remove("status");
        assert_eq!(instance_from_json(&v).unwrap().health(), Health::Unknown);
        // sdkit's mark of a Warning registration counts only while OUT_OF_SERVICE.
        for (status, health) in [
            ("OUT_OF_SERVICE", Health::Warning),
            ("DOWN", Health::Critical),
            ("UP", Health::Passing),
        ] {
            let mut v = info();
            v["status"] = json!(status);
            v["metadata"]["sdkit.health"] = json!("warning");
            let i = instance_from_json(&v).unwrap();
            assert_eq!(i.health(), health, "{status}");
            assert!(!i.meta().contains_key(META_HEALTH));
        }
    }

    #[test]
    fn unusable_instances_say_why() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = info();
            f(&mut v);
            v
        };
        for (v, why) in [
            (with(&|v| v["port"]["$"] = json!(0)), "port 0"),
            (with(&|v| v["port"]["$"] = json!(70000)), "port 70000"),
            (with(&|v| v["port"]["$"] = json!("http")), "not a number"),
            (
                with(&|v| v["port"]["@enabled"] = json!("false")),
                "neither port nor securePort",
            ),
            (
                with(&|v| {
                    v["ipAddr"] = json!(" ");
                    v["hostName"] = json!(null);
                }),
                "neither ipAddr nor hostName",
            ),
            (
                with(&|v| v["metadata"]["sdkit.tags"] = json!("v2,eu")),
                "not a JSON array of strings",
            ),
            (
                with(&|v| v["metadata"]["x"] = json!({"a": 1})),
                "is not a string",
            ),
            (
                with(&|v| v["port"] = json!(8080)),
                "unexpected instance shape",
            ),
            (json!([1, 2]), "unexpected instance shape"),
            // The host rule fuzzing established for every decoder (usable_host).
            (
                with(&|v| v["ipAddr"] = json!("w/b.internal")),
                "contains '/'",
            ),
            (with(&|v| v["ipAddr"] = json!("[]")), "bracketed"),
            (with(&|v| v["ipAddr"] = json!("a:b")), "not an IPv6"),
        ] {
            let err = instance_from_json(&v).unwrap_err();
            assert!(err.contains(why), "{v}: {err}");
        }
    }

    #[test]
    fn app_names_lists_apps_with_instances_and_says_what_is_wrong() {
        let doc = json!({"applications": {"application": [
            {"name": "WEB", "instance": [info()]},
            {"name": "EMPTY", "instance": []},
            {"name": "API", "instance": info()},
            {"name": "WEB", "instance": [info()]},
        ]}});
        assert_eq!(app_names(&doc).unwrap(), ["API", "WEB"]);
        let none = json!({"applications": {"versions__delta": "1"}});
        assert!(app_names(&none).unwrap().is_empty());
        for (bad, needle) in [
            (json!({}), "no \"applications\""),
            (json!({"applications": []}), "\"applications\" is an array"),
            (
                json!({"applications": {"application": [{"instance": [info()]}]}}),
                "has no \"name\"",
            ),
            (
                json!({"applications": {"application": [{"name": 7, "instance": [info()]}]}}),
                "\"name\" is a number",
            ),
        ] {
            let err = app_names(&bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn app_and_vip_documents() {
        let doc = json!({"application": {"name": "WEB", "instance": [info(), info()]}});
        assert_eq!(instances_of_app(&doc).unwrap().len(), 2);
        let doc = json!({"application": {"name": "WEB", "instance": info()}});
        assert_eq!(instances_of_app(&doc).unwrap().len(), 1);
        let doc = json!({"application": {"name": "WEB"}});
        assert!(instances_of_app(&doc).unwrap().is_empty());
        assert!(instances_of_app(&json!({"apps": 1}))
            .unwrap_err()
            .contains("no \"application\""));
        assert!(instances_of_app(&json!({"application": {"instance": 3}}))
            .unwrap_err()
            .contains("is a number"));

        let doc = json!({"applications": {"versions__delta": "-1", "application": [
            {"name": "A", "instance": [info()]}, {"name": "B", "instance": info()}]}});
        assert_eq!(instances_of_apps(&doc).unwrap().len(), 2);
        let doc = json!({"applications": {"application": {"name": "A", "instance": [info()]}}});
        assert_eq!(instances_of_apps(&doc).unwrap().len(), 1);
        assert!(instances_of_apps(&json!({"applications": {}}))
            .unwrap()
            .is_empty());
        assert!(instances_of_apps(&json!([])).is_err());
    }

    #[test]
    fn the_source_filters_tags_and_status_and_skips_bad_entries_alone() {
        let client = Client::new(crate::ClientConfig::new(["http://127.0.0.1:1/eureka"])).unwrap();
        let mut down = info();
        down["instanceId"] = json!("web-2");
        down["status"] = json!("DOWN");
        let mut bad = info();
        bad["port"]["$"] = json!(0);
        let mut untagged = info();
        untagged["instanceId"] = json!("web-3");
        untagged["metadata"] = json!({});
        let entries = [info(), down, bad, untagged];
        let refs: Vec<&Value> = entries.iter().collect();
        let ids = |q: ServiceQuery| {
            let s = AppSource::new(client.clone(), Target::app("web"), q);
            s.instances(&refs)
                .iter()
                .map(|i| i.id().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(ServiceQuery::new("web")), ["web-1", "web-2", "web-3"]);
        assert_eq!(
            ids(ServiceQuery::new("web").passing_only(true)),
            ["web-1", "web-3"]
        );
        assert_eq!(
            ids(ServiceQuery::new("web").tag("v2").tag("eu")),
            ["web-1", "web-2"]
        );
        assert!(ids(ServiceQuery::new("web").tag("v2").tag("us")).is_empty());
        assert_eq!(Target::app("Web-x"), Target::App("WEB-X".into()));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[a-z:.0-9$@\\[\\]\"]{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("application".to_string()),
                            Just("applications".to_string()),
                            Just("instance".to_string()),
                            Just("ipAddr".to_string()),
                            Just("port".to_string()),
                            Just("securePort".to_string()),
                            Just("$".to_string()),
                            Just("@enabled".to_string()),
                            Just("metadata".to_string()),
                            Just("sdkit.tags".to_string()),
                            "[A-Za-z]{1,6}",
                        ],
                        inner,
                        0..5
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Whatever the server (or something in between) sends, reading it never
            /// panics, and an accepted instance always has a host and a non-zero port.
            #[test]
            fn any_answer_is_read_or_rejected_with_a_reason(v in json_value()) {
                match instance_from_json(&v) {
                    Ok(i) => prop_assert!(!i.host().is_empty() && i.port() != 0),
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
                let _ = instances_of_app(&v);
                let _ = instances_of_apps(&v);
            }

            /// Realistic instances with one field replaced by anything.
            #[test]
            fn damaged_instances_never_panic(
                field in prop_oneof![Just("ipAddr"), Just("port"), Just("securePort"), Just("metadata"), Just("status"), Just("instanceId")],
                value in json_value(),
            ) {
                let mut v = info();
                v[field] = value;
                let _ = instance_from_json(&v);
            }
        }
    }
}
