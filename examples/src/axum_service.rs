//! The axum example, as a library so that tests run exactly what `cargo run -p examples
//! --example axum` runs, against any registry.
//!
//! [`serve`] is the service a Rust author would write: an axum app that registers itself
//! on start and, when told to stop (SIGTERM, see [`sigterm`]), leaves rotation in order:
//! 1. **out of rotation**: it deregisters, waiting for the registry's answer;
//! 2. **propagation**: it waits until its own view of the registry (a passing-only
//!    instancer, like its clients') no longer lists it, then `drain_grace` more for clients
//!    whose view lags; it keeps serving meanwhile, so a client that still picks it is served;
//! 3. **drain**: axum's graceful shutdown stops accepting, lets the requests in flight
//!    finish and closes idle keep-alive connections, bounded by `drain_timeout`;
//! 4. **exit**, returning what it served.
//!
//! [`run`] is the demo: three instances serve while a client (discovery → round robin →
//! retry, over reqwest) keeps calling them, and a rolling restart replaces them one by one
//! (start the new one, wait until clients see it, stop the old one as above). The client
//! sees no failure; every old instance finished every request it had started. A client's
//! retry is still needed for one race no server can close: a request sent on a keep-alive
//! connection at the moment the server closes it as idle.
//!
//! With `memory://` every instance lives in this process, so "SIGTERM" is a per-instance
//! future; `cargo run -p examples --example axum -- serve` runs one instance that stops on
//! the real signal (one process per instance, for a real registry).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use sdkit::{
    BoxError, DefaultEndpointer, Endpoint, Instance, Instancer, RegistrationGuard, Registry,
    ServiceQuery,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::{register, wait_for, wait_until, HttpClient, Phase};

/// Options of one instance ([`serve`]).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The service name to register.
    pub service: String,
    /// This instance's name (its instance id is `{service}-{name}`; it answers with it).
    pub name: String,
    /// The TTL of the health check the registration keeps passing.
    pub ttl: Duration,
    /// How long to wait for the registry to show the deregistration (step 2).
    pub propagation_timeout: Duration,
    /// How long to keep serving after that, for clients whose view lags (step 2).
    pub drain_grace: Duration,
    /// How long the requests in flight may take to finish (step 3).
    pub drain_timeout: Duration,
    /// How long each request works before answering (so that some are in flight).
    pub work: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            service: "hello".into(),
            name: "a".into(),
            ttl: Duration::from_secs(5),
            propagation_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(10),
            work: Duration::from_millis(5),
        }
    }
}

/// What one instance did, returned by [`Service::shutdown`] when it exits.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// The instance's name.
    pub name: String,
    /// Requests it started handling.
    pub started: usize,
    /// Requests it answered. Equal to `started` when the drain let every request finish.
    pub completed: usize,
    /// Requests in flight when it stopped accepting (step 3).
    pub in_flight_at_drain: usize,
    /// Requests it served after deregistering (clients whose view still had it).
    pub served_after_deregister: usize,
    /// Whether its own view of the registry dropped it within `propagation_timeout`.
    pub propagated: bool,
}

#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    completed: AtomicUsize,
    after_deregister: AtomicUsize,
    deregistered: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    work: Duration,
    counters: Arc<Counters>,
    /// `/slow` requests that have started.
    slow_started: Arc<watch::Sender<usize>>,
    /// Set when the drain starts.
    draining: watch::Receiver<bool>,
}

