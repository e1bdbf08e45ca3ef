//! The registrar: a lease, a put with the lease, keep-alive, re-registration.
//!
//! [`EtcdRegistrar::register`] grants a lease of the registration's TTL (whole seconds,
//! rounded **up**: etcd leases have a one-second granularity, and go-kit truncated, E3-4.5),
//! puts `<prefix>/<service>/<id>` with the lease, and keeps a background task running
//! (sd-core's [`spawn_keepalive`], every third of the TTL) until
//! [`deregister`](EtcdRegistrar::deregister):
//!
//! - each round renews the lease once and checks that the key is still there with that lease;
//! - when etcd no longer knows the lease (it expired while the process or the server was
//!   frozen, or the server restarted without its data) or the key is gone, the registrar
//!   grants a new lease and puts the key again. go-kit never does (issue kit#1043);
//! - a failed round is logged and retried with a backoff from 100 ms up to the period.
//!
//! Every registration is leased, as in go-kit (E3-4.4): without a
//! [`HealthCheck::Ttl`] the registry's default TTL is used (10 s, the `ttl` URL option).
//! HTTP, TCP and gRPC checks cannot be expressed in etcd and are refused at construction.
//!
//! Both calls are idempotent. Registering again grants a fresh lease, moves the key to it and
//! revokes the old one, with no keep-alive round running meanwhile (a round and the swap
//! would otherwise race and could delete the key); deregistering deletes the key and revokes the lease (go-kit only
//! stopped the keep-alive and left the key to expire, E3-5), and does nothing when not
//! registered. Dropping the registrar stops the keep-alive only, so the key expires with its
//! lease, as after a crash.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::{
    spawn_keepalive, Error, HealthCheck, KeepAlive, KeepAliveConfig, KeepAliveTask, Registrar,
    Registration, Result,
};
use tokio::sync::{watch, Mutex};

use crate::client::{Client, KeepAliveStream, BACKEND};
use crate::instancer::ValueJson;

/// The TTL of a registration without a TTL check (go-kit's `NewTTLOption(3s, 10s)`, E3-4.4).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The longest lease etcd grants (its `MaxLeaseTTL`, 9 000 000 000 s); a longer TTL is
/// refused at construction.
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// How the registrar writes the instance value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueFormat {
    /// sdkit's JSON with the whole instance (address, id, tags, metadata, weight, health).
    #[default]
    Json,
    /// go-kit's plain instance string `host:port` (E3-9), for go-kit instancers to read.
    /// Tags, metadata, weight and health are not stored.
    Plain,
}

/// The lease TTL in whole seconds, rounded up (a 1.5 s TTL is a 2 s lease).
pub fn lease_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The value written for `r` in `format`.
pub(crate) fn encode_value(r: &Registration, id: &str, format: ValueFormat) -> Vec<u8> {
    match format {
        ValueFormat::Plain => r.instance.addr().as_bytes().to_vec(),
        ValueFormat::Json => {
            let i = &r.instance;
            let v = ValueJson {
                host: i.host().to_string(),
                port: i64::from(i.port()),
                id: id.to_string(),
                tags: i.tags().to_vec(),
                meta: i.meta().to_map(),
                weight: i.weight(),
                health: i.health().as_str().to_string(),
            };
            serde_json::to_vec(&v).unwrap_or_default()
        }
    }
}

/// The key's presence is checked every this many keep-alive rounds (rounds come every third
/// of the TTL, so about once per TTL), the first time on the first round.
const KEY_CHECK_EVERY: u64 = 3;

struct Shared {
    client: Client,
    registration: Registration,
    id: String,
    key: String,
    value: Vec<u8>,
    ttl_secs: i64,
    /// The lease the key is attached to (0: none yet).
    lease: std::sync::Mutex<i64>,
    /// The open keep-alive stream (of the current lease, or stale) and how many rounds it
    /// has renewed.
    keeper: Mutex<Option<(KeepAliveStream, u64)>>,
    /// Held by a whole keep-alive round and by `register()`'s lease swap, so the two never
    /// interleave: a round that read the old lease could otherwise see the key "on another
    /// lease" (a false loss) and put it on a lease of its own, which `register()` then
    /// revoked as "the old one", deleting the key.
    lease_ops: Mutex<()>,
    reregistrations: watch::Sender<u64>,
}

