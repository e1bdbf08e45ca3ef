//! The `static://host:port,host:port` registry: a fixed list, read-only.

use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::event::InstanceSet;
use crate::instance::Instance;
use crate::instancer::{FixedInstancer, Instancer};
use crate::registrar::{Registrar, Registration};
use crate::registry::{Registry, ServiceQuery};

/// A registry of fixed instances (go-kit's `FixedInstancer` behind the [`Registry`] trait).
/// It cannot register anything.
///
/// By default the list is served to every service name (`static://h:p,h:p`); restricted to
/// one service with [`for_service`](Self::for_service) (`static://h:p,h:p/web`), an instancer
/// for any other service fails at construction, naming both. The query's tags and
/// passing-only flag are not applied: a `static://` URL carries neither tags nor health, so
/// filtering would silently turn a tagged query into an empty set, and its
/// [`Capabilities`] declare neither.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use sd_core::{Registry, ServiceQuery, StaticRegistry};
/// let r = StaticRegistry::from_addrs(["10.0.0.1:80", "[::1]:81"]).unwrap().for_service("web");
/// assert_eq!(r.instances().len(), 2);
/// assert!(r.instancer(&ServiceQuery::new("web")).await.is_ok());
/// assert!(r.instancer(&ServiceQuery::new("db")).await.is_err());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct StaticRegistry {
    instances: InstanceSet,
    service: Option<String>,
}

impl StaticRegistry {
    /// A registry over `instances`, served to every service name.
    pub fn new(instances: impl Into<InstanceSet>) -> Self {
        StaticRegistry {
            instances: instances.into(),
            service: None,
        }
    }

    /// Serves the list to `service` only; other services are an error.
    #[must_use]
    pub fn for_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The one service this list is for, if restricted.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// Parses `host:port` strings.
    pub fn from_addrs<I, S>(addrs: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self::new(Instance::parse_all(addrs)?))
    }

    /// The fixed instances.
    pub fn instances(&self) -> &InstanceSet {
        &self.instances
    }
}

#[async_trait]
impl Registry for StaticRegistry {
    fn scheme(&self) -> &'static str {
        "static"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    async fn instancer(&self, query: &ServiceQuery) -> Result<Arc<dyn Instancer>> {
        // Tags and passing-only are not applied, see the type's docs.
        if let Some(service) = &self.service {
            if *service != query.service {
                return Err(Error::config(format!(
                    "this static:// registry lists instances of service {service:?} only, \
                     not {:?}",
                    query.service
                )));
            }
        }
        Ok(Arc::new(FixedInstancer::new(self.instances.clone())))
    }

    async fn registrar(&self, registration: Registration) -> Result<Arc<dyn Registrar>> {
        Err(Error::config(format!(
            "static:// registries are read-only: cannot register {:?}; list instances in the URL \
             or use memory:// or a real registry",
            registration.service
        )))
    }
}
