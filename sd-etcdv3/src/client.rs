//! The gRPC client for the etcd v3 API: endpoints, user/password auth, TLS, timeouts.
//!
//! A [`Client`] is cheap to clone (clones share one connection) and is what the
//! [`EtcdInstancer`](crate::EtcdInstancer) and the [`EtcdRegistrar`](crate::EtcdRegistrar)
//! talk through. It wraps [`etcd_client::Client`] and adds what the backend needs on top:
//!
//! - **No network at construction.** [`Client::new`] checks the configuration and reads the
//!   TLS files; the connection (and, with a user, the authentication) happens on the first
//!   request, and again after a failed attempt. Bad files and bad options are
//!   [`Error::Config`] at once.
//! - **Every unary request has a deadline** ([`ClientConfig::timeout`]): with the server down,
//!   the gRPC channel would otherwise queue a request until an endpoint comes back. Watches
//!   are long-lived streams and have no deadline; HTTP/2 keep-alive pings
//!   ([`ClientConfig::keep_alive`]) end a stream whose server stopped answering.
//! - **Several endpoints** (`etcd://a:2379,b:2379`): the client talks to one at a time; a
//!   request that cannot reach it (refused, reset, no answer within the deadline) moves to
//!   the next endpoint and is retried there within the same deadline, and a watch broken by
//!   its endpoint's death is re-created (by the instancer) on the next one.
//! - **The password is a [`Secret`]**: it is given to the etcd client's authenticate call
//!   only, and is never in `Debug` output, an error or a log line.
//!
//! ```
//! use sd_core::Secret;
//! use sd_etcdv3::{Client, ClientConfig};
//!
//! let client = Client::new(
//!     ClientConfig::new(["127.0.0.1:2379", "127.0.0.1:22379"])
//!         .prefix("/services")
//!         .user("sd", Secret::new("s3cr3t")),
//! )?;
//! assert!(!format!("{client:?}").contains("s3cr3t"));
//! # Ok::<(), sd_core::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions, WatchStream,
};
use sd_core::{Error, Result, Secret};
use tokio::sync::Mutex;

/// The backend name used in errors and logs.
pub const BACKEND: &str = "etcd";

/// etcd's default client port.
pub const DEFAULT_PORT: u16 = 2379;

/// The key prefix services are registered under: keys are `<prefix>/<service>/<id>`.
pub const DEFAULT_PREFIX: &str = "/services";

/// How long connecting to an endpoint may take (go-kit's `DialTimeout` default, E3-1).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The deadline of each unary request (get, put, lease calls).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/2 keep-alive ping interval. A connection whose server does not answer a ping
/// within the same time again is closed, which ends a watch on a frozen server.
///
/// Pings are sent only while a stream is open (a watch, a lease keep-alive stream), and not
/// more often than etcd allows: an etcd server answers pings more frequent than its
/// `--grpc-keepalive-min-time` (5 s by default), or pings on a connection without streams,
/// with `GOAWAY too_many_pings` after two strikes, which ends every watch on the connection
/// (they are then read again in full). go-kit asks for 3 s (`DialKeepAlive`, E3-1), which
/// grpc-go raises to its floor of 10 s; so does this default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The largest gRPC message accepted from the server (a `Get` of a whole prefix is one
/// message). The bound keeps a runaway prefix from allocating without limit.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Keys read per page by [`Client::services`].
pub const SERVICES_PAGE: i64 = 1000;

/// The most service names [`Client::services`] returns.
pub const MAX_SERVICES: usize = 100_000;

/// The longest `dial_timeout`, `timeout` and `keep_alive` accepted (24 h): longer values are
/// refused at construction, so deadlines computed from them cannot overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How to reach and authenticate to etcd.
///
/// Built with [`ClientConfig::new`] and the setters, or from an `etcd://` URL by
/// [`EtcdRegistry::from_url`](crate::EtcdRegistry::from_url). `Debug` never shows the
/// password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The endpoints, `host:port` each (`[v6]:port` for IPv6).
    pub endpoints: Vec<String>,
    /// The key prefix: keys are `<prefix>/<service>/<instance id>`. Starts with `/`, no
    /// trailing `/`.
    pub prefix: String,
    /// The user to authenticate as; `password` goes with it.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// Talk TLS. Implied by `ca_file` and `cert_file`.
    pub tls: bool,
    /// A PEM file with the CA certificate(s) to trust.
    pub ca_file: Option<PathBuf>,
    /// A PEM file with the client certificate, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// A PEM file with the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// How long connecting may take.
    pub dial_timeout: Duration,
    /// The deadline of each unary request.
    pub timeout: Duration,
    /// The HTTP/2 keep-alive ping interval (and timeout).
    pub keep_alive: Duration,
}

