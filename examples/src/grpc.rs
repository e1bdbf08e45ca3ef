//! The gRPC example, as a library so that tests run exactly what `cargo run -p examples
//! --example grpc` runs, against any registry.
//!
//! Three tonic servers (the `Greeter` service of `proto/greeter.proto`) register themselves
//! with a TTL health check; a tonic client discovers them and balances its calls over one
//! [`Channel`] per instance with power of two choices on peak-EWMA latency. Mid-run one
//! server is killed while it holds a call: its connections close, its heartbeats stop,
//! nobody deregisters it. The cut call is retried on another server, ejection takes the
//! dead one out of the pick, and discovery drops it when its TTL lapses. No call fails.
//!
//! The client comes in two builds ([`Balancing`]), both over the same discovery:
//! - [`Balancing::Sdkit`] (the default): sd-lb's [`P2c::peak_ewma`] under outlier ejection
//!   ([`Outlier`], after two failures), each call through sd-lb's [`Retry`].
//! - [`Balancing::Tower`]: tower's own `tower::balance::p2c::Balance` over
//!   `PeakEwmaDiscover` over sdkit's discovery as a tower `Discover`
//!   ([`sd_lb::tower::Discover`]), behind a `tower::buffer::Buffer`, as the generated
//!   client's transport; each `Channel` wrapped in [`sd_lb::tower::Eject`]; a retry loop
//!   above the generated client. See `grpc/tower_stack.rs`.
//!
//! # Which to choose
//! Both work with tonic and neither fails a call here. The differences:
//! - **Failures count.** tower's peak EWMA measures latency only, and a dead backend
//!   answers "connection refused" fastest of all, so tower's P2C alone would prefer it until
//!   discovery removed it. sd-lb's [`Outlier`] sees each call's outcome; on the tower build,
//!   [`sd_lb::tower::Eject`] turns a failing endpoint unready so that `Balance` skips it.
//! - **Retries can replay.** A call cut by a crash must be sent again. Below the client
//!   stub a tonic request is an HTTP body that cannot be replayed (so `tower::retry` cannot
//!   retry it there); above the stub the request message is a cloneable value, and
//!   [`Retry::call`] sends it again to another endpoint (`avoid_failed`), with a deadline.
//!   The tower build retries above the stub too, but its retry cannot tell the balancer to
//!   avoid the endpoint that just failed (ejection does that).
//! - **No `Buffer`.** `tower::balance::p2c::Balance` is not `Clone`, so a shared client needs
//!   a `Buffer` task in front of it (one more hop per call); sd-lb's balancers are shared by
//!   reference.
//!
//! Retrying is only right for idempotent calls; [`retryable`] retries the codes that mean
//! "not processed or the server went away" and stops on application errors.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_lb::{Decision, Outlier, OutlierConfig, P2c, Retry};
use sdkit::{
    BoxError, DefaultEndpointer, Endpoint, Instance, Instancer, RegistrationGuard, Registry,
    ServiceQuery,
};
use tokio::sync::{oneshot, Notify};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// The code generated from `proto/greeter.proto` by tonic-prost-build (see `build.rs`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("greeter");
}

use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

use crate::{register, wait_for, Phase, Report};

mod tower_stack;
use tower_stack::TowerStack;
pub use tower_stack::Transport;

/// Which balancer the client uses (both over sdkit's discovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balancing {
    /// sd-lb: `Outlier<P2c::peak_ewma>` under `Retry`.
    #[default]
    Sdkit,
    /// tower: `Buffer<Balance<PeakEwmaDiscover<sd_lb::tower::Discover>>>` over
    /// `Eject<Channel>`s, with a retry loop above the generated client.
    Tower,
}

