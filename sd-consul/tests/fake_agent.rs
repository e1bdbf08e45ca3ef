//! Answers a real Consul agent cannot be made to give: an index that goes backwards or to
//! 0, malformed bodies, unusable entries. A tiny hand-written HTTP/1.1 server on 127.0.0.1
//! plays the agent and records the requests it gets.
//!
//! Everything else is tested against the real agent (tests/agent.rs, tests/faults.rs).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_consul::{Client, ClientConfig, ConsulInstancer, HealthSource, UNCHANGED_INDEX_PACE};
use sd_core::{Backoff, Error, Event, Instancer, ServiceQuery, Source, Step};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One scripted answer: status, `X-Consul-Index` (if any), other headers and the body.
#[derive(Clone)]
struct Answer {
    status: u16,
    index: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Text(String),
    /// `len` bytes of `x`, written in 64 KiB pieces (counted in `Script::written`); with
    /// `declared` a `Content-Length` header, else the body runs until the connection closes.
    Huge {
        len: usize,
        declared: bool,
    },
}

fn answer(index: &'static str, body: serde_json::Value) -> Answer {
    Answer {
        status: 200,
        index: Some(index),
        headers: Vec::new(),
        body: Body::Text(body.to_string()),
    }
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    /// Served when `answers` is empty (an agent that never blocks); else the request is held.
    fallback: Arc<Mutex<Option<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
    /// When each request arrived, on the tokio clock (virtual under `time::pause`).
    arrivals: Arc<Mutex<Vec<tokio::time::Instant>>>,
    received: Arc<tokio::sync::watch::Sender<usize>>,
    /// Body bytes of `Body::Huge` answers the client accepted, and whether the writer is done.
    written: Arc<tokio::sync::watch::Sender<(usize, bool)>>,
}

impl Script {
    fn push(&self, a: Answer) {
        self.answers.lock().unwrap().push_back(a);
    }
    /// Answers every request with `a` once the scripted answers are used up.
    fn always(&self, a: Answer) {
        *self.fallback.lock().unwrap() = Some(a);
    }
    /// The request targets received so far (`/v1/health/service/web?index=5&wait=...`).
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
    fn arrivals(&self) -> Vec<tokio::time::Instant> {
        self.arrivals.lock().unwrap().clone()
    }
    /// Waits until `n` requests have arrived.
    async fn wait_requests(&self, n: usize) {
        let mut rx = self.received.subscribe();
        rx.wait_for(|c| *c >= n).await.unwrap();
    }
    /// Waits, in real time and at most `bound`, until `n` requests have arrived; whether
    /// they did. (For tests under `time::pause`, where tokio's timers do not run.)
    async fn wait_requests_real(&self, n: usize, bound: Duration) -> bool {
        let requests = self.requests.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + bound;
            while std::time::Instant::now() < deadline {
                if requests.lock().unwrap().len() >= n {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            requests.lock().unwrap().len() >= n
        })
        .await
        .unwrap()
    }
    /// Waits until the huge body writer has stopped (done or cut off); the bytes written.
    async fn huge_body_written(&self) -> usize {
        let mut rx = self.written.subscribe();
        let written = rx.wait_for(|(_, done)| *done).await.unwrap().0;
        written
    }
}

