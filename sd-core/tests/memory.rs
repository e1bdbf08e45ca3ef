//! The embedded registry (`memory://`): registrar and instancer, filters, TTL expiry.

#[path = "common/logs.rs"]
mod logs;

use std::sync::Arc;
use std::time::Duration;

use sd_core::{
    Health, HealthCheck, Instance, Instancer, MemoryRegistry, Registrar, Registration,
    RegistrationGuard, Registry, ServiceQuery,
};

/// How many instances of `service` are passing.
fn passing(reg: &MemoryRegistry, service: &str) -> usize {
    reg.instances(service)
        .iter()
        .filter(|i| i.health() == Health::Passing)
        .count()
}

async fn next_addrs(sub: &mut sd_core::Subscription) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no event")
        .expect("instancer stopped")
        .addrs()
}

#[tokio::test]
async fn register_deregister_is_seen_and_idempotent() {
    let reg = MemoryRegistry::new();
    let inst = reg.service_instancer("web");
    let mut sub = inst.subscribe();
    assert!(next_addrs(&mut sub).await.is_empty());
    let r = reg.registrar_for(Registration::new("web", Instance::new("127.0.0.1", 8080)));
    r.register().await.unwrap();
    r.register().await.unwrap();
    assert_eq!(next_addrs(&mut sub).await, ["127.0.0.1:8080"]);
    assert_eq!(reg.instances("web").len(), 1, "registering twice keeps one");
    assert_eq!(
        reg.instances("web")[0].id(),
        "web-127.0.0.1-8080",
        "default id"
    );
    r.deregister().await.unwrap();
    r.deregister().await.unwrap();
    assert!(next_addrs(&mut sub).await.is_empty());
}

#[tokio::test]
async fn queries_filter_tags_and_health() {
    let reg = MemoryRegistry::new();
    reg.insert(
        "api",
        Instance::builder("a", 1).tags(["v1", "eu"]).build(),
        None,
    );
    reg.insert("api", Instance::builder("b", 1).tags(["v1"]).build(), None);
    reg.insert(
        "api",
        Instance::builder("c", 1)
            .tags(["v1", "eu"])
            .health(Health::Critical)
            .build(),
        None,
    );
    // Warning is not passing (Consul's `?passing` rule, the same on every backend).
    reg.insert(
        "api",
        Instance::builder("w", 1)
            .tags(["v1", "eu"])
            .health(Health::Warning)
            .build(),
        None,
    );
    let q = ServiceQuery::new("api").tag("v1").tag("eu");
    let tagged = reg.instancer_for(&q);
    let mut all_tags = tagged.subscribe();
    assert_eq!(next_addrs(&mut all_tags).await, ["a:1", "c:1", "w:1"]);
    let passing_only = reg.instancer_for(&q.clone().passing_only(true));
    let mut passing = passing_only.subscribe();
    assert_eq!(next_addrs(&mut passing).await, ["a:1"]);
    // Views follow later changes too.
    reg.insert(
        "api",
        Instance::builder("d", 1).tags(["eu", "v1", "x"]).build(),
        None,
    );
    assert_eq!(next_addrs(&mut passing).await, ["a:1", "d:1"]);
    assert_eq!(
        next_addrs(&mut all_tags).await,
        ["a:1", "c:1", "d:1", "w:1"]
    );
    // A dropped instancer's subscriptions keep following the registry (go-kit EP-12);
    // only `stop()` ends them (see `stopped_memory_instancer_ends_subscriptions`).
    drop(passing_only);
    reg.insert(
        "api",
        Instance::builder("e", 1).tags(["eu", "v1"]).build(),
        None,
    );
    assert_eq!(next_addrs(&mut passing).await, ["a:1", "d:1", "e:1"]);
}