impl std::str::FromStr for Balancing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sdkit" => Ok(Balancing::Sdkit),
            "tower" => Ok(Balancing::Tower),
            other => Err(format!(
                "unknown balancing {other:?}: expected \"sdkit\" or \"tower\""
            )),
        }
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The service name to register (make it unique when the registry is shared).
    pub service: String,
    /// Calls per phase, over all callers.
    pub calls: usize,
    /// Callers running at once.
    pub concurrency: usize,
    /// The TTL of each server's health check: how long a killed server stays discoverable.
    pub ttl: Duration,
    /// How long to wait for discovery (or the victim taking a call) before giving up.
    pub discovery_timeout: Duration,
    /// The client's balancer.
    pub balancing: Balancing,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            service: "greeter".into(),
            calls: 200,
            concurrency: 4,
            ttl: Duration::from_secs(3),
            discovery_timeout: Duration::from_secs(20),
            balancing: Balancing::default(),
        }
    }
}

/// The server side: answers with its own name. While `hold` is set it keeps the next call
/// open (announcing it on `holding`), so that the example can kill it mid-call.
#[derive(Clone)]
struct Hello {
    name: String,
    hold: Arc<AtomicBool>,
    holding: Arc<Notify>,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        if self.hold.swap(false, Ordering::SeqCst) {
            self.holding.notify_one();
            std::future::pending::<()>().await;
        }
        let name = request.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("hello {name}"),
            server: self.name.clone(),
        }))
    }
}

/// A running server: its own runtime on its own thread, like a process, so that killing it
/// closes every connection it has (aborting a task would leave tonic's connection tasks
/// running).
struct Server {
    name: String,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    registration: Option<RegistrationGuard>,
    hold: Arc<AtomicBool>,
    holding: Arc<Notify>,
}

impl Server {
    /// Starts a server on a free loopback port and registers it.
    async fn start(
        registry: &Arc<dyn Registry>,
        service: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<Server, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let hello = Hello {
            name: name.to_string(),
            hold: Arc::new(AtomicBool::new(false)),
            holding: Arc::new(Notify::new()),
        };
        let (hold, holding) = (hello.hold.clone(), hello.holding.clone());
        let (kill, killed) = oneshot::channel::<()>();
        let thread_name = name.to_string();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(server = %thread_name, error = %e, "no runtime"),
            };
            rt.block_on(async move {
                let incoming = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => tonic::transport::server::TcpIncoming::from(l),
                    Err(e) => return tracing::error!(server = %thread_name, error = %e, "listener"),
                };
                let serve = tonic::transport::Server::builder()
                    .add_service(GreeterServer::new(hello))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    r = serve => if let Err(e) = r {
                        tracing::error!(server = %thread_name, error = %e, "server failed");
                    },
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task: the sockets close as in a
            // crash, and calls in flight there are cut.
            drop(rt);
        });
        let registration = register(registry, service, name, port, ttl).await?;
        Ok(Server {
            name: name.to_string(),
            kill: Some(kill),
            thread: Some(thread),
            registration: Some(registration),
            hold,
            holding,
        })
    }

    /// Stops the server's runtime and waits for its thread.
    async fn stop_runtime(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// A crash: connections close, heartbeats stop, nobody deregisters.
    async fn kill(&mut self) {
        self.stop_runtime().await;
        if let Some(guard) = self.registration.take() {
            guard.abandon();
        }
    }

    /// A clean stop: deregister (waiting for the registry's answer), then stop.
    async fn stop(mut self) -> Result<(), BoxError> {
        if let Some(guard) = self.registration.take() {
            guard.deregister().await?;
        }
        self.stop_runtime().await;
        Ok(())
    }
}

