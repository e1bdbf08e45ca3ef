//! Which balancer should I use? A simulation in the style of tower's `tower-balance` example.
//!
//! Ten in-process endpoints answer after a random delay, uniform in `[0, max)`, where `max`
//! differs wildly between endpoints (tower's example uses the same maxima: 1 ms, 5 ms, 3 ×
//! 10 ms, 4 × 100 ms, 1 s). 200 concurrent clients send 20 000 requests in total through
//! each balancer. Time is tokio's paused clock, so the run is deterministic, takes about a
//! second of real time, and opens no socket.
//!
//! A second run makes the fastest endpoint fail every request at once, which least-loaded
//! balancers are drawn to (a fast failure looks like a fast, idle endpoint), with and without
//! [`Outlier`] ejection.
//!
//! A third run gives the endpoints different capacities, announced as instance weights
//! (weight `w`: `w` requests served at once, the rest queue), to compare balancers that honour
//! weights with ones that do not.
//!
//! A fourth run adds a cold endpoint to four warm ones (its latency starts ten times higher
//! and falls back to normal over 10 s — or, in a variant, over its first 2 000 requests) and
//! compares balancers with and without [`SlowStart`].
//!
//! A fifth run marks 6 of 10 equal endpoints critical (a health check failing everywhere
//! while the endpoints still serve) and compares panic mode (the default 50 % threshold)
//! with [`PanicThreshold::OFF`].
//!
//! A sixth run spreads 10 endpoints over three zones (2, 4, 4) and the clients over the same
//! zones (half of them in the small zone) and compares zone-blind round robin, "always
//! local", and [`ZoneAware`] routing that knows the callers' spread.
//!
//! A seventh run replaces half of the endpoints while requests are in flight (a rolling
//! deploy) and counts the requests cut off by the removed endpoints' close, with and without
//! graceful [`Drain`].
//!
//! Run: `cargo run --release -p sd-lb --example simulation`

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sd_core::{
    BoxError, DefaultEndpointer, Event, Factory, FixedEndpointer, Instance, InstanceCache,
};
use sd_lb::{
    Balancer, Clock, ConsistentHash, Drain, DrainFactory, Drained, Outlier, OutlierConfig, P2c,
    PanicThreshold, Random, Request, RoundRobin, SlowStart, SlowStartConfig, Weighted, ZoneAware,
};
use tokio::time::Instant;

const MAX_LATENCY_MS: [u64; 10] = [1, 5, 10, 10, 10, 100, 100, 100, 100, 1000];
const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 200;

type Ep = Arc<FixedEndpointer<usize>>;

fn endpoints() -> Ep {
    Arc::new(FixedEndpointer::new(
        (0..MAX_LATENCY_MS.len()).map(|i| (Instance::new("10.0.0.1", 9000 + i as u16), i)),
    ))
}

struct Result {
    name: &'static str,
    latencies: Vec<Duration>,
    per_endpoint: [usize; 10],
    failed: usize,
}

/// Runs the load through `lb`. When `failing` is set, that endpoint answers every request at
/// once with an error (a crashed backend that still accepts connections).
async fn simulate(
    name: &'static str,
    lb: Arc<dyn Balancer<usize>>,
    failing: Option<usize>,
) -> Result {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per_client = REQUESTS / CONCURRENCY;
    for c in 0..CONCURRENCY {
        let lb = lb.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            for k in 0..per_client {
                let start = Instant::now();
                let key = (c * per_client + k) as u64;
                let picked = lb.pick_with(&Request::new().with_key(key)).unwrap();
                let i = **picked.endpoint();
                if failing == Some(i) {
                    picked.failure();
                    let _ = tx.send((i, start.elapsed(), false));
                    // A client backs off a little before its next request.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let max = MAX_LATENCY_MS[i] * 1_000;
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..max))).await;
                picked.success();
                let _ = tx.send((i, start.elapsed(), true));
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(REQUESTS);
    let mut per_endpoint = [0usize; 10];
    let mut failed = 0;
    while let Some((i, d, ok)) = rx.recv().await {
        per_endpoint[i] += 1;
        if ok {
            latencies.push(d);
        } else {
            failed += 1;
        }
    }
    latencies.sort();
    Result {
        name,
        latencies,
        per_endpoint,
        failed,
    }
}

