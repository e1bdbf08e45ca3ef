//! Smoke tests against the real servers started by `scripts/registries up`, using only
//! plain HTTP, TCP and UDP. A server whose `SD_TEST_*` variable is missing is started on
//! demand (or the test is skipped, loudly, under `SD_INTEGRATION=0`).
//!
//! ```sh
//! eval "$(scripts/registries up)"
//! cargo test -p sd-testkit --test smoke
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sd_testkit::{
    exclusive, kill, require, restart, shared, unique_name, wait_ready, PauseGuard, Server,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

async fn get_json(url: &str) -> Value {
    let resp = http()
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: bad JSON: {e}"))
}

#[tokio::test]
async fn consul_agent_self_reports_a_version() {
    let addr = require!(Server::Consul);
    let body = get_json(&format!("http://{addr}/v1/agent/self")).await;
    let version = body["Config"]["Version"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("1."),
        "unexpected Consul version {version:?}"
    );
}

async fn etcd_version(addr: &str) -> String {
    let body = get_json(&format!("http://{addr}/version")).await;
    body["etcdserver"]
        .as_str()
        .unwrap_or_else(|| panic!("no etcdserver in {body}"))
        .to_string()
}

#[tokio::test]
async fn etcd34_reports_version() {
    let addr = require!(Server::Etcd);
    // The fault tests below pause/kill etcd; wait for them instead of racing them.
    let _guard = shared(Server::Etcd);
    let v = etcd_version(&addr).await;
    assert!(v.starts_with("3.4."), "expected etcd 3.4, got {v}");
}

#[tokio::test]
async fn etcd35_reports_version() {
    let addr = require!(Server::Etcd35);
    let _guard = shared(Server::Etcd35);
    let v = etcd_version(&addr).await;
    assert!(v.starts_with("3.5."), "expected etcd 3.5, got {v}");
}

#[tokio::test]
async fn zookeeper_srvr_reports_3_8() {
    let addr = require!(Server::Zk);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
        .await
        .expect("connect timeout")
        .expect("connect to ZooKeeper");
    conn.write_all(b"srvr").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .expect("srvr timeout")
        .expect("read srvr");
    assert!(out.contains("Zookeeper version: 3.8"), "srvr said: {out:?}");
    assert!(out.contains("Mode: standalone"), "srvr said: {out:?}");
}

#[tokio::test]
async fn eureka_lists_apps_as_json() {
    let base = require!(Server::Eureka);
    let body = get_json(&format!("{}/apps", base.trim_end_matches('/'))).await;
    assert!(
        body.get("applications").is_some(),
        "no applications in {body}"
    );
}

// ---- DNS: minimal RFC 1035 / RFC 2136 messages, crafted by hand ----------------------

const TYPE_SOA: u16 = 6;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

fn put_name(buf: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        assert!(!label.is_empty() && label.len() < 64, "bad label in {name}");
        buf.push(label.len() as u8);
        buf.extend_from_slice(label.as_bytes());
    }
    buf.push(0);
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        buf.extend_from_slice(&c.to_be_bytes());
    }
    buf
}

fn srv_query(id: u16, name: &str) -> Vec<u8> {
    let mut buf = header(id, 0, [1, 0, 0, 0]); // standard query, no recursion wanted
    put_name(&mut buf, name);
    buf.extend_from_slice(&TYPE_SRV.to_be_bytes());
    buf.extend_from_slice(&CLASS_IN.to_be_bytes());
    buf
}

/// RFC 2136 UPDATE: zone section (zone SOA IN) + one update RR.
/// `add: Some(srv)` adds that SRV record; `None` deletes the whole SRV RRset of `name`.
fn srv_update(id: u16, zone: &str, name: &str, add: Option<&Srv>) -> Vec<u8> {
    let mut buf = header(id, 5 << 11, [1, 0, 1, 0]); // opcode UPDATE; ZO=1 PR=0 UP=1 AD=0
    put_name(&mut buf, zone);
    buf.extend_from_slice(&TYPE_SOA.to_be_bytes());
    buf.extend_from_slice(&CLASS_IN.to_be_bytes());
    put_name(&mut buf, name);
    buf.extend_from_slice(&TYPE_SRV.to_be_bytes());
    match add {
        Some(srv) => {
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&srv.priority.to_be_bytes());
            rdata.extend_from_slice(&srv.weight.to_be_bytes());
            rdata.extend_from_slice(&srv.port.to_be_bytes());
            put_name(&mut rdata, &srv.target);
            buf.extend_from_slice(&CLASS_IN.to_be_bytes());
            buf.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
            buf.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            buf.extend_from_slice(&rdata);
        }
        None => {
            buf.extend_from_slice(&CLASS_ANY.to_be_bytes());
            buf.extend_from_slice(&0u32.to_be_bytes());
            buf.extend_from_slice(&0u16.to_be_bytes());
        }
    }
    buf
}

