//! The registrar: register, renew the lease, re-register after a 404, change the status,
//! cancel.
//!
//! [`EurekaRegistrar::register`] sends `POST /apps/{APP}` with a complete InstanceInfo
//! (instanceId, app, hostName, ipAddr, `port` enabled and `securePort` disabled, status,
//! vipAddress and secureVipAddress, leaseInfo, metadata, dataCenterInfo `MyOwn`), then
//! renews the lease (`PUT /apps/{APP}/{id}`) every renewal interval on sd-core's shared
//! keep-alive loop until [`deregister`](EurekaRegistrar::deregister):
//!
//! - a renewal answered **404** means the server no longer knows the instance (it
//!   restarted, or evicted the instance during a partition): the registrar registers again
//!   at once, in the same round, with its current status. (go-kit, EU-8, also re-registers
//!   after a 404, but only at the next heartbeat tick and with no backoff on failure.)
//! - a renewal that fails (server unreachable, 5xx) is retried on the next server (see
//!   [`Client`]) and then with a backoff from 100 ms up to the interval.
//!
//! The lease is the registration's TTL: with [`HealthCheck::Ttl`]`(ttl)` the lease
//! duration (`leaseInfo.durationInSecs`) is the TTL rounded up to whole seconds and the
//! registrar renews every third of it; without a check, the registry's `lease` and `renew`
//! options apply (90 s and 30 s by default, Eureka's own). Other checks (HTTP, TCP, gRPC)
//! cannot be expressed in Eureka and are refused. Note that the server evicts an instance
//! only after about **twice** the lease duration without renewal, plus its eviction
//! interval (a quirk of Eureka's `Lease.isExpired`).
//!
//! [`set_status`](EurekaRegistrar::set_status) changes the status through the status
//! endpoint (`PUT /apps/{APP}/{id}/status?value=OUT_OF_SERVICE`), so an instance can take
//! itself out of rotation (e.g. before shutdown) while staying registered; renewals go on.
//!
//! Both [`register`](EurekaRegistrar::register) and
//! [`deregister`](EurekaRegistrar::deregister) are idempotent: registering again re-sends
//! the registration and keeps the one renewal task; deregistering when not registered
//! sends nothing. Dropping the registrar stops the renewals only, so the server evicts the
//! instance after about twice its lease, as after a crash.

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

use crate::client::{Client, InstanceUpdate, BACKEND};
use crate::instancer::{META_HEALTH, META_SECURE, META_STATUS, META_TAGS};

/// Eureka's default lease duration (`leaseInfo.durationInSecs`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(90);

/// Eureka's default renewal interval (`leaseInfo.renewalIntervalInSecs`).
pub const DEFAULT_RENEW: Duration = Duration::from_secs(30);

/// An instance status in Eureka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Ready for traffic.
    Up,
    /// Failing.
    Down,
    /// Starting, not ready for traffic yet.
    Starting,
    /// Taken out of rotation on purpose (maintenance, draining before shutdown).
    OutOfService,
}

impl Status {
    /// The status as Eureka spells it: `UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
        }
    }

    /// The status a registration announces for the instance's [`Health`]:
    ///
    /// | [`Health`] | status | read back as |
    /// |---|---|---|
    /// | `Passing` | `UP` | `Passing` |
    /// | `Warning` | `OUT_OF_SERVICE`, with metadata [`META_HEALTH`]` = warning` | `Warning` by sdkit (Eureka has no "serving with a warning"; its own clients skip it) |
    /// | `Critical` | `DOWN` | `Critical` |
    /// | `Unknown` | `STARTING` | `Unknown` (`UNKNOWN` would make the server refuse renewals) |
    pub fn for_health(health: Health) -> Self {
        match health {
            Health::Passing => Status::Up,
            Health::Warning => Status::OutOfService,
            Health::Critical => Status::Down,
            // `Health` is non-exhaustive: a state this version does not know is not "up".
            _ => Status::Starting,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lease a registration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How often the registrar renews (`leaseInfo.renewalIntervalInSecs`, at least 1 s on
    /// the wire).
    pub renew: Duration,
    /// How long the server keeps the instance without a renewal
    /// (`leaseInfo.durationInSecs`, whole seconds).
    pub duration: Duration,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            renew: DEFAULT_RENEW,
            duration: DEFAULT_LEASE,
        }
    }
}

