//! The request side of the hand-written HTTP/1.1 fakes (fake agents in fake_agent.rs and
//! the attack tests).

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads a request's head (up to and including the blank line); `None` if the connection
/// closed or failed first.
pub async fn read_request_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf)
}