fn u16_at(msg: &[u8], pos: usize) -> u16 {
    u16::from_be_bytes([msg[pos], msg[pos + 1]])
}

/// Reads a (possibly compressed) name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> (String, usize) {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = msg[pos] as usize;
        if len & 0xc0 == 0xc0 {
            end.get_or_insert(pos + 2);
            pos = (u16_at(msg, pos) & 0x3fff) as usize;
        } else if len == 0 {
            let name = labels.join(".") + ".";
            return (name, end.unwrap_or(pos + 1));
        } else {
            labels.push(String::from_utf8_lossy(&msg[pos + 1..pos + 1 + len]).into_owned());
            pos += 1 + len;
        }
    }
    panic!("DNS name compression loop");
}

/// Parses a response: (rcode, SRV answers).
fn parse_response(msg: &[u8]) -> (u8, Vec<Srv>) {
    assert!(msg.len() >= 12, "short DNS message");
    let rcode = msg[3] & 0x0f;
    let (qd, an) = (u16_at(msg, 4), u16_at(msg, 6));
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(msg, pos).1 + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        let (_, p) = read_name(msg, pos);
        let rtype = u16_at(msg, p);
        let rdlen = u16_at(msg, p + 8) as usize;
        let rdata = p + 10;
        if rtype == TYPE_SRV {
            answers.push(Srv {
                priority: u16_at(msg, rdata),
                weight: u16_at(msg, rdata + 2),
                port: u16_at(msg, rdata + 4),
                target: read_name(msg, rdata + 6).0,
            });
        }
        pos = rdata + rdlen;
    }
    (rcode, answers)
}

/// Sends one UDP request and returns the matching response (3 tries, 2 s each).
async fn exchange(server: SocketAddr, request: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let id = u16_at(request, 0);
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        sock.send(request).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), sock.recv(&mut buf)).await {
            // Ignore stray datagrams: match id and the QR (response) bit.
            if n >= 12 && u16_at(&buf, 0) == id && buf[2] & 0x80 != 0 {
                return buf[..n].to_vec();
            }
        }
    }
    panic!("no DNS answer from {server}");
}

async fn query_srv(server: SocketAddr, name: &str) -> (u8, Vec<Srv>) {
    let id = rand_id();
    parse_response(&exchange(server, &srv_query(id, name)).await)
}

async fn update(server: SocketAddr, zone: &str, name: &str, add: Option<&Srv>) {
    let id = rand_id();
    let (rcode, _) = parse_response(&exchange(server, &srv_update(id, zone, name, add)).await);
    assert_eq!(rcode, 0, "dynamic update of {name} refused (rcode {rcode})");
}

fn rand_id() -> u16 {
    // Unique enough per message; the names are unique anyway.
    let n = unique_name("id");
    n.bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(b as u16))
}

#[tokio::test]
async fn dns_srv_seeded_and_dynamic_update() {
    let addr: SocketAddr = require!(Server::Dns)
        .parse()
        .expect("SD_TEST_DNS is host:port");
    let zone = sd_testkit::dns_zone();

    // The zone is seeded by scripts/registries with two _web._tcp records.
    let (rcode, mut seeded) = query_srv(addr, &format!("_web._tcp.{zone}")).await;
    assert_eq!(rcode, 0);
    seeded.sort_by_key(|s| s.port);
    assert_eq!(
        seeded.first(),
        Some(&Srv {
            priority: 10,
            weight: 60,
            port: 8080,
            target: format!("web1.{zone}.")
        }),
        "seeded answers: {seeded:?}"
    );

    // Add a record under a unique name and see it in the next answer.
    let name = format!("_{}._tcp.{zone}", unique_name("smoke"));
    let (rcode, none) = query_srv(addr, &name).await;
    assert!(
        none.is_empty() && rcode == 3,
        "fresh name already exists: {rcode} {none:?}"
    );
    let srv = Srv {
        priority: 5,
        weight: 7,
        port: 9099,
        target: format!("web1.{zone}."),
    };
    update(addr, &zone, &name, Some(&srv)).await;
    let (rcode, answers) = query_srv(addr, &name).await;
    assert_eq!(rcode, 0);
    assert_eq!(answers, vec![srv]);

    // And remove it again.
    update(addr, &zone, &name, None).await;
    let (_, answers) = query_srv(addr, &name).await;
    assert!(answers.is_empty(), "still there after delete: {answers:?}");
}