#[tokio::test(start_paused = true)]
async fn ttl_registrations_expire_unless_renewed() {
    let reg = MemoryRegistry::new();
    // A lapsed TTL turns the instance critical (as in Consul): it leaves passing_only views.
    let instancer = reg.instancer_for(&ServiceQuery::new("svc").passing_only(true));
    let mut sub = instancer.subscribe();
    assert!(next_addrs(&mut sub).await.is_empty());
    // A registration whose owner never renews it.
    reg.insert(
        "svc",
        Instance::new("dead", 1),
        Some(Duration::from_secs(3)),
    );
    assert_eq!(next_addrs(&mut sub).await, ["dead:1"]);
    // A registrar with a TTL check renews itself.
    let live = reg.registrar_for(
        Registration::new("svc", Instance::new("live", 1))
            .check(HealthCheck::Ttl(Duration::from_secs(3))),
    );
    live.register().await.unwrap();
    assert_eq!(next_addrs(&mut sub).await, ["dead:1", "live:1"]);
    // With the clock paused, sleeping auto-advances timer by timer, in order.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        next_addrs(&mut sub).await,
        ["live:1"],
        "dead expired, live renewed"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(sub.try_next(), None, "no flapping while renewed");
    assert_eq!(passing(&reg, "svc"), 1, "still alive after ten TTLs");
    live.deregister().await.unwrap();
    assert!(next_addrs(&mut sub).await.is_empty());
}

#[tokio::test]
async fn named_registries_are_shared_per_process() {
    let a = MemoryRegistry::named("shared-test");
    let b = MemoryRegistry::named("shared-test");
    a.insert("s", Instance::new("h", 1), None);
    assert_eq!(b.instances("s").len(), 1);
    assert!(MemoryRegistry::named("other-test")
        .instances("s")
        .is_empty());
}

#[tokio::test]
async fn registry_trait_objects_and_guard() {
    let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    assert_eq!(reg.scheme(), "memory");
    let inst = reg.instancer(&ServiceQuery::new("g")).await.unwrap();
    let mut sub = inst.subscribe();
    assert!(next_addrs(&mut sub).await.is_empty());
    let r = reg
        .registrar(Registration::new("g", Instance::new("h", 2)))
        .await
        .unwrap();
    let guard = RegistrationGuard::register(r.clone()).await.unwrap();
    assert_eq!(next_addrs(&mut sub).await, ["h:2"]);
    guard.deregister().await.unwrap();
    assert!(next_addrs(&mut sub).await.is_empty());
    // Dropping a guard deregisters too.
    let guard = RegistrationGuard::register(r).await.unwrap();
    assert_eq!(next_addrs(&mut sub).await, ["h:2"]);
    drop(guard);
    assert!(next_addrs(&mut sub).await.is_empty());
}

#[tokio::test]
async fn bad_registrations_fail_with_a_clear_error() {
    let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    for (r, needle) in [
        (
            Registration::new("", Instance::new("h", 1)),
            "empty service name",
        ),
        (
            Registration::new("a/b", Instance::new("h", 1)),
            "must not contain '/'",
        ),
        (Registration::new("s", Instance::new("h", 0)), "port 0"),
        (
            Registration::new("s", Instance::new("h", 1))
                .check(HealthCheck::Ttl(Duration::from_millis(10))),
            "1 s minimum",
        ),
        (
            Registration::new("s", Instance::new("h", 1)).check(HealthCheck::Ttl(Duration::MAX)),
            "longer than the 2147483647 s",
        ),
        (
            Registration::new("s", Instance::new("h", 1))
                .check(HealthCheck::Ttl(Duration::from_secs(10)))
                .deregister_critical_after(Duration::MAX),
            "deregister_critical_after",
        ),
        (
            Registration::new("s", Instance::new("h", 1)).check(HealthCheck::Tcp {
                addr: "h:1".into(),
                interval: Duration::from_secs(u64::MAX / 2),
            }),
            "check interval",
        ),
    ] {
        let err = reg.registrar(r).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[tokio::test]
async fn stopped_memory_instancer_ends_subscriptions() {
    let reg = MemoryRegistry::new();
    let inst = reg.service_instancer("x");
    let mut sub = inst.subscribe();
    assert!(next_addrs(&mut sub).await.is_empty());
    inst.stop().await;
    inst.stop().await;
    reg.insert("x", Instance::new("h", 1), None);
    assert_eq!(sub.next().await, None);
}

/// Dropping the last handle of a registry that had TTL entries ends its reaper task (the
/// task used to hold the registry alive while waiting, a reference cycle that leaked both).
#[tokio::test(start_paused = true)]
async fn dropped_registry_ends_its_reaper() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let reg = MemoryRegistry::new();
    let inst = Instance::new("10.0.0.1", 80);
    reg.insert("svc", inst.clone(), Some(Duration::from_secs(5)));
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the reaper runs");
    assert!(reg.remove("svc", &inst));
    tokio::task::yield_now().await;
    drop(reg);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "the reaper ended with the registry"
    );
}