impl AppState {
    fn enter(&self) {
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        if self.counters.deregistered.load(Ordering::SeqCst) {
            self.counters
                .after_deregister
                .fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counted only when a handler runs to its end: a request cut by the shutdown is not.
    fn leave(&self) -> String {
        self.counters.completed.fetch_add(1, Ordering::SeqCst);
        self.name.to_string()
    }
}

/// `GET /`: a short request.
async fn hello(State(s): State<AppState>) -> String {
    s.enter();
    tokio::time::sleep(s.work).await;
    s.leave()
}

/// `GET /slow`: a long request (an export, a long poll), here one that is still running
/// when the drain starts: it works until then, and for a while after.
async fn slow(State(s): State<AppState>) -> String {
    s.enter();
    s.slow_started.send_modify(|n| *n += 1);
    let mut draining = s.draining.clone();
    let _ = tokio::time::timeout(Duration::from_secs(60), draining.wait_for(|d| *d)).await;
    tokio::time::sleep(s.work * 10).await;
    s.leave()
}

/// Resolves on SIGTERM (or Ctrl-C). The handler is installed when this is called, not when
/// the future is first polled, so a signal right after the call is not missed.
pub fn sigterm() -> std::io::Result<impl Future<Output = ()> + Send> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Serves on `listener`, registered in `registry`, until `shutdown` resolves (e.g.
/// [`sigterm`]); then leaves rotation ([`Service::shutdown`]) and returns what it did.
pub async fn serve(
    registry: Arc<dyn Registry>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stopped, BoxError> {
    let service = Service::start(registry, listener, opts).await?;
    shutdown.await;
    service.shutdown().await
}

/// A running, registered instance.
pub struct Service {
    opts: ServeOptions,
    id: String,
    addr: SocketAddr,
    counters: Arc<Counters>,
    slow_started: watch::Receiver<usize>,
    draining: watch::Sender<bool>,
    drain: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    guard: RegistrationGuard,
    instancer: Arc<dyn Instancer>,
    view: DefaultEndpointer<()>,
}

impl Service {
    /// Serves the app on `listener` and registers it (returns once the registration is in).
    pub async fn start(
        registry: Arc<dyn Registry>,
        listener: TcpListener,
        opts: ServeOptions,
    ) -> Result<Service, BoxError> {
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (slow_tx, slow_started) = watch::channel(0);
        let (draining, draining_rx) = watch::channel(false);
        let state = AppState {
            name: opts.name.as_str().into(),
            work: opts.work,
            counters: counters.clone(),
            slow_started: Arc::new(slow_tx),
            draining: draining_rx,
        };
        let app = axum::Router::new()
            .route("/", axum::routing::get(hello))
            .route("/slow", axum::routing::get(slow))
            .with_state(state);
        let (drain, drained) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = drained.await;
                })
                .await
        });

        // Our own view of the registry, the way clients see it (started before registering
        // so it is warm when we need it).
        let id = format!("{}-{}", opts.service, opts.name);
        let instancer = registry
            .instancer(&ServiceQuery::new(opts.service.as_str()).passing_only(true))
            .await?;
        let view = DefaultEndpointer::new(&*instancer, |_: &Instance| -> Result<(), BoxError> {
            Ok(())
        });
        let guard = register(&registry, &opts.service, &opts.name, addr.port(), opts.ttl).await?;
        tracing::info!(instance = %id, %addr, "registered");
        Ok(Service {
            opts,
            id,
            addr,
            counters,
            slow_started,
            draining,
            drain,
            server,
            guard,
            instancer,
            view,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until `n` `/slow` requests have started (at most `timeout`).
    pub async fn wait_slow(&self, n: usize, timeout: Duration) -> Result<(), BoxError> {
        let mut rx = self.slow_started.clone();
        let started =
            tokio::time::timeout(timeout, async { rx.wait_for(|k| *k >= n).await.is_ok() })
                .await
                .unwrap_or(false);
        if started {
            Ok(())
        } else {
            Err(format!("{}: no /slow request within {timeout:?}", self.id).into())
        }
    }

    /// Leaves rotation: deregisters, waits until the registry shows it gone and for the
    /// grace, drains the requests in flight, and returns what it did.
    pub async fn shutdown(self) -> Result<Stopped, BoxError> {
        let Service {
            opts,
            id,
            counters,
            draining,
            drain,
            mut server,
            guard,
            instancer,
            view,
            ..
        } = self;
        // 1. Out of rotation first, while still serving.
        counters.deregistered.store(true, Ordering::SeqCst);
        guard.deregister().await?;
        // 2. Until the registry shows it, and a grace for clients whose view lags.
        let gone = |list: &[Endpoint<()>]| list.iter().all(|ep| ep.instance().id() != id);
        let propagated = wait_until(&view, opts.propagation_timeout, gone)
            .await
            .is_ok();
        view.close().await;
        instancer.stop().await;
        tokio::time::sleep(opts.drain_grace).await;
        // 3. Drain: stop accepting, let the requests in flight finish.
        let in_flight_at_drain = counters
            .started
            .load(Ordering::SeqCst)
            .saturating_sub(counters.completed.load(Ordering::SeqCst));
        let _ = draining.send(true);
        let _ = drain.send(());
        match tokio::time::timeout(opts.drain_timeout, &mut server).await {
            Ok(joined) => joined??,
            Err(_) => {
                server.abort();
                return Err(format!(
                    "{id}: requests still in flight after {:?}",
                    opts.drain_timeout
                )
                .into());
            }
        }
        tracing::info!(instance = %id, "drained, exiting");
        // 4. Exit.
        Ok(Stopped {
            name: opts.name,
            started: counters.started.load(Ordering::SeqCst),
            completed: counters.completed.load(Ordering::SeqCst),
            in_flight_at_drain,
            served_after_deregister: counters.after_deregister.load(Ordering::SeqCst),
            propagated,
        })
    }
}

/// Options of the rolling-restart demo ([`run`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// The service name to register (make it unique when the registry is shared).
    pub service: String,
    /// Client callers running at once during the restart.
    pub concurrency: usize,
    /// Requests after the restart (checked to reach only the new instances).
    pub requests_after: usize,
    /// An upper bound on the requests during the restart (the callers stop at it).
    pub max_requests: usize,
    /// How long to wait for discovery to show a change.
    pub discovery_timeout: Duration,
    /// The options of each instance (`service` and `name` are set per instance).
    pub serve: ServeOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            service: "hello".into(),
            concurrency: 4,
            requests_after: 30,
            max_requests: 200_000,
            discovery_timeout: Duration::from_secs(20),
            serve: ServeOptions::default(),
        }
    }
}