impl Shared {
    /// Renews `lease` on the open stream (opening one when there is none, it is for another
    /// lease, or it broke). Returns whether etcd still knows the lease, and the round number
    /// on this stream (0 for the renewal that opened it).
    async fn renew(&self, lease: i64) -> Result<(bool, u64)> {
        if lease == 0 {
            return Ok((false, 0));
        }
        let mut keeper = self.keeper.lock().await;
        if let Some((stream, rounds)) = keeper.as_mut().filter(|(k, _)| k.lease() == lease) {
            *rounds += 1;
            let n = *rounds;
            match stream.renew(self.client.config().timeout).await {
                Ok(alive) => return Ok((alive, n)),
                Err(e) => tracing::debug!(backend = BACKEND, key = %self.key, error = %e,
                    "keep-alive stream broken; opening another"),
            }
        }
        *keeper = None;
        match self.client.open_keep_alive(lease).await? {
            Some(stream) => {
                *keeper = Some((stream, 0));
                Ok((true, 0))
            }
            None => Ok((false, 0)),
        }
    }

    fn lease(&self) -> i64 {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_lease(&self, id: i64) -> i64 {
        std::mem::replace(
            &mut *self.lease.lock().unwrap_or_else(|p| p.into_inner()),
            id,
        )
    }

    /// Grants a new lease, puts the key with it, and revokes the lease it replaces.
    ///
    /// When the new lease expired before the put reached etcd (a TTL of a second or two on
    /// an overloaded server), grants again, up to three times.
    async fn put_with_new_lease(&self) -> Result<i64> {
        let mut attempt = 0;
        let lease = loop {
            attempt += 1;
            let lease = self.client.grant(self.ttl_secs).await?;
            match self.client.put(&self.key, &self.value, lease).await {
                Ok(()) => break lease,
                Err(e) if attempt < 3 && e.to_string().contains("requested lease not found") => {
                    tracing::debug!(backend = BACKEND, key = %self.key, lease,
                        "the lease expired before the put; granting another");
                }
                Err(e) => {
                    // Best effort: the lease would expire on its own anyway.
                    let _ = self.client.revoke(lease).await;
                    return Err(e);
                }
            }
        };
        let old = self.set_lease(lease);
        if old != 0 && old != lease {
            if let Err(e) = self.client.revoke(old).await {
                tracing::debug!(backend = BACKEND, key = %self.key, lease = old, error = %e,
                    "could not revoke the replaced lease; it will expire");
            }
        }
        Ok(lease)
    }
}

/// One round of sd-core's shared keep-alive loop ([`spawn_keepalive`]: every period, retries
/// backing off from 100 ms up to the period, cancelled by `deregister`).
#[async_trait]
impl KeepAlive for Shared {
    /// Renews the lease on one open stream; once per TTL also checks that the key is still
    /// there with the lease. Registers again when etcd lost the lease or the key.
    async fn keep_alive(&self) -> Result<()> {
        let _round = self.lease_ops.lock().await;
        let lease = self.lease();
        let (alive, rounds) = self.renew(lease).await?;
        let lost = if !alive {
            Some("etcd no longer knows the lease (expired, or the server lost its data)")
        } else if rounds % KEY_CHECK_EVERY == 0
            && self.client.key_lease(&self.key).await? != Some(lease)
        {
            Some("the key is gone or was overwritten")
        } else {
            None
        };
        tracing::trace!(backend = BACKEND, key = %self.key, lease, alive, "keep-alive");
        if let Some(why) = lost {
            tracing::warn!(backend = BACKEND, key = %self.key, lease, reason = why,
                "registration lost; registering again");
            let lease = self.put_with_new_lease().await?;
            self.reregistrations.send_modify(|n| *n += 1);
            sd_core::observe::reregistered(BACKEND, &self.registration.service);
            tracing::info!(backend = BACKEND, key = %self.key, lease, action = "reregister");
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    registered: bool,
    task: Option<KeepAliveTask>,
}

/// Registers one instance in etcd under a lease and keeps it registered.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use std::time::Duration;
/// use sd_core::{HealthCheck, Instance, Registrar, Registration};
/// use sd_etcdv3::{Client, ClientConfig, EtcdRegistrar, ValueFormat};
///
/// let client = Client::new(ClientConfig::new(["127.0.0.1:2379"]))?;
/// let registrar = EtcdRegistrar::new(
///     client,
///     Registration::new("users", Instance::builder("10.0.0.5", 8080).id("users-1").tag("v2").build())
///         .check(HealthCheck::Ttl(Duration::from_secs(10))),
///     ValueFormat::Json,
/// )?;
/// registrar.register().await?;   // /services/users/users-1, leased for 10 s, renewed every ~3.3 s
/// // ... serve ...
/// registrar.deregister().await?; // deletes the key and revokes the lease
/// # Ok(()) }
/// ```
pub struct EtcdRegistrar {
    shared: Arc<Shared>,
    period: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for EtcdRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistrar")
            .field("key", &self.shared.key)
            .field("address", &self.shared.registration.instance.addr())
            .field("ttl_secs", &self.shared.ttl_secs)
            .field("period", &self.period)
            .finish()
    }
}

impl EtcdRegistrar {
    /// A registrar for `registration` with the default TTL ([`DEFAULT_TTL`]) when it has no
    /// TTL check. Fails with [`Error::Config`] when the registration is invalid (see
    /// [`Registration::validate`]) or asks for an HTTP, TCP or gRPC check. Nothing is sent yet.
    pub fn new(client: Client, registration: Registration, format: ValueFormat) -> Result<Self> {
        Self::with_default_ttl(client, registration, format, DEFAULT_TTL)
    }

