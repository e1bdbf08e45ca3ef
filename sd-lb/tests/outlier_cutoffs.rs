//! From the review of issue 9, items 13 and 15: outlier ejection's identity of endpoints (value
//! pointers) after the state of departed endpoints is pruned, and timeouts counted as
//! failures when the cut-off comes from outside `Retry`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{Endpoint, Endpoints, FixedEndpointer, Instance, Snapshot, Status};
use sd_lb::{Balancer, LbError, Outlier, OutlierConfig, Picked, Request, Retry, RoundRobin};

/// An endpoint value of a size no other allocation of this test has, so that the allocator
/// hands a freed value's memory to the next value made (glibc's per-thread cache is LIFO per
/// size class).
type Big = [u8; 600];

/// A balancer over a list the test sets by hand; `force` makes the next picks return one
/// given endpoint (to report outcomes for it through the `Outlier`).
struct Manual {
    list: Mutex<Vec<Endpoint<Big>>>,
    force: Mutex<Option<Endpoint<Big>>>,
}

impl Balancer<Big> for Manual {
    fn pick_with(&self, request: &Request<'_, Big>) -> Result<Picked<Big>, LbError> {
        if let Some(e) = self.force.lock().unwrap().clone() {
            return Ok(Picked::new(e));
        }
        let list = self.list.lock().unwrap();
        list.iter()
            .find(|e| !request.avoids(e))
            .or(list.first())
            .cloned()
            .map(Picked::new)
            .ok_or(LbError::NoEndpoints)
    }
    fn snapshot(&self) -> Snapshot<Big> {
        let list = self.list.lock().unwrap().clone();
        Snapshot::new(Arc::new(Endpoints::new(list, Status::Current, 1)))
    }
}

fn endpoint(host: &str, port: u16) -> Endpoint<Big> {
    Endpoint::new(Instance::new(host, port), [0u8; 600])
}

fn ptr(e: &Endpoint<Big>) -> usize {
    Arc::as_ptr(e.value_arc()) as usize
}

/// Reports `n` failures on `e` through `lb`.
fn fail(lb: &Outlier<Arc<Manual>, Big>, manual: &Manual, e: &Endpoint<Big>, n: usize) {
    *manual.force.lock().unwrap() = Some(e.clone());
    for _ in 0..n {
        lb.pick_with(&Request::new()).unwrap().failure();
    }
    *manual.force.lock().unwrap() = None;
}

/// An endpoint is ejected, then leaves the set (a deploy replaces the failing instance).
/// Later, failures of 64 other endpoints grow the state table to its prune size: the prune
/// (outlier.rs, `done`: `entries.retain(..)` under `prune_at`) drops the departed entry,
/// and with it the `Weak` that kept the departed value's allocation, but does **not**
/// republish the ejected list, which still holds that address with its return time. A new
/// endpoint whose value is allocated at the freed address is then treated as ejected
/// (avoided by every pick, `is_ejected` true) although it never failed, until the old
/// ejection expires (30 s by default, up to `max_ejection`).
#[test]
fn a_new_endpoint_is_not_ejected_for_a_departed_one() {
    let x = endpoint("10.0.0.2", 80);
    let manual = Arc::new(Manual {
        list: Mutex::new(Vec::new()),
        force: Mutex::new(None),
    });
    let lb = Outlier::new(
        manual.clone(),
        OutlierConfig {
            consecutive_failures: 2,
            ..Default::default()
        },
    );
    // Endpoints whose single failures will fill the state table; made now, kept alive.
    let fillers: Vec<Endpoint<Big>> = (0..64).map(|i| endpoint("10.0.1.1", 1000 + i)).collect();
    let mut reused = None;
    for round in 0..8u16 {
        let a = endpoint("10.0.0.1", 80 + round);
        *manual.list.lock().unwrap() = vec![a.clone(), x.clone()];
        fail(&lb, &manual, &a, 2);
        assert!(lb.is_ejected(&a), "two failures in a row eject");
        let old = ptr(&a);
        // `a` leaves the set; nothing holds it any more.
        *manual.list.lock().unwrap() = vec![x.clone()];
        drop(a);
        // Single failures of other endpoints (no ejection) grow the table to its prune size.
        for f in &fillers {
            fail(&lb, &manual, f, 1);
        }
        // A new endpoint joins.
        let b = endpoint("10.0.0.3", 80 + round);
        if ptr(&b) == old {
            reused = Some(b);
            break;
        }
        // Not at the same address this time: leave the fillers' streaks as they are and
        // try again with a new departed endpoint.
        drop(b);
    }
    let b = reused.expect("the allocator never reused a departed value's address in 8 tries");
    *manual.list.lock().unwrap() = vec![b.clone(), x.clone()];
    let picks_of_b = (0..50)
        .filter(|_| Endpoint::same_value(&lb.pick().unwrap(), &b))
        .count();
    assert!(
        !lb.is_ejected(&b) && picks_of_b > 0,
        "a new endpoint that never failed is ejected (is_ejected = {}, picked {picks_of_b} of 50 \
         times by a balancer that picks it first): it sits at the address of a departed \
         ejected endpoint",
        lb.is_ejected(&b)
    );
}

/// A call through `Retry` whose future is dropped by a timeout outside it (the common
/// `tokio::time::timeout(d, retry.call(..))`, or a client-side deadline shorter than the
/// retry's default 10 s) while the attempt hangs. The tower adapters report such a cut-off
/// as `Outcome::Timeout` (counted as a failure); `Retry` leaves the attempt's `Picked` in
/// its own future (`running`), whose drop reports `Outcome::Unknown`, which outlier
/// ejection ignores: an endpoint that always hangs is never ejected.
#[tokio::test(start_paused = true)]
async fn a_hanging_endpoint_is_ejected_when_an_outer_timeout_cuts_retry_off() {
    let ep = Arc::new(FixedEndpointer::new([
        (Instance::new("10.0.0.1", 80), "hangs"),
        (Instance::new("10.0.0.2", 80), "ok"),
    ]));
    let lb = Arc::new(Outlier::new(
        RoundRobin::new(ep.clone()),
        OutlierConfig {
            consecutive_failures: 1,
            ..Default::default()
        },
    ));
    let retry = Retry::new(lb.clone()).max_attempts(1);
    let hanging = lb.inner().snapshot().all()[0].clone();
    for _ in 0..4 {
        let call = retry.call(|e: Endpoint<&'static str>| async move {
            if *e == "hangs" {
                std::future::pending::<()>().await;
            }
            Ok::<_, std::io::Error>(*e)
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
    }
    assert!(
        lb.is_ejected(&hanging),
        "the endpoint hung every time it was picked (cut off by the caller's timeout) and is \
         not ejected"
    );
}
