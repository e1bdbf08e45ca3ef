//! The shared conformance suite: one contract for every registry backend.
//!
//! Every backend crate instantiates the suite once, in `tests/conformance.rs`, with the
//! [`conformance!`](crate::conformance!) macro. Each behaviour becomes its own named test
//! (`<backend>::<behaviour>`), so a failure names the backend and the behaviour:
//!
//! ```ignore
//! sd_testkit::conformance!(consul, || async {
//!     let addr = sd_testkit::require(sd_testkit::Server::Consul)?;
//!     let registry = sd_consul::ConsulRegistry::from_url(&format!("consul://{addr}")).unwrap();
//!     Some(sd_testkit::conformance::Target::new(std::sync::Arc::new(registry))
//!         .server(sd_testkit::Server::Consul))
//! });
//! ```
//!
//! The closure returns `None` to skip (the server is not available and integration tests are
//! switched off). The behaviours are gated by the [`Capabilities`] the registry declares: a
//! behaviour whose capability is not declared prints a loud `SKIPPED conformance ...` line
//! (written straight to the process's stderr, so `cargo test` shows it) and passes.
//!
//! Every wait is an event wait with a generous deadline ([`Target::deadline`]); nothing sleeps
//! to synchronise, so the suite stays deterministic on a loaded two-core machine. The only
//! bounded polls are where there is no event to wait for: the alive-task count after
//! `stop()`, "no event follows `stop()`", "nothing is published for two TTLs after a
//! deregistration" (no zombie, no spurious error), and the service listing (no watch).
//!
//! Outside the restart behaviour the registry is healthy: there every wait fails on an error
//! event. The public [`wait_set`] skips error events (for fault tests).
//!
//! | behaviour | needs |
//! |---|---|
//! | [`register_is_seen_with_its_fields`] | registration (fields checked as far as declared) |
//! | [`services_and_instancers_are_independent`] | registration |
//! | [`deregister_removes_and_is_idempotent`] | registration |
//! | [`vanished_registrant_expires`] | registration, expiry |
//! | [`tags_are_anded`] | registration, tags |
//! | [`passing_only_leaves_out_unhealthy`] | registration, health |
//! | [`reregister_changes_attributes`] | registration, and tags, metadata, weight or health |
//! | [`filtered_instancer_follows_changes`] | registration, server_side_filtering, tags or health |
//! | [`bulk_churn_final_set_is_exact`] | registration |
//! | [`restart_keeps_last_good_and_recovers`] | registration, a [`Target::server`] to restart |
//! | [`stop_is_idempotent_and_final`] | nothing |
//! | [`dropped_instancers_end_their_work`] | nothing |
//! | [`bad_entry_is_skipped_alone`] | registration, a [`Target::bad_entry`] hook |
//! | [`services_are_listed`] | registration, list_services (without it: `Unsupported` is checked) |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sd_core::{
    BoxError, Capabilities, DefaultEndpointer, Endpointer, Event, Health, HealthCheck, Instance,
    InstanceSet, Instancer, Registrar, Registration, Registry, ServiceQuery, Subscription,
};
use tokio::time::Instant;

use crate::Server;

/// A hook that writes one undecodable entry for a service straight into the registry.
pub type BadEntryHook =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the suite runs against: a registry and what it needs to know about it.
#[derive(Clone)]
pub struct Target {
    backend: &'static str,
    registry: Arc<dyn Registry>,
    server: Option<Server>,
    ttl: Duration,
    expiry_deadline: Duration,
    deadline: Duration,
    churn: usize,
    bad_entry: Option<BadEntryHook>,
    baseline_tasks: Option<usize>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("backend", &self.backend)
            .field("registry", &self.registry)
            .field("server", &self.server)
            .field("ttl", &self.ttl)
            .field("expiry_deadline", &self.expiry_deadline)
            .field("deadline", &self.deadline)
            .field("churn", &self.churn)
            .field("bad_entry", &self.bad_entry.is_some())
            .finish()
    }
}

