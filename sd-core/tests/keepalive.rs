//! The shared keep-alive loop: pacing, retry with backoff after failures, stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
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
