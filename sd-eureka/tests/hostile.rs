//! Issue 16, section 2: a hostile Eureka server ([`sd_testkit::hostile::HostileServer`] on
//! 127.0.0.1) answers with malformed JSON, missing fields, wrong types, a 50 MB body, a body
//! that never ends, a body that stalls, 500/429/503 with and without `Retry-After`, and a
//! redirect to another host.
//!
//! For every row ([`sd_testkit::hostile::run_case`]) the instancer must publish an error (or skip the bad entries alone), an
//! endpointer on it must keep serving the last good set, the requests of the bad phase must
//! stay few (backoff, `Retry-After`: no hammering, although the poll interval is 100 ms), and
//! the instancer must recover once the answers are good again. The redirect target must
//! receive nothing, so never the basic-auth credentials.
//!
//! Run: `cargo test -p sd-eureka --test hostile -- --nocapture` (prints the figures).

use std::time::Duration;

use sd_core::{Backoff, Instancer, Secret, ServiceQuery};
use sd_eureka::{start_instancer, Client, ClientConfig, EurekaInstancer, Target};
use sd_testkit::hostile::{
    assert_bodies_bounded, assert_untouched, body_cases, is_malformed, is_timeout, redirect_cases,
    run_cases, status_cases, Case, Expect, HostileServer, Outcome, Reply, BACKOFF_BOUND, BEFORE,
};
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

/// Watches `server` with a fresh instancer (100 ms poll, go-kit's default backoff) through
/// `cases`.
async fn run(server: &HostileServer, cases: &[Case]) -> Vec<Outcome> {
    server.set(good(BEFORE));
    let instancer: EurekaInstancer = start_instancer(
        client(&server.addr().to_string()),
        Target::app("web"),
        ServiceQuery::new("web"),
        POLL,
        Backoff::default(),
    )
    .await;
    let outcomes = run_cases(server, &instancer, &good, cases).await;
    instancer.stop().await;
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_errors_or_skipped_entries_and_the_last_good_set_stays() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    let error = |name, body: &str, needle| Case {
        name,
        reply: Reply::json(200, body),
        expect: Expect::Error(is_malformed, needle),
        max_requests: BACKOFF_BOUND,
    };
    let cases = [
        error(
            "malformed JSON",
            r#"{"application": {"name": "WEB", "instance": ["#,
            "not JSON",
        ),
        error(
            "missing fields: no application",
            r#"{"applications": {}}"#,
            "no \"application\"",
        ),
        error(
            "wrong type: application is a number",
            r#"{"application": 5}"#,
            "\"application\" is a number",
        ),
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

/// The request timeout bounds the whole exchange, body included: a stall is a `Timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_endless_and_stalled_bodies_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    let cases = body_cases(
        |r| r,
        r#"{"application": {"name": "WEB", "inst"#,
        Expect::Error(is_timeout, "timed out"),
    );
    assert_bodies_bounded(&run(&server, &cases).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_statuses_back_off_and_retry_after_is_honoured() {
    let _serial = SERIAL.lock().await;
    let server = HostileServer::start(good(BEFORE)).await;
    run(&server, &status_cases(|r| r)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed_and_the_credentials_stay_home() {
    let _serial = SERIAL.lock().await;
    // The other host: it would answer well (with another set), and records what it gets.
    let elsewhere = HostileServer::start(good(&["10.6.6.6:80"])).await;
    let server = HostileServer::start(good(BEFORE)).await;
    let location = format!("http://{}/eureka/apps/WEB", elsewhere.addr());
    run(&server, &redirect_cases(&location)).await;
    assert!(
        server.requests().iter().all(|r| r
            .header("Authorization")
            .is_some_and(|v| v.starts_with("Basic "))),
        "the configured server gets the credentials"
    );
    assert_untouched(&elsewhere);
}
