//! The ZooKeeper session shared by a registry's instancers and registrars: options, digest
//! authentication, ACLs, (re)connection, error mapping.
//!
//! A [`Client`] is cheap to clone; clones share **one** ZooKeeper session, opened on first
//! use. When the session ends for good (expired because the server did not hear from us for
//! longer than the session timeout, closed, or authentication failed), the next caller of
//! [`Client::session`] opens a new one. Registrars watch their node and re-create it on the
//! new session; instancers re-read and re-arm their watch (see [`crate::registrar`] and
//! [`crate::instancer`]).
//!
//! ```
//! use std::time::Duration;
//! use sd_core::Secret;
//! use sd_zk::{Client, ClientConfig};
//!
//! let client = Client::new(
//!     ClientConfig::new(["127.0.0.1:2181"])
//!         .base("/myorg/services")
//!         .session_timeout(Duration::from_secs(10))
//!         .digest(Secret::new("app:s3cr3t")),
//! )?;
//! assert_eq!(client.service_dir("web"), "/myorg/services/web");
//! // The digest credentials are sent in the auth packet only, and never printed.
//! assert!(!format!("{client:?}").contains("s3cr3t"));
//! # Ok::<(), sd_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sd_core::{Error, Result, Secret};
use tokio::sync::{watch, Mutex};
use zookeeper_client as zk;

/// The backend name used in errors and logs.
pub const BACKEND: &str = "zk";

/// ZooKeeper's default client port.
pub const DEFAULT_PORT: u16 = 2181;

/// The default base path: services live in `/services/<service>/`.
pub const DEFAULT_BASE: &str = "/services";

/// go-kit's default session timeout (ZK-1).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// go-kit's default connect timeout (ZK-1): how long establishing a session may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The smallest session and connect timeouts accepted (go-kit ZK-2: 1 s).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest session timeout accepted: 2 147 483 647 ms (about 24.8 days), the largest the
/// protocol carries (a signed 32-bit count of milliseconds; a longer one would wrap negative
/// and the server would grant its *shortest* session). The server clamps it further to its
/// `maxSessionTimeout` (20 ticks, 40 s, by default).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The longest connect timeout accepted (24 h), so the connect deadline cannot overflow.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How an instancer watches a service directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// A persistent recursive watch (ZooKeeper 3.6+), falling back to one-shot watches when
    /// the server does not implement it.
    #[default]
    Auto,
    /// A persistent recursive watch only (fails on servers older than 3.6).
    Persistent,
    /// One-shot watches re-armed after every event (children + each child's data), as
    /// go-kit does, for servers before 3.6.
    Oneshot,
}

/// What a registrar writes into its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Payload {
    /// A JSON object with the whole instance: host, port, id, tags, metadata, weight, health.
    #[default]
    Json,
    /// go-kit's plain `host:port` (go-kit's own instancers can use it; tags, metadata, weight
    /// and health are not stored).
    Plain,
}

/// How to reach and authenticate to a ZooKeeper ensemble, and where services live.
///
/// `Debug` never shows the digest credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The servers, `host:port` each; the client fails over between them.
    pub servers: Vec<String>,
    /// The base path (absolute, no trailing `/`; `/` for the root).
    pub base: String,
    /// The session timeout asked of the server (it clamps it to its own bounds).
    pub session_timeout: Duration,
    /// How long establishing a session may take before the attempt fails.
    pub connect_timeout: Duration,
    /// Digest credentials `user:password`. When set, the session authenticates with them and
    /// what the registrar creates is readable by anyone but writable and deletable only by
    /// these credentials.
    pub digest: Option<Secret>,
    /// How instancers watch.
    pub watch: WatchMode,
    /// What registrars write.
    pub payload: Payload,
    /// Whether instancers create the watched path when it is missing (go-kit does, ZK-8).
    /// Off by default: reading never writes.
    pub create_parents: bool,
}

