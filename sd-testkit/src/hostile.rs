//! A scripted hostile HTTP/1.1 server on 127.0.0.1, for what a real registry cannot be made
//! to answer: malformed or mistyped JSON, a 50 MB body, a body that never ends, a response
//! that stalls mid-body, 429/500/503 with or without `Retry-After`, a redirect to another
//! host.
//!
//! [`HostileServer::start`] binds `127.0.0.1:0` and answers every request with the current
//! phase ([`HostileServer::set`] switches it; [`HostileServer::set_fn`] answers per request).
//! It records each request (time, method, target, headers) so a test can count the requests
//! of an error phase (backoff: no hammering) and check what a redirect target received (no
//! token). Every answer closes its connection, so each request is a new connection and is
//! counted once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use sd_testkit::hostile::{HostileServer, Reply};
//!
//! let server = HostileServer::start(Reply::json(200, r#"{"ok":true}"#)).await;
//! let url = format!("http://{}/x", server.addr());
//! # let _ = url;
//! server.set(Reply::status(503, Some("2")));
//! assert_eq!(server.count(), 0);
//! # }
//! ```
//!
//! Bounded: a request head is read up to 64 KiB, a stalled answer is held at most
//! [`MAX_HOLD`], an endless body stops after [`ENDLESS_LIMIT`] bytes (the client is expected
//! to give up long before), and the server stops when dropped.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The longest a [`Body::StallMidBody`] answer holds its connection open.
pub const MAX_HOLD: Duration = Duration::from_secs(300);

/// The most bytes a [`Body::Endless`] answer writes before giving up.
pub const ENDLESS_LIMIT: u64 = 4 << 30;

/// The largest request head read.
const MAX_HEAD: usize = 64 << 10;

/// The size of each write of a generated body.
const CHUNK: usize = 64 << 10;

/// The body of a [`Reply`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Body {
    /// These bytes, with a `Content-Length`.
    Bytes(Vec<u8>),
    /// `prefix` and then spaces up to `len` bytes in all, streamed without holding them
    /// (`Content-Length: len` when `declared`, else chunked).
    Huge {
        /// The first bytes (e.g. `[` so that it looks like the start of a JSON array).
        prefix: Vec<u8>,
        /// The total length.
        len: u64,
        /// Send a `Content-Length` (else `Transfer-Encoding: chunked`).
        declared: bool,
    },
    /// `prefix` and then spaces, chunked, never ending (up to [`ENDLESS_LIMIT`]).
    Endless {
        /// The first bytes.
        prefix: Vec<u8>,
    },
    /// `Content-Length: declared`, then `prefix`, then nothing more: the connection is held
    /// open until the client closes it (at most [`MAX_HOLD`]).
    StallMidBody {
        /// What is sent before the stall.
        prefix: Vec<u8>,
        /// The declared (never reached) length.
        declared: u64,
    },
}

/// One scripted answer: a status, headers, a body.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Extra headers (`Content-Length` / `Transfer-Encoding` and `Connection: close` are
    /// added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
    /// Send `Retry-After` as the HTTP date this long after the answer is sent.
    pub retry_at: Option<Duration>,
}

