//! The readiness endpoint the load balancer's health check polls: a tiny
//! HTTP/1.1 responder on the private address. `GET /ready` answers 200
//! while the supervisor says `ready`, 503 (with the state) otherwise, so
//! the balancer's view follows the same serving probe as membership. It
//! says nothing else: no version, no peers (the monitoring port, which
//! has no authentication, is never the health check's target).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::supervisor::Status;

/// The path the health check must ask for.
pub const PATH: &str = "/ready";
/// A request must arrive whole within this.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests larger than this are refused.
const MAX_REQUEST: usize = 4096;

/// Binds now (so a taken port fails the start), serves until dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health checks from `listener` with the latest status.
pub async fn serve(listener: TcpListener, status: watch::Receiver<Status>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = status.borrow().state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &state)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, state: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "request too large").await;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET" | "HEAD", PATH) if state == "ready" => respond(&mut stream, 200, "ready").await,
        ("GET" | "HEAD", PATH) => respond(&mut stream, 503, state).await,
        ("GET" | "HEAD", _) => respond(&mut stream, 404, "not found").await,
        _ => respond(&mut stream, 405, "method not allowed").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, text: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let body = format!("{text}\n");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_with_the_supervisors_state() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(Status {
            state: "starting".into(),
            ..Status::default()
        });
        let task = tokio::spawn(serve(listener, rx));
        let r = get(addr, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.ends_with("starting\n"),
            "{r}"
        );
        tx.send_modify(|s| s.state = "ready".into());
        let r = get(addr, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let r = get(addr, "GET /varz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(addr, "POST /ready HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        task.abort();
    }
}
