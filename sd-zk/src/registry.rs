//! [`ZkRegistry`]: the `zk://` (alias `zookeeper://`) registry behind `sdkit::connect`.

use std::sync::Arc;

use async_trait::async_trait;
use sd_core::instance::join_host_port;
use sd_core::{
    Backoff, Capabilities, Error, Instancer, Registrar, Registration, Registry, RegistryUrl,
    Result, ServiceQuery,
};

use crate::client::{
    validate_base, validate_segment, Client, ClientConfig, Payload, WatchMode, DEFAULT_BASE,
    DEFAULT_PORT,
};
use crate::instancer::ZkInstancer;
use crate::registrar::ZkRegistrar;

/// A ZooKeeper ensemble as an sdkit [`Registry`]: instancers watch `<base>/<service>`,
/// registrars create ephemeral nodes in it. Everything made from one registry shares one
/// session.
///
/// ```
/// use std::time::Duration;
/// use sd_zk::ZkRegistry;
///
/// let registry = ZkRegistry::from_url("zk://10.0.0.1:2181,10.0.0.2:2181/myorg/services?session_timeout=10s")?;
/// let config = registry.client().config();
/// assert_eq!(config.servers, ["10.0.0.1:2181", "10.0.0.2:2181"]);
/// assert_eq!(config.base, "/myorg/services");
/// assert_eq!(config.session_timeout, Duration::from_secs(10));
///
/// let err = ZkRegistry::from_url("zk://h/services?session_timeout=500ms").unwrap_err();
/// assert!(err.to_string().contains("session_timeout"));
/// # Ok::<(), sd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ZkRegistry {
    client: Client,
    backoff: Backoff,
}

impl ZkRegistry {
    /// A registry over `client`.
    pub fn new(client: Client) -> Self {
        ZkRegistry {
            client,
            backoff: Backoff::default(),
        }
    }