impl ClientConfig {
    /// A config for `servers`, base [`DEFAULT_BASE`], go-kit's timeouts, no credentials.
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            base: DEFAULT_BASE.to_string(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            digest: None,
            watch: WatchMode::Auto,
            payload: Payload::Json,
            create_parents: false,
        }
    }

    /// Sets the base path.
    #[must_use]
    pub fn base(mut self, base: impl Into<String>) -> Self {
        self.base = base.into();
        self
    }

    /// Sets the session timeout.
    #[must_use]
    pub fn session_timeout(mut self, t: Duration) -> Self {
        self.session_timeout = t;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets digest credentials (`user:password`).
    #[must_use]
    pub fn digest(mut self, credentials: Secret) -> Self {
        self.digest = Some(credentials);
        self
    }

    /// Sets the watch mode.
    #[must_use]
    pub fn watch(mut self, mode: WatchMode) -> Self {
        self.watch = mode;
        self
    }

    /// Sets the payload format.
    #[must_use]
    pub fn payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// Lets instancers create the watched path (go-kit parity).
    #[must_use]
    pub fn create_parents(mut self, yes: bool) -> Self {
        self.create_parents = yes;
        self
    }

    /// Checks the config; the error says what to fix.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(Error::config("zk: no server given"));
        }
        for s in &self.servers {
            sd_core::config::split_host_port(s, DEFAULT_PORT)
                .map_err(|m| Error::config(format!("zk: {m}")))?;
        }
        validate_base(&self.base).map_err(|m| Error::config(format!("zk: {m}")))?;
        if self.session_timeout < MIN_TIMEOUT {
            return Err(Error::config(format!(
                "zk: session timeout {:?} is below the 1 s minimum",
                self.session_timeout
            )));
        }
        if self.session_timeout > MAX_SESSION_TIMEOUT {
            return Err(Error::config(format!(
                "zk: session timeout {:?} is above {} ms (about 24.8 days), the longest the \
                 protocol carries",
                self.session_timeout,
                MAX_SESSION_TIMEOUT.as_millis()
            )));
        }
        if self.connect_timeout < MIN_TIMEOUT {
            return Err(Error::config(format!(
                "zk: connect timeout {:?} is below the 1 s minimum",
                self.connect_timeout
            )));
        }
        if self.connect_timeout > MAX_CONNECT_TIMEOUT {
            return Err(Error::config(format!(
                "zk: connect timeout {:?} is above the 24 h maximum",
                self.connect_timeout
            )));
        }
        if let Some(d) = &self.digest {
            match d.expose().split_once(':') {
                Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {}
                _ => {
                    return Err(Error::config(
                        "zk: digest credentials must be user:password, both non-empty",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Checks a base path: absolute, no trailing `/` (except the root), no empty, `.` or `..`
/// segment.
pub fn validate_base(base: &str) -> std::result::Result<(), String> {
    if !base.starts_with('/') {
        return Err(format!("base path {base:?} must start with '/'"));
    }
    if base == "/" {
        return Ok(());
    }
    if base.ends_with('/') {
        return Err(format!("base path {base:?} must not end with '/'"));
    }
    for seg in base[1..].split('/') {
        validate_segment(seg).map_err(|m| format!("base path {base:?}: {m}"))?;
    }
    Ok(())
}

/// Checks one path segment (a service name, a base path component).
pub fn validate_segment(seg: &str) -> std::result::Result<(), String> {
    if seg.is_empty() {
        return Err("empty path segment".into());
    }
    if seg == "." || seg == ".." {
        return Err(format!("path segment {seg:?} is not allowed"));
    }
    if seg.contains('/') {
        return Err(format!("path segment {seg:?} must not contain '/'"));
    }
    if seg.chars().any(|c| c.is_control()) {
        return Err(format!("path segment {seg:?} contains a control character"));
    }
    Ok(())
}

/// Maps a ZooKeeper error to sdkit's kinds, saying what was being done.
pub fn zk_error(what: impl fmt::Display, e: zk::Error) -> Error {
    let message = format!("{what}: {e}");
    match e {
        zk::Error::NoAuth | zk::Error::AuthFailed | zk::Error::InvalidAcl => Error::Rejected {
            backend: BACKEND,
            message,
        },
        zk::Error::Timeout => Error::Timeout {
            backend: BACKEND,
            message,
        },
        other => Error::Unavailable {
            backend: BACKEND,
            message,
            source: Some(Arc::new(other)),
        },
    }
}

/// Whether `e` leaves the outcome of a request unknown because the connection broke (the
/// library reports a broken socket as a custom I/O error, a lost connection as
/// `ConnectionLoss`).
pub fn is_connection_error(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss | zk::Error::Custom(_) | zk::Error::Timeout
    )
}

/// Waits until `zk` is connected again (`true`), or its session ended or `bound` passed
/// (`false`).
pub async fn wait_connected(zk: &zk::Client, bound: Duration) -> bool {
    fn connected(s: zk::SessionState) -> bool {
        matches!(
            s,
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
        )
    }
    let mut watcher = zk.state_watcher();
    let now = zk.state();
    if connected(now) {
        return true;
    }
    if now.is_terminated() {
        return false;
    }
    tokio::time::timeout(bound, async {
        loop {
            let s = watcher.changed().await;
            if connected(s) {
                return true;
            }
            if s.is_terminated() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false)
}

struct Inner {
    config: ClientConfig,
    connect_string: String,
    session: Mutex<Option<zk::Client>>,
    sessions: watch::Sender<u64>,
    node_acl: Vec<zk::Acl>,
    parent_acl: Vec<zk::Acl>,
}

/// One ZooKeeper session, shared by every clone, re-opened after it ends.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("Client")
            .field("servers", &c.servers)
            .field("base", &c.base)
            .field("session_timeout", &c.session_timeout)
            .field("digest", &c.digest)
            .finish()
    }
}

impl Client {
    /// A client for `config`. Fails with [`Error::Config`] when the config is invalid.
    /// Nothing is sent until the first call that needs the session.
    pub fn new(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let (node_acl, parent_acl) = if config.digest.is_some() {
            // Only the credentials that created a node may change or delete it (deleting a
            // child needs DELETE on its parent, so the service directory is owner-only too);
            // anyone may read. Base path components also let others CREATE, so other
            // credentials can add services of their own next to ours.
            (
                vec![
                    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
                    zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
                ],
                vec![
                    zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
                    zk::Acl::new(
                        zk::Permission::READ | zk::Permission::CREATE,
                        zk::AuthId::anyone(),
                    ),
                ],
            )
        } else {
            // go-kit's default (ZK-1): world, all permissions.
            let open = vec![zk::Acl::new_const(zk::Permission::ALL, "world", "anyone")];
            (open.clone(), open)
        };
        let connect_string = config.servers.join(",");
        Ok(Client {
            inner: Arc::new(Inner {
                connect_string,
                config,
                session: Mutex::new(None),
                sessions: watch::channel(0).0,
                node_acl,
                parent_acl,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The directory holding the instances of `service`: `<base>/<service>`.
    pub fn service_dir(&self, service: &str) -> String {
        let base = self.inner.config.base.trim_end_matches('/');
        format!("{base}/{service}")
    }

    /// The services under the base path: its children that have at least one child (an
    /// instance node); empty directories left by deregistered services are not listed.
    /// Sorted. A missing base path is no service.
    pub async fn services(&self) -> Result<Vec<String>> {
        let zk = self.session().await?;
        let base = self.inner.config.base.trim_end_matches('/');
        let base = if base.is_empty() { "/" } else { base };
        let mut children = match zk.list_children(base).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(zk_error(format!("listing {base}"), e)),
        };
        children.sort_unstable();
        // One pipelined stat per child (the listing itself is bounded by the server's
        // jute.maxbuffer, so this is too).
        let zk = &zk;
        let stats = futures::future::join_all(children.iter().map(|c| {
            let path = format!("{}/{c}", base.trim_end_matches('/'));
            async move { zk.check_stat(&path).await }
        }))
        .await;
        let mut names = Vec::new();
        for (child, stat) in children.into_iter().zip(stats) {
            match stat {
                Ok(Some(stat)) if stat.num_children > 0 => names.push(child),
                Ok(_) => {}
                Err(e) => return Err(zk_error(format!("reading {base}/{child}"), e)),
            }
        }
        Ok(names)
    }

    /// The ACL of the nodes a registrar creates and of service directories.
    pub fn node_acl(&self) -> &[zk::Acl] {
        &self.inner.node_acl
    }

    /// The ACL of the base path components a registrar creates.
    pub fn parent_acl(&self) -> &[zk::Acl] {
        &self.inner.parent_acl
    }

    /// How many sessions this client has opened so far (a new one after each expiry).
    pub fn sessions_opened(&self) -> u64 {
        *self.inner.sessions.borrow()
    }

    /// A receiver of [`sessions_opened`](Self::sessions_opened), to be told of new sessions.
    pub fn watch_sessions(&self) -> watch::Receiver<u64> {
        self.inner.sessions.subscribe()
    }

    /// The live session, if one is open and has not ended (no connection attempt).
    pub async fn current(&self) -> Option<zk::Client> {
        let guard = self.inner.session.lock().await;
        guard
            .as_ref()
            .filter(|c| !c.state().is_terminated())
            .cloned()
    }

    /// The live session, opening a new one when there is none or the last one ended.
    ///
    /// Opening waits at most the connect timeout; the servers are tried in turn once
    /// each. A session that is merely disconnected is returned as is: the library reconnects
    /// it to any server of the list, and its requests fail with a connection-loss error
    /// meanwhile.
    pub async fn session(&self) -> Result<zk::Client> {
        let mut guard = self.inner.session.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            tracing::info!(backend = BACKEND, session = %c.session_id(), state = ?c.state(),
                "session ended; opening a new one");
        }
        let c = self.connect().await?;
        tracing::debug!(backend = BACKEND, session = %c.session_id(),
            timeout = ?c.session_timeout(), "session opened");
        *guard = Some(c.clone());
        self.inner.sessions.send_modify(|n| *n += 1);
        Ok(c)
    }

    /// Opens a session, trying every server in turn and again, backing off from 50 ms, until
    /// the connect timeout: a server that is starting refuses sessions for a moment after it
    /// accepts connections, and a failed-over ensemble needs a second round.
    async fn connect(&self) -> Result<zk::Client> {
        let config = &self.inner.config;
        let mut connector = zk::Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_fail_eagerly();
        if let Some(d) = &config.digest {
            connector = connector.with_auth("digest", d.expose().as_bytes());
        }
        let what = || format!("connecting to {}", self.inner.connect_string);
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let mut backoff =
            sd_core::Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                connector.clone().connect(&self.inner.connect_string),
            )
            .await;
            match attempt {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if is_connection_error(&e) || e == zk::Error::NoHosts => {
                    let pause = backoff.next_delay();
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(zk_error(what(), e));
                    }
                    tracing::debug!(backend = BACKEND, error = %e, retry_in = ?pause,
                        "no session yet; trying the servers again");
                    tokio::time::sleep(pause).await;
                }
                Ok(Err(e)) => return Err(zk_error(what(), e)),
                Err(_) => {
                    return Err(Error::Timeout {
                        backend: BACKEND,
                        message: format!(
                            "{}: no session within {:?}",
                            what(),
                            config.connect_timeout
                        ),
                    })
                }
            }
        }
    }

    /// Creates `path` and its missing ancestors as persistent nodes (go-kit's
    /// `CreateParentNodes`, ZK-3): the components of the base path with
    /// [`parent_acl`](Self::parent_acl), the rest with [`node_acl`](Self::node_acl).
    /// Existing nodes are left alone.
    pub async fn create_parents(&self, zk: &zk::Client, path: &str) -> Result<()> {
        let base = self.inner.config.base.trim_end_matches('/');
        let mut at = 0;
        while at < path.len() {
            let next = path[at + 1..].find('/').map_or(path.len(), |i| at + 1 + i);
            let prefix = &path[..next];
            let acl = if prefix.len() <= base.len() {
                self.parent_acl()
            } else {
                self.node_acl()
            };
            let options = zk::CreateMode::Persistent.with_acls(zk::Acls::new(acl));
            match zk.create(prefix, &[], &options).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                // go-kit ignores NoAuth too: someone else owns an ancestor; the final create
                // reports what matters.
                Err(zk::Error::NoAuth) => {}
                Err(e) => return Err(zk_error(format!("creating {prefix}"), e)),
            }
            at = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths() {
        for ok in ["/", "/services", "/a/b-c/d_e"] {
            validate_base(ok).unwrap();
        }
        for (bad, why) in [
            ("services", "start with '/'"),
            ("/a/", "end with '/'"),
            ("/a//b", "empty path segment"),
            ("/a/../b", "not allowed"),
            ("/a/\u{1}", "control character"),
        ] {
            let err = validate_base(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn service_dirs() {
        let c = Client::new(ClientConfig::new(["h:1"])).unwrap();
        assert_eq!(c.service_dir("web"), "/services/web");
        let c = Client::new(ClientConfig::new(["h:1"]).base("/")).unwrap();
        assert_eq!(c.service_dir("web"), "/web");
    }

    #[test]
    fn acls_follow_the_credentials() {
        let open = Client::new(ClientConfig::new(["h:1"])).unwrap();
        assert_eq!(open.node_acl().len(), 1);
        assert_eq!(open.node_acl()[0].scheme(), "world");
        assert_eq!(open.node_acl()[0].permission(), zk::Permission::ALL);
        let owned = Client::new(ClientConfig::new(["h:1"]).digest(Secret::new("u:p"))).unwrap();
        let acl = owned.node_acl();
        assert_eq!(
            (acl[0].scheme(), acl[0].permission()),
            ("auth", zk::Permission::ALL)
        );
        assert_eq!(
            (acl[1].scheme(), acl[1].permission()),
            ("world", zk::Permission::READ)
        );
        let parent = owned.parent_acl();
        assert!(parent[1].permission().has(zk::Permission::CREATE));
        assert!(!parent[1].permission().has(zk::Permission::DELETE));
    }

    #[test]
    fn invalid_configs_say_what_to_fix() {
        for (config, needle) in [
            (ClientConfig::new(Vec::<String>::new()), "no server"),
            (ClientConfig::new(["h:x"]), "bad port"),
            (ClientConfig::new(["h:1"]).base("x"), "start with '/'"),
            (
                ClientConfig::new(["h:1"]).session_timeout(Duration::from_millis(999)),
                "session timeout",
            ),
            (
                ClientConfig::new(["h:1"]).connect_timeout(Duration::from_millis(10)),
                "connect timeout",
            ),
            (
                ClientConfig::new(["h:1"])
                    .session_timeout(MAX_SESSION_TIMEOUT + Duration::from_millis(1)),
                "longest the protocol carries",
            ),
            (
                ClientConfig::new(["h:1"]).connect_timeout(Duration::from_secs(u64::MAX)),
                "24 h maximum",
            ),
            (
                ClientConfig::new(["h:1"]).digest(Secret::new("nopassword")),
                "user:password",
            ),
            (
                ClientConfig::new(["h:1"]).digest(Secret::new(":p")),
                "user:password",
            ),
        ] {
            let err = Client::new(config).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        // Exactly one second is accepted (ZK-2).
        Client::new(
            ClientConfig::new(["h:1"])
                .session_timeout(MIN_TIMEOUT)
                .connect_timeout(MIN_TIMEOUT),
        )
        .unwrap();
    }

    #[test]
    fn error_kinds() {
        assert!(matches!(
            zk_error("x", zk::Error::NoAuth),
            Error::Rejected { .. }
        ));
        assert!(matches!(
            zk_error("x", zk::Error::Timeout),
            Error::Timeout { .. }
        ));
        let e = zk_error("reading /a", zk::Error::ConnectionLoss);
        assert!(e.is_transient());
        assert!(e.to_string().contains("reading /a"), "{e}");
    }
}
