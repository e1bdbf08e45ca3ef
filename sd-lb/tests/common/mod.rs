//! Helpers shared by sd-lb's tests.
#![allow(dead_code)]

use std::sync::{mpsc, Arc};

use sd_core::{BoxError, DefaultEndpointer, FixedEndpointer, Instance, InstanceCache};
use sd_lb::{Balancer, RoundRobin};

/// `n` endpoints `10.0.0.1:1000+i` whose values are `i`, 0-based.
pub fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..n).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ))
}

/// Endpoints `10.0.0.1:1000+i` whose values are `i`, 0-based, with the given weights.
pub fn weighted(weights: &[u32]) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(weights.iter().enumerate().map(
        |(i, w)| {
            (
                Instance::builder("10.0.0.1", 1000 + i as u16)
                    .weight(*w)
                    .build(),
                i as u16,
            )
        },
    )))
}

/// The endpoint of `lb`'s current snapshot whose value is `v`.
pub fn find<B: Balancer<u16>>(lb: &B, v: u16) -> sd_core::Endpoint<u16> {
    lb.snapshot()
        .all()
        .iter()
        .find(|e| ***e == v)
        .unwrap()
        .clone()
}

/// `threads` threads pick `picks` times each from `balancer`, all at once; returns how often
/// each endpoint value `0..n` was picked, summed over the threads.
pub fn combined_counts<B: Balancer<u16> + ?Sized + 'static>(
    balancer: Arc<B>,
    threads: usize,
    picks: usize,
    n: usize,
) -> Vec<usize> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = balancer.clone();
            std::thread::spawn(move || {
                let mut c = vec![0usize; n];
                for _ in 0..picks {
                    c[*b.pick().unwrap() as usize] += 1;
                }
                c
            })
        })
        .collect();
    let mut total = vec![0usize; n];
    for h in handles {
        for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
            *t += c;
        }
    }
    total
}

/// A runtime (for the endpointer's tasks) and an empty endpointer fed by hand
/// (`DefaultEndpointer::apply`), whose endpoint values are `make(instance)`.
pub fn hand_fed<T: Send + Sync + 'static>(
    make: impl Fn(&Instance) -> T + Send + Sync + 'static,
) -> (tokio::runtime::Runtime, Arc<DefaultEndpointer<T>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = {
        let _rt = rt.enter();
        Arc::new(DefaultEndpointer::new(
            &InstanceCache::new(),
            move |i: &Instance| -> Result<T, BoxError> { Ok(make(i)) },
        ))
    };
    (rt, ep)
}

/// A thread that stays alive and picks once from `rr` per call of the returned function
/// (per-thread counters are held while their thread lives).
pub fn picker(
    rr: &Arc<RoundRobin<Arc<FixedEndpointer<u16>>, u16>>,
) -> (impl Fn() -> u16, std::thread::JoinHandle<()>) {
    let (to, rx) = mpsc::channel::<()>();
    let (tx, from) = mpsc::channel::<u16>();
    let rr = rr.clone();
    let thread = std::thread::spawn(move || {
        for () in rx {
            tx.send(*rr.pick().unwrap()).unwrap();
        }
    });
    let pick = move || {
        to.send(()).unwrap();
        from.recv().unwrap()
    };
    (pick, thread)
}
