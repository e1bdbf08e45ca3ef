//! Issue 16, section 2: a hostile Consul agent ([`sd_testkit::hostile::HostileServer`] on
//! 127.0.0.1) answers with malformed JSON, missing fields, wrong types, a 50 MB body, a body
//! that never ends, a body that stalls, 500/429/503 with and without `Retry-After`, an index
//! that goes backwards or to 0, and a redirect to another host.
//!
//! For every row the instancer must publish an error (or skip the bad entries alone, or
//! ignore the answer), an endpointer on it must keep serving the last good set, the requests
//! of the bad phase must stay few (backoff, `Retry-After`: no hammering), and the instancer
//! must recover once the answers are good again. The redirect target must receive nothing,
//! so never the `X-Consul-Token`.
//!
//! Run: `cargo test -p sd-consul --test hostile -- --nocapture` (prints the figures).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_consul::{Client, ClientConfig, ConsulInstancer};
use sd_core::{Error, Secret, ServiceQuery};
use sd_testkit::hostile::{run_case, Case, Expect, HostileServer, Outcome, Reply};
use serde_json::json;

#[global_allocator]
static ALLOC: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

/// The tests of this binary run one at a time: the allocation peaks are process-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "hostile-token-3f9a7c";

/// The body cap of the client under test (the default is 32 MiB).
const CAP: usize = 1 << 20;

/// The read timeout of the client under test (the default is 10 s).
const TIMEOUT: Duration = Duration::from_millis(500);

fn entry(addr: &str) -> serde_json::Value {
    let (host, port) = addr.split_once(':').unwrap();
    json!({
        "Node": {"Node": "n1", "Address": "10.9.9.9", "Datacenter": "dc1"},
        "Service": {"ID": addr, "Service": "web", "Tags": [], "Address": host,
                    "Port": port.parse::<u16>().unwrap()},
        "Checks": [{"Status": "passing"}]
    })
}

/// The good answer for `addrs`, with a new, higher index each time.
fn good(addrs: &[&str]) -> Reply {
    static INDEX: AtomicU64 = AtomicU64::new(1000);
    let index = INDEX.fetch_add(1000, Ordering::Relaxed);
    let body: Vec<_> = addrs.iter().map(|a| entry(a)).collect();
    Reply::json(200, json!(body).to_string()).header("X-Consul-Index", index.to_string())
}

/// A bad body with a sane index header (so that the body itself is what is wrong).
fn body(text: impl Into<Vec<u8>>) -> Reply {
    Reply::json(200, text).header("X-Consul-Index", "999999999")
}

fn client(addr: &str) -> Client {
    Client::new(
        ClientConfig::new(addr)
            .token(Secret::new(TOKEN))
            .timeout(TIMEOUT)
            .max_body(CAP),
    )
    .unwrap()
}

fn malformed(e: &Error) -> bool {
    matches!(e, Error::Malformed { .. })
}
fn unavailable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. })
}
fn timeout(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. })
}

/// With go-kit's backoff (10 ms doubling, jittered x0.5..1.5) a client sends at most about
/// ten requests in the first 3 s of failures; one retrying at once would send hundreds.
const BACKOFF_BOUND: usize = 15;