// ---- fault injection --------------------------------------------------------------

#[tokio::test]
async fn fault_etcd_pause_and_resume() {
    let addr = require!(Server::Etcd);
    let _lock = exclusive(Server::Etcd);
    let health = format!("http://{addr}/health");
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();

    wait_ready(Server::Etcd)
        .await
        .expect("etcd ready before the test");
    let paused = PauseGuard::pause(Server::Etcd).await.expect("pause etcd");
    let err = quick
        .get(&health)
        .send()
        .await
        .expect_err("a paused etcd must not answer");
    assert!(err.is_timeout(), "expected a timeout, got {err}");

    paused.resume().await.expect("resume etcd");
    wait_ready(Server::Etcd)
        .await
        .expect("etcd ready after resume");
    let body = quick
        .get(&health)
        .send()
        .await
        .expect("etcd answers after resume")
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"health\":\"true\""), "health: {body}");
}

fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn b64_matches_rfc4648() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
}

#[tokio::test]
async fn fault_etcd35_kill_and_restart_keeps_data() {
    let addr = require!(Server::Etcd35);
    let _lock = exclusive(Server::Etcd35);
    let key = b64(format!("/{}/k", unique_name("fault-etcd35")).as_bytes());
    let client = http();

    wait_ready(Server::Etcd35)
        .await
        .expect("etcd35 ready before the test");
    let put = client
        .post(format!("http://{addr}/v3/kv/put"))
        .body(format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(b"v1")))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);

    kill(Server::Etcd35).await.expect("kill etcd35");
    let err = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect_err("a killed etcd must not answer");
    assert!(err.is_connect(), "expected connection refused, got {err}");

    restart(Server::Etcd35).await.expect("restart etcd35");
    let got = get_json_post(
        &client,
        &format!("http://{addr}/v3/kv/range"),
        format!(r#"{{"key":"{key}"}}"#),
    )
    .await;
    assert_eq!(
        got["kvs"][0]["value"].as_str(),
        Some(b64(b"v1").as_str()),
        "key lost across restart: {got}"
    );
}

async fn get_json_post(client: &reqwest::Client, url: &str, body: String) -> Value {
    let resp = client.post(url).body(body).send().await.expect(url);
    assert_eq!(resp.status(), 200, "POST {url}");
    resp.json().await.expect("JSON")
}

/// An HTTPS client for the consul-secure agent: its CA and (optionally) its client certificate.
fn secure_http(with_client_cert: bool) -> reqwest::Client {
    let dir = sd_testkit::consul_secure_dir();
    let read = |f: &str| {
        std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()))
    };
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.pem")).expect("CA"));
    if with_client_cert {
        let mut pem = read("client.pem");
        pem.extend(read("client.key"));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
    }
    b.build().expect("reqwest client")
}

#[tokio::test]
async fn consul_secure_needs_the_token_and_a_client_certificate() {
    let addr = require!(Server::ConsulSecure);
    let _guard = shared(Server::ConsulSecure);
    let token =
        std::fs::read_to_string(sd_testkit::consul_secure_dir().join("token")).expect("token file");
    let token = token.trim();
    let url = format!("https://{addr}/v1/agent/self");
    let http = secure_http(true);

    let resp = http
        .get(&url)
        .header("X-Consul-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["Config"]["Version"]
        .as_str()
        .unwrap_or_default()
        .starts_with("1."));
    assert_eq!(body["DebugConfig"]["ACLsEnabled"], Value::Bool(true));

    // ACLs are enforced: no token (anonymous) or a wrong token is refused.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403, "anonymous request");
    let resp = http
        .get(&url)
        .header("X-Consul-Token", "00000000-0000-4000-8000-000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "unknown token");

    // Mutual TLS is enforced: no client certificate, no HTTP exchange at all.
    let err = secure_http(false)
        .get(&url)
        .header("X-Consul-Token", token)
        .send()
        .await
        .expect_err("the agent requires a client certificate");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // Plain HTTP is off.
    assert!(http
        .get(format!("http://{addr}/v1/agent/self"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));
}
