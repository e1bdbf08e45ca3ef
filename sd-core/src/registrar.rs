//! The [`Registrar`] trait and what a registration says.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::instance::Instance;

/// The longest TTL, check interval or `deregister_critical_after` a [`Registration`] may
/// ask for: 2^31 - 1 seconds (about 68 years), what every backend can carry (Eureka's lease
/// is a 32-bit number of seconds; Consul's durations are 64-bit nanoseconds).
pub const MAX_REGISTRATION_DURATION: Duration = Duration::from_secs(i32::MAX as u64);

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
///
/// `#[non_exhaustive]`: build one with [`Registration::new`] and the builder methods; the
/// fields stay public to read and to set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registration {
    /// The service name.
    pub service: String,
    /// The instance: address, id, tags, metadata, weight.
    pub instance: Instance,
    /// An optional health check.
    pub check: Option<HealthCheck>,
    /// Ask the registry to remove the instance after its check has been critical this long
    /// (Consul `DeregisterCriticalServiceAfter`). Needs a [`check`](Self::check):
    /// [`validate`](Self::validate) rejects it without one, for every backend. Consul rounds
    /// it up to one minute and reaps every 30 s; `memory://` applies it as given.
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

    /// Checks what every backend needs: a service name, a host, a port, a sane TTL, durations
    /// (TTL, check interval, `deregister_critical_after`) of at most
    /// [`MAX_REGISTRATION_DURATION`], and a health check whenever `deregister_critical_after`
    /// is set (nothing could make the instance critical otherwise; Consul rejects it too).
    /// Every registry calls this; what a backend refuses beyond it (e.g. Consul's metadata
    /// key characters) is listed in docs/URLS.md ("what differs").
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
        let durations = [
            self.check.as_ref().map(|c| match c {
                HealthCheck::Ttl(d) => ("TTL", *d),
                HealthCheck::Http { interval, .. }
                | HealthCheck::Tcp { interval, .. }
                | HealthCheck::Grpc { interval, .. } => ("check interval", *interval),
            }),
            self.deregister_critical_after
                .map(|d| ("deregister_critical_after", d)),
        ];
        for (what, d) in durations.into_iter().flatten() {
            if d > MAX_REGISTRATION_DURATION {
                return Err(Error::config(format!(
                    "registration of {:?}: {what} {d:?} is longer than the {} s every \
                     registry can carry (2^31 - 1 seconds, about 68 years)",
                    self.service,
                    MAX_REGISTRATION_DURATION.as_secs()
                )));
            }
        }
        if self.deregister_critical_after.is_some() && self.check.is_none() {
            return Err(Error::config(format!(
                "registration of {:?}: deregister_critical_after needs a health check \
                 (e.g. .check(HealthCheck::Ttl(..))): without one the instance never turns critical",
                self.service
            )));
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
/// On shutdown, call [`RegistrationGuard::deregister`] and await it: it is the only way that
/// waits for the registry's answer and reports its error, on every kind of runtime. This is
/// what the examples do.
///
/// Dropping the guard instead is a best effort, and never silent when it cannot deregister.
/// The drop first polls the deregistration once on its own thread (a deregistration that
/// needs no timer or I/O, such as the embedded registry's, is then done), and otherwise
/// spawns the rest on the runtime:
///
/// - on a **multi-thread** runtime (`#[tokio::main]`'s default), the drop then blocks its
///   thread (`block_in_place`) until the deregistration is answered or [`DROP_DEADLINE`]
///   (5 s) passes (a warning says so; it carries on in the background), so a guard dropped
///   at the end of `main` deregisters before the runtime shuts down;
/// - on a **current-thread** runtime it cannot block (the deregistration needs that very
///   thread), so it returns and the spawned deregistration runs later;
/// - while the runtime **shuts down** (a guard owned by a task that the shutdown drops), the
///   spawned deregistration is cancelled at once and the drop returns at once: it never
///   waits on timers that no thread drives any more;
/// - outside any runtime, or while unwinding from a panic, nothing can be sent.
///
/// Whenever the deregistration is not sent or is cancelled, a warning names the instance that
/// stays registered; a failed one is logged with its error.
///
/// An instance left registered this way is removed by the registry's own health check (a TTL
/// that lapses, `deregister_critical_after`), as after a crash.
#[derive(Debug)]
#[must_use = "dropping the guard deregisters the instance"]
pub struct RegistrationGuard {
    registrar: Option<Arc<dyn Registrar>>,
}

/// How long dropping a [`RegistrationGuard`] on a multi-thread runtime waits for the
/// deregistration (a wall-clock wait: it does not depend on the runtime's timers).
pub const DROP_DEADLINE: Duration = Duration::from_secs(5);

impl RegistrationGuard {
    /// Registers through `registrar` and returns the guard.
    pub async fn register(registrar: Arc<dyn Registrar>) -> Result<Self> {
        registrar.register().await?;
        Ok(RegistrationGuard {
            registrar: Some(registrar),
        })
    }

    /// Deregisters now and waits for the answer: the graceful shutdown.
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

/// Logs at warn, when dropped before `done` is set, that `service`/`id` stayed registered.
struct WarnIfCancelled {
    service: String,
    id: String,
    done: bool,
}

impl WarnIfCancelled {
    /// The deregistration ran to its end: nothing to warn about.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for WarnIfCancelled {
    fn drop(&mut self) {
        if !self.done && !std::thread::panicking() {
            tracing::warn!(service = %self.service, id = %self.id,
                "deregistration on drop was cancelled (runtime shutting down); the instance stays \
                 registered until its health check fails: call RegistrationGuard::deregister().await on shutdown");
        }
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let Some(r) = self.registrar.take() else {
            return;
        };
        let (service, id) = (
            r.registration().service.clone(),
            r.registration().instance_id(),
        );
        let not_sent = |why: &str| {
            tracing::warn!(service = %service, id = %id, reason = why,
                "RegistrationGuard dropped without deregistering; the instance stays registered \
                 until its health check fails: call RegistrationGuard::deregister().await on shutdown")
        };
        if std::thread::panicking() {
            return not_sent("dropped while unwinding from a panic");
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return not_sent("dropped outside a tokio runtime");
        };
        let mut deregistration = Box::pin(async move { r.deregister().await });
        // One poll here, on this thread: a deregistration that needs no timer or I/O (the
        // embedded registry) is done at once, even while the runtime shuts down.
        let waker = futures::task::noop_waker();
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deregistration
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker))
        }));
        match first {
            Ok(Poll::Ready(Ok(()))) => return,
            Ok(Poll::Ready(Err(e))) => {
                return tracing::warn!(service = %service, id = %id, error = %e,
                    "deregistration on drop failed")
            }
            Ok(Poll::Pending) => {}
            Err(_) => return not_sent("the deregistration panicked"),
        }
        // The rest runs as a task: the runtime's workers drive its timers and sockets. Never
        // wait on a tokio timer here: while the runtime shuts down, nothing drives them.
        let guard = WarnIfCancelled {
            service: service.clone(),
            id: id.clone(),
            done: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            if let Err(e) = deregistration.await {
                tracing::warn!(service = %guard.service, id = %guard.id, error = %e,
                    "deregistration on drop failed");
            }
            guard.finish();
            let _ = tx.send(());
        });
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            // A current-thread runtime cannot run the task while this thread waits for it:
            // it runs later; if runtime shutdown cancels it, `WarnIfCancelled` says so.
            return;
        }
        // During shutdown the task is dropped at once: the channel disconnects, and
        // `WarnIfCancelled` has said so. `block_in_place` panics where blocking is not allowed
        // (outside a worker of this runtime); the task still runs, unwatched.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tokio::task::block_in_place(|| rx.recv_timeout(DROP_DEADLINE))
        }));
        match outcome {
            // Answered (the task logged a failure), or cancelled by runtime shutdown
            // (`WarnIfCancelled` warned), or we could not wait (the task carries on).
            Ok(Ok(())) | Ok(Err(std::sync::mpsc::RecvTimeoutError::Disconnected)) | Err(_) => {}
            Ok(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {
                tracing::warn!(service = %service, id = %id, deadline = ?DROP_DEADLINE,
                    "deregistration on drop not answered in time; it carries on in the background \
                     unless the runtime shuts down first")
            }
        }
    }
}
