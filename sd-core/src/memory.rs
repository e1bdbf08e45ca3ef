//! The embedded in-memory registry (`memory://`): a real Registrar and Instancer inside the
//! process, with optional TTL expiry. The default when no registry is configured.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cache::{InstanceCache, Subscription};
use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::event::{Event, InstanceSet};
use crate::instance::Instance;
use crate::instancer::Instancer;
use crate::keepalive::{spawn_keepalive, KeepAlive, KeepAliveConfig, KeepAliveTask};
use crate::observe::LoopMetrics;
use crate::registrar::{Registrar, Registration};
use crate::registry::{Registry, ServiceQuery};
use crate::task::{deadline_after, survive, BackgroundTask};

type Key = (String, String);

struct Entry {
    /// The instance as registered.
    instance: Instance,
    /// The TTL, if the entry must be renewed.
    ttl: Option<Duration>,
    /// When the TTL lapses unless renewed (while passing).
    expires: Option<Instant>,
    /// Once the TTL lapsed: the critical copy of `instance` that instancers see.
    critical: Option<Instance>,
    /// How long a lapsed entry stays listed as critical (`deregister_critical_after`);
    /// `None` keeps it until it is removed, as Consul does.
    remove_after: Option<Duration>,
    /// When a lapsed entry is removed.
    remove_at: Option<Instant>,
}

impl Entry {
    /// What instancers see.
    fn visible(&self) -> &Instance {
        self.critical.as_ref().unwrap_or(&self.instance)
    }

    /// The next deadline of this entry, if any.
    fn next_deadline(&self) -> Option<Instant> {
        if self.critical.is_some() {
            self.remove_at
        } else {
            self.expires
        }
    }
}

struct View {
    query: ServiceQuery,
    cache: Weak<InstanceCache>,
    /// The view's instancer metrics (nothing without the `metrics` feature).
    metrics: LoopMetrics,
}

#[derive(Default)]
struct Service {
    entries: BTreeMap<Key, Entry>,
    views: Vec<View>,
}

/// Removes `service` from `services` when it holds no entry and no live view: a name that was
/// only queried, or whose last instance left, costs nothing once nobody watches it.
fn forget_if_unused(services: &mut HashMap<String, Service>, service: &str) {
    if services.get(service).is_some_and(|svc| {
        svc.entries.is_empty() && svc.views.iter().all(|v| v.cache.strong_count() == 0)
    }) {
        services.remove(service);
    }
}

impl Service {
    fn publish(&mut self) {
        self.views.retain(|v| v.cache.strong_count() > 0);
        let entries = &self.entries;
        for v in &mut self.views {
            if let Some(cache) = v.cache.upgrade() {
                let set = filtered(entries, &v.query);
                let n = set.len();
                let changed = cache.update(Event::Instances(set));
                v.metrics.succeeded(n, changed, None);
            }
        }
    }

    fn filtered(&self, q: &ServiceQuery) -> InstanceSet {
        filtered(&self.entries, q)
    }
}

/// The entries `q` selects, as instancers see them.
fn filtered(entries: &BTreeMap<Key, Entry>, q: &ServiceQuery) -> InstanceSet {
    entries
        .values()
        .map(Entry::visible)
        .filter(|i| q.matches(i))
        .cloned()
        .collect()
}

#[derive(Default)]
struct Inner {
    services: Mutex<HashMap<String, Service>>,
    /// Wakes the reaper when an entry with an earlier expiry arrives. Shared with the reaper
    /// task on its own, so the task never holds `Inner` while it waits: dropping the last
    /// registry handle drops `Inner`, whose `reaper` then cancels the task.
    reaper_wake: Arc<Notify>,
    /// The reaper task (see `ensure_reaper`).
    reaper: Mutex<ReaperSlot>,
}

/// Where the TTL reaper runs.
///
/// It runs on the runtime of the insert or renewal that started it, so it follows that
/// runtime's clock (paused time in tests). When that runtime ends while the registry lives
/// on, the reaper's task is dropped with it, and a drop guard in the task moves the reaper to
/// a dedicated thread (`sd-memory-reaper`, a current-thread runtime of its own), so expiry
/// never depends on the registrant's runtime: a vanished registrant's TTL lapses even when its
/// whole runtime is gone. The next insert or renewal made on a runtime brings it back there.
#[derive(Default)]
struct ReaperSlot {
    /// Increases with every reaper started; a dying reaper restarts only its own generation.
    generation: u64,
    /// The running reaper, if any.
    task: Option<BackgroundTask>,
    /// Whether `task` runs on the dedicated thread.
    dedicated: bool,
}

