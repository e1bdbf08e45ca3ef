//! Composition of registries (issue 19): `failover:` and `merge:` URLs, the composed
//! instancer's choice and union, and the composed registrar. Members are driven by hand
//! (instance caches) or are embedded registries; time is tokio's, paused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::compose::{
    member_label, parse, ComposedInstancer, ComposedRegistrar, ComposedRegistry, Composition,
    Member, RegisterIn, SOURCE_META,
};
use sd_core::config::redact;
use sd_core::{
    Capabilities, Error, Event, Freshness, Instance, InstanceCache, Instancer, MemoryRegistry,
    Registrar, Registration, Registry, ServiceQuery, StaleReason, Subscription,
};

fn inst(host: &str) -> Instance {
    Instance::new(host, 80)
}

/// The next state within ten minutes of paused time.
async fn next(sub: &mut Subscription) -> (Event, Freshness) {
    tokio::time::timeout(Duration::from_secs(600), sub.next_with_freshness())
        .await
        .expect("an event in time")
        .expect("not ended")
}

/// `(addr, source)` of every instance of a set event.
fn sourced(event: &Event) -> Vec<(String, String)> {
    event
        .as_instances()
        .expect("a set")
        .iter()
        .map(|i| {
            (
                i.addr().to_string(),
                i.meta().get(SOURCE_META).unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, s: &str) -> (String, String) {
    (a.to_string(), s.to_string())
}

fn unavailable(m: &str) -> Event {
    Event::Error(Error::unavailable("test", m))
}

/// Two hand-driven members and the composed instancer over them.
fn composed(
    composition: Composition,
) -> (Arc<InstanceCache>, Arc<InstanceCache>, ComposedInstancer) {
    let (a, b) = (
        Arc::new(InstanceCache::new()),
        Arc::new(InstanceCache::new()),
    );
    let c = ComposedInstancer::start(
        composition,
        "web",
        vec![
            ("consul://a".into(), a.clone() as Arc<dyn Instancer>),
            ("etcd://b".into(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    (a, b, c)
}

#[test]
fn composed_urls_are_split_at_the_next_scheme_and_checked() {
    let (c, m) =
        parse(" merge:etcd://a:2379,b:2379?prefix=/sd&tag=x,y , dns+srv://_web._tcp.example ")
            .unwrap()
            .unwrap();
    assert_eq!(c, Composition::Merge);
    assert_eq!(
        m,
        [
            "etcd://a:2379,b:2379?prefix=/sd&tag=x,y",
            "dns+srv://_web._tcp.example"
        ]
    );
    assert!(parse("consul://failover:8500").unwrap().is_none());
    // A host called `merge` is a host.
    let (_, m) = parse("failover:etcd://a:2379,merge:2379,consul://c")
        .unwrap()
        .unwrap();
    assert_eq!(m, ["etcd://a:2379,merge:2379", "consul://c"]);
    assert!(
        parse("failover://x").unwrap().is_none(),
        "a scheme, not a composition"
    );
    for (bad, needle) in [
        ("failover:consul://a", "at least two registry URLs"),
        ("failover:", "at least two registry URLs"),
        ("merge:consul://a,,consul://b", "member 1"),
        ("merge:consul://a,consul://b,", "member 2"),
        (
            "merge:consul://a, merge:consul://b,consul://c",
            "do not nest",
        ),
        ("merge:a:8500,consul://b", "not a registry URL"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    // No secret in an error, a label or a redacted composed URL.
    let e = parse("failover:consul://u:hunter2@a?token=s3cret")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
    let e = parse("merge:consul://a?token=s3cret,etcd:/u:hunter2@b")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
    assert_eq!(
        member_label("etcd://root:hunter2@b:2379/x?token=s3cret#f"),
        "etcd://***@b:2379/x"
    );
    assert_eq!(
        redact("merge:consul://a?token=s3cret,etcd://root:hunter2@b"),
        "merge:consul://a?token=***,etcd://***@b"
    );
}

#[tokio::test(start_paused = true)]
async fn failover_serves_the_first_fresh_member_and_switches_back() {
    let (a, b, c) = composed(Composition::Failover);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let mut sub = c.subscribe();
    // The primary's set, naming it.
    let (e, f) = next(&mut sub).await;
    assert_eq!(sourced(&e), [pair("10.0.0.1:80", "consul://a")]);
    assert_eq!(f, Freshness::Fresh);
    // The primary fails: the secondary's set, fresh (the secondary confirms it).
    a.update(unavailable("down"));
    let (e, f) = next(&mut sub).await;
    assert_eq!(sourced(&e), [pair("10.0.0.2:80", "etcd://b")]);
    assert_eq!(f, Freshness::Fresh);
    // The secondary changes: followed.
    b.update(Event::instances(vec![inst("10.0.0.2"), inst("10.0.0.3")]));
    assert_eq!(
        next(&mut sub).await.0.addrs(),
        ["10.0.0.2:80", "10.0.0.3:80"]
    );
    // The primary is back: switched back at once.
    a.update(Event::instances(vec![inst("10.0.0.4")]));
    let (e, f) = next(&mut sub).await;
    assert_eq!(sourced(&e), [pair("10.0.0.4:80", "consul://a")]);
    assert_eq!(f, Freshness::Fresh);
    // A change of the secondary while the primary serves publishes nothing.
    b.update(Event::instances(vec![inst("10.0.0.9")]));
    let quiet = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failover_with_every_member_down_serves_the_primarys_last_set_stale() {
    let (a, b, c) = composed(Composition::Failover);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(unavailable("b down"));
    let mut sub = c.subscribe();
    assert_eq!(next(&mut sub).await.0.addrs(), ["10.0.0.1:80"]);
    tokio::time::advance(Duration::from_secs(3)).await;
    a.update(unavailable("a down"));
    let (e, f) = next(&mut sub).await;
    assert_eq!(sourced(&e), [pair("10.0.0.1:80", "consul://a")]);
    assert_eq!(f.reason(), Some(StaleReason::Error));
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(
        f.age(),
        Duration::from_secs(7),
        "stale since the primary failed"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failover_prefers_a_fresh_member_to_a_stale_primary_and_an_empty_answer_counts() {
    let (a, b, c) = composed(Composition::Failover);
    // The primary serves a set from disk (stale); the secondary answers.
    a.update_with(
        Event::instances(vec![inst("10.0.0.1")]),
        Freshness::stale_now(StaleReason::Disk),
    );
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let mut sub = c.subscribe();
    let (e, f) = next(&mut sub).await;
    assert_eq!(sourced(&e), [pair("10.0.0.2:80", "etcd://b")]);
    assert_eq!(f, Freshness::Fresh);
    // The primary answers "none": that is an answer, and it is served.
    a.update(Event::instances(Vec::<Instance>::new()));
    let (e, f) = next(&mut sub).await;
    assert!(e.addrs().is_empty(), "{e:?}");
    assert_eq!(f, Freshness::Fresh);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_no_member_ever_answering_the_error_names_every_member() {
    let (a, b, c) = composed(Composition::Failover);
    a.update(unavailable("refused"));
    b.update(unavailable("timed out"));
    let mut sub = c.subscribe();
    let (e, _) = next(&mut sub).await;
    let msg = e.as_error().expect("an error").to_string();
    for part in ["consul://a", "refused", "etcd://b", "timed out"] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(e.as_error().unwrap().is_transient());
    // The secondary answers: served.
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    assert_eq!(next(&mut sub).await.0.addrs(), ["10.0.0.2:80"]);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn merge_serves_the_union_and_keeps_a_failed_members_part_stale() {
    let (a, b, c) = composed(Composition::Merge);
    // The same instance (address and id) in both members appears once.
    a.update(Event::instances(vec![inst("10.0.0.1"), inst("10.0.0.5")]));
    b.update(Event::instances(vec![inst("10.0.0.2"), inst("10.0.0.5")]));
    let mut sub = c.subscribe();
    let (e, f) = next(&mut sub).await;
    assert_eq!(
        e.addrs(),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.5:80"],
        "{e:?}"
    );
    let sources = sourced(&e);
    assert_eq!(sources[0], pair("10.0.0.1:80", "consul://a"));
    assert_eq!(sources[1], pair("10.0.0.2:80", "etcd://b"));
    assert_eq!(f, Freshness::Fresh);
    // One member fails: its part stays, the union is stale since then.
    tokio::time::advance(Duration::from_secs(2)).await;
    b.update(unavailable("b down"));
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.5:80"]);
    assert_eq!(f.reason(), Some(StaleReason::Error));
    // The other member changes meanwhile: followed, still stale.
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.5:80"]);
    assert!(f.is_stale());
    // Back: fresh, and its new set.
    b.update(Event::instances(vec![inst("10.0.0.3")]));
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.3:80"]);
    assert_eq!(f, Freshness::Fresh);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn merge_with_a_member_that_never_answered_is_stale_until_it_does() {
    let (a, b, c) = composed(Composition::Merge);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(unavailable("b down"));
    let mut sub = c.subscribe();
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80"]);
    assert_eq!(f.reason(), Some(StaleReason::Error));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(f, Freshness::Fresh);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_stops_every_member_and_dropping_ends_the_follower() {
    let (a, b, c) = composed(Composition::Merge);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    let mut sub = c.subscribe();
    next(&mut sub).await;
    c.stop().await;
    assert!(a.is_closed() && b.is_closed(), "members stopped");
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        while sub.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the subscription ends after stop");

    // Dropped without stop (and no subscription left): the follower lets go of the members.
    let (a, b, c) = composed(Composition::Failover);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    drop(c);
    for _ in 0..100 {
        if Arc::strong_count(&a) == 1 && Arc::strong_count(&b) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (1, 1));
    // A member that ends on its own: the others go on.
    let (a, b, c) = composed(Composition::Merge);
    a.update(Event::instances(vec![inst("10.0.0.1")]));
    b.update(Event::instances(vec![inst("10.0.0.2")]));
    let mut sub = c.subscribe();
    next(&mut sub).await;
    a.close();
    let (e, f) = next(&mut sub).await;
    assert_eq!(e.addrs(), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(f.reason(), Some(StaleReason::Stopped));
    b.update(Event::instances(vec![inst("10.0.0.3")]));
    assert_eq!(
        next(&mut sub).await.0.addrs(),
        ["10.0.0.1:80", "10.0.0.3:80"]
    );
    c.stop().await;
}

/// A registry whose registrars fail their first `failures` registrations (what the real
/// servers do while they are down), counting every call.
#[derive(Debug)]
struct Flaky {
    inner: MemoryRegistry,
    failures: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct FlakyRegistrar {
    inner: Arc<dyn Registrar>,
    failures: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl Registrar for FlakyRegistrar {
    async fn register(&self) -> sd_core::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Error::unavailable("flaky", "connection refused"));
        }
        self.inner.register().await
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        self.inner.deregister().await
    }
    fn registration(&self) -> &Registration {
        self.inner.registration()
    }
}

#[async_trait]
impl Registry for Flaky {
    fn scheme(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn instancer(&self, q: &ServiceQuery) -> sd_core::Result<Arc<dyn Instancer>> {
        self.inner.instancer(q).await
    }
    async fn registrar(&self, r: Registration) -> sd_core::Result<Arc<dyn Registrar>> {
        Ok(Arc::new(FlakyRegistrar {
            inner: self.inner.registrar(r).await?,
            failures: self.failures.clone(),
            calls: self.calls.clone(),
        }))
    }
}

fn flaky(failures: usize) -> (Arc<Flaky>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let r = Arc::new(Flaky {
        inner: MemoryRegistry::new(),
        failures: Arc::new(AtomicUsize::new(failures)),
        calls: calls.clone(),
    });
    (r, calls)
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

#[tokio::test(start_paused = true)]
async fn register_in_all_retries_a_member_that_was_down_until_it_accepts() {
    let a = Arc::new(MemoryRegistry::new());
    let (b, b_calls) = flaky(3);
    let composed = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new("memory://a", a.clone()),
            Member::new("flaky://b", b.clone()),
        ],
    )
    .unwrap();
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.expect("one member accepted");
    assert_eq!(addrs(&*a).await, ["10.0.0.7:80"]);
    assert!(addrs(&b.inner).await.is_empty());
    // Retried in the background with backoff: three more failures, then accepted.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(addrs(&b.inner).await, ["10.0.0.7:80"]);
    let calls = b_calls.load(Ordering::SeqCst);
    assert_eq!(
        calls, 4,
        "no hammering: one try per backoff step until accepted"
    );
    // Nothing more once accepted.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(b_calls.load(Ordering::SeqCst), calls);
    // Deregister: gone from both.
    r.deregister().await.unwrap();
    assert!(addrs(&*a).await.is_empty() && addrs(&b.inner).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn deregister_stops_the_retry_of_a_member_still_down() {
    let a = Arc::new(MemoryRegistry::new());
    let (b, b_calls) = flaky(usize::MAX);
    let composed = ComposedRegistry::new(
        Composition::Merge,
        vec![
            Member::new("memory://a", a.clone()),
            Member::new("flaky://b", b.clone()),
        ],
    )
    .unwrap();
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.deregister().await.unwrap();
    let after = b_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(b_calls.load(Ordering::SeqCst), after, "retry stopped");
    assert!(addrs(&*a).await.is_empty());
    // Dropping a registrar whose retry runs ends the retry too.
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.unwrap();
    drop(r);
    tokio::task::yield_now().await;
    let after = b_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        b_calls.load(Ordering::SeqCst),
        after,
        "retry ended with the registrar"
    );
}

#[tokio::test(start_paused = true)]
async fn register_fails_when_no_member_accepts_and_first_picks_one() {
    let (a, _) = flaky(usize::MAX);
    let (b, _) = flaky(usize::MAX);
    let composed = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new("flaky://a", a.clone()),
            Member::new("flaky://b", b.clone()),
        ],
    )
    .unwrap();
    let e = composed
        .registrar(registration())
        .await
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        e.to_string().contains("flaky://a") && e.to_string().contains("flaky://b"),
        "{e}"
    );

    // RegisterIn::First: the first that accepts, only it.
    let (a, _) = flaky(1);
    let b = Arc::new(MemoryRegistry::new());
    let c = Arc::new(MemoryRegistry::new());
    let composed = ComposedRegistry::new(
        Composition::Failover,
        vec![
            Member::new("flaky://a", a.clone()),
            Member::new("memory://b", b.clone()),
            Member::new("memory://c", c.clone()),
        ],
    )
    .unwrap()
    .register_in(RegisterIn::First);
    let r = composed.registrar(registration()).await.unwrap();
    r.register().await.unwrap();
    assert!(addrs(&a.inner).await.is_empty());
    assert_eq!(addrs(&*b).await, ["10.0.0.7:80"]);
    assert!(addrs(&*c).await.is_empty());
    // Registering again keeps it where it is (a now accepts, but is not used).
    r.register().await.unwrap();
    assert!(addrs(&a.inner).await.is_empty());
    r.deregister().await.unwrap();
    assert!(addrs(&*b).await.is_empty());
}

#[tokio::test]
async fn registered_in_names_the_members_holding_the_registration() {
    let a = Arc::new(MemoryRegistry::new());
    let b = Arc::new(MemoryRegistry::new());
    let r = ComposedRegistrar::new(
        Composition::Merge,
        registration(),
        vec![
            (
                "memory://a".into(),
                a.registrar(registration()).await.unwrap(),
            ),
            (
                "memory://b".into(),
                b.registrar(registration()).await.unwrap(),
            ),
        ],
        RegisterIn::All,
    );
    assert!(r.registered_in().is_empty());
    r.register().await.unwrap();
    assert_eq!(r.registered_in(), ["memory://a", "memory://b"]);
    r.deregister().await.unwrap();
    assert!(r.registered_in().is_empty());
}

#[tokio::test]
async fn composed_registries_declare_what_every_member_can_and_list_services() {
    let a = Arc::new(MemoryRegistry::new());
    let fixed = Arc::new(sd_core::StaticRegistry::from_addrs(["10.0.0.1:80"]).unwrap());
    a.registrar(Registration::new("api", inst("10.0.0.3")))
        .await
        .unwrap()
        .register()
        .await
        .unwrap();
    let merged = ComposedRegistry::new(
        Composition::Merge,
        vec![
            Member::new("memory://a", a.clone()),
            Member::new("static://", fixed.clone()),
        ],
    )
    .unwrap();
    assert_eq!(
        merged.capabilities(),
        a.capabilities().intersection(fixed.capabilities())
    );
    assert!(
        !merged.capabilities().registration,
        "static:// cannot register"
    );
    // static:// cannot list: the union of those that can.
    assert_eq!(merged.services().await.unwrap(), ["api"]);
    assert_eq!(merged.scheme(), "merge");
}
