//! The HTTP client for Eureka's REST API: servers and failover, basic auth, timeouts.
//!
//! A [`Client`] is cheap to clone (clones share one connection pool and the index of the
//! server that answered last) and is what the [`EurekaInstancer`](crate::EurekaInstancer)
//! and the [`EurekaRegistrar`](crate::EurekaRegistrar) talk through. It speaks the
//! "Eureka REST operations" of the Netflix server (and of Spring Cloud Netflix, which
//! embeds it), JSON only:
//!
//! | call | request | answers |
//! |---|---|---|
//! | [`register`](Client::register) | `POST {base}/apps/{APP}` with `{"instance": {...}}` | 204 |
//! | [`renew`](Client::renew) | `PUT {base}/apps/{APP}/{id}` | 200, or 404 when the server does not know the instance |
//! | [`cancel`](Client::cancel) | `DELETE {base}/apps/{APP}/{id}` | 200, 404 when already gone |
//! | [`set_status`](Client::set_status) | `PUT {base}/apps/{APP}/{id}/status?value=STATUS` | 200, 404 when unknown |
//! | [`set_metadata`](Client::set_metadata) | `PUT {base}/apps/{APP}/{id}/metadata?KEY=VALUE` | 200, 404 when unknown |
//! | [`app`](Client::app) | `GET {base}/apps/{APP}` | 200 `{"application": {...}}`, 404 when no instance |
//! | [`vip`](Client::vip) | `GET {base}/vips/{vip}` | 200 `{"applications": {...}}`, 404 when none |
//!
//! Several servers may be given. Every request goes first to the server that answered last;
//! when it cannot be reached, times out or answers 5xx, the same request goes to the next
//! one, and so on once around the list. A read (`app`, `vip`) also goes to the next server
//! when the answer is 403 (what a Eureka server answers while it is not ready to serve
//! reads, e.g. in the peer-sync wait after a restart) or cannot be parsed; a server becomes
//! the preferred one only when its read answer was parsed. Other 4xx answers are answers (no
//! failover). An error answer's body is read only up to [`MAX_ERROR_BODY`] bytes.
//!
//! ```
//! use std::time::Duration;
//! use sd_eureka::{Client, ClientConfig};
//! use sd_core::Secret;
//!
//! let client = Client::new(
//!     ClientConfig::new(["http://10.0.0.1:8761/eureka", "http://10.0.0.2:8761/eureka"])
//!         .basic_auth("sd", Secret::new("s3cr3t"))
//!         .timeout(Duration::from_secs(5)),
//! )?;
//! // The password is sent in the Authorization header only, and never printed.
//! assert!(!format!("{client:?}").contains("s3cr3t"));
//! # Ok::<(), sd_core::Error>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sd_core::error::error_chain;
use sd_core::{Error, Result, Secret};
use serde::Serialize;
use url::Url;

/// The backend name used in errors and logs.
pub const BACKEND: &str = "eureka";

/// The default port of a Eureka server (Spring Cloud's `8761`).
pub const DEFAULT_PORT: u16 = 8761;

/// The default base path (Spring Cloud Netflix serves the API under `/eureka`; the plain
/// Netflix WAR under `/eureka/v2`).
pub const DEFAULT_PATH: &str = "/eureka";

/// The default timeout of each request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default cap on the size of an answer body, 64 MiB (a full registry of tens of
/// thousands of instances fits); a larger answer is an [`Error::Malformed`] instead of an
/// unbounded allocation, and is not read further. Set another with
/// [`ClientConfig::max_body`] or the URL option `max_body=` (bytes).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The smallest body cap [`ClientConfig::max_body`] accepts (64 KiB).
pub const MIN_MAX_BODY: usize = 64 << 10;

/// The most of an error answer's body that is read (to quote it in the error).
pub const MAX_ERROR_BODY: usize = 4096;