/// What the rolling restart showed.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The registry used (its URL scheme).
    pub registry: String,
    /// The service name registered.
    pub service: String,
    /// Answers per instance during the restart.
    pub during: BTreeMap<String, usize>,
    /// Requests that failed even after retries, during the restart.
    pub failures: usize,
    /// Attempts beyond the first, during the restart.
    pub retries: usize,
    /// Answers per instance after it.
    pub after: BTreeMap<String, usize>,
    /// Requests that failed after it.
    pub failures_after: usize,
    /// The old instances, as they exited.
    pub stopped: Vec<Stopped>,
    /// The new instances' names.
    pub new: Vec<String>,
    /// `/slow` requests in flight at an old instance's drain that got no answer.
    pub slow_cut: usize,
}

impl Report {
    /// Whether the run showed what it should: no failure; every old instance served, was
    /// seen gone by its own view, and finished every request it started; after the restart
    /// all three new instances answer and no old one does.
    pub fn check(&self) -> Result<(), String> {
        if self.failures + self.failures_after > 0 {
            return Err(format!(
                "{} requests failed during the restart, {} after",
                self.failures, self.failures_after
            ));
        }
        if self.stopped.len() != 3 {
            return Err(format!(
                "{} old instances stopped, not 3",
                self.stopped.len()
            ));
        }
        if self.slow_cut > 0 {
            return Err(format!(
                "{} slow requests in flight at a drain got no answer",
                self.slow_cut
            ));
        }
        for s in &self.stopped {
            if s.in_flight_at_drain == 0 {
                return Err(format!("{}: nothing in flight at its drain", s.name));
            }
            if s.completed != s.started {
                return Err(format!(
                    "{} cut {} requests short",
                    s.name,
                    s.started - s.completed
                ));
            }
            if !s.propagated {
                return Err(format!("{}: the registry still listed it", s.name));
            }
        }
        for n in &self.new {
            if !self.after.contains_key(n) {
                return Err(format!("after: {n} did not answer ({:?})", self.after));
            }
        }
        if let Some(old) = self
            .stopped
            .iter()
            .find(|s| self.after.contains_key(&s.name))
        {
            return Err(format!("after: {} still answered", old.name));
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hits = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            f,
            "registry: {}://   service: {}",
            self.registry, self.service
        )?;
        writeln!(
            f,
            "  rolling restart   answers: {}   retries: {}   failed: {}",
            hits(&self.during),
            self.retries,
            self.failures
        )?;
        for s in &self.stopped {
            writeln!(
                f,
                "    {} stopped: served {} ({} after deregistering), {} in flight at the drain, {} cut",
                s.name,
                s.completed,
                s.served_after_deregister,
                s.in_flight_at_drain,
                s.started.saturating_sub(s.completed)
            )?;
        }
        writeln!(
            f,
            "    /slow requests in flight at a drain and cut: {}",
            self.slow_cut
        )?;
        writeln!(
            f,
            "  after             answers: {}   failed: {}",
            hits(&self.after),
            self.failures_after
        )
    }
}