impl Reply {
    /// `status` with this JSON (or any) text, `Content-Type: application/json`.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(body.into()),
            retry_at: None,
        }
    }

    /// A failure status with a short text body and, when given, a `Retry-After` header
    /// (seconds or an HTTP date, sent as given).
    pub fn status(status: u16, retry_after: Option<&str>) -> Self {
        let mut reply = Reply {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: Body::Bytes(format!("hostile server says {status}").into_bytes()),
            retry_at: None,
        };
        if let Some(r) = retry_after {
            reply = reply.header("Retry-After", r);
        }
        reply
    }

    /// 200 with a body of `len` bytes: `[` and spaces (so never complete JSON), streamed.
    pub fn huge(len: u64, declared: bool) -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Huge {
                prefix: b"[".to_vec(),
                len,
                declared,
            },
            retry_at: None,
        }
    }

    /// 200 with a chunked body that never ends (`[` and spaces).
    pub fn endless() -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Endless {
                prefix: b"[".to_vec(),
            },
            retry_at: None,
        }
    }

    /// 200 with `Content-Length: prefix.len() + 1000`, `prefix` sent, then a stall.
    pub fn stall_mid_body(prefix: impl Into<Vec<u8>>) -> Self {
        let prefix = prefix.into();
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::StallMidBody {
                declared: prefix.len() as u64 + 1000,
                prefix,
            },
            retry_at: None,
        }
    }

    /// A `302 Found` to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Reply {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: Body::Bytes(Vec::new()),
            retry_at: None,
        }
    }

    /// Adds a `Retry-After` header with the HTTP date `ahead` after each answer is sent
    /// (computed then, so a phase that starts late still asks for the same wait).
    #[must_use]
    pub fn retry_at(mut self, ahead: Duration) -> Self {
        self.retry_at = Some(ahead);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    /// When its head was read.
    pub at: Instant,
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// The request head as received (request line and headers).
    pub raw: String,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request head contains `secret` anywhere (target or any header).
    pub fn contains(&self, secret: &str) -> bool {
        self.raw.contains(secret)
    }
}

type Script = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

struct State {
    script: Mutex<Script>,
    requests: Mutex<Vec<Request>>,
    arrived: Notify,
    body_bytes: AtomicU64,
}

/// A scripted hostile HTTP/1.1 server on 127.0.0.1 (see the [module](self) docs). Stops
/// when dropped.
pub struct HostileServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for HostileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileServer")
            .field("addr", &self.addr)
            .field("requests", &self.count())
            .finish()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileServer {
    /// Starts a server on `127.0.0.1:0` answering every request with `reply`. Must be
    /// called inside a tokio runtime.
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            script: Mutex::new(Arc::new(move |_: &Request| reply.clone())),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            body_bytes: AtomicU64::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(serve(stream, serving.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        HostileServer { addr, state, task }
    }

    /// The address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers every later request with `reply` (a new phase).
    pub fn set(&self, reply: Reply) {
        self.set_fn(move |_| reply.clone());
    }

    /// Answers every later request with what `script` makes of it.
    pub fn set_fn(&self, script: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(script);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// How many requests were received at or after `since`.
    pub fn count_since(&self, since: Instant) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.at >= since)
            .count()
    }

    /// Body bytes written to clients so far (what a client that stops reading early was
    /// not sent shows here).
    pub fn body_bytes_written(&self) -> u64 {
        self.state.body_bytes.load(Relaxed)
    }

    /// Waits until `n` requests in all were received, at most `deadline`; whether they
    /// were.
    pub async fn wait_requests(&self, n: usize, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let arrived = self.state.arrived.notified();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(end, arrived).await.is_err() {
                return self.count() >= n;
            }
        }
    }
}

/// Reads one request head; `None` when the client closed or sent something too large.
async fn read_head(stream: &mut TcpStream) -> Option<(String, usize)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let already = buf.len() - (end + 4);
            return Some((head, already));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse(raw: String) -> Request {
    let mut lines = raw.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Request {
        at: Instant::now(),
        method,
        target,
        headers,
        raw,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Hostile",
    }
}

/// Writes `data` as one chunk of a chunked body.
async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let Some((head, already)) = read_head(&mut stream).await else {
        return;
    };
    let request = parse(head);
    // Read and drop a request body, if any (bounded by its declared length).
    let body_len = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .saturating_sub(already)
        .min(MAX_HEAD);
    let mut sink = vec![0u8; body_len];
    if body_len > 0 && stream.read_exact(&mut sink).await.is_err() {
        return;
    }
    let script = state.script.lock().unwrap().clone();
    let reply = script(&request);
    state.requests.lock().unwrap().push(request);
    state.arrived.notify_waiters();
    let _ = answer(&mut stream, &state, reply).await;
}