/// Capacities (requests served at once) of the third run, announced as weights.
const CAPACITY: [u32; 8] = [1, 1, 1, 1, 2, 2, 4, 4];
const CAPACITY_CLIENTS: usize = 24;

/// Runs `REQUESTS` requests from `clients` clients through `lb` over endpoints that serve
/// `capacity[i]` requests at once (the rest wait in line), each in 5–15 ms.
async fn simulate_capacity(
    lb: Arc<dyn Balancer<usize>>,
    capacity: &[u32],
    clients: usize,
) -> (Vec<Duration>, Vec<usize>) {
    let (latencies, per_group) = simulate_groups(vec![(lb, clients)], capacity).await;
    (latencies, per_group.into_iter().next().unwrap_or_default())
}

/// [`simulate_capacity`] with groups of clients, each with its own balancer (`(balancer,
/// clients)`); `REQUESTS` in all, spread evenly over the clients. Returns the sorted
/// latencies and the requests per endpoint of each group.
async fn simulate_groups(
    groups: Vec<(Arc<dyn Balancer<usize>>, usize)>,
    capacity: &[u32],
) -> (Vec<Duration>, Vec<Vec<usize>>) {
    let slots: Arc<Vec<tokio::sync::Semaphore>> = Arc::new(
        capacity
            .iter()
            .map(|c| tokio::sync::Semaphore::new(*c as usize))
            .collect(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per_client = REQUESTS / groups.iter().map(|g| g.1).sum::<usize>();
    let mut seed = 0u64;
    for (g, (lb, clients)) in groups.iter().enumerate() {
        for _ in 0..*clients {
            let (lb, tx, slots) = (lb.clone(), tx.clone(), slots.clone());
            let mut rng = StdRng::seed_from_u64(seed);
            seed += 1;
            tokio::spawn(async move {
                for _ in 0..per_client {
                    let start = Instant::now();
                    let picked = lb.pick_with(&Request::new()).unwrap();
                    let i = **picked.endpoint();
                    let permit = slots[i].acquire().await.expect("open");
                    tokio::time::sleep(Duration::from_micros(rng.gen_range(5_000..15_000))).await;
                    drop(permit);
                    picked.success();
                    let _ = tx.send((g, i, start.elapsed()));
                }
            });
        }
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(REQUESTS);
    let mut per_group = vec![vec![0usize; capacity.len()]; groups.len()];
    while let Some((g, i, d)) = rx.recv().await {
        per_group[g][i] += 1;
        latencies.push(d);
    }
    latencies.sort();
    (latencies, per_group)
}

/// The fourth run: clients, seconds it lasts, the cold endpoint's warm-up (time, or requests
/// served, until its latency is normal), the slow-start window.
const JOIN_CLIENTS: usize = 40;
const JOIN_SECS: u64 = 20;
const WARM_FOR: Duration = Duration::from_secs(10);
const WARM_AFTER: usize = 2_000;
const SLOW_START: Duration = Duration::from_secs(10);

/// An endpointer over `n` endpoints `0..n` that can grow.
fn growing(n: usize) -> Arc<DefaultEndpointer<usize>> {
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        |i: &Instance| -> std::result::Result<usize, BoxError> { Ok((i.port() - 9200) as usize) },
    ));
    ep.apply(join_set(n));
    ep
}

fn join_set(n: usize) -> Event {
    Event::instances(
        (0..n)
            .map(|i| Instance::new("10.0.0.1", 9200 + i as u16))
            .collect::<Vec<_>>(),
    )
}

/// Endpoint 4 joins `ep` (which has 0..4) as the clients start; it answers in 5–15 ms ×
/// `1 + 9 × (1 − t / WARM_FOR)` for `WARM_FOR` after it joined (`by_requests`: ×
/// `1 + 9 × (1 − served / WARM_AFTER)` until it has served `WARM_AFTER` requests), the others
/// in 5–15 ms. Returns the new endpoint's picks and all picks per 2-second bucket, and the
/// sorted latencies.
async fn simulate_join(
    lb: Arc<dyn Balancer<usize>>,
    ep: &DefaultEndpointer<usize>,
    by_requests: bool,
) -> (Vec<(usize, usize)>, Vec<Duration>) {
    ep.apply(join_set(5));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(JOIN_SECS);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for c in 0..JOIN_CLIENTS {
        let (lb, tx, served) = (lb.clone(), tx.clone(), served.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(100 + c as u64);
            while Instant::now() < end {
                let start = Instant::now();
                let picked = lb.pick_with(&Request::new()).unwrap();
                let i = **picked.endpoint();
                let mut us = rng.gen_range(5_000..15_000);
                if i == 4 {
                    let done = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let warm = if by_requests {
                        done as f64 / WARM_AFTER as f64
                    } else {
                        (start - t0).as_secs_f64() / WARM_FOR.as_secs_f64()
                    };
                    let cold = 1.0 - warm.min(1.0);
                    us = (us as f64 * (1.0 + 9.0 * cold)) as u64;
                }
                tokio::time::sleep(Duration::from_micros(us)).await;
                picked.success();
                let _ = tx.send((i, start - t0, start.elapsed()));
            }
        });
    }
    drop(tx);
    let mut buckets = vec![(0usize, 0usize); (JOIN_SECS / 2) as usize];
    let mut latencies = Vec::new();
    while let Some((i, at, d)) = rx.recv().await {
        let last = buckets.len() - 1;
        let b = &mut buckets[((at.as_secs() / 2) as usize).min(last)];
        b.0 += usize::from(i == 4);
        b.1 += 1;
        latencies.push(d);
    }
    latencies.sort();
    (buckets, latencies)
}

