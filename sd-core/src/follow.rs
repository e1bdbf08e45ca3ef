//! What the instancer decorators of sdkit ([`crate::lkg`], [`crate::protect`],
//! [`crate::compose`]) share: the inner instancers, a task following them, and the cache the
//! task publishes into.

use std::sync::Arc;

use crate::cache::{InstanceCache, Subscription};
use crate::instancer::Instancer;
use crate::task::BackgroundTask;

/// The follower and its output, shared by a decorator and its subscriptions. Dropped with the
/// last of them, it cancels the task and closes the output.
pub(crate) struct Followed {
    pub(crate) out: Arc<InstanceCache>,
    /// The instancers followed (one, or a composed registry's members).
    pub(crate) inner: Vec<Arc<dyn Instancer>>,
    pub(crate) task: BackgroundTask,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.cancel();
        self.out.close();
    }
}

impl Followed {
    /// A subscription that keeps the follower (and through it the inner instancer) running.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Subscription {
        self.out.subscribe().keeping(self.clone())
    }

    /// Stops the follower, then the inner instancers (all at once); idempotent. The
    /// follower goes first: it must not see the inner instancers end and publish that
    /// (a composed instancer would fail over to a member being stopped with the rest).
    pub(crate) async fn stop(&self) {
        self.task.stop().await;
        futures::future::join_all(self.inner.iter().map(|i| i.stop())).await;
        self.out.close();
    }
}

/// The [`Registry`](crate::Registry) methods a decorating registry passes through to its
/// `inner` field unchanged: all but `instancer`.
macro_rules! pass_through_registry {
    () => {
        fn scheme(&self) -> &'static str {
            self.inner.scheme()
        }

        fn capabilities(&self) -> $crate::capabilities::Capabilities {
            self.inner.capabilities()
        }

        // Written as `async_trait` expands them: its attribute does not see into this macro.
        fn registrar<'life0, 'async_trait>(
            &'life0 self,
            registration: $crate::registrar::Registration,
        ) -> ::core::pin::Pin<
            Box<
                dyn ::core::future::Future<
                        Output = $crate::error::Result<
                            std::sync::Arc<dyn $crate::registrar::Registrar>,
                        >,
                    > + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.registrar(registration)
        }

        fn services<'life0, 'async_trait>(
            &'life0 self,
        ) -> ::core::pin::Pin<
            Box<
                dyn ::core::future::Future<Output = $crate::error::Result<Vec<String>>>
                    + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.services()
        }
    };
}
pub(crate) use pass_through_registry;
