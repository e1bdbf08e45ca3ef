//! The instancer: `Get` the service's directory at revision R, watch from R+1, apply each
//! watch event to the set.
//!
//! [`PrefixSource`] is a [`Source`] on sd-core's shared watch loop ([`WatchedInstancer`]):
//!
//! 1. The first round (and every resynchronisation) reads every key under
//!    `<prefix>/<service>/` — with the trailing `/`, so `users` does not match
//!    `users-admin` — at one revision R, then opens a watch from R+1. A change made between
//!    the read and the watch is delivered by the watch, never lost: go-kit re-reads the whole
//!    prefix on every watch signal and its watch starts at "now", so it races (E3-3, E3-8).
//! 2. Each later round waits for the next watch response and applies its events to the set
//!    it holds (a put decodes one value, a delete removes one key): one changed key costs one
//!    event's work, not a re-read of the directory.
//! 3. When the stream ends or breaks (the endpoint died, the server restarted, the client
//!    moved), the source resumes the watch from the revision after the last one applied,
//!    on the same store (its history checked keys-only), without reading again. While etcd
//!    cannot answer (no endpoint reachable, an election), the error is published, with the
//!    last good set kept by subscribers, and the loop backs off (10 ms .. 1 min) and tries
//!    to resume again; once it does, the set is published again.
//! 4. When etcd cancels the watch because its revision was compacted, or the resume is
//!    refused (another history, compacted), the source reads the directory again and
//!    re-watches at once; only when that read fails is an error published, and the loop
//!    backs off and retries. After three resumes in a row without an event the source
//!    reads again too, but only after a backoff (a server that ends every watch at once
//!    is not hammered).
//!
//! A [`PrefixSource`] has its own watch of its directory. go-kit's registrar closes the
//! watcher its instancer shares with it (E3-4, E3-5); here registrars never touch a watch.
//! With many services, instancers can share one watch of the whole prefix instead
//! ([`SharedSource`], [`EtcdInstancer::start_shared`], see
//! [`shared`](crate::shared)).
//!
//! Values are decoded by [`decode_value`]: sdkit's JSON (the whole [`Instance`]), or go-kit's
//! plain `host:port` / URL values (E3-9). A value that is neither is skipped alone, with the
//! key and the reason logged.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{EventType, WatchResponse, WatchStream};
use futures::FutureExt;
use sd_core::{
    Backoff, Event, Health, Instance, Instancer, LoopConfig, ServiceQuery, Source, Step,
    Subscription, WatchedInstancer,
};
use serde::{Deserialize, Serialize};

use crate::client::{Client, BACKEND};
use crate::shared::SharedSource;

/// The JSON value sdkit writes for an instance (and reads back).
///
/// ```json
/// {"host":"10.0.0.5","port":8080,"id":"users-1","tags":["v2"],"meta":{"zone":"a"},"weight":1,"health":"passing"}
/// ```
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ValueJson {
    pub host: String,
    pub port: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "passing")]
    pub health: String,
}

fn default_weight() -> u32 {
    sd_core::instance::DEFAULT_WEIGHT
}

fn passing() -> String {
    Health::Passing.as_str().to_string()
}

pub(crate) fn health_from_str(s: &str) -> Health {
    match s {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        "critical" => Health::Critical,
        _ => Health::Unknown,
    }
}