impl ClientConfig {
    /// A config for `endpoints` (`host:port` each), plain gRPC, no auth, prefix
    /// [`DEFAULT_PREFIX`], [`DEFAULT_DIAL_TIMEOUT`], [`DEFAULT_TIMEOUT`] and
    /// [`DEFAULT_KEEP_ALIVE`].
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            user: None,
            password: None,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }

    /// Sets the key prefix (normalised: a leading `/` added, trailing `/` removed).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = normalize_prefix(&prefix.into());
        self
    }

    /// Authenticates as `user` with `password`.
    #[must_use]
    pub fn user(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.user = Some(user.into());
        self.password = Some(password);
        self
    }

    /// Uses TLS.
    #[must_use]
    pub fn tls(mut self, yes: bool) -> Self {
        self.tls = yes;
        self
    }

    /// Trusts the CA certificates in this PEM file (implies TLS).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) for mutual TLS (implies TLS).
    #[must_use]
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// Sets the dial timeout.
    #[must_use]
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// Sets the per-request deadline.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets the HTTP/2 keep-alive interval (see [`DEFAULT_KEEP_ALIVE`]: below the server's
    /// `--grpc-keepalive-min-time`, 5 s by default, the server closes the connection and
    /// every watch on it is read again in full).
    #[must_use]
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    fn uses_tls(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.cert_file.is_some()
    }
}

/// `/services`, `services/`, `//services//` → `/services`; `/` or empty → `` (the root).
pub(crate) fn normalize_prefix(p: &str) -> String {
    let trimmed = p.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

fn read_file(what: &str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read {what} file {}: {e}", path.display())))
}

/// Builds the TLS options from the files, reading them now so a bad path fails at
/// construction.
fn tls_options(c: &ClientConfig) -> Result<Option<TlsOptions>> {
    if !c.uses_tls() {
        return Ok(None);
    }
    if c.cert_file.is_some() != c.key_file.is_some() {
        return Err(Error::config(
            "the client certificate and its key go together (cert and key)",
        ));
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &c.ca_file {
        let pem = read_file("CA", ca)?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::config(format!(
                "CA file {} holds no PEM certificate",
                ca.display()
            )));
        }
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    } else {
        tls = tls.with_webpki_roots();
    }
    if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
        let cert_pem = read_file("client certificate", cert)?;
        let key_pem = read_file("client key", key)?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(Error::config(format!(
                "key file {} holds no PEM private key",
                key.display()
            )));
        }
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(Some(tls))
}

/// Whether `e` says the endpoint could not be reached (as opposed to an answer from etcd).
fn is_transport(e: &etcd_client::Error) -> bool {
    match e {
        // Cancelled: a request on an HTTP/2 connection that broke under it (the member died:
        // "operation was canceled"); this client never cancels a request it still waits for.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Maps an etcd client error to sdkit's kinds: auth failures are [`Error::Rejected`], a
/// deadline is [`Error::Timeout`], bad arguments and out-of-range values (a TTL above
/// etcd's longest lease) [`Error::Config`], the rest
/// [`Error::Unavailable`]. `op` names what was attempted.
pub(crate) fn map_err(op: &str, e: etcd_client::Error) -> Error {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            // A wrong password is InvalidArgument ("authentication failed, invalid user ID
            // or password"); retrying does not fix any of these.
            Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
                Error::Rejected {
                    backend: BACKEND,
                    message: format!("{op}: {}", s.message()),
                }
            }
            // A lease TTL above etcd's maximum ("too large lease TTL"): asking again
            // will not help.
            Code::OutOfRange => Error::config(format!("etcd {op}: {}", s.message())),
            Code::DeadlineExceeded => Error::Timeout {
                backend: BACKEND,
                message: format!("{op}: {}", s.message()),
            },
            _ => Error::Unavailable {
                backend: BACKEND,
                message: format!("{op}: {} ({:?})", s.message(), s.code()),
                source: None,
            },
        },
        etcd_client::Error::InvalidArgs(m) => Error::config(format!("etcd {op}: {m}")),
        other => Error::Unavailable {
            backend: BACKEND,
            message: format!("{op}: {other}"),
            source: Some(Arc::new(other)),
        },
    }
}

