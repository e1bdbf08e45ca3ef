//! Helpers shared by the tests against the real etcd servers (3.4 and 3.5).
#![allow(dead_code)]

use std::time::Duration;

use sd_core::{Event, HealthCheck, Instance, InstanceSet, Registration, Subscription};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::conformance::{wait_error, wait_set};
use sd_testkit::{unique_name, Server};

pub mod fault;

/// The longest any test waits for one expected state (a hang guard, not a timing claim).
pub const BOUND: Duration = Duration::from_secs(20);

/// Runs the async test body `$body(server: Server)` once against etcd 3.4 and once against
/// etcd 3.5, as two tests named `<name>::etcd34` and `<name>::etcd35`.
#[macro_export]
macro_rules! both_servers {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd34() {
                super::$name(sd_testkit::Server::Etcd).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd35() {
                super::$name(sd_testkit::Server::Etcd35).await
            }
        }
    };
}

/// A registry on `addr` with a prefix of its own (`/sdtest/<unique>`), so tests sharing one
/// server never see each other's keys, and short timeouts. `extra` is appended to the URL
/// query (e.g. `&ttl=2s`).
pub fn registry(addr: &str, what: &str, extra: &str) -> EtcdRegistry {
    let prefix = format!("/sdtest/{}", unique_name(what));
    EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix={prefix}&timeout=2s&dial_timeout=1s&keep_alive=6s{extra}"
    ))
    .unwrap()
}

/// The server's address, or `None` (skip) when it is not configured.
pub fn addr(server: Server) -> Option<String> {
    sd_testkit::require(server)
}

/// Waits (bounded by [`BOUND`]) for an instances event satisfying `pred`; returns it.
/// Error events on the way are skipped (sd-testkit's `conformance::wait_set`).
pub async fn wait_for_set(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_set(sub, BOUND, what, pred).await
}

/// [`wait_for_set`] with another bound.
pub async fn wait_for_set_within(
    sub: &mut Subscription,
    what: &str,
    bound: Duration,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_set(sub, bound, what, pred).await
}

/// Waits (bounded by [`BOUND`]) for an error event; returns it.
pub async fn wait_for_error(sub: &mut Subscription, what: &str) -> sd_core::Error {
    wait_for_error_within(sub, what, BOUND).await
}

/// [`wait_for_error`] with another bound.
pub async fn wait_for_error_within(
    sub: &mut Subscription,
    what: &str,
    bound: Duration,
) -> sd_core::Error {
    wait_error(sub, bound, what).await;
    match sub.current() {
        Some(Event::Error(e)) => e,
        other => panic!("{what}: the error was replaced at once by {other:?}"),
    }
}

/// Deletes every key under `dir` (test clean-up).
pub async fn delete_dir(client: &sd_etcdv3::Client, dir: &str) {
    client
        .etcd()
        .await
        .unwrap()
        .delete(
            dir,
            Some(sd_etcdv3::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

/// The ids in `set`, sorted.
pub fn ids(set: &InstanceSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|i| i.id().to_string()).collect();
    v.sort();
    v
}

/// The instance with `id` in `set`.
pub fn by_id<'a>(set: &'a InstanceSet, id: &str) -> Option<&'a Instance> {
    set.iter().find(|i| i.id() == id)
}

/// A registration of `127.0.0.1:port` with id `id` under `service`, leased for `ttl`.
pub fn ttl_registration(service: &str, port: u16, id: &str, ttl: Duration) -> Registration {
    Registration::new(service, Instance::builder("127.0.0.1", port).id(id).build())
        .check(HealthCheck::Ttl(ttl))
}