/// Decodes the value stored at `key` into an [`Instance`]. `id_from_key` (the part of the key
/// after the service directory) is the instance id when the value does not carry one.
///
/// - A value starting with `{` is sdkit's JSON: `host`, `port` (1..=65535) required; `id`,
///   `tags`, `meta`, `weight` (default 1), `health` (`passing`, `warning`, `critical`; any
///   other word is `unknown`; default `passing`) optional.
/// - Anything else is go-kit's instance string (E3-9): `host:port`, `[v6]:port`, or a URL
///   such as `http://1.2.3.4:8080` (the scheme is dropped).
///
/// Fails with the reason otherwise.
///
/// ```
/// use sd_etcdv3::decode_value;
/// let i = decode_value("1.2.3.4:8080", b"http://1.2.3.4:8080").unwrap();
/// assert_eq!((i.addr(), i.id()), ("1.2.3.4:8080", "1.2.3.4:8080"));
/// let i = decode_value("u1", br#"{"host":"10.0.0.1","port":80,"tags":["v2"],"weight":3}"#).unwrap();
/// assert_eq!((i.addr(), i.id(), i.weight()), ("10.0.0.1:80", "u1", 3));
/// assert!(decode_value("x", b"not an address").is_err());
/// ```
pub fn decode_value(id_from_key: &str, value: &[u8]) -> Result<Instance, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty value".into());
    }
    if text.starts_with('{') {
        let v: ValueJson =
            serde_json::from_str(text).map_err(|e| format!("bad instance JSON: {e}"))?;
        if v.host.trim().is_empty() {
            return Err("instance JSON has an empty host".into());
        }
        let port = u16::try_from(v.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("instance JSON has port {}", v.port))?;
        let id = if v.id.is_empty() {
            id_from_key.to_string()
        } else {
            v.id
        };
        let host = sd_core::instance::usable_host(v.host.trim())
            .map_err(|e| format!("instance JSON: {e}"))?;
        let mut b = Instance::builder(host, port)
            .id(id)
            .tags(v.tags)
            .weight(v.weight)
            .health(health_from_str(&v.health));
        for (k, val) in v.meta {
            b = b.meta(k, val);
        }
        return Ok(b.build());
    }
    let plain = Instance::parse(text).map_err(|e| {
        format!("value is neither sdkit's instance JSON nor a go-kit host:port or URL: {e}")
    })?;
    if plain.port() == 0 {
        return Err(format!("value {text:?} has port 0"));
    }
    Ok(plain.to_builder().id(id_from_key).build())
}

/// A hook run between the initial `Get` (at the revision it is given) and the start of the
/// watch. Tests use it to write a key exactly in that window.
pub type AfterGet = Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Counters of one instancer's work, shared with its [`EtcdInstancer`] handle.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub(crate) full_reads: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) resumes: AtomicU64,
}

impl SourceStats {
    /// How many times the whole directory was read (the first read, and each
    /// resynchronisation after a compaction, a cancelled watch or a broken connection).
    pub fn full_reads(&self) -> u64 {
        self.full_reads.load(Ordering::Relaxed)
    }

    /// How many watch events (puts and deletes) were applied one by one.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// How many times a watch that ended (its endpoint died, the stream broke) was resumed
    /// from the last revision seen, on the same cluster, without reading the directory again.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

/// After this many watches in a row that ended without delivering an event, the source backs
/// off instead of re-watching at once (a server that cancels every watch must not be hammered).
const QUICK_RESTARTS: u32 = 3;

/// At most this many already-arrived watch responses are applied together before publishing.
const COALESCE_MAX: usize = 1024;

/// What resuming a watch that ended came to (per instancer, and the shared watch).
pub(crate) enum Resume {
    /// Watching again from the revision after the last one applied.
    Resumed,
    /// The watch cannot resume (another store, compacted, flapping): read the directory.
    Read,
    /// etcd could not answer now; the revision applied is still good: try again later.
    Later(sd_core::Error),
}

impl Resume {
    /// Resuming failed on `e`. Only an unreachable or silent cluster (no member answering,
    /// a timeout during an election) is worth another try later; anything else (an answer
    /// too large, a rejection) would not pass by asking the same thing again: read.
    pub(crate) fn after_error(e: sd_core::Error) -> Resume {
        match e {
            e @ (sd_core::Error::Unavailable { .. } | sd_core::Error::Timeout { .. }) => {
                Resume::Later(e)
            }
            _ => Resume::Read,
        }
    }
}

/// One etcd directory watch as a [`Source`] (see the [module docs](self)).
pub struct PrefixSource {
    client: Client,
    query: ServiceQuery,
    dir: String,
    /// The decoded instances by raw key bytes (two non-UTF-8 keys may print the same).
    entries: BTreeMap<Vec<u8>, Instance>,
    watch: Option<WatchStream>,
    /// A stream message read while coalescing that ends or cancels the watch.
    pending: Option<Result<Option<WatchResponse>, etcd_client::Error>>,
    quick_restarts: u32,
    /// The revision up to which every change under `dir` is applied: the read's, then each
    /// event's.
    revision: i64,
    /// The cluster the watch was confirmed by.
    cluster_id: Option<u64>,
    /// The client's moves to another endpoint ([`Client::moves`]).
    moves: tokio::sync::watch::Receiver<(u64, usize)>,
    /// The endpoint the watch was confirmed on.
    watch_endpoint: Option<usize>,
    /// Why the watch ended, while resuming it failed on an error that may pass (no member
    /// reachable, an election): the next round, after the loop's backoff, tries to resume
    /// again before it reads the directory.
    resume_retry: Option<String>,
    /// Every key under `dir` (decodable or not) and the revision of its last change: what
    /// a resume checks the server still has at `revision`.
    mod_revs: BTreeMap<Vec<u8>, i64>,
    after_get: Option<AfterGet>,
    stats: Arc<SourceStats>,
    _live: crate::shared::LiveGuard,
}

impl fmt::Debug for PrefixSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixSource")
            .field("dir", &self.dir)
            .field("query", &self.query)
            .field("entries", &self.entries.len())
            .field("watching", &self.watch.is_some())
            .finish()
    }
}