impl ReaperSlot {
    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// An in-process registry. Clones share the same registry.
///
/// [`MemoryRegistry::named`] returns a process-wide registry per name, which is what
/// `memory://name` URLs resolve to, so every part of a program that parses the same URL
/// sees the same services.
///
/// Health follows Consul's rules, so swapping `memory://` for `consul://` keeps behaviour:
/// an instance is listed with the [`Health`](crate::Health) it was registered with; a TTL
/// registration ([`HealthCheck::Ttl`](crate::HealthCheck::Ttl)) whose TTL lapses without a
/// renewal turns **critical** (it leaves every `passing_only` instancer, and stays listed as
/// critical in the others), is passing again on its next renewal, and is removed
/// [`deregister_critical_after`](Registration::deregister_critical_after) after it turned
/// critical (never, without it). HTTP, TCP and gRPC checks are not run: such an instance
/// keeps its registered health (see docs/URLS.md). TTLs lapse on the clock of the runtime that
/// registered them, and keep lapsing after that runtime has ended (the expiry task then moves
/// to a thread of its own), so a vanished registrant expires whatever became of its runtime.
///
/// Instancers cost nothing once dropped: a view leaves the registry with its instancer's last
/// handle (the instancer or a subscription), and a service with no instance and no view is
/// forgotten.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use sd_core::{Instance, Instancer, MemoryRegistry, Registrar, Registration};
/// let registry = MemoryRegistry::new();
/// let instancer = registry.service_instancer("web");
/// let registrar = registry.registrar_for(Registration::new("web", Instance::new("127.0.0.1", 8080)));
/// registrar.register().await.unwrap();
/// let mut sub = instancer.subscribe();
/// assert_eq!(sub.next().await.unwrap().addrs(), ["127.0.0.1:8080"]);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self.lock();
        f.debug_struct("MemoryRegistry")
            .field("services", &services.len())
            .finish()
    }
}

