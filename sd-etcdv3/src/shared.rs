//! One shared watch of the whole prefix for every instancer of a [`Client`].
//!
//! With many services watched by one process, one watch per instancer costs a watch (and a
//! gRPC stream, and a watcher in etcd) per service. The shared watch is one watch of
//! `<prefix>/` whose events are routed by key to the instancers of each service:
//!
//! - **Per client, reference counted.** The first shared instancer of a [`Client`] (or of
//!   its clones) starts the watch; each [`SharedSource`] holds it; the last one stopped or
//!   dropped ends it (the watch's stream is dropped, which cancels it in etcd).
//! - **Routing by key.** A key `<prefix>/<service>/<rest>` goes to the instancers of
//!   `<service>` only: the service is the whole path segment, so `svc` never receives
//!   `svc2`'s keys, and a key right under the prefix (no `/` after the service) goes nowhere.
//! - **Joining at an exact revision.** An instancer joins (the watch routes its service's
//!   events to it from then on, buffered), *then* reads its own directory at a revision R
//!   (a linearizable read: R is at least every revision the watch has delivered), and skips
//!   the buffered events at or below R. Nothing is lost and nothing applied twice, whether it
//!   joins first or a thousandth, and it reads its own directory only, not the prefix.
//! - **Resuming.** When the stream breaks or the client moves to another endpoint, the
//!   watch resumes once for all from the revision after the last one delivered, on the same
//!   cluster and not behind it, as the per-instancer watch does. Its history check is one
//!   keys-only read of the prefix at that revision, handed to each instancer as the keys of
//!   its directory in the stream's order: an instancer whose keys and revisions differ (a
//!   server that lost its data) reads its own directory again, the others carry on. When
//!   etcd cannot answer now (no endpoint reachable, an election), every instancer publishes
//!   the error and the watch tries to resume again after the backoff, not to read. An
//!   instancer handed several failures before its next round publishes only the last one
//!   (a failure followed by another message is stale), so it follows the watch's recovery
//!   at its next round, not one backoff per failure queued.
//! - **Re-reading.** When the revision is compacted, etcd cancels the watch, or resuming is
//!   not possible, the prefix is read once at a revision R, watched again from R+1, and
//!   every instancer is handed its directory as of R (a snapshot in the stream: nothing it
//!   has not applied yet is lost; one that joined meanwhile and read its own directory after
//!   R reads it again instead, so its set never goes back). If that read fails, every instancer publishes the error
//!   (subscribers keep the last good set) and the watch retries with backoff (10 ms .. 1 min).
//! - **One segment.** A service name must be one path segment (no `/`): the typed
//!   [`EtcdRegistry::etcd_instancer`](crate::EtcdRegistry::etcd_instancer) gives another
//!   name a watch of its own, and a [`SharedSource`] refuses it (a config error).
//! - **Filters after routing.** Each instancer decodes its keys and applies its own query
//!   (tags, passing-only) to its set; a value that does not decode is skipped alone, logged.
//!
//! Which instancers use it is [`WatchMode`] (the `watch` URL option): by default, a client's
//! instancers beyond the first [`DEFAULT_SHARED_AFTER`] live ones.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{EventType, WatchResponse, WatchStream};
use sd_core::{Backoff, Error, Instance, Result, ServiceQuery, Source, Step};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, Entry, BACKEND};
use crate::instancer::{decode_value, with_context, AfterGet, Resume, SourceStats};

/// Instancers started with [`WatchMode::Auto`] use the shared watch once their client has
/// this many live instancers: the first 16 keep a watch each (a process watching a few
/// services out of many reads and receives only their keys), the others share one.
pub const DEFAULT_SHARED_AFTER: usize = 16;

/// The largest `shared_after` accepted.
pub const MAX_SHARED_AFTER: usize = 1_000_000;

/// Whether an instancer watches its own directory or joins its client's shared watch of the
/// whole prefix (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchMode {
    /// One watch per instancer, of its own directory (`watch=own`).
    Own,
    /// Every instancer joins the client's shared watch of the prefix (`watch=shared`).
    Shared,
    /// An instancer joins the shared watch when its client already has at least
    /// `shared_after` live instancers, else it watches its own directory (`watch=auto`,
    /// `shared_after=N`; the default, with [`DEFAULT_SHARED_AFTER`]).
    Auto {
        /// The number of live instancers from which new ones share the watch (at least 1).
        shared_after: usize,
    },
}

