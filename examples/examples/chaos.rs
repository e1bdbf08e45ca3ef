//! The chaos soak (issue 16 §3, docs/TESTING.md "Chaos soak"): a client calls real HTTP
//! services through discovery → `DefaultEndpointer` → round robin → retry at a steady rate
//! while the harness kills, freezes (SIGSTOP) and restarts the **real** registry server and
//! crashes and restarts the service instances, at random but seeded, so a run repeats.
//!
//! ```sh
//! scripts/chaos consul 1                 # the wrapper: one minute against Consul
//! cargo run -p examples --example chaos -- etcd --seconds 60 --seed 7
//! ```
//!
//! Options: `BACKEND` (consul, etcd, zk, eureka), `--seconds N` (default 60), `--seed S`
//! (default `$SD_CHAOS_SEED`, else 1), `--rate R` requests per second (default 50),
//! `--instances N` (default 4).
//!
//! What runs, all on 127.0.0.1:
//! - `N` tiny HTTP/1.1 servers, each registered through `sdkit::connect(url)` with a TTL
//!   health check (`HealthCheck::Ttl`) that its registrar keeps renewing;
//! - one client: `instancer(passing_only)` → `DefaultEndpointer` → `RoundRobin` → `Retry`
//!   (`N + 1` attempts, failed endpoints avoided, 5 s overall), calling `GET /` `R` times a
//!   second (open loop: one task per request);
//! - the fault loop: every 2–5 s one fault, chosen by the seeded RNG: the registry killed
//!   (SIGKILL) for 1–4 s and restarted; the registry frozen (SIGSTOP) for 1–5 s and resumed;
//!   an instance crashed (its server and connections aborted, its registration abandoned
//!   without deregistering) and restarted 1–6 s later on a **new port** with the same
//!   instance id (so the client can only reach it through discovery). At least one instance
//!   is always up, except in the rare "every instance down" fault (2 s): failures from then
//!   until the client lists one of the restarted instances (on their new ports) are counted
//!   apart, as "no instance up";
//! - a checker that, twice a second while the registry is up, queries the registry directly
//!   (a fresh instancer on a second connection, without empty-set protection) and counts
//!   **registrations lost**: an instance that is up and whose registration was accepted,
//!   but that the registry does not list.
//!
//! After every registry fault the loop waits (up to 60 s) until the client's endpointer is
//! fresh again and lists every instance that is up: that is the **recovery** time, from the
//! registry answering again (restart/resume returned and its readiness probe passed).
//!
//! The run holds `sd_testkit::exclusive(server)` throughout (other tests of that server wait)
//! and heals the server on every exit path. It exits non-zero if a request failed while an
//! instance was up, if a recovery did not happen within 60 s, or if the resident memory or
//! the number of tokio tasks grew beyond the slack ([`RSS_SLACK`], [`TASK_SLACK`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sd_lb::{Retry, RoundRobin};
use sd_testkit::{PauseGuard, Server};
use sdkit::{
    BoxError, DefaultEndpointer, Endpointer, Event, HealthCheck, Instance, Instancer, Registration,
    RegistrationGuard, Registry, ServiceQuery,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Resident-memory growth allowed from start to end: 16 MiB plus a fifth of the start.
const RSS_SLACK: &str = "16 MiB + 20 % of the start";
/// Tokio tasks of the library allowed beyond the start (pooled client connections come and
/// go: reqwest keeps one task per open connection).
const TASK_SLACK: usize = 8;
/// How long a recovery may take before the run counts it as failed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Consul,
    Etcd,
    Zk,
    Eureka,
}

