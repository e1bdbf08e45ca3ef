//! `sd-compare`: the sdkit side of the side-by-side benchmark against go-kit's `sd` package.
//!
//! `bench/compare.sh` runs this binary and `bench/gokit` (the go-kit side) in turn and prints
//! the ratio table that goes into `docs/BENCHMARKS.md`. Each scenario uses the same
//! parameters and the same timing method as the Go program, and prints one JSON line:
//!
//! ```text
//! {"impl":"sdkit","scenario":"pick","n":10,"threads":1,"ns_per_op":..,"allocs_per_op":..}
//! ```
//!
//! Usage: `sd-compare [--scenarios pick,random,retry,update,fanout,memory,consul,zk,etcd,dns,eureka,updatescale,fanoutscale,consulreq,consul_scale,etcd_scale,etcd_scale_shared] [--quick]`;
//! `updatescale` and `fanoutscale` are the scale sweeps (`scenarios::sweep`), `consulreq` the
//! Consul agent request alone (`scenarios::consulreq`), `consul_scale`/`etcd_scale` 1 000
//! services watched at once (`scenarios::scale`); the extra scenario `breakdown` prints
//! where the sdkit update path spends its time.
//! Allocations are counted by a counting global allocator (every thread).

mod alloc;
mod scenarios;

use std::process::ExitCode;

use serde::Serialize;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// One JSON line. Optional fields are left out when unset.
#[derive(Serialize, Default)]
pub struct Record {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub scenario: &'static str,
    pub n: usize,
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_per_op: Option<f64>,
    pub allocs_per_op: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_instance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_bytes_per_instance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slices_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Scale scenarios: resident bytes after returning freed memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<f64>,
    /// Scale scenarios: resident bytes as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_raw_bytes: Option<f64>,
    /// Scale scenarios: live heap bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_bytes: Option<f64>,
    /// Scale scenarios: CPU time per second at rest, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_s: Option<f64>,
    /// Scale scenarios: time to start every instancer until all serve their first set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ns: Option<f64>,
    /// Scale scenarios: sockets open at rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<usize>,
}

impl Record {
    pub fn new(scenario: &'static str, n: usize, threads: usize) -> Self {
        Record {
            implementation: "sdkit",
            scenario,
            n,
            threads,
            ..Default::default()
        }
    }

    pub fn emit(&self) {
        match serde_json::to_string(self) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("sd-compare: json: {e}"),
        }
    }
}

fn main() -> ExitCode {
    // sdkit's warnings (a failing watch loop, a factory error) go to stderr; RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut scenarios = String::from("pick,random,retry,update,fanout");
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scenarios" | "-scenarios" => match args.next() {
                Some(s) => scenarios = s,
                None => {
                    eprintln!("sd-compare: --scenarios needs a value");
                    return ExitCode::from(2);
                }
            },
            "--quick" | "-quick" => quick = true,
            "--help" | "-h" => {
                eprintln!(
                    "usage: sd-compare [--scenarios pick,random,retry,update,fanout,memory,consul,zk,etcd,dns,eureka,updatescale,fanoutscale,consulreq,consul_scale,etcd_scale,etcd_scale_shared,breakdown] [--quick]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("sd-compare: unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let scale = if quick { 20 } else { 1 };
    for s in scenarios.split(',').map(str::trim) {
        let outcome = match s {
            "pick" => scenarios::pick::run(scale),
            "random" => scenarios::lbextra::random(scale),
            "retry" => scenarios::lbextra::retry(scale),
            "update" => {
                scenarios::update::run(scale).and_then(|()| scenarios::update::run_path(scale))
            }
            "fanout" => scenarios::fanout::run(scale),
            "fanoutscale" => scenarios::sweep::fanout(scale),
            "updatescale" => scenarios::sweep::updates(scale),
            "breakdown" => scenarios::update::breakdown(scale),
            "memory" => scenarios::memory::run(),
            "consul" => scenarios::registries::run(scale),
            "consulreq" => scenarios::consulreq::run(scale),
            "zk" => scenarios::registries::run_zk(scale),
            "etcd" => scenarios::registries::run_etcd(scale),
            "dns" => scenarios::dnssrv::run(scale),
            "eureka" => scenarios::eureka::run(scale),
            "consul_scale" => scenarios::scale::run_consul(scale),
            "etcd_scale" => scenarios::scale::run_etcd(scale, false),
            "etcd_scale_shared" => scenarios::scale::run_etcd(scale, true),
            "" => Ok(()),
            other => Err(format!("unknown scenario {other:?}")),
        };
        if let Err(e) = outcome {
            eprintln!("sd-compare: {s}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
