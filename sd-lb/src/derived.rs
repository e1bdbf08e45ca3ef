//! State a balancer wrapper derives from its inner balancer's current snapshot (the
//! endpoints in slow start, the zones of the endpoints), rederived after each update.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use sd_core::{Endpoint, Endpoints, Snapshot};

/// A value derived from one snapshot, plus state of type `S` kept across snapshots (under a
/// mutex that only derivations take). A pick reads it with one `arc-swap` load and a pointer
/// comparison with the inner balancer's current snapshot; the first pick after an update
/// rederives it if it can `try_lock` the state (others use the previous value meanwhile:
/// a pick never waits).
pub(crate) struct PerSnapshot<T, S, E: 'static> {
    current: ArcSwap<Derived<T, E>>,
    state: Mutex<S>,
}

/// A value and the snapshot it was derived from.
pub(crate) struct Derived<T, E: 'static> {
    /// Held, so that its address (and its endpoints' value addresses, which derived values
    /// may record) are not reused while they are compared.
    source: Option<Snapshot<E>>,
    pub(crate) value: T,
}

impl<T, E> Derived<T, E> {
    /// Whether this was derived from `snap`.
    #[inline]
    pub(crate) fn is_of(&self, snap: &Endpoints<E>) -> bool {
        self.source
            .as_ref()
            .is_some_and(|s| std::ptr::eq::<Endpoints<E>>(&**s, snap))
    }
}

impl<T, S, E> PerSnapshot<T, S, E> {
    /// `value` (derived from no snapshot yet) and the initial state.
    pub(crate) fn new(value: T, state: S) -> Self {
        PerSnapshot {
            current: ArcSwap::from_pointee(Derived {
                source: None,
                value,
            }),
            state: Mutex::new(state),
        }
    }

    /// The current value.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Derived<T, E>>> {
        self.current.load()
    }

    /// The value for `snap`: the current one if it was derived from `snap`, else [`derive`](Self::derive)d.
    #[inline]
    pub(crate) fn get(
        &self,
        snap: Snapshot<E>,
        derive: impl FnOnce(&mut S, &[Endpoint<E>]) -> T,
    ) -> Guard<Arc<Derived<T, E>>> {
        let cur = self.current.load();
        if cur.is_of(&snap) {
            return cur;
        }
        self.derive(cur, snap, derive)
    }

    /// Derives the value of `snap` with `derive` and publishes it, unless another thread is
    /// deriving: then `old` is returned.
    #[cold]
    pub(crate) fn derive(
        &self,
        old: Guard<Arc<Derived<T, E>>>,
        snap: Snapshot<E>,
        derive: impl FnOnce(&mut S, &[Endpoint<E>]) -> T,
    ) -> Guard<Arc<Derived<T, E>>> {
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return old,
        };
        let value = derive(&mut state, snap.all());
        let next = Arc::new(Derived {
            source: Some(snap.detach()),
            value,
        });
        self.current.store(next.clone());
        Guard::from_inner(next)
    }
}
