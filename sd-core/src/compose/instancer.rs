//! The instancer of a composed registry: follows every member's instancer and publishes
//! the failover choice or the union.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tokio::time::Instant;

use super::{combine_errors, Composition, SOURCE_META};
use crate::cache::{InstanceCache, Subscription};
use crate::error::Error;
use crate::event::{Event, InstanceSet};
use crate::follow::Followed;
use crate::freshness::{Freshness, StaleReason};
use crate::instancer::Instancer;
use crate::task::{deadline_after, survive, BackgroundTask};
use crate::watch_loop::CloseOnDrop;

/// What is known of one member.
struct MemberState {
    label: String,
    /// The member's latest event, if it has published one.
    event: Option<Event>,
    /// The freshness that came with it.
    freshness: Freshness,
    /// The member's last set, as it published it (to tell a new set from the same one).
    raw: Option<InstanceSet>,
    /// That set with [`SOURCE_META`] set on every instance.
    tagged: Option<InstanceSet>,
    /// The member's instancer has stopped (its subscription ended).
    stopped: bool,
}

impl MemberState {
    fn new(label: String) -> Self {
        MemberState {
            label,
            event: None,
            freshness: Freshness::Fresh,
            raw: None,
            tagged: None,
            stopped: false,
        }
    }

    fn apply(&mut self, event: Event, freshness: Freshness) {
        if let Event::Instances(set) = &event {
            let same = self
                .raw
                .as_ref()
                .is_some_and(|r| InstanceSet::ptr_eq(r, set));
            if !same {
                self.tagged = Some(tag(set, &self.label));
                self.raw = Some(set.clone());
            }
        }
        self.event = Some(event);
        self.freshness = freshness;
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.freshness = self.freshness.after_stop();
    }

    /// The member's set, if the registry confirms it now (not stale, not after an error).
    fn fresh_set(&self) -> Option<&InstanceSet> {
        match &self.event {
            Some(Event::Instances(_)) if !self.freshness.is_stale() && !self.stopped => {
                self.tagged.as_ref()
            }
            _ => None,
        }
    }

    /// The member's last set and how fresh it is: an error state serves the set from before
    /// the error, stale since the error began.
    fn last_set(&self) -> Option<(&InstanceSet, Freshness)> {
        let set = self.tagged.as_ref()?;
        let freshness = match (&self.event, &self.freshness) {
            (Some(Event::Error(_)), f) => f.after_error(),
            (_, f) => f.clone(),
        };
        Some((set, freshness))
    }

    fn error(&self) -> Option<&Error> {
        self.event.as_ref().and_then(Event::as_error)
    }
}

/// `set` with every instance naming `label` as its source.
fn tag(set: &InstanceSet, label: &str) -> InstanceSet {
    set.iter()
        .map(|i| i.to_builder().meta(SOURCE_META, label).build())
        .collect()
}

/// The older of two stale freshnesses (a fresh one counts as newest).
fn older(a: Freshness, b: Freshness) -> Freshness {
    match (a.as_of(), b.as_of()) {
        (Some(x), Some(y)) if y < x => b,
        (Some(_), _) => a,
        (None, _) => b,
    }
}

/// Combines the members' states into what the composed instancer publishes.
struct Combiner {
    composition: Composition,
    service: String,
    /// Until the start deadline, a member that has not answered yet may still answer: the
    /// members after it (failover) or the union (merge) wait for it. After it, such a
    /// member counts as failed, as of `started`.
    waiting: bool,
    started: Instant,
    /// The member failover serves from (for logging switches).
    active: Option<usize>,
    out: Arc<InstanceCache>,
}

impl Combiner {
    fn publish(&mut self, members: &[MemberState]) {
        if self.waiting && members.iter().all(|m| m.event.is_some()) {
            self.waiting = false;
        }
        let chosen = match self.composition {
            Composition::Failover => self.failover(members),
            Composition::Merge => self.merge(members),
        };
        match chosen {
            Some((Event::Error(e), _)) => {
                self.out.update(Event::Error(e));
            }
            Some((event, freshness)) => {
                self.out.update_with(event, freshness);
            }
            None => {}
        }
    }

    fn failover(&mut self, members: &[MemberState]) -> Option<(Event, Freshness)> {
        // The first fresh member, unless one before it has not answered yet and may still.
        let mut fresh = None;
        for (i, m) in members.iter().enumerate() {
            if m.fresh_set().is_some() {
                fresh = Some(i);
                break;
            }
            if self.waiting && m.event.is_none() {
                return None;
            }
        }
        let (index, event, freshness) = if let Some(i) = fresh {
            let set = members[i].fresh_set().cloned().unwrap_or_default();
            (i, Event::Instances(set), Freshness::Fresh)
        } else if let Some(i) = members.iter().position(|m| m.last_set().is_some()) {
            // No member is fresh: the first one that has a set serves it, stale.
            let (set, freshness) = members[i].last_set()?;
            (i, Event::Instances(set.clone()), freshness)
        } else {
            return no_set(self.composition, members).map(|e| (e, Freshness::Fresh));
        };
        if self.active != Some(index) {
            let to = &members[index].label;
            match self.active.map(|a| &members[a]) {
                Some(from) => {
                    crate::observe::failover_switched(&self.service);
                    survive(|| {
                        tracing::warn!(composition = %self.composition, service = %self.service,
                            from = %from.label, to = %to,
                            "failover: serving another member's set")
                    })
                }
                None => survive(|| {
                    tracing::debug!(composition = %self.composition, service = %self.service,
                        member = %to, "failover: serving this member's set")
                }),
            }
            self.active = Some(index);
        }
        Some((event, freshness))
    }

