//! Lifecycles: runtime shutdown, runtimes that end while their objects live on, and panicking
//! `tracing` layers in the shared background loops (watch loop, keep-alive loop, `memory://`
//! reaper). Each test here failed before its fix (found by an attack on sd-core).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_core::keepalive::{spawn_keepalive, KeepAlive, KeepAliveConfig};
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Health, HealthCheck, Instance, Instancer,
    LoopConfig, MemoryRegistry, Registrar, Registration, RegistrationGuard, ServiceQuery, Source,
    Status, Step, WatchedInstancer,
};
use tracing_subscriber::layer::SubscriberExt;

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A current-thread runtime on a paused clock.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs `f` on a fresh thread and waits at most `limit` for it; `None` if it did not finish
/// (the thread is left behind: it hangs).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// A registrar whose deregistration takes a network round trip (Consul, etcd, ...): here a
/// timer of 200 ms.
#[derive(Debug)]
struct RoundTrip(sd_core::MemoryRegistrar);

#[async_trait::async_trait]
impl Registrar for RoundTrip {
    async fn register(&self) -> sd_core::Result<()> {
        self.0.register().await
    }
    async fn deregister(&self) -> sd_core::Result<()> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.deregister().await
    }
    fn registration(&self) -> &Registration {
        self.0.registration()
    }
}

/// Registers through the registrar `make` builds, hands the guard to a task that never ends,
/// then drops the multi-thread runtime, as at the end of `#[tokio::main]`. Runs on its own
/// thread, given 60 s: returns how many instances are left, or `None` if the drop hung.
fn shut_down_with_a_guard_in_a_task(
    make: impl FnOnce(&MemoryRegistry) -> Arc<dyn Registrar> + Send + 'static,
) -> Option<usize> {
    within(Duration::from_secs(60), || {
        let reg = MemoryRegistry::new();
        let rt = multi_thread(1);
        rt.block_on(async {
            let guard = RegistrationGuard::register(make(&reg)).await.unwrap();
            tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
            tokio::task::yield_now().await;
        });
        drop(rt);
        reg.instances("svc").len()
    })
}

/// A guard held by a spawned task (a server task owning its registration, the usual shape)
/// when a `#[tokio::main]`-style multi-thread runtime shuts down. The docs promise: "outside a
/// runtime, while unwinding, or during shutdown it warns that nothing was sent". Dropping the
/// runtime must finish (the drop deadline is 5 s).
#[test]
fn guard_owned_by_a_task_does_not_hang_runtime_shutdown() {
    let finished = shut_down_with_a_guard_in_a_task(|reg| {
        Arc::new(RoundTrip(reg.registrar_for(Registration::new(
            "svc",
            Instance::new("10.0.0.1", 80),
        ))))
    });
    assert!(
        finished.is_some(),
        "dropping the runtime hung for 60 s: the guard's drop blocks a worker in \
         block_in_place + block_on on a timer that no thread drives any more"
    );
}

/// Control for the test above: the same guard over a registrar whose deregistration needs
/// no timer or I/O (plain `memory://`, no TTL) does not hang. So the hang above comes from
/// the deregistration's await on a driver (timer, socket) that no thread drives any more.
///
/// (With the fix the drop polls the deregistration once on its own thread, so this one is
/// still sent during shutdown.)
#[test]
fn guard_with_an_instant_deregistration_does_not_hang_runtime_shutdown() {
    let left = shut_down_with_a_guard_in_a_task(|reg| {
        Arc::new(reg.registrar_for(Registration::new("svc", Instance::new("10.0.0.1", 80))))
    });
    assert_eq!(left, Some(0), "finished, and deregistered");
}

/// The same with the plain `memory://` registrar and a TTL check: its deregistration waits
/// for the heartbeat task, which the shutting-down runtime may never poll or drop first.
#[test]
fn ttl_guard_owned_by_a_task_does_not_hang_runtime_shutdown() {
    let finished = within(Duration::from_secs(60), || {
        let reg = MemoryRegistry::new();
        let rt = multi_thread(1);
        rt.block_on(async {
            let mut guards = Vec::new();
            for port in 1..=8 {
                let registrar = reg.registrar_for(
                    Registration::new("svc", Instance::new("10.0.0.1", port))
                        .check(HealthCheck::Ttl(Duration::from_secs(30))),
                );
                guards.push(
                    RegistrationGuard::register(Arc::new(registrar))
                        .await
                        .unwrap(),
                );
            }
            for guard in guards {
                tokio::spawn(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await
                });
            }
            tokio::task::yield_now().await;
        });
        drop(rt);
    });
    assert!(finished.is_some(), "dropping the runtime hung for 60 s");
}

