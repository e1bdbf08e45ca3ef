//! [`DnsRegistry`]: the `dns+srv://` (alias `dnssrv://`) registry behind `sdkit::connect`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::rr::Name;
use sd_core::{
    Capabilities, Error, Instancer, Registrar, Registration, Registry, RegistryUrl, Result,
    ServiceQuery,
};

use crate::client::{fqdn, Client, ClientConfig, TsigKey, DEFAULT_PORT};
use crate::instancer::{srv_name, DnsInstancer, LookupOptions};
use crate::registrar::{DnsRegistrar, DEFAULT_REASSERT, DEFAULT_RECORD_TTL};

/// DNS SRV records as an sdkit [`Registry`]: instancers read `_<service>._<proto>.<zone>`
/// at the records' TTL; registrars add and delete records with RFC 2136 dynamic updates.
///
/// ```
/// use std::time::Duration;
/// use sd_dnssrv::DnsRegistry;
///
/// let registry = DnsRegistry::from_url(
///     "dns+srv://127.0.0.1:15353/?zone=sd.test&min_refresh=500ms&max_refresh=5s&resolve_targets=1",
/// )?;
/// assert_eq!(registry.options().max_refresh, Duration::from_secs(5));
/// assert_eq!(registry.zone().unwrap().to_ascii(), "sd.test.");
///
/// let err = DnsRegistry::from_url("dnssrv://127.0.0.1?zone=sd.test&colour=blue").unwrap_err();
/// assert!(err.to_string().contains("unknown option colour"));
/// # Ok::<(), sd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DnsRegistry {
    client: Client,
    zone: Option<Name>,
    proto: String,
    options: LookupOptions,
    record_ttl: Duration,
    reassert: Duration,
}

fn nameserver(u: &RegistryUrl) -> Result<Option<SocketAddr>> {
    match u.host_ports(DEFAULT_PORT)?.as_slice() {
        [] => Ok(None),
        [(host, port)] => {
            let ip: IpAddr = host.parse().map_err(|_| {
                u.error(format!(
                    "nameserver {host:?} must be an IP address (a name would need DNS to find DNS)"
                ))
            })?;
            Ok(Some(SocketAddr::new(ip, *port)))
        }
        _ => Err(u.error("dns+srv:// takes one nameserver (or none for the system's)")),
    }
}

impl DnsRegistry {
    /// A registry over `client`, reading names in `zone` with `options`.
    pub fn new(client: Client, zone: Option<Name>, options: LookupOptions) -> Self {
        DnsRegistry {
            client,
            zone,
            proto: "tcp".to_string(),
            options,
            record_ttl: DEFAULT_RECORD_TTL,
            reassert: DEFAULT_REASSERT,
        }
    }

