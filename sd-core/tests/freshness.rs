//! Staleness is visible (issue 19): every state an instancer publishes and every endpoint
//! snapshot says whether its data is stale, why, and how old it is. Time is tokio's, paused.

use std::time::Duration;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Freshness, Instance, InstanceCache,
    Instancer, StaleReason, Status,
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

fn down() -> Event {
    Event::Error(Error::unavailable("test", "registry down"))
}

/// Waits until the endpointer has published a state with `version > after`.
async fn settle<E: Send + Sync + 'static>(ep: &DefaultEndpointer<E>, after: u64) {
    let mut changes = ep.changes();
    while ep.endpoints().version() <= after {
        assert!(changes.changed().await, "endpointer gone");
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

/// The cache marks a set fresh; the first error makes the state stale from that moment,
/// later errors keep that moment; a set makes it fresh again.
#[tokio::test(start_paused = true)]
async fn cache_states_carry_freshness() {
    let cache = InstanceCache::new();
    assert_eq!(cache.freshness(), None);
    assert!(cache.update(set(&[1, 2])));
    assert_eq!(cache.freshness(), Some(Freshness::Fresh));
    tokio::time::advance(S(5)).await;
    assert!(cache.update(down()));
    let stale = cache.freshness().unwrap();
    assert_eq!(stale.reason(), Some(StaleReason::Error));
    assert_eq!(
        stale.age(),
        Duration::ZERO,
        "stale from the error, not from the last change"
    );
    tokio::time::advance(S(7)).await;
    // Another error: the state changes (new message) but the data is stale since the first.
    assert!(cache.update(Event::Error(Error::unavailable("test", "still down"))));
    assert_eq!(cache.freshness().unwrap().age(), S(7));
    // The same error again is suppressed as before.
    assert!(!cache.update(Event::Error(Error::unavailable("test", "still down"))));
    assert!(cache.update(set(&[1, 2])));
    assert_eq!(cache.freshness(), Some(Freshness::Fresh));
    // The same set marked otherwise is published again, with the same instance handles.
    let mut sub = cache.subscribe();
    let (first, f) = sub.try_next_with_freshness().unwrap();
    assert_eq!(f, Freshness::Fresh);
    assert!(cache.update_with(set(&[1, 2]), Freshness::stale_now(StaleReason::Disk)));
    let (again, f) = sub.try_next_with_freshness().unwrap();
    assert_eq!(f.reason(), Some(StaleReason::Disk));
    let (a, b) = (first.as_instances().unwrap(), again.as_instances().unwrap());
    assert!(Instance::ptr_eq(&a[0], &b[0]));
    assert!(
        !cache.update_with(set(&[1, 2]), f.clone()),
        "unchanged: not published"
    );
}

/// The endpointer's snapshot follows: fresh, stale with a growing age through an outage
/// (the endpoints still served), fresh again on recovery.
#[tokio::test(start_paused = true)]
async fn endpointer_snapshot_says_how_old_and_why() {
    let cache = InstanceCache::new();
    cache.update(set(&[1, 2]));
    let ep = DefaultEndpointer::new(&cache, factory);
    let snap = ep.endpoints();
    assert!(!snap.is_stale());
    assert_eq!(snap.age(), Duration::ZERO);
    tokio::time::advance(S(100)).await;
    assert_eq!(
        ep.endpoints().age(),
        Duration::ZERO,
        "fresh data does not age"
    );

    let v = ep.endpoints().version();
    cache.update(down());
    settle(&ep, v).await;
    tokio::time::advance(S(30)).await;
    let snap = ep.endpoints();
    assert!(matches!(snap.status(), Status::Stale(_)));
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Error));
    assert_eq!(snap.age(), S(30));
    assert_eq!(snap.get().unwrap().len(), 2, "last known good still served");

    let v = snap.version();
    cache.update(Event::Error(Error::unavailable("test", "other")));
    settle(&ep, v).await;
    tokio::time::advance(S(10)).await;
    assert_eq!(ep.endpoints().age(), S(40), "stale since the first error");

    let v = ep.endpoints().version();
    cache.update(set(&[1, 2, 3]));
    settle(&ep, v).await;
    let snap = ep.endpoints();
    assert_eq!(snap.freshness(), &Freshness::Fresh);
    assert_eq!(snap.get().unwrap().len(), 3);
    ep.close().await;
}

/// An endpointer subscribing while the instancer is stale gets the instancer's time, not
/// its own start; a set marked stale (from disk) is served with its reason.
#[tokio::test(start_paused = true)]
async fn late_subscriber_and_explicit_staleness() {
    let cache = InstanceCache::new();
    cache.update_with(set(&[1]), Freshness::stale_now(StaleReason::Disk));
    tokio::time::advance(S(20)).await;
    let ep = DefaultEndpointer::new(&cache, factory);
    let snap = ep.endpoints();
    assert_eq!(snap.status(), &Status::Current);
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Disk));
    assert_eq!(snap.age(), S(20));
    // An error while serving disk data keeps the disk time and reason.
    let v = snap.version();
    cache.update(down());
    settle(&ep, v).await;
    let snap = ep.endpoints();
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Disk));
    assert_eq!(snap.age(), S(20));
    ep.close().await;
}

/// When the instancer stops, the endpoints will not change any more: stale (stopped).
#[tokio::test(start_paused = true)]
async fn stopped_instancer_makes_endpoints_stale() {
    let cache = InstanceCache::new();
    cache.update(set(&[1]));
    let ep = DefaultEndpointer::new(&cache, factory);
    let v = ep.endpoints().version();
    Instancer::stop(&cache).await;
    settle(&ep, v).await;
    tokio::time::advance(S(3)).await;
    let snap = ep.endpoints();
    assert_eq!(snap.freshness().reason(), Some(StaleReason::Stopped));
    assert_eq!(snap.age(), S(3));
    ep.close().await;
}

/// A wall-clock time from another process (a file's) converts to an age on tokio's clock.
#[tokio::test(start_paused = true)]
async fn wall_clock_staleness() {
    let written = std::time::SystemTime::now() - S(3600);
    let f = Freshness::stale_since_wall(written, StaleReason::Disk);
    let age = f.age();
    assert!(age >= S(3600) && age < S(3700), "{age:?}");
    let future = std::time::SystemTime::now() + S(3600);
    assert_eq!(
        Freshness::stale_since_wall(future, StaleReason::Disk).age(),
        Duration::ZERO
    );
}
