//! go-kit behaviours EP-1..EP-12 (reference §2.C), with regressions for its bugs.

#[path = "common/logs.rs"]
mod logs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Factory, Instance, InstanceCache,
    InstanceSet, Instancer, Status,
};

/// An instancer driven by the test: an `InstanceCache` with helpers.
#[derive(Debug, Default)]
struct TestInstancer(InstanceCache);

impl std::ops::Deref for TestInstancer {
    type Target = InstanceCache;
    fn deref(&self) -> &InstanceCache {
        &self.0
    }
}

impl TestInstancer {
    fn send(&self, addrs: &[&str]) {
        let s: InstanceSet = addrs.iter().map(|a| Instance::parse(a).unwrap()).collect();
        self.0.update(Event::Instances(s));
    }
    fn send_instances(&self, v: Vec<Instance>) {
        self.0.update(Event::instances(v));
    }
    fn fail(&self, msg: &str) {
        self.0.update(Event::Error(Error::unavailable("test", msg)));
    }
}

/// Counts makes and closes per address; can be told to fail for some addresses.
#[derive(Clone, Default)]
struct Counting {
    made: Arc<Mutex<HashMap<String, usize>>>,
    closed: Arc<Mutex<HashMap<String, usize>>>,
    fail: Arc<Mutex<Vec<String>>>,
}

impl Counting {
    fn made(&self, a: &str) -> usize {
        *self.made.lock().unwrap().get(a).unwrap_or(&0)
    }
    fn closed(&self, a: &str) -> usize {
        *self.closed.lock().unwrap().get(a).unwrap_or(&0)
    }
    fn total_made(&self) -> usize {
        self.made.lock().unwrap().values().sum()
    }
    fn total_closed(&self) -> usize {
        self.closed.lock().unwrap().values().sum()
    }
}

impl Factory<String> for Counting {
    fn make(&self, i: &Instance) -> Result<String, BoxError> {
        if self.fail.lock().unwrap().iter().any(|f| f == i.addr()) {
            return Err(format!("cannot connect to {}", i.addr()).into());
        }
        *self
            .made
            .lock()
            .unwrap()
            .entry(i.addr().to_string())
            .or_default() += 1;
        Ok(i.addr().to_string())
    }
    fn close(&self, i: &Instance, _: &String) {
        *self
            .closed
            .lock()
            .unwrap()
            .entry(i.addr().to_string())
            .or_default() += 1;
    }
}

fn addrs(ep: &DefaultEndpointer<String>) -> Vec<String> {
    ep.endpoints()
        .get()
        .unwrap()
        .iter()
        .map(|e| (**e).clone())
        .collect()
}

/// Waits (bounded) until the endpointer has published a state satisfying `f`.
async fn until(ep: &DefaultEndpointer<String>, f: impl Fn(&sd_core::Endpoints<String>) -> bool) {
    let mut changes = ep.changes();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !f(&ep.endpoints()) {
            changes.changed().await;
        }
    })
    .await
    .expect("endpointer did not reach the expected state");
}

/// EP-1 (fixed): the instancer's current state is applied before `new` returns; `ready()`
/// waits for the first state when there is none yet.
#[tokio::test]
async fn ep1_initial_state_is_synchronous() {
    let inst = TestInstancer::default();
    inst.send(&["a:1", "b:1"]);
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    assert_eq!(addrs(&ep), ["a:1", "b:1"]);
    assert!(ep.ready().await);

    let empty = TestInstancer::default();
    let ep = Arc::new(DefaultEndpointer::new(&empty.0, Counting::default()));
    assert!(!ep.endpoints().is_ready());
    assert_eq!(*ep.endpoints().status(), Status::Pending);
    let waiter = tokio::spawn({
        let ep = ep.clone();
        async move { ep.ready().await }
    });
    empty.send(&["c:1"]);
    assert!(waiter.await.unwrap());
    assert_eq!(addrs(&ep), ["c:1"]);
}

/// EP-2: a good event clears the error state, even with the same instances as before.
#[tokio::test]
async fn ep2_good_event_clears_error() {
    let inst = TestInstancer::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    inst.fail("boom");
    until(&ep, |s| s.last_error().is_some()).await;
    inst.send(&["a:1"]);
    until(&ep, |s| *s.status() == Status::Current).await;
    assert_eq!(addrs(&ep), ["a:1"]);
}

