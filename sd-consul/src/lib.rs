//! # sd-consul
//!
//! The Consul backend of **sdkit**: find the instances of a service with blocking queries on
//! a Consul agent, and announce your own instance with health checks that stay passing.
//! It is go-kit's `sd/consul` with its bugs fixed, and the template for sdkit's other
//! backends: a [`client`], an [`instancer`] (a [`Source`](sd_core::Source) run on sd-core's
//! shared watch loop), a [`registrar`], and a [`registry`] that parses `consul://` URLs.
//!
//! Most programs reach it through the `sdkit` facade (`features = ["consul"]`) with
//! `sdkit::connect("consul://127.0.0.1:8500?...")`; using it directly looks the same:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_core::BoxError> {
//! use std::time::Duration;
//! use sd_consul::ConsulRegistry;
//! use sd_core::{
//!     BoxError, DefaultEndpointer, Endpointer, HealthCheck, Instance, Registration,
//!     RegistrationGuard, Registry, ServiceQuery,
//! };
//!
//! let registry = ConsulRegistry::from_url("consul://127.0.0.1:8500?token_env=CONSUL_HTTP_TOKEN")?;
//!
//! // Announce this process: a TTL check the registrar keeps passing, re-registered if the
//! // agent forgets it; deregistered when the guard is dropped or on `deregister()`.
//! let me = Registration::new("users", Instance::builder("127.0.0.1", 8080).id("users-1").build())
//!     .check(HealthCheck::Ttl(Duration::from_secs(10)));
//! let guard = RegistrationGuard::register(registry.registrar(me).await?).await?;
//!
//! // Discover it (and its peers): the first query has already run when this returns.
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
//! ## What an instance carries
//!
//! | [`Instance`](sd_core::Instance) | from Consul |
//! |---|---|
//! | `addr()` | `Service.Address`, else `Node.Address` (go-kit CONSUL-4), `:Service.Port`; IPv6 bracketed |
//! | `id()` | `Service.ID` |
//! | `tags()` | `Service.Tags` |
//! | `meta()` | `Service.Meta`, plus [`META_NODE`] (`consul.node`) and [`META_DATACENTER`] (`consul.datacenter`) |
//! | `health()` | the aggregated status of the entry's checks (node checks included) |
//! | `weight()` | `Weights.Passing` when passing, `Weights.Warning` when warning, 0 otherwise |
//!
//! ## Behaviour, and what changed from go-kit
//!
//! - The first query runs before the instancer is returned (CONSUL-1). Tags are ANDed, the
//!   first filtered by the agent, the rest here (CONSUL-2). Passing-only is the agent's
//!   `?passing` (CONSUL-3): entries with **any** non-passing check, warnings included, are
//!   left out.
//! - Index sanity (CONSUL-6): an index of 0 publishes nothing, backs off, and resets the
//!   index to 0; one that goes backwards resets the index to 0 and the round goes on with a
//!   non-blocking query (paced, and logged at `warn` once).
//! - After any error the next query is non-blocking (fixes CONSUL-8: go-kit blocked on the
//!   old index, so recovery could take up to 5 minutes to be published), and the error is
//!   published at once, not after the backoff sleep.
//! - `stop()` cancels the blocking request and any backoff sleep at once and waits for the
//!   loop to end (fixes CONSUL-9).
//! - A body that is not a JSON array, or an answer without `X-Consul-Index`, is an error
//!   event with a clear message; an entry without a usable address or port is skipped alone
//!   with a warning. Entries with the same address and ID collapse to one (sd-core).
//! - Tags match case-insensitively with the agent's own rule ([`tag_lowercase`]; other
//!   registries match tags exactly). A query whose answer changes nothing is followed by
//!   the next no sooner than [`UNCHANGED_INDEX_PACE`] after it; answers are read up to a cap
//!   ([`DEFAULT_MAX_BODY`]) and decoded entry by entry straight into instances, at most one
//!   entry per [`MIN_ENTRY_BYTES`] of the cap.
//! - The registrar heartbeats TTL checks and re-registers when the agent lost the service
//!   (see [`registrar`]); go-kit has neither.
//!
//! The full guide, with fault behaviour, is `docs/CONSUL.md` in the repository.
#![warn(missing_docs)]

pub mod client;
pub mod instancer;
pub mod registrar;
pub mod registry;

/// Entry points for the fuzz targets in `fuzz/` (not part of the API: no stability promise).
///
/// Each calls the production decoder itself, never a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use sd_core::Instance;

    /// Decodes a `/v1/health/service` body under a `max_body` cap exactly as
    /// [`Client::health_service`](crate::Client::health_service) does: the instances, how
    /// many entries were skipped, and their first reasons; or why the body was refused.
    pub fn health_body(
        body: &[u8],
        max_body: usize,
    ) -> Result<(Vec<Instance>, usize, Vec<String>), String> {
        crate::client::decode_health_body(body, max_body, None)
            .map(|d| (d.instances, d.skipped, d.skip_reasons))
    }
}

pub use client::{
    check_status, AgentService, CheckUpdate, Client, ClientConfig, HealthAnswer, RegisterFailed,
    BACKEND, BODY_TIMEOUTS, DEFAULT_MAX_BODY, DEFAULT_PORT, DEFAULT_TIMEOUT, DEFAULT_WAIT,
    FILTERED_BY_ACLS_HEADER, MAX_SKIP_REASONS, MAX_WAIT, MIN_ENTRY_BYTES, MIN_MAX_BODY,
    TOKEN_HEADER,
};
pub use instancer::{
    entry_to_instance, tag_lowercase, ConsulInstancer, HealthSource, META_DATACENTER, META_NODE,
    UNCHANGED_INDEX_PACE,
};
pub use registrar::{
    ConsulRegistrar, DEFAULT_RECHECK, MAX_META_KEY_LEN, MAX_META_PAIRS, MAX_META_VALUE_LEN,
};
pub use registry::ConsulRegistry;
