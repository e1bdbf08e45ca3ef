//! Attacks on sd-eureka with hostile or broken Eureka servers: a tiny HTTP/1.1 fake on
//! 127.0.0.1 (no real Eureka needed), so every answer is under the test's control.
//!
//! Run: `cargo test -p sd-eureka --test attack_fake_server`

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_core::{Event, Instancer, Registry, ServiceQuery};
use sd_eureka::EurekaRegistry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake answers.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
}

#[derive(Clone)]
struct Reply {
    status: u16,
    body: Body,
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        body: Body::Bytes(v.to_string().into_bytes()),
    }
}

fn raw(status: u16, s: &str) -> Reply {
    Reply {
        status,
        body: Body::Bytes(s.as_bytes().to_vec()),
    }
}

type Handler = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1 that records `METHOD path`.
struct Fake {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let hits = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.len() > 1 << 20 {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or_default().to_string();
                    let mut parts = first.split(' ');
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let len: usize = lines
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    hits.lock().unwrap().push(format!("{method} {path}"));
                    let reply = handler(&method, &path);
                    let Body::Bytes(body) = reply.body;
                    let head = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        reply.status,
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Fake { addr, hits, task }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    fn gets(&self) -> usize {
        self.hits().iter().filter(|h| h.starts_with("GET ")).count()
    }
}

/// An InstanceInfo as the Spring Eureka server writes it.
fn info(id: &str, ip: &str, port: u16) -> Value {
    json!({
        "instanceId": id, "hostName": ip, "app": "WEB", "ipAddr": ip,
        "status": "UP", "overriddenStatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"@class": "java.util.Collections$EmptyMap"},
        "vipAddress": "web"
    })
}

fn app_doc(instances: Vec<Value>) -> Value {
    json!({"application": {"name": "WEB", "instance": instances}})
}

/// Waits (bounded) until `pred` holds for the instancer's state; returns the last state.
async fn wait_state(
    inst: &dyn Instancer,
    bound: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let mut sub = inst.subscribe();
    let deadline = tokio::time::Instant::now() + bound;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(e)) => {
                let ok = pred(&e);
                last = Some(e);
                if ok {
                    return last;
                }
            }
            Ok(None) | Err(_) => return last,
        }
    }
}

fn addrs(e: &Option<Event>) -> Vec<String> {
    match e {
        Some(Event::Instances(set)) => set.iter().map(|i| i.addr().to_string()).collect(),
        _ => vec![],
    }
}

/// The issue: "Several servers: requests fail over to the next." A Eureka server that is up
/// but not ready to serve reads (after a restart its registry is empty until the peer sync
/// window, `waitTimeInMsWhenSyncEmpty`, passes) answers `GET /apps/{APP}` with **403**
/// (eureka-core's ApplicationResource: `if (!registry.shouldAllowAccess(false)) return
/// FORBIDDEN`). The second server in the list is healthy and knows the app. sdkit used to treat
/// any 4xx as "an answer" and never try the second server: the instancer only ever published
/// errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_server_answering_403_not_ready_is_failed_over() {
    fails_over_from(raw(403, "")).await;
}

/// Runs an instancer on two servers, the first answering `first` to everything, the second
/// healthy: the instancer must publish the second's set, and the second must become the
/// preferred server (the first one never gave a usable answer).
async fn fails_over_from(first: Reply) {
    let a = Fake::start(move |_, _| first.clone()).await;
    let b =
        Fake::start(|_, _| json_reply(200, &app_doc(vec![info("web-1", "10.0.0.1", 8080)]))).await;
    let r = EurekaRegistry::from_url(&format!(
        "eureka://{},{}/eureka?poll=200ms&timeout=2s",
        a.addr, b.addr
    ))
    .unwrap();
    let inst = r.instancer(&ServiceQuery::new("web")).await.unwrap();
    let last = wait_state(
        &*inst,
        Duration::from_secs(5),
        |e| matches!(e, Event::Instances(s) if !s.is_empty()),
    )
    .await;
    inst.stop().await;
    assert_eq!(
        addrs(&last),
        ["10.0.0.1:8080"],
        "the healthy second server was never asked (first server GETs: {}, second: {}); last state: {last:?}",
        a.gets(),
        b.gets()
    );
    assert_eq!(
        r.client().preferred_server().port(),
        Some(b.addr.port()),
        "the server whose answer parsed is preferred"
    );
}