/// Whether a failed call may be sent again to another server: the codes that mean the call
/// was not processed or its server went away (a crash cuts a call with `Unavailable`, or
/// `Unknown` / `Cancelled` when the stream is reset), and timeouts and balancer errors (no
/// `Status` at all). Application errors (`InvalidArgument`, `NotFound`, ...) are final.
pub fn retryable(error: &BoxError) -> bool {
    match error.downcast_ref::<Status>() {
        Some(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        None => true,
    }
}

/// The client's balancer: P2C on peak-EWMA latency over one `Channel` per instance, under
/// outlier ejection.
pub type Balancer = Outlier<P2c<Arc<DefaultEndpointer<Channel>>, Channel>, Channel>;

/// The client: discovery → one lazily connected [`Channel`] per instance → P2C peak-EWMA
/// with ejection → retry, built as [`Balancing`] says.
pub struct Client {
    instancer: Arc<dyn Instancer>,
    stack: Stack,
}

enum Stack {
    Sdkit {
        endpointer: Arc<DefaultEndpointer<Channel>>,
        retry: Box<Retry<Balancer>>,
    },
    Tower(TowerStack),
}

impl Client {
    /// A client of `service`'s passing instances in `registry`, on sd-lb's balancer.
    pub async fn new(registry: &Arc<dyn Registry>, service: &str) -> Result<Client, BoxError> {
        Client::with(registry, service, Balancing::Sdkit).await
    }

    /// A client of `service`'s passing instances in `registry`, on the given balancer.
    pub async fn with(
        registry: &Arc<dyn Registry>,
        service: &str,
        balancing: Balancing,
    ) -> Result<Client, BoxError> {
        let instancer = registry
            .instancer(&ServiceQuery::new(service).passing_only(true))
            .await?;
        if balancing == Balancing::Tower {
            let stack = Stack::Tower(TowerStack::new(&instancer, service));
            return Ok(Client { instancer, stack });
        }
        // One Channel per instance. `connect_lazy` connects on first use and reconnects
        // after a lost connection; the Channel is dropped when discovery drops the instance.
        let endpointer = Arc::new(
            DefaultEndpointer::builder(&instancer, |i: &Instance| -> Result<Channel, BoxError> {
                Ok(
                    tonic::transport::Endpoint::from_shared(format!("http://{}", i.addr()))?
                        .connect_timeout(Duration::from_millis(500))
                        .connect_lazy(),
                )
            })
            .name(service.to_string())
            .build(),
        );
        let balancer = Outlier::new(
            P2c::peak_ewma(endpointer.clone()),
            OutlierConfig {
                consecutive_failures: 2,
                ..OutlierConfig::default()
            },
        );
        let retry = Retry::new(balancer)
            .max_attempts(3)
            .attempt_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .callback(|_, e| {
                if retryable(e) {
                    Decision::Retry
                } else {
                    Decision::Stop
                }
            });
        Ok(Client {
            instancer,
            stack: Stack::Sdkit {
                endpointer,
                retry: Box::new(retry),
            },
        })
    }

    /// Calls `SayHello` on a balanced, retried channel; returns the reply and the number of
    /// attempts made.
    pub async fn say_hello(&self, name: &str) -> (Result<HelloReply, BoxError>, usize) {
        let retry = match &self.stack {
            Stack::Sdkit { retry, .. } => retry,
            Stack::Tower(tower) => return tower.say_hello(name).await,
        };
        let attempts = AtomicUsize::new(0);
        let result = retry
            .call(|ep: Endpoint<Channel>| {
                attempts.fetch_add(1, Ordering::Relaxed);
                // A generated client over the picked instance's Channel: cheap (a clone).
                let mut client = GreeterClient::new(ep.value().clone());
                let request = HelloRequest { name: name.into() };
                async move { client.say_hello(request).await.map(Response::into_inner) }
            })
            .await;
        (result.map_err(Into::into), attempts.into_inner())
    }

    /// Waits until discovery shows `n` instances.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<(), BoxError> {
        match &self.stack {
            Stack::Sdkit { endpointer, .. } => wait_for(endpointer, n, timeout).await,
            Stack::Tower(tower) => wait_for(tower.endpointer(), n, timeout).await,
        }
    }

    /// Closes the endpoints and stops discovery.
    pub async fn close(&self) {
        match &self.stack {
            Stack::Sdkit { endpointer, .. } => endpointer.close().await,
            Stack::Tower(tower) => tower.endpointer().close().await,
        }
        self.instancer.stop().await;
    }

    /// Whether ejection currently leaves out the endpoint of the instance with meta `name`.
    fn is_ejected(&self, name: &str) -> bool {
        let (endpointer, retry) = match &self.stack {
            Stack::Sdkit { endpointer, retry } => (endpointer, retry),
            Stack::Tower(tower) => return tower.is_ejected(name),
        };
        let snap = sdkit::Endpointer::endpoints(&**endpointer);
        let list = snap.all();
        list.iter()
            .filter(|ep| ep.instance().meta().get("name") == Some(name))
            .any(|ep| retry.balancer().is_ejected(ep))
    }
}