/// Issue 9 item 9: `register` and `deregister` never interleave. Whatever order two racing
/// calls take, once both have returned the registrar is in a state some serial order gives:
/// registered with a heartbeat, or not registered and no heartbeat. Never "not registered
/// while a heartbeat still runs" (a ghost: the heartbeat puts the instance back) nor
/// "registered with no heartbeat" (it lapses).
///
/// Deterministic on the current-thread runtime: the deregister is spawned first, and it
/// suspends while it stops the heartbeat (`task.stop().await`); without the registrar's lock
/// held across the whole call, the register runs in that gap and starts a new heartbeat that
/// the deregister's removal then orphans.
#[tokio::test(start_paused = true)]
async fn racing_register_and_deregister_leave_no_ghost() {
    let reg = MemoryRegistry::new();
    let r = Arc::new(
        reg.registrar_for(
            Registration::new("svc", Instance::new("10.0.0.1", 80))
                .check(HealthCheck::Ttl(Duration::from_secs(3))),
        ),
    );
    let passing = |reg: &MemoryRegistry| {
        reg.instances("svc")
            .iter()
            .any(|i| i.health() == Health::Passing)
    };
    for round in 0..8 {
        r.register().await.unwrap();
        let (a, b) = (r.clone(), r.clone());
        // Alternate which call is spawned (and so starts) first.
        let (dereg_task, reg_task) = if round % 2 == 0 {
            let d = tokio::spawn(async move { b.deregister().await });
            let g = tokio::spawn(async move { a.register().await });
            (d, g)
        } else {
            let g = tokio::spawn(async move { a.register().await });
            let d = tokio::spawn(async move { b.deregister().await });
            (d, g)
        };
        dereg_task.await.unwrap().unwrap();
        reg_task.await.unwrap().unwrap();
        let registered_now = passing(&reg);
        // Several TTLs later: a heartbeat keeps (or puts back) the instance, no heartbeat
        // lets it lapse. A serial order gives the same answer before and after.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            passing(&reg),
            registered_now,
            "round {round}: registered={registered_now} right after the race, but the \
             heartbeat state disagrees"
        );
        r.deregister().await.unwrap();
        assert!(!passing(&reg));
    }
}

/// An abandoned registration (a crash: no deregistration) stops heartbeating and turns
/// critical when its TTL lapses; a deregistered one goes at once.
#[tokio::test(start_paused = true)]
async fn abandoned_registration_expires_with_its_ttl() {
    let reg = MemoryRegistry::new();
    let registration = |port| {
        Registration::new("svc", Instance::new("10.0.0.1", port))
            .check(HealthCheck::Ttl(Duration::from_secs(3)))
    };
    let crashed = RegistrationGuard::register(Arc::new(reg.registrar_for(registration(1))))
        .await
        .unwrap();
    let alive = RegistrationGuard::register(Arc::new(reg.registrar_for(registration(2))))
        .await
        .unwrap();
    let instancer = reg.instancer_for(&ServiceQuery::new("svc").passing_only(true));
    let mut sub = instancer.subscribe();
    assert_eq!(next_addrs(&mut sub).await, ["10.0.0.1:1", "10.0.0.1:2"]);
    crashed.abandon();
    // Still passing before the TTL lapses...
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(passing(&reg, "svc"), 2);
    // ...and critical after (gone from passing_only), while the heartbeated one stays.
    assert_eq!(next_addrs(&mut sub).await, ["10.0.0.1:2"]);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(passing(&reg, "svc"), 1);
    alive.deregister().await.unwrap();
    assert!(next_addrs(&mut sub).await.is_empty());
}

