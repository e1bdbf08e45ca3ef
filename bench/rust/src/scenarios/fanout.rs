//! Scenario 3: one instancer, 100 subscribers; the time from a new set published to the last
//! subscriber seeing it.
//!
//! The instancer is an `InstanceCache` (what every sdkit backend publishes through); the
//! subscribers are tokio tasks on the default multi-thread runtime, each awaiting its
//! `Subscription`. The publisher is a task on the same runtime, as a backend's watch loop is.
//! t0 is taken before the set is built from the "registry answer" (host and port pairs), the
//! same point as on the go-kit side (when its lookup function returns, on the instancer's
//! goroutine).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sd_core::{Event, Instance, InstanceCache, InstanceSet};

use super::{host, percentiles};
use crate::{alloc, Record};

pub fn run(scale: usize) -> Result<(), String> {
    for n in [10, 1000] {
        one(n, 100, 400 / scale + 10)?;
    }
    Ok(())
}

pub fn build(answer: &[(String, u16)]) -> InstanceSet {
    answer
        .iter()
        .map(|(h, p)| Instance::new(h.clone(), *p))
        .collect()
}

pub fn one(n: usize, subs: usize, rounds: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // Two registry answers that differ in one record; the rounds alternate between them.
    let answer = |k: u16| -> Vec<(String, u16)> {
        let mut v: Vec<(String, u16)> = (0..n).map(|i| (host(i), 8080)).collect();
        v[n / 2].1 = 9000 + k;
        v
    };
    let answers = [answer(0), answer(1)];
    let cache = Arc::new(InstanceCache::new());
    cache.update(Event::Instances(build(&answers[0])));

    let seen = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Instant>();
    let mut tasks = Vec::new();
    for _ in 0..subs {
        let mut sub = cache.subscribe();
        let (seen, tx) = (seen.clone(), tx.clone());
        tasks.push(rt.spawn(async move {
            while let Some(event) = sub.next().await {
                std::hint::black_box(&event);
                if seen.fetch_add(1, Ordering::AcqRel) + 1 == subs {
                    let _ = tx.send(Instant::now());
                }
            }
        }));
    }
    drop(tx);
    let wait = |rx: &mpsc::Receiver<Instant>| {
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "a subscriber did not see the new set within 10 s".to_string())
    };
    wait(&rx)?; // every subscriber has the initial state

    // The publisher task: on request k, take t0, build the set from answer k, publish.
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (t0_tx, t0_rx) = mpsc::channel::<Instant>();
    let publisher = {
        let cache = cache.clone();
        rt.spawn(async move {
            while let Some(k) = go_rx.recv().await {
                let t0 = Instant::now();
                cache.update(Event::Instances(build(&answers[k])));
                if t0_tx.send(t0).is_err() {
                    return;
                }
            }
        })
    };
    let mut lat = Vec::with_capacity(rounds);
    let mut m0 = 0;
    for r in 1..=rounds + 10 {
        if r == 11 {
            m0 = alloc::allocs();
        }
        seen.store(0, Ordering::Release);
        go_tx
            .send(r % 2)
            .map_err(|_| "the publisher task ended".to_string())?;
        let t0 = t0_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the publisher did not publish within 10 s".to_string())?;
        let t1 = wait(&rx)?;
        if r > 10 {
            lat.push(t1.duration_since(t0).as_nanos() as f64);
        }
    }
    let m1 = alloc::allocs();
    drop(go_tx);
    cache.close();
    rt.block_on(async {
        let _ = publisher.await;
        for t in tasks {
            let _ = t.await;
        }
    });
    let (p50, p99) = percentiles(&lat);
    let mut rec = Record::new("fanout", n, subs);
    rec.ops = Some(rounds);
    rec.ns_per_op = Some(p50);
    rec.p50_ns = Some(p50);
    rec.p99_ns = Some(p99);
    rec.allocs_per_op = (m1 - m0) as f64 / rounds as f64;
    rec.emit();
    Ok(())
}
