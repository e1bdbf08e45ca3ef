//! Endpoints and the [`Factory`] that makes them from instances.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::BoxError;
use crate::instance::Instance;

/// Turns an [`Instance`] into an endpoint of type `E` (a client, a channel, a base URL...).
///
/// [`make`](Factory::make) runs once per new instance; a failure skips that instance alone
/// and is retried later. [`close`](Factory::close) runs exactly once for every endpoint made,
/// when its instance leaves or when the endpointer closes (go-kit's `io.Closer`).
///
/// Any `Fn(&Instance) -> Result<E, BoxError>` is a factory whose close does nothing:
///
/// ```
/// use sd_core::{Factory, Instance, BoxError};
/// let f = |i: &Instance| -> Result<String, BoxError> { Ok(format!("http://{}", i.addr())) };
/// assert_eq!(f.make(&Instance::new("::1", 80)).unwrap(), "http://[::1]:80");
/// ```
pub trait Factory<E>: Send + Sync + 'static {
    /// Builds the endpoint for `instance`.
    fn make(&self, instance: &Instance) -> Result<E, BoxError>;

    /// Releases the endpoint; called exactly once per endpoint made. Errors are the
    /// implementation's to log.
    fn close(&self, instance: &Instance, endpoint: &E) {
        let _ = (instance, endpoint);
    }
}

impl<E, F> Factory<E> for F
where
    F: Fn(&Instance) -> Result<E, BoxError> + Send + Sync + 'static,
{
    fn make(&self, instance: &Instance) -> Result<E, BoxError> {
        self(instance)
    }
}

/// An endpoint made by a [`Factory`], with the instance it was made for.
///
/// Cloning is two reference-count increments (the instance's and the value's). It
/// dereferences to `E`.
///
/// Compact: an endpoint is the two handles and nothing else. Its only allocation is the
/// value's `Arc` (the value inline in it); the instance is the handle the instance set
/// already holds. When only an instance's attributes change (same key, new tags, metadata,
/// weight or health), the endpointer describes the endpoint anew by pairing the same value
/// with the new instance: no allocation, and the factory does not run again
/// ([`same_value`](Self::same_value) holds across it).
pub struct Endpoint<E> {
    instance: Instance,
    value: Arc<E>,
}

impl<E> Endpoint<E> {
    /// Wraps a value made for `instance`.
    pub fn new(instance: Instance, value: E) -> Self {
        Endpoint {
            instance,
            value: Arc::new(value),
        }
    }

    /// The same endpoint value, described by an updated instance (same key, new metadata).
    pub(crate) fn with_instance(&self, instance: Instance) -> Self {
        Endpoint {
            instance,
            value: self.value.clone(),
        }
    }

    /// The instance this endpoint serves.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The endpoint value.
    pub fn value(&self) -> &E {
        &self.value
    }

    /// The endpoint value as a shared handle.
    pub fn value_arc(&self) -> &Arc<E> {
        &self.value
    }

    /// Whether two endpoints share the same value (the factory ran once for both).
    pub fn same_value(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.value, &b.value)
    }
}

impl<E> Clone for Endpoint<E> {
    fn clone(&self) -> Self {
        Endpoint {
            instance: self.instance.clone(),
            value: self.value.clone(),
        }
    }
}

impl<E> Deref for Endpoint<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.value
    }
}

impl<E> fmt::Debug for Endpoint<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.instance).finish()
    }
}
