//! Attacks on sd-eureka's allocation bounds with a fake Eureka server on 127.0.0.1 that sends
//! huge bodies. Memory is measured as the process's peak RSS (VmHWM), reset before each
//! scenario through /proc/self/clear_refs; the scenarios run one after the other in one test
//! so nothing else in this binary allocates meanwhile.
//!
//! Run: `cargo test -p sd-eureka --test attack_alloc -- --nocapture`

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A body made of `prefix`, `unit` repeated `count` times, and `suffix`.
#[derive(Clone)]
struct Pattern {
    status: u16,
    prefix: Vec<u8>,
    unit: Vec<u8>,
    count: usize,
    suffix: Vec<u8>,
}

impl Pattern {
    fn len(&self) -> usize {
        self.prefix.len() + self.unit.len() * self.count + self.suffix.len()
    }
}

/// Serves `pattern` to every request (one per connection), streaming the body.
async fn serve(pattern: Pattern) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let p = pattern.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    p.status,
                    p.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if sock.write_all(&p.prefix).await.is_err() {
                    return;
                }
                // 1 MiB blocks of the unit.
                let per_block = (1 << 20) / p.unit.len().max(1);
                let block: Vec<u8> = p.unit.repeat(per_block.max(1));
                let mut left = p.count;
                while left > 0 {
                    let n = left.min(per_block.max(1));
                    let bytes = if n == per_block {
                        &block[..]
                    } else {
                        &block[..n * p.unit.len()]
                    };
                    if sock.write_all(bytes).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = sock.write_all(&p.suffix).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

/// Peak RSS growth, in MiB, while `f` runs.
async fn peak_growth_mib<F: std::future::Future>(f: F) -> (u64, F::Output) {
    reset_peak();
    let base = kib("VmRSS:");
    let out = f.await;
    let peak = kib("VmHWM:");
    (peak.saturating_sub(base) / 1024, out)
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_bodies_are_bounded_on_every_path() {
    // Warm up: the client, the runtime, the first connection.
    let (ok_addr, _t0) = serve(Pattern {
        status: 404,
        prefix: vec![],
        unit: vec![],
        count: 0,
        suffix: vec![],
    })
    .await;
    let warm = sd_eureka::Client::new(
        sd_eureka::ClientConfig::new([format!("http://{ok_addr}/eureka")])
            .timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let _ = warm.app("WEB").await;

    let mut report = Vec::new();

    // 1. Control: a 200 answer of 300 MiB is cut at MAX_BODY (64 MiB) -> Malformed.
    let (addr, _t1) = serve(Pattern {
        status: 200,
        prefix: b"{\"application\":\"".to_vec(),
        unit: b"x".to_vec(),
        count: 300 * MIB,
        suffix: b"\"}".to_vec(),
    })
    .await;
    let c = sd_eureka::Client::new(
        sd_eureka::ClientConfig::new([format!("http://{addr}/eureka")])
            .timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let (grew_ok, r) = peak_growth_mib(c.app("WEB")).await;
    let e = r.unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    report.push(format!(
        "200 with a 300 MiB body: peak RSS +{grew_ok} MiB ({e:.80})"
    ));

    // 2. The same 300 MiB as the body of a 503 (and of a 4xx on register): status_error()
    //    reads it whole with resp.text(), no bound.
    let (addr, _t2) = serve(Pattern {
        status: 503,
        prefix: vec![],
        unit: b"x".to_vec(),
        count: 300 * MIB,
        suffix: vec![],
    })
    .await;
    let c = sd_eureka::Client::new(
        sd_eureka::ClientConfig::new([format!("http://{addr}/eureka")])
            .timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let (grew_5xx, r) = peak_growth_mib(c.app("WEB")).await;
    let e = r.unwrap_err();
    report.push(format!(
        "503 with a 300 MiB body: peak RSS +{grew_5xx} MiB ({:.80})",
        e.to_string()
    ));

    // 3. A body just under MAX_BODY that serde_json::Value inflates: 60 MiB of `0,` in an
    //    array is 30 M numbers, each a 32-byte Value (plus Vec doubling).
    let (addr, _t3) = serve(Pattern {
        status: 200,
        prefix: b"{\"application\":{\"instance\":[".to_vec(),
        unit: b"0,".to_vec(),
        count: 30 * MIB,
        suffix: b"0]}}".to_vec(),
    })
    .await;
    let c = sd_eureka::Client::new(
        sd_eureka::ClientConfig::new([format!("http://{addr}/eureka")])
            .timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let (grew_json, r) = peak_growth_mib(c.app("WEB")).await;
    report.push(format!(
        "200 with a 60 MiB array of numbers: peak RSS +{grew_json} MiB (ok: {})",
        r.is_ok()
    ));

    for line in &report {
        eprintln!("{line}");
    }
    // MAX_BODY is documented as the bound on what is read ("a larger one is an
    // Error::Malformed instead of an unbounded allocation"): allow twice it.
    assert!(grew_ok < 160, "{report:#?}");
    assert!(
        grew_5xx < 160,
        "an error answer is read without the MAX_BODY bound: {report:#?}"
    );
}
