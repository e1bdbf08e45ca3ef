//! # sd-eureka
//!
//! The Eureka backend of **sdkit**: find the instances of a service by polling a Eureka
//! server (Netflix Eureka, or Spring Cloud Netflix's Eureka server), and announce your own
//! instance with a lease the registrar keeps renewed. It is go-kit's `sd/eureka` with its
//! bugs fixed, on the template of `sd-consul`: a [`client`], an [`instancer`] (a polling
//! [`Source`](sd_core::Source) run on sd-core's shared watch loop), a [`registrar`] (on
//! sd-core's shared keep-alive loop), and a [`registry`] that parses `eureka://` URLs.
//!
//! Most programs reach it through the `sdkit` facade (`features = ["eureka"]`) with
//! `sdkit::connect("eureka://127.0.0.1:8761/eureka?...")`; using it directly looks the same:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_core::BoxError> {
//! use std::time::Duration;
//! use sd_eureka::EurekaRegistry;
//! use sd_core::{
//!     BoxError, DefaultEndpointer, Endpointer, HealthCheck, Instance, Registration,
//!     RegistrationGuard, Registry, ServiceQuery,
//! };
//!
//! let registry = EurekaRegistry::from_url("eureka://10.0.0.1:8761,10.0.0.2:8761/eureka?poll=5s")?;
//!
//! // Announce this process under app USERS: a 30 s lease renewed every 10 s, registered
//! // again if the server forgets it; cancelled when the guard is dropped or deregistered.
//! let me = Registration::new("users", Instance::builder("10.0.0.7", 8080).id("users-1").build())
//!     .check(HealthCheck::Ttl(Duration::from_secs(30)));
//! let guard = RegistrationGuard::register(registry.registrar(me).await?).await?;
//!
//! // Discover it (and its peers): the first poll has already run when this returns.
//! let instancer = registry.instancer(&ServiceQuery::new("users").passing_only(true)).await?;
//! let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
//!     Ok(format!("http://{}", i.addr()))
//! });
//! println!("{:?}", endpointer.endpoints().get());
//!
//! guard.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! ## Names
//!
//! Eureka stores and matches application names in upper case. The service name you give
//! (`users`) is sent upper-cased (`USERS`) in every request, so `users`, `Users` and `USERS`
//! are one application. The registrar announces the service name as given as the
//! instance's VIP address; the `vip=true` option makes instancers look names up as VIP
//! addresses instead of app names.
//!
//! ## Behaviour, and what changed from go-kit
//!
//! - The first poll runs before the instancer is returned (EU-1), then every `poll`
//!   (default 30 s, fargo's) with ±10 % jitter, so many clients do not poll in lockstep.
//! - An unknown app, or an app whose last instance left, is an **empty set** (go-kit: an
//!   error, EU-4, so the last instance leaving was never seen).
//! - Status, secure port and metadata are read (go-kit ignores them, EU-2): `passing_only`
//!   keeps only `UP` instances (see [`status_health`]).
//! - A failed poll publishes an error at once and keeps the last good set; a body that is
//!   not Eureka's JSON is an error event; one unusable instance is skipped alone with the
//!   reason logged.
//! - `stop()` is idempotent (go-kit's second `Stop()` blocks forever, EU-5).
//! - `register()` returns the server's refusal instead of logging it and heartbeating
//!   anyway (EU-6); a renewal answered 404 re-registers at once (EU-8 waits a tick).
//! - Several servers fail over; basic auth with the password a [`Secret`](sd_core::Secret).
//!
//! The full guide, with server settings and fault behaviour, is `docs/EUREKA.md` in the
//! repository.
#![warn(missing_docs)]

pub mod client;
pub mod instancer;
pub mod registrar;
pub mod registry;

pub use client::{
    Client, ClientConfig, InstanceUpdate, BACKEND, DEFAULT_PATH, DEFAULT_PORT, DEFAULT_TIMEOUT,
    MAX_BODY, MIN_MAX_BODY,
};
pub use instancer::{
    instance_from_json, start_instancer, status_health, AppSource, EurekaInstancer, Target,
    DEFAULT_POLL, META_HEALTH, META_SECURE, META_STATUS, META_TAGS,
};
pub use registrar::{EurekaRegistrar, Lease, Status, DEFAULT_LEASE, DEFAULT_RENEW};
pub use registry::{default_backoff, EurekaRegistry, MIN_POLL};
