//! Retry: go-kit parity (LB-4..LB-12) and the fixes (timeout keeps errors, backoff,
//! per-attempt timeout, no repeats, budget). Paused tokio time throughout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{Backoff, BoxError, Endpoint, FixedEndpointer, Instance};
use sd_lb::{Budget, Decision, LbError, Retry, RetryErrorKind, RoundRobin, TpsBudget};

fn fixed(n: u16) -> Arc<FixedEndpointer<u16>> {
    Arc::new(FixedEndpointer::new(
        (1..=n).map(|p| (Instance::new("10.0.0.1", p), p)),
    ))
}

fn err(s: &str) -> BoxError {
    s.to_string().into()
}

#[tokio::test(start_paused = true)]
async fn lb4_max_attempts_counts_total_attempts() {
    for (max, expected) in [(0usize, 1usize), (1, 1), (3, 3)] {
        let calls = AtomicUsize::new(0);
        let retry = Retry::new(RoundRobin::new(fixed(3))).max_attempts(max);
        let r: Result<(), _> = retry
            .call(|_ep: Endpoint<u16>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(err("boom")) }
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), expected, "max {max}");
        assert_eq!(e.raw_errors().len(), expected);
        assert_eq!(e.kind(), RetryErrorKind::Exhausted);
    }
}

#[tokio::test(start_paused = true)]
async fn lb7_first_success_is_returned() {
    let calls = AtomicUsize::new(0);
    let retry = Retry::new(RoundRobin::new(fixed(3))).max_attempts(5);
    let r = retry
        .call(|ep: Endpoint<u16>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(err("no"))
                } else {
                    Ok(*ep)
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(r, 3, "round robin: attempt 3 goes to the third endpoint");
}

#[tokio::test(start_paused = true)]
async fn lb10_message_format_leaves_out_last_raw_error() {
    // go-kit: Retry(2) over ["error one", "error two", ok] -> "error two (previously: error one)".
    let errors = Mutex::new(vec!["error one", "error two"].into_iter());
    let retry = Retry::new(RoundRobin::new(fixed(3))).max_attempts(2);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            let next = errors.lock().unwrap().next();
            async move {
                match next {
                    Some(m) => Err(err(m)),
                    None => Ok(()),
                }
            }
        })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "error two (previously: error one)");
    assert_eq!(e.final_error().to_string(), "error two");
    assert_eq!(e.raw_errors().len(), 2);

    // One raw error: the final error alone.
    let retry = Retry::new(RoundRobin::new(fixed(3))).max_attempts(1);
    let e = retry
        .call(|_ep: Endpoint<u16>| async { Err::<(), _>(err("only")) })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "only");

    // Three: every raw error but the last.
    let n = AtomicUsize::new(0);
    let retry = Retry::new(RoundRobin::new(fixed(3))).max_attempts(3);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Err::<(), _>(err(&format!("e{i}"))) }
        })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "e3 (previously: e1; e2)");
}

#[tokio::test(start_paused = true)]
async fn lb8_callback_sees_attempt_number_and_raw_error_and_can_replace() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .unlimited()
        .callback(move |n, e| {
            s.lock().unwrap().push((n, e.to_string()));
            if n < 3 {
                Decision::Retry
            } else {
                Decision::StopWith("replaced".into())
            }
        });
    let n = AtomicUsize::new(0);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Err::<(), _>(err(&format!("raw{i}"))) }
        })
        .await
        .unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (1, "raw1".to_string()),
            (2, "raw2".into()),
            (3, "raw3".into())
        ]
    );
    assert_eq!(e.kind(), RetryErrorKind::Aborted);
    assert!(e.is_replaced());
    assert_eq!(e.final_error().to_string(), "replaced");
    // LB-10: the last raw error is left out even when the final error is a replacement.
    assert_eq!(e.to_string(), "replaced (previously: raw1; raw2)");
    let raw: Vec<String> = e.raw_errors().iter().map(|e| e.to_string()).collect();
    assert_eq!(raw, ["raw1", "raw2", "raw3"]);
}

#[tokio::test(start_paused = true)]
async fn lb12_early_abort_with_custom_error() {
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .max_attempts(10)
        .callback(|_, _| Decision::StopWith("my error".into()));
    let calls = AtomicUsize::new(0);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(err("raw")) }
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(e.final_error().to_string(), "my error");
    assert_eq!(e.to_string(), "my error");
}

