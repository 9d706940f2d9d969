//! Linode NodeBalancers (reference §2): this machine is a node,
//! `<private IPv4>:<client port>`, on every config of the NodeBalancer.
//! A node is found by address before one is created (repeats are
//! idempotent), leaves by `mode = drain` (no new connections, pinned ones
//! continue) and is deleted once drained on stop.
//!
//! A NodeBalancer checks each node on the node's own port: there is no
//! separate check port, so it cannot ask natsmeshd's readiness endpoint.
//! The check that fits NATS is `connection` (nats-server is not HTTP, so
//! `http` checks on its port fail): it fails once lame duck closes the
//! listener, and natsmeshd drains the node before that anyway.

use std::net::Ipv4Addr;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Health, LbError, Rule, Setup};
use crate::provider::rest::{Flavor, Purpose, Rest, RestError};

/// One NodeBalancer, seen from one Linode.
pub struct Linode {
    rest: Rest,
    nb_id: String,
    address: String,
    label: String,
}

/// Where this machine is on one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The config.
    pub config_id: u64,
    /// This machine's node on it, with its mode.
    pub node: Option<(u64, String)>,
}

impl Linode {
    /// Nothing is contacted yet.
    pub fn new(
        base: &str,
        nb_id: &str,
        private: Ipv4Addr,
        client_port: u16,
        name: &str,
    ) -> Result<Self, String> {
        Ok(Self {
            rest: Rest::new(Flavor::Linode, base, Purpose::LoadBalancer)?,
            nb_id: nb_id.to_owned(),
            address: format!("{private}:{client_port}"),
            label: label(name),
        })
    }

    async fn get(&self, token: &str, path: &str) -> Result<Value, LbError> {
        self.rest
            .call(token, Method::GET, path, None, &[], StatusCode::OK)
            .await
            .map_err(classify)
    }

    /// Every page of a list.
    async fn list(&self, token: &str, path: &str) -> Result<Vec<Value>, LbError> {
        let mut out = Vec::new();
        for page in 1..=20u64 {
            let v = self
                .get(token, &format!("{path}?page={page}&page_size=100"))
                .await?;
            out.extend(v["data"].as_array().into_iter().flatten().cloned());
            if v["pages"].as_u64().unwrap_or(1) <= page {
                break;
            }
        }
        Ok(out)
    }

    /// The NodeBalancer, its configs and this machine's nodes on them.
    pub async fn read(&self, token: &str) -> Result<(Setup, Vec<Member>), LbError> {
        let base = format!("/nodebalancers/{}", self.nb_id);
        let nb = self.get(token, &base).await?;
        let configs = self.list(token, &format!("{base}/configs")).await?;
        if configs.is_empty() {
            return Err(LbError::fatal(
                format!("GET {base}/configs"),
                "the NodeBalancer has no config: add a tcp config whose port clients use",
            ));
        }
        let mut rules = Vec::new();
        let mut members = Vec::new();
        let mut health: Option<Health> = None;
        for c in &configs {
            let config_id = c["id"].as_u64().unwrap_or(0);
            rules.push(Rule {
                entry: format!("{}:{}", c["protocol"].as_str().unwrap_or("?"), c["port"]),
                target_protocol: c["protocol"].as_str().unwrap_or("?").to_owned(),
                target_port: None,
                tls_passthrough: false,
            });
            let secs = |k: &str, d: u64| std::time::Duration::from_secs(c[k].as_u64().unwrap_or(d));
            let attempts = u32::try_from(c["check_attempts"].as_u64().unwrap_or(3)).unwrap_or(3);
            let h = Health {
                protocol: c["check"].as_str().unwrap_or("none").to_owned(),
                port: None,
                path: c["check_path"].as_str().unwrap_or("").to_owned(),
                interval: secs("check_interval", 5),
                timeout: secs("check_timeout", 3),
                unhealthy: attempts,
                healthy: attempts,
            };
            // The slowest config sets the drain delay.
            if health
                .as_ref()
                .is_none_or(|old| h.drain_delay() > old.drain_delay())
            {
                health = Some(h);
            }
            let nodes = self
                .list(token, &format!("{base}/configs/{config_id}/nodes"))
                .await?;
            let node = nodes
                .iter()
                .find(|n| n["address"].as_str() == Some(self.address.as_str()))
                .and_then(|n| {
                    Some((
                        n["id"].as_u64()?,
                        n["mode"].as_str().unwrap_or("accept").to_owned(),
                    ))
                });
            members.push(Member { config_id, node });
        }
        let registered = members
            .iter()
            .all(|m| m.node.as_ref().is_some_and(|(_, mode)| mode == "accept"));
        let setup = Setup {
            rules,
            health: health.unwrap_or(Health {
                protocol: "none".into(),
                port: None,
                path: String::new(),
                interval: std::time::Duration::ZERO,
                timeout: std::time::Duration::ZERO,
                unhealthy: 0,
                healthy: 0,
            }),
            region: nb["region"].as_str().unwrap_or("").to_owned(),
            status: String::new(),
            tag: None,
            registered,
            members: Vec::new(),
        };
        Ok((setup, members))
    }

