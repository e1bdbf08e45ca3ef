//! # sdkit
//!
//! Client-side service discovery and load balancing for Rust, after go-kit's `sd` package:
//! find the instances of a service in Consul, etcd, ZooKeeper, Eureka or DNS SRV, turn them
//! into endpoints, balance requests over them, and announce your own service — and swap one
//! registry for another by changing a URL, not code.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use sdkit::{Instance, Registration, ServiceQuery};
//!
//! // `SD_REGISTRY=consul://127.0.0.1:8500` (with the `consul` feature) would need no code change.
//! let registry = sdkit::connect("memory://docs")?;
//!
//! let registrar = registry.registrar(Registration::new("web", Instance::new("127.0.0.1", 8080))).await?;
//! registrar.register().await?;
//!
//! let instancer = registry.instancer(&ServiceQuery::new("web")).await?;
//! let mut events = instancer.subscribe();
//! assert_eq!(events.next().await.unwrap().addrs(), ["127.0.0.1:8080"]);
//! # Ok::<(), sdkit::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Registries and features
//!
//! | URL | feature | backend |
//! |---|---|---|
//! | `memory://[name]` | always | the embedded in-process registry ([`MemoryRegistry`]) |
//! | `static://host:port,host:port[/service]` | always | a fixed list ([`StaticRegistry`]), for every service or for the one named |
//! | `consul://host:port?dc=..&token_env=..` | `consul` | Consul agent (crate `sd-consul`, re-exported as `sdkit::consul`) |
//! | `etcd://host:port[,host:port]?prefix=..&user=..&password_env=..` (or `etcdv3://`) | `etcd` | etcd v3 (crate `sd-etcdv3`, re-exported as `sdkit::etcd`) |
//! | `zk://host:port[,host:port...]/base?session_timeout=..&digest_env=..` (or `zookeeper://`) | `zk` | ZooKeeper ensemble (crate `sd-zk`, re-exported as `sdkit::zk`) |
//! | `eureka://host:port[,host:port]/eureka?poll=..&user=..&password_env=..` | `eureka` | Eureka servers (crate `sd-eureka`, re-exported as `sdkit::eureka`) |
//! | `dns+srv://[ns:port]/?zone=..&max_refresh=..` (`dnssrv://`) | `dnssrv` | DNS SRV records (crate `sd-dnssrv`, re-exported as `sdkit::dnssrv`) |
//!
//! A scheme whose feature is off fails with an error naming the feature to turn on. The full
//! grammar is in `docs/URLS.md`; what each registry can do is in `docs/BACKENDS.md`.
//!
//! The `metrics` feature counts discovery, registration and balancing through the `metrics`
//! facade crate (any exporter); `tracing` spans are always there. Both are described in
//! `docs/OBSERVABILITY.md`.
#![warn(missing_docs)]

use std::sync::Arc;

pub use sd_core::*;

/// Balancers, retry and outlier ejection over any [`Endpointer`] (the `sd-lb` crate).
pub use sd_lb as lb;

/// The Consul backend (the `sd-consul` crate), with the `consul` feature.
#[cfg(feature = "consul")]
pub use sd_consul as consul;

/// The DNS SRV backend (the `sd-dnssrv` crate), with the `dnssrv` feature.
#[cfg(feature = "dnssrv")]
pub use sd_dnssrv as dnssrv;
/// The etcd v3 backend (the `sd-etcdv3` crate), with the `etcd` feature.
#[cfg(feature = "etcd")]
pub use sd_etcdv3 as etcd;
/// The Eureka backend (the `sd-eureka` crate), with the `eureka` feature.
#[cfg(feature = "eureka")]
pub use sd_eureka as eureka;
/// The ZooKeeper backend (the `sd-zk` crate), with the `zk` feature.
#[cfg(feature = "zk")]
pub use sd_zk as zk;

/// The environment variable [`from_env`] reads.
pub const ENV_VAR: &str = "SD_REGISTRY";

/// The registry used when [`ENV_VAR`] is unset: the process-wide embedded registry.
pub const DEFAULT_URL: &str = "memory://default";

/// Every scheme this crate knows, whether or not its feature is on in this build.
pub const SCHEMES: &[&str] = &[
    "memory", "static", "consul", "etcd", "zk", "eureka", "dns+srv",
];