impl Target {
    /// A target for `registry` with the defaults: no server to restart, TTL 2 s, expiry
    /// deadline 30 s, event deadline 30 s, 1 000 instances in the churn behaviour, no
    /// bad-entry hook.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Target {
            backend: "unnamed",
            registry,
            server: None,
            ttl: Duration::from_secs(2),
            expiry_deadline: Duration::from_secs(30),
            deadline: Duration::from_secs(30),
            churn: 1000,
            bad_entry: None,
            baseline_tasks: None,
        }
    }

    /// The `scripts/registries` server behind the registry: enables the kill/restart behaviour.
    #[must_use]
    pub fn server(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }

    /// The TTL of the suite's registrations (`HealthCheck::Ttl`); a deregistered instance
    /// must stay gone (nothing published) for two of them.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a vanished registrant may stay visible to a `passing_only` instancer.
    #[must_use]
    pub fn expiry_deadline(mut self, d: Duration) -> Self {
        self.expiry_deadline = d;
        self
    }

    /// How long any expected event may take (a hang guard, not a performance bound).
    #[must_use]
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// How many instances the churn behaviour registers (default 1 000; half are removed and
    /// a fifth re-registered on a new port).
    #[must_use]
    pub fn churn(mut self, n: usize) -> Self {
        self.churn = n.max(10);
        self
    }

    /// A hook that writes an undecodable entry for the given service straight into the
    /// registry (enables [`bad_entry_is_skipped_alone`]).
    #[must_use]
    pub fn bad_entry<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.bad_entry = Some(Arc::new(move |s| Box::pin(hook(s))));
        self
    }

    /// The registry under test.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    #[doc(hidden)]
    pub fn __named(mut self, backend: &'static str, baseline_tasks: usize) -> Self {
        self.backend = backend;
        self.baseline_tasks = Some(baseline_tasks);
        self
    }

    /// For every behaviour but the restart one: a shared lock on the target's server, so the
    /// restart behaviour (and any other fault test holding [`exclusive`](crate::exclusive))
    /// never kills the server under it.
    #[doc(hidden)]
    pub fn __shared_guard(&self, behaviour: &str) -> Option<crate::SharedGuard> {
        match self.server {
            Some(server) if behaviour != "restart_keeps_last_good_and_recovers" => {
                Some(crate::shared(server))
            }
            _ => None,
        }
    }

    fn caps(&self) -> Capabilities {
        self.registry.capabilities()
    }

    /// Returns `true` (after printing a loud skip line) if `needed` is not declared.
    fn lacks(&self, behaviour: &str, needed: &[(&str, bool)]) -> bool {
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(_, has)| !has)
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() {
            return false;
        }
        skipped(
            self.backend,
            behaviour,
            &format!("the backend does not declare {}", missing.join(", ")),
        );
        true
    }

    async fn registrar(&self, service: &str, instance: Instance) -> Arc<dyn Registrar> {
        self.registrar_with_ttl(service, instance, self.ttl).await
    }

    async fn registrar_with_ttl(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> Arc<dyn Registrar> {
        let reg = Registration::new(service, instance).check(HealthCheck::Ttl(ttl));
        self.registry
            .registrar(reg.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: registrar({reg:?}): {e}", self.backend))
    }

    async fn register(&self, service: &str, instance: Instance) -> Arc<dyn Registrar> {
        self.register_with_ttl(service, instance, self.ttl).await
    }

    async fn register_with_ttl(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> Arc<dyn Registrar> {
        let r = self.registrar_with_ttl(service, instance, ttl).await;
        r.register()
            .await
            .unwrap_or_else(|e| panic!("{}: register {service}: {e}", self.backend));
        r
    }

    async fn instancer(&self, query: ServiceQuery) -> Arc<dyn Instancer> {
        self.registry
            .instancer(&query)
            .await
            .unwrap_or_else(|e| panic!("{}: instancer({query:?}): {e}", self.backend))
    }
}

/// Prints the loud skip line for a behaviour that did not run, straight to stderr (the test
/// harness captures `eprintln!` of passing tests; a direct write is always shown).
pub fn skipped(backend: &str, behaviour: &str, why: &str) {
    use std::io::Write;
    let line = format!("SKIPPED conformance {backend}::{behaviour}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The number of tasks alive on the current tokio runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0)
}

/// Waits for the next published set satisfying `pred`, skipping error events and other sets.
/// Panics with `what` and the last set seen after `deadline`.
pub async fn wait_set(
    sub: &mut Subscription,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_set_inner(sub, deadline, what, pred, false).await
}

/// Like [`wait_set`], but an error event on the way fails: outside the restart behaviour the
/// registry is healthy, so an error event is a spurious one (consumers would log it, alert on
/// it, or back off for nothing).
async fn expect_set(
    sub: &mut Subscription,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
) -> InstanceSet {
    wait_set_inner(sub, deadline, what, pred, true).await
}

async fn wait_set_inner(
    sub: &mut Subscription,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&InstanceSet) -> bool,
    errors_fail: bool,
) -> InstanceSet {
    let until = Instant::now() + deadline;
    let mut last: Option<Event> = None;
    loop {
        match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(Event::Instances(set))) => {
                if pred(&set) {
                    return set;
                }
                last = Some(Event::Instances(set));
            }
            Ok(Some(Event::Error(e))) if errors_fail => panic!(
                "{what}: an error event while the registry is healthy: {e}; last event: {last:?}"
            ),
            Ok(Some(e @ Event::Error(_))) => last = Some(e),
            Ok(None) => panic!("{what}: the instancer closed; last event: {last:?}"),
            Err(_) => panic!("{what}: not seen within {deadline:?}; last event: {last:?}"),
        }
    }
}

/// For the whole of `period` nothing is published: not an error event, not a set. Used where
/// the registry does not change, so an honest instancer (whose cache never republishes an
/// unchanged set) stays silent; `what` names the check ("still gone", "still there").
async fn expect_quiet(sub: &mut Subscription, period: Duration, what: &str) {
    match tokio::time::timeout(period, sub.next()).await {
        Err(_) => {}
        Ok(Some(e)) => panic!(
            "{what}: the registry did not change, yet within {period:?} the instancer published {e:?}"
        ),
        Ok(None) => panic!("{what}: the instancer closed"),
    }
}

/// Waits for an error event. Panics after `deadline`.
pub async fn wait_error(sub: &mut Subscription, deadline: Duration, what: &str) {
    let until = Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(Event::Error(_))) => return,
            Ok(Some(Event::Instances(_))) => {}
            Ok(None) => panic!("{what}: the instancer closed before an error event"),
            Err(_) => panic!("{what}: no error event within {deadline:?}"),
        }
    }
}

fn addrs(set: &InstanceSet) -> BTreeSet<String> {
    set.iter().map(|i| i.addr().to_string()).collect()
}

fn find<'a>(set: &'a InstanceSet, addr: &str) -> Option<&'a Instance> {
    set.iter().find(|i| i.addr() == addr)
}

/// A port for the suite's instances: distinct per behaviour, never bound (nothing connects).
fn port(base: u16, i: usize) -> u16 {
    base + u16::try_from(i).expect("small index")
}

fn instance(service: &str, n: usize, port: u16) -> Instance {
    Instance::builder("127.0.0.1", port)
        .id(format!("{service}-{n}"))
        .build()
}

