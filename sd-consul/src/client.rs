//! The HTTP client for the Consul agent API: options, TLS, the ACL token, timeouts.
//!
//! A [`Client`] is cheap to clone (it shares one connection pool) and is what the
//! [`ConsulInstancer`](crate::ConsulInstancer) and the [`ConsulRegistrar`](crate::ConsulRegistrar)
//! talk through. It is go-kit's `consul.Client` seam, but concrete: the behaviour it
//! depends on is tested against a real agent, not a mock.
//!
//! ```
//! use std::time::Duration;
//! use sd_consul::{Client, ClientConfig};
//! use sd_core::Secret;
//!
//! let client = Client::new(
//!     ClientConfig::new("127.0.0.1:8500")
//!         .datacenter("eu1")
//!         .token(Secret::new("s3cr3t"))
//!         .wait(Duration::from_secs(30)),
//! )?;
//! // The token is sent as the X-Consul-Token header only, and never printed.
//! assert!(!format!("{client:?}").contains("s3cr3t"));
//! # Ok::<(), sd_core::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, LOCATION, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sd_core::backoff::FailureHints;
use sd_core::{Error, Health, Instance, InstanceReuse, RegistryUrl, Result, Secret};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;
use url::Url;

/// The backend name used in errors and logs.
pub const BACKEND: &str = "consul";

/// The agent's default HTTP port.
pub const DEFAULT_PORT: u16 = 8500;

/// The default timeout of a non-blocking request (and the margin added to blocking ones).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default blocking-query wait.
///
/// Consul's own default is 5 minutes. sdkit uses one minute: a frozen agent or a dead TCP
/// path is then noticed (and published as an error) within about `wait + wait/16 + timeout`
/// ≈ 74 s instead of ≈ 5.5 min, for the cost of one empty round trip per minute per watched
/// service.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The name of the header carrying the ACL token.
pub const TOKEN_HEADER: &str = "X-Consul-Token";

/// The header with which the agent says that ACLs hid part of an answer.
pub const FILTERED_BY_ACLS_HEADER: &str = "X-Consul-Results-Filtered-By-ACLs";

/// The longest blocking wait Consul accepts.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The default cap on the size of an answer body: 32 MiB.
///
/// A health answer is about 1 to 2 KB per instance with its node and checks, so this is
/// room for some 15 000 instances of one service. A larger answer is an
/// [`Error::Malformed`] event (the last good set stays in service); raise the cap with
/// [`ClientConfig::max_body`] or the URL option `max_body=` (bytes).
pub const DEFAULT_MAX_BODY: usize = 32 << 20;

/// A body must arrive whole within this many times [`ClientConfig::timeout`] (each piece
/// within one `timeout` of the one before): see [`Client::health_service`].
pub const BODY_TIMEOUTS: u32 = 4;

/// The smallest body cap [`ClientConfig::max_body`] accepts (64 KiB).
pub const MIN_MAX_BODY: usize = 64 << 10;

/// A health answer may hold at most one entry per this many bytes of
/// [`ClientConfig::max_body`] (131 072 entries under the default cap).
///
/// A real entry, with its node, service and at least the node's `serfHealth` check, is
/// over a kilobyte; an answer with more, smaller, entries is an [`Error::Malformed`]
/// error. This bounds the number of instances one answer can make (the body cap alone
/// does not: `[1,1,1,...]` is two bytes an entry), not what their tags and metadata
/// cost: they are kept as they came, and a 1-byte tag (`"a",`, 4 bytes of body) is a
/// 24-byte `String` plus its byte, so an entry of tiny tags and metadata holds about 9
/// times its body at peak (under 12 times; lower [`ClientConfig::max_body`] if that
/// matters).
pub const MIN_ENTRY_BYTES: usize = 256;

/// At most this many reasons for skipped entries are kept per answer (and logged by the
/// instancer); further skipped entries are only counted.
pub const MAX_SKIP_REASONS: usize = 5;

/// How to reach and authenticate to a Consul agent.
///
/// Built with [`ClientConfig::new`] and the setters, or from a `consul://` URL by
/// [`ConsulRegistry::from_url`](crate::ConsulRegistry::from_url). `Debug` never shows the
/// token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The agent's `host:port` (`[v6]:port` for IPv6).
    pub address: String,
    /// More agents (or servers), `host:port` each, to move to in turn when the current one
    /// stops answering: the connection is refused or reset, or a request times out. Empty
    /// by default: Consul recommends one local client agent, which follows the servers
    /// itself. A blocking query resumes on the next one from the index it had (the index is
    /// the cluster's raft index, the same on every server). Registrations are kept by the
    /// agent they were made with: after a move the registrar finds its check unknown to the
    /// new agent and registers there again (docs/TESTING.md, "Clusters").
    pub fallback: Vec<String>,
    /// Talk HTTPS instead of HTTP. Implied by `ca_file` and `cert_file`.
    pub tls: bool,
    /// The datacenter to query (`?dc=`); the agent's own when `None`.
    pub datacenter: Option<String>,
    /// The ACL token, sent as the `X-Consul-Token` header.
    pub token: Option<Secret>,
    /// The namespace (`?ns=`, Consul Enterprise).
    pub namespace: Option<String>,
    /// The admin partition (`?partition=`, Consul Enterprise).
    pub partition: Option<String>,
    /// Timeout of each non-blocking request, and the margin added to blocking ones.
    pub timeout: Duration,
    /// How long a blocking query waits for a change (`?wait=`).
    pub wait: Duration,
    /// A PEM file with the CA certificates to trust. They **replace** the built-in public
    /// (webpki) roots unless [`public_roots`](Self::public_roots) is set.
    pub ca_file: Option<PathBuf>,
    /// With a `ca_file`, also trust the built-in public (webpki) roots. Without a
    /// `ca_file` the public roots are always used.
    pub public_roots: bool,
    /// A PEM file with the client certificate (chain), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// A PEM file with the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The largest answer body read, in bytes ([`DEFAULT_MAX_BODY`]); a larger answer is an
    /// [`Error::Malformed`] error and is not read further.
    pub max_body: usize,
}