/// Starts the fake agent; answers are served in order, one per connection (the fake
/// closes each connection). With no answer left it holds the request open, like a
/// blocking query with nothing new (or serves the `always` answer).
async fn fake_agent() -> (String, Script) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script = Script {
        answers: Default::default(),
        fallback: Default::default(),
        requests: Default::default(),
        arrivals: Default::default(),
        received: Arc::new(tokio::sync::watch::channel(0).0),
        written: Arc::new(tokio::sync::watch::channel((0, false)).0),
    };
    let s = script.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let Some(buf) = common::http::read_request_head(&mut conn).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head
                    .lines()
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_string();
                let n = {
                    let mut r = s.requests.lock().unwrap();
                    r.push(target);
                    s.arrivals.lock().unwrap().push(tokio::time::Instant::now());
                    r.len()
                };
                s.received.send_replace(n);
                let next = s.answers.lock().unwrap().pop_front();
                let Some(a) = next.or_else(|| s.fallback.lock().unwrap().clone()) else {
                    // Hold the request until the client gives up.
                    std::future::pending::<()>().await;
                    return;
                };
                let mut resp = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\n",
                    a.status
                );
                if let Some(i) = a.index {
                    resp.push_str(&format!("X-Consul-Index: {i}\r\n"));
                }
                for (k, v) in &a.headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                match a.body {
                    Body::Text(body) => {
                        resp.push_str(&format!(
                            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ));
                        let _ = conn.write_all(resp.as_bytes()).await;
                    }
                    Body::Huge { len, declared } => {
                        if declared {
                            resp.push_str(&format!("Content-Length: {len}\r\n"));
                        }
                        resp.push_str("Connection: close\r\n\r\n");
                        let piece = vec![b'x'; 64 << 10];
                        let mut written = 0;
                        if conn.write_all(resp.as_bytes()).await.is_ok() {
                            while written < len {
                                let n = piece.len().min(len - written);
                                if conn.write_all(&piece[..n]).await.is_err() {
                                    break;
                                }
                                written += n;
                                s.written.send_replace((written, false));
                            }
                        }
                        s.written.send_replace((written, true));
                    }
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, script)
}

fn client(addr: &str) -> Client {
    Client::new(
        ClientConfig::new(addr)
            .wait(Duration::from_secs(2))
            .timeout(Duration::from_secs(2)),
    )
    .unwrap()
}

fn entry(id: &str, addr: &str, port: u16) -> serde_json::Value {
    json!({
        "Node": {"Node": "n1", "Address": "10.9.9.9", "Datacenter": "dc1"},
        "Service": {"ID": id, "Service": "web", "Tags": [], "Address": addr, "Port": port},
        "Checks": [{"Status": "passing"}]
    })
}

fn addrs(step: &Step) -> Vec<String> {
    match step {
        Step::Publish(v) => {
            let mut a: Vec<String> = v.iter().map(|i| i.addr().to_string()).collect();
            a.sort();
            a
        }
        other => panic!("expected Publish, got {other:?}"),
    }
}

/// The index and wait query parameters of a request target, if any.
fn index_of(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("index=").map(str::to_string))
}

#[tokio::test]
async fn consul_6_index_going_backwards_or_to_zero_resets_to_a_non_blocking_query() {
    let (addr, script) = fake_agent().await;
    script.push(answer("5", json!([entry("a", "10.0.0.1", 80)])));
    script.push(answer(
        "7",
        json!([entry("a", "10.0.0.1", 80), entry("b", "10.0.0.2", 80)]),
    ));
    script.push(answer("3", json!([entry("c", "10.0.0.3", 80)]))); // backwards
    script.push(answer("4", json!([entry("d", "10.0.0.4", 80)])));
    script.push(answer("0", json!([entry("e", "10.0.0.5", 80)]))); // not sane
    script.push(answer("9", json!([entry("f", "10.0.0.6", 80)])));
    let mut src = HealthSource::new(client(&addr), ServiceQuery::new("web"));

    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]);
    assert_eq!(src.index(), 5);
    assert_eq!(
        addrs(&src.next_step().await),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(src.index(), 7);
    // Going backwards resets the index to 0 and the same round goes on with a
    // non-blocking query (paced: this takes UNCHANGED_INDEX_PACE).
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.4:80"]);
    assert_eq!(src.index(), 4);
    match src.next_step().await {
        Step::Skip(reason) => assert!(reason.contains("not sane"), "{reason}"),
        other => panic!("index 0 must skip, got {other:?}"),
    }
    assert_eq!(src.index(), 0);
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.6:80"]);
    assert_eq!(src.index(), 9);

    let indexes: Vec<Option<String>> = script.requests().iter().map(|t| index_of(t)).collect();
    assert_eq!(
        indexes,
        [
            None,             // the first query is non-blocking (CONSUL-1)
            Some("5".into()), // blocks on the last index
            Some("7".into()),
            None, // after going backwards: reset, non-blocking
            Some("4".into()),
            None, // after index 0: non-blocking
        ]
    );
    assert!(script.requests()[1].contains("wait=2000ms"));
}

