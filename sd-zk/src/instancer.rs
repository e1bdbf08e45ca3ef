//! The instancer: a service directory's children and their data, kept current by a watch.
//!
//! [`ZkSource`] is a [`Source`] on sd-core's shared watch loop. A round either (re)reads the
//! whole directory — arming the watch **first**, then listing the children and reading every
//! child's data concurrently (all requests pipelined on the session) — or waits for the next
//! watch event and applies it.
//!
//! ## Persistent recursive watch (ZooKeeper 3.6+), one-shot otherwise
//!
//! By default ([`WatchMode::Auto`]) the instancer adds one persistent recursive watch on the
//! service directory. It stays armed across events, so there is no window between an event
//! and re-arming in which a change could be coalesced away, and each event names the child
//! that changed: a new or changed node costs one read, a deleted node none, instead of
//! re-reading every child (go-kit re-reads them all, ZK-4). It also reports a child's *data*
//! changes, which go-kit's child watch never sees (ZK-9). Events that happen while the
//! connection is down are not replayed by the server (ZOOKEEPER-4698), so after every
//! reconnection the directory is read again in full.
//!
//! A server older than 3.6 answers the watch request with "unimplemented"; the instancer then
//! switches to one-shot watches for good: a children watch on the directory plus a data watch
//! on each child, all re-armed by a full read after any of them fires (or, while the
//! directory does not exist, an existence watch on it). [`WatchMode::Oneshot`] forces this
//! mode, [`WatchMode::Persistent`] forbids the fallback.
//!
//! ## Errors (fixes ZK-9)
//!
//! A lost connection is published as an error event at once (the last good set stays with
//! the subscribers) and the instancer waits for the session to come back; any failed read,
//! and a session that ends, drops the watch, publishes the error, and the next round re-arms
//! and re-reads after the loop's backoff. go-kit instead keeps the nil watch channel of the
//! failed call and never wakes again.
//!
//! ## What is read (ZK-10)
//!
//! Each child's data is either sdkit's JSON payload (see [`decode`]) or go-kit's plain
//! `host:port` (a `scheme://host:port` URL is accepted too). A child whose data is neither is
//! skipped alone, its reason logged once. Nothing is written unless
//! [`ClientConfig::create_parents`](crate::ClientConfig::create_parents) asks for go-kit's
//! behaviour of creating the watched path (ZK-8).
//!
//! ## Propagation delay
//!
//! Each round reports, through [`Source::changed_at`], the latest `mtime` of the nodes it
//! created or changed (the ZooKeeper server's time of the write), so the watch loop records
//! `sdkit_instancer_propagation_delay_seconds` with the `metrics` feature. The first read
//! reports nothing (it finds registrations, not changes), nor does a round that only removed
//! nodes (ZooKeeper keeps no time for a deletion).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::FutureExt;
use sd_core::{
    Backoff, Error, Event, Health, Instance, Instancer, LoopConfig, ServiceQuery, Source, Step,
    Subscription, WatchedInstancer,
};
use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::client::{zk_error, Client, WatchMode, BACKEND};

/// The largest number of watch events applied in one round before publishing.
const MAX_BATCH: usize = 4096;

/// sdkit's JSON payload of a znode: the whole [`Instance`].
///
/// ```json
/// {"host":"10.0.0.1","port":8080,"id":"web-1","tags":["v2"],"meta":{"zone":"a"},"weight":5,"health":"passing"}
/// ```
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InstanceJson {
    /// The host (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The registration's instance id.
    #[serde(default)]
    pub id: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// `passing`, `warning`, `critical` or `unknown` (default `passing`).
    #[serde(default = "passing")]
    pub health: String,
}

fn one() -> u32 {
    1
}

fn passing() -> String {
    Health::Passing.as_str().to_string()
}

impl InstanceJson {
    /// The payload of `instance`, registered under `id`.
    pub fn from_instance(instance: &Instance, id: &str) -> Self {
        InstanceJson {
            host: instance.host().to_string(),
            port: instance.port(),
            id: id.to_string(),
            tags: instance.tags().to_vec(),
            meta: instance.meta().to_map(),
            weight: instance.weight(),
            health: instance.health().as_str().to_string(),
        }
    }
}

