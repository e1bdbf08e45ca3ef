//! A member's instancer whose creation is still in flight: the composed registry starts
//! every member's instancer at once and does not wait for a slow or unreachable one (its
//! first round can take the member's whole request timeout).

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::cache::{InstanceCache, Subscription};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::instancer::Instancer;
use crate::registry::{Registry, ServiceQuery};
use crate::task::BackgroundTask;

/// Where the creation stands.
#[derive(Clone, Debug)]
pub(crate) enum Creation {
    /// Still in flight.
    Pending,
    /// The member's instancer exists and is followed.
    Created,
    /// The member rejected the query (e.g. a service name it cannot carry).
    Failed(Error),
}

/// An instancer that creates a member's instancer in the background and forwards its
/// states once it exists. Until then it has no state.
pub(crate) struct Deferred {
    out: Arc<InstanceCache>,
    inner: Arc<Mutex<Option<Arc<dyn Instancer>>>>,
    creation: watch::Receiver<Creation>,
    task: BackgroundTask,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match inner {
            Some(inner) => inner.fmt(f),
            None => f.write_str("Deferred(pending)"),
        }
    }
}

impl Deferred {
    /// Starts creating `registry`'s instancer for `query`.
    pub(crate) fn spawn(registry: Arc<dyn Registry>, query: ServiceQuery) -> Self {
        let out = Arc::new(InstanceCache::new());
        let inner: Arc<Mutex<Option<Arc<dyn Instancer>>>> = Arc::new(Mutex::new(None));
        let (tx, creation) = watch::channel(Creation::Pending);
        let (task_out, task_inner) = (out.clone(), inner.clone());
        let task = BackgroundTask::spawn(move |token| async move {
            let created = tokio::select! {
                biased;
                _ = token.cancelled() => return,
                created = registry.instancer(&query) => created,
            };
            let instancer = match created {
                Ok(instancer) => instancer,
                Err(e) => {
                    task_out.update(Event::Error(e.clone()));
                    let _ = tx.send(Creation::Failed(e));
                    return;
                }
            };
            let mut sub = instancer.subscribe();
            *task_inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(instancer);
            let _ = tx.send(Creation::Created);
            loop {
                tokio::select! {
                    biased;
                    _ = token.cancelled() => return,
                    next = sub.next_with_freshness() => match next {
                        Some((event, freshness)) => {
                            task_out.update_with(event, freshness);
                        }
                        None => {
                            task_out.close();
                            return;
                        }
                    },
                }
            }
        });
        Deferred {
            out,
            inner,
            creation,
            task,
        }
    }

    /// Waits until the creation is done (created or failed); `Err` if it failed.
    pub(crate) async fn created(&self) -> Result<()> {
        let mut creation = self.creation.clone();
        let done = creation
            .wait_for(|c| !matches!(c, Creation::Pending))
            .await
            .map(|c| c.clone());
        match done {
            Ok(Creation::Failed(e)) => Err(e),
            // Created, or the task ended (cancelled): nothing to report.
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Instancer for Deferred {
    fn subscribe(&self) -> Subscription {
        self.out.subscribe()
    }

    /// Stops the creation or the forwarding, then the member's instancer if it exists.
    async fn stop(&self) {
        self.task.stop().await;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(inner) = inner {
            inner.stop().await;
        }
        self.out.close();
    }
}