/// A row of a capacity table: p50, p99, mean, requests per endpoint.
fn print_capacity_row(name: &str, lat: &[Duration], per: &[usize]) {
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    let spread: Vec<String> = per.iter().map(|c| c.to_string()).collect();
    println!(
        "| {name} | {} | {} | {} | {} |",
        ms(pct(lat, 0.5)),
        ms(pct(lat, 0.99)),
        ms(mean),
        spread.join(" "),
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1_000.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let clock = Clock::tokio();
        let ep = endpoints();
        let outlier = |lb: Box<dyn Balancer<usize>>| -> Arc<dyn Balancer<usize>> {
            Arc::new(Outlier::new(lb, OutlierConfig::default()).clock(clock))
        };
        let runs = |with_outlier: bool| -> Vec<(&'static str, Arc<dyn Balancer<usize>>)> {
            let all: Vec<(&'static str, Box<dyn Balancer<usize>>)> = vec![
                ("round robin", Box::new(RoundRobin::new(ep.clone()))),
                ("random", Box::new(Random::with_seed(ep.clone(), 1))),
                ("weighted (equal weights)", Box::new(Weighted::new(ep.clone()))),
                ("consistent hash (Maglev)", Box::new(ConsistentHash::new(ep.clone()))),
                ("p2c, in-flight", Box::new(P2c::pending_requests(ep.clone()).seed(1))),
                ("p2c, peak EWMA", Box::new(P2c::peak_ewma(ep.clone()).clock(clock).seed(1))),
            ];
            all.into_iter()
                .map(|(name, lb)| {
                    if with_outlier {
                        (name, outlier(lb))
                    } else {
                        (name, Arc::from(lb))
                    }
                })
                .collect()
        };

        println!("## Healthy endpoints of very different latency\n");
        println!(
            "{REQUESTS} requests, {CONCURRENCY} concurrent, endpoint max latencies (ms): {MAX_LATENCY_MS:?}\n"
        );
        println!("| balancer | p50 ms | p90 ms | p99 ms | max ms | mean ms | requests per endpoint (fastest → slowest) |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        for (name, lb) in runs(false) {
            let r = simulate(name, lb, None).await;
            let mean = r.latencies.iter().sum::<Duration>() / r.latencies.len().max(1) as u32;
            let spread: Vec<String> = r.per_endpoint.iter().map(|c| c.to_string()).collect();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                ms(pct(&r.latencies, 0.5)),
                ms(pct(&r.latencies, 0.9)),
                ms(pct(&r.latencies, 0.99)),
                ms(*r.latencies.last().unwrap_or(&Duration::ZERO)),
                ms(mean),
                spread.join(" "),
            );
        }

        println!("\n## The fastest endpoint fails every request at once\n");
        println!("Same load; endpoint 0 answers every request immediately with an error. Outlier ejection: defaults (5 failures in a row, 30 s).\n");
        println!("| balancer | failed, no ejection | failed, with outlier ejection | p99 ms of successes, with ejection |");
        println!("|---|---:|---:|---:|");
        for ((name, plain), (_, ejecting)) in runs(false).into_iter().zip(runs(true)) {
            let a = simulate(name, plain, Some(0)).await;
            let b = simulate(name, ejecting, Some(0)).await;
            println!(
                "| {} | {:.1} % | {:.2} % | {} |",
                name,
                100.0 * a.failed as f64 / REQUESTS as f64,
                100.0 * b.failed as f64 / REQUESTS as f64,
                ms(pct(&b.latencies, 0.99)),
            );
        }

        println!("\n## Endpoints of different capacity, announced as weights\n");
        println!(
            "{REQUESTS} requests, {CAPACITY_CLIENTS} concurrent; endpoint `i` serves `CAPACITY[i]` requests at once in 5–15 ms each, the rest wait; its weight is its capacity: {CAPACITY:?}\n"
        );
        println!("| balancer | p50 ms | p99 ms | mean ms | requests per endpoint (weights {CAPACITY:?}) |");
        println!("|---|---:|---:|---:|---|");
        let ep: Ep = Arc::new(FixedEndpointer::new(CAPACITY.iter().enumerate().map(|(i, w)| {
            (Instance::builder("10.0.0.1", 9100 + i as u16).weight(*w).build(), i)
        })));
        let lbs: Vec<(&str, Arc<dyn Balancer<usize>>)> = vec![
            ("round robin", Arc::new(RoundRobin::new(ep.clone()))),
            ("weighted", Arc::new(Weighted::new(ep.clone()))),
            ("p2c, in-flight, weights ignored", Arc::new(P2c::pending_requests(ep.clone()).seed(1).ignore_weights())),
            ("p2c, in-flight, weighted", Arc::new(P2c::pending_requests(ep.clone()).seed(1))),
            ("p2c, peak EWMA, weights ignored", Arc::new(P2c::peak_ewma(ep.clone()).clock(clock).seed(1).ignore_weights())),
            ("p2c, peak EWMA, weighted", Arc::new(P2c::peak_ewma(ep.clone()).clock(clock).seed(1))),
        ];
        for (name, lb) in lbs {
            let (lat, per) = simulate_capacity(lb, &CAPACITY, CAPACITY_CLIENTS).await;
            print_capacity_row(name, &lat, &per);
        }

        println!("\n## A cold endpoint joins, with and without slow start\n");
        println!(
            "Four warm endpoints (5–15 ms); a fifth joins as {JOIN_CLIENTS} clients start sending back to back for {JOIN_SECS} s. It answers 10 × slower at first, normal {} s later (linearly in between); in the second table, normal after serving {WARM_AFTER} requests instead. Slow start: a {} s linear window from 10 %. Fair share: 20 %.",
            WARM_FOR.as_secs(),
            SLOW_START.as_secs()
        );
        for by_requests in [false, true] {
        println!(
            "\n| balancer (warm-up by {}) | new endpoint's share, per 2 s from its arrival | p99 ms | requests over 50 ms |",
            if by_requests { "requests served" } else { "time" }
        );
        println!("|---|---|---:|---:|");
        type Make = fn(Arc<DefaultEndpointer<usize>>, Clock) -> Box<dyn Balancer<usize>>;
        let makes: [(&str, Make); 3] = [
            ("round robin", |ep, _| Box::new(RoundRobin::new(ep))),
            ("p2c, in-flight", |ep, _| Box::new(P2c::pending_requests(ep).seed(1))),
            ("p2c, peak EWMA", |ep, clock| Box::new(P2c::peak_ewma(ep).clock(clock).seed(1))),
        ];
        for (name, make) in makes {
            for slow in [false, true] {
                let ep = growing(4);
                let inner = make(ep.clone(), clock);
                let lb: Arc<dyn Balancer<usize>> = if slow {
                    Arc::new(SlowStart::new(inner, SlowStartConfig::new(SLOW_START)).expect("valid").clock(clock))
                } else {
                    Arc::from(inner)
                };
                let (buckets, lat) = simulate_join(lb, &ep, by_requests).await;
                let shares: Vec<String> = buckets
                    .iter()
                    .map(|(new, all)| format!("{:.0}", 100.0 * *new as f64 / (*all).max(1) as f64))
                    .collect();
                let slow_requests = lat.iter().filter(|d| **d > Duration::from_millis(50)).count();
                println!(
                    "| {name}{} | {} % | {} | {slow_requests} |",
                    if slow { " + slow start" } else { "" },
                    shares.join(" "),
                    ms(pct(&lat, 0.99)),
                );
            }
        }
    }

        println!("\n## Most endpoints fail their health checks: panic mode\n");
        println!(
            "{REQUESTS} requests, {PANIC_CLIENTS} concurrent; 10 endpoints that each serve {PANIC_CAPACITY} requests at once in 5–15 ms (the rest wait), 6 of them marked critical by a health check although they serve fine. Default: panic threshold 50 % (4 of 10 passing is below it: all 10 serve); off: only the 4 passing serve.\n"
        );
        println!("| balancer | p50 ms | p99 ms | mean ms | requests per endpoint (6 critical, then 4 passing) |");
        println!("|---|---:|---:|---:|---|");
        let ep: Ep = Arc::new(FixedEndpointer::new((0..10).map(|i| {
            let h = if i < 6 { sd_core::Health::Critical } else { sd_core::Health::Passing };
            (Instance::builder("10.0.0.1", 9300 + i as u16).health(h).build(), i)
        })));
        let off = PanicThreshold::OFF;
        let lbs: Vec<(&str, Arc<dyn Balancer<usize>>)> = vec![
            ("round robin, panic threshold 50 %", Arc::new(RoundRobin::new(ep.clone()))),
            ("round robin, panic mode off", Arc::new(RoundRobin::new(ep.clone()).with_panic_threshold(off))),
            ("p2c, in-flight, panic threshold 50 %", Arc::new(P2c::pending_requests(ep.clone()).seed(1))),
            ("p2c, in-flight, panic mode off", Arc::new(P2c::pending_requests(ep.clone()).with_panic_threshold(off).seed(1))),
        ];
        for (name, lb) in lbs {
            let (lat, per) = simulate_capacity(lb, &[PANIC_CAPACITY; 10], PANIC_CLIENTS).await;
            print_capacity_row(name, &lat, &per);
        }

        println!("\n## Zones: local traffic and spillover\n");
        println!(
            "{REQUESTS} requests; 10 endpoints in zones a (2), b (4), c (4), each serving {ZONE_CAPACITY} requests at once in 5–15 ms (the rest wait); {ZONE_CLIENTS:?} clients in zones a, b, c. Cross-zone: share of requests that leave the caller's zone. Envoy's zone-aware routing keeps 40 % of zone a's requests local (20 % of the endpoints for 50 % of the callers) and spills the rest to b and c.\n"
        );
        println!("| routing | cross-zone | zone a callers kept local | p50 ms | p99 ms | requests per endpoint (a a b b b b c c c c) |");
        println!("|---|---:|---:|---:|---:|---|");
        const ZONES: [&str; 10] = ["a", "a", "b", "b", "b", "b", "c", "c", "c", "c"];
        let ep: Ep = Arc::new(FixedEndpointer::new((0..10).map(|i| {
            (Instance::builder("10.0.0.1", 9400 + i as u16).meta("zone", ZONES[i]).build(), i)
        })));
        let callers = [("a", ZONE_CLIENTS[0] as f64), ("b", ZONE_CLIENTS[1] as f64), ("c", ZONE_CLIENTS[2] as f64)];
        type ZoneMake = Box<dyn Fn(&'static str) -> Arc<dyn Balancer<usize>>>;
        let (e1, e2, e3) = (ep.clone(), ep.clone(), ep.clone());
        let routings: Vec<(&str, ZoneMake)> = vec![
            ("zone-blind round robin", Box::new(move |_| Arc::new(RoundRobin::new(e1.clone())))),
            ("always local (ZoneAware, callers not given)", Box::new(move |z| Arc::new(ZoneAware::new(RoundRobin::new(e2.clone()), z)))),
            ("ZoneAware with the callers' spread", Box::new(move |z| Arc::new(ZoneAware::new(RoundRobin::new(e3.clone()), z).callers(callers).expect("valid")))),
        ];
        for (name, make) in routings {
            let groups: Vec<(Arc<dyn Balancer<usize>>, usize)> = ["a", "b", "c"]
                .iter()
                .zip(ZONE_CLIENTS)
                .map(|(z, n)| (make(z), n))
                .collect();
            let (lat, per_group) = simulate_groups(groups, &[ZONE_CAPACITY; 10]).await;
            let mut cross = 0;
            let mut total = 0;
            let mut per = [0usize; 10];
            for (g, counts) in per_group.iter().enumerate() {
                for (i, n) in counts.iter().enumerate() {
                    per[i] += n;
                    total += n;
                    if ZONES[i] != ["a", "b", "c"][g] {
                        cross += n;
                    }
                }
            }
            let a_local = (per_group[0][0] + per_group[0][1]) as f64 / per_group[0].iter().sum::<usize>().max(1) as f64;
            let spread: Vec<String> = per.iter().map(|c| c.to_string()).collect();
            println!(
                "| {name} | {:.0} % | {:.0} % | {} | {} | {} |",
                100.0 * cross as f64 / total.max(1) as f64,
                100.0 * a_local,
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99)),
                spread.join(" "),
            );
        }

        println!("\n## A rolling deploy: requests in flight on removed endpoints\n");
        println!(
            "{DRAIN_CLIENTS} clients send requests of 50–150 ms back to back for {DRAIN_SECS} s over 10 endpoints; at 2 s endpoints 0–4 are replaced by 10–14. Closing an endpoint (the factory's close) cuts its requests off: they fail.\n"
        );
        println!("| endpoints closed | requests | failed (cut off by close) |");
        println!("|---|---:|---:|");
        let closes = Connect;
        let ep = Arc::new(DefaultEndpointer::new(&InstanceCache::new(), closes));
        let (n, failed) = simulate_deploy(Arc::new(RoundRobin::new(ep.clone())), &ep, |c| c).await;
        println!("| at once (plain factory) | {n} | {failed} |");
        for timeout in [Duration::from_millis(50), Duration::from_secs(1)] {
            let ep = Arc::new(DefaultEndpointer::new(
                &InstanceCache::new(),
                DrainFactory::new(Connect, timeout),
            ));
            let lb = Arc::new(Drain::new(RoundRobin::new(ep.clone())));
            let (n, failed) = simulate_deploy(lb, &ep, |c: &Drained<Conn>| &**c).await;
            println!("| after draining, timeout {} ms (`Drain` + `DrainFactory`) | {n} | {failed} |", timeout.as_millis());
        }
    });
}