#[tokio::test]
async fn malformed_answers_are_clear_errors_and_the_next_query_does_not_block_consul_8() {
    let (addr, script) = fake_agent().await;
    script.push(answer("5", json!([entry("a", "10.0.0.1", 80)])));
    script.push(Answer {
        body: Body::Text("<html>proxy error</html>".into()),
        ..answer("6", json!(null))
    });
    script.push(answer("6", json!([entry("a", "10.0.0.1", 80)])));
    script.push(answer("7", json!({"Service": "not a list"})));
    script.push(Answer {
        index: None,
        ..answer("1", json!([]))
    });
    script.push(Answer {
        index: Some("abc"),
        ..answer("1", json!([]))
    });
    let mut src = HealthSource::new(client(&addr), ServiceQuery::new("web"));

    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]);
    let expect_malformed = |step: Step, needle: &str| match step {
        Step::Fail(e @ Error::Malformed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(
                msg.contains("consul: malformed answer: health query for service \"web\""),
                "{msg}"
            );
        }
        other => panic!("expected a malformed-answer error, got {other:?}"),
    };
    expect_malformed(src.next_step().await, "body is not JSON");
    assert_eq!(src.index(), 0, "an error resets the index (CONSUL-8 fix)");
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]);
    expect_malformed(src.next_step().await, "expected a JSON array");
    expect_malformed(src.next_step().await, "no X-Consul-Index header");
    expect_malformed(src.next_step().await, "is not a number");

    let indexes: Vec<Option<String>> = script.requests().iter().map(|t| index_of(t)).collect();
    assert_eq!(
        indexes,
        [None, Some("5".into()), None, Some("6".into()), None, None],
        "every query after an error is non-blocking"
    );
}

#[tokio::test]
async fn entries_without_a_usable_address_or_port_are_skipped_alone() {
    let (addr, script) = fake_agent().await;
    let no_address = json!({
        "Node": {"Node": "n1", "Address": ""},
        "Service": {"ID": "x", "Address": "", "Port": 80}
    });
    let port_zero = entry("y", "10.0.0.7", 0);
    let bad_port = json!({"Node": {"Address": "10.0.0.8"}, "Service": {"ID": "z", "Port": "80"}});
    let no_service = json!({"Node": {"Address": "10.0.0.8"}});
    script.push(answer(
        "3",
        json!([
            entry("good", "10.0.0.1", 80),
            no_address,
            port_zero,
            bad_port,
            no_service,
            17,
            entry("v6", "::1", 81)
        ]),
    ));
    let mut src = HealthSource::new(client(&addr), ServiceQuery::new("web"));
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80", "[::1]:81"]);
}

#[tokio::test]
async fn the_loop_publishes_a_malformed_answer_as_an_error_and_recovers() {
    let (addr, script) = fake_agent().await;
    script.push(Answer {
        body: Body::Text("{truncated".into()),
        ..answer("1", json!(null))
    });
    script.push(answer("2", json!([entry("a", "10.0.0.1", 80)])));
    let instancer = ConsulInstancer::start_with_backoff(
        client(&addr),
        ServiceQuery::new("web"),
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    )
    .await;
    // CONSUL-1: the first query ran before start returned; its error is the state.
    match instancer.state() {
        Some(Event::Error(e)) => assert!(e.to_string().contains("body is not JSON"), "{e}"),
        other => panic!("expected the error as the first state, got {other:?}"),
    }
    let mut sub = instancer.subscribe();
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sub.next().await {
                Some(Event::Instances(set)) => {
                    return set.iter().map(|i| i.addr().to_string()).collect::<Vec<_>>()
                }
                Some(Event::Error(_)) => continue,
                None => panic!("instancer ended"),
            }
        }
    })
    .await
    .expect("recovery within 10 s");
    assert_eq!(recovered, ["10.0.0.1:80"]);
    // The third query blocks on index 2 (the fake holds it); stop cancels it at once.
    tokio::time::timeout(Duration::from_secs(10), script.wait_requests(3))
        .await
        .expect("third query sent");
    tokio::time::timeout(Duration::from_secs(5), instancer.stop())
        .await
        .expect("stop does not wait for the blocking query");
    let reqs = script.requests();
    assert_eq!(index_of(&reqs[0]), None);
    assert_eq!(index_of(&reqs[1]), None, "non-blocking after the error");
    assert_eq!(index_of(&reqs[2]), Some("2".into()));
}

