//! The [`Instancer`] trait and the fixed (static) instancer.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::cache::{InstanceCache, Subscription};
use crate::event::{Event, InstanceSet};
use crate::instance::Instance;

/// Publishes the current set of instances of one service.
///
/// Each event is the complete set (or an error), never a delta; a new subscriber sees the
/// current state at once; identical updates are suppressed. Usable as a trait object, so a
/// registry chosen at run time from a URL can hand one out as `Arc<dyn Instancer>`.
///
/// ```
/// # tokio_test_block(async {
/// use sd_core::{FixedInstancer, Instance, Instancer};
/// let instancer = FixedInstancer::new(vec![Instance::new("10.0.0.2", 80), Instance::new("10.0.0.1", 80)]);
/// let mut sub = instancer.subscribe();
/// let event = sub.next().await.unwrap();
/// assert_eq!(event.addrs(), ["10.0.0.1:80", "10.0.0.2:80"]); // sorted
/// instancer.stop().await;
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[async_trait]
pub trait Instancer: Send + Sync + fmt::Debug {
    /// Subscribes to the instance sets. Drop the subscription to unsubscribe.
    ///
    /// The subscription should keep the instancer's watch running while it exists, even if
    /// the instancer value itself is dropped (see [`Subscription::keeping`]); every instancer
    /// in sdkit does. Only [`stop`](Instancer::stop) ends it early.
    fn subscribe(&self) -> Subscription;

    /// Stops watching the registry. Idempotent; returns once the background work has ended,
    /// after which no new event is published.
    async fn stop(&self);
}

#[async_trait]
impl<T: Instancer + ?Sized> Instancer for Arc<T> {
    fn subscribe(&self) -> Subscription {
        (**self).subscribe()
    }
    async fn stop(&self) {
        (**self).stop().await
    }
}

#[async_trait]
impl<T: Instancer + ?Sized> Instancer for Box<T> {
    fn subscribe(&self) -> Subscription {
        (**self).subscribe()
    }
    async fn stop(&self) {
        (**self).stop().await
    }
}

/// An instancer over a fixed list (go-kit's `FixedInstancer`, the `static://` scheme).
///
/// Unlike go-kit's (SD-3), subscribing never blocks and the caller's list is not reordered.
#[derive(Debug)]
pub struct FixedInstancer {
    cache: Arc<InstanceCache>,
}

impl FixedInstancer {
    /// An instancer that always publishes `instances` (sorted).
    pub fn new(instances: impl Into<InstanceSet>) -> Self {
        let cache = InstanceCache::new();
        cache.update(Event::Instances(instances.into()));
        FixedInstancer {
            cache: Arc::new(cache),
        }
    }

    /// Parses go-kit style `host:port` strings.
    pub fn from_addrs<I, S>(addrs: I) -> crate::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self::new(Instance::parse_all(addrs)?))
    }
}

#[async_trait]
impl Instancer for FixedInstancer {
    /// The subscription keeps the list alive after the instancer is dropped.
    fn subscribe(&self) -> Subscription {
        self.cache.subscribe().keeping(self.cache.clone())
    }
    async fn stop(&self) {
        self.cache.close();
    }
}
