//! [`EurekaRegistry`]: the `eureka://` registry behind `sdkit::connect`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sd_core::instance::join_host_port;
use sd_core::{
    Backoff, Capabilities, Error, Instancer, Registrar, Registration, Registry, RegistryUrl,
    Result, ServiceQuery,
};

use crate::client::{Client, ClientConfig, DEFAULT_PATH, DEFAULT_PORT};
use crate::instancer::{start_instancer, EurekaInstancer, Target, DEFAULT_POLL};
use crate::registrar::{EurekaRegistrar, Lease};

/// The shortest poll interval accepted (each poll is a full read of the app).
pub const MIN_POLL: Duration = Duration::from_millis(100);

/// The instancers' backoff after failures unless one is set: from 10 ms doubling up to the
/// poll interval (at least 1 s, at most 1 min), so that once a server is back the client
/// polls it again within about one poll interval, not after a backoff grown to a minute
/// during a long outage (a Eureka server restart takes 25-30 s; the chaos soak measured
/// 11-22 s recoveries with a 1 min cap and `poll=1s`).
pub fn default_backoff(poll: Duration) -> Backoff {
    Backoff::new(
        Backoff::GOKIT_INITIAL,
        poll.clamp(Duration::from_secs(1), Backoff::GOKIT_MAX),
    )
}

/// One or more Eureka servers as an sdkit [`Registry`]: instancers poll an application,
/// registrars register an instance and renew its lease.
///
/// ```
/// use std::time::Duration;
/// use sd_eureka::EurekaRegistry;
///
/// let registry = EurekaRegistry::from_url("eureka://10.0.0.1:8761,10.0.0.2:8761/eureka?poll=5s")?;
/// assert_eq!(registry.client().servers().len(), 2);
/// assert_eq!(registry.poll_interval(), Duration::from_secs(5));
///
/// let err = EurekaRegistry::from_url("eureka://127.0.0.1:8761?colour=blue").unwrap_err();
/// assert!(err.to_string().contains("unknown option colour"));
/// # Ok::<(), sd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EurekaRegistry {
    client: Client,
    poll: Duration,
    lease: Lease,
    by_vip: bool,
    passing_only: bool,
    /// A backoff set by [`with_backoff`](Self::with_backoff); `None`: [`default_backoff`].
    backoff: Option<Backoff>,
}

impl EurekaRegistry {
    /// A registry over `client` with the defaults (poll 30 s, lease 90 s renewed every 30 s,
    /// lookup by app name).
    pub fn new(client: Client) -> Self {
        EurekaRegistry {
            client,
            poll: DEFAULT_POLL,
            lease: Lease::default(),
            by_vip: false,
            passing_only: false,
            backoff: None,
        }
    }

