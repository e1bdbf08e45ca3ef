//! Empty-set protection (issue 19): a sudden empty answer (or, if asked, a large loss) is
//! held back, the previous set published stale, until a second answer confirms it or the
//! hold ends. Time is tokio's, paused.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::protect::{EmptySetProtection, ProtectedInstancer};
use sd_core::{
    CommonOptions, Error, Event, Freshness, Instance, InstanceCache, Instancer, LoopConfig, Source,
    StaleReason, Step, Subscription, WatchedInstancer,
};

fn set(n: u16) -> Vec<Instance> {
    (1..=n).map(|p| Instance::new("10.0.0.1", p)).collect()
}

async fn next(sub: &mut Subscription) -> (usize, Freshness) {
    let (event, freshness) =
        tokio::time::timeout(Duration::from_secs(600), sub.next_with_freshness())
            .await
            .expect("an event")
            .expect("not ended");
    (event.as_instances().expect("a set").len(), freshness)
}

/// Nothing published within a minute of (paused) time.
async fn quiet(sub: &mut Subscription) {
    let r = tokio::time::timeout(Duration::from_secs(1), sub.next_with_freshness()).await;
    assert!(r.is_err(), "unexpected event: {r:?}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_answer_is_held_until_a_second_answer_confirms_it() {
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(3)));
    let p = ProtectedInstancer::start(inner.clone(), EmptySetProtection::default());
    let mut sub = p.subscribe();
    assert_eq!(next(&mut sub).await, (3, Freshness::Fresh));

    inner.update(Event::instances(set(0)));
    let (n, f) = next(&mut sub).await;
    assert_eq!(
        (n, f.reason()),
        (3, Some(StaleReason::Protected)),
        "the previous set, kept"
    );
    quiet(&mut sub).await;

    // The registry says it again at once (a registry restarted empty answers twice in a
    // row, before its registrants are back): not a confirmation.
    assert!(
        !inner.update(Event::instances(set(0))),
        "suppressed upstream"
    );
    quiet(&mut sub).await;
    // Again, 5 s after the shrink (an update that changes nothing upstream): confirmed.
    tokio::time::advance(Duration::from_secs(4)).await;
    let start = tokio::time::Instant::now();
    assert!(
        !inner.update(Event::instances(set(0))),
        "suppressed upstream"
    );
    assert_eq!(next(&mut sub).await, (0, Freshness::Fresh));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "confirmed by the answer, not the hold"
    );
    p.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_glitch_that_recovers_never_empties_the_client() {
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(3)));
    let p = ProtectedInstancer::start(inner.clone(), EmptySetProtection::default());
    let mut sub = p.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(0)));
    assert_eq!(next(&mut sub).await.0, 3);
    tokio::time::advance(Duration::from_secs(5)).await;
    inner.update(Event::instances(set(3)));
    assert_eq!(next(&mut sub).await, (3, Freshness::Fresh));
    // And the next empty answer is held again.
    inner.update(Event::instances(set(0)));
    assert_eq!(
        next(&mut sub).await.1.reason(),
        Some(StaleReason::Protected)
    );
    p.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_hold_is_bounded() {
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(2)));
    let p = ProtectedInstancer::start(
        inner.clone(),
        EmptySetProtection::default().hold(Duration::from_secs(10)),
    );
    let mut sub = p.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(0)));
    let start = tokio::time::Instant::now();
    assert_eq!(next(&mut sub).await.0, 2);
    let (n, f) = next(&mut sub).await;
    assert_eq!((n, f), (0, Freshness::Fresh));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "published at the end of the hold"
    );
    p.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_empty_answers_by_default_and_large_losses_when_asked() {
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(4)));
    let p = ProtectedInstancer::start(inner.clone(), EmptySetProtection::default());
    let mut sub = p.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(1)));
    assert_eq!(
        next(&mut sub).await,
        (1, Freshness::Fresh),
        "a shrink to one is not held"
    );
    p.stop().await;

    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(4)));
    let p = ProtectedInstancer::start(inner.clone(), EmptySetProtection::default().max_loss(0.5));
    let mut sub = p.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(2)));
    assert_eq!(
        next(&mut sub).await,
        (2, Freshness::Fresh),
        "losing half is not more than half"
    );
    inner.update(Event::instances(set(4)));
    next(&mut sub).await;
    inner.update(Event::instances(set(1)));
    let (n, f) = next(&mut sub).await;
    assert_eq!((n, f.reason()), (4, Some(StaleReason::Protected)));
    // A second, different shrink is a second answer: published.
    inner.update(Event::instances(set(0)));
    assert_eq!(next(&mut sub).await, (0, Freshness::Fresh));
    p.stop().await;
}

