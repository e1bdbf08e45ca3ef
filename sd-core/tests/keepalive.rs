//! The shared keep-alive loop: pacing, retry with backoff after failures, stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use sd_core::{spawn_keepalive, Error, KeepAlive, KeepAliveConfig, Result};
use tokio::time::Instant;

/// Records when each round ran; fails the rounds listed in `fail`.
struct Recorder {
    start: Instant,
    rounds: Mutex<Vec<Duration>>,
    fail: Vec<usize>,
}

#[async_trait]
impl KeepAlive for Recorder {
    async fn keep_alive(&self) -> Result<()> {
        let mut rounds = self.rounds.lock().unwrap();
        rounds.push(self.start.elapsed());
        if self.fail.contains(&rounds.len()) {
            Err(Error::unavailable("test", "heartbeat refused"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rounds_every_period_and_retry_failures_sooner() {
    let keeper = Arc::new(Recorder {
        start: Instant::now(),
        rounds: Mutex::new(Vec::new()),
        fail: vec![2, 3],
    });
    let period = Duration::from_secs(10);
    let task = spawn_keepalive(
        keeper.clone(),
        KeepAliveConfig::new("test", "svc/1", period),
    );
    tokio::time::sleep(Duration::from_secs(35)).await;
    task.stop().await;
    let rounds = keeper.rounds.lock().unwrap().clone();
    // 1st at 10 s (ok), 2nd at 20 s (fails), 3rd within [50 ms, 150 ms] after (fails),
    // 4th within [100 ms, 300 ms] after that (ok), then back to the period.
    assert_eq!(rounds[0], Duration::from_secs(10));
    assert_eq!(rounds[1], Duration::from_secs(20));
    let retry1 = rounds[2] - rounds[1];
    let retry2 = rounds[3] - rounds[2];
    assert!(
        retry1 >= Duration::from_millis(50) && retry1 < Duration::from_millis(150),
        "{retry1:?}"
    );
    assert!(
        retry2 >= Duration::from_millis(100) && retry2 < Duration::from_millis(300),
        "{retry2:?}"
    );
    assert_eq!(rounds[4] - rounds[3], period);
    assert_eq!(rounds.len(), 5, "{rounds:?}");
}

/// A round that never finishes (a registry that hangs) is cancelled by stop.
struct Hang;

#[async_trait]
impl KeepAlive for Hang {
    async fn keep_alive(&self) -> Result<()> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn stop_cancels_a_hanging_round() {
    let task = spawn_keepalive(
        Arc::new(Hang),
        KeepAliveConfig::new("test", "svc/1", Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    task.stop().await;
    assert!(task.is_finished());
}

/// Counts its rounds; a round waits for a permit when `hold` is set, and records its end
/// (finished or dropped mid-way).
struct Counted {
    started: std::sync::atomic::AtomicUsize,
    ended: std::sync::atomic::AtomicUsize,
    hold: Option<tokio::sync::Semaphore>,
}

impl Counted {
    fn new(hold: bool) -> Arc<Self> {
        Arc::new(Counted {
            started: Default::default(),
            ended: Default::default(),
            hold: hold.then(|| tokio::sync::Semaphore::new(0)),
        })
    }
    fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Marks the round's end when dropped, whether it finished or was cancelled.
struct EndOnDrop<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl KeepAlive for Counted {
    async fn keep_alive(&self) -> Result<()> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _end = EndOnDrop(&self.ended);
        if let Some(hold) = &self.hold {
            hold.acquire().await.expect("never closed").forget();
        }
        Ok(())
    }
}

/// Issue 17: stopping a loop that waits between rounds needs no hand-off to its task (it
/// completes on its first poll), and no round starts afterwards, even when the loop's timer
/// was already due when `stop` ran (then the loop's `select!` between its sleep and its
/// cancellation could take either branch: only the gate keeps the round from starting).
#[tokio::test(start_paused = true)]
async fn stop_between_rounds_is_immediate_and_no_round_follows() {
    let period = Duration::from_secs(1);
    for _ in 0..32 {
        let keeper = Counted::new(false);
        let task = spawn_keepalive(
            keeper.clone(),
            KeepAliveConfig::new("test", "svc/1", period),
        );
        tokio::task::yield_now().await; // the loop waits for its first period
                                        // The timer becomes due, but the loop's task has not run since.
        tokio::time::advance(period).await;
        assert_eq!(keeper.started(), 0, "the loop has not been polled since");
        assert!(
            task.stop().now_or_never().is_some(),
            "between rounds, stop needs no hand-off"
        );
        assert!(task.is_finished(), "stopped: no round can start");
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(period * 5).await;
        assert_eq!(keeper.started(), 0, "a round started after stop returned");
    }
}

/// Dropping the task is a cancel: no round starts after the drop, also when the timer was
/// already due (the loop's task not run since). The loop's waits pick at random between a
/// due timer and a cancelled token: a dropped task whose gate stayed open started a round
/// (sent a heartbeat, or registered again) in about one drop out of four; 64 drops in a row
/// without one would be a 1e-8 chance.
#[tokio::test(start_paused = true)]
async fn drop_with_the_timer_due_starts_no_round() {
    let period = Duration::from_secs(1);
    for _ in 0..64 {
        let keeper = Counted::new(false);
        let task = spawn_keepalive(
            keeper.clone(),
            KeepAliveConfig::new("test", "svc/1", period),
        );
        tokio::task::yield_now().await; // the loop waits for its first period
        tokio::time::advance(period).await; // due, the loop not polled since
        assert_eq!(keeper.started(), 0);
        drop(task);
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(period * 5).await;
        assert_eq!(
            keeper.started(),
            0,
            "a round started after the task was dropped"
        );
    }
}

/// A round in flight is waited for: `stop` returns only once the round has ended (here:
/// cancelled, so dropped mid-way), and no later round starts.
#[tokio::test(start_paused = true)]
async fn stop_during_a_round_waits_until_it_has_ended() {
    let period = Duration::from_secs(1);
    let keeper = Counted::new(true);
    let task = spawn_keepalive(
        keeper.clone(),
        KeepAliveConfig::new("test", "svc/1", period),
    );
    tokio::time::sleep(period + Duration::from_millis(1)).await;
    assert_eq!(
        (keeper.started(), keeper.ended()),
        (1, 0),
        "a round is in flight"
    );
    let mut stop = Box::pin(task.stop());
    assert!(
        (&mut stop).now_or_never().is_none(),
        "a round runs: stop must wait for it"
    );
    stop.await;
    assert_eq!(keeper.ended(), 1, "stop returned before the round ended");
    keeper.hold.as_ref().unwrap().add_permits(10);
    tokio::time::sleep(period * 5).await;
    assert_eq!(keeper.started(), 1, "a round started after stop returned");
}

#[test]
fn ttl_period_is_a_third() {
    assert_eq!(
        KeepAliveConfig::period_for_ttl(Duration::from_secs(9)),
        Duration::from_secs(3)
    );
    // Never a busy loop, whatever the period asked for.
    let c = KeepAliveConfig::new("test", "x", Duration::ZERO);
    assert_eq!(c.period, Duration::from_millis(10));
}