const HUGE: usize = 64 << 20;

fn capped_client(addr: &str) -> Client {
    Client::new(
        ClientConfig::new(addr)
            .wait(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .max_body(1 << 20),
    )
    .unwrap()
}

/// Issue 9, item 20 (bounded reads): a health answer over the cap is an error, whether it
/// declares its length or not, and is not downloaded whole.
#[tokio::test]
async fn bounded_reads_an_oversized_health_answer_is_an_error_and_is_not_read_whole() {
    for declared in [true, false] {
        let (addr, script) = fake_agent().await;
        script.push(Answer {
            body: Body::Huge {
                len: HUGE,
                declared,
            },
            ..answer("5", json!(null))
        });
        let err = capped_client(&addr)
            .health_service("web", None, false, 0)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("1048576-byte cap"), "{msg}");
        assert!(msg.contains("max_body"), "{msg}");
        if declared {
            assert!(msg.contains(&format!("{HUGE} bytes")), "{msg}");
        }
        let written = script.huge_body_written().await;
        assert!(
            written < HUGE / 2,
            "declared={declared}: {written} of {HUGE} bytes were taken by the client"
        );
    }
}

/// Issue 9, item 20 (bounded reads): a 64 MiB error body is read only up to what the
/// error message quotes.
#[tokio::test]
async fn bounded_reads_a_64_mib_error_body_is_read_only_up_to_what_is_quoted() {
    let (addr, script) = fake_agent().await;
    script.push(Answer {
        status: 500,
        body: Body::Huge {
            len: HUGE,
            declared: true,
        },
        ..answer("5", json!(null))
    });
    // The default cap (32 MiB) would not stop it: the error path must not read it at all.
    let err = client(&addr)
        .health_service("web", None, false, 0)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("HTTP 500"), "{msg}");
    assert!(msg.ends_with("x..."), "quoted, then cut: {msg}");
    assert!(msg.len() < 600, "{} bytes of message", msg.len());
    let written = script.huge_body_written().await;
    assert!(
        written < HUGE / 2,
        "{written} of {HUGE} bytes of an error body were taken by the client"
    );
}

/// Issue 9, item 20: health answers are decoded into typed structs entry by entry; a body
/// that is an object, or a JSON entry of the wrong shape among good ones, is still told
/// apart (the first an error, the second skipped alone).
#[tokio::test]
async fn bounded_reads_typed_decoding_tells_malformed_bodies_from_bad_entries() {
    let (addr, script) = fake_agent().await;
    script.push(answer("3", json!({"not": "an array"})));
    script.push(answer(
        "4",
        json!([entry("a", "10.0.0.1", 80), {"Service": {"Port": [1]}}, "text"]),
    ));
    let c = client(&addr);
    let err = c.health_service("web", None, false, 0).await.unwrap_err();
    assert!(
        err.to_string().contains("expected a JSON array of entries"),
        "{err}"
    );
    let a = c.health_service("web", None, false, 0).await.unwrap();
    assert_eq!((a.instances.len(), a.skipped), (1, 2));
    assert_eq!(a.skip_reasons.len(), 2);
    let mut src = HealthSource::new(client(&addr), ServiceQuery::new("web"));
    script.push(answer(
        "4",
        json!([entry("a", "10.0.0.1", 80), {"Service": {"Port": [1]}}, "text"]),
    ));
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]);
}