impl Lease {
    /// The lease for `registration`: from its TTL check if it has one, else `default`.
    /// Fails for checks Eureka cannot run and for a renewal interval not shorter than the
    /// lease.
    pub fn for_registration(registration: &Registration, default: Lease) -> Result<Lease> {
        let lease = match &registration.check {
            None => default,
            Some(HealthCheck::Ttl(ttl)) => Lease {
                renew: KeepAliveConfig::period_for_ttl(*ttl),
                duration: Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)),
            },
            Some(other) => {
                return Err(Error::config(format!(
                    "registration of {:?}: Eureka cannot run the check {other:?}; it only knows \
                     leases renewed by the registrar (HealthCheck::Ttl, or no check)",
                    registration.service
                )))
            }
        };
        if lease.duration < Duration::from_secs(1) || lease.renew.is_zero() {
            return Err(Error::config(format!(
                "registration of {:?}: lease {:?} / renewal {:?}: the lease must be at least 1s and the renewal interval above 0",
                registration.service, lease.duration, lease.renew
            )));
        }
        if lease.renew >= lease.duration {
            return Err(Error::config(format!(
                "registration of {:?}: renewal interval {:?} must be shorter than the lease {:?}",
                registration.service, lease.renew, lease.duration
            )));
        }
        Ok(lease)
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
struct PortBody {
    #[serde(rename = "$")]
    port: u16,
    #[serde(rename = "@enabled")]
    enabled: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct LeaseBody {
    renewal_interval_in_secs: u64,
    duration_in_secs: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
struct DataCenterBody {
    #[serde(rename = "@class")]
    class: &'static str,
    name: &'static str,
}

/// The InstanceInfo of `POST /apps/{APP}`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct InstanceBody {
    instance_id: String,
    app: String,
    host_name: String,
    ip_addr: String,
    status: &'static str,
    port: PortBody,
    secure_port: PortBody,
    vip_address: String,
    secure_vip_address: String,
    lease_info: LeaseBody,
    metadata: BTreeMap<String, String>,
    data_center_info: DataCenterBody,
}

fn build_body(r: &Registration, lease: Lease, vip: &str) -> Result<InstanceBody> {
    r.validate()?;
    if r.deregister_critical_after.is_some() {
        return Err(Error::config(format!(
            "registration of {:?}: Eureka has no deregister_critical_after; the server evicts \
             an instance whose lease is not renewed (use HealthCheck::Ttl for the lease)",
            r.service
        )));
    }
    if let Some(k) = r
        .instance
        .meta()
        .keys()
        .find(|k| [META_TAGS, META_HEALTH, "@class"].contains(k))
    {
        return Err(Error::config(format!(
            "registration of {:?}: metadata key {k:?} is reserved (sdkit carries the tags in \
             {META_TAGS} and the Warning health in {META_HEALTH}; @class is the codec's)",
            r.service
        )));
    }
    let mut metadata: BTreeMap<String, String> = r
        .instance
        .meta()
        .iter()
        // The two keys sdkit's instancer adds when reading (eureka.status, eureka.secure)
        // describe the server's view and are not sent back, so an instance read from an
        // instancer can be registered again; every other key is sent as it is.
        .filter(|(k, _)| *k != META_STATUS && *k != META_SECURE)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if !r.instance.tags().is_empty() {
        let tags = serde_json::to_string(r.instance.tags()).unwrap_or_default();
        metadata.insert(META_TAGS.to_string(), tags);
    }
    if r.instance.health() == Health::Warning {
        metadata.insert(META_HEALTH.to_string(), "warning".to_string());
    }
    Ok(InstanceBody {
        instance_id: r.instance_id(),
        app: r.service.to_uppercase(),
        host_name: r.instance.host().to_string(),
        ip_addr: r.instance.host().to_string(),
        status: Status::for_health(r.instance.health()).as_str(),
        port: PortBody {
            port: r.instance.port(),
            enabled: "true",
        },
        secure_port: PortBody {
            port: 443,
            enabled: "false",
        },
        vip_address: vip.to_string(),
        secure_vip_address: vip.to_string(),
        lease_info: LeaseBody {
            renewal_interval_in_secs: lease.renew.as_secs().max(1),
            duration_in_secs: lease.duration.as_secs(),
        },
        metadata,
        data_center_info: DataCenterBody {
            class: "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            name: "MyOwn",
        },
    })
}

struct Shared {
    client: Client,
    registration: Registration,
    body: InstanceBody,
    /// The status to announce (the registration's, then whatever `set_status` set), and
    /// whether the body still carries the Warning marker ([`META_HEALTH`]): only until the
    /// first `set_status`, so a drained instance reads as drained.
    status: std::sync::Mutex<(Status, bool)>,
    reregistrations: watch::Sender<u64>,
}

impl Shared {
    fn current_body(&self) -> InstanceBody {
        let mut body = self.body.clone();
        let (status, marked) = *self.status.lock().unwrap_or_else(|p| p.into_inner());
        body.status = status.as_str();
        if !marked {
            body.metadata.remove(META_HEALTH);
        }
        body
    }

    fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Registers, then sets the status through the status endpoint: when a lease for the id
    /// already exists (a restarted process, a registration not yet expired), Eureka keeps
    /// that lease's status, or a status override set earlier, over the one in the new
    /// registration (its `LeaseExistsRule` and `OverrideExistsRule`), so an instance
    /// registered again as `OUT_OF_SERVICE` would stay `UP` (and the other way round).
    async fn register(&self) -> Result<()> {
        let body = self.current_body();
        self.client.register(&self.body.app, &body).await?;
        match self
            .client
            .set_status(&self.body.app, &self.body.instance_id, body.status)
            .await?
        {
            InstanceUpdate::Updated => Ok(()),
            InstanceUpdate::Unknown => Err(Error::unavailable(
                BACKEND,
                format!(
                    "the server answered 404 to the status of {}/{} right after registering it",
                    self.body.app, self.body.instance_id
                ),
            )),
        }
    }

    async fn reregister(&self, why: &str) -> Result<()> {
        tracing::warn!(backend = BACKEND, app = %self.body.app, id = %self.body.instance_id,
            why, "the server does not know the instance; registering again");
        self.register().await?;
        self.reregistrations.send_modify(|n| *n += 1);
        sd_core::observe::reregistered(BACKEND, &self.registration.service);
        tracing::info!(backend = BACKEND, app = %self.body.app, id = %self.body.instance_id, action = "reregister");
        Ok(())
    }
}

/// One round of sd-core's shared keep-alive loop ([`spawn_keepalive`]: every renewal
/// interval, retries backing off from 100 ms up to the interval, cancelled by
/// `deregister`).
#[async_trait]
impl KeepAlive for Shared {
    /// Renews the lease; registers again at once when the server answers 404.
    async fn keep_alive(&self) -> Result<()> {
        let outcome = self
            .client
            .renew(&self.body.app, &self.body.instance_id)
            .await?;
        tracing::trace!(backend = BACKEND, id = %self.body.instance_id, ?outcome, "renewal");
        if outcome == InstanceUpdate::Unknown {
            self.reregister("renewal answered 404").await?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    registered: bool,
    task: Option<KeepAliveTask>,
}

/// Registers one instance with Eureka and keeps its lease renewed.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use std::time::Duration;
/// use sd_eureka::{Client, ClientConfig, EurekaRegistrar, Lease, Status};
/// use sd_core::{HealthCheck, Instance, Registrar, Registration};
///
/// let client = Client::new(ClientConfig::new(["http://127.0.0.1:8761/eureka"]))?;
/// let registrar = EurekaRegistrar::new(
///     client,
///     Registration::new("web", Instance::builder("10.0.0.7", 8080).id("web-1").build())
///         .check(HealthCheck::Ttl(Duration::from_secs(30))),
///     Lease::default(),
///     None,
/// )?;
/// registrar.register().await?;                        // UP; renewed every 10 s
/// // ... serve ...
/// registrar.set_status(Status::OutOfService).await?;  // drained by every client
/// registrar.deregister().await?;                      // on graceful shutdown
/// # Ok(()) }
/// ```
pub struct EurekaRegistrar {
    shared: Arc<Shared>,
    lease: Lease,
    state: Mutex<State>,
}

impl fmt::Debug for EurekaRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EurekaRegistrar")
            .field("app", &self.shared.body.app)
            .field("id", &self.shared.body.instance_id)
            .field("address", &self.shared.registration.instance.addr())
            .field("status", &self.shared.status())
            .field("lease", &self.lease)
            .finish()
    }
}

impl EurekaRegistrar {
    /// A registrar for `registration` under app `SERVICE` (upper-cased) with VIP address
    /// `vip` (default: the service name as given). The lease comes from the registration's
    /// TTL check, else from `default_lease`. Fails with [`Error::Config`] when the
    /// registration is invalid (see [`Registration::validate`]), uses a reserved metadata
    /// key, or asks for a check Eureka cannot run. Nothing is sent yet.
    pub fn new(
        client: Client,
        registration: Registration,
        default_lease: Lease,
        vip: Option<&str>,
    ) -> Result<Self> {
        let lease = Lease::for_registration(&registration, default_lease)?;
        let body = build_body(&registration, lease, vip.unwrap_or(&registration.service))?;
        let status = Status::for_health(registration.instance.health());
        let marked = body.metadata.contains_key(META_HEALTH);
        Ok(EurekaRegistrar {
            shared: Arc::new(Shared {
                client,
                registration,
                body,
                status: std::sync::Mutex::new((status, marked)),
                reregistrations: watch::channel(0).0,
            }),
            lease,
            state: Mutex::new(State::default()),
        })
    }

