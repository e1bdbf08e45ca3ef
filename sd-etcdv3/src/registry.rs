//! [`EtcdRegistry`]: the `etcd://` (alias `etcdv3://`) registry behind `sdkit::connect`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::instance::join_host_port;
use sd_core::{
    Backoff, Capabilities, Error, Instancer, Registrar, Registration, Registry, RegistryUrl,
    Result, ServiceQuery,
};

use crate::client::{Client, ClientConfig, DEFAULT_PORT, MAX_TIMEOUT};
use crate::instancer::EtcdInstancer;
use crate::registrar::{EtcdRegistrar, ValueFormat, DEFAULT_TTL, MAX_TTL};
use crate::shared::{SharedSource, WatchMode, DEFAULT_SHARED_AFTER, MAX_SHARED_AFTER};

/// An etcd v3 cluster as an sdkit [`Registry`]: instancers are get-then-watch directory
/// watches, registrars put leased keys and keep the lease alive.
///
/// ```
/// use sd_etcdv3::EtcdRegistry;
///
/// let registry = EtcdRegistry::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379?prefix=/sd&ttl=15s")?;
/// assert_eq!(registry.client().config().endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// assert_eq!(registry.client().prefix(), "/sd");
///
/// let err = EtcdRegistry::from_url("etcd://127.0.0.1:2379?colour=blue").unwrap_err();
/// assert!(err.to_string().contains("unknown option colour"));
/// # Ok::<(), sd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    client: Client,
    default_ttl: Duration,
    format: ValueFormat,
    passing_only: bool,
    backoff: Backoff,
    watch: WatchMode,
}

impl EtcdRegistry {
    /// A registry over `client`: JSON values, [`DEFAULT_TTL`], go-kit's backoff.
    pub fn new(client: Client) -> Self {
        EtcdRegistry {
            client,
            default_ttl: DEFAULT_TTL,
            format: ValueFormat::Json,
            passing_only: false,
            backoff: Backoff::default(),
            watch: WatchMode::default(),
        }
    }

