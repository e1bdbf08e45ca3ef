//! The registrar: one ephemeral sequential node per instance, re-created after the session
//! ends.
//!
//! [`ZkRegistrar::register`] creates the persistent parents as needed (ZK-3) and then a
//! *protected* ephemeral sequential node `<base>/<service>/_c_<guid>-<sequence>` — go-kit's
//! layout (ZK-5): the `_c_<guid>-` prefix is unique to the registrar, so after a connection
//! loss in the middle of the create it finds its node by listing the directory instead of
//! creating a second one. The node's data is the instance (sdkit's JSON payload, or go-kit's
//! plain `host:port` with `payload=plain`).
//!
//! While registered, a background task keeps a watch on the node. The node goes away only
//! when its session ends (the server did not hear from this process for longer than the
//! session timeout: a pause, a partition) or when someone deletes it; either way the watch
//! fires and the task creates the node again — on a new session if the old one ended —
//! retrying with a capped, jittered backoff (100 ms up to the session timeout) while the
//! server cannot be reached. go-kit never re-registers (ZK-11). The watch also fires when
//! someone else rewrites the node's data; the task writes the registrar's data back.
//!
//! Stopping the task (deregister, drop, register again) can cut a create short after it
//! was sent: the registrar remembers that, and the next create adopts the node it finds
//! with its prefix, while a delete removes every node with its prefix on the live session.
//!
//! With digest credentials, registering under an existing service directory whose ACL
//! lets anyone delete its children (`world:anyone` DELETE, as go-kit creates it) fails with
//! [`Error::Config`]: the credentials would protect nothing there.
//!
//! [`deregister`](ZkRegistrar::deregister) stops the task and deletes **this registrar's
//! node** (go-kit deletes the service's parent node instead, which fails while any instance
//! is registered, so its instance stays until the process exits: ZK-6). Both calls are
//! idempotent.
//!
//! ## One session for many registrars
//!
//! All registrars (and instancers) of one [`ZkRegistry`](crate::ZkRegistry) share its
//! session, so registering 1 000 instances costs 1 000 nodes and watches, not 1 000
//! sessions. Therefore a registrar dropped without deregistering cannot rely on its session
//! ending: its drop deletes its node in the background (on the current tokio runtime). A
//! process that dies loses the session, and the server removes every node of it after the
//! session timeout.
//!
//! ## Health checks
//!
//! ZooKeeper's liveness is the session: a [`HealthCheck::Ttl`] is
//! accepted and not used (the session timeout of the registry URL plays its part); HTTP, TCP
//! and gRPC checks are rejected, since ZooKeeper has nothing to run them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use sd_core::task::sleep_or_cancel;
use sd_core::{BackgroundTask, Backoff, Error, HealthCheck, Registrar, Registration, Result};
use tokio::sync::{watch, Mutex};
use zookeeper_client as zk;

use crate::client::{
    is_connection_error, validate_segment, wait_connected, zk_error, Client, Payload, BACKEND,
};
use crate::instancer::InstanceJson;

/// The prefix of go-zookeeper's protected nodes.
pub const PROTECTED_PREFIX: &str = "_c_";

/// A node this registrar created: its path and the session that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    path: String,
    session: i64,
}

struct Shared {
    client: Client,
    registration: Registration,
    dir: String,
    /// `_c_<guid>-`: the protected prefix of this registrar's node.
    prefix: String,
    data: Vec<u8>,
    node: StdMutex<Option<Node>>,
    /// Set while a create is under way and until its path is recorded. Still set after the
    /// keeper was stopped (or a `register()` cancelled) in the middle of a create: the
    /// create may have reached the server, leaving a node whose path nobody knows, so the
    /// next `ensure` adopts it and `delete` sweeps every node with this registrar's prefix.
    creating: AtomicBool,
    recreations: watch::Sender<u64>,
}

