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

struct Inner<E> {
    instance: Instance,
    value: Arc<E>,
}

/// An endpoint made by a [`Factory`], with the instance it was made for.
///
/// Cloning is a reference-count increment. It dereferences to `E`.
pub struct Endpoint<E>(Arc<Inner<E>>);

impl<E> Endpoint<E> {
    /// Wraps a value made for `instance`.
    pub fn new(instance: Instance, value: E) -> Self {
        Endpoint(Arc::new(Inner {
            instance,
            value: Arc::new(value),
        }))
    }

    /// The same endpoint value, described by an updated instance (same key, new metadata).
    pub(crate) fn with_instance(&self, instance: Instance) -> Self {
        Endpoint(Arc::new(Inner {
            instance,
            value: self.0.value.clone(),
        }))
    }

    /// The instance this endpoint serves.
    pub fn instance(&self) -> &Instance {
        &self.0.instance
    }

    /// The endpoint value.
    pub fn value(&self) -> &E {
        &self.0.value
    }

    /// The endpoint value as a shared handle.
    pub fn value_arc(&self) -> &Arc<E> {
        &self.0.value
    }

    /// Whether two endpoints share the same value (the factory ran once for both).
    pub fn same_value(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0.value, &b.0.value)
    }
}

impl<E> Clone for Endpoint<E> {
    fn clone(&self) -> Self {
        Endpoint(self.0.clone())
    }
}

impl<E> Deref for Endpoint<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.0.value
    }
}

impl<E> fmt::Debug for Endpoint<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.0.instance).finish()
    }
}
