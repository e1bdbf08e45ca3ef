//! The [`Registry`] trait: one handle per registry that hands out instancers and registrars.
//!
//! This is what makes registries swappable by configuration: the `sdkit` facade turns a URL
//! into an `Arc<dyn Registry>`, and application code only ever sees this trait.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::instance::{Health, Instance};
use crate::instancer::Instancer;
use crate::registrar::{Registrar, Registration};

/// Which instances of a service to watch.
///
/// ```
/// use sd_core::ServiceQuery;
/// let q = ServiceQuery::new("web").tag("v2").tag("eu").passing_only(true);
/// assert_eq!(q.tags, ["v2", "eu"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceQuery {
    /// The service name.
    pub service: String,
    /// Only instances carrying **all** of these tags.
    pub tags: Vec<String>,
    /// Only instances whose health is exactly [`Health::Passing`]: `Warning`, `Critical`
    /// and `Unknown` are left out. This is Consul's `?passing` filter (CONSUL-3), and every
    /// backend applies the same rule, so swapping registries keeps the same set.
    pub passing_only: bool,
}

impl ServiceQuery {
    /// All instances of `service`.
    pub fn new(service: impl Into<String>) -> Self {
        ServiceQuery {
            service: service.into(),
            tags: Vec::new(),
            passing_only: false,
        }
    }

    /// Also require `tag`.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Only passing instances.
    #[must_use]
    pub fn passing_only(mut self, yes: bool) -> Self {
        self.passing_only = yes;
        self
    }

    /// Whether `instance` satisfies the tag and health filters (client-side filtering).
    pub fn matches(&self, instance: &Instance) -> bool {
        self.tags.iter().all(|t| instance.has_tag(t))
            && (!self.passing_only || instance.health() == Health::Passing)
    }
}

impl From<&str> for ServiceQuery {
    fn from(s: &str) -> Self {
        ServiceQuery::new(s)
    }
}

impl From<String> for ServiceQuery {
    fn from(s: String) -> Self {
        ServiceQuery::new(s)
    }
}

/// A service registry: the source of instancers and registrars for named services.
#[async_trait]
pub trait Registry: Send + Sync + fmt::Debug {
    /// The URL scheme this registry was made from (`memory`, `consul`, ...).
    fn scheme(&self) -> &'static str;

    /// What this registry can carry and do (see [`Capabilities`]). Applications can branch on
    /// it; the conformance suite checks every declared capability against the real server.
    fn capabilities(&self) -> Capabilities;

    /// Starts watching a service. Backends that can (Consul, etcd, ZooKeeper, Eureka, DNS)
    /// query the registry once before returning, so the instancer has a state at once.
    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>>;

    /// A registrar for one instance. Nothing is sent until [`Registrar::register`].
    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>>;

    /// The names of the services the registry holds, sorted and without duplicates, where
    /// the registry can list them ([`Capabilities::list_services`]). The names are as the
    /// registry stores them (Eureka upper-cases application names).
    ///
    /// The default fails with [`Error::Unsupported`](crate::Error::Unsupported): registries
    /// that cannot enumerate names (`static://`, `dns+srv://`) keep it.
    async fn services(&self) -> Result<Vec<String>> {
        Err(crate::error::Error::unsupported(
            self.scheme(),
            format!(
                "{}:// registries cannot list their services; name the service instead",
                self.scheme()
            ),
        ))
    }
}