impl Shared {
    fn node(&self) -> Option<Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_node(&self, node: Option<Node>) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = node;
    }

    /// Makes sure the node exists on the live session with this registrar's data, and
    /// returns a watch on it (an exists/data watch: it fires on a delete and on a data
    /// change).
    async fn ensure(&self) -> Result<zk::OneshotWatcher> {
        let zk = self.client.session().await?;
        let session = zk.session_id().0;
        let previous = self.node();
        if let Some(node) = previous.as_ref().filter(|n| n.session == session) {
            match zk.get_and_watch_data(&node.path).await {
                Ok((data, stat, w)) if stat.ephemeral_owner == session => {
                    if data == self.data {
                        return Ok(w);
                    }
                    // Someone wrote other data into the node: put ours back. The watch just
                    // set fires on this write, and the next round checks again.
                    tracing::warn!(backend = BACKEND, service = %self.registration.service,
                        node = %node.path, "node data was changed by someone else; writing it back");
                    return match zk
                        .set_data(&node.path, &self.data, Some(stat.version))
                        .await
                    {
                        // BadVersion: changed again meanwhile; NoNode: deleted meanwhile. The
                        // watch fires for either and the next round handles it.
                        Ok(_) | Err(zk::Error::BadVersion) | Err(zk::Error::NoNode) => Ok(w),
                        Err(e) => Err(zk_error(format!("restoring the data of {}", node.path), e)),
                    };
                }
                Ok(_) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(zk_error(format!("checking {}", node.path), e)),
            }
        }
        // A create cut short earlier may have landed: adopt its node rather than make a second.
        let interrupted = self.creating.swap(true, Ordering::SeqCst);
        let adopted = if interrupted {
            self.find_own(&zk).await?
        } else {
            None
        };
        let path = match adopted {
            Some(path) => path,
            None => self.create(&zk).await?,
        };
        self.set_node(Some(Node {
            path: path.clone(),
            session,
        }));
        self.creating.store(false, Ordering::SeqCst);
        if let Some(old) = previous {
            // ZooKeeper has no renewal to count (the session heartbeats inside the client
            // library); a node created again is its re-registration. Counted before the
            // watchers of `recreations` hear of it.
            sd_core::observe::reregistered(BACKEND, &self.registration.service);
            self.recreations.send_modify(|n| *n += 1);
            tracing::warn!(backend = BACKEND, service = %self.registration.service,
                old = %old.path, new = %path, "node was lost (session ended or node deleted); created it again");
        }
        match zk.check_and_watch_stat(&path).await {
            Ok((Some(_), w)) => Ok(w),
            Ok((None, _)) => Err(Error::unavailable(
                BACKEND,
                format!("{path} vanished right after it was created"),
            )),
            Err(e) => Err(zk_error(format!("checking {path}"), e)),
        }
    }

    /// [`ensure`](Self::ensure), once more on a new session when the session ended during
    /// it (a session can expire at any moment, e.g. right after a server restart).
    async fn ensure_retrying(&self) -> Result<zk::OneshotWatcher> {
        let mut attempt = 0;
        loop {
            match self.ensure().await {
                Err(e)
                    if attempt < 2 && e.is_transient() && self.client.current().await.is_none() =>
                {
                    tracing::debug!(backend = BACKEND, error = %e, "the session ended; again on a new one");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Creates the protected ephemeral sequential node; returns its path.
    ///
    /// When the connection breaks during the create, its outcome is unknown: once the
    /// session is connected again (the library reconnects it within the session timeout),
    /// the node with this registrar's prefix is adopted if it exists, else the create is
    /// sent again.
    async fn create(&self, zk: &zk::Client) -> Result<String> {
        let base = format!("{}/{}", self.dir, self.prefix);
        let options =
            zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::new(self.client.node_acl()));
        let what = || format!("creating a node in {}", self.dir);
        self.refuse_open_directory(zk).await?;
        let mut last = zk::Error::NoNode;
        for _ in 0..4 {
            match zk.create(&base, &self.data, &options).await {
                Ok((_, seq)) => return Ok(format!("{base}{seq}")),
                Err(zk::Error::NoNode) => self.client.create_parents(zk, &self.dir).await?,
                Err(e) if is_connection_error(&e) => {
                    if !wait_connected(zk, self.client.config().session_timeout).await {
                        return Err(zk_error(what(), e));
                    }
                    if let Some(path) = self.find_own(zk).await? {
                        return Ok(path);
                    }
                    last = e;
                }
                Err(e) => return Err(zk_error(what(), e)),
            }
        }
        Err(zk_error(what(), last))
    }

    /// With digest credentials, refuses to register under an existing service directory
    /// whose ACL lets anyone delete its children (`world:anyone` with DELETE: what go-kit and
    /// registries without credentials create): deleting a node needs DELETE on its parent,
    /// so the credentials would protect nothing. A directory that does not exist yet is
    /// created with the credentials' ACL.
    async fn refuse_open_directory(&self, zk: &zk::Client) -> Result<()> {
        if self.client.config().digest.is_none() {
            return Ok(());
        }
        let acl = match zk.get_acl(&self.dir).await {
            Ok((acl, _)) => acl,
            Err(zk::Error::NoNode) => return Ok(()),
            Err(e) => return Err(zk_error(format!("reading the ACL of {}", self.dir), e)),
        };
        let open = acl.iter().any(|a| {
            a.scheme() == "world"
                && a.id() == "anyone"
                && a.permission().has(zk::Permission::DELETE)
        });
        if open {
            return Err(Error::config(format!(
                "zk: the service directory {} lets anyone delete its children (its ACL gives \
                 world:anyone DELETE, as go-kit and registries without credentials create it), \
                 so the digest credentials would not protect this registration; give the \
                 directory an ACL without world:anyone DELETE (e.g. setAcl {} \
                 auth::cdrwa,world:anyone:r as the owner), or register without digest \
                 credentials",
                self.dir, self.dir
            )));
        }
        Ok(())
    }

    /// The nodes with this registrar's prefix in the directory that the live session owns.
    async fn own_nodes(&self, zk: &zk::Client) -> Result<Vec<String>> {
        let children = match zk.list_children(&self.dir).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(zk_error(format!("listing {}", self.dir), e)),
        };
        let session = zk.session_id().0;
        let mut own = Vec::new();
        for child in children.iter().filter(|c| c.starts_with(&self.prefix)) {
            let path = format!("{}/{child}", self.dir);
            if let Ok(Some(stat)) = zk.check_stat(&path).await {
                if stat.ephemeral_owner == session {
                    own.push(path);
                }
            }
        }
        Ok(own)
    }

    /// This registrar's node in the directory under the current session, if any.
    async fn find_own(&self, zk: &zk::Client) -> Result<Option<String>> {
        Ok(self.own_nodes(zk).await?.into_iter().next())
    }

    /// After a create was cut short (see `creating`): deletes every node with this
    /// registrar's prefix that the live session owns. ZooKeeper answers one session's
    /// requests in order, so a create sent before the listing is seen by it.
    async fn sweep(&self) -> Result<()> {
        if !self.creating.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(zk) = self.client.current().await else {
            // No live session: whatever the create made went with the session that ended.
            self.creating.store(false, Ordering::SeqCst);
            return Ok(());
        };
        let own = match self.own_nodes(&zk).await {
            Ok(own) => own,
            // The session ended meanwhile, and its nodes with it.
            Err(_) if zk.state().is_terminated() => {
                self.creating.store(false, Ordering::SeqCst);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for path in own {
            match zk.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::SessionExpired) => {
                    tracing::debug!(backend = BACKEND, node = %path, "deleted the node of a create that was cut short");
                }
                Err(e) => return Err(zk_error(format!("deleting {path}"), e)),
            }
        }
        self.creating.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Deletes the node if the session that owns it is still the live one.
    /// First sweeps the nodes of a create that was cut short, if any.
    async fn delete(&self) -> Result<()> {
        self.sweep().await?;
        let Some(node) = self.node() else {
            return Ok(());
        };
        let Some(zk) = self.client.current().await else {
            // No live session: the one that owned the node has ended, and the node with it.
            self.set_node(None);
            return Ok(());
        };
        if zk.session_id().0 != node.session {
            self.set_node(None);
            return Ok(());
        }
        let mut last = None;
        for _ in 0..3 {
            match zk.delete(&node.path, None).await {
                // SessionExpired: the node went with the session that owned it.
                Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::SessionExpired) => {
                    self.set_node(None);
                    return Ok(());
                }
                Err(e) if is_connection_error(&e) => {
                    if !wait_connected(&zk, self.client.config().session_timeout).await {
                        // The session ended (the node with it), or it is still down.
                        if zk.state().is_terminated() {
                            self.set_node(None);
                            return Ok(());
                        }
                        return Err(zk_error(format!("deleting {}", node.path), e));
                    }
                    last = Some(e);
                }
                Err(e) => return Err(zk_error(format!("deleting {}", node.path), e)),
            }
        }
        Err(zk_error(
            format!("deleting {}", node.path),
            last.unwrap_or(zk::Error::ConnectionLoss),
        ))
    }
}

/// Keeps the node alive: waits for its watch to fire, then makes sure it exists again.
/// Without a first watch, it starts by making sure the node exists.
fn spawn_keeper(shared: Arc<Shared>, first: Option<zk::OneshotWatcher>) -> BackgroundTask {
    let max = shared.client.config().session_timeout;
    BackgroundTask::spawn(move |token| async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), max);
        let mut watch = first;
        loop {
            if let Some(w) = watch.take() {
                tokio::select! {
                    _ = token.cancelled() => return,
                    ev = crate::instancer::guarded(w.changed()) => {
                        tracing::debug!(backend = BACKEND, node = ?shared.node(), event = ?ev,
                            "registered node watch fired");
                    }
                }
            }
            loop {
                let r = tokio::select! {
                    _ = token.cancelled() => return,
                    r = shared.ensure() => r,
                };
                match r {
                    Ok(w) => {
                        backoff.reset();
                        watch = Some(w);
                        break;
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        tracing::warn!(backend = BACKEND, service = %shared.registration.service,
                            error = %e, retry_in = ?d, "could not re-create the node");
                        if !sleep_or_cancel(&token, d).await {
                            return;
                        }
                    }
                }
            }
        }
    })
}