/// How to reach and authenticate to the Eureka servers.
///
/// Built with [`ClientConfig::new`] and the setters, or from an `eureka://` URL by
/// [`EurekaRegistry::from_url`](crate::EurekaRegistry::from_url). `Debug` never shows the
/// password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The base URL of each server, e.g. `http://127.0.0.1:8761/eureka`, in failover order.
    pub servers: Vec<String>,
    /// Timeout of each request (per server tried).
    pub timeout: Duration,
    /// The basic-auth user.
    pub user: Option<String>,
    /// The basic-auth password.
    pub password: Option<Secret>,
    /// The largest answer body read, in bytes ([`MAX_BODY`] by default, at least
    /// [`MIN_MAX_BODY`]); a larger answer is an [`Error::Malformed`] and is not read further.
    pub max_body: usize,
}

impl ClientConfig {
    /// A config for these servers (base URLs, `http://host:port/eureka`), no
    /// authentication, [`DEFAULT_TIMEOUT`].
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            user: None,
            password: None,
            max_body: MAX_BODY,
        }
    }

    /// Caps the size of an answer body, in bytes (at least [`MIN_MAX_BODY`]; checked by
    /// [`Client::new`]). The default is [`MAX_BODY`].
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Authenticates every request with HTTP basic auth.
    #[must_use]
    pub fn basic_auth(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.user = Some(user.into());
        self.password = Some(password);
        self
    }
}

struct Inner {
    http: reqwest::Client,
    bases: Vec<Url>,
    config: ClientConfig,
    /// The server that answered last: the first one tried by the next request.
    preferred: AtomicUsize,
}

/// A client for a group of Eureka servers. Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        let servers: Vec<&str> = self.inner.bases.iter().map(Url::as_str).collect();
        f.debug_struct("Client")
            .field("servers", &servers)
            .field("user", &c.user)
            .field("password", &c.password)
            .field("timeout", &c.timeout)
            .finish()
    }
}

/// The outcome of a call about one instance (renew, status change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceUpdate {
    /// The server applied it.
    Updated,
    /// The server does not know the instance: it restarted, evicted it, or someone
    /// cancelled it.
    Unknown,
}

/// Longest piece of a body quoted in an error message.
const MAX_QUOTE: usize = 300;

