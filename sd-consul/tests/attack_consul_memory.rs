//! Item 20 (bounded reads): the body cap (`max_body`, 32 MiB by default) is meant to bound
//! what one answer can cost. A health answer made of many tiny entries (`[1,1,1,...]`, or
//! `[{},{},...]`) under the cap was split into one heap-allocated `Box<RawValue>` per entry
//! plus a 16-byte fat pointer each, so the retained memory was many times the body. Entries
//! are now decoded one at a time straight into instances, and an answer has at most one
//! entry per `MIN_ENTRY_BYTES` of the cap.
//!
//! Its own test binary: the counting allocator is global.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sd_consul::{Client, ClientConfig, MAX_SKIP_REASONS, MIN_ENTRY_BYTES};
use sd_testkit::alloc::live_bytes;
use sd_testkit::CountingAllocator;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const CAP: usize = 4 << 20; // a 4 MiB cap, to keep the test light

/// Serves `body` as the answer to every request; the agent's address.
async fn serve(body: Arc<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let b = body.clone();
            tokio::spawn(async move {
                if common::http::read_request_head(&mut conn).await.is_none() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&b).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

fn client(addr: String) -> Client {
    Client::new(
        ClientConfig::new(addr)
            .timeout(Duration::from_secs(60))
            .max_body(CAP),
    )
    .unwrap()
}

/// `[e,e,...,e]` of about `len` bytes.
fn array_of(entry: &[u8], len: usize) -> Arc<Vec<u8>> {
    let mut b = Vec::with_capacity(len);
    b.push(b'[');
    while b.len() + entry.len() + 2 < len {
        b.extend_from_slice(entry);
        b.push(b',');
    }
    b.extend_from_slice(entry);
    b.push(b']');
    Arc::new(b)
}

/// `[e,e,...,e]` with `n` entries.
fn exactly(entry: &[u8], n: usize) -> Arc<Vec<u8>> {
    Arc::new([&b"["[..], &vec![entry; n].join(&b","[..]), b"]"].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tiny_entries_amplify_memory_far_beyond_the_body_cap() {
    // 2 million one-byte entries under the cap: more than one per MIN_ENTRY_BYTES, refused
    // as malformed, naming the limit.
    let body = array_of(b"1", CAP - 2);
    let entries = (body.len() - 1) / 2;
    let before = live_bytes();
    let err = client(serve(body.clone()).await)
        .health_service("web", None, false, 0)
        .await
        .expect_err("an answer of 2M entries under a 4 MiB cap");
    let retained = live_bytes() - before;
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("more than {} entries", CAP / MIN_ENTRY_BYTES)),
        "{msg}"
    );
    assert!(msg.contains("max_body"), "{msg}");
    assert!(
        retained < CAP as i64,
        "{entries} entries: retained {retained}"
    );

    // As many tiny unusable entries as allowed: all skipped, only the first reasons kept,
    // nothing per entry retained.
    let allowed = CAP / MIN_ENTRY_BYTES;
    let body = exactly(b"1", allowed);
    let before = live_bytes();
    let answer = client(serve(body).await)
        .health_service("web", None, false, 0)
        .await
        .expect("an answer within the entry cap is read");
    let retained = live_bytes() - before;
    assert_eq!(answer.skipped, allowed);
    assert_eq!(answer.skip_reasons.len(), MAX_SKIP_REASONS);
    assert!(answer.instances.is_empty());
    assert!(
        retained < 64 << 10,
        "{allowed} skipped entries retain {retained} bytes"
    );
    drop(answer);

    // As many small usable entries as allowed: the instances are what is kept, and they
    // stay within a small multiple of the body.
    let entry = br#"{"Service":{"ID":"a","Address":"10.0.0.1","Port":80}}"#;
    let body = exactly(entry, allowed);
    let n = allowed;
    let before = live_bytes();
    let answer = client(serve(body.clone()).await)
        .health_service("web", None, false, 0)
        .await
        .expect("small usable entries within the cap");
    let retained = live_bytes() - before;
    assert_eq!(answer.instances.len(), n);
    // Requested bytes only; the allocator's per-allocation overhead comes on top.
    assert!(
        retained <= 2 * CAP as i64,
        "{n} instances from a {} byte answer (cap {CAP}) retain {retained} bytes",
        body.len()
    );
}