impl ClientConfig {
    /// A config for the agent at `address` (`host:port`), plain HTTP, no token,
    /// [`DEFAULT_TIMEOUT`] and [`DEFAULT_WAIT`].
    pub fn new(address: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            fallback: Vec::new(),
            tls: false,
            datacenter: None,
            token: None,
            namespace: None,
            partition: None,
            timeout: DEFAULT_TIMEOUT,
            wait: DEFAULT_WAIT,
            ca_file: None,
            public_roots: false,
            cert_file: None,
            key_file: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Sets the agents (or servers) to move to when the current one stops answering (see
    /// [`fallback`](Self::fallback)).
    #[must_use]
    pub fn fallback<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallback = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the datacenter.
    #[must_use]
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Sets the ACL token.
    #[must_use]
    pub fn token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Reads the ACL token from the environment variable `var`; fails with [`Error::Config`]
    /// if it is unset or empty.
    ///
    /// This is the URL option `token_env=VAR`: the lookup is sd-core's
    /// [`RegistryUrl::secret`], so both read the environment the same way.
    pub fn token_from_env(mut self, var: &str) -> Result<Self> {
        let var: String = url::form_urlencoded::byte_serialize(var.as_bytes()).collect();
        let mut url = RegistryUrl::parse(&format!("consul://?token_env={var}"))?;
        self.token = url.secret("token")?;
        Ok(self)
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Sets the admin partition.
    #[must_use]
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Sets the request timeout (more than 0; checked by [`Client::new`]). A very long
    /// one (up to `Duration::MAX`) means in effect no timeout: a frozen agent or a dead
    /// TCP path is then never noticed.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the blocking-query wait (1 ms ..= 10 min; checked by [`Client::new`]).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Uses HTTPS.
    #[must_use]
    pub fn tls(mut self, yes: bool) -> Self {
        self.tls = yes;
        self
    }

    /// Trusts the CA certificates in this PEM file, and only them unless
    /// [`public_roots`](Self::public_roots) is set (implies HTTPS).
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// With a [`ca_file`](Self::ca_file), trust the built-in public (webpki) roots too
    /// (the URL option `public_roots=true`). Off by default: a private CA for the agent
    /// should not make every public CA able to impersonate it.
    #[must_use]
    pub fn public_roots(mut self, yes: bool) -> Self {
        self.public_roots = yes;
        self
    }

    /// Caps the size of an answer body, in bytes (at least [`MIN_MAX_BODY`]; checked by
    /// [`Client::new`]). The default is [`DEFAULT_MAX_BODY`].
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Checks the values the setters cannot: `wait` within 1 ms ..= 10 min (Consul's
    /// range; it counts in whole milliseconds), `timeout` above zero (a blocking query gets
    /// `wait + wait/16 + timeout`, so any positive timeout outlasts the wait), `max_body`
    /// at least [`MIN_MAX_BODY`], and `cert_file` with `key_file`. [`Client::new`] calls it;
    /// the error names the setter (and the URL option) to fix.
    pub fn validate(&self) -> Result<()> {
        if self.wait < Duration::from_millis(1) || self.wait > MAX_WAIT {
            return Err(Error::config(format!(
                "consul: wait {:?} must be between 1ms and 10m (Consul's maximum); \
                 set ClientConfig::wait or the URL option wait=",
                self.wait
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::config(
                "consul: timeout must be greater than 0 (every request would fail at once); \
                 set ClientConfig::timeout or the URL option timeout=",
            ));
        }
        if self.max_body < MIN_MAX_BODY {
            return Err(Error::config(format!(
                "consul: max_body {} bytes is below the minimum of {MIN_MAX_BODY} bytes",
                self.max_body
            )));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::config(
                "consul: a client certificate needs both cert and key files",
            ));
        }
        Ok(())
    }

    /// Presents this client certificate and key (PEM files) for mutual TLS (implies HTTPS).
    #[must_use]
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    fn uses_tls(&self) -> bool {
        self.tls || self.ca_file.is_some() || self.cert_file.is_some()
    }
}

struct Inner {
    http: reqwest::Client,
    /// `address`, then each of `fallback`.
    bases: Vec<Url>,
    /// The index in `bases` of the agent requests go to.
    current: AtomicUsize,
    /// Counts the moves to the next agent: a blocking query in flight at the agent the
    /// client left gives up at once (it would otherwise wait its whole `wait` there).
    moves: tokio::sync::watch::Sender<u64>,
    config: ClientConfig,
}

/// A client for one Consul agent. Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("Client")
            .field("base", &self.base_url().as_str())
            .field("datacenter", &c.datacenter)
            .field("namespace", &c.namespace)
            .field("partition", &c.partition)
            .field("token", &c.token)
            .field("wait", &c.wait)
            .field("timeout", &c.timeout)
            .finish()
    }
}

/// The answer of a health query: the raw entries and the blocking-query index.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthAnswer {
    /// The `X-Consul-Index` header.
    pub index: u64,
    /// The instances of the usable entries
    /// ([`entry_to_instance`](crate::entry_to_instance)), in the agent's order.
    pub instances: Vec<Instance>,
    /// How many entries were unusable and skipped.
    pub skipped: usize,
    /// Why, for the first [`MAX_SKIP_REASONS`] skipped entries.
    pub skip_reasons: Vec<String>,
    /// The agent said (`X-Consul-Results-Filtered-By-ACLs: true`) that the ACL token may
    /// not see some of the entries, which were left out.
    pub filtered_by_acls: bool,
}

/// The Consul check status that carries `health` through a TTL check: `passing`,
/// `warning`, or `critical` (for [`Health::Critical`] and [`Health::Unknown`]: Consul has
/// no unknown status, and an instance of unknown health should not be passing).
pub fn check_status(health: Health) -> &'static str {
    match health {
        Health::Passing => "passing",
        Health::Warning => "warning",
        // Critical, Unknown, and any future state.
        _ => "critical",
    }
}

/// A failed [`Client::register_reporting`].
#[derive(Debug)]
#[non_exhaustive]
pub struct RegisterFailed {
    /// What went wrong.
    pub error: Error,
    /// The request may have reached the agent and been applied (a timeout, a reset
    /// connection, a 5xx possibly from a proxy): only a refused connection or a 4xx
    /// answer are certain not to have registered anything.
    pub maybe_applied: bool,
}

/// The outcome of a TTL check update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckUpdate {
    /// The agent updated the check.
    Updated,
    /// The agent does not know the check: the registration was lost (agent restart, or
    /// someone deregistered it).
    Unknown,
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "consul: cannot read {what} file {}: {e}",
            path.display()
        ))
    })
}

/// The message of a reqwest error with its causes (e.g. "connection refused"), which
/// reqwest's own `Display` leaves out. URLs carry no secret (the token is a header).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    sd_core::error::error_chain(e)
}

/// A plain-words hint for a TLS failure, from the (rustls) error text.
fn tls_hint(msg: &str) -> Option<&'static str> {
    const CLIENT_CERT_ALERTS: [&str; 5] = [
        "fatal alert: CertificateRequired",
        "fatal alert: UnknownCA",
        "fatal alert: BadCertificate",
        "fatal alert: CertificateUnknown",
        "fatal alert: UnsupportedCertificate",
    ];
    if msg.contains("invalid peer certificate") {
        Some(
            "the agent's TLS certificate is not trusted: give the CA that signed it \
             (ca=/path/ca.pem) and check that it is valid for the address used",
        )
    } else if CLIENT_CERT_ALERTS.iter().any(|a| msg.contains(a)) {
        Some(
            "the agent refused the TLS handshake over the client certificate: it requires one \
             (verify_incoming) signed by a CA it trusts (cert=/path/cert.pem&key=/path/key.pem)",
        )
    } else {
        None
    }
}

