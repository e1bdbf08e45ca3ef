//! Last-known-good on disk: an opt-in snapshot file per instancer, so that a process
//! restarted while its registry is unreachable still serves the endpoints it last saw.
//!
//! Turn it on with the `cache` option of any registry URL given to `sdkit::connect`
//! (`consul://127.0.0.1:8500?cache=/var/lib/app/sd`), or in code by wrapping a registry in a
//! [`DiskCachedRegistry`] (or one instancer in a [`DiskCachedInstancer`]):
//!
//! - after each good update (a set the registry answered), the set is written to one file
//!   per instancer, **atomically**: a temporary file in the same directory, written,
//!   `fsync`ed, renamed over the old one, and the directory `fsync`ed; a reader sees the
//!   old file or the new one, never a mix, and concurrent writers (two processes with the
//!   same cache directory) cannot corrupt it. The set is written again when the instancer
//!   enters an error state and every [`DiskCache::refresh_every`] while it stays fresh, so
//!   the file's time is the last time the registry confirmed the set, give or take that;
//! - when the instancer's first round fails (the registry cannot be reached at start), the
//!   file is read and its set published **stale** ([`StaleReason::Disk`], with the age of
//!   the file: see [`Freshness`]); failures after that are absorbed while the disk set is
//!   served (they are logged by the watch loop) until the registry answers, which publishes
//!   its set fresh again;
//! - a file is never trusted blindly: it carries a magic line and a format version, the
//!   backend and the full key it was written for, and a checksum of its body; a file that
//!   is missing, too large ([`DiskCache::max_bytes`], default [`DEFAULT_MAX_FILE_BYTES`]),
//!   truncated, damaged, of another version, or written for another backend, registry or
//!   query is ignored, and the reason logged at `warn` ([`LoadError`]).
//!
//! The file name is derived from the backend, the registry (its hosts, path and the
//! options that select data, never secrets), the service, its tags and its health filter
//! ([`CacheKey::file_name`]); no secret (token, password) is ever written into the file or
//! its name.
//!
//! # File format (version 1)
//!
//! ```text
//! sdkit-lkg 1
//! fnv1a64 <16 hex digits: FNV-1a 64 of the body>
//! {"backend":"consul","key":"k-...","written_unix_ms":1764650000000,"instances":[
//!   {"host":"10.0.0.1","port":8080,"id":"web-1","tags":["v2"],"meta":{"zone":"a"},"weight":1,"health":"passing"}]}
//! ```
//!
//! The body is one line of JSON. The checksum detects truncation and accidental damage; it
//! is not a signature: keep the directory writable by the process only.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use sd_core::lkg::{CacheKey, DiskCache};
//! use sd_core::{Instance, InstanceSet, ServiceQuery};
//!
//! let dir = std::env::temp_dir().join(format!("sdkit-lkg-doc-{}", std::process::id()));
//! let cache = DiskCache::new(&dir);
//! let key = CacheKey::new("consul", "127.0.0.1:8500", &ServiceQuery::new("web").tag("v2"));
//! assert_eq!(key.file_name(), "k-consul+127.0.0.1%3A8500+web+1,v2+all.lkg");
//!
//! let set = InstanceSet::new(vec![Instance::new("10.0.0.1", 8080)]);
//! cache.store(&key, &set).unwrap();
//! assert_eq!(cache.load(&key).unwrap().instances, set);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # });
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cache::{InstanceCache, Subscription};
use crate::error::Result;
use crate::event::{Event, InstanceSet};
use crate::follow::{pass_through_registry, Followed};
use crate::freshness::{Freshness, StaleReason};
use crate::instance::{Health, Instance};
use crate::instancer::Instancer;
use crate::registry::{Registry, ServiceQuery};
use crate::task::{survive, BackgroundTask};
use crate::watch_loop::CloseOnDrop;

/// The first word of every file.
pub const MAGIC: &str = "sdkit-lkg";

/// The format version written and accepted.
pub const FORMAT_VERSION: u32 = 1;

/// The largest file read by default (16 MiB, about 100 000 instances); larger files are
/// ignored.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

/// How often an unchanged fresh set is written again by default: 5 minutes.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// File names longer than this use a hash of the key instead (and rely on the key stored in
/// the file to tell keys apart).
const MAX_NAME: usize = 200;

/// What a snapshot file is for: backend, registry, service and query filter.
///
/// Two keys are equal exactly when their [`file_name`](Self::file_name)s are (for names up
/// to 200 bytes; longer keys are hashed into the name, and the full key stored in the file
/// is compared on reading, so a collision never serves another key's data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    text: String,
    backend: String,
}

