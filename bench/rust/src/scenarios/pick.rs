//! Scenario 1: round robin pick over an endpointer with N = 10 and 1 000 endpoints, on 1
//! thread and on 2 threads in parallel (go-kit: `sd.NewEndpointer` + `lb.NewRoundRobin`).
//!
//! - `pick` is `sd_lb::RoundRobin::new` and `RoundRobin::pick`, what users call: one
//!   balancer shared by the threads, a rotation per thread (the default since 2026-12), the
//!   endpoint borrowed from the thread's cached snapshot (`EndpointRef`).
//! - `pick_strict` is `RoundRobin::strict`, go-kit's semantics (LB-2): one shared counter,
//!   a strict rotation across threads; the like-for-like row for go-kit's shared counter.
//! - `pick_local` is `sd_lb::LocalRoundRobin`, one handle per thread with a cached snapshot,
//!   returning the endpoint by reference.
//!
//! (Until 2026-12 `pick` was the strict shared counter returning an owned `Endpoint`, and a
//! `pick_per_thread` row measured `RoundRobin::per_thread`, which the per-thread default
//! replaced.)
//!
//! Each pick does the same work as the Go loop (`e, err := rr.Endpoint(); if err == nil &&
//! e != nil { ok++ }`): pick, count a success, keep the endpoint opaque (`black_box`),
//! never read through it. (Until 2026-12 ours also read the port through the endpoint, one
//! more memory access per pick than go-kit's loop did.)
//!
//! The table compares all three with go-kit's round robin. Each thread does `iters` picks;
//! ns/op is the wall time from the start signal to the last thread done, divided by `iters`
//! (ns per pick per thread), exactly as on the Go side.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sd_core::{DefaultEndpointer, FixedInstancer, Instance};
use sd_lb::{LocalRoundRobin, RoundRobin};

use super::{current_thread, factory, instances};
use crate::{alloc, Record};

type Ep = Arc<DefaultEndpointer<Instance>>;

pub fn run(scale: usize) -> Result<(), String> {
    let iters = 10_000_000 / scale;
    let rt = current_thread()?;
    let _guard = rt.enter();
    for n in [10, 1000] {
        let instancer = FixedInstancer::new(instances(n));
        let ep: Ep = Arc::new(DefaultEndpointer::new(&instancer, factory));
        for threads in [1, 2] {
            let shared = RoundRobin::new(ep.clone());
            measure("pick", n, threads, iters, || {
                || shared.pick().map(black_box).is_ok()
            })?;
            let strict = RoundRobin::strict(ep.clone());
            measure("pick_strict", n, threads, iters, || {
                || strict.pick().map(black_box).is_ok()
            })?;
            measure("pick_local", n, threads, iters, || {
                let mut rr = LocalRoundRobin::new(ep.clone());
                move || rr.pick().map(black_box).is_ok()
            })?;
        }
    }
    Ok(())
}

/// Runs `iters` picks on each of `threads` threads; `make` builds a thread's picker (on that
/// thread, before the start signal).
fn measure<M, P>(
    scenario: &'static str,
    n: usize,
    threads: usize,
    iters: usize,
    make: M,
) -> Result<(), String>
where
    M: Fn() -> P + Sync,
    P: FnMut() -> bool,
{
    let run = |count: usize| -> Result<Duration, String> {
        let start = Barrier::new(threads + 1);
        let (d, ok) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut pick = make();
                        start.wait();
                        let mut ok = 0usize;
                        for _ in 0..count {
                            ok += usize::from(pick());
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
            return Err(format!("{scenario}: pick failed"));
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
    // Spawning the threads allocates a little; over 10 M picks it is far below 0.01/pick.
    r.allocs_per_op = (m1 - m0) as f64 / (iters * threads) as f64;
    r.emit();
    Ok(())
}