/// EP-3: endpoints survive updates; the factory runs once per new instance; a factory error
/// skips that instance alone.
#[tokio::test]
async fn ep3_endpoints_survive_and_factory_errors_skip_one() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    f.fail.lock().unwrap().push("bad:1".into());
    inst.send(&["a:1", "bad:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    assert_eq!(addrs(&ep), ["a:1"]);
    let first = ep.endpoints().get().unwrap()[0].clone();
    inst.send(&["a:1", "b:1", "bad:1"]);
    until(&ep, |s| s.all().len() == 2).await;
    assert_eq!(f.made("a:1"), 1, "a:1 was not rebuilt");
    let again = ep.endpoints().get().unwrap()[0].clone();
    assert!(sd_core::Endpoint::same_value(&first, &again));
}

/// EP-4: departed instances are closed exactly once; an empty set closes everything.
#[tokio::test]
async fn ep4_departed_closed_once() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1", "b:1", "c:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    inst.send(&["a:1", "c:1"]);
    until(&ep, |s| s.all().len() == 2).await;
    assert_eq!(f.closed("b:1"), 1);
    assert_eq!(f.closed("a:1"), 0);
    inst.send(&[]);
    until(&ep, |s| s.all().is_empty()).await;
    assert_eq!(
        (f.closed("a:1"), f.closed("b:1"), f.closed("c:1")),
        (1, 1, 1)
    );
}

/// EP-5: endpoints are ordered by instance (address, then id).
#[tokio::test]
async fn ep5_sorted_by_instance() {
    let inst = TestInstancer::default();
    inst.send(&["c:1", "a:1", "b:1"]);
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    assert_eq!(addrs(&ep), ["a:1", "b:1", "c:1"]);
}

/// EP-6 [BUG] regression: duplicates no longer leak. Exact duplicates collapse to one
/// endpoint; two registrations of one address with different ids are two endpoints, each
/// made once and closed once.
#[tokio::test]
async fn ep6_duplicates_do_not_leak() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send_instances(vec![Instance::new("a", 1), Instance::new("a", 1)]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    assert_eq!(addrs(&ep), ["a:1"]);
    assert_eq!(f.made("a:1"), 1);

    inst.send_instances(vec![
        Instance::builder("a", 1).id("x").build(),
        Instance::builder("a", 1).id("y").build(),
    ]);
    until(&ep, |s| s.all().len() == 2).await;
    // The id-less endpoint left; two new ones were made.
    assert_eq!(f.made("a:1"), 3);
    assert_eq!(f.closed("a:1"), 1);
    ep.close().await;
    assert_eq!(
        f.closed("a:1"),
        3,
        "every endpoint made was closed exactly once"
    );
}

/// EP-7: without InvalidateOnError, an error keeps the endpoints and reads succeed; the
/// error is visible as `last_error`.
#[tokio::test(start_paused = true)]
async fn ep7_last_known_good_by_default() {
    let inst = TestInstancer::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    inst.fail("registry down");
    until(&ep, |s| s.last_error().is_some()).await;
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(addrs(&ep), ["a:1"]);
    assert!(matches!(ep.endpoints().status(), Status::Stale(_)));
}

/// EP-8: with InvalidateOnError the first error wins: later errors change neither the
/// error nor the deadline.
/// EP-9 (fixed): endpoints are served strictly before the deadline, and at the deadline a
/// timer closes them all (go-kit waited for the next read); reads then return the first error.
#[tokio::test(start_paused = true)]
async fn ep8_ep9_invalidate_on_error() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1", "b:1"]);
    let ep = DefaultEndpointer::builder(&inst.0, f.clone())
        .invalidate_on_error(Duration::from_secs(10))
        .build();
    inst.fail("sd error");
    until(&ep, |s| s.last_error().is_some()).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    inst.fail("another sd error");
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(5) - Duration::from_nanos(1)).await;
    assert_eq!(addrs(&ep), ["a:1", "b:1"], "served until the deadline");
    assert_eq!(f.total_closed(), 0);
    tokio::time::advance(Duration::from_nanos(1)).await;
    // Strict deadline: at now == deadline reads fail, with the first error.
    let snap = ep.endpoints();
    let e = snap.get().unwrap_err();
    assert_eq!(e, &Error::unavailable("test", "sd error"));
    drop(snap);
    // The timer closes everything without anyone reading.
    until(&ep, |s| s.all().is_empty()).await;
    assert_eq!((f.closed("a:1"), f.closed("b:1")), (1, 1));
}

