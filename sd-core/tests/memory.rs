//! The embedded registry (`memory://`): registrar and instancer, filters, TTL expiry.

use std::sync::Arc;
use std::time::Duration;

use sd_core::{
    Health, HealthCheck, Instance, Instancer, MemoryRegistry, Registrar, Registration,
    RegistrationGuard, Registry, ServiceQuery,
};

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
    let inst = reg.instancer("web");
    let mut sub = inst.subscribe();
    assert!(next_addrs(&mut sub).await.is_empty());
    let r = reg.registrar(Registration::new("web", Instance::new("127.0.0.1", 8080)));
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
    // A dropped instancer ends its subscriptions once their last state is read.
    drop(passing_only);
    assert_eq!(passing.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn ttl_registrations_expire_unless_renewed() {
    let reg = MemoryRegistry::new();
    let instancer = reg.instancer("svc");
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
    let live = reg.registrar(
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
    assert_eq!(reg.instances("svc").len(), 1, "still alive after ten TTLs");
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
    ] {
        let err = reg.registrar(r).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[tokio::test]
async fn stopped_memory_instancer_ends_subscriptions() {
    let reg = MemoryRegistry::new();
    let inst = reg.instancer("x");
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

/// register and deregister never interleave: after both calls return, in whatever order
/// they raced, a deregister that ran last leaves nothing registered and no heartbeat.
#[tokio::test(start_paused = true)]
async fn racing_register_and_deregister_leave_no_ghost() {
    let reg = MemoryRegistry::new();
    let r = Arc::new(
        reg.registrar(
            Registration::new("svc", Instance::new("10.0.0.1", 80))
                .check(HealthCheck::Ttl(Duration::from_secs(3))),
        ),
    );
    for _ in 0..20 {
        let (a, b) = (r.clone(), r.clone());
        let reg_task = tokio::spawn(async move { a.register().await });
        let dereg_task = tokio::spawn(async move { b.deregister().await });
        reg_task.await.unwrap().unwrap();
        dereg_task.await.unwrap().unwrap();
        r.deregister().await.unwrap();
        // Long enough for any leftover heartbeat to have renewed or re-inserted.
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        assert!(reg.instances("svc").is_empty());
    }
}

/// An abandoned registration (a crash: no deregistration) stops heartbeating and expires
/// when its TTL lapses; a deregistered one goes at once.
#[tokio::test(start_paused = true)]
async fn abandoned_registration_expires_with_its_ttl() {
    let reg = MemoryRegistry::new();
    let registration = |port| {
        Registration::new("svc", Instance::new("10.0.0.1", port))
            .check(HealthCheck::Ttl(Duration::from_secs(3)))
    };
    let crashed = RegistrationGuard::register(Arc::new(reg.registrar(registration(1))))
        .await
        .unwrap();
    let alive = RegistrationGuard::register(Arc::new(reg.registrar(registration(2))))
        .await
        .unwrap();
    let instancer = reg.instancer("svc");
    let mut sub = instancer.subscribe();
    assert_eq!(next_addrs(&mut sub).await, ["10.0.0.1:1", "10.0.0.1:2"]);
    crashed.abandon();
    // Still listed before the TTL lapses...
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(reg.instances("svc").len(), 2);
    // ...and gone after, while the heartbeated one stays.
    assert_eq!(next_addrs(&mut sub).await, ["10.0.0.1:2"]);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(reg.instances("svc").len(), 1);
    alive.deregister().await.unwrap();
    assert!(next_addrs(&mut sub).await.is_empty());
}
