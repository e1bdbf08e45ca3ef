//! The instancer and registrar metrics (feature `metrics`), read back from a
//! `DebuggingRecorder` installed as the global recorder: the watch loop's events, errors,
//! instance count, staleness, last success and propagation delay; the keep-alive loop's
//! renewals and failures; `ObservedRegistry`'s registrations; the embedded registry's
//! instancers and re-registrations. Each test uses its own service name, so the tests share
//! the one global recorder without seeing each other's series.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry as Store};
use sd_core::keepalive::{spawn_keepalive, KeepAlive, KeepAliveConfig};
use sd_core::{
    Backoff, Error, HealthCheck, Instance, Instancer, LoopConfig, MemoryRegistry, ObservedRegistry,
    Registration, Registry, ServiceQuery, Source, Step, WatchedInstancer,
};
use tokio::sync::{mpsc, watch};

/// A recorder whose reads do not reset anything (metrics-util's `DebuggingRecorder` swaps
/// every value to zero on each snapshot, which parallel tests sharing it cannot live with).
struct Recorded(Store<Key, AtomicStorage>);

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

fn recorder() -> &'static Recorded {
    static R: OnceLock<&'static Recorded> = OnceLock::new();
    R.get_or_init(|| {
        let r: &'static Recorded = Box::leak(Box::new(Recorded(Store::atomic())));
        metrics::set_global_recorder(r).expect("no other global recorder in this test binary");
        r
    })
}

/// Whether `key` is `name` with every pair of `labels`.
fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// The sum of the counters `name` whose labels include `labels`.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    recorder()
        .0
        .get_counter_handles()
        .into_iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .sum()
}

fn gauge(name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = recorder()
        .0
        .get_gauge_handles()
        .into_iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
        .collect();
    assert_eq!(found.len(), 1, "gauge {name} {labels:?}: {found:?}");
    found[0]
}

/// The values recorded so far in histogram `name`.
fn histogram(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    recorder()
        .0
        .get_histogram_handles()
        .into_iter()
        .filter(|(k, _)| matches(k, name, labels))
        .flat_map(|(_, h)| h.data())
        .collect()
}

/// Every label value recorded so far.
fn label_values() -> Vec<String> {
    let r = &recorder().0;
    let keys = r
        .get_counter_handles()
        .into_keys()
        .chain(r.get_gauge_handles().into_keys())
        .chain(r.get_histogram_handles().into_keys());
    keys.flat_map(|k| {
        k.labels()
            .map(|l| l.value().to_string())
            .collect::<Vec<_>>()
    })
    .collect()
}

/// A source fed by the test, one step at a time; `asked` counts its rounds, so the test
/// knows when the loop has dealt with the previous step.
struct Fed {
    rx: mpsc::UnboundedReceiver<(Step, Option<SystemTime>)>,
    asked: watch::Sender<usize>,
    changed_at: Option<SystemTime>,
}

#[async_trait::async_trait]
impl Source for Fed {
    async fn next_step(&mut self) -> Step {
        self.asked.send_modify(|n| *n += 1);
        match self.rx.recv().await {
            Some((step, at)) => {
                self.changed_at = at;
                step
            }
            None => std::future::pending().await,
        }
    }
    fn changed_at(&self) -> Option<SystemTime> {
        self.changed_at
    }
}

struct Feeder {
    tx: mpsc::UnboundedSender<(Step, Option<SystemTime>)>,
    asked: watch::Receiver<usize>,
}

impl Feeder {
    /// Feeds one step and waits until the loop asks for the next one (it has published).
    async fn feed(&mut self, step: Step, at: Option<SystemTime>) {
        let before = *self.asked.borrow_and_update();
        self.tx.send((step, at)).unwrap();
        self.asked.wait_for(|n| *n > before).await.unwrap();
    }
}

fn fed() -> (Fed, Feeder) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (asked_tx, asked) = watch::channel(0);
    (
        Fed {
            rx,
            asked: asked_tx,
            changed_at: None,
        },
        Feeder { tx, asked },
    )
}

fn set(n: u16) -> Step {
    Step::Publish((1..=n).map(|p| Instance::new("10.0.0.1", p)).collect())
}