/// register → every instancer of the service sees the instance, with its id, address, tags,
/// metadata and weight round-tripped as far as the backend declares them.
pub async fn register_is_seen_with_its_fields(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "register_is_seen_with_its_fields",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let service = crate::unique_name("cf-seen");
    let mut b = Instance::builder("127.0.0.1", 31001).id(format!("{service}-1"));
    if caps.tags {
        b = b.tag("blue").tag("v2");
    }
    if caps.metadata {
        b = b.meta("zone", "z1").meta("build", "42");
    }
    if caps.weight {
        b = b.weight(7);
    }
    let want = b.build();
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let registrar = t.register(&service, want.clone()).await;
    let set = expect_set(&mut sub, t.deadline, "registered instance", |s| {
        find(s, want.addr()).is_some()
    })
    .await;
    let got = find(&set, want.addr()).unwrap();
    assert_eq!(set.len(), 1, "{}: only our instance: {set:?}", t.backend);
    if caps.ids {
        assert_eq!(got.id(), want.id(), "{}: id round trip", t.backend);
    }
    if caps.tags {
        let mut tags = got.tags().to_vec();
        tags.sort();
        assert_eq!(tags, ["blue", "v2"], "{}: tags round trip", t.backend);
    }
    if caps.metadata {
        for (k, v) in want.meta() {
            assert_eq!(
                got.meta().get(k),
                Some(v),
                "{}: metadata {k} round trip: {:?}",
                t.backend,
                got.meta()
            );
        }
    }
    if caps.weight {
        assert_eq!(got.weight(), 7, "{}: weight round trip", t.backend);
    }
    assert_eq!(got.health(), Health::Passing, "{}: health", t.backend);
    // A second instancer of the same service sees it too, at once.
    let second = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub2 = second.subscribe();
    expect_set(&mut sub2, t.deadline, "second instancer", |s| {
        find(s, want.addr()).is_some()
    })
    .await;
    registrar.deregister().await.unwrap();
    instancer.stop().await;
    second.stop().await;
}

/// Two services and two instancers of one service do not interfere; a late subscriber and a
/// late instancer get the current state at once.
pub async fn services_and_instancers_are_independent(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "services_and_instancers_are_independent",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let a = crate::unique_name("cf-indep-a");
    let b = crate::unique_name("cf-indep-b");
    let a1 = t.instancer(ServiceQuery::new(&a)).await;
    let a2 = t.instancer(ServiceQuery::new(&a)).await;
    let b1 = t.instancer(ServiceQuery::new(&b)).await;
    let (mut sa1, mut sa2, mut sb1) = (a1.subscribe(), a2.subscribe(), b1.subscribe());
    let ra = t.register(&a, instance(&a, 1, 31101)).await;
    let rb = t.register(&b, instance(&b, 1, 31102)).await;
    let only =
        |addr: &'static str| move |s: &InstanceSet| addrs(s) == BTreeSet::from([addr.to_string()]);
    expect_set(
        &mut sa1,
        t.deadline,
        "service a, instancer 1",
        only("127.0.0.1:31101"),
    )
    .await;
    expect_set(
        &mut sa2,
        t.deadline,
        "service a, instancer 2",
        only("127.0.0.1:31101"),
    )
    .await;
    expect_set(&mut sb1, t.deadline, "service b", only("127.0.0.1:31102")).await;
    // Stopping one instancer of `a` leaves the other working.
    a2.stop().await;
    let ra2 = t.register(&a, instance(&a, 2, 31103)).await;
    expect_set(&mut sa1, t.deadline, "a after a2 stopped", |s| s.len() == 2).await;
    // A late subscriber gets the current state at once (no wait).
    let late = a1.subscribe();
    match late.current() {
        Some(Event::Instances(s)) => assert_eq!(s.len(), 2, "{}: late subscriber", t.backend),
        other => panic!("{}: late subscriber got {other:?}", t.backend),
    }
    // A late instancer has a state as soon as `instancer()` returns.
    let late_instancer = t.instancer(ServiceQuery::new(&b)).await;
    match late_instancer.subscribe().current() {
        Some(Event::Instances(s)) => {
            assert_eq!(addrs(&s), BTreeSet::from(["127.0.0.1:31102".to_string()]))
        }
        other => panic!("{}: late instancer's first state: {other:?}", t.backend),
    }
    for r in [ra, ra2, rb] {
        r.deregister().await.unwrap();
    }
    for i in [a1, b1, late_instancer] {
        i.stop().await;
    }
}