/// Issue 9 item 5: TTL expiry keeps working after the runtime that first registered a TTL
/// entry has ended (tests with a runtime each, an application that restarts its runtime).
#[test]
fn ttl_expiry_survives_a_runtime_restart() {
    let reg = MemoryRegistry::new();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        reg.insert(
            "svc",
            Instance::new("10.0.0.1", 1),
            Some(Duration::from_secs(3)),
        );
    });
    // The first runtime is gone, and its tasks with it.
    runtime().block_on(async {
        reg.insert(
            "svc",
            Instance::new("10.0.0.2", 1),
            Some(Duration::from_secs(3)),
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let passing: Vec<Instance> = reg
            .instances("svc")
            .into_iter()
            .filter(|i| i.health() == Health::Passing)
            .collect();
        assert!(passing.is_empty(), "expired but still passing: {passing:?}");
    });
}

/// Issue 9 item 7: a lapsed TTL turns the instance critical, as in Consul: it leaves every
/// `passing_only` instancer at once, stays listed (critical) in an unfiltered one, and is
/// removed after `deregister_critical_after`.
#[tokio::test(start_paused = true)]
async fn ttl_lapse_leaves_the_instance_critical_then_removes_it_like_consul() {
    let reg = MemoryRegistry::new();
    let all = reg.instancer_for(&ServiceQuery::new("svc"));
    let healthy = reg.instancer_for(&ServiceQuery::new("svc").passing_only(true));
    let (mut all_sub, mut healthy_sub) = (all.subscribe(), healthy.subscribe());
    let guard = RegistrationGuard::register(Arc::new(
        reg.registrar_for(
            Registration::new("svc", Instance::new("10.0.0.1", 80))
                .check(HealthCheck::Ttl(Duration::from_secs(3)))
                .deregister_critical_after(Duration::from_secs(60)),
        ),
    ))
    .await
    .unwrap();
    assert_eq!(next_addrs(&mut all_sub).await, ["10.0.0.1:80"]);
    assert_eq!(next_addrs(&mut healthy_sub).await, ["10.0.0.1:80"]);
    guard.abandon();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        next_addrs(&mut healthy_sub).await.is_empty(),
        "left passing_only"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), all_sub.next())
        .await
        .unwrap()
        .unwrap();
    let listed = event.as_instances().unwrap();
    assert_eq!(listed.len(), 1, "still listed");
    assert_eq!(listed[0].health(), Health::Critical);
    // Removed once it has been critical for deregister_critical_after.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(next_addrs(&mut all_sub).await.is_empty());
    assert!(reg.instances("svc").is_empty());
}

/// Issue 9 item 7: `deregister_critical_after` needs a health check (nothing can turn the
/// instance critical otherwise); Consul rejects it, so every backend does, in `validate`.
#[tokio::test]
async fn deregister_critical_after_without_a_check_is_rejected() {
    let registration = Registration::new("svc", Instance::new("10.0.0.1", 80))
        .deregister_critical_after(Duration::from_secs(60));
    let err = registration.validate().unwrap_err().to_string();
    assert!(err.contains("deregister_critical_after"), "{err}");
    let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    assert!(reg.registrar(registration).await.is_err());
}

/// A registrar whose deregistration takes a network round trip, like Consul's.
#[derive(Debug)]
struct SlowDeregister {
    inner: sd_core::MemoryRegistrar,
}

#[async_trait::async_trait]
impl Registrar for SlowDeregister {
    async fn register(&self) -> sd_core::Result<()> {
        self.inner.register().await
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.inner.deregister().await
    }
    fn registration(&self) -> &Registration {
        self.inner.registration()
    }
}