    /// The lease asked for (duration and renewal interval).
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The app name registered under (the service name upper-cased).
    pub fn app(&self) -> &str {
        &self.shared.body.app
    }

    /// The instance id registered.
    pub fn instance_id(&self) -> &str {
        &self.shared.body.instance_id
    }

    /// The status announced.
    pub fn status(&self) -> Status {
        self.shared.status()
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

    /// The InstanceInfo sent in `POST /apps/{APP}` (inside `{"instance": ...}`).
    pub fn registration_body(&self) -> serde_json::Value {
        serde_json::to_value(self.shared.current_body()).unwrap_or_default()
    }

    /// Changes the instance's status on the server (`PUT .../status?value=`): e.g.
    /// [`Status::OutOfService`] to be drained by every client while staying registered,
    /// [`Status::Up`] to come back. Renewals go on. When not registered, the status is
    /// only remembered for the next registration; when the server has lost the
    /// registration, it is registered again with the new status.
    pub async fn set_status(&self, status: Status) -> Result<()> {
        let state = self.state.lock().await;
        let marked = std::mem::replace(
            &mut *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()),
            (status, false),
        )
        .1;
        if !state.registered {
            return Ok(());
        }
        let body = &self.shared.body;
        if marked {
            // The Warning marker would make an OUT_OF_SERVICE instance read as Warning; it
            // is overwritten before the status changes (Eureka cannot delete a metadata key).
            let cleared = self
                .shared
                .client
                .set_metadata(&body.app, &body.instance_id, META_HEALTH, "none")
                .await;
            match cleared {
                Ok(InstanceUpdate::Updated) => {}
                Ok(InstanceUpdate::Unknown) => {
                    return self.shared.reregister("metadata change answered 404").await
                }
                Err(e) => {
                    // Keep the marker pending so a retry clears it.
                    self.shared
                        .status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .1 = true;
                    return Err(e);
                }
            }
        }
        match self
            .shared
            .client
            .set_status(&body.app, &body.instance_id, status.as_str())
            .await?
        {
            InstanceUpdate::Updated => {
                tracing::info!(backend = BACKEND, app = %body.app, id = %body.instance_id,
                    %status, action = "status");
                Ok(())
            }
            InstanceUpdate::Unknown => self.shared.reregister("status change answered 404").await,
        }
    }

