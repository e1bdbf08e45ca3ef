//! The registrar of a composed registry: registers in every member (retrying those that
//! cannot be reached) or in the first that accepts.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};

use super::{combine_errors, Composition};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::registrar::{Registrar, Registration};
use crate::task::{deadline_after, sleep_or_cancel, survive, BackgroundTask};

/// Where a composed registry's registrars register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegisterIn {
    /// In every member (the default): clients of any member, or of a failover that has
    /// switched, find the instance. `register` succeeds when at least one member accepted;
    /// it returns once every member has answered or, after the first acceptance, once the
    /// start timeout (1 s) has passed, so a stalled member does not hold it up. Members
    /// that failed or are still working go on in the background, retried with backoff,
    /// until they accept or `deregister` is called. It fails when no member accepted.
    /// `deregister` asks every member (one whose registration was cut short may hold it)
    /// and fails only when a member known to hold it could not remove it.
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
    /// How long `register` waits for the other members once one has accepted.
    start_timeout: Duration,
}

/// One member's registration in flight: its index and outcome.
type Attempt = Pin<Box<dyn Future<Output = (usize, Result<()>)> + Send>>;

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
            start_timeout: super::DEFAULT_START_TIMEOUT,
        }
    }

    /// How long `register` waits for the other members once one has accepted
    /// ([`DEFAULT_START_TIMEOUT`](super::DEFAULT_START_TIMEOUT)); those still working go on
    /// in the background.
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
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

    /// One member's registration, owning what it needs (so it can move to the background).
    fn attempt(&self, i: usize) -> Attempt {
        let registrar = self.members[i].1.clone();
        Box::pin(async move { (i, registrar.register().await) })
    }

    /// Registers in every member at once. Returns when one has accepted and the others
    /// have answered, or when the start timeout has passed since that first acceptance;
    /// fails when none accepts. Members still working or that failed go on in the
    /// background ([`Self::spawn_retry`]).
    async fn register_all(&self) -> Result<()> {
        let mut running: FuturesUnordered<Attempt> =
            (0..self.members.len()).map(|i| self.attempt(i)).collect();
        let mut failures = Vec::new();
        let mut failed = Vec::new();
        let mut deadline = None;
        loop {
            let next = match deadline {
                None => running.next().await,
                Some(at) => match tokio::time::timeout_at(at, running.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                None => break,
                Some((i, Ok(()))) => {
                    self.set_registered(i, true);
                    deadline.get_or_insert_with(|| deadline_after(self.start_timeout));
                }
                Some((i, Err(e))) => {
                    failures.push((self.members[i].0.clone(), e));
                    failed.push(i);
                }
            }
        }
        if deadline.is_none() {
            return Err(combine_errors(
                self.composition,
                "no member accepted the registration",
                failures,
            ));
        }
        if !failures.is_empty() || !running.is_empty() {
            let id = self.registration.instance_id();
            let slow: Vec<String> = self
                .registered()
                .iter()
                .zip(&self.members)
                .filter(|(r, _)| !**r)
                .map(|(_, (label, _))| label.clone())
                .collect();
            let message = if failures.is_empty() {
                String::new()
            } else {
                combine_errors(self.composition, "failed", failures).to_string()
            };
            survive(|| {
                tracing::warn!(composition = %self.composition, service = %self.registration.service,
                    id = %id, pending = ?slow, error = %message,
                    "registered in some members only; the others go on in the background")
            });
            self.spawn_retry(running, failed);
        }
        Ok(())
    }

    /// Finishes the `running` registrations and retries the `failed` members (and those
    /// of `running` that fail) with backoff until each accepts. The task holds the
    /// members' registrars, not `self`: dropping the composed registrar cancels it, and
    /// cancelling it drops the registrations in flight.
    fn spawn_retry(&self, mut running: FuturesUnordered<Attempt>, mut failed: Vec<usize>) {
        let members = self.members.clone();
        let service = self.registration.service.clone();
        let registered = self.registered.clone();
        let task = BackgroundTask::spawn(move |token| async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = token.cancelled() => return,
                    next = running.next() => next,
                };
                match next {
                    None => break,
                    Some((i, Ok(()))) => lock(&registered)[i] = true,
                    Some((i, Err(_))) => failed.push(i),
                }
            }
            let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
            while !failed.is_empty() {
                if !sleep_or_cancel(&token, backoff.next_delay()).await {
                    return;
                }
                let mut still = Vec::new();
                for i in failed {
                    let (label, registrar) = &members[i];
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
                            still.push(i);
                        }
                    }
                }
                failed = still;
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
        Err(combine_errors(
            self.composition,
            "no member accepted the registration",
            failures,
        ))
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
        // Every member, whatever the mode: one whose registration was cut short (a timeout
        // after the write, a cancelled `register`) may hold it without knowing.
        let registered = self.registered();
        let results =
            futures::future::join_all(self.members.iter().map(|(_, r)| r.deregister())).await;
        let mut failures: Vec<(String, Error)> = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => self.set_registered(i, false),
                // A member that held the registration and could not remove it: an error.
                Err(e) if registered[i] => failures.push((self.members[i].0.clone(), e)),
                // A member that never accepted it most likely does not hold it: said, not
                // failed (if it does, its own health check removes it).
                Err(e) => {
                    let label = &self.members[i].0;
                    survive(|| {
                        tracing::warn!(composition = %self.composition, service = %self.registration.service,
                            member = %label, error = %e,
                            "could not deregister from a member that had not accepted the registration")
                    })
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(combine_errors(
                self.composition,
                "deregistration failed",
                failures,
            ))
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