#[tokio::test(start_paused = true)]
async fn errors_pass_through_and_end_a_hold() {
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(2)));
    let p = ProtectedInstancer::start(inner.clone(), EmptySetProtection::default());
    let mut sub = p.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(0)));
    next(&mut sub).await;
    inner.update(Event::Error(Error::unavailable("test", "down")));
    let (e, f) = sub.next_with_freshness().await.unwrap();
    assert!(e.as_error().is_some());
    assert!(f.is_stale());
    quiet(&mut sub).await;
    p.stop().await;
}

/// Through the shared watch loop: a registry whose rounds answer the same empty set twice
/// confirms it on the second round (the round changes nothing in the instancer's cache).
struct Scripted(tokio::sync::mpsc::Receiver<Vec<Instance>>);

#[async_trait]
impl Source for Scripted {
    async fn next_step(&mut self) -> Step {
        match self.0.recv().await {
            Some(list) => Step::Publish(list),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_round_of_the_watch_loop_confirms() {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(set(2)).await.unwrap();
    let watched = WatchedInstancer::start(Scripted(rx), LoopConfig::new("test", "web")).await;
    let p = ProtectedInstancer::start(Arc::new(watched), EmptySetProtection::default());
    let mut sub = p.subscribe();
    assert_eq!(next(&mut sub).await.0, 2);
    tx.send(set(0)).await.unwrap();
    assert_eq!(
        next(&mut sub).await.1.reason(),
        Some(StaleReason::Protected)
    );
    quiet(&mut sub).await;
    tokio::time::advance(Duration::from_secs(4)).await;
    tx.send(set(0)).await.unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(next(&mut sub).await, (0, Freshness::Fresh));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "confirmed by the round, not the hold"
    );
    p.stop().await;
}

#[test]
fn the_protect_option() {
    let hold = |u: &str| {
        CommonOptions::split(u)
            .unwrap()
            .1
            .protect
            .map(|p| p.hold_time())
    };
    // On by default over the network, off in-process, and a switch either way.
    assert_eq!(hold("consul://h"), Some(Duration::from_secs(30)));
    assert_eq!(hold("etcd://h?dc=a"), Some(Duration::from_secs(30)));
    assert_eq!(hold("memory://m"), None);
    assert_eq!(hold("static://10.0.0.1:80"), None);
    assert_eq!(hold("memory://m?protect=2s"), Some(Duration::from_secs(2)));
    assert_eq!(hold("consul://h?protect=false"), None);
    assert_eq!(hold("consul://h?protect"), Some(Duration::from_secs(30)));
    assert_eq!(
        hold("consul://h?protect=true"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(hold("consul://h?protect=5s"), Some(Duration::from_secs(5)));
    assert_eq!(hold("consul://h?protect=off"), None);
    let (url, _) = CommonOptions::split("consul://h?dc=a&protect=5s&token=x").unwrap();
    assert_eq!(url, "consul://h?dc=a&token=x");
    for (bad, needle) in [
        ("consul://h?protect=0s", "must be positive"),
        ("consul://h?protect=soon", "protect=\"soon\""),
        ("consul://h?protect=1s&protect=2s", "given twice"),
    ] {
        let e = CommonOptions::split(bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

/// Under the disk cache (as `sdkit::connect` stacks them), a held-back shrink is never
/// written: a restart during the hold still finds the previous set on disk.
#[tokio::test]
async fn a_held_shrink_is_not_written_to_disk() {
    use sd_core::lkg::{CacheKey, DiskCache, DiskCachedInstancer};
    let dir = std::env::temp_dir().join(format!("sdkit-protect-lkg-{}", std::process::id()));
    let key = CacheKey::new("test", "r", &sd_core::ServiceQuery::new("web"));
    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(set(2)));
    let p = ProtectedInstancer::start(
        inner.clone(),
        EmptySetProtection::default().confirm_after(Duration::ZERO),
    );
    let d = DiskCachedInstancer::start(Arc::new(p), DiskCache::new(&dir), key.clone()).await;
    assert_eq!(DiskCache::new(&dir).load(&key).unwrap().instances.len(), 2);
    let mut sub = d.subscribe();
    next(&mut sub).await;
    inner.update(Event::instances(set(0)));
    let (n, f) = next(&mut sub).await;
    assert_eq!((n, f.reason()), (2, Some(StaleReason::Protected)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(DiskCache::new(&dir).load(&key).unwrap().instances.len(), 2);
    // Confirmed: now the empty set is the registry's word, and written.
    inner.update(Event::instances(set(0)));
    assert_eq!(next(&mut sub).await, (0, Freshness::Fresh));
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !DiskCache::new(&dir)
        .load(&key)
        .unwrap()
        .instances
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the confirmed set is never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
