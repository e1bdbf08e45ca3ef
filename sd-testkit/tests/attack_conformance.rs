//! Attack on the conformance suite (issue 10): can a registry that breaks the contract still
//! pass it? Each test wraps `memory://` in a deliberately broken `Registry` and runs every
//! behaviour of the suite on it (each on a fresh runtime, a failing behaviour = a panic).
//! A broken registry must fail at least one behaviour (the faults the suite once let through:
//! the behaviour written for them); the honest wrapper must pass all.
//!
//! The `Registry`/`Instancer`/`Registrar` traits are `#[async_trait]`; the impls below are
//! written in the desugared form so that sd-testkit needs no new dev-dependency.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sd_core::{
    Capabilities, Error, Event, Instance, InstanceCache, InstanceSet, Instancer, MemoryRegistry,
    Registrar, Registration, Registry, Result, ServiceQuery, Subscription,
};
use sd_testkit::conformance::{self as cf, Target};

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// No fault: every behaviour must pass (checks the harness).
    Honest,
    /// Published instances lose their tags.
    DropTags,
    /// Registrations lose their TTL check: a vanished registrant never expires.
    NeverExpires,
    /// Every instance is published twice (a second copy with another id, same address).
    Duplicates,
    /// A new subscription has the current state marked as already seen: `current()` shows
    /// it, `next()` never returns it (an endpointer stays Pending).
    LateSubscriberMarkedSeen,
    /// A new subscription only gets states published after it subscribed.
    LateSubscriberFresh,
    /// Only a change of the address set is published: health, tags, metadata and weight
    /// changes of an instance already listed are never seen.
    FreezeAttributes,
    /// A deregistered instance comes back 3 s later (a heartbeat that re-registers after
    /// deregister: the zombie race every keep-alive backend can have).
    Resurrect,
    /// An error event every 300 ms while the registry is perfectly healthy.
    SpuriousErrors,
    /// `stop()` publishes an empty set before closing (consumers drop every endpoint).
    EmptyOnStop,
    /// A filtered query (tags, `passing_only`) decides once per address whether it matches:
    /// an instance re-registered so that it starts or stops matching is not moved (a
    /// server-side filter not re-evaluated on change).
    StickyFilter,
}

/// The StickyFilter fault's state: the filter's first decision for each address.
struct Sticky {
    query: ServiceQuery,
    decided: std::collections::HashMap<String, bool>,
}

impl Sticky {
    fn apply(&mut self, e: Event) -> Event {
        match e {
            Event::Instances(s) => Event::Instances(InstanceSet::new(
                s.iter()
                    .filter(|i| {
                        *self
                            .decided
                            .entry(i.addr().to_string())
                            .or_insert_with(|| self.query.matches(i))
                    })
                    .cloned()
                    .collect(),
            )),
            e => e,
        }
    }
}

struct Broken {
    mem: MemoryRegistry,
    fault: Fault,
}

impl fmt::Debug for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broken({:?})", self.fault)
    }
}

fn rebuild(i: &Instance, id: &str, keep_tags: bool) -> Instance {
    let mut b = Instance::builder(i.host(), i.port())
        .id(id)
        .weight(i.weight())
        .health(i.health());
    if keep_tags {
        b = b.tags(i.tags().iter().cloned());
    }
    for (k, v) in i.meta() {
        b = b.meta(k, v);
    }
    b.build()
}

fn addr_set(e: &Event) -> Option<BTreeSet<String>> {
    e.as_instances()
        .map(|s| s.iter().map(|i| i.addr().to_string()).collect())
}

fn transform(fault: Fault, e: Event) -> Event {
    match (fault, e) {
        (Fault::DropTags, Event::Instances(s)) => Event::Instances(InstanceSet::new(
            s.iter().map(|i| rebuild(i, i.id(), false)).collect(),
        )),
        (Fault::Duplicates, Event::Instances(s)) => Event::Instances(InstanceSet::new(
            s.iter()
                .flat_map(|i| [i.clone(), rebuild(i, &format!("{}-dup", i.id()), true)])
                .collect(),
        )),
        (_, e) => e,
    }
}

struct BrokenInstancer {
    inner: Arc<dyn Instancer>,
    out: Arc<InstanceCache>,
    fresh: Arc<Mutex<Vec<Weak<InstanceCache>>>>,
    task: tokio::task::JoinHandle<()>,
    fault: Fault,
}

impl fmt::Debug for BrokenInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokenInstancer({:?})", self.fault)
    }
}