async fn answer(stream: &mut TcpStream, state: &State, reply: Reply) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(ahead) = reply.retry_at {
        let at = std::time::SystemTime::now() + ahead;
        head.push_str(&format!("Retry-After: {}\r\n", httpdate::fmt_http_date(at)));
    }
    head.push_str("Connection: close\r\n");
    let count = |n: usize| {
        state.body_bytes.fetch_add(n as u64, Relaxed);
    };
    let spaces = [b' '; CHUNK];
    match reply.body {
        Body::Bytes(body) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            count(body.len());
        }
        Body::Huge {
            prefix,
            len,
            declared,
        } => {
            if declared {
                head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
            } else {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            }
            stream.write_all(head.as_bytes()).await?;
            let prefix = &prefix[..prefix.len().min(len as usize)];
            let mut left = len - prefix.len() as u64;
            let mut first = Some(prefix);
            // Bounded: `left` shrinks by at least one byte per turn.
            while left > 0 || first.is_some() {
                let data: &[u8] = match first.take() {
                    Some(p) => p,
                    None => {
                        let n = (left as usize).min(CHUNK);
                        left -= n as u64;
                        &spaces[..n]
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if declared {
                    stream.write_all(data).await?;
                } else {
                    write_chunk(stream, data).await?;
                }
                count(data.len());
            }
            if !declared {
                stream.write_all(b"0\r\n\r\n").await?;
            }
        }
        Body::Endless { prefix } => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            write_chunk(stream, &prefix).await?;
            count(prefix.len());
            let mut sent = 0u64;
            // Bounded by ENDLESS_LIMIT; in practice ends when the client hangs up.
            while sent < ENDLESS_LIMIT {
                write_chunk(stream, &spaces).await?;
                count(CHUNK);
                sent += CHUNK as u64;
            }
        }
        Body::StallMidBody { prefix, declared } => {
            head.push_str(&format!("Content-Length: {declared}\r\n\r\n"));
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&prefix).await?;
            stream.flush().await?;
            count(prefix.len());
            // Hold the connection until the client hangs up (read returns 0 or fails).
            let mut byte = [0u8; 1];
            let _ = tokio::time::timeout(MAX_HOLD, stream.read(&mut byte)).await;
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// What a client must do with one hostile phase ([`Case::expect`]).
#[derive(Clone, Copy)]
pub enum Expect {
    /// Publish an error event that this predicate accepts and whose text contains the
    /// needle; the endpointer keeps serving the last good set.
    Error(fn(&sd_core::Error) -> bool, &'static str),
    /// Publish this set (sorted addresses): the bad entries were skipped alone.
    Set(&'static [&'static str]),
    /// Publish nothing at all: the answer is ignored and the last set stays, without error.
    Quiet,
}

impl fmt::Debug for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Error(_, needle) => write!(f, "Error(..{needle:?}..)"),
            Expect::Set(s) => write!(f, "Set({s:?})"),
            Expect::Quiet => f.write_str("Quiet"),
        }
    }
}

/// One row of a hostile-registry table: a phase of bad answers, what the client must do,
/// and the most requests it may send during [`WINDOW`] of that phase (backoff: a client
/// retrying at once would send hundreds).
#[derive(Debug, Clone)]
pub struct Case {
    /// The row's name, for messages and the report.
    pub name: &'static str,
    /// The bad answer served to every request of the phase.
    pub reply: Reply,
    /// What the client must do.
    pub expect: Expect,
    /// The most requests allowed in the first [`WINDOW`] of the phase.
    pub max_requests: usize,
}

/// How long each bad phase is watched for hammering.
pub const WINDOW: Duration = Duration::from_secs(3);

/// The generous deadline for an expected event (an error, a set, a recovery).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The figures of one [`run_case`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's name.
    pub name: &'static str,
    /// Requests the server received in the first [`WINDOW`] of the bad phase.
    pub requests: usize,
    /// Requests the server received in the whole bad phase (the window and the wait for
    /// the checks after it).
    pub phase_requests: usize,
    /// The most bytes allocated at once by the process during the bad phase, above what was
    /// allocated when it began (meaningful when nothing else runs meanwhile, see
    /// [`crate::alloc::peak_live_bytes`]; 0 without the [`crate::CountingAllocator`]).
    pub peak_bytes: i64,
    /// Body bytes the server managed to write during the bad phase.
    pub body_bytes: u64,
    /// The error the client published, if any.
    pub error: Option<String>,
}