impl CacheKey {
    /// The key of `query`'s instancer on the `backend` registry (a URL scheme such as
    /// `consul`) identified by `registry` (see [`RegistryUrl::identity`]: hosts, path and
    /// data-selecting options; never put a secret in it). Tags are sorted: their order does
    /// not change the set.
    ///
    /// [`RegistryUrl::identity`]: crate::RegistryUrl::identity
    pub fn new(backend: &str, registry: &str, query: &ServiceQuery) -> Self {
        let mut tags: Vec<&str> = query.tags.iter().map(String::as_str).collect();
        tags.sort_unstable();
        tags.dedup();
        let mut tag_part = tags.len().to_string();
        for t in &tags {
            tag_part.push(',');
            tag_part.push_str(&escape(t));
        }
        let text = format!(
            "k-{}+{}+{}+{}+{}",
            escape(backend),
            escape(registry),
            escape(&query.service),
            tag_part,
            if query.passing_only { "passing" } else { "all" }
        );
        CacheKey {
            text,
            backend: backend.to_string(),
        }
    }

    /// The full key, as stored in the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The file name: the key itself (every byte outside `A-Z a-z 0-9 . _ -` percent-encoded,
    /// the parts joined by `+`) with `.lkg`, or, beyond 200 bytes, `h-<128-bit hash>.lkg`.
    pub fn file_name(&self) -> String {
        if self.text.len() + 4 <= MAX_NAME {
            format!("{}.lkg", self.text)
        } else {
            let a = fnv1a64(self.text.as_bytes(), 0xcbf2_9ce4_8422_2325);
            let b = fnv1a64(self.text.as_bytes(), 0x6c62_272e_07bb_0142);
            format!("h-{a:016x}{b:016x}.lkg")
        }
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Percent-encodes every byte outside `A-Z a-z 0-9 . _ -` (injective).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FNV-1a, 64 bits, from `basis`.
fn fnv1a64(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Why a snapshot file was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// There is no file for this key.
    #[error("no snapshot file")]
    Missing,
    /// The file is larger than allowed.
    #[error("snapshot file too large: {size} bytes, at most {max} read")]
    TooLarge {
        /// Its size (at least), in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Not an sdkit snapshot file, or written for another backend or key.
    #[error("foreign snapshot file: {0}")]
    Foreign(String),
    /// Written in a format version this build does not read.
    #[error("snapshot file has format version {0}, this build reads version {FORMAT_VERSION}")]
    Version(String),
    /// Truncated or damaged: bad checksum, bad JSON, bad entry.
    #[error("corrupt snapshot file: {0}")]
    Corrupt(String),
    /// The file could not be read.
    #[error("cannot read snapshot file: {0}")]
    Io(String),
}

/// A set read back from a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The instances.
    pub instances: InstanceSet,
    /// When the file was written (the writer's wall clock).
    pub written: SystemTime,
}

/// Where and how snapshot files are kept: a directory and a size cap.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    refresh: Duration,
}

/// Distinguishes the temporary files of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DiskCache {
    /// Snapshot files in `dir` (created when the first file is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskCache {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_FILE_BYTES,
            refresh: DEFAULT_REFRESH,
        }
    }

    /// How often a [`DiskCachedInstancer`] writes an unchanged, fresh set again, so that the
    /// file's time (the age of a set read back from it) stays within this of the last time
    /// the registry confirmed it (default [`DEFAULT_REFRESH`]). Besides, the set is written
    /// when it changes and when the instancer enters an error state. At least 10 ms.
    #[must_use]
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(10));
        self
    }

    /// Files larger than `max` bytes are neither read nor written (default
    /// [`DEFAULT_MAX_FILE_BYTES`]).
    #[must_use]
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Writes `set` as the snapshot of `key`, atomically (temporary file, `fsync`, rename,
    /// directory `fsync`). Blocking: call it off the async threads. Returns the file's path.
    pub fn store(&self, key: &CacheKey, set: &InstanceSet) -> std::io::Result<PathBuf> {
        let written = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        let instances: Vec<Value> = set.iter().map(instance_json).collect();
        let body = json!({
            "backend": key.backend,
            "key": key.text,
            "written_unix_ms": written,
            "instances": instances,
        })
        .to_string();
        let mut data = format!(
            "{MAGIC} {FORMAT_VERSION}\nfnv1a64 {:016x}\n",
            fnv1a64(body.as_bytes(), 0xcbf2_9ce4_8422_2325)
        );
        data.push_str(&body);
        if data.len() as u64 > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "snapshot of {} instances is {} bytes, more than the {} allowed",
                set.len(),
                data.len(),
                self.max_bytes
            )));
        }
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.{}.tmp",
            key.file_name(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(data.as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // Makes the rename itself durable; not every platform can open a directory.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Reads and checks the snapshot of `key`. Blocking: call it off the async threads.
    /// Reads at most [`max_bytes`](Self::max_bytes) (+1, to tell a larger file).
    pub fn load(&self, key: &CacheKey) -> std::result::Result<Loaded, LoadError> {
        let path = self.path(key);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(e) => return Err(LoadError::Io(e.to_string())),
        };
        let mut bytes = Vec::new();
        file.take(self.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| LoadError::Io(e.to_string()))?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        parse(&bytes, key)
    }
}

