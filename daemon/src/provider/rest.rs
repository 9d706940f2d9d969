//! The providers' REST APIs as natsmesh calls them: bearer token, JSON,
//! HTTPS with the system's trust store (plain HTTP only where validation
//! allowed it: loopback), bounded timeouts, each provider's error body and
//! rate-limit headers read into one error type. Used by DNS publication
//! and load-balancer membership.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// Per request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Whose conventions: error bodies and rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavor {
    /// `{"id","message"}`; `ratelimit-*`.
    DigitalOcean,
    /// `{"errors":[{"reason","field"}]}`; `X-RateLimit-*`.
    Linode,
    /// `{"success":false,"errors":[{"code","message"}]}`; `Ratelimit`.
    Cloudflare,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DigitalOcean => "digitalocean",
            Self::Linode => "linode",
            Self::Cloudflare => "cloudflare",
        })
    }
}

/// A call that did not give the expected answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    /// `digitalocean POST /v2/…`
    pub what: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The provider's own words (or the transport's).
    pub text: String,
    /// How long the provider asked to wait (429, 503, an exhausted window).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{}: {s} {}", self.what, self.text),
            None => write!(f, "{}: {}", self.what, self.text),
        }
    }
}

/// What natsmeshd uses a provider's API for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purpose {
    /// `[dns_publish]`.
    DnsPublish,
    /// `[load_balancer]`.
    LoadBalancer,
}

impl Purpose {
    /// Its label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DnsPublish => "dns_publish",
            Self::LoadBalancer => "load_balancer",
        }
    }
}

/// One failed call's key: what for, whose API, and the HTTP status (or
/// `transport` when there was no answer).
pub type ErrorKey = (Purpose, Flavor, String);

/// Calls that did not get their expected answer, since start; read by
/// `/metrics`. A process-wide tally, as the calls come from several tasks
/// and a few keys (statuses seen) ever exist.
static ERRORS: Mutex<BTreeMap<ErrorKey, u64>> = Mutex::new(BTreeMap::new());

fn count_error(purpose: Purpose, flavor: Flavor, status: Option<u16>) {
    let status = status.map_or_else(|| "transport".to_owned(), |s| s.to_string());
    if let Ok(mut e) = ERRORS.lock() {
        *e.entry((purpose, flavor, status)).or_default() += 1;
    }
}

