//! The [`Registrar`] trait and what a registration says.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::instance::Instance;

/// How the registry should check the registered instance's health.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthCheck {
    /// The registrar itself reports liveness at least every `ttl` (Consul TTL check, etcd
    /// lease, Eureka lease, the embedded registry's expiry). The registrar heartbeats well
    /// inside the TTL for as long as it is registered.
    Ttl(Duration),
    /// The registry polls an HTTP URL (Consul).
    Http {
        /// The URL to GET.
        url: String,
        /// How often.
        interval: Duration,
    },
    /// The registry opens a TCP connection (Consul).
    Tcp {
        /// `host:port` to connect to.
        addr: String,
        /// How often.
        interval: Duration,
    },
    /// The registry calls the gRPC health service (Consul).
    Grpc {
        /// `host:port/service` target.
        target: String,
        /// How often.
        interval: Duration,
    },
}

/// What a [`Registrar`] announces: one instance of one service.
///
/// ```
/// use std::time::Duration;
/// use sd_core::{HealthCheck, Instance, Registration};
/// let r = Registration::new("web", Instance::builder("127.0.0.1", 8080).id("web-1").build())
///     .check(HealthCheck::Ttl(Duration::from_secs(10)));
/// r.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The service name.
    pub service: String,
    /// The instance: address, id, tags, metadata, weight.
    pub instance: Instance,
    /// An optional health check.
    pub check: Option<HealthCheck>,
    /// Ask the registry to remove the instance after its check has been critical this long
    /// (Consul `DeregisterCriticalServiceAfter`; Consul's minimum is one minute).
    pub deregister_critical_after: Option<Duration>,
}

impl Registration {
    /// A registration of `instance` under `service`, without a health check.
    pub fn new(service: impl Into<String>, instance: Instance) -> Self {
        Registration {
            service: service.into(),
            instance,
            check: None,
            deregister_critical_after: None,
        }
    }

    /// Sets the health check.
    #[must_use]
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Sets `deregister_critical_after`.
    #[must_use]
    pub fn deregister_critical_after(mut self, d: Duration) -> Self {
        self.deregister_critical_after = Some(d);
        self
    }

    /// The id to register under: the instance id, or `service-host-port` when it has none.
    pub fn instance_id(&self) -> String {
        if self.instance.id().is_empty() {
            format!(
                "{}-{}-{}",
                self.service,
                self.instance.host(),
                self.instance.port()
            )
        } else {
            self.instance.id().to_string()
        }
    }

    /// The TTL, if the check is a TTL check.
    pub fn ttl(&self) -> Option<Duration> {
        match self.check {
            Some(HealthCheck::Ttl(d)) => Some(d),
            _ => None,
        }
    }

    /// Checks what every backend needs: a service name, a host, a port, a sane TTL.
    pub fn validate(&self) -> Result<()> {
        if self.service.trim().is_empty() {
            return Err(Error::config("registration: empty service name"));
        }
        if self.service.contains('/') {
            return Err(Error::config(format!(
                "registration: service name {:?} must not contain '/'",
                self.service
            )));
        }
        if self.instance.host().is_empty() {
            return Err(Error::config(format!(
                "registration of {:?}: empty host",
                self.service
            )));
        }
        if self.instance.port() == 0 {
            return Err(Error::config(format!(
                "registration of {:?}: port 0",
                self.service
            )));
        }
        if let Some(HealthCheck::Ttl(d)) = self.check {
            if d < Duration::from_secs(1) {
                return Err(Error::config(format!(
                    "registration of {:?}: TTL {d:?} is below the 1 s minimum",
                    self.service
                )));
            }
        }
        Ok(())
    }
}

/// Announces this process's instance in a registry.
///
/// Unlike go-kit (SD-5), both calls return a `Result`, and both are idempotent: registering
/// twice or deregistering something not registered is not an error. Usable as a trait
/// object: `Arc<dyn Registrar>`.
#[async_trait]
pub trait Registrar: Send + Sync + fmt::Debug {
    /// Registers the instance and keeps it registered (heartbeats, re-registration after the
    /// registry lost it) until [`deregister`](Registrar::deregister).
    async fn register(&self) -> Result<()>;

    /// Removes the instance and stops any heartbeat. Idempotent.
    async fn deregister(&self) -> Result<()>;

    /// What this registrar announces.
    fn registration(&self) -> &Registration;
}

#[async_trait]
impl<T: Registrar + ?Sized> Registrar for Arc<T> {
    async fn register(&self) -> Result<()> {
        (**self).register().await
    }
    async fn deregister(&self) -> Result<()> {
        (**self).deregister().await
    }
    fn registration(&self) -> &Registration {
        (**self).registration()
    }
}

/// Deregisters on drop: hold it for as long as the service should be discoverable.
///
/// Prefer [`RegistrationGuard::deregister`] on graceful shutdown: it waits for the registry
/// to answer. Dropping the guard instead spawns the deregistration on the current tokio
/// runtime (best effort; nothing happens if the runtime is shutting down).
#[derive(Debug)]
#[must_use = "dropping the guard deregisters the instance"]
pub struct RegistrationGuard {
    registrar: Option<Arc<dyn Registrar>>,
}

impl RegistrationGuard {
    /// Registers through `registrar` and returns the guard.
    pub async fn register(registrar: Arc<dyn Registrar>) -> Result<Self> {
        registrar.register().await?;
        Ok(RegistrationGuard {
            registrar: Some(registrar),
        })
    }

    /// Deregisters now and waits for the answer.
    pub async fn deregister(mut self) -> Result<()> {
        match self.registrar.take() {
            Some(r) => r.deregister().await,
            None => Ok(()),
        }
    }

    /// Lets go of the registration **without** deregistering, as a crashed process would.
    ///
    /// The guard's registrar handle is dropped, which stops its heartbeats when it was the
    /// last handle; the registry keeps the instance until its health check fails (a TTL
    /// lapses, an HTTP check stops answering). For failure drills and demos such as the
    /// quickstart, where discovery must notice a dead instance on its own.
    pub fn abandon(mut self) {
        drop(self.registrar.take());
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        if let Some(r) = self.registrar.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = r.deregister().await {
                        tracing::warn!(error = %e, "deregistration on drop failed");
                    }
                });
            }
        }
    }
}
