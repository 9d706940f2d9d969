//! Cloudflare DNS: absolute names, `content` for the value, SRV numbers
//! and target in `data`, records under the zone's id.

use std::collections::BTreeSet;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::config::settings::record::{Data, Record};
use crate::provider::DnsZone;
use crate::provider::dns::{Api, MAX_PAGES, Present, Provider, PublishError, listed_name, present};

/// One zone in Cloudflare DNS.
pub struct Dns(pub(crate) Api);

#[async_trait]
impl DnsZone for Dns {
    async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        self.0.read_token()?;
        self.list_names(names).await
    }

    async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        let path = format!("/zones/{}/dns_records", self.zone_id().await?);
        self.0
            .create(&path, &cf_body(record, ttl), StatusCode::OK)
            .await
    }

    async fn remove(&mut self, present: &Present) -> Result<(), PublishError> {
        let path = format!(
            "/zones/{}/dns_records/{}",
            self.zone_id().await?,
            present.id
        );
        self.0.delete(&path, StatusCode::OK).await
    }
}

impl Dns {
    /// The zone's id (needs Zone → Zone → Read).
    async fn zone_id(&mut self) -> Result<String, PublishError> {
        if let Some(id) = &self.0.zone_id {
            return Ok(id.clone());
        }
        let path = format!("/zones?name={}", self.0.zone);
        let v = self
            .0
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
                        self.0.zone,
                        Provider::Cloudflare.scopes()
                    ),
                )
            })?
            .to_owned();
        self.0.zone_id = Some(id.clone());
        Ok(id)
    }

    async fn list_names(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let zone = self.zone_id().await?;
        let mut out = Vec::new();
        for name in names {
            for page in 1..=MAX_PAGES {
                let path =
                    format!("/zones/{zone}/dns_records?name={name}&page={page}&per_page=100");
                let v = self
                    .0
                    .call(Method::GET, &path, None, &[], StatusCode::OK)
                    .await?;
                let result = v["result"].as_array().ok_or_else(|| {
                    PublishError::new(format!("cloudflare GET {path}"), "no result in the answer")
                })?;
                for r in result {
                    if let Some(p) = listed(r, &self.0.zone) {
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
}

/// One listed record: an SRV record's numbers and target are in `data`.
fn listed(r: &Value, zone: &str) -> Option<Present> {
    let name = listed_name(r, zone);
    if r["type"].as_str() == Some("SRV") {
        let data = &r["data"];
        present(r, name, data["target"].as_str()?, data, zone)
    } else {
        present(r, name, r["content"].as_str().unwrap_or(""), r, zone)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_absolute_names_and_srv_data() {
        let zone = "example.net";
        let srv = json!({
            "id": "372e67954025e0ba6aaa6d586b9e0b59", "type": "SRV",
            "name": "_nats-route._tcp.fra1.example.net",
            "content": "10 6222 n1.fra1.example.net",
            "data": { "priority": 10, "weight": 10, "port": 6222, "target": "n1.fra1.example.net" },
        });
        let p = listed(&srv, zone).expect("an SRV record");
        assert_eq!(p.id, "372e67954025e0ba6aaa6d586b9e0b59");
        assert_eq!(
            p.record,
            Record::srv(
                "_nats-route._tcp.fra1.example.net",
                6222,
                "n1.fra1.example.net"
            )
        );
        let aaaa = json!({
            "id": "a1", "type": "AAAA", "name": "fra1.example.net", "content": "2001:db8::1",
        });
        let p = listed(&aaaa, zone).expect("an AAAA record");
        assert_eq!(
            p.record,
            Record::address("fra1.example.net", "2001:db8::1".parse().expect("v6"))
        );
        // Cloudflare takes absolute names and the SRV fields in `data`.
        let body = cf_body(&p.record, 60);
        assert_eq!(body["name"], "fra1.example.net");
        assert_eq!(body["proxied"], false);
    }
}
