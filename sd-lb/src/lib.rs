//! # sd-lb
//!
//! Load balancing for **sdkit**: balancers that pick one endpoint per request from an
//! [`Endpointer`](sd_core::Endpointer)'s lock-free snapshot, a [`Retry`] loop with go-kit's
//! semantics and its flaws fixed, outlier ejection, and integration with tower.
//!
//! | balancer | picks |
//! |---|---|
//! | [`RoundRobin`] | in turn: a rotation per thread ([`RoundRobin::new`], the default), or go-kit's strict shared counter ([`RoundRobin::strict`]); its own [`pick`](RoundRobin::pick) borrows the endpoint from a per-thread cache ([`EndpointRef`]) |
//! | [`LocalRoundRobin`] | in turn, from a cached snapshot: a handle per thread or task, `&mut self` |
//! | [`Random`] | uniformly at random (seedable); its own [`pick`](Random::pick) borrows as round robin's |
//! | [`Weighted`] | smooth weighted round robin over instance weights |
//! | [`P2c`] | the less loaded (per unit of weight) of two distinct random endpoints, drawn by weight: in-flight requests or peak-EWMA latency |
//! | [`ConsistentHash`] | the owner of a request key (Maglev, table share ∝ weight) |
//! | [`Outlier`] | wraps any balancer: ejects endpoints that fail repeatedly |
//! | [`SlowStart`] | wraps any balancer: a new endpoint's share ramps up over a window |
//! | [`ZoneAware`] | wraps any balancer: prefers the caller's zone, spills the share it cannot take |
//! | [`Drain`] | wraps any balancer: counts in-flight requests so that a removed endpoint's close waits for them ([`DrainFactory`]) |
//! | [`RefuseStale`] | wraps any balancer: fails picks while the endpoints are stale for too long |
//!
//! [`Subset`] wraps an endpointer instead: each client uses a stable, deterministic subset of
//! the endpoints (the SRE book's algorithm), any balancer on top.
//!
//! Which one to choose, with a simulation of each: `docs/BALANCERS.md`. In short: P2C with
//! outlier ejection when backends differ in speed, consistent hashing when keys must stick,
//! round robin when backends are identical.
//!
//! Every balancer returns the endpointer's discovery error unchanged and
//! [`LbError::NoEndpoints`] when there is nothing to pick (go-kit LB-1), prefers endpoints
//! whose instance passes its health checks (all of them when fewer than the [`PanicThreshold`],
//! 50 % by default, pass), and builds its
//! tables off the request path; a pick never waits for a lock and makes no allocation, except
//! the first pick after an update, which starts the rebuild (the details are on [`Balancer`]). [`Balancer::pick_with`] returns a [`Picked`] guard that feeds the
//! request's outcome back to P2C and outlier ejection, even when it is just dropped.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sd_core::{BoxError, DefaultEndpointer, Endpoint, FixedInstancer, Instance};
//! use sd_lb::{Retry, RoundRobin};
//!
//! let instancer = FixedInstancer::from_addrs(["10.0.0.1:80", "10.0.0.2:80"]).unwrap();
//! let endpointer = Arc::new(DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
//!     Ok(format!("http://{}/", i.addr()))
//! }));
//! let retry = Retry::new(RoundRobin::new(endpointer.clone()))
//!     .max_attempts(3)
//!     .timeout(Duration::from_secs(5));
//! let body = retry
//!     .call(|ep: Endpoint<String>| async move {
//!         // A real client would make a request to `ep` here.
//!         Ok::<_, std::io::Error>(format!("hello from {}", *ep))
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(body, "hello from http://10.0.0.1:80/");
//! # });
//! ```
//!
//! Reporting outcomes yourself:
//!
//! ```
//! use std::sync::Arc;
//! use sd_core::{FixedEndpointer, Instance};
//! use sd_lb::{Balancer, Outlier, OutlierConfig, P2c, Request};
//!
//! let ep = Arc::new(FixedEndpointer::new((1..=3).map(|p| (Instance::new("10.0.0.1", p), p))));
//! let lb = Outlier::new(P2c::peak_ewma(ep), OutlierConfig::default());
//! let picked = lb.pick_with(&Request::new()).unwrap();
//! let port = **picked.endpoint();
//! // ... make the request on `picked.endpoint()` ...
//! if port > 0 { picked.success() } else { picked.failure() }
//! ```
#![warn(missing_docs)]

mod balancer;
mod derived;
mod drain;
pub mod error;
mod hash;
mod local;
mod metrics;
mod outlier;
mod p2c;
mod random;
mod retry;
mod round_robin;
mod slow_start;
mod stale;
mod subset;
mod thread_view;
pub mod tower;
mod weighted;
mod zone;

/// Retry budgets, from tower: [`Retry::budget`] takes any [`Budget`]; [`TpsBudget`] is
/// Finagle's (a share of recent requests plus a floor per second).
pub use ::tower::retry::budget::{Budget, TpsBudget};
pub use balancer::{
    hash_key, Avoid, Balancer, Clock, Feedback, Outcome, PanicThreshold, Picked, Request,
};
pub use drain::{Drain, DrainFactory, Drained};
pub use error::{
    AttemptTimeout, BudgetExhausted, InvalidOption, LbError, RetryError, RetryErrorKind, Timeout,
};
pub use hash::ConsistentHash;
pub use local::LocalRoundRobin;
#[cfg(feature = "metrics")]
pub use metrics::{BalancerMetrics, Metered};
pub use outlier::{Outlier, OutlierConfig};
pub use p2c::{EndpointLoad, Load, P2c};
pub use random::Random;
pub use retry::{Decision, Retry};
pub use round_robin::RoundRobin;
pub use slow_start::{SlowStart, SlowStartConfig};
pub use stale::RefuseStale;
pub use subset::Subset;
pub use thread_view::EndpointRef;
pub use weighted::Weighted;
pub use zone::ZoneAware;
