//! Scale (issue 17): 1 000 services × 20 instances watched at once, in one process, through
//! one Consul agent (`consul_scale`, `SD_TEST_CONSUL`) or one etcd 3.4 server (`etcd_scale`,
//! `SD_TEST_ETCD`), mirroring `bench/gokit/scale.go`.
//!
//! Setup (not measured): the instances are written straight through the registry's API in
//! batches (Consul: `/v1/txn`, 128 service registrations a transaction, on 20 catalog nodes
//! of this run; etcd: transactions of 128 puts attached to one 10-minute lease), under names
//! unique to the process. They are removed at the end, on error paths too (Consul: the 20
//! nodes are deregistered, and nodes left by a run that died are swept at the next start;
//! etcd: the keys are deleted and the lease revoked, and would expire with it otherwise).
//!
//! Then one instancer and one `DefaultEndpointer` per service, all sharing one client, as a
//! user would (ours: `ConsulInstancer` / `EtcdInstancer`; go-kit: `consul.NewInstancer` /
//! `etcdv3.NewInstancer` + `sd.NewEndpointer`), started one after the other, and:
//! - resident memory once every endpointer serves its 20 instances, minus the reading
//!   before the first instancer started: as is, and after returning freed memory to the OS
//!   (`malloc_trim`; Go: `runtime.GC` + `debug.FreeOSMemory`); and the live heap;
//! - CPU at rest: `getrusage(RUSAGE_SELF)` user + system time over an idle window (10 s;
//!   `SD_SCALE_IDLE_S` overrides it) that starts 2 s after the last endpointer is ready,
//!   while every blocking query (Consul) or watch (etcd) is parked; with the sockets the
//!   process has open. Our Consul blocking queries wait the client's default (60 s;
//!   `SD_SCALE_CONSUL_WAIT_S` sets another), go-kit's the agent's default (5 min): a window
//!   longer than 60 s sees our queries come back empty and be asked again;
//! - the time to apply a change to one service: an instance added to a random service
//!   (then removed), from just before the registry request to that service's endpointer
//!   serving 21 (then 20) endpoints; 50 services, so 100 changes.
//!
//! Every endpointer is checked to serve exactly its 20 addresses before the measurement.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sd_consul::{Client as ConsulClient, ClientConfig as ConsulConfig, ConsulInstancer};
use sd_core::{DefaultEndpointer, Endpointer, Instance, Instancer, ServiceQuery};
use sd_etcdv3::etcd_client::{DeleteOptions, PutOptions, Txn, TxnOp};
use sd_etcdv3::{Client as EtcdClient, ClientConfig as EtcdConfig, EtcdInstancer};
use serde_json::json;

use super::memory::{rss, settle};
use super::{factory, host, percentiles};
use crate::{alloc, Record};

/// Instances per service.
const PER: usize = 20;
/// Registry writes per setup transaction (etcd 3.4's and Consul's default maximum).
const BATCH: usize = 128;
/// How long every wait in the scenario may take at most.
const WAIT: Duration = Duration::from_secs(30);

/// The sizes of one run.
struct Params {
    services: usize,
    changes: usize,
    idle: Duration,
}

fn params(scale: usize) -> Params {
    let quick = scale > 1;
    let idle = std::env::var("SD_SCALE_IDLE_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| (1..=600).contains(&s))
        .map_or(
            Duration::from_secs(if quick { 1 } else { 10 }),
            Duration::from_secs,
        );
    Params {
        services: if quick { 50 } else { 1000 },
        changes: if quick { 5 } else { 50 },
        idle,
    }
}

/// The address of instance `j` of service `i`, as on the Go side.
fn instance_host(i: usize, j: usize) -> String {
    host(i * PER + j)
}

/// The services picked for the changes: xorshift64 from a fixed seed, as on the Go side.
fn picks(services: usize, changes: usize) -> Vec<usize> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..changes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % services as u64) as usize
        })
        .collect()
}

/// User + system CPU time of the whole process, in ns.
fn cpu_ns() -> Result<u64, String> {
    // SAFETY: `rusage` is plain data (integers and timevals), so the all-zero value is a valid
    // one; getrusage writes at most one `rusage` through the pointer, which points to that
    // local, live and exclusively borrowed for the call. RUSAGE_SELF is a valid `who`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()));
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Ok(ns(ru.ru_utime) + ns(ru.ru_stime))
}

/// The sockets the process has open (/proc/self/fd entries that are sockets).
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// One registry as the scenario drives it.
trait Backend {
    /// The instancer of service `i`.
    type Instancer: Instancer + 'static;
    /// Writes every instance of every service.
    async fn setup(&self, services: usize) -> Result<(), String>;
    /// Starts the instancer of service `i`.
    async fn instancer(&self, i: usize) -> Result<Self::Instancer, String>;
    /// Adds (`true`) or removes (`false`) the extra instance of service `i`.
    async fn change(&self, i: usize, add: bool) -> Result<(), String>;
    /// Removes everything the run wrote.
    async fn cleanup(&self) -> Result<(), String>;
}