/// `scheme://address/`, or a configuration error saying what is wrong with `address`.
fn base_url(scheme: &str, address: &str) -> Result<Url> {
    if address.trim().is_empty() {
        return Err(Error::config("consul: empty agent address"));
    }
    let base = Url::parse(&format!("{scheme}://{address}/")).map_err(|e| {
        Error::config(format!(
            "consul: bad agent address {address:?}: {e} (expected host:port)"
        ))
    })?;
    if !base.username().is_empty() || base.password().is_some() {
        // Not quoted: it holds a credential. Consul takes an ACL token, not HTTP userinfo.
        return Err(Error::config(
            "consul: an agent address holds a user name or password (user:password@host); \
             give host:port, and the ACL token as the token (ClientConfig::token, URL option \
             token_env=)",
        ));
    }
    if base.path() != "/" || base.query().is_some() || base.host_str().is_none() {
        return Err(Error::config(format!(
            "consul: bad agent address {address:?} (expected host:port)"
        )));
    }
    Ok(base)
}

/// `host:port` of a base URL, for logs.
fn host_port(base: &Url) -> String {
    format!(
        "{}:{}",
        base.host_str().unwrap_or_default(),
        base.port_or_known_default().unwrap_or_default()
    )
}

fn transport_error(what: &str, e: reqwest::Error) -> Error {
    let mut message = format!("{what}: {}", describe(&e));
    if let Some(hint) = tls_hint(&message) {
        message = format!("{message} ({hint})");
    }
    if e.is_timeout() {
        Error::Timeout {
            backend: BACKEND,
            message,
        }
    } else {
        Error::unavailable(BACKEND, message)
    }
}

/// Longest error body quoted in an error message.
const MAX_BODY_IN_ERROR: usize = 300;

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_BODY_IN_ERROR {
        return s.to_string();
    }
    let mut end = MAX_BODY_IN_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Whether the answer says its body is gzip (`Content-Encoding: gzip`, the only encoding
/// asked for; any other is left as it came, and fails as JSON).
fn is_gzip(resp: &Response) -> bool {
    resp.headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"gzip"))
}