#[tokio::test(start_paused = true)]
async fn watch_loop_counts_events_errors_instances_and_staleness() {
    recorder(); // the recorder first: handles registered before it go nowhere
    let (source, mut feeder) = fed();
    let l: &[(&str, &str)] = &[("backend", "test"), ("service", "loop-a")];
    feeder.tx.send((set(2), None)).unwrap();
    let config = LoopConfig::new("test", "loop-a/prefix")
        .service("loop-a")
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ));
    let inst = WatchedInstancer::start(source, config).await;
    let events = [("kind", "instances")];
    let with = |extra: &[(&'static str, &'static str)]| [l, extra].concat();
    assert_eq!(counter("sdkit_instancer_events_total", &with(&events)), 1);
    assert_eq!(gauge("sdkit_instancer_instances", l), 2.0);
    assert_eq!(gauge("sdkit_instancer_staleness_seconds", l), 0.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = gauge("sdkit_instancer_last_success_timestamp_seconds", l);
    assert!((now - last).abs() < 60.0, "last success {last}, now {now}");

    // The same set again: no event; a new set: one more.
    feeder.feed(set(2), None).await;
    assert_eq!(counter("sdkit_instancer_events_total", &with(&events)), 1);
    feeder.feed(set(3), None).await;
    assert_eq!(counter("sdkit_instancer_events_total", &with(&events)), 2);
    assert_eq!(gauge("sdkit_instancer_instances", l), 3.0);

    // 30 s later the registry fails: staleness is the time since the last success.
    tokio::time::advance(Duration::from_secs(30)).await;
    feeder
        .feed(Step::Fail(Error::unavailable("test", "down")), None)
        .await;
    assert_eq!(counter("sdkit_instancer_errors_total", l), 1);
    assert_eq!(
        counter("sdkit_instancer_events_total", &with(&[("kind", "error")])),
        1
    );
    let stale = gauge("sdkit_instancer_staleness_seconds", l);
    assert!((30.0..31.0).contains(&stale), "staleness {stale}");
    assert_eq!(
        gauge("sdkit_instancer_instances", l),
        3.0,
        "last good set kept"
    );

    // A skipped round is an error too, not an event; then recovery resets staleness.
    feeder
        .feed(Step::Skip("index went backwards".into()), None)
        .await;
    assert_eq!(counter("sdkit_instancer_errors_total", l), 2);
    assert_eq!(
        counter("sdkit_instancer_events_total", &with(&[("kind", "error")])),
        1
    );
    feeder.feed(set(1), None).await;
    assert_eq!(gauge("sdkit_instancer_staleness_seconds", l), 0.0);
    assert_eq!(gauge("sdkit_instancer_instances", l), 1.0);
    inst.stop().await;
}

