//! Helpers shared by the tests against the real ZooKeeper server.
#![allow(dead_code)]

use std::time::Duration;

use sd_core::{
    Event, Instance, InstanceSet, Instancer, Registrar, Registration, ServiceQuery, Subscription,
};
use sd_testkit::conformance::{wait_error, wait_set};
use sd_zk::{ZkInstancer, ZkRegistrar, ZkRegistry};
use zookeeper_client as zk;

/// The longest any test waits for one expected state (a hang guard, not a performance bound).
pub const BOUND: Duration = Duration::from_secs(30);

/// The session timeout the tests use: short, so expiry tests are quick.
pub const SESSION: Duration = Duration::from_secs(2);

/// A registry on `addr` with the base path `/sdkit-tests`, a 2 s session and `extra` options.
pub fn registry(addr: &str, extra: &str) -> ZkRegistry {
    ZkRegistry::from_url(&format!(
        "zk://{addr}/sdkit-tests?session_timeout=2s&connect_timeout=5s{extra}"
    ))
    .unwrap()
}

/// A raw session to the server, for writing behind the backend's back.
pub async fn raw(addr: &str) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(5))
        .connect(addr)
        .await
        .unwrap()
}

/// Waits (bounded by [`BOUND`]) for an instances event satisfying `pred` (sd-testkit's
/// `wait_set`: error events on the way are skipped); returns it.
pub async fn wait_for_set(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_set(sub, BOUND, what, pred).await
}

/// Waits (bounded by [`BOUND`]) for an error event; returns the error.
pub async fn wait_for_error(sub: &mut Subscription, what: &str) -> sd_core::Error {
    wait_error(sub, BOUND, what).await;
    match sub.current() {
        Some(Event::Error(e)) => e,
        other => panic!("{what}: expected the error state, got {other:?}"),
    }
}

/// A registered instance and an instancer on its service that has seen it.
pub struct Watched {
    /// The registrar, registered.
    pub registrar: ZkRegistrar,
    /// An instancer on the registration's service.
    pub instancer: ZkInstancer,
    /// A subscription to `instancer`, past the state that first held the instance.
    pub sub: Subscription,
}

/// Registers `port`/`id` under `service` through `registry`, starts an instancer on the
/// service and waits (bounded) until the instance is in it.
pub async fn register_and_watch(
    registry: &ZkRegistry,
    service: &str,
    port: u16,
    id: &str,
) -> Watched {
    let registrar = registry
        .zk_registrar(Registration::new(
            service,
            Instance::builder("127.0.0.1", port).id(id).build(),
        ))
        .unwrap();
    registrar.register().await.unwrap();
    let (instancer, mut sub) = watch(registry, service).await;
    wait_for_set(&mut sub, "registered", |s| by_id(s, id).is_some()).await;
    Watched {
        registrar,
        instancer,
        sub,
    }
}

/// An instancer on `service` and a subscription to it.
pub async fn watch(registry: &ZkRegistry, service: &str) -> (ZkInstancer, Subscription) {
    let instancer = registry
        .zk_instancer(&ServiceQuery::new(service))
        .await
        .unwrap();
    let sub = instancer.subscribe();
    (instancer, sub)
}

/// The instance with `id` in `set`.
pub fn by_id<'a>(set: &'a InstanceSet, id: &str) -> Option<&'a Instance> {
    set.iter().find(|i| i.id() == id)
}

/// The ids in `set`, sorted.
pub fn ids(set: &InstanceSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|i| i.id().to_string()).collect();
    v.sort();
    v
}

/// A registry as [`registry`], connected through `proxy` (for [`expire_session`]).
pub fn registry_via(proxy: &sd_testkit::proxy::Proxy, extra: &str) -> ZkRegistry {
    registry(&proxy.addr.to_string(), extra)
}

/// Ends `registry`'s current session from outside, as the server does when it expires it.
/// `registry` must reach the server through `proxy` ([`registry_via`]): the proxy is cut, so
/// its client cannot reconnect, while a second connection straight to the server (`addr`)
/// joins the session (same id and password) and closes it; then the proxy is restored and
/// the registry's client finds its session gone. (Without the cut, the client reconnecting
/// takes the session back from the joining connection, and the two can keep stealing it
/// from each other until the join times out.)
pub async fn expire_session(addr: &str, proxy: &sd_testkit::proxy::Proxy, registry: &ZkRegistry) {
    let live = registry
        .client()
        .current()
        .await
        .expect("the registry has a live session");
    let info = live.session().clone();
    drop(live);
    proxy.cut();
    let mut last = None;
    for _ in 0..3 {
        match zk::Client::connector()
            .with_session(info.clone())
            .with_session_timeout(SESSION)
            .with_connection_timeout(std::time::Duration::from_secs(10))
            .connect(addr)
            .await
        {
            Ok(thief) => {
                drop(thief); // closes the session (not detached)
                last = None;
                break;
            }
            // Cut off, the session may expire before the join: ended all the same.
            Err(zk::Error::SessionExpired) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    proxy.restore();
    if let Some(e) = last {
        panic!("join the session: {e:?}");
    }
}
