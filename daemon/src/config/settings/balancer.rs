//! `[load_balancer]` as validated: the data the `balancer` feature reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[load_balancer]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// Which provider's balancer.
    pub provider: LbProvider,
    /// The balancer's id (DigitalOcean uuid, Linode NodeBalancer id).
    pub id: String,
    /// API base URL.
    pub url: String,
    /// File holding the API token (a systemd credential).
    pub token_file: PathBuf,
    /// This machine at the provider (droplet id, Linode id).
    pub instance_id: String,
    /// Its private IPv4 (a NodeBalancer node's address).
    pub private_ip: Option<std::net::Ipv4Addr>,
    /// Linode: which address a node points at.
    pub backend: Backend,
    /// Where the broker's client listener binds (a VPC backend's address
    /// must be one it accepts on).
    pub client_bind: std::net::IpAddr,
    /// Its server name (a NodeBalancer node's label).
    pub server_name: String,
    /// The provider's region of this machine (`fra1`).
    pub region: String,
    /// The broker's client port: the balancer must forward TCP to it.
    pub client_port: u16,
    /// The monitoring port, which a health check must never target.
    pub monitoring_port: Option<u16>,
    /// The readiness endpoint natsmeshd serves for the health check.
    pub ready: SocketAddr,
    /// Minimum time in a state before membership follows it.
    pub dwell: Duration,
    /// How long a stop may spend leaving: deregistration plus drain delay
    /// (`None`: derived from the balancer's health check, `balancer::stop_budget`).
    pub stop_budget: Option<Duration>,
}

/// Which address a NodeBalancer node points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The private IPv4 address.
    Private,
    /// The VPC address in this subnet (or the only one this Linode has).
    Vpc {
        /// `load_balancer.subnet_id`.
        subnet_id: Option<u64>,
    },
}

/// The providers with a balancer natsmesh can join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbProvider {
    /// DigitalOcean Load Balancer.
    DigitalOcean,
    /// Linode NodeBalancer.
    Linode,
}

impl std::fmt::Display for LbProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DigitalOcean => "digitalocean",
            Self::Linode => "linode",
        })
    }
}

impl LbProvider {
    /// The provider's API base.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::DigitalOcean => "https://api.digitalocean.com",
            Self::Linode => "https://api.linode.com/v4",
        }
    }

    /// What the token needs.
    pub fn scopes(self) -> &'static str {
        match self {
            Self::DigitalOcean => {
                "load_balancer:read, load_balancer:update, droplet:read (tag-based balancers: tag:create, tag:delete, droplet:update)"
            }
            Self::Linode => "nodebalancers:read_write (VPC backends: linodes:read_only)",
        }
    }
}