/// deregister → gone, and still gone two TTLs later (no heartbeat in flight brings it back);
/// deregistering twice and deregistering before registering are harmless.
pub async fn deregister_removes_and_is_idempotent(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "deregister_removes_and_is_idempotent",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let service = crate::unique_name("cf-dereg");
    let never = t.registrar(&service, instance(&service, 9, 31209)).await;
    never
        .deregister()
        .await
        .expect("deregister before register");
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let keep = t.register(&service, instance(&service, 1, 31201)).await;
    let gone = t.register(&service, instance(&service, 2, 31202)).await;
    expect_set(&mut sub, t.deadline, "two registered", |s| s.len() == 2).await;
    gone.deregister().await.expect("deregister");
    gone.deregister().await.expect("deregister twice");
    let set = expect_set(&mut sub, t.deadline, "one deregistered", |s| s.len() == 1).await;
    assert_eq!(addrs(&set), BTreeSet::from(["127.0.0.1:31201".to_string()]));
    // Gone for good: no heartbeat, keep-alive or re-assertion in flight at the deregister
    // brings it back (the zombie race of keep-alive registrars), the live one stays, and a
    // healthy registry publishes no error: nothing at all is published for two TTLs.
    expect_quiet(
        &mut sub,
        t.ttl * 2,
        "the deregistered instance stays gone for 2 TTLs",
    )
    .await;
    keep.deregister().await.unwrap();
    expect_set(&mut sub, t.deadline, "all deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// The registering process vanishes (every handle to its registrar dropped, so heartbeats,
/// lease keep-alives and sessions stop as in a crash, with no deregistration) → the instance
/// is gone from a `passing_only` instancer within [`Target::expiry_deadline`].
pub async fn vanished_registrant_expires(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "vanished_registrant_expires",
        &[("registration", caps.registration), ("expiry", caps.expiry)],
    ) {
        return;
    }
    let service = crate::unique_name("cf-expiry");
    let instancer = t
        .instancer(ServiceQuery::new(&service).passing_only(true))
        .await;
    let mut sub = instancer.subscribe();
    let stays = t.register(&service, instance(&service, 1, 31301)).await;
    let vanishes = t.register(&service, instance(&service, 2, 31302)).await;
    expect_set(&mut sub, t.deadline, "both registered", |s| s.len() == 2).await;
    drop(vanishes);
    let set = expect_set(
        &mut sub,
        t.expiry_deadline,
        "vanished instance expired",
        |s| find(s, "127.0.0.1:31302").is_none(),
    )
    .await;
    assert!(
        find(&set, "127.0.0.1:31301").is_some(),
        "{}: the live registrant must stay: {set:?}",
        t.backend
    );
    stays.deregister().await.unwrap();
    instancer.stop().await;
}

/// Tags are ANDed: an instancer asking for two tags sees only instances carrying both.
pub async fn tags_are_anded(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "tags_are_anded",
        &[("registration", caps.registration), ("tags", caps.tags)],
    ) {
        return;
    }
    let service = crate::unique_name("cf-tags");
    let tagged = |n: usize, port: u16, tags: &[&str]| {
        Instance::builder("127.0.0.1", port)
            .id(format!("{service}-{n}"))
            .tags(tags.iter().copied())
            .build()
    };
    let both = t
        .instancer(ServiceQuery::new(&service).tag("a").tag("b"))
        .await;
    let just_a = t.instancer(ServiceQuery::new(&service).tag("a")).await;
    let all = t.instancer(ServiceQuery::new(&service)).await;
    let (mut s_both, mut s_a, mut s_all) = (both.subscribe(), just_a.subscribe(), all.subscribe());
    let mut regs = Vec::new();
    regs.push(t.register(&service, tagged(1, 31401, &["a"])).await);
    regs.push(t.register(&service, tagged(2, 31402, &["a", "b"])).await);
    regs.push(t.register(&service, tagged(3, 31403, &["b"])).await);
    expect_set(&mut s_all, t.deadline, "three registered", |s| s.len() == 3).await;
    let set = expect_set(&mut s_both, t.deadline, "tags a AND b", |s| !s.is_empty()).await;
    assert_eq!(
        addrs(&set),
        BTreeSet::from(["127.0.0.1:31402".to_string()]),
        "{}: tags are ANDed",
        t.backend
    );
    expect_set(&mut s_a, t.deadline, "tag a", |s| {
        addrs(s) == BTreeSet::from(["127.0.0.1:31401".to_string(), "127.0.0.1:31402".to_string()])
    })
    .await;
    for r in regs {
        r.deregister().await.unwrap();
    }
    for i in [both, just_a, all] {
        i.stop().await;
    }
}

/// `passing_only` leaves out instances registered as warning or critical; an unfiltered
/// instancer shows them with that health.
pub async fn passing_only_leaves_out_unhealthy(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "passing_only_leaves_out_unhealthy",
        &[("registration", caps.registration), ("health", caps.health)],
    ) {
        return;
    }
    let service = crate::unique_name("cf-health");
    let with = |n: usize, port: u16, h: Health| {
        Instance::builder("127.0.0.1", port)
            .id(format!("{service}-{n}"))
            .health(h)
            .build()
    };
    let passing = t
        .instancer(ServiceQuery::new(&service).passing_only(true))
        .await;
    let all = t.instancer(ServiceQuery::new(&service)).await;
    let (mut s_pass, mut s_all) = (passing.subscribe(), all.subscribe());
    let mut regs = Vec::new();
    regs.push(t.register(&service, with(1, 31501, Health::Passing)).await);
    regs.push(t.register(&service, with(2, 31502, Health::Warning)).await);
    regs.push(t.register(&service, with(3, 31503, Health::Critical)).await);
    let set = expect_set(&mut s_all, t.deadline, "three with their health", |s| {
        s.len() == 3
            && find(s, "127.0.0.1:31502").map(Instance::health) == Some(Health::Warning)
            && find(s, "127.0.0.1:31503").map(Instance::health) == Some(Health::Critical)
    })
    .await;
    assert_eq!(
        find(&set, "127.0.0.1:31501").map(Instance::health),
        Some(Health::Passing)
    );
    let set = expect_set(&mut s_pass, t.deadline, "passing only", |s| !s.is_empty()).await;
    assert_eq!(
        addrs(&set),
        BTreeSet::from(["127.0.0.1:31501".to_string()]),
        "{}: passing_only",
        t.backend
    );
    for r in regs {
        r.deregister().await.unwrap();
    }
    passing.stop().await;
    all.stop().await;
}

/// Whether `got` carries `want`'s attributes, as far as `caps` declares them. The weight is
/// compared for a passing instance only: a registry may weigh a warning instance down
/// (Consul publishes `Weights.Warning` for it, docs/CONSUL.md).
fn same_attributes(caps: Capabilities, got: &Instance, want: &Instance) -> bool {
    let mut tags = got.tags().to_vec();
    tags.sort();
    let mut want_tags = want.tags().to_vec();
    want_tags.sort();
    (!caps.tags || tags == want_tags)
        && (!caps.metadata
            || want
                .meta()
                .iter()
                .all(|(k, v)| got.meta().get(k) == Some(v)))
        && (!caps.weight || want.health() != Health::Passing || got.weight() == want.weight())
        && (!caps.health || got.health() == want.health())
}