/// The registering process's runtime ends without deregistering (a crash, or an app that
/// restarts its runtime): the vanished registrant must expire for watchers on another, live
/// runtime, as `Capabilities::expiry` (declared by `memory://`) promises. Issue 9 item 5.
#[test]
fn vanished_registrants_runtime_ending_does_not_stop_expiry() {
    let reg = MemoryRegistry::new();
    // The watcher's runtime, alive throughout.
    let watcher = multi_thread(1);
    let instancer =
        watcher.block_on(async { reg.instancer_for(&ServiceQuery::new("svc").passing_only(true)) });
    let mut sub = instancer.subscribe();
    // The registrant: its own runtime, which then ends without deregistering.
    {
        let rt = current_thread();
        rt.block_on(async {
            let r = reg.registrar_for(
                Registration::new("svc", Instance::new("10.0.0.1", 80))
                    .check(HealthCheck::Ttl(Duration::from_secs(1))),
            );
            let guard = RegistrationGuard::register(Arc::new(r)).await.unwrap();
            guard.abandon();
        });
    }
    let gone = watcher.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match sub.next().await {
                    Some(e) if e.as_instances().is_some_and(|s| s.is_empty()) => return,
                    Some(_) => {}
                    None => std::future::pending().await,
                }
            }
        })
        .await
        .is_ok()
    });
    let passing: Vec<_> = reg
        .instances("svc")
        .into_iter()
        .filter(|i| i.health() == Health::Passing)
        .collect();
    assert!(
        gone,
        "TTL 1 s, 15 s later the vanished instance is still passing: {passing:?} \
         (the reaper died with the registrant's runtime and nothing restarts it)"
    );
}

/// A source fed through a channel.
struct Channel(tokio::sync::mpsc::UnboundedReceiver<Vec<Instance>>);

#[async_trait::async_trait]
impl Source for Channel {
    async fn next_step(&mut self) -> Step {
        match self.0.recv().await {
            Some(v) => Step::Publish(v),
            None => std::future::pending().await,
        }
    }
}

fn one(port: u16) -> Vec<Instance> {
    vec![Instance::new("10.0.0.1", port)]
}

fn factory(i: &Instance) -> Result<String, BoxError> {
    Ok(i.addr().to_string())
}

/// A watch loop started on one runtime (a bootstrap runtime, a test's runtime) whose runtime
/// then ends: the loop is gone, so the instancer will never publish again. An endpointer that
/// follows it from another runtime must not keep saying `Current` (issue 9 item 2: "if a
/// subscription does end, mark the status stale and log it").
#[test]
fn endpointer_is_not_silently_current_when_the_watch_loops_runtime_ended() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(one(1)).unwrap();
    let instancer = {
        let rt = current_thread();
        rt.block_on(WatchedInstancer::start(
            Channel(rx),
            LoopConfig::new("test", "svc"),
        ))
    }; // the runtime, and the loop task with it, is gone
    let rt = multi_thread(1);
    rt.block_on(async {
        let ep = DefaultEndpointer::new(&instancer, factory);
        // The last state is applied at once. (The attack's version asserted `Current` here:
        // with the fix the cache is already closed, so the endpointer's loop may turn it
        // `Stale` before this line runs.)
        assert_eq!(ep.endpoints().all().len(), 1);
        // The registry changes; nobody will ever see it.
        let _ = tx.send(one(2));
        let noticed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let s = ep.endpoints();
                if s.status() != &Status::Current
                    || s.all().first().is_some_and(|e| e.instance().port() == 2)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        let s = ep.endpoints();
        assert!(
            noticed,
            "the watch loop died with its runtime, yet the endpointer serves {:?} as {:?} \
             (the cache is never closed, so the subscription never ends)",
            s.all(),
            s.status()
        );
        ep.close().await;
    });
}

