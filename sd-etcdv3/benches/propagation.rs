//! Propagation latency on a real etcd: a put or delete of one key → the `DefaultEndpointer`
//! following an `EtcdInstancer` shows it; and the same with 10 000 other keys in the
//! service's directory, to show that one change costs one watch event, not a re-read.
//!
//! ```sh
//! eval "$(scripts/registries up etcd)"
//! cargo bench -p sd-etcdv3 --bench propagation      # 400 changes per scenario
//! SD_BENCH_CHANGES=1000 SD_BENCH_KEYS=10000 cargo bench -p sd-etcdv3 --bench propagation
//! ```
//!
//! Target (issue 11): p99 ≤ 50 ms on loopback. Prints one JSON line per scenario and a
//! summary. Skips (exit 0) when `SD_TEST_ETCD` is not set, and does nothing unless run by
//! `cargo bench`. `SD_BENCH_ETCD` picks another server (e.g. `$SD_TEST_ETCD35`).

use std::time::{Duration, Instant};

use sd_core::{BoxError, DefaultEndpointer, Endpointer, Instance, Instancer, ServiceQuery};
use sd_etcdv3::etcd_client::{DeleteOptions, Txn, TxnOp};
use sd_etcdv3::EtcdRegistry;
use sd_testkit::propagation::{summarize, Summary};

fn json(scenario: &str, keys: usize, s: &Summary, full_reads: u64, events: u64) -> String {
    format!(
        "{{\"bench\":\"etcd_propagation\",\"scenario\":\"{scenario}\",\"other_keys\":{keys},\"n\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"mean_us\":{},\"full_reads\":{full_reads},\"events\":{events}}}",
        s.n,
        s.p50.as_micros(),
        s.p99.as_micros(),
        s.max.as_micros(),
        s.mean.as_micros()
    )
}

/// Alternating put / delete of one key, each timed until the endpointer shows it.
async fn run(
    registry: &EtcdRegistry,
    service: &str,
    keys: usize,
    changes: usize,
) -> (Summary, u64, u64) {
    let client = registry.client().clone();
    let dir = client.service_dir(service);
    let mut raw = client.etcd().await.expect("connect");
    // Fill the directory with `keys` other instances, 100 puts per transaction (etcd allows
    // 128 operations per transaction by default).
    let ops: Vec<TxnOp> = (0..keys)
        .map(|i| {
            TxnOp::put(
                format!("{dir}other-{i:05}"),
                format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256),
                None,
            )
        })
        .collect();
    for chunk in ops.chunks(100) {
        raw.txn(Txn::new().and_then(chunk.to_vec()))
            .await
            .expect("fill");
    }
    let instancer = registry.etcd_instancer(&ServiceQuery::new(service)).await;
    let endpointer =
        DefaultEndpointer::new(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(i.id().to_string())
        });
    endpointer.ready().await;
    let key = format!("{dir}probe");
    let mut changed = endpointer.changes();
    let mut latencies = Vec::with_capacity(changes);
    for k in 0..changes {
        let present = k % 2 == 0;
        let t0 = Instant::now();
        if present {
            client.put(&key, b"127.0.0.1:18080", 0).await.expect("put");
        } else {
            client.delete(&key).await.expect("delete");
        }
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let has = endpointer
                    .endpoints()
                    .all()
                    .iter()
                    .any(|e| e.as_str() == "probe");
                if has == present {
                    return;
                }
                assert!(changed.changed().await, "endpointer closed");
            }
        })
        .await;
        seen.unwrap_or_else(|_| panic!("change {k} not visible within 5 s"));
        latencies.push(t0.elapsed());
    }
    let (full_reads, events) = (instancer.stats().full_reads(), instancer.stats().events());
    endpointer.close().await;
    instancer.stop().await;
    raw.delete(dir, Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("clean up");
    (summarize(latencies), full_reads, events)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("propagation: run with `cargo bench -p sd-etcdv3 --bench propagation`");
        return;
    }
    let Some(addr) = ["SD_BENCH_ETCD", "SD_TEST_ETCD"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|a| !a.is_empty()))
    else {
        eprintln!(
            "propagation: skipped, SD_TEST_ETCD not set (eval \"$(scripts/registries up etcd)\")"
        );
        return;
    };
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let changes = env("SD_BENCH_CHANGES", 400).clamp(2, 10_000);
    let keys = env("SD_BENCH_KEYS", 10_000).clamp(1, 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = EtcdRegistry::from_url(&format!(
        "etcd://{addr}?prefix=/sdkit-bench-{}",
        std::process::id()
    ))
    .expect("etcd registry");
    let service = format!("bench-propagation-{}", std::process::id());
    rt.block_on(run(&registry, &format!("{service}-warm"), 0, 20));
    for (scenario, others) in [("one_key", 0), ("among_many", keys)] {
        let (s, full_reads, events) = rt.block_on(run(
            &registry,
            &format!("{service}-{scenario}"),
            others,
            changes,
        ));
        println!("{}", json(scenario, others, &s, full_reads, events));
        println!(
            "etcd propagation ({scenario}, {others} other keys) over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {full_reads} full read(s), {events} events applied one by one",
            s.n,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
        );
    }
}
