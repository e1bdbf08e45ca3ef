//! Propagation latency on a real Consul agent: a registration or deregistration → the
//! `DefaultEndpointer` shows it.
//!
//! ```sh
//! eval "$(scripts/registries up)"
//! cargo bench -p sd-consul --bench propagation            # 400 changes (200 of each)
//! SD_BENCH_CHANGES=1000 cargo bench -p sd-consul --bench propagation
//! ```
//!
//! Prints one JSON line per kind of change and overall, then a summary. Skips (exit 0) when
//! `SD_TEST_CONSUL` is not set, and does nothing unless run by `cargo bench`.

use std::time::Duration;

use sd_consul::bench::{propagation, summarize, Change, Summary};
use sd_consul::ConsulRegistry;

fn json(kind: &str, s: &Summary) -> String {
    format!(
        "{{\"bench\":\"consul_propagation\",\"kind\":\"{kind}\",\"n\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"mean_us\":{}}}",
        s.n,
        s.p50.as_micros(),
        s.p99.as_micros(),
        s.max.as_micros(),
        s.mean.as_micros()
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("propagation: run with `cargo bench -p sd-consul --bench propagation`");
        return;
    }
    let Some(addr) = std::env::var("SD_TEST_CONSUL")
        .ok()
        .filter(|a| !a.is_empty())
    else {
        eprintln!(
            "propagation: skipped, SD_TEST_CONSUL not set (eval \"$(scripts/registries up)\")"
        );
        return;
    };
    let changes: usize = std::env::var("SD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
        .clamp(2, 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry =
        ConsulRegistry::from_url(&format!("consul://{addr}?wait=60s")).expect("consul registry");
    let service = format!("bench-propagation-{}", std::process::id());
    // Warm-up: connections, agent caches.
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
    let reg = summarize(
        samples
            .iter()
            .filter(|s| s.change == Change::Register)
            .map(|s| s.latency),
    );
    let dereg = summarize(
        samples
            .iter()
            .filter(|s| s.change == Change::Deregister)
            .map(|s| s.latency),
    );
    let all = summarize(samples.iter().map(|s| s.latency));
    let req = summarize(samples.iter().map(|s| s.request));
    println!("{}", json("register", &reg));
    println!("{}", json("deregister", &dereg));
    println!("{}", json("all", &all));
    println!("{}", json("agent_request_only", &req));
    println!(
        "consul propagation over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (agent request alone: p50 {:.2} ms)",
        all.n,
        all.p50.as_secs_f64() * 1e3,
        all.p99.as_secs_f64() * 1e3,
        all.max.as_secs_f64() * 1e3,
        req.p50.as_secs_f64() * 1e3,
    );
}
