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

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

use super::record::{absolute, normal, relative};
use super::secret::Secret;
use super::{Data, Present, PublishError, Record};
pub use crate::config::settings::publish::Provider;
use crate::provider::rest::{Flavor, Purpose, Rest};

/// Pages followed at most in one listing (a zone with more records than
/// this many pages is not one natsmesh's names live in alone).
const MAX_PAGES: usize = 50;

// The API-facing half of the provider (the data half lives with the
// settings, in config).
impl Provider {
    /// Its error bodies and rate-limit headers.
    fn flavor(self) -> Flavor {
        match self {
            Self::DigitalOcean => Flavor::DigitalOcean,
            Self::Linode => Flavor::Linode,
            Self::Cloudflare => Flavor::Cloudflare,
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

    /// The scope one call needs, where the provider has one per operation
    /// (a token refused 403 lacks it).
    fn scope_for(self, method: &Method) -> Option<&'static str> {
        match self {
            Self::DigitalOcean => Some(match *method {
                Method::GET => "domain:read",
                Method::POST => "domain:create",
                Method::DELETE => "domain:delete",
                _ => "domain:update",
            }),
            Self::Linode => Some(if *method == Method::GET {
                "domains:read_only"
            } else {
                "domains:read_write"
            }),
            Self::Cloudflare => None,
        }
    }
}

/// A client of one provider's API for one zone.
pub struct Api {
    provider: Provider,
    rest: Rest,
    token_file: PathBuf,
    zone: String,
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
        let rest = Rest::new(provider.flavor(), base, Purpose::DnsPublish)
            .map_err(|e| PublishError::new(format!("{provider} API client"), e.to_string()))?;
        Ok(Self {
            provider,
            rest,
            token_file,
            zone: normal(zone),
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

    /// One request; the provider's own error text on failure, with a hint
    /// at the token's scopes when it was refused.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        expected: StatusCode,
    ) -> Result<Value, PublishError> {
        let token = self.token.as_ref().ok_or_else(|| {
            PublishError::new(format!("{} {path}", self.provider), "no token read")
        })?;
        let scope = self.provider.scope_for(&method);
        self.rest
            .call(token.expose(), method, path, body, headers, expected)
            .await
            .map_err(|e| {
                let mut why = match e.status {
                    Some(s) => format!("{s} {}", e.text),
                    None => e.text,
                };
                match (e.status, scope) {
                    // Authenticated, not allowed this: the scope it lacks.
                    (Some(403), Some(scope)) if scope == self.provider.scopes() => {
                        why.push_str(&format!(" (the token lacks the {scope} scope for this)"));
                    }
                    (Some(403), Some(scope)) => why.push_str(&format!(
                        " (the token lacks the {scope} scope for this; it needs {})",
                        self.provider.scopes()
                    )),
                    (Some(401 | 403), _) => {
                        why.push_str(&format!(" (the token needs {})", self.provider.scopes()));
                    }
                    _ => {}
                }
                PublishError {
                    what: e.what,
                    why,
                    retry_after: e.retry_after,
                }
            })
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
                    Some(next) => {
                        path = next
                            .strip_prefix(self.rest.base())
                            .unwrap_or(next)
                            .to_owned()
                    }
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
            // Providers list text with or without its quotes.
            "TXT" => Data::Txt {
                text: value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
                    .to_owned(),
            },
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
        Data::Txt { text } => json!({ "type": "TXT", "name": name, "data": text, "ttl": ttl }),
    })
}

/// `POST /domains/{id}/records`: relative names and `target` for
/// addresses; `service` and `protocol` for SRV, at the zone apex.
fn linode_body(r: &Record, zone: &str, ttl: u32) -> Result<Value, PublishError> {
    Ok(match &r.data {
        Data::A { .. } | Data::Aaaa { .. } => {
            let name = in_zone(r, zone)?;
            // The apex by its FQDN: the spec's `name` is "the hostname or
            // FQDN" with minLength 1, so "" is not a documented name.
            let name = if name == "@" { normal(zone) } else { name };
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
        Data::Txt { text } => {
            let name = in_zone(r, zone)?;
            let name = if name == "@" { normal(zone) } else { name };
            json!({ "type": "TXT", "name": name, "target": text, "ttl_sec": ttl })
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
        // Cloudflare asks for TXT content in quotes.
        Data::Txt { .. } => json!({
            "type": "TXT", "name": r.name, "content": r.content(), "ttl": ttl,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_scope_of_its_operation() {
        let d = Provider::DigitalOcean;
        assert_eq!(d.scope_for(&Method::GET), Some("domain:read"));
        assert_eq!(d.scope_for(&Method::POST), Some("domain:create"));
        assert_eq!(d.scope_for(&Method::DELETE), Some("domain:delete"));
        let l = Provider::Linode;
        assert_eq!(l.scope_for(&Method::GET), Some("domains:read_only"));
        assert_eq!(l.scope_for(&Method::POST), Some("domains:read_write"));
        assert_eq!(l.scope_for(&Method::DELETE), Some("domains:read_write"));
        assert_eq!(Provider::Cloudflare.scope_for(&Method::POST), None);
    }

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
    fn linode_names_the_apex_by_its_fqdn() {
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let apex = Record::address("fra1.example.net", ip);
        let body = linode_body(&apex, "fra1.example.net.", 300).expect("body");
        assert_eq!(body["name"], "fra1.example.net");
        let below = Record::address("n1.fra1.example.net", ip);
        let body = linode_body(&below, "fra1.example.net", 300).expect("body");
        assert_eq!(body["name"], "n1");
    }
}
