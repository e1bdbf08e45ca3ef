//! The instance cache: stores the latest event and fans it out to subscribers.
//!
//! Every backend Instancer publishes through an [`InstanceCache`]. Compared with go-kit's
//! `internal/instance.Cache` (behaviours C-1..C-9):
//!
//! - events are sorted and identical updates suppressed, as in go-kit (C-2, C-3);
//! - fan-out is latest-value (`tokio::sync::watch`): publishing never blocks, a slow
//!   subscriber only misses intermediate states, and there is no lock held while anyone
//!   receives, so go-kit's deadlocks (C-9) cannot happen;
//! - a new subscriber sees the current state at once (C-5), and dropping the
//!   [`Subscription`] unsubscribes (C-6);
//! - events are shared immutable values, so there is nothing to deep-copy (C-4) and no
//!   caller's data is sorted in place (C-2's side effect is gone).
//! - the state before the first publish is "unknown" (`None`), not an empty set, so a
//!   consumer can tell "no instances" from "not known yet" (replaces C-1 and C-3a).

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::watch;

use crate::event::Event;
use crate::freshness::Freshness;
use crate::instancer::Instancer;

/// One published state: the event and how fresh its data is.
#[derive(Debug, Clone)]
struct Published {
    event: Event,
    freshness: Freshness,
    /// The number of the update that published it (see `InstanceCache::answers`).
    answer: u64,
}

/// Stores the current [`Event`] and hands it to subscribers. Cheap to share behind an `Arc`.
///
/// Each state also carries a [`Freshness`]: [`update`](Self::update) marks a set fresh and
/// an error stale (since the start of the error state, see [`Freshness`]);
/// [`update_with`](Self::update_with) sets it explicitly (e.g. a set loaded from disk).
#[derive(Debug)]
pub struct InstanceCache {
    tx: Mutex<Option<watch::Sender<Option<Published>>>>,
    rx: watch::Receiver<Option<Published>>,
    /// Counts every update, published or suppressed: a second identical answer from the
    /// registry is visible here (empty-set protection reads it as a confirmation).
    answers: watch::Sender<u64>,
}

impl Default for InstanceCache {
    fn default() -> Self {
        Self::new()
    }
}

