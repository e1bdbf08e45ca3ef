//! Outlier ejection: consecutive failures eject, ejection time grows and is capped, the
//! ejected share is limited, ejected endpoints come back on their own, every balancer works.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{find, fixed};
use sd_core::{BoxError, Endpoint, Instance};
use sd_lb::{
    Balancer, Clock, ConsistentHash, Feedback, Outcome, Outlier, OutlierConfig, P2c, Picked,
    Random, Request, Retry, RoundRobin, Weighted,
};

fn config(failures: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: failures,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(75),
        max_ejected_share: 0.5,
    }
}

/// Sends `n` requests; endpoints in `bad` fail.
fn traffic<B: Balancer<u16>>(lb: &B, n: usize, bad: &[u16]) -> Vec<usize> {
    let mut c = vec![0usize; 8];
    for _ in 0..n {
        let p = lb.pick_with(&Request::new()).unwrap();
        let v = **p.endpoint();
        c[v as usize] += 1;
        if bad.contains(&v) {
            p.failure();
        } else {
            p.success();
        }
    }
    c
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_and_the_endpoint_comes_back() {
    let lb = Outlier::new(RoundRobin::new(fixed(4)), config(3)).clock(Clock::tokio());
    let bad = find(&lb, 1);
    // 3 rounds of round robin: endpoint 1 fails 3 times in a row and is ejected.
    traffic(&lb, 12, &[1]);
    assert!(lb.is_ejected(&bad));
    assert_eq!(lb.ejected_count(), 1);
    let c = traffic(&lb, 300, &[1]);
    assert_eq!(c[1], 0, "{c:?}");
    assert_eq!(c[0] + c[2] + c[3], 300);

    // Back after base_ejection × 1 = 30 s, with no action needed.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!lb.is_ejected(&bad));
    let c = traffic(&lb, 4, &[]);
    assert_eq!(c[1], 1, "back in the rotation");
}

#[tokio::test(start_paused = true)]
async fn successes_reset_the_failure_streak() {
    let lb = Outlier::new(RoundRobin::new(fixed(2)), config(3)).clock(Clock::tokio());
    let e0 = find(&lb, 0);
    for _ in 0..10 {
        // Fail, fail, succeed: never 3 in a row.
        for outcome in [false, false, true] {
            let p = loop {
                let p = lb.pick_with(&Request::new()).unwrap();
                if **p.endpoint() == 0 {
                    break p;
                }
                p.success();
            };
            if outcome {
                p.success()
            } else {
                p.failure()
            }
        }
    }
    assert!(!lb.is_ejected(&e0));
    // A dropped guard (outcome unknown) neither breaks nor extends a streak.
    for _ in 0..5 {
        drop(lb.pick_with(&Request::new()).unwrap());
    }
    assert_eq!(lb.ejected_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_each_ejection_and_is_capped() {
    let lb = Outlier::new(RoundRobin::new(fixed(2)), config(1)).clock(Clock::tokio());
    let bad = find(&lb, 0);
    for (round, secs) in [(1, 30u64), (2, 60), (3, 75), (4, 75)] {
        traffic(&lb, 2, &[0]);
        assert!(lb.is_ejected(&bad), "round {round}");
        tokio::time::advance(Duration::from_secs(secs) - Duration::from_millis(1)).await;
        assert!(
            lb.is_ejected(&bad),
            "round {round}: still out just before {secs}s"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!lb.is_ejected(&bad), "round {round}: back at {secs}s");
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_the_configured_share_is_ejected() {
    // 6 endpoints, all failing, share 0.5: three are ejected, three keep serving.
    let lb = Outlier::new(RoundRobin::new(fixed(6)), config(2)).clock(Clock::tokio());
    traffic(&lb, 200, &[0, 1, 2, 3, 4, 5]);
    assert_eq!(lb.ejected_count(), 3);
    // Two endpoints: one may be ejected, never both.
    let lb = Outlier::new(RoundRobin::new(fixed(2)), config(1)).clock(Clock::tokio());
    traffic(&lb, 50, &[0, 1]);
    assert_eq!(lb.ejected_count(), 1);
    // One endpoint: never ejected.
    let lb = Outlier::new(RoundRobin::new(fixed(1)), config(1)).clock(Clock::tokio());
    traffic(&lb, 10, &[0]);
    assert_eq!(lb.ejected_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn works_with_every_balancer() {
    let ep = fixed(5);
    let all = || -> Vec<(&str, Box<dyn Balancer<u16>>)> {
        vec![
            ("round robin", Box::new(RoundRobin::new(ep.clone()))),
            ("random", Box::new(Random::with_seed(ep.clone(), 5))),
            ("weighted", Box::new(Weighted::new(ep.clone()))),
            ("p2c", Box::new(P2c::pending_requests(ep.clone()).seed(5))),
            (
                "p2c ewma",
                Box::new(P2c::peak_ewma(ep.clone()).clock(Clock::tokio()).seed(5)),
            ),
            ("hash", Box::new(ConsistentHash::new(ep.clone()))),
        ]
    };
    // One ejected endpoint, then two next to each other (the share limit allows 2 of 5): the
    // ejected share spreads evenly over the others, never onto a neighbour. (It used to go to
    // the next endpoint in list order: [200, 200, 200, 0, 400] with one, 3/5 of the traffic
    // on endpoint 4 with two.)
    for bad in [&[3u16][..], &[2, 3]] {
        for (name, inner) in all() {
            let lb = Outlier::new(inner, config(3)).clock(Clock::tokio());
            traffic(&lb, 500, bad);
            assert_eq!(lb.ejected_count(), bad.len(), "{name} {bad:?}");
            let n = 6_000;
            let c = traffic(&lb, n, bad);
            let fair = n as f64 / (5 - bad.len()) as f64;
            for v in 0..5u16 {
                let got = c[v as usize];
                if bad.contains(&v) {
                    assert_eq!(got, 0, "{name} {bad:?}: {c:?}");
                } else {
                    assert!(
                        (got as f64) <= 1.4 * fair && (got as f64) >= 0.6 * fair,
                        "{name} {bad:?}: endpoint {v} got {got} of {n} (fair {fair}): {c:?}"
                    );
                }
            }
        }
    }
    // Keys owned by an ejected endpoint fall through to another one, consistently.
    let lb = Outlier::new(ConsistentHash::new(fixed(5)), config(1)).clock(Clock::tokio());
    let key = (0..1000)
        .map(|k| format!("k{k}"))
        .find(|k| **lb.pick_with(&Request::new().key_of(k)).unwrap().endpoint() == 3)
        .unwrap();
    lb.pick_with(&Request::new().key_of(&key))
        .unwrap()
        .failure();
    let a = **lb
        .pick_with(&Request::new().key_of(&key))
        .unwrap()
        .endpoint();
    let b = **lb
        .pick_with(&Request::new().key_of(&key))
        .unwrap()
        .endpoint();
    assert_ne!(a, 3);
    assert_eq!(a, b);
}

#[tokio::test(start_paused = true)]
async fn retry_reports_outcomes_to_outlier_ejection() {
    let lb = Outlier::new(RoundRobin::new(fixed(3)), config(2)).clock(Clock::tokio());
    let retry = Retry::new(lb).max_attempts(3);
    for _ in 0..10 {
        let v = retry
            .call(|ep: Endpoint<u16>| async move {
                if *ep == 0 {
                    Err::<u16, BoxError>("down".into())
                } else {
                    Ok(*ep)
                }
            })
            .await
            .unwrap();
        assert_ne!(v, 0);
    }
    let bad = find(retry.balancer(), 0);
    assert!(retry.balancer().is_ejected(&bad));
}

#[test]
fn concurrent_failures_never_eject_more_than_the_share() {
    let lb = Arc::new(Outlier::new(RoundRobin::new(fixed(8)), config(3)));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let lb = lb.clone();
            std::thread::spawn(move || {
                let mut max = 0;
                for _ in 0..5_000 {
                    let p = lb.pick_with(&Request::new()).unwrap();
                    p.failure();
                    max = max.max(lb.ejected_count());
                }
                max
            })
        })
        .collect();
    for h in hs {
        assert!(
            h.join().unwrap() <= 4,
            "at most half of 8 ejected at any time"
        );
    }
    assert_eq!(lb.ejected_count(), 4);
}

#[tokio::test(start_paused = true)]
async fn stacked_hooks_are_all_told() {
    // P2C's load tracking, an inner and an outer Outlier: three receivers per pick. The inner
    // one (2 failures eject) must see the failures although the outer one was added after it.
    let inner =
        Outlier::new(P2c::pending_requests(fixed(4)).seed(9), config(2)).clock(Clock::tokio());
    let lb = Outlier::new(inner, config(100)).clock(Clock::tokio());
    let bad = find(&lb, 1);
    traffic(&lb, 200, &[1]);
    assert!(
        lb.inner().is_ejected(&bad),
        "the inner outlier saw the failures"
    );
    assert!(!lb.is_ejected(&bad));
    let load = lb.inner().inner().load_of(&bad).unwrap();
    assert_eq!(load.pending_requests(), 0, "P2C was told too");

    // More receivers than are held inline: every one is told once, in order.
    struct Log(Arc<std::sync::Mutex<Vec<(usize, Outcome)>>>, usize);
    impl Feedback<u16> for Log {
        fn done(&self, _: &Endpoint<u16>, _: u64, outcome: Outcome) {
            self.0.lock().unwrap().push((self.1, outcome));
        }
    }
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = |i| Arc::new(Log(log.clone(), i)) as Arc<dyn Feedback<u16>>;
    let picked = Picked::tracked(bad.clone(), 0, hook(0))
        .and_then(hook(1))
        .and_then(hook(2))
        .and_then(hook(3))
        .and_then(hook(4));
    picked.failure();
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        (0..5).map(|i| (i, Outcome::Failure)).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn endpoints_that_left_do_not_count_against_the_share() {
    let cache = sd_core::InstanceCache::new();
    let ep = Arc::new(sd_core::DefaultEndpointer::new(
        &cache,
        |i: &Instance| -> Result<u16, BoxError> { Ok(i.port()) },
    ));
    let set = |ports: &[u16]| {
        sd_core::Event::instances(
            ports
                .iter()
                .map(|p| Instance::new("10.0.0.1", *p))
                .collect::<Vec<_>>(),
        )
    };
    ep.apply(set(&[0, 1, 2, 3]));
    let lb = Outlier::new(RoundRobin::new(ep.clone()), config(2)).clock(Clock::tokio());
    // Two of four ejected: the share limit (0.5) is reached.
    traffic(&lb, 40, &[0, 1]);
    assert_eq!(lb.ejected_count(), 2);
    // A deploy replaces the two ejected endpoints...
    ep.apply(set(&[2, 3, 4, 5]));
    // ...and a new one fails: it is ejected although the old ejections have not expired.
    traffic(&lb, 40, &[4]);
    let four = find(&lb, 4);
    assert!(lb.is_ejected(&four), "ejected count {}", lb.ejected_count());
    assert_eq!(
        lb.ejected_count(),
        1,
        "the departed endpoints' ejections are gone"
    );
    ep.close().await;
}

#[tokio::test(start_paused = true)]
async fn late_failures_while_ejected_do_not_count_after_it_comes_back() {
    let lb = Outlier::new(RoundRobin::new(fixed(4)), config(3)).clock(Clock::tokio());
    let bad = find(&lb, 1);
    // Five requests on endpoint 1 are in flight when it gets ejected.
    let mut held = Vec::new();
    while held.len() < 5 {
        let p = lb.pick_with(&Request::new()).unwrap();
        if **p.endpoint() == 1 {
            held.push(p);
        } else {
            p.success();
        }
    }
    traffic(&lb, 12, &[1]);
    assert!(lb.is_ejected(&bad));
    // They fail late, while it is ejected.
    for p in held {
        p.failure();
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!lb.is_ejected(&bad), "back after 30 s");
    // Back: one failure is one failure, not the sixth in a row.
    let p = loop {
        let p = lb.pick_with(&Request::new()).unwrap();
        if **p.endpoint() == 1 {
            break p;
        }
        p.success();
    };
    p.failure();
    assert!(!lb.is_ejected(&bad), "re-ejected on its first failure back");
    // Three in a row do eject it again, for twice as long (its second ejection).
    traffic(&lb, 8, &[1]);
    assert!(lb.is_ejected(&bad));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(lb.is_ejected(&bad));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!lb.is_ejected(&bad));
}

/// Regression (issue 9, item 15): an ejection time of `Duration::MAX` (or any time beyond
/// 584 years in nanoseconds) overflowed: a panic in debug builds, and in release a wrapped
/// return time in the past, so the endpoint was never ejected.
#[tokio::test(start_paused = true)]
async fn huge_ejection_times_eject_for_ever() {
    // 2^62 s is 2^62 × 10^9 ns, a multiple of 2^64: truncated to u64, zero.
    for base in [Duration::MAX, Duration::from_secs(1 << 62)] {
        let lb = Outlier::new(
            RoundRobin::new(fixed(4)),
            OutlierConfig {
                consecutive_failures: 1,
                base_ejection: base,
                max_ejection: Duration::MAX,
                max_ejected_share: 0.5,
            },
        )
        .clock(Clock::tokio());
        tokio::time::advance(Duration::from_secs(1)).await;
        let p = lb.pick_with(&Request::new()).unwrap();
        let ep = p.endpoint().clone();
        p.failure();
        assert!(lb.is_ejected(&ep), "{base:?}");
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(lb.is_ejected(&ep), "{base:?}: still out a year later");
        // Success reports after that do not overflow either.
        for _ in 0..8 {
            lb.pick_with(&Request::new()).unwrap().success();
        }
    }
}

/// Regression (issue 9, item 13): an attempt cut off by `Retry`'s overall timeout was
/// reported as unknown, so an endpoint that hangs was never ejected. A timeout now counts as
/// a failure.
#[tokio::test(start_paused = true)]
async fn requests_cut_off_by_retry_timeouts_count_as_failures() {
    let lb = Arc::new(Outlier::new(RoundRobin::new(fixed(3)), config(2)).clock(Clock::tokio()));
    let retry = Retry::new(lb.clone()).timeout(Duration::from_secs(1));
    let hung = find(&*lb, 0);
    for _ in 0..6 {
        // Endpoint 0 hangs for ever; the others answer.
        let _ = retry
            .call(|ep: Endpoint<u16>| async move {
                if *ep == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(*ep)
            })
            .await;
    }
    assert!(lb.is_ejected(&hung), "two timeouts in a row eject");
}

/// Regression (issue 9, item 13): a request cut off by a tower timeout layer outside
/// `PickLayer` was reported as unknown; it now counts as a failure.
#[tokio::test(start_paused = true)]
async fn requests_cut_off_by_a_timeout_layer_count_as_failures() {
    use tower::{service_fn, ServiceBuilder, ServiceExt};
    let lb = Arc::new(Outlier::new(RoundRobin::new(fixed(3)), config(2)).clock(Clock::tokio()));
    let hung = find(&*lb, 0);
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(sd_lb::tower::PickLayer::new(lb.clone()))
        .service(service_fn(|(ep, ()): (Endpoint<u16>, ())| async move {
            if *ep == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(*ep)
        }));
    for _ in 0..6 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert!(lb.is_ejected(&hung), "two timeouts in a row eject");
}
