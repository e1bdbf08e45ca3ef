//! # sd-etcdv3
//!
//! The etcd v3 backend of **sdkit**: find the instances of a service by reading and watching
//! its directory of keys in etcd, and announce your own instance under a lease that the
//! registrar keeps alive. It is go-kit's `sd/etcdv3` with its bugs fixed, on sd-consul's
//! template: a [`client`], an [`instancer`] (a [`Source`](sd_core::Source) run on sd-core's
//! shared watch loop), the [`shared`] watch of a client's prefix, a [`registrar`] (its keep-alive on sd-core's
//! [`spawn_keepalive`](sd_core::spawn_keepalive)), and a [`registry`] that parses `etcd://`
//! URLs.
//!
//! Most programs reach it through the `sdkit` facade (`features = ["etcd"]`) with
//! `sdkit::connect("etcd://127.0.0.1:2379?...")`; using it directly looks the same:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_core::BoxError> {
//! use std::time::Duration;
//! use sd_core::{
//!     BoxError, DefaultEndpointer, Endpointer, HealthCheck, Instance, Registration,
//!     RegistrationGuard, Registry, ServiceQuery,
//! };
//! use sd_etcdv3::EtcdRegistry;
//!
//! let registry = EtcdRegistry::from_url("etcd://127.0.0.1:2379?prefix=/services")?;
//!
//! // /services/users/users-1 under a 10 s lease, renewed every ~3.3 s, put again if lost.
//! let me = Registration::new("users", Instance::builder("127.0.0.1", 8080).id("users-1").build())
//!     .check(HealthCheck::Ttl(Duration::from_secs(10)));
//! let guard = RegistrationGuard::register(registry.registrar(me).await?).await?;
//!
//! // Discover it (and its peers): the first read has already run when this returns.
//! let instancer = registry.instancer(&ServiceQuery::new("users")).await?;
//! let endpointer = DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
//!     Ok(format!("http://{}", i.addr()))
//! });
//! println!("{:?}", endpointer.endpoints().get());
//!
//! guard.deregister().await?; // deletes the key, revokes the lease
//! # Ok(()) }
//! ```
//!
//! ## Keys and values
//!
//! An instance is the key `<prefix>/<service>/<instance id>` (prefix `/services` by default).
//! Its value is JSON carrying the whole [`Instance`](sd_core::Instance):
//!
//! | [`Instance`](sd_core::Instance) | JSON field |
//! |---|---|
//! | `host()`, `port()` | `host`, `port` (required) |
//! | `id()` | `id`, else the last part of the key |
//! | `tags()` | `tags` |
//! | `meta()` | `meta` |
//! | `weight()` | `weight` (default 1) |
//! | `health()` | `health`: `passing` (default), `warning`, `critical`; other words are `unknown` |
//!
//! go-kit's plain values (`host:port`, or a URL such as `http://1.2.3.4:8080`, E3-9) are read
//! too, so services registered by go-kit are discovered; with `format=plain` the registrar
//! writes them, so go-kit instancers discover sdkit services. A value that is neither is
//! skipped alone, with its key and the reason logged.
//!
//! ## Behaviour, and what changed from go-kit
//!
//! - The instancer reads the directory at revision R and watches from R+1, applying each
//!   event to the set it holds (go-kit re-reads the prefix on every event, and its watch
//!   starts after the read, so a change in between is lost). The prefix ends in `/`, so
//!   `users` does not match `users-admin` (go-kit matched raw byte prefixes).
//! - A broken stream is resumed from the revision after the last one applied, on the same
//!   store, without a new read; while etcd cannot answer, the error is published and the
//!   resume retried. A compacted or cancelled watch, or a refused resume, is followed by a
//!   new read and a new watch at once; an error is published only if that read fails.
//!   Subscribers keep the last good set. Reconnection backs off 10 ms .. 1 min.
//! - A watch per instancer, or one watch of the whole prefix shared by a client's instancers
//!   ([`shared`]: events routed by key, each instancer joining at an exact revision, a
//!   broken stream resumed and a compaction re-read once for all). The default
//!   ([`WatchMode::Auto`], URL option `watch`) gives the first [`DEFAULT_SHARED_AFTER`] live
//!   instancers of a client a watch each and shares one among the others: few services
//!   among many read and receive only their own keys, many services cost one watch.
//!   go-kit's registrar closed the watch its instancer shared (E3-4, E3-5); here registrars
//!   never touch one. `stop()` ends an instancer's watch, or its share of the shared one
//!   (the last ends it); go-kit leaked its goroutine and panicked when stopped twice, E3-8.
//! - The registrar's lease TTL is rounded up to whole seconds (go-kit truncated); it renews
//!   the lease every third of the TTL and, when etcd lost the lease or the key, grants a new
//!   lease and puts the key again (go-kit never did, kit#1043). Deregistration deletes the
//!   key and revokes the lease.
//! - Auth (user and password, a [`Secret`](sd_core::Secret)) and TLS (CA, client
//!   certificate) as in go-kit's `ClientOptions` (E3-1), with the password never printed.
//!
//! The full guide, with fault behaviour and measured recovery times, is `docs/ETCD.md`.
#![warn(missing_docs)]

pub mod client;
pub mod instancer;
pub mod registrar;
pub mod registry;
pub mod shared;

/// Entry points for the fuzz targets in `fuzz/` (not part of the API: no stability promise).
///
/// Each calls the production code itself, never a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use sd_core::Registration;

    pub use crate::instancer::decode_value;

    /// The value [`EtcdRegistrar`](crate::EtcdRegistrar) writes for `registration`,
    /// registered under `id`, in `format`.
    pub fn encode_value(
        registration: &Registration,
        id: &str,
        format: crate::ValueFormat,
    ) -> Vec<u8> {
        crate::registrar::encode_value(registration, id, format)
    }
}

pub use client::{
    Client, ClientConfig, ConfirmedWatch, Entry, KeepAliveStream, BACKEND, DEFAULT_DIAL_TIMEOUT,
    DEFAULT_KEEP_ALIVE, DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES,
    MAX_TIMEOUT,
};
pub use instancer::{decode_value, AfterGet, EtcdInstancer, PrefixSource, SourceStats};
pub use registrar::{lease_seconds, EtcdRegistrar, ValueFormat, DEFAULT_TTL, MAX_TTL};
pub use registry::EtcdRegistry;
pub use shared::{
    SharedSource, SharedWatchStats, WatchMode, DEFAULT_SHARED_AFTER, MAX_SHARED_AFTER,
};

/// The etcd client library this backend is built on, for what it does not wrap
/// (see [`Client::etcd`]).
pub use etcd_client;