/// Runs the scenario on `backend`, then cleans up whatever happened.
fn run_on<B: Backend>(
    scenario: &'static str,
    rt: &tokio::runtime::Runtime,
    backend: B,
    p: &Params,
) -> Result<(), String> {
    let outcome = rt.block_on(async {
        backend.setup(p.services).await?;
        measure(scenario, &backend, p).await
    });
    let cleaned = rt.block_on(backend.cleanup());
    outcome.and(cleaned)
}

async fn measure<B: Backend>(
    scenario: &'static str,
    backend: &B,
    p: &Params,
) -> Result<(), String> {
    settle();
    let (r0, h0) = (rss()?, alloc::live_bytes());
    let t0 = Instant::now();
    let mut watched = Vec::with_capacity(p.services);
    for i in 0..p.services {
        let instancer = backend.instancer(i).await?;
        let endpointer = DefaultEndpointer::new(&instancer, factory);
        watched.push((instancer, endpointer));
    }
    for (i, (_, ep)) in watched.iter().enumerate() {
        await_count(ep, PER, i).await?;
    }
    let start = t0.elapsed();
    let raw = rss()?;
    settle();
    let (settled, h1) = (rss()?, alloc::live_bytes());
    for (i, (_, ep)) in watched.iter().enumerate() {
        let snapshot = ep.endpoints();
        let got: BTreeSet<String> = snapshot
            .all()
            .iter()
            .map(|e| e.addr().to_string())
            .collect();
        let want: BTreeSet<String> = (0..PER)
            .map(|j| format!("{}:8080", instance_host(i, j)))
            .collect();
        if got != want {
            return Err(format!(
                "service {i}: endpointer serves {got:?}, not {want:?}"
            ));
        }
    }
    // At rest: every blocking query / watch parked in the registry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = sockets();
    let c0 = cpu_ns()?;
    let w0 = Instant::now();
    tokio::time::sleep(p.idle).await;
    let cpu = (cpu_ns()? - c0) as f64 / 1e6 / w0.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(2 * p.changes);
    let mut req = Vec::with_capacity(2 * p.changes);
    for k in picks(p.services, p.changes) {
        for add in [true, false] {
            let t = Instant::now();
            backend.change(k, add).await?;
            req.push(t.elapsed().as_nanos() as f64);
            await_count(&watched[k].1, if add { PER + 1 } else { PER }, k).await?;
            lat.push(t.elapsed().as_nanos() as f64);
        }
    }
    for (instancer, ep) in &watched {
        ep.close().await;
        instancer.stop().await;
    }
    let (p50, p99) = percentiles(&lat);
    let mut r = Record::new(scenario, p.services, 1);
    r.ops = Some(lat.len());
    r.ns_per_op = Some(p50);
    r.p50_ns = Some(p50);
    r.p99_ns = Some(p99);
    r.request_p50_ns = Some(percentiles(&req).0);
    r.rss_bytes = Some((settled - r0) as f64);
    r.rss_raw_bytes = Some((raw - r0) as f64);
    r.heap_bytes = Some((h1 - h0) as f64);
    r.cpu_ms_per_s = Some(cpu);
    r.start_ns = Some(start.as_nanos() as f64);
    r.sockets = Some(open);
    r.emit();
    Ok(())
}