/// Holds tokio's paused clock still while real I/O runs: a running `spawn_blocking` task
/// keeps the runtime from auto-advancing time, so the clock moves only by
/// `tokio::time::advance` (and a request's own timeout cannot fire while the fake answers).
struct ClockHold(Option<std::sync::mpsc::Sender<()>>);

impl ClockHold {
    fn start() -> ClockHold {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        });
        ClockHold(Some(tx))
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Issue 9, item 21 (hammering a misbehaving agent): an agent that answers every blocking
/// query at once with the index unchanged gets the next query no sooner than
/// UNCHANGED_INDEX_PACE after the previous one was sent; an answer with a new index is
/// followed by the next query at once.
#[tokio::test(start_paused = true)]
async fn hammering_early_unchanged_answers_are_rate_limited_and_changes_are_not() {
    let _hold = ClockHold::start();
    let (addr, script) = fake_agent().await;
    let one = json!([entry("a", "10.0.0.1", 80)]);
    let two = json!([entry("a", "10.0.0.1", 80), entry("b", "10.0.0.2", 80)]);
    script.push(answer("5", one.clone())); // 1: the non-blocking first query
    script.push(answer("5", one.clone())); // 2: blocking on 5, back at once, unchanged
    script.push(answer("5", one.clone())); // 3: the same again
    script.push(answer("6", two.clone())); // 4: a real change
    script.always(answer("6", two.clone())); // 5, ...: unchanged again
                                             // wait = 2 s: the pace is UNCHANGED_INDEX_PACE (1 s), not the wait.
    let mut src = HealthSource::new(client(&addr), ServiceQuery::new("web"));
    let real = Duration::from_secs(20);

    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]);
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.1:80"]); // unchanged, at once
    let t2 = script.arrivals()[1];
    // Query 3 must wait for the pace: it has not gone out after 300 ms of real time with
    // the clock held, nor after 999 ms of (virtual) time.
    let step = tokio::spawn(async move {
        let step = src.next_step().await;
        (src, step)
    });
    assert!(
        !script
            .wait_requests_real(3, Duration::from_millis(300))
            .await,
        "query 3 went out at once after an unchanged early answer"
    );
    tokio::time::advance(UNCHANGED_INDEX_PACE - Duration::from_millis(1)).await;
    assert!(
        !script
            .wait_requests_real(3, Duration::from_millis(100))
            .await,
        "query 3 went out before the pace"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        script.wait_requests_real(3, real).await,
        "query 3 never went out"
    );
    let (mut src, step) = step.await.unwrap();
    assert_eq!(addrs(&step), ["10.0.0.1:80"]);
    assert_eq!(script.arrivals()[2] - t2, UNCHANGED_INDEX_PACE);

    // Query 4 is paced too (3 was unchanged); its answer is a change: query 5 goes out at
    // once, with the clock held still.
    let step = tokio::spawn(async move {
        let step = src.next_step().await;
        (src, step)
    });
    tokio::time::advance(UNCHANGED_INDEX_PACE).await;
    let (mut src, step) = step.await.unwrap();
    assert_eq!(addrs(&step), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(src.index(), 6);
    let t4 = script.arrivals()[3];
    let step = tokio::spawn(async move {
        let step = src.next_step().await;
        (src, step)
    });
    assert!(
        script.wait_requests_real(5, real).await,
        "the query after a change must not wait"
    );
    assert_eq!(
        script.arrivals()[4],
        t4,
        "no time passed before the query after a change"
    );
    let (_src, step) = step.await.unwrap();
    assert_eq!(addrs(&step), ["10.0.0.1:80", "10.0.0.2:80"]);
    let indexes: Vec<Option<String>> = script.requests().iter().map(|t| index_of(t)).collect();
    assert_eq!(
        indexes,
        [
            None,
            Some("5".into()),
            Some("5".into()),
            Some("5".into()),
            Some("6".into())
        ]
    );
}
