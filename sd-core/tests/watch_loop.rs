//! The shared watch loop: first round before return, errors published at once, backoff,
//! skip rounds, and a stop that cancels the round in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{
    Backoff, Error, Event, Instance, Instancer, LoopConfig, Source, Step, WatchedInstancer,
};

/// A source that plays a script, then blocks forever (like a long poll with no change).
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    rounds: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

#[async_trait::async_trait]
impl Source for Script {
    async fn next_step(&mut self) -> Step {
        self.rounds.fetch_add(1, Ordering::SeqCst);
        self.times.lock().unwrap().push(tokio::time::Instant::now());
        let next = self.steps.lock().unwrap().pop_front();
        match next {
            Some(s) => s,
            None => std::future::pending().await,
        }
    }
}

fn script(
    steps: Vec<Step>,
) -> (
    Script,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<tokio::time::Instant>>>,
) {
    let rounds = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    (
        Script {
            steps: Arc::new(Mutex::new(steps.into())),
            rounds: rounds.clone(),
            times: times.clone(),
        },
        rounds,
        times,
    )
}

fn pub_(addrs: &[&str]) -> Step {
    Step::Publish(addrs.iter().map(|a| Instance::parse(a).unwrap()).collect())
}

fn cfg() -> LoopConfig {
    LoopConfig::new("test", "svc")
        .backoff(Backoff::new(Duration::from_millis(10), Duration::from_secs(60)).with_seed(3))
}

#[tokio::test(start_paused = true)]
async fn first_round_runs_before_start_returns() {
    let (src, rounds, _) = script(vec![pub_(&["a:1"])]);
    let inst = WatchedInstancer::start(src, cfg()).await;
    assert!(rounds.load(Ordering::SeqCst) >= 1);
    assert_eq!(inst.state().unwrap().addrs(), ["a:1"]);
    inst.stop().await;
}

#[tokio::test(start_paused = true)]
async fn errors_are_published_at_once_and_recovery_follows() {
    let (src, _, times) = script(vec![
        pub_(&["a:1"]),
        Step::Fail(Error::unavailable("test", "down")),
        pub_(&["a:1", "b:1"]),
    ]);
    let inst = WatchedInstancer::start(src, cfg()).await;
    let mut sub = inst.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), ["a:1"]);
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        sub.next().await.unwrap(),
        Event::Error(Error::unavailable("test", "down"))
    );
    assert_eq!(
        tokio::time::Instant::now(),
        t0,
        "error published before any backoff sleep"
    );
    assert_eq!(sub.next().await.unwrap().addrs(), ["a:1", "b:1"]);
    // The round after the error waited for a backoff of 10 ms ± 50 %.
    let t = times.lock().unwrap().clone();
    let gap = t[2] - t[1];
    assert!(
        gap >= Duration::from_millis(5) && gap <= Duration::from_millis(15),
        "{gap:?}"
    );
    inst.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_over_consecutive_failures_and_skips_publish_nothing() {
    let (src, _, times) = script(vec![
        pub_(&["a:1"]),
        Step::Skip("index is not sane".into()),
        Step::Skip("index went backwards".into()),
        Step::Fail(Error::unavailable("test", "x")),
        Step::Fail(Error::unavailable("test", "x")),
        pub_(&["b:1"]),
    ]);
    let inst = WatchedInstancer::start(src, cfg()).await;
    let mut sub = inst.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), ["a:1"]);
    // Skips publish nothing: the next event is the error.
    assert!(sub.next().await.unwrap().as_error().is_some());
    assert_eq!(sub.next().await.unwrap().addrs(), ["b:1"]);
    let t = times.lock().unwrap().clone();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // gaps[0] follows a publish (no interval): zero. Then 10, 20, 40, 80 ms bases, ±50 %.
    assert_eq!(gaps[0], Duration::ZERO);
    for (i, base) in [10u64, 20, 40, 80].iter().enumerate() {
        let g = gaps[i + 1];
        let b = Duration::from_millis(*base);
        assert!(g >= b / 2 && g <= b * 3 / 2, "gap {i}: {g:?} vs base {b:?}");
    }
    inst.stop().await;
}

#[tokio::test(start_paused = true)]
async fn poll_interval_paces_successful_rounds() {
    let (src, _, times) = script(vec![pub_(&["a:1"]), pub_(&["a:1"]), pub_(&["b:1"])]);
    let inst = WatchedInstancer::start(src, cfg().interval(Duration::from_secs(30))).await;
    let mut sub = inst.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), ["a:1"]);
    assert_eq!(
        sub.next().await.unwrap().addrs(),
        ["b:1"],
        "identical poll suppressed"
    );
    let t = times.lock().unwrap().clone();
    for w in t.windows(2) {
        let g = w[1] - w[0];
        assert!(
            g >= Duration::from_secs(27) && g <= Duration::from_secs(33),
            "{g:?}"
        );
    }
    inst.stop().await;
}