async fn start(
    registry: &Arc<dyn Registry>,
    opts: &Options,
    name: &str,
) -> Result<Service, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let serve_opts = ServeOptions {
        service: opts.service.clone(),
        name: name.to_string(),
        ..opts.serve.clone()
    };
    Service::start(registry.clone(), listener, serve_opts).await
}

/// Stops `old` the way SIGTERM would, with a `/slow` request in flight: returns what it
/// did and whether the slow request got its answer.
async fn stop_with_slow_request(
    old: Service,
    http: &reqwest::Client,
    opts: &Options,
) -> Result<(Stopped, bool), BoxError> {
    let url = format!("http://{}/slow", old.addr());
    let request = tokio::spawn({
        let http = http.clone();
        async move { http.get(url).send().await?.error_for_status()?.text().await }
    });
    old.wait_slow(1, opts.discovery_timeout).await?;
    let timeout =
        opts.serve.propagation_timeout + opts.serve.drain_grace + opts.serve.drain_timeout;
    let stopped = tokio::time::timeout(timeout, old.shutdown())
        .await
        .map_err(|_| format!("an instance did not exit within {timeout:?}"))??;
    let answered = matches!(request.await, Ok(Ok(ref body)) if *body == stopped.name);
    Ok((stopped, answered))
}

/// Runs the rolling-restart demo against `registry`.
pub async fn run(registry: Arc<dyn Registry>, opts: Options) -> Result<Report, BoxError> {
    let mut report = Report {
        registry: registry.scheme().to_string(),
        service: opts.service.clone(),
        ..Report::default()
    };
    let mut old = Vec::new();
    for name in ["a1", "b1", "c1"] {
        old.push(start(&registry, &opts, name).await?);
    }

    // The client: discovery -> round robin -> retry, over reqwest.
    let client = HttpClient::new(&registry, &opts.service).await?;
    let endpointer = &client.endpointer;
    wait_for(endpointer, 3, opts.discovery_timeout).await?;

    // Traffic during the whole restart, from `concurrency` callers.
    let during = Mutex::new(Phase::new("rolling restart"));
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let traffic = futures::future::join_all((0..opts.concurrency.max(1)).map(|_| async {
        while !stop.load(Ordering::SeqCst)
            && sent.fetch_add(1, Ordering::SeqCst) < opts.max_requests
        {
            let (result, attempts) = client.get().await;
            let mut p = during.lock().unwrap_or_else(|e| e.into_inner());
            p.record(result, attempts);
        }
    }));
    let restart = async {
        let mut new = Vec::new();
        let mut stopped = Vec::new();
        for (i, o) in old.into_iter().enumerate() {
            let name = format!("{}2", ["a", "b", "c"][i]);
            new.push((name.clone(), start(&registry, &opts, &name).await?));
            wait_for(endpointer, 4, opts.discovery_timeout).await?;
            stopped.push(stop_with_slow_request(o, client.http(), &opts).await?);
            wait_for(endpointer, 3, opts.discovery_timeout).await?;
        }
        Ok::<_, BoxError>((new, stopped))
    };
    let (restarted, ()) = tokio::join!(
        async {
            let r = restart.await;
            stop.store(true, Ordering::SeqCst);
            r
        },
        async {
            traffic.await;
        }
    );
    let (new, stopped) = restarted?;
    let (stopped, answered): (Vec<_>, Vec<_>) = stopped.into_iter().unzip();
    report.slow_cut = answered.iter().filter(|a| !**a).count();
    let during = during.into_inner().unwrap_or_else(|e| e.into_inner());
    report.during = during.hits;
    report.failures = during.failures;
    report.retries = during.retries;
    report.stopped = stopped;

    // After the restart: only the new instances answer.
    let mut after = Phase::new("after");
    for _ in 0..opts.requests_after {
        let (result, attempts) = client.get().await;
        after.record(result, attempts);
    }
    report.after = after.hits;
    report.failures_after = after.failures;

    for (name, n) in new {
        n.shutdown().await?;
        report.new.push(name);
    }
    client.close().await;
    Ok(report)
}
