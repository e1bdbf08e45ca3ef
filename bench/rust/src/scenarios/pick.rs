//! Scenario 1: round robin pick over an endpointer with N = 10 and 1 000 endpoints, on 1
//! thread and on 2 threads in parallel (go-kit: `sd.NewEndpointer` + `lb.NewRoundRobin`).
//!
//! `pick` is `sd_lb::RoundRobin::new`, go-kit's semantics (one shared counter, strict
//! rotation across threads). `pick_per_thread` is `RoundRobin::per_thread` (one counter per
//! thread), the variant sd-lb offers for hot paths on several cores; the table compares both
//! with go-kit's round robin. Each thread does `iters` picks; ns/op is the wall time from
//! the start signal to the last thread done, divided by `iters` (ns per pick per thread),
//! exactly as on the Go side.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sd_core::{DefaultEndpointer, FixedInstancer};
use sd_lb::{Balancer, RoundRobin};

use super::{current_thread, factory, instances};
use crate::{alloc, Record};

pub fn run(scale: usize) -> Result<(), String> {
    let iters = 10_000_000 / scale;
    for n in [10, 1000] {
        for threads in [1, 2] {
            one("pick", n, threads, iters, RoundRobin::new)?;
            one("pick_per_thread", n, threads, iters, RoundRobin::per_thread)?;
        }
    }
    Ok(())
}

type Ep = Arc<DefaultEndpointer<sd_core::Instance>>;

fn one(
    scenario: &'static str,
    n: usize,
    threads: usize,
    iters: usize,
    make: fn(Ep) -> RoundRobin<Ep>,
) -> Result<(), String> {
    let rt = current_thread()?;
    let _guard = rt.enter();
    let instancer = FixedInstancer::new(instances(n));
    let ep = Arc::new(DefaultEndpointer::new(&instancer, factory));
    let rr = make(ep);
    if rr.pick().is_err() {
        return Err("round robin has no endpoint".into());
    }
    let run = |count: usize| -> Result<Duration, String> {
        let start = Barrier::new(threads + 1);
        let (d, ok) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let mut ok = 0usize;
                        for _ in 0..count {
                            if let Ok(e) = rr.pick() {
                                black_box(&e);
                                ok += 1;
                            }
                        }
                        ok
                    })
                })
                .collect();
            start.wait();
            let t0 = Instant::now();
            let ok: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            (t0.elapsed(), ok)
        });
        if ok != threads * count {
            return Err("pick failed".into());
        }
        Ok(d)
    };
    run(iters / 10)?; // warm up
    let m0 = alloc::allocs();
    let d = run(iters)?;
    let m1 = alloc::allocs();
    let mut r = Record::new(scenario, n, threads);
    r.ops = Some(iters * threads);
    r.ns_per_op = Some(d.as_nanos() as f64 / iters as f64);
    // Spawning the threads allocates a little; over 10 M picks it is well below 0.01/pick.
    r.allocs_per_op = (m1 - m0) as f64 / (iters * threads) as f64;
    r.emit();
    Ok(())
}
