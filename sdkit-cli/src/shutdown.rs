//! Waiting for Ctrl-C (SIGINT) or SIGTERM.

use crate::failure::Failure;

/// Signal handlers, installed by [`Shutdown::install`] before the command starts its work,
/// so that a signal arriving at any later moment (say, right after `registered` was printed)
/// is caught instead of ending the process the default way without deregistering.
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers for SIGINT and SIGTERM (Ctrl-C elsewhere).
    pub fn install() -> Result<Shutdown, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let failed =
                |e: std::io::Error| Failure::runtime(format!("cannot handle signals: {e}"));
            Ok(Shutdown {
                interrupt: signal(SignalKind::interrupt()).map_err(failed)?,
                terminate: signal(SignalKind::terminate()).map_err(failed)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Shutdown {})
    }

    /// Runs `work` unless a signal comes first (then `None`).
    pub async fn unless_stopped<F: std::future::Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            _ = self.wait() => None,
        }
    }

    /// Completes on the first Ctrl-C or SIGTERM after [`install`](Self::install).
    pub async fn wait(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