impl Backend {
    fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "consul" => Backend::Consul,
            "etcd" => Backend::Etcd,
            "zk" => Backend::Zk,
            "eureka" => Backend::Eureka,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Consul => "consul",
            Backend::Etcd => "etcd",
            Backend::Zk => "zk",
            Backend::Eureka => "eureka",
        }
    }

    fn server(self) -> Server {
        match self {
            Backend::Consul => Server::Consul,
            Backend::Etcd => Server::Etcd,
            Backend::Zk => Server::Zk,
            Backend::Eureka => Server::Eureka,
        }
    }

    /// The registry URL for the server at `addr` (as `SD_TEST_*` gives it).
    fn url(self, addr: &str) -> String {
        match self {
            Backend::Consul => format!("consul://{addr}"),
            Backend::Etcd => format!("etcd://{addr}"),
            Backend::Zk => format!("zk://{addr}/sdkit-chaos"),
            Backend::Eureka => {
                let rest = addr.strip_prefix("http://").unwrap_or(addr);
                format!("eureka://{rest}?poll=1s&timeout=5s")
            }
        }
    }
}

/// The URL with one more query option.
fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

struct Args {
    backend: Backend,
    seconds: u64,
    seed: u64,
    rate: u32,
    instances: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: chaos consul|etcd|zk|eureka [--seconds N] [--seed S] [--rate R] [--instances N]";
    let backend = args
        .next()
        .and_then(|b| Backend::parse(&b))
        .ok_or_else(|| usage.to_string())?;
    let seed = std::env::var("SD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut a = Args {
        backend,
        seconds: 60,
        seed,
        rate: 50,
        instances: 4,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag}: missing value; {usage}"))?;
        let bad = |_| format!("{flag} {value}: not a number; {usage}");
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().map_err(bad)?,
            "--seed" => a.seed = value.parse().map_err(bad)?,
            "--rate" => a.rate = value.parse().map_err(bad)?,
            "--instances" => a.instances = value.parse().map_err(bad)?,
            _ => return Err(usage.to_string()),
        }
    }
    if !(1..=24 * 3600).contains(&a.seconds)
        || !(1..=1000).contains(&a.rate)
        || !(2..=16).contains(&a.instances)
    {
        return Err(format!(
            "--seconds 1..86400, --rate 1..1000, --instances 2..16; {usage}"
        ));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------
// The services: tiny HTTP/1.1 servers whose crash aborts every connection at once.

/// Counts the harness's own tasks (server accept loops and connections, request tasks), so
/// that the library's task count can be told apart.
#[derive(Default)]
struct HarnessTasks(AtomicUsize);

struct TaskToken(Arc<HarnessTasks>);

impl TaskToken {
    fn new(h: &Arc<HarnessTasks>) -> TaskToken {
        h.0.fetch_add(1, Ordering::SeqCst);
        TaskToken(h.clone())
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `GET` (any path) with `body` on every connection until aborted. The connections
/// live in a `JoinSet` owned by this task, so aborting it aborts them all: a crash.
async fn serve(listener: TcpListener, body: Arc<str>, tasks: Arc<HarnessTasks>) {
    let _token = TaskToken::new(&tasks);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let token = TaskToken::new(&tasks);
                    conns.spawn(connection(stream, body.clone(), token));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One keep-alive connection: reads a request head (at most 16 KiB; a request has no body
/// here), answers `200 body`, until the client closes or idles for 60 s.
async fn connection(mut stream: TcpStream, body: Arc<str>, _token: TaskToken) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    loop {
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 16 * 1024 {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        buf.drain(..end);
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One service instance; `server` is `None` while it is down.
struct Service {
    index: usize,
    id: String,
    server: Option<JoinHandle<()>>,
    registration: Option<RegistrationGuard>,
    /// `127.0.0.1:port` while up.
    addr: Option<String>,
    /// When a crashed instance comes back.
    restart_at: Option<Instant>,
}

/// What the fault loop, the checker and the recovery wait share.
struct World {
    backend: Backend,
    service: String,
    ttl: Duration,
    registry: Arc<dyn Registry>,
    services: Mutex<Vec<Service>>,
    /// Instances whose server runs.
    up: AtomicUsize,
    /// Bumped every time no instance at all is up.
    outages: AtomicU64,
    /// Set from an "every instance down" fault until the client lists a live instance
    /// again: the restarted instances listen on new ports, which only discovery can tell.
    undiscovered: AtomicBool,
    /// Addresses of instances that are up and whose registration the registry accepted.
    registered: Mutex<BTreeMap<usize, String>>,
    /// False while the registry is killed or frozen.
    registry_up: AtomicBool,
    tasks: Arc<HarnessTasks>,
}

impl World {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Service>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, String>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts instance `index` on a new port and registers it.
    async fn start(&self, index: usize) -> Result<(), BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let id = format!("{}-{index}", self.service);
        let server = tokio::spawn(serve(listener, id.clone().into(), self.tasks.clone()));
        {
            let mut services = self.lock();
            let s = &mut services[index];
            s.server = Some(server);
            s.addr = Some(format!("127.0.0.1:{port}"));
            s.restart_at = None;
        }
        self.up.fetch_add(1, Ordering::SeqCst);
        let instance = Instance::builder("127.0.0.1", port)
            .id(id)
            .meta("index", index.to_string())
            .build();
        let mut registration =
            Registration::new(&self.service, instance).check(HealthCheck::Ttl(self.ttl));
        if self.backend == Backend::Consul {
            // Consul's own option (the others refuse it): the agent reaps a crashed
            // instance's critical entry after a minute.
            registration = registration.deregister_critical_after(Duration::from_secs(60));
        }
        let registrar = self.registry.registrar(registration).await?;
        let guard = tokio::time::timeout(
            Duration::from_secs(30),
            RegistrationGuard::register(registrar),
        )
        .await
        .map_err(|_| "registration took more than 30 s")??;
        self.lock()[index].registration = Some(guard);
        self.registered().insert(index, format!("127.0.0.1:{port}"));
        Ok(())
    }

    /// Crashes instance `index`: the server and its connections stop at once, the
    /// registration is abandoned (no deregistration; its TTL lapses).
    async fn crash(&self, index: usize, restart_after: Duration) {
        self.registered().remove(&index);
        let (server, registration) = {
            let mut services = self.lock();
            let s = &mut services[index];
            s.addr = None;
            s.restart_at = Some(Instant::now() + restart_after);
            (s.server.take(), s.registration.take())
        };
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
            if self.up.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.outages.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Some(guard) = registration {
            guard.abandon();
        }
    }

    /// Restarts the crashed instances whose time has come (every one that is down with
    /// `all`). A restart whose registration fails is undone and tried again 1 s later; the
    /// failure is added to `refused`.
    async fn restart_due(&self, all: bool, refused: &mut Vec<String>) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .lock()
            .iter()
            .filter(|s| s.server.is_none() && (all || s.restart_at.is_some_and(|t| t <= now)))
            .map(|s| s.index)
            .collect();
        for index in due {
            if let Err(e) = self.start(index).await {
                refused.push(format!("instance {index}: {e}"));
                // Down again, and tried again later.
                self.crash(index, Duration::from_secs(1)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client and its traffic.

type Client = examples::RetriedHttp;

#[derive(Default)]
struct Traffic {
    sent: u64,
    ok: u64,
    failed: u64,
    failed_no_instance: u64,
    retried: u64,
    attempts_beyond_first: u64,
    shed: u64,
    first_errors: Vec<String>,
    per_instance: BTreeMap<String, u64>,
}

async fn one_request(
    client: Arc<Client>,
    http: reqwest::Client,
    world: Arc<World>,
    traffic: Arc<Mutex<Traffic>>,
    started: Instant,
) {
    let _token = TaskToken::new(&world.tasks);
    let outages = world.outages.load(Ordering::SeqCst);
    let up_at_start = world.up.load(Ordering::SeqCst);
    let undiscovered_at_start = world.undiscovered.load(Ordering::SeqCst);
    let (result, attempts) = examples::retried_get(&client, &http).await;
    let no_instance = up_at_start == 0
        || undiscovered_at_start
        || world.undiscovered.load(Ordering::SeqCst)
        || world.up.load(Ordering::SeqCst) == 0
        || world.outages.load(Ordering::SeqCst) != outages;
    let attempts = attempts as u64;
    let mut t = traffic.lock().unwrap_or_else(|e| e.into_inner());
    t.attempts_beyond_first += attempts.saturating_sub(1);
    if attempts > 1 {
        t.retried += 1;
    }
    match result {
        Ok(body) => {
            t.ok += 1;
            *t.per_instance.entry(body).or_default() += 1;
        }
        Err(e) if no_instance => {
            t.failed_no_instance += 1;
            tracing::info!(error = %e, "request failed while no instance was up");
        }
        Err(e) => {
            t.failed += 1;
            if t.first_errors.len() < 20 {
                let at = started.elapsed().as_secs_f64();
                t.first_errors.push(format!("t={at:.1}s: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Registrations lost: a direct query of the registry every second.

#[derive(Default)]
struct Losses {
    samples: u64,
    failed_queries: u64,
    episodes: Vec<Duration>,
    open: BTreeMap<usize, (String, Instant)>,
    longest_open: Option<(usize, Duration)>,
}

async fn check_registrations(
    world: Arc<World>,
    direct: Arc<dyn Registry>,
    losses: Arc<Mutex<Losses>>,
    stop: Arc<AtomicBool>,
) {
    let _token = TaskToken::new(&world.tasks);
    let query = ServiceQuery::new(&world.service);
    // Bounded: two samples a second, until told to stop (the run itself is bounded).
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !world.registry_up.load(Ordering::SeqCst) {
            continue;
        }
        let expected = world.registered().clone();
        let listed = tokio::time::timeout(Duration::from_secs(5), async {
            let instancer = direct.instancer(&query).await?;
            let event = instancer.subscribe().current();
            instancer.stop().await;
            Ok::<_, sdkit::Error>(event)
        })
        .await;
        let now = Instant::now();
        let mut l = losses.lock().unwrap_or_else(|e| e.into_inner());
        let set = match listed {
            Ok(Ok(Some(Event::Instances(set)))) => set,
            _ => {
                l.failed_queries += 1;
                continue;
            }
        };
        // The registry may have gone down while the query ran: such a sample says nothing.
        if !world.registry_up.load(Ordering::SeqCst) {
            continue;
        }
        l.samples += 1;
        let listed: BTreeSet<&str> = set.iter().map(|i| i.addr()).collect();
        let current = world.registered().clone();
        for (index, addr) in &expected {
            // Only instances still registered at the same address after the query.
            if current.get(index) != Some(addr) {
                continue;
            }
            let missing = !listed.contains(addr.as_str());
            match (missing, l.open.get(index).cloned()) {
                (true, None) => {
                    l.open.insert(*index, (addr.clone(), now));
                }
                (false, Some((_, since))) => {
                    l.open.remove(index);
                    l.episodes.push(now - since);
                }
                _ => {}
            }
        }
        // An instance that crashed or moved while lost: its episode ends there.
        let gone: Vec<usize> = l
            .open
            .iter()
            .filter(|(i, (addr, _))| current.get(i) != Some(addr))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some((_, since)) = l.open.remove(&i) {
                l.episodes.push(now - since);
            }
        }
    }
    let now = Instant::now();
    let mut l = losses.lock().unwrap_or_else(|e| e.into_inner());
    let open: Vec<(usize, Duration)> = l
        .open
        .iter()
        .map(|(i, (_, since))| (*i, now - *since))
        .collect();
    l.longest_open = open.into_iter().max_by_key(|(_, d)| *d);
}

// ---------------------------------------------------------------------------------------
// Recovery: the client's endpointer fresh again and listing every instance that is up.

async fn wait_recovered(world: &World, endpointer: &DefaultEndpointer<String>) -> Option<Duration> {
    wait_for_client(world, endpointer, |snapshot, live| {
        let have: BTreeSet<&str> = snapshot.all().iter().map(|e| e.as_str()).collect();
        !snapshot.is_stale()
            && snapshot.last_error().is_none()
            && live.iter().all(|l| have.contains(l.as_str()))
    })
    .await
}

/// Waits (up to [`RECOVERY_LIMIT`]) until the client's endpointer lists at least one
/// instance that is up and registered; returns how long that took.
async fn wait_until_listed(
    world: &World,
    endpointer: &DefaultEndpointer<String>,
) -> Option<Duration> {
    wait_for_client(world, endpointer, |snapshot, live| {
        snapshot.all().iter().any(|e| live.contains(e.as_str()))
    })
    .await
}

/// Polls (every 20 ms, up to [`RECOVERY_LIMIT`]) until `done` holds for the endpointer's
/// state and the URLs of the instances that are up and registered; returns how long it took.
async fn wait_for_client(
    world: &World,
    endpointer: &DefaultEndpointer<String>,
    done: impl Fn(&sdkit::Endpoints<String>, &BTreeSet<String>) -> bool,
) -> Option<Duration> {
    let from = Instant::now();
    while from.elapsed() < RECOVERY_LIMIT {
        let live: BTreeSet<String> = world
            .registered()
            .values()
            .map(|a| format!("http://{a}/"))
            .collect();
        if done(&endpointer.endpoints(), &live) {
            return Some(from.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// (all alive tokio tasks, those that are not the harness's own)
fn task_counts(world: &World) -> (usize, usize) {
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let harness = world.tasks.0.load(Ordering::SeqCst);
    (alive, alive.saturating_sub(harness))
}

#[derive(Default)]
struct Faults {
    registry_kills: u32,
    registry_pauses: u32,
    instance_crashes: u32,
    all_down: u32,
    recoveries: Vec<Duration>,
    not_recovered: u32,
    /// Registrations of restarted instances that failed (each retried 1 s later).
    refused: Vec<String>,
    errors: Vec<String>,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let server = args.backend.server();
    let Some(addr) = sd_testkit::require(server) else {
        eprintln!("chaos: {server} is not available (scripts/registries up {server})");
        return ExitCode::from(2);
    };
    // Kills and freezes a shared server: hold its exclusive lock for the whole run. The
    // guard heals the server (resume/restart) when dropped, on every way out of `main`.
    eprintln!("chaos: taking the exclusive lock on {server}");
    let lock = tokio::task::spawn_blocking(move || sd_testkit::exclusive(server))
        .await
        .expect("lock task");
    let outcome = tokio::select! {
        r = run(&args, &addr) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    // A server left frozen by an interrupted fault is resumed by its PauseGuard; a killed
    // one is restarted by the lock's heal.
    drop(lock);
    match outcome {
        Ok((report, ok)) => {
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, addr: &str) -> Result<(String, bool), BoxError> {
    let backend = args.backend;
    let server = backend.server();
    let url = backend.url(addr);
    let registry = sdkit::connect(&url)?;
    // The checker's own connection, without empty-set protection: the raw answer.
    let direct = sdkit::connect(&with_option(&url, "protect=false"))?;
    let service = sd_testkit::unique_name("chaos");
    let ttl = Duration::from_secs(3);
    let world = Arc::new(World {
        backend,
        service: service.clone(),
        ttl,
        registry: registry.clone(),
        services: Mutex::new(
            (0..args.instances)
                .map(|index| Service {
                    index,
                    id: format!("{service}-{index}"),
                    server: None,
                    registration: None,
                    addr: None,
                    restart_at: None,
                })
                .collect(),
        ),
        up: AtomicUsize::new(0),
        outages: AtomicU64::new(0),
        undiscovered: AtomicBool::new(false),
        registered: Mutex::new(BTreeMap::new()),
        registry_up: AtomicBool::new(true),
        tasks: Arc::new(HarnessTasks::default()),
    });
    eprintln!(
        "chaos: {} at {url}, service {service}, {} instances, {} req/s, {} s, seed {}",
        backend.name(),
        args.instances,
        args.rate,
        args.seconds,
        args.seed
    );
    for i in 0..args.instances {
        world.start(i).await?;
    }

    // The client.
    let (instancer, endpointer) = examples::discover_http(&registry, &service).await?;
    let client = Arc::new(
        Retry::new(RoundRobin::new(endpointer.clone()))
            .max_attempts(args.instances + 1)
            .attempt_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5)),
    );
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(2)
        .build()?;
    if wait_recovered(&world, &endpointer).await.is_none() {
        return Err("the client did not discover every instance within 60 s".into());
    }

    let started = Instant::now();
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let traffic_task = {
        let (client, http, world, traffic, stop) = (
            client.clone(),
            http.clone(),
            world.clone(),
            traffic.clone(),
            stop_traffic.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
        tokio::spawn(async move {
            let _token = TaskToken::new(&world.tasks);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut inflight = JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = tick.tick() => {
                        let mut t = traffic.lock().unwrap_or_else(|e| e.into_inner());
                        if inflight.len() >= 500 {
                            t.shed += 1;
                            continue;
                        }
                        t.sent += 1;
                        drop(t);
                        inflight.spawn(one_request(client.clone(), http.clone(), world.clone(), traffic.clone(), started));
                    }
                    Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                }
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let losses = Arc::new(Mutex::new(Losses::default()));
    let stop_checker = Arc::new(AtomicBool::new(false));
    let checker = tokio::spawn(check_registrations(
        world.clone(),
        direct.clone(),
        losses.clone(),
        stop_checker.clone(),
    ));

    // Warm up, then the start figures.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_start = rss_kib();
    let (tasks_start, lib_tasks_start) = task_counts(&world);

    // The fault loop.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let deadline = started + Duration::from_secs(args.seconds);
    let mut faults = Faults::default();
    let mut schedule = String::new();
    let step_ms =
        |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.gen_range(lo..=hi));
    let mut steps = 0u32;
    while Instant::now() < deadline && steps < 100_000 {
        steps += 1;
        // 2–5 s between faults, restarting crashed instances whose time has come meanwhile.
        let pause_until = Instant::now() + step_ms(&mut rng, 2000, 5000);
        while Instant::now() < pause_until.min(deadline) {
            world.restart_due(false, &mut faults.refused).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let at = started.elapsed().as_secs_f64();
        let roll: u32 = rng.gen_range(0..100);
        if roll < 25 {
            let down = step_ms(&mut rng, 1000, 4000);
            let _ = writeln!(schedule, "t={at:.1}s kill registry for {}", secs(down));
            faults.registry_kills += 1;
            world.registry_up.store(false, Ordering::SeqCst);
            sd_testkit::kill(server).await?;
            tokio::time::sleep(down).await;
            sd_testkit::restart(server).await?;
            world.registry_up.store(true, Ordering::SeqCst);
            record_recovery(&world, &endpointer, &mut faults).await;
        } else if roll < 50 {
            let frozen = step_ms(&mut rng, 1000, 5000);
            let _ = writeln!(schedule, "t={at:.1}s freeze registry for {}", secs(frozen));
            faults.registry_pauses += 1;
            world.registry_up.store(false, Ordering::SeqCst);
            let guard = PauseGuard::pause(server).await?;
            tokio::time::sleep(frozen).await;
            guard.resume().await?;
            sd_testkit::wait_ready(server).await?;
            world.registry_up.store(true, Ordering::SeqCst);
            record_recovery(&world, &endpointer, &mut faults).await;
        } else if roll < 97 {
            let up: Vec<usize> = world
                .lock()
                .iter()
                .filter(|s| s.server.is_some())
                .map(|s| s.index)
                .collect();
            let back = step_ms(&mut rng, 1000, 6000);
            // Always leave one instance up here (the all-down fault is the one below).
            if up.len() >= 2 {
                let victim = up[rng.gen_range(0..up.len())];
                let _ = writeln!(
                    schedule,
                    "t={at:.1}s crash instance {victim}, back after {}",
                    secs(back)
                );
                faults.instance_crashes += 1;
                world.crash(victim, back).await;
            } else {
                let _ = writeln!(schedule, "t={at:.1}s (one instance left: no crash)");
            }
        } else {
            let _ = writeln!(schedule, "t={at:.1}s crash every instance for 2 s");
            faults.all_down += 1;
            world.undiscovered.store(true, Ordering::SeqCst);
            for i in 0..args.instances {
                world.crash(i, Duration::from_secs(2)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            world.restart_due(true, &mut faults.refused).await;
            let rediscovered = wait_until_listed(&world, &endpointer).await;
            world.undiscovered.store(false, Ordering::SeqCst);
            let _ = writeln!(
                schedule,
                "    client lists a live instance again after {}",
                rediscovered.map_or("more than 60 s".to_string(), secs)
            );
        }
    }

    // Back to every instance up (bounded: 30 tries), then the end figures while the traffic
    // still runs.
    for _ in 0..30 {
        world.restart_due(true, &mut faults.refused).await;
        if world.up.load(Ordering::SeqCst) == args.instances {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if world.up.load(Ordering::SeqCst) != args.instances {
        faults
            .errors
            .push("not every instance could be restarted and registered at the end".into());
    }
    let final_recovery = wait_recovered(&world, &endpointer).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = rss_kib();
    let (tasks_end, lib_tasks_end) = task_counts(&world);
    let elapsed = started.elapsed();

    stop_traffic.store(true, Ordering::SeqCst);
    let _ = traffic_task.await;
    stop_checker.store(true, Ordering::SeqCst);
    let _ = checker.await;

    // Clean shutdown: every instance deregisters, discovery stops.
    let services: Vec<Service> = std::mem::take(&mut *world.lock());
    for mut s in services {
        if let Some(guard) = s.registration.take() {
            if let Err(e) = guard.deregister().await {
                faults.errors.push(format!("deregister {}: {e}", s.id));
            }
        }
        if let Some(server) = s.server.take() {
            server.abort();
        }
    }
    endpointer.close().await;
    instancer.stop().await;

    let t = traffic.lock().unwrap_or_else(|e| e.into_inner());
    let l = losses.lock().unwrap_or_else(|e| e.into_inner());
    let mut recoveries = faults.recoveries.clone();
    recoveries.sort();
    let mut episodes = l.episodes.clone();
    episodes.sort();
    let lost_total: Duration = episodes.iter().sum();
    let rss_limit = rss_start + 16 * 1024 + rss_start / 5;
    let task_limit = lib_tasks_start + TASK_SLACK;

    let mut problems = Vec::new();
    if t.failed > 0 {
        problems.push(format!(
            "{} requests failed while an instance was up",
            t.failed
        ));
    }
    if faults.not_recovered > 0 || final_recovery.is_none() {
        problems.push(format!(
            "{} registry faults not recovered within {RECOVERY_LIMIT:?} (final: {})",
            faults.not_recovered,
            if final_recovery.is_some() {
                "ok"
            } else {
                "not recovered"
            }
        ));
    }
    if rss_end > rss_limit {
        problems.push(format!(
            "RSS grew from {rss_start} KiB to {rss_end} KiB (limit {rss_limit} KiB: {RSS_SLACK})"
        ));
    }
    if lib_tasks_end > task_limit {
        problems.push(format!(
            "library tasks grew from {lib_tasks_start} to {lib_tasks_end} (slack {TASK_SLACK})"
        ));
    }
    if !faults.errors.is_empty() {
        problems.push(format!("{} harness errors", faults.errors.len()));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nchaos soak: {} ({url}), seed {}, {} s, {} instances, {} req/s",
        backend.name(),
        args.seed,
        args.seconds,
        args.instances,
        args.rate
    );
    let _ = writeln!(out, "\nfault schedule:\n{schedule}");
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| run | {:.0} s, seed {} |",
        elapsed.as_secs_f64(),
        args.seed
    );
    let _ = writeln!(
        out,
        "| faults | registry killed {}, frozen {}; instance crashed {}; every instance down {} |",
        faults.registry_kills, faults.registry_pauses, faults.instance_crashes, faults.all_down
    );
    let _ = writeln!(
        out,
        "| requests sent | {} ({} shed by the in-flight cap) |",
        t.sent, t.shed
    );
    let _ = writeln!(
        out,
        "| succeeded | {} (retried: {}, extra attempts: {}) |",
        t.ok, t.retried, t.attempts_beyond_first
    );
    let _ = writeln!(out, "| failed with an instance up | {} |", t.failed);
    let _ = writeln!(out, "| failed, no instance up | {} |", t.failed_no_instance);
    let _ = writeln!(
        out,
        "| registrations lost | {} episodes, total {}, longest {} ({} samples, {} failed queries){} |",
        episodes.len(),
        secs(lost_total),
        secs(episodes.last().copied().unwrap_or_default()),
        l.samples,
        l.failed_queries,
        match l.longest_open {
            Some((i, d)) => format!("; instance {i} still lost at the end for {}", secs(d)),
            None => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "| registry back → instancer recovered | n={} p50 {} p99 {} max {}; not recovered: {} |",
        recoveries.len(),
        secs(percentile(&recoveries, 50.0)),
        secs(percentile(&recoveries, 99.0)),
        secs(recoveries.last().copied().unwrap_or_default()),
        faults.not_recovered
    );
    let _ = writeln!(
        out,
        "| RSS start → end | {:.1} MiB → {:.1} MiB |",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    let _ = writeln!(out, "| tokio tasks start → end | {tasks_start} → {tasks_end} (library's: {lib_tasks_start} → {lib_tasks_end}) |");
    let answered: Vec<String> = t
        .per_instance
        .iter()
        .map(|(k, v)| format!("{}={v}", k.rsplit('-').next().unwrap_or(k)))
        .collect();
    let _ = writeln!(out, "| answers per instance | {} |", answered.join(" "));
    let _ = writeln!(
        out,
        "| registrations refused at an instance restart (retried) | {} |",
        faults.refused.len()
    );
    if !t.first_errors.is_empty() {
        let _ = writeln!(out, "\nfirst failures:\n{}", t.first_errors.join("\n"));
    }
    if !faults.refused.is_empty() {
        let _ = writeln!(
            out,
            "\nregistrations refused (retried 1 s later):\n{}",
            faults.refused.join("\n")
        );
    }
    if !faults.errors.is_empty() {
        let _ = writeln!(out, "\nharness errors:\n{}", faults.errors.join("\n"));
    }
    let _ = writeln!(
        out,
        "\nrow: | {} | {} | {:.0} s | {} | {} / {} / {} / {} | {} | {} | {} | {} ep, max {} | {} / {} / {} | {:.1} → {:.1} MiB | {} → {} |",
        backend.name(),
        args.seed,
        elapsed.as_secs_f64(),
        args.rate,
        faults.registry_kills,
        faults.registry_pauses,
        faults.instance_crashes,
        faults.all_down,
        t.sent,
        t.failed,
        t.failed_no_instance,
        episodes.len(),
        secs(episodes.last().copied().unwrap_or_default()),
        secs(percentile(&recoveries, 50.0)),
        secs(percentile(&recoveries, 99.0)),
        secs(recoveries.last().copied().unwrap_or_default()),
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        lib_tasks_start,
        lib_tasks_end
    );
    let ok = problems.is_empty();
    if ok {
        let _ = writeln!(out, "ok: no request failed while an instance was up; every fault recovered; RSS and tasks flat");
    } else {
        let _ = writeln!(out, "FAILED: {}", problems.join("; "));
    }
    Ok((out, ok))
}

async fn record_recovery(
    world: &World,
    endpointer: &DefaultEndpointer<String>,
    faults: &mut Faults,
) {
    match wait_recovered(world, endpointer).await {
        Some(d) => faults.recoveries.push(d),
        None => faults.not_recovered += 1,
    }
}