#[tokio::test(start_paused = true)]
async fn lb6_pick_errors_count_as_attempts() {
    let empty: Arc<FixedEndpointer<u16>> = Arc::new(FixedEndpointer::new([]));
    let retry = Retry::new(RoundRobin::new(empty)).max_attempts(3);
    let calls = AtomicUsize::new(0);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(e.raw_errors().len(), 3);
    assert_eq!(
        e.to_string(),
        "no endpoints available (previously: no endpoints available; no endpoints available)"
    );
    let first = e.raw_errors()[0].downcast_ref::<LbError>().unwrap();
    assert_eq!(*first, LbError::NoEndpoints);
}

#[tokio::test(start_paused = true)]
async fn lb9_fixed_timeout_keeps_every_attempt_error() {
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .unlimited()
        .timeout(Duration::from_secs(1));
    let n = AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if i <= 2 {
                    Err::<(), _>(err(&format!("e{i}")))
                } else {
                    // The third attempt hangs past the deadline.
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                }
            }
        })
        .await
        .unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(1));
    assert_eq!(e.final_error().to_string(), "timed out after 1s");
    assert_eq!(e.to_string(), "timed out after 1s (previously: e1; e2)");
    assert_eq!(e.raw_errors().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn backoff_sleeps_between_attempts_instead_of_busy_looping() {
    let empty: Arc<FixedEndpointer<u16>> = Arc::new(FixedEndpointer::new([]));
    let retry = Retry::new(RoundRobin::new(empty))
        .unlimited()
        .timeout(Duration::from_secs(1))
        .backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(200),
        ));
    let e = retry
        .call(|_ep: Endpoint<u16>| async { Ok::<_, BoxError>(()) })
        .await
        .unwrap_err();
    assert!(e.is_timeout());
    // Delays are 50..150 ms, then 100..200 ms (jittered, capped): within one second at most
    // 1 + 1 + 1000/100 attempts; go-kit would loop without bound.
    let attempts = e.raw_errors().len() - 1;
    assert!((5..=12).contains(&attempts), "{attempts} attempts");
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_fails_one_attempt_and_moves_on() {
    let retry = Retry::new(RoundRobin::new(fixed(2)))
        .max_attempts(2)
        .attempt_timeout(Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    let r = retry
        .call(|ep: Endpoint<u16>| async move {
            if *ep == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, BoxError>(*ep)
        })
        .await
        .unwrap();
    assert_eq!(r, 2);
    assert_eq!(
        tokio::time::Instant::now() - start,
        Duration::from_millis(100)
    );

    let retry = Retry::new(RoundRobin::new(fixed(1)))
        .max_attempts(2)
        .attempt_timeout(Duration::from_millis(100));
    let e = retry
        .call(|_ep: Endpoint<u16>| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "attempt timed out after 100ms (previously: attempt timed out after 100ms)"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_do_not_repick_a_failed_endpoint_while_others_exist() {
    // Four endpoints, 1 and 2 fail. A shared round robin would, after concurrent picks
    // elsewhere, land on a failed one again; avoidance skips it.
    let ep = fixed(4);
    let rr = Arc::new(RoundRobin::new(ep));
    let retry = Retry::new(rr.clone()).max_attempts(4);
    for _ in 0..20 {
        let seen = Mutex::new(Vec::new());
        let r = retry
            .call(|ep: Endpoint<u16>| {
                seen.lock().unwrap().push(*ep);
                // Someone else picks in between, moving the shared counter.
                let _ = sd_lb::Balancer::pick(&*rr);
                async move {
                    if *ep <= 2 {
                        Err(err("down"))
                    } else {
                        Ok(*ep)
                    }
                }
            })
            .await;
        let seen = seen.into_inner().unwrap();
        assert!(r.is_ok(), "{seen:?}");
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            seen.len(),
            "an endpoint was tried twice: {seen:?}"
        );
    }

    // With one endpoint, it is retried (nothing else is available).
    let retry = Retry::new(RoundRobin::new(fixed(1))).max_attempts(3);
    let calls = AtomicUsize::new(0);
    let _ = retry
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(err("down")) }
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn budget_caps_retries_at_a_fraction_of_requests() {
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.2));
    let ok = Retry::new(RoundRobin::new(fixed(3))).budget(budget.clone());
    for _ in 0..10 {
        ok.call(|_ep: Endpoint<u16>| async { Ok::<_, BoxError>(()) })
            .await
            .unwrap();
    }
    let failing = Retry::new(RoundRobin::new(fixed(3)))
        .max_attempts(10)
        .budget(budget.clone());
    let calls = AtomicUsize::new(0);
    let e = failing
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(err("down")) }
        })
        .await
        .unwrap_err();
    // One deposit more (11 × 0.2 = 2.2): the first attempt plus two retries.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(e.kind(), RetryErrorKind::BudgetExhausted);
    assert_eq!(
        e.to_string(),
        "retry budget exhausted (previously: down; down; down)"
    );

    // Deposits expire with the window; the floor remains.
    let drain = |b: &TpsBudget| (0..).take_while(|_| b.withdraw()).count();
    let floor = TpsBudget::new(Duration::from_secs(10), 1, 0.5);
    (0..100).for_each(|_| floor.deposit());
    assert_eq!(drain(&floor), 60, "100 × 0.5 + 10 s × 1/s");
    let floor = TpsBudget::new(Duration::from_secs(10), 1, 0.5);
    (0..100).for_each(|_| floor.deposit());
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(drain(&floor), 10, "the floor alone");
}

