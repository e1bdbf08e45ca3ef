//! [`ConsulRegistry`]: the `consul://` registry behind `sdkit::connect`.

use async_trait::async_trait;
use sd_core::instance::join_host_port;
use sd_core::{
    Backoff, Capabilities, Error, Instancer, Registrar, Registration, Registry, RegistryUrl,
    Result, ServiceQuery,
};
use std::path::PathBuf;
use std::sync::Arc;

use crate::client::{Client, ClientConfig, DEFAULT_PORT};
use crate::instancer::ConsulInstancer;
use crate::registrar::ConsulRegistrar;

pub use crate::client::MAX_WAIT;

/// A Consul agent as an sdkit [`Registry`]: instancers are blocking-query watches, registrars
/// register with the agent and keep the registration alive.
///
/// ```
/// use sd_consul::ConsulRegistry;
///
/// let registry = ConsulRegistry::from_url("consul://127.0.0.1:8500?dc=dc1&wait=30s&timeout=5s")?;
/// assert_eq!(registry.client().config().datacenter.as_deref(), Some("dc1"));
///
/// let err = ConsulRegistry::from_url("consul://127.0.0.1:8500?colour=blue").unwrap_err();
/// assert!(err.to_string().contains("unknown option colour"));
/// # Ok::<(), sd_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    client: Client,
    passing_only: bool,
    backoff: Backoff,
}

fn path_option(u: &mut RegistryUrl, key: &str) -> Result<Option<PathBuf>> {
    Ok(u.string(key)?.map(PathBuf::from))
}

impl ConsulRegistry {
    /// A registry over `client`.
    pub fn new(client: Client) -> Self {
        ConsulRegistry {
            client,
            passing_only: false,
            backoff: Backoff::default(),
        }
    }