impl MemoryRegistry {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry called `name` (created on first use).
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryRegistry>>> = OnceLock::new();
        let map = NAMED.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Service>> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Watches every instance of `service`. (The [`Registry::instancer`] trait method does
    /// the same for any [`ServiceQuery`] and returns an `Arc<dyn Instancer>`.)
    pub fn service_instancer(&self, service: &str) -> MemoryInstancer {
        self.instancer_for(&ServiceQuery::new(service))
    }

    /// Watches the instances matching `query` (tags ANDed, passing-only).
    ///
    /// The view is forgotten when the instancer and its last subscription are dropped: an
    /// application may create and drop instancers freely, for any names, at no lasting cost.
    pub fn instancer_for(&self, query: &ServiceQuery) -> MemoryInstancer {
        let cache = Arc::new(InstanceCache::new());
        let mut services = self.lock();
        let svc = services.entry(query.service.clone()).or_default();
        let set = svc.filtered(query);
        let n = set.len();
        cache.update(Event::Instances(set));
        let mut metrics = LoopMetrics::new("memory", &query.service);
        metrics.succeeded(n, true, None);
        svc.views.push(View {
            query: query.clone(),
            cache: Arc::downgrade(&cache),
            metrics,
        });
        MemoryInstancer {
            view: Arc::new(ViewHandle {
                cache,
                registry: Arc::downgrade(&self.inner),
                service: query.service.clone(),
            }),
        }
    }

    /// A registrar for `registration` (registered on [`Registrar::register`]). (The
    /// [`Registry::registrar`] trait method validates first and returns an
    /// `Arc<dyn Registrar>`.)
    pub fn registrar_for(&self, registration: Registration) -> MemoryRegistrar {
        MemoryRegistrar {
            registry: self.clone(),
            registration,
            heartbeat: tokio::sync::Mutex::new(None),
        }
    }

    /// Adds or replaces an instance directly. With a `ttl`, it turns critical unless
    /// [`renew`](Self::renew)ed in time (and stays listed as critical until removed).
    pub fn insert(&self, service: &str, instance: Instance, ttl: Option<Duration>) {
        self.insert_entry(service, instance, ttl, None);
    }

    /// [`insert`](Self::insert), removing the entry `remove_after` once it turned critical.
    fn insert_entry(
        &self,
        service: &str,
        instance: Instance,
        ttl: Option<Duration>,
        remove_after: Option<Duration>,
    ) {
        let expires = ttl.map(deadline_after);
        {
            let mut services = self.lock();
            let svc = services.entry(service.to_string()).or_default();
            let key = (instance.addr().to_string(), instance.id().to_string());
            svc.entries.insert(
                key,
                Entry {
                    instance,
                    ttl,
                    expires,
                    critical: None,
                    remove_after,
                    remove_at: None,
                },
            );
            svc.publish();
        }
        if expires.is_some() {
            self.ensure_reaper();
            self.inner.reaper_wake.notify_one();
        }
    }

    /// Removes an instance; returns whether it was there.
    pub fn remove(&self, service: &str, instance: &Instance) -> bool {
        let mut services = self.lock();
        let Some(svc) = services.get_mut(service) else {
            return false;
        };
        let key = (instance.addr().to_string(), instance.id().to_string());
        let removed = svc.entries.remove(&key).is_some();
        if removed {
            svc.publish();
            forget_if_unused(&mut services, service);
        }
        removed
    }

    /// Extends a TTL registration by `ttl`, making a lapsed (critical) one passing again;
    /// returns `false` if it is not registered (any more).
    pub fn renew(&self, service: &str, instance: &Instance, ttl: Duration) -> bool {
        let (renewed, revived) = {
            let mut services = self.lock();
            let key = (instance.addr().to_string(), instance.id().to_string());
            match services.get_mut(service) {
                Some(svc) => match svc.entries.get_mut(&key) {
                    Some(e) => {
                        e.ttl = Some(ttl);
                        e.expires = Some(deadline_after(ttl));
                        e.remove_at = None;
                        let revived = e.critical.take().map(|_| e.instance.clone());
                        if revived.is_some() {
                            svc.publish();
                        }
                        (true, revived)
                    }
                    None => (false, None),
                },
                None => (false, None),
            }
        };
        if renewed {
            // A heartbeat also brings the reaper back onto a live runtime.
            self.ensure_reaper();
        }
        // Logged last, outside the lock: a panicking log layer finds the state committed.
        if let Some(instance) = revived {
            survive(|| {
                tracing::info!(service = %service, instance = %instance,
                    "registration renewed; passing again")
            });
        }
        renewed
    }

    /// The instances of `service` right now, as instancers see them (a lapsed TTL
    /// registration is critical).
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.lock()
            .get(service)
            .map(|s| s.entries.values().map(|e| e.visible().clone()).collect())
            .unwrap_or_default()
    }

    /// Turns lapsed TTL entries critical and removes those critical for long enough;
    /// returns the next deadline, if any. Logs what it did after releasing the lock (a
    /// panicking log layer then finds the registry consistent, and the reaper carries on).
    fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut notes = Vec::new();
        {
            let mut services = self.lock();
            let mut emptied = Vec::new();
            for (name, svc) in services.iter_mut() {
                let mut changed = false;
                svc.entries.retain(|_, e| {
                    if e.critical.is_none() && e.expires.is_some_and(|t| t <= now) {
                        e.critical = Some(
                            e.instance
                                .to_builder()
                                .health(crate::instance::Health::Critical)
                                .build(),
                        );
                        e.remove_at = e.remove_after.map(deadline_after);
                        notes.push(Reaped::Lapsed(name.clone(), e.instance.clone(), e.ttl));
                        changed = true;
                    }
                    if e.critical.is_some() && e.remove_at.is_some_and(|t| t <= now) {
                        notes.push(Reaped::Removed(
                            name.clone(),
                            e.instance.clone(),
                            e.remove_after,
                        ));
                        changed = true;
                        return false;
                    }
                    if let Some(t) = e.next_deadline() {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                    true
                });
                if changed {
                    svc.publish();
                    if svc.entries.is_empty() {
                        emptied.push(name.clone());
                    }
                }
            }
            for name in emptied {
                forget_if_unused(&mut services, &name);
            }
        }
        for note in notes {
            survive(|| match note {
                Reaped::Lapsed(service, instance, ttl) => {
                    tracing::info!(service = %service, instance = %instance, ttl = ?ttl,
                        "registration's TTL lapsed; instance critical")
                }
                Reaped::Removed(service, instance, after) => {
                    tracing::info!(service = %service, instance = %instance, after = ?after,
                        "critical registration removed (deregister_critical_after)")
                }
            });
        }
        next
    }

