//! # sd-lb
//!
//! Load balancing for **sdkit**: balancers that pick one endpoint per request from an
//! [`Endpointer`](sd_core::Endpointer)'s lock-free snapshot, a [`Retry`] loop with go-kit's
//! semantics and its flaws fixed, and integration with tower.
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
#![warn(missing_docs)]

pub mod balancer;
pub mod error;
pub mod hash;
pub mod local;
pub mod outlier;
pub mod p2c;
pub mod random;
pub mod retry;
pub mod round_robin;
pub mod tower;
pub mod weighted;

pub use balancer::{hash_key, Avoid, Balancer, Clock, Feedback, Outcome, Picked, Request};
pub use error::{AttemptTimeout, BudgetExhausted, LbError, RetryError, RetryErrorKind, Timeout};
pub use hash::ConsistentHash;
pub use local::LocalRoundRobin;
pub use outlier::{Outlier, OutlierConfig};
pub use p2c::{EndpointLoad, Load, P2c};
pub use random::Random;
pub use retry::{Decision, Retry, RetryBudget};
pub use round_robin::{Counter, RoundRobin};
pub use weighted::Weighted;