    /// Accepting on every config: an existing node is switched to
    /// `accept`, a missing one created.
    pub async fn register(&self, token: &str, members: &[Member]) -> Result<(), LbError> {
        for m in members {
            let nodes = format!(
                "/nodebalancers/{}/configs/{}/nodes",
                self.nb_id, m.config_id
            );
            match &m.node {
                Some((_, mode)) if mode == "accept" => {}
                Some((id, _)) => {
                    self.set_mode(token, &format!("{nodes}/{id}"), "accept")
                        .await?
                }
                None => {
                    let body = json!({
                        "label": self.label, "address": self.address, "weight": 100, "mode": "accept",
                    });
                    self.rest
                        .call(
                            token,
                            Method::POST,
                            &nodes,
                            Some(&body),
                            &[],
                            StatusCode::OK,
                        )
                        .await
                        .map_err(classify)?;
                }
            }
        }
        Ok(())
    }

    /// No new connections on any config (`mode = drain`).
    pub async fn drain(&self, token: &str, members: &[Member]) -> Result<(), LbError> {
        for m in members {
            if let Some((id, mode)) = &m.node
                && mode != "drain"
            {
                let path = format!(
                    "/nodebalancers/{}/configs/{}/nodes/{id}",
                    self.nb_id, m.config_id
                );
                self.set_mode(token, &path, "drain").await?;
            }
        }
        Ok(())
    }

    /// Deletes this machine's nodes (after the drain); 404 means done.
    pub async fn remove(&self, token: &str, members: &[Member]) -> Result<(), LbError> {
        for m in members {
            if let Some((id, _)) = &m.node {
                let path = format!(
                    "/nodebalancers/{}/configs/{}/nodes/{id}",
                    self.nb_id, m.config_id
                );
                match self
                    .rest
                    .call(token, Method::DELETE, &path, None, &[], StatusCode::OK)
                    .await
                {
                    Err(e) if e.status == Some(404) => {}
                    other => {
                        other.map_err(classify)?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn set_mode(&self, token: &str, path: &str, mode: &str) -> Result<(), LbError> {
        self.rest
            .call(
                token,
                Method::PUT,
                path,
                Some(&json!({ "mode": mode })),
                &[],
                StatusCode::OK,
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// A node label: `[a-zA-Z0-9-_.]{3,32}`, from the server name.
pub fn label(name: &str) -> String {
    let mut l: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    while l.len() < 3 {
        l.push('-');
    }
    l
}

/// Retried: transport failures, 429, 5xx (503 maintenance included) and
/// the 400 "busy" answers; not 401 or other refusals.
fn classify(e: RestError) -> LbError {
    let retry = match e.status {
        None | Some(429) => true,
        Some(s) if s >= 500 => true,
        Some(400) => e.text.to_ascii_lowercase().contains("busy"),
        Some(_) => false,
    };
    LbError::from_rest(e, retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_coerced_to_the_allowed_pattern() {
        assert_eq!(label("linode-eu-central-12345"), "linode-eu-central-12345");
        assert_eq!(label("a b"), "a-b");
        assert_eq!(label("x"), "x--");
        assert_eq!(label(&"n".repeat(40)).len(), 32);
    }

    #[test]
    fn busy_and_maintenance_are_retried_refusals_are_not() {
        let e = |status: u16, text: &str| RestError {
            what: "x".into(),
            status: Some(status),
            text: text.into(),
            retry_after: None,
        };
        assert!(classify(e(400, "Linode busy.")).retry);
        assert!(classify(e(503, "Currently in maintenance mode.")).retry);
        assert!(!classify(e(400, "address: Must be a private IP address")).retry);
        assert!(!classify(e(401, "Invalid Token")).retry);
    }
}