impl InstanceCache {
    /// An empty cache whose state is not known yet.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(None);
        InstanceCache {
            tx: Mutex::new(Some(tx)),
            rx,
            answers: watch::channel(0).0,
        }
    }

    /// Publishes `event` unless it equals the current state. Returns whether it was published.
    ///
    /// Instance sets arrive sorted (an [`InstanceSet`](crate::InstanceSet) always is).
    /// Instances equal to ones already published keep their old handles, so consumers
    /// detect unchanged instances with a pointer comparison. After [`close`](Self::close),
    /// nothing is published.
    ///
    /// A set is published [`Freshness::Fresh`]; an error makes the state stale
    /// ([`StaleReason::Error`](crate::StaleReason::Error)) from now, or keeps the time and
    /// reason of a state that was already stale.
    pub fn update(&self, event: Event) -> bool {
        self.publish(event, None)
    }

    /// Publishes `event` with the given `freshness` unless both equal the current state
    /// (the same set marked otherwise is published again, with the same handles). Returns
    /// whether it was published.
    pub fn update_with(&self, event: Event, freshness: Freshness) -> bool {
        self.publish(event, Some(freshness))
    }

    fn publish(&self, event: Event, freshness: Option<Freshness>) -> bool {
        // What the update replaces or discards is dropped after the locks are released:
        // freeing thousands of instances must not hold up subscribers reading the state.
        let (mut discarded, mut replaced): (Option<Event>, Option<Published>) = (None, None);
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        // Every update is numbered; the state it publishes carries its number, and the count
        // moves only after the state is sent (both under the lock), so a reader that sees
        // the count beyond the current state's number knows of a later, suppressed update.
        let answer = *self.answers.borrow() + 1;
        let published = tx.send_if_modified(|state| {
            let freshness = freshness.unwrap_or_else(|| match (&event, state.as_ref()) {
                (Event::Instances(_), _) => Freshness::Fresh,
                (Event::Error(_), Some(old)) => old.freshness.after_error(),
                (Event::Error(_), None) => Freshness::Fresh.after_error(),
            });
            let same_freshness = state.as_ref().is_some_and(|s| s.freshness == freshness);
            let event = match (state.as_ref().map(|s| &s.event), event) {
                // One merge both detects "unchanged" and re-uses the old handles.
                (Some(Event::Instances(old)), Event::Instances(new)) => {
                    let merged = new.canonicalize(old);
                    discarded = Some(Event::Instances(new));
                    match merged {
                        Some(set) => Event::Instances(set),
                        None if same_freshness => return false,
                        None => Event::Instances(old.clone()),
                    }
                }
                (Some(old), e) if *old == e && same_freshness => {
                    discarded = Some(e);
                    return false;
                }
                (_, e) => e,
            };
            replaced = state.replace(Published {
                event,
                freshness,
                answer,
            });
            true
        });
        self.answers.send_replace(answer);
        drop(guard);
        drop((discarded, replaced));
        published
    }

    /// The current state: `None` until the first event.
    pub fn state(&self) -> Option<Event> {
        self.rx.borrow().as_ref().map(|p| p.event.clone())
    }

    /// The freshness of the current state: `None` until the first event.
    pub fn freshness(&self) -> Option<Freshness> {
        self.rx.borrow().as_ref().map(|p| p.freshness.clone())
    }

    /// A new subscription. Its first [`next`](Subscription::next) returns the current state
    /// at once, if there is one.
    pub fn subscribe(&self) -> Subscription {
        // The cache's own receiver never marks anything seen, so a clone has seen only the
        // initial `None`: every published state (there is one iff the version moved) is
        // unseen for it. No check-then-mark here, which a concurrent publish could slip
        // between (issue 9 item 3).
        let rx = self.rx.clone();
        #[cfg(test)]
        tests::race_point();
        Subscription {
            rx,
            keep: None,
            answers: self.answers.subscribe(),
        }
    }

    /// Stops publishing for good. Subscribers receive any state they have not seen yet, and
    /// then `None`. Idempotent.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

/// A cache is itself an [`Instancer`] driven by hand: publish with
/// [`update`](InstanceCache::update). Handy for custom sources and tests.
#[async_trait]
impl Instancer for InstanceCache {
    fn subscribe(&self) -> Subscription {
        InstanceCache::subscribe(self)
    }
    async fn stop(&self) {
        self.close();
    }
}

/// A subscriber's view of an [`Instancer`]: latest-value, never blocking
/// the publisher. Drop it to unsubscribe.
///
/// A subscription can keep its instancer's machinery alive ([`keeping`](Self::keeping)): the
/// instancers of sdkit do, so an endpointer built from an instancer that is then dropped keeps
/// following the registry (go-kit EP-12). Only [`Instancer::stop`] ends them early.
#[derive(Clone)]
pub struct Subscription {
    rx: watch::Receiver<Option<Published>>,
    keep: Option<Arc<dyn Any + Send + Sync>>,
    answers: watch::Receiver<u64>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("current", &self.current())
            .field("keeps_source_alive", &self.keep.is_some())
            .finish()
    }
}

impl Subscription {
    /// The same subscription, holding `source` alive for as long as it (or a clone) exists.
    ///
    /// An [`Instancer`] whose watch stops when the instancer value is dropped hands out
    /// subscriptions that keep that watch (its task, its cache) alive, so that a subscriber
    /// never silently stops receiving because the instancer handle went out of scope.
    pub fn keeping(mut self, source: Arc<dyn Any + Send + Sync>) -> Self {
        self.keep = Some(source);
        self
    }

    /// A receiver of the instancer's update count: it moves with every update, whether or
    /// not the update changed anything (an identical second answer).
    pub(crate) fn answers(&self) -> watch::Receiver<u64> {
        self.answers.clone()
    }

