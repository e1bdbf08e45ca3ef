//! Attack on the gzip change (issue 17): hostile compressed answers from a fake agent
//! ([`sd_testkit::hostile::HostileServer`] on 127.0.0.1): a truncated stream, a body that
//! says gzip and stalls, gzip on a failure status (the error-body path), encodings that
//! were not asked for, a body that is small decoded but larger than the cap on the wire,
//! and the instancer keeping its last good set through a corrupt answer.

mod common;

use std::io::Write;
use std::time::Duration;

use common::gzip;
use sd_consul::{Client, ClientConfig, ConsulInstancer};
use sd_core::{Error, Event, Instancer, ServiceQuery, Subscription};
use sd_testkit::hostile::{Body, HostileServer, Reply};
use serde_json::json;

/// The smallest cap the client accepts (64 KiB).
const CAP: usize = 64 << 10;

/// Short, so a stall is caught quickly; no assertion is made on how long anything took.
const TIMEOUT: Duration = Duration::from_millis(300);

/// The longest any test waits for one expected event.
const BOUND: Duration = Duration::from_secs(20);

fn client(server: &HostileServer) -> Client {
    Client::new(
        ClientConfig::new(server.addr().to_string())
            .timeout(TIMEOUT)
            .max_body(CAP),
    )
    .unwrap()
}

fn entry(addr: &str) -> serde_json::Value {
    let (host, port) = addr.split_once(':').unwrap();
    json!({
        "Node": {"Node": "n1", "Address": "10.9.9.9", "Datacenter": "dc1"},
        "Service": {"ID": addr, "Service": "web", "Tags": [], "Address": host,
                    "Meta": {"zone": "eu-1", "é": "ü"},
                    "Port": port.parse::<u16>().unwrap()},
        "Checks": [{"Status": "passing"}]
    })
}

fn answer(addrs: &[&str]) -> Vec<u8> {
    let body: Vec<_> = addrs.iter().map(|a| entry(a)).collect();
    json!(body).to_string().into_bytes()
}

