//! `[discovery]` as validated: the data the `discovery` feature reads.

use std::net::SocketAddr;
use std::time::Duration;

use natsmesh_broker::model::HostPort;

/// Discovery as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The supercluster's domain.
    pub domain: String,
    /// This node's region.
    pub region: String,
    /// The SRV name listing the region's routes (none on a leafnode edge
    /// without a cluster).
    pub route_record: Option<String>,
    /// The TXT name listing the regions (when not configured).
    pub regions_record: Option<String>,
    /// Nameservers (`ip:port`); empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Shortest wait between lookups.
    pub min_refresh: Duration,
    /// Longest wait between lookups (and the cap on a record's TTL).
    pub max_refresh: Duration,
    /// Routes to use until DNS has answered once.
    pub seeds: Vec<HostPort>,
    /// Records beyond this many are ignored.
    pub max_records: usize,
    /// This server's own route (with a cluster).
    pub own_route: Option<HostPort>,
    /// SRV names of leafnode hubs, one per `broker.leafnodes.remotes`
    /// entry that names a record (in `leaf_remotes` order).
    pub leaf_records: Vec<String>,
    /// The index in `broker.leafnodes.remotes` of each `leaf_records` entry.
    pub leaf_remotes: Vec<usize>,
}
