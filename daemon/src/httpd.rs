//! The smallest HTTP/1.1 server natsmeshd needs, for the load balancer's
//! `/ready` and Prometheus' `/metrics`: one GET per connection, a bounded
//! request, a complete answer, then close. Both endpoints answer from
//! state natsmeshd already holds, so nothing here waits on anything else.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Requests larger than this are refused.
const MAX_REQUEST: usize = 4096;

/// A request, as far as these endpoints care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, …
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// The `Accept` header (lower-cased), or empty.
    pub accept: String,
}

/// What was asked, or `None` for a request too large (already answered
/// with 431).
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            respond(stream, 431, "text/plain", "request too large\n").await?;
            return Ok(None);
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or(path).to_owned();
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    Ok(Some(Request {
        method,
        path,
        accept,
    }))
}

/// Writes a whole answer and closes.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