fn parse_health(s: &str) -> Health {
    match s {
        "passing" => Health::Passing,
        "warning" => Health::Warning,
        "critical" => Health::Critical,
        _ => Health::Unknown,
    }
}

/// Decodes a child's data: sdkit's JSON payload ([`InstanceJson`]) when it starts with `{`,
/// else go-kit's plain `host:port` or `scheme://host:port` (ZK-10), whose id is the znode
/// name. Fails, with the reason, on anything else.
pub fn decode(node: &str, data: &[u8]) -> Result<Instance, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("data is not UTF-8: {e}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty data".into());
    }
    if text.starts_with('{') {
        let j: InstanceJson =
            serde_json::from_str(text).map_err(|e| format!("bad JSON payload: {e}"))?;
        if j.host.trim().is_empty() {
            return Err("JSON payload has an empty host".into());
        }
        if j.port == 0 {
            return Err("JSON payload has port 0".into());
        }
        let id = if j.id.is_empty() {
            node.to_string()
        } else {
            j.id
        };
        let host = sd_core::instance::usable_host(j.host.trim())
            .map_err(|e| format!("JSON payload: {e}"))?;
        let mut b = Instance::builder(host, j.port)
            .id(id)
            .tags(j.tags)
            .weight(j.weight)
            .health(parse_health(&j.health));
        for (k, v) in j.meta {
            b = b.meta(k, v);
        }
        return Ok(b.build());
    }
    let parsed = Instance::parse(text).map_err(|e| e.to_string())?;
    if parsed.port() == 0 {
        return Err(format!("{text:?} has port 0"));
    }
    Ok(parsed.to_builder().id(node).build())
}

type EventFuture = Pin<Box<dyn Future<Output = zk::WatchedEvent> + Send>>;

/// A child's data, and its data watch in one-shot mode.
type DataAndWatch = (Vec<u8>, i64, Option<zk::OneshotWatcher>);

/// What the source waits on between reads.
enum Armed {
    /// One persistent recursive watch on the directory.
    Persistent(zk::PersistentWatcher),
    /// The first of several one-shot watches to fire.
    Oneshot(EventFuture),
}

/// One service directory as a [`Source`]: see the [module docs](self).
pub struct ZkSource {
    client: Client,
    query: ServiceQuery,
    dir: String,
    mode: WatchMode,
    session: Option<zk::Client>,
    state: Option<zk::StateWatcher>,
    armed: Option<Armed>,
    disconnected: bool,
    /// Child name → its decoded instance (`None`: undecodable, reason already logged).
    nodes: BTreeMap<String, Option<Instance>>,
    /// The latest `mtime` (ms since the epoch, the server's clock) of the nodes this round
    /// created or changed; see [`Source::changed_at`].
    round_mtime: Option<i64>,
}

impl fmt::Debug for ZkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkSource")
            .field("dir", &self.dir)
            .field("query", &self.query)
            .field("mode", &self.mode)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// Awaits a watch future, turning a panic inside the ZooKeeper library (it unwraps closed
/// channels) into `None` instead of ending the instancer.
pub(crate) async fn guarded<T>(f: impl Future<Output = T>) -> Option<T> {
    AssertUnwindSafe(f).catch_unwind().await.ok()
}