/// Registers `svc` at 10.0.0.1:80 in `reg` on `runtime` (with a deregistration that takes a
/// round trip when `slow`) and returns the guard.
fn register_on(
    runtime: &tokio::runtime::Runtime,
    reg: &MemoryRegistry,
    slow: bool,
) -> RegistrationGuard {
    runtime.block_on(async {
        let inner = reg.registrar_for(Registration::new("svc", Instance::new("10.0.0.1", 80)));
        let registrar: Arc<dyn Registrar> = if slow {
            Arc::new(SlowDeregister { inner })
        } else {
            Arc::new(inner)
        };
        let guard = RegistrationGuard::register(registrar).await.unwrap();
        assert_eq!(reg.instances("svc").len(), 1);
        guard
    })
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Issue 9 item 6: a guard dropped at the end of `#[tokio::main]` (a multi-thread runtime
/// that shuts down right after) still deregisters: the drop waits for the deregistration.
#[test]
fn guard_dropped_at_the_end_of_main_deregisters() {
    let reg = MemoryRegistry::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let guard = register_on(&runtime, &reg, true);
    // Dropped inside the runtime, as at the end of `main`; then the runtime shuts down.
    runtime.block_on(async move { drop(guard) });
    drop(runtime);
    assert!(
        reg.instances("svc").is_empty(),
        "the instance outlived the process's runtime"
    );
}

/// Issue 9 item 6: on a current-thread runtime the drop cannot wait (the deregistration needs
/// that thread), so it spawns it; when runtime shutdown cancels it, a warning names the
/// instance left registered instead of losing it silently.
#[test]
fn guard_dropped_on_a_current_thread_runtime_warns_when_shutdown_cancels_it() {
    let logs = logs::Logs::default();
    let _log = logs.install();
    let reg = MemoryRegistry::new();
    let runtime = current_thread_runtime();
    let guard = register_on(&runtime, &reg, true);
    runtime.block_on(async move { drop(guard) });
    drop(runtime);
    assert_eq!(reg.instances("svc").len(), 1, "shutdown cancelled it");
    let logged = logs.at_least(tracing::Level::WARN);
    assert!(
        logged.contains("deregistration on drop was cancelled")
            && logged.contains("svc-10.0.0.1-80"),
        "{logged}"
    );
}

/// Issue 9 item 6: a guard dropped outside any runtime cannot send anything, and says so.
#[test]
fn guard_dropped_outside_a_runtime_warns() {
    let logs = logs::Logs::default();
    let _log = logs.install();
    let reg = MemoryRegistry::new();
    let guard = register_on(&current_thread_runtime(), &reg, false);
    drop(guard);
    let logged = logs.at_least(tracing::Level::WARN);
    assert!(logged.contains("outside a tokio runtime"), "{logged}");
    assert_eq!(reg.instances("svc").len(), 1);
}

#[tokio::test]
async fn services_lists_registered_services_and_static_cannot() {
    let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    assert!(reg.capabilities().list_services);
    assert!(reg.services().await.unwrap().is_empty());
    // A service only watched is not listed.
    let _watch = reg.instancer(&ServiceQuery::new("watched")).await.unwrap();
    let web = reg
        .registrar(Registration::new("web", Instance::new("h", 1)))
        .await
        .unwrap();
    let api = reg
        .registrar(Registration::new("api", Instance::new("h", 2)))
        .await
        .unwrap();
    web.register().await.unwrap();
    api.register().await.unwrap();
    assert_eq!(reg.services().await.unwrap(), ["api", "web"]);
    // What `sdkit::connect` hands out passes the listing through.
    let observed = sd_core::ObservedRegistry::new(reg.clone());
    assert_eq!(observed.services().await.unwrap(), ["api", "web"]);
    web.deregister().await.unwrap();
    assert_eq!(reg.services().await.unwrap(), ["api"]);

    let fixed: Arc<dyn Registry> =
        Arc::new(sd_core::StaticRegistry::from_addrs(["127.0.0.1:1"]).unwrap());
    assert!(!fixed.capabilities().list_services);
    let err = fixed.services().await.unwrap_err();
    assert!(
        matches!(
            err,
            sd_core::Error::Unsupported {
                backend: "static",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cannot list"), "{err}");
}