impl PrefixSource {
    /// A source for `query` under `client`'s prefix.
    pub fn new(client: Client, query: ServiceQuery) -> Self {
        let moves = client.moves();
        let dir = client.service_dir(&query.service);
        let live = client.live_guard();
        PrefixSource {
            client,
            query,
            dir,
            entries: BTreeMap::new(),
            watch: None,
            pending: None,
            quick_restarts: 0,
            revision: 0,
            cluster_id: None,
            moves,
            watch_endpoint: None,
            resume_retry: None,
            mod_revs: BTreeMap::new(),
            after_get: None,
            _live: live,
            stats: Arc::new(SourceStats::default()),
        }
    }

    /// Runs `hook` after each directory read, before the watch is opened (a test seam).
    #[must_use]
    pub fn after_get(mut self, hook: AfterGet) -> Self {
        self.after_get = Some(hook);
        self
    }

    /// The counters of this source.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// The directory watched: `<prefix>/<service>/`.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    fn id_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.dir.as_str()).unwrap_or(key)
    }

    fn decode(&self, key: &str, value: &[u8]) -> Option<Instance> {
        match decode_value(self.id_of(key), value) {
            Ok(i) => Some(i),
            Err(reason) => {
                tracing::warn!(backend = BACKEND, service = %self.query.service, key = %key,
                    %reason, "skipping an undecodable entry");
                None
            }
        }
    }

    fn current(&self) -> Vec<Instance> {
        self.entries
            .values()
            .filter(|i| self.query.matches(i))
            .cloned()
            .collect()
    }

    /// Reads the directory at one revision R, then watches from R+1. When R+1 was compacted
    /// in between (a busy cluster compacting aggressively), reads again, a few times.
    async fn resync(&mut self) -> Step {
        self.watch = None;
        self.pending = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (revision, kvs) = match self.client.get_prefix(&self.dir).await {
                Ok(r) => r,
                Err(e) => return Step::Fail(e),
            };
            if revision <= 0 {
                return Step::Skip(format!("get answered without a sane revision ({revision})"));
            }
            self.stats.full_reads.fetch_add(1, Ordering::Relaxed);
            self.revision = revision;
            let mut entries = BTreeMap::new();
            for kv in &kvs {
                if let Some(i) = self.decode(&kv.key, &kv.value) {
                    entries.insert(kv.raw_key.clone(), i);
                }
            }
            self.entries = entries;
            self.mod_revs = kvs
                .iter()
                .map(|kv| (kv.raw_key.clone(), kv.mod_revision))
                .collect();
            if let Some(hook) = &self.after_get {
                hook(revision).await;
            }
            // Moves made until now (this read's own included) are answered by this watch.
            self.moves.borrow_and_update();
            match self.client.watch_prefix(&self.dir, revision + 1).await {
                Ok(Ok(w)) => {
                    self.cluster_id = Some(w.cluster_id);
                    self.watch_endpoint = w.endpoint;
                    self.watch = Some(w.stream);
                }
                Ok(Err(compacted)) if attempts < 3 => {
                    tracing::debug!(backend = BACKEND, dir = %self.dir, revision, compacted,
                        "revision compacted before the watch started; reading again");
                    continue;
                }
                Ok(Err(compacted)) => {
                    return Step::Skip(format!(
                        "revision {} compacted (up to {compacted}) before the watch could start, {attempts} times",
                        revision + 1
                    ))
                }
                Err(e) => return Step::Fail(e),
            }
            tracing::debug!(backend = BACKEND, dir = %self.dir, revision, keys = kvs.len(), "read and watching");
            return Step::Publish(self.current());
        }
    }

    /// The watch's stream ended or broke (its endpoint died, the connection was cut):
    /// watches again from the revision after the last one applied, on whichever endpoint the
    /// client uses now, without reading the directory again. Only when etcd confirms the watch
    /// as the same cluster (same id) at a revision not behind the one applied — not a server
    /// that lost its data and started counting again — and the revision is not compacted;
    /// otherwise (and after [`QUICK_RESTARTS`] resumes in a row without an event)
    /// [`Resume::Read`], and the caller reads again. When etcd cannot answer now (no member
    /// reachable, a request timed out during an election), [`Resume::Later`]: reading would
    /// fail the same way, and the revision stays good, so the next round tries to resume again.
    async fn resume(&mut self, why: &str) -> Resume {
        self.watch = None;
        self.pending = None;
        self.resume_retry = None;
        if self.revision <= 0 || self.cluster_id.is_none() || self.quick_restarts >= QUICK_RESTARTS
        {
            return Resume::Read;
        }
        // The same store? A server that lost its data and was written past our revision
        // since has the same cluster id (etcd derives it from the peer URLs and the token)
        // and accepts the watch: only its history tells. Its keys at our revision, with the
        // revisions of their last changes, must be exactly the ones we hold (keys only: no
        // value is read). A compacted or future revision fails here too: read again.
        self.moves.borrow_and_update();
        match self.client.keys_at(&self.dir, self.revision).await {
            Ok(keys)
                if keys.len() == self.mod_revs.len()
                    && keys
                        .iter()
                        .zip(&self.mod_revs)
                        .all(|((k, r), (k2, r2))| k == k2 && r == r2) => {}
            Ok(_) => {
                tracing::warn!(backend = BACKEND, dir = %self.dir, reason = %why,
                    revision = self.revision,
                    "watch ended; the endpoint's history differs from what was applied (a \
                     server that lost its data?): reading again");
                return Resume::Read;
            }
            Err(e) => {
                tracing::debug!(backend = BACKEND, dir = %self.dir, reason = %why, error = %e,
                    "watch ended; cannot check the history at the applied revision");
                return Resume::after_error(e);
            }
        }
        match self.client.watch_prefix(&self.dir, self.revision + 1).await {
            Ok(Ok(w)) if Some(w.cluster_id) == self.cluster_id && w.revision >= self.revision => {
                self.quick_restarts += 1;
                self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = BACKEND, dir = %self.dir, reason = %why,
                    from = self.revision + 1, "watch ended; resumed from the last revision");
                self.watch_endpoint = w.endpoint;
                self.watch = Some(w.stream);
                Resume::Resumed
            }
            Ok(Ok(w)) => {
                tracing::debug!(backend = BACKEND, dir = %self.dir, reason = %why,
                    cluster_id = w.cluster_id, revision = w.revision, applied = self.revision,
                    "watch ended; the endpoint is another cluster or behind: reading again");
                Resume::Read
            }
            Ok(Err(_compacted)) => Resume::Read,
            Err(e) => {
                tracing::debug!(backend = BACKEND, dir = %self.dir, reason = %why, error = %e,
                    "watch ended; resuming failed");
                Resume::after_error(e)
            }
        }
    }

    /// The watch ended for `why`: resumes it, or reads again, or — when etcd cannot answer
    /// now — fails this round (the loop publishes the error and backs off) and tries to
    /// resume again in the next.
    async fn recover(&mut self, why: String) -> Option<Step> {
        match self.resume(&why).await {
            Resume::Resumed => None,
            Resume::Read => Some(self.rewatch(why).await),
            Resume::Later(e) => {
                let step = Step::Fail(with_context(e, &why, "resuming the watch"));
                self.resume_retry = Some(why);
                Some(step)
            }
        }
    }

    /// The watch ended (error, end of stream, cancellation): read again at once, unless
    /// watches keep ending without delivering anything.
    async fn rewatch(&mut self, why: String) -> Step {
        self.watch = None;
        self.quick_restarts += 1;
        if self.quick_restarts > QUICK_RESTARTS {
            self.quick_restarts = 0;
            return Step::Skip(format!(
                "{why}; {QUICK_RESTARTS} watches in a row ended without an event, backing off"
            ));
        }
        tracing::debug!(backend = BACKEND, dir = %self.dir, reason = %why, "watch ended; reading again");
        match self.resync().await {
            Step::Fail(e) => Step::Fail(with_context(e, &why, "reading again")),
            other => other,
        }
    }
}