impl ZkSource {
    /// A source for `query` under `client`'s base path. Nothing is read until the first round.
    pub fn new(client: Client, query: ServiceQuery) -> Self {
        let dir = client.service_dir(&query.service);
        let mode = client.config().watch;
        ZkSource {
            client,
            query,
            dir,
            mode,
            session: None,
            state: None,
            armed: None,
            disconnected: false,
            nodes: BTreeMap::new(),
            round_mtime: None,
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The watch mode in use (after an `Auto` fallback, `Oneshot`).
    pub fn mode(&self) -> WatchMode {
        self.mode
    }

    fn child_path(&self, child: &str) -> String {
        format!("{}/{child}", self.dir)
    }

    fn fail(&mut self, e: Error) -> Step {
        self.armed = None;
        Step::Fail(e)
    }

    fn publish(&self) -> Step {
        Step::Publish(
            self.nodes
                .values()
                .flatten()
                .filter(|i| self.query.matches(i))
                .cloned()
                .collect(),
        )
    }

    /// Stores a node read this round, created or changed at `mtime` (its `Stat`).
    fn store(&mut self, child: String, data: &[u8], mtime: i64) {
        self.round_mtime = Some(self.round_mtime.map_or(mtime, |m| m.max(mtime)));
        match decode(&child, data) {
            Ok(i) => {
                self.nodes.insert(child, Some(i));
            }
            Err(reason) => {
                tracing::warn!(backend = BACKEND, service = %self.query.service,
                    node = %self.child_path(&child), %reason, "skipping an unusable node");
                self.nodes.insert(child, None);
            }
        }
    }

    /// Arms the watch and reads the whole directory.
    async fn resync(&mut self) -> Step {
        self.armed = None;
        let zk = match self.client.session().await {
            Ok(zk) => zk,
            Err(e) => return self.fail(e),
        };
        self.state = Some(zk.state_watcher());
        self.disconnected = false;
        if self.client.config().create_parents {
            if let Err(e) = self.client.create_parents(&zk, &self.dir).await {
                return self.fail(e);
            }
        }
        let result = match self.mode {
            WatchMode::Auto | WatchMode::Persistent => self.read_persistent(&zk).await,
            WatchMode::Oneshot => self.read_oneshot(&zk).await,
        };
        self.session = Some(zk);
        match result {
            Ok(()) => self.publish(),
            Err(e) => self.fail(e),
        }
    }

    async fn read_persistent(&mut self, zk: &zk::Client) -> sd_core::Result<()> {
        match zk
            .watch(&self.dir, zk::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => self.armed = Some(Armed::Persistent(w)),
            Err(zk::Error::Unimplemented) if self.mode == WatchMode::Auto => {
                tracing::info!(backend = BACKEND, dir = %self.dir,
                    "the server has no persistent watches (before 3.6); using one-shot watches");
                self.mode = WatchMode::Oneshot;
                return self.read_oneshot(zk).await;
            }
            Err(e) => return Err(zk_error(format!("watching {}", self.dir), e)),
        }
        let children = match zk.list_children(&self.dir).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(zk_error(format!("listing {}", self.dir), e)),
        };
        self.read_all(zk, children, false).await?;
        Ok(())
    }

    async fn read_oneshot(&mut self, zk: &zk::Client) -> sd_core::Result<()> {
        // Two tries: the directory may appear between the listing and the existence check.
        for _ in 0..2 {
            let (children, dir_watch) = match zk.list_and_watch_children(&self.dir).await {
                Ok(x) => x,
                Err(zk::Error::NoNode) => match zk.check_and_watch_stat(&self.dir).await {
                    Ok((None, w)) => {
                        // Wait for the directory to appear.
                        self.nodes.clear();
                        self.armed = Some(Armed::Oneshot(Box::pin(w.changed())));
                        return Ok(());
                    }
                    Ok((Some(_), _)) => continue,
                    Err(e) => return Err(zk_error(format!("watching {}", self.dir), e)),
                },
                Err(e) => return Err(zk_error(format!("listing {}", self.dir), e)),
            };
            let mut watches: Vec<EventFuture> = vec![Box::pin(dir_watch.changed())];
            watches.extend(self.read_all(zk, children, true).await?);
            self.armed = Some(Armed::Oneshot(Box::pin(
                futures::future::select_all(watches).map(|(event, _, _)| event),
            )));
            return Ok(());
        }
        Err(Error::unavailable(
            BACKEND,
            format!(
                "listing {}: the directory keeps appearing and vanishing",
                self.dir
            ),
        ))
    }

    /// Reads (and with `watch`, watches) every child's data concurrently, replacing the set.
    async fn read_all(
        &mut self,
        zk: &zk::Client,
        children: Vec<String>,
        watch: bool,
    ) -> sd_core::Result<Vec<EventFuture>> {
        let paths: Vec<String> = children.iter().map(|c| self.child_path(c)).collect();
        let mut watches = Vec::new();
        let results: Vec<Result<DataAndWatch, zk::Error>> = if watch {
            futures::future::join_all(paths.iter().map(|p| zk.get_and_watch_data(p)))
                .await
                .into_iter()
                .map(|r| r.map(|(d, stat, w)| (d, stat.mtime, Some(w))))
                .collect()
        } else {
            futures::future::join_all(paths.iter().map(|p| zk.get_data(p)))
                .await
                .into_iter()
                .map(|r| r.map(|(d, stat)| (d, stat.mtime, None)))
                .collect()
        };
        let previous = std::mem::take(&mut self.nodes);
        for ((child, path), result) in children.into_iter().zip(&paths).zip(results) {
            match result {
                Ok((data, mtime, w)) => {
                    if let Some(w) = w {
                        watches.push(Box::pin(w.changed()) as EventFuture);
                    }
                    // Keep the decoded instance (and do not log again) when unchanged.
                    match previous.get(&child) {
                        Some(Some(i)) if decode(&child, &data).ok().as_ref() == Some(i) => {
                            self.nodes.insert(child, Some(i.clone()));
                        }
                        _ => self.store(child, &data, mtime),
                    }
                }
                // Deleted between the listing and the read: it is gone (go-kit skips it too).
                Err(zk::Error::NoNode) => {}
                Err(e) => {
                    self.nodes = previous;
                    return Err(zk_error(format!("reading {path}"), e));
                }
            }
        }
        Ok(watches)
    }

    /// Applies persistent-watch events (the first, then every one already queued).
    async fn apply_events(&mut self, first: zk::WatchedEvent) -> Step {
        let terminal = |ev: &zk::WatchedEvent| {
            ev.event_type == zk::EventType::Session && ev.session_state.is_terminated()
        };
        let mut pending = vec![first];
        if let Some(Armed::Persistent(w)) = self.armed.as_mut() {
            // After a terminal session event the library closes the channel, and polling it
            // again panics: stop there (and never let a panic out).
            while pending.len() < MAX_BATCH && !pending.last().is_some_and(terminal) {
                match std::panic::catch_unwind(AssertUnwindSafe(|| w.changed().now_or_never())) {
                    Ok(Some(ev)) => pending.push(ev),
                    Ok(None) => break,
                    Err(_) => {
                        return self.fail(Error::unavailable(
                            BACKEND,
                            format!("watching {}: the watch ended unexpectedly", self.dir),
                        ))
                    }
                }
            }
        }
        // The last event per child decides: read it again, or forget it.
        let mut reread: BTreeSet<String> = BTreeSet::new();
        let mut relist = false;
        for ev in pending {
            if ev.event_type == zk::EventType::Session {
                if ev.session_state.is_terminated() {
                    return self.fail(session_ended(ev.session_state));
                }
                // Connection changes are followed through the state watcher.
                continue;
            }
            if ev.path == self.dir {
                relist = true;
                continue;
            }
            let Some(child) = ev
                .path
                .strip_prefix(&self.dir)
                .and_then(|p| p.strip_prefix('/'))
                .filter(|c| !c.is_empty() && !c.contains('/'))
            else {
                continue; // a grandchild: not an instance
            };
            match ev.event_type {
                zk::EventType::NodeDeleted => {
                    self.nodes.remove(child);
                    reread.remove(child);
                }
                _ => {
                    reread.insert(child.to_string());
                }
            }
        }
        let Some(zk) = self.session.clone() else {
            return self.resync().await;
        };
        if relist {
            match zk.list_children(&self.dir).await {
                Ok(children) => {
                    let keep: BTreeSet<&String> = children.iter().collect();
                    self.nodes.retain(|c, _| keep.contains(c));
                    for c in children {
                        if !self.nodes.contains_key(&c) {
                            reread.insert(c);
                        }
                    }
                }
                Err(zk::Error::NoNode) => self.nodes.clear(),
                Err(e) => return self.fail(zk_error(format!("listing {}", self.dir), e)),
            }
        }
        let children: Vec<String> = reread.into_iter().collect();
        let paths: Vec<String> = children.iter().map(|c| self.child_path(c)).collect();
        let results = futures::future::join_all(paths.iter().map(|p| zk.get_data(p))).await;
        for ((child, path), result) in children.into_iter().zip(&paths).zip(results) {
            match result {
                Ok((data, stat)) => self.store(child, &data, stat.mtime),
                Err(zk::Error::NoNode) => {
                    self.nodes.remove(&child);
                }
                Err(e) => return self.fail(zk_error(format!("reading {path}"), e)),
            }
        }
        self.publish()
    }

    /// Waits for the next thing that matters: a node event, a lost or regained connection,
    /// the end of the session.
    async fn wait(&mut self) -> Step {
        loop {
            let state = self.state.as_mut();
            let armed = self.armed.as_mut();
            let (Some(state), Some(armed)) = (state, armed) else {
                return self.resync().await;
            };
            enum Woke {
                State(zk::SessionState),
                Node(Option<zk::WatchedEvent>),
            }
            let woke = if state.peek_state().is_terminated() {
                Woke::State(state.peek_state())
            } else {
                tokio::select! {
                    s = state.changed() => Woke::State(s),
                    ev = async {
                        match armed {
                            Armed::Persistent(w) => guarded(w.changed()).await,
                            Armed::Oneshot(f) => guarded(f).await,
                        }
                    } => Woke::Node(ev),
                }
            };
            match woke {
                Woke::State(s) if s.is_terminated() => return self.fail(session_ended(s)),
                Woke::State(zk::SessionState::Disconnected) => {
                    self.disconnected = true;
                    return Step::Fail(Error::unavailable(
                        BACKEND,
                        format!(
                            "watching {}: connection to ZooKeeper lost; reconnecting",
                            self.dir
                        ),
                    ));
                }
                Woke::State(_) if self.disconnected => {
                    // Events while disconnected are not replayed (ZOOKEEPER-4698): read all.
                    return self.resync().await;
                }
                Woke::State(_) => continue,
                Woke::Node(None) => {
                    return self.fail(Error::unavailable(
                        BACKEND,
                        format!("watching {}: the watch ended unexpectedly", self.dir),
                    ))
                }
                Woke::Node(Some(ev)) => {
                    if matches!(self.armed, Some(Armed::Oneshot(_))) {
                        if ev.event_type == zk::EventType::Session
                            && ev.session_state.is_terminated()
                        {
                            return self.fail(session_ended(ev.session_state));
                        }
                        // One-shot: re-arm and re-read everything.
                        return self.resync().await;
                    }
                    return self.apply_events(ev).await;
                }
            }
        }
    }
}

fn session_ended(state: zk::SessionState) -> Error {
    Error::unavailable(
        BACKEND,
        format!("ZooKeeper session ended ({state:?}); opening a new one"),
    )
}

#[async_trait]
impl Source for ZkSource {
    async fn next_step(&mut self) -> Step {
        self.round_mtime = None;
        if self.armed.is_none() {
            return self.resync().await;
        }
        self.wait().await
    }

