//! The documented contracts of the cache, subscriptions, endpointer statuses and the jitter
//! helper, as an attacker read them (the first two tests failed before their fixes).

use std::sync::Arc;
use std::time::Duration;

use sd_core::backoff::jittered;
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Instance, InstanceCache, Instancer,
    Status,
};

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.addr().to_string())
}

fn set(ports: &[u16]) -> Event {
    Event::instances(
        ports
            .iter()
            .map(|p| Instance::new("10.0.0.1", *p))
            .collect::<Vec<_>>(),
    )
}

/// `Status::Failed` doc: "Reads fail with this error ... the very first event was an error
/// (nothing known to serve)". With `invalidate_on_error(t)` a first event that is an error
/// gives `Invalidating` instead, and reads answer `Ok([])` ("no instances") for `t`,
/// although the registry was never reached.
#[tokio::test(start_paused = true)]
async fn first_event_error_fails_reads_also_with_invalidate_on_error() {
    let cache = InstanceCache::new();
    cache.update(Event::Error(Error::unavailable("test", "registry down")));
    let ep = DefaultEndpointer::builder(&cache, factory)
        .invalidate_on_error(Duration::from_secs(30))
        .build();
    let snap = ep.endpoints();
    assert!(
        snap.get().is_err(),
        "nothing was ever known, yet reads say 'no instances': {:?} with status {:?}",
        snap.get(),
        snap.status()
    );
    ep.close().await;
}

/// `jittered` is public and `LoopConfig::interval_jitter` a public field: a NaN spread
/// (a computed fraction gone wrong) makes `gen_range(NaN..=NaN)` panic, killing the watch
/// loop. `clamp` does not remove NaN.
#[test]
fn jittered_with_a_nan_spread_does_not_panic() {
    let r = std::panic::catch_unwind(|| jittered(Duration::from_secs(10), f64::NAN));
    assert!(r.is_ok(), "jittered(10 s, NaN) panicked");
}

/// Held up (no new bug): a first state published on another thread while subscribers
/// subscribe is never lost (issue 9 item 3), stressed across threads.
#[test]
fn racing_first_publish_is_never_lost_across_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..5_000 {
        let cache = Arc::new(InstanceCache::new());
        let c = cache.clone();
        let publisher = std::thread::spawn(move || {
            c.update(set(&[1]));
        });
        let mut sub = cache.subscribe();
        publisher.join().unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .ok()
                .flatten()
        });
        assert_eq!(got, Some(set(&[1])), "round {round}: first state lost");
    }
}

/// Held up: the subscription contracts of issue 9 item 4 around a stopped instancer.
#[tokio::test]
async fn subscription_contracts_at_stop() {
    // Stopped with an unseen state: next() returns it, then None; try_next likewise.
    let cache = InstanceCache::new();
    let mut a = cache.subscribe();
    let mut b = cache.subscribe();
    cache.update(set(&[1]));
    cache.update(set(&[2]));
    cache.close();
    assert_eq!(a.next().await, Some(set(&[2])));
    assert_eq!(a.next().await, None);
    assert_eq!(b.try_next(), Some(set(&[2])));
    assert_eq!(b.try_next(), None);
    // first() does not consume: next() still returns the state afterwards.
    let mut c = cache.subscribe();
    assert_eq!(c.first().await, Some(set(&[2])));
    assert_eq!(c.next().await, Some(set(&[2])));
    // A clone has seen what its original had seen when cloned.
    let mut d = cache.subscribe();
    let mut d2 = d.clone();
    assert_eq!(d.next().await, Some(set(&[2])));
    assert_eq!(d2.next().await, Some(set(&[2])));
    // Stopped before publishing: first() and next() end, the endpointer is not ready.
    let empty = InstanceCache::new();
    let mut e = empty.subscribe();
    let ep = DefaultEndpointer::new(&empty, factory);
    empty.stop().await;
    assert_eq!(e.first().await, None);
    assert_eq!(e.next().await, None);
    assert!(!ep.ready().await);
    assert!(matches!(
        ep.endpoints().status(),
        Status::Failed(Error::Stopped)
    ));
    ep.close().await;
}

/// Held up: an endpointer whose subscription ended keeps serving and says `Stale`, also after
/// later errors would have arrived; `apply` after the end still updates (as documented).
#[tokio::test]
async fn ended_subscription_then_manual_apply_stays_stale() {
    let cache = InstanceCache::new();
    cache.update(set(&[1]));
    let ep = DefaultEndpointer::new(&cache, factory);
    cache.close();
    let mut ch = ep.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(ep.endpoints().status(), Status::Stale(Error::Stopped)) {
            ch.changed().await;
        }
    })
    .await
    .unwrap();
    ep.apply(set(&[1, 2]));
    let s = ep.endpoints();
    assert_eq!(s.all().len(), 2);
    assert!(
        matches!(s.status(), Status::Stale(Error::Stopped)),
        "{:?}",
        s.status()
    );
    ep.close().await;
}