fn instance_json(i: &Instance) -> Value {
    json!({
        "host": i.host(),
        "port": i.port(),
        "id": i.id(),
        "tags": i.tags(),
        "meta": i.meta(),
        "weight": i.weight(),
        "health": i.health().as_str(),
    })
}

fn parse(bytes: &[u8], key: &CacheKey) -> std::result::Result<Loaded, LoadError> {
    let foreign = || LoadError::Foreign(format!("it does not start with {MAGIC:?}"));
    let (first, rest) = split_line(bytes).ok_or_else(foreign)?;
    let version = first
        .strip_prefix(format!("{MAGIC} ").as_bytes())
        .ok_or_else(foreign)?;
    if version != FORMAT_VERSION.to_string().as_bytes() {
        return Err(LoadError::Version(
            String::from_utf8_lossy(&version[..version.len().min(20)]).into_owned(),
        ));
    }
    let corrupt = |m: &str| LoadError::Corrupt(m.to_string());
    let (sum, body) = split_line(rest).ok_or_else(|| corrupt("no checksum line"))?;
    let sum = std::str::from_utf8(sum)
        .ok()
        .and_then(|s| s.strip_prefix("fnv1a64 "))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt("bad checksum line"))?;
    if fnv1a64(body, 0xcbf2_9ce4_8422_2325) != sum {
        return Err(corrupt("checksum mismatch (truncated or damaged)"));
    }
    let body: Value =
        serde_json::from_slice(body).map_err(|e| corrupt(&format!("bad JSON: {e}")))?;
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    if text("backend") != Some(&key.backend) {
        return Err(LoadError::Foreign(format!(
            "written for backend {:?}, not {:?}",
            text("backend").unwrap_or("?"),
            key.backend
        )));
    }
    if text("key") != Some(&key.text) {
        return Err(LoadError::Foreign(format!(
            "written for key {:?}, not {:?}",
            text("key").unwrap_or("?"),
            key.text
        )));
    }
    let written = body
        .get("written_unix_ms")
        .and_then(Value::as_u64)
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .ok_or_else(|| corrupt("no written_unix_ms"))?;
    let list = body
        .get("instances")
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt("no instances array"))?;
    let instances = list
        .iter()
        .enumerate()
        .map(|(n, v)| parse_instance(v).ok_or_else(|| corrupt(&format!("bad instance #{n}"))))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Loaded {
        instances: InstanceSet::new(instances),
        written,
    })
}

fn split_line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b'\n')?;
    Some((&b[..i], &b[i + 1..]))
}

