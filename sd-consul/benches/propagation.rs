//! Propagation latency on a real Consul agent: a registration or deregistration → the
//! `DefaultEndpointer` shows it.
//!
//! ```sh
//! eval "$(scripts/registries up)"
//! cargo bench -p sd-consul --bench propagation            # 400 changes (200 of each)
//! SD_BENCH_CHANGES=1000 cargo bench -p sd-consul --bench propagation
//! ```
//!
//! The loop and the output (JSON lines, then a summary) are sd-testkit's
//! `propagation::bench_main`. Skips (exit 0) when `SD_TEST_CONSUL` is not set, and does
//! nothing unless run by `cargo bench`.

use std::sync::Arc;

fn main() {
    sd_testkit::propagation::bench_main("consul", "SD_TEST_CONSUL", "p99 <= 50 ms", |addr| {
        Ok(Arc::new(sd_consul::ConsulRegistry::from_url(&format!(
            "consul://{addr}?wait=60s"
        ))?))
    });
}