/// One server answers garbage (200, not JSON: a captive proxy, a misrouted port), the other
/// is healthy. "Every request goes first to the server that answered last": the garbage
/// server "answered", so every poll goes there and the instancer publishes `Malformed`
/// for ever while the healthy server is never asked (as it did before reads failed over
/// on unparseable answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_server_answering_garbage_is_failed_over() {
    fails_over_from(raw(200, "<html>proxy login</html>")).await;
}

/// Control: a dead first server (connection refused) does fail over, and the answering
/// server then stays preferred (holds up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_server_fails_over_and_the_second_stays_preferred() {
    // Bound and never listening: a connection is refused, and no other socket (another
    // test's fake server) can take the port while this test runs. (A listener bound and
    // dropped freed the port, which a concurrent test's server once took in CI, so the
    // "dead" server answered and stayed preferred.)
    let dead = tokio::net::TcpSocket::new_v4().unwrap();
    dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let b =
        Fake::start(|_, _| json_reply(200, &app_doc(vec![info("web-1", "10.0.0.1", 8080)]))).await;
    let r = EurekaRegistry::from_url(&format!(
        "eureka://{},{}/eureka?poll=200ms&timeout=2s",
        dead_addr, b.addr
    ))
    .unwrap();
    let inst = r.instancer(&ServiceQuery::new("web")).await.unwrap();
    let last = wait_state(
        &*inst,
        Duration::from_secs(10),
        |e| matches!(e, Event::Instances(s) if !s.is_empty()),
    )
    .await;
    assert_eq!(addrs(&last), ["10.0.0.1:8080"]);
    assert_eq!(
        r.client().preferred_server().port(),
        Some(b.addr.port()),
        "the answering server is preferred"
    );
    inst.stop().await;
    drop(dead);
}

/// Hostile bodies: deep nesting, wrong types, a body that is not an object, one bad instance
/// among good ones. None may panic; deep nesting and wrong shapes are error events that keep
/// the last good set; bad entries are skipped alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_errors_or_skipped_entries_never_panics() {
    let good = app_doc(vec![info("web-1", "10.0.0.1", 8080)]);
    let deep = format!(
        "{{\"application\":{{\"instance\":{}{}}}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let mut odd = info("web-3", "10.0.0.3", 8080);
    odd["metadata"] =
        json!({"": "empty key", "k\u{0}z": "nul", "ключ": "значение", "a.b/c d": "1"});
    let mixed = json!({"application": {"name": "WEB", "instance": [
        info("web-1", "10.0.0.1", 8080),
        null, 5, "x", [],
        {"instanceId": "no-port", "ipAddr": "10.0.0.9"},
        {"instanceId": "p", "ipAddr": "10.0.0.9", "port": {"$": "8080", "@enabled": false},
         "securePort": {"$": 8443, "@enabled": "TRUE"}},
        {"instanceId": "neg", "ipAddr": "10.0.0.9", "port": {"$": -1, "@enabled": "true"}},
        {"instanceId": "big", "ipAddr": "10.0.0.9", "port": {"$": 1e300, "@enabled": "true"}},
        {"instanceId": "float", "ipAddr": "10.0.0.9", "port": {"$": 80.5, "@enabled": "true"}},
        {"instanceId": "meta", "ipAddr": "10.0.0.9", "port": {"$": 81, "@enabled": "true"}, "metadata": [1]},
        odd,
    ]}});
    let bodies: Vec<(String, bool)> = vec![
        (good.to_string(), true),
        (deep, false),
        ("[]".into(), false),
        ("{\"application\": []}".into(), false),
        ("{\"application\": {\"instance\": \"x\"}}".into(), false),
        ("null".into(), false),
        ("".into(), false),
        (mixed.to_string(), true),
    ];
    let bodies = Arc::new(bodies);
    let round = Arc::new(Mutex::new(0usize));
    let (b2, r2) = (bodies.clone(), round.clone());
    let fake = Fake::start(move |_, _| {
        let i = *r2.lock().unwrap();
        raw(200, &b2[i].0)
    })
    .await;
    let client = sd_eureka::Client::new(sd_eureka::ClientConfig::new([format!(
        "http://{}/eureka",
        fake.addr
    )]))
    .unwrap();
    for (i, (_, ok)) in bodies.iter().enumerate() {
        *round.lock().unwrap() = i;
        let r = client.app("WEB").await;
        match (r, ok) {
            (Ok(Some(doc)), true) => {
                let entries = sd_eureka::instancer::instances_of_app(&doc).unwrap();
                let src = sd_eureka::AppSource::new(
                    client.clone(),
                    sd_eureka::Target::app("web"),
                    ServiceQuery::new("web"),
                );
                let got: Vec<String> = src
                    .instances(&entries)
                    .iter()
                    .map(|i| format!("{} {}", i.id(), i.addr()))
                    .collect();
                if i == 0 {
                    assert_eq!(got, ["web-1 10.0.0.1:8080"]);
                } else {
                    // The secure port enabled with "TRUE" is used; the odd metadata keys survive.
                    assert_eq!(
                        got,
                        [
                            "web-1 10.0.0.1:8080",
                            "p 10.0.0.9:8443",
                            "web-3 10.0.0.3:8080"
                        ],
                        "mixed body"
                    );
                }
            }
            (Ok(Some(doc)), false) => {
                assert!(
                    sd_eureka::instancer::instances_of_app(&doc).is_err(),
                    "body {i} read as an app: {doc}"
                );
            }
            (Err(e), false) => assert!(
                matches!(e, sd_core::Error::Malformed { .. }),
                "body {i}: {e}"
            ),
            (other, ok) => panic!("body {i} (ok={ok}): {other:?}"),
        }
    }
}