    fn spawn_renewals(&self) -> KeepAliveTask {
        let config = KeepAliveConfig::new(
            BACKEND,
            format!("{}/{}", self.shared.body.app, self.shared.body.instance_id),
            self.lease.renew,
        )
        .service(self.shared.registration.service.clone());
        spawn_keepalive(self.shared.clone(), config)
    }
}

#[async_trait]
impl Registrar for EurekaRegistrar {
    async fn register(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let body = &self.shared.body;
        let addr = self.shared.registration.instance.addr();
        if let Err(e) = self.shared.register().await {
            tracing::warn!(backend = BACKEND, app = %body.app, id = %body.instance_id,
                address = %addr, error = %e, "register failed");
            return Err(e);
        }
        state.registered = true;
        if state.task.as_ref().map_or(true, KeepAliveTask::is_finished) {
            state.task = Some(self.spawn_renewals());
        }
        tracing::info!(backend = BACKEND, app = %body.app, id = %body.instance_id,
            address = %addr, status = %self.shared.status(), action = "register");
        Ok(())
    }

    async fn deregister(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(task) = state.task.take() {
            task.stop().await;
        }
        if !state.registered {
            return Ok(());
        }
        let body = &self.shared.body;
        match self
            .shared
            .client
            .cancel(&body.app, &body.instance_id)
            .await
        {
            Ok(outcome) => {
                state.registered = false;
                tracing::info!(backend = BACKEND, app = %body.app, id = %body.instance_id,
                    already_gone = outcome == InstanceUpdate::Unknown, action = "deregister");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(backend = BACKEND, app = %body.app, id = %body.instance_id,
                    error = %e, "deregister failed; renewals stopped");
                Err(e)
            }
        }
    }