#[tokio::test(start_paused = true)]
async fn propagation_delay_is_recorded_when_the_source_gives_a_time() {
    recorder(); // the recorder first: handles registered before it go nowhere
    let (source, mut feeder) = fed();
    let l: &[(&str, &str)] = &[("backend", "test"), ("service", "loop-b")];
    feeder.tx.send((set(1), None)).unwrap();
    let inst = WatchedInstancer::start(source, LoopConfig::new("test", "loop-b")).await;
    assert!(histogram("sdkit_instancer_propagation_delay_seconds", l).is_empty());
    let at = SystemTime::now() - Duration::from_secs(2);
    feeder.feed(set(2), Some(at)).await;
    let delays = histogram("sdkit_instancer_propagation_delay_seconds", l);
    assert_eq!(delays.len(), 1, "{delays:?}");
    assert!((2.0..60.0).contains(&delays[0]), "{delays:?}");
    // A registry clock ahead of ours counts as zero, never negative.
    let ahead = SystemTime::now() + Duration::from_secs(100);
    feeder.feed(set(3), Some(ahead)).await;
    let delays = histogram("sdkit_instancer_propagation_delay_seconds", l);
    assert_eq!(delays.len(), 2, "{delays:?}");
    assert_eq!(delays[1], 0.0);
    // No change, no delay recorded.
    feeder.feed(set(3), Some(at)).await;
    assert_eq!(
        histogram("sdkit_instancer_propagation_delay_seconds", l).len(),
        2
    );
    inst.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_first_read_records_no_propagation_delay() {
    recorder();
    let (source, mut feeder) = fed();
    let l: &[(&str, &str)] = &[("backend", "test"), ("service", "loop-first")];
    let at = SystemTime::now() - Duration::from_secs(3600);
    // The first read finds registrations an hour old: not a delay of an hour.
    feeder.tx.send((set(1), Some(at))).unwrap();
    let inst = WatchedInstancer::start(source, LoopConfig::new("test", "loop-first")).await;
    assert!(histogram("sdkit_instancer_propagation_delay_seconds", l).is_empty());
    feeder.feed(set(2), Some(SystemTime::now())).await;
    assert_eq!(
        histogram("sdkit_instancer_propagation_delay_seconds", l).len(),
        1
    );
    inst.stop().await;
}

struct Flaky(AtomicBool);

#[async_trait::async_trait]
impl KeepAlive for Flaky {
    async fn keep_alive(&self) -> sd_core::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(Error::unavailable("test", "down"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_counts_renewals_and_failures_by_service_not_instance() {
    recorder(); // the recorder first: handles registered before it go nowhere
    let keeper = Arc::new(Flaky(AtomicBool::new(false)));
    let task = spawn_keepalive(
        keeper.clone(),
        KeepAliveConfig::new("test", "ka-svc/instance-7", Duration::from_secs(1)),
    );
    let l: &[(&str, &str)] = &[("backend", "test"), ("service", "ka-svc")];
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(counter("sdkit_registrar_renewals_total", l), 3);
    keeper.0.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(counter("sdkit_registrar_renewal_failures_total", l) >= 1);
    task.stop().await;
    assert!(
        !label_values().iter().any(|v| v.contains("instance-7")),
        "an instance id became a label"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_registry_counts_registrations_reregistrations_and_instances() {
    recorder(); // the recorder first: handles registered before it go nowhere
    let memory = MemoryRegistry::new();
    let registry = ObservedRegistry::new(Arc::new(memory.clone()));
    let l: &[(&str, &str)] = &[("backend", "memory"), ("service", "mem-svc")];
    let instancer = registry
        .instancer(&ServiceQuery::new("mem-svc"))
        .await
        .unwrap();
    assert_eq!(gauge("sdkit_instancer_instances", l), 0.0);
    let instance = Instance::builder("10.0.0.1", 80).id("m-1").build();
    let registrar = registry
        .registrar(
            Registration::new("mem-svc", instance.clone())
                .check(HealthCheck::Ttl(Duration::from_secs(3))),
        )
        .await
        .unwrap();
    registrar.register().await.unwrap();
    let ok = [l, &[("outcome", "ok")]].concat();
    assert_eq!(counter("sdkit_registrar_registrations_total", &ok), 1);
    assert_eq!(gauge("sdkit_instancer_instances", l), 1.0);
    assert!(counter("sdkit_instancer_events_total", l) >= 2);

    // The registry loses the entry: the next keep-alive round registers it again.
    assert!(memory.remove("mem-svc", &instance));
    assert_eq!(gauge("sdkit_instancer_instances", l), 0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(counter("sdkit_registrar_reregistrations_total", l), 1);
    assert_eq!(gauge("sdkit_instancer_instances", l), 1.0);

    registrar.deregister().await.unwrap();
    assert_eq!(counter("sdkit_registrar_deregistrations_total", &ok), 1);
    // A registration that fails validation is counted as an error.
    let bad = registry
        .registrar(Registration::new("mem-svc", Instance::new("10.0.0.1", 0)))
        .await;
    if let Ok(r) = bad {
        assert!(r.register().await.is_err());
        let err = [l, &[("outcome", "error")]].concat();
        assert_eq!(counter("sdkit_registrar_registrations_total", &err), 1);
    }
    instancer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn held_shrinks_and_failover_switches_are_counted() {
    use sd_core::compose::{ComposedInstancer, Composition};
    use sd_core::protect::{EmptySetProtection, ProtectedInstancer};
    use sd_core::{Event, InstanceCache};
    let service = "metrics-compose-protect";
    let held = || {
        counter(
            "sdkit_instancer_shrinks_held_total",
            &[("service", service)],
        )
    };
    let switches = || counter("sdkit_failover_switches_total", &[("service", service)]);
    recorder();

    let inner = Arc::new(InstanceCache::new());
    inner.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    let p = ProtectedInstancer::start_named(inner.clone(), EmptySetProtection::default(), service);
    let mut sub = p.subscribe();
    sub.next().await;
    inner.update(Event::instances(Vec::<Instance>::new()));
    sub.next().await;
    assert_eq!(held(), 1);
    p.stop().await;

    let (a, b) = (
        Arc::new(InstanceCache::new()),
        Arc::new(InstanceCache::new()),
    );
    a.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    b.update(Event::instances(vec![Instance::new("10.0.0.2", 80)]));
    let c = ComposedInstancer::start(
        Composition::Failover,
        service,
        vec![
            ("a".to_string(), a.clone() as Arc<dyn Instancer>),
            ("b".to_string(), b.clone() as Arc<dyn Instancer>),
        ],
    );
    let mut sub = c.subscribe();
    sub.next().await;
    assert_eq!(switches(), 0, "the first choice is not a switch");
    a.update(Event::Error(Error::unavailable("a", "down")));
    sub.next().await;
    a.update(Event::instances(vec![Instance::new("10.0.0.1", 80)]));
    sub.next().await;
    assert_eq!(switches(), 2, "to b and back to a");
    c.stop().await;
}