/// `e` (from what was tried, `what`, after a watch ended) with why the watch ended in front
/// of its message, keeping its kind (an auth failure stays `Rejected`).
pub(crate) fn with_context(e: sd_core::Error, why: &str, what: &str) -> sd_core::Error {
    use sd_core::Error;
    let message = |m: String| format!("{why}; {what} failed: {m}");
    match e {
        Error::Unavailable {
            backend,
            message: m,
            source,
        } => Error::Unavailable {
            backend,
            message: message(m),
            source,
        },
        Error::Timeout {
            backend,
            message: m,
        } => Error::Timeout {
            backend,
            message: message(m),
        },
        Error::Rejected {
            backend,
            message: m,
        } => Error::Rejected {
            backend,
            message: message(m),
        },
        other => other,
    }
}

#[async_trait]
impl Source for PrefixSource {
    async fn next_step(&mut self) -> Step {
        loop {
            let Some(stream) = self.watch.as_mut() else {
                if let Some(why) = self.resume_retry.take() {
                    match self.recover(why).await {
                        // The last round published an error: publish the set again (it
                        // is unchanged) so subscribers see the recovery.
                        None => return Step::Publish(self.current()),
                        Some(step) => return step,
                    }
                }
                return self.resync().await;
            };
            let next = match self.pending.take() {
                Some(next) => next,
                None => {
                    tokio::select! {
                        next = stream.message() => next,
                        // Another request found the endpoint dead or frozen and the client
                        // moved: this watch is probably on that endpoint too. Resume it on
                        // the new one (a frozen member would hold it until keep-alive).
                        _ = self.moves.changed() => {
                            let (_, given_up) = *self.moves.borrow_and_update();
                            if self.watch_endpoint.is_some_and(|e| e != given_up) {
                                continue; // another endpoint was given up: not this watch's
                            }
                            let why = "the client moved to another endpoint";
                            match self.recover(why.into()).await {
                                None => continue,
                                Some(step) => return step,
                            }
                        }
                    }
                }
            };
            let resp = match next {
                Err(e) => match self.recover(format!("watch: {e}")).await {
                    None => continue,
                    Some(step) => return step,
                },
                Ok(None) => match self.recover("the watch stream ended".into()).await {
                    None => continue,
                    Some(step) => return step,
                },
                Ok(Some(resp)) => resp,
            };
            if resp.canceled() {
                let why = if resp.compact_revision() > 0 {
                    tracing::warn!(backend = BACKEND, dir = %self.dir,
                        compact_revision = resp.compact_revision(),
                        "watch revision compacted; reading the directory again");
                    // Not a sign of a flapping server: do not count it as a quick restart.
                    self.quick_restarts = 0;
                    format!(
                        "watch cancelled: compacted up to revision {}",
                        resp.compact_revision()
                    )
                } else {
                    format!("watch cancelled by etcd: {:?}", resp.cancel_reason())
                };
                return self.rewatch(why).await;
            }
            if resp.events().is_empty() {
                continue; // a progress notification
            }
            self.quick_restarts = 0;
            self.apply(&resp);
            // Under a burst of changes, apply what has already arrived before publishing, so a
            // burst costs one publication, not one per response.
            for _ in 0..COALESCE_MAX {
                let Some(stream) = self.watch.as_mut() else {
                    break;
                };
                let Some(next) = stream.message().now_or_never() else {
                    break;
                };
                match next {
                    Ok(Some(r)) if !r.canceled() => self.apply(&r),
                    other => {
                        // An end or a cancellation: handled by the next round.
                        self.pending = Some(other);
                        break;
                    }
                }
            }
            return Step::Publish(self.current());
        }
    }
}