/// The same id and address registered again with other tags, metadata and weight, then with
/// another health (as far as the backend declares them), each time by a new registrar after
/// the previous one vanished (a restarted process announcing itself anew) → every instancer
/// sees the new values on the one instance: a change of an instance already listed is
/// published like any other.
pub async fn reregister_changes_attributes(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "reregister_changes_attributes",
        &[
            ("registration", caps.registration),
            (
                "tags, metadata, weight or health",
                caps.tags || caps.metadata || caps.weight || caps.health,
            ),
        ],
    ) {
        return;
    }
    let service = crate::unique_name("cf-attrs");
    let make = |tag: &str, zone: &str, weight: u32, health: Health| {
        let mut b = Instance::builder("127.0.0.1", 31901).id(format!("{service}-1"));
        if caps.tags {
            b = b.tag(tag);
        }
        if caps.metadata {
            b = b.meta("zone", zone);
        }
        if caps.weight {
            b = b.weight(weight);
        }
        if caps.health {
            b = b.health(health);
        }
        b.build()
    };
    let before = make("blue", "z1", 7, Health::Passing);
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let mut registrar = t.register(&service, before.clone()).await;
    expect_set(&mut sub, t.deadline, "first values", |s| {
        s.len() == 1 && same_attributes(caps, s.iter().next().unwrap(), &before)
    })
    .await;
    // Each time the registrant vanishes (its heartbeats stop, nothing is deregistered) and
    // the same instance is announced again with other values: first tags, metadata and
    // weight, then the health.
    let mut steps = vec![(
        "tags, metadata, weight",
        make("green", "z2", 3, Health::Passing),
    )];
    if caps.health {
        steps.push(("health", make("green", "z2", 3, Health::Warning)));
    }
    let mut after = before;
    for (what, values) in steps {
        drop(registrar);
        registrar = t.register(&service, values.clone()).await;
        expect_set(
            &mut sub,
            t.deadline,
            &format!("re-registered with new {what}"),
            |s| s.len() == 1 && same_attributes(caps, s.iter().next().unwrap(), &values),
        )
        .await;
        after = values;
    }
    // A late instancer sees the new values too.
    let late = t.instancer(ServiceQuery::new(&service)).await;
    let mut late_sub = late.subscribe();
    expect_set(
        &mut late_sub,
        t.deadline,
        "new values, late instancer",
        |s| s.len() == 1 && same_attributes(caps, s.iter().next().unwrap(), &after),
    )
    .await;
    registrar.deregister().await.unwrap();
    expect_set(&mut sub, t.deadline, "deregistered", |s| s.is_empty()).await;
    late.stop().await;
    instancer.stop().await;
}

/// The registry's own filter (tag and/or passing) follows in-place changes: an instance
/// re-registered so that it starts or stops matching enters or leaves the filtered instancer,
/// which always equals the unfiltered set filtered by [`ServiceQuery::matches`].
pub async fn filtered_instancer_follows_changes(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "filtered_instancer_follows_changes",
        &[
            ("registration", caps.registration),
            ("server_side_filtering", caps.server_side_filtering),
            ("tags or health", caps.tags || caps.health),
        ],
    ) {
        return;
    }
    let service = crate::unique_name("cf-filter");
    let mut query = ServiceQuery::new(&service).passing_only(caps.health);
    if caps.tags {
        query = query.tag("a");
    }
    let make = |n: usize, port: u16, matching: bool| {
        let mut b = Instance::builder("127.0.0.1", port).id(format!("{service}-{n}"));
        if caps.tags {
            b = b.tag(if matching { "a" } else { "b" });
        }
        if caps.health {
            b = b.health(if matching {
                Health::Passing
            } else {
                Health::Warning
            });
        }
        b.build()
    };
    let filtered = t.instancer(query.clone()).await;
    let all = t.instancer(ServiceQuery::new(&service)).await;
    let (mut s_f, mut s_all) = (filtered.subscribe(), all.subscribe());
    let x = "127.0.0.1:32901".to_string();
    let y = "127.0.0.1:32902".to_string();
    let mut rx = t.register(&service, make(1, 32901, true)).await;
    let mut ry = t.register(&service, make(2, 32902, false)).await;
    // (x matches, y matches) after each step, and the filtered set that follows.
    let steps = [(true, false), (true, true), (false, true)];
    for (step, &(x_in, y_in)) in steps.iter().enumerate() {
        if step > 0 {
            let (prev_x, prev_y) = steps[step - 1];
            if prev_x != x_in {
                drop(rx);
                rx = t.register(&service, make(1, 32901, x_in)).await;
            }
            if prev_y != y_in {
                drop(ry);
                ry = t.register(&service, make(2, 32902, y_in)).await;
            }
        }
        let want: BTreeSet<String> = [(x_in, &x), (y_in, &y)]
            .into_iter()
            .filter(|(m, _)| *m)
            .map(|(_, a)| a.clone())
            .collect();
        let full = expect_set(&mut s_all, t.deadline, "unfiltered set", |s| {
            s.len() == 2
                && s.iter()
                    .filter(|i| query.matches(i))
                    .map(|i| i.addr().to_string())
                    .collect::<BTreeSet<_>>()
                    == want
        })
        .await;
        let got = expect_set(&mut s_f, t.deadline, "filtered set", |s| addrs(s) == want).await;
        for i in got.iter() {
            assert!(
                query.matches(i),
                "{}: step {step}: the filter let through {i:?} (unfiltered: {full:?})",
                t.backend
            );
        }
    }
    rx.deregister().await.unwrap();
    ry.deregister().await.unwrap();
    expect_set(&mut s_f, t.deadline, "filtered, all deregistered", |s| {
        s.is_empty()
    })
    .await;
    filtered.stop().await;
    all.stop().await;
}

