//! tower integration: the Discover adapter (diffs, tower's p2c Balance on top), and the
//! balancers as a Service and as a Layer in a ServiceBuilder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sd_core::{BoxError, DefaultEndpointer, Endpoint, Event, Instance, InstanceCache};
use sd_lb::tower::{Balanced, Discover, PickLayer};
use sd_lb::{Clock, Outlier, OutlierConfig, P2c, RoundRobin};
use tower::discover::Change;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// An in-process backend: answers with its name, counts its calls.
#[derive(Clone)]
struct Backend {
    name: String,
    calls: Arc<AtomicUsize>,
}

impl Service<String> for Backend {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: String) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.name.ends_with(":9") {
            std::future::ready(Err(format!("{} failed", self.name).into()))
        } else {
            std::future::ready(Ok(format!("{} {req}", self.name)))
        }
    }
}

fn endpointer(cache: &InstanceCache) -> Arc<DefaultEndpointer<Backend>> {
    Arc::new(DefaultEndpointer::new(
        cache,
        |i: &Instance| -> Result<Backend, BoxError> {
            Ok(Backend {
                name: i.addr().to_string(),
                calls: Arc::new(AtomicUsize::new(0)),
            })
        },
    ))
}

fn set(ports: &[u16]) -> Event {
    Event::instances(
        ports
            .iter()
            .map(|p| Instance::new("10.0.0.1", *p))
            .collect::<Vec<_>>(),
    )
}

fn describe(c: &Change<(String, String), Backend>) -> String {
    match c {
        Change::Insert(k, s) => format!("+{} {}", k.0, s.name),
        Change::Remove(k) => format!("-{}", k.0),
    }
}

#[tokio::test]
async fn discovery_diffs_full_sets_into_changes() {
    let cache = InstanceCache::new();
    let ep = endpointer(&cache);
    ep.apply(set(&[1, 2]));
    let mut d = Discover::new(ep.clone());
    let mut first = vec![
        describe(&d.next().await.unwrap().unwrap()),
        describe(&d.next().await.unwrap().unwrap()),
    ];
    first.sort();
    assert_eq!(first, ["+10.0.0.1:1 10.0.0.1:1", "+10.0.0.1:2 10.0.0.1:2"]);

    ep.apply(set(&[2, 3]));
    let mut next = vec![
        describe(&d.next().await.unwrap().unwrap()),
        describe(&d.next().await.unwrap().unwrap()),
    ];
    next.sort();
    assert_eq!(next, ["+10.0.0.1:3 10.0.0.1:3", "-10.0.0.1:1"]);

    // An error keeps the last good set: no change. Then a metadata change keeps the endpoint:
    // no change either. The next real change comes through.
    ep.apply(Event::Error(sd_core::Error::unavailable("t", "down")));
    ep.apply(Event::instances(vec![
        Instance::builder("10.0.0.1", 2).tag("v2").build(),
        Instance::new("10.0.0.1", 3),
    ]));
    ep.apply(set(&[3]));
    let c = d.next().await.unwrap().unwrap();
    assert_eq!(describe(&c), "-10.0.0.1:2");

    // Closing the endpointer removes everything, says it stopped and ends the stream.
    ep.close().await;
    assert_eq!(describe(&d.next().await.unwrap().unwrap()), "-10.0.0.1:3");
    assert!(matches!(d.next().await, Some(Err(sd_core::Error::Stopped))));
    assert!(d.next().await.is_none());
}

