//! Test-only helpers for integration tests against **real** service registries.
//!
//! The servers (Consul, a second Consul agent with ACLs and mutual TLS, etcd 3.4 and 3.5,
//! ZooKeeper, Eureka, BIND DNS) are started on
//! 127.0.0.1 by `scripts/registries up`, which prints `export SD_TEST_...=...` lines:
//!
//! ```sh
//! eval "$(scripts/registries up)"
//! cargo test
//! ```
//!
//! This crate is meant to be used as a `dev-dependency` only (`publish = false`). It offers:
//!
//! * [`Server`], [`require()`] and the [`require!`] macro: find a server's address from the
//!   environment, or skip the test (print a notice and return) when it is not set. With
//!   `SD_INTEGRATION=1` a missing server is a hard failure instead, so CI cannot silently
//!   skip everything.
//! * [`unique_name`]: per-test unique, lowercase `[a-z0-9-]` names for services, key
//!   prefixes and DNS labels, so tests sharing one server never see each other's data.
//! * Fault injection: [`kill`], [`pause`], [`resume`], [`restart`], [`wait_ready`] and the
//!   [`PauseGuard`], all implemented by running `scripts/registries <verb> <name>`.
//! * [`CountingAllocator`] (module [`alloc`]): a counting global allocator for
//!   zero-allocation tests (per-thread counts) and benchmarks (all threads, live bytes).
//! * [`exclusive`]: a cross-process lock so fault tests in different test binaries never
//!   disturb the same server at the same time; [`shared`] lets a normal test opt in to
//!   waiting while a fault test runs. Tests that take neither are never blocked.
//!
//! ```no_run
//! use sd_testkit::{require, Server};
//!
//! #[tokio::test]
//! async fn consul_smoke() {
//!     let addr = require!(Server::Consul); // "127.0.0.1:18500", or the test returns early
//!     let service = sd_testkit::unique_name("consul-smoke");
//!     // ... register `service` against `addr` ...
//! #   let _ = (addr, service);
//! }
//! ```

#![warn(missing_docs)]

pub mod alloc;
pub mod conformance;
mod control;
mod env;
mod lock;
mod names;

pub use alloc::CountingAllocator;
pub use control::{
    kill, pause, registries_dir, repo_root, restart, resume, script_path, wait_ready, ControlError,
    PauseGuard,
};
pub use env::{
    consul_secure_dir, dns_zone, integration_required, require, Server, INTEGRATION_ENV,
};
pub use lock::{exclusive, shared, ExclusiveGuard, SharedGuard};
pub use names::unique_name;

/// Returns the address of a registry server, or returns early from the calling test.
///
/// `require!(server)` evaluates to the `String` value of the server's `SD_TEST_*`
/// variable (see [`require()`]). When the variable is missing the enclosing function
/// returns `()` after printing `skipping integration test: SD_TEST_X not set` — or the
/// test panics if `SD_INTEGRATION=1`.
///
/// For tests that return a value (e.g. `Result<(), E>`), give the value to return:
/// `require!(Server::Etcd, Ok(()))`.
///
/// ```no_run
/// # async fn demo() {
/// let etcd = sd_testkit::require!(sd_testkit::Server::Etcd);
/// # let _ = etcd; }
/// ```
#[macro_export]
macro_rules! require {
    ($server:expr $(,)?) => {
        match $crate::require($server) {
            ::std::option::Option::Some(value) => value,
            ::std::option::Option::None => return,
        }
    };
    ($server:expr, $ret:expr $(,)?) => {
        match $crate::require($server) {
            ::std::option::Option::Some(value) => value,
            ::std::option::Option::None => return $ret,
        }
    };
}
