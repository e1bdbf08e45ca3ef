//! The registrar of a composed registry: registers in every member (retrying those that
//! cannot be reached) or in the first that accepts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{combine_errors, Composition};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::registrar::{Registrar, Registration};
use crate::task::{sleep_or_cancel, survive, BackgroundTask};

/// Where a composed registry's registrars register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegisterIn {
    /// In every member (the default): clients of any member, or of a failover that has
    /// switched, find the instance. `register` succeeds when at least one member accepted;
    /// members that could not be reached are retried in the background (with backoff)
    /// until they accept or `deregister` is called. It fails when no member accepted.
    #[default]
    All,
    /// In the first member, in order, that accepts: one registration, in the registry
    /// clients look at first. `register` fails when no member accepts.
    First,
}

/// The first delay, and the longest, between two tries of a member that did not accept a
/// registration.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A registrar over the members of a [`ComposedRegistry`](super::ComposedRegistry).
#[derive(Debug)]
pub struct ComposedRegistrar {
    composition: Composition,
    registration: Registration,
    members: Vec<(String, Arc<dyn Registrar>)>,
    register_in: RegisterIn,
    /// Serialises `register` and `deregister`.
    op: tokio::sync::Mutex<()>,
    /// Which members hold the registration (shared with the background retry).
    registered: Arc<Mutex<Vec<bool>>>,
    /// The background retry of members that have not accepted yet (`RegisterIn::All`).
    retry: Mutex<Option<BackgroundTask>>,
}

impl ComposedRegistrar {
    /// A registrar announcing `registration` through `members` (label, registrar).
    pub fn new(
        composition: Composition,
        registration: Registration,
        members: Vec<(String, Arc<dyn Registrar>)>,
        register_in: RegisterIn,
    ) -> Self {
        let n = members.len();
        ComposedRegistrar {
            composition,
            registration,
            members,
            register_in,
            op: tokio::sync::Mutex::new(()),
            registered: Arc::new(Mutex::new(vec![false; n])),
            retry: Mutex::new(None),
        }
    }

    /// The labels of the members that hold the registration now (for diagnostics and tests).
    pub fn registered_in(&self) -> Vec<String> {
        let registered = self.registered();
        self.members
            .iter()
            .zip(registered)
            .filter(|(_, r)| *r)
            .map(|((label, _), _)| label.clone())
            .collect()
    }

    fn registered(&self) -> Vec<bool> {
        lock(&self.registered).clone()
    }

    fn set_registered(&self, i: usize, yes: bool) {
        lock(&self.registered)[i] = yes;
    }

    fn take_retry(&self) -> Option<BackgroundTask> {
        lock(&self.retry).take()
    }

    async fn register_all(&self) -> Result<()> {
        let results =
            futures::future::join_all(self.members.iter().map(|(_, r)| r.register())).await;
        let mut failures = Vec::new();
        let mut pending = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => self.set_registered(i, true),
                Err(e) => {
                    failures.push((self.members[i].0.clone(), e));
                    pending.push(i);
                }
            }
        }
        if failures.len() == self.members.len() {
            return Err(combine_errors(self.composition, failures));
        }
        if !failures.is_empty() {
            let id = self.registration.instance_id();
            let message = combine_errors(self.composition, failures).to_string();
            survive(|| {
                tracing::warn!(composition = %self.composition, service = %self.registration.service,
                    id = %id, error = %message,
                    "registered in some members only; retrying the others in the background")
            });
            self.spawn_retry(pending);
        }
        Ok(())
    }

    /// Retries `pending` members until each accepts. The task holds the members'
    /// registrars, not `self`: dropping the composed registrar cancels it.
    fn spawn_retry(&self, pending: Vec<usize>) {
        let members: Vec<(usize, String, Arc<dyn Registrar>)> = pending
            .into_iter()
            .map(|i| (i, self.members[i].0.clone(), self.members[i].1.clone()))
            .collect();
        let service = self.registration.service.clone();
        let registered = self.registered.clone();
        let task = BackgroundTask::spawn(move |token| async move {
            let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
            let mut members = members;
            while !members.is_empty() {
                if !sleep_or_cancel(&token, backoff.next_delay()).await {
                    return;
                }
                let mut still = Vec::new();
                for (i, label, registrar) in members {
                    let result = tokio::select! {
                        biased;
                        _ = token.cancelled() => return,
                        r = registrar.register() => r,
                    };
                    match result {
                        Ok(()) => {
                            lock(&registered)[i] = true;
                            survive(|| {
                                tracing::info!(service = %service, member = %label,
                                    "registered in a member that had not accepted before")
                            })
                        }
                        Err(e) => {
                            survive(|| {
                                tracing::debug!(service = %service, member = %label, error = %e,
                                    "member still does not accept the registration")
                            });
                            still.push((i, label, registrar));
                        }
                    }
                }
                members = still;
            }
        });
        if let Some(old) = lock(&self.retry).replace(task) {
            old.cancel();
        }
    }

    async fn register_first(&self) -> Result<()> {
        if let Some(i) = self.registered().iter().position(|r| *r) {
            // Registered already: keep it where it is (idempotent), re-asserting it there.
            return self.members[i].1.register().await;
        }
        let mut failures = Vec::new();
        for (i, (label, registrar)) in self.members.iter().enumerate() {
            match registrar.register().await {
                Ok(()) => {
                    self.set_registered(i, true);
                    return Ok(());
                }
                Err(e) => failures.push((label.clone(), e)),
            }
        }
        Err(combine_errors(self.composition, failures))
    }
}

impl Drop for ComposedRegistrar {
    fn drop(&mut self) {
        if let Some(task) = self.take_retry() {
            task.cancel();
        }
    }
}

#[async_trait]
impl Registrar for ComposedRegistrar {
    async fn register(&self) -> Result<()> {
        let _op = self.op.lock().await;
        if let Some(task) = self.take_retry() {
            task.stop().await;
        }
        match self.register_in {
            RegisterIn::All => self.register_all().await,
            RegisterIn::First => self.register_first().await,
        }
    }

    /// Stops any background retry, then deregisters from every member (each member's
    /// deregistration is idempotent, so one that never accepted is harmless). Fails, naming
    /// the members, when any member fails.
    async fn deregister(&self) -> Result<()> {
        let _op = self.op.lock().await;
        if let Some(task) = self.take_retry() {
            task.stop().await;
        }
        let registered = self.registered();
        let targets: Vec<usize> = match self.register_in {
            RegisterIn::All => (0..self.members.len()).collect(),
            RegisterIn::First => (0..self.members.len()).filter(|i| registered[*i]).collect(),
        };
        let results =
            futures::future::join_all(targets.iter().map(|i| self.members[*i].1.deregister()))
                .await;
        let mut failures: Vec<(String, Error)> = Vec::new();
        for (i, result) in targets.into_iter().zip(results) {
            match result {
                Ok(()) => self.set_registered(i, false),
                Err(e) => failures.push((self.members[i].0.clone(), e)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(combine_errors(self.composition, failures))
        }
    }

    fn registration(&self) -> &Registration {
        &self.registration
    }
}

/// Locks `m`, also after a panic elsewhere (a `Vec<bool>` cannot be left half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
