//! Random pick and retry, mirroring `random` and `retry` in `bench/gokit/lbextra.go`.
//!
//! - `random`: `sd_lb::Random::with_seed` over a `DefaultEndpointer`, one thread (go-kit's
//!   random balancer is not safe on two). Like the Go loop, a pick is counted and the
//!   endpoint kept opaque (`black_box`), never read through. The pick is `Random::pick`, the
//!   endpoint borrowed from the thread's cached view (an `EndpointRef`, as the round-robin
//!   rows' `RoundRobin::pick`; until 2026-12-02 an owned `Endpoint`, two reference counts).
//! - `retry`: `sd_lb::Retry` (3 attempts, 1 s timeout, as `lb.Retry(3, time.Second, ..)`)
//!   over `RoundRobin::new`, called in a loop on a current-thread runtime; the endpoints
//!   answer at once. `retry_one_down`: one of the two instances fails every call, so half
//!   the calls take a second attempt.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_core::{DefaultEndpointer, Endpoint, FixedInstancer, Instance};
use sd_lb::{Random, Retry, RoundRobin};

use super::{current_thread, factory, instances};
use crate::{alloc, Record};

pub fn random(scale: usize) -> Result<(), String> {
    let iters = 10_000_000 / scale;
    let rt = current_thread()?;
    let _guard = rt.enter();
    for n in [10, 1000] {
        let instancer = FixedInstancer::new(instances(n));
        let ep = Arc::new(DefaultEndpointer::new(&instancer, factory));
        let r = Random::with_seed(ep, 42);
        let run = |count: usize| {
            (0..count)
                .filter(|_| Random::pick(&r).map(black_box).is_ok())
                .count()
        };
        run(iters / 10);
        let m0 = alloc::allocs();
        let t0 = Instant::now();
        let ok = run(iters);
        let d = t0.elapsed();
        let m1 = alloc::allocs();
        if ok != iters {
            return Err("random pick failed".into());
        }
        let mut rec = Record::new("random", n, 1);
        rec.ops = Some(iters);
        rec.ns_per_op = Some(d.as_nanos() as f64 / iters as f64);
        rec.allocs_per_op = (m1 - m0) as f64 / iters as f64;
        rec.emit();
    }
    Ok(())
}

pub fn retry(scale: usize) -> Result<(), String> {
    let calls = 200_000 / scale;
    for down in [false, true] {
        let rt = current_thread()?;
        let _guard = rt.enter();
        let second_port = if down { 8081 } else { 8080 };
        let instancer = FixedInstancer::new(vec![
            Instance::new("10.0.0.1", 8080),
            Instance::new("10.0.0.2", second_port),
        ]);
        let ep = Arc::new(DefaultEndpointer::new(&instancer, factory));
        let retry = Retry::new(RoundRobin::new(ep))
            .max_attempts(3)
            .timeout(Duration::from_secs(1));
        let run = |count: usize| {
            rt.block_on(async {
                let mut ok = 0usize;
                for i in 0..count {
                    let r = retry
                        .call(|e: Endpoint<Instance>| async move {
                            if e.port() == 8081 {
                                Err(std::io::Error::other("connection refused"))
                            } else {
                                Ok(black_box(i))
                            }
                        })
                        .await;
                    ok += usize::from(r.is_ok());
                }
                ok
            })
        };
        run(calls / 10);
        let m0 = alloc::allocs();
        let t0 = Instant::now();
        let ok = run(calls);
        let d = t0.elapsed();
        let m1 = alloc::allocs();
        let scenario = if down { "retry_one_down" } else { "retry" };
        if ok != calls {
            return Err(format!("{scenario}: {} calls failed", calls - ok));
        }
        let mut rec = Record::new(scenario, 2, 1);
        rec.ops = Some(calls);
        rec.ns_per_op = Some(d.as_nanos() as f64 / calls as f64);
        rec.allocs_per_op = (m1 - m0) as f64 / calls as f64;
        rec.emit();
    }
    Ok(())
}