fn publish(out: &InstanceCache, fresh: &Mutex<Vec<Weak<InstanceCache>>>, e: Event) {
    out.update(e.clone());
    for c in fresh.lock().unwrap().iter().filter_map(Weak::upgrade) {
        c.update(e.clone());
    }
}

impl Instancer for BrokenInstancer {
    fn subscribe(&self) -> Subscription {
        match self.fault {
            Fault::LateSubscriberMarkedSeen => {
                let mut s = self.out.subscribe();
                let _ = s.try_next();
                s
            }
            Fault::LateSubscriberFresh => {
                let c = Arc::new(InstanceCache::new());
                if self.out.is_closed() {
                    c.close();
                }
                self.fresh.lock().unwrap().push(Arc::downgrade(&c));
                c.subscribe().keeping(c.clone())
            }
            _ => self.out.subscribe(),
        }
    }

    fn stop<'a, 'async_trait>(&'a self) -> BoxFut<'async_trait, ()>
    where
        'a: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.inner.stop().await;
            if self.fault == Fault::EmptyOnStop {
                publish(
                    &self.out,
                    &self.fresh,
                    Event::Instances(InstanceSet::empty()),
                );
            }
            self.out.close();
            for c in self.fresh.lock().unwrap().iter().filter_map(Weak::upgrade) {
                c.close();
            }
            self.task.abort();
        })
    }
}

struct BrokenRegistrar {
    inner: Arc<dyn Registrar>,
    mem: MemoryRegistry,
    original: Registration,
    fault: Fault,
}

impl fmt::Debug for BrokenRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokenRegistrar({:?})", self.fault)
    }
}

impl Registrar for BrokenRegistrar {
    fn register<'a, 'async_trait>(&'a self) -> BoxFut<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.register().await })
    }

    fn deregister<'a, 'async_trait>(&'a self) -> BoxFut<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.inner.deregister().await?;
            if self.fault == Fault::Resurrect {
                let (mem, r) = (self.mem.clone(), self.original.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    mem.insert(&r.service, r.instance.clone(), None);
                });
            }
            Ok(())
        })
    }

    fn registration(&self) -> &Registration {
        &self.original
    }
}

impl Registry for Broken {
    fn scheme(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    fn instancer<'a, 'b, 'async_trait>(
        &'a self,
        query: &'b ServiceQuery,
    ) -> BoxFut<'async_trait, Result<Arc<dyn Instancer>>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let filtered = !query.tags.is_empty() || query.passing_only;
            let mut sticky = (self.fault == Fault::StickyFilter && filtered).then(|| Sticky {
                query: query.clone(),
                decided: Default::default(),
            });
            let inner = if sticky.is_some() {
                self.mem
                    .instancer(&ServiceQuery::new(&query.service))
                    .await?
            } else {
                self.mem.instancer(query).await?
            };
            let mut sub = inner.subscribe();
            let out = Arc::new(InstanceCache::new());
            let fresh: Arc<Mutex<Vec<Weak<InstanceCache>>>> = Default::default();
            let fault = self.fault;
            let mut last_addrs = None;
            if let Some(e) = sub.try_next() {
                let e = transform(fault, e);
                let e = match &mut sticky {
                    Some(st) => st.apply(e),
                    None => e,
                };
                last_addrs = addr_set(&e);
                out.update(e);
            }
            let (o, f) = (out.clone(), fresh.clone());
            let task = tokio::spawn(async move {
                let mut last: Option<Event> = o.state();
                let mut tick = tokio::time::interval(Duration::from_millis(300));
                loop {
                    tokio::select! {
                        e = sub.next() => {
                            let Some(e) = e else { return };
                            let e = transform(fault, e);
                            let e = match &mut sticky {
                                Some(st) => st.apply(e),
                                None => e,
                            };
                            if fault == Fault::FreezeAttributes {
                                let a = addr_set(&e);
                                if a.is_some() && a == last_addrs {
                                    continue;
                                }
                                last_addrs = a;
                            }
                            last = Some(e.clone());
                            publish(&o, &f, e);
                        }
                        _ = tick.tick(), if fault == Fault::SpuriousErrors => {
                            publish(&o, &f, Event::Error(Error::unavailable("broken", "spurious")));
                            if let Some(e) = &last {
                                publish(&o, &f, e.clone());
                            }
                        }
                    }
                }
            });
            Ok(Arc::new(BrokenInstancer {
                inner,
                out,
                fresh,
                task,
                fault,
            }) as Arc<dyn Instancer>)
        })
    }

    fn registrar<'a, 'async_trait>(
        &'a self,
        registration: Registration,
    ) -> BoxFut<'async_trait, Result<Arc<dyn Registrar>>>
    where
        'a: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let sent = if self.fault == Fault::NeverExpires {
                Registration::new(registration.service.clone(), registration.instance.clone())
            } else {
                registration.clone()
            };
            let inner = self.mem.registrar(sent).await?;
            Ok(Arc::new(BrokenRegistrar {
                inner,
                mem: self.mem.clone(),
                original: registration,
                fault: self.fault,
            }) as Arc<dyn Registrar>)
        })
    }
}