    /// Makes sure a reaper runs: on the current runtime when there is one (moving it there
    /// from the dedicated thread), else on the dedicated thread. See [`ReaperSlot`].
    fn ensure_reaper(&self) {
        let mut slot = self.inner.reaper.lock().unwrap_or_else(|p| p.into_inner());
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        if slot.running() && (!slot.dedicated || !on_runtime) {
            return;
        }
        slot.generation += 1;
        if on_runtime {
            slot.task = Some(spawn_reaper(&self.inner, slot.generation));
            slot.dedicated = false;
        } else {
            // Outside a runtime (a plain `insert` from sync code).
            let generation = slot.generation;
            drop(slot);
            move_reaper_to_thread(Arc::downgrade(&self.inner), generation);
        }
    }
}

/// What the reaper did to one entry, logged after the registry lock is released.
enum Reaped {
    Lapsed(String, Instance, Option<Duration>),
    Removed(String, Instance, Option<Duration>),
}

/// Spawns the reaper loop of generation `generation` on the current runtime.
fn spawn_reaper(inner: &Arc<Inner>, generation: u64) -> BackgroundTask {
    let weak = Arc::downgrade(inner);
    let wake = inner.reaper_wake.clone();
    BackgroundTask::spawn(move |token| {
        // Built outside the future, so it also runs if the future is dropped unpolled (a
        // spawn on a runtime that is shutting down).
        let restart = MoveReaperIfDropped {
            registry: weak.clone(),
            generation,
            token: token.clone(),
        };
        async move {
            let _restart = restart;
            loop {
                // Upgrade only for the reap itself; never hold `Inner` across the wait.
                let next = match weak.upgrade() {
                    Some(inner) => MemoryRegistry { inner }.reap(),
                    None => return,
                };
                let sleep = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = wake.notified() => {}
                    _ = sleep => {}
                }
            }
        }
    })
}

/// Lives in a reaper's task: dropped without the task having been cancelled (its runtime shut
/// down while the registry lives on), it moves the reaper to the dedicated thread.
struct MoveReaperIfDropped {
    registry: Weak<Inner>,
    generation: u64,
    token: tokio_util::sync::CancellationToken,
}

impl Drop for MoveReaperIfDropped {
    fn drop(&mut self) {
        if !self.token.is_cancelled() && self.registry.strong_count() > 0 {
            move_reaper_to_thread(self.registry.clone(), self.generation);
        }
    }
}

/// Starts the reaper on a new dedicated thread, unless a reaper newer than `generation` was
/// started meanwhile. Everything, the slot's lock included, is taken on the new thread: the
/// caller may be a reaper task being dropped while its runtime shuts down, possibly inside
/// `ensure_reaper` with the slot locked.
fn move_reaper_to_thread(registry: Weak<Inner>, generation: u64) {
    let spawned = std::thread::Builder::new()
        .name("sd-memory-reaper".into())
        .spawn(move || {
            let Some(inner) = registry.upgrade() else {
                return;
            };
            let mut slot = inner.reaper.lock().unwrap_or_else(|p| p.into_inner());
            if slot.generation != generation && slot.running() {
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    drop(slot);
                    survive(|| {
                        tracing::error!(error = %e,
                            "memory registry: cannot start the TTL reaper's runtime; TTLs no longer lapse")
                    });
                    return;
                }
            };
            slot.generation += 1;
            let task = {
                let _enter = runtime.enter();
                spawn_reaper(&inner, slot.generation)
            };
            let token = task.token().clone();
            slot.task = Some(task);
            slot.dedicated = true;
            drop(slot);
            // The reaper holds only a `Weak`: dropping the registry cancels it (through the
            // slot), which ends this thread.
            drop(inner);
            runtime.block_on(token.cancelled());
        });
    if let Err(e) = spawned {
        survive(|| {
            tracing::error!(error = %e,
                "memory registry: cannot start the TTL reaper's thread; TTLs no longer lapse")
        });
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn scheme(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        Ok(Arc::new(self.instancer_for(query)))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        registration.validate()?;
        Ok(Arc::new(self.registrar_for(registration)))
    }

    /// The services with at least one registered instance (a service only watched is not
    /// listed).
    async fn services(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, svc)| !svc.entries.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

/// An instancer over a [`MemoryRegistry`] service.
#[derive(Debug)]
pub struct MemoryInstancer {
    view: Arc<ViewHandle>,
}

/// One view's cache, shared by its instancer and subscriptions. When the last of them is
/// dropped, the view leaves the registry (and so does its service, if nothing else is left).
struct ViewHandle {
    cache: Arc<InstanceCache>,
    registry: Weak<Inner>,
    service: String,
}

impl fmt::Debug for ViewHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("service", &self.service)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Drop for ViewHandle {
    fn drop(&mut self) {
        let Some(inner) = self.registry.upgrade() else {
            return;
        };
        let registry = MemoryRegistry { inner };
        let mut services = registry.lock();
        if let Some(svc) = services.get_mut(&self.service) {
            let me = Arc::as_ptr(&self.cache);
            svc.views
                .retain(|v| v.cache.as_ptr() != me && v.cache.strong_count() > 0);
            forget_if_unused(&mut services, &self.service);
        }
    }
}

#[async_trait]
impl Instancer for MemoryInstancer {
    /// The subscription keeps this view of the registry alive after the instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.view.cache.subscribe().keeping(self.view.clone())
    }
    async fn stop(&self) {
        self.view.cache.close();
    }
}