struct Inner {
    config: ClientConfig,
    tls: Option<TlsOptions>,
    /// The connection in use and the index of its endpoint.
    conn: Mutex<Option<(usize, etcd_client::Client)>>,
    /// The endpoint to connect to next.
    next: AtomicUsize,
    /// The moves to another endpoint after a failure: how many, and the endpoint given up
    /// last ([`Client::moves`]).
    moves: tokio::sync::watch::Sender<(u64, usize)>,
    /// The shared watch of the prefix, while an instancer holds it.
    shared: std::sync::Mutex<std::sync::Weak<crate::shared::Hub>>,
    /// The live instancers of this client (both kinds), for `WatchMode::Auto`.
    live: Arc<AtomicUsize>,
}

/// A client for one etcd cluster. Clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("Client")
            .field("endpoints", &c.endpoints)
            .field("prefix", &c.prefix)
            .field("user", &c.user)
            .field("password", &c.password.as_ref().map(|_| "***"))
            .field("tls", &c.uses_tls())
            .finish()
    }
}

/// An open lease keep-alive stream ([`Client::open_keep_alive`]): one renewal per
/// [`renew`](KeepAliveStream::renew), without opening a stream each time.
pub struct KeepAliveStream {
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl fmt::Debug for KeepAliveStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepAliveStream")
            .field("lease", &self.lease)
            .finish()
    }
}

impl KeepAliveStream {
    /// The lease renewed.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Renews the lease once, within `timeout`. `Ok(false)`: etcd no longer knows the lease.
    /// An error means the stream is broken: open a new one.
    pub async fn renew(&mut self, timeout: Duration) -> Result<bool> {
        let renew = async {
            self.keeper.keep_alive().await?;
            self.stream.message().await
        };
        match tokio::time::timeout(timeout, renew).await {
            Ok(Ok(Some(resp))) => Ok(resp.ttl() > 0),
            Ok(Ok(None)) => Err(Error::unavailable(BACKEND, "lease keep-alive stream ended")),
            Ok(Err(e)) => Err(map_err("lease keep-alive", e)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                message: format!("lease keep-alive: no answer within {timeout:?}"),
            }),
        }
    }
}

/// A watch etcd has confirmed ([`Client::watch_prefix`]).
pub struct ConfirmedWatch {
    /// The watch's responses (the confirmation already read).
    pub stream: WatchStream,
    /// The store's revision when the watch was confirmed (0 if the answer had no header).
    pub revision: i64,
    /// The id of the cluster that confirmed it (0 if the answer had no header).
    pub cluster_id: u64,
    /// The index of the endpoint the client was connected to when etcd confirmed it.
    pub endpoint: Option<usize>,
}

