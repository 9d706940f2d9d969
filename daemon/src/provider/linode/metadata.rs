//! Linode (Akamai): the Metadata Service.
//!
//! `PUT /v1/token` with an expiry header returns a token; `GET /v1/instance`
//! and `/v1/network` take it in `Metadata-Token`. An expired token answers
//! 401: a new one is fetched once. Addresses come as CIDR strings and lose
//! their prefix here. The service also answers on its own IPv6 address,
//! tried when the IPv4 one cannot be reached. The token is never logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use reqwest::{Client, Method};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::schema::Provider;
use crate::provider::http;
use crate::provider::{Identity, Metadata, MetadataError, text_field};

/// How long a token natsmeshd asks for lives.
const TOKEN_SECONDS: u64 = 300;

/// The Linode Metadata Service client.
#[derive(Debug)]
pub struct LinodeMetadata {
    bases: Vec<String>,
    http: Client,
    token: Mutex<Option<(String, String, Instant)>>,
}

impl LinodeMetadata {
    /// A client trying `bases` in order (`http://169.254.169.254`, then
    /// `http://[fd00:a9fe:a9fe::1]`).
    pub fn new(bases: &[String], http: Client) -> Self {
        Self {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            http,
            token: Mutex::new(None),
        }
    }

    /// A valid token and the base that issued it.
    async fn token(&self, fresh: bool) -> Result<(String, String), MetadataError> {
        let mut cached = self.token.lock().await;
        if !fresh
            && let Some((base, token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok((base.clone(), token.clone()));
        }
        let mut last = None;
        for base in &self.bases {
            let url = format!("{base}/v1/token");
            let answer = http::send(&self.http, Method::PUT, &url, |r| {
                r.header("Metadata-Token-Expiry-Seconds", TOKEN_SECONDS.to_string())
            })
            .await;
            match answer {
                Err(e @ MetadataError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
                Ok(a) => {
                    let body = a.ok(&url)?;
                    let token = body.trim().to_owned();
                    if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
                        return Err(MetadataError::Invalid {
                            endpoint: url,
                            field: "token".into(),
                            reason: "not a token".into(),
                        });
                    }
                    // Renew a little before the service forgets it.
                    let until = Instant::now() + Duration::from_secs(TOKEN_SECONDS - 30);
                    *cached = Some((base.clone(), token.clone(), until));
                    return Ok((base.clone(), token));
                }
            }
        }
        Err(last.unwrap_or(MetadataError::Unreachable {
            endpoint: "Linode metadata".into(),
            reason: "no address configured".into(),
        }))
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
    ) -> Result<(String, T), MetadataError> {
        let mut fresh = false;
        loop {
            let (base, token) = self.token(fresh).await?;
            let url = format!("{base}{path}");
            let answer = http::send(&self.http, Method::GET, &url, |r| {
                r.header("Metadata-Token", token.as_str())
                    .header("Accept", "application/json")
            })
            .await?;
            if answer.status == 401 && !fresh {
                // Expired or revoked: one new token, then give up.
                fresh = true;
                continue;
            }
            let body = answer.ok(&url)?;
            let doc = serde_json::from_str(&body).map_err(|e| MetadataError::Invalid {
                endpoint: url.clone(),
                field: "(body)".into(),
                reason: format!("not the documented JSON: {e}"),
            })?;
            return Ok((url, doc));
        }
    }
}

/// `a.b.c.d/nn` → `a.b.c.d` (also takes a bare address).
fn strip_prefix(endpoint: &str, field: &str, cidr: &str) -> Result<IpAddr, MetadataError> {
    let addr = cidr.split_once('/').map_or(cidr, |(a, _)| a);
    addr.parse().map_err(|_| MetadataError::Invalid {
        endpoint: endpoint.to_owned(),
        field: field.to_owned(),
        reason: format!("{cidr:?} is not an address in CIDR form"),
    })
}

impl Metadata for LinodeMetadata {
    async fn identity(&self) -> Result<Identity, MetadataError> {
        let (iurl, inst): (String, Instance) = self.get_json("/v1/instance").await?;
        let (nurl, net): (String, Network) = self.get_json("/v1/network").await?;
        let instance_id = match inst.id {
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {
                n.to_string()
            }
            other => {
                return Err(MetadataError::Invalid {
                    endpoint: iurl,
                    field: "id".into(),
                    reason: format!("{other:?} is not a Linode id"),
                });
            }
        };
        let v4 =
            |field: &str, list: &Option<Vec<String>>| -> Result<Option<Ipv4Addr>, MetadataError> {
                match list.as_ref().and_then(|l| l.first()) {
                    None => Ok(None),
                    Some(c) => match strip_prefix(&nurl, field, c)? {
                        IpAddr::V4(a) => Ok(Some(a)),
                        IpAddr::V6(_) => Err(MetadataError::Invalid {
                            endpoint: nurl.clone(),
                            field: field.to_owned(),
                            reason: format!("{c:?} is not IPv4"),
                        }),
                    },
                }
            };
        let ipv4 = net.ipv4.unwrap_or_default();
        let public_ipv6: Option<Ipv6Addr> =
            match net.ipv6.and_then(|v| v.slaac).filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match strip_prefix(&nurl, "ipv6.slaac", &s)? {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                },
            };
        Identity {
            provider: Provider::Linode,
            instance_id,
            hostname: text_field(&iurl, "label", inst.label.as_deref().unwrap_or(""))?,
            provider_region: text_field(&iurl, "region", inst.region.as_deref().unwrap_or(""))?,
            private_ipv4: v4("ipv4.private[0]", &ipv4.private)?,
            public_ipv4: v4("ipv4.public[0]", &ipv4.public)?,
            public_ipv6,
            tags: inst.tags.unwrap_or_default(),
        }
        .checked(&nurl, ["ipv4.private[0]", "ipv4.public[0]", "ipv6.slaac"])
    }
}

#[derive(Debug, Deserialize)]
struct Instance {
    id: Option<serde_json::Value>,
    label: Option<String>,
    region: Option<String>,
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Network {
    ipv4: Option<Ipv4Lists>,
    ipv6: Option<Ipv6Info>,
}

#[derive(Debug, Default, Deserialize)]
struct Ipv4Lists {
    public: Option<Vec<String>>,
    private: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Ipv6Info {
    slaac: Option<String>,
}
