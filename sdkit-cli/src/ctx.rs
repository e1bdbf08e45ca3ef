//! What every command works with: the registry, its URL and the global options.

use std::sync::Arc;
use std::time::Duration;

use sdkit::{Event, InstanceSet, Instancer, Registry, ServiceQuery, Subscription};

use crate::failure::Failure;

/// The registry, its URL and the global options.
pub struct Ctx {
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// Its URL as shown in messages: credentials and secret option values hidden
    /// (`sdkit::config::redact`). Never the raw URL: every message quotes it.
    pub url: String,
    /// `--json`.
    pub json: bool,
    /// `--timeout`.
    pub timeout: Duration,
}

/// An instancer whose first state was a good one.
pub struct Opened {
    /// The instancer (stop it when done).
    pub instancer: Arc<dyn Instancer>,
    /// Its events after the first.
    pub events: Subscription,
    /// The first state.
    pub first: InstanceSet,
}

impl Ctx {
    /// No answer from the registry within `--timeout`.
    pub fn no_answer(&self) -> Failure {
        Failure::runtime(format!(
            "no answer from {} within {} (is the registry running? raise --timeout if it is slow)",
            self.url,
            humantime::format_duration(self.timeout)
        ))
    }

    /// Starts an instancer for `query` and waits for its first state. An error state (the
    /// registry cannot be read now: most likely a wrong URL or a server down) and no answer
    /// within `--timeout` are failures, after which the instancer is stopped.
    pub async fn open(&self, query: &ServiceQuery) -> Result<Opened, Failure> {
        let service = &query.service;
        let cannot = |e: &sdkit::Error| {
            Failure::from_sd(format!("cannot read {service:?} at {}", self.url), e)
        };
        let instancer = tokio::time::timeout(self.timeout, self.registry.instancer(query))
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|e| cannot(&e))?;
        let mut events = instancer.subscribe();
        let failure = match tokio::time::timeout(self.timeout, events.next()).await {
            Ok(Some(Event::Instances(first))) => {
                return Ok(Opened {
                    instancer,
                    events,
                    first,
                })
            }
            Ok(Some(Event::Error(e))) => cannot(&e),
            Ok(None) => Failure::runtime(format!("the instancer of {service:?} stopped")),
            Err(_) => self.no_answer(),
        };
        instancer.stop().await;
        Err(failure)
    }
}