/// A registrar into a [`MemoryRegistry`]. With a TTL check it renews the registration every
/// third of the TTL while registered.
pub struct MemoryRegistrar {
    registry: MemoryRegistry,
    registration: Registration,
    /// The heartbeat task while registered with a TTL. The async lock is held for the whole
    /// of `register` and `deregister`, so the two never interleave (a deregister racing a
    /// register could otherwise leave a heartbeat that re-inserts the entry for good).
    heartbeat: tokio::sync::Mutex<Option<KeepAliveTask>>,
}

impl fmt::Debug for MemoryRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegistrar")
            .field("registration", &self.registration)
            .finish()
    }
}

impl MemoryRegistrar {
    fn instance(&self) -> Instance {
        let r = &self.registration;
        if r.instance.id().is_empty() {
            r.instance.to_builder().id(r.instance_id()).build()
        } else {
            r.instance.clone()
        }
    }
}

/// A TTL registration kept alive by the shared keep-alive loop.
struct Lease {
    registry: MemoryRegistry,
    service: String,
    instance: Instance,
    ttl: Duration,
    remove_after: Option<Duration>,
}

#[async_trait]
impl KeepAlive for Lease {
    async fn keep_alive(&self) -> Result<()> {
        if !self.registry.renew(&self.service, &self.instance, self.ttl) {
            // The registry dropped us (expired): register again, then say so.
            self.registry.insert_entry(
                &self.service,
                self.instance.clone(),
                Some(self.ttl),
                self.remove_after,
            );
            crate::observe::reregistered("memory", &self.service);
            tracing::warn!(service = %self.service, instance = %self.instance, "registration lost; re-registered");
        }
        Ok(())
    }
}

#[async_trait]
impl Registrar for MemoryRegistrar {
    async fn register(&self) -> Result<()> {
        self.registration.validate()?;
        let service = self.registration.service.clone();
        let instance = self.instance();
        let ttl = self.registration.ttl();
        let remove_after = self.registration.deregister_critical_after;
        let mut hb = self.heartbeat.lock().await;
        self.registry
            .insert_entry(&service, instance.clone(), ttl, remove_after);
        // A heartbeat whose runtime has ended is gone too: start a new one.
        let beating = hb.as_ref().is_some_and(|task| !task.is_finished());
        if let (Some(ttl), false) = (ttl, beating) {
            let target = format!("{service}/{}", instance.id());
            let lease = Arc::new(Lease {
                registry: self.registry.clone(),
                service,
                instance,
                ttl,
                remove_after,
            });
            let config =
                KeepAliveConfig::new("memory", target, KeepAliveConfig::period_for_ttl(ttl))
                    .service(self.registration.service.clone());
            *hb = Some(spawn_keepalive(lease, config));
        }
        Ok(())
    }

    async fn deregister(&self) -> Result<()> {
        let mut hb = self.heartbeat.lock().await;
        if let Some(task) = hb.take() {
            task.stop().await;
        }
        self.registry
            .remove(&self.registration.service, &self.instance());
        Ok(())
    }

    fn registration(&self) -> &Registration {
        &self.registration
    }
}
