//! Secrets never appear in logs: every `tracing` event (TRACE level, all targets, so
//! reqwest's and hyper's too) is captured while registries built from
//! `consul://...?token_env=VAR` register, heartbeat, discover, lose and re-create a
//! registration, and hit 403s on the real `consul-secure` agent (ACLs and mutual TLS on).
//! Then neither token appears in the logs, nor in the `Debug` of anything involved.
//!
//! A test binary of its own with a single test: it installs the global subscriber and sets
//! environment variables before any other thread exists.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::secure::{admin_http, management_token, TestToken};
use common::{by_id, wait_for_set, BOUND};
use sd_consul::ConsulRegistry;
use sd_core::{
    Error, Event, HealthCheck, Instance, Instancer, Registrar, Registration, Registry, ServiceQuery,
};
use sd_testkit::{require, shared, unique_name, Server};
use tokio::sync::watch;
use tracing_subscriber::util::SubscriberInitExt;

/// Everything written by the fmt layer; `written` ticks on every write so the test can wait
/// for a log line without sleeping.
#[derive(Clone)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    written: watch::Sender<u64>,
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the captured logs contain `needle` at least `n` times.
    async fn wait_for(&self, needle: &str, n: usize) {
        let mut rx = self.written.subscribe();
        tokio::time::timeout(BOUND, async {
            while self.text().matches(needle).count() < n {
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} not logged {n} times within {BOUND:?}"));
    }
}

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.lock().unwrap().extend_from_slice(data);
        self.written.send_modify(|n| *n += 1);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const TOKEN_VAR: &str = "SD_CONSUL_LOGS_TEST_TOKEN";
const WRONG_VAR: &str = "SD_CONSUL_LOGS_TEST_WRONG";
const READER_VAR: &str = "SD_CONSUL_LOGS_TEST_READER";
const BLIND_VAR: &str = "SD_CONSUL_LOGS_TEST_BLIND";
const WRONG: &str = "0b9e6a53-7a51-4c43-8f0e-5e5c0ffee123";

#[test]
fn no_token_in_logs_or_debug_output() {
    let addr = require!(Server::ConsulSecure);
    let capture = Capture {
        buf: Arc::default(),
        written: watch::channel(0).0,
    };
    let writer = capture.clone();
    // `try_init` also routes the `log` crate's records (reqwest logs through it) here.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .unwrap();
    let token = management_token();
    std::env::set_var(TOKEN_VAR, &token);
    std::env::set_var(WRONG_VAR, WRONG);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reader = rt.block_on(run(&addr, &capture));
    let logs = capture.text();
    let lines = logs.lines().count();
    eprintln!("captured {lines} log lines");
    assert!(lines > 50, "suspiciously few logs captured:\n{logs}");
    for (what, secret) in [
        ("management token", token.as_str()),
        ("wrong token", WRONG),
        ("read-only token", reader.as_str()),
    ] {
        assert!(
            !logs.contains(secret),
            "the {what} appears in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // What was logged is the real story: registration, heartbeats, the lost registration,
    // the 403s (these markers make sure the capture really saw the interesting paths).
    for needle in [
        "action=\"register\"",
        "heartbeat",
        "the agent lost the registration",
        "action=\"reregister\"",
        "register failed",
        "403 Forbidden",
        "hyper_util::client", // the HTTP stack's own trace lines are captured too
    ] {
        assert!(logs.contains(needle), "{needle:?} not logged:\n{logs}");
    }
}

fn url(addr: &str, token_var: &str) -> String {
    let d = sd_testkit::consul_secure_dir();
    let d = d.display();
    format!(
        "consul://{addr}?ca={d}/ca.pem&cert={d}/client.pem&key={d}/client.key\
         &token_env={token_var}&wait=1s&timeout=5s"
    )
}

fn assert_debug_clean(what: &str, value: &dyn std::fmt::Debug, secrets: &[&str]) {
    let text = format!("{value:?} {value:#?}");
    for s in secrets {
        assert!(!text.contains(s), "{what}: a token in Debug: {text}");
    }
}

/// Runs the scenario; returns the read-only token's secret (deleted by then).
async fn run(addr: &str, capture: &Capture) -> String {
    let _shared = shared(Server::ConsulSecure);
    let token = management_token();
    let reader_token = TestToken::create(
        addr,
        "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
    )
    .await;
    let reader_secret = reader_token.secret.clone();
    std::env::set_var(READER_VAR, &reader_secret);
    let secrets = [token.as_str(), WRONG, reader_secret.as_str()];

    let reg = ConsulRegistry::from_url(&url(addr, TOKEN_VAR)).unwrap();
    assert_eq!(
        reg.client().config().token.as_ref().map(|t| t.expose()),
        Some(token.as_str())
    );
    assert_debug_clean("registry", &reg, &secrets);
    assert_debug_clean("client", reg.client(), &secrets);
    assert_debug_clean("client config", reg.client().config(), &secrets);

    // Register with a 1 s TTL: heartbeats every ~333 ms.
    let service = unique_name("consul-logs");
    let registrar = reg
        .consul_registrar(
            Registration::new(
                service.as_str(),
                Instance::builder("127.0.0.1", 22101).id("l1").build(),
            )
            .check(HealthCheck::Ttl(Duration::from_secs(1))),
        )
        .unwrap();
    assert_debug_clean("registrar", &registrar, &secrets);
    registrar.register().await.unwrap();
    let instancer = reg
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    assert_debug_clean("instancer", &instancer, &secrets);
    let mut sub = instancer.subscribe();
    wait_for_set(&mut sub, "registered", |s| by_id(s, "l1").is_some()).await;
    capture.wait_for("heartbeat", 2).await;

    // Lose the registration behind the registrar's back: the heartbeat gets a 404 and the
    // registrar registers again.
    admin_http()
        .put(format!(
            "https://{addr}/v1/agent/service/deregister/{}",
            registrar.service_id()
        ))
        .header("X-Consul-Token", &token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let mut rereg = registrar.watch_reregistrations();
    tokio::time::timeout(BOUND, rereg.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered")
        .unwrap();

    // 403s: a wrong token (ACL not found) for both register and discover, and a real
    // read-only token trying to register.
    let wrong = ConsulRegistry::from_url(&url(addr, WRONG_VAR)).unwrap();
    let bad = wrong
        .registrar(Registration::new(
            service.as_str(),
            Instance::new("127.0.0.1", 22102),
        ))
        .await
        .unwrap();
    let err = bad.register().await.unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert_debug_clean("error", &err, &secrets);
    let wrong_instancer = wrong
        .instancer(&ServiceQuery::new(service.as_str()))
        .await
        .unwrap();
    match wrong_instancer.subscribe().current() {
        Some(Event::Error(e)) => {
            assert!(e.to_string().contains("403"), "{e}");
            assert_debug_clean("error event", &e, &secrets);
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    wrong_instancer.stop().await;
    let ro = ConsulRegistry::from_url(&url(addr, READER_VAR)).unwrap();
    let err = ro
        .consul_registrar(Registration::new(
            service.as_str(),
            Instance::new("127.0.0.1", 22103),
        ))
        .unwrap()
        .register()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_debug_clean("error", &err, &secrets);
    // The read-only token discovers the (re-registered) instance.
    let ro_instancer = ro
        .consul_instancer(&ServiceQuery::new(service.as_str()))
        .await;
    let mut ro_sub = ro_instancer.subscribe();
    wait_for_set(&mut ro_sub, "visible to the reader", |s| {
        by_id(s, "l1").is_some()
    })
    .await;
    ro_instancer.stop().await;

    // Issue 9, item 22: a token that may read the service but not its node gets answers the
    // agent filtered (X-Consul-Results-Filtered-By-ACLs): logged at warn once, not on every
    // answer, and exposed.
    let blind_token = TestToken::create(addr, "service_prefix \"\" { policy = \"read\" }").await;
    std::env::set_var(BLIND_VAR, &blind_token.secret);
    let blind = ConsulRegistry::from_url(&url(addr, BLIND_VAR)).unwrap();
    let mut source =
        sd_consul::HealthSource::new(blind.client().clone(), ServiceQuery::new(service.as_str()));
    // The first query, then blocking ones (1 s wait): three filtered answers. (The agent
    // sometimes answers a filtered query with a lower index: a skipped round, not counted.)
    let mut answers = 0;
    for _ in 0..10 {
        match sd_core::Source::next_step(&mut source).await {
            sd_core::Step::Publish(set) => {
                assert!(set.is_empty(), "{set:?}");
                assert!(source.filtered_by_acls());
                answers += 1;
                if answers == 3 {
                    break;
                }
            }
            sd_core::Step::Skip(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answers, 3);
    let logs = capture.text();
    let warned = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("X-Consul-Results-Filtered-By-ACLs"))
        .count();
    assert_eq!(
        warned, 1,
        "warned {warned} times for 3 filtered answers:\n{logs}"
    );
    assert!(
        !logs.contains(&blind_token.secret),
        "the token appears in the logs"
    );
    blind_token.delete().await;

    registrar.deregister().await.unwrap();
    wait_for_set(&mut sub, "deregistered", |s| s.is_empty()).await;
    instancer.stop().await;
    reader_token.delete().await;
    reader_secret
}
