//! Compressed answers: the client asks the agent for gzip (`Accept-Encoding: gzip`, as Go's
//! HTTP client, and so go-kit's, does) and decodes it. A health answer compresses about
//! tenfold, so a blocking query's connection keeps a small read buffer (hyper grows it to
//! fit the largest read and never shrinks it: 16-32 KB a connection uncompressed for 20
//! instances, issue 17's Consul scale row). The body cap counts decoded bytes, so a small
//! compressed answer that expands past it (a "gzip bomb") is refused without being held.
//!
//! Its own test binary: the counting allocator is global.

mod common;

use std::time::Duration;

use common::gzip;
use sd_consul::{Client, ClientConfig};
use sd_core::Error;
use sd_testkit::hostile::{HostileServer, Reply};
use sd_testkit::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const CAP: usize = 4 << 20;

/// Serves `body` with `Content-Encoding: gzip` to every request (it records the requests).
async fn serve_gzip(body: Vec<u8>) -> HostileServer {
    HostileServer::start(
        Reply::json(200, body)
            .header("Content-Encoding", "gzip")
            .header("X-Consul-Index", "7"),
    )
    .await
}

fn client(server: &HostileServer) -> Client {
    Client::new(
        ClientConfig::new(server.addr().to_string())
            .timeout(Duration::from_secs(60))
            .max_body(CAP),
    )
    .unwrap()
}

/// A health answer of `n` instances, as the agent writes it (node, service, checks).
fn health_answer(n: usize) -> Vec<u8> {
    let entries: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"Node":{{"Node":"node-{i}","Address":"10.0.0.{i}","Datacenter":"dc1"}},
                "Service":{{"ID":"web-{i}","Service":"web","Tags":[],"Meta":{{"v":"1"}},
                "Address":"10.1.0.{i}","Port":8080,"Weights":{{"Passing":1,"Warning":1}}}},
                "Checks":[{{"CheckID":"serfHealth","Status":"passing","Output":"Agent alive and reachable"}}]}}"#
            )
        })
        .collect();
    format!("[{}]", entries.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_is_asked_for_and_decoded_within_the_cap_counted_decoded() {
    // A compressed answer: asked for, decoded, every instance read.
    let plain = health_answer(20);
    let packed = gzip(&plain);
    assert!(
        packed.len() * 4 < plain.len(),
        "{} -> {}",
        plain.len(),
        packed.len()
    );
    let server = serve_gzip(packed).await;
    let answer = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect("a gzip answer is decoded");
    assert_eq!(answer.instances.len(), 20);
    assert_eq!(answer.instances[3].meta().get("v"), Some("1"));
    let requests = server.requests();
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.header("Accept-Encoding") == Some("gzip")),
        "{requests:?}"
    );

    // A gzip bomb: 64 MiB of JSON whitespace packed into some 64 KB. Refused at the cap
    // (decoded bytes counted), and what was read is not kept meanwhile beyond the cap.
    let bomb = gzip(&[b"[".as_slice(), &vec![b' '; 64 << 20], b"]"].concat());
    assert!(bomb.len() < 256 << 10, "{}", bomb.len());
    let server = serve_gzip(bomb).await;
    let c = client(&server);
    let start = sd_testkit::alloc::reset_peak();
    let err = c
        .health_service("web", None, false, 0)
        .await
        .expect_err("64 MiB decoded under a 4 MiB cap");
    let peak = sd_testkit::alloc::peak_live_bytes() - start;
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cap") && msg.contains("max_body"), "{msg}");
    assert!(
        peak < 3 * CAP as i64,
        "decoding a 64 MiB bomb under a {CAP}-byte cap peaked at {peak} bytes"
    );

    // A body that says gzip and is not: an error, no panic.
    let server = serve_gzip(b"this is not gzip at all".to_vec()).await;
    let err = client(&server)
        .health_service("web", None, false, 0)
        .await
        .expect_err("a corrupt gzip body");
    assert!(!err.to_string().is_empty());
}