    /// The latest `mtime` of the nodes the round created or changed (the server's time of
    /// the change). A round that only removed nodes has none: ZooKeeper keeps no time for a
    /// deletion. (The watch loop ignores the first read's.)
    fn changed_at(&self) -> Option<SystemTime> {
        sd_core::watch_loop::unix_millis(self.round_mtime?)
    }
}

/// Watches the instances of one service in ZooKeeper.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use sd_zk::{Client, ClientConfig, ZkInstancer};
/// use sd_core::{Instancer, ServiceQuery};
///
/// let client = Client::new(ClientConfig::new(["127.0.0.1:2181"]).base("/services"))?;
/// let instancer = ZkInstancer::start(client, ServiceQuery::new("web")).await;
/// let mut events = instancer.subscribe();
/// println!("{:?}", events.next().await); // the first read already ran
/// instancer.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ZkInstancer {
    inner: WatchedInstancer,
}

impl ZkInstancer {
    /// Reads the directory once, publishes the result, and starts watching, with go-kit's
    /// backoff (10 ms .. 1 min, jittered) after failures.
    pub async fn start(client: Client, query: ServiceQuery) -> Self {
        Self::start_with_backoff(client, query, Backoff::default()).await
    }

    /// Like [`start`](Self::start), with another backoff.
    pub async fn start_with_backoff(client: Client, query: ServiceQuery, backoff: Backoff) -> Self {
        let service = query.service.clone();
        let source = ZkSource::new(client, query);
        let config = LoopConfig::new(BACKEND, source.dir().to_string())
            .service(service)
            .backoff(backoff);
        ZkInstancer {
            inner: WatchedInstancer::start(source, config).await,
        }
    }