    /// The number of the update that published the current state (0 before any).
    pub(crate) fn state_answer(&self) -> u64 {
        self.rx.borrow().as_ref().map_or(0, |p| p.answer)
    }

    /// Waits for a state this subscription has not returned yet and returns it.
    ///
    /// Returns the current state at once on the first call if there is one. If several
    /// events were published since the last call, only the latest is returned. Returns
    /// `None` once the instancer has stopped (or was dropped) and the last state has been
    /// returned.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_with_freshness().await.map(|(e, _)| e)
    }

    /// [`next`](Self::next), with the [`Freshness`] published with the event (read together,
    /// so they always belong to the same state).
    pub async fn next_with_freshness(&mut self) -> Option<(Event, Freshness)> {
        loop {
            if self.rx.changed().await.is_err() {
                return None;
            }
            if let Some(p) = self.rx.borrow_and_update().as_ref() {
                return Some((p.event.clone(), p.freshness.clone()));
            }
        }
    }

    /// Returns an unseen state without waiting, marking it seen.
    ///
    /// After the instancer stopped, this still returns its last state once if this
    /// subscription has not returned it yet.
    pub fn try_next(&mut self) -> Option<Event> {
        self.try_next_with_freshness().map(|(e, _)| e)
    }

    /// [`try_next`](Self::try_next), with the [`Freshness`] published with the event.
    pub fn try_next_with_freshness(&mut self) -> Option<(Event, Freshness)> {
        // `has_changed` answers `Err` once the sender is gone, even with an unseen value;
        // the borrow's own flag does not depend on the sender.
        let state = self.rx.borrow_and_update();
        if state.has_changed() {
            state
                .as_ref()
                .map(|p| (p.event.clone(), p.freshness.clone()))
        } else {
            None
        }
    }

    /// The current state, without marking it seen; `None` until the first event.
    pub fn current(&self) -> Option<Event> {
        self.rx.borrow().as_ref().map(|p| p.event.clone())
    }

    /// The freshness of the current state, without marking it seen; `None` until the first
    /// event.
    pub fn current_freshness(&self) -> Option<Freshness> {
        self.rx.borrow().as_ref().map(|p| p.freshness.clone())
    }

    /// Waits until there is a state (the first event) and returns it, without marking it seen.
    ///
    /// Returns `None` if the instancer stopped before publishing anything.
    pub async fn first(&mut self) -> Option<Event> {
        // `wait_for` marks what it saw as seen; wait on a copy of the receiver instead.
        let mut rx = self.rx.clone();
        let state = rx.wait_for(|s| s.is_some()).await.ok()?;
        state.as_ref().map(|p| p.event.clone())
    }

    /// This subscription as a [`Stream`] of events (the same semantics as [`next`](Self::next)).
    pub fn into_stream(self) -> impl Stream<Item = Event> + Send + Unpin + 'static {
        Box::pin(futures::stream::unfold(self, |mut s| async move {
            s.next().await.map(|e| (e, s))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::instance::Instance;

    thread_local! {
        /// Runs once at the point where a publish can race `subscribe`.
        static RACE: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn race_point() {
        if let Some(f) = RACE.with(|r| r.borrow_mut().take()) {
            f();
        }
    }

    /// Issue 9 item 3: a first publish that lands while `subscribe` runs is delivered. The
    /// old `subscribe` checked "is there a state?" and then marked what it saw as seen; a
    /// publish between the two (injected here at that point) was marked seen but never
    /// delivered, leaving an endpointer `Pending` until the next change.
    #[test]
    fn subscribe_never_loses_a_racing_first_state() {
        let cache = Arc::new(InstanceCache::new());
        let event = Event::instances(vec![Instance::new("10.0.0.1", 80)]);
        let (c, e) = (cache.clone(), event.clone());
        RACE.with(|r| *r.borrow_mut() = Some(Box::new(move || assert!(c.update(e)))));
        let mut sub = cache.subscribe();
        assert!(RACE.with(|r| r.borrow().is_none()), "the race point ran");
        assert_eq!(sub.try_next(), Some(event));
    }
}
