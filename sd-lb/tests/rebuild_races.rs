//! From the review of issue 9, item 10: background table rebuilds (`Weighted`, `ConsistentHash`,
//! `P2c`). Stale tables, rapid updates during a rebuild, the endpointer dropped mid-rebuild,
//! recovery from a failed set.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_core::{
    BoxError, Changes, DefaultEndpointer, Endpoint, Endpointer, Endpoints, Error, Event, Factory,
    Instance, InstanceCache, Snapshot, Status,
};
use sd_lb::{Balancer, ConsistentHash, P2c, Random, Request, RoundRobin, Weighted};

/// Tests of this file that count `sd-lb-rebuild` threads must not overlap with each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A decorator endpointer as the sd-core docs invite users to write one (`Endpoints::new`,
/// `Snapshot::new`, `Changes::new`): it switches between two sources (say a primary and a
/// secondary data centre) and republishes the active source's state with that source's own
/// version number.
struct Switch {
    current: Mutex<Arc<Endpoints<u16>>>,
    tx: tokio::sync::watch::Sender<u64>,
}

impl Switch {
    fn new(ports: &[u16], version: u64) -> Self {
        let (tx, _) = tokio::sync::watch::channel(version);
        Switch {
            current: Mutex::new(Arc::new(Self::state(ports, version))),
            tx,
        }
    }

    fn state(ports: &[u16], version: u64) -> Endpoints<u16> {
        Endpoints::new(
            ports
                .iter()
                .map(|&p| Endpoint::new(Instance::new("10.0.0.1", p), p))
                .collect(),
            Status::Current,
            version,
        )
    }

    fn publish(&self, ports: &[u16], version: u64) {
        *self.current.lock().unwrap() = Arc::new(Self::state(ports, version));
        self.tx.send_replace(version);
    }
}

impl Endpointer<u16> for Switch {
    fn endpoints(&self) -> Snapshot<u16> {
        Snapshot::new(self.current.lock().unwrap().clone())
    }
    fn changes(&self) -> Changes {
        Changes::new(self.tx.subscribe())
    }
}