/// Regression (issue 9, item 16): `Retry::new` had no timeout, so a call on an endpoint
/// that never answers hung for ever (go-kit's `Retry` requires one). It now has
/// `Retry::DEFAULT_TIMEOUT`.
#[tokio::test(start_paused = true)]
async fn retry_has_a_default_timeout() {
    let retry = Retry::new(RoundRobin::new(fixed(2)));
    let start = tokio::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3600),
        retry.call(|_ep: Endpoint<u16>| std::future::pending::<Result<(), BoxError>>()),
    )
    .await
    .expect("a call without a timeout hung");
    let e = r.unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(start.elapsed(), Retry::<()>::DEFAULT_TIMEOUT);
    assert_eq!(Retry::<()>::DEFAULT_TIMEOUT, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn discovery_errors_pass_through_unchanged() {
    use sd_core::{DefaultEndpointer, Event, InstanceCache};
    let cache = InstanceCache::new();
    let ep = Arc::new(
        DefaultEndpointer::builder(&cache, |i: &Instance| -> Result<u16, BoxError> {
            Ok(i.port())
        })
        .invalidate_on_error(Duration::ZERO)
        .build(),
    );
    let boom = sd_core::Error::unavailable("test", "registry down");
    ep.apply(Event::Error(boom.clone()));
    let retry = Retry::new(RoundRobin::new(ep.clone())).max_attempts(1);
    let e = retry
        .call(|_ep: Endpoint<u16>| async { Ok::<_, BoxError>(()) })
        .await
        .unwrap_err();
    let raw = e.raw_errors()[0].downcast_ref::<LbError>().unwrap();
    assert_eq!(*raw, LbError::Discovery(boom.clone()));
    assert_eq!(e.to_string(), boom.to_string());
}

#[tokio::test(start_paused = true)]
async fn retry_future_is_send() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let retry = Retry::new(RoundRobin::new(fixed(2)));
    let r =
        assert_send(retry.call(|ep: Endpoint<u16>| async move { Ok::<_, BoxError>(*ep) })).await;
    assert_eq!(r.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn lb5_unlimited_retries_until_the_callback_stops() {
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .unlimited()
        .callback(|n, _| {
            if n < 7 {
                Decision::Retry
            } else {
                Decision::Stop
            }
        });
    let calls = AtomicUsize::new(0);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(err("down")) }
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(e.kind(), RetryErrorKind::Aborted);
    assert!(!e.is_replaced());
    assert_eq!(e.final_error().to_string(), "down");

    // The attempt limit still applies with a callback that always retries.
    let retry = Retry::new(RoundRobin::new(fixed(3)))
        .max_attempts(4)
        .callback(|_, _| Decision::Retry);
    let calls = AtomicUsize::new(0);
    let e = retry
        .call(|_ep: Endpoint<u16>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(err("down")) }
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(e.kind(), RetryErrorKind::Exhausted);
}

#[tokio::test(start_paused = true)]
async fn lb11_retry_error_is_a_plain_value_and_a_std_error() {
    let retry = Retry::new(RoundRobin::new(fixed(2))).max_attempts(2);
    let result: Result<(), sd_lb::RetryError> = retry
        .call(|_ep: Endpoint<u16>| async { Err::<(), _>(std::io::Error::other("refused")) })
        .await;
    let e: sd_lb::RetryError = result.unwrap_err();
    let as_std: &(dyn std::error::Error + Send + Sync) = &e;
    assert_eq!(as_std.source().unwrap().to_string(), "refused");
    // The raw errors keep their types.
    assert!(e.raw_errors()[0].downcast_ref::<std::io::Error>().is_some());
    let boxed: BoxError = Box::new(e);
    assert_eq!(boxed.to_string(), "refused (previously: refused)");
}

/// Timeouts too large for the clock (given by code, e.g. `Duration::MAX`) mean "no timeout"
/// rather than an `Instant` overflow panic.
#[tokio::test(start_paused = true)]
async fn huge_timeouts_do_not_panic() {
    let retry = Retry::new(RoundRobin::new(fixed(2)))
        .max_attempts(2)
        .timeout(Duration::MAX)
        .attempt_timeout(Duration::MAX);
    let r = retry
        .call(|ep: Endpoint<u16>| async move {
            if *ep == 1 {
                Err(err("first fails"))
            } else {
                Ok(*ep)
            }
        })
        .await
        .unwrap();
    assert_eq!(r, 2);
}

/// Regression: `unlimited()` with no backoff, over attempts that fail at once (here: no
/// endpoints), used to spin without ever yielding, so its own timeout never fired and the
/// call hung with a core at 100 %. Now attempts yield between them and the deadline is also
/// checked in the loop. Real time (paused time never advances while a task keeps yielding).
/// The runtime runs on its own thread so that the hang guard, a `recv_timeout` here, works
/// even if the loop starves its runtime; nothing asserts how long the call took.
#[test]
fn unlimited_retries_without_backoff_still_honour_the_timeout() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async {
            let empty: Arc<FixedEndpointer<u16>> = Arc::new(FixedEndpointer::new(Vec::new()));
            let retry = Retry::new(RoundRobin::new(empty))
                .unlimited()
                .timeout(Duration::from_millis(50));
            // Another task on this current-thread runtime must get to run meanwhile.
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = ran.clone();
            tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let r: Result<(), _> = retry
                .call(|_ep: Endpoint<u16>| async { Ok::<_, BoxError>(()) })
                .await;
            (
                r.map_err(|e| (e.kind(), e.raw_errors().len())),
                ran.load(Ordering::SeqCst),
            )
        });
        let _ = tx.send(outcome);
    });
    let (r, ran) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("retry hung past its own timeout");
    let (kind, attempts) = r.unwrap_err();
    assert_eq!(kind, RetryErrorKind::Timeout);
    assert!(attempts > 1, "it did retry");
    assert!(ran, "the retry loop starved the runtime");
}