/// EP-9: with a zero timeout the first read after an error fails.
#[tokio::test]
async fn ep9_zero_timeout_fails_at_once() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::builder(&inst.0, f.clone())
        .invalidate_on_error(Duration::ZERO)
        .build();
    inst.fail("x");
    until(&ep, |s| s.get().is_err()).await;
    assert_eq!(f.closed("a:1"), 1);
}

/// EP-10: after invalidation, a good event clears the error and makes every endpoint again.
#[tokio::test(start_paused = true)]
async fn ep10_recovery_after_invalidation() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::builder(&inst.0, f.clone())
        .invalidate_on_error(Duration::from_secs(1))
        .build();
    inst.fail("x");
    tokio::time::advance(Duration::from_secs(2)).await;
    until(&ep, |s| s.get().is_err()).await;
    inst.send(&["a:1"]);
    until(&ep, |s| s.get().is_ok_and(|l| l.len() == 1)).await;
    assert_eq!(f.made("a:1"), 2);
}

/// EP-11 (fixed): reading takes no lock: a snapshot can be held while updates proceed, and it
/// stays consistent.
#[tokio::test]
async fn ep11_snapshot_is_stable_during_updates() {
    let inst = TestInstancer::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    let held = ep.endpoints();
    inst.send(&["b:1"]);
    until(&ep, |s| {
        s.all()
            .first()
            .is_some_and(|e| e.instance().addr() == "b:1")
    })
    .await;
    assert_eq!(held.get().unwrap()[0].instance().addr(), "a:1");
    assert!(held.version() < ep.endpoints().version());
}

/// EP-12 [BUG] regression: close closes every endpoint exactly once, is idempotent, and
/// nothing is made or closed afterwards; reads return `Stopped`.
#[tokio::test]
async fn ep12_close_closes_endpoints_once() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1", "b:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    ep.close().await;
    ep.close().await;
    assert_eq!((f.closed("a:1"), f.closed("b:1")), (1, 1));
    inst.send(&["c:1"]);
    tokio::task::yield_now().await;
    assert_eq!(f.made("c:1"), 0);
    assert_eq!(ep.endpoints().get().unwrap_err(), &Error::Stopped);
    drop(ep);
    assert_eq!(f.total_closed(), 2, "drop after close closes nothing again");
}

/// Dropping an endpointer without close still closes each endpoint once.
#[tokio::test]
async fn drop_closes_endpoints() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1"]);
    drop(DefaultEndpointer::new(&inst.0, f.clone()));
    assert_eq!(f.closed("a:1"), 1);
}

/// §4.13 [BUG] regression: a failed factory is retried with backoff even when the instance
/// set does not change (go-kit retried only on a changed set).
#[tokio::test(start_paused = true)]
async fn factory_failures_are_retried_without_a_new_event() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    f.fail.lock().unwrap().push("a:1".into());
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    assert!(addrs(&ep).is_empty());
    f.fail.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(1)).await;
    until(&ep, |s| s.all().len() == 1).await;
    assert_eq!(f.made("a:1"), 1);
}

/// A metadata change keeps the endpoint (no new factory call) but updates its instance.
#[tokio::test]
async fn metadata_change_keeps_the_endpoint() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send_instances(vec![Instance::builder("a", 1).weight(1).build()]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    inst.send_instances(vec![Instance::builder("a", 1).weight(7).build()]);
    until(&ep, |s| s.all()[0].instance().weight() == 7).await;
    assert_eq!(f.made("a:1"), 1);
    assert_eq!(f.closed("a:1"), 0);
}

/// The first event being an error leaves no good endpoints: reads return the error.
#[tokio::test]
async fn first_event_error_is_returned() {
    let inst = TestInstancer::default();
    inst.fail("unreachable");
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    assert_eq!(
        ep.endpoints().get().unwrap_err(),
        &Error::unavailable("test", "unreachable")
    );
}

/// When the instancer stops, the endpointer keeps its last state.
#[tokio::test]
async fn instancer_stop_keeps_last_state() {
    let inst = TestInstancer::default();
    let f = Counting::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    inst.0.stop().await;
    tokio::task::yield_now().await;
    assert_eq!(addrs(&ep), ["a:1"]);
    assert_eq!(f.total_made(), 1);
}