    /// Parses `zk://host[:port][,host[:port]...][/base/path][?option=value&...]` (or
    /// `zookeeper://`). No connection is made.
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | path | the base path; services live in `<base>/<service>/` | `/services` |
    /// | `session_timeout` | session timeout asked of the server (≥ 1s; the server clamps it to its own bounds) | `5s` (go-kit) |
    /// | `connect_timeout` | how long establishing a session may take (≥ 1s) | `2s` (go-kit) |
    /// | `digest_env` / `digest` | digest credentials `user:password` from an environment variable / inline (redacted in errors); nodes created are then readable by all, deletable only by these credentials | none (world ACL, as go-kit) |
    /// | `watch` | `auto` (persistent recursive watch, one-shot on servers before 3.6), `persistent`, `oneshot` | `auto` |
    /// | `payload` | what registrars write: `json` (the whole instance) or `plain` (go-kit's `host:port`) | `json` |
    /// | `create_parents` | instancers create the watched path if missing (go-kit does, ZK-8) | `false` |
    ///
    /// Hosts default to `127.0.0.1:2181`, ports to 2181. Several hosts: the client fails
    /// over between them.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut u = RegistryUrl::parse(url)?;
        if u.scheme() != "zk" && u.scheme() != "zookeeper" {
            return Err(u.error(format!(
                "expected a zk:// or zookeeper:// URL, got {}://",
                u.scheme()
            )));
        }
        let servers: Vec<String> = match u.host_ports(DEFAULT_PORT)? {
            hosts if hosts.is_empty() => vec![join_host_port("127.0.0.1", DEFAULT_PORT)],
            hosts => hosts.iter().map(|(h, p)| join_host_port(h, *p)).collect(),
        };
        let base = match u.path() {
            "" => DEFAULT_BASE.to_string(),
            "/" => "/".to_string(),
            p => p.trim_end_matches('/').to_string(),
        };
        validate_base(&base).map_err(|m| u.error(m))?;
        let mut config = ClientConfig::new(servers).base(base);
        if let Some(t) = u.duration("session_timeout")? {
            config.session_timeout = t;
        }
        if let Some(t) = u.duration("connect_timeout")? {
            config.connect_timeout = t;
        }
        config.digest = u.secret("digest")?;
        config.watch = match u.string("watch")?.as_deref() {
            None | Some("auto") => WatchMode::Auto,
            Some("persistent") => WatchMode::Persistent,
            Some("oneshot") => WatchMode::Oneshot,
            Some(other) => {
                return Err(u.error(format!(
                    "option watch={other:?}: use auto, persistent or oneshot"
                )))
            }
        };
        config.payload = match u.string("payload")?.as_deref() {
            None | Some("json") => Payload::Json,
            Some("plain") => Payload::Plain,
            Some(other) => {
                return Err(u.error(format!("option payload={other:?}: use json or plain")))
            }
        };
        config.create_parents = u.bool("create_parents")?.unwrap_or(false);
        u.finish()?;
        let client = Client::new(config).map_err(|e| match e {
            Error::Config(m) => u.error(
                m.strip_prefix("zk: ")
                    .unwrap_or(&m)
                    .replace("session timeout", "option session_timeout")
                    .replace("connect timeout", "option connect_timeout")
                    .replace("digest credentials", "option digest"),
            ),
            other => other,
        })?;
        Ok(ZkRegistry::new(client))
    }

    /// Replaces the backoff of the instancers made from now on (default 10 ms .. 1 min).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The client (and its shared session).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts a typed [`ZkInstancer`] (what [`Registry::instancer`] returns, boxed).
    pub async fn zk_instancer(&self, query: &ServiceQuery) -> Result<ZkInstancer> {
        validate_segment(&query.service)
            .map_err(|m| Error::config(format!("zk: service {:?}: {m}", query.service)))?;
        Ok(ZkInstancer::start_with_backoff(
            self.client.clone(),
            query.clone(),
            self.backoff.clone(),
        )
        .await)
    }

    /// A typed [`ZkRegistrar`] (what [`Registry::registrar`] returns, boxed).
    pub fn zk_registrar(&self, registration: Registration) -> Result<ZkRegistrar> {
        ZkRegistrar::new(self.client.clone(), registration)
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    fn scheme(&self) -> &'static str {
        "zk"
    }

    /// Registration and expiry (the session) always; ids, tags, metadata, weight and health
    /// when registrars write the JSON payload (the default), not with `payload=plain` (the id
    /// is then the znode name).
    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::none()
            .with_registration()
            .with_expiry()
            .with_list_services();
        match self.client.config().payload {
            Payload::Json => caps
                .with_ids()
                .with_tags()
                .with_metadata()
                .with_weight()
                .with_health(),
            Payload::Plain => caps,
        }
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        Ok(Arc::new(self.zk_instancer(query).await?))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Ok(Arc::new(self.zk_registrar(registration)?))
    }

    /// The children of the base path that hold at least one instance node.
    async fn services(&self) -> Result<Vec<String>> {
        self.client.services().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_option_is_read() {
        std::env::set_var("SD_ZK_REGISTRY_TEST_DIGEST", "app:pw");
        let r = ZkRegistry::from_url(
            "zookeeper://h1,h2:2182,[::1]:2183/a/b/?session_timeout=3s&connect_timeout=1500ms\
             &digest_env=SD_ZK_REGISTRY_TEST_DIGEST&watch=oneshot&payload=plain&create_parents=true",
        )
        .unwrap();
        let c = r.client().config();
        assert_eq!(c.servers, ["h1:2181", "h2:2182", "[::1]:2183"]);
        assert_eq!(c.base, "/a/b");
        assert_eq!(c.session_timeout, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.digest.as_ref().unwrap().expose(), "app:pw");
        assert_eq!(c.watch, WatchMode::Oneshot);
        assert_eq!(c.payload, Payload::Plain);
        assert!(c.create_parents);
        assert_eq!(
            r.capabilities(),
            Capabilities::none()
                .with_registration()
                .with_expiry()
                .with_list_services()
        );
    }

    #[test]
    fn defaults() {
        let r = ZkRegistry::from_url("zk://").unwrap();
        let c = r.client().config();
        assert_eq!(c.servers, ["127.0.0.1:2181"]);
        assert_eq!(c.base, "/services");
        assert_eq!(c.session_timeout, crate::DEFAULT_SESSION_TIMEOUT);
        assert_eq!(c.connect_timeout, crate::DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            (c.watch, c.payload, c.create_parents),
            (WatchMode::Auto, Payload::Json, false)
        );
        assert!(c.digest.is_none());
        let caps = r.capabilities();
        assert!(caps.registration && caps.expiry && caps.ids && caps.tags && caps.metadata);
        assert!(caps.weight);
        assert!(caps.health && !caps.server_side_filtering);
        assert_eq!(
            ZkRegistry::from_url("zk://h/")
                .unwrap()
                .client()
                .config()
                .base,
            "/"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_secret() {
        for (url, needle) in [
            ("zk://h?colour=blue", "unknown option colour"),
            ("zk://h?session_timeout=500ms", "option session_timeout"),
            ("zk://h?session_timeout=5", "missing unit"),
            ("zk://h?connect_timeout=0s", "option connect_timeout"),
            ("zk://h:x", "bad port"),
            ("zk://h//double", "empty path segment"),
            ("zk://h/a/../b", "not allowed"),
            ("zk://h?watch=sometimes", "use auto, persistent or oneshot"),
            ("zk://h?payload=xml", "use json or plain"),
            ("zk://h?create_parents=maybe", "not a boolean"),
            (
                "zk://h?digest_env=SD_ZK_SURELY_UNSET",
                "SD_ZK_SURELY_UNSET is not set",
            ),
            ("zk://h?digest=nocolon", "option digest"),
            ("consul://h", "expected a zk:// or zookeeper:// URL"),
            ("zk://user:pw@h", "credentials in the authority"),
        ] {
            let err = ZkRegistry::from_url(url).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        for url in [
            "zk://h?digest=app:hunter2&colour=x",
            "zk://h?digest=hunter2",
        ] {
            let err = ZkRegistry::from_url(url).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(!format!("{err:?}").contains("hunter2"));
        }
        let r = ZkRegistry::from_url("zk://h?digest=app:hunter2").unwrap();
        assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
    }
}
