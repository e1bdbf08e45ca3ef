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
//! Run: `cargo run --release -p sd-lb --example simulation`

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sd_core::{FixedEndpointer, Instance};
use sd_lb::{
    Balancer, Clock, ConsistentHash, Outlier, OutlierConfig, P2c, Random, Request, RoundRobin,
    Weighted,
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

/// Runs `REQUESTS` requests from `CAPACITY_CLIENTS` clients through `lb` over endpoints that
/// serve `CAPACITY[i]` requests at once (the rest wait in line), each in 5–15 ms.
async fn simulate_capacity(lb: Arc<dyn Balancer<usize>>) -> (Vec<Duration>, Vec<usize>) {
    let slots: Arc<Vec<tokio::sync::Semaphore>> = Arc::new(
        CAPACITY
            .iter()
            .map(|c| tokio::sync::Semaphore::new(*c as usize))
            .collect(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per_client = REQUESTS / CAPACITY_CLIENTS;
    for c in 0..CAPACITY_CLIENTS {
        let (lb, tx, slots) = (lb.clone(), tx.clone(), slots.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            for _ in 0..per_client {
                let start = Instant::now();
                let picked = lb.pick_with(&Request::new()).unwrap();
                let i = **picked.endpoint();
                let permit = slots[i].acquire().await.expect("open");
                tokio::time::sleep(Duration::from_micros(rng.gen_range(5_000..15_000))).await;
                drop(permit);
                picked.success();
                let _ = tx.send((i, start.elapsed()));
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(REQUESTS);
    let mut per_endpoint = vec![0usize; CAPACITY.len()];
    while let Some((i, d)) = rx.recv().await {
        per_endpoint[i] += 1;
        latencies.push(d);
    }
    latencies.sort();
    (latencies, per_endpoint)
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
            let (lat, per) = simulate_capacity(lb).await;
            let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
            let spread: Vec<String> = per.iter().map(|c| c.to_string()).collect();
            println!(
                "| {name} | {} | {} | {} | {} |",
                ms(pct(&lat, 0.5)),
                ms(pct(&lat, 0.99)),
                ms(mean),
                spread.join(" "),
            );
        }
    });
}