/// Opens the registry named by `url`. No network traffic happens here; bad URLs and options
/// fail now, with a message that names the bad part.
///
/// ```
/// let err = sdkit::connect("foo://x").unwrap_err().to_string();
/// assert!(err.contains("unknown registry scheme foo://"));
/// assert!(err.contains("memory, static, consul"));
/// ```
///
/// The registry is wrapped in an [`ObservedRegistry`]: instancer creation, registrations and
/// deregistrations run in `sdkit.registry` spans, and with the `metrics` feature they are
/// counted (docs/OBSERVABILITY.md).
///
/// Every scheme also accepts the common options of [`CommonOptions`]: `cache=/dir` keeps a
/// last-known-good snapshot of each instancer on disk and serves it, marked stale, when the
/// registry cannot be reached at start ([`lkg`]; the registry is wrapped in a
/// [`DiskCachedRegistry`](lkg::DiskCachedRegistry)); `protect=true` (or `protect=<hold>`)
/// holds back a sudden empty answer until the registry confirms it or the hold (30 s by
/// default) ends ([`protect`]; **on by default** for every registry over the network, off
/// for `memory://` and `static://`; `protect=false` turns it off).
///
/// Registries compose by URL ([`compose`]): `failover:URL,URL,...` serves the first member
/// whose set is fresh and switches back when it returns; `merge:URL,URL,...` serves the
/// union, each instance naming its member in metadata ([`compose::SOURCE_META`]). Each
/// member is any URL above, with its own options; registration goes to every member.
///
/// ```
/// let registry = sdkit::connect("merge:memory://old,memory://new").unwrap();
/// assert_eq!(registry.scheme(), "merge");
/// let err = sdkit::connect("failover:consul://a:8500").unwrap_err().to_string();
/// assert!(err.contains("needs at least two registry URLs"), "{err}");
/// ```
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let dir = std::env::temp_dir().join(format!("sdkit-connect-doc-{}", std::process::id()));
/// let registry = sdkit::connect(&format!("memory://docs-lkg?cache={}", dir.display()))?;
/// let instancer = registry.instancer(&sdkit::ServiceQuery::new("web")).await?;
/// instancer.stop().await;
/// assert!(dir.join("k-memory+docs-lkg+web+0+all.lkg").exists());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), sdkit::Error>(())
/// # }).unwrap();
/// ```
pub fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = match compose::parse(url)? {
        Some((composition, urls)) => {
            let mut members = Vec::with_capacity(urls.len());
            for (n, member) in urls.iter().enumerate() {
                let registry = connect_one(member).map_err(|e| match e {
                    Error::Config(m) => {
                        Error::Config(format!("{composition}: member {}: {m}", n + 1))
                    }
                    other => other,
                })?;
                members.push(compose::Member::new(
                    compose::member_label(member),
                    registry,
                ));
            }
            Arc::new(compose::ComposedRegistry::new(composition, members)?)
        }
        None => connect_one(url)?,
    };
    Ok(Arc::new(ObservedRegistry::new(registry)))
}

/// One registry URL (not composed), with its common options applied.
fn connect_one(url: &str) -> Result<Arc<dyn Registry>> {
    let (url, common) = CommonOptions::split(url)?;
    let mut registry = open(&url)?;
    // Protection inside the disk cache: a held-back shrink is never written to disk.
    if let Some(protection) = common.protect {
        registry = Arc::new(protect::ProtectedRegistry::new(registry, protection));
    }
    if let Some(dir) = common.cache {
        let identity = RegistryUrl::parse(&url)?.identity();
        registry = Arc::new(lkg::DiskCachedRegistry::new(
            registry,
            lkg::DiskCache::new(dir),
            identity,
        ));
    }
    Ok(registry)
}

