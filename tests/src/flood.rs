//! An HTTP server on loopback that answers one request with a huge body,
//! for tests that a client stops reading at its cap.
//!
//! It writes until the client hangs up (or `total` bytes are sent) and
//! reports how many bytes it managed to send: with a client that stops at
//! 1 MiB that is the cap plus what the kernel's socket buffers hold, far
//! below `total`. Bounded in time too, so a client that never hangs up
//! cannot keep a test running.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the server writes at most.
const WRITE_FOR: Duration = Duration::from_secs(20);

/// Serves one connection on 127.0.0.1: a 200 whose `Content-Length` is
/// `total` and whose body is that many bytes of `x`. The handle's value is
/// the number of body bytes written before the client went away.
pub async fn serve(total: u64) -> (SocketAddr, tokio::task::JoinHandle<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let handle = tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return 0;
        };
        // The request head (one read is enough for a small GET/PUT).
        let mut head = [0u8; 8192];
        let _ = conn.read(&mut head).await;
        let header = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
        );
        if conn.write_all(header.as_bytes()).await.is_err() {
            return 0;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        let deadline = tokio::time::Instant::now() + WRITE_FOR;
        while sent < total && tokio::time::Instant::now() < deadline {
            let n = chunk.len().min((total - sent) as usize);
            match tokio::time::timeout(Duration::from_secs(2), conn.write_all(&chunk[..n])).await {
                Ok(Ok(())) => sent += n as u64,
                // The client hung up, or stopped reading without hanging up
                // (buffers full): either way it reads no more.
                _ => break,
            }
        }
        sent
    });
    (addr, handle)
}

/// This process's resident set size now, in KiB (`VmRSS`), if known.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
