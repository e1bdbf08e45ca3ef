//! The registrar: agent register/deregister, checks, TTL heartbeats, re-registration.
//!
//! [`ConsulRegistrar::register`] sends `PUT /v1/agent/service/register` with the instance
//! (ID, name, address, port, tags, `Meta`, `Weights`) and its check, then keeps a background
//! task running until [`deregister`](ConsulRegistrar::deregister):
//!
//! - with a TTL check, it heartbeats (`PUT /v1/agent/check/update/<check>`) every third of
//!   the TTL with the status of the instance's [`health()`](sd_core::Instance::health)
//!   ([`check_status`]: passing, warning, or critical); the check is registered with that
//!   status and set to it again right after each registration (Consul keeps an existing
//!   check's status when a service is registered again), so watchers see the instance's
//!   health at once (a passing instance is discoverable by passing-only watchers at once);
//! - with any other check or none, it looks the service up on the agent
//!   (`GET /v1/agent/service/<id>`) every [`DEFAULT_RECHECK`].
//!
//! When the agent answers that it does not know the check or the service (it restarted —
//! a `-dev` agent forgets everything — or someone deregistered it), the registrar registers
//! again. go-kit never does this (its registrar has no heartbeat at all). Failures to reach
//! the agent are logged and retried with a backoff from 100 ms up to the period.
//!
//! Both calls are idempotent: registering again re-sends the registration (Consul upserts)
//! and keeps the one background task; deregistering when nothing can have been registered
//! does nothing. A `register()` that failed (timeout, reset, 5xx) or was cancelled after its
//! request may have reached the agent counts as registered: `deregister()` then sends the
//! deregistration, so no orphan is left on the agent.
//! Deregistration on shutdown is explicit ([`deregister`](ConsulRegistrar::deregister)) or
//! through [`RegistrationGuard`](sd_core::RegistrationGuard); dropping the registrar
//! stops the heartbeats only, so a TTL check then goes critical.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::{
    spawn_keepalive, Error, Health, HealthCheck, KeepAlive, KeepAliveConfig, KeepAliveTask,
    Registrar, Registration, Result,
};
use serde::Serialize;
use tokio::sync::{watch, Mutex};

use crate::client::{check_status, CheckUpdate, Client, BACKEND};

/// How often a registrar without a TTL check verifies that the agent still has its service.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(10);

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    grpc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deregister_critical_service_after: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct WeightsBody {
    passing: u32,
    warning: u32,
}

/// The JSON body of `PUT /v1/agent/service/register`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct ServiceBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: BTreeMap<String, String>,
    weights: WeightsBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<CheckBody>,
}

/// A Consul duration: whole milliseconds, which Go's `time.ParseDuration` accepts for every
/// duration `Registration::validate()` lets through (at most
/// [`MAX_REGISTRATION_DURATION`](sd_core::MAX_REGISTRATION_DURATION), far below Go's
/// 292-year `time.Duration`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The most `Meta` pairs Consul takes on a service.
pub const MAX_META_PAIRS: usize = 64;

/// The longest `Meta` key Consul takes, in bytes.
pub const MAX_META_KEY_LEN: usize = 128;

/// The longest `Meta` value Consul takes, in bytes.
pub const MAX_META_VALUE_LEN: usize = 512;

