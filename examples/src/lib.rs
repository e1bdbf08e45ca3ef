//! The examples, as a library so that tests can run exactly what `cargo run -p examples
//! --example <name>` runs, against any registry: the quickstart (this module), [`grpc`]
//! (tonic behind sdkit's balancer, a server killed mid-call) and [`axum_service`] (an axum
//! service that leaves rotation on SIGTERM, across a rolling restart).
//!
//! The quickstart starts three real HTTP services on 127.0.0.1, each registering itself in the registry
//! with a TTL health check that it keeps passing; a client discovers them (Instancer →
//! Endpointer → round robin → retry) and calls them over HTTP. Then one service crashes: its
//! server stops and so do its heartbeats, and nobody deregisters it. Retries cover the dead
//! instance until discovery notices on its own (the TTL lapses: the embedded registry and
//! Consul both mark the instance critical, and the passing-only query drops it), after
//! which no traffic goes there. On shutdown every service deregisters explicitly with
//! `RegistrationGuard::deregister().await`, which waits for the registry's answer.
#![warn(missing_docs)]

pub mod axum_service;
pub mod grpc;
pub mod metrics;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sd_lb::{Retry, RoundRobin};
use sdkit::{
    BoxError, DefaultEndpointer, Endpoint, Endpointer, HealthCheck, Instance, Registration,
    RegistrationGuard, Registry, ServiceQuery,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What one phase of the run observed.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    /// What was going on.
    pub name: String,
    /// Successful responses per service name.
    pub hits: BTreeMap<String, usize>,
    /// Requests that failed even after retries.
    pub failures: usize,
    /// Attempts beyond the first, over all requests.
    pub retries: usize,
}

/// The whole run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The registry used (its URL scheme).
    pub registry: String,
    /// The service name registered.
    pub service: String,
    /// The three phases: all up, one crashed, after discovery noticed.
    pub phases: Vec<Phase>,
    /// The service that crashed.
    pub killed: String,
    /// How long after the crash discovery dropped the crashed service.
    pub noticed_after: Duration,
    /// Whether outlier ejection had taken the crashed service out before discovery dropped
    /// it (`None` where the client has no outlier ejection).
    pub ejected: Option<bool>,
}

impl Report {
    /// Whether the run showed what it should: no request lost, retries covering the dead
    /// instance before discovery caught up, and no traffic to it afterwards.
    pub fn check(&self) -> Result<(), String> {
        if self.phases.len() != 3 {
            return Err(format!("expected 3 phases, got {}", self.phases.len()));
        }
        for p in &self.phases {
            if p.failures > 0 {
                return Err(format!("{}: {} requests failed", p.name, p.failures));
            }
        }
        if self.phases[0].hits.len() != 3 {
            return Err(format!(
                "all up: expected 3 services to answer, got {:?}",
                self.phases[0].hits
            ));
        }
        if self.phases[1].retries == 0 {
            return Err("crashed: expected retries to cover the dead instance".into());
        }
        if self.phases[2].hits.contains_key(&self.killed) || self.phases[2].retries > 0 {
            return Err(format!(
                "after discovery: traffic still reached {}",
                self.killed
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hits: Vec<String> = self.hits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(
            f,
            "{:<40} answers: {:<26} retries: {:<3} failed: {}",
            self.name,
            hits.join(" "),
            self.retries,
            self.failures
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "registry: {}://   service: {}",
            self.registry, self.service
        )?;
        for p in &self.phases {
            writeln!(f, "  {p}")?;
        }
        if let Some(ejected) = self.ejected {
            let yes = if ejected { "yes" } else { "no" };
            let killed = &self.killed;
            writeln!(f, "  {killed} ejected before discovery dropped it: {yes}")?;
        }
        Ok(())
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The service name to register (make it unique when the registry is shared).
    pub service: String,
    /// Requests per phase.
    pub requests: usize,
    /// How long to wait for discovery to reflect a change before giving up.
    pub discovery_timeout: Duration,
    /// The TTL of each service's health check: how long a crashed service stays
    /// discoverable. Heartbeats renew it every third of it.
    pub ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            service: "hello".into(),
            requests: 30,
            discovery_timeout: Duration::from_secs(20),
            ttl: Duration::from_secs(3),
        }
    }
}

struct Service {
    name: String,
    server: JoinHandle<()>,
    registration: Option<RegistrationGuard>,
}

async fn start_service(
    registry: &Arc<dyn Registry>,
    service: &str,
    name: &str,
    ttl: Duration,
) -> Result<Service, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let body = name.to_string();
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { body }));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let registration = register(registry, service, name, port, ttl).await?;
    Ok(Service {
        name: name.to_string(),
        server,
        registration: Some(registration),
    })
}

