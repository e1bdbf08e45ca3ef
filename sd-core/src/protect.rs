//! Empty-set protection: a registry that suddenly answers with an empty set (or, if asked,
//! loses more than a given share of the instances at once) does not empty the client at
//! once. The previous set is kept, published stale ([`StaleReason::Protected`]), until the
//! shrink is confirmed by a second answer from the registry, at least
//! [`EmptySetProtection::confirm_after`] (5 s) later, or a bounded time has passed.
//!
//! A registry that loses its data (an agent restarted empty, a lease storm, a session
//! expiry) would otherwise take every endpoint away for as long as it takes the registrants
//! to register again. Unbounded protection hides a real scale to zero (nacos-sdk-rust#226,
//! nacos-sdk-go#420); here it is bounded by [`EmptySetProtection::hold`] and visible in the
//! freshness of every snapshot.
//!
//! Turn it on with the `protect` option of any URL given to `sdkit::connect`
//! (`?protect=true` for the defaults, `?protect=10s` for another hold) or by wrapping a
//! registry in a [`ProtectedRegistry`] (one instancer: [`ProtectedInstancer`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sd_core::protect::{EmptySetProtection, ProtectedInstancer};
//! use sd_core::*;
//!
//! let registry = Arc::new(InstanceCache::new()); // an instancer driven by hand
//! registry.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
//! let protected = ProtectedInstancer::start(registry.clone(), EmptySetProtection::default());
//! let mut sub = protected.subscribe();
//! sub.next().await;
//!
//! registry.update(Event::instances(Vec::<Instance>::new())); // suddenly empty
//! let (event, freshness) = sub.next_with_freshness().await.unwrap();
//! assert_eq!(event.addrs(), ["10.0.0.1:80"]); // the previous set, kept
//! assert_eq!(freshness.reason(), Some(StaleReason::Protected));
//!
//! tokio::time::advance(std::time::Duration::from_secs(5)).await;
//! registry.update(Event::instances(Vec::<Instance>::new())); // the same answer, 5 s later
//! let (event, freshness) = sub.next_with_freshness().await.unwrap();
//! assert!(event.addrs().is_empty()); // confirmed: the set is empty
//! assert!(!freshness.is_stale());
//! protected.stop().await;
//! # });
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cache::{InstanceCache, Subscription};
use crate::error::Result;
use crate::event::{Event, InstanceSet};
use crate::follow::{pass_through_registry, Followed};
use crate::freshness::{Freshness, StaleReason};
use crate::instancer::Instancer;
use crate::registry::{Registry, ServiceQuery};
use crate::task::{deadline_after, survive, BackgroundTask};
use crate::watch_loop::CloseOnDrop;

/// When a shrink is held back, and for how long; see the [module](self) docs.
///
/// The default protects against an empty answer only, for at most 30 s.
#[derive(Clone, Debug, PartialEq)]
pub struct EmptySetProtection {
    hold: Duration,
    max_loss: Option<f64>,
    confirm_after: Duration,
}

impl Default for EmptySetProtection {
    fn default() -> Self {
        EmptySetProtection {
            hold: Duration::from_secs(30),
            max_loss: None,
            confirm_after: Duration::from_secs(5),
        }
    }
}

impl EmptySetProtection {
    /// The longest a shrink is held back without confirmation (default 30 s). After it the
    /// registry's answer is published, whatever it is.
    #[must_use]
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Also hold back an answer that loses more than `share` (0 to 1) of the instances at
    /// once, by count (default: only an empty answer). `share` is clamped to 0..=1.
    #[must_use]
    pub fn max_loss(mut self, share: f64) -> Self {
        self.max_loss = Some(if share.is_nan() {
            1.0
        } else {
            share.clamp(0.0, 1.0)
        });
        self
    }

    /// The least time between the shrink and an identical answer that confirms it
    /// (default 5 s). An identical answer sooner does not confirm: a registry restarted
    /// empty answers twice at once (a Consul agent's index starts again, and the client
    /// asks again at once), before its registrants have had time to register again.
    #[must_use]
    pub fn confirm_after(mut self, d: Duration) -> Self {
        self.confirm_after = d;
        self
    }

    /// The hold.
    pub fn hold_time(&self) -> Duration {
        self.hold
    }

    /// Whether going from `old` to `new` is a shrink to hold back.
    pub fn is_suspicious(&self, old: &InstanceSet, new: &InstanceSet) -> bool {
        if old.is_empty() || new.len() >= old.len() {
            return false;
        }
        if new.is_empty() {
            return true;
        }
        match self.max_loss {
            Some(share) => (old.len() - new.len()) as f64 / old.len() as f64 > share,
            None => false,
        }
    }
}

/// A shrink held back: the registry's answer and when it is published anyway.
struct Held {
    answer: InstanceSet,
    until: Instant,
    /// An identical answer confirms it from this time on.
    confirmable: Instant,
}

/// The follower's state.
struct Guard {
    config: EmptySetProtection,
    out: Arc<InstanceCache>,
    name: String,
    /// The last fresh set published.
    good: Option<InstanceSet>,
    held: Option<Held>,
}