/// The endpointer's own loop runs on the runtime it was built on. Built on a runtime that
/// ends, it stops following an instancer that lives on: it must not stay `Current`.
///
/// (Changed from the attack's version, which first asserted `Current` after the runtime had
/// ended and then slept 500 ms: with the fix the status is `Stale` as soon as the runtime is
/// gone, so `Current` is asserted while the runtime lives, and no sleep is needed.)
#[test]
fn endpointer_is_not_silently_current_when_its_own_runtime_ended() {
    let reg = MemoryRegistry::new();
    let instancer = reg.service_instancer("svc");
    reg.insert("svc", Instance::new("10.0.0.1", 1), None);
    let ep = {
        let rt = current_thread();
        rt.block_on(async {
            let ep = DefaultEndpointer::new(&instancer, factory);
            assert_eq!(ep.endpoints().status(), &Status::Current);
            ep
        })
    }; // the runtime, and the endpointer's loop with it, is gone
    reg.insert("svc", Instance::new("10.0.0.1", 2), None);
    let s = ep.endpoints();
    let (served, status) = (s.all().len(), s.status().clone());
    drop(s);
    let rt = current_thread();
    rt.block_on(async { ep.close().await });
    assert!(
        served == 2 || status == Status::Stale(Error::Stopped),
        "the endpointer's loop died with its runtime: it serves {served} endpoint(s) as \
         {status:?} although the registry now has 2 instances"
    );
}

/// A `tracing` layer that panics once, on the first event whose message contains `needle`.
struct PanicOnce {
    needle: &'static str,
    armed: Arc<AtomicBool>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnce {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Msg(String::new());
        event.record(&mut m);
        if m.0.contains(self.needle) && self.armed.swap(false, Ordering::SeqCst) {
            panic!("tracing layer panicked on {:?}", m.0);
        }
    }
}

fn with_panicking_layer<T>(
    needle: &'static str,
    armed: Arc<AtomicBool>,
    f: impl FnOnce() -> T,
) -> T {
    let subscriber = tracing_subscriber::registry().with(PanicOnce { needle, armed });
    tracing::subscriber::with_default(subscriber, f)
}

/// The shared watch loop (every backend's instancer) logs from its background task with no
/// protection: one panicking `tracing` layer event kills the loop for good. The endpointer
/// survives such a layer (ARCHITECTURE.md: "the background loop survives it"), but the watch
/// loop feeding it does not, and nobody notices: the cache is not closed, the subscription
/// does not end, the endpointer stays `Current` with the old set.
#[test]
fn watch_loop_survives_a_panicking_tracing_layer() {
    let armed = Arc::new(AtomicBool::new(false));
    let result = with_panicking_layer("instances changed", armed.clone(), || {
        current_thread().block_on(async {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tx.send(one(1)).unwrap();
            let instancer =
                WatchedInstancer::start(Channel(rx), LoopConfig::new("test", "svc")).await;
            let ep = DefaultEndpointer::new(&instancer, factory);
            armed.store(true, Ordering::SeqCst);
            tx.send(one(2)).unwrap(); // logged "instances changed": the layer panics once
            let mut changes = ep.changes();
            let saw = |p: u16| {
                ep.endpoints()
                    .all()
                    .first()
                    .is_some_and(|e| e.instance().port() == p)
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !saw(2) {
                    changes.changed().await;
                }
            })
            .await;
            // A later change (the layer no longer panics). If the loop died, its source (and
            // the channel's receiver) was dropped with it.
            let loop_alive = tx.send(one(3)).is_ok();
            let ok = tokio::time::timeout(Duration::from_secs(5), async {
                while !saw(3) && ep.endpoints().status() == &Status::Current {
                    changes.changed().await;
                }
            })
            .await
            .is_ok();
            let s = ep.endpoints();
            // Not frozen as `Current` (the loop's drop guard alone gives that), and more: the
            // loop itself survived and published the later change.
            let ok = ok && loop_alive && saw(3);
            let out = (
                ok,
                format!("{:?} {:?}, loop alive: {loop_alive}", s.all(), s.status()),
            );
            ep.close().await;
            instancer.stop().await;
            out
        })
    });
    assert!(!armed.load(Ordering::SeqCst), "the layer did panic once");
    assert!(
        result.0,
        "after one panicking log event the watch loop is dead and the endpointer is frozen, \
         still Current: {}",
        result.1
    );
}

/// A keep-alive round that fails once, then succeeds.
struct FailOnce(AtomicUsize);

#[async_trait::async_trait]
impl KeepAlive for FailOnce {
    async fn keep_alive(&self) -> sd_core::Result<()> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(Error::unavailable("test", "agent restarting"))
        } else {
            Ok(())
        }
    }
}