/// Consul's own checks of a service's `Meta` (the agent's `validateMetaPair`): at most
/// [`MAX_META_PAIRS`] pairs, keys of `[A-Za-z0-9_-]` only, at most [`MAX_META_KEY_LEN`]
/// bytes, not starting with `consul-` (reserved), values at most [`MAX_META_VALUE_LEN`]
/// bytes.
fn check_meta(service: &str, meta: &BTreeMap<String, String>) -> Result<()> {
    let bad = |what: String| {
        Err(Error::config(format!(
            "registration of {service:?}: {what} (Consul's limit; the agent would refuse it)"
        )))
    };
    if meta.len() > MAX_META_PAIRS {
        return bad(format!(
            "{} metadata pairs, more than {MAX_META_PAIRS}",
            meta.len()
        ));
    }
    for (k, v) in meta {
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return bad(format!(
                "metadata key {k:?} has characters other than A-Z, a-z, 0-9, _ and -"
            ));
        }
        if k.len() > MAX_META_KEY_LEN {
            return bad(format!(
                "metadata key {k:?} is longer than {MAX_META_KEY_LEN} characters"
            ));
        }
        if k.starts_with("consul-") {
            return bad(format!(
                "metadata key {k:?} starts with \"consul-\", reserved for Consul"
            ));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return bad(format!(
                "the value of metadata key {k:?} is longer than {MAX_META_VALUE_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// The check id sdkit registers a service's check under: `service:<service id>`, what
/// Consul itself would pick for a service's only check.
pub fn check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

fn build_body(r: &Registration) -> Result<ServiceBody> {
    r.validate()?;
    let id = r.instance_id();
    if r.instance.weight() == 0 {
        return Err(Error::config(format!(
            "registration of {:?}: weight 0 cannot be registered in Consul (Weights.Passing must be at least 1)",
            r.service
        )));
    }
    let check = r.check.as_ref().map(|c| {
        let mut body = CheckBody {
            check_id: check_id(&id),
            name: format!("Service '{}' check", r.service),
            status: None,
            ttl: None,
            http: None,
            tcp: None,
            grpc: None,
            interval: None,
            deregister_critical_service_after: r.deregister_critical_after.map(go_duration),
        };
        match c {
            HealthCheck::Ttl(ttl) => {
                body.ttl = Some(go_duration(*ttl));
                body.status = Some(check_status(r.instance.health()));
            }
            HealthCheck::Http { url, interval } => {
                body.http = Some(url.clone());
                body.interval = Some(go_duration(*interval));
            }
            HealthCheck::Tcp { addr, interval } => {
                body.tcp = Some(addr.clone());
                body.interval = Some(go_duration(*interval));
            }
            HealthCheck::Grpc { target, interval } => {
                body.grpc = Some(target.clone());
                body.interval = Some(go_duration(*interval));
            }
            // `HealthCheck` is non-exhaustive; a future kind is not silently dropped.
            #[allow(unreachable_patterns)]
            other => body.name = format!("unsupported check {other:?}"),
        }
        body
    });
    if let Some(c) = &check {
        if c.name.starts_with("unsupported check") {
            return Err(Error::config(format!(
                "registration of {:?}: {} in Consul",
                r.service, c.name
            )));
        }
    }
    let meta = r
        .instance
        .meta()
        .iter()
        // The keys sdkit adds when reading (consul.node, consul.datacenter) are not
        // registrable: Consul rejects dots in Meta keys.
        .filter(|(k, _)| !k.starts_with("consul."))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    check_meta(&r.service, &meta)?;
    Ok(ServiceBody {
        id,
        name: r.service.clone(),
        tags: r.instance.tags().to_vec(),
        address: r.instance.host().to_string(),
        port: r.instance.port(),
        meta,
        // The same weight whatever the health: it reads back as registered (the instancer
        // takes Weights.Warning for a warning instance), as on every other registry.
        weights: WeightsBody {
            passing: r.instance.weight(),
            warning: r.instance.weight(),
        },
        check,
    })
}

struct Shared {
    client: Client,
    registration: Registration,
    body: ServiceBody,
    check_id: Option<String>,
    reregistrations: watch::Sender<u64>,
    /// The agents (indexes in the client's address, then fallback) a registration may have
    /// reached: with fallback agents, a move registers again on the next one, and
    /// `deregister` must remove it from each.
    agents: std::sync::Mutex<std::collections::BTreeSet<usize>>,
}

impl Shared {
    /// The agents a registration may have reached (a panic while it was held changes
    /// nothing in it: the set is used as it is).
    fn agents(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<usize>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a registration may reach the current agent (called before sending it).
    fn note_agent(&self) {
        let agent = self.client.current_agent();
        self.agents().insert(agent);
    }

    /// The health the TTL check reports: the registered instance's.
    fn health(&self) -> Health {
        self.registration.instance.health()
    }
}

/// One round of sd-core's shared keep-alive loop ([`spawn_keepalive`]: every period, retries
/// backing off from 100 ms up to the period, stopped by `deregister`).
#[async_trait]
impl KeepAlive for Shared {
    /// Heartbeat (TTL check) or presence check; registers again when the agent lost it.
    async fn keep_alive(&self) -> Result<()> {
        let lost = match &self.check_id {
            Some(check) => {
                self.client.update_ttl(check, self.health()).await? == CheckUpdate::Unknown
            }
            None => self.client.agent_service(&self.body.id).await?.is_none(),
        };
        tracing::trace!(backend = BACKEND, id = %self.body.id, lost, ttl = self.check_id.is_some(),
            "heartbeat");
        if lost {
            tracing::warn!(
                backend = BACKEND,
                service = %self.body.name,
                id = %self.body.id,
                "the agent lost the registration (restart or external deregistration); registering again"
            );
            self.note_agent();
            self.client.register(&self.body).await?;
            self.reregistrations.send_modify(|n| *n += 1);
            sd_core::observe::reregistered(BACKEND, &self.body.name);
            tracing::info!(backend = BACKEND, service = %self.body.name, id = %self.body.id, action = "reregister");
            if let Some(check) = &self.check_id {
                // A new check starts with the instance's health (registered so); this only
                // matters if the agent kept an old check with another status.
                self.client.update_ttl(check, self.health()).await?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    registered: bool,
    /// The keep-alive task.
    task: Option<KeepAliveTask>,
}

/// Registers one instance with the local Consul agent and keeps it registered.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use std::time::Duration;
/// use sd_consul::{Client, ClientConfig, ConsulRegistrar};
/// use sd_core::{HealthCheck, Instance, Registrar, Registration};
///
/// let client = Client::new(ClientConfig::new("127.0.0.1:8500"))?;
/// let registrar = ConsulRegistrar::new(
///     client,
///     Registration::new("web", Instance::builder("127.0.0.1", 8080).id("web-1").tag("v2").build())
///         .check(HealthCheck::Ttl(Duration::from_secs(10)))
///         .deregister_critical_after(Duration::from_secs(90)),
/// )?;
/// registrar.register().await?;   // passing at once; heartbeats every ~3.3 s
/// // ... serve ...
/// registrar.deregister().await?; // on graceful shutdown
/// # Ok(()) }
/// ```
pub struct ConsulRegistrar {
    shared: Arc<Shared>,
    period: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for ConsulRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistrar")
            .field("service", &self.shared.body.name)
            .field("id", &self.shared.body.id)
            .field("tags", &self.shared.body.tags)
            .field("address", &self.shared.registration.instance.addr())
            .field("period", &self.period)
            .finish()
    }
}

impl ConsulRegistrar {
    /// A registrar for `registration`. Fails with [`Error::Config`] when the registration
    /// is invalid (see [`Registration::validate`]: among others, `deregister_critical_after`
    /// without a check, durations longer than
    /// [`MAX_REGISTRATION_DURATION`](sd_core::MAX_REGISTRATION_DURATION)), has weight 0, or
    /// breaks a Consul limit the agent would refuse with HTTP 400: `Meta` Consul does not take (more than
    /// [`MAX_META_PAIRS`] pairs, a key with characters other than `[A-Za-z0-9_-]`, longer
    /// than [`MAX_META_KEY_LEN`] or starting with `consul-`, a value longer than
    /// [`MAX_META_VALUE_LEN`]). The error names the key or the limit. Nothing is sent yet.
    pub fn new(client: Client, registration: Registration) -> Result<Self> {
        let body = build_body(&registration)?;
        let ttl = registration.ttl();
        let period = match ttl {
            Some(ttl) => KeepAliveConfig::period_for_ttl(ttl),
            None => DEFAULT_RECHECK,
        };
        let check_id = ttl.map(|_| check_id(&body.id));
        Ok(ConsulRegistrar {
            shared: Arc::new(Shared {
                client,
                registration,
                body,
                check_id,
                reregistrations: watch::channel(0).0,
                agents: Default::default(),
            }),
            period,
            state: Mutex::new(State::default()),
        })
    }

    /// Changes the heartbeat (TTL) or presence-check period. The default is a third of the
    /// TTL, or [`DEFAULT_RECHECK`] without a TTL check. Takes effect at the next
    /// registration.
    #[must_use]
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(Duration::from_millis(10));
        self
    }

    /// The heartbeat or presence-check period.
    pub fn current_period(&self) -> Duration {
        self.period
    }

    /// The service ID registered.
    pub fn service_id(&self) -> &str {
        &self.shared.body.id
    }

    /// The TTL check's id, if the registration has a TTL check.
    pub fn ttl_check_id(&self) -> Option<&str> {
        self.shared.check_id.as_deref()
    }

    /// How many times the registrar found its registration lost and registered again.
    pub fn reregistrations(&self) -> u64 {
        *self.shared.reregistrations.borrow()
    }

    /// A receiver of the [`reregistrations`](Self::reregistrations) count, to be told when
    /// the registrar had to register again (alerting, tests).
    pub fn watch_reregistrations(&self) -> watch::Receiver<u64> {
        self.shared.reregistrations.subscribe()
    }

    /// The JSON body sent to `/v1/agent/service/register`.
    pub fn registration_body(&self) -> serde_json::Value {
        serde_json::to_value(&self.shared.body).unwrap_or_default()
    }

    fn spawn_maintenance(&self) -> KeepAliveTask {
        let config = KeepAliveConfig::new(
            BACKEND,
            format!("{}/{}", self.shared.body.name, self.shared.body.id),
            self.period,
        )
        .service(self.shared.body.name.clone());
        spawn_keepalive(self.shared.clone(), config)
    }
}

#[async_trait]
impl Registrar for ConsulRegistrar {
    async fn register(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let body = &self.shared.body;
        let was_registered = state.registered;
        // From the moment the request may reach the agent, deregister() must send a
        // deregistration: a register() that times out, or is cancelled (this future
        // dropped), may have been applied by the agent all the same.
        state.registered = true;
        self.shared.note_agent();
        if let Err(failed) = self.shared.client.register_reporting(body).await {
            let e = failed.error;
            state.registered = was_registered || failed.maybe_applied;
            tracing::warn!(backend = BACKEND, service = %body.name, tags = ?body.tags,
                address = %self.shared.registration.instance.addr(), error = %e,
                maybe_applied = failed.maybe_applied,
                "register failed{}", if failed.maybe_applied {
                    " (the agent may have applied it: deregister() will remove it)"
                } else { "" });
            return Err(e);
        }
        if state.task.as_ref().map_or(true, KeepAliveTask::is_finished) {
            state.task = Some(self.spawn_maintenance());
        }
        tracing::info!(backend = BACKEND, service = %body.name, tags = ?body.tags,
            address = %self.shared.registration.instance.addr(), action = "register");
        if let Some(check) = &self.shared.check_id {
            // Re-registering keeps an existing check's status (even critical): set it to the
            // instance's health now. A failure here is left to the heartbeat task, which
            // retries with backoff.
            match self
                .shared
                .client
                .update_ttl(check, self.shared.health())
                .await
            {
                Ok(CheckUpdate::Updated) => {}
                Ok(CheckUpdate::Unknown) => tracing::warn!(backend = BACKEND, id = %body.id,
                    "the agent does not know the TTL check right after registering it"),
                Err(e) => tracing::warn!(backend = BACKEND, id = %body.id, error = %e,
                    "could not update the TTL check after registering; the heartbeat will retry"),
            }
        }
        Ok(())
    }

    async fn deregister(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(task) = state.task.take() {
            // Between rounds this returns at once (the loop's gate is closed: it can send
            // nothing more); with a round in flight, the round is cancelled and waited for.
            // (A request the round had already written may still reach the agent: a known
            // limit.)
            task.stop().await;
        }
        if !state.registered {
            return Ok(());
        }
        let body = &self.shared.body;
        // Every agent the registration may have reached (with fallback agents, a move
        // registered it again at the next one), and the current one. The heartbeat task is
        // stopped, so nothing registers it anywhere meanwhile. An agent that cannot be
        // reached stays in the set, `deregister` fails naming it, and a retry goes there
        // again: a registration left at an agent that comes back would be restored from its
        // data directory and served.
        let mut agents: Vec<usize> = self.shared.agents().iter().copied().collect();
        let current = self.shared.client.current_agent();
        if !agents.contains(&current) {
            agents.push(current);
        }
        let mut failed = Vec::new();
        for agent in agents {
            match self.shared.client.deregister_at(agent, &body.id).await {
                Ok(_) => {
                    self.shared.agents().remove(&agent);
                }
                Err(e) => failed.push((agent, e)),
            }
        }
        if failed.is_empty() {
            state.registered = false;
            tracing::info!(backend = BACKEND, service = %body.name, tags = ?body.tags,
                address = %self.shared.registration.instance.addr(), action = "deregister");
            return Ok(());
        }
        for (agent, e) in &failed {
            tracing::warn!(backend = BACKEND, service = %body.name, id = %body.id,
                agent = %self.shared.client.agent_address(*agent), error = %e,
                "deregister failed there; heartbeats stopped, call deregister again to retry");
        }
        if failed.len() == 1 && self.shared.client.agents() == 1 {
            return Err(failed.remove(0).1);
        }
        let not_reached: Vec<String> = failed
            .iter()
            .map(|(agent, e)| format!("{} ({e})", self.shared.client.agent_address(*agent)))
            .collect();
        Err(sd_core::Error::unavailable(
            BACKEND,
            format!(
                "deregistration of {:?}: not reached at {}; the registration may still be held \
                 there: call deregister again",
                body.id,
                not_reached.join(", ")
            ),
        ))
    }

    fn registration(&self) -> &Registration {
        &self.shared.registration
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;
    use sd_core::Instance;
    use serde_json::json;

    fn body(r: Registration) -> serde_json::Value {
        serde_json::to_value(build_body(&r).unwrap()).unwrap()
    }

    #[test]
    fn ttl_check_is_registered_passing_with_deregister_after() {
        let inst = Instance::builder("10.0.0.1", 8080)
            .id("web-1")
            .tag("v2")
            .meta("zone", "a")
            .meta(crate::META_NODE, "ignored")
            .weight(5)
            .build();
        let b = body(
            Registration::new("web", inst)
                .check(HealthCheck::Ttl(Duration::from_secs(10)))
                .deregister_critical_after(Duration::from_secs(90)),
        );
        assert_eq!(
            b,
            json!({
                "ID": "web-1", "Name": "web", "Tags": ["v2"], "Address": "10.0.0.1", "Port": 8080,
                "Meta": {"zone": "a"}, "Weights": {"Passing": 5, "Warning": 5},
                "Check": {"CheckID": "service:web-1", "Name": "Service 'web' check",
                          "Status": "passing", "TTL": "10000ms",
                          "DeregisterCriticalServiceAfter": "90000ms"}
            })
        );
    }

    #[test]
    fn http_tcp_grpc_checks() {
        let inst = || Instance::new("127.0.0.1", 9000);
        let b = body(Registration::new("api", inst()).check(HealthCheck::Http {
            url: "http://127.0.0.1:9000/health".into(),
            interval: Duration::from_secs(5),
        }));
        assert_eq!(b["ID"], "api-127.0.0.1-9000");
        assert_eq!(b["Check"]["HTTP"], "http://127.0.0.1:9000/health");
        assert_eq!(b["Check"]["Interval"], "5000ms");
        assert!(b["Check"].get("Status").is_none());
        let b = body(Registration::new("api", inst()).check(HealthCheck::Tcp {
            addr: "127.0.0.1:9000".into(),
            interval: Duration::from_millis(1500),
        }));
        assert_eq!(b["Check"]["TCP"], "127.0.0.1:9000");
        assert_eq!(b["Check"]["Interval"], "1500ms");
        let b = body(Registration::new("api", inst()).check(HealthCheck::Grpc {
            target: "127.0.0.1:9000/api".into(),
            interval: Duration::from_secs(1),
        }));
        assert_eq!(b["Check"]["GRPC"], "127.0.0.1:9000/api");
        let b = body(Registration::new("api", inst()));
        assert!(b.get("Check").is_none());
    }

    #[test]
    fn invalid_registrations_are_config_errors() {
        let client = Client::new(ClientConfig::new("127.0.0.1:1")).unwrap();
        for (r, needle) in [
            (
                Registration::new("web", Instance::builder("h", 1).weight(0).build()),
                "weight 0",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    .deregister_critical_after(Duration::from_secs(60)),
                "needs a health check",
            ),
            (
                Registration::new("", Instance::new("h", 1)),
                "empty service",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    .check(HealthCheck::Ttl(Duration::from_millis(10))),
                "TTL",
            ),
        ] {
            let err = ConsulRegistrar::new(client.clone(), r).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn heartbeat_period_is_a_third_of_the_ttl() {
        let client = Client::new(ClientConfig::new("127.0.0.1:1")).unwrap();
        let r = ConsulRegistrar::new(
            client.clone(),
            Registration::new("web", Instance::new("h", 1))
                .check(HealthCheck::Ttl(Duration::from_secs(9))),
        )
        .unwrap();
        assert_eq!(r.current_period(), Duration::from_secs(3));
        assert_eq!(r.ttl_check_id(), Some("service:web-h-1"));
        let r =
            ConsulRegistrar::new(client, Registration::new("web", Instance::new("h", 1))).unwrap();
        assert_eq!(r.current_period(), DEFAULT_RECHECK);
        assert_eq!(r.ttl_check_id(), None);
    }

    #[tokio::test]
    async fn deregister_without_register_sends_nothing_and_register_errors_are_returned() {
        // Port 1 on loopback refuses connections: a real transport error, no fake.
        let client =
            Client::new(ClientConfig::new("127.0.0.1:1").timeout(Duration::from_secs(2))).unwrap();
        let r =
            ConsulRegistrar::new(client, Registration::new("web", Instance::new("h", 1))).unwrap();
        r.deregister().await.unwrap();
        let err = r.register().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("service registration"), "{err}");
        // Nothing was registered, so deregistering is still a no-op.
        r.deregister().await.unwrap();
    }
}