    /// Parses a `dns+srv://[nameserver[:port]]/?option=value&...` URL (`dnssrv://` is the
    /// same). No query is sent.
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `zone` | the zone service names are looked up in: `_<service>._<proto>.<zone>` | none: only full SRV names (`_x._tcp.example.com`) |
    /// | `proto` | the protocol label, `tcp` or `udp` | `tcp` |
    /// | `min_refresh` | never re-read sooner, whatever the TTL | `1s` |
    /// | `max_refresh` | never re-read later, whatever the TTL: the propagation bound | `30s` |
    /// | `resolve_targets` | resolve targets to addresses (`ip:port` instances, target in `dns.target`) | `false` |
    /// | `all_priorities` | publish every priority group, not only the lowest | `false` |
    /// | `timeout` | wait for one answer | `2s` |
    /// | `attempts` | tries per query | `2` |
    /// | `record_ttl` | TTL of the records a registrar writes | `10s` |
    /// | `reassert` | how often a registrar re-sends its records (puts them back if the zone lost them), at least `1s` | `30s` |
    /// | `tsig_name`, `tsig_secret_env` / `tsig_secret`, `tsig_algorithm` | TSIG key signing updates (base64 secret, as in BIND's `key`; `hmac-sha256`, `hmac-sha384`, `hmac-sha512`) | none, `hmac-sha256` |
    ///
    /// Without a nameserver the system resolver configuration (`/etc/resolv.conf`) is used,
    /// and updates go to its first nameserver. Errors name the bad part and never show the
    /// TSIG secret.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut u = RegistryUrl::parse(url)?;
        if u.scheme() != "dns+srv" && u.scheme() != "dnssrv" {
            return Err(u.error(format!(
                "expected a dns+srv:// (or dnssrv://) URL, got {}://",
                u.scheme()
            )));
        }
        if !u.path().is_empty() && u.path() != "/" {
            return Err(u.error(format!(
                "dns+srv:// takes no path (got {:?}); give the zone as ?zone=example.com",
                u.path()
            )));
        }
        let mut config = ClientConfig::new(nameserver(&u)?);
        let zone = match u.string("zone")? {
            Some(z) => Some(fqdn(&z).map_err(|e| u.error(format!("option zone: {e}")))?),
            None => None,
        };
        let proto = u.string("proto")?.unwrap_or_else(|| "tcp".to_string());
        if proto != "tcp" && proto != "udp" {
            return Err(u.error(format!("option proto={proto:?}: use tcp or udp")));
        }
        let mut options = LookupOptions::default();
        if let Some(d) = u.duration("min_refresh")? {
            options.min_refresh = d;
        }
        if let Some(d) = u.duration("max_refresh")? {
            options.max_refresh = d;
        }
        if options.min_refresh < Duration::from_millis(10) {
            return Err(u.error("option min_refresh must be at least 10ms"));
        }
        if options.max_refresh < options.min_refresh {
            return Err(u.error(format!(
                "max_refresh ({:?}) is below min_refresh ({:?})",
                options.max_refresh, options.min_refresh
            )));
        }
        options.resolve_targets = u.bool("resolve_targets")?.unwrap_or(false);
        options.all_priorities = u.bool("all_priorities")?.unwrap_or(false);
        if let Some(t) = u.duration("timeout")? {
            config.timeout = t;
        }
        if let Some(a) = u.number::<usize>("attempts")? {
            config.attempts = a;
        }
        let record_ttl = u.duration("record_ttl")?.unwrap_or(DEFAULT_RECORD_TTL);
        if record_ttl.as_secs() > u64::from(i32::MAX as u32) {
            return Err(u.error("option record_ttl is beyond the DNS maximum (68 years)"));
        }
        let reassert = u.duration("reassert")?.unwrap_or(DEFAULT_REASSERT);
        if reassert < Duration::from_secs(1) {
            return Err(u.error("option reassert must be at least 1s"));
        }
        let tsig_name = u.string("tsig_name")?;
        let tsig_secret = u.secret("tsig_secret")?;
        let tsig_algorithm = u.string("tsig_algorithm")?;
        config.tsig = match (tsig_name, tsig_secret) {
            (Some(name), Some(secret)) => Some(TsigKey {
                name,
                algorithm: tsig_algorithm.unwrap_or_else(|| "hmac-sha256".to_string()),
                secret,
            }),
            (None, None) if tsig_algorithm.is_none() => None,
            _ => {
                return Err(
                    u.error("a TSIG key needs both tsig_name and tsig_secret_env (or tsig_secret)")
                )
            }
        };
        u.finish()?;
        let client = Client::new(config).map_err(|e| match e {
            Error::Config(m) => u.error(m),
            other => other,
        })?;
        Ok(DnsRegistry {
            client,
            zone,
            proto,
            options,
            record_ttl,
            reassert,
        })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The zone service names are looked up in.
    pub fn zone(&self) -> Option<&Name> {
        self.zone.as_ref()
    }

    /// The lookup options of the instancers made from this registry.
    pub fn options(&self) -> &LookupOptions {
        &self.options
    }

    /// Replaces the lookup options of the instancers made from now on.
    #[must_use]
    pub fn with_options(mut self, options: LookupOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the TTL of the records registrars write.
    #[must_use]
    pub fn with_record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// The SRV name looked up for `service` (see [`srv_name`]).
    pub fn srv_name(&self, service: &str) -> Result<Name> {
        srv_name(service, &self.proto, self.zone.as_ref())
    }

    /// Starts a typed [`DnsInstancer`] (what [`Registry::instancer`] returns, boxed).
    pub async fn dns_instancer(&self, query: &ServiceQuery) -> Result<DnsInstancer> {
        let name = self.srv_name(&query.service)?;
        if !query.tags.is_empty() {
            tracing::warn!(backend = crate::BACKEND, name = %name, tags = ?query.tags,
                "SRV records carry no tags: a tag filter leaves every instance out");
        }
        Ok(DnsInstancer::start(
            self.client.clone(),
            name,
            query.clone(),
            self.options.clone(),
        )
        .await)
    }

    /// A typed [`DnsRegistrar`] (what [`Registry::registrar`] returns, boxed).
    pub fn dns_registrar(&self, registration: Registration) -> Result<DnsRegistrar> {
        let zone = self.zone.as_ref().ok_or_else(|| {
            Error::config("dnssrv: registration needs the zone to update: add ?zone=... to the URL")
        })?;
        DnsRegistrar::new(
            self.client.clone(),
            registration,
            zone,
            &self.proto,
            self.record_ttl,
            self.reassert,
        )
    }
}

#[async_trait]
impl Registry for DnsRegistry {
    fn scheme(&self) -> &'static str {
        "dns+srv"
    }