    /// The current state.
    pub fn state(&self) -> Option<Event> {
        self.inner.state()
    }
}

#[async_trait]
impl Instancer for ZkInstancer {
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
    fn json_payload_round_trips_the_whole_instance() {
        let i = Instance::builder("::1", 8080)
            .id("web-1")
            .tag("v2")
            .meta("zone", "a")
            .weight(7)
            .health(Health::Warning)
            .build();
        let data = serde_json::to_vec(&InstanceJson::from_instance(&i, "web-1")).unwrap();
        assert_eq!(decode("_c_x-0000000001", &data).unwrap(), i);
    }

    #[test]
    fn gokit_plain_data_is_read_with_the_node_name_as_id() {
        let i = decode("_c_abc-0000000003", b"10.0.0.1:80").unwrap();
        assert_eq!((i.addr(), i.id()), ("10.0.0.1:80", "_c_abc-0000000003"));
        let i = decode("n", b" http://10.0.0.2:8080\n").unwrap();
        assert_eq!(i.addr(), "10.0.0.2:8080");
        let i = decode("n", b"{\"host\":\"h\",\"port\":1}").unwrap();
        assert_eq!((i.id(), i.weight(), i.health()), ("n", 1, Health::Passing));
    }

    #[test]
    fn bad_data_says_why() {
        for (data, why) in [
            (&b""[..], "empty data"),
            (b"  ", "empty data"),
            (b"\xff\xfe", "not UTF-8"),
            (b"{\"host\":\"h\"}", "bad JSON payload"),
            (b"{\"host\":\"h\",\"port\":70000}", "bad JSON payload"),
            (b"{\"host\":\"\",\"port\":1}", "empty host"),
            (b"{\"host\":\"h\",\"port\":0}", "port 0"),
            (b"{not json", "bad JSON payload"),
            (b"nohostport", "no port"),
            (b"h:0", "port 0"),
        ] {
            let err = decode("n", data).unwrap_err();
            assert!(err.contains(why), "{data:?}: {err}");
        }
    }

