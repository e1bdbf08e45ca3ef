//! Attack on issue 19's composition (`sd_core::compose`): stop and start ordering of the
//! composed instancer, the registrar's `RegisterIn::First` deregistration, registration
//! through a member that cannot register, the declared capabilities, hostile URLs.
//! Members are hand-driven instance caches or embedded registries; time is tokio's, paused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use async_trait::async_trait;
use sd_core::compose::{
    parse, ComposedInstancer, ComposedRegistry, Composition, Member, RegisterIn, SOURCE_META,
};
use sd_core::{
    Capabilities, Error, Event, Freshness, Instance, InstanceCache, Instancer, MemoryRegistry,
    Registrar, Registration, Registry, ServiceQuery, StaleReason, StaticRegistry, Subscription,
};
use sd_testkit::LogCapture;

fn inst(host: &str) -> Instance {
    Instance::new(host, 80)
}

fn sources(event: &Event) -> Vec<String> {
    event
        .as_instances()
        .map(|set| {
            set.iter()
                .map(|i| i.meta().get(SOURCE_META).unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A tracing subscriber writing into a capture, for this thread (the paused
/// current-thread runtime runs the composed instancer's task on it too).
fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

/// A member instancer whose `stop` takes a while (a real instancer's stop awaits its watch
/// task, a network round trip to cancel a blocking query, ...) before its set ends.
#[derive(Debug)]
struct SlowStop {
    cache: Arc<InstanceCache>,
    delay: Duration,
}

#[async_trait]
impl Instancer for SlowStop {
    fn subscribe(&self) -> Subscription {
        self.cache.subscribe()
    }
    async fn stop(&self) {
        tokio::time::sleep(self.delay).await;
        self.cache.close();
    }
}

/// `stop()` of a failover instancer must not make it switch to the standby on its way down:
/// once the caller asked to stop, nothing "fails over". Today `Followed::stop`
/// (sd-core/src/follow.rs:35-39) stops the members first and the follower task last; the
/// task sees the primary's subscription end (compose/instancer.rs:276,284 `states[i].stop()`),
/// the standby is still fresh, so it publishes the standby's set (instancer.rs:290, 139-160),
/// logs "failover: serving another member's set" at warn and counts a switch.
#[tokio::test(start_paused = true)]
async fn attack19_stopping_a_failover_instancer_does_not_switch_to_the_standby() {
    let (logs, _guard) = capture_logs();
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let slow_b = Arc::new(SlowStop {
        cache: b.clone(),
        delay: Duration::from_secs(1),
    });
    let c = ComposedInstancer::start(
        Composition::Failover,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("consul://b".into(), slow_b as Arc<dyn Instancer>),
        ],
    );
    let mut sub = c.subscribe();
    let first = sub.next().await.unwrap();
    assert_eq!(sources(&first), ["consul://a"]);
    // Stop, and read everything the subscription still receives until it ends.
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
            seen.push(e);
        }
        seen
    });
    tokio::task::yield_now().await;
    c.stop().await;
    let seen = collector.await.unwrap();
    let from_standby: Vec<&Event> = seen
        .iter()
        .filter(|e| sources(e).iter().any(|s| s == "consul://b"))
        .collect();
    let text = logs.text();
    assert!(
        from_standby.is_empty() && !text.contains("serving another member's set"),
        "stop() published the standby's set {from_standby:?} and logged a switch:\n{text}"
    );
}

/// The same for merge: stopping must not publish a last "stale (stopped)" union on the way
/// down (a consumer such as `RefuseStale` would start refusing during a clean shutdown).
#[tokio::test(start_paused = true)]
async fn attack19_stopping_a_merge_instancer_publishes_no_stale_union() {
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let slow_b = Arc::new(SlowStop {
        cache: b.clone(),
        delay: Duration::from_secs(1),
    });
    let c = ComposedInstancer::start(
        Composition::Merge,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("consul://b".into(), slow_b as Arc<dyn Instancer>),
        ],
    );
    let mut sub = c.subscribe();
    let (_, f) = sub.next_with_freshness().await.unwrap();
    assert_eq!(f, Freshness::Fresh);
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(x)) =
            tokio::time::timeout(Duration::from_secs(60), sub.next_with_freshness()).await
        {
            seen.push(x);
        }
        seen
    });
    tokio::task::yield_now().await;
    c.stop().await;
    let seen = collector.await.unwrap();
    assert!(
        seen.is_empty(),
        "stop() published {} more state(s), the last one {:?}",
        seen.len(),
        seen.last()
    );
}

