//! # sd-dnssrv
//!
//! The DNS SRV backend of **sdkit**: find the instances of a service in SRV records
//! (RFC 2782), re-read at the records' TTL, and announce your own instance with RFC 2136
//! dynamic updates. It is go-kit's `sd/dnssrv` with its bugs fixed, on
//! [`hickory-resolver`](https://docs.rs/hickory-resolver), laid out like every sdkit backend:
//! a [`client`], an [`instancer`] (a [`Source`](sd_core::Source) run on sd-core's shared watch
//! loop), a [`registrar`], and a [`registry`] that parses `dns+srv://` URLs.
//!
//! Most programs reach it through the `sdkit` facade (`features = ["dnssrv"]`) with
//! `sdkit::connect("dns+srv://...")`; using it directly looks the same:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sd_core::BoxError> {
//! use sd_dnssrv::DnsRegistry;
//! use sd_core::{Instance, Registration, RegistrationGuard, Registry, ServiceQuery};
//!
//! // Nameserver 127.0.0.1:15353, zone sd.test: the service "web" is _web._tcp.sd.test.
//! let registry = DnsRegistry::from_url(
//!     "dns+srv://127.0.0.1:15353/?zone=sd.test&min_refresh=1s&max_refresh=10s&resolve_targets=1",
//! )?;
//!
//! // Announce this process (RFC 2136): SRV 0 1 8080 web-1.web.sd.test. and its A record.
//! let me = Registration::new("web", Instance::builder("127.0.0.1", 8080).id("web-1").build());
//! let guard = RegistrationGuard::register(registry.registrar(me).await?).await?;
//!
//! let instancer = registry.instancer(&ServiceQuery::new("web")).await?;
//! println!("{:?}", instancer.subscribe().next().await);
//! guard.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! ## What an instance carries
//!
//! | [`Instance`](sd_core::Instance) | from the SRV record |
//! |---|---|
//! | `addr()` | `target:port` (trailing dot dropped), or `ip:port` per address with `resolve_targets` |
//! | `id()` | the target name |
//! | `weight()` | the SRV weight (0 stays 0: "only if nothing else") |
//! | `meta()` | [`META_TARGET`] (`dns.target`) and [`META_PRIORITY`] (`dns.priority`) |
//! | `tags()`, `health()` | none; always passing (DNS has no health) |
//!
//! ## Behaviour, and what changed from go-kit
//!
//! - A service name is looked up as `_<service>._<proto>.<zone>` unless it is a full SRV
//!   name (first label starting with `_`), see [`srv_name`]; go-kit queried the name as given (DNS-3).
//! - The first lookup runs before the instancer is returned (DNS-2). Later lookups follow
//!   the records' TTL clamped to `[min_refresh, max_refresh]` with ±10 % jitter inside the
//!   bounds; go-kit used a fixed ticker without jitter and ignored TTLs (DNS-4).
//! - NXDOMAIN or no records is an **empty set**; SERVFAIL, REFUSED, timeouts and socket
//!   errors are an error event, and subscribers keep the last good set.
//! - Only the lowest priority group is published (RFC 2782), unless `all_priorities`.
//! - A record with port 0, the target `.`, or (with `resolve_targets`) a target that does
//!   not resolve is skipped alone with a logged reason; in go-kit one port-0 record failed
//!   the whole resolution (DNS-3, go-kit issue #892).
//! - `stop()` cancels the lookup in flight and is idempotent (go-kit panicked on a second
//!   `Stop`, DNS-5).
//! - A registrar through RFC 2136 (see [`registrar`]); go-kit has none.
//!
//! The full guide is `docs/DNS.md` in the repository.
#![warn(missing_docs)]

pub mod client;
pub mod instancer;
pub mod registrar;
pub mod registry;

/// Entry points for the fuzz targets in `fuzz/` (not part of the API: no stability promise).
///
/// Each calls the production code itself, never a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use hickory_proto::op::Message;
    use hickory_proto::rr::Name;
    use sd_core::Instance;

    /// Decodes a DNS response from the wire (hickory's parser, as the resolver does), walks
    /// its answer records from the first question's name as
    /// [`Client::lookup_srv`](crate::Client::lookup_srv) does, then selects the records
    /// and makes the instances as [`SrvSource`](crate::SrvSource) does without
    /// `resolve_targets`: the instances and how many records were skipped (empty when
    /// the chain leaves this response), or why the response is unusable.
    pub fn srv_response(
        wire: &[u8],
        all_priorities: bool,
    ) -> Result<(Vec<Instance>, usize), String> {
        let message = Message::from_vec(wire).map_err(|e| e.to_string())?;
        let name = message
            .queries()
            .first()
            .map(|q| q.name().clone())
            .unwrap_or_else(Name::root);
        let mut current = name.clone();
        let (mut hops, mut alias_ttl) = (0, None);
        match crate::client::walk_answer(
            message.answers(),
            &name,
            &mut current,
            &mut hops,
            &mut alias_ttl,
        )
        .map_err(|e| e.to_string())?
        {
            crate::client::Walk::Found(answer) => {
                let (usable, skipped) = crate::instancer::select(&answer.records, all_priorities);
                let instances = usable
                    .iter()
                    .map(|r| crate::instancer::instance(r, &r.target))
                    .collect();
                Ok((instances, skipped.len()))
            }
            crate::client::Walk::Moved | crate::client::Walk::Nothing => Ok((Vec::new(), 0)),
        }
    }
}

pub use client::{
    Addresses, Client, ClientConfig, SrvAnswer, SrvRecord, TsigKey, BACKEND, DEFAULT_ATTEMPTS,
    DEFAULT_PORT, DEFAULT_TIMEOUT,
};
pub use instancer::{
    srv_name, DnsInstancer, LookupOptions, SrvSource, DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH,
    META_PRIORITY, META_TARGET,
};
pub use registrar::{DnsRegistrar, DEFAULT_REASSERT, DEFAULT_RECORD_TTL};
pub use registry::DnsRegistry;