fn parse_instance(v: &Value) -> Option<Instance> {
    let host = v.get("host")?.as_str()?;
    let port = u16::try_from(v.get("port")?.as_u64()?).ok()?;
    let id = v.get("id")?.as_str()?;
    let tags = v
        .get("tags")?
        .as_array()?
        .iter()
        .map(|t| t.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()?;
    let mut meta = BTreeMap::new();
    for (k, v) in v.get("meta")?.as_object()? {
        meta.insert(k.clone(), v.as_str()?.to_string());
    }
    let weight = u32::try_from(v.get("weight")?.as_u64()?).ok()?;
    let health = match v.get("health")?.as_str()? {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        "critical" => Health::Critical,
        "unknown" => Health::Unknown,
        _ => return None,
    };
    if host.is_empty() {
        return None;
    }
    let mut b = Instance::builder(host, port)
        .id(id)
        .tags(tags)
        .weight(weight)
        .health(health);
    for (k, v) in meta {
        b = b.meta(k, v);
    }
    Some(b.build())
}

/// What the follower knows between events.
struct Follow {
    cache: DiskCache,
    key: CacheKey,
    out: Arc<InstanceCache>,
    /// A set has been published (from the registry or the disk).
    seen: bool,
    /// The disk set is served and the registry has not answered since.
    from_disk: bool,
    /// The fresh set served now (`None` in an error state or while serving stale data).
    live: Option<InstanceSet>,
    /// The last set written to disk, and when (tokio's clock).
    written: Option<(InstanceSet, Instant)>,
}

impl Follow {
    /// When the live set is due to be written again (to refresh the file's time).
    fn refresh_at(&self) -> Option<Instant> {
        match (&self.live, &self.written) {
            (Some(_), Some((_, at))) => at.checked_add(self.cache.refresh),
            _ => None,
        }
    }

    async fn handle(&mut self, event: Event, freshness: Freshness) {
        match event {
            Event::Instances(set) => {
                self.seen = true;
                self.from_disk = false;
                let fresh = !freshness.is_stale();
                self.out
                    .update_with(Event::Instances(set.clone()), freshness);
                self.live = fresh.then(|| set.clone());
                if fresh && self.written.as_ref().map(|(w, _)| w) != Some(&set) {
                    self.write(set).await;
                }
            }
            Event::Error(err) => {
                if !self.seen {
                    self.seen = true;
                    if self.read(&err).await {
                        return;
                    }
                }
                if self.from_disk {
                    // The registry has not answered since the start: keep serving the disk
                    // set (the watch loop logs each failure).
                    return;
                }
                self.out.update(Event::Error(err));
                // The live set was confirmed until now: the file says so.
                if let Some(set) = self.live.take() {
                    self.write(set).await;
                }
            }
        }
    }

    /// Writes the live set again, so that the file's time stays close to the last time the
    /// registry confirmed it.
    async fn refresh(&mut self) {
        if let Some(set) = self.live.clone() {
            self.write(set).await;
        }
    }

    async fn write(&mut self, set: InstanceSet) {
        let (cache, key, s) = (self.cache.clone(), self.key.clone(), set.clone());
        let result = tokio::task::spawn_blocking(move || cache.store(&key, &s)).await;
        // A failed write is not retried before the next refresh either.
        self.written = Some((set, Instant::now()));
        let error = match result {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        survive(|| {
            tracing::warn!(key = %self.key, dir = %self.cache.dir.display(), error = %error,
                "last-known-good snapshot not written")
        });
    }

    /// The first round failed with `err`: serves the disk snapshot, if there is a good one.
    async fn read(&mut self, err: &crate::Error) -> bool {
        let (cache, key) = (self.cache.clone(), self.key.clone());
        let loaded = tokio::task::spawn_blocking(move || cache.load(&key))
            .await
            .unwrap_or_else(|e| Err(LoadError::Io(e.to_string())));
        let path = self.cache.path(&self.key);
        match loaded {
            Ok(loaded) => {
                let n = loaded.instances.len();
                self.from_disk = true;
                self.out.update_with(
                    Event::Instances(loaded.instances),
                    Freshness::stale_since_wall(loaded.written, StaleReason::Disk),
                );
                let age = SystemTime::now()
                    .duration_since(loaded.written)
                    .unwrap_or(Duration::ZERO);
                survive(|| {
                    tracing::warn!(path = %path.display(), instances = n, age = ?age, error = %err,
                        "registry unreachable at start: serving the last-known-good snapshot from disk, marked stale")
                });
                true
            }
            Err(LoadError::Missing) => {
                survive(|| {
                    tracing::info!(path = %path.display(), error = %err,
                        "registry unreachable at start and no last-known-good snapshot on disk")
                });
                false
            }
            Err(reason) => {
                survive(|| {
                    tracing::warn!(path = %path.display(), reason = %reason, error = %err,
                        "registry unreachable at start; last-known-good snapshot ignored")
                });
                false
            }
        }
    }
}

/// Wraps any [`Instancer`]: writes each good set to a [`DiskCache`] and, when the first
/// state is an error (the registry cannot be reached at start), serves the snapshot from
/// disk, marked stale ([`StaleReason::Disk`]). See the [module](self) docs.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::lkg::{CacheKey, DiskCache, DiskCachedInstancer};
/// use sd_core::*;
///
/// let dir = std::env::temp_dir().join(format!("sdkit-lkg-doc2-{}", std::process::id()));
/// let key = CacheKey::new("memory", "doc", &ServiceQuery::new("web"));
///
/// // A first run sees the registry and writes the snapshot.
/// let up = Arc::new(FixedInstancer::from_addrs(["10.0.0.1:80"]).unwrap());
/// let first = DiskCachedInstancer::start(up, DiskCache::new(&dir), key.clone()).await;
/// first.stop().await;
///
/// // A restart finds the registry down: the disk set is served, stale.
/// let down = Arc::new(InstanceCache::new());
/// down.update(Event::Error(Error::unavailable("memory", "connection refused")));
/// let second = DiskCachedInstancer::start(down, DiskCache::new(&dir), key).await;
/// let mut sub = second.subscribe();
/// let (event, freshness) = sub.try_next_with_freshness().unwrap();
/// assert_eq!(event.addrs(), ["10.0.0.1:80"]);
/// assert_eq!(freshness.reason(), Some(StaleReason::Disk));
/// second.stop().await;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
pub struct DiskCachedInstancer {
    watch: Arc<Followed>,
    path: PathBuf,
}

impl fmt::Debug for DiskCachedInstancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskCachedInstancer")
            .field("inner", &self.watch.inner[0])
            .field("path", &self.path)
            .finish()
    }
}