/// Before the primary has said anything (no set, no error: its first query is in flight),
/// failover serves the standby's set, then "switches" to the primary when it answers,
/// logging a switch at warn (and counting `sdkit_failover_switches_total`), although no
/// member failed. The docs: "switches to the next when it fails or serves stale data"
/// (docs/URLS.md) and "not counted: the first choice" (docs/OBSERVABILITY.md). Cause:
/// `Combiner::failover` (compose/instancer.rs:140-146) skips a member with no event at all
/// as if it had failed; `ComposedInstancer::start` publishes at once (instancer.rs:255).
/// With `failover:consul://...,memory://...` this happens at every start (memory answers
/// synchronously, Consul one round trip later).
#[tokio::test(start_paused = true)]
async fn attack19_failover_does_not_serve_the_standby_before_the_primary_answered() {
    let (logs, _guard) = capture_logs();
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let c = ComposedInstancer::start(
        Composition::Failover,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("memory://b".into(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    let served_before_primary = c.state();
    // The primary's first answer, a moment later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    let mut sub = c.subscribe();
    let mut last = sub.next().await.unwrap();
    for _ in 0..10 {
        if sources(&last) == ["consul://a"] {
            break;
        }
        last = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(sources(&last), ["consul://a"]);
    let text = logs.text();
    c.stop().await;
    assert!(
        served_before_primary.is_none() && !text.contains("serving another member's set"),
        "before the primary answered: {served_before_primary:?}; logs:\n{text}"
    );
}

/// Failover with every member stale from disk: the primary's set, stale (reason disk).
/// (Holds; not tested before.)
#[tokio::test(start_paused = true)]
async fn attack19_failover_with_every_member_stale_from_disk_serves_the_primary() {
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    a.update_with(
        Event::instances(vec![inst("10.0.0.1")]),
        Freshness::stale_now(StaleReason::Disk),
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    b.update_with(
        Event::instances(vec![inst("10.0.0.2")]),
        Freshness::stale_now(StaleReason::Disk),
    );
    let c = ComposedInstancer::start(
        Composition::Failover,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("consul://b".into(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    let mut sub = c.subscribe();
    let (e, f) = sub.next_with_freshness().await.unwrap();
    assert_eq!(sources(&e), ["consul://a"]);
    assert_eq!(f.reason(), Some(StaleReason::Disk));
    assert_eq!(f.age(), Duration::from_secs(5));
    // Merge of the same: stale as of the oldest (the primary's file).
    let m = ComposedInstancer::start(
        Composition::Merge,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("consul://b".into(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    let (e, f) = m.subscribe().next_with_freshness().await.unwrap();
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(f.age(), Duration::from_secs(5));
    c.stop().await;
    m.stop().await;
}

/// Merge, before one member has said anything (its first query in flight, e.g. an etcd
/// member still connecting): the union of the others is published *fresh*, although it
/// lacks that member's part. ARCHITECTURE.md: "merge is stale ... while any member is
/// stale, failed or stopped"; sd-core/tests/compose.rs names the case
/// `merge_with_a_member_that_never_answered_is_stale_until_it_does` but drives the member
/// to an error first. Cause: `merge` (compose/instancer.rs:179-188) only looks at members
/// with a set or an error; a silent member counts as fresh.
#[tokio::test(start_paused = true)]
async fn attack19_merge_with_a_silent_member_is_not_fresh() {
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    let c = ComposedInstancer::start(
        Composition::Merge,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("etcd://b".into(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    let (e, f) = c.subscribe().next_with_freshness().await.unwrap();
    c.stop().await;
    assert!(
        f.is_stale(),
        "published {:?} as {f:?} while etcd://b has not answered",
        e.addrs()
    );
}

/// A registry whose registrars store the registration and then report a failure (a request
/// that timed out after the server applied it: an ambiguous failure), or store it after a
/// delay the caller may not wait for.
#[derive(Debug)]
struct Ambiguous {
    inner: MemoryRegistry,
    /// Register applies, then fails.
    fail_after_apply: bool,
    /// Register applies, then takes this long to answer.
    slow: Duration,
    deregisters: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct AmbiguousRegistrar {
    inner: Arc<dyn Registrar>,
    fail_after_apply: bool,
    slow: Duration,
    deregisters: Arc<AtomicUsize>,
}

#[async_trait]
impl Registrar for AmbiguousRegistrar {
    async fn register(&self) -> sd_core::Result<()> {
        self.inner.register().await?;
        tokio::time::sleep(self.slow).await;
        if self.fail_after_apply {
            return Err(Error::unavailable("ambiguous", "request timed out"));
        }
        Ok(())
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        self.deregisters.fetch_add(1, Ordering::SeqCst);
        self.inner.deregister().await
    }
    fn registration(&self) -> &Registration {
        self.inner.registration()
    }
}

#[async_trait]
impl Registry for Ambiguous {
    fn scheme(&self) -> &'static str {
        "ambiguous"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn instancer(&self, q: &ServiceQuery) -> sd_core::Result<Arc<dyn Instancer>> {
        self.inner.instancer(q).await
    }
    async fn registrar(&self, r: Registration) -> sd_core::Result<Arc<dyn Registrar>> {
        Ok(Arc::new(AmbiguousRegistrar {
            inner: self.inner.registrar(r).await?,
            fail_after_apply: self.fail_after_apply,
            slow: self.slow,
            deregisters: self.deregisters.clone(),
        }))
    }
}

async fn addrs(registry: &dyn Registry) -> Vec<String> {
    let i = registry.instancer(&ServiceQuery::new("web")).await.unwrap();
    let e = i.subscribe().first().await.unwrap();
    i.stop().await;
    e.addrs()
}

fn registration() -> Registration {
    Registration::new("web", Instance::builder("10.0.0.7", 80).id("web-7").build())
}

/// `RegisterIn::First`: the first member's register failed ambiguously (applied, then
/// timed out), the second accepted. `deregister()` returns Ok but the instance is still in
/// the first member. The rustdoc of `ComposedRegistrar::deregister` says it "deregisters
/// from every member (each member's deregistration is idempotent, so one that never accepted
/// is harmless)", but for `First` it only targets members marked registered
/// (compose/registrar.rs:222), and a member whose register returned Err is never
/// marked (registrar.rs:177-184).
#[tokio::test(start_paused = true)]
async fn attack19_register_in_first_deregister_leaves_an_ambiguous_registration_behind() {
    let deregisters = Arc::new(AtomicUsize::new(0));
    let a = Arc::new(Ambiguous {
        inner: MemoryRegistry::new(),
        fail_after_apply: true,
        slow: Duration::ZERO,
        deregisters: deregisters.clone(),
    });
    let b = Arc::new(MemoryRegistry::new());
    let composed = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new("ambiguous://a", a.clone()),
            Member::new("memory://b", b.clone()),
        ],
    )
    .unwrap()
    .register_in(RegisterIn::First);
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.unwrap();
    assert_eq!(addrs(&*b).await, ["10.0.0.7:80"]);
    r.deregister().await.expect("deregister Ok");
    assert!(addrs(&*b).await.is_empty());
    let left = addrs(&a.inner).await;
    assert!(
        left.is_empty(),
        "after deregister() returned Ok the instance is still registered in the first member: \
         {left:?} (deregister calls on it: {})",
        deregisters.load(Ordering::SeqCst)
    );
}

/// The same leak without any error from the member: the caller's `register()` is given a
/// deadline (`tokio::time::timeout`) that ends while the first member's slow register is in
/// flight (already applied). The flag is never set (registrar.rs:178-180), so a later
/// `deregister()` (Ok) does not touch that member. With `RegisterIn::All` the same
/// sequence is cleaned up (deregister targets every member).
#[tokio::test(start_paused = true)]
async fn attack19_register_in_first_cancelled_register_then_deregister_leaks() {
    let make = |register_in| {
        let a = Arc::new(Ambiguous {
            inner: MemoryRegistry::new(),
            fail_after_apply: false,
            slow: Duration::from_secs(10),
            deregisters: Arc::new(AtomicUsize::new(0)),
        });
        let b = Arc::new(MemoryRegistry::new());
        let composed = ComposedRegistry::new(
            Composition::Failover,
            vec![
                Member::new("ambiguous://a", a.clone()),
                Member::new("memory://b", b),
            ],
        )
        .unwrap()
        .register_in(register_in);
        (a, composed)
    };
    let mut left = Vec::new();
    for register_in in [RegisterIn::All, RegisterIn::First] {
        let (a, composed) = make(register_in);
        let r = composed.registrar(registration()).await.unwrap();
        // The caller gives up before the start timeout (1 s) lets `register` return.
        let timed_out = tokio::time::timeout(Duration::from_millis(500), r.register()).await;
        assert!(timed_out.is_err(), "the caller gave up");
        r.deregister().await.expect("deregister Ok");
        left.push((register_in, addrs(&a.inner).await));
    }
    assert!(
        left.iter().all(|(_, l)| l.is_empty()),
        "registrations left behind after deregister() returned Ok: {left:?}"
    );
}

/// The documented flagship migration, `merge:consul://...,dns+srv://...` (README, URLS.md),
/// and docs/URLS.md's table: "registration: in every member ...; `register` fails only if
/// no member accepts". A member that cannot register at all (static://, dns+srv:// without
/// `zone=`) makes `ComposedRegistry::registrar` fail at once, although the other member
/// would accept: `split_results` turns any member's `registrar()` error into the composed
/// error (compose/mod.rs:357-360, split_results at mod.rs:268-287).
#[tokio::test]
async fn attack19_merge_with_a_read_only_member_still_registers_in_the_others() {
    let m = Arc::new(MemoryRegistry::new());
    let fixed = Arc::new(StaticRegistry::from_addrs(["10.0.0.1:80"]).unwrap());
    let merged = ComposedRegistry::new(
        Composition::Merge,
        vec![
            Member::new("memory://m", m.clone()),
            Member::new("static://", fixed),
        ],
    )
    .unwrap();
    let result = merged.registrar(registration()).await;
    let registered = match result {
        Ok(r) => r.register().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        registered.is_ok(),
        "the memory member would accept, but registration through the merge fails: {:?}",
        registered.unwrap_err().to_string()
    );
    assert_eq!(addrs(&*m).await, ["10.0.0.7:80"]);
}

/// `ComposedRegistry::capabilities`'s rustdoc (compose/mod.rs:318-319): "What every member
/// can do (with [`Capabilities::metadata`]: [`SOURCE_META`] is set on every instance)". The
/// code (mod.rs:320-326) is the bare intersection: with a member without metadata (static://,
/// dns+srv://) `metadata` is false, although every instance carries `sd.source`.
#[tokio::test]
async fn attack19_capabilities_are_the_intersection_as_the_rustdoc_says() {
    let m = Arc::new(MemoryRegistry::new());
    let fixed = Arc::new(StaticRegistry::from_addrs(["10.0.0.1:80"]).unwrap());
    let merged = ComposedRegistry::new(
        Composition::Merge,
        vec![
            Member::new("memory://m", m.clone()),
            Member::new("static://", fixed),
        ],
    )
    .unwrap();
    let i = merged.instancer(&ServiceQuery::new("web")).await.unwrap();
    let e = i.subscribe().first().await.unwrap();
    assert_eq!(sources(&e), ["static://"], "every instance has metadata");
    i.stop().await;
    // Fixed in the rustdoc: capabilities are the members' intersection (`metadata` says
    // whether registered metadata round-trips everywhere), `sd.source` is there regardless.
    assert_eq!(
        merged.capabilities(),
        m.capabilities().intersection(
            StaticRegistry::from_addrs(["10.0.0.1:80"])
                .unwrap()
                .capabilities()
        )
    );
}

/// Hostile composed URLs: case, whitespace, many members, secrets in errors. (Holds.)
#[test]
fn attack19_hostile_composed_urls_parse_or_fail_cleanly() {
    let (c, m) = parse("  FAILOVER:\tconsul://a:8500 ,\n Consul://b:8500  ")
        .unwrap()
        .unwrap();
    assert_eq!(c, Composition::Failover);
    assert_eq!(m, ["consul://a:8500", "Consul://b:8500"]);
    // 1000 members.
    let url = format!(
        "merge:{}",
        (0..1000)
            .map(|i| format!("memory://m{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (_, m) = parse(&url).unwrap().unwrap();
    assert_eq!(m.len(), 1000);
    // A secret in a member that makes the URL malformed never shows in the error.
    for bad in [
        "failover:consul://u:hunter2@a?token=s3cret,,consul://b",
        "merge:consul://a?token=s3cret,failover:consul://b,consul://c",
        "merge:consul://a?token=s3cret",
        "merge:consul://a?token=s3cret,u:hunter2@b:8500",
        "failover:consul://a?token=s3cret,consul://b,",
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            !e.contains("hunter2") && !e.contains("s3cret"),
            "{bad}: {e}"
        );
    }
}

/// A long host list in a composed URL (commas not followed by a scheme) is split in time
/// linear in its length. `split_lenient` (compose/mod.rs:124-128) searches the whole rest
/// of the URL for the next `://` at every comma: quadratic. The URL comes from
/// configuration, so this is minor; the bound below is very generous (a linear split of
/// 400 kB takes well under a millisecond).
#[test]
fn attack19_splitting_a_long_host_list_is_not_quadratic() {
    let hosts = (0..30_000)
        .map(|i| format!("h{}", i % 10))
        .collect::<Vec<_>>()
        .join(",");
    let url = format!("merge:etcd://{hosts},etcd://x");
    let start = StdInstant::now();
    let parsed = parse(&url).unwrap().unwrap();
    let took = start.elapsed();
    assert_eq!(parsed.1.len(), 2);
    assert!(
        took < Duration::from_millis(500),
        "parsing a {} byte composed URL took {took:?}",
        url.len()
    );
}

/// A member that fails its first `failures` registrations, and whose registrations take a
/// while: `apply_first` stores then waits, otherwise waits then stores.
#[derive(Debug)]
struct SlowFlaky {
    inner: Arc<dyn Registrar>,
    failures: AtomicUsize,
    apply_first: bool,
}

#[async_trait]
impl Registrar for SlowFlaky {
    async fn register(&self) -> sd_core::Result<()> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(Error::unavailable("slowflaky", "refused"));
        }
        if self.apply_first {
            self.inner.register().await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.inner.register().await?;
        }
        Ok(())
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        self.inner.deregister().await
    }
    fn registration(&self) -> &Registration {
        self.inner.registration()
    }
}

/// `deregister()` at every moment of the background retry (before it, during a failing
/// try, during a slow successful try that stores first or last): once it returned Ok,
/// nothing is left in any member, then or later. (Holds: the retry is stopped, and waited
/// for, before deregistering: compose/registrar.rs:213-216.)
#[tokio::test(start_paused = true)]
async fn attack19_deregister_racing_the_background_retry_leaves_nothing() {
    for apply_first in [false, true] {
        for offset_ms in (0..4000).step_by(100) {
            let a = Arc::new(MemoryRegistry::new());
            let b = Arc::new(MemoryRegistry::new());
            let rb = Arc::new(SlowFlaky {
                inner: b.registrar(registration()).await.unwrap(),
                failures: AtomicUsize::new(2),
                apply_first,
            });
            let r = sd_core::compose::ComposedRegistrar::new(
                Composition::Merge,
                registration(),
                vec![
                    (
                        "memory://a".into(),
                        a.registrar(registration()).await.unwrap(),
                    ),
                    ("slow://b".into(), rb as Arc<dyn Registrar>),
                ],
                RegisterIn::All,
            );
            r.register().await.unwrap();
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            r.deregister().await.unwrap();
            tokio::time::sleep(Duration::from_secs(120)).await;
            let left = (addrs(&*a).await, addrs(&*b).await);
            assert!(
                left.0.is_empty() && left.1.is_empty(),
                "apply_first={apply_first} offset={offset_ms}ms: left {left:?}"
            );
            assert!(r.registered_in().is_empty());
        }
    }
}

/// A registry that is down: every register and deregister fails (connection refused).
#[derive(Debug)]
struct Down;

#[derive(Debug)]
struct DownRegistrar(Registration);

#[async_trait]
impl Registrar for DownRegistrar {
    async fn register(&self) -> sd_core::Result<()> {
        Err(Error::unavailable("down", "connection refused"))
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        Err(Error::unavailable("down", "connection refused"))
    }
    fn registration(&self) -> &Registration {
        &self.0
    }
}

#[async_trait]
impl Registry for Down {
    fn scheme(&self) -> &'static str {
        "down"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::none().with_registration()
    }
    async fn instancer(&self, _: &ServiceQuery) -> sd_core::Result<Arc<dyn Instancer>> {
        let cache = Arc::new(InstanceCache::new());
        cache.update(Event::Error(Error::unavailable(
            "down",
            "connection refused",
        )));
        Ok(cache)
    }
    async fn registrar(&self, r: Registration) -> sd_core::Result<Arc<dyn Registrar>> {
        Ok(Arc::new(DownRegistrar(r)))
    }
}

/// `RegisterIn::All` with a member down for the whole life of the registration (it never
/// accepted, it never held it): `deregister()` removes the registration from the member
/// that held it and still fails, naming the member that never had it. The rustdoc of
/// `ComposedRegistrar::deregister` calls deregistering a member "that never accepted ...
/// harmless"; the code deregisters every member regardless of `registered`
/// (compose/registrar.rs:221) and fails on any error (registrar.rs:228-237), with
/// `combine_errors`' message "no member answered" (mod.rs:300-303) although one did. A process
/// shutting down with its standby registry down gets an error although nothing is left
/// registered anywhere. (Minor: a member whose register failed ambiguously may hold it,
/// but a refused connection did not.)
#[tokio::test(start_paused = true)]
async fn attack19_deregister_fails_for_a_member_that_never_held_the_registration() {
    let a = Arc::new(MemoryRegistry::new());
    let composed = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new("memory://a", a.clone()),
            Member::new("down://b", Arc::new(Down)),
        ],
    )
    .unwrap();
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.unwrap();
    let result = r.deregister().await;
    assert!(
        addrs(&*a).await.is_empty(),
        "removed from the member that held it"
    );
    assert!(
        result.is_ok(),
        "deregister failed although no member holds the registration: {}",
        result.unwrap_err()
    );
}

/// Random interleavings (fixed seed) of three hand-driven members changing, failing and
/// turning stale, in bursts that the follower batches (`now_or_never`,
/// compose/instancer.rs:282-286): after each burst the composed state equals a model of
/// the documented rules (failover: first fresh member's set, else the first member with a
/// set, stale; merge: the union of every last set, stale while any member is not fresh).
/// No lost update. (Holds; note that two events of one member in a burst are read
/// latest-value, like by any subscriber: a set followed at once by an error leaves the set
/// before it as the member's "last set".)
#[tokio::test(start_paused = true)]
async fn attack19_random_bursts_never_lose_an_update() {
    let mut seed: u64 = 0x5eed_1901;
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for composition in [Composition::Failover, Composition::Merge] {
        let members: Vec<Arc<InstanceCache>> =
            (0..3).map(|_| Arc::new(InstanceCache::new())).collect();
        let labels = ["consul://a", "etcd://b", "zk://c"];
        // Model: each member's last set (host list) and whether it is fresh now.
        let mut last: Vec<Option<Vec<String>>> = vec![None; 3];
        let mut fresh = [true; 3];
        for (i, m) in members.iter().enumerate() {
            let host = format!("10.0.{i}.0");
            m.update(Event::instances(vec![inst(&host)]));
            last[i] = Some(vec![format!("{host}:80")]);
        }
        let c = ComposedInstancer::start(
            composition,
            "web",
            members
                .iter()
                .zip(labels)
                .map(|(m, l)| (l.to_string(), m.clone() as Arc<dyn Instancer>))
                .collect(),
        );
        let sub = c.subscribe();
        for step in 0..400 {
            // At most one event per member in a burst: the follower reads each member
            // latest-value (a set followed at once by an error is seen as the error, like
            // any subscriber would), so only the last event of a member is guaranteed.
            let burst = 1 + rand(3) as usize;
            let skip = rand(3) as usize;
            for n in 0..burst {
                let i = (skip + n) % 3;
                match rand(4) {
                    0 => {
                        members[i].update(unavailable_event());
                        fresh[i] = false;
                    }
                    1 => {
                        let Some(set) = last[i].clone() else { continue };
                        let hosts: Vec<Instance> = set
                            .iter()
                            .map(|a| inst(a.trim_end_matches(":80")))
                            .collect();
                        members[i].update_with(
                            Event::instances(hosts),
                            Freshness::stale_now(StaleReason::Disk),
                        );
                        fresh[i] = false;
                    }
                    _ => {
                        let n = rand(3);
                        let hosts: Vec<String> = (0..n)
                            .map(|k| format!("10.0.{i}.{}", rand(4) + k * 10))
                            .collect();
                        let mut addrs: Vec<String> =
                            hosts.iter().map(|h| format!("{h}:80")).collect();
                        addrs.sort();
                        addrs.dedup();
                        members[i].update(Event::instances(
                            hosts.iter().map(|h| inst(h)).collect::<Vec<_>>(),
                        ));
                        last[i] = Some(addrs);
                        fresh[i] = true;
                    }
                }
            }
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            let (want, want_fresh): (Vec<String>, bool) = match composition {
                Composition::Failover => match (0..3).find(|&i| fresh[i] && last[i].is_some()) {
                    Some(i) => (last[i].clone().unwrap(), true),
                    None => {
                        let i = (0..3).find(|&i| last[i].is_some()).unwrap();
                        (last[i].clone().unwrap(), false)
                    }
                },
                _ => {
                    let mut all: Vec<String> = last.iter().flatten().flatten().cloned().collect();
                    all.sort();
                    all.dedup();
                    (all, fresh.iter().all(|f| *f))
                }
            };
            let got = sub.current().expect("a state");
            let got_fresh = !sub.current_freshness().unwrap().is_stale();
            let mut got_addrs = got.addrs();
            got_addrs.sort();
            assert_eq!(
                (got_addrs, got_fresh),
                (want, want_fresh),
                "{composition} step {step}: {got:?}; model {last:?} {fresh:?}; members {:?}",
                members
                    .iter()
                    .map(|m| (m.state(), m.freshness().map(|f| f.is_stale())))
                    .collect::<Vec<_>>()
            );
        }
        c.stop().await;
    }
}

fn unavailable_event() -> Event {
    Event::Error(Error::unavailable("test", "down"))
}

/// A registry whose instancer is a cache the test keeps (to watch who holds it), or that
/// rejects every query.
#[derive(Debug)]
struct Kept {
    cache: Option<Arc<InstanceCache>>,
}

#[async_trait]
impl Registry for Kept {
    fn scheme(&self) -> &'static str {
        "kept"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }
    async fn instancer(&self, _: &ServiceQuery) -> sd_core::Result<Arc<dyn Instancer>> {
        match &self.cache {
            Some(c) => Ok(c.clone()),
            None => Err(Error::config("kept: no such service")),
        }
    }
    async fn registrar(&self, _: Registration) -> sd_core::Result<Arc<dyn Registrar>> {
        Err(Error::config("kept: read-only"))
    }
}

/// Through `ComposedRegistry::instancer`: a composed instancer dropped without `stop`, after
/// its subscription is dropped too, lets go of every member instancer; a member that
/// rejects the query makes the call fail and the members already started are stopped.
/// (Holds.)
#[tokio::test(start_paused = true)]
async fn attack19_dropped_composed_instancer_releases_members_and_failed_start_stops_them() {
    let a = Arc::new(InstanceCache::new());
    let b = Arc::new(InstanceCache::new());
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let composed = ComposedRegistry::new(
        Composition::Merge,
        vec![
            Member::new(
                "kept://a",
                Arc::new(Kept {
                    cache: Some(a.clone()),
                }),
            ),
            Member::new(
                "kept://b",
                Arc::new(Kept {
                    cache: Some(b.clone()),
                }),
            ),
        ],
    )
    .unwrap();
    let i = composed.instancer(&ServiceQuery::new("web")).await.unwrap();
    let mut sub = i.subscribe();
    assert_eq!(sub.next().await.unwrap().addrs().len(), 2);
    drop(i);
    // The subscription keeps it running.
    a.update(Event::instances(vec![inst("10.0.0.3")]));
    assert_eq!(
        sub.next().await.unwrap().addrs(),
        ["10.0.0.2:80", "10.0.0.3:80"]
    );
    drop(sub);
    for _ in 0..100 {
        if Arc::strong_count(&a) == 2 && Arc::strong_count(&b) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Held by the test and by its `Kept` registry only.
    assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (2, 2));
    assert!(!a.is_closed(), "dropping does not stop a shared member");

    let c = Arc::new(InstanceCache::new());
    let failing = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new(
                "kept://c",
                Arc::new(Kept {
                    cache: Some(c.clone()),
                }),
            ),
            Member::new("kept://none", Arc::new(Kept { cache: None })),
        ],
    )
    .unwrap();
    let e = failing
        .instancer(&ServiceQuery::new("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kept://none") && e.contains("no such service"),
        "{e}"
    );
    assert!(
        c.is_closed(),
        "the member started for the failed call is stopped"
    );
}