/// A small deterministic generator (no dependency, same sequence on every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Runs `f` over `items` with at most 8 at a time, in order of completion.
async fn bounded<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for item in items {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let f = f.clone();
        set.spawn(async move {
            let r = f(item).await;
            drop(permit);
            r
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task panicked"));
    }
    out
}

/// The TTL of the churn behaviour's registrations: long, so that a thousand registrations do
/// not heartbeat a thousand times a second (that behaviour is not about expiry).
const CHURN_TTL: Duration = Duration::from_secs(300);

/// [`Target::churn`] instances registered; then half deregistered and a fifth re-registered
/// with the same id on a new port, chosen at random: the final published set is exactly right.
pub async fn bulk_churn_final_set_is_exact(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "bulk_churn_final_set_is_exact",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let n = t.churn;
    let service = crate::unique_name("cf-churn");
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let port_of = |i: usize| port(32000, i);
    // Every registration of this behaviour (the first thousand and the re-registrations)
    // uses CHURN_TTL.
    let target = Arc::new(t.clone().ttl(CHURN_TTL.max(t.ttl)));
    let svc = service.clone();
    let mut registrars: BTreeMap<usize, Arc<dyn Registrar>> = bounded((0..n).collect(), {
        let target = target.clone();
        move |i| {
            let (target, svc) = (target.clone(), svc.clone());
            async move {
                (
                    i,
                    target
                        .register_with_ttl(&svc, instance(&svc, i, port_of(i)), CHURN_TTL)
                        .await,
                )
            }
        }
    })
    .await
    .into_iter()
    .collect();
    let mut want: BTreeMap<usize, String> = (0..n)
        .map(|i| (i, format!("127.0.0.1:{}", port_of(i))))
        .collect();
    let long = t.deadline * 4;
    expect_set(&mut sub, long, "all registered", |s| s.len() == n).await;

    let mut rng = Lcg(0x5d_c0_ff_ee);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let removed: Vec<usize> = order[..n / 2].to_vec();
    let changed: Vec<usize> = order[n / 2..n / 2 + n / 5].to_vec();
    let mut jobs: Vec<(usize, Arc<dyn Registrar>, bool)> = Vec::new();
    for &i in &removed {
        jobs.push((i, registrars.remove(&i).unwrap(), false));
        want.remove(&i);
    }
    for &i in &changed {
        jobs.push((i, registrars.remove(&i).unwrap(), true));
        want.insert(i, format!("127.0.0.1:{}", port(40000, i)));
    }
    let svc = service.clone();
    let replaced = bounded(jobs, move |(i, old, change)| {
        let (target, svc) = (target.clone(), svc.clone());
        async move {
            old.deregister().await.expect("deregister");
            if change {
                Some((
                    i,
                    target
                        .register_with_ttl(&svc, instance(&svc, i, port(40000, i)), CHURN_TTL)
                        .await,
                ))
            } else {
                None
            }
        }
    })
    .await;
    registrars.extend(replaced.into_iter().flatten());
    let want_addrs: BTreeSet<String> = want.values().cloned().collect();
    let set = expect_set(&mut sub, long, "final churned set", |s| {
        addrs(s) == want_addrs
    })
    .await;
    if caps.ids {
        let ids: BTreeSet<String> = set.iter().map(|i| i.id().to_string()).collect();
        let want_ids: BTreeSet<String> = want.keys().map(|i| format!("{service}-{i}")).collect();
        assert_eq!(ids, want_ids, "{}: ids after churn", t.backend);
    }
    bounded(registrars.into_values().collect(), |r| async move {
        r.deregister().await.expect("final deregister")
    })
    .await;
    expect_set(&mut sub, long, "all deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
}

/// The registry is killed and restarted while an instancer and a registrar are live: the
/// endpointer keeps the last good set during the outage, an error event is published, the
/// instancer recovers, and the registrar re-registers if the registry lost the data.
pub async fn restart_keeps_last_good_and_recovers(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "restart_keeps_last_good_and_recovers",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let Some(server) = t.server else {
        skipped(
            t.backend,
            "restart_keeps_last_good_and_recovers",
            "no server to restart (embedded registry)",
        );
        return;
    };
    let _lock = crate::exclusive(server);
    crate::wait_ready(server).await.expect("server ready");
    let service = crate::unique_name("cf-restart");
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.addr().to_string())
        });
    let registrar = t.register(&service, instance(&service, 1, 31601)).await;
    expect_set(&mut sub, t.deadline, "registered before the outage", |s| {
        s.len() == 1
    })
    .await;
    let mut changes = endpointer.changes();
    let until = Instant::now() + t.deadline;
    while endpointer.endpoints().all().len() != 1 {
        tokio::time::timeout_at(until, changes.changed())
            .await
            .expect("endpointer applies the set");
    }

    crate::kill(server).await.expect("kill");
    wait_error(&mut sub, t.deadline, "error event during the outage").await;
    let snap = endpointer.endpoints();
    let served: Vec<String> = snap
        .get()
        .expect("last known good is served during the outage")
        .iter()
        .map(|e| (**e).clone())
        .collect();
    assert_eq!(
        served,
        ["127.0.0.1:31601"],
        "{}: last known good kept",
        t.backend
    );
    drop(snap);

    crate::restart(server).await.expect("restart");
    wait_set(
        &mut sub,
        t.deadline * 3,
        "recovered after the restart",
        |s| find(s, "127.0.0.1:31601").is_some(),
    )
    .await;
    registrar.deregister().await.unwrap();
    endpointer.close().await;
    instancer.stop().await;
}