/// The seventh run: clients, seconds.
const DRAIN_CLIENTS: usize = 40;
const DRAIN_SECS: u64 = 4;

/// A connection that its close cuts off.
struct Conn(std::sync::atomic::AtomicBool);

/// Makes connections; closing one cuts off its requests.
struct Connect;

impl Factory<Conn> for Connect {
    fn make(&self, _: &Instance) -> std::result::Result<Conn, BoxError> {
        Ok(Conn(std::sync::atomic::AtomicBool::new(false)))
    }
    fn close(&self, _: &Instance, conn: &Conn) {
        conn.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn deploy_set(ports: std::ops::Range<u16>) -> Event {
    Event::instances(
        ports
            .map(|p| Instance::new("10.0.0.1", 9500 + p))
            .collect::<Vec<_>>(),
    )
}

/// Runs the deploy over `lb`; returns the requests made and how many were cut off (their
/// connection was closed while they ran).
async fn simulate_deploy<E: Send + Sync + 'static>(
    lb: Arc<dyn Balancer<E>>,
    ep: &DefaultEndpointer<E>,
    conn: fn(&E) -> &Conn,
) -> (usize, usize) {
    ep.apply(deploy_set(0..10));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(DRAIN_SECS);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for c in 0..DRAIN_CLIENTS {
        let (lb, tx) = (lb.clone(), tx.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(200 + c as u64);
            while Instant::now() < end {
                let picked = lb.pick_with(&Request::new()).unwrap();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..150))).await;
                let cut = conn(picked.endpoint().value())
                    .0
                    .load(std::sync::atomic::Ordering::SeqCst);
                if cut {
                    picked.failure();
                } else {
                    picked.success();
                }
                let _ = tx.send(cut);
            }
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ep.apply(deploy_set(5..15));
    let (mut n, mut failed) = (0, 0);
    while let Some(cut) = rx.recv().await {
        n += 1;
        failed += usize::from(cut);
    }
    (n, failed)
}

/// The sixth run: requests each endpoint serves at once; clients in zones a, b, c.
const ZONE_CAPACITY: u32 = 2;
const ZONE_CLIENTS: [usize; 3] = [8, 4, 4];

/// The fifth run: requests each endpoint serves at once, clients.
const PANIC_CAPACITY: u32 = 2;
const PANIC_CLIENTS: usize = 16;
