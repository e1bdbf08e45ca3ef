//! Issue 16, section 2: a hostile Eureka server ([`sd_testkit::hostile::HostileServer`] on
//! 127.0.0.1) answers with malformed JSON, missing fields, wrong types, a 50 MB body, a body
//! that never ends, a body that stalls, 500/429/503 with and without `Retry-After`, and a
//! redirect to another host.
//!
//! For every row the instancer must publish an error (or skip the bad entries alone), an
//! endpointer on it must keep serving the last good set, the requests of the bad phase must
//! stay few (backoff, `Retry-After`: no hammering, although the poll interval is 100 ms), and
//! the instancer must recover once the answers are good again. The redirect target must
//! receive nothing, so never the basic-auth credentials.
//!
//! Run: `cargo test -p sd-eureka --test hostile -- --nocapture` (prints the figures).

use std::time::Duration;

use sd_core::{Backoff, Error, Secret, ServiceQuery};
use sd_eureka::{start_instancer, Client, ClientConfig, EurekaInstancer, Target};
use sd_testkit::hostile::{run_case, table, Case, Expect, HostileServer, Outcome, Reply};
use serde_json::{json, Value};

#[global_allocator]
static ALLOC: sd_testkit::CountingAllocator = sd_testkit::CountingAllocator;

/// The tests of this binary run one at a time: the allocation peaks are process-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USER: &str = "sd";
const PASSWORD: &str = "hostile-password-8e1d44";

/// The body cap of the client under test (the default is 64 MiB).
const CAP: usize = 1 << 20;

/// The request timeout of the client under test (the default is 10 s).
const TIMEOUT: Duration = Duration::from_millis(500);

/// The poll interval: the least Eureka allows, so a client that ignored its backoff on
/// errors would show at once.
const POLL: Duration = Duration::from_millis(100);

/// An InstanceInfo as the Spring Eureka server writes it.
fn info(addr: &str) -> Value {
    let (ip, port) = addr.split_once(':').unwrap();
    json!({
        "instanceId": addr, "hostName": ip, "app": "WEB", "ipAddr": ip,
        "status": "UP", "overriddenStatus": "UNKNOWN",
        "port": {"$": port.parse::<u16>().unwrap(), "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"@class": "java.util.Collections$EmptyMap"},
        "vipAddress": "web"
    })
}

fn good(addrs: &[&str]) -> Reply {
    let instances: Vec<Value> = addrs.iter().map(|a| info(a)).collect();
    Reply::json(
        200,
        json!({"application": {"name": "WEB", "instance": instances}}).to_string(),
    )
}

fn client(addr: &str) -> Client {
    Client::new(
        ClientConfig::new([format!("http://{addr}/eureka")])
            .basic_auth(USER, Secret::new(PASSWORD))
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
fn timed_out(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. })
}

/// With go-kit's backoff (10 ms doubling, jittered x0.5..1.5) a client sends at most about
/// ten requests in the first 3 s of failures; one retrying at once would send hundreds.
const BACKOFF_BOUND: usize = 15;

async fn run(server: &HostileServer, cases: &[Case]) -> Vec<Outcome> {
    server.set(good(&["10.0.0.1:80"]));
    let instancer: EurekaInstancer = start_instancer(
        client(&server.addr().to_string()),
        Target::app("web"),
        ServiceQuery::new("web"),
        POLL,
        Backoff::default(),
    )
    .await;
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
    eprintln!("{}", table(&outcomes));
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_errors_or_skipped_entries_and_the_last_good_set_stays() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let cases = [
        Case {
            name: "malformed JSON",
            reply: Reply::json(200, r#"{"application": {"name": "WEB", "instance": ["#),
            expect: Expect::Error(malformed, "not JSON"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "missing fields: no application",
            reply: Reply::json(200, r#"{"applications": {}}"#),
            expect: Expect::Error(malformed, "application"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "wrong type: application is a number",
            reply: Reply::json(200, r#"{"application": 5}"#),
            expect: Expect::Error(malformed, "application"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "missing fields and wrong types in instances: skipped alone",
            reply: Reply::json(
                200,
                json!({"application": {"name": "WEB", "instance": [
                    info("10.0.0.9:80"),
                    {"instanceId": "no-address", "app": "WEB", "status": "UP"},
                    {"instanceId": 7, "app": "WEB", "ipAddr": ["x"], "status": 1,
                     "port": {"$": "eighty"}},
                ]}})
                .to_string(),
            ),
            expect: Expect::Set(&["10.0.0.9:80"]),
            // The poll interval paces good answers: about 30 in 3 s.
            max_requests: 60,
        },
    ];
    let outcomes = run(&server, &cases).await;
    assert_eq!(outcomes.len(), cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_endless_and_stalled_bodies_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let cases = [
        Case {
            name: "50 MB body, Content-Length",
            reply: Reply::huge(50_000_000, true),
            expect: Expect::Error(malformed, "larger than the 1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "50 MB body, chunked",
            reply: Reply::huge(50_000_000, false),
            expect: Expect::Error(malformed, "1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "a body that never ends",
            reply: Reply::endless(),
            expect: Expect::Error(malformed, "1048576-byte cap"),
            max_requests: BACKOFF_BOUND,
        },
        Case {
            name: "a body that stalls mid-way",
            reply: Reply::stall_mid_body(r#"{"application": {"name": "WEB", "inst"#),
            expect: Expect::Error(timed_out, "timed out"),
            max_requests: BACKOFF_BOUND,
        },
    ];
    let outcomes = run(&server, &cases).await;
    for o in &outcomes {
        // Capped: far less than the 50 MB is ever held.
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
async fn a_redirect_to_another_host_is_not_followed_and_the_credentials_stay_home() {
    let _serial = SERIAL.lock().await;
    // The other host: it would answer well (with another set), and records what it gets.
    let elsewhere = HostileServer::start(good(&["10.6.6.6:80"])).await;
    let server = HostileServer::start(good(&["10.0.0.1:80"])).await;
    let location = format!("http://{}/eureka/apps/WEB", elsewhere.addr());
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
        server.requests().iter().all(|r| r
            .header("Authorization")
            .is_some_and(|v| v.starts_with("Basic "))),
        "the configured server gets the credentials"
    );
    let leaked = elsewhere.requests();
    assert!(
        leaked.is_empty(),
        "the redirect target received {} requests: {leaked:?}",
        leaked.len()
    );
}
