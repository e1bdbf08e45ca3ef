//! A background loop with cancellation and an awaitable, idempotent stop.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs a future on the tokio runtime until it ends or is cancelled.
///
/// [`stop`](BackgroundTask::stop) cancels the token handed to the future and waits until the
/// future has returned (or was dropped); calling it again, or from several tasks at once, is
/// fine. Dropping the `BackgroundTask` cancels without waiting.
///
/// This is how every instancer, endpointer and registrar in sdkit keeps go-kit's missing
/// guarantee (PR #583): once `stop().await` returns, the loop publishes nothing more.
#[derive(Debug)]
pub struct BackgroundTask {
    token: CancellationToken,
    done: watch::Receiver<bool>,
}

impl BackgroundTask {
    /// Spawns `f(token)` on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn<F, Fut>(f: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let (done_tx, done) = watch::channel(false);
        let fut = f(token.clone());
        tokio::spawn(async move {
            fut.await;
            // If the future panics, done_tx is dropped instead, which stop() also accepts.
            let _ = done_tx.send(true);
        });
        BackgroundTask { token, done }
    }

    /// Cancels the loop and waits until it has ended. Idempotent.
    pub async fn stop(&self) {
        self.token.cancel();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Cancels without waiting.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        *self.done.borrow() || self.done.has_changed().is_err()
    }

    /// The loop's cancellation token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// `now + d`, saturating a century ahead instead of overflowing when `d` is huge (a
/// `Duration::MAX` timeout or TTL given by code must not panic).
pub(crate) fn deadline_after(d: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Runs `f`, dropping a panic out of it. For the log lines of the background loops: logging
/// runs user code (any `tracing` layer), which may panic, and a loop that has already
/// committed its state must carry on. Callers log only after committing, and never under a
/// lock.
pub(crate) fn survive(f: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Sleeps for `d` unless `token` is cancelled first. Returns `false` when cancelled.
pub async fn sleep_or_cancel(token: &CancellationToken, d: std::time::Duration) -> bool {
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_waits_and_is_idempotent() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let task = BackgroundTask::spawn(|token| async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::task::yield_now() => { t.fetch_add(1, Ordering::SeqCst); }
                }
            }
            // Work done after cancellation is still awaited by stop().
            tokio::task::yield_now().await;
            t.fetch_add(1000, Ordering::SeqCst);
        });
        tokio::task::yield_now().await;
        let (a, b) = tokio::join!(task.stop(), task.stop());
        let _ = (a, b);
        assert!(task.is_finished());
        let after = ticks.load(Ordering::SeqCst);
        assert!(after >= 1000);
        task.stop().await;
        tokio::task::yield_now().await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            after,
            "nothing runs after stop"
        );
    }

    #[tokio::test]
    async fn stop_returns_when_the_task_panicked() {
        let task = BackgroundTask::spawn(|_| async { panic!("boom") });
        task.stop().await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_or_cancel_reports_cancellation() {
        let token = CancellationToken::new();
        assert!(sleep_or_cancel(&token, std::time::Duration::from_secs(5)).await);
        token.cancel();
        assert!(!sleep_or_cancel(&token, std::time::Duration::from_secs(5)).await);
    }
}