    /// Parses an `eureka://host[:port][,host[:port]...][/path][?option=value&...]` URL. No
    /// request is sent.
    ///
    /// Each host is one server of the cluster, tried in order (failover). The path is the
    /// API's base path, the same on every server: `/eureka` (Spring Cloud Netflix, the
    /// default) or `/eureka/v2` (the Netflix WAR).
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `tls` | use HTTPS | `false` |
    /// | `user` | basic-auth user | none |
    /// | `password_env` / `password` | basic-auth password from an environment variable / inline (redacted in errors and logs) | none |
    /// | `poll` | instancer poll interval (±10 % jitter), at least `100ms` | `30s` |
    /// | `renew` | renewal interval of registrations without a TTL check | `30s` |
    /// | `lease` | lease duration of registrations without a TTL check | `90s` |
    /// | `vip` | `true`: instancers look the service name up as a VIP address (`/vips/{name}`) instead of an app name | `false` |
    /// | `timeout` | timeout of each request, per server | `10s` |
    /// | `passing` | make every instancer passing-only (status `UP`) | `false` |
    /// | `max_body` | largest answer body read, in bytes (at least 65536) | 67108864 (64 MiB) |
    ///
    /// The host defaults to `127.0.0.1` and the port to 8761. Errors name the bad part and
    /// never show the password.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut u = RegistryUrl::parse(url)?;
        if u.scheme() != "eureka" {
            return Err(u.error(format!("expected an eureka:// URL, got {}://", u.scheme())));
        }
        let path = match u.path().trim_end_matches('/') {
            "" => DEFAULT_PATH.to_string(),
            p => p.to_string(),
        };
        let tls = u.bool("tls")?.unwrap_or(false);
        let scheme = if tls { "https" } else { "http" };
        let hosts = match u.host_ports(DEFAULT_PORT)? {
            h if h.is_empty() => vec![("127.0.0.1".to_string(), DEFAULT_PORT)],
            h => h,
        };
        let servers: Vec<String> = hosts
            .iter()
            .map(|(h, p)| format!("{scheme}://{}{path}", join_host_port(h, *p)))
            .collect();
        let mut config = ClientConfig::new(servers);
        config.user = u.string("user")?;
        config.password = u.secret("password")?;
        if let Some(timeout) = u.duration("timeout")? {
            if timeout.is_zero() {
                return Err(u.error("option timeout must be greater than 0"));
            }
            config.timeout = timeout;
        }
        if let Some(max_body) = u.number::<usize>("max_body")? {
            // The range is checked once, by Client::new.
            config.max_body = max_body;
        }
        let poll = u.duration("poll")?.unwrap_or(DEFAULT_POLL);
        if poll < MIN_POLL {
            return Err(u.error(format!("option poll={poll:?} must be at least 100ms")));
        }
        let mut lease = Lease::default();
        if let Some(renew) = u.duration("renew")? {
            lease.renew = renew;
        }
        if let Some(duration) = u.duration("lease")? {
            if duration.subsec_nanos() != 0 || duration.is_zero() {
                return Err(u.error(format!(
                    "option lease={duration:?} must be a whole number of seconds (Eureka's durationInSecs)"
                )));
            }
            lease.duration = duration;
        }
        if lease.renew.is_zero() || lease.renew >= lease.duration {
            return Err(u.error(format!(
                "option renew={:?} must be above 0 and shorter than lease={:?}",
                lease.renew, lease.duration
            )));
        }
        let by_vip = u.bool("vip")?.unwrap_or(false);
        let passing_only = u.bool("passing")?.unwrap_or(false);
        u.finish()?;
        if config.password.is_some() != config.user.is_some() {
            return Err(u.error("options user and password (or password_env) go together"));
        }
        let client = Client::new(config).map_err(|e| match e {
            Error::Config(m) => u.error(m),
            other => other,
        })?;
        Ok(EurekaRegistry {
            client,
            poll,
            lease,
            by_vip,
            passing_only,
            backoff: None,
        })
    }

    /// Replaces the backoff of the instancers made from now on (default:
    /// [`default_backoff`] of the poll interval).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Sets the poll interval of the instancers made from now on.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(MIN_POLL);
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

    /// The instancers' poll interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// The lease of registrations without a TTL check.
    pub fn default_lease(&self) -> Lease {
        self.lease
    }

    /// What an instancer of `service` polls: the app `SERVICE` (upper-cased), or the VIP
    /// address `service` with the `vip` option.
    pub fn target(&self, service: &str) -> Target {
        if self.by_vip {
            Target::Vip(service.to_string())
        } else {
            Target::app(service)
        }
    }

    /// Starts a typed [`EurekaInstancer`] (what [`Registry::instancer`] returns, boxed).
    pub async fn eureka_instancer(&self, query: &ServiceQuery) -> EurekaInstancer {
        let mut query = query.clone();
        query.passing_only |= self.passing_only;
        start_instancer(
            self.client.clone(),
            self.target(&query.service),
            query,
            self.poll,
            self.backoff
                .clone()
                .unwrap_or_else(|| default_backoff(self.poll)),
        )
        .await
    }

    /// A typed [`EurekaRegistrar`] (what [`Registry::registrar`] returns, boxed).
    pub fn eureka_registrar(&self, registration: Registration) -> Result<EurekaRegistrar> {
        EurekaRegistrar::new(self.client.clone(), registration, self.lease, None)
    }
}