/// Picks from `b` (with keys, so consistent hashing uses its table) for up to `limit`,
/// sleeping between batches so that background rebuilds can finish, until `done` holds for
/// a whole batch. Returns the ports seen in the last batch.
fn pick_until(
    b: &dyn Balancer<u16>,
    limit: Duration,
    done: impl Fn(&HashSet<u16>) -> bool,
) -> HashSet<u16> {
    let start = Instant::now();
    loop {
        let seen: HashSet<u16> = (0..200u64)
            .map(|k| **b.pick_with(&Request::new().with_key(k)).unwrap().endpoint())
            .collect();
        if done(&seen) || start.elapsed() > limit {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A custom endpointer whose version number goes back (it switched to another source with
/// a numbering of its own) freezes the background balancers on the old set for ever: the
/// rebuild thread (balancer.rs, `schedule`: `old.snapshot.version() > snapshot.version()`)
/// takes the newer state for "a refresh got there first" and drops it, so every later pick
/// starts another rebuild thread that drops it again, and picks keep returning endpoints
/// that are no longer in the endpointer. The inline balancers (round robin, random) follow
/// the same update at once.
#[test]
fn background_tables_follow_an_endpointer_whose_version_goes_back() {
    let _serial = serial();
    let sw = Arc::new(Switch::new(&[1, 2], 10));
    let balancers: Vec<(&str, Box<dyn Balancer<u16>>)> = vec![
        ("round robin", Box::new(RoundRobin::new(sw.clone()))),
        ("random", Box::new(Random::new(sw.clone()))),
        ("weighted", Box::new(Weighted::new(sw.clone()))),
        ("consistent hash", Box::new(ConsistentHash::new(sw.clone()))),
        ("p2c", Box::new(P2c::pending_requests(sw.clone()))),
    ];
    for (_, b) in &balancers {
        let _ = b.pick();
    }
    // Failover to the secondary source: a different set, published with its own version.
    sw.publish(&[3], 3);
    let mut stale = Vec::new();
    for (name, b) in &balancers {
        let seen = pick_until(&**b, Duration::from_secs(3), |s| s == &HashSet::from([3]));
        if seen != HashSet::from([3]) {
            stale.push(format!("{name} still picks {seen:?}"));
        }
    }
    assert!(
        stale.is_empty(),
        "the endpointer now holds only port 3, but: {stale:?}"
    );
}

/// A runtime (for the endpointer's tasks) and an empty endpointer fed by hand whose factory
/// counts the endpoints it made and closed.
struct Counting {
    made: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Factory<u32> for Counting {
    fn make(&self, i: &Instance) -> Result<u32, BoxError> {
        self.made.fetch_add(1, Ordering::SeqCst);
        Ok(i.port() as u32)
    }
    fn close(&self, _: &Instance, _: &u32) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

#[allow(clippy::type_complexity)]
fn endpointer() -> (
    tokio::runtime::Runtime,
    Arc<DefaultEndpointer<u32>>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let ep = {
        let _rt = rt.enter();
        Arc::new(DefaultEndpointer::new(
            &InstanceCache::new(),
            Counting {
                made: made.clone(),
                closed: closed.clone(),
            },
        ))
    };
    (rt, ep, made, closed)
}

/// `n` instances on distinct addresses, all with port `port`.
fn set(tag: u32, n: u32, port: u16) -> Event {
    Event::instances(
        (0..n)
            .map(|i| Instance::new(format!("10.{}.{}.{}", tag & 255, i >> 8, i & 255), port))
            .collect::<Vec<_>>(),
    )
}

fn rebuild_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .map(|c| c.trim() == "sd-lb-rebuild")
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Updates landing back to back while rebuilds run (big and small sets alternating, so a
/// rebuild of a big set is often overtaken), with two threads picking all along: no pick
/// fails (every set has endpoints), and once the updates stop, plain picks (no `refresh`)
/// converge on the last set. Passes: the rebuild thread's stale check and the change
/// notifier hand the newer state to the next pick.
#[test]
fn rapid_updates_during_rebuilds_converge_on_the_last_set() {
    let _serial = serial();
    let (_rt, ep, _, _) = endpointer();
    ep.apply(set(0, 10, 1000));
    let balancers: Vec<(&str, Arc<dyn Balancer<u32>>)> = vec![
        ("hash", Arc::new(ConsistentHash::new(ep.clone()))),
        ("weighted", Arc::new(Weighted::new(ep.clone()))),
        ("p2c", Arc::new(P2c::pending_requests(ep.clone()))),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let pickers: Vec<_> = (0..2)
        .map(|t| {
            let (balancers, stop, errors) = (balancers.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut k = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    for (name, b) in &balancers {
                        if let Err(e) = b.pick_with(&Request::new().with_key(k)) {
                            errors.lock().unwrap().push(format!("{name}: {e}"));
                        }
                    }
                    k += 2;
                }
            })
        })
        .collect();
    for round in 0..60u32 {
        let n = if round % 2 == 0 { 4_000 } else { 3 + round };
        ep.apply(set(round + 1, n, 2000 + round as u16));
        std::thread::sleep(Duration::from_millis(3));
    }
    // The last set: port 7777 only.
    ep.apply(set(200, 5, 7777));
    stop.store(true, Ordering::Relaxed);
    for p in pickers {
        p.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed picks while endpoints existed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    for (name, b) in &balancers {
        let start = Instant::now();
        let ok = loop {
            let all_last = (0..200u64)
                .all(|k| **b.pick_with(&Request::new().with_key(k)).unwrap().endpoint() == 7777);
            if all_last {
                break true;
            }
            if start.elapsed() > Duration::from_secs(30) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            ok,
            "{name}: still serving an old table 30 s after the last update"
        );
    }
}

/// The balancer and the endpointer are dropped while a rebuild of a 20 000-endpoint Maglev
/// table runs: the rebuild thread finishes on its own (no hang, no panic), and every
/// endpoint the factory made is closed exactly once. Passes.
#[test]
fn dropping_everything_during_a_rebuild_ends_the_rebuild_thread() {
    let _serial = serial();
    let (rt, ep, made, closed) = endpointer();
    ep.apply(set(1, 3, 80));
    let hash = ConsistentHash::new(ep.clone());
    ep.apply(set(2, 20_000, 81));
    // This pick starts the rebuild and answers from the previous table.
    let first = hash.pick_key("k").unwrap();
    assert_eq!(*first, 80);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rebuild_threads() == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    drop(hash);
    drop(ep);
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rebuild_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        rebuild_threads(),
        0,
        "a rebuild thread outlived its balancer"
    );
    assert_eq!(
        closed.load(Ordering::SeqCst),
        made.load(Ordering::SeqCst),
        "every endpoint made is closed once"
    );
}

/// Recovery from a failed set (the endpointer invalidated its endpoints after a discovery
/// error) to 10 000 endpoints: while the tables are rebuilt, no pick on any thread reports an
/// error. Passes: the previous view does not serve, so picks use the new set directly.
#[test]
fn recovery_from_a_failed_set_never_reports_an_error() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = {
        let _rt = rt.enter();
        Arc::new(
            DefaultEndpointer::builder(
                &InstanceCache::new(),
                |i: &Instance| -> Result<u32, BoxError> { Ok(i.port() as u32) },
            )
            .invalidate_on_error(Duration::ZERO)
            .build(),
        )
    };
    ep.apply(set(1, 5, 80));
    let balancers: Vec<(&str, Arc<dyn Balancer<u32>>)> = vec![
        ("hash", Arc::new(ConsistentHash::new(ep.clone()))),
        ("weighted", Arc::new(Weighted::new(ep.clone()))),
        ("p2c", Arc::new(P2c::peak_ewma(ep.clone()))),
    ];
    ep.apply(Event::Error(Error::Config("registry down".into())));
    for (name, b) in &balancers {
        assert!(b.pick().is_err(), "{name}: a failed set is reported");
    }
    ep.apply(set(2, 10_000, 81));
    for (name, b) in &balancers {
        let failures = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (b, failures) = (b.clone(), failures.clone());
                std::thread::spawn(move || {
                    for k in 0..2_000u64 {
                        if b.pick_with(&Request::new().with_key(k)).is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(failures.load(Ordering::Relaxed), 0, "{name}");
    }
}
