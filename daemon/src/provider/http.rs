//! The HTTP client shared by provider modules: no proxies (metadata lives
//! on link-local addresses), bounded timeouts, and errors mapped to what a
//! caller can act on.

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder};

use natsmesh_broker::monitor::read_capped;

use super::MetadataError;

/// The most of an answer kept (the rest is never read).
pub const MAX_BODY: usize = 1 << 20;

/// An answer: status, content type, body (at most 1 MiB is kept).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: String,
    /// Body text.
    pub body: String,
}

/// A client with `timeout` per request.
pub fn client(timeout: Duration) -> Client {
    Client::builder()
        // Metadata services speak plain HTTP: no system root store.
        .tls_backend_preconfigured(natsmesh_broker::monitor::plain_only_tls())
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .unwrap_or_default()
}

/// Sends a request built by `build`, reading at most 1 MiB of body.
pub async fn send(
    http: &Client,
    method: Method,
    url: &str,
    build: impl FnOnce(RequestBuilder) -> RequestBuilder,
) -> Result<Answer, MetadataError> {
    let unreachable = |reason: String| MetadataError::Unreachable {
        endpoint: url.to_owned(),
        reason,
    };
    let resp = build(http.request(method, url))
        .send()
        .await
        .map_err(|e| unreachable(without_url(&e)))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Metadata answers are a few hundred bytes; the cap bounds a service
    // (or whatever answers on its address) gone wrong, while it streams.
    let capped = read_capped(resp, MAX_BODY)
        .await
        .map_err(|e| unreachable(without_url(&e)))?;
    let body = String::from_utf8_lossy(&capped.bytes).into_owned();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// The error's description without the URL (which the caller names once)
/// and never with headers (tokens).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

impl Answer {
    /// The body for a 200, or the status as an error.
    pub fn ok(self, endpoint: &str) -> Result<String, MetadataError> {
        if self.status == 200 {
            Ok(self.body)
        } else {
            Err(MetadataError::Status {
                endpoint: endpoint.to_owned(),
                status: self.status,
                body: self.body.chars().take(200).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_metadata_answer_is_cut_at_the_cap_while_it_streams() {
        let (addr, server) = natsmesh_harness::flood::serve(300 << 20).await;
        let before = natsmesh_harness::flood::rss_kib().unwrap_or(0);
        let http = client(Duration::from_secs(10));
        let url = format!("http://{addr}/metadata/v1.json");
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            send(&http, Method::GET, &url, |r| r),
        )
        .await
        .expect("answers in time")
        .expect("answers");
        assert_eq!(answer.body.len(), MAX_BODY);
        let grown = natsmesh_harness::flood::rss_kib()
            .unwrap_or(0)
            .saturating_sub(before);
        drop(http);
        let sent = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops")
            .expect("server task");
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
        assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
    }
}
