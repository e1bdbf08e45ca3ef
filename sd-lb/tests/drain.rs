//! Graceful drain: a removed endpoint gets no new picks, and its close runs once its
//! in-flight requests have finished, or at the drain timeout. Time is tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Event, Factory, FixedEndpointer, Instance,
    InstanceCache,
};
use sd_lb::{Balancer, Drain, DrainFactory, Drained, P2c, Request, RoundRobin};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Endpoints are their port; closes are recorded.
#[derive(Clone, Default)]
struct Ports(Arc<Mutex<Vec<u16>>>);

impl Factory<u16> for Ports {
    fn make(&self, instance: &Instance) -> Result<u16, BoxError> {
        Ok(instance.port())
    }
    fn close(&self, _: &Instance, port: &u16) {
        self.0.lock().unwrap().push(*port);
    }
}

impl Ports {
    fn closed(&self) -> Vec<u16> {
        self.0.lock().unwrap().clone()
    }
}

fn set(ports: impl IntoIterator<Item = u16>) -> Event {
    Event::instances(
        ports
            .into_iter()
            .map(|p| Instance::new("10.0.0.1", p))
            .collect::<Vec<_>>(),
    )
}

fn endpointer(closes: &Ports) -> Arc<DefaultEndpointer<Drained<u16>>> {
    let ep = Arc::new(DefaultEndpointer::new(
        &InstanceCache::new(),
        DrainFactory::new(closes.clone(), TIMEOUT),
    ));
    ep.apply(set(1..=3));
    ep
}

/// A request held on the endpoint `port` (picks until one lands there).
fn pick_on<B: Balancer<Drained<u16>>>(lb: &B, port: u16) -> sd_lb::Picked<Drained<u16>> {
    loop {
        let p = lb.pick_with(&Request::new()).unwrap();
        if ***p.endpoint() == port {
            return p;
        }
    }
}

/// Lets spawned drain tasks run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A request in flight on a removed endpoint holds its close back; the endpoint gets no new
/// picks meanwhile; the close runs once the request ends.
#[tokio::test(start_paused = true)]
async fn close_waits_for_requests_in_flight() {
    let closes = Ports::default();
    let ep = endpointer(&closes);
    let lb = Drain::new(RoundRobin::new(ep.clone()));
    let held: Vec<_> = (0..3)
        .map(|_| lb.pick_with(&Request::new()).unwrap())
        .collect();
    let on_3 = held.iter().position(|p| ***p.endpoint() == 3).unwrap();
    assert_eq!(held[on_3].endpoint().value().in_flight(), 1);
    ep.apply(set(1..=2)); // 3 leaves
    settle().await;
    assert!(held[on_3].endpoint().value().is_closing());
    assert_eq!(
        closes.closed(),
        Vec::<u16>::new(),
        "a request is in flight on 3"
    );
    // No new picks for 3.
    for _ in 0..100 {
        assert_ne!(**lb.pick().unwrap(), 3);
    }
    tokio::time::advance(TIMEOUT / 2).await;
    settle().await;
    assert_eq!(
        closes.closed(),
        Vec::<u16>::new(),
        "still in flight, before the timeout"
    );
    let mut held = held;
    held.remove(on_3).success();
    settle().await;
    assert_eq!(closes.closed(), [3], "closed once its request finished");
    drop(held);
    settle().await;
    assert_eq!(closes.closed(), [3], "closed exactly once");
}

/// A request that never ends: the close runs at the drain timeout, not before.
#[tokio::test(start_paused = true)]
async fn close_runs_at_the_drain_timeout() {
    let closes = Ports::default();
    let ep = endpointer(&closes);
    let lb = Drain::new(P2c::pending_requests(ep.clone()));
    let stuck = pick_on(&lb, 2);
    ep.apply(set([1, 3]));
    settle().await;
    tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(
        closes.closed(),
        Vec::<u16>::new(),
        "1 ms before the timeout"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(closes.closed(), [2], "at the timeout");
    assert_eq!(stuck.endpoint().value().in_flight(), 1);
    drop(stuck);
    settle().await;
    assert_eq!(closes.closed(), [2], "closed exactly once");
}

/// An endpoint with nothing in flight closes at once; a dropped guard (a cancelled request)
/// and a plain pick release the endpoint too; closing the endpointer drains every endpoint.
#[tokio::test(start_paused = true)]
async fn idle_endpoints_close_at_once_and_cancellations_release() {
    let closes = Ports::default();
    let ep = endpointer(&closes);
    let lb = Drain::new(RoundRobin::new(ep.clone()));
    for _ in 0..3 {
        lb.pick().unwrap(); // counted as finished at once
    }
    ep.apply(set(2..=3));
    assert_eq!(
        closes.closed(),
        [1],
        "nothing in flight: closed during the update"
    );
    let on_2 = pick_on(&lb, 2);
    ep.close().await;
    settle().await;
    assert_eq!(closes.closed(), [1, 3], "2 drains");
    drop(on_2); // cancelled
    settle().await;
    assert_eq!(closes.closed(), [1, 3, 2]);
}

/// A pick that read the set just before the update lands on an endpoint whose close has
/// begun: it is made again on another endpoint (here the balancer's list never changes, and
/// one endpoint is closed by hand).
#[tokio::test(start_paused = true)]
async fn a_pick_on_a_closing_endpoint_is_made_again() {
    let closes = Ports::default();
    let factory = DrainFactory::new(closes.clone(), TIMEOUT);
    let made: Vec<(Instance, Drained<u16>)> = (1..=3)
        .map(|p| {
            let i = Instance::new("10.0.0.1", p);
            let v = factory.make(&i).unwrap();
            (i, v)
        })
        .collect();
    let ep = Arc::new(FixedEndpointer::new(made));
    let two = ep.endpoints().all()[1].clone();
    factory.close(two.instance(), two.value());
    assert_eq!(closes.closed(), [2]);
    let lb = Drain::new(RoundRobin::new(ep.clone()));
    for _ in 0..300 {
        let p = lb.pick_with(&Request::new()).unwrap();
        assert_ne!(***p.endpoint(), 2, "a closed endpoint was handed out");
    }
    assert_eq!(two.value().in_flight(), 0, "the redrawn picks released it");
}