impl PrefixSource {
    /// Applies one watch response's events to the set.
    fn apply(&mut self, resp: &WatchResponse) {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Put => {
                    self.mod_revs.insert(kv.key().to_vec(), kv.mod_revision());
                }
                EventType::Delete => {
                    self.mod_revs.remove(kv.key());
                }
            }
            let key = String::from_utf8_lossy(kv.key());
            match ev.event_type() {
                EventType::Put => match self.decode(&key, kv.value()) {
                    Some(i) => {
                        self.entries.insert(kv.key().to_vec(), i);
                    }
                    None => {
                        // The key's current value is bad: its old value is gone too.
                        self.entries.remove(kv.key());
                    }
                },
                EventType::Delete => {
                    self.entries.remove(kv.key());
                }
            }
        }
        self.stats
            .events
            .fetch_add(resp.events().len() as u64, Ordering::Relaxed);
    }
}

/// Watches the instances of one service in etcd (see the [module docs](self)).
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use sd_core::{Instancer, ServiceQuery};
/// use sd_etcdv3::{Client, ClientConfig, EtcdInstancer};
///
/// let client = Client::new(ClientConfig::new(["127.0.0.1:2379"]))?;
/// let instancer = EtcdInstancer::start(client, ServiceQuery::new("users").tag("v2")).await;
/// let mut events = instancer.subscribe();
/// println!("{:?}", events.next().await); // the first read already ran
/// instancer.stop().await; // cancels the watch
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdInstancer {
    inner: WatchedInstancer,
    stats: Arc<SourceStats>,
    shared: bool,
}