/// A source that knows its own refresh (a DNS TTL) overrides the fixed interval, round by
/// round, and its wait is used as given.
#[tokio::test(start_paused = true)]
async fn refresh_after_overrides_the_interval_per_round() {
    struct Ttl {
        inner: Script,
        waits: VecDeque<Duration>,
        current: Option<Duration>,
    }
    #[async_trait::async_trait]
    impl Source for Ttl {
        async fn next_step(&mut self) -> Step {
            self.current = self.waits.pop_front();
            self.inner.next_step().await
        }
        fn refresh_after(&self) -> Option<Duration> {
            self.current
        }
    }
    let (inner, _, times) = script(vec![pub_(&["a:1"]), pub_(&["b:1"]), pub_(&["c:1"])]);
    let src = Ttl {
        inner,
        waits: [Duration::from_secs(2), Duration::from_secs(7)].into(),
        current: None,
    };
    let inst = WatchedInstancer::start(src, cfg().interval(Duration::from_secs(30))).await;
    let mut sub = inst.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs(), ["a:1"]);
    assert_eq!(sub.next().await.unwrap().addrs(), ["b:1"]);
    assert_eq!(sub.next().await.unwrap().addrs(), ["c:1"]);
    let t = times.lock().unwrap().clone();
    assert_eq!(t[1] - t[0], Duration::from_secs(2));
    assert_eq!(t[2] - t[1], Duration::from_secs(7));
    inst.stop().await;
}

/// CONSUL-9 [BUG] regression: stop cancels the round in flight (a blocked long poll) at
/// once, is idempotent, and nothing is published afterwards.
#[tokio::test(start_paused = true)]
async fn stop_cancels_the_round_in_flight() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    struct Blocking(Arc<AtomicUsize>, bool);
    #[async_trait::async_trait]
    impl Source for Blocking {
        async fn next_step(&mut self) -> Step {
            if !self.1 {
                self.1 = true;
                return pub_(&["a:1"]);
            }
            let _guard = Dropped(self.0.clone());
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let inst = WatchedInstancer::start(Blocking(dropped.clone(), false), cfg()).await;
    let mut sub = inst.subscribe();
    sub.next().await.unwrap();
    tokio::task::yield_now().await;
    inst.stop().await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the in-flight round was dropped"
    );
    inst.stop().await;
    assert_eq!(sub.next().await, None, "no event after stop");
}

/// A stop during a backoff sleep returns at once (the sleep is cancelled).
#[tokio::test(start_paused = true)]
async fn stop_interrupts_backoff() {
    let (src, rounds, _) = script(vec![Step::Fail(Error::unavailable("t", "x"))]);
    let inst = WatchedInstancer::start(
        src,
        cfg().backoff(Backoff::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )),
    )
    .await;
    let t0 = tokio::time::Instant::now();
    inst.stop().await;
    assert_eq!(tokio::time::Instant::now(), t0);
    assert_eq!(rounds.load(Ordering::SeqCst), 1);
}

/// Issue 16 (hostile registries): a failure carrying the registry's `Retry-After` waits at
/// least that long (capped at the backoff's cap) before the next round; one without it keeps
/// the backoff's own delay; the first round's hint counts too.
#[tokio::test(start_paused = true)]
async fn retry_after_stretches_the_backoff_up_to_its_cap() {
    let busy = |secs: u64| {
        Step::Fail(
            Error::unavailable("test", "HTTP 503").with_retry_after(Duration::from_secs(secs)),
        )
    };
    let (src, _, times) = script(vec![
        busy(5),
        busy(7),
        busy(3600),
        Step::Fail(Error::unavailable("test", "HTTP 500")),
        pub_(&["a:1"]),
    ]);
    let inst = WatchedInstancer::start(src, cfg()).await;
    let mut sub = inst.subscribe();
    let end = tokio::time::Instant::now() + Duration::from_secs(600);
    // Bounded: five scripted rounds, then the source blocks.
    while tokio::time::Instant::now() < end {
        if let Some(Event::Instances(_)) =
            tokio::time::timeout(Duration::from_secs(600), sub.next())
                .await
                .ok()
                .flatten()
        {
            break;
        }
    }
    let times = times.lock().unwrap().clone();
    // Five scripted rounds, then one that blocks.
    assert_eq!(times.len(), 6, "{times:?}");
    let gaps: Vec<Duration> = times[..5].windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff alone is 10 ms, 20 ms, 40 ms, 80 ms (x 0.5..1.5): the asked-for waits win.
    assert!(gaps[0] >= Duration::from_secs(5), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(7), "{gaps:?}");
    // An hour is capped at the backoff's cap (60 s).
    assert!(
        gaps[2] >= Duration::from_secs(60) && gaps[2] < Duration::from_secs(61),
        "{gaps:?}"
    );
    // No Retry-After: the backoff's own delay (base 80 ms, jittered).
    assert!(gaps[3] < Duration::from_millis(200), "{gaps:?}");
    inst.stop().await;
}

#[test]
fn retry_after_travels_with_unavailable_errors_only() {
    let d = Duration::from_secs(9);
    let e = Error::unavailable("test", "HTTP 429").with_retry_after(d);
    assert_eq!(e.retry_after(), Some(d));
    // The message, and so equality (which the cache uses), is unchanged.
    assert_eq!(e, Error::unavailable("test", "HTTP 429"));
    assert_eq!(Error::unavailable("test", "x").retry_after(), None);
    assert_eq!(
        Error::malformed("test", "x")
            .with_retry_after(d)
            .retry_after(),
        None
    );
}