/// Endpointers are usable as trait objects.
#[tokio::test]
async fn endpointer_as_trait_object() {
    let inst: Arc<dyn Instancer> = Arc::new(sd_core::FixedInstancer::from_addrs(["a:1"]).unwrap());
    let ep: Arc<dyn Endpointer<String>> =
        Arc::new(DefaultEndpointer::new(&inst, Counting::default()));
    assert_eq!(ep.endpoints().get().unwrap().len(), 1);
}

#[tokio::test]
async fn changes_has_changed_and_detached_snapshots_support_cached_reads() {
    let inst = TestInstancer::default();
    inst.send(&["10.0.0.1:80"]);
    let ep = DefaultEndpointer::new(&*inst, |i: &Instance| -> Result<String, BoxError> {
        Ok(i.addr().to_string())
    });
    let mut changes = ep.changes();
    changes.mark_seen();
    let cached = ep.endpoints().detach();
    assert!(!changes.has_changed());
    assert_eq!(cached.get().unwrap().len(), 1);

    inst.send(&["10.0.0.1:80", "10.0.0.2:80"]);
    until(&ep, |s| s.all().len() == 2).await;
    assert!(changes.has_changed());
    // The detached snapshot still reads the old state, with its endpoints alive.
    assert_eq!(cached.get().unwrap()[0].as_str(), "10.0.0.1:80");
    changes.mark_seen();
    assert!(!changes.has_changed());
    assert_eq!(ep.endpoints().detach().get().unwrap().len(), 2);
    drop(cached);

    ep.close().await;
    assert!(changes.has_changed(), "close publishes a final state");
    drop(ep);
    assert!(
        changes.has_changed(),
        "a dropped endpointer reads as changed"
    );
}

/// A factory that panics (in `make` for some addresses, in `close` for others): the panic is
/// contained, the instance is skipped like a factory error and retried, and the endpoints
/// that snapshots still hold stay valid (unwinding through an update would free them).
#[derive(Clone, Default)]
struct Panicky {
    panic_make: Arc<Mutex<Vec<String>>>,
    panic_close: Arc<Mutex<Vec<String>>>,
}

impl Factory<String> for Panicky {
    fn make(&self, i: &Instance) -> Result<String, BoxError> {
        if self
            .panic_make
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == i.addr())
        {
            panic!("factory bug for {}", i.addr());
        }
        Ok(i.addr().to_string())
    }
    fn close(&self, i: &Instance, _: &String) {
        if self
            .panic_close
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == i.addr())
        {
            panic!("close bug for {}", i.addr());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn factory_panics_are_contained() {
    let inst = TestInstancer::default();
    let f = Panicky::default();
    f.panic_make.lock().unwrap().push("b:1".into());
    f.panic_close.lock().unwrap().push("a:1".into());
    inst.send(&["a:1", "c:1"]);
    let ep = DefaultEndpointer::new(&inst.0, f.clone());
    let held = ep.endpoints();
    assert_eq!(addrs(&ep), ["a:1", "c:1"]);

    // `apply` runs the update on this thread: a panicking make must not unwind out of it.
    ep.apply(Event::instances(
        Instance::parse_all(["a:1", "b:1", "c:1"]).unwrap(),
    ));
    assert_eq!(
        addrs(&ep),
        ["a:1", "c:1"],
        "the panicking instance is skipped alone"
    );

    // Removing a:1 runs its panicking close; the update completes all the same.
    ep.apply(Event::instances(
        Instance::parse_all(["b:1", "c:1"]).unwrap(),
    ));
    assert_eq!(addrs(&ep), ["c:1"]);
    // The snapshot taken before both updates still reads its endpoints (no use-after-free).
    let old: Vec<String> = held.all().iter().map(|e| (**e).clone()).collect();
    assert_eq!(old, ["a:1", "c:1"]);
    drop(held);

    // The panicking instance is retried like any factory failure, and recovers.
    f.panic_make.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(1)).await;
    until(&ep, |s| s.all().len() == 2).await;
    assert_eq!(addrs(&ep), ["b:1", "c:1"]);
    ep.close().await;
}

