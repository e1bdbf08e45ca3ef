//! The Consul agent request alone (`consulreq`; the "agent request" row of the `consul`
//! scenario, measured by itself): `pairs` registrations and deregistrations of one instance
//! in turn against the agent at `SD_TEST_CONSUL`, each request timed, no instancer running.
//!
//! Three clients, in interleaved blocks of 50 pairs so that drift in the agent's speed
//! spreads evenly over them:
//! - `consul_request`: `ConsulRegistrar::register` / `deregister` (what the `consul`
//!   scenario's request row times; the go-kit side's `consul_request` is go-kit's
//!   `consul.Client.Register` / `Deregister` over `consul/api`);
//! - `consul_request_client`: `sd_consul::Client::register` / `deregister` (one PUT each,
//!   no registrar state, no keep-alive task);
//! - `consul_request_raw`: a bare `reqwest::Client` sending the same two PUTs with the same
//!   body, for what reqwest and hyper cost by themselves.
//!
//! Each record has the p50 of all requests and, apart, of the registrations and of the
//! deregistrations (`register_p50_ns`, `deregister_p50_ns`), and what the client process
//! spent per request, whatever the load: CPU time (`cpu_ns_per_op`) and times a thread was
//! put on a CPU (`slices_per_op`, each a wake-up), summed over the process's threads from
//! `/proc/self/task/*/schedstat` (as on the go-kit side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_consul::{Client, ClientConfig, ConsulRegistry};
use sd_core::{Instance, Registration};

use super::registries::registry_addr;
use super::{multi_thread, percentiles, unique_service};
use crate::Record;

const BLOCK: usize = 50;

/// CPU time (ns) and times put on a CPU so far, summed over the threads of this process
/// (`/proc/self/task/*/schedstat`: run time, wait time, timeslices); zeros where unreadable.
pub fn process_cpu() -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [run, _wait, slices, ..] = f[..] {
            total.0 += run;
            total.1 += slices;
        }
    }
    total
}

pub fn run(scale: usize) -> Result<(), String> {
    let pairs = (1000 / scale).max(BLOCK);
    let Some(addr) = registry_addr("consul_request", "SD_TEST_CONSUL")? else {
        return Ok(());
    };
    let rt = multi_thread()?;
    let _guard = rt.enter();
    let service = unique_service("sdbench-sdkit-req");
    let id = format!("{service}-1");
    let registry =
        ConsulRegistry::from_url(&format!("consul://{addr}")).map_err(|e| e.to_string())?;
    let registrar = Arc::new(
        registry
            .consul_registrar(Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 18_080)
                    .id(id.clone())
                    .build(),
            ))
            .map_err(|e| e.to_string())?,
    );
    let body = registrar.registration_body();
    let client = Client::new(ClientConfig::new(addr.as_str())).map_err(|e| e.to_string())?;
    let raw = reqwest::Client::new();
    let raw_body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let register_url = format!("http://{addr}/v1/agent/service/register");
    let deregister_url = format!("http://{addr}/v1/agent/service/deregister/{id}");

    let mut times: [Vec<f64>; 3] = Default::default();
    let mut cpu = [(0u64, 0u64); 3];
    rt.block_on(async {
        use sd_core::Registrar;
        for block in 0..pairs / BLOCK + 1 {
            let warm = block == 0; // the first block of each warms up
            for (k, out) in times.iter_mut().enumerate() {
                let c0 = process_cpu();
                for i in 0..2 * BLOCK {
                    let register = i % 2 == 0;
                    let t0 = Instant::now();
                    match k {
                        0 if register => registrar.register().await.map_err(|e| e.to_string())?,
                        0 => registrar.deregister().await.map_err(|e| e.to_string())?,
                        1 if register => client.register(&body).await.map_err(|e| e.to_string())?,
                        1 => client
                            .deregister(&id)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())?,
                        _ => {
                            let req = if register {
                                raw.put(&register_url).body(raw_body.clone())
                            } else {
                                raw.put(&deregister_url)
                            };
                            let resp = req
                                .timeout(Duration::from_secs(10))
                                .send()
                                .await
                                .map_err(|e| e.to_string())?;
                            if !resp.status().is_success() {
                                return Err(format!("raw request: HTTP {}", resp.status()));
                            }
                        }
                    }
                    if !warm {
                        out.push(t0.elapsed().as_nanos() as f64);
                    }
                }
                if !warm {
                    let c1 = process_cpu();
                    cpu[k].0 += c1.0.saturating_sub(c0.0);
                    cpu[k].1 += c1.1.saturating_sub(c0.1);
                }
            }
        }
        Ok::<(), String>(())
    })?;
    let _ = rt.block_on(client.deregister(&id));
    for ((name, lat), (cpu_ns, slices)) in [
        "consul_request",
        "consul_request_client",
        "consul_request_raw",
    ]
    .into_iter()
    .zip(&times)
    .zip(cpu)
    {
        let (p50, p99) = percentiles(lat);
        // The requests alternate: registrations at even indexes, deregistrations at odd.
        let half =
            |parity: usize| -> Vec<f64> { lat.iter().skip(parity).step_by(2).copied().collect() };
        let mut r = Record::new(name, 1, 1);
        r.register_p50_ns = Some(percentiles(&half(0)).0);
        r.deregister_p50_ns = Some(percentiles(&half(1)).0);
        r.ops = Some(lat.len());
        r.cpu_ns_per_op = Some(cpu_ns as f64 / lat.len().max(1) as f64);
        r.slices_per_op = Some(slices as f64 / lat.len().max(1) as f64);
        r.ns_per_op = Some(p50);
        r.p50_ns = Some(p50);
        r.p99_ns = Some(p99);
        r.emit();
    }
    Ok(())
}