#[tokio::test]
async fn towers_p2c_balance_runs_on_our_discovery() {
    let cache = InstanceCache::new();
    let ep = endpointer(&cache);
    ep.apply(set(&[1, 2, 3]));
    let discover = tower::load::PendingRequestsDiscover::new(
        Discover::new(ep.clone()),
        tower::load::CompleteOnResponse::default(),
    );
    let mut balance = tower::balance::p2c::Balance::new(discover);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let r = balance
            .ready()
            .await
            .unwrap()
            .call(format!("req{i}"))
            .await
            .unwrap();
        *seen
            .entry(r.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Remove one instance: tower stops using it.
    ep.apply(set(&[1, 3]));
    seen.clear();
    for i in 0..100 {
        let r = balance
            .ready()
            .await
            .unwrap()
            .call(format!("r{i}"))
            .await
            .unwrap();
        *seen
            .entry(r.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(!seen.contains_key("10.0.0.1:2"), "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 100);
    ep.close().await;
}

#[tokio::test]
async fn balanced_service_round_robins_and_reports_errors() {
    let cache = InstanceCache::new();
    let ep = endpointer(&cache);
    ep.apply(set(&[1, 2]));
    let svc = Balanced::new(Arc::new(RoundRobin::new(ep.clone())));
    let a = svc.clone().oneshot("x".to_string()).await.unwrap();
    let b = svc.clone().oneshot("x".to_string()).await.unwrap();
    assert_eq!([a, b], ["10.0.0.1:1 x", "10.0.0.1:2 x"]);

    // Errors of the backend come back, and reach outlier ejection through the guard.
    ep.apply(set(&[1, 9]));
    let lb = Arc::new(
        Outlier::new(
            RoundRobin::new(ep.clone()),
            OutlierConfig {
                consecutive_failures: 2,
                ..Default::default()
            },
        )
        .clock(Clock::tokio()),
    );
    let svc = Balanced::new(lb.clone());
    let mut errors = 0;
    for _ in 0..20 {
        if let Err(e) = svc.clone().oneshot("x".to_string()).await {
            assert_eq!(e.to_string(), "10.0.0.1:9 failed");
            errors += 1;
        }
    }
    assert_eq!(errors, 2, "ejected after two failures");
    assert_eq!(lb.ejected_count(), 1);

    // No endpoints: the pick error.
    ep.apply(set(&[]));
    let e = svc.oneshot("x".to_string()).await.unwrap_err();
    assert_eq!(e.to_string(), "no endpoints available");
    ep.close().await;
}

#[tokio::test]
async fn pick_layer_in_a_service_builder() {
    let cache = InstanceCache::new();
    let ep = endpointer(&cache);
    ep.apply(set(&[1, 2]));
    let p2c = Arc::new(P2c::pending_requests(ep.clone()));
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(PickLayer::new(p2c.clone()))
        .service(service_fn(
            |(ep, req): (Endpoint<Backend>, String)| async move {
                let mut backend = ep.value().clone();
                backend.call(req).await
            },
        ));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..50 {
        let r = svc.clone().oneshot("y".to_string()).await.unwrap();
        *seen.entry(r).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    for e in p2c.snapshot_endpoints() {
        assert_eq!(
            p2c.load_of(&e).unwrap().pending_requests(),
            0,
            "every request ended"
        );
    }
    ep.close().await;
}

trait Endpoints {
    fn snapshot_endpoints(&self) -> Vec<Endpoint<Backend>>;
}

impl Endpoints for Arc<P2c<Arc<DefaultEndpointer<Backend>>, Backend>> {
    fn snapshot_endpoints(&self) -> Vec<Endpoint<Backend>> {
        sd_lb::Balancer::snapshot(&**self).all().to_vec()
    }
}

#[tokio::test]
async fn discovery_straight_from_an_instancer() {
    let registry = sd_core::MemoryRegistry::new();
    let registrar = registry.registrar_for(sd_core::Registration::new(
        "svc",
        Instance::new("10.0.0.1", 7),
    ));
    sd_core::Registrar::register(&registrar).await.unwrap();
    let instancer = registry.service_instancer("svc");
    let mut d = Discover::<Arc<DefaultEndpointer<Backend>>, Backend>::from_instancer(
        &instancer,
        |i: &Instance| -> Result<Backend, BoxError> {
            Ok(Backend {
                name: i.addr().to_string(),
                calls: Arc::new(AtomicUsize::new(0)),
            })
        },
    );
    assert_eq!(
        describe(&d.next().await.unwrap().unwrap()),
        "+10.0.0.1:7 10.0.0.1:7"
    );
    sd_core::Registrar::deregister(&registrar).await.unwrap();
    assert_eq!(describe(&d.next().await.unwrap().unwrap()), "-10.0.0.1:7");
}

/// Issue 9, item 11: tower's balancers know nothing of health, so the stream applies the
/// balancers' rule: passing endpoints only while some pass, all when none does.
#[tokio::test]
async fn discovery_publishes_passing_endpoints_while_some_pass() {
    let cache = InstanceCache::new();
    let ep = endpointer(&cache);
    let with = |critical: &[u16]| {
        Event::instances(
            [1u16, 2]
                .iter()
                .map(|&p| {
                    let h = if critical.contains(&p) {
                        sd_core::Health::Critical
                    } else {
                        sd_core::Health::Passing
                    };
                    Instance::builder("10.0.0.1", p).health(h).build()
                })
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(with(&[2]));
    let mut d = Discover::new(ep.clone());
    assert_eq!(
        describe(&d.next().await.unwrap().unwrap()),
        "+10.0.0.1:1 10.0.0.1:1"
    );
    // 2 passes again: inserted. Then 1 turns critical: removed.
    ep.apply(with(&[]));
    assert_eq!(
        describe(&d.next().await.unwrap().unwrap()),
        "+10.0.0.1:2 10.0.0.1:2"
    );
    ep.apply(with(&[1]));
    assert_eq!(describe(&d.next().await.unwrap().unwrap()), "-10.0.0.1:1");
    // None passes: all are published.
    ep.apply(with(&[1, 2]));
    assert_eq!(
        describe(&d.next().await.unwrap().unwrap()),
        "+10.0.0.1:1 10.0.0.1:1"
    );
    ep.close().await;
}