impl EtcdInstancer {
    /// Reads the directory, publishes the set, and starts watching it (a watch of its own,
    /// [`WatchMode::Own`](crate::WatchMode::Own)), with go-kit's backoff (10 ms .. 1 min,
    /// jittered) after failures.
    pub async fn start(client: Client, query: ServiceQuery) -> Self {
        Self::start_source(PrefixSource::new(client, query), Backoff::default()).await
    }

    /// Like [`start`](Self::start), on `client`'s shared watch of the whole prefix
    /// ([`WatchMode::Shared`](crate::WatchMode::Shared), see [`shared`](crate::shared)):
    /// joins it (opening it if this is the first instancer), reads the directory, publishes
    /// the set.
    pub async fn start_shared(client: Client, query: ServiceQuery) -> Self {
        Self::start_shared_source(SharedSource::new(client, query), Backoff::default()).await
    }

    /// Runs `source` (e.g. one with an [`after_get`](SharedSource::after_get) hook) on its
    /// client's shared watch, with `backoff` after failures.
    pub async fn start_shared_source(source: SharedSource, backoff: Backoff) -> Self {
        let target = if source.query.tags.is_empty() {
            format!("{} (shared watch)", source.dir)
        } else {
            format!("{} tags={:?} (shared watch)", source.dir, source.query.tags)
        };
        let stats = source.stats();
        let config = LoopConfig::new(BACKEND, target)
            .service(source.query.service.clone())
            .backoff(backoff);
        let inner = WatchedInstancer::start(source, config).await;
        EtcdInstancer {
            inner,
            stats,
            shared: true,
        }
    }