impl Default for WatchMode {
    fn default() -> Self {
        WatchMode::Auto {
            shared_after: DEFAULT_SHARED_AFTER,
        }
    }
}

impl WatchMode {
    /// Checks the mode: `shared_after` must be 1 ..= [`MAX_SHARED_AFTER`].
    pub fn validate(self) -> Result<Self> {
        match self {
            WatchMode::Auto { shared_after } if !(1..=MAX_SHARED_AFTER).contains(&shared_after) => {
                Err(Error::config(format!(
                    "etcd: shared_after={shared_after} must be between 1 and {MAX_SHARED_AFTER}"
                )))
            }
            other => Ok(other),
        }
    }

    /// Whether a new instancer shares the watch when its client has `live` instancers.
    pub fn shares(self, live: usize) -> bool {
        match self {
            WatchMode::Own => false,
            WatchMode::Shared => true,
            WatchMode::Auto { shared_after } => live >= shared_after,
        }
    }
}

/// Counts the live instancers of a client while held ([`Client`] keeps the count).
pub(crate) struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub(crate) fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LiveGuard(count)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the shared watch has done so far ([`Client::shared_watch_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedWatchStats {
    /// The instancers joined now.
    pub members: usize,
    /// Watches opened from the current revision (the first join, or a join after the last
    /// member left).
    pub opened: u64,
    /// Reads of the whole prefix (each followed by a new watch and a snapshot to every
    /// member): after a compaction, a cancelled watch, or a stream that could not be resumed.
    pub full_reads: u64,
    /// Streams resumed from the last revision delivered, without a read.
    pub resumes: u64,
    /// Watch events received (each routed to the members of its key's service, if any).
    pub events: u64,
}

#[derive(Debug, Default)]
struct Counters {
    members: AtomicUsize,
    opened: AtomicU64,
    full_reads: AtomicU64,
    resumes: AtomicU64,
    events: AtomicU64,
}

/// One change of a key in a member's directory.
#[derive(Debug)]
pub(crate) struct Change {
    key: Vec<u8>,
    /// The new value; `None` for a delete.
    value: Option<Vec<u8>>,
    mod_revision: i64,
}

/// What the shared watch hands a member, in the order of the stream.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Changes of the member's directory, in revision order.
    Changes(Arc<Vec<Change>>),
    /// The member's directory as read at `revision`: replaces the set.
    Snapshot {
        revision: i64,
        entries: Arc<Vec<Entry>>,
    },
    /// The stream resumed from the revision after `revision`: the keys of the member's
    /// directory at `revision` with the revisions of their last change, sorted.
    Check {
        revision: i64,
        keys: Arc<Vec<(Vec<u8>, i64)>>,
    },
    /// The watch is lost and resuming it or reading the prefix again failed: publish the
    /// error (unless another message already follows it: then it is stale, and skipped).
    Failed(Error),
}

enum Cmd {
    Join {
        id: u64,
        service: Vec<u8>,
        tx: mpsc::UnboundedSender<Msg>,
        ack: oneshot::Sender<Result<i64>>,
    },
    Leave {
        id: u64,
        service: Vec<u8>,
    },
}

/// The shared watch of one client: a task, and the handle that ends it when dropped.
pub(crate) struct Hub {
    cmds: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    next_id: AtomicU64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("members", &self.counters.members.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The last member is gone: end the task, which drops (cancels) the watch.
        self.task.abort();
    }
}

impl Hub {
    /// Starts the (idle) task of `client`'s shared watch: it opens the watch on the first
    /// join. Must be called inside a tokio runtime.
    pub(crate) fn start(client: Client) -> Arc<Hub> {
        let (cmds, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let runner = Runner {
            root: format!("{}/", client.prefix()),
            moves: client.moves(),
            client,
            members: HashMap::new(),
            watch: None,
            revision: 0,
            cluster_id: None,
            watch_endpoint: None,
            quick_restarts: 0,
            backoff: Backoff::default(),
            retry_at: None,
            resume_retry: None,
            last_error: None,
            counters: counters.clone(),
        };
        let task = tokio::spawn(runner.run(rx));
        Arc::new(Hub {
            cmds,
            task,
            counters,
            next_id: AtomicU64::new(0),
        })
    }

    /// Whether the task has ended (it panicked, or its runtime shut down).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub(crate) fn stats(&self) -> SharedWatchStats {
        let c = &self.counters;
        SharedWatchStats {
            members: c.members.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            full_reads: c.full_reads.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }

    /// Joins the watch for `service`: from the answer on, the changes of its directory are
    /// buffered in the returned member's channel; the revision is the last one the watch had
    /// delivered then. Fails when the watch cannot be opened.
    async fn join(&self, service: &str) -> Result<(Member, i64)> {
        let ended = || Error::unavailable(BACKEND, "the shared watch ended");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let service = service.as_bytes().to_vec();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack, answer) = oneshot::channel();
        self.cmds
            .send(Cmd::Join {
                id,
                service: service.clone(),
                tx,
                ack,
            })
            .map_err(|_| ended())?;
        let revision = answer.await.map_err(|_| ended())??;
        let member = Member {
            id,
            service,
            rx,
            cmds: self.cmds.clone(),
        };
        Ok((member, revision))
    }
}

/// One instancer's membership: leaves the watch when dropped.
struct Member {
    id: u64,
    service: Vec<u8>,
    rx: mpsc::UnboundedReceiver<Msg>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Leave {
            id: self.id,
            service: std::mem::take(&mut self.service),
        });
    }
}

/// After this many watches in a row that ended without delivering an event, the watch backs
/// off instead of re-watching at once.
const QUICK_RESTARTS: u32 = 3;

/// The service a key belongs to: the path segment after `root` (`<prefix>/`), when a `/`
/// follows it. `svc` and `svc2` are different segments, so their keys never mix.
pub(crate) fn service_of<'k>(root: &[u8], key: &'k [u8]) -> Option<&'k [u8]> {
    let rest = key.strip_prefix(root)?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    (slash > 0).then(|| &rest[..slash])
}

/// Whether the shared watch can route `service`'s keys: one non-empty path segment (the
/// keys of `a/b` would be routed to `a`).
pub(crate) fn routable(service: &str) -> bool {
    !service.is_empty() && !service.contains('/')
}

type Members = HashMap<Vec<u8>, Vec<(u64, mpsc::UnboundedSender<Msg>)>>;

/// The task of the shared watch.
struct Runner {
    client: Client,
    /// `<prefix>/`.
    root: String,
    members: Members,
    watch: Option<WatchStream>,
    /// The last revision delivered (or read): the stream resumes after it.
    revision: i64,
    cluster_id: Option<u64>,
    watch_endpoint: Option<usize>,
    moves: tokio::sync::watch::Receiver<(u64, usize)>,
    quick_restarts: u32,
    backoff: Backoff,
    /// When the watch is lost with members waiting: when to resume or read again.
    retry_at: Option<tokio::time::Instant>,
    /// Why the watch ended, while resuming it failed on an error that may pass (no member
    /// reachable, an election): at `retry_at`, or when an instancer joins, the watch tries
    /// to resume again before it reads the prefix.
    resume_retry: Option<String>,
    last_error: Option<Error>,
    counters: Arc<Counters>,
}

impl Runner {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let Some(stream) = self.watch.as_mut() else {
                let retry_at = self.retry_at.filter(|_| !self.members.is_empty());
                let cmd = match retry_at {
                    // Idle (no member): wait for a join.
                    None => cmds.recv().await,
                    Some(at) => tokio::select! {
                        cmd = cmds.recv() => cmd,
                        _ = tokio::time::sleep_until(at) => {
                            match self.resume_retry.take() {
                                Some(why) => self.lost(why).await,
                                None => self.resync("retrying after a failure".into()).await,
                            }
                            continue;
                        }
                    },
                };
                match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                }
                continue;
            };
            tokio::select! {
                // Commands first: a member that left is gone before the next event is routed.
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                },
                next = stream.message() => self.on_message(next).await,
                // Another request found the endpoint dead or frozen and the client moved:
                // resume the watch on the new one, once for all members.
                _ = self.moves.changed() => {
                    let (_, given_up) = *self.moves.borrow_and_update();
                    if self.watch_endpoint.is_some_and(|e| e != given_up) {
                        continue;
                    }
                    self.lost("the client moved to another endpoint".into()).await;
                }
            }
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join {
                id,
                service,
                tx,
                ack,
            } => {
                if self.watch.is_none() {
                    if self.members.is_empty() {
                        self.open().await;
                    } else if let Some(why) = self.resume_retry.take() {
                        // Members are waiting for the watch to resume: try it now (the new
                        // member reads its own directory after joining either way).
                        self.lost(why).await;
                    } else {
                        // Members are waiting for a re-read: try it now.
                        self.resync("a new member joined".into()).await;
                    }
                }
                if self.watch.is_none() {
                    let e = self.last_error.clone().unwrap_or_else(|| {
                        Error::unavailable(BACKEND, "the shared watch is not open")
                    });
                    let _ = ack.send(Err(e));
                    return;
                }
                if ack.send(Ok(self.revision)).is_ok() {
                    self.members.entry(service).or_default().push((id, tx));
                    self.count_members();
                }
            }
            Cmd::Leave { id, service } => {
                if let Some(list) = self.members.get_mut(&service) {
                    list.retain(|(i, _)| *i != id);
                    if list.is_empty() {
                        self.members.remove(&service);
                    }
                }
                self.count_members();
            }
        }
    }

    fn count_members(&self) {
        let n = self.members.values().map(Vec::len).sum();
        self.counters.members.store(n, Ordering::Relaxed);
    }

    /// Opens the watch from the current revision (no member yet: nothing to read).
    async fn open(&mut self) {
        self.moves.borrow_and_update();
        match self.client.watch_prefix(&self.root, 0).await {
            Ok(Ok(w)) => {
                self.counters.opened.fetch_add(1, Ordering::Relaxed);
                self.revision = w.revision;
                self.cluster_id = Some(w.cluster_id);
                self.watch_endpoint = w.endpoint;
                self.watch = Some(w.stream);
                self.quick_restarts = 0;
                self.retry_at = None;
                self.last_error = None;
                tracing::debug!(backend = BACKEND, prefix = %self.root, revision = w.revision,
                    "shared watch opened");
            }
            Ok(Err(compacted)) => {
                self.last_error = Some(Error::unavailable(
                    BACKEND,
                    format!("shared watch: compacted up to {compacted} at creation"),
                ));
            }
            Err(e) => self.last_error = Some(e),
        }
    }

    async fn on_message(
        &mut self,
        next: std::result::Result<Option<WatchResponse>, etcd_client::Error>,
    ) {
        let resp = match next {
            Err(e) => return self.lost(format!("shared watch: {e}")).await,
            Ok(None) => return self.lost("the shared watch stream ended".into()).await,
            Ok(Some(resp)) => resp,
        };
        if resp.canceled() {
            let why = if resp.compact_revision() > 0 {
                tracing::warn!(backend = BACKEND, prefix = %self.root,
                    compact_revision = resp.compact_revision(),
                    "shared watch revision compacted; reading the prefix again");
                self.quick_restarts = 0;
                format!(
                    "shared watch cancelled: compacted up to revision {}",
                    resp.compact_revision()
                )
            } else {
                format!("shared watch cancelled by etcd: {:?}", resp.cancel_reason())
            };
            self.watch = None;
            return self.restart(why).await;
        }
        if resp.events().is_empty() {
            return; // a progress notification
        }
        self.quick_restarts = 0;
        self.route(&resp);
    }

    /// Hands each event to the members of its key's service.
    fn route(&mut self, resp: &WatchResponse) {
        let root = self.root.as_bytes();
        let mut batches: HashMap<&[u8], Vec<Change>> = HashMap::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let Some(service) = service_of(root, kv.key()) else {
                continue;
            };
            if !self.members.contains_key(service) {
                continue;
            }
            batches.entry(service).or_default().push(Change {
                key: kv.key().to_vec(),
                value: match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                },
                mod_revision: kv.mod_revision(),
            });
        }
        self.counters
            .events
            .fetch_add(resp.events().len() as u64, Ordering::Relaxed);
        let batches: Vec<(Vec<u8>, Arc<Vec<Change>>)> = batches
            .into_iter()
            .map(|(s, b)| (s.to_vec(), Arc::new(b)))
            .collect();
        for (service, batch) in batches {
            self.send(&service, |_| Msg::Changes(batch.clone()));
        }
    }

    /// Sends `msg(service)` to every member of `service`, forgetting the ones gone.
    fn send(&mut self, service: &[u8], msg: impl Fn(&[u8]) -> Msg) {
        let Some(list) = self.members.get_mut(service) else {
            return;
        };
        list.retain(|(_, tx)| tx.send(msg(service)).is_ok());
        if list.is_empty() {
            self.members.remove(service);
            self.count_members();
        }
    }

    fn services(&self) -> Vec<Vec<u8>> {
        self.members.keys().cloned().collect()
    }

    /// The stream broke, or the client moved: resume from the last revision if possible,
    /// else read again. When etcd cannot answer now (no member reachable, an election),
    /// every member publishes the error and the watch tries to resume again after the
    /// backoff: the revision delivered is still good, and a read would fail the same way.
    async fn lost(&mut self, why: String) {
        self.watch = None;
        self.resume_retry = None;
        match self.resume(&why).await {
            Resume::Resumed => {
                self.retry_at = None;
                self.last_error = None;
                self.backoff.reset();
            }
            Resume::Read => self.restart(why).await,
            Resume::Later(e) => {
                self.fail(with_context(e, &why, "resuming the shared watch"));
                self.resume_retry = Some(why);
            }
        }
    }

    /// Resumes the watch from the revision after the last one delivered, when etcd confirms
    /// it as the same cluster, not behind, with the history held (see the module docs).
    async fn resume(&mut self, why: &str) -> Resume {
        if self.revision <= 0 || self.cluster_id.is_none() || self.quick_restarts >= QUICK_RESTARTS
        {
            return Resume::Read;
        }
        // The first requests after the connection broke under the stream can fail on the
        // broken connection: one more attempt, on a new one.
        for attempt in 0..2 {
            match self.try_resume(why).await {
                Ok(true) => return Resume::Resumed,
                Ok(false) => return Resume::Read,
                Err(e) if attempt == 0 && e.is_transient() => continue,
                Err(e) => {
                    tracing::debug!(backend = BACKEND, prefix = %self.root, reason = %why, error = %e,
                        "shared watch ended; resuming failed");
                    return Resume::after_error(e);
                }
            }
        }
        Resume::Read
    }

    /// One attempt of [`resume`](Self::resume): `Ok(false)` when etcd answered but the
    /// watch cannot resume (another cluster, behind, compacted).
    async fn try_resume(&mut self, why: &str) -> Result<bool> {
        // Every key under the prefix at our revision, keys only: each member checks its
        // directory's part against what it holds. (Compacted: an error, read again.)
        let keys = self.client.keys_at(&self.root, self.revision).await?;
        // Moves made until now (this request's own included) are answered by this watch.
        self.moves.borrow_and_update();
        match self
            .client
            .watch_prefix(&self.root, self.revision + 1)
            .await?
        {
            Ok(w) if Some(w.cluster_id) == self.cluster_id && w.revision >= self.revision => {
                self.quick_restarts += 1;
                self.counters.resumes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = BACKEND, prefix = %self.root, reason = %why,
                    from = self.revision + 1, "shared watch ended; resumed from the last revision");
                self.watch_endpoint = w.endpoint;
                self.watch = Some(w.stream);
                let mut by_service: HashMap<Vec<u8>, Vec<(Vec<u8>, i64)>> = HashMap::new();
                let root = self.root.as_bytes();
                for (key, rev) in keys {
                    if let Some(s) = service_of(root, &key) {
                        if self.members.contains_key(s) {
                            let s = s.to_vec();
                            by_service.entry(s).or_default().push((key, rev));
                        }
                    }
                }
                let revision = self.revision;
                for service in self.services() {
                    let keys = Arc::new(by_service.remove(&service).unwrap_or_default());
                    self.send(&service, |_| Msg::Check {
                        revision,
                        keys: keys.clone(),
                    });
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The watch is gone and cannot be resumed: read again at once, unless watches keep
    /// ending without an event (then back off).
    async fn restart(&mut self, why: String) {
        self.watch = None;
        self.quick_restarts += 1;
        if self.quick_restarts > QUICK_RESTARTS {
            self.quick_restarts = 0;
            tracing::warn!(backend = BACKEND, prefix = %self.root, reason = %why,
                "{QUICK_RESTARTS} shared watches in a row ended without an event, backing off");
            self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
            return;
        }
        self.resync(why).await;
    }

    /// Reads the whole prefix at R, watches from R+1, and hands every member its directory
    /// as of R. On failure, every member publishes the error and the watch retries later.
    async fn resync(&mut self, why: String) {
        self.watch = None;
        if self.members.is_empty() {
            // Nobody to hand a snapshot to: the next join opens a fresh watch.
            self.retry_at = None;
            return;
        }
        let failed = |e: Error| with_context(e, &why, "reading again");
        let (revision, entries) = match self.client.get_prefix(&self.root).await {
            Ok(r) if r.0 > 0 => r,
            Ok((r, _)) => {
                return self.fail(Error::malformed(
                    BACKEND,
                    format!("get answered without a sane revision ({r})"),
                ))
            }
            Err(e) => return self.fail(failed(e)),
        };
        self.moves.borrow_and_update();
        match self.client.watch_prefix(&self.root, revision + 1).await {
            Ok(Ok(w)) => {
                self.counters.full_reads.fetch_add(1, Ordering::Relaxed);
                self.revision = revision;
                self.cluster_id = Some(w.cluster_id);
                self.watch_endpoint = w.endpoint;
                self.watch = Some(w.stream);
                self.retry_at = None;
                self.last_error = None;
                self.backoff.reset();
            }
            Ok(Err(compacted)) => {
                return self.fail(Error::unavailable(
                    BACKEND,
                    format!(
                        "{why}; revision {} compacted (up to {compacted}) before the shared watch could start",
                        revision + 1
                    ),
                ))
            }
            Err(e) => return self.fail(failed(e)),
        }
        tracing::debug!(backend = BACKEND, prefix = %self.root, revision, keys = entries.len(),
            reason = %why, "shared watch: prefix read again, watching");
        let root = self.root.as_bytes();
        let mut by_service: HashMap<Vec<u8>, Vec<Entry>> = HashMap::new();
        for e in entries {
            if let Some(s) = service_of(root, &e.raw_key) {
                if self.members.contains_key(s) {
                    let s = s.to_vec();
                    by_service.entry(s).or_default().push(e);
                }
            }
        }
        for service in self.services() {
            let entries = Arc::new(by_service.remove(&service).unwrap_or_default());
            self.send(&service, |_| Msg::Snapshot {
                revision,
                entries: entries.clone(),
            });
        }
    }

    /// Reading again failed: every member publishes `e`; retry after the backoff.
    fn fail(&mut self, e: Error) {
        tracing::warn!(backend = BACKEND, prefix = %self.root, error = %e, "shared watch lost");
        for service in self.services() {
            self.send(&service, |_| Msg::Failed(e.clone()));
        }
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
        self.last_error = Some(e);
    }
}

/// One service's share of its client's shared watch, as a [`Source`] (see the
/// [module docs](self)): joins, reads its own directory, then applies the changes, snapshots
/// and checks the watch hands it.
pub struct SharedSource {
    client: Client,
    hub: Arc<Hub>,
    pub(crate) query: ServiceQuery,
    pub(crate) dir: String,
    member: Option<Member>,
    /// The decoded instances by raw key bytes.
    entries: BTreeMap<Vec<u8>, Instance>,
    /// Every key of the directory (decodable or not) and the revision of its last change.
    mod_revs: BTreeMap<Vec<u8>, i64>,
    /// The revision up to which the directory's changes are applied: changes at or below it
    /// are already in the set.
    revision: i64,
    /// Changes applied but not published yet (a failure came first).
    dirty: bool,
    /// The last round failed (the watch was lost), or a stale failure was skipped: the next
    /// message from the watch means it is back, and the set is published again even when
    /// unchanged, so subscribers see the recovery.
    failed: bool,
    after_get: Option<AfterGet>,
    after_join: Option<AfterGet>,
    stats: Arc<SourceStats>,
    _live: LiveGuard,
}

impl fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSource")
            .field("dir", &self.dir)
            .field("query", &self.query)
            .field("entries", &self.entries.len())
            .field("joined", &self.member.is_some())
            .finish()
    }
}

/// At most this many already-arrived messages are applied together before publishing.
const COALESCE_MAX: usize = 1024;

impl SharedSource {
    /// A source for `query` on `client`'s shared watch (started by the first one). Must be
    /// called inside a tokio runtime.
    pub fn new(client: Client, query: ServiceQuery) -> Self {
        let hub = client.shared_hub();
        let dir = client.service_dir(&query.service);
        let live = client.live_guard();
        SharedSource {
            client,
            hub,
            query,
            dir,
            member: None,
            entries: BTreeMap::new(),
            mod_revs: BTreeMap::new(),
            revision: 0,
            dirty: false,
            failed: false,
            after_get: None,
            after_join: None,
            stats: Arc::default(),
            _live: live,
        }
    }

    /// Runs `hook` after each read of the instancer's own directory (at the revision it is
    /// given), before the changes buffered meanwhile are applied. For tests.
    #[must_use]
    pub fn after_get(mut self, hook: AfterGet) -> Self {
        self.after_get = Some(hook);
        self
    }

    /// Runs `hook` each time the source has joined the shared watch (with the last revision
    /// the watch had delivered), before it reads its own directory. For tests.
    #[must_use]
    pub fn after_join(mut self, hook: AfterGet) -> Self {
        self.after_join = Some(hook);
        self
    }

    /// The counters this source updates (reads: its own and the snapshots it was handed;
    /// changes applied one by one).
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// The directory watched: `<prefix>/<service>/`.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Option<Instance> {
        let key = String::from_utf8_lossy(key);
        let id = key.strip_prefix(self.dir.as_str()).unwrap_or(&key);
        match decode_value(id, value) {
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

    /// Replaces the set with the directory as read at `revision`.
    fn load(&mut self, revision: i64, entries: &[Entry]) {
        self.stats.full_reads.fetch_add(1, Ordering::Relaxed);
        self.revision = revision;
        let mut decoded = BTreeMap::new();
        for e in entries {
            if let Some(i) = self.decode(&e.raw_key, &e.value) {
                decoded.insert(e.raw_key.clone(), i);
            }
        }
        self.entries = decoded;
        self.mod_revs = entries
            .iter()
            .map(|e| (e.raw_key.clone(), e.mod_revision))
            .collect();
    }

    /// Reads the own directory (a member already: changes from now on are buffered).
    async fn read_own(&mut self) -> Result<()> {
        let (revision, entries) = self.client.get_prefix(&self.dir).await?;
        if revision <= 0 {
            return Err(Error::malformed(
                BACKEND,
                format!("get answered without a sane revision ({revision})"),
            ));
        }
        self.load(revision, &entries);
        if let Some(hook) = &self.after_get {
            hook(revision).await;
        }
        Ok(())
    }

    async fn join(&mut self) -> Step {
        if !routable(&self.query.service) {
            return Step::Fail(Error::config(format!(
                "etcd: the shared watch routes keys by their first path segment: service \
                 name {:?} must be one non-empty segment, without '/' (use a watch of its own)",
                self.query.service
            )));
        }
        if self.hub.is_finished() {
            self.hub = self.client.shared_hub();
        }
        match self.hub.join(&self.query.service).await {
            Ok((member, revision)) => {
                self.member = Some(member);
                if let Some(hook) = &self.after_join {
                    hook(revision).await;
                }
            }
            Err(e) => return Step::Fail(e),
        }
        match self.read_own().await {
            Ok(()) => {
                tracing::debug!(backend = BACKEND, dir = %self.dir, revision = self.revision,
                    "joined the shared watch");
                Step::Publish(self.current())
            }
            Err(e) => {
                self.member = None;
                Step::Fail(e)
            }
        }
    }

    /// Applies one message; whether the set may have changed.
    async fn handle(&mut self, msg: Msg) -> Result<bool> {
        match msg {
            Msg::Changes(changes) => {
                let mut applied = 0;
                for c in changes.iter() {
                    if c.mod_revision <= self.revision {
                        continue; // already in the read this member joined with
                    }
                    applied += 1;
                    self.revision = c.mod_revision;
                    match &c.value {
                        Some(value) => {
                            self.mod_revs.insert(c.key.clone(), c.mod_revision);
                            match self.decode(&c.key, value) {
                                Some(i) => {
                                    self.entries.insert(c.key.clone(), i);
                                }
                                None => {
                                    self.entries.remove(&c.key);
                                }
                            }
                        }
                        None => {
                            self.mod_revs.remove(&c.key);
                            self.entries.remove(&c.key);
                        }
                    }
                }
                self.stats.events.fetch_add(applied, Ordering::Relaxed);
                Ok(applied > 0)
            }
            Msg::Snapshot { revision, entries } if revision < self.revision => {
                // The watch read the prefix before this member read its own directory
                // (it joined meanwhile): the snapshot is older than the set, which must not
                // go back. (Or the server lost its history.) Read the directory again, now:
                // what the new watch delivers up to that read is skipped.
                tracing::debug!(backend = BACKEND, dir = %self.dir, revision,
                    applied = self.revision, "snapshot older than the set: reading again");
                drop(entries);
                if let Err(e) = self.read_own().await {
                    self.member = None;
                    return Err(e);
                }
                Ok(true)
            }
            Msg::Snapshot { revision, entries } => {
                self.load(revision, &entries);
                Ok(true)
            }
            Msg::Check { revision, keys } => {
                let same = keys.len() == self.mod_revs.len()
                    && keys
                        .iter()
                        .zip(&self.mod_revs)
                        .all(|((k, r), (k2, r2))| k == k2 && r == r2);
                if same {
                    self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                tracing::warn!(backend = BACKEND, dir = %self.dir, revision,
                    "shared watch resumed; the endpoint's history of this directory differs \
                     from what was applied: reading it again");
                if let Err(e) = self.read_own().await {
                    // Its base is wrong: leave, and join again (and read) next round.
                    self.member = None;
                    return Err(e);
                }
                Ok(true)
            }
            Msg::Failed(e) => Err(e),
        }
    }
}

#[async_trait]
impl Source for SharedSource {
    async fn next_step(&mut self) -> Step {
        loop {
            let Some(member) = self.member.as_mut() else {
                return self.join().await;
            };
            if self.dirty {
                self.dirty = false;
                return Step::Publish(self.current());
            }
            let Some(first) = member.rx.recv().await else {
                self.member = None;
                return Step::Fail(Error::unavailable(BACKEND, "the shared watch ended"));
            };
            let mut changed = false;
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                // A failure the watch has moved past (another message is queued after it:
                // the watch is back, or failed again) is not published, only the last one:
                // each published failure costs this member a backoff, and a member still
                // working through a queue of them (the watch hands one to every member each
                // time it fails, and joins during an outage make it try, and fail, more
                // often) would publish the recovery minutes after the watch is back.
                if matches!(msg, Msg::Failed(_)) {
                    if let Some(later) = self.member.as_mut().and_then(|m| m.rx.try_recv().ok()) {
                        self.failed = true;
                        next = Some(later);
                        continue;
                    }
                }
                match self.handle(msg).await {
                    Ok(c) => changed |= c,
                    Err(e) => {
                        // The watch's re-read failed (it retries by itself, and hands a
                        // snapshot when it succeeds), or this member's own re-read did (it
                        // left: it joins again next round).
                        self.dirty = changed;
                        self.failed = true;
                        return Step::Fail(e);
                    }
                }
                handled += 1;
                if handled >= COALESCE_MAX {
                    break;
                }
                next = self.member.as_mut().and_then(|m| m.rx.try_recv().ok());
            }
            if changed || self.failed {
                self.failed = false;
                return Step::Publish(self.current());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_to_their_whole_service_segment() {
        let root = b"/services/";
        assert_eq!(service_of(root, b"/services/svc/a"), Some(&b"svc"[..]));
        assert_eq!(service_of(root, b"/services/svc2/a"), Some(&b"svc2"[..]));
        assert_eq!(service_of(root, b"/services/svc/a/b"), Some(&b"svc"[..]));
        assert_eq!(service_of(root, b"/services/svc/"), Some(&b"svc"[..]));
        assert_eq!(service_of(root, b"/services/svc"), None);
        assert_eq!(service_of(root, b"/services//a"), None);
        assert_eq!(service_of(root, b"/servicesX/svc/a"), None);
        assert_eq!(service_of(b"/", b"/svc/a"), Some(&b"svc"[..]));
    }

    #[test]
    fn modes() {
        assert!(WatchMode::Auto { shared_after: 0 }.validate().is_err());
        assert!(WatchMode::Auto {
            shared_after: MAX_SHARED_AFTER + 1
        }
        .validate()
        .is_err());
        let auto = WatchMode::default().validate().unwrap();
        assert!(!auto.shares(DEFAULT_SHARED_AFTER - 1));
        assert!(auto.shares(DEFAULT_SHARED_AFTER));
        assert!(WatchMode::Shared.shares(0));
        assert!(!WatchMode::Own.shares(1_000));
    }
}