    fn registration(&self) -> &Registration {
        &self.shared.registration
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;
    use sd_core::Instance;
    use serde_json::json;

    fn client() -> Client {
        Client::new(
            ClientConfig::new(["http://127.0.0.1:1/eureka"]).timeout(Duration::from_secs(2)),
        )
        .unwrap()
    }

    #[test]
    fn the_body_is_a_complete_instance_info() {
        let r = EurekaRegistrar::new(
            client(),
            Registration::new(
                "web",
                Instance::builder("10.0.0.7", 8080)
                    .id("web-1")
                    .tag("v2")
                    .meta("zone", "a")
                    .meta("eureka.status", "UP")
                    .build(),
            )
            .check(HealthCheck::Ttl(Duration::from_millis(2500))),
            Lease::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            r.registration_body(),
            json!({
                "instanceId": "web-1", "app": "WEB", "hostName": "10.0.0.7", "ipAddr": "10.0.0.7",
                "status": "UP",
                "port": {"$": 8080, "@enabled": "true"},
                "securePort": {"$": 443, "@enabled": "false"},
                "vipAddress": "web", "secureVipAddress": "web",
                "leaseInfo": {"renewalIntervalInSecs": 1, "durationInSecs": 3},
                "metadata": {"zone": "a", "sdkit.tags": "[\"v2\"]"},
                "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            })
        );
        assert_eq!(r.app(), "WEB");
        assert_eq!(r.instance_id(), "web-1");
        assert_eq!(
            r.lease().renew,
            Duration::from_millis(833) + Duration::from_nanos(333_333)
        );
        assert_eq!(r.status(), Status::Up);
    }

    #[test]
    fn leases_statuses_and_vip() {
        let reg = |h: Health| Registration::new("web", Instance::builder("h", 1).health(h).build());
        let r = EurekaRegistrar::new(
            client(),
            reg(Health::Passing),
            Lease::default(),
            Some("web.vip"),
        )
        .unwrap();
        assert_eq!(r.lease(), Lease::default());
        assert_eq!(r.registration_body()["vipAddress"], "web.vip");
        assert_eq!(r.registration_body()["leaseInfo"]["durationInSecs"], 90);
        assert_eq!(r.instance_id(), "web-h-1");
        for (h, s) in [
            (Health::Warning, "OUT_OF_SERVICE"),
            (Health::Critical, "DOWN"),
            (Health::Unknown, "STARTING"),
        ] {
            let r = EurekaRegistrar::new(client(), reg(h), Lease::default(), None).unwrap();
            let body = r.registration_body();
            assert_eq!(body["status"], s);
            assert_eq!(
                body["metadata"].get("sdkit.health").is_some(),
                h == Health::Warning
            );
        }
    }

    #[test]
    fn metadata_is_sent_as_given_except_the_keys_the_instancer_adds() {
        let r = Registration::new(
            "web",
            Instance::builder("h", 1)
                .meta("eureka.zone", "a")
                .meta("zone", "b")
                .meta(META_STATUS, "UP")
                .meta(META_SECURE, "true")
                .build(),
        );
        let body = build_body(&r, Lease::default(), "web").unwrap();
        let keys: Vec<&str> = body.metadata.keys().map(String::as_str).collect();
        assert_eq!(keys, ["eureka.zone", "zone"]);
    }

    #[test]
    fn bad_registrations_say_what_to_fix() {
        let inst = || Instance::builder("h", 1).build();
        for (r, lease, needle) in [
            (
                Registration::new("web", inst()).check(HealthCheck::Http {
                    url: "http://h/health".into(),
                    interval: Duration::from_secs(1),
                }),
                Lease::default(),
                "only knows leases",
            ),
            (
                Registration::new("web", inst()),
                Lease {
                    renew: Duration::from_secs(90),
                    duration: Duration::from_secs(90),
                },
                "must be shorter than the lease",
            ),
            (
                Registration::new(
                    "web",
                    Instance::builder("h", 1).meta("sdkit.tags", "x").build(),
                ),
                Lease::default(),
                "is reserved",
            ),
            (
                Registration::new(
                    "web",
                    Instance::builder("h", 1)
                        .meta("sdkit.health", "warning")
                        .build(),
                ),
                Lease::default(),
                "is reserved",
            ),
            (
                Registration::new("web", Instance::builder("h", 1).meta("@class", "x").build()),
                Lease::default(),
                "is reserved",
            ),
            (
                Registration::new("", inst()),
                Lease::default(),
                "empty service name",
            ),
            (
                Registration::new("web", inst())
                    .check(HealthCheck::Ttl(Duration::from_secs(10)))
                    .deregister_critical_after(Duration::from_secs(90)),
                Lease::default(),
                "no deregister_critical_after",
            ),
            (
                Registration::new("web", Instance::new("h", 0)),
                Lease::default(),
                "port 0",
            ),
        ] {
            let err = EurekaRegistrar::new(client(), r, lease, None).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[tokio::test]
    async fn deregister_without_register_sends_nothing_and_errors_are_returned() {
        let r = EurekaRegistrar::new(
            client(),
            Registration::new("web", Instance::new("h", 1)),
            Lease::default(),
            None,
        )
        .unwrap();
        r.deregister().await.unwrap();
        // Not registered: remembered, nothing sent.
        r.set_status(Status::OutOfService).await.unwrap();
        assert_eq!(r.registration_body()["status"], "OUT_OF_SERVICE");
        let err = r.register().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("registration in app WEB"), "{err}");
        r.deregister().await.unwrap();
    }
}