    /// Runs `source` (e.g. one with an [`after_get`](PrefixSource::after_get) hook) with
    /// `backoff` after failures.
    pub async fn start_source(source: PrefixSource, backoff: Backoff) -> Self {
        let target = if source.query.tags.is_empty() {
            source.dir.clone()
        } else {
            format!("{} tags={:?}", source.dir, source.query.tags)
        };
        let stats = source.stats();
        let config = LoopConfig::new(BACKEND, target)
            .service(source.query.service.clone())
            .backoff(backoff);
        let inner = WatchedInstancer::start(source, config).await;
        EtcdInstancer {
            inner,
            stats,
            shared: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> Option<Event> {
        self.inner.state()
    }

    /// How much work the instancer has done (full reads, events applied).
    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// Whether it is on its client's shared watch (else it has a watch of its own).
    pub fn is_shared(&self) -> bool {
        self.shared
    }
}

#[async_trait]
impl Instancer for EtcdInstancer {
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    async fn stop(&self) {
        self.inner.stop().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_carry_the_whole_instance() {
        let v = br#"{"host":"::1","port":8080,"id":"web-1","tags":["a","b"],"meta":{"zone":"eu"},"weight":7,"health":"warning"}"#;
        let i = decode_value("ignored", v).unwrap();
        assert_eq!(i.addr(), "[::1]:8080");
        assert_eq!(i.id(), "web-1");
        assert_eq!(i.tags(), ["a", "b"]);
        assert_eq!(i.meta().get("zone").unwrap(), "eu");
        assert_eq!(i.weight(), 7);
        assert_eq!(i.health(), Health::Warning);
        let i = decode_value("from-key", br#"{"host":"h","port":1}"#).unwrap();
        assert_eq!(
            (i.id(), i.weight(), i.health()),
            ("from-key", 1, Health::Passing)
        );
        let i = decode_value("k", br#"{"host":"h","port":1,"health":"bogus"}"#).unwrap();
        assert_eq!(i.health(), Health::Unknown);
    }

    #[test]
    fn gokit_plain_values_are_read() {
        for (v, addr) in [
            ("1.2.3.4:8080", "1.2.3.4:8080"),
            ("http://1.2.3.4:8080", "1.2.3.4:8080"),
            ("https://svc.local:443/", "svc.local:443"),
            ("[::1]:80", "[::1]:80"),
            ("  10.0.0.1:9000\n", "10.0.0.1:9000"),
        ] {
            let i = decode_value("id-1", v.as_bytes()).unwrap();
            assert_eq!(i.addr(), addr, "{v}");
            assert_eq!(i.id(), "id-1");
            assert_eq!(i.health(), Health::Passing);
        }
    }

    #[test]
    fn bad_values_say_why() {
        for (v, why) in [
            (&b""[..], "empty value"),
            (b"\xff\xfe", "not UTF-8"),
            (
                b"not an address",
                "neither sdkit's instance JSON nor a go-kit",
            ),
            (b"http://1.2.3.4:8080/path", "neither"),
            (b"{\"host\":\"h\"}", "bad instance JSON"),
            (b"{\"host\":\"\",\"port\":1}", "empty host"),
            (b"{\"host\":\"h\",\"port\":0}", "port 0"),
            (b"{\"host\":\"h\",\"port\":70000}", "port 70000"),
            (b"{\"host\":\"h\",\"port\":-1}", "port -1"),
            (
                b"{\"host\":\"h\",\"port\":1,\"weight\":-3}",
                "bad instance JSON",
            ),
            (b"{truncated", "bad instance JSON"),
        ] {
            let err = decode_value("k", v).unwrap_err();
            assert!(err.contains(why), "{v:?}: {err}");
        }
    }

    /// Found by the `etcd_value` fuzz target (scripts/fuzz): a plain value whose host has
    /// control characters was accepted, and its JSON form read back as another host.
    #[test]
    fn fuzz_found_plain_value_with_control_characters_is_rejected() {
        let err = decode_value("k", b"10.0\x01\0\0\n:8080").unwrap_err();
        assert!(err.contains("contains"), "{err}");
    }

    /// Found by the `zk_data` fuzz target, same decoding rule here: JSON hosts that are not
    /// hosts were accepted, and their go-kit plain form (the registrar's `format=plain`)
    /// did not parse; `[]` even gave an instance with an empty host.
    #[test]
    fn fuzz_found_json_hosts_must_be_hosts() {
        // `{xot` (found by `etcd_value` after the first fix): its plain value starts with
        // `{` and was read back as broken JSON.
        for host in [
            "w/b.i.ternal",
            "[]",
            "a:b",
            "[web]",
            "a b",
            "h\\u0000",
            "{xot",
            "x}",
        ] {
            let v = format!(r#"{{"host":"{host}","port":80}}"#);
            let err = decode_value("k", v.as_bytes()).unwrap_err();
            assert!(err.contains("instance JSON: host"), "{host}: {err}");
        }
        // An IPv6 address, bracketed or not, is kept in its canonical form.
        let i = decode_value("k", br#"{"host":"[0:0::1]","port":80}"#).unwrap();
        assert_eq!(i.addr(), "[::1]:80");
        assert_eq!(Instance::parse(i.addr()).unwrap().host(), i.host());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever is stored under the prefix, decoding never panics, and an accepted
            /// value always has a host and a non-zero port.
            #[test]
            fn any_bytes_decode_or_are_rejected_with_a_reason(v in prop::collection::vec(any::<u8>(), 0..64)) {
                match decode_value("k", &v) {
                    Ok(i) => prop_assert!(!i.host().is_empty() && i.port() != 0),
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            #[test]
            fn json_like_values_never_panic(
                host in "[a-z0-9.:\\[\\]]{0,12}",
                port in any::<i64>(),
                weight in any::<i64>(),
                health in "[a-z]{0,8}",
            ) {
                let v = format!(r#"{{"host":"{host}","port":{port},"weight":{weight},"health":"{health}"}}"#);
                if let Ok(i) = decode_value("k", v.as_bytes()) {
                    prop_assert!(!i.host().is_empty() && i.port() != 0);
                }
            }
        }
    }
}