/// [`connect`] without the [`ObservedRegistry`] around it nor the common options.
fn open(url: &str) -> Result<Arc<dyn Registry>> {
    let parsed = RegistryUrl::parse(url)?;
    match parsed.scheme() {
        "memory" => {
            if !parsed.path().is_empty() && parsed.path() != "/" {
                return Err(parsed.error("memory:// takes a name only, e.g. memory://tests"));
            }
            let name = match parsed.hosts() {
                [] => "default".to_string(),
                [one] => one.clone(),
                _ => return Err(parsed.error("memory:// takes one name, not a list")),
            };
            parsed.finish()?;
            Ok(Arc::new(MemoryRegistry::named(&name)))
        }
        "static" => {
            if parsed.hosts().is_empty() {
                return Err(parsed.error(
                    "static:// needs at least one host:port, e.g. static://10.0.0.1:80,10.0.0.2:80",
                ));
            }
            let mut registry =
                StaticRegistry::from_addrs(parsed.hosts()).map_err(|e| parsed.error(e))?;
            match parsed.path().trim_matches('/') {
                "" => {}
                service if service.contains('/') => {
                    return Err(parsed.error(format!(
                        "static:// takes one service name as its path, e.g. static://10.0.0.1:80/web, not {service:?}"
                    )))
                }
                service => registry = registry.for_service(service),
            }
            parsed.finish()?;
            Ok(Arc::new(registry))
        }
        "consul" => consul_registry(url),
        "etcd" | "etcdv3" => etcd_registry(url),
        "zk" | "zookeeper" => zk_registry(url),
        "eureka" => eureka_registry(url),
        "dns+srv" | "dnssrv" => dnssrv_registry(url),
        other => Err(parsed.error(format!(
            "unknown registry scheme {other}://; known schemes: {}",
            SCHEMES.join(", ")
        ))),
    }
}

#[cfg(feature = "consul")]
fn consul_registry(url: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(sd_consul::ConsulRegistry::from_url(url)?))
}

#[cfg(not(feature = "consul"))]
fn consul_registry(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::config(
        "consul:// needs the `consul` feature of sdkit: add `features = [\"consul\"]` to the sdkit dependency",
    ))
}

#[cfg(feature = "etcd")]
fn etcd_registry(url: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(sd_etcdv3::EtcdRegistry::from_url(url)?))
}

#[cfg(not(feature = "etcd"))]
fn etcd_registry(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::config(
        "etcd:// needs the `etcd` feature of sdkit: add `features = [\"etcd\"]` to the sdkit dependency",
    ))
}

#[cfg(feature = "zk")]
fn zk_registry(url: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(sd_zk::ZkRegistry::from_url(url)?))
}

#[cfg(not(feature = "zk"))]
fn zk_registry(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::config(
        "zk:// needs the `zk` feature of sdkit: add `features = [\"zk\"]` to the sdkit dependency",
    ))
}

#[cfg(feature = "eureka")]
fn eureka_registry(url: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(sd_eureka::EurekaRegistry::from_url(url)?))
}

#[cfg(not(feature = "eureka"))]
fn eureka_registry(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::config(
        "eureka:// needs the `eureka` feature of sdkit: add `features = [\"eureka\"]` to the sdkit dependency",
    ))
}

#[cfg(feature = "dnssrv")]
fn dnssrv_registry(url: &str) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(sd_dnssrv::DnsRegistry::from_url(url)?))
}

#[cfg(not(feature = "dnssrv"))]
fn dnssrv_registry(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::config(
        "dns+srv:// needs the `dnssrv` feature of sdkit: add `features = [\"dnssrv\"]` to the sdkit dependency",
    ))
}

/// Opens the registry named by the `SD_REGISTRY` environment variable, or the embedded
/// `memory://default` registry when it is unset or empty.
///
/// Logs at info which registry was chosen and why (secrets redacted), so a deployment that
/// forgot to set `SD_REGISTRY` says in its log that it is using an empty in-process registry.
pub fn from_env() -> Result<Arc<dyn Registry>> {
    match std::env::var(ENV_VAR) {
        Ok(url) if !url.trim().is_empty() => {
            let registry = connect(&url).map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("{ENV_VAR}: {m}")),
                other => other,
            })?;
            tracing::info!(url = %sd_core::config::redact(&url), "registry chosen from {ENV_VAR}");
            Ok(registry)
        }
        _ => {
            let registry = connect(DEFAULT_URL)?;
            tracing::info!(
                url = DEFAULT_URL,
                "{ENV_VAR} is not set: using the embedded in-process registry (it sees only \
                 this process's registrations)"
            );
            Ok(registry)
        }
    }
}
