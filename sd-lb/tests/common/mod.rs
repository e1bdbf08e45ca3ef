//! Helpers shared by sd-lb's tests.
#![allow(dead_code)]

use std::sync::Arc;

use sd_core::{FixedEndpointer, Instance};
use sd_lb::Balancer;

/// `n` endpoints `10.0.0.1:1000+i` whose values are `i`, 0-based.
pub fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (0..n).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ))
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