/// `stop()` is idempotent, ends all background work (the runtime's alive-task count returns
/// to what it was before the registry was made, once the registry is dropped), and no event
/// follows it: not a registration made after it, not an empty set, not an error, only the
/// end of the subscription.
pub async fn stop_is_idempotent_and_final(t: Target) {
    let caps = t.caps();
    let service = crate::unique_name("cf-stop");
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    // A non-empty state before the stop (where the registry can hold one), so that a stop
    // publishing an empty set (every consumer dropping every endpoint) shows.
    let mut registrars = Vec::new();
    if caps.registration {
        registrars.push(t.register(&service, instance(&service, 1, 31701)).await);
        expect_set(&mut sub, t.deadline, "registered before the stop", |s| {
            s.len() == 1
                && find(s, "127.0.0.1:31701").map(Instance::health) == Some(Health::Passing)
        })
        .await;
    } else {
        match tokio::time::timeout(t.deadline, sub.next()).await {
            Ok(Some(Event::Instances(_))) | Err(_) => {}
            Ok(other) => panic!("{}: first event before the stop: {other:?}", t.backend),
        }
    }
    instancer.stop().await;
    instancer.stop().await;
    if caps.registration {
        registrars.push(t.register(&service, instance(&service, 2, 31702)).await);
    }
    // Every state before the stop was consumed: nothing may follow it, only the end.
    match tokio::time::timeout(t.deadline, sub.next()).await {
        Ok(None) => {}
        Ok(Some(e)) => panic!("{}: an event followed stop(): {e:?}", t.backend),
        Err(_) => panic!("{}: the subscription did not end after stop()", t.backend),
    }
    for r in registrars {
        r.deregister().await.unwrap();
    }
    let backend = t.backend;
    let Some(baseline) = t.baseline_tasks else {
        return;
    };
    drop(sub);
    drop(instancer);
    drop(t);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = alive_tasks();
        if alive <= baseline {
            break;
        }
        assert!(
            Instant::now() < until,
            "{backend}: {alive} tasks still alive after stop() and dropping the registry \
             (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many instancers [`dropped_instancers_end_their_work`] drops, and how many it has alive
/// at once (well below Consul's 200 connections per client, which other tests share).
const DROPPED_INSTANCERS: usize = 1_000;
const DROPPED_BATCH: usize = 50;

/// 1 000 instancers dropped **without** `stop()` end their background work (issue 16): once
/// the registry is dropped too, the runtime's alive-task count returns to what it was
/// before the registry was made (an instancer task that outlived its handles would still
/// run: each holds its own reference to the client). Half of each batch is dropped before
/// its subscription (the subscription keeps the instancer running until it goes too), half
/// after. The task counts along the way and the process's thread count are printed.
pub async fn dropped_instancers_end_their_work(t: Target) {
    let service = crate::unique_name("cf-drop");
    let query = ServiceQuery::new(&service);
    // Warm-up: what the registry shares between instancers (a connection, a session)
    // starts with the first one and stays; it is part of the baseline.
    let warm = t.instancer(query.clone()).await;
    let _ = tokio::time::timeout(t.deadline, warm.subscribe().next()).await;
    drop(warm);
    let warm = settled_tasks().await;
    let threads_before = threads();
    for batch in 0..DROPPED_INSTANCERS / DROPPED_BATCH {
        let mut made = Vec::with_capacity(DROPPED_BATCH);
        for _ in 0..DROPPED_BATCH {
            made.push(t.instancer(query.clone()).await);
        }
        let mut subs = Vec::with_capacity(DROPPED_BATCH);
        for instancer in &made {
            let mut sub = instancer.subscribe();
            // Each has reached its registry (or published its first error) before the drop.
            let _ = tokio::time::timeout(t.deadline, sub.next()).await;
            subs.push(sub);
        }
        for (i, (instancer, sub)) in made.into_iter().zip(subs).enumerate() {
            if (i + batch) % 2 == 0 {
                drop(instancer);
                drop(sub);
            } else {
                drop(sub);
                drop(instancer);
            }
        }
    }
    // With the registry still alive, what it shares (an HTTP client's idle pooled
    // connections, each a task until its idle timeout) may outnumber the baseline; printed.
    let with_registry = settled_tasks().await;
    let (backend, before_registry) = (t.backend, t.baseline_tasks);
    drop(t);
    // Without the registry: every task of the instancers, and of the registry, has ended.
    let baseline = before_registry.unwrap_or(warm);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let alive = alive_tasks();
        if alive <= baseline {
            break;
        }
        assert!(
            Instant::now() < until,
            "{backend}: {alive} tasks alive 60 s after dropping {DROPPED_INSTANCERS} instancers \
             without stop() and their registry (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "conformance {backend}::dropped_instancers_end_their_work: {DROPPED_INSTANCERS} \
         instancers dropped; tasks {warm} with the registry warm, {with_registry} after the \
         drops with the registry alive, {} once the registry is dropped too (baseline \
         {baseline}); threads {threads_before} before, {} after",
        alive_tasks(),
        threads()
    );
}

/// The alive-task count once it has stopped falling (tasks of dropped work wind down).
async fn settled_tasks() -> usize {
    let mut last = alive_tasks();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = alive_tasks();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// The process's OS thread count (Linux `/proc/self/status`; 0 elsewhere).
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// An entry the backend cannot decode, written straight into the registry, is skipped alone:
/// the good instances around it are published, and no error event poisons the set.
pub async fn bad_entry_is_skipped_alone(t: Target) {
    let caps = t.caps();
    if t.lacks(
        "bad_entry_is_skipped_alone",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let Some(hook) = t.bad_entry.clone() else {
        skipped(
            t.backend,
            "bad_entry_is_skipped_alone",
            "no bad-entry hook: the registry cannot hold an undecodable entry",
        );
        return;
    };
    let service = crate::unique_name("cf-bad");
    let instancer = t.instancer(ServiceQuery::new(&service)).await;
    let mut sub = instancer.subscribe();
    let first = t.register(&service, instance(&service, 1, 31801)).await;
    expect_set(&mut sub, t.deadline, "first good instance", |s| {
        s.len() == 1
    })
    .await;
    hook(service.clone()).await;
    let second = t.register(&service, instance(&service, 2, 31802)).await;
    let until = Instant::now() + t.deadline;
    loop {
        match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(Event::Instances(s))) => {
                assert!(
                    s.iter().all(|i| i.port() == 31801 || i.port() == 31802),
                    "{}: only the good instances: {s:?}",
                    t.backend
                );
                if s.len() == 2 {
                    break;
                }
                assert!(
                    find(&s, "127.0.0.1:31801").is_some(),
                    "{}: a bad entry removed a good one: {s:?}",
                    t.backend
                );
            }
            Ok(Some(Event::Error(e))) => {
                panic!("{}: a bad entry poisoned the set: {e}", t.backend)
            }
            Ok(None) => panic!("{}: instancer closed", t.backend),
            Err(_) => panic!("{}: second good instance not seen", t.backend),
        }
    }
    first.deregister().await.unwrap();
    second.deregister().await.unwrap();
    instancer.stop().await;
}

/// `Registry::services` names two registered services (case-insensitively: Eureka
/// upper-cases names) and no longer names them once deregistered (polled: there is no
/// watch of the listing). A backend that does not declare `list_services` must fail with
/// `Error::Unsupported`.
pub async fn services_are_listed(t: Target) {
    let caps = t.caps();
    if !caps.list_services {
        match t.registry.services().await {
            Err(sd_core::Error::Unsupported { .. }) => {}
            other => panic!(
                "{}: list_services not declared, but services() gave {other:?}",
                t.backend
            ),
        }
        skipped(
            t.backend,
            "services_are_listed",
            "the backend does not declare list_services (Unsupported checked)",
        );
        return;
    }
    if t.lacks(
        "services_are_listed",
        &[("registration", caps.registration)],
    ) {
        return;
    }
    let a = crate::unique_name("cf-lista");
    let b = crate::unique_name("cf-listb");
    let ra = t.register(&a, instance(&a, 1, 31101)).await;
    let rb = t.register(&b, instance(&b, 1, 31102)).await;
    let listed = |names: &[String], s: &str| names.iter().any(|n| n.eq_ignore_ascii_case(s));
    let names = poll_services(&t, "both registered services listed", |n| {
        listed(n, &a) && listed(n, &b)
    })
    .await;
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "{}: sorted, no duplicates", t.backend);
    ra.deregister().await.unwrap();
    rb.deregister().await.unwrap();
    poll_services(&t, "deregistered services no longer listed", |n| {
        !listed(n, &a) && !listed(n, &b)
    })
    .await;
}

/// Polls `services()` every 200 ms until `pred` holds; panics with `what` after the deadline.
async fn poll_services(t: &Target, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let end = Instant::now() + t.deadline;
    loop {
        let last = t.registry.services().await;
        if let Ok(names) = &last {
            if pred(names) {
                return names.clone();
            }
        }
        assert!(
            Instant::now() < end,
            "{}: {what}: not within {:?}; last answer {last:?}",
            t.backend,
            t.deadline
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Instantiates the conformance suite for one backend: one `#[tokio::test]` per behaviour in
/// a module named after the backend. The second argument is a closure returning a future of
/// `Option<Target>` (`None` skips). The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) as a dev-dependency.
///
/// ```ignore
/// sd_testkit::conformance!(memory, || async {
///     Some(sd_testkit::conformance::Target::new(std::sync::Arc::new(sd_core::MemoryRegistry::new())))
/// });
/// ```
#[macro_export]
macro_rules! conformance {
    ($backend:ident, $make:expr $(,)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_test!($backend, $make, register_is_seen_with_its_fields);
            $crate::__conformance_test!($backend, $make, services_and_instancers_are_independent);
            $crate::__conformance_test!($backend, $make, deregister_removes_and_is_idempotent);
            $crate::__conformance_test!($backend, $make, vanished_registrant_expires);
            $crate::__conformance_test!($backend, $make, tags_are_anded);
            $crate::__conformance_test!($backend, $make, passing_only_leaves_out_unhealthy);
            $crate::__conformance_test!($backend, $make, reregister_changes_attributes);
            $crate::__conformance_test!($backend, $make, filtered_instancer_follows_changes);
            $crate::__conformance_test!($backend, $make, bulk_churn_final_set_is_exact);
            $crate::__conformance_test!($backend, $make, restart_keeps_last_good_and_recovers);
            $crate::__conformance_test!($backend, $make, stop_is_idempotent_and_final);
            $crate::__conformance_test!($backend, $make, dropped_instancers_end_their_work);
            $crate::__conformance_test!($backend, $make, bad_entry_is_skipped_alone);
            $crate::__conformance_test!($backend, $make, services_are_listed);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($backend:ident, $make:expr, $behaviour:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() {
            let baseline = $crate::conformance::alive_tasks();
            let make = $make;
            match make().await {
                ::std::option::Option::Some(target) => {
                    let target: $crate::conformance::Target = target;
                    let _shared = target.__shared_guard(stringify!($behaviour));
                    $crate::conformance::$behaviour(target.__named(stringify!($backend), baseline))
                        .await
                }
                ::std::option::Option::None => $crate::conformance::skipped(
                    stringify!($backend),
                    stringify!($behaviour),
                    "the registry is not available",
                ),
            }
        }
    };
}
