//! Helpers shared by the tests against the real agent.
#![allow(dead_code)]

use std::time::Duration;

pub mod secure;

use sd_core::{Event, Instance, InstanceSet, Subscription};

/// The longest any test waits for one expected state.
pub const BOUND: Duration = Duration::from_secs(20);

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
