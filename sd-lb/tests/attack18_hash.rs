//! Attack on issue 18's weighted Maglev `ConsistentHash`: keys spread in proportion to the
//! instance weights. Held up.

use std::sync::Arc;

use sd_core::{FixedEndpointer, Instance};
use sd_lb::{Balancer, ConsistentHash, Request};

#[test]
fn keys_follow_the_weights() {
    let weights = [1u32, 2, 3, 4];
    let ep = Arc::new(FixedEndpointer::new(weights.iter().enumerate().map(
        |(i, &w)| {
            (
                Instance::builder("10.0.0.1", 1000 + i as u16)
                    .weight(w)
                    .build(),
                i,
            )
        },
    )));
    let hash = ConsistentHash::new(ep);
    hash.refresh();
    let n = 100_000u64;
    let mut c = [0usize; 4];
    for k in 0..n {
        c[**hash
            .pick_with(&Request::new().with_key(k))
            .unwrap()
            .endpoint()] += 1;
    }
    for (i, &w) in weights.iter().enumerate() {
        let share = c[i] as f64 / n as f64;
        assert!(
            (share - w as f64 / 10.0).abs() < 0.02,
            "endpoint {i} (weight {w}): {share:.3} ({c:?})"
        );
    }
}
