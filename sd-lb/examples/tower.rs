//! sdkit discovery and balancers in a tower stack.
//!
//! 1. `Discover` turns an endpointer into a `tower::discover::Discover`, so tower's own
//!    `p2c::Balance` balances over sdkit's endpoints, following changes.
//! 2. `Balanced` and `PickLayer` put sdkit's balancers into a `ServiceBuilder` stack.
//!
//! The backends are in-process tower services (no sockets); the registry is the embedded
//! `memory://` one.
//!
//! Run: `cargo run -p sd-lb --example tower`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use sd_core::{
    BoxError, DefaultEndpointer, Endpoint, Endpointer, Instance, Instancer, MemoryRegistry,
    Registrar, Registration,
};
use sd_lb::tower::{Balanced, Discover, PickLayer};
use sd_lb::{Outlier, OutlierConfig, P2c, RoundRobin};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// An in-process backend that answers with its address after `latency`.
#[derive(Clone)]
struct Backend {
    addr: String,
    latency: Duration,
}

impl Service<String> for Backend {
    type Response = String;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<String, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        let (addr, latency) = (self.addr.clone(), self.latency);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(format!("{addr} answered {req}"))
        })
    }
}

fn tally(map: &mut BTreeMap<String, usize>, answer: &str) {
    let addr = answer.split(' ').next().unwrap_or_default().to_string();
    *map.entry(addr).or_default() += 1;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // Three instances registered in the embedded registry; the port sets the latency.
    let registry = MemoryRegistry::new();
    let mut registrars = Vec::new();
    for port in [8001u16, 8002, 8003] {
        let r = registry.registrar_for(Registration::new("echo", Instance::new("127.0.0.1", port)));
        r.register().await?;
        registrars.push(r);
    }
    let instancer = registry.service_instancer("echo");
    let endpointer = Arc::new(DefaultEndpointer::new(
        &instancer,
        |i: &Instance| -> Result<Backend, BoxError> {
            Ok(Backend {
                addr: i.addr().to_string(),
                latency: Duration::from_millis(if i.port() == 8003 { 20 } else { 1 }),
            })
        },
    ));

    // 1. tower's p2c Balance over sdkit discovery.
    let discover = tower::load::PendingRequestsDiscover::new(
        Discover::new(endpointer.clone()),
        tower::load::CompleteOnResponse::default(),
    );
    let mut balance = tower::balance::p2c::Balance::new(discover);
    let mut seen = BTreeMap::new();
    for i in 0..60 {
        let answer = balance.ready().await?.call(format!("#{i}")).await?;
        tally(&mut seen, &answer);
    }
    println!("tower p2c::Balance over sdkit Discover:   {seen:?}");

    // An instance leaves the registry: tower stops using it.
    registrars[0].deregister().await?;
    let mut changes = endpointer.changes();
    while endpointer.endpoints().get().map(|l| l.len()).unwrap_or(0) != 2 {
        changes.changed().await;
    }
    let mut seen = BTreeMap::new();
    for i in 0..60 {
        let answer = balance.ready().await?.call(format!("#{i}")).await?;
        tally(&mut seen, &answer);
    }
    println!("  after 127.0.0.1:8001 deregistered:       {seen:?}");

    // 2a. An sdkit balancer as the service of a ServiceBuilder stack.
    let lb = Arc::new(Outlier::new(
        RoundRobin::new(endpointer.clone()),
        OutlierConfig::default(),
    ));
    let svc = ServiceBuilder::new()
        .concurrency_limit(16)
        .service(Balanced::new(lb));
    let mut seen = BTreeMap::new();
    for i in 0..10 {
        let answer = svc.clone().oneshot(format!("#{i}")).await?;
        tally(&mut seen, &answer);
    }
    println!("ServiceBuilder + Balanced(round robin):    {seen:?}");

    // 2b. PickLayer: the inner service gets the picked endpoint with each request.
    let p2c = Arc::new(P2c::peak_ewma(endpointer.clone()));
    let svc = ServiceBuilder::new()
        .layer(PickLayer::new(p2c))
        .service(service_fn(|(ep, req): (Endpoint<Backend>, String)| {
            let mut backend = ep.value().clone();
            async move { backend.call(req).await }
        }));
    let mut seen = BTreeMap::new();
    for i in 0..60 {
        let answer = svc.clone().oneshot(format!("#{i}")).await?;
        tally(&mut seen, &answer);
    }
    println!("ServiceBuilder + PickLayer(p2c peak EWMA): {seen:?}  (8003 is 20x slower)");

    endpointer.close().await;
    instancer.stop().await;
    Ok(())
}