/// Decodes a gzip body (one member or several, as Go's reader does) of at most `limit`
/// decoded bytes: `Ok(None)` when it decodes to more (the rest is not decoded), `Err`
/// when it is not gzip, is cut short, or has bytes after its last member.
fn gunzip(packed: &[u8], limit: usize) -> std::result::Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let mut decoder = flate2::read::MultiGzDecoder::new(packed);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    // Bounded: each turn adds at least one byte to `out`, itself capped at `limit`.
    loop {
        let n = decoder.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(Some(out));
        }
        if out.len() + n > limit {
            return Ok(None);
        }
        if out.capacity() - out.len() < n {
            // Doubling, but never past the cap: the decoded body peaks at the cap.
            let want = (out.len() + n).max(2 * out.capacity()).min(limit);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// What the first bytes of a gzip error body decode to, at most `limit` bytes; what
/// cannot be decoded (the body was cut, or is not gzip) is left out.
fn gunzip_start(packed: &[u8], limit: usize) -> Vec<u8> {
    use std::io::Read;
    let mut decoder = flate2::read::GzDecoder::new(packed);
    let mut out = vec![0u8; limit];
    let mut len = 0;
    while len < limit {
        match decoder.read(&mut out[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    out.truncate(len);
    out
}

/// The start of an error body: only what an error message quotes (and one byte more, to
/// know that there was more) is read; the rest of the body is never downloaded.
///
/// The whole read is bounded by `stall` ([`ClientConfig::timeout`]): an error body that
/// stalls (in the answer to a blocking query, whose request timeout is the whole
/// `wait + wait/16 + timeout`) ends the read then, with what came so far and a note saying
/// so, and the error is reported at once.
async fn error_body(mut resp: Response, stall: Duration) -> String {
    let gzip = is_gzip(&resp);
    let mut body = Vec::new();
    let read = tokio::time::timeout(stall, async {
        while body.len() <= MAX_BODY_IN_ERROR {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_IN_ERROR + 1 - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                _ => break,
            }
        }
    })
    .await;
    if gzip {
        body = gunzip_start(&body, MAX_BODY_IN_ERROR + 1);
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if read.is_err() {
        text.push_str(&format!(
            " (the error body stalled: not complete after {stall:?})"
        ));
    }
    text
}

/// Turns a failure status into an error: 400/401/403 are [`Error::Rejected`] (retrying the
/// same request will not help), anything else [`Error::Unavailable`].
///
/// A `Retry-After` (on a 429 or 503, typically) travels with the error
/// ([`Error::with_retry_after`]): the watch loop then waits at least that long (up to its
/// backoff cap) before the next query. A redirect is not followed (the token would go with
/// it): the error names where it pointed.
///
/// The error body is read for at most `stall` ([`ClientConfig::timeout`]).
async fn status_error(what: &str, resp: Response, stall: Duration) -> Error {
    let status = resp.status();
    let headers = resp.headers();
    let hints = FailureHints::new(
        headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
        status
            .is_redirection()
            .then(|| headers.get(LOCATION).map(|v| v.as_bytes()))
            .flatten(),
    );
    let body = error_body(resp, stall).await;
    let mut message = format!("{what}: HTTP {status}: {}", truncate(&body));
    if status == StatusCode::BAD_REQUEST && body.contains("HTTP request to an HTTPS server") {
        message.push_str(" (the agent speaks HTTPS: use tls=true, or ca= for a private CA)");
    }
    message.push_str(&hints.note("the ACL token would go with it; give the agent's own address"));
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::Rejected {
                backend: BACKEND,
                message,
            }
        }
        _ => hints.apply(Error::unavailable(BACKEND, message)),
    }
}

/// What decoding a health answer gives: the instances, and the entries skipped.
#[derive(Default)]
pub(crate) struct Decoded {
    pub(crate) instances: Vec<Instance>,
    pub(crate) skipped: usize,
    pub(crate) skip_reasons: Vec<String>,
    /// The answer had more than the allowed number of entries.
    too_many: bool,
}

/// Decodes a health answer (`[entry, ...]`, or `null` for none) entry by entry: each entry
/// is borrowed from the body as raw JSON text (no allocation), converted into an
/// [`Instance`] or skipped with its reason, and dropped before the next one is read. So
/// what an answer costs is its body plus the instances kept, never a copy per entry.
///
/// With an [`InstanceReuse`] (a watch's), an entry byte-identical to one of the previous
/// answer's gets that answer's instance back without being decoded.
struct EntriesSeed<'a> {
    max_entries: usize,
    out: &'a mut Decoded,
    reuse: Option<&'a mut InstanceReuse>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of entries")
    }

    /// `null` is what an agent sends for "no entries" in some versions.
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut n = 0usize;
        while let Some(entry) = seq.next_element::<&'de RawValue>()? {
            n += 1;
            if n > self.max_entries {
                self.out.too_many = true;
                return Err(serde::de::Error::custom("too many entries"));
            }
            let decoded = match self.reuse.as_deref_mut() {
                Some(reuse) => reuse.instance(entry.get().as_bytes(), || {
                    crate::instancer::entry_to_instance(entry)
                }),
                None => crate::instancer::entry_to_instance(entry),
            };
            match decoded {
                Ok(instance) => self.out.instances.push(instance),
                Err(reason) => {
                    self.out.skipped += 1;
                    if self.out.skip_reasons.len() < MAX_SKIP_REASONS {
                        self.out.skip_reasons.push(reason);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes the body of a health answer read under a `max_body` cap: at most one entry per
/// [`MIN_ENTRY_BYTES`] of the cap, each converted by
/// [`entry_to_instance`](crate::entry_to_instance) or skipped with its reason. Fails, with
/// what is wrong and the start of the body, when the body is not a JSON array (or `null`)
/// or has too many entries. The one decoder of [`Client::health_service`]; the fuzz target
/// `consul_health` calls it through [`crate::fuzzing`].
///
/// With `reuse` (a watch's [`InstanceReuse`]), entries the previous answer had byte for
/// byte are not decoded again: they get the previous instances back. A body that fails
/// makes `reuse` forget everything (the next answer is decoded in full).
pub(crate) fn decode_health_body(
    body: &[u8],
    max_body: usize,
    mut reuse: Option<&mut InstanceReuse>,
) -> std::result::Result<Decoded, String> {
    let max_entries = (max_body / MIN_ENTRY_BYTES).max(1);
    let mut decoded = Decoded::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = EntriesSeed {
        max_entries,
        out: &mut decoded,
        reuse: reuse.as_deref_mut(),
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(reuse) = reuse {
        match result {
            Ok(()) => reuse.finish(),
            Err(_) => reuse.clear(),
        }
    }
    if let Err(e) = result {
        let problem = if decoded.too_many {
            format!(
                "the answer has more than {max_entries} entries, one per {MIN_ENTRY_BYTES} \
                 bytes of the {max_body}-byte cap (raise it with ClientConfig::max_body or the \
                 URL option max_body=)"
            )
        } else {
            // Only on this error path: is it JSON at all (checked without building a
            // tree), or JSON of the wrong shape?
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => format!("expected a JSON array of entries ({e})"),
                Err(syntax) => format!("body is not JSON ({syntax})"),
            }
        };
        return Err(format!(
            "{problem}: {}",
            truncate(&String::from_utf8_lossy(
                &body[..body.len().min(MAX_BODY_IN_ERROR + 1)]
            ))
        ));
    }
    Ok(decoded)
}

impl Client {
    /// Builds a client. Fails with [`Error::Config`] on a bad address or unreadable or invalid
    /// TLS files. No request is sent.
    ///
    /// The client never uses a proxy: `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are
    /// ignored, because the agent is local by design and a proxy would see the
    /// `X-Consul-Token` header.
    pub fn new(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let scheme = if config.uses_tls() { "https" } else { "http" };
        let bases = std::iter::once(&config.address)
            .chain(&config.fallback)
            .map(|address| base_url(scheme, address))
            .collect::<Result<Vec<Url>>>()?;
        if let Some(token) = &config.token {
            if reqwest::header::HeaderValue::from_str(token.expose()).is_err() {
                return Err(Error::config(
                    "consul: the ACL token contains characters not allowed in an HTTP header",
                ));
            }
        }
        // No proxy, whatever HTTP_PROXY / HTTPS_PROXY / ALL_PROXY say: the agent is local
        // by design, and a proxy would see every request and the X-Consul-Token header.
        // No redirect is followed either: the X-Consul-Token header is not one reqwest
        // strips on a cross-host redirect, so following one would hand the token to
        // whatever host the answer names. A 3xx is an error saying where it pointed.
        // gzip is asked for (as Go's client does) and decoded by `read_body`, which counts
        // the bytes on the wire and the decoded ones against the body cap.
        let mut accept = HeaderMap::new();
        accept.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let mut builder = reqwest::Client::builder()
            .default_headers(accept)
            .use_rustls_tls()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &config.ca_file {
            let pem = read_file("CA", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!(
                    "consul: CA file {}: not a PEM certificate bundle: {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::config(format!(
                    "consul: CA file {}: no certificate found",
                    ca.display()
                )));
            }
            // The given CA replaces the public roots unless asked to keep them.
            builder = builder.tls_built_in_root_certs(config.public_roots);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            let mut pem = read_file("client certificate", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("client key", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::config(format!(
                    "consul: client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| Error::config(format!("consul: cannot build HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                bases,
                current: AtomicUsize::new(0),
                moves: tokio::sync::watch::channel(0).0,
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The base URL of the agent requests go to now (`http://host:port/`): the configured
    /// address, or after a move the [`fallback`](ClientConfig::fallback) in use.
    pub fn base_url(&self) -> &Url {
        let i = self.inner.current.load(Ordering::Relaxed);
        &self.inner.bases[i % self.inner.bases.len()]
    }

    /// A transport failure of a request to `what`: with fallback agents, moves to the next
    /// one when the request went to the current one ([`failed_at`](Self::failed_at)).
    fn transport_error(&self, what: &str, e: reqwest::Error) -> Error {
        self.failed_at(e.url());
        transport_error(what, e)
    }

    /// An answer that is not a success: with fallback agents, a 5xx (`500 No cluster
    /// leader` from a server cut from its quorum, a client agent that lost its servers)
    /// moves to the next one like a transport failure.
    async fn status_error(&self, what: &str, resp: Response) -> Error {
        if resp.status().is_server_error() {
            self.failed_at(Some(resp.url()));
        }
        status_error(what, resp, self.inner.config.timeout).await
    }

    /// With fallback agents, moves to the next one when `url` is at the current one (a
    /// failure seen by several requests at once moves once; one from an agent the client
    /// has left does not move it again).
    fn failed_at(&self, url: Option<&Url>) {
        let n = self.inner.bases.len();
        if n < 2 {
            return;
        }
        let i = self.inner.current.load(Ordering::Relaxed) % n;
        let used = &self.inner.bases[i];
        let same = url.is_some_and(|u| {
            u.host_str() == used.host_str()
                && u.port_or_known_default() == used.port_or_known_default()
        });
        if same
            && self
                .inner
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.inner.moves.send_modify(|m| *m += 1);
            tracing::warn!(backend = BACKEND, from = %host_port(used),
                to = %host_port(&self.inner.bases[(i + 1) % n]),
                "agent stopped answering; moving to the next address");
        }
    }

    /// The `host:port` of agent `agent` (an index in `address`, then `fallback`).
    pub fn agent_address(&self, agent: usize) -> String {
        host_port(&self.inner.bases[agent % self.inner.bases.len()])
    }

    /// How many agents the client knows: the address and its fallback.
    pub fn agents(&self) -> usize {
        self.inner.bases.len()
    }

    /// The index (in `address`, then `fallback`) of the agent requests go to now.
    pub fn current_agent(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.bases.len()
    }

    /// `base` of agent `agent` + `/v1/<segments>`, each segment percent-encoded.
    fn url_at(&self, agent: usize, segments: &[&str]) -> Url {
        let mut url = self.inner.bases[agent % self.inner.bases.len()].clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().push("v1").extend(segments);
        }
        url
    }

    /// A request with the token header, the namespace and partition (and, when `with_dc`,
    /// the datacenter) and a timeout.
    fn request(
        &self,
        method: Method,
        segments: &[&str],
        with_dc: bool,
        timeout: Duration,
    ) -> RequestBuilder {
        self.request_at(self.current_agent(), method, segments, with_dc, timeout)
    }

    /// [`request`](Self::request) to agent `agent`, whichever is current.
    fn request_at(
        &self,
        agent: usize,
        method: Method,
        segments: &[&str],
        with_dc: bool,
        timeout: Duration,
    ) -> RequestBuilder {
        let c = &self.inner.config;
        let mut url = self.url_at(agent, segments);
        {
            let mut q = url.query_pairs_mut();
            if with_dc {
                if let Some(dc) = &c.datacenter {
                    q.append_pair("dc", dc);
                }
            }
            if let Some(ns) = &c.namespace {
                q.append_pair("ns", ns);
            }
            if let Some(p) = &c.partition {
                q.append_pair("partition", p);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut req = self.inner.http.request(method, url).timeout(timeout);
        if let Some(token) = &c.token {
            // Marked sensitive so that HTTP-level debug output redacts it too. (`new` has
            // checked that the token is a valid header value.)
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(token.expose()) {
                value.set_sensitive(true);
                req = req.header(TOKEN_HEADER, value);
            }
        }
        req
    }

    /// The request [`health_service`](Self::health_service) sends (exposed for tests).
    #[doc(hidden)]
    pub fn health_request(
        &self,
        service: &str,
        tag: Option<&str>,
        passing: bool,
        index: u64,
    ) -> RequestBuilder {
        let c = &self.inner.config;
        let blocking = index > 0;
        let timeout = if blocking {
            // Saturating: `timeout` may be as long as `Duration::MAX` ("no timeout").
            (c.wait + c.wait / 16).saturating_add(c.timeout)
        } else {
            c.timeout
        };
        let mut req = self.request(Method::GET, &["health", "service", service], true, timeout);
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(tag) = tag {
            q.push(("tag", tag.to_string()));
        }
        if passing {
            q.push(("passing", "1".to_string()));
        }
        if blocking {
            q.push(("index", index.to_string()));
            q.push(("wait", format!("{}ms", c.wait.as_millis())));
        }
        if !q.is_empty() {
            req = req.query(&q);
        }
        req
    }

    /// `GET /v1/health/service/<service>`: the instances of `service` with their node and
    /// checks. With `index > 0` this is a blocking query that returns when the index moves
    /// past `index` or after the configured wait.
    ///
    /// The body is read up to [`ClientConfig::max_body`] bytes and decoded entry by entry
    /// without building a JSON tree or copying the entries: each is converted into an
    /// [`Instance`] by [`entry_to_instance`](crate::entry_to_instance) as it is read, so a
    /// bad entry is skipped alone (counted, with the first [`MAX_SKIP_REASONS`] reasons).
    ///
    /// Fails with [`Error::Malformed`] when the body is not a JSON array, is larger than the
    /// cap, has more than one entry per [`MIN_ENTRY_BYTES`] of the cap, or the
    /// `X-Consul-Index` header is missing or not a number.
    ///
    /// With fallback agents, a query in flight when the client moves to the next agent (on
    /// another request's failure) ends at once with [`Error::Unavailable`], so the caller
    /// asks the new agent from the same index instead of waiting out `wait` at the old one.
    pub async fn health_service(
        &self,
        service: &str,
        tag: Option<&str>,
        passing: bool,
        index: u64,
    ) -> Result<HealthAnswer> {
        self.health_service_with(service, tag, passing, index, None)
            .await
    }

    /// [`health_service`](Self::health_service), decoding through `reuse`: the entries of
    /// the answer that the previous answer decoded through it had (same fingerprint) are not
    /// decoded again, they get the previous [`Instance`] handles back (see
    /// [`InstanceReuse`]). A watch keeps one `InstanceReuse` for all its queries, as
    /// [`HealthSource`](crate::HealthSource) does.
    pub async fn health_service_reusing(
        &self,
        service: &str,
        tag: Option<&str>,
        passing: bool,
        index: u64,
        reuse: &mut InstanceReuse,
    ) -> Result<HealthAnswer> {
        self.health_service_with(service, tag, passing, index, Some(reuse))
            .await
    }

    async fn health_service_with(
        &self,
        service: &str,
        tag: Option<&str>,
        passing: bool,
        index: u64,
        reuse: Option<&mut InstanceReuse>,
    ) -> Result<HealthAnswer> {
        if self.inner.bases.len() < 2 {
            return self
                .health_service_here(service, tag, passing, index, reuse)
                .await;
        }
        let mut moves = self.inner.moves.subscribe();
        tokio::select! {
            answer = self.health_service_here(service, tag, passing, index, reuse) => answer,
            _ = moves.changed() => Err(Error::unavailable(
                BACKEND,
                format!(
                    "health query for service {service:?}: the client moved to {}; asking there",
                    host_port(self.base_url())
                ),
            )),
        }
    }

    /// [`health_service`](Self::health_service) at the current agent.
    async fn health_service_here(
        &self,
        service: &str,
        tag: Option<&str>,
        passing: bool,
        index: u64,
        reuse: Option<&mut InstanceReuse>,
    ) -> Result<HealthAnswer> {
        let what = format!("health query for service {service:?}");
        let resp = self
            .health_request(service, tag, passing, index)
            .send()
            .await
            .map_err(|e| self.transport_error(&what, e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        let index = match resp.headers().get("X-Consul-Index") {
            None => {
                return Err(Error::malformed(
                    BACKEND,
                    format!("{what}: the answer has no X-Consul-Index header"),
                ))
            }
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::malformed(
                        BACKEND,
                        format!("{what}: X-Consul-Index header {v:?} is not a number"),
                    )
                })?,
        };
        let filtered_by_acls = resp
            .headers()
            .get(FILTERED_BY_ACLS_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = self.read_body(resp, &what).await?;
        let decoded = decode_health_body(&body, self.inner.config.max_body, reuse)
            .map_err(|problem| Error::malformed(BACKEND, format!("{what}: {problem}")))?;
        Ok(HealthAnswer {
            index,
            instances: decoded.instances,
            skipped: decoded.skipped,
            skip_reasons: decoded.skip_reasons,
            filtered_by_acls,
        })
    }

    /// Reads a body of at most [`ClientConfig::max_body`] bytes: a larger one (by its
    /// `Content-Length`, or counted while reading a chunked one) is an [`Error::Malformed`]
    /// and the rest is not read (the connection is dropped). A gzip body is capped twice:
    /// as it comes, and decoded (decoding stops at the cap).
    ///
    /// Each piece of the body must arrive within [`ClientConfig::timeout`] of the one
    /// before: an answer that stalls mid-body is an [`Error::Timeout`] then, not after the
    /// whole `wait + wait/16 + timeout` of a blocking query (the agent sends the headers
    /// only when it answers, so the body follows at once). And the whole body must arrive
    /// within [`BODY_TIMEOUTS`] times [`ClientConfig::timeout`]: a body that trickles in,
    /// each piece just inside the timeout, is an [`Error::Timeout`] then. (A non-blocking
    /// request must be complete, body included, within one `timeout` anyway.)
    async fn read_body(&self, mut resp: Response, what: &str) -> Result<Vec<u8>> {
        let limit = self.inner.config.max_body;
        let stall = self.inner.config.timeout;
        let too_large = |size: String| {
            Error::malformed(
                BACKEND,
                format!(
                    "{what}: the answer is {size}, more than the {limit}-byte cap \
                     (raise it with ClientConfig::max_body or the URL option max_body=)"
                ),
            )
        };
        let gzip = is_gzip(&resp);
        let declared = resp.content_length();
        if let Some(len) = declared.filter(|&len| len > limit as u64) {
            return Err(too_large(format!("{len} bytes")));
        }
        let mut body = Vec::with_capacity(declared.map_or(0, |l| l as usize));
        // `None` (no deadline) when it is too far to represent ("no timeout").
        let deadline = tokio::time::Instant::now().checked_add(stall.saturating_mul(BODY_TIMEOUTS));
        // Bounded: each turn adds a chunk, and the body is capped at `limit`.
        loop {
            let wait = match deadline {
                Some(deadline) => {
                    stall.min(deadline.saturating_duration_since(tokio::time::Instant::now()))
                }
                None => stall,
            };
            let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
                Ok(read) => read.map_err(|e| self.transport_error(what, e))?,
                Err(_) => {
                    return Err(Error::Timeout {
                        backend: BACKEND,
                        message: if wait < stall {
                            format!(
                                "{what}: the answer is too slow: {} bytes of the body in \
                                 {:?} ({BODY_TIMEOUTS} times ClientConfig::timeout, URL \
                                 option timeout=)",
                                body.len(),
                                stall.saturating_mul(BODY_TIMEOUTS)
                            )
                        } else {
                            format!(
                                "{what}: the answer stalled: no data for {stall:?} after {} \
                                 bytes of the body (ClientConfig::timeout, URL option timeout=)",
                                body.len()
                            )
                        },
                    })
                }
            };
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > limit {
                return Err(too_large("larger".to_string()));
            }
            body.extend_from_slice(&chunk);
        }
        if !gzip {
            return Ok(body);
        }
        match gunzip(&body, limit) {
            Ok(Some(decoded)) => Ok(decoded),
            Ok(None) => Err(too_large("larger decoded (gzip)".to_string())),
            Err(problem) => Err(Error::malformed(
                BACKEND,
                format!("{what}: the gzip answer does not decode: {problem}"),
            )),
        }
    }

    /// `PUT /v1/agent/service/register` with `registration` as the JSON body (an upsert).
    pub async fn register<T: Serialize + ?Sized>(&self, registration: &T) -> Result<()> {
        self.register_reporting(registration)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`register`](Self::register), saying on failure whether the agent may have applied
    /// the registration anyway.
    pub async fn register_reporting<T: Serialize + ?Sized>(
        &self,
        registration: &T,
    ) -> std::result::Result<(), RegisterFailed> {
        let what = "service registration";
        let resp = self
            .request(
                Method::PUT,
                &["agent", "service", "register"],
                false,
                self.inner.config.timeout,
            )
            .json(registration)
            .send()
            .await
            .map_err(|e| RegisterFailed {
                // Only a connection that was never made certainly carried nothing: a
                // timeout or a reset may come after the agent applied the request.
                maybe_applied: !e.is_connect(),
                error: self.transport_error(what, e),
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(RegisterFailed {
                // The agent refused it (4xx); a 5xx may come from a proxy that forwarded it.
                maybe_applied: !status.is_client_error(),
                error: self.status_error(what, resp).await,
            })
        }
    }

    /// Sends a body-less request to an agent endpoint with the request timeout; a transport
    /// failure becomes an error about `what`.
    async fn agent_call(
        &self,
        method: Method,
        path: &[&str],
        what: &str,
    ) -> Result<reqwest::Response> {
        self.request(method, path, false, self.inner.config.timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(what, e))
    }

    /// `PUT /v1/agent/service/deregister/<id>`. Returns `false` when the agent did not know
    /// the service (not an error: deregistration is idempotent).
    pub async fn deregister(&self, id: &str) -> Result<bool> {
        self.deregister_at(self.current_agent(), id).await
    }

    /// [`deregister`](Self::deregister) at agent `agent` (an index in `address`, then
    /// `fallback`), whichever is current; a failure there does not move the client.
    pub async fn deregister_at(&self, agent: usize, id: &str) -> Result<bool> {
        let what = format!("deregistration of {id:?}");
        let resp = self
            .request_at(
                agent,
                Method::PUT,
                &["agent", "service", "deregister", id],
                false,
                self.inner.config.timeout,
            )
            .send()
            .await
            .map_err(|e| transport_error(&what, e))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    /// `PUT /v1/agent/check/update/<check_id>`: sets a TTL check's status to `health`
    /// ([`check_status`]) and resets its TTL.
    ///
    /// Returns [`CheckUpdate::Unknown`] when the agent does not know the check (HTTP 404, or
    /// the older "does not have associated TTL" 500), which means the registration was lost.
    pub async fn update_ttl(&self, check_id: &str, health: Health) -> Result<CheckUpdate> {
        let what = format!("TTL check update of {check_id:?}");
        let status = check_status(health);
        let body = serde_json::json!({
            "Status": status,
            "Output": format!("set by sdkit: the registered instance's health is {health:?}"),
        });
        let resp = self
            .request(
                Method::PUT,
                &["agent", "check", "update", check_id],
                false,
                self.inner.config.timeout,
            )
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport_error(&what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(CheckUpdate::Updated);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(CheckUpdate::Unknown);
        }
        let hints = FailureHints::new(resp.headers().get(RETRY_AFTER).map(|v| v.as_bytes()), None);
        let body = error_body(resp, self.inner.config.timeout).await;
        if status == StatusCode::INTERNAL_SERVER_ERROR
            && (body.contains("does not have associated TTL") || body.contains("Unknown check"))
        {
            return Ok(CheckUpdate::Unknown);
        }
        // The wait a 429 or 503 asks for travels with the error, as for every other
        // request ([`Error::retry_after`]).
        Err(hints.apply(Error::unavailable(
            BACKEND,
            format!(
                "{what}: HTTP {status}: {}{}",
                truncate(&body),
                hints.note("")
            ),
        )))
    }

    /// Marks a TTL check passing: [`update_ttl`](Self::update_ttl) with [`Health::Passing`].
    pub async fn pass_ttl(&self, check_id: &str) -> Result<CheckUpdate> {
        self.update_ttl(check_id, Health::Passing).await
    }

    /// `GET /v1/agent/service/<id>`: the agent's view of a local service, `None` when the
    /// agent does not know it.
    ///
    /// The answer (at most [`ClientConfig::max_body`] bytes) is checked to be a JSON object
    /// and kept as text ([`AgentService`]), not decoded into a JSON tree: a tree costs up to
    /// 17 times the body (`[0,0,...]`: each 2-byte `0,` is a 32-byte value).
    pub async fn agent_service(&self, id: &str) -> Result<Option<AgentService>> {
        let what = format!("agent service lookup of {id:?}");
        let resp = self
            .agent_call(Method::GET, &["agent", "service", id], &what)
            .await?;
        match resp.status() {
            s if s.is_success() => {
                let body = self.read_body(resp, &what).await?;
                let raw: Box<RawValue> = serde_json::from_slice(&body)
                    .map_err(|e| Error::malformed(BACKEND, format!("{what}: {e}")))?;
                if !raw.get().starts_with('{') {
                    return Err(Error::malformed(
                        BACKEND,
                        format!("{what}: expected an object, got {}", truncate(raw.get())),
                    ));
                }
                Ok(Some(AgentService(raw)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&what, resp).await),
        }
    }

    /// `GET /v1/catalog/services`: the names of the services of the catalog (of the
    /// configured datacenter, namespace and partition), sorted. The body is read up to
    /// [`ClientConfig::max_body`] bytes; an answer that is not an object of service names is
    /// an [`Error::Malformed`]. The names are collected as they are read (the tags are
    /// skipped unread): at most the body plus about 3 times it for the shortest names
    /// (`"a":[],`: a 24-byte `String` per 6 bytes of body).
    pub async fn catalog_services(&self) -> Result<Vec<String>> {
        let what = "catalog services listing";
        let resp = self
            .request(
                Method::GET,
                &["catalog", "services"],
                true,
                self.inner.config.timeout,
            )
            .send()
            .await
            .map_err(|e| self.transport_error(what, e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(what, resp).await);
        }
        let body = self.read_body(resp, what).await?;
        // `{"name": ["tag", ...], ...}`: only the keys matter, collected straight into the
        // list (no map, no tree of the values).
        let decode = |seed: ServiceNames| {
            let mut d = serde_json::Deserializer::from_slice(&body);
            seed.deserialize(&mut d)
                .and_then(|v| d.end().map(|()| v))
                .map_err(|e| Error::malformed(BACKEND, format!("{what}: {e}")))
        };
        let (count, _) = decode(ServiceNames(None))?;
        let (_, mut names) = decode(ServiceNames(Some(count)))?;
        drop(body);
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// `GET /v1/agent/checks`: the agent's local checks, keyed by check id.
    ///
    /// Decoded into a JSON tree, which may cost up to 17 times the body (at most
    /// [`ClientConfig::max_body`]): this reads the local agent's own checks (the registrar's
    /// tests and tools), not an answer the watch loop reads again and again.
    pub async fn agent_checks(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let what = "agent checks listing";
        let resp = self
            .agent_call(Method::GET, &["agent", "checks"], what)
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(what, resp).await);
        }
        let body = self.read_body(resp, what).await?;
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(other) => Err(Error::malformed(
                BACKEND,
                format!(
                    "{what}: expected an object, got {}",
                    truncate(&other.to_string())
                ),
            )),
            Err(e) => Err(Error::malformed(BACKEND, format!("{what}: {e}"))),
        }
    }
}

/// The agent's view of one local service ([`Client::agent_service`]): its JSON object as
/// the agent sent it, checked to be JSON, not decoded.
#[derive(Debug, Clone)]
pub struct AgentService(Box<RawValue>);

impl AgentService {
    /// The JSON object as the agent sent it.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Decodes the object into `T` (pick the fields needed: a whole JSON tree may cost many
    /// times the body).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.0.get())
            .map_err(|e| Error::malformed(BACKEND, format!("agent service: {e}")))
    }
}

impl PartialEq for AgentService {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for AgentService {}

/// Reads the keys of a `/v1/catalog/services` object (the values skipped unread): with
/// `None`, only counts them (allocating nothing); with `Some(count)`, collects them into a
/// list of exactly that capacity (no growth: a growing list holds three times its size
/// while it moves).
struct ServiceNames(Option<usize>);

impl<'de> DeserializeSeed<'de> for ServiceNames {
    type Value = (usize, Vec<String>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ServiceNames {
    type Value = (usize, Vec<String>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of service names")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut count = 0;
        let mut names = Vec::with_capacity(self.0.unwrap_or(0));
        // Bounded: by the body, itself capped at `max_body`.
        loop {
            if self.0.is_some() {
                // Never more than counted (the same body): no growth.
                if names.len() == names.capacity() {
                    break;
                }
                let Some(name) = map.next_key::<String>()? else {
                    break;
                };
                names.push(name);
            } else if map.next_key::<serde::de::IgnoredAny>()?.is_none() {
                break;
            }
            map.next_value::<serde::de::IgnoredAny>()?;
            count += 1;
        }
        Ok((count, names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(config: ClientConfig) -> Client {
        Client::new(config).unwrap()
    }

    #[test]
    fn token_goes_in_a_header_never_in_the_url_or_debug() {
        let c = client(
            ClientConfig::new("127.0.0.1:8500")
                .token(Secret::new("tok-123"))
                .datacenter("dc9")
                .namespace("team")
                .partition("part"),
        );
        let req = c
            .health_request("web", Some("v1"), true, 0)
            .build()
            .unwrap();
        assert_eq!(req.headers()[TOKEN_HEADER], "tok-123");
        assert!(req.headers()[TOKEN_HEADER].is_sensitive());
        let url = req.url().as_str();
        assert!(!url.contains("tok-123"), "{url}");
        assert_eq!(
            url,
            "http://127.0.0.1:8500/v1/health/service/web?dc=dc9&ns=team&partition=part&tag=v1&passing=1"
        );
        assert!(!format!("{c:?}").contains("tok-123"));
        assert!(format!("{c:?}").contains("***"));
        // Agent endpoints are local: no dc, but ns and partition.
        let req = c
            .request(
                Method::PUT,
                &["agent", "service", "register"],
                false,
                DEFAULT_TIMEOUT,
            )
            .build()
            .unwrap();
        assert_eq!(
            req.url().as_str(),
            "http://127.0.0.1:8500/v1/agent/service/register?ns=team&partition=part"
        );
        assert_eq!(req.headers()[TOKEN_HEADER], "tok-123");
    }

    #[test]
    fn blocking_requests_carry_index_wait_and_a_longer_timeout() {
        let c = client(ClientConfig::new("127.0.0.1:8500").wait(Duration::from_secs(16)));
        let req = c.health_request("a b/c", None, false, 42).build().unwrap();
        assert_eq!(
            req.url().as_str(),
            "http://127.0.0.1:8500/v1/health/service/a%20b%2Fc?index=42&wait=16000ms"
        );
        assert_eq!(
            req.timeout(),
            Some(&(Duration::from_secs(17) + DEFAULT_TIMEOUT))
        );
        assert!(req.headers().get(TOKEN_HEADER).is_none());
        let req = c.health_request("web", None, false, 0).build().unwrap();
        assert_eq!(req.url().query(), None);
        assert_eq!(req.timeout(), Some(&DEFAULT_TIMEOUT));
    }

    #[test]
    fn tls_options_select_https_and_bad_files_are_named() {
        assert_eq!(
            client(ClientConfig::new("h:1").tls(true))
                .base_url()
                .scheme(),
            "https"
        );
        assert_eq!(
            client(ClientConfig::new("[::1]:8501")).base_url().as_str(),
            "http://[::1]:8501/"
        );
        let err = Client::new(ClientConfig::new("h:1").ca_file("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read CA file /nonexistent/ca.pem"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("sd-consul-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = Client::new(ClientConfig::new("h:1").ca_file(&junk))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA file"), "{err}");
        let err = Client::new(ClientConfig::new("h:1").client_cert(&junk, &junk))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 9, item 19 (client builder validation): what the URL parser refuses, the
    /// builder refuses too, with an error naming the setter and the URL option.
    #[test]
    fn client_builder_validation_rejects_a_zero_wait_or_timeout_with_a_clear_error() {
        let cfg = || ClientConfig::new("127.0.0.1:8500");
        for (config, needle) in [
            (
                cfg().wait(Duration::ZERO),
                "wait 0ns must be between 1ms and 10m",
            ),
            (
                cfg().wait(Duration::from_micros(900)),
                "between 1ms and 10m",
            ),
            (cfg().wait(Duration::from_secs(601)), "between 1ms and 10m"),
            (
                cfg().timeout(Duration::ZERO),
                "timeout must be greater than 0",
            ),
            (
                cfg().max_body(1000),
                "max_body 1000 bytes is below the minimum",
            ),
        ] {
            let err = Client::new(config).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(
                msg.contains("ClientConfig::") || msg.contains("max_body"),
                "{msg}"
            );
        }
        // The edges are accepted; any positive timeout outlasts the wait of a blocking
        // query (it gets wait + wait/16 + timeout).
        let c = client(
            cfg()
                .wait(Duration::from_millis(1))
                .timeout(Duration::from_millis(1)),
        );
        let req = c.health_request("web", None, false, 7).build().unwrap();
        assert!(req.timeout().unwrap() > &Duration::from_millis(1));
        client(cfg().wait(MAX_WAIT).max_body(MIN_MAX_BODY));
    }

    /// Issue 9, item 22: a custom CA replaces the public roots unless asked to keep them.
    /// (That the built-in roots are then not trusted cannot be shown here without a server
    /// certificate from a public CA; this checks the setting reqwest is given.)
    #[test]
    fn a_custom_ca_replaces_the_public_roots_unless_public_roots_is_set() {
        let c = ClientConfig::new("h:1").ca_file("/x/ca.pem");
        assert!(!c.public_roots);
        assert!(c.clone().public_roots(true).public_roots);
        assert_eq!(ClientConfig::new("h:1").max_body, DEFAULT_MAX_BODY);
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        for bad in ["", "h:1/path", "h:notaport", "::1:80"] {
            let err = Client::new(ClientConfig::new(bad)).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_rejected_without_showing_it() {
        let err = Client::new(ClientConfig::new("h:1").token(Secret::new("bad\ntoken")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not allowed in an HTTP header"), "{err}");
        assert!(!err.contains("bad"), "{err}");
    }

    #[test]
    fn token_from_env() {
        std::env::set_var("SD_CONSUL_UNIT_TOKEN", "abc");
        let c = ClientConfig::new("h:1")
            .token_from_env("SD_CONSUL_UNIT_TOKEN")
            .unwrap();
        assert_eq!(c.token.unwrap().expose(), "abc");
        let err = ClientConfig::new("h:1")
            .token_from_env("SD_CONSUL_UNIT_TOKEN_UNSET")
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(
            err.to_string()
                .contains("environment variable SD_CONSUL_UNIT_TOKEN_UNSET is not set"),
            "{err}"
        );
        // A name that would need escaping in a URL is looked up as given.
        std::env::set_var("SD_CONSUL_UNIT&TOKEN#X", "def");
        let c = ClientConfig::new("h:1")
            .token_from_env("SD_CONSUL_UNIT&TOKEN#X")
            .unwrap();
        assert_eq!(c.token.unwrap().expose(), "def");
        std::env::set_var("SD_CONSUL_UNIT_TOKEN_EMPTY", "");
        assert!(ClientConfig::new("h:1")
            .token_from_env("SD_CONSUL_UNIT_TOKEN_EMPTY")
            .is_err());
    }

    #[test]
    fn tls_failures_get_a_hint() {
        assert!(tls_hint("x: invalid peer certificate: UnknownIssuer")
            .unwrap()
            .contains("not trusted"));
        for alert in ["CertificateRequired", "UnknownCA", "BadCertificate"] {
            assert!(
                tls_hint(&format!("connection error: received fatal alert: {alert}"))
                    .unwrap()
                    .contains("client certificate"),
                "{alert}"
            );
        }
        assert_eq!(tls_hint("connection refused"), None);
    }

    #[test]
    fn long_bodies_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(400);
        let t = truncate(&s);
        assert!(t.ends_with("..."));
        assert!(t.len() <= MAX_BODY_IN_ERROR + 3);
    }
}