    /// Like [`new`](Self::new), with `default_ttl` for registrations without a TTL check.
    pub fn with_default_ttl(
        client: Client,
        registration: Registration,
        format: ValueFormat,
        default_ttl: Duration,
    ) -> Result<Self> {
        registration.validate()?;
        let ttl = match &registration.check {
            None => default_ttl,
            Some(HealthCheck::Ttl(ttl)) => *ttl,
            Some(other) => {
                return Err(Error::config(format!(
                    "registration of {:?}: etcd keeps registrations alive with a lease; \
                     use HealthCheck::Ttl or no check, not {other:?}",
                    registration.service
                )))
            }
        };
        if ttl < Duration::from_secs(1) {
            return Err(Error::config(format!(
                "registration of {:?}: TTL {ttl:?} is below the 1 s minimum",
                registration.service
            )));
        }
        if ttl > MAX_TTL {
            return Err(Error::config(format!(
                "registration of {:?}: TTL {ttl:?} is above etcd's longest lease ({} s)",
                registration.service,
                MAX_TTL.as_secs()
            )));
        }
        if registration.deregister_critical_after.is_some() {
            return Err(Error::config(format!(
                "registration of {:?}: deregister_critical_after is a Consul option; \
                 in etcd the lease TTL decides when a silent instance goes away",
                registration.service
            )));
        }
        let id = registration.instance_id();
        let key = client.instance_key(&registration.service, &id);
        let value = encode_value(&registration, &id, format);
        let ttl_secs = lease_seconds(ttl);
        let period = KeepAliveConfig::period_for_ttl(Duration::from_secs(ttl_secs as u64));
        Ok(EtcdRegistrar {
            shared: Arc::new(Shared {
                client,
                registration,
                id,
                key,
                value,
                ttl_secs,
                lease: std::sync::Mutex::new(0),
                keeper: Mutex::new(None),
                lease_ops: Mutex::new(()),
                reregistrations: watch::channel(0).0,
            }),
            period,
            state: Mutex::new(State::default()),
        })
    }

    /// Changes the keep-alive period (default: a third of the lease TTL). Takes effect at the
    /// next registration.
    #[must_use]
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(Duration::from_millis(10));
        self
    }

    /// The keep-alive period.
    pub fn current_period(&self) -> Duration {
        self.period
    }

    /// The key written: `<prefix>/<service>/<id>`.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The instance id (the last part of the key).
    pub fn instance_id(&self) -> &str {
        &self.shared.id
    }

    /// The value written.
    pub fn value(&self) -> &[u8] {
        &self.shared.value
    }

    /// The lease TTL in seconds.
    pub fn lease_ttl_secs(&self) -> i64 {
        self.shared.ttl_secs
    }

    /// The current lease id (0 when not registered yet).
    pub fn lease_id(&self) -> i64 {
        self.shared.lease()
    }

    /// How many times the registrar found its registration lost and registered again.
    pub fn reregistrations(&self) -> u64 {
        *self.shared.reregistrations.borrow()
    }

    /// A receiver of the [`reregistrations`](Self::reregistrations) count.
    pub fn watch_reregistrations(&self) -> watch::Receiver<u64> {
        self.shared.reregistrations.subscribe()
    }
}

#[async_trait]
impl Registrar for EtcdRegistrar {
    async fn register(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let swapped = {
            let _no_round = self.shared.lease_ops.lock().await;
            self.shared.put_with_new_lease().await
        };
        let lease = match swapped {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(backend = BACKEND, key = %self.shared.key, error = %e, "register failed");
                return Err(e);
            }
        };
        state.registered = true;
        if state.task.as_ref().map_or(true, KeepAliveTask::is_finished) {
            let config = KeepAliveConfig::new(BACKEND, self.shared.key.clone(), self.period)
                .service(self.shared.registration.service.clone());
            state.task = Some(spawn_keepalive(self.shared.clone(), config));
        }
        tracing::info!(backend = BACKEND, key = %self.shared.key,
            address = %self.shared.registration.instance.addr(), lease, action = "register");
        Ok(())
    }

