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
//!
//! A VPC backend (`backend = "vpc"`) is this Linode's address in a VPC
//! subnet with the subnet's id, as Linode's own clients create them
//! (linodego's `subnet_id`). The metadata service shows neither, so both
//! are read from `GET /linode/instances/{id}/ips` (`ipv4.vpc`) on every
//! read of the NodeBalancer: an interface attached or moved is followed.

use std::net::{IpAddr, Ipv4Addr};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::provider::LoadBalancer;
use crate::provider::lb::{Health, LbError, Rule, Setup, name_missing_scope};
use crate::provider::rest::{ClientError, Flavor, Purpose, Rest, RestError};

/// One NodeBalancer, seen from one Linode.
pub struct Linode {
    rest: Rest,
    nb_id: String,
    reach: Reach,
    port: u16,
    label: String,
}

/// How the NodeBalancer reaches this Linode, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// At its private IPv4 address.
    Private(Ipv4Addr),
    /// At its address in a VPC subnet, read through the API.
    Vpc {
        /// This Linode.
        linode_id: String,
        /// The subnet, when this Linode may be in several.
        subnet_id: Option<u64>,
        /// Where the broker's clients are accepted: a specific address
        /// must be the VPC one.
        client_bind: IpAddr,
    },
}

/// A node's address: `ip:port`, and the VPC subnet of a VPC backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// `ip:port`.
    pub address: String,
    /// The VPC subnet.
    pub subnet_id: Option<u64>,
}

/// What one read of the NodeBalancer found.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its set-up.
    pub setup: Setup,
    /// This machine's node on each config.
    pub members: Vec<Member>,
    /// Where a node for this machine points (none when a VPC backend
    /// has no VPC address to point at; `setup.wrong` says why).
    pub node: Option<NodeAddress>,
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
        reach: Reach,
        client_port: u16,
        name: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            rest: Rest::new(Flavor::Linode, base, Purpose::LoadBalancer)?,
            nb_id: nb_id.to_owned(),
            reach,
            port: client_port,
            label: label(name),
        })
    }

    /// Where this machine's node points, or why there is no such place.
    async fn node_address(&self, token: &str) -> Result<Result<NodeAddress, VpcError>, LbError> {
        let (linode_id, subnet_id, client_bind) = match &self.reach {
            Reach::Private(ip) => {
                return Ok(Ok(NodeAddress {
                    address: format!("{ip}:{}", self.port),
                    subnet_id: None,
                }));
            }
            Reach::Vpc {
                linode_id,
                subnet_id,
                client_bind,
            } => (linode_id, *subnet_id, *client_bind),
        };
        let ips = self
            .get(token, &format!("/linode/instances/{linode_id}/ips"))
            .await
            .map_err(|mut e| {
                if e.status == Some(403) {
                    e.why
                        .push_str(" (a VPC backend's token needs linodes:read_only too)");
                }
                e
            })?;
        Ok(vpc_address(&ips, subnet_id).and_then(|(ip, subnet)| {
            if !client_bind.is_unspecified() && client_bind != IpAddr::V4(ip) {
                return Err(VpcError::NotBound { ip, client_bind });
            }
            Ok(NodeAddress {
                address: format!("{ip}:{}", self.port),
                subnet_id: Some(subnet),
            })
        }))
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
    pub async fn read(&self, token: &str) -> Result<Seen, LbError> {
        let (node, wrong) = match self.node_address(token).await? {
            Ok(n) => (Some(n), Vec::new()),
            Err(why) => (None, vec![why.to_string()]),
        };
        let address = node.as_ref().map(|n| n.address.as_str());
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
                .find(|n| address.is_some() && n["address"].as_str() == address)
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
            wrong,
        };
        Ok(Seen {
            setup,
            members,
            node,
        })
    }

    /// Accepting on every config: an existing node is switched to
    /// `accept`, a missing one created.
    pub async fn register(&self, token: &str, seen: &Seen) -> Result<(), LbError> {
        let Some(node) = &seen.node else {
            return Err(LbError::fatal(
                "joining the NodeBalancer",
                seen.setup.wrong.join("; "),
            ));
        };
        for m in &seen.members {
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
                    let mut body = json!({
                        "label": self.label, "address": node.address, "weight": 100, "mode": "accept",
                    });
                    if let Some(subnet) = node.subnet_id {
                        body["subnet_id"] = json!(subnet);
                    }
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

/// Why a VPC backend has no address to point at (what to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpcError {
    /// No active VPC address in the configured subnet.
    #[error(
        "this Linode has no active VPC address in subnet {subnet}: attach a vpc interface in that subnet to its configuration profile (and reboot into it), or correct load_balancer.subnet_id"
    )]
    NoneInSubnet {
        /// `load_balancer.subnet_id`.
        subnet: u64,
    },
    /// No active VPC address at all.
    #[error(
        "this Linode has no active VPC address: attach a vpc interface to its configuration profile (and reboot into it), or set load_balancer.backend = \"private\""
    )]
    None,
    /// Several subnets and none chosen.
    #[error(
        "this Linode is in several VPC subnets ({subnets}): set load_balancer.subnet_id to the one the NodeBalancer reaches"
    )]
    Several {
        /// The subnets, comma-separated.
        subnets: String,
    },
    /// The broker does not listen on the VPC address.
    #[error(
        "the NodeBalancer reaches this Linode at its VPC address {ip}, but broker.client.bind is {client_bind}: set it to \"{ip}\" (or \"any\")"
    )]
    NotBound {
        /// The VPC address.
        ip: Ipv4Addr,
        /// `broker.client.bind`.
        client_bind: IpAddr,
    },
}

