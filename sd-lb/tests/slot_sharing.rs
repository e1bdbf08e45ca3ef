//! From the review of issue 9, item 14: `RoundRobin::per_thread` beyond its 32 slots. Its own test
//! binary: slots are process-wide, so no other test may hold any.

use std::sync::Arc;

use sd_core::{FixedEndpointer, Instance};
use sd_lb::RoundRobin;

mod common;

use common::picker;

/// The doc of `RoundRobin`: up to 32 threads have a counter of their own; beyond that a
/// thread shares the counter of another (round_robin.rs, `Lease::acquire`), so its own
/// sequence may skip endpoints while the picks of all threads together stay even.
#[test]
fn a_thread_beyond_the_slots_shares_a_counter_and_the_total_stays_even() {
    let ep = Arc::new(FixedEndpointer::new(
        (0..2).map(|p| (Instance::new("10.0.0.1", 1000 + p), p)),
    ));
    let rr = Arc::new(RoundRobin::per_thread(ep));
    // 32 live threads, each holding a slot.
    let owners: Vec<_> = (0..32).map(|_| picker(&rr)).collect();
    let mut all = Vec::new();
    for (pick, _) in &owners {
        all.push(pick());
    }
    // The 33rd shares the slot of one of them.
    let (extra, extra_thread) = picker(&rr);
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(extra());
        // Every owner picks once in between (one of them is the extra thread's slot-mate).
        for (pick, _) in &owners {
            all.push(pick());
        }
    }
    all.extend(&seen);
    drop(extra);
    extra_thread.join().unwrap();
    for (pick, t) in owners {
        drop(pick);
        t.join().unwrap();
    }
    // As documented: one thread's own sequence may skip endpoints when it shares a counter
    // (printed), but every counter is a strict rotation, so over all threads the two
    // endpoints differ by at most one pick per counter.
    eprintln!("the 33rd thread's 20 picks over 2 endpoints: {seen:?}");
    let ones = all.iter().filter(|&&v| v == 1).count() as i64;
    let zeros = all.len() as i64 - ones;
    assert!(
        (ones - zeros).abs() <= 32,
        "{} picks over all threads: {zeros} / {ones}",
        all.len()
    );
}
