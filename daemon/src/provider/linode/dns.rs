//! Linode Domains: names relative to the zone, `target` for the value,
//! an SRV record's owner in `service` and `protocol` at the Domain's apex
//! (so a region's records live in a Domain of their own), records under
//! the Domain's id.

use std::collections::BTreeSet;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::config::settings::record::{Data, Record, normal, relative};
use crate::provider::DnsZone;
use crate::provider::dns::{Api, MAX_PAGES, Present, PublishError, in_zone, listed_name, present};

/// One Domain in Linode Domains.
pub struct Domains(pub(crate) Api);

#[async_trait]
impl DnsZone for Domains {
    async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        self.0.read_token()?;
        self.list_names(names).await
    }

    async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        let path = format!("/domains/{}/records", self.domain().await?);
        let body = linode_body(record, &self.0.zone, ttl)?;
        self.0.create(&path, &body, StatusCode::OK).await
    }

    async fn remove(&mut self, present: &Present) -> Result<(), PublishError> {
        let path = format!("/domains/{}/records/{}", self.domain().await?, present.id);
        self.0.delete(&path, StatusCode::OK).await
    }
}

impl Domains {
    /// The id of the Linode Domain named like the zone.
    async fn domain(&mut self) -> Result<String, PublishError> {
        if let Some(id) = &self.0.zone_id {
            return Ok(id.clone());
        }
        let filter = json!({ "domain": self.0.zone }).to_string();
        let v = self
            .0
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
            .find(|d| d["domain"].as_str().map(normal).as_deref() == Some(self.0.zone.as_str()))
            .and_then(|d| d["id"].as_u64())
            .ok_or_else(|| {
                PublishError::new(
                    "linode GET /domains",
                    format!(
                        "no Domain {:?} in this account (create it, one per region)",
                        self.0.zone
                    ),
                )
            })?;
        self.0.zone_id = Some(id.to_string());
        Ok(id.to_string())
    }

    async fn list_names(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let domain = self.domain().await?;
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("/domains/{domain}/records?page={page}&page_size=500");
            let v = self
                .0
                .call(Method::GET, &path, None, &[], StatusCode::OK)
                .await?;
            let data = v["data"].as_array().ok_or_else(|| {
                PublishError::new(format!("linode GET {path}"), "no data in the answer")
            })?;
            for r in data {
                if let Some(p) = listed(r, &self.0.zone)
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
}

/// One listed record: Linode keeps an SRV owner in `service` and
/// `protocol` at the apex.
fn listed(r: &Value, zone: &str) -> Option<Present> {
    let name = if r["type"].as_str() == Some("SRV") {
        format!(
            "_{}._{}.{}",
            r["service"].as_str()?.trim_start_matches('_'),
            r["protocol"].as_str()?.trim_start_matches('_'),
            zone
        )
    } else {
        listed_name(r, zone)
    };
    present(r, name, r["target"].as_str().unwrap_or(""), r, zone)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_srv_owners_from_service_and_protocol() {
        let zone = "fra1.example.net";
        let srv = json!({
            "id": 5, "type": "SRV", "name": "", "service": "_nats-route", "protocol": "_tcp",
            "target": "n1.fra1.example.net", "priority": 10, "weight": 10, "port": 6222,
        });
        let p = listed(&srv, zone).expect("an SRV record");
        assert_eq!(p.id, "5");
        assert_eq!(
            p.record,
            Record::srv(
                "_nats-route._tcp.fra1.example.net",
                6222,
                "n1.fra1.example.net"
            )
        );
        let a = json!({ "id": 6, "type": "A", "name": "n1", "target": "10.0.0.1" });
        let p = listed(&a, zone).expect("an A record");
        assert_eq!(
            p.record,
            Record::address("n1.fra1.example.net", [10, 0, 0, 1].into())
        );
        // An SRV record without its owner is not read as anyone's.
        let ownerless = json!({
            "id": 9, "type": "SRV", "target": "n1", "priority": 10, "weight": 10, "port": 6222,
        });
        assert_eq!(listed(&ownerless, zone), None);
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