    /// The union of every member's last set, stale (as of the oldest) while any member is
    /// not fresh or has not answered; the members' errors when none has a set. Nothing
    /// while a member may still give its first answer.
    fn merge(&self, members: &[MemberState]) -> Option<(Event, Freshness)> {
        if self.waiting && members.iter().any(|m| m.event.is_none()) {
            return None;
        }
        let mut all = Vec::new();
        let mut freshness = Freshness::Fresh;
        let mut any_set = false;
        for m in members {
            if let Some((set, f)) = m.last_set() {
                any_set = true;
                all.extend(set.iter().cloned());
                freshness = older(freshness, f);
            } else if m.error().is_some() {
                // A member that never answered: the union lacks its part.
                freshness = older(freshness, m.freshness.clone());
            } else if m.event.is_none() {
                // Silent past the start deadline: counts as failed since the start.
                let silent = Freshness::Stale {
                    as_of: self.started,
                    reason: StaleReason::Error,
                };
                freshness = older(freshness, silent);
            }
        }
        if !any_set {
            return no_set(Composition::Merge, members).map(|e| (e, Freshness::Fresh));
        }
        Some((Event::Instances(InstanceSet::new(all)), freshness))
    }
}

/// The error to publish when no member has a set: every member's error, or nothing while
/// some member has not said anything yet.
fn no_set(composition: Composition, members: &[MemberState]) -> Option<Event> {
    let failures: Vec<(String, Error)> = members
        .iter()
        .filter_map(|m| Some((m.label.clone(), m.error()?.clone())))
        .collect();
    if failures.is_empty() {
        return None;
    }
    Some(Event::Error(combine_errors(
        composition,
        "no member answered",
        failures,
    )))
}

/// The instancer of a [`ComposedRegistry`](super::ComposedRegistry): follows every member's
/// instancer and publishes the failover choice or the union; see the [module](super) docs.
pub struct ComposedInstancer {
    composition: Composition,
    watch: Arc<Followed>,
}

impl fmt::Debug for ComposedInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposedInstancer")
            .field("composition", &self.composition)
            .field("members", &self.watch.inner)
            .finish()
    }
}

impl ComposedInstancer {
    /// Follows `members` (label, instancer), in order, for `service` (a name for logs),
    /// with the default start deadline ([`DEFAULT_START_TIMEOUT`](super::DEFAULT_START_TIMEOUT)).
    /// Applies their current states before returning.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        composition: Composition,
        service: &str,
        members: Vec<(String, Arc<dyn Instancer>)>,
    ) -> Self {
        Self::start_within(composition, service, members, super::DEFAULT_START_TIMEOUT)
    }

    /// [`start`](Self::start) with another start deadline: until it passes, a member that
    /// has not published its first state may still do so, and the members after it
    /// (failover) or the union (merge) wait for it; after it, such a member counts as
    /// failed until it answers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_within(
        composition: Composition,
        service: &str,
        members: Vec<(String, Arc<dyn Instancer>)>,
        start_timeout: Duration,
    ) -> Self {
        let out = Arc::new(InstanceCache::new());
        let started = Instant::now();
        let start_deadline = deadline_after(start_timeout);
        let mut combiner = Combiner {
            composition,
            service: service.to_string(),
            waiting: true,
            started,
            active: None,
            out: out.clone(),
        };
        let mut states = Vec::with_capacity(members.len());
        let mut subs = Vec::with_capacity(members.len());
        let mut inner = Vec::with_capacity(members.len());
        for (label, instancer) in members {
            let mut state = MemberState::new(label);
            let mut sub = instancer.subscribe();
            if let Some((event, freshness)) = sub.try_next_with_freshness() {
                state.apply(event, freshness);
            }
            states.push(state);
            subs.push(sub);
            inner.push(instancer);
        }
        combiner.publish(&states);
        let closing = CloseOnDrop(out.clone());
        let task = BackgroundTask::spawn(move |token| async move {
            let _closing = closing;
            // One stream of (member, next state) for all members; `None` once a member ends.
            let mut updates = stream::select_all(subs.into_iter().enumerate().map(|(i, sub)| {
                stream::unfold(Some(sub), move |sub| async move {
                    let mut sub = sub?;
                    match sub.next_with_freshness().await {
                        Some(next) => Some(((i, Some(next)), Some(sub))),
                        None => Some(((i, None), None)),
                    }
                })
                .boxed()
            }));
            loop {
                let waiting = combiner.waiting;
                tokio::select! {
                    biased;
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep_until(start_deadline), if waiting => {
                        combiner.waiting = false;
                    }
                    next = updates.next() => match next {
                        Some((i, Some((event, freshness)))) => states[i].apply(event, freshness),
                        Some((i, None)) => states[i].stop(),
                        None => return,
                    },
                }
                // Apply everything that is ready before publishing once.
                while let Some(Some(next)) = updates.next().now_or_never() {
                    match next {
                        (i, Some((event, freshness))) => states[i].apply(event, freshness),
                        (i, None) => states[i].stop(),
                    }
                }
                if states.iter().all(|s| s.stopped) {
                    return;
                }
                combiner.publish(&states);
            }
        });
        ComposedInstancer {
            composition,
            watch: Arc::new(Followed { out, inner, task }),
        }
    }

    /// The current state (for tests and diagnostics).
    pub fn state(&self) -> Option<Event> {
        self.watch.out.state()
    }
}

#[async_trait]
impl Instancer for ComposedInstancer {
    /// The subscription keeps the follower (and through it the members' instancers) running
    /// after this instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.watch.subscribe()
    }

    /// Stops every member's instancer and the follower.
    async fn stop(&self) {
        self.watch.stop().await
    }
}