/// The failed calls so far, by key.
pub fn errors() -> Vec<(ErrorKey, u64)> {
    ERRORS
        .lock()
        .map(|e| e.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// One provider's API at one base URL.
pub struct Rest {
    flavor: Flavor,
    purpose: Purpose,
    base: String,
    http: Client,
}

impl Rest {
    /// A client; nothing is contacted yet.
    pub fn new(flavor: Flavor, base: &str, purpose: Purpose) -> Result<Self, ClientError> {
        Ok(Self {
            flavor,
            purpose,
            base: base.trim_end_matches('/').to_owned(),
            http: https_client()?,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request with `token`; the JSON body (`Null` when empty) on
    /// `expected`, a [`RestError`] otherwise. The token goes only into the
    /// `Authorization` header and never into an error.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        expected: StatusCode,
    ) -> Result<Value, RestError> {
        let answer = self
            .call_once(token, method, path, body, headers, expected)
            .await;
        if let Err(e) = &answer {
            count_error(self.purpose, self.flavor, e.status);
        }
        answer
    }

    async fn call_once(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        expected: StatusCode,
    ) -> Result<Value, RestError> {
        let what = format!(
            "{} {method} {}",
            self.flavor,
            path.split('?').next().unwrap_or(path)
        );
        let fail = |text: String| RestError {
            what: what.clone(),
            status: None,
            text,
            retry_after: None,
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| fail(super::http::without_url(&e)))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers(), self.flavor);
        // Linode marks planned maintenance so (linodego's retry condition);
        // said, as it is not an outage to report to anyone and may last.
        let maintenance = status == StatusCode::SERVICE_UNAVAILABLE
            && resp.headers().contains_key("x-maintenance-mode");
        // Read while it streams, up to the cap: a provider answer (a page of
        // records, a load balancer) is KiB; past the cap it is refused, not
        // parsed from a cut (which would be a JSON error or, worse, a valid
        // prefix).
        let capped = natsmesh_broker::monitor::read_capped(resp, super::http::MAX_BODY)
            .await
            .map_err(|e| fail(super::http::without_url(&e)))?;
        if capped.truncated {
            return Err(RestError {
                what,
                status: Some(status.as_u16()),
                text: format!(
                    "the answer is larger than {} bytes; natsmesh reads no more",
                    super::http::MAX_BODY
                ),
                retry_after: None,
            });
        }
        let bytes = capped.bytes;
        if status == expected {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("{status} with a body that is not JSON: {e}")));
        }
        let mut text = error_text(self.flavor, &bytes);
        if maintenance {
            text = format!("the API is in planned maintenance (X-Maintenance-Mode): {text}");
        }
        Err(RestError {
            what,
            status: Some(status.as_u16()),
            text,
            retry_after: retry_after.filter(|_| matches!(status.as_u16(), 429 | 503)),
        })
    }
}

/// The provider's error message, from its documented error body.
pub fn error_text(flavor: Flavor, body: &[u8]) -> String {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            return text.chars().take(200).collect::<String>().trim().to_owned();
        }
    };
    let list = |errs: &Value, one: &dyn Fn(&Value) -> String| {
        errs.as_array()
            .map(|e| e.iter().map(one).collect::<Vec<_>>().join("; "))
    };
    let text = match flavor {
        // {"id":"unauthorized","message":"Unable to authenticate you."}
        Flavor::DigitalOcean => v["message"].as_str().map(str::to_owned),
        // {"errors":[{"reason":"…","field":"…"}]}
        Flavor::Linode => list(&v["errors"], &|e| match e["field"].as_str() {
            Some(f) => format!("{f}: {}", e["reason"].as_str().unwrap_or("")),
            None => e["reason"].as_str().unwrap_or("").to_owned(),
        }),
        // {"success":false,"errors":[{"code":81058,"message":"…"}]}
        Flavor::Cloudflare => list(&v["errors"], &|e| {
            format!(
                "{} (code {})",
                e["message"].as_str().unwrap_or(""),
                e["code"]
            )
        }),
    };
    text.unwrap_or_else(|| v.to_string().chars().take(200).collect())
}

/// How long the provider asked to wait: `Retry-After` (seconds or an HTTP
/// date), else the reset time of an exhausted window (DigitalOcean
/// `ratelimit-reset`, Linode `X-RateLimit-Reset`: Unix seconds;
/// Cloudflare `Ratelimit: …;t=<seconds>`).
pub fn retry_after(headers: &HeaderMap, flavor: Flavor) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate(v) {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
    }
    match flavor {
        Flavor::DigitalOcean | Flavor::Linode => {
            let (remaining, reset) = match flavor {
                Flavor::DigitalOcean => (get("ratelimit-remaining"), get("ratelimit-reset")),
                _ => (get("x-ratelimit-remaining"), get("x-ratelimit-reset")),
            };
            if remaining? != "0" {
                return None;
            }
            let reset: u64 = reset?.parse().ok()?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(Duration::from_secs(reset.saturating_sub(now)))
        }
        Flavor::Cloudflare => {
            let v = get("ratelimit")?;
            let t = v.split(';').find_map(|p| p.trim().strip_prefix("t="))?;
            t.parse().ok().map(Duration::from_secs)
        }
    }
}

fn httpdate(s: &str) -> Result<SystemTime, ()> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(s, &fmt).map_err(|_| ())?;
    let secs = t.assume_utc().unix_timestamp();
    u64::try_from(secs)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .map_err(|_| ())
}