/// Durations from code that would overflow `Instant` arithmetic saturate instead of panicking.
#[tokio::test(start_paused = true)]
async fn huge_invalidation_timeout_does_not_overflow() {
    let inst = TestInstancer::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::builder(&inst.0, Counting::default())
        .invalidate_on_error(Duration::MAX)
        .build();
    inst.fail("down");
    until(&ep, |s| matches!(s.status(), Status::Invalidating { .. })).await;
    assert_eq!(addrs(&ep), ["a:1"]);
    ep.close().await;
}

/// The natural refactor: a helper that builds the instancer and returns only the endpointer.
fn endpointer_following(reg: &sd_core::MemoryRegistry, f: Counting) -> DefaultEndpointer<String> {
    let instancer = reg.service_instancer("svc");
    DefaultEndpointer::new(&instancer, f)
    // `instancer` is dropped here.
}

/// Issue 9 item 2 (go-kit EP-12): dropping the instancer must not freeze the endpointer. The
/// subscription keeps the instancer's watch alive for as long as the endpointer uses it.
#[tokio::test]
async fn dropping_the_instancer_does_not_freeze_the_endpointer() {
    let reg = sd_core::MemoryRegistry::new();
    let ep = endpointer_following(&reg, Counting::default());
    assert_eq!(ep.endpoints().status(), &Status::Current);
    reg.insert("svc", Instance::new("10.0.0.1", 80), None);
    until(&ep, |s| s.all().len() == 1).await;
    assert_eq!(ep.endpoints().status(), &Status::Current);
    ep.close().await;
}

/// The same for an instancer on the shared watch loop (what Consul and every other backend
/// return): its loop keeps running while an endpointer follows it.
#[tokio::test]
async fn dropping_a_watched_instancer_does_not_stop_its_loop() {
    struct Channel(tokio::sync::mpsc::UnboundedReceiver<Vec<Instance>>);
    #[async_trait::async_trait]
    impl sd_core::Source for Channel {
        async fn next_step(&mut self) -> sd_core::Step {
            match self.0.recv().await {
                Some(v) => sd_core::Step::Publish(v),
                None => std::future::pending().await,
            }
        }
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(vec![Instance::new("10.0.0.1", 80)]).unwrap();
    let ep = {
        let instancer =
            sd_core::WatchedInstancer::start(Channel(rx), sd_core::LoopConfig::new("test", "svc"))
                .await;
        DefaultEndpointer::new(&instancer, Counting::default())
    };
    assert_eq!(addrs(&ep), ["10.0.0.1:80"]);
    tx.send(vec![Instance::new("10.0.0.2", 80)]).unwrap();
    until(&ep, |s| {
        s.all()
            .first()
            .is_some_and(|e| e.instance().addr() == "10.0.0.2:80")
    })
    .await;
    assert_eq!(ep.endpoints().status(), &Status::Current);
    ep.close().await;
}

/// Issue 9 item 2: if a subscription ends anyway (the instancer was stopped, or it was a
/// bare cache that its owner dropped), the endpointer says so: its status turns stale (the
/// last endpoints are still served) and a warning is logged.
#[tokio::test]
async fn an_ended_subscription_marks_the_endpointer_stale_and_logs() {
    let logs = logs::Logs::default();
    let _log = logs.install();
    let inst = TestInstancer::default();
    inst.send(&["a:1"]);
    let ep = DefaultEndpointer::builder(&inst.0, Counting::default())
        .name("svc")
        .build();
    assert_eq!(ep.endpoints().status(), &Status::Current);
    drop(inst);
    until(&ep, |s| matches!(s.status(), Status::Stale(Error::Stopped))).await;
    assert_eq!(addrs(&ep), ["a:1"], "the last endpoints are still served");
    let logged = logs.at_least(tracing::Level::WARN);
    assert!(logged.contains("instancer ended"), "{logged}");
    ep.close().await;
}

/// Issue 9 item 4: `ready()` returns (false) when the instancer stops before publishing
/// anything, instead of waiting forever.
#[tokio::test]
async fn ready_returns_when_the_instancer_stops_before_publishing() {
    let inst = TestInstancer::default();
    let ep = DefaultEndpointer::new(&inst.0, Counting::default());
    inst.0.close();
    let ready = tokio::time::timeout(Duration::from_secs(10), ep.ready())
        .await
        .expect("ready() returned");
    assert!(!ready, "no state was ever applied");
    assert_eq!(
        ep.endpoints().get().unwrap_err(),
        &Error::Stopped,
        "nothing to serve"
    );
    ep.close().await;
}
