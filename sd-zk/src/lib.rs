//! # sd-zk
//!
//! The ZooKeeper backend of **sdkit**: announce an instance as an ephemeral node that comes
//! back on its own after the session is lost, and find the instances of a service with a
//! watch that never goes deaf. It is go-kit's `sd/zk` with its bugs fixed, on sd-consul's
//! layout: a [`client`] (the shared session), an [`instancer`] (a
//! [`Source`](sd_core::Source) run on sd-core's shared watch loop), a [`registrar`], and a
//! [`registry`] that parses `zk://` URLs. It speaks to ZooKeeper through the pure-Rust async
//! `zookeeper-client` crate.
//!
//! Most programs reach it through the `sdkit` facade (`features = ["zk"]`) with
//! `sdkit::connect("zk://127.0.0.1:2181/services?...")`; using it directly looks the same:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_core::BoxError> {
//! use sd_zk::ZkRegistry;
//! use sd_core::{
//!     BoxError, DefaultEndpointer, Endpointer, Instance, Registration, RegistrationGuard,
//!     Registry, ServiceQuery,
//! };
//!
//! let registry = ZkRegistry::from_url("zk://127.0.0.1:2181,127.0.0.1:2182/services?session_timeout=5s")?;
//!
//! // Announce this process: an ephemeral node /services/users/_c_<guid>-<seq> holding the
//! // instance as JSON, re-created if the session expires; deleted by `deregister()`.
//! let me = Registration::new("users", Instance::builder("127.0.0.1", 8080).id("users-1").tag("v2").build());
//! let guard = RegistrationGuard::register(registry.registrar(me).await?).await?;
//!
//! // Discover it (and its peers): the first read has already run when this returns.
//! let instancer = registry.instancer(&ServiceQuery::new("users").tag("v2")).await?;
//! let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
//!     Ok(format!("http://{}", i.addr()))
//! });
//! println!("{:?}", endpointer.endpoints().get());
//!
//! guard.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout (go-kit's)
//!
//! `<base>/<service>/` holds one ephemeral sequential node per instance, named
//! `_c_<32 hex guid>-<10-digit sequence>` (go-zookeeper's protected node, ZK-5). Its data is
//! sdkit's JSON payload ([`InstanceJson`]); the instancer also reads go-kit's plain
//! `host:port` data (ZK-10), so Rust and Go processes can share a directory.
//!
//! | [`Instance`](sd_core::Instance) | from ZooKeeper |
//! |---|---|
//! | `addr()` | the payload's `host` and `port` (or the plain `host:port`) |
//! | `id()` | the payload's `id` (the registration's instance id); for plain data, the znode name |
//! | `tags()`, `meta()`, `weight()`, `health()` | the payload's fields (plain data: none, none, 1, passing) |
//!
//! ## Behaviour, and what changed from go-kit
//!
//! - Deregistering deletes the registrar's own node (go-kit deletes the parent, which fails:
//!   ZK-6). Register and deregister are idempotent and return errors (SD-5).
//! - The registrar re-creates its node after the session expired (a pause or partition
//!   longer than the session timeout) or after someone deleted it (go-kit never does, ZK-11).
//! - The instancer re-arms after every event **and every error** (go-kit goes deaf after one
//!   error, ZK-9), publishes a lost connection as an error event at once while keeping the
//!   last good set, reads the children's data concurrently, and sees data changes.
//! - Reading writes nothing (go-kit's instancer creates the path, ZK-8; opt in with
//!   `create_parents=true`).
//! - Digest authentication and owner-only ACLs; the credentials are a
//!   [`Secret`](sd_core::Secret), never in `Debug` output or logs.
//!
//! The full guide, with fault behaviour, is `docs/ZOOKEEPER.md` in the repository.
#![warn(missing_docs)]

pub mod client;
pub mod instancer;
pub mod registrar;
pub mod registry;

pub use client::{
    Client, ClientConfig, Payload, WatchMode, BACKEND, DEFAULT_BASE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PORT, DEFAULT_SESSION_TIMEOUT, MAX_CONNECT_TIMEOUT, MAX_SESSION_TIMEOUT, MIN_TIMEOUT,
};
pub use instancer::{decode, InstanceJson, ZkInstancer, ZkSource};
pub use registrar::{ZkRegistrar, PROTECTED_PREFIX};
pub use registry::ZkRegistry;