#[derive(Default)]
struct State {
    registered: bool,
    task: Option<BackgroundTask>,
}

/// Registers one instance as an ephemeral node and keeps it there.
///
/// ```no_run
/// # async fn demo() -> sd_core::Result<()> {
/// use sd_zk::{Client, ClientConfig, ZkRegistrar};
/// use sd_core::{Instance, Registrar, Registration};
///
/// let client = Client::new(ClientConfig::new(["127.0.0.1:2181"]))?;
/// let registrar = ZkRegistrar::new(
///     client,
///     Registration::new("web", Instance::builder("127.0.0.1", 8080).id("web-1").tag("v2").build()),
/// )?;
/// registrar.register().await?;   // /services/web/_c_<guid>-0000000000
/// println!("{:?}", registrar.node_path());
/// registrar.deregister().await?; // deletes that node, and only it
/// # Ok(()) }
/// ```
pub struct ZkRegistrar {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl fmt::Debug for ZkRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkRegistrar")
            .field("service", &self.shared.registration.service)
            .field("id", &self.shared.registration.instance_id())
            .field("address", &self.shared.registration.instance.addr())
            .field("dir", &self.shared.dir)
            .field("node", &self.shared.node().map(|n| n.path))
            .finish()
    }
}

/// The bytes a registrar writes for `registration`.
pub fn payload(registration: &Registration, format: Payload) -> Vec<u8> {
    match format {
        Payload::Json => serde_json::to_vec(&InstanceJson::from_instance(
            &registration.instance,
            &registration.instance_id(),
        ))
        .unwrap_or_default(),
        Payload::Plain => registration.instance.addr().as_bytes().to_vec(),
    }
}