/// At most [`MAX_QUOTE`] bytes of `s`, cut on a character boundary.
pub(crate) fn quote(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().map(|(i, _)| i).find(|&i| i > MAX_QUOTE) {
        Some(end) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// What one server's answer comes to.
enum Outcome<T> {
    /// A usable answer: the result, and that server becomes the preferred one.
    Answer(T),
    /// An answer that is final (no failover) but does not make the server preferred.
    Final(Error),
    /// The next server is tried.
    Next(Error),
}

impl Client {
    /// Builds a client. Fails with [`Error::Config`] when there is no server, a server URL is
    /// not an `http(s)://host[:port]/path` URL, or the user or password cannot be sent.
    /// No request is sent.
    ///
    /// The client never uses a proxy (`HTTP_PROXY` and the like are ignored): a proxy would
    /// see the basic-auth password.
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.servers.is_empty() {
            return Err(Error::config("eureka: no server given"));
        }
        let mut bases = Vec::with_capacity(config.servers.len());
        for s in &config.servers {
            let mut url = Url::parse(s.trim()).map_err(|e| {
                Error::config(format!(
                    "eureka: bad server URL {s:?}: {e} (expected http://host:port/eureka)"
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(Error::config(format!(
                    "eureka: bad server URL {s:?} (expected http://host:port/eureka)"
                )));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(Error::config(format!(
                    "eureka: server URL {s:?} must not have a query or fragment"
                )));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::config(
                    "eureka: credentials in a server URL are not accepted; use the user and \
                     password_env options",
                ));
            }
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty();
            }
            bases.push(url);
        }
        if config.password.is_some() && config.user.is_none() {
            return Err(Error::config("eureka: a password needs a user"));
        }
        if let Some(user) = &config.user {
            if user.is_empty() || user.contains(':') {
                return Err(Error::config(format!(
                    "eureka: basic-auth user {user:?} must be non-empty and have no ':'"
                )));
            }
        }
        if config.timeout.is_zero() {
            return Err(Error::config("eureka: the timeout must be greater than 0"));
        }
        if config.max_body < MIN_MAX_BODY {
            return Err(Error::config(format!(
                "eureka: max_body {} bytes is below the minimum of {MIN_MAX_BODY} bytes \
                 (ClientConfig::max_body, URL option max_body=)",
                config.max_body
            )));
        }
        // No redirect is followed: a server (or whatever answers in its place) must not be
        // able to send the client, and the credentials of a same-host redirect, elsewhere.
        // A 3xx is an error naming where it pointed.
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::config(format!("eureka: cannot build HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                bases,
                config,
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The base URL of every server, in failover order.
    pub fn servers(&self) -> &[Url] {
        &self.inner.bases
    }

    /// The base URL of the server the next request goes to first (the one that answered
    /// last).
    pub fn preferred_server(&self) -> &Url {
        let i = self.inner.preferred.load(Ordering::Relaxed) % self.inner.bases.len();
        &self.inner.bases[i]
    }

    /// `base` + `segments`, each percent-encoded.
    fn url(base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    /// The request for `segments` on server `base`, with auth and the JSON `Accept` header.
    fn request(&self, base: &Url, method: Method, segments: &[&str]) -> RequestBuilder {
        let c = &self.inner.config;
        let mut req = self
            .inner
            .http
            .request(method, Self::url(base, segments))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(user) = &c.user {
            req = req.basic_auth(user, c.password.as_ref().map(Secret::expose));
        }
        req
    }

    /// Sends `req`: the response, or the error when the server cannot be reached, times out
    /// or answers 5xx.
    async fn attempt(&self, what: &str, base: &Url, req: RequestBuilder) -> Result<Response> {
        match req.send().await {
            Ok(resp) if resp.status().is_server_error() => {
                Err(status_error(what, base, resp).await)
            }
            Ok(resp) => Ok(resp),
            Err(e) => {
                let message = format!("{what} at {base}: {}", error_chain(&e));
                Err(if e.is_timeout() {
                    Error::Timeout {
                        backend: BACKEND,
                        message,
                    }
                } else {
                    Error::unavailable(BACKEND, message)
                })
            }
        }
    }

    /// Sends the request `build` makes for each server, from the preferred one on, and
    /// hands each answer below 500 to `accept`, until one is an [`Outcome::Answer`] (that
    /// server is remembered) or [`Outcome::Final`]. Fails with the last server's error (and
    /// how many were tried) when every server failed.
    async fn send_with<T, F, Fut>(
        &self,
        what: &str,
        build: impl Fn(&Url) -> RequestBuilder,
        accept: F,
    ) -> Result<T>
    where
        F: Fn(Url, Response) -> Fut,
        Fut: std::future::Future<Output = Outcome<T>>,
    {
        let n = self.inner.bases.len();
        let first = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let base = &self.inner.bases[i];
            let outcome = match self.attempt(what, base, build(base)).await {
                Ok(resp) => accept(base.clone(), resp).await,
                Err(e) => Outcome::Next(e),
            };
            match outcome {
                Outcome::Answer(v) => {
                    if k > 0 {
                        tracing::info!(backend = BACKEND, server = %base, "failed over to another Eureka server");
                    }
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Outcome::Final(e) => return Err(e),
                Outcome::Next(e) => {
                    if n > 1 {
                        tracing::debug!(backend = BACKEND, server = %base, error = %e, "Eureka server failed; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        let e = last.unwrap_or_else(|| Error::unavailable(BACKEND, what.to_string()));
        Err(if n > 1 {
            annotate(e, &format!(" (all {n} servers failed; this was the last)"))
        } else {
            e
        })
    }

    /// [`send_with`](Self::send_with) for writes: any answer below 500 is the answer.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(&Url) -> RequestBuilder,
    ) -> Result<(Url, Response)> {
        self.send_with(what, build, |base, resp| async move {
            Outcome::Answer((base, resp))
        })
        .await
    }

    /// `POST /apps/{APP}` with `{"instance": instance}`.
    pub async fn register<T: Serialize + ?Sized>(&self, app: &str, instance: &T) -> Result<()> {
        let what = format!("registration in app {app}");
        let body = serde_json::json!({ "instance": instance });
        let (base, resp) = self
            .send(&what, |b| {
                self.request(b, Method::POST, &["apps", app]).json(&body)
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error(&what, &base, resp).await)
        }
    }

    /// A `PUT` or `DELETE` on one instance: `Updated` on 2xx, `Unknown` on 404.
    async fn instance_call(
        &self,
        what: &str,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<InstanceUpdate> {
        let (base, resp) = self
            .send(what, |b| {
                self.request(b, method.clone(), segments).query(query)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(InstanceUpdate::Updated),
            StatusCode::NOT_FOUND => Ok(InstanceUpdate::Unknown),
            _ => Err(status_error(what, &base, resp).await),
        }
    }

    /// `PUT /apps/{APP}/{id}`: the heartbeat that renews the lease.
    pub async fn renew(&self, app: &str, id: &str) -> Result<InstanceUpdate> {
        let what = format!("renewal of {app}/{id}");
        self.instance_call(&what, Method::PUT, &["apps", app, id], &[])
            .await
    }

    /// `DELETE /apps/{APP}/{id}`. `Unknown` when the server did not have it.
    pub async fn cancel(&self, app: &str, id: &str) -> Result<InstanceUpdate> {
        let what = format!("cancellation of {app}/{id}");
        self.instance_call(&what, Method::DELETE, &["apps", app, id], &[])
            .await
    }

    /// `PUT /apps/{APP}/{id}/status?value={status}`: overrides the instance's status (e.g.
    /// `OUT_OF_SERVICE`) on the server until it is changed again or the instance cancelled.
    pub async fn set_status(&self, app: &str, id: &str, status: &str) -> Result<InstanceUpdate> {
        let what = format!("status change of {app}/{id} to {status}");
        self.instance_call(
            &what,
            Method::PUT,
            &["apps", app, id, "status"],
            &[("value", status)],
        )
        .await
    }

    /// `PUT /apps/{APP}/{id}/metadata?{key}={value}`: sets one metadata entry of a
    /// registered instance (Eureka adds or replaces entries; it cannot remove one).
    pub async fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: &str,
    ) -> Result<InstanceUpdate> {
        let what = format!("metadata change of {app}/{id}");
        self.instance_call(
            &what,
            Method::PUT,
            &["apps", app, id, "metadata"],
            &[(key, value)],
        )
        .await
    }

    /// `GET` of a JSON document; `None` on 404. A 403 (not ready) or an answer that cannot
    /// be read or parsed goes to the next server.
    async fn get_json(&self, what: &str, segments: &[&str]) -> Result<Option<serde_json::Value>> {
        self.send_with(
            what,
            |b| self.request(b, Method::GET, segments),
            |base, resp| read_json(what, base, resp, self.inner.config.max_body),
        )
        .await
    }

    /// `GET /apps/{APP}`: the application document, `None` when the server has no instance
    /// of it (Eureka answers 404 for an unknown app and for one whose last instance left).
    pub async fn app(&self, app: &str) -> Result<Option<serde_json::Value>> {
        self.get_json(&format!("query of app {app}"), &["apps", app])
            .await
    }

    /// `GET /apps`: the applications document of every app the server holds (`None` on a
    /// 404, which Eureka does not send for this path).
    pub async fn apps(&self) -> Result<Option<serde_json::Value>> {
        self.get_json("listing of apps", &["apps"]).await
    }

    /// `GET /vips/{vip}`: the applications document of every instance announcing VIP address
    /// `vip`, `None` when there is none.
    pub async fn vip(&self, vip: &str) -> Result<Option<serde_json::Value>> {
        self.get_json(&format!("query of VIP address {vip}"), &["vips", vip])
            .await
    }
}

/// `e` with `suffix` appended to its message (same kind).
fn annotate(e: Error, suffix: &str) -> Error {
    match e {
        Error::Unavailable {
            backend,
            message,
            source,
        } => Error::Unavailable {
            backend,
            message: message + suffix,
            source,
        },
        Error::Timeout { backend, message } => Error::Timeout {
            backend,
            message: message + suffix,
        },
        other => other,
    }
}

/// Reads a read's answer: 404 is `None`, 2xx is the JSON document (at most `max_body`
/// bytes, [`ClientConfig::max_body`]); 403 and an unreadable, oversized or unparseable body
/// go to the next server; any other status is a final error.
async fn read_json(
    what: &str,
    base: Url,
    mut resp: Response,
    max_body: usize,
) -> Outcome<Option<serde_json::Value>> {
    match resp.status() {
        StatusCode::NOT_FOUND => return Outcome::Answer(None),
        StatusCode::FORBIDDEN => return Outcome::Next(status_error(what, &base, resp).await),
        s if !s.is_success() => return Outcome::Final(status_error(what, &base, resp).await),
        _ => {}
    }
    let too_large = || {
        Outcome::Next(Error::malformed(
            BACKEND,
            format!(
                "{what} at {base}: the answer is larger than the {max_body}-byte cap \
                 (raise it with ClientConfig::max_body or the URL option max_body=)"
            ),
        ))
    };
    if resp
        .content_length()
        .is_some_and(|len| len > max_body as u64)
    {
        return too_large();
    }
    let mut body = Vec::new();
    // Bounded: each turn adds a chunk, and the body is capped at `max_body`; the request's
    // timeout bounds a body that stalls.
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_body {
                    return too_large();
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let message = format!("{what} at {base}: reading the answer: {}", error_chain(&e));
                // A body that stalls past the request timeout.
                return Outcome::Next(if e.is_timeout() {
                    Error::Timeout {
                        backend: BACKEND,
                        message,
                    }
                } else {
                    Error::unavailable(BACKEND, message)
                });
            }
        }
    }
    match serde_json::from_slice(&body) {
        Ok(doc) => Outcome::Answer(Some(doc)),
        Err(e) => Outcome::Next(Error::malformed(
            BACKEND,
            format!(
                "{what} at {base}: the answer is not JSON ({e}): {}",
                quote(&String::from_utf8_lossy(&body))
            ),
        )),
    }
}

/// The first `limit` bytes of `resp`'s body (or fewer, when reading fails); the rest is never
/// read (the connection is dropped).
async fn body_prefix(mut resp: Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// A failure status as an error: a 4xx other than 429 is [`Error::Rejected`] (retrying the
/// same request will not help), anything else (429 Too Many Requests, 5xx, a redirect)
/// [`Error::Unavailable`]. At most
/// [`MAX_ERROR_BODY`] bytes of the body are read.
///
/// A `Retry-After` (on a 429 or 503, typically) travels with an [`Error::Unavailable`]
/// ([`Error::with_retry_after`]): the watch loop then waits at least that long (up to its
/// backoff cap) before the next poll. A redirect is not followed: the error names where it
/// pointed.
async fn status_error(what: &str, base: &Url, resp: Response) -> Error {
    let status = resp.status();
    let headers = resp.headers();
    let hints = sd_core::backoff::FailureHints::new(
        headers
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        status
            .is_redirection()
            .then(|| headers.get(reqwest::header::LOCATION).map(|v| v.as_bytes()))
            .flatten(),
    );
    let body = body_prefix(resp, MAX_ERROR_BODY).await;
    let mut message = format!("{what} at {base}: HTTP {status}: {}", quote(&body));
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (the server wants credentials: give user= and password_env=)");
    }
    message.push_str(&hints.note("give the server's own address"));
    // 429 Too Many Requests is the one 4xx that waiting fixes.
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        Error::Rejected {
            backend: BACKEND,
            message,
        }
    } else {
        hints.apply(Error::unavailable(BACKEND, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_validated_and_normalised() {
        let c = Client::new(ClientConfig::new([
            "http://127.0.0.1:8761/eureka/",
            "https://h2:1/eureka/v2",
        ]))
        .unwrap();
        let s: Vec<&str> = c.servers().iter().map(Url::as_str).collect();
        assert_eq!(
            s,
            ["http://127.0.0.1:8761/eureka", "https://h2:1/eureka/v2"]
        );
        assert_eq!(
            Client::url(&c.servers()[0], &["apps", "WEB", "a b/c"]).as_str(),
            "http://127.0.0.1:8761/eureka/apps/WEB/a%20b%2Fc"
        );
        assert_eq!(
            c.preferred_server().as_str(),
            "http://127.0.0.1:8761/eureka"
        );
        for (servers, needle) in [
            (vec![], "no server"),
            (vec!["127.0.0.1:8761"], "expected http://host:port/eureka"),
            (vec!["ftp://h/eureka"], "expected http://host:port/eureka"),
            (vec!["http://h/eureka?x=1"], "query or fragment"),
            (vec!["http://u:p@h/eureka"], "credentials in a server URL"),
        ] {
            let err = Client::new(ClientConfig::new(servers.clone())).unwrap_err();
            assert!(err.to_string().contains(needle), "{servers:?}: {err}");
        }
    }

    #[test]
    fn the_password_goes_in_a_header_never_in_the_url_or_debug() {
        let c = Client::new(
            ClientConfig::new(["http://127.0.0.1:8761/eureka"])
                .basic_auth("sd", Secret::new("hunter2")),
        )
        .unwrap();
        let req = c
            .request(&c.servers()[0], Method::GET, &["apps", "WEB"])
            .build()
            .unwrap();
        assert!(!req.url().as_str().contains("hunter2"));
        let auth = req.headers()[reqwest::header::AUTHORIZATION]
            .to_str()
            .unwrap();
        // base64("sd:hunter2")
        assert_eq!(auth, "Basic c2Q6aHVudGVyMg==");
        assert_eq!(req.headers()[reqwest::header::ACCEPT], "application/json");
        let debug = format!("{c:?} {:?}", c.config());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn bad_credentials_and_timeouts_are_config_errors() {
        let base = || ClientConfig::new(["http://h/eureka"]);
        let mut c = base();
        c.password = Some(Secret::new("x"));
        assert!(Client::new(c)
            .unwrap_err()
            .to_string()
            .contains("needs a user"));
        assert!(Client::new(base().basic_auth("a:b", Secret::new("x")))
            .unwrap_err()
            .to_string()
            .contains("no ':'"));
        assert!(Client::new(base().timeout(Duration::ZERO))
            .unwrap_err()
            .to_string()
            .contains("greater than 0"));
    }

    #[test]
    fn quotes_are_cut_on_a_char_boundary() {
        let long = "é".repeat(400);
        let q = quote(&long);
        assert!(
            q.len() <= MAX_QUOTE + 5 && q.ends_with("..."),
            "{}",
            q.len()
        );
        assert_eq!(quote("  short "), "short");
    }

    #[tokio::test]
    async fn every_server_is_tried_and_the_error_says_so() {
        // Ports 1 and 2 on loopback refuse connections: real transport errors, no fake.
        let c = Client::new(
            ClientConfig::new(["http://127.0.0.1:1/eureka", "http://127.0.0.1:2/eureka"])
                .timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let err = c.app("WEB").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("query of app WEB"), "{msg}");
        assert!(msg.contains("127.0.0.1:2"), "{msg}");
        assert!(msg.contains("all 2 servers failed"), "{msg}");
    }
}