#[async_trait]
impl Registry for EurekaRegistry {
    fn scheme(&self) -> &'static str {
        "eureka"
    }

    /// Registration, ids (`instanceId`), expiry (the server evicts an instance whose lease
    /// is not renewed),
    /// tags (carried in the `sdkit.tags` metadata key, filtered here), metadata and health
    /// (the status). No weights; no server-side filtering (the whole app is read).
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_registration()
            .with_ids()
            .with_expiry()
            .with_tags()
            .with_metadata()
            .with_health()
            .with_list_services()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        if query.service.trim().is_empty() {
            return Err(Error::config("eureka: empty service name"));
        }
        Ok(Arc::new(self.eureka_instancer(query).await))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Ok(Arc::new(self.eureka_registrar(registration)?))
    }

    /// The application names of `GET /apps` that have an instance. Eureka upper-cases app
    /// names, so a service registered as `web` is listed as `WEB` (and `sdkit list URL WEB`
    /// or `web` both find it).
    async fn services(&self) -> Result<Vec<String>> {
        let Some(doc) = self.client.apps().await? else {
            return Ok(Vec::new());
        };
        crate::instancer::app_names(&doc).map_err(|e| {
            Error::malformed(
                crate::client::BACKEND,
                format!(
                    "listing of apps: {e}: {}",
                    crate::client::quote(&doc.to_string())
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_stops_at_the_poll_interval() {
        let max = |poll: u64| default_backoff(Duration::from_secs(poll)).max();
        assert_eq!(max(1), Duration::from_secs(1));
        assert_eq!(max(30), Duration::from_secs(30));
        assert_eq!(max(600), Duration::from_secs(60), "at most a minute");
        assert_eq!(
            default_backoff(Duration::from_millis(100)).max(),
            Duration::from_secs(1)
        );
    }

    fn servers(r: &EurekaRegistry) -> Vec<String> {
        r.client().servers().iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn every_option_is_read() {
        std::env::set_var("SD_EUREKA_REGISTRY_TEST_PASSWORD", "pw0");
        let r = EurekaRegistry::from_url(
            "eureka://10.1.2.3:8762,[::1],h3/eureka/v2/?tls=1&user=sd&password_env=SD_EUREKA_REGISTRY_TEST_PASSWORD&poll=1s&renew=5s&lease=15s&vip=true&timeout=500ms&passing=true&max_body=1048576",
        )
        .unwrap();
        assert_eq!(
            servers(&r),
            [
                "https://10.1.2.3:8762/eureka/v2",
                "https://[::1]:8761/eureka/v2",
                "https://h3:8761/eureka/v2"
            ]
        );
        let c = r.client().config();
        assert_eq!(c.user.as_deref(), Some("sd"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "pw0");
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(r.poll_interval(), Duration::from_secs(1));
        assert_eq!(
            r.default_lease(),
            Lease {
                renew: Duration::from_secs(5),
                duration: Duration::from_secs(15)
            }
        );
        assert_eq!(r.target("web"), Target::Vip("web".into()));
        assert!(r.passing_only);
    }

    #[test]
    fn defaults() {
        let r = EurekaRegistry::from_url("eureka://").unwrap();
        assert_eq!(servers(&r), ["http://127.0.0.1:8761/eureka"]);
        assert_eq!(r.poll_interval(), DEFAULT_POLL);
        assert_eq!(r.default_lease(), Lease::default());
        assert_eq!(r.target("web"), Target::App("WEB".into()));
        let r = EurekaRegistry::from_url("eureka://h:1/").unwrap();
        assert_eq!(servers(&r), ["http://h:1/eureka"]);
        assert_eq!(r.client().config().timeout, crate::DEFAULT_TIMEOUT);
        assert_eq!(r.client().config().max_body, crate::MAX_BODY);
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_password() {
        for (url, needle) in [
            ("eureka://h?colour=blue", "unknown option colour"),
            ("eureka://h?poll=10ms", "at least 100ms"),
            ("eureka://h?poll=10", "missing unit"),
            ("eureka://h?timeout=0s", "greater than 0"),
            ("eureka://h?renew=90s", "shorter than lease"),
            ("eureka://h?lease=1.5s", "whole number of seconds"),
            ("eureka://h?user=sd", "go together"),
            ("eureka://h?password=x", "go together"),
            ("eureka://h?user=a:b&password=x", "no ':'"),
            ("eureka://h:99999", "bad port"),
            ("eureka://h?tls=maybe", "not a boolean"),
            (
                "eureka://h?max_body=1000",
                "below the minimum of 65536 bytes",
            ),
            ("eureka://h?max_body=lots", "max_body"),
            (
                "eureka://h?user=u&password_env=SD_EUREKA_SURELY_UNSET",
                "SD_EUREKA_SURELY_UNSET is not set",
            ),
            ("consul://h", "expected an eureka:// URL"),
        ] {
            let err = EurekaRegistry::from_url(url).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = EurekaRegistry::from_url("eureka://h?password=sekrit&colour=x").unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
        assert!(!format!("{err:?}").contains("sekrit"));
        let r = EurekaRegistry::from_url("eureka://h?user=u&password=sekrit").unwrap();
        assert!(!format!("{r:?}").contains("sekrit"), "{r:?}");
    }

    #[test]
    fn capabilities_are_declared() {
        let r = EurekaRegistry::from_url("eureka://").unwrap();
        let c = r.capabilities();
        assert!(c.registration && c.ids && c.expiry && c.tags && c.metadata && c.health);
        assert!(!c.weight && !c.server_side_filtering);
        assert_eq!(r.scheme(), "eureka");
    }
}