/// The keep-alive loop: one failed heartbeat is logged at warn; a panicking layer on that
/// line kills the loop and the registration then lapses although the registrar is alive.
#[test]
fn keepalive_loop_survives_a_panicking_tracing_layer() {
    let armed = Arc::new(AtomicBool::new(true));
    let rounds = with_panicking_layer("keep-alive failed", armed.clone(), || {
        paused().block_on(async {
            let keeper = Arc::new(FailOnce(AtomicUsize::new(0)));
            let task = spawn_keepalive(
                keeper.clone(),
                KeepAliveConfig::new("test", "svc/1", Duration::from_secs(1)),
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
            task.stop().await;
            keeper.0.load(Ordering::SeqCst)
        })
    });
    assert!(!armed.load(Ordering::SeqCst), "the layer did panic once");
    assert!(
        rounds >= 5,
        "only {rounds} keep-alive round(s) in 10 periods: the loop died with the panicking log line"
    );
}

/// A keep-alive round that panics (a backend bug, or a layer panicking on a line the round
/// logs, as `memory://`'s "re-registered") fails that round; the loop retries and carries on.
#[tokio::test(start_paused = true)]
async fn keepalive_loop_survives_a_panicking_round() {
    struct PanicsOnce(AtomicUsize);
    #[async_trait::async_trait]
    impl KeepAlive for PanicsOnce {
        async fn keep_alive(&self) -> sd_core::Result<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("round bug");
            }
            Ok(())
        }
    }
    let keeper = Arc::new(PanicsOnce(AtomicUsize::new(0)));
    let task = spawn_keepalive(
        keeper.clone(),
        KeepAliveConfig::new("test", "svc/1", Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !task.is_finished(),
        "the loop died with the panicking round"
    );
    task.stop().await;
    let rounds = keeper.0.load(Ordering::SeqCst);
    assert!(rounds >= 5, "only {rounds} round(s) in 10 periods");
}

/// The `memory://` TTL reaper logs while it holds the registry lock, inside `retain`: a
/// panicking layer on "TTL lapsed" kills the reaper, and the lapsed instance stays passing.
///
/// (Tightened from the attack's version, where both TTLs lapsed in the same reaper round, so
/// a reaper that commits before logging passed even if the panic then killed it: the second
/// TTL here lapses in a later round, which only a surviving reaper runs on this runtime's
/// paused clock.)
#[test]
fn memory_reaper_survives_a_panicking_tracing_layer() {
    let armed = Arc::new(AtomicBool::new(true));
    let still_passing = with_panicking_layer("TTL lapsed", armed.clone(), || {
        paused().block_on(async {
            let reg = MemoryRegistry::new();
            reg.insert(
                "svc",
                Instance::new("10.0.0.1", 1),
                Some(Duration::from_secs(1)),
            );
            reg.insert(
                "svc",
                Instance::new("10.0.0.1", 2),
                Some(Duration::from_secs(5)),
            );
            tokio::time::sleep(Duration::from_secs(30)).await;
            reg.instances("svc")
                .into_iter()
                .filter(|i| i.health() == Health::Passing)
                .count()
        })
    });
    assert!(!armed.load(Ordering::SeqCst), "the layer did panic once");
    assert_eq!(
        still_passing, 0,
        "30 s after a 1 s TTL lapsed, {still_passing} instance(s) still passing: the reaper died"
    );
}

/// A source whose second round panics (a backend bug, or a `tracing` layer panicking on a line
/// the round logs): the round counts as failed (an error event, the last good set kept) and
/// the loop carries on with the next round.
#[tokio::test(start_paused = true)]
async fn watch_loop_survives_a_panicking_round() {
    struct PanicsOnce(usize);
    #[async_trait::async_trait]
    impl Source for PanicsOnce {
        async fn next_step(&mut self) -> Step {
            self.0 += 1;
            match self.0 {
                1 => Step::Publish(one(1)),
                2 => panic!("round bug"),
                3 => Step::Publish(one(3)),
                _ => std::future::pending().await,
            }
        }
    }
    let instancer = WatchedInstancer::start(PanicsOnce(0), LoopConfig::new("test", "svc")).await;
    let mut sub = instancer.subscribe();
    assert_eq!(sub.next().await, Some(sd_core::Event::instances(one(1))));
    match sub.next().await {
        Some(sd_core::Event::Error(e)) => assert!(e.to_string().contains("round bug"), "{e}"),
        other => panic!("expected the panic as an error event, got {other:?}"),
    }
    assert_eq!(sub.next().await, Some(sd_core::Event::instances(one(3))));
    instancer.stop().await;
}

// Silence an unused import when some tests are filtered out.
#[allow(dead_code)]
fn _uses(_: &dyn Instancer, _: Error) {}
