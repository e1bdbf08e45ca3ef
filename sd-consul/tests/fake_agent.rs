//! Answers a real Consul agent cannot be made to give: an index that goes backwards or to
//! 0, malformed bodies, unusable entries. A tiny hand-written HTTP/1.1 server on 127.0.0.1
//! plays the agent and records the requests it gets.
//!
//! Everything else is tested against the real agent (tests/agent.rs, tests/faults.rs).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_consul::{Client, ClientConfig, ConsulInstancer, HealthSource};
use sd_core::{Backoff, Error, Event, Instancer, ServiceQuery, Source, Step};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scripted answer: `X-Consul-Index` (if any) and the body.
struct Answer {
    index: Option<&'static str>,
    body: String,
}

fn answer(index: &'static str, body: serde_json::Value) -> Answer {
    Answer {
        index: Some(index),
        body: body.to_string(),
    }
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
    received: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Script {
    fn push(&self, a: Answer) {
        self.answers.lock().unwrap().push_back(a);
    }
    /// The request targets received so far (`/v1/health/service/web?index=5&wait=...`).
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
    /// Waits until `n` requests have arrived.
    async fn wait_requests(&self, n: usize) {
        let mut rx = self.received.subscribe();
        rx.wait_for(|c| *c >= n).await.unwrap();
    }
}

/// Starts the fake agent; answers are served in order, one per connection (the fake
/// closes each connection). With no answer left it holds the request open, like a
/// blocking query with nothing new.
async fn fake_agent() -> (String, Script) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script = Script {
        answers: Default::default(),
        requests: Default::default(),
        received: Arc::new(tokio::sync::watch::channel(0).0),
    };
    let s = script.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
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
                    r.len()
                };
                s.received.send_replace(n);
                let next = s.answers.lock().unwrap().pop_front();
                let Some(a) = next else {
                    // Hold the request until the client gives up.
                    std::future::pending::<()>().await;
                    return;
                };
                let mut resp =
                    String::from("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
                if let Some(i) = a.index {
                    resp.push_str(&format!("X-Consul-Index: {i}\r\n"));
                }
                resp.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                    a.body.len(),
                    a.body
                ));
                let _ = conn.write_all(resp.as_bytes()).await;
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
async fn consul_6_index_going_backwards_or_to_zero_skips_and_resets_to_a_non_blocking_query() {
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
    match src.next_step().await {
        Step::Skip(reason) => assert!(reason.contains("backwards (3 < 7)"), "{reason}"),
        other => panic!("index going backwards must skip, got {other:?}"),
    }
    assert_eq!(src.index(), 0, "reset after going backwards");
    assert_eq!(addrs(&src.next_step().await), ["10.0.0.4:80"]);
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
        index: Some("6"),
        body: "<html>proxy error</html>".into(),
    });
    script.push(answer("6", json!([entry("a", "10.0.0.1", 80)])));
    script.push(answer("7", json!({"Service": "not a list"})));
    script.push(Answer {
        index: None,
        body: "[]".into(),
    });
    script.push(Answer {
        index: Some("abc"),
        body: "[]".into(),
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
        index: Some("1"),
        body: "{truncated".into(),
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
