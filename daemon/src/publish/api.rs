//! The HTTP DNS APIs: DigitalOcean Domains, Linode Domains and Cloudflare
//! DNS. Each lists, creates and deletes single records by id, following
//! the provider's published contract (paths, bodies, status codes, error
//! bodies, pagination, rate-limit headers).
//!
//! Names differ per provider: DigitalOcean and Linode take names relative
//! to the zone (`@` or empty for the apex), Cloudflare takes and returns
//! absolute names. Linode keeps an SRV record's owner in `service` and
//! `protocol` at the zone apex, so with Linode a region's records live in
//! a zone of their own (`<region>.<domain>`), as Linode's SRV guide says.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use super::record::{absolute, normal, relative};
use super::secret::Secret;
use super::{Data, Present, PublishError, Record};

/// Per request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pages followed at most in one listing (a zone with more records than
/// this many pages is not one natsmesh's names live in alone).
const MAX_PAGES: usize = 50;

/// Which API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `https://api.digitalocean.com/v2/domains/…`
    DigitalOcean,
    /// `https://api.linode.com/v4/domains/…`
    Linode,
    /// `https://api.cloudflare.com/client/v4/zones/…`
    Cloudflare,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DigitalOcean => "digitalocean",
            Self::Linode => "linode",
            Self::Cloudflare => "cloudflare",
        })
    }
}

/// Linode's record TTLs; any other value is rounded by the API.
const LINODE_TTLS: [u32; 12] = [
    300, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800, 1209600, 2419200,
];

impl Provider {
    /// The provider's API base.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::DigitalOcean => "https://api.digitalocean.com",
            Self::Linode => "https://api.linode.com/v4",
            Self::Cloudflare => "https://api.cloudflare.com/client/v4",
        }
    }

    /// The TTL the provider will actually keep for `requested` seconds:
    /// DigitalOcean's minimum is 30, Cloudflare's 60 (1 would mean
    /// "automatic"), Linode's the next value of its fixed list.
    pub fn ttl(self, requested: u32) -> u32 {
        match self {
            Self::DigitalOcean => requested.max(30),
            Self::Cloudflare => requested.clamp(60, 86_400),
            Self::Linode => LINODE_TTLS
                .iter()
                .copied()
                .find(|t| *t >= requested)
                .unwrap_or(2_419_200),
        }
    }

    /// What the token needs, for error messages and the README.
    pub fn scopes(self) -> &'static str {
        match self {
            Self::DigitalOcean => "domain:read, domain:create, domain:delete",
            Self::Linode => "domains:read_write",
            Self::Cloudflare => "Zone → DNS → Edit and Zone → Zone → Read on the zone",
        }
    }
}

/// A client of one provider's API for one zone.
pub struct Api {
    provider: Provider,
    base: String,
    token_file: PathBuf,
    zone: String,
    http: Client,
    /// Linode's domain id or Cloudflare's zone id, once looked up.
    zone_id: Option<String>,
    token: Option<Secret>,
}

impl Api {
    /// Nothing is read or contacted until the first call.
    pub fn new(
        provider: Provider,
        base: &str,
        token_file: PathBuf,
        zone: &str,
    ) -> Result<Self, PublishError> {
        Ok(Self {
            provider,
            base: base.trim_end_matches('/').to_owned(),
            token_file,
            zone: normal(zone),
            http: https_client()?,
            zone_id: None,
            token: None,
        })
    }