/// A 200 with these (already encoded) bytes and `Content-Encoding: encoding`.
fn encoded(encoding: &str, bytes: Vec<u8>, index: u64) -> Reply {
    Reply::json(200, bytes)
        .header("Content-Encoding", encoding)
        .header("X-Consul-Index", index.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_gzip_answer_is_an_error_not_a_partial_set() {
    let plain = answer(&["10.0.0.1:80", "10.0.0.2:80"]);
    let packed = gzip(&plain);
    // Cut inside the deflate data, then just before the 8-byte trailer (CRC and length):
    // the JSON may be complete in the second case, but the stream is not.
    for cut in [packed.len() / 2, packed.len() - 8, packed.len() - 1] {
        let server = HostileServer::start(encoded("gzip", packed[..cut].to_vec(), 7)).await;
        let err = client(&server)
            .health_service("web", None, false, 0)
            .await
            .expect_err("a truncated gzip stream must not be taken as an answer");
        assert!(
            matches!(err, Error::Unavailable { .. } | Error::Malformed { .. }),
            "cut at {cut} of {}: {err:?}",
            packed.len()
        );
    }
}

/// Go's gzip reader (and so go-kit's client) fails on bytes after the last member that do
/// not start another one; reqwest's decoder dropped them and the answer was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_with_trailing_garbage_is_an_error() {
    let mut packed = gzip(&answer(&["10.0.0.1:80"]));
    packed.extend_from_slice(b"garbage after the gzip member");
    let server = HostileServer::start(encoded("gzip", packed, 7)).await;
    let got = client(&server).health_service("web", None, false, 0).await;
    assert!(got.is_err(), "trailing garbage accepted: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_answer_is_decoded_with_its_metadata() {
    let server = HostileServer::start(encoded("gzip", gzip(&answer(&["10.0.0.1:80"])), 7)).await;
    let got = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("a gzip answer");
    assert_eq!(got.instances.len(), 1);
    let meta = got.instances[0].meta();
    assert_eq!(meta.get("zone"), Some("eu-1"));
    assert_eq!(meta.get("é"), Some("ü"));
    assert_eq!(meta.get("consul.datacenter"), Some("dc1"));
    let head = server.requests()[0].raw.to_lowercase();
    // Only gzip is asked for: deflate, br and zstd are not (their features are off).
    let accept = head
        .lines()
        .find(|l| l.starts_with("accept-encoding:"))
        .expect("an Accept-Encoding header");
    assert_eq!(accept.trim(), "accept-encoding: gzip", "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_not_asked_for_is_malformed_not_decoded_nor_a_panic() {
    let plain = answer(&["10.0.0.1:80"]);
    // What a deflate or brotli body may look like: here, the gzip bytes (never valid JSON).
    for enc in ["deflate", "br", "zstd", "x-unknown"] {
        let server = HostileServer::start(encoded(enc, gzip(&plain), 7)).await;
        let err = client(&server)
            .health_service("web", None, false, 0)
            .await
            .expect_err("an encoding not asked for is not decoded");
        assert!(matches!(err, Error::Malformed { .. }), "{enc}: {err:?}");
    }
    // `identity` (no encoding) is read as is.
    let server = HostileServer::start(encoded("identity", plain, 7)).await;
    let got = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("identity is no encoding");
    assert_eq!(got.instances.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_on_a_failure_status_is_quoted_decoded_and_a_bomb_there_is_not_read() {
    // A short compressed error body: quoted decoded.
    let reply = Reply::json(500, gzip(b"No cluster leader")).header("Content-Encoding", "gzip");
    let server = HostileServer::start(reply).await;
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("500");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("No cluster leader"), "{err}");

    // 403 with a compressed error body: Rejected, decoded.
    let reply = Reply::json(403, gzip(b"ACL not found")).header("Content-Encoding", "gzip");
    server.set(reply);
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("403");
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("ACL not found"), "{err}");

    // A 64 MiB bomb as an error body: only the start is read and quoted.
    let bomb = gzip(&vec![b'x'; 64 << 20]);
    let reply = Reply::json(503, bomb).header("Content-Encoding", "gzip");
    server.set(reply);
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("503");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().len() < 1000, "{}", err.to_string().len());

    // A corrupt compressed error body: still the status's error, no panic.
    let reply = Reply::json(500, b"not gzip".to_vec()).header("Content-Encoding", "gzip");
    server.set(reply);
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("500");
    assert!(err.to_string().contains("500"), "{err}");
}

/// A gzip 200 declaring `declared` bytes that sends `prefix` and then holds the connection.
fn stalled_gzip(prefix: Vec<u8>, declared: usize) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Content-Encoding".into(), "gzip".into()),
            ("X-Consul-Index".into(), "7".into()),
        ],
        body: Body::StallMidBody {
            declared: declared as u64,
            prefix,
        },
        retry_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_that_stalls_times_out() {
    // A valid gzip header and the start of the data, then nothing (the connection held).
    let packed = gzip(&answer(&["10.0.0.1:80"; 50]));
    let prefix = packed[..packed.len() / 2].to_vec();
    let server = HostileServer::start(stalled_gzip(prefix, packed.len())).await;
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("a stalled gzip body");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    // Only a gzip header, so nothing decoded ever comes out.
    let reply = stalled_gzip(packed[..10].to_vec(), packed.len());
    server.set(reply);
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("a stalled gzip body");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

/// A gzip member whose deflate stream starts with `empty_blocks` empty stored blocks (five
/// bytes each on the wire, nothing decoded: valid deflate) and then holds `plain`.
fn gzip_padded(plain: &[u8], empty_blocks: usize) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..empty_blocks {
        // BFINAL 0, BTYPE 00 (stored), padding to the byte; LEN 0, NLEN !0.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
    }
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(plain).unwrap();
    out.extend_from_slice(&e.finish().unwrap());
    let mut crc = flate2::Crc::new();
    crc.update(plain);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out
}

/// docs/CONSUL.md, "Hostile answers": "a larger `Content-Length` is refused before
/// reading". A gzip answer padded with empty stored deflate blocks is a few hundred bytes
/// decoded but 16 times the cap on the wire, with a `Content-Length` saying so. With
/// reqwest's decoder (the `gzip` feature) it was read whole and taken: the decoder
/// removed the `Content-Length` and only decoded bytes were counted, so a compressed
/// answer's size on the wire was bounded by the timeouts alone. Now refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_answer_whose_content_length_exceeds_the_cap_is_refused_before_reading() {
    let plain = answer(&["10.0.0.1:80"]);
    let wire = gzip_padded(&plain, 16 * CAP / 5);
    let declared = wire.len();
    let server = HostileServer::start(encoded("gzip", wire, 7)).await;
    let got = client(&server).health_service("web", None, false, 0).await;
    match got {
        Err(Error::Malformed { .. }) => {}
        other => panic!(
            "a {declared}-byte gzip answer (Content-Length: {declared}) under a {CAP}-byte \
             cap was read: {:?}",
            other.map(|a| a.instances.len())
        ),
    }
}

/// The padding itself is valid gzip: the same answer with a little of it is decoded (so
/// the test above fails for the cap, not for a bad stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_answer_padded_with_empty_stored_blocks_under_the_cap_is_read() {
    let plain = answer(&["10.0.0.1:80"]);
    let server = HostileServer::start(encoded("gzip", gzip_padded(&plain, 1000), 7)).await;
    let got = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("valid padded gzip");
    assert_eq!(got.instances.len(), 1);
}