/// Regression (issue 9, item 12): every attempt's error was kept, so an unlimited retry
/// without backoff grew without bound (0.84 M errors, a 20 MB message, per second). Now the
/// first and the last few are kept, with a count of the rest.
#[tokio::test]
async fn retry_keeps_a_bounded_number_of_errors() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = AtomicUsize::new(0);
    let e = Retry::new(RoundRobin::new(fixed(1)))
        .max_attempts(10_000)
        .call(|_| {
            let k = n.fetch_add(1, Ordering::Relaxed) + 1;
            async move { Err::<(), _>(err(&format!("e{k}"))) }
        })
        .await
        .unwrap_err();
    let raw: Vec<String> = e.raw_errors().iter().map(|e| e.to_string()).collect();
    let (first, last) = (sd_lb::error::KEEP_FIRST, sd_lb::error::KEEP_LAST);
    assert_eq!(raw.len(), first + last);
    assert_eq!(e.omitted_errors(), 10_000 - first - last);
    assert_eq!(raw[..2], ["e1", "e2"]);
    assert_eq!(raw[raw.len() - 1], "e10000");
    assert_eq!(raw[first], format!("e{}", 10_000 - last + 1));
    let msg = e.to_string();
    assert!(
        msg.starts_with("e10000 (previously: e1; e2; (9990 more); e9993; e9994;"),
        "{msg}"
    );
    assert!(msg.ends_with("e9999)"), "{msg}");
    assert!(msg.len() < 200, "{msg}");
}
