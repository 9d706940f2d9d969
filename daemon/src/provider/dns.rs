//! What a DNS zone is to natsmesh, whatever serves it (the records as
//! listed, why a call failed), and the client the clouds' HTTP DNS APIs
//! share: DigitalOcean Domains (`digitalocean::dns`), Linode Domains
//! (`linode::dns`) and Cloudflare DNS (`cloudflare::dns`). Each lists,
//! creates and deletes single records by id, following the provider's
//! published contract (paths, bodies, status codes, error bodies,
//! pagination, rate-limit headers).
//!
//! Names differ per provider: DigitalOcean and Linode take names relative
//! to the zone (`@` or empty for the apex), Cloudflare takes and returns
//! absolute names. Linode keeps an SRV record's owner in `service` and
//! `protocol` at the zone apex, so with Linode a region's records live in
//! a zone of their own (`<region>.<domain>`), as Linode's SRV guide says.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::config::settings::publish::Provider;
use crate::config::settings::record::{Data, Record, absolute, normal};
use crate::provider::rest::{Flavor, Purpose, Rest};
use crate::secret::Secret;

/// A provider call that did not work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct PublishError {
    /// The call (`POST /v2/domains/example.net/records`, `update of x`).
    pub what: String,
    /// Why, in the provider's own words where it gave some.
    pub why: String,
    /// When the provider asked to be called again (rate limits).
    pub retry_after: Option<Duration>,
}

impl From<crate::secret::SecretError> for PublishError {
    fn from(e: crate::secret::SecretError) -> Self {
        Self::new(e.what, e.why)
    }
}

impl PublishError {
    /// An error without a retry hint.
    pub fn new(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            why: why.into(),
            retry_after: None,
        }
    }
}

/// A record as the provider lists it, with the provider's id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// The record.
    pub record: Record,
    /// The provider's id (empty for RFC 2136, which deletes by content).
    pub id: String,
}

/// Pages followed at most in one listing (a zone with more records than
/// this many pages is not one natsmesh's names live in alone).
pub(crate) const MAX_PAGES: usize = 50;

// The API-facing half of the provider (the data half lives with the
// settings, in config).
impl Provider {
    /// Its error bodies and rate-limit headers.
    pub(crate) fn flavor(self) -> Flavor {
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

/// A client of one provider's API for one zone: what the clouds' DNS
/// APIs share (the token, the zone, its id once looked up, and calls that
/// explain a refusal by the token's scopes).
pub struct Api {
    pub(crate) provider: Provider,
    pub(crate) rest: Rest,
    token_file: PathBuf,
    pub(crate) zone: String,
    /// Linode's domain id or Cloudflare's zone id, once looked up.
    pub(crate) zone_id: Option<String>,
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

    /// Reads the token, at the start of each pass (each listing), so a
    /// rotated credential takes effect.
    pub(crate) fn read_token(&mut self) -> Result<(), PublishError> {
        self.token = Some(Secret::read(
            &self.token_file,
            &format!("{} API token", self.provider),
        )?);
        Ok(())
    }

    /// Creates one record: `POST path` with `body`.
    pub(crate) async fn create(
        &self,
        path: &str,
        body: &Value,
        expected: StatusCode,
    ) -> Result<(), PublishError> {
        self.call(Method::POST, path, Some(body), &[], expected)
            .await
            .map(|_| ())
    }

    /// Deletes one record: `DELETE path`; a 404 means done (deleted by
    /// someone else since the listing).
    pub(crate) async fn delete(
        &self,
        path: &str,
        expected: StatusCode,
    ) -> Result<(), PublishError> {
        match self.call(Method::DELETE, path, None, &[], expected).await {
            Err(e) if e.why.starts_with("404") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// One request; the provider's own error text on failure, with a hint
    /// at the token's scopes when it was refused.
    pub(crate) async fn call(
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
}

/// One listed record, if it is of a type natsmesh publishes: `name` is
/// its absolute owner, `value` its address, text or SRV target, `srv`
/// where its SRV numbers are (the record itself, or Cloudflare's `data`).
pub(crate) fn present(
    r: &Value,
    name: String,
    value: &str,
    srv: &Value,
    zone: &str,
) -> Option<Present> {
    let id = match &r["id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None, // DigitalOcean lists the SOA with a null id
    };
    let data = match r["type"].as_str()? {
        "A" => Data::A {
            address: value.parse().ok()?,
        },
        "AAAA" => Data::Aaaa {
            address: value.parse().ok()?,
        },
        "SRV" => {
            let num = |k: &str| srv[k].as_u64().and_then(|n| u16::try_from(n).ok());
            Data::Srv {
                priority: num("priority")?,
                weight: num("weight")?,
                port: num("port")?,
                target: target_name(value, zone),
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

/// A record's owner as DigitalOcean and Cloudflare list it (relative,
/// `@`, or absolute).
pub(crate) fn listed_name(r: &Value, zone: &str) -> String {
    absolute(r["name"].as_str().unwrap_or(""), zone)
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

pub(crate) fn in_zone(r: &Record, zone: &str) -> Result<String, PublishError> {
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
}
