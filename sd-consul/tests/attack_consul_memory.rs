//! Item 20 (bounded reads): the body cap (`max_body`, 32 MiB by default) is meant to bound
//! what one answer can cost. A health answer made of many tiny entries (`[1,1,1,...]`, or
//! `[{},{},...]`) under the cap is split into one heap-allocated `Box<RawValue>` per entry
//! plus a 16-byte fat pointer each, so the retained memory is many times the body.
//!
//! Its own test binary: the counting allocator is global.

use std::sync::Arc;
use std::time::Duration;

use sd_consul::{Client, ClientConfig};
use sd_testkit::alloc::live_bytes;
use sd_testkit::CountingAllocator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tiny_entries_amplify_memory_far_beyond_the_body_cap() {
    const CAP: usize = 4 << 20; // a 4 MiB cap, to keep the test light
    let body: Arc<Vec<u8>> = {
        let mut b = Vec::with_capacity(CAP);
        b.push(b'[');
        while b.len() < CAP - 4 {
            b.extend_from_slice(b"1,");
        }
        b.extend_from_slice(b"1]");
        Arc::new(b)
    };
    let entries = (body.len() - 1) / 2;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let b = body.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
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
    let client = Client::new(
        ClientConfig::new(addr)
            .timeout(Duration::from_secs(60))
            .max_body(CAP),
    )
    .unwrap();
    let before = live_bytes();
    let answer = client
        .health_service("web", None, false, 0)
        .await
        .expect("an answer under the cap is read");
    let retained = live_bytes() - before;
    assert_eq!(answer.entries.len(), entries);
    drop(answer);
    // Requested bytes only; the allocator's per-allocation overhead (16+ bytes for each
    // 1-byte box) comes on top.
    assert!(
        retained <= 2 * CAP as i64,
        "a {} byte answer (cap {CAP}) with {entries} entries retains {retained} bytes \
         ({:.1}x the body)",
        body.len(),
        retained as f64 / body.len() as f64
    );
}