    /// Parses an `etcd://host[:port][,host[:port]...][?option=value&...]` URL (`etcdv3://`
    /// is the same). No request is sent.
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `prefix` | key prefix: instances are `<prefix>/<service>/<id>` | `/services` |
    /// | `user` | user to authenticate as (needs `password_env` or `password`) | none |
    /// | `password_env` / `password` | the password from an environment variable / inline (redacted everywhere) | none |
    /// | `tls` | talk TLS (with the built-in webpki roots unless `ca` is given) | `false` |
    /// | `ca` | PEM file of the CA certificate(s) to trust (implies `tls`) | none |
    /// | `cert`, `key` | client certificate and key PEM files (implies `tls`; both or neither) | none |
    /// | `dial_timeout` | connect timeout, at most `24h` | `3s` |
    /// | `timeout` | deadline of each request (get, put, lease calls), at most `24h` | `5s` |
    /// | `keep_alive` | HTTP/2 ping interval while a stream is open; a server silent for as long again is dropped. Keep it at or above the server's `--grpc-keepalive-min-time` (5 s by default), or the server closes the connection; at most `24h` | `10s` |
    /// | `ttl` | lease TTL of registrations without a TTL check, at least `1s`, at most `9000000000s` (etcd's longest lease) | `10s` |
    /// | `format` | value the registrar writes: `json` (the whole instance) or `plain` (go-kit's `host:port`) | `json` |
    /// | `passing` | make every instancer passing-only | `false` |
    /// | `watch` | `own`: a watch per instancer (of its service's directory); `shared`: one watch of the whole prefix per client, its events routed by key to each instancer ([`shared`](crate::shared)); `auto`: shared once the client has `shared_after` live instancers | `auto` |
    /// | `shared_after` | with `watch=auto` (only), the number of live instancers from which new ones share the watch, 1 ..= 1000000 | `16` |
    ///
    /// Hosts default to `127.0.0.1:2379`, ports to 2379; with several hosts the client
    /// connects to one at a time and moves to the next when it cannot reach it (no balancing). Errors name the bad part and never show the password.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut u = RegistryUrl::parse(url)?;
        if u.scheme() != "etcd" && u.scheme() != "etcdv3" {
            return Err(u.error(format!(
                "expected an etcd:// or etcdv3:// URL, got {}://",
                u.scheme()
            )));
        }
        if !u.path().is_empty() && u.path() != "/" {
            return Err(u.error(format!(
                "etcd:// takes no path (got {:?}); give the key prefix as ?prefix={}",
                u.path(),
                u.path()
            )));
        }
        let endpoints: Vec<String> = match u.host_ports(DEFAULT_PORT)? {
            hosts if hosts.is_empty() => vec![join_host_port("127.0.0.1", DEFAULT_PORT)],
            hosts => hosts.iter().map(|(h, p)| join_host_port(h, *p)).collect(),
        };
        let mut config = ClientConfig::new(endpoints);
        if let Some(prefix) = u.string("prefix")? {
            if !prefix.starts_with('/') {
                return Err(u.error(format!(
                    "option prefix={prefix:?} must start with '/', e.g. prefix=/services"
                )));
            }
            config = config.prefix(prefix);
        }
        config.user = u.string("user")?;
        config.password = u.secret("password")?;
        if config.user.is_some() != config.password.is_some() {
            return Err(u.error(
                "options user and password_env (or password) go together: \
                 give both to authenticate, or neither",
            ));
        }
        for (key, slot) in [
            ("dial_timeout", &mut config.dial_timeout),
            ("timeout", &mut config.timeout),
            ("keep_alive", &mut config.keep_alive),
        ] {
            if let Some(d) = u.duration(key)? {
                if d.is_zero() {
                    return Err(u.error(format!("option {key} must be greater than 0")));
                }
                if d > MAX_TIMEOUT {
                    return Err(u.error(format!(
                        "option {key}={d:?} is above the {} h maximum",
                        MAX_TIMEOUT.as_secs() / 3600
                    )));
                }
                *slot = d;
            }
        }
        config.tls = u.bool("tls")?.unwrap_or(false);
        config.ca_file = u.string("ca")?.map(PathBuf::from);
        config.cert_file = u.string("cert")?.map(PathBuf::from);
        config.key_file = u.string("key")?.map(PathBuf::from);
        let default_ttl = match u.duration("ttl")? {
            Some(ttl) if ttl < Duration::from_secs(1) => {
                return Err(u.error(format!(
                    "option ttl={ttl:?} is below etcd's 1 s lease granularity"
                )))
            }
            Some(ttl) if ttl > MAX_TTL => {
                return Err(u.error(format!(
                    "option ttl={ttl:?} is above etcd's longest lease ({} s)",
                    MAX_TTL.as_secs()
                )))
            }
            Some(ttl) => ttl,
            None => DEFAULT_TTL,
        };
        let format = match u.string("format")?.as_deref() {
            None | Some("json") => ValueFormat::Json,
            Some("plain") => ValueFormat::Plain,
            Some(other) => {
                return Err(u.error(format!(
                    "option format={other:?}: use json (the whole instance) or plain (go-kit's host:port)"
                )))
            }
        };
        let passing_only = u.bool("passing")?.unwrap_or(false);
        let shared_after = match u.string("shared_after")? {
            None => None,
            Some(n) => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_SHARED_AFTER).contains(n))
                    .ok_or_else(|| {
                        u.error(format!(
                            "option shared_after={n:?}: give a number of instancers, 1 to {MAX_SHARED_AFTER}"
                        ))
                    })?,
            ),
        };
        let watch = match (u.string("watch")?.as_deref(), shared_after) {
            (None | Some("auto"), after) => WatchMode::Auto {
                shared_after: after.unwrap_or(DEFAULT_SHARED_AFTER),
            },
            (Some(mode @ ("own" | "shared")), Some(_)) => {
                return Err(u.error(format!(
                    "option shared_after applies to watch=auto only, not watch={mode}"
                )))
            }
            (Some("own"), None) => WatchMode::Own,
            (Some("shared"), None) => WatchMode::Shared,
            (Some(other), _) => {
                return Err(u.error(format!(
                    "option watch={other:?}: use own (a watch per instancer), shared (one watch of the prefix) or auto"
                )))
            }
        };
        u.finish()?;
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err(
                u.error("options cert and key go together (client certificate and its key)")
            );
        }
        let client = Client::new(config).map_err(|e| match e {
            Error::Config(m) => u.error(m),
            other => other,
        })?;
        Ok(EtcdRegistry {
            client,
            default_ttl,
            format,
            passing_only,
            backoff: Backoff::default(),
            watch,
        })
    }

    /// Sets which instancers share their client's watch of the whole prefix (the `watch`
    /// and `shared_after` URL options). Fails on a `shared_after` of 0 or above
    /// [`MAX_SHARED_AFTER`].
    pub fn with_watch_mode(mut self, mode: WatchMode) -> Result<Self> {
        self.watch = mode.validate()?;
        Ok(self)
    }

    /// Which instancers share their client's watch of the whole prefix.
    pub fn watch_mode(&self) -> WatchMode {
        self.watch
    }

    /// Replaces the backoff of the instancers made from now on (default 10 ms .. 1 min).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the value format registrars write (the `format` URL option).
    #[must_use]
    pub fn with_format(mut self, format: ValueFormat) -> Self {
        self.format = format;
        self
    }

    /// Makes every instancer passing-only (the `passing` URL option).
    #[must_use]
    pub fn passing_only(mut self, yes: bool) -> Self {
        self.passing_only = yes;
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The TTL of registrations without a TTL check.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// The value format registrars write.
    pub fn format(&self) -> ValueFormat {
        self.format
    }

    /// Starts a typed [`EtcdInstancer`] (what [`Registry::instancer`] returns, boxed): on
    /// the client's shared watch or with a watch of its own, as the
    /// [`watch_mode`](Self::watch_mode) says for the client's live instancers now.
    pub async fn etcd_instancer(&self, query: &ServiceQuery) -> EtcdInstancer {
        let mut query = query.clone();
        query.passing_only |= self.passing_only;
        // A name the shared watch cannot route (several path segments: only this typed
        // entry point lets one through) keeps a watch of its own.
        if self.watch.shares(self.client.live_instancers())
            && crate::shared::routable(&query.service)
        {
            let source = SharedSource::new(self.client.clone(), query);
            return EtcdInstancer::start_shared_source(source, self.backoff.clone()).await;
        }
        let source = crate::instancer::PrefixSource::new(self.client.clone(), query);
        EtcdInstancer::start_source(source, self.backoff.clone()).await
    }

    /// A typed [`EtcdRegistrar`] (what [`Registry::registrar`] returns, boxed).
    pub fn etcd_registrar(&self, registration: Registration) -> Result<EtcdRegistrar> {
        EtcdRegistrar::with_default_ttl(
            self.client.clone(),
            registration,
            self.format,
            self.default_ttl,
        )
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn scheme(&self) -> &'static str {
        "etcd"
    }

    /// Registration, lease expiry, and — in the JSON value — tags, metadata, weight and the
    /// health the registrar sets. Filtering is client-side (etcd has no query language).
    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::none()
            .with_registration()
            .with_ids()
            .with_expiry()
            .with_list_services();
        match self.format {
            ValueFormat::Json => caps.with_tags().with_metadata().with_weight().with_health(),
            ValueFormat::Plain => caps,
        }
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        if query.service.trim().is_empty() {
            return Err(Error::config("etcd: empty service name"));
        }
        if query.service.contains('/') {
            return Err(Error::config(format!(
                "etcd: service name {:?} must not contain '/'",
                query.service
            )));
        }
        Ok(Arc::new(self.etcd_instancer(query).await))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Ok(Arc::new(self.etcd_registrar(registration)?))
    }

    /// The distinct first path segments under the prefix (a keys-only, paged read).
    async fn services(&self) -> Result<Vec<String>> {
        self.client.services().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_read() {
        std::env::set_var("SD_ETCD_REGISTRY_TEST_PASSWORD", "pa55");
        let r = EtcdRegistry::from_url(
            "etcdv3://10.1.2.3:2381,[::1],h?prefix=/sd/&user=svc&password_env=SD_ETCD_REGISTRY_TEST_PASSWORD\
             &dial_timeout=1s&timeout=2s&keep_alive=4s&ttl=1500ms&format=plain&passing=true\
             &watch=auto&shared_after=3",
        )
        .unwrap();
        let c = r.client().config();
        assert_eq!(c.endpoints, ["10.1.2.3:2381", "[::1]:2379", "h:2379"]);
        assert_eq!(c.prefix, "/sd");
        assert_eq!(c.user.as_deref(), Some("svc"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "pa55");
        assert_eq!(c.dial_timeout, Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.keep_alive, Duration::from_secs(4));
        assert_eq!(r.default_ttl(), Duration::from_millis(1500));
        assert_eq!(r.format(), ValueFormat::Plain);
        assert!(r.passing_only);
        assert_eq!(r.watch_mode(), WatchMode::Auto { shared_after: 3 });
        assert!(!c.tls);
        for (url, mode) in [
            ("etcd://h?watch=own", WatchMode::Own),
            ("etcd://h?watch=shared", WatchMode::Shared),
            ("etcd://h?watch=auto", WatchMode::default()),
        ] {
            assert_eq!(
                EtcdRegistry::from_url(url).unwrap().watch_mode(),
                mode,
                "{url}"
            );
        }
        let plain = EtcdRegistry::from_url("etcd://h").unwrap();
        assert!(plain
            .with_watch_mode(WatchMode::Auto { shared_after: 0 })
            .is_err());
        assert!(!r.capabilities().tags);
    }

    #[test]
    fn defaults() {
        let r = EtcdRegistry::from_url("etcd://").unwrap();
        let c = r.client().config();
        assert_eq!(c.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(c.prefix, "/services");
        assert_eq!(r.default_ttl(), DEFAULT_TTL);
        assert_eq!(r.format(), ValueFormat::Json);
        assert_eq!(
            r.watch_mode(),
            WatchMode::Auto {
                shared_after: DEFAULT_SHARED_AFTER
            }
        );
        let caps = r.capabilities();
        assert!(caps.registration && caps.ids && caps.expiry && caps.tags && caps.metadata);
        assert!(caps.weight && caps.health && !caps.server_side_filtering);
        assert_eq!(r.scheme(), "etcd");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_password() {
        for (url, needle) in [
            ("etcd://h?colour=blue", "unknown option colour"),
            (
                "etcd://h/services",
                "give the key prefix as ?prefix=/services",
            ),
            ("etcd://h?prefix=services", "must start with '/'"),
            ("etcd://h?prefix=", "option prefix is empty"),
            ("etcd://h?user=u", "go together"),
            ("etcd://h?password=p", "go together"),
            ("etcd://h?timeout=0s", "timeout must be greater than 0"),
            ("etcd://h?dial_timeout=3", "missing unit"),
            ("etcd://h?ttl=500ms", "1 s lease granularity"),
            ("etcd://h?ttl=9000000001s", "longest lease"),
            ("etcd://h?timeout=25h", "24 h maximum"),
            (
                "etcd://h?dial_timeout=10000000000000000000s",
                "24 h maximum",
            ),
            ("etcd://h?format=xml", "use json"),
            ("etcd://h?tls=maybe", "not a boolean"),
            ("etcd://h?cert=/x.pem", "cert and key go together"),
            ("etcd://h?ca=/nonexistent/ca.pem", "cannot read CA file"),
            ("etcd://h:notaport", "bad port"),
            (
                "etcd://h?user=u&password_env=SD_ETCD_SURELY_UNSET",
                "SD_ETCD_SURELY_UNSET is not set",
            ),
            ("consul://h", "expected an etcd:// or etcdv3:// URL"),
            ("etcd://h?watch=both", "use own"),
            ("etcd://h?watch=own&shared_after=3", "watch=auto only"),
            ("etcd://h?watch=shared&shared_after=3", "watch=auto only"),
            ("etcd://h?shared_after=0", "1 to 1000000"),
            ("etcd://h?shared_after=lots", "1 to 1000000"),
            ("etcd://h?shared_after=1000001", "1 to 1000000"),
        ] {
            let err = EtcdRegistry::from_url(url).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        for url in [
            "etcd://h?user=u&password=sekrit&colour=x",
            "etcd://h?password=sekrit",
            "etcd://h?user=u&password=sekrit&ca=/nonexistent/ca.pem",
        ] {
            let err = EtcdRegistry::from_url(url).unwrap_err();
            assert!(!err.to_string().contains("sekrit"), "{err}");
            assert!(!format!("{err:?}").contains("sekrit"));
        }
        let r = EtcdRegistry::from_url("etcd://h?user=u&password=sekrit").unwrap();
        assert!(!format!("{r:?}").contains("sekrit"));
    }
}