/// The poll interval is honoured: poll=400ms for about 4 s is about 10 GETs (±10 % jitter), not
/// a busy loop and not the 30 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_interval_is_honoured() {
    let fake =
        Fake::start(|_, _| json_reply(200, &app_doc(vec![info("web-1", "10.0.0.1", 8080)]))).await;
    let r = EurekaRegistry::from_url(&format!("eureka://{}/eureka?poll=400ms", fake.addr)).unwrap();
    let inst = r.instancer(&ServiceQuery::new("web")).await.unwrap();
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    inst.stop().await;
    let elapsed = t0.elapsed();
    let n = fake.gets();
    let expected = elapsed.as_secs_f64() / 0.4 + 1.0;
    assert!(
        (n as f64) <= expected * 1.2 + 1.0 && (n as f64) >= expected * 0.5,
        "{n} GETs in {elapsed:?} with poll=400ms (expected about {expected:.0})"
    );
    // Nothing after stop.
    let after = fake.gets();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(fake.gets(), after, "the instancer polled after stop()");
}

/// A renewal answered 404 registers again at once (same round), and a failing
/// re-registration is retried (not logged and forgotten as in go-kit EU-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_404_reregisters_at_once_and_retries_a_failed_reregistration() {
    let posts = Arc::new(Mutex::new(0usize));
    let p = posts.clone();
    let fake = Fake::start(move |method, path| match method {
        "POST" => {
            let mut n = p.lock().unwrap();
            *n += 1;
            // The first registration works, the re-registration after the 404 fails once.
            if *n == 2 {
                raw(500, "busy")
            } else {
                raw(204, "")
            }
        }
        // The status set right after each registration works; every renewal answers 404.
        "PUT" if path.contains("/status") => raw(200, ""),
        "PUT" => raw(404, ""),
        "DELETE" => raw(200, ""),
        _ => raw(404, ""),
    })
    .await;
    let r = EurekaRegistry::from_url(&format!(
        "eureka://{}/eureka?renew=1s&lease=5s&timeout=2s",
        fake.addr
    ))
    .unwrap();
    let reg = r
        .eureka_registrar(sd_core::Registration::new(
            "web",
            sd_core::Instance::builder("10.0.0.1", 8080)
                .id("web-1")
                .build(),
        ))
        .unwrap();
    use sd_core::Registrar;
    reg.register().await.unwrap();
    let mut rx = reg.watch_reregistrations();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|n| *n >= 1))
        .await
        .expect("re-registered after 404s")
        .unwrap();
    reg.deregister().await.unwrap();
    let hits = fake.hits();
    // Every 404 renewal is followed at once by a POST.
    for (i, h) in hits.iter().enumerate() {
        if h.starts_with("PUT ") && !h.contains("/status") && i + 1 < hits.len() {
            assert!(hits[i + 1].starts_with("POST "), "{hits:?}");
        }
    }
    assert!(hits.last().unwrap().starts_with("DELETE "), "{hits:?}");
}
