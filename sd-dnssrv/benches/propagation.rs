//! Propagation latency on the real BIND server: an RFC 2136 registration or deregistration →
//! the `DefaultEndpointer` shows it. DNS is polled, so the latency is bounded by the refresh
//! interval (plus one update and one lookup): the bench prints that bound and the measured
//! p50/p99, and checks nothing took longer than the bound plus a slack for a loaded machine.
//!
//! ```sh
//! eval "$(SD_REGISTRIES=dns scripts/registries up)"
//! cargo bench -p sd-dnssrv --bench propagation                       # 100 changes, refresh 200ms
//! SD_BENCH_CHANGES=400 SD_BENCH_REFRESH=500ms cargo bench -p sd-dnssrv --bench propagation
//! ```
//!
//! Prints one JSON line per kind of change and overall, then a summary. Skips (exit 0) when
//! `SD_TEST_DNS` is not set, and does nothing unless run by `cargo bench`.

use std::time::{Duration, Instant};

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Instance, Instancer, Registrar, Registration,
    ServiceQuery,
};
use sd_dnssrv::DnsRegistry;

/// p50, p99 (nearest rank) and max of `v`: sd-testkit's summary, the one every backend's
/// propagation bench uses.
fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let s = sd_testkit::propagation::summarize(v.iter().copied());
    (s.p50, s.p99, s.max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("propagation: run with `cargo bench -p sd-dnssrv --bench propagation`");
        return;
    }
    let Some(addr) = std::env::var("SD_TEST_DNS").ok().filter(|a| !a.is_empty()) else {
        eprintln!("propagation: skipped, SD_TEST_DNS not set (eval \"$(scripts/registries up)\")");
        return;
    };
    let zone = std::env::var("SD_TEST_DNS_ZONE").unwrap_or_else(|_| "sd.test".into());
    let changes: usize = std::env::var("SD_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(2, 10_000);
    let refresh = std::env::var("SD_BENCH_REFRESH").unwrap_or_else(|_| "200ms".into());
    // min = max: every round waits exactly `refresh` (TTL 0 records would otherwise be read
    // at min_refresh), so the bound is simple to state.
    let registry = DnsRegistry::from_url(&format!(
        "dns+srv://{addr}/?zone={zone}&min_refresh={refresh}&max_refresh={refresh}&record_ttl=60s"
    ))
    .expect("dns+srv registry");
    let interval = registry.options().max_refresh;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let service = format!("bench-prop-{}", std::process::id());
    let (reg, dereg, update) = rt.block_on(async {
        let instancer = registry
            .dns_instancer(&ServiceQuery::new(&service))
            .await
            .expect("instancer");
        let endpointer =
            DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
                Ok(i.addr().to_string())
            });
        endpointer.ready().await;
        let registrar = registry
            .dns_registrar(Registration::new(
                &service,
                Instance::builder(format!("bench.{zone}"), 18_080).build(),
            ))
            .expect("registrar");
        let mut changed = endpointer.changes();
        let (mut reg, mut dereg, mut update) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..changes {
            let register = k % 2 == 0;
            // Start each change at a different point of the refresh cycle (spread over 100
            // steps), or every change would land just after the round that showed the last
            // one and wait a whole interval: the worst case, every time.
            let phase = (k * 37) % 100;
            tokio::time::sleep(interval * phase as u32 / 100).await;
            let t0 = Instant::now();
            if register {
                registrar.register().await.expect("register");
            } else {
                registrar.deregister().await.expect("deregister");
            }
            let sent = t0.elapsed();
            let want = usize::from(register);
            tokio::time::timeout(interval * 10 + Duration::from_secs(10), async {
                while endpointer.endpoints().all().len() != want {
                    changed.changed().await;
                }
            })
            .await
            .expect("change seen");
            let latency = t0.elapsed();
            update.push(sent);
            if register {
                reg.push(latency);
            } else {
                dereg.push(latency);
            }
        }
        registrar.deregister().await.expect("final deregister");
        endpointer.close().await;
        instancer.stop().await;
        (reg, dereg, update)
    });
    let all: Vec<Duration> = reg.iter().chain(dereg.iter()).copied().collect();
    let (update_p50, _, _) = stats(&update);
    let bound = interval + update_p50 * 2;
    for (kind, v) in [("register", &reg), ("deregister", &dereg), ("all", &all)] {
        let (p50, p99, max) = stats(v);
        println!(
            "{{\"bench\":\"dnssrv_propagation\",\"kind\":\"{kind}\",\"n\":{},\"refresh_ms\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            v.len(),
            interval.as_millis(),
            p50.as_micros(),
            p99.as_micros(),
            max.as_micros()
        );
    }
    let (p50, p99, max) = stats(&all);
    println!(
        "dnssrv propagation over {} changes, refresh {:.0} ms: bound {:.1} ms (refresh + update and lookup round trips), \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (update request alone: p50 {:.2} ms)",
        all.len(),
        ms(interval),
        ms(bound),
        ms(p50),
        ms(p99),
        ms(max),
        ms(update_p50)
    );
    if p99 > bound * 2 {
        eprintln!("propagation: p99 {:.1} ms is over twice the bound: the machine is loaded or the refresh is not honoured", ms(p99));
    }
}