    /// Registration (RFC 2136) and weight; no expiry, tags, metadata or health.
    fn capabilities(&self) -> Capabilities {
        Capabilities::none().with_registration().with_weight()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        Ok(Arc::new(self.dns_instancer(query).await?))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Ok(Arc::new(self.dns_registrar(registration)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_read() {
        std::env::set_var("SD_DNSSRV_TEST_TSIG", "c2VjcmV0c2VjcmV0");
        let r = DnsRegistry::from_url(
            "dns+srv://127.0.0.1:15353/?zone=sd.test&proto=udp&min_refresh=2s&max_refresh=9s\
             &resolve_targets=1&all_priorities=true&timeout=500ms&attempts=3&record_ttl=4s&reassert=7s\
             &tsig_name=k1&tsig_secret_env=SD_DNSSRV_TEST_TSIG&tsig_algorithm=hmac-sha512",
        )
        .unwrap();
        let c = r.client().config();
        assert_eq!(c.nameserver, Some("127.0.0.1:15353".parse().unwrap()));
        assert_eq!((c.timeout, c.attempts), (Duration::from_millis(500), 3));
        let key = c.tsig.as_ref().unwrap();
        assert_eq!(
            (key.name.as_str(), key.algorithm.as_str()),
            ("k1", "hmac-sha512")
        );
        assert_eq!(
            r.options(),
            &LookupOptions {
                min_refresh: Duration::from_secs(2),
                max_refresh: Duration::from_secs(9),
                resolve_targets: true,
                all_priorities: true,
            }
        );
        assert_eq!(r.record_ttl, Duration::from_secs(4));
        assert_eq!(r.reassert, Duration::from_secs(7));
        assert_eq!(r.srv_name("web").unwrap().to_ascii(), "_web._udp.sd.test.");
        assert!(!format!("{r:?}").contains("c2VjcmV0c2VjcmV0"));
    }

    #[test]
    fn defaults_alias_and_port() {
        let r = DnsRegistry::from_url("dnssrv://10.0.0.53?zone=example.com").unwrap();
        assert_eq!(
            r.client().config().nameserver,
            Some("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(r.options(), &LookupOptions::default());
        let r = DnsRegistry::from_url("dns+srv://[::1]:5353/?zone=example.com").unwrap();
        assert_eq!(
            r.client().config().nameserver,
            Some("[::1]:5353".parse().unwrap())
        );
    }

    #[test]
    fn no_nameserver_means_the_system_configuration() {
        match DnsRegistry::from_url("dns+srv://?zone=sd.test") {
            Ok(r) => {
                assert!(std::path::Path::new("/etc/resolv.conf").exists());
                assert_eq!(r.client().config().nameserver, None);
            }
            Err(e) => assert!(
                e.to_string()
                    .contains("system resolver configuration cannot be read"),
                "{e}"
            ),
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_secret() {
        for (url, needle) in [
            (
                "dns+srv://127.0.0.1?zone=x&colour=blue",
                "unknown option colour",
            ),
            ("dns+srv://ns.example.com/?zone=x", "must be an IP address"),
            ("dns+srv://1.1.1.1,8.8.8.8/?zone=x", "one nameserver"),
            ("dns+srv://127.0.0.1/sd.test", "takes no path"),
            ("dns+srv://127.0.0.1/?zone=a..b", "option zone"),
            ("dns+srv://127.0.0.1/?zone=x&proto=sctp", "use tcp or udp"),
            (
                "dns+srv://127.0.0.1/?min_refresh=5s&max_refresh=1s",
                "below min_refresh",
            ),
            ("dns+srv://127.0.0.1/?min_refresh=1ms", "at least 10ms"),
            ("dns+srv://127.0.0.1/?max_refresh=10", "missing unit"),
            (
                "dns+srv://127.0.0.1/?resolve_targets=maybe",
                "not a boolean",
            ),
            ("dns+srv://127.0.0.1/?timeout=0s", "greater than 0"),
            ("dns+srv://127.0.0.1/?attempts=0", "at least 1"),
            (
                "dns+srv://127.0.0.1/?reassert=500ms",
                "reassert must be at least 1s",
            ),
            ("dns+srv://127.0.0.1/?tsig_name=k", "needs both"),
            (
                "dns+srv://127.0.0.1/?tsig_name=k&tsig_secret=%21%21&zone=x",
                "not valid base64",
            ),
            (
                "dns+srv://127.0.0.1/?tsig_name=k&tsig_secret_env=SD_DNSSRV_SURELY_UNSET",
                "SD_DNSSRV_SURELY_UNSET is not set",
            ),
            ("consul://127.0.0.1", "expected a dns+srv://"),
        ] {
            let err = DnsRegistry::from_url(url).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = DnsRegistry::from_url("dns+srv://127.0.0.1/?tsig_secret=c2VjcmV0&colour=x")
            .unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        assert!(!format!("{err:?}").contains("c2VjcmV0"));
    }

    #[tokio::test]
    async fn registration_needs_a_zone_and_names_need_one_too() {
        let r = DnsRegistry::from_url("dns+srv://127.0.0.1:1/").unwrap();
        let reg = Registration::new("web", sd_core::Instance::new("10.0.0.1", 80));
        let err = r.registrar(reg).await.unwrap_err().to_string();
        assert!(err.contains("needs the zone"), "{err}");
        let err = r
            .instancer(&ServiceQuery::new("web"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a zone"), "{err}");
    }
}