async fn run(server: &HostileServer, cases: &[Case]) -> Vec<Outcome> {
    server.set(good(&["10.0.0.1:80"]));
    let instancer =
        ConsulInstancer::start(client(&server.addr().to_string()), ServiceQuery::new("web")).await;
    let mut outcomes = Vec::new();
    for case in cases {
        outcomes.push(
            run_case(
                server,
                &instancer,
                &good,
                &["10.0.0.1:80"],
                &["10.0.0.2:80", "10.0.0.3:80"],
                case,
            )
            .await,
        );
    }
    sd_core::Instancer::stop(&instancer).await;
    eprintln!("{}", sd_testkit::hostile::table(&outcomes));
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_errors_or_skipped_entries_and_the_last_good_set_stays() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let cases = [
        Case {
            name: "malformed JSON",
            reply: body(r#"[{"Node": {"Node": "n1""#),
            expect: Expect::Error(malformed, "body is not JSON"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "wrong type: an object, not an array",
            reply: body(r#"{"Service": {"ID": "x"}}"#),
            expect: Expect::Error(malformed, "expected a JSON array"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "missing X-Consul-Index",
            reply: Reply::json(200, json!([entry("10.0.0.7:80")]).to_string()),
            expect: Expect::Error(malformed, "no X-Consul-Index"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "wrong type: X-Consul-Index not a number",
            reply: Reply::json(200, json!([entry("10.0.0.7:80")]).to_string())
                .header("X-Consul-Index", "twelve"),
            expect: Expect::Error(malformed, "is not a number"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "missing fields and wrong types in entries: skipped alone",
            reply: body(
                json!([
                    entry("10.0.0.9:80"),
                    {"Node": {"Node": "n1"}},
                    {"Service": {"ID": "p", "Service": "web", "Address": "10.0.0.8", "Port": "80"},
                     "Node": {"Address": "10.9.9.9"}, "Checks": []},
                    {"Service": {"ID": 7, "Service": "web", "Address": ["x"], "Port": 80},
                     "Node": {"Address": 1}, "Checks": "passing"}
                ])
                .to_string(),
            ),
            expect: Expect::Set(&["10.0.0.9:80"]),
            // The answer does not change: blocking queries, paced at 1 s.
            max_requests: 5,
        },
    ];
    let outcomes = run(&server, &cases).await;
    assert_eq!(outcomes.len(), cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_endless_and_stalled_bodies_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let with_index = |r: Reply| r.header("X-Consul-Index", "999999999");
    let cases = [
        Case {
            name: "50 MB body, Content-Length",
            reply: with_index(Reply::huge(50_000_000, true)),
            expect: Expect::Error(malformed, "more than the 1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "50 MB body, chunked",
            reply: with_index(Reply::huge(50_000_000, false)),
            expect: Expect::Error(malformed, "1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "a body that never ends",
            reply: with_index(Reply::endless()),
            expect: Expect::Error(malformed, "1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            // The query in flight when the stall begins is a blocking one (its request
            // timeout is wait + wait/16 + timeout, 64 s): only the read timeout between
            // chunks of the body catches the stall within the deadline.
            name: "a body that stalls mid-way",
            reply: with_index(Reply::stall_mid_body(
                json!([entry("10.0.0.7:80")]).to_string()[..40].to_string(),
            )),
            expect: Expect::Error(timeout, "stalled"),
            max_requests: BACKOFF_BOUND,
        },
    ];
    let outcomes = run(&server, &cases).await;
    for o in &outcomes {
        // Capped: far less than the 50 MB is ever held, and (for the declared one) sent.
        assert!(
            o.peak_bytes < 16 << 20,
            "{}: peak {} bytes",
            o.name,
            o.peak_bytes
        );
    }
    for o in &outcomes[..3] {
        // The client hangs up at the cap: what the server wrote per request is the cap
        // plus what the kernel's socket buffers took, not the 50 MB (or endless) body.
        let per_request = o.body_bytes / o.phase_requests.max(1) as u64;
        assert!(
            per_request < 16 << 20,
            "{}: {per_request} bytes sent per request",
            o.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_statuses_back_off_and_retry_after_is_honoured() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let cases = [
        Case {
            name: "HTTP 500",
            reply: Reply::status(500, None),
            expect: Expect::Error(unavailable, "HTTP 500"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "HTTP 503",
            reply: Reply::status(503, None),
            expect: Expect::Error(unavailable, "HTTP 503"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "HTTP 429",
            reply: Reply::status(429, None),
            expect: Expect::Error(unavailable, "HTTP 429"),
            max_requests: BACKOFF_BOUND,
        },
        // Asked to wait 2 s: in 3 s, the first request and at most one more.
        Case {
            name: "HTTP 503, Retry-After: 2",
            reply: Reply::status(503, Some("2")),
            expect: Expect::Error(unavailable, "Retry-After: 2s"),
            max_requests: 2,
        },
        Case {
            name: "HTTP 429, Retry-After: 2",
            reply: Reply::status(429, Some("2")),
            expect: Expect::Error(unavailable, "Retry-After: 2s"),
            max_requests: 2,
        },
        Case {
            name: "HTTP 503, Retry-After as an HTTP date 5 s ahead",
            reply: Reply::status(503, None).retry_at(Duration::from_secs(5)),
            expect: Expect::Error(unavailable, "Retry-After"),
            max_requests: 2,
        },
    ];
    run(&server, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_or_to_zero_is_paced_and_keeps_the_set() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let cases = [
        Case {
            // Skipped (nothing published), paced at 1 s plus the backoff.
            name: "index 0",
            reply: Reply::json(200, json!([entry("10.0.0.7:80")]).to_string())
                .header("X-Consul-Index", "0"),
            expect: Expect::Quiet,
            max_requests: 5,
        },
        Case {
            // Consul's guidance: reset to 0 and start over, so the answer's set is the
            // current one; the repeated early answers are paced at 1 s.
            name: "index going backwards",
            reply: Reply::json(200, json!([entry("10.0.0.7:80")]).to_string())
                .header("X-Consul-Index", "3"),
            expect: Expect::Set(&["10.0.0.7:80"]),
            max_requests: 5,
        },
    ];
    run(&server, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed_and_the_token_stays_home() {
    let _serial = SERIAL.lock().await;
    // The other host: it would answer well (with another set), and records what it gets.
    let elsewhere = HostileServer::start(good(&["10.6.6.6:80"])).await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let location = format!("http://{}/v1/health/service/web", elsewhere.addr());
    let cases = [
        Case {
            name: "302 to another host",
            reply: Reply::redirect(&location),
            expect: Expect::Error(unavailable, "not followed"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "307 to another host",
            reply: Reply {
                status: 307,
                ..Reply::redirect(&location)
            },
            expect: Expect::Error(unavailable, "not followed"),
            max_requests: BACKOFF_BOUND,
        },
    ];
    run(&server, &cases).await;
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("X-Consul-Token") == Some(TOKEN)),
        "the configured agent gets the token"
    );
    let leaked: Vec<_> = elsewhere.requests();
    assert!(
        leaked.is_empty() && !leaked.iter().any(|r| r.contains(TOKEN)),
        "the redirect target received {} requests: {leaked:?}",
        leaked.len()
    );
}