impl ZkRegistrar {
    /// A registrar for `registration`. Fails with [`Error::Config`] when the registration is
    /// invalid or asks for an HTTP, TCP or gRPC check. Nothing is sent yet.
    pub fn new(client: Client, registration: Registration) -> Result<Self> {
        registration.validate()?;
        validate_segment(&registration.service).map_err(|m| {
            Error::config(format!("registration of {:?}: {m}", registration.service))
        })?;
        match &registration.check {
            None | Some(HealthCheck::Ttl(_)) => {}
            Some(other) => {
                return Err(Error::config(format!(
                    "registration of {:?}: ZooKeeper cannot run {other:?}; its liveness is the \
                     session (use no check, or a TTL check, which the session timeout replaces)",
                    registration.service
                )))
            }
        }
        if registration.deregister_critical_after.is_some() {
            return Err(Error::config(format!(
                "registration of {:?}: deregister_critical_after has no meaning in ZooKeeper \
                 (a node goes away with its session)",
                registration.service
            )));
        }
        let dir = client.service_dir(&registration.service);
        let data = payload(&registration, client.config().payload);
        let prefix = format!("{PROTECTED_PREFIX}{:032x}-", rand::random::<u128>());
        Ok(ZkRegistrar {
            shared: Arc::new(Shared {
                client,
                registration,
                dir,
                prefix,
                data,
                node: StdMutex::new(None),
                creating: AtomicBool::new(false),
                recreations: watch::channel(0).0,
            }),
            state: Mutex::new(State::default()),
        })
    }

