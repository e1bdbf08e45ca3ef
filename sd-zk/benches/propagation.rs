//! Propagation latency on a real ZooKeeper server: a registration or deregistration (node
//! created or deleted) → the `DefaultEndpointer` following a `ZkInstancer` shows it.
//! Target (issue 12): p99 ≤ 50 ms on loopback.
//!
//! ```sh
//! eval "$(SD_REGISTRIES=zk scripts/registries up)"
//! cargo bench -p sd-zk --bench propagation            # 400 changes (200 of each), persistent watch
//! SD_BENCH_CHANGES=1000 SD_ZK_WATCH=oneshot cargo bench -p sd-zk --bench propagation
//! ```
//!
//! Prints one JSON line per kind of change and overall, then a summary. Skips (exit 0) when
//! `SD_TEST_ZK` is not set, and does nothing unless run by `cargo bench`.

use std::time::Duration;

use sd_testkit::propagation::{propagation, summarize, Change, Summary};
use sd_zk::ZkRegistry;

fn json(watch: &str, kind: &str, s: &Summary) -> String {
    format!(
        "{{\"bench\":\"zk_propagation\",\"watch\":\"{watch}\",\"kind\":\"{kind}\",\"n\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"mean_us\":{}}}",
        s.n,
        s.p50.as_micros(),
        s.p99.as_micros(),
        s.max.as_micros(),
        s.mean.as_micros()
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("propagation: run with `cargo bench -p sd-zk --bench propagation`");
        return;
    }
    let Some(addr) = std::env::var("SD_TEST_ZK").ok().filter(|a| !a.is_empty()) else {
        eprintln!("propagation: skipped, SD_TEST_ZK not set (eval \"$(scripts/registries up)\")");
        return;
    };
    let changes: usize = std::env::var("SD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
        .clamp(2, 10_000);
    let watch = std::env::var("SD_ZK_WATCH").unwrap_or_else(|_| "auto".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = ZkRegistry::from_url(&format!("zk://{addr}/sdkit-bench?watch={watch}"))
        .expect("zk registry");
    let service = format!("bench-propagation-{}", std::process::id());
    // Warm-up: the session, the parents, the server's JIT.
    rt.block_on(propagation(
        &registry,
        &format!("{service}-warm"),
        20,
        Duration::from_secs(5),
    ))
    .expect("warm-up");
    let samples = rt
        .block_on(propagation(
            &registry,
            &service,
            changes,
            Duration::from_secs(5),
        ))
        .expect("propagation run");
    let of = |c: Change| summarize(samples.iter().filter(|s| s.change == c).map(|s| s.latency));
    let all = summarize(samples.iter().map(|s| s.latency));
    let req = summarize(samples.iter().map(|s| s.request));
    println!("{}", json(&watch, "register", &of(Change::Register)));
    println!("{}", json(&watch, "deregister", &of(Change::Deregister)));
    println!("{}", json(&watch, "all", &all));
    println!("{}", json(&watch, "registrar_call_only", &req));
    println!(
        "zk propagation ({watch} watch) over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (registrar call alone: p50 {:.2} ms); target p99 <= 50 ms",
        all.n,
        all.p50.as_secs_f64() * 1e3,
        all.p99.as_secs_f64() * 1e3,
        all.max.as_secs_f64() * 1e3,
        req.p50.as_secs_f64() * 1e3,
    );
}
