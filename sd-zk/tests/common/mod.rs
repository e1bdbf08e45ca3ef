//! Helpers shared by the tests against the real ZooKeeper server.
#![allow(dead_code)]

use std::time::Duration;

use sd_core::{Event, Instance, InstanceSet, Subscription};
use sd_zk::ZkRegistry;
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

/// Waits (bounded by [`BOUND`]) for an instances event satisfying `pred`; returns it.
/// Error events on the way are skipped.
pub async fn wait_for_set(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_for_set_within(sub, what, BOUND, pred).await
}

/// [`wait_for_set`] with another bound.
pub async fn wait_for_set_within(
    sub: &mut Subscription,
    what: &str,
    bound: Duration,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    let mut last = None;
    let found = tokio::time::timeout(bound, async {
        loop {
            match sub.next().await {
                Some(Event::Instances(set)) if pred(&set) => return set,
                Some(e) => last = Some(e),
                None => panic!("{what}: the instancer ended"),
            }
        }
    })
    .await;
    match found {
        Ok(set) => set,
        Err(_) => panic!("{what}: not seen within {bound:?}; last event: {last:?}"),
    }
}

/// Waits (bounded) for an error event; returns it.
pub async fn wait_for_error(sub: &mut Subscription, what: &str) -> sd_core::Error {
    tokio::time::timeout(BOUND, async {
        loop {
            match sub.next().await {
                Some(Event::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("{what}: the instancer ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no error within {BOUND:?}"))
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

/// Ends `registry`'s current session from outside, as the server does when it expires it:
/// a second connection joins the session (same id and password) and closes it. The
/// registry's client then sees its session expire, with no server fault.
pub async fn expire_session(addr: &str, registry: &ZkRegistry) {
    let live = registry
        .client()
        .current()
        .await
        .expect("the registry has a live session");
    let info = live.session().clone();
    let thief = zk::Client::connector()
        .with_session(info)
        .with_session_timeout(SESSION)
        .connect(addr)
        .await
        .expect("join the session");
    drop(thief); // closes the session (not detached)
}