/// Why no HTTPS client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the protocol versions.
    #[error("TLS set-up: {0}")]
    Tls(#[source] rustls::Error),
    /// reqwest could not build the client.
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// HTTPS with the system's trust store (Debian's ca-certificates).
fn https_client() -> Result<Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .user_agent(concat!("natsmeshd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Http)
}

pub use crate::config::settings::provider::token_safe_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_api_answer_is_refused_at_the_cap_while_it_streams() {
        let (addr, server) = natsmesh_harness::flood::serve(300 << 20).await;
        let rest = Rest::new(
            Flavor::DigitalOcean,
            &format!("http://{addr}"),
            Purpose::LoadBalancer,
        )
        .expect("client");
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            rest.call(
                "t",
                Method::GET,
                "/v2/load_balancers",
                None,
                &[],
                StatusCode::OK,
            ),
        )
        .await
        .expect("answers in time")
        .expect_err("refused");
        assert!(err.text.contains("larger than 1048576 bytes"), "{err}");
        drop(rest);
        let sent = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops")
            .expect("server task");
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
    }

    #[tokio::test]
    async fn linodes_planned_maintenance_is_named() {
        use natsmesh_harness::fakes::lb::Model;
        use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
        let nb = LinodeNb::tcp(7, "eu-central", 8, 4222);
        let fake = FakeLinodeLb::start("tok", nb, Model::default());
        fake.state.lock().expect("state").maintenance = true;
        let rest =
            Rest::new(Flavor::Linode, &fake.api_url(), Purpose::LoadBalancer).expect("client");
        let get = || {
            rest.call(
                "tok",
                Method::GET,
                "/nodebalancers/7",
                None,
                &[],
                StatusCode::OK,
            )
        };
        let err = get().await.expect_err("in maintenance");
        assert_eq!(err.status, Some(503));
        assert_eq!(
            err.text,
            "the API is in planned maintenance (X-Maintenance-Mode): Currently in maintenance mode."
        );
        // A 503 without the marker is an outage, told as the provider words it.
        fake.state.lock().expect("state").maintenance = false;
        fake.state.lock().expect("state").fault =
            natsmesh_harness::fakes::Fault::StatusTimes(503, 1);
        let err = get().await.expect_err("unavailable");
        assert_eq!(err.status, Some(503));
        assert!(!err.text.contains("maintenance"), "{err}");
        assert!(get().await.is_ok());
    }

    #[test]
    fn retry_hints_from_each_providers_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "29".parse().expect("header"));
        assert_eq!(
            retry_after(&h, Flavor::DigitalOcean),
            Some(Duration::from_secs(29))
        );
        let mut h = HeaderMap::new();
        h.insert("Ratelimit", "\"default\";r=0;t=42".parse().expect("header"));
        assert_eq!(
            retry_after(&h, Flavor::Cloudflare),
            Some(Duration::from_secs(42))
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut h = HeaderMap::new();
        h.insert("X-RateLimit-Remaining", "0".parse().expect("header"));
        h.insert(
            "X-RateLimit-Reset",
            (now + 20).to_string().parse().expect("header"),
        );
        let wait = retry_after(&h, Flavor::Linode).unwrap_or_default();
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        h.insert("X-RateLimit-Remaining", "5".parse().expect("header"));
        assert_eq!(retry_after(&h, Flavor::Linode), None);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h, Flavor::Cloudflare), Some(Duration::ZERO));
    }

    #[test]
    fn error_bodies_in_each_providers_shape() {
        let t = error_text(Flavor::DigitalOcean, br#"{"id":"forbidden","message":"Load Balancer can't be updated while it processes previous actions"}"#);
        assert!(t.starts_with("Load Balancer can't"));
        let t = error_text(
            Flavor::Linode,
            br#"{"errors":[{"field":"label","reason":"bad"},{"reason":"x"}]}"#,
        );
        assert_eq!(t, "label: bad; x");
        let t = error_text(Flavor::Cloudflare, br#"{"success":false,"errors":[{"code":81058,"message":"An identical record already exists."}]}"#);
        assert_eq!(t, "An identical record already exists. (code 81058)");
        assert_eq!(
            error_text(Flavor::Linode, b"<html>busy</html>"),
            "<html>busy</html>"
        );
    }

    #[test]
    fn tokens_never_travel_in_clear_text_off_the_machine() {
        assert!(token_safe_url("https://api.digitalocean.com").is_ok());
        assert!(token_safe_url("http://127.0.0.1:8080").is_ok());
        assert!(token_safe_url("http://[::1]:8080").is_ok());
        assert!(token_safe_url("http://api.linode.com").is_err());
        assert!(token_safe_url("ftp://x").is_err());
        assert!(token_safe_url("not a url").is_err());
    }
}
