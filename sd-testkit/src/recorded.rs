//! A global `metrics` recorder that tests read back (feature `metrics`): counters and
//! histogram samples by name and labels. Reads do not reset anything (metrics-util's
//! `DebuggingRecorder` zeroes every value on each snapshot, which parallel tests sharing it
//! cannot live with), so each test filters on its own labels (its own service name).
//!
//! ```no_run
//! sd_testkit::recorded::install(); // first: handles registered before it go nowhere
//! // ... run something that counts ...
//! let n = sd_testkit::recorded::counter(
//!     "sdkit_registrar_reregistrations_total",
//!     &[("backend", "zk"), ("service", "web")],
//! );
//! # let _ = n;
//! ```

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry as Store};

use crate::conformance::wait_set;

/// The recorder: every series in an atomic store.
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

/// Installs the recorder as the global one (once per process; later calls do nothing). Call
/// it before anything registers a metric.
pub fn install() {
    recorder();
}

/// Whether `key` is `name` with every pair of `labels`.
fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// The sum of the counters `name` whose labels include `labels`.
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    recorder()
        .0
        .get_counter_handles()
        .into_iter()
        .filter(|(k, _)| matches(k, name, labels))
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .sum()
}

/// The values recorded so far in the histograms `name` whose labels include `labels`.
pub fn histogram(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    recorder()
        .0
        .get_histogram_handles()
        .into_iter()
        .filter(|(k, _)| matches(k, name, labels))
        .flat_map(|(_, h)| h.data())
        .collect()
}

/// Waits (polling every 10 ms, at most `bound`) until the histograms `name` with `labels`
/// hold at least `count` values, and returns them; panics after `bound`. The watch loop
/// records after it publishes, so a subscriber can see a change a moment before its sample.
pub async fn wait_histogram(
    name: &str,
    labels: &[(&str, &str)],
    count: usize,
    bound: std::time::Duration,
) -> Vec<f64> {
    let end = tokio::time::Instant::now() + bound;
    loop {
        let values = histogram(name, labels);
        if values.len() >= count {
            return values;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{name} {labels:?}: {} values, not {count}, within {bound:?}",
            values.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The propagation-delay scenario against a real registry whose instancers report
/// `Source::changed_at`: one instance registered before an instancer starts (its first read
/// must record no delay), a second registered while it watches (exactly one sample, between
/// zero and `bound`: the registry runs on this machine, on our clock), then both
/// deregistered (a removal carries no time: still one sample). `labels` select the
/// instancer's series (`backend`, `service` as its watch loop labels it).
pub async fn propagation_delay_scenario(
    registry: std::sync::Arc<dyn sd_core::Registry>,
    service: &str,
    labels: &[(&str, &str)],
    bound: std::time::Duration,
) {
    use sd_core::{Instance, Registration, ServiceQuery};
    const DELAY: &str = "sdkit_instancer_propagation_delay_seconds";
    install();
    let register = |port: u16| {
        let registry = registry.clone();
        let reg = Registration::new(service, Instance::new("127.0.0.1", port));
        async move {
            let r = registry.registrar(reg).await.expect("registrar");
            r.register().await.expect("register");
            r
        }
    };
    let first = register(9081).await;
    let instancer = registry
        .instancer(&ServiceQuery::new(service))
        .await
        .expect("instancer");
    let mut sub = instancer.subscribe();
    wait_set(&mut sub, bound, "the first instance", |s| s.len() == 1).await;
    // (A sample from the first read, recorded a moment after this, fails the count below.)
    assert!(
        histogram(DELAY, labels).is_empty(),
        "the first read is no change"
    );
    let second = register(9082).await;
    wait_set(&mut sub, bound, "the second instance", |s| s.len() == 2).await;
    let delays = wait_histogram(DELAY, labels, 1, bound).await;
    assert_eq!(delays.len(), 1, "{delays:?}");
    assert!(
        (0.0..bound.as_secs_f64()).contains(&delays[0]),
        "{delays:?}"
    );
    // A removal carries no time: nothing more is recorded.
    second.deregister().await.expect("deregister");
    wait_set(&mut sub, bound, "the second instance gone", |s| {
        s.len() == 1
    })
    .await;
    // Once a later round has published, the removal's round has been recorded (or not).
    first.deregister().await.expect("deregister");
    wait_set(&mut sub, bound, "all gone", |s| s.is_empty()).await;
    assert_eq!(histogram(DELAY, labels).len(), 1);
    instancer.stop().await;
}