    /// The path of the node, while registered.
    pub fn node_path(&self) -> Option<String> {
        self.shared.node().map(|n| n.path)
    }

    /// The protected prefix of this registrar's node: `_c_<guid>-`.
    pub fn node_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The directory the node is created in: `<base>/<service>`.
    pub fn dir(&self) -> &str {
        &self.shared.dir
    }

    /// The bytes written into the node.
    pub fn data(&self) -> &[u8] {
        &self.shared.data
    }

    /// How many times the node was found gone and created again.
    pub fn recreations(&self) -> u64 {
        *self.shared.recreations.borrow()
    }

    /// A receiver of [`recreations`](Self::recreations), to be told when the node had to be
    /// created again (alerting, tests).
    pub fn watch_recreations(&self) -> watch::Receiver<u64> {
        self.shared.recreations.subscribe()
    }
}

#[async_trait]
impl Registrar for ZkRegistrar {
    async fn register(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let r = &self.shared.registration;
        // The keeper and this call must not both create the node.
        if let Some(old) = state.task.take() {
            old.stop().await;
        }
        match self.shared.ensure_retrying().await {
            Ok(w) => {
                state.registered = true;
                state.task = Some(spawn_keeper(self.shared.clone(), Some(w)));
                tracing::info!(backend = BACKEND, service = %r.service, address = %r.instance.addr(),
                    node = ?self.node_path(), action = "register");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(backend = BACKEND, service = %r.service, address = %r.instance.addr(),
                    error = %e, "register failed");
                if state.registered {
                    // Registered before: keep the registration alive as before this call.
                    state.task = Some(spawn_keeper(self.shared.clone(), None));
                }
                Err(e)
            }
        }
    }

    async fn deregister(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(task) = state.task.take() {
            task.stop().await;
        }
        if !state.registered {
            // Nothing sent unless a cancelled register() left a create behind.
            return self.shared.sweep().await;
        }
        let r = &self.shared.registration;
        let node = self.node_path();
        match self.shared.delete().await {
            Ok(()) => {
                state.registered = false;
                tracing::info!(backend = BACKEND, service = %r.service, address = %r.instance.addr(),
                    node = ?node, action = "deregister");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(backend = BACKEND, service = %r.service, node = ?node, error = %e,
                    "deregister failed; the node is no longer kept alive, call deregister again to retry");
                Err(e)
            }
        }
    }