impl DiskCachedInstancer {
    /// Follows `inner`, keeping the snapshot of `key` in `cache`. Applies `inner`'s current
    /// state (reading or writing the file) before returning.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(inner: Arc<dyn Instancer>, cache: DiskCache, key: CacheKey) -> Self {
        let out = Arc::new(InstanceCache::new());
        let path = cache.path(&key);
        let mut follow = Follow {
            cache,
            key,
            out: out.clone(),
            seen: false,
            from_disk: false,
            live: None,
            written: None,
        };
        let mut sub = inner.subscribe();
        if let Some((event, freshness)) = sub.try_next_with_freshness() {
            follow.handle(event, freshness).await;
        }
        // Built outside the future, so it also runs if the future is dropped unpolled.
        let closing = CloseOnDrop(out.clone());
        let task = BackgroundTask::spawn(move |token| async move {
            let _closing = closing;
            loop {
                let refresh_at = follow.refresh_at();
                tokio::select! {
                    _ = token.cancelled() => return,
                    next = sub.next_with_freshness() => match next {
                        Some((event, freshness)) => follow.handle(event, freshness).await,
                        None => return,
                    },
                    _ = tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now)), if refresh_at.is_some() => {
                        follow.refresh().await;
                    }
                }
            }
        });
        DiskCachedInstancer {
            watch: Arc::new(Followed {
                out,
                inner: vec![inner],
                task,
            }),
            path,
        }
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current state (for tests and diagnostics).
    pub fn state(&self) -> Option<Event> {
        self.watch.out.state()
    }
}

#[async_trait]
impl Instancer for DiskCachedInstancer {
    /// The subscription keeps the follower (and through it the inner instancer) running
    /// after this instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.watch.subscribe()
    }

    /// Stops the inner instancer and the follower.
    async fn stop(&self) {
        self.watch.stop().await
    }
}

/// A [`Registry`] whose instancers keep a last-known-good snapshot on disk
/// ([`DiskCachedInstancer`]); registrars and service listing pass through.
///
/// `sdkit::connect` builds one for a URL with the `cache` option; build one yourself to
/// turn the feature on in code:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use sd_core::lkg::{DiskCache, DiskCachedRegistry};
/// use sd_core::{MemoryRegistry, Registry, ServiceQuery};
///
/// let dir = std::env::temp_dir().join(format!("sdkit-lkg-doc3-{}", std::process::id()));
/// let registry = DiskCachedRegistry::new(Arc::new(MemoryRegistry::new()), DiskCache::new(&dir), "doc");
/// let instancer = registry.instancer(&ServiceQuery::new("web")).await?;
/// instancer.stop().await;
/// assert!(dir.join("k-memory+doc+web+0+all.lkg").exists());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), sd_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct DiskCachedRegistry {
    inner: Arc<dyn Registry>,
    cache: DiskCache,
    registry: String,
}

impl DiskCachedRegistry {
    /// Wraps `inner`; `registry` identifies it in file names and files (never a secret:
    /// [`RegistryUrl::identity`](crate::RegistryUrl::identity) gives a safe one).
    pub fn new(inner: Arc<dyn Registry>, cache: DiskCache, registry: impl Into<String>) -> Self {
        DiskCachedRegistry {
            inner,
            cache,
            registry: registry.into(),
        }
    }

    /// The disk cache.
    pub fn cache(&self) -> &DiskCache {
        &self.cache
    }

    /// The snapshot key of `query`'s instancers.
    pub fn key(&self, query: &ServiceQuery) -> CacheKey {
        CacheKey::new(self.inner.scheme(), &self.registry, query)
    }
}

#[async_trait]
impl Registry for DiskCachedRegistry {
    pass_through_registry!();

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        let inner = self.inner.instancer(query).await?;
        Ok(Arc::new(
            DiskCachedInstancer::start(inner, self.cache.clone(), self.key(query)).await,
        ))
    }
}