/// This Linode's active VPC address (a single address, not a range) and
/// its subnet, from `GET /linode/instances/{id}/ips`; in `subnet` when
/// given. Otherwise what to change.
fn vpc_address(ips: &Value, subnet: Option<u64>) -> Result<(Ipv4Addr, u64), VpcError> {
    let found: Vec<(Ipv4Addr, u64)> = ips["ipv4"]["vpc"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["active"].as_bool() == Some(true))
        .filter_map(|v| {
            let ip = v["address"].as_str()?.parse().ok()?;
            Some((ip, v["subnet_id"].as_u64()?))
        })
        .filter(|(_, s)| subnet.is_none_or(|want| *s == want))
        .collect();
    let mut subnets: Vec<u64> = found.iter().map(|(_, s)| *s).collect();
    subnets.sort_unstable();
    subnets.dedup();
    match (found.first(), subnets.len()) {
        (None, _) => Err(match subnet {
            Some(subnet) => VpcError::NoneInSubnet { subnet },
            None => VpcError::None,
        }),
        (Some(first), 1) => Ok(*first),
        (Some(_), _) => Err(VpcError::Several {
            subnets: subnets
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
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
    name_missing_scope(e, retry, scope)
}

/// The OAuth scope each NodeBalancer call needs (the spec's operation
/// `security`); a Linode's addresses say their own (see `node_address`).
fn scope(op: &str) -> Option<&'static str> {
    let (method, path) = op.split_once(' ')?;
    path.starts_with("/nodebalancers/")
        .then_some(if method == "GET" {
            "nodebalancers:read_only"
        } else {
            "nodebalancers:read_write"
        })
}

#[async_trait::async_trait]
impl LoadBalancer for Linode {
    async fn setup(&self, token: &str) -> Result<Setup, LbError> {
        self.read(token).await.map(|seen| {
            let mut setup = seen.setup;
            setup.members = seen.members;
            setup
        })
    }

    async fn join(&self, token: &str, _setup: &Setup) -> Result<(), LbError> {
        // Node ids as they are now (another pass may have created one).
        self.register(token, &self.read(token).await?).await
    }

    async fn leave(&self, token: &str, _setup: &Setup) -> Result<(), LbError> {
        // Out of rotation, pinned connections go on; deleted on stop.
        self.drain(token, &self.read(token).await?.members).await
    }

    async fn finish_leaving(&self, token: &str) -> Result<(), LbError> {
        self.remove(token, &self.read(token).await?.members).await
    }
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
    fn a_vpc_backend_is_the_active_address_in_the_one_subnet() {
        let ips = json!({"ipv4": {"public": [], "private": [], "vpc": [
            {"address": "10.0.0.5", "address_range": null, "active": true, "subnet_id": 101, "vpc_id": 7},
            {"address": null, "address_range": "10.0.4.0/24", "active": true, "subnet_id": 101, "vpc_id": 7},
            {"address": "10.9.0.5", "active": false, "subnet_id": 300, "vpc_id": 9},
        ]}});
        assert_eq!(
            vpc_address(&ips, None),
            Ok((Ipv4Addr::new(10, 0, 0, 5), 101))
        );
        assert_eq!(
            vpc_address(&ips, Some(101)),
            Ok((Ipv4Addr::new(10, 0, 0, 5), 101))
        );
        // The inactive interface's subnet does not count.
        let e = vpc_address(&ips, Some(300)).unwrap_err().to_string();
        assert!(e.contains("no active VPC address in subnet 300"), "{e}");
        let none = json!({"ipv4": {"vpc": []}});
        let e = vpc_address(&none, None).unwrap_err().to_string();
        assert!(e.contains("backend = \"private\""), "{e}");
        let two = json!({"ipv4": {"vpc": [
            {"address": "10.0.0.5", "active": true, "subnet_id": 101},
            {"address": "10.1.0.5", "active": true, "subnet_id": 202},
        ]}});
        let e = vpc_address(&two, None).unwrap_err().to_string();
        assert!(e.contains("several VPC subnets (101, 202)"), "{e}");
        assert_eq!(
            vpc_address(&two, Some(202)),
            Ok((Ipv4Addr::new(10, 1, 0, 5), 202))
        );
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
        let refused = |what: &str| {
            classify(RestError {
                what: what.into(),
                ..e(403, "Unauthorized")
            })
            .why
        };
        assert_eq!(
            refused("linode POST /nodebalancers/1/configs/2/nodes"),
            "403 Unauthorized (the token lacks the nodebalancers:read_write scope for this)"
        );
        assert!(refused("linode GET /nodebalancers/1").contains("nodebalancers:read_only scope"));
        assert_eq!(
            refused("linode GET /linode/instances/5/ips"),
            "403 Unauthorized"
        );
    }
}
