//! `[dns_publish]` as validated: the data the `publish` feature reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::record::Record;

/// `[dns_publish]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSettings {
    /// Where the records go.
    pub backend: BackendSettings,
    /// The zone (DNS provider "domain") the records live in.
    pub zone: String,
    /// TTL of every record, in seconds (already rounded to what the
    /// provider accepts).
    pub ttl: u32,
    /// This node's records.
    pub records: Vec<Record>,
    /// This node's own host name (`<server>.<region>.<domain>`): every
    /// address record at it, and every SRV record naming it, is this node's.
    pub host: String,
    /// How long a stop waits for the withdrawal before lame duck anyway.
    pub withdraw_timeout: Duration,
    /// How often published records are checked (someone may delete them).
    pub verify_every: Duration,
    /// Where the last published set is remembered across restarts.
    pub state_file: PathBuf,
    /// This node's entry in the list of regions (none when the regions
    /// are configured rather than read from DNS).
    pub regions: Option<RegionListing>,
}

/// Which DNS provider, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSettings {
    /// RFC 2136 dynamic update with TSIG (BIND, Knot, PowerDNS).
    Rfc2136 {
        /// The primary server.
        server: SocketAddr,
        /// TSIG key name, as the server knows it.
        key_name: String,
        /// TSIG algorithm (`hmac-sha256`, `hmac-sha384`, `hmac-sha512`).
        algorithm: String,
        /// File holding the base64 TSIG secret (a systemd credential).
        secret_file: PathBuf,
    },
    /// An HTTP API: DigitalOcean, Linode or Cloudflare.
    Api {
        /// Which one.
        provider: Provider,
        /// Base URL (the provider's own unless a test or proxy says so).
        url: String,
        /// File holding the API token (a systemd credential).
        token_file: PathBuf,
    },
}

/// What a node writes into the regions list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionListing {
    /// `_nats-regions.<domain>` TXT `<region>`.
    pub record: Record,
    /// This node's region.
    pub region: String,
    /// The zone the record lives in: the publication's zone, or the
    /// domain's own (with Linode, whose per-region zones lie below it).
    pub zone: String,
    /// The region's route SRV name: the region leaves the list only when
    /// no record is left there.
    pub route_record: String,
    /// Where a decommission is marked (`fleet::decommission::marker`).
    pub decommissioned: PathBuf,
}

/// Which API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `https://api.digitalocean.com/v2/domains/…`
    DigitalOcean,
    /// `https://api.linode.com/v4/domains/…`
    Linode,
    /// `https://api.cloudflare.com/client/v4/zones/…`
    Cloudflare,
}

/// The TSIG algorithms natsmesh signs with (ring implements these).
pub const ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DigitalOcean => "digitalocean",
            Self::Linode => "linode",
            Self::Cloudflare => "cloudflare",
        })
    }
}

/// Linode's record TTLs; any other value is rounded by the API.
const LINODE_TTLS: [u32; 12] = [
    300, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800, 1209600, 2419200,
];

impl Provider {
    /// The provider's API base.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::DigitalOcean => "https://api.digitalocean.com",
            Self::Linode => "https://api.linode.com/v4",
            Self::Cloudflare => "https://api.cloudflare.com/client/v4",
        }
    }

    /// The TTL the provider will actually keep for `requested` seconds:
    /// DigitalOcean's minimum is 30, Cloudflare's 60 (1 would mean
    /// "automatic"), Linode's the next value of its fixed list.
    pub fn ttl(self, requested: u32) -> u32 {
        match self {
            Self::DigitalOcean => requested.max(30),
            Self::Cloudflare => requested.clamp(60, 86_400),
            Self::Linode => LINODE_TTLS
                .iter()
                .copied()
                .find(|t| *t >= requested)
                .unwrap_or(2_419_200),
        }
    }
}
