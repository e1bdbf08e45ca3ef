//! Test-only helpers for integration tests against **real** service registries.
//!
//! The servers (Consul, a second Consul agent with ACLs and mutual TLS, etcd 3.4 and 3.5,
//! ZooKeeper, Eureka, BIND DNS) run on 127.0.0.1, started by the project's own
//! `scripts/registries up [name...]`, which prints `export SD_TEST_...=...` lines. A test that
//! needs a server whose variable is not set starts it on demand through that script (once per
//! machine, shared by every test process, left running for the next run), so plain
//! `cargo test -p sd-consul` tests Consul for real:
//!
//! ```sh
//! cargo test -p sd-consul              # starts Consul on demand if it is not running
//! eval "$(scripts/registries up consul)" && cargo test -p sd-consul   # the same, explicit
//! SD_INTEGRATION=0 cargo test          # unit tests only: integration tests say SKIPPED
//! scripts/registries down              # stops what was started
//! ```
//!
//! This crate is meant to be used as a `dev-dependency` only (`publish = false`). It offers:
//!
//! * [`Server`], [`require()`] and the [`require!`] macro: find a server's address from the
//!   environment, or start the server on demand; with `SD_INTEGRATION=0` skip the test
//!   instead, loudly (a `SKIPPED (not run)` line that `cargo test` shows).
//! * [`conformance`](mod@conformance) and the [`conformance!`] macro: the one contract every registry backend
//!   passes.
//! * [`unique_name`]: per-test unique, lowercase `[a-z0-9-]` names for services, key
//!   prefixes and DNS labels, so tests sharing one server never see each other's data.
//! * Fault injection: [`kill`], [`pause`], [`resume`], [`restart`], [`restart_empty`],
//!   [`wait_ready`] and the
//!   [`PauseGuard`], all implemented by running `scripts/registries <verb> <name>`.
//! * [`cluster`](mod@cluster): the three-member clusters (etcd, ZooKeeper, Consul) and the
//!   two Eureka peers of `scripts/registries`: their addresses, faults on one member,
//!   the current leader, and a cluster-wide fault-test lock.
//! * [`CountingAllocator`] (module [`alloc`]): a counting global allocator for
//!   zero-allocation tests (per-thread counts) and benchmarks (all threads, live bytes).
//! * [`hostile::HostileServer`]: a scripted hostile HTTP/1.1 server on 127.0.0.1
//!   (malformed, huge, endless and stalled bodies, 429/500/503 with `Retry-After`, redirects)
//!   that records and counts the requests it gets.
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
pub mod cluster;
pub mod conformance;
mod control;
mod env;
pub mod hostile;
mod lock;
mod logs;
mod names;
pub mod propagation;
pub mod proxy;
#[cfg(feature = "metrics")]
pub mod recorded;

pub use alloc::CountingAllocator;
pub use control::{
    kill, machine_dir, pause, registries_dir, repo_root, restart, restart_empty, resume,
    script_path, wait_ready, ControlError, PauseGuard,
};
pub use env::{
    consul_secure_dir, dns_zone, etcd_secure_dir, integration_required, require, Server,
    INTEGRATION_ENV,
};
pub use lock::{exclusive, shared, ExclusiveGuard, SharedGuard};
pub use logs::LogCapture;
pub use names::unique_name;

/// Returns the address of a registry server, or returns early from the calling test.
///
/// `require!(server)` evaluates to the server's address (see [`require()`]: the `SD_TEST_*`
/// variable, or the server started on demand). With `SD_INTEGRATION=0` and no variable the
/// enclosing function returns `()` after printing a loud `SKIPPED (not run)` line.
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
