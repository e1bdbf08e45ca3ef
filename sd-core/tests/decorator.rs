//! Issue 9 item 8: `Endpointer<E>` can be implemented outside sd-core. A zone filter written
//! here, as a user would, with only the public API: it wraps any endpointer, serves the
//! endpoints of one zone (or all of them when that zone has none), rebuilds its filtered
//! state once per published version, and forwards change notifications.

use std::sync::{Arc, Mutex};

use sd_core::{
    BoxError, Changes, DefaultEndpointer, Endpoint, Endpointer, Endpoints, Event, Instance,
    InstanceCache, Snapshot, Status,
};

/// Serves the endpoints whose instance has `meta zone=<zone>`, falling back to all.
struct ZoneFilter<E> {
    inner: Arc<dyn Endpointer<E>>,
    zone: String,
    /// The filtered state and the inner version it was built from.
    cached: Mutex<Option<Arc<Endpoints<E>>>>,
}

impl<E: Send + Sync + 'static> ZoneFilter<E> {
    fn new(inner: Arc<dyn Endpointer<E>>, zone: &str) -> Self {
        ZoneFilter {
            inner,
            zone: zone.to_string(),
            cached: Mutex::new(None),
        }
    }
}

impl<E: Send + Sync + 'static> Endpointer<E> for ZoneFilter<E> {
    fn endpoints(&self) -> Snapshot<E> {
        let upstream = self.inner.endpoints();
        let mut cached = self.cached.lock().unwrap();
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.version() == upstream.version())
        {
            return Snapshot::new(c.clone());
        }
        let local: Vec<Endpoint<E>> = upstream
            .all()
            .iter()
            .filter(|e| e.instance().meta().get("zone") == Some(&self.zone))
            .cloned()
            .collect();
        let list = if local.is_empty() {
            upstream.all().to_vec()
        } else {
            local
        };
        let state = Arc::new(Endpoints::new(
            list,
            upstream.status().clone(),
            upstream.version(),
        ));
        *cached = Some(state.clone());
        Snapshot::new(state)
    }

    fn changes(&self) -> Changes {
        self.inner.changes()
    }
}

fn inst(host: &str, zone: &str) -> Instance {
    Instance::builder(host, 80).meta("zone", zone).build()
}

#[tokio::test]
async fn a_zone_filter_written_outside_sd_core_is_an_endpointer() {
    let cache = InstanceCache::new();
    cache.update(Event::instances(vec![
        inst("10.0.0.3", "b"),
        inst("10.0.0.1", "a"),
        inst("10.0.0.2", "b"),
    ]));
    let inner = Arc::new(DefaultEndpointer::new(
        &cache,
        |i: &Instance| -> Result<String, BoxError> { Ok(i.addr().to_string()) },
    ));
    let filter: Arc<dyn Endpointer<String>> = Arc::new(ZoneFilter::new(inner.clone(), "b"));
    let mut changes = filter.changes();
    changes.mark_seen();

    let snap = filter.endpoints();
    let got: Vec<&str> = snap.get().unwrap().iter().map(|e| e.as_str()).collect();
    assert_eq!(got, ["10.0.0.2:80", "10.0.0.3:80"]);
    assert_eq!(snap.status(), &Status::Current);
    // Same version: the same filtered state, no rebuild.
    let again = filter.endpoints();
    assert!(std::ptr::eq(&*snap as *const _, &*again as *const _));

    // Zone b leaves: the filter notices the change and falls back to every endpoint.
    cache.update(Event::instances(vec![inst("10.0.0.1", "a")]));
    tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
        .await
        .unwrap();
    let got: Vec<String> = filter
        .endpoints()
        .get()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(got, ["10.0.0.1:80"]);
    inner.close().await;
    assert_eq!(
        filter.endpoints().get().unwrap_err(),
        &sd_core::Error::Stopped
    );
}

/// `Endpoints::new` sorts an unsorted list, so a decorator's output is ordered as balancers
/// expect; `Changes::new` wraps a plain `watch` channel.
#[test]
fn public_constructors_build_a_sorted_state_and_a_notifier() {
    let list = vec![
        Endpoint::new(Instance::new("10.0.0.2", 80), 2u8),
        Endpoint::new(Instance::new("10.0.0.1", 80), 1u8),
    ];
    let state = Endpoints::new(list, Status::Current, 7);
    let values: Vec<u8> = state.all().iter().map(|e| **e).collect();
    assert_eq!(values, [1, 2]);
    assert_eq!(state.version(), 7);
    let (tx, rx) = tokio::sync::watch::channel(7u64);
    let mut changes = Changes::new(rx);
    assert!(!changes.has_changed());
    tx.send_replace(8);
    assert!(changes.has_changed());
    changes.mark_seen();
    drop(tx);
    assert!(changes.has_changed(), "a dropped sender reads as changed");
}