impl fmt::Debug for ConfirmedWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmedWatch")
            .field("revision", &self.revision)
            .field("cluster_id", &self.cluster_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// One key and its value, as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key (lossily decoded as UTF-8, for ids and logs).
    pub key: String,
    /// The key's bytes: what tells two keys apart (two keys that are not UTF-8 can decode
    /// to the same `key`).
    pub raw_key: Vec<u8>,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

impl Client {
    /// A client for `config`. Reads the TLS files now; sends nothing until the first request.
    ///
    /// Fails with [`Error::Config`] on no endpoint, a user without password (or the other way
    /// round), a zero timeout or one above [`MAX_TIMEOUT`], or an unreadable or non-PEM TLS file.
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::config("etcd: no endpoint given"));
        }
        if config.user.is_some() != config.password.is_some() {
            return Err(Error::config(
                "etcd: a user needs a password and a password needs a user",
            ));
        }
        for (name, d) in [
            ("dial_timeout", config.dial_timeout),
            ("timeout", config.timeout),
            ("keep_alive", config.keep_alive),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!(
                    "etcd: {name} must be greater than 0"
                )));
            }
            if d > MAX_TIMEOUT {
                return Err(Error::config(format!(
                    "etcd: {name} {d:?} is above the {} h maximum",
                    MAX_TIMEOUT.as_secs() / 3600
                )));
            }
        }
        let mut config = config;
        config.prefix = normalize_prefix(&config.prefix);
        let tls = tls_options(&config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                tls,
                conn: Mutex::new(None),
                next: AtomicUsize::new(0),
                moves: tokio::sync::watch::channel((0, usize::MAX)).0,
                shared: std::sync::Mutex::new(std::sync::Weak::new()),
                live: Arc::new(AtomicUsize::new(0)),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The key prefix (`/services` by default).
    pub fn prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// The directory holding a service's instances: `<prefix>/<service>/`, with the trailing
    /// `/`, so `users` does not match `users-admin`.
    pub fn service_dir(&self, service: &str) -> String {
        format!("{}/{service}/", self.prefix())
    }

    /// The key of one instance: `<prefix>/<service>/<id>`.
    pub fn instance_key(&self, service: &str, id: &str) -> String {
        format!("{}{id}", self.service_dir(service))
    }

    /// The URL of endpoint `i`.
    fn url(&self, i: usize) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.inner.config.endpoints[i])
    }

    /// Changes each time the client gives up the connection to an endpoint after a failure
    /// (a request failed at the transport level or timed out there) and moves to the next
    /// one: how many moves so far, and the index of the endpoint given up last. A watch
    /// still open on that endpoint (streams keep their connection) is then likely on a dead
    /// or frozen member: the instancer resumes it on the new one.
    pub fn moves(&self) -> tokio::sync::watch::Receiver<(u64, usize)> {
        self.inner.moves.subscribe()
    }

    /// The shared watch of the prefix: the running one, or a new one (idle until the first
    /// member joins). Must be called inside a tokio runtime.
    pub(crate) fn shared_hub(&self) -> Arc<crate::shared::Hub> {
        let mut slot = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hub) = slot.upgrade().filter(|h| !h.is_finished()) {
            return hub;
        }
        let hub = crate::shared::Hub::start(self.clone());
        *slot = Arc::downgrade(&hub);
        hub
    }

    /// What the shared watch of this client (and its clones) has done, while it runs:
    /// `None` when no instancer uses it (the last one stopped ends it).
    pub fn shared_watch_stats(&self) -> Option<crate::shared::SharedWatchStats> {
        let slot = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        slot.upgrade().map(|hub| hub.stats())
    }

    /// How many instancers of this client (and its clones) are live, of both
    /// [`WatchMode`](crate::WatchMode)s.
    pub fn live_instancers(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    pub(crate) fn live_guard(&self) -> crate::shared::LiveGuard {
        crate::shared::LiveGuard::new(self.inner.live.clone())
    }

    /// The index of the endpoint the client is connected to now, if it is connected.
    pub async fn connected_endpoint(&self) -> Option<usize> {
        self.inner.conn.lock().await.as_ref().map(|(i, _)| *i)
    }

    /// The connected etcd client: connects (and authenticates) on first use, and after a
    /// failure moved on to the next endpoint. This is the escape hatch for what this crate
    /// does not wrap (tests use it to write raw keys and to compact).
    pub async fn etcd(&self) -> Result<etcd_client::Client> {
        self.connection().await.map(|(_, c)| c)
    }

    async fn connection(&self) -> Result<(usize, etcd_client::Client)> {
        let mut conn = self.inner.conn.lock().await;
        if let Some((i, c)) = conn.as_ref() {
            return Ok((*i, c.clone()));
        }
        let c = &self.inner.config;
        let i = self.inner.next.load(Ordering::Relaxed) % c.endpoints.len();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(c.dial_timeout)
            .with_keep_alive(c.keep_alive, c.keep_alive)
            // An idle connection (no watch, no lease stream) is not pinged: etcd counts such
            // pings against the connection (see DEFAULT_KEEP_ALIVE).
            .with_keep_alive_while_idle(false)
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&c.user, &c.password) {
            options = options.with_user(user.clone(), password.expose().to_string());
        }
        if let Some(tls) = &self.inner.tls {
            options = options.with_tls(tls.clone());
        }
        // Authentication is a request: bound it like every other one.
        let bound = c.dial_timeout.saturating_add(c.timeout);
        let connected = tokio::time::timeout(
            bound,
            etcd_client::Client::connect([self.url(i)], Some(options)),
        )
        .await
        .map_err(|_| Error::Timeout {
            backend: BACKEND,
            message: format!(
                "connecting to {} took longer than {bound:?}",
                c.endpoints[i]
            ),
        })
        .and_then(|r| r.map_err(|e| map_err(&format!("connect to {}", c.endpoints[i]), e)));
        match connected {
            Ok(client) => {
                *conn = Some((i, client.clone()));
                Ok((i, client))
            }
            Err(e) => {
                self.inner.next.store(i + 1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Forgets the connection to endpoint `i` after a transport failure, so the next request
    /// goes to the next endpoint (with a single endpoint: reconnects to it).
    async fn fail_over(&self, i: usize) {
        let mut conn = self.inner.conn.lock().await;
        if matches!(conn.as_ref(), Some((j, _)) if *j == i) {
            *conn = None;
            self.inner.next.store(i + 1, Ordering::Relaxed);
            self.inner.moves.send_modify(|m| *m = (m.0 + 1, i));
            if self.inner.config.endpoints.len() > 1 {
                tracing::debug!(backend = BACKEND, endpoint = %self.inner.config.endpoints[i],
                    "endpoint failed; moving to the next one");
            }
        }
    }

    /// Runs one unary request with the configured deadline. A transport failure (endpoint
    /// down, refused, no answer) moves to the next endpoint and, with several endpoints,
    /// retries there within the same deadline.
    async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let timeout = self.inner.config.timeout;
        let endpoints = self.inner.config.endpoints.len();
        // The endpoint the request in flight went to: the one a timeout gives up.
        let used = AtomicUsize::new(usize::MAX);
        let run = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (i, client) = match self.connection().await {
                    Ok(c) => c,
                    Err(e) if e.is_transient() && attempt < endpoints => continue,
                    Err(e) => return Err(e),
                };
                used.store(i, Ordering::Relaxed);
                match f(client).await {
                    Ok(v) => return Ok(v),
                    Err(e) if is_transport(&e) => {
                        self.fail_over(i).await;
                        if attempt >= endpoints {
                            return Err(map_err(op, e));
                        }
                    }
                    Err(e) => return Err(map_err(op, e)),
                }
            }
        };
        let answer = tokio::time::timeout(timeout, run).await;
        match answer {
            Ok(r) => r,
            Err(_) => {
                // A frozen endpoint: try another one next time. Only the endpoint this
                // request went to (`fail_over` does nothing if the client has left it
                // already): another request may have just connected elsewhere.
                let i = used.load(Ordering::Relaxed);
                if i != usize::MAX {
                    self.fail_over(i).await;
                }
                Err(Error::Timeout {
                    backend: BACKEND,
                    message: format!("{op}: no answer within {timeout:?}"),
                })
            }
        }
    }

    /// Every key under `dir` (a raw byte prefix) and the revision the read was made at.
    pub async fn get_prefix(&self, dir: &str) -> Result<(i64, Vec<Entry>)> {
        let resp = self
            .call("get", |c| async move {
                c.kv_client()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .get(dir, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                raw_key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            })
            .collect();
        Ok((revision, entries))
    }

    /// The keys under `dir` as they were at `revision`, each with the revision of its last
    /// change then (keys only: no value is transferred), sorted by key. Fails when that
    /// revision is compacted or not reached yet.
    pub async fn keys_at(&self, dir: &str, revision: i64) -> Result<Vec<(Vec<u8>, i64)>> {
        let resp = self
            .call("get", |c| async move {
                c.kv_client()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .get(
                        dir,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_revision(revision),
                        ),
                    )
                    .await
            })
            .await?;
        let mut keys: Vec<(Vec<u8>, i64)> = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// The services under the prefix: the distinct first path segments of the keys under
    /// `<prefix>/` that have a `/` after them (a service directory holding a key), sorted.
    ///
    /// Keys-only range reads of [`SERVICES_PAGE`] keys at a time; after each service the
    /// next read starts past all of its keys, so a service with many instances costs one
    /// page at most. Bounded: at most [`MAX_SERVICES`] names are returned (more is an
    /// [`Error::Malformed`] saying so), and values are never transferred.
    pub async fn services(&self) -> Result<Vec<String>> {
        let root = format!("{}/", self.prefix()).into_bytes();
        let mut end = root.clone();
        // `/` + 1 = `0`: the end of the range of keys starting with `root`.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut names = Vec::new();
        let mut start = root.clone();
        loop {
            let (from, range_end) = (&start, &end);
            let resp = self
                .call("get", |c| async move {
                    c.kv_client()
                        .get(
                            from.clone(),
                            Some(
                                GetOptions::new()
                                    .with_range(range_end.clone())
                                    .with_keys_only()
                                    .with_limit(SERVICES_PAGE),
                            ),
                        )
                        .await
                })
                .await?;
            let mut next = None;
            let mut last: Option<Vec<u8>> = None;
            for kv in resp.kvs() {
                let Some(rest) = kv.key().strip_prefix(root.as_slice()) else {
                    continue;
                };
                let Some(slash) = rest.iter().position(|&b| b == b'/') else {
                    continue; // a key right under the prefix: not a service directory
                };
                let name = &rest[..slash];
                // Keys are sorted, so a service's keys are contiguous.
                if name.is_empty() || last.as_deref() == Some(name) {
                    continue;
                }
                last = Some(name.to_vec());
                names.push(String::from_utf8_lossy(name).into_owned());
                if names.len() > MAX_SERVICES {
                    return Err(Error::malformed(
                        BACKEND,
                        format!(
                            "listing services: more than {MAX_SERVICES} under {}/",
                            self.prefix()
                        ),
                    ));
                }
                let mut after = root.clone();
                after.extend_from_slice(name);
                after.push(b'0');
                next = Some(after);
            }
            if !resp.more() {
                break;
            }
            match next {
                Some(n) => start = n,
                // A full page of keys right under the prefix: go past the last one.
                None => match resp.kvs().last() {
                    Some(kv) => {
                        start = kv.key().to_vec();
                        start.push(0);
                    }
                    None => break,
                },
            }
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// Opens a watch of every key under `dir` from `start_revision` and waits for etcd to
    /// confirm it. `Ok(Err(r))`: etcd refused because that revision is compacted (up to `r`);
    /// read again and watch from the new revision.
    pub async fn watch_prefix(
        &self,
        dir: &str,
        start_revision: i64,
    ) -> Result<std::result::Result<ConfirmedWatch, i64>> {
        let (stream, first) = self
            .call("watch", |c| async move {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_revision);
                let mut stream = c
                    .watch_client()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .watch(dir, Some(options))
                    .await?;
                // The first answer confirms the watch (or cancels it at once).
                let first = stream.message().await?;
                Ok((stream, first))
            })
            .await?;
        match first {
            Some(first) if first.canceled() && first.compact_revision() > 0 => {
                Ok(Err(first.compact_revision()))
            }
            Some(first) if first.created() && !first.canceled() => {
                let (revision, cluster_id) = first
                    .header()
                    .map_or((0, 0), |h| (h.revision(), h.cluster_id()));
                Ok(Ok(ConfirmedWatch {
                    stream,
                    revision,
                    cluster_id,
                    endpoint: self.connected_endpoint().await,
                }))
            }
            Some(first) => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!(
                    "watch not created (canceled={}, reason={:?})",
                    first.canceled(),
                    first.cancel_reason()
                ),
                source: None,
            }),
            None => Err(Error::unavailable(
                BACKEND,
                "watch stream closed before etcd confirmed it",
            )),
        }
    }

    /// Puts `key` = `value`, attached to `lease` (0: no lease).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<()> {
        self.call("put", |mut c| async move {
            let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
            c.put(key, value, options).await
        })
        .await
        .map(drop)
    }

    /// Whether `key` exists, and the lease it is attached to (0: none).
    pub async fn key_lease(&self, key: &str) -> Result<Option<i64>> {
        let resp = self
            .call("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.lease()))
    }

    /// Deletes `key`. Returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: &str) -> Result<i64> {
        self.call("delete", |mut c| async move {
            c.delete(key, None::<DeleteOptions>).await
        })
        .await
        .map(|r| r.deleted())
    }

    /// Grants a lease of `ttl_secs` seconds; returns its id.
    pub async fn grant(&self, ttl_secs: i64) -> Result<i64> {
        self.call("lease grant", |mut c| async move {
            c.lease_grant(ttl_secs, None).await
        })
        .await
        .map(|r| r.id())
    }

    /// Renews `lease` once. Returns `false` when etcd no longer knows the lease (it expired,
    /// was revoked, or the server lost its data).
    pub async fn keep_alive_once(&self, lease: i64) -> Result<bool> {
        Ok(self.open_keep_alive(lease).await?.is_some())
    }

    /// Opens a keep-alive stream for `lease` (which renews it once). `None` when etcd no
    /// longer knows the lease. Renew again on the returned [`KeepAliveStream`].
    pub async fn open_keep_alive(&self, lease: i64) -> Result<Option<KeepAliveStream>> {
        // etcd-client's keep_alive sends one renewal and reads its answer; a TTL of 0 in
        // that answer (lease unknown) is its LeaseKeepAliveError("lease not found").
        self.call("lease keep-alive", |mut c| async move {
            match c.lease_keep_alive(lease).await {
                Ok((keeper, stream)) => Ok(Some(KeepAliveStream {
                    lease,
                    keeper,
                    stream,
                })),
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Revokes `lease` (which deletes every key attached to it). A lease etcd does not know is
    /// not an error.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        match self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("/services"), "/services");
        assert_eq!(normalize_prefix("services/"), "/services");
        assert_eq!(normalize_prefix("//a/b//"), "/a/b");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        let c = Client::new(ClientConfig::new(["h:1"]).prefix("svc/")).unwrap();
        assert_eq!(c.service_dir("users"), "/svc/users/");
        assert_eq!(c.instance_key("users", "u-1"), "/svc/users/u-1");
        let c = Client::new(ClientConfig::new(["h:1"]).prefix("/")).unwrap();
        assert_eq!(c.service_dir("users"), "/users/");
    }

    #[test]
    fn bad_configs_are_config_errors() {
        for (config, needle) in [
            (ClientConfig::new(Vec::<String>::new()), "no endpoint"),
            (
                ClientConfig {
                    user: Some("u".into()),
                    ..ClientConfig::new(["h:1"])
                },
                "needs a password",
            ),
            (
                ClientConfig::new(["h:1"]).timeout(Duration::ZERO),
                "timeout must be greater than 0",
            ),
            (
                ClientConfig::new(["h:1"]).ca_file("/nonexistent/ca.pem"),
                "cannot read CA file /nonexistent/ca.pem",
            ),
            (
                ClientConfig {
                    cert_file: Some("/x.pem".into()),
                    ..ClientConfig::new(["h:1"])
                },
                "go together",
            ),
        ] {
            let err = Client::new(config).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("sd-etcd-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ca.pem");
        std::fs::write(&f, "hello").unwrap();
        let err = Client::new(ClientConfig::new(["h:1"]).ca_file(&f)).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Client::new(ClientConfig::new(["h:1"]).user("u", Secret::new("hunter2"))).unwrap();
        let d = format!("{c:?} {:?}", c.config());
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("***"), "{d}");
    }

    /// A server that accepts connections and never answers (a frozen etcd): each request
    /// times out, the client moves on (to the same endpoint, reconnecting), and a timed-out
    /// request never leaves the connection lock held (a second request also returns).
    #[tokio::test]
    async fn a_silent_endpoint_times_out_and_the_next_request_is_not_stuck() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let c = Client::new(
            ClientConfig::new([addr.to_string()])
                .dial_timeout(Duration::from_millis(200))
                .timeout(Duration::from_millis(300)),
        )
        .unwrap();
        for round in 0..2 {
            let err = tokio::time::timeout(Duration::from_secs(10), c.get_prefix("/x/"))
                .await
                .unwrap_or_else(|_| panic!("request {round} hung"))
                .unwrap_err();
            assert!(
                matches!(err, Error::Timeout { .. }),
                "request {round}: {err}"
            );
        }
        held.abort();
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transient_error_within_the_deadline() {
        // Port 1 on loopback refuses connections: a real transport failure.
        let c = Client::new(
            ClientConfig::new(["127.0.0.1:1"])
                .dial_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let err = c.get_prefix("/services/x/").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