/// Runs `calls` calls over `concurrency` callers; `mid_run` runs once half of them have
/// started, while the callers keep going.
async fn traffic<F: std::future::Future<Output = ()>>(
    client: &Client,
    name: &str,
    opts: &Options,
    mid_run: F,
) -> Phase {
    let done = AtomicUsize::new(0);
    let half = Notify::new();
    let phase = std::sync::Mutex::new(Phase::new(name));
    let caller = || async {
        loop {
            let n = done.fetch_add(1, Ordering::SeqCst);
            if n == opts.calls / 2 {
                half.notify_one();
            }
            if n >= opts.calls {
                break;
            }
            let (result, attempts) = client.say_hello("example").await;
            let answer = result.map(|reply| reply.server);
            phase
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(answer, attempts);
        }
    };
    let callers = futures::future::join_all((0..opts.concurrency.max(1)).map(|_| caller()));
    // Half-way through (always reached: the callers count up to `calls`), `mid_run` runs
    // while they keep going; the phase ends when both are done.
    let mid = async {
        half.notified().await;
        mid_run.await;
    };
    tokio::join!(callers, mid);
    phase.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Runs the gRPC example against `registry`.
pub async fn run(registry: Arc<dyn Registry>, opts: Options) -> Result<Report, BoxError> {
    let mut report = Report {
        registry: registry.scheme().to_string(),
        service: opts.service.clone(),
        ..Report::default()
    };
    let mut servers = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        servers.push(Server::start(&registry, &opts.service, name, opts.ttl).await?);
    }
    let client = Client::with(&registry, &opts.service, opts.balancing).await?;
    client.wait_for(3, opts.discovery_timeout).await?;

    report
        .phases
        .push(traffic(&client, "all three up", &opts, async {}).await);

    // Mid-run, the victim takes a call and holds it; then it is killed.
    let mut victim = servers.remove(1);
    report.killed = victim.name.clone();
    let kill_result = std::sync::Mutex::new(Ok::<(), String>(()));
    let killed_at = std::sync::Mutex::new(None);
    let phase = traffic(
        &client,
        &format!("{} killed mid-call", victim.name),
        &opts,
        async {
            victim.hold.store(true, Ordering::SeqCst);
            let held = tokio::time::timeout(opts.discovery_timeout, victim.holding.notified());
            if held.await.is_err() {
                *kill_result.lock().unwrap_or_else(|e| e.into_inner()) =
                    Err("the victim took no call to hold".into());
            }
            victim.kill().await;
            *killed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(tokio::time::Instant::now());
        },
    )
    .await;
    kill_result
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())?;
    let killed_at = killed_at.into_inner().unwrap_or_else(|e| e.into_inner());
    report.ejected = Some(client.is_ejected(&victim.name));
    report.phases.push(phase);

    // Discovery drops it once its TTL lapses.
    client
        .wait_for(2, opts.discovery_timeout + opts.ttl)
        .await?;
    report.noticed_after = killed_at.map(|t| t.elapsed()).unwrap_or_default();
    report
        .phases
        .push(traffic(&client, "after discovery dropped it", &opts, async {}).await);

    for s in servers {
        s.stop().await?;
    }
    client.close().await;
    Ok(report)
}
