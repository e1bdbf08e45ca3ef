//! The per-thread cache keys a balancer's entry on the address of its liveness token and
//! holds a `Weak` on it, so that address cannot be given to another balancer while the
//! entry exists. These tests drop a balancer whose endpointer stays alive (so its entry
//! still looks current) and create the next one at once, in a loop: the allocator hands
//! the freed address out again at the first chance, so without the `Weak` a new balancer
//! would be served the dropped one's entry (another endpointer's endpoints, or another
//! endpoint type's memory). Run under valgrind too.

use std::sync::Arc;

use sd_core::{FixedEndpointer, Instance};
use sd_lb::{Random, RoundRobin};

fn endpointer<E: Clone + Send + Sync + 'static>(port: u16, value: E) -> Arc<FixedEndpointer<E>> {
    Arc::new(FixedEndpointer::new([(
        Instance::new("10.0.0.1", port),
        value,
    )]))
}

#[test]
fn a_new_balancer_is_never_served_a_dropped_ones_entry() {
    // Every endpointer stays alive: a dropped balancer's entry stays current.
    let mut kept = Vec::new();
    for round in 0..300u16 {
        let ep = endpointer(1 + round, round);
        kept.push(ep.clone());
        if round % 2 == 0 {
            let rr = RoundRobin::new(ep);
            assert_eq!(**rr.pick().unwrap(), round, "round robin, round {round}");
        } else {
            let r = Random::new(ep);
            assert_eq!(**r.pick().unwrap(), round, "random, round {round}");
        }
    }
}

#[test]
fn a_new_balancer_of_another_type_is_never_served_a_dropped_ones_entry() {
    let mut kept_n = Vec::new();
    let mut kept_s = Vec::new();
    for round in 0..300u16 {
        if round % 2 == 0 {
            let ep = endpointer(1 + round, u64::from(round));
            kept_n.push(ep.clone());
            let rr = RoundRobin::new(ep);
            assert_eq!(**rr.pick().unwrap(), u64::from(round), "round {round}");
        } else {
            let ep = endpointer(1 + round, format!("s{round}"));
            kept_s.push(ep.clone());
            let r = Random::new(ep);
            assert_eq!(
                *r.pick().unwrap().as_str(),
                format!("s{round}"),
                "round {round}"
            );
        }
    }
}
