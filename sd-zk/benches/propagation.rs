//! Propagation latency on a real ZooKeeper server: a registration or deregistration (node
//! created or deleted by `ZkRegistrar`) → the `DefaultEndpointer` following a `ZkInstancer`
//! shows it. Target (issue 12): p99 ≤ 50 ms on loopback.
//!
//! ```sh
//! eval "$(SD_REGISTRIES=zk scripts/registries up)"
//! cargo bench -p sd-zk --bench propagation            # 400 changes (200 of each), persistent watch
//! SD_BENCH_CHANGES=1000 SD_ZK_WATCH=oneshot cargo bench -p sd-zk --bench propagation
//! ```
//!
//! The loop and the output (JSON lines, then a summary) are sd-testkit's
//! `propagation::bench_main`. Skips (exit 0) when `SD_TEST_ZK` is not set, and does nothing
//! unless run by `cargo bench`.

use std::sync::Arc;

fn main() {
    let watch = std::env::var("SD_ZK_WATCH").unwrap_or_else(|_| "auto".into());
    sd_testkit::propagation::bench_main("zk", "SD_TEST_ZK", "p99 <= 50 ms", |addr| {
        Ok(Arc::new(sd_zk::ZkRegistry::from_url(&format!(
            "zk://{addr}/sdkit-bench?watch={watch}"
        ))?))
    });
}