    /// Found by the `zk_data` fuzz target (scripts/fuzz): a JSON host that is not a host
    /// was accepted, and the plain payload written for it did not parse; `[]` even gave an
    /// instance with an empty host.
    #[test]
    fn fuzz_found_json_hosts_must_be_hosts() {
        let err = decode("n", br#"{"host":"w/b.i.ternal","port":80}"#).unwrap_err();
        assert!(err.contains("JSON payload: host"), "{err}");
        // `{fffffff&fffternal` (found by `zk_data` after the first fix): its plain payload
        // starts with `{` and was read back as broken JSON.
        for host in ["[]", "a:b", "[web]", "a b", "{fffffff&fffternal", "{xot"] {
            let v = format!(r#"{{"host":"{host}","port":80}}"#);
            assert!(decode("n", v.as_bytes()).is_err(), "{host}");
        }
        let i = decode("n", br#"{"host":"[0:0::1]","port":80}"#).unwrap();
        assert_eq!(i.host(), "::1");
        // Control characters in go-kit's plain form (found by `etcd_value`, same parser).
        assert!(decode("n", b"10.0\x01\0\0\n:8080").is_err());
    }

    #[test]
    fn unknown_health_is_unknown() {
        let i = decode("n", br#"{"host":"h","port":1,"health":"sick"}"#).unwrap();
        assert_eq!(i.health(), Health::Unknown);
    }
}
