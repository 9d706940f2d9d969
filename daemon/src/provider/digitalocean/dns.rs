//! DigitalOcean Domains: names relative to the zone, `data` for the
//! value, `POST` answered 201.

use std::collections::BTreeSet;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::config::settings::record::{Data, Record};
use crate::provider::DnsZone;
use crate::provider::dns::{Api, MAX_PAGES, Present, PublishError, in_zone, listed_name, present};

/// One zone in DigitalOcean Domains.
pub struct Domains(pub(crate) Api);

#[async_trait]
impl DnsZone for Domains {
    async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        self.0.read_token()?;
        self.list_names(names).await
    }

    async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        let path = format!("/v2/domains/{}/records", self.0.zone);
        let body = do_body(record, &self.0.zone, ttl)?;
        self.0.create(&path, &body, StatusCode::CREATED).await
    }

    async fn remove(&mut self, present: &Present) -> Result<(), PublishError> {
        let path = format!("/v2/domains/{}/records/{}", self.0.zone, present.id);
        self.0.delete(&path, StatusCode::NO_CONTENT).await
    }
}

impl Domains {
    async fn list_names(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let mut out = Vec::new();
        for name in names {
            // `name` filters by the fully qualified name; 200 is the page maximum.
            let mut path = format!(
                "/v2/domains/{}/records?name={name}&per_page=200",
                self.0.zone
            );
            for _ in 0..MAX_PAGES {
                let v = self
                    .0
                    .call(Method::GET, &path, None, &[], StatusCode::OK)
                    .await?;
                let records = v["domain_records"].as_array().ok_or_else(|| {
                    PublishError::new(
                        format!("digitalocean GET {path}"),
                        "no domain_records in the answer",
                    )
                })?;
                for r in records {
                    if let Some(p) = listed(r, &self.0.zone) {
                        out.push(p);
                    }
                }
                match v["links"]["pages"]["next"].as_str() {
                    Some(next) => {
                        path = next
                            .strip_prefix(self.0.rest.base())
                            .unwrap_or(next)
                            .to_owned()
                    }
                    None => break,
                }
            }
        }
        Ok(out)
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

/// One listed record: relative names, the value in `data`.
fn listed(r: &Value, zone: &str) -> Option<Present> {
    present(
        r,
        listed_name(r, zone),
        r["data"].as_str().unwrap_or(""),
        r,
        zone,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_relative_names_and_data_and_skips_the_soa() {
        let zone = "example.net";
        let srv = json!({
            "id": 3352896, "type": "SRV", "name": "_nats-route._tcp.fra1",
            "data": "n1.fra1.example.net.", "priority": 10, "weight": 10, "port": 6222,
        });
        let p = listed(&srv, zone).expect("an SRV record");
        assert_eq!(p.id, "3352896");
        assert_eq!(
            p.record,
            Record::srv(
                "_nats-route._tcp.fra1.example.net",
                6222,
                "n1.fra1.example.net"
            )
        );
        let apex = json!({ "id": 7, "type": "A", "name": "@", "data": "192.0.2.1" });
        let p = listed(&apex, zone).expect("an A record");
        assert_eq!(p.record, Record::address(zone, [192, 0, 2, 1].into()));
        let txt = json!({ "id": 8, "type": "TXT", "name": "_nats-regions", "data": "\"fra1\"" });
        let p = listed(&txt, zone).expect("a TXT record");
        assert_eq!(p.record, Record::txt("_nats-regions.example.net", "fra1"));
        // The SOA is listed with a null id: never one of ours.
        let soa = json!({ "id": null, "type": "A", "name": "@", "data": "192.0.2.1" });
        assert_eq!(listed(&soa, zone), None);
        let body = do_body(&p.record, zone, 60).expect("in the zone");
        assert_eq!(body["name"], "_nats-regions");
    }
}