impl Guard {
    fn handle(&mut self, event: Event, freshness: Freshness) {
        match event {
            Event::Instances(set) if !freshness.is_stale() => {
                let old = self.good.clone();
                match old {
                    Some(old) if self.held.is_none() && self.config.is_suspicious(&old, &set) => {
                        let (was, now) = (old.len(), set.len());
                        self.out.update_with(
                            Event::Instances(old),
                            Freshness::stale_now(StaleReason::Protected),
                        );
                        self.held = Some(Held {
                            answer: set,
                            until: deadline_after(self.config.hold),
                            confirmable: deadline_after(self.config.confirm_after),
                        });
                        crate::observe::shrink_held(&self.name);
                        survive(|| {
                            tracing::warn!(instancer = %self.name, was, now, hold = ?self.config.hold,
                                "registry answered with a sudden shrink: keeping the previous set (stale) until a second answer confirms it or the hold ends")
                        });
                    }
                    // A second answer while holding (another shrink or a recovery), or a
                    // normal update: published as it is.
                    _ => self.publish(set, "a second answer"),
                }
            }
            Event::Instances(set) => {
                // Stale data from below (a disk snapshot): passed on, not a reference.
                self.held = None;
                self.out.update_with(Event::Instances(set), freshness);
            }
            Event::Error(err) => {
                self.held = None;
                self.out.update(Event::Error(err));
            }
        }
    }

    /// Publishes `set` fresh, ending any hold (logged with `why`).
    fn publish(&mut self, set: InstanceSet, why: &str) {
        if let Some(held) = self.held.take() {
            let n = set.len();
            survive(|| {
                tracing::info!(instancer = %self.name, instances = n, held = held.answer.len(),
                    "shrink published after {why}")
            });
        }
        self.good = Some(set.clone());
        self.out
            .update_with(Event::Instances(set), Freshness::Fresh);
    }

    /// The registry answered again without a change: the held shrink is confirmed.
    fn confirmed(&mut self) {
        if let Some(held) = self
            .held
            .as_ref()
            .filter(|h| Instant::now() >= h.confirmable)
        {
            let answer = held.answer.clone();
            self.publish(answer, "a second identical answer");
        }
    }

    fn expired(&mut self) {
        if let Some(held) = self.held.as_ref() {
            let answer = held.answer.clone();
            self.publish(answer, "the hold ended");
        }
    }
}

/// Wraps any [`Instancer`] with [`EmptySetProtection`]; see the [module](self) docs.
pub struct ProtectedInstancer {
    watch: Arc<Followed>,
}

impl fmt::Debug for ProtectedInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedInstancer")
            .field("inner", &self.watch.inner[0])
            .finish()
    }
}

impl ProtectedInstancer {
    /// Follows `inner` with `config`. Applies `inner`'s current state before returning.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(inner: Arc<dyn Instancer>, config: EmptySetProtection) -> Self {
        Self::start_named(inner, config, String::new())
    }

    /// [`start`](Self::start), naming the instancer `name` in logs (the service).
    pub fn start_named(
        inner: Arc<dyn Instancer>,
        config: EmptySetProtection,
        name: impl Into<String>,
    ) -> Self {
        let out = Arc::new(InstanceCache::new());
        let mut guard = Guard {
            config,
            out: out.clone(),
            name: name.into(),
            good: None,
            held: None,
        };
        let mut sub = inner.subscribe();
        if let Some((event, freshness)) = sub.try_next_with_freshness() {
            guard.handle(event, freshness);
        }
        let mut answers = sub.answers();
        answers.mark_unchanged();
        let closing = CloseOnDrop(out.clone());
        let task = BackgroundTask::spawn(move |token| async move {
            let _closing = closing;
            loop {
                let until = guard.held.as_ref().map(|h| h.until);
                let holding = until.is_some();
                tokio::select! {
                    biased;
                    _ = token.cancelled() => return,
                    next = sub.next_with_freshness() => match next {
                        Some((event, freshness)) => guard.handle(event, freshness),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(until.unwrap_or_else(Instant::now)), if holding => {
                        guard.expired();
                    }
                    Ok(()) = answers.changed(), if holding => {
                        // A new state is handled as such; an update that changed nothing
                        // after the held answer is the registry saying it again.
                        let count = *answers.borrow_and_update();
                        if let Some((event, freshness)) = sub.try_next_with_freshness() {
                            guard.handle(event, freshness);
                        } else if count > sub.state_answer() {
                            guard.confirmed();
                        }
                    }
                }
            }
        });
        ProtectedInstancer {
            watch: Arc::new(Followed {
                out,
                inner: vec![inner],
                task,
            }),
        }
    }

    /// The current state (for tests and diagnostics).
    pub fn state(&self) -> Option<Event> {
        self.watch.out.state()
    }
}

#[async_trait]
impl Instancer for ProtectedInstancer {
    /// The subscription keeps the follower (and through it the inner instancer) running
    /// after this instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.watch.subscribe()
    }

    /// Stops the inner instancer and the follower.
    async fn stop(&self) {
        self.watch.stop().await
    }
}

/// A [`Registry`] whose instancers are [`ProtectedInstancer`]s; registrars and service
/// listing pass through. `sdkit::connect` builds one for a URL with the `protect` option.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::protect::{EmptySetProtection, ProtectedRegistry};
/// use sd_core::{MemoryRegistry, Registry, ServiceQuery};
///
/// let registry = ProtectedRegistry::new(Arc::new(MemoryRegistry::new()), EmptySetProtection::default());
/// let instancer = registry.instancer(&ServiceQuery::new("web")).await?;
/// instancer.stop().await;
/// # Ok::<(), sd_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ProtectedRegistry {
    inner: Arc<dyn Registry>,
    config: EmptySetProtection,
}

impl ProtectedRegistry {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Registry>, config: EmptySetProtection) -> Self {
        ProtectedRegistry { inner, config }
    }
}

#[async_trait]
impl Registry for ProtectedRegistry {
    pass_through_registry!();

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        let inner = self.inner.instancer(query).await?;
        Ok(Arc::new(ProtectedInstancer::start_named(
            inner,
            self.config.clone(),
            query.service.clone(),
        )))
    }
}
