//! Issue 16, section 2: a hostile Consul agent ([`sd_testkit::hostile::HostileServer`] on
//! 127.0.0.1) answers with malformed JSON, missing fields, wrong types, a 50 MB body, a body
//! that never ends, a body that stalls, 500/429/503 with and without `Retry-After`, an index
//! that goes backwards or to 0, and a redirect to another host.
//!
//! For every row ([`sd_testkit::hostile::run_case`]) the instancer must publish an error (or
//! skip the bad entries alone, or ignore the answer), an endpointer on it must keep serving
//! the last good set, the requests of the bad phase must stay few (backoff, `Retry-After`:
//! no hammering), and the instancer must recover once the answers are good again. The
//! redirect target must receive nothing, so never the `X-Consul-Token`.
//!
//! Run: `cargo test -p sd-consul --test hostile -- --nocapture` (prints the figures).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_consul::{Client, ClientConfig, ConsulInstancer};
use sd_core::{Instancer, Secret, ServiceQuery};
use sd_testkit::hostile::{
    assert_bodies_bounded, assert_untouched, body_cases, is_malformed, is_timeout, redirect_cases,
    run_cases, status_cases, Case, Expect, HostileServer, Outcome, Reply, BACKOFF_BOUND, BEFORE,
};
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

/// A sane index header, so that what is wrong is the body.
fn with_index(reply: Reply) -> Reply {
    reply.header("X-Consul-Index", "999999999")
}

/// The answer `body` with a sane index header.
fn body(text: impl Into<Vec<u8>>) -> Reply {
    with_index(Reply::json(200, text))
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

/// Watches `server` with a fresh instancer (go-kit's default backoff) through `cases`.
async fn run(server: &HostileServer, cases: &[Case]) -> Vec<Outcome> {
    server.set(good(BEFORE));
    let instancer =
        ConsulInstancer::start(client(&server.addr().to_string()), ServiceQuery::new("web")).await;
    let outcomes = run_cases(server, &instancer, &good, cases).await;
    instancer.stop().await;
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_errors_or_skipped_entries_and_the_last_good_set_stays() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    let error = |name, reply, needle| Case {
        name,
        reply,
        expect: Expect::Error(is_malformed, needle),
        max_requests: BACKOFF_BOUND,
    };
    let one_entry = || Reply::json(200, json!([entry("10.0.0.7:80")]).to_string());
    let cases = [
        error(
            "malformed JSON",
            body(r#"[{"Node": {"Node": "n1""#),
            "body is not JSON",
        ),
        error(
            "wrong type: an object, not an array",
            body(r#"{"Service": {"ID": "x"}}"#),
            "expected a JSON array",
        ),
        error("missing X-Consul-Index", one_entry(), "no X-Consul-Index"),
        error(
            "wrong type: X-Consul-Index not a number",
            one_entry().header("X-Consul-Index", "twelve"),
            "is not a number",
        ),
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

/// The query in flight when the stall begins is a blocking one (its request timeout is
/// `wait + wait/16 + timeout`, 64 s): only the read timeout between pieces of the body
/// catches the stall within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_endless_and_stalled_bodies_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    let prefix = &json!([entry("10.0.0.7:80")]).to_string()[..40];
    let cases = body_cases(with_index, prefix, Expect::Error(is_timeout, "stalled"));
    assert_bodies_bounded(&run(&server, &cases).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_statuses_back_off_and_retry_after_is_honoured() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    run(&server, &status_cases(|r| r)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_or_to_zero_is_paced_and_keeps_the_set() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    let answer = |index: &str| {
        Reply::json(200, json!([entry("10.0.0.7:80")]).to_string()).header("X-Consul-Index", index)
    };
    let cases = [
        Case {
            // Skipped (nothing published), paced at 1 s plus the backoff.
            name: "index 0",
            reply: answer("0"),
            expect: Expect::Quiet,
            max_requests: 5,
        },
        Case {
            // Consul's guidance: reset to 0 and start over, so the answer's set is the
            // current one; the repeated early answers are paced at 1 s.
            name: "index going backwards",
            reply: answer("3"),
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
    let server = HostileServer::start(good(BEFORE)).await;
    let location = format!("http://{}/v1/health/service/web", elsewhere.addr());
    run(&server, &redirect_cases(&location)).await;
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("X-Consul-Token") == Some(TOKEN)),
        "the configured agent gets the token"
    );
    assert_untouched(&elsewhere);
}
