//! A TCP proxy that can cut (close every connection, refuse new ones) or stall (keep the
//! connections open, forward nothing) the path to a server without touching the server: what
//! a partition or a black-holed network looks like to one client. Loopback only.
//!
//! ```no_run
//! # async fn demo() {
//! let proxy = sd_testkit::proxy::Proxy::start("127.0.0.1:2181").await;
//! // point the client under test at proxy.addr ...
//! proxy.stall();
//! proxy.restore();
//! proxy.cut();
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const FORWARD: u8 = 0;
const CUT: u8 = 1;
const STALL: u8 = 2;

/// A TCP proxy on 127.0.0.1 in front of one server (see the [module docs](self)).
pub struct Proxy {
    /// The address to connect to instead of the server's.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                FORWARD => break,
                CUT => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// Starts forwarding to `target` (`ip:port`).
    ///
    /// # Panics
    /// On a bad `target` or when no port can be bound (test support).
    pub async fn start(target: &str) -> Proxy {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (m, c) = (mode.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if m.load(Ordering::SeqCst) == CUT {
                    drop(client);
                    continue;
                }
                let m = m.clone();
                let h = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pipe(cr, sw, m.clone()));
                    let down = tokio::spawn(pipe(sr, cw, m));
                    let (ua, da) = (up.abort_handle(), down.abort_handle());
                    struct AbortBoth(AbortHandle, AbortHandle);
                    impl Drop for AbortBoth {
                        fn drop(&mut self) {
                            self.0.abort();
                            self.1.abort();
                        }
                    }
                    let _both = AbortBoth(ua, da);
                    let _ = tokio::join!(up, down);
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            mode,
            conns,
            accept,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Keeps connections open and forwards nothing.
    pub fn stall(&self) {
        self.mode.store(STALL, Ordering::SeqCst);
    }

    /// Back to normal.
    pub fn restore(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}
