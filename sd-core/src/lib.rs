//! # sd-core
//!
//! The core of **sdkit**, client-side service discovery for Rust: a port of go-kit's `sd`
//! package with its known bugs fixed. Most users depend on the `sdkit` facade, which
//! re-exports this crate.
//!
//! The moving parts, in the order data flows:
//!
//! 1. A [`Registry`] (chosen from a URL by `sdkit`) hands out [`Instancer`]s and
//!    [`Registrar`]s for named services.
//! 2. An [`Instancer`] publishes [`Event`]s: the complete sorted [`InstanceSet`] of a
//!    service, or an [`Error`]. Backends publish through an [`InstanceCache`], usually by
//!    implementing [`Source`] and running the shared loop in [`WatchedInstancer`].
//! 3. A [`DefaultEndpointer`] subscribes to an instancer and turns each [`Instance`] into an
//!    endpoint through a [`Factory`], keeping endpoints across updates and closing departed
//!    ones. Reading its [`Snapshot`] takes no lock and no allocation.
//! 4. A balancer (crate `sd-lb`) picks one endpoint per request.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use sd_core::*;
//!
//! let registry = MemoryRegistry::new();
//! let registrar = registry.registrar_for(Registration::new("web", Instance::new("127.0.0.1", 8080)));
//! registrar.register().await?;
//!
//! let instancer = registry.service_instancer("web");
//! let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
//!     Ok(format!("http://{}", i.addr()))
//! });
//! assert_eq!(endpointer.endpoints().get().unwrap()[0].as_str(), "http://127.0.0.1:8080");
//!
//! registrar.deregister().await?;
//! let mut changes = endpointer.changes();
//! while !endpointer.endpoints().get().unwrap().is_empty() {
//!     changes.changed().await;
//! }
//! endpointer.close().await;
//! # Ok::<(), sd_core::Error>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs)]

pub mod backoff;
pub mod cache;
pub mod capabilities;
pub mod compose;
pub mod config;
pub mod endpoint;
pub mod endpointer;
pub mod error;
pub mod event;
mod follow;
pub mod freshness;
pub mod instance;
pub mod instancer;
pub mod keepalive;
pub mod lkg;
pub mod memory;
pub mod meta;
pub mod observe;
pub mod protect;
pub mod registrar;
pub mod registry;
pub mod reuse;
pub mod static_registry;
pub mod task;
pub mod watch_loop;

pub use backoff::Backoff;
pub use cache::{InstanceCache, Subscription};
pub use capabilities::Capabilities;
pub use config::{CommonOptions, RegistryUrl, Secret};
pub use endpoint::{Endpoint, Factory};
pub use endpointer::{
    Changes, DefaultEndpointer, Endpointer, EndpointerBuilder, Endpoints, FixedEndpointer,
    Snapshot, Status,
};
pub use error::{BoxError, Error, Result};
pub use event::{Event, InstanceSet};
pub use freshness::{Freshness, StaleReason};
pub use instance::{Health, Instance, InstanceBuilder};
pub use instancer::{FixedInstancer, Instancer};
pub use keepalive::{spawn_keepalive, KeepAlive, KeepAliveConfig, KeepAliveTask};
pub use memory::{MemoryInstancer, MemoryRegistrar, MemoryRegistry};
pub use meta::Meta;
pub use observe::ObservedRegistry;
pub use registrar::{
    HealthCheck, Registrar, Registration, RegistrationGuard, MAX_REGISTRATION_DURATION,
};
pub use registry::{Registry, ServiceQuery};
pub use reuse::InstanceReuse;
pub use static_registry::StaticRegistry;
pub use task::BackgroundTask;
pub use watch_loop::{LoopConfig, Source, Step, WatchedInstancer};