    fn registration(&self) -> &Registration {
        &self.shared.registration
    }
}

impl Drop for ZkRegistrar {
    /// A registrar dropped while registered deletes its node in the background: the session
    /// is shared with the registry's other users and would otherwise keep the node.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        let task = state.task.take();
        if let Some(task) = &task {
            task.cancel();
        }
        if !state.registered {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            handle.spawn(async move {
                // Wait for the keeper to end first: a create it had under way is then sent,
                // and the delete (its sweep) sees it.
                if let Some(task) = task {
                    task.stop().await;
                }
                if let Err(e) = shared.delete().await {
                    tracing::warn!(backend = BACKEND, service = %shared.registration.service,
                        error = %e, "deleting the node of a dropped registrar failed; it goes with the session");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;
    use sd_core::Instance;

    fn client() -> Client {
        Client::new(ClientConfig::new(["127.0.0.1:1"])).unwrap()
    }

    #[test]
    fn payloads() {
        let r = Registration::new("web", Instance::builder("10.0.0.1", 80).tag("a").build());
        let json: serde_json::Value = serde_json::from_slice(&payload(&r, Payload::Json)).unwrap();
        assert_eq!(json["host"], "10.0.0.1");
        assert_eq!(json["id"], "web-10.0.0.1-80");
        assert_eq!(json["tags"][0], "a");
        assert_eq!(payload(&r, Payload::Plain), b"10.0.0.1:80");
    }

    #[test]
    fn node_prefix_is_protected_and_unique() {
        let r = || Registration::new("web", Instance::new("h", 1));
        let a = ZkRegistrar::new(client(), r()).unwrap();
        let b = ZkRegistrar::new(client(), r()).unwrap();
        assert!(a.node_prefix().starts_with("_c_") && a.node_prefix().ends_with('-'));
        assert_eq!(a.node_prefix().len(), 3 + 32 + 1);
        assert_ne!(a.node_prefix(), b.node_prefix());
        assert_eq!(a.dir(), "/services/web");
    }

    #[test]
    fn checks_zookeeper_cannot_run_are_rejected() {
        let ttl = Registration::new("web", Instance::new("h", 1))
            .check(HealthCheck::Ttl(Duration::from_secs(5)));
        ZkRegistrar::new(client(), ttl).unwrap();
        for (r, needle) in [
            (
                Registration::new("web", Instance::new("h", 1)).check(HealthCheck::Http {
                    url: "http://h:1/".into(),
                    interval: Duration::from_secs(1),
                }),
                "cannot run Http",
            ),
            (
                Registration::new("web", Instance::new("h", 1)).check(HealthCheck::Tcp {
                    addr: "h:1".into(),
                    interval: Duration::from_secs(1),
                }),
                "cannot run Tcp",
            ),
            (
                Registration::new("web", Instance::new("h", 1))
                    .check(HealthCheck::Ttl(Duration::from_secs(5)))
                    .deregister_critical_after(Duration::from_secs(60)),
                "deregister_critical_after",
            ),
            (
                Registration::new("..", Instance::new("h", 1)),
                "not allowed",
            ),
            (Registration::new("web", Instance::new("h", 0)), "port 0"),
        ] {
            let err = ZkRegistrar::new(client(), r).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[tokio::test]
    async fn deregister_before_register_sends_nothing_and_register_errors_are_returned() {
        // Port 1 on loopback refuses connections: a real transport error, no fake.
        let r =
            ZkRegistrar::new(client(), Registration::new("web", Instance::new("h", 1))).unwrap();
        r.deregister().await.unwrap();
        let err = r.register().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("connecting to 127.0.0.1:1"),
            "{err}"
        );
        r.deregister().await.unwrap();
    }
}
