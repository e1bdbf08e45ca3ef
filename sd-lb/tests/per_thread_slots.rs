//! Issue 9, item 14: each live thread picking from a `RoundRobin::per_thread` has a counter
//! of its own while slots are free. (Its own test binary: no other test's threads take
//! slots meanwhile.)

mod common;

use std::sync::Arc;

use common::{fixed, picker};
use sd_lb::{Balancer, RoundRobin};

/// Regression: slots were `thread number mod 16`, so a thread started after fifteen others
/// (that had ended) shared the counter of a thread still alive, and the two advanced each
/// other's rotation. Now a slot is held while its thread lives and given back when it ends.
#[test]
fn two_live_threads_never_share_a_per_thread_counter() {
    let rr = Arc::new(RoundRobin::per_thread(fixed(5)));
    // Thread A stays alive and picks on request.
    let (pick_a, a) = picker(&rr);
    let first = pick_a();
    // Fifteen threads pick once and end (under the old numbering, the next thread's slot is
    // then A's).
    for _ in 0..15 {
        let rr = rr.clone();
        std::thread::spawn(move || {
            let _ = rr.pick().unwrap();
        })
        .join()
        .unwrap();
    }
    // Thread B picks, interleaved with A: each thread's own rotation must stay strict.
    let (pick_b, b) = picker(&rr);
    let (mut last_a, mut last_b) = (first, pick_b());
    for _ in 0..20 {
        let x = pick_a();
        assert_eq!(
            x,
            (last_a + 1) % 5,
            "thread A's rotation was advanced by another thread"
        );
        last_a = x;
        let y = pick_b();
        assert_eq!(
            y,
            (last_b + 1) % 5,
            "thread B's rotation was advanced by another thread"
        );
        last_b = y;
    }
    drop(pick_a);
    drop(pick_b);
    a.join().unwrap();
    b.join().unwrap();
}