    /// The records of natsmesh's types at `names`. The token is read here,
    /// at the start of each pass, so a rotated credential takes effect.
    pub async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        self.token = Some(Secret::read(
            &self.token_file,
            &format!("{} API token", self.provider),
        )?);
        match self.provider {
            Provider::DigitalOcean => self.do_list(names).await,
            Provider::Linode => self.linode_list(names).await,
            Provider::Cloudflare => self.cf_list(names).await,
        }
    }

    /// Creates one record.
    pub async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        let (path, body) = match self.provider {
            Provider::DigitalOcean => (
                format!("/v2/domains/{}/records", self.zone),
                do_body(record, &self.zone, ttl)?,
            ),
            Provider::Linode => (
                format!("/domains/{}/records", self.linode_domain().await?),
                linode_body(record, &self.zone, ttl)?,
            ),
            Provider::Cloudflare => (
                format!("/zones/{}/dns_records", self.cf_zone().await?),
                cf_body(record, ttl),
            ),
        };
        let expected = match self.provider {
            Provider::DigitalOcean => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        self.call(Method::POST, &path, Some(&body), &[], expected)
            .await?;
        Ok(())
    }

    /// Deletes one record by the id the listing gave.
    pub async fn remove(&mut self, present: &Present) -> Result<(), PublishError> {
        let (path, expected) = match self.provider {
            Provider::DigitalOcean => (
                format!("/v2/domains/{}/records/{}", self.zone, present.id),
                StatusCode::NO_CONTENT,
            ),
            Provider::Linode => (
                format!(
                    "/domains/{}/records/{}",
                    self.linode_domain().await?,
                    present.id
                ),
                StatusCode::OK,
            ),
            Provider::Cloudflare => (
                format!(
                    "/zones/{}/dns_records/{}",
                    self.cf_zone().await?,
                    present.id
                ),
                StatusCode::OK,
            ),
        };
        match self.call(Method::DELETE, &path, None, &[], expected).await {
            // Already gone (deleted by someone else since the listing).
            Err(e) if e.why.starts_with("404") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// One request; the parsed JSON body on `expected`, the provider's
    /// own error text otherwise, with its retry hint on 429 and 503.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        expected: StatusCode,
    ) -> Result<Value, PublishError> {
        let what = format!("{} {method} {path}", self.provider);
        let token = self
            .token
            .as_ref()
            .ok_or_else(|| PublishError::new(&what, "no token read"))?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token.expose())
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
            .map_err(|e| PublishError::new(&what, crate::provider::http::without_url(&e)))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers(), self.provider);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PublishError::new(&what, crate::provider::http::without_url(&e)))?;
        if status == expected {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                PublishError::new(&what, format!("{status} with a body that is not JSON: {e}"))
            });
        }
        let mut why = format!("{} {}", status.as_u16(), self.error_text(&bytes));
        if matches!(status.as_u16(), 401 | 403) {
            why.push_str(&format!(" (the token needs {})", self.provider.scopes()));
        }
        Err(PublishError {
            what,
            why,
            retry_after: retry_after.filter(|_| matches!(status.as_u16(), 429 | 503)),
        })
    }

    /// The provider's error message, from its documented error body.
    fn error_text(&self, body: &[u8]) -> String {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                return text.chars().take(200).collect::<String>().trim().to_owned();
            }
        };
        let text = match self.provider {
            // {"id":"unauthorized","message":"Unable to authenticate you."}
            Provider::DigitalOcean => v["message"].as_str().map(str::to_owned),
            // {"errors":[{"reason":"…","field":"…"}]}
            Provider::Linode => v["errors"].as_array().map(|errs| {
                errs.iter()
                    .map(|e| match e["field"].as_str() {
                        Some(f) => format!("{f}: {}", e["reason"].as_str().unwrap_or("")),
                        None => e["reason"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            // {"success":false,"errors":[{"code":81058,"message":"…"}]}
            Provider::Cloudflare => v["errors"].as_array().map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{} (code {})",
                            e["message"].as_str().unwrap_or(""),
                            e["code"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        };
        text.unwrap_or_else(|| v.to_string().chars().take(200).collect())
    }

    // DigitalOcean ---------------------------------------------------------

    async fn do_list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let mut out = Vec::new();
        for name in names {
            // `name` filters by the fully qualified name; 200 is the page maximum.
            let mut path = format!("/v2/domains/{}/records?name={name}&per_page=200", self.zone);
            for _ in 0..MAX_PAGES {
                let v = self
                    .call(Method::GET, &path, None, &[], StatusCode::OK)
                    .await?;
                let records = v["domain_records"].as_array().ok_or_else(|| {
                    PublishError::new(
                        format!("digitalocean GET {path}"),
                        "no domain_records in the answer",
                    )
                })?;
                for r in records {
                    if let Some(p) = self.parse(r, "name", "data") {
                        out.push(p);
                    }
                }
                match v["links"]["pages"]["next"].as_str() {
                    Some(next) => path = next.strip_prefix(&self.base).unwrap_or(next).to_owned(),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    // Linode ---------------------------------------------------------------

    /// The id of the Linode Domain named like the zone.
    async fn linode_domain(&mut self) -> Result<String, PublishError> {
        if let Some(id) = &self.zone_id {
            return Ok(id.clone());
        }
        let filter = json!({ "domain": self.zone }).to_string();
        let v = self
            .call(
                Method::GET,
                "/domains?page_size=25",
                None,
                &[("X-Filter", filter)],
                StatusCode::OK,
            )
            .await?;
        let id = v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["domain"].as_str().map(normal).as_deref() == Some(self.zone.as_str()))
            .and_then(|d| d["id"].as_u64())
            .ok_or_else(|| {
                PublishError::new(
                    "linode GET /domains",
                    format!(
                        "no Domain {:?} in this account (create it, one per region)",
                        self.zone
                    ),
                )
            })?;
        self.zone_id = Some(id.to_string());
        Ok(id.to_string())
    }

    async fn linode_list(
        &mut self,
        names: &BTreeSet<String>,
    ) -> Result<Vec<Present>, PublishError> {
        let domain = self.linode_domain().await?;
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("/domains/{domain}/records?page={page}&page_size=500");
            let v = self
                .call(Method::GET, &path, None, &[], StatusCode::OK)
                .await?;
            let data = v["data"].as_array().ok_or_else(|| {
                PublishError::new(format!("linode GET {path}"), "no data in the answer")
            })?;
            for r in data {
                if let Some(p) = self.parse(r, "name", "target")
                    && names.contains(&p.record.name)
                {
                    out.push(p);
                }
            }
            if v["pages"].as_u64().unwrap_or(1) <= page as u64 {
                break;
            }
        }
        Ok(out)
    }

    // Cloudflare -----------------------------------------------------------

    /// The zone's id (needs Zone → Zone → Read).
    async fn cf_zone(&mut self) -> Result<String, PublishError> {
        if let Some(id) = &self.zone_id {
            return Ok(id.clone());
        }
        let path = format!("/zones?name={}", self.zone);
        let v = self
            .call(Method::GET, &path, None, &[], StatusCode::OK)
            .await?;
        let id = v["result"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|z| z["id"].as_str())
            .ok_or_else(|| {
                PublishError::new(
                    format!("cloudflare GET {path}"),
                    format!(
                        "no zone {:?} visible to this token ({})",
                        self.zone,
                        Provider::Cloudflare.scopes()
                    ),
                )
            })?
            .to_owned();
        self.zone_id = Some(id.clone());
        Ok(id)
    }

    async fn cf_list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let zone = self.cf_zone().await?;
        let mut out = Vec::new();
        for name in names {
            for page in 1..=MAX_PAGES {
                let path =
                    format!("/zones/{zone}/dns_records?name={name}&page={page}&per_page=100");
                let v = self
                    .call(Method::GET, &path, None, &[], StatusCode::OK)
                    .await?;
                let result = v["result"].as_array().ok_or_else(|| {
                    PublishError::new(format!("cloudflare GET {path}"), "no result in the answer")
                })?;
                for r in result {
                    if let Some(p) = self.parse(r, "name", "content") {
                        out.push(p);
                    }
                }
                let pages = v["result_info"]["total_pages"].as_u64().unwrap_or(1);
                if result.is_empty() || pages <= page as u64 {
                    break;
                }
            }
        }
        Ok(out)
    }

    // Shared ---------------------------------------------------------------

    /// One listed record, if it is of a type natsmesh publishes.
    fn parse(&self, r: &Value, name_key: &str, value_key: &str) -> Option<Present> {
        let id = match &r["id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return None, // DigitalOcean lists the SOA with a null id
        };
        let kind = r["type"].as_str()?;
        let raw_name = r[name_key].as_str().unwrap_or("");
        let value = r[value_key].as_str().unwrap_or("");
        let name = match (self.provider, kind) {
            // Linode keeps an SRV owner in service and protocol at the apex.
            (Provider::Linode, "SRV") => format!(
                "_{}._{}.{}",
                r["service"].as_str()?.trim_start_matches('_'),
                r["protocol"].as_str()?.trim_start_matches('_'),
                self.zone
            ),
            _ => absolute(raw_name, &self.zone),
        };
        let data = match kind {
            "A" => Data::A {
                address: value.parse().ok()?,
            },
            "AAAA" => Data::Aaaa {
                address: value.parse().ok()?,
            },
            "SRV" => {
                let num = |k: &str, v: &Value| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
                let (src, target) = match self.provider {
                    Provider::Cloudflare => (&r["data"], r["data"]["target"].as_str()?),
                    _ => (r, value),
                };
                Data::Srv {
                    priority: num("priority", src)?,
                    weight: num("weight", src)?,
                    port: num("port", src)?,
                    target: target_name(target, &self.zone),
                }
            }
            _ => return None,
        };
        Some(Present {
            record: Record { name, data },
            id,
        })
    }
}

/// An SRV target as listed: absolute with or without the final dot, `@`
/// for the apex, or (Linode, DigitalOcean) relative to the zone.
fn target_name(target: &str, zone: &str) -> String {
    if target.ends_with('.') {
        normal(target)
    } else {
        absolute(target, zone)
    }
}

/// `POST /v2/domains/{zone}/records`: relative names, `data`; every SRV
/// field the spec requires (flags and tag as null).
fn do_body(r: &Record, zone: &str, ttl: u32) -> Result<Value, PublishError> {
    let name = in_zone(r, zone)?;
    Ok(match &r.data {
        Data::A { .. } | Data::Aaaa { .. } => {
            json!({ "type": r.kind(), "name": name, "data": r.content(), "ttl": ttl })
        }
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => json!({
            "type": "SRV", "name": name, "data": format!("{target}."),
            "priority": priority, "weight": weight, "port": port, "ttl": ttl,
            "flags": null, "tag": null,
        }),
    })
}

/// `POST /domains/{id}/records`: relative names and `target` for
/// addresses; `service` and `protocol` for SRV, at the zone apex.
fn linode_body(r: &Record, zone: &str, ttl: u32) -> Result<Value, PublishError> {
    Ok(match &r.data {
        Data::A { .. } | Data::Aaaa { .. } => {
            let name = in_zone(r, zone)?;
            let name = if name == "@" { String::new() } else { name };
            json!({ "type": r.kind(), "name": name, "target": r.content(), "ttl_sec": ttl })
        }
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            let (service, protocol) = linode_srv_owner(&r.name, zone).ok_or_else(|| {
                PublishError::new(
                    format!("linode SRV {}", r.name),
                    format!("Linode keeps SRV records at a Domain's apex: make {zone:?} end where the record's _service._protocol begins"),
                )
            })?;
            json!({
                "type": "SRV", "service": service, "protocol": protocol, "target": target,
                "priority": priority, "weight": weight, "port": port, "ttl_sec": ttl,
            })
        }
    })
}

/// `_service._protocol.<zone>` → (`service`, `protocol`), underscores off.
pub fn linode_srv_owner(name: &str, zone: &str) -> Option<(String, String)> {
    let rel = relative(name, zone)?;
    let (service, protocol) = rel.split_once('.')?;
    let service = service.strip_prefix('_')?;
    let protocol = protocol.strip_prefix('_')?;
    (!protocol.contains('.') && !service.is_empty() && !protocol.is_empty())
        .then(|| (service.to_owned(), protocol.to_owned()))
}

/// `POST /zones/{id}/dns_records`: absolute names; SRV data in `data`.
fn cf_body(r: &Record, ttl: u32) -> Value {
    match &r.data {
        Data::A { .. } | Data::Aaaa { .. } => json!({
            "type": r.kind(), "name": r.name, "content": r.content(), "ttl": ttl, "proxied": false,
        }),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => json!({
            "type": "SRV", "name": r.name, "ttl": ttl,
            "data": { "priority": priority, "weight": weight, "port": port, "target": target },
        }),
    }
}

fn in_zone(r: &Record, zone: &str) -> Result<String, PublishError> {
    r.relative_to(zone).ok_or_else(|| {
        PublishError::new(
            format!("record {}", r.name),
            format!("outside the zone {zone:?}"),
        )
    })
}

/// How long the provider asked to wait: `Retry-After` (seconds or an HTTP
/// date), else the reset time of an exhausted window (DigitalOcean
/// `ratelimit-reset`, Linode `X-RateLimit-Reset`: Unix seconds;
/// Cloudflare `Ratelimit: …;t=<seconds>`).
pub fn retry_after(headers: &HeaderMap, provider: Provider) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate(v) {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
    }
    match provider {
        Provider::DigitalOcean | Provider::Linode => {
            let (remaining, reset) = match provider {
                Provider::DigitalOcean => (get("ratelimit-remaining"), get("ratelimit-reset")),
                _ => (get("x-ratelimit-remaining"), get("x-ratelimit-reset")),
            };
            if remaining? != "0" {
                return None;
            }
            let reset: u64 = reset?.parse().ok()?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(Duration::from_secs(reset.saturating_sub(now)))
        }
        Provider::Cloudflare => {
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

/// HTTPS with the system's trust store (Debian's ca-certificates); plain
/// HTTP only where validation allowed it (loopback).
fn https_client() -> Result<Client, PublishError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PublishError::new("TLS set-up", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .user_agent(concat!("natsmeshd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PublishError::new("HTTP client", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_follow_each_providers_rules() {
        assert_eq!(Provider::DigitalOcean.ttl(5), 30);
        assert_eq!(Provider::DigitalOcean.ttl(45), 45);
        assert_eq!(Provider::Cloudflare.ttl(30), 60);
        assert_eq!(Provider::Linode.ttl(30), 300);
        assert_eq!(Provider::Linode.ttl(301), 3600);
        assert_eq!(Provider::Linode.ttl(u32::MAX), 2_419_200);
    }

    #[test]
    fn linode_srv_owners_sit_at_the_apex() {
        assert_eq!(
            linode_srv_owner("_nats-route._tcp.fra1.example.net", "fra1.example.net"),
            Some(("nats-route".into(), "tcp".into()))
        );
        assert_eq!(
            linode_srv_owner("_nats-route._tcp.fra1.example.net", "example.net"),
            None
        );
    }

    #[test]
    fn retry_hints_from_each_providers_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "29".parse().expect("header"));
        assert_eq!(
            retry_after(&h, Provider::DigitalOcean),
            Some(Duration::from_secs(29))
        );
        let mut h = HeaderMap::new();
        h.insert("Ratelimit", "\"default\";r=0;t=42".parse().expect("header"));
        assert_eq!(
            retry_after(&h, Provider::Cloudflare),
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
        let wait = retry_after(&h, Provider::Linode).unwrap_or_default();
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        h.insert("X-RateLimit-Remaining", "5".parse().expect("header"));
        assert_eq!(retry_after(&h, Provider::Linode), None);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h, Provider::Cloudflare), Some(Duration::ZERO));
    }
}