    async fn deregister(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(task) = state.task.take() {
            task.stop().await;
        }
        // Close the keep-alive stream.
        *self.shared.keeper.lock().await = None;
        if !state.registered {
            return Ok(());
        }
        let key = &self.shared.key;
        let result = async {
            self.shared.client.delete(key).await?;
            let lease = self.shared.lease();
            if lease != 0 {
                self.shared.client.revoke(lease).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                state.registered = false;
                self.shared.set_lease(0);
                tracing::info!(backend = BACKEND, key = %key, action = "deregister");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(backend = BACKEND, key = %key, error = %e,
                    "deregister failed; keep-alive stopped (the lease will expire), call deregister again to retry");
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
    use crate::client::ClientConfig;
    use crate::instancer::decode_value;
    use sd_core::{Health, Instance};

    fn client() -> Client {
        Client::new(
            ClientConfig::new(["127.0.0.1:1"])
                .dial_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(2)),
        )
        .unwrap()
    }

    #[test]
    fn e3_7_ttls_are_whole_seconds_rounded_up() {
        assert_eq!(lease_seconds(Duration::from_secs(10)), 10);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(200)), 1);
        assert_eq!(lease_seconds(Duration::MAX), i64::MAX);
    }

    #[test]
    fn json_round_trips_through_the_instancer_decoder() {
        let inst = Instance::builder("10.0.0.1", 8080)
            .id("web-1")
            .tags(["v2", "eu"])
            .meta("zone", "a")
            .weight(5)
            .health(Health::Warning)
            .build();
        let r = Registration::new("web", inst.clone());
        let v = encode_value(&r, "web-1", ValueFormat::Json);
        let back = decode_value("web-1", &v).unwrap();
        assert_eq!(back, inst);
        let plain = encode_value(&r, "web-1", ValueFormat::Plain);
        assert_eq!(plain, b"10.0.0.1:8080");
        let r6 = Registration::new("web", Instance::new("::1", 80));
        assert_eq!(encode_value(&r6, "x", ValueFormat::Plain), b"[::1]:80");
    }

    #[test]
    fn keys_periods_and_defaults() {
        let r = EtcdRegistrar::new(
            client(),
            Registration::new("web", Instance::builder("h", 1).id("web-1").build())
                .check(HealthCheck::Ttl(Duration::from_millis(2500))),
            ValueFormat::Json,
        )
        .unwrap();
        assert_eq!(r.key(), "/services/web/web-1");
        assert_eq!(r.lease_ttl_secs(), 3);
        assert_eq!(r.current_period(), Duration::from_secs(1));
        let r = EtcdRegistrar::new(
            client(),
            Registration::new("web", Instance::new("h", 1)),
            ValueFormat::Plain,
        )
        .unwrap();
        assert_eq!(r.key(), "/services/web/web-h-1");
        assert_eq!(r.lease_ttl_secs(), 10);
        assert_eq!(r.value(), b"h:1");
    }

    #[test]
    fn invalid_registrations_are_config_errors() {
        for (r, needle) in [
            (
                Registration::new("web", Instance::new("h", 1)).check(HealthCheck::Http {
                    url: "http://h:1/health".into(),
                    interval: Duration::from_secs(1),
                }),
                "use HealthCheck::Ttl",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    .check(HealthCheck::Ttl(Duration::from_millis(500))),
                "1 s minimum",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    // Beyond etcd's longest lease, and beyond what every registry takes
                    // (sd-core's MAX_REGISTRATION_DURATION, checked first).
                    .check(HealthCheck::Ttl(MAX_TTL + Duration::from_secs(1))),
                "longer than",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    .check(HealthCheck::Ttl(Duration::from_secs(5)))
                    .deregister_critical_after(Duration::from_secs(60)),
                "Consul option",
            ),
            (Registration::new("a/b", Instance::new("h", 1)), "'/'"),
            (Registration::new("web", Instance::new("h", 0)), "port 0"),
        ] {
            let err = EtcdRegistrar::new(client(), r, ValueFormat::Json).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[tokio::test]
    async fn deregister_before_register_sends_nothing_and_register_errors_are_returned() {
        let r = EtcdRegistrar::new(
            client(),
            Registration::new("web", Instance::new("h", 1)),
            ValueFormat::Json,
        )
        .unwrap();
        r.deregister().await.unwrap();
        let err = r.register().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        r.deregister().await.unwrap();
        assert_eq!(r.lease_id(), 0);
    }
}