/// Waits (at most [`WAIT`]) until `ep` serves `n` endpoints.
async fn await_count(
    ep: &DefaultEndpointer<Instance>,
    n: usize,
    service: usize,
) -> Result<(), String> {
    let mut changes = ep.changes();
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if ep.endpoints().all().len() == n {
                return true;
            }
            if !changes.changed().await {
                return false;
            }
        }
    })
    .await;
    match seen {
        Ok(true) => Ok(()),
        _ => Err(format!(
            "service {service}: endpointer never served {n} endpoints within {WAIT:?}"
        )),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

// ---------------------------------------------------------------------------------------
// Consul

/// The prefix of the catalog nodes of every run: `sdbench-scale-<pid>-<j>`.
const NODE_PREFIX: &str = "sdbench-scale-";

struct Consul {
    http: reqwest::Client,
    base: String,
    client: ConsulClient,
    run: String,
}

impl Consul {
    fn node(&self, j: usize) -> String {
        format!("{NODE_PREFIX}{}-{j}", self.run)
    }

    fn service(&self, i: usize) -> String {
        format!("sdbench-scale-{}-s{i}", self.run)
    }

    async fn put(&self, path: &str, body: &serde_json::Value) -> Result<(), String> {
        let resp = tokio::time::timeout(
            WAIT,
            self.http
                .put(format!("{}{path}", self.base))
                .json(body)
                .send(),
        )
        .await
        .map_err(|_| format!("PUT {path}: no answer within {WAIT:?}"))?
        .map_err(|e| format!("PUT {path}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("PUT {path}: {status}: {text}"));
        }
        Ok(())
    }

    /// Deregisters the nodes of runs whose process is gone (a run killed before its cleanup).
    async fn sweep(&self) -> Result<(), String> {
        let nodes: Vec<serde_json::Value> = tokio::time::timeout(WAIT, async {
            self.http
                .get(format!("{}/v1/catalog/nodes", self.base))
                .send()
                .await?
                .json()
                .await
        })
        .await
        .map_err(|_| "listing nodes: no answer".to_string())?
        .map_err(|e| format!("listing nodes: {e}"))?;
        for node in nodes.iter().filter_map(|n| n["Node"].as_str()) {
            let Some(pid) = node
                .strip_prefix(NODE_PREFIX)
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.put("/v1/catalog/deregister", &json!({"Node": node}))
                    .await?;
            }
        }
        Ok(())
    }
}

impl Backend for Consul {
    type Instancer = ConsulInstancer;

    async fn setup(&self, services: usize) -> Result<(), String> {
        self.sweep().await?;
        for j in 0..PER {
            let node = self.node(j);
            self.put(
                "/v1/catalog/register",
                &json!({"Node": node, "Address": format!("10.255.0.{j}")}),
            )
            .await?;
        }
        let ops: Vec<serde_json::Value> = (0..services)
            .flat_map(|i| (0..PER).map(move |j| (i, j)))
            .map(|(i, j)| {
                json!({"Service": {"Verb": "set", "Node": self.node(j), "Service": {
                    "ID": format!("s{i}-{j}"), "Service": self.service(i),
                    "Address": instance_host(i, j), "Port": 8080}}})
            })
            .collect();
        for batch in ops.chunks(BATCH) {
            self.put("/v1/txn", &serde_json::Value::from(batch.to_vec()))
                .await?;
        }
        Ok(())
    }

    async fn instancer(&self, i: usize) -> Result<ConsulInstancer, String> {
        let query = ServiceQuery::new(self.service(i)).passing_only(true);
        Ok(ConsulInstancer::start(self.client.clone(), query).await)
    }

    async fn change(&self, i: usize, add: bool) -> Result<(), String> {
        if add {
            self.put(
                "/v1/catalog/register",
                &json!({"Node": self.node(0), "Address": "10.255.0.0", "Service": {
                    "ID": format!("s{i}-extra"), "Service": self.service(i),
                    "Address": "10.254.0.1", "Port": 9090}}),
            )
            .await
        } else {
            self.put(
                "/v1/catalog/deregister",
                &json!({"Node": self.node(0), "ServiceID": format!("s{i}-extra")}),
            )
            .await
        }
    }

    async fn cleanup(&self) -> Result<(), String> {
        let mut first_error = Ok(());
        for j in 0..PER {
            let done = self
                .put("/v1/catalog/deregister", &json!({"Node": self.node(j)}))
                .await;
            if first_error.is_ok() {
                first_error = done;
            }
        }
        first_error
    }
}

/// The Consul scale scenario.
pub fn run_consul(scale: usize) -> Result<(), String> {
    let Some(addr) = super::registries::registry_addr("consul_scale", "SD_TEST_CONSUL")? else {
        return Ok(());
    };
    let rt = runtime()?;
    let _guard = rt.enter();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut config = ConsulConfig::new(addr.clone());
    if let Some(wait) = std::env::var("SD_SCALE_CONSUL_WAIT_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        config = config.wait(Duration::from_secs(wait));
    }
    let client = ConsulClient::new(config).map_err(|e| e.to_string())?;
    let backend = Consul {
        http,
        base: format!("http://{addr}"),
        client,
        run: std::process::id().to_string(),
    };
    run_on("consul_scale", &rt, backend, &params(scale))
}

// ---------------------------------------------------------------------------------------
// etcd

struct Etcd {
    /// The instancers' client (one gRPC connection).
    watcher: EtcdClient,
    /// The setup's and the changes' client.
    writer: EtcdClient,
    /// The run's key prefix.
    root: String,
    lease: std::sync::Mutex<i64>,
}

impl Etcd {
    fn dir(&self, i: usize) -> String {
        format!("{}/s{i}/", self.root)
    }

    async fn etcd(&self) -> Result<sd_etcdv3::etcd_client::Client, String> {
        self.writer.etcd().await.map_err(|e| e.to_string())
    }
}

impl Backend for Etcd {
    type Instancer = EtcdInstancer;

    async fn setup(&self, services: usize) -> Result<(), String> {
        let mut c = self.etcd().await?;
        let lease = timeout("lease grant", c.lease_grant(600, None)).await?.id();
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        let ops: Vec<TxnOp> = (0..services)
            .flat_map(|i| (0..PER).map(move |j| (i, j)))
            .map(|(i, j)| {
                TxnOp::put(
                    format!("{}n{j}", self.dir(i)),
                    format!("{}:8080", instance_host(i, j)),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        for batch in ops.chunks(BATCH) {
            timeout("txn", c.txn(Txn::new().and_then(batch.to_vec()))).await?;
        }
        Ok(())
    }

    async fn instancer(&self, i: usize) -> Result<EtcdInstancer, String> {
        Ok(EtcdInstancer::start(self.watcher.clone(), ServiceQuery::new(format!("s{i}"))).await)
    }

    async fn change(&self, i: usize, add: bool) -> Result<(), String> {
        let key = format!("{}extra", self.dir(i));
        let done = if add {
            self.writer
                .put(&key, b"10.254.0.1:9090", 0)
                .await
                .map(|_| ())
        } else {
            self.writer.delete(&key).await.map(|_| ())
        };
        done.map_err(|e| e.to_string())
    }

    async fn cleanup(&self) -> Result<(), String> {
        let mut c = self.etcd().await?;
        let deleted = timeout(
            "delete",
            c.delete(
                format!("{}/", self.root),
                Some(DeleteOptions::new().with_prefix()),
            ),
        )
        .await
        .map(|_| ());
        let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if lease != 0 {
            timeout("lease revoke", c.lease_revoke(lease)).await?;
        }
        deleted
    }
}

async fn timeout<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| format!("{what}: no answer within {WAIT:?}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// The etcd scale scenario on sd-etcdv3's shared watch of the prefix
/// ([`EtcdInstancer::start_shared`]): one watch of the run's common parent prefix, each
/// instancer joining it for its service (its own directory read once, events routed by
/// key), each followed by its endpointer.
struct EtcdShared(Etcd);

impl Backend for EtcdShared {
    type Instancer = EtcdInstancer;

    async fn setup(&self, services: usize) -> Result<(), String> {
        self.0.setup(services).await
    }

    async fn instancer(&self, i: usize) -> Result<EtcdInstancer, String> {
        let query = ServiceQuery::new(format!("s{i}"));
        Ok(EtcdInstancer::start_shared(self.0.watcher.clone(), query).await)
    }

    async fn change(&self, i: usize, add: bool) -> Result<(), String> {
        self.0.change(i, add).await
    }

    async fn cleanup(&self) -> Result<(), String> {
        self.0.cleanup().await
    }
}

/// The etcd scale scenario: one watch per instancer (`watch=own`), or with `shared` every
/// instancer on sd-etcdv3's shared watch of the prefix ([`EtcdShared`], `watch=shared`).
pub fn run_etcd(scale: usize, shared: bool) -> Result<(), String> {
    let scenario = if shared {
        "etcd_scale_shared"
    } else {
        "etcd_scale"
    };
    let Some(addr) = super::registries::registry_addr(scenario, "SD_TEST_ETCD")? else {
        return Ok(());
    };
    let rt = runtime()?;
    let _guard = rt.enter();
    let root = format!("/sdbench-scale/{}", std::process::id());
    let client = |prefix: &str| {
        EtcdClient::new(EtcdConfig::new([addr.clone()]).prefix(prefix)).map_err(|e| e.to_string())
    };
    let backend = Etcd {
        watcher: client(&root)?,
        writer: client(&root)?,
        root,
        lease: std::sync::Mutex::new(0),
    };
    if shared {
        return run_on(scenario, &rt, EtcdShared(backend), &params(scale));
    }
    run_on(scenario, &rt, backend, &params(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_never_goes_back() {
        let a = cpu_ns().unwrap();
        // Work the optimiser cannot remove: its result is checked.
        let mut x: u64 = 1;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        assert_ne!(x, 0);
        let b = cpu_ns().unwrap();
        assert!(b > a, "{a} -> {b}");
        assert!(cpu_ns().unwrap() >= b);
    }

    #[test]
    fn picks_are_the_go_sides() {
        // The same sequence as bench/gokit/scale_test.go (computed independently).
        assert_eq!(picks(1000, 5), [989, 574, 30, 260, 268]);
        assert!(picks(7, 100).iter().all(|&k| k < 7));
    }

    #[test]
    fn instance_hosts_do_not_collide() {
        let all: BTreeSet<String> = (0..1000)
            .flat_map(|i| (0..PER).map(move |j| instance_host(i, j)))
            .collect();
        assert_eq!(all.len(), 1000 * PER);
    }
}