fn sorted(event: &sd_core::Event) -> Vec<String> {
    let mut a = event.addrs();
    a.sort();
    a
}

/// Waits, at most [`DEADLINE`], for an event `want` accepts; panics with `what` otherwise.
async fn wait_event(
    sub: &mut sd_core::Subscription,
    what: &str,
    want: impl Fn(&sd_core::Event) -> bool,
) -> sd_core::Event {
    let found = tokio::time::timeout(DEADLINE, async {
        // Bounded by the deadline around it.
        loop {
            match sub.next().await {
                Some(e) if want(&e) => return Some(e),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: not seen within {DEADLINE:?}"),
    }
}

/// Waits, at most [`DEADLINE`], until the endpointer serves `addrs` with (or without) an
/// error attached.
async fn wait_endpoints(
    endpointer: &sd_core::DefaultEndpointer<String>,
    addrs: &[String],
    with_error: bool,
    what: &str,
) {
    use sd_core::Endpointer;
    let mut changes = endpointer.changes();
    let ok = tokio::time::timeout(DEADLINE, async {
        // Bounded by the deadline around it.
        loop {
            let snap = endpointer.endpoints();
            let mut served: Vec<String> = snap
                .get()
                .map(|l| l.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default();
            served.sort();
            if served == addrs && snap.last_error().is_some() == with_error {
                return;
            }
            drop(snap);
            changes.changed().await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "{what}: the endpointer does not serve {addrs:?} (with an error: {with_error})"
    );
}

/// Runs one [`Case`] against `instancer`, which watches `server`:
///
/// 1. good phase: `good(&before)` is served until the instancer publishes `before`;
/// 2. bad phase: `case.reply` is served; the client must do what `case.expect` says (an
///    error is published while an endpointer on the instancer keeps serving `before`),
///    and send at most `case.max_requests` requests in the first [`WINDOW`];
/// 3. recovery: `good(&after)` is served until the instancer publishes `after` and the
///    endpointer serves it with no error.
///
/// `before` and `after` must differ (so each is a change the instancer publishes). Panics
/// (the test fails) when the client does not. Allocation peaks are measured around the bad
/// phase (run cases one at a time for that figure to mean anything).
pub async fn run_case(
    server: &HostileServer,
    instancer: &dyn sd_core::Instancer,
    good: &dyn Fn(&[&str]) -> Reply,
    before: &[&str],
    after: &[&str],
    case: &Case,
) -> Outcome {
    let name = case.name;
    let own = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let (before, after) = (own(before), own(after));
    let mut sub = instancer.subscribe();
    let endpointer = sd_core::DefaultEndpointer::new(
        instancer,
        |i: &sd_core::Instance| -> Result<String, sd_core::BoxError> { Ok(i.addr().to_string()) },
    );
    server.set(good(&before.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_event(&mut sub, &format!("{name}: good set before"), |e| {
        sorted(e) == before
    })
    .await;
    wait_endpoints(&endpointer, &before, false, name).await;

    let start_bytes = crate::alloc::reset_peak();
    let written = server.body_bytes_written();
    let t0 = Instant::now();
    server.set(case.reply.clone());
    let mut error = None;
    match case.expect {
        Expect::Error(kind, needle) => {
            let e = wait_event(&mut sub, &format!("{name}: error event"), |e| {
                matches!(e, sd_core::Event::Error(_))
            })
            .await;
            let sd_core::Event::Error(e) = e else {
                unreachable!()
            };
            assert!(kind(&e), "{name}: unexpected kind of error: {e:?}");
            let text = e.to_string();
            assert!(text.contains(needle), "{name}: {needle:?} not in {text}");
            error = Some(text);
            // Last known good: still served, flagged with the error.
            wait_endpoints(&endpointer, &before, true, name).await;
        }
        Expect::Set(set) => {
            let want = own(set);
            wait_event(&mut sub, &format!("{name}: the good entries"), |e| {
                sorted(e) == want
            })
            .await;
        }
        Expect::Quiet => {}
    }
    let window_end = t0 + WINDOW;
    tokio::time::sleep_until(window_end.into()).await;
    let requests = server
        .requests()
        .iter()
        .filter(|r| r.at >= t0 && r.at <= window_end)
        .count();
    let peak_bytes = crate::alloc::peak_live_bytes() - start_bytes;
    let body_bytes = server.body_bytes_written() - written;
    let phase_requests = server.count_since(t0);
    if matches!(case.expect, Expect::Quiet) {
        // Nothing was published: the last set is current, with no error.
        let published = tokio::time::timeout(Duration::from_millis(1), sub.next()).await;
        assert!(published.is_err(), "{name}: published {published:?}");
        wait_endpoints(&endpointer, &before, false, name).await;
    }
    assert!(
        requests <= case.max_requests,
        "{name}: {requests} requests in {WINDOW:?} of bad answers (at most {} allowed): \
         the client hammers the registry",
        case.max_requests
    );

    server.set(good(&after.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_event(&mut sub, &format!("{name}: recovery"), |e| {
        sorted(e) == after
    })
    .await;
    wait_endpoints(&endpointer, &after, false, name).await;
    endpointer.close().await;
    Outcome {
        name,
        requests,
        phase_requests,
        peak_bytes,
        body_bytes,
        error,
    }
}

/// The outcomes as a Markdown table (what docs/TESTING.md shows), one row per case.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| case | requests in 3 s | requests in the phase | peak alloc | body bytes sent | error |\n\
         |---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        t.push_str(&format!(
            "| {} | {} | {} | {:.1} MiB | {} | {} |\n",
            o.name,
            o.requests,
            o.phase_requests,
            o.peak_bytes as f64 / f64::from(1 << 20),
            o.body_bytes,
            o.error.as_deref().unwrap_or("-").replace('|', "/")
        ));
    }
    t
}

/// The set [`run_cases`] serves before each bad phase.
pub const BEFORE: &[&str] = &["10.0.0.1:80"];

/// The set [`run_cases`] serves after each bad phase (a change from [`BEFORE`]).
pub const AFTER: &[&str] = &["10.0.0.2:80", "10.0.0.3:80"];

/// The most requests allowed in the first [`WINDOW`] of an error phase for a client with
/// go-kit's backoff (10 ms doubling, jittered ×0.5..1.5: about ten requests in 3 s); one
/// that retried at once would send hundreds.
pub const BACKOFF_BOUND: usize = 15;

/// [`Expect::Error`] predicate: an [`sd_core::Error::Malformed`].
pub fn is_malformed(e: &sd_core::Error) -> bool {
    matches!(e, sd_core::Error::Malformed { .. })
}

/// [`Expect::Error`] predicate: an [`sd_core::Error::Unavailable`].
pub fn is_unavailable(e: &sd_core::Error) -> bool {
    matches!(e, sd_core::Error::Unavailable { .. })
}

/// [`Expect::Error`] predicate: an [`sd_core::Error::Timeout`].
pub fn is_timeout(e: &sd_core::Error) -> bool {
    matches!(e, sd_core::Error::Timeout { .. })
}

/// The failure statuses every HTTP backend must publish as [`sd_core::Error::Unavailable`]
/// and back off from: 500, 503 and 429 without `Retry-After` (at most [`BACKOFF_BOUND`]
/// requests in the window), and with one of 2 s (seconds) or 5 s (an HTTP date): at most
/// 2 requests in the 3 s window. `with` adds what the backend needs on every answer.
pub fn status_cases(with: fn(Reply) -> Reply) -> Vec<Case> {
    let case = |name, reply, needle, max_requests| Case {
        name,
        reply: with(reply),
        expect: Expect::Error(is_unavailable, needle),
        max_requests,
    };
    vec![
        case(
            "HTTP 500",
            Reply::status(500, None),
            "HTTP 500",
            BACKOFF_BOUND,
        ),
        case(
            "HTTP 503",
            Reply::status(503, None),
            "HTTP 503",
            BACKOFF_BOUND,
        ),
        case(
            "HTTP 429",
            Reply::status(429, None),
            "HTTP 429",
            BACKOFF_BOUND,
        ),
        case(
            "HTTP 503, Retry-After: 2",
            Reply::status(503, Some("2")),
            "Retry-After: 2s",
            2,
        ),
        case(
            "HTTP 429, Retry-After: 2",
            Reply::status(429, Some("2")),
            "Retry-After: 2s",
            2,
        ),
        case(
            "HTTP 503, Retry-After: an HTTP date 5 s ahead",
            Reply::status(503, None).retry_at(Duration::from_secs(5)),
            "Retry-After",
            2,
        ),
    ]
}

/// A 302 and a 307 to `location` (another host): an [`sd_core::Error::Unavailable`] saying
/// "not followed". Check the target with [`assert_untouched`].
pub fn redirect_cases(location: &str) -> Vec<Case> {
    let case = |name, status| Case {
        name,
        reply: Reply {
            status,
            ..Reply::redirect(location)
        },
        expect: Expect::Error(is_unavailable, "not followed"),
        max_requests: BACKOFF_BOUND,
    };
    vec![
        case("302 to another host", 302),
        case("307 to another host", 307),
    ]
}

/// A 50 MB body (declared, then chunked) and an endless one, each an
/// [`sd_core::Error::Malformed`] naming the client's cap ("...-byte cap"), and a body that
/// stalls after
/// `stall_prefix`, which must be `stalled`. `with` adds what the backend needs on every
/// answer. Check the outcomes with [`assert_bodies_bounded`].
pub fn body_cases(with: fn(Reply) -> Reply, stall_prefix: &str, stalled: Expect) -> Vec<Case> {
    let needle = "-byte cap";
    let case = |name, reply, expect| Case {
        name,
        reply: with(reply),
        expect,
        max_requests: BACKOFF_BOUND,
    };
    vec![
        case(
            "50 MB body, Content-Length",
            Reply::huge(50_000_000, true),
            Expect::Error(is_malformed, needle),
        ),
        case(
            "50 MB body, chunked",
            Reply::huge(50_000_000, false),
            Expect::Error(is_malformed, needle),
        ),
        case(
            "a body that never ends",
            Reply::endless(),
            Expect::Error(is_malformed, needle),
        ),
        case(
            "a body that stalls mid-way",
            Reply::stall_mid_body(stall_prefix),
            stalled,
        ),
    ]
}

/// The outcomes of [`body_cases`] stayed bounded: less than 16 MiB allocated at once in
/// every phase (the body is 50 MB or endless), and less than 16 MiB written per request by
/// the server (the client hung up at its cap; the rest is what the kernel's socket buffers
/// took).
pub fn assert_bodies_bounded(outcomes: &[Outcome]) {
    for o in outcomes {
        assert!(
            o.peak_bytes < 16 << 20,
            "{}: peak {} bytes",
            o.name,
            o.peak_bytes
        );
        let per_request = o.body_bytes / o.phase_requests.max(1) as u64;
        assert!(
            per_request < 16 << 20,
            "{}: {per_request} bytes sent per request",
            o.name
        );
    }
}

/// `target` (the other host of [`redirect_cases`]) received no request at all, so no
/// credential either.
pub fn assert_untouched(target: &HostileServer) {
    let got = target.requests();
    assert!(
        got.is_empty(),
        "the redirect target received {} requests: {got:?}",
        got.len()
    );
}

/// Runs `cases` one after the other with [`run_case`] between [`BEFORE`] and [`AFTER`],
/// prints the [`table`] and returns the outcomes.
pub async fn run_cases(
    server: &HostileServer,
    instancer: &dyn sd_core::Instancer,
    good: &dyn Fn(&[&str]) -> Reply,
    cases: &[Case],
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for case in cases {
        outcomes.push(run_case(server, instancer, good, BEFORE, AFTER, case).await);
    }
    eprintln!("{}", table(&outcomes));
    outcomes
}
