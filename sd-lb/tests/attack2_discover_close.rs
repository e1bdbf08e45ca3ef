//! Second attack on issue 15: tower's `Balance` over `sd_lb::tower::Discover` once discovery
//! closes (examples/grpc's tower build closes its endpointer in `Client::close`).
//!
//! Run: `CARGO_INCREMENTAL=0 cargo test -p sd-lb --test attack2_discover_close`
//!
//! `a_balance_whose_discovery_closed_fails_instead_of_hanging` (failed before the fix in ee5b0e2; a regression test now): when the
//! endpointer is closed, `Discover::sync` (sd-lb/src/tower.rs) removes every service and the
//! stream ends (`Poll::Ready(None)`). tower 0.5's `p2c::Balance::poll_ready` ignores the end
//! of its discover stream (`let _ = self.update_pending_from_discover(cx)?`) and, with no
//! service left, returns `Poll::Pending` having registered no waker: the caller waits for
//! ever (bounded only by its own timeout), and a `Buffer` worker holding a request never
//! finishes. A discovery error *is* fatal to `Balance` (the `Discover` docs say so), so
//! yielding `Err(Stopped)` at the end would fail callers at once instead.

use std::time::Duration;

use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::tower::Discover;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{service_fn, Service, ServiceExt};

type Svc = tower::util::BoxCloneSyncService<(), u16, BoxError>;

#[tokio::test]
async fn a_balance_whose_discovery_closed_fails_instead_of_hanging() {
    let cache = InstanceCache::new();
    let ep = std::sync::Arc::new(DefaultEndpointer::new(
        &cache,
        |i: &Instance| -> Result<Svc, BoxError> {
            let port = i.port();
            Ok(tower::util::BoxCloneSyncService::new(service_fn(
                move |_: ()| async move { Ok::<u16, BoxError>(port) },
            )))
        },
    ));
    ep.apply(Event::instances(vec![
        Instance::new("10.0.0.1", 1),
        Instance::new("10.0.0.1", 2),
    ]));
    let mut balance = Balance::new(PendingRequestsDiscover::new(
        Discover::new(ep.clone()),
        CompleteOnResponse::default(),
    ));
    let port = balance.ready().await.unwrap().call(()).await.unwrap();
    assert!(port == 1 || port == 2);

    ep.close().await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), balance.ready()).await;
    match outcome {
        Ok(Err(_)) => {} // failed fast: what a caller can act on
        Ok(Ok(_)) => panic!("ready with discovery closed and every service removed"),
        Err(_) => panic!(
            "discovery closed: Balance::ready() neither failed nor became ready within 5 s \
             (it hangs for ever: no waker is registered once the Discover stream has ended)"
        ),
    }
}
