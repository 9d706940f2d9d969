//! DigitalOcean: the droplet metadata service.
//!
//! `/metadata/v1.json` (a JSON object, as DigitalOcean's own go-metadata
//! reads it) first; when that is missing or not an object, the per-path
//! text endpoints. No authentication. Every field is checked on its own, and
//! a bad one is named.

use std::net::{Ipv4Addr, Ipv6Addr};

use reqwest::{Client, Method};

use crate::config::schema::Provider;
use crate::provider::http::{self, Answer};
use crate::provider::{Identity, Metadata, MetadataError, text_field};

/// The droplet metadata client.
#[derive(Debug, Clone)]
pub struct DoMetadata {
    base: String,
    http: Client,
}

impl DoMetadata {
    /// A client for the service at `base` (`http://169.254.169.254`).
    pub fn new(base: &str, http: Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    async fn get(&self, path: &str) -> Result<Answer, MetadataError> {
        let url = format!("{}{path}", self.base);
        http::send(&self.http, Method::GET, &url, |r| r).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn read_json(&self) -> Result<Option<Identity>, MetadataError> {
        let endpoint = self.url("/metadata/v1.json");
        let answer = self.get("/metadata/v1.json").await?;
        if answer.status == 404 {
            return Ok(None);
        }
        let body = answer.ok(&endpoint)?;
        // Not a JSON object (the published spec once said "array", and an
        // empty body says nothing): the text endpoints answer instead.
        let Ok(serde_json::Value::Object(doc)) = serde_json::from_str::<serde_json::Value>(&body)
        else {
            return Ok(None);
        };
        let invalid = |field: &str, reason: String| MetadataError::Invalid {
            endpoint: endpoint.clone(),
            field: field.to_owned(),
            reason,
        };
        let string = |field: &str| -> Result<String, MetadataError> {
            match doc.get(field) {
                Some(serde_json::Value::String(s)) => text_field(&endpoint, field, s),
                Some(other) => Err(invalid(field, format!("{other} is not a string"))),
                None => Err(invalid(field, "missing".into())),
            }
        };
        let instance_id = match doc.get("droplet_id") {
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
                n.to_string()
            }
            Some(other) => {
                return Err(invalid(
                    "droplet_id",
                    format!("{other} is not a droplet id"),
                ));
            }
            None => return Err(invalid("droplet_id", "missing".into())),
        };
        let hostname = string("hostname")?;
        let provider_region = string("region")?;
        let tags = match doc.get("tags") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid("tags", format!("{t} is not a string")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(invalid("tags", format!("{other} is not a list"))),
        };
        // interfaces.<kind>[0].<family>.ip_address, absent when the droplet
        // has no such interface.
        let address = |kind: &str, family: &str| -> Result<Option<String>, MetadataError> {
            let field = format!("interfaces.{kind}[0].{family}.ip_address");
            match doc
                .get("interfaces")
                .and_then(|i| i.get(kind))
                .and_then(|l| l.get(0))
                .and_then(|i| i.get(family))
                .and_then(|a| a.get("ip_address"))
            {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(&field, format!("{other} is not an address"))),
            }
        };
        let parse_v4 = |kind: &str| -> Result<Option<Ipv4Addr>, MetadataError> {
            address(kind, "ipv4")?
                .map(|s| {
                    s.parse().map_err(|_| {
                        invalid(
                            &format!("interfaces.{kind}[0].ipv4.ip_address"),
                            format!("{s:?} is not an IPv4 address"),
                        )
                    })
                })
                .transpose()
        };
        let public_ipv6 = address("public", "ipv6")?
            .map(|s| {
                s.parse::<Ipv6Addr>().map_err(|_| {
                    invalid(
                        "interfaces.public[0].ipv6.ip_address",
                        format!("{s:?} is not an IPv6 address"),
                    )
                })
            })
            .transpose()?;
        Identity {
            provider: Provider::DigitalOcean,
            instance_id,
            hostname,
            provider_region,
            private_ipv4: parse_v4("private")?,
            public_ipv4: parse_v4("public")?,
            public_ipv6,
            tags,
        }
        .checked(
            &endpoint,
            [
                "interfaces.private[0].ipv4.ip_address",
                "interfaces.public[0].ipv4.ip_address",
                "interfaces.public[0].ipv6.ip_address",
            ],
        )
        .map(Some)
    }

    /// A text endpoint; `None` when the droplet has no such thing (404).
    async fn text(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let answer = self.get(path).await?;
        if answer.status == 404 {
            return Ok(None);
        }
        answer
            .ok(&self.url(path))
            .map(|b| Some(b.trim().to_owned()))
    }

    /// A text endpoint every droplet has: a 404 is an error, like any status.
    async fn required(&self, path: &str) -> Result<String, MetadataError> {
        let value = self.get(path).await?.ok(&self.url(path))?.trim().to_owned();
        if value.is_empty() {
            return Err(MetadataError::Invalid {
                endpoint: self.url(path),
                field: path.rsplit('/').next().unwrap_or(path).to_owned(),
                reason: "empty".into(),
            });
        }
        Ok(value)
    }

    /// An address endpoint; `None` when the droplet has none.
    async fn addr<T: std::str::FromStr>(&self, path: &str) -> Result<Option<T>, MetadataError> {
        match self.text(path).await? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| MetadataError::Invalid {
                endpoint: self.url(path),
                field: "address".into(),
                reason: format!("{s:?} is not an IP address of the expected family"),
            }),
        }
    }

    async fn read_paths(&self) -> Result<Identity, MetadataError> {
        let id = self.required("/metadata/v1/id").await?;
        if id.parse::<u64>().ok().filter(|v| *v > 0).is_none() {
            return Err(MetadataError::Invalid {
                endpoint: self.url("/metadata/v1/id"),
                field: "id".into(),
                reason: format!("{id:?} is not a droplet id"),
            });
        }
        let hostname = self.required("/metadata/v1/hostname").await?;
        let region = self.required("/metadata/v1/region").await?;
        let private_ipv4: Option<Ipv4Addr> = self
            .addr("/metadata/v1/interfaces/private/0/ipv4/address")
            .await?;
        let public_ipv4: Option<Ipv4Addr> = self
            .addr("/metadata/v1/interfaces/public/0/ipv4/address")
            .await?;
        let public_ipv6: Option<Ipv6Addr> = self
            .addr("/metadata/v1/interfaces/public/0/ipv6/address")
            .await?;
        let tags = self
            .text("/metadata/v1/tags")
            .await?
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Identity {
            provider: Provider::DigitalOcean,
            instance_id: id,
            hostname: text_field(&self.url("/metadata/v1/hostname"), "hostname", &hostname)?,
            provider_region: text_field(&self.url("/metadata/v1/region"), "region", &region)?,
            private_ipv4,
            public_ipv4,
            public_ipv6,
            tags,
        }
        .checked(
            &self.url("/metadata/v1/interfaces"),
            [
                "private/0/ipv4/address",
                "public/0/ipv4/address",
                "public/0/ipv6/address",
            ],
        )
    }
}

impl Metadata for DoMetadata {
    async fn identity(&self) -> Result<Identity, MetadataError> {
        match self.read_json().await? {
            Some(id) => Ok(id),
            None => self.read_paths().await,
        }
    }
}