type Behaviour = fn(Target) -> BoxFut<'static, ()>;

macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|t| Box::pin(cf::$name(t))) as Behaviour)),*]
    };
}

const BEHAVIOURS: [(&str, Behaviour); 12] = behaviours![
    register_is_seen_with_its_fields,
    services_and_instancers_are_independent,
    deregister_removes_and_is_idempotent,
    vanished_registrant_expires,
    tags_are_anded,
    passing_only_leaves_out_unhealthy,
    reregister_changes_attributes,
    filtered_instancer_follows_changes,
    bulk_churn_final_set_is_exact,
    restart_keeps_last_good_and_recovers,
    stop_is_idempotent_and_final,
    bad_entry_is_skipped_alone,
];

/// Runs every behaviour of the suite against `fault`, each on a fresh runtime and a fresh
/// registry; returns the names of the behaviours that failed.
fn failing_behaviours(fault: Fault) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for (name, behaviour) in BEHAVIOURS {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ok = rt.block_on(async {
            // The baseline is taken inside the spawned task, so that it counts the task
            // running the behaviour itself (as the macro's test body is counted).
            tokio::spawn(async move {
                let baseline = cf::alive_tasks();
                let target = Target::new(Arc::new(Broken {
                    mem: MemoryRegistry::new(),
                    fault,
                }))
                .deadline(Duration::from_secs(6))
                .expiry_deadline(Duration::from_secs(10))
                .churn(200)
                .__named("broken", baseline);
                behaviour(target).await
            })
            .await
            .is_ok()
        });
        rt.shutdown_background();
        if !ok {
            failed.push(name);
        }
    }
    eprintln!("{fault:?}: failing behaviours {failed:?}");
    failed
}

fn assert_caught(fault: Fault) {
    let failed = failing_behaviours(fault);
    assert!(
        !failed.is_empty(),
        "the conformance suite passes a registry with fault {fault:?}: no behaviour failed"
    );
}

/// The fault is caught, and by the behaviour written for it.
fn assert_caught_by(fault: Fault, behaviour: &str) {
    let failed = failing_behaviours(fault);
    assert!(
        failed.contains(&behaviour),
        "{behaviour} passes a registry with fault {fault:?} (failing: {failed:?})"
    );
}

#[test]
fn attack_suite_honest_wrapper_passes_everything() {
    assert_eq!(failing_behaviours(Fault::Honest), Vec::<&str>::new());
}

#[test]
fn attack_suite_catches_dropped_tags() {
    assert_caught(Fault::DropTags);
}

#[test]
fn attack_suite_catches_never_expiring_registrations() {
    assert_caught(Fault::NeverExpires);
}

#[test]
fn attack_suite_catches_duplicate_instances() {
    assert_caught(Fault::Duplicates);
}

#[test]
fn attack_suite_catches_first_state_marked_seen_for_a_late_subscriber() {
    assert_caught(Fault::LateSubscriberMarkedSeen);
}

#[test]
fn attack_suite_catches_a_late_subscriber_without_current_state() {
    assert_caught(Fault::LateSubscriberFresh);
}

#[test]
fn attack_suite_catches_attribute_changes_never_published() {
    assert_caught_by(Fault::FreezeAttributes, "reregister_changes_attributes");
}

#[test]
fn attack_suite_catches_a_deregistered_instance_coming_back() {
    assert_caught_by(Fault::Resurrect, "deregister_removes_and_is_idempotent");
}

#[test]
fn attack_suite_catches_spurious_error_events() {
    assert_caught_by(
        Fault::SpuriousErrors,
        "deregister_removes_and_is_idempotent",
    );
}

#[test]
fn attack_suite_catches_an_empty_set_published_by_stop() {
    assert_caught_by(Fault::EmptyOnStop, "stop_is_idempotent_and_final");
}

#[test]
fn attack_suite_catches_a_filter_not_following_changes() {
    assert_caught_by(Fault::StickyFilter, "filtered_instancer_follows_changes");
}