    /// Parses a `consul://host[:port][?option=value&...]` URL. No request is sent.
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `dc` | datacenter to query | the agent's |
    /// | `token_env` / `token` | ACL token from an environment variable / inline (redacted in errors) | none |
    /// | `ns`, `partition` | namespace, admin partition (Consul Enterprise) | none |
    /// | `wait` | blocking-query wait, at most `10m` | `60s` |
    /// | `timeout` | timeout of each non-blocking request | `10s` |
    /// | `tls` | use HTTPS (`tls=false` with `ca` or `cert` is an error) | `false` |
    /// | `ca` | PEM file of the CA certificates to trust, instead of the built-in (webpki) roots (implies `tls`) | the built-in roots |
    /// | `public_roots` | with `ca`, trust the built-in roots too | `false` |
    /// | `max_body` | largest answer body read, in bytes (at least 65536) | 33554432 (32 MiB) |
    /// | `cert`, `key` | client certificate and key PEM files for mutual TLS (implies `tls`) | none |
    /// | `passing` | make every instancer passing-only | `false` |
    ///
    /// The host defaults to `127.0.0.1` and the port to 8500. Several hosts
    /// (`consul://a:8500,b:8500,c:8500`) make the first the agent and the others its
    /// [`fallback`](crate::ClientConfig::fallback), tried in turn when the current one stops
    /// answering: for talking to servers directly, without a local client agent. Errors name
    /// the bad part and never show the token.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut u = RegistryUrl::parse(url)?;
        if u.scheme() != "consul" {
            return Err(u.error(format!("expected a consul:// URL, got {}://", u.scheme())));
        }
        if !u.path().is_empty() && u.path() != "/" {
            return Err(u.error(format!(
                "consul:// takes no path (got {:?}); the agent address only",
                u.path()
            )));
        }
        // The first address is used; the others are the fallback, in order, when it stops
        // answering (ClientConfig::fallback).
        let mut addresses: Vec<String> = u
            .host_ports(DEFAULT_PORT)?
            .iter()
            .map(|(h, p)| join_host_port(h, *p))
            .collect();
        if addresses.is_empty() {
            addresses.push(join_host_port("127.0.0.1", DEFAULT_PORT));
        }
        let fallback = addresses.split_off(1);
        let mut config = ClientConfig::new(addresses.remove(0)).fallback(fallback);
        config.datacenter = u.string("dc")?;
        config.token = u.secret("token")?;
        config.namespace = u.string("ns")?;
        config.partition = u.string("partition")?;
        // The ranges of wait, timeout and max_body are checked once, by
        // ClientConfig::validate (in Client::new below).
        if let Some(wait) = u.duration("wait")? {
            config.wait = wait;
        }
        if let Some(timeout) = u.duration("timeout")? {
            config.timeout = timeout;
        }
        if let Some(max_body) = u.number::<usize>("max_body")? {
            config.max_body = max_body;
        }
        let tls = u.bool("tls")?;
        config.ca_file = path_option(&mut u, "ca")?;
        config.public_roots = u.bool("public_roots")?.unwrap_or(false);
        config.cert_file = path_option(&mut u, "cert")?;
        config.key_file = path_option(&mut u, "key")?;
        let passing_only = u.bool("passing")?.unwrap_or(false);
        u.finish()?;
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err(
                u.error("options cert and key go together (client certificate and its key)")
            );
        }
        let implies_tls = config.ca_file.is_some() || config.cert_file.is_some();
        if tls == Some(false) && implies_tls {
            return Err(u.error(
                "tls=false contradicts ca=/cert= (TLS files mean HTTPS): drop tls=false, \
                 or drop the TLS files to talk plain HTTP",
            ));
        }
        config.tls = tls.unwrap_or(false) || implies_tls;
        let client = Client::new(config).map_err(|e| match e {
            Error::Config(m) => u.error(m),
            other => other,
        })?;
        Ok(ConsulRegistry {
            client,
            passing_only,
            backoff: Backoff::default(),
        })
    }

    /// Replaces the backoff of the instancers made from now on (default 10 ms .. 1 min).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
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

    /// Starts a typed [`ConsulInstancer`] (what [`Registry::instancer`] returns, boxed).
    ///
    /// Use this instead of [`Registry::instancer`] (or `sdkit::connect`, which gives an
    /// `Arc<dyn Registry>`) for what only Consul has, such as
    /// [`ConsulInstancer::results_filtered_by_acls`]: build the registry with
    /// [`ConsulRegistry::from_url`] from the same URL.
    pub async fn consul_instancer(&self, query: &ServiceQuery) -> ConsulInstancer {
        let mut query = query.clone();
        query.passing_only |= self.passing_only;
        ConsulInstancer::start_with_backoff(self.client.clone(), query, self.backoff.clone()).await
    }

    /// A typed [`ConsulRegistrar`] (what [`Registry::registrar`] returns, boxed).
    pub fn consul_registrar(&self, registration: Registration) -> Result<ConsulRegistrar> {
        ConsulRegistrar::new(self.client.clone(), registration)
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    fn scheme(&self) -> &'static str {
        "consul"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        if query.service.trim().is_empty() {
            return Err(Error::config("consul: empty service name"));
        }
        Ok(Arc::new(self.consul_instancer(query).await))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Ok(Arc::new(self.consul_registrar(registration)?))
    }

    /// `GET /v1/catalog/services`. Consul lists its own `consul` service too.
    async fn services(&self) -> Result<Vec<String>> {
        self.client.catalog_services().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_option_is_read() {
        std::env::set_var("SD_CONSUL_REGISTRY_TEST_TOKEN", "t0k");
        let r = ConsulRegistry::from_url(
            "consul://10.1.2.3:8501?dc=eu1&token_env=SD_CONSUL_REGISTRY_TEST_TOKEN&ns=team&partition=p&wait=2s&timeout=500ms&passing=true&max_body=1048576",
        )
        .unwrap();
        let c = r.client().config();
        assert_eq!(c.address, "10.1.2.3:8501");
        assert_eq!(c.datacenter.as_deref(), Some("eu1"));
        assert_eq!(c.token.as_ref().unwrap().expose(), "t0k");
        assert_eq!(c.namespace.as_deref(), Some("team"));
        assert_eq!(c.partition.as_deref(), Some("p"));
        assert_eq!(c.wait, Duration::from_secs(2));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.max_body, 1 << 20);
        assert!(r.passing_only);
        assert!(!c.tls);
        assert!(!c.public_roots);
        assert_eq!(r.client().base_url().as_str(), "http://10.1.2.3:8501/");
    }

    #[test]
    fn defaults_and_ipv6() {
        let r = ConsulRegistry::from_url("consul://").unwrap();
        assert_eq!(r.client().config().address, "127.0.0.1:8500");
        let r = ConsulRegistry::from_url("consul://[::1]").unwrap();
        assert_eq!(r.client().base_url().as_str(), "http://[::1]:8500/");
        let r = ConsulRegistry::from_url("consul://agent.local?tls=true").unwrap();
        assert_eq!(r.client().base_url().as_str(), "https://agent.local:8500/");
        let r = ConsulRegistry::from_url("consul://a:1,b,[::1]:3").unwrap();
        assert_eq!(r.client().config().address, "a:1");
        assert_eq!(r.client().config().fallback, ["b:8500", "[::1]:3"]);
        assert_eq!(r.client().base_url().as_str(), "http://a:1/");
        assert_eq!(r.client().config().wait, crate::DEFAULT_WAIT);
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_token() {
        for (url, needle) in [
            ("consul://h?colour=blue", "unknown option colour"),
            ("consul://h?wait=20m", "between 1ms and 10m"),
            ("consul://h?wait=0s", "between 1ms and 10m"),
            ("consul://h?max_body=1000", "below the minimum"),
            ("consul://h?max_body=lots", "max_body"),
            ("consul://h?wait=10", "missing unit"),
            ("consul://h?timeout=0s", "greater than 0"),
            ("consul://h/path", "takes no path"),
            ("consul://h?cert=/x.pem", "cert and key go together"),
            ("consul://h?ca=/nonexistent/ca.pem", "cannot read CA file"),
            (
                "consul://h?tls=false&ca=/x/ca.pem",
                "tls=false contradicts ca=/cert=",
            ),
            (
                "consul://h?tls=false&cert=/x/c.pem&key=/x/k.pem",
                "tls=false contradicts",
            ),
            (
                "consul://h?token_env=SD_CONSUL_SURELY_UNSET",
                "SD_CONSUL_SURELY_UNSET is not set",
            ),
            ("consul://h?dc=", "option dc is empty"),
            ("consul://h?passing=maybe", "not a boolean"),
            ("etcd://h", "expected a consul:// URL"),
        ] {
            let err = ConsulRegistry::from_url(url).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = ConsulRegistry::from_url("consul://h?token=sekrit&colour=x").unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
        assert!(!format!("{err:?}").contains("sekrit"));
        let r = ConsulRegistry::from_url("consul://h?token=sekrit").unwrap();
        assert!(!format!("{r:?}").contains("sekrit"));
    }
}
