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

/// A registry whose every service has the same fixed instances (go-kit's `FixedInstancer`
/// behind the [`Registry`] trait). It cannot register anything.
///
/// The list is served as it is to every query: the query's service name, tags and
/// passing-only flag are not applied. A `static://` URL carries neither tags nor health, so
/// filtering would silently turn a tagged query into an empty set; code that swaps a real
/// registry for a static list by URL keeps working unchanged.
///
/// ```
/// use sd_core::StaticRegistry;
/// let r = StaticRegistry::from_addrs(["10.0.0.1:80", "[::1]:81"]).unwrap();
/// assert_eq!(r.instances().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct StaticRegistry {
    instances: InstanceSet,
}

impl StaticRegistry {
    /// A registry over `instances`.
    pub fn new(instances: impl Into<InstanceSet>) -> Self {
        StaticRegistry {
            instances: instances.into(),
        }
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
        let _ = query; // every query gets the whole list, see the type's docs
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