async fn next_event(sub: &mut Subscription, what: &str) -> Event {
    tokio::time::timeout(BOUND, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no event within {BOUND:?}"))
        .unwrap_or_else(|| panic!("{what}: the instancer ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instancer_keeps_its_last_good_set_through_a_corrupt_gzip_answer_and_recovers() {
    let before = ["10.0.0.1:80", "10.0.0.2:80"];
    let server = HostileServer::start(encoded("gzip", gzip(&answer(&before)), 100)).await;
    let instancer = ConsulInstancer::start(client(&server), ServiceQuery::new("web")).await;
    let mut sub = instancer.subscribe();
    match next_event(&mut sub, "first set").await {
        Event::Instances(set) => assert_eq!(set.len(), 2),
        e => panic!("first: {e:?}"),
    }

    // Corrupt: a truncated stream with a higher index.
    let packed = gzip(&answer(&["10.0.0.9:80"]));
    server.set(encoded("gzip", packed[..packed.len() - 4].to_vec(), 200));
    loop {
        match next_event(&mut sub, "the error").await {
            Event::Error(_) => break,
            Event::Instances(set) => {
                assert_eq!(set.len(), 2, "a corrupt answer changed the set: {set:?}")
            }
        }
    }

    // Good again, a new set: recovered.
    server.set(encoded("gzip", gzip(&answer(&["10.0.0.3:80"])), 300));
    tokio::time::timeout(BOUND, async {
        loop {
            if let Event::Instances(set) = next_event(&mut sub, "recovery").await {
                if set.len() == 1 && set.iter().next().unwrap().id() == "10.0.0.3:80" {
                    return;
                }
            }
        }
    })
    .await
    .expect("recovered after the corrupt answer");
    instancer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_said_to_be_gzip_is_an_error_not_a_panic() {
    let server = HostileServer::start(encoded("gzip", Vec::new(), 7)).await;
    let got = client(&server).health_service("web", None, false, 0).await;
    assert!(got.is_err(), "an empty body is no health answer: {got:?}");
    // A gzip of nothing: decodes to an empty body, which is no JSON array either.
    server.set(encoded("gzip", gzip(b""), 7));
    let got = client(&server).health_service("web", None, false, 0).await;
    assert!(got.is_err(), "an empty body is no health answer: {got:?}");
    // A gzip of an empty array: no instances.
    server.set(encoded("gzip", gzip(b"[]"), 7));
    let got = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("an empty set");
    assert!(got.instances.is_empty());
}

/// Metadata through the whole path (gzip, entry decoding, `Meta`): a key given twice in
/// the JSON keeps its last value (as the map did), and the service cannot spoof the
/// node's keys (the node's are given last, so they win, as they did with the map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_metadata_keeps_the_last_duplicate_and_the_node_keys_win() {
    let text = r#"[{"Node":{"Node":"n1","Address":"10.9.9.9","Datacenter":"dc1"},
        "Service":{"ID":"w1","Service":"web","Tags":[],"Address":"10.0.0.1","Port":80,
                   "Meta":{"v":"first","consul.node":"spoof","":"empty key","v":"last",
                           "consul.datacenter":"spoof"}},
        "Checks":[{"Status":"passing"}]}]"#;
    let server = HostileServer::start(encoded("gzip", gzip(text.as_bytes()), 7)).await;
    let got = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("an answer");
    assert_eq!(got.instances.len(), 1, "{got:?}");
    let meta = got.instances[0].meta();
    assert_eq!(meta.get("v"), Some("last"), "{meta:?}");
    assert_eq!(meta.get("consul.node"), Some("n1"), "{meta:?}");
    assert_eq!(meta.get("consul.datacenter"), Some("dc1"), "{meta:?}");
    assert_eq!(meta.get(""), Some("empty key"), "{meta:?}");
    assert_eq!(meta.len(), 4, "{meta:?}");
}

/// An endless (chunked) answer said to be gzip is dropped at the cap as it comes, not
/// when the timeouts run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_gzip_answer_is_dropped_at_the_cap() {
    for reply in [Reply::endless(), Reply::huge(64 << 20, false)] {
        let server = HostileServer::start(
            reply
                .header("Content-Encoding", "gzip")
                .header("X-Consul-Index", "7"),
        )
        .await;
        let err = client(&server)
            .health_service("web", None, false, 0)
            .await
            .expect_err("an endless answer");
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("cap"), "{err}");
        // What the server wrote is bounded by the cap (plus what was in flight).
        assert!(
            server.body_bytes_written() < 64 * CAP as u64,
            "{}",
            server.body_bytes_written()
        );
    }
}