/// The start of every example binary: logs (`RUST_LOG`, default `error`) and the registry
/// `SD_REGISTRY` names (`memory://` when unset). On a bad URL it prints the error and
/// returns `None`.
pub fn setup() -> Option<Arc<dyn Registry>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    match sdkit::from_env() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// The end of every example binary: prints the report and the outcome of its check (the
/// check returns the success message).
pub fn conclude<R: fmt::Display>(
    result: Result<R, BoxError>,
    check: impl FnOnce(&R) -> Result<String, String>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    match result {
        Ok(report) => {
            print!("{report}");
            match check(&report) {
                Ok(message) => {
                    println!("ok: {message}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unexpected: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Registers `127.0.0.1:port` as instance `{service}-{name}` (meta `name`) with a TTL
/// health check that the returned guard keeps passing.
pub(crate) async fn register(
    registry: &Arc<dyn Registry>,
    service: &str,
    name: &str,
    port: u16,
    ttl: Duration,
) -> Result<RegistrationGuard, BoxError> {
    let instance = Instance::builder("127.0.0.1", port)
        .id(format!("{service}-{name}"))
        .meta("name", name)
        .build();
    let registrar = registry
        .registrar(
            Registration::new(service, instance)
                .check(HealthCheck::Ttl(ttl))
                // Consul's minimum; lets the agent reap a crashed instance eventually.
                .deregister_critical_after(Duration::from_secs(60)),
        )
        .await?;
    Ok(RegistrationGuard::register(registrar).await?)
}

/// The HTTP client of the quickstart and the axum example: Instancer → Endpointer → round
/// robin → retry, over reqwest.
pub(crate) struct HttpClient {
    instancer: Arc<dyn sdkit::Instancer>,
    pub(crate) endpointer: Arc<DefaultEndpointer<String>>,
    http: reqwest::Client,
    retry: RetriedHttp,
}

impl HttpClient {
    /// A client of `service`'s passing instances.
    pub(crate) async fn new(registry: &Arc<dyn Registry>, service: &str) -> Result<Self, BoxError> {
        let (instancer, endpointer) = discover_http(registry, service).await?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()?;
        let retry = Retry::new(RoundRobin::new(endpointer.clone()))
            .max_attempts(3)
            .timeout(Duration::from_secs(5));
        Ok(HttpClient {
            instancer,
            endpointer,
            http,
            retry,
        })
    }

    /// `GET /` on a balanced, retried endpoint; returns the body (the answering service's
    /// name) and the number of attempts.
    pub(crate) async fn get(&self) -> (Result<String, BoxError>, usize) {
        retried_get(&self.retry, &self.http).await
    }

    /// The reqwest client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Closes the endpoints and stops discovery.
    pub(crate) async fn close(&self) {
        self.endpointer.close().await;
        self.instancer.stop().await;
    }
}

/// Discovery of `service`'s passing instances as `http://host:port/` endpoints: its
/// instancer and the endpointer over it (close both when done).
pub async fn discover_http(
    registry: &Arc<dyn Registry>,
    service: &str,
) -> Result<(Arc<dyn sdkit::Instancer>, Arc<DefaultEndpointer<String>>), BoxError> {
    let instancer = registry
        .instancer(&ServiceQuery::new(service).passing_only(true))
        .await?;
    let endpointer = Arc::new(
        DefaultEndpointer::builder(&instancer, |i: &Instance| -> Result<String, BoxError> {
            Ok(format!("http://{}/", i.addr()))
        })
        .name(service.to_string())
        .build(),
    );
    Ok((instancer, endpointer))
}

/// The examples' HTTP client stack: round robin over discovered `http://host:port/` URLs,
/// with retry.
pub type RetriedHttp = Retry<RoundRobin<Arc<DefaultEndpointer<String>>, String>>;

/// `GET` on a balanced, retried endpoint (its value is the URL) through `http`; returns the
/// body and the number of attempts made. The quickstart, the axum example and the chaos
/// soak (`examples/chaos.rs`) all call their services this way.
pub async fn retried_get(
    retry: &RetriedHttp,
    http: &reqwest::Client,
) -> (Result<String, BoxError>, usize) {
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let result = retry
        .call(|ep: Endpoint<String>| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let http = http.clone();
            async move {
                http.get(ep.as_str())
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            }
        })
        .await;
    (result.map_err(Into::into), attempts.into_inner())
}

impl Phase {
    /// A phase named `name`, with nothing recorded yet.
    pub fn new(name: impl Into<String>) -> Phase {
        Phase {
            name: name.into(),
            ..Phase::default()
        }
    }

    /// Records one request: its outcome (the answer is the answering service's name) and
    /// how many attempts it took.
    pub fn record(&mut self, result: Result<String, BoxError>, attempts: usize) {
        self.retries += attempts.saturating_sub(1);
        match result {
            Ok(name) => *self.hits.entry(name).or_default() += 1,
            Err(e) => {
                tracing::warn!(error = %e, "request failed");
                self.failures += 1;
            }
        }
    }
}

/// Waits until the endpointer holds exactly `n` endpoints.
pub(crate) async fn wait_for<E: Send + Sync + 'static>(
    ep: &DefaultEndpointer<E>,
    n: usize,
    timeout: Duration,
) -> Result<(), BoxError> {
    wait_until(ep, timeout, |list| list.len() == n)
        .await
        .map_err(|_| format!("discovery did not show {n} instances within {timeout:?}").into())
}

/// Waits until `done` holds for the endpointer's current endpoints (none while it is in an
/// error state); `Err(())` after `timeout`.
pub(crate) async fn wait_until<E: Send + Sync + 'static>(
    ep: &DefaultEndpointer<E>,
    timeout: Duration,
    done: impl Fn(&[Endpoint<E>]) -> bool,
) -> Result<(), ()> {
    let mut changes = ep.changes();
    tokio::time::timeout(timeout, async {
        while !done(ep.endpoints().get().unwrap_or(&[])) {
            if !changes.changed().await {
                // The endpointer is gone: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    })
    .await
    .map_err(|_| ())
}

/// Runs the quickstart against `registry`.
pub async fn run(registry: Arc<dyn Registry>, opts: Options) -> Result<Report, BoxError> {
    let mut report = Report {
        registry: registry.scheme().to_string(),
        service: opts.service.clone(),
        ..Report::default()
    };

    // Three real HTTP services, each registering itself.
    let mut services = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        services.push(start_service(&registry, &opts.service, name, opts.ttl).await?);
    }

    // The client: Instancer -> Endpointer -> round robin -> retry.
    let client = HttpClient::new(&registry, &opts.service).await?;
    wait_for(&client.endpointer, 3, opts.discovery_timeout).await?;

    let traffic = |mut p: Phase| {
        let client = &client;
        async move {
            for _ in 0..opts.requests {
                let (result, attempts) = client.get().await;
                p.record(result, attempts);
            }
            p
        }
    };

    report
        .phases
        .push(traffic(Phase::new("all three up")).await);

    // One service crashes: its port closes at once and its heartbeats stop, but nobody
    // deregisters it, so the registry still lists it until its TTL lapses.
    let mut victim = services.remove(1);
    victim.server.abort();
    let _ = (&mut victim.server).await;
    let crashed_at = tokio::time::Instant::now();
    if let Some(guard) = victim.registration.take() {
        guard.abandon();
    }
    report.killed = victim.name.clone();
    report.phases.push(
        traffic(Phase::new(format!(
            "{} crashed, still registered",
            victim.name
        )))
        .await,
    );

    // Discovery notices on its own once the TTL lapses; traffic no longer goes there.
    wait_for(&client.endpointer, 2, opts.discovery_timeout + opts.ttl).await?;
    report.noticed_after = crashed_at.elapsed();
    report
        .phases
        .push(traffic(Phase::new("after discovery dropped it")).await);

    // Clean shutdown.
    for mut s in services {
        if let Some(guard) = s.registration.take() {
            guard.deregister().await?;
        }
        s.server.abort();
    }
    client.close().await;
    Ok(report)
}
