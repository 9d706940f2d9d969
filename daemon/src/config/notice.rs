//! Notices: what `check` tells without refusing. A listener that answers
//! without credentials by design is fine on loopback; off loopback the
//! operator should know what anyone who reaches it can read.
//!
//! This module only reads validated settings; it decides nothing.

use std::net::IpAddr;

use natsmesh_broker::model::Port;

use super::Settings;

/// One listener that answers anyone who reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The setting that places it.
    pub key: &'static str,
    /// Where it listens (`host:port`).
    pub addr: String,
    /// What it tells a stranger.
    pub reveals: &'static str,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "notice: {}: {} answers without credentials (by design); anyone who reaches it can read {}",
            self.key, self.addr, self.reveals
        )
    }
}

fn off_loopback(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

/// Every listener of `settings` that answers without credentials on an
/// address other than loopback.
pub fn notices(settings: &Settings) -> Vec<Notice> {
    let mut out = Vec::new();
    if let Some(m) = &settings.server.monitoring
        && off_loopback(m.host)
    {
        out.push(Notice {
            key: "broker.monitoring.bind",
            addr: match m.port {
                Port::Fixed(p) => std::net::SocketAddr::new(m.host, p).to_string(),
                Port::Random => format!("{} (a random port)", m.host),
            },
            reveals: "the broker's monitoring pages: its configuration and version (/varz), every client connection with its address and name (/connz), routes, gateways, leafnodes, accounts and subscriptions",
        });
    }
    if let Some(m) = &settings.metrics
        && off_loopback(m.listen.ip())
    {
        out.push(Notice {
            key: "metrics.bind",
            addr: m.listen.to_string(),
            reveals: "/metrics: the node's name, region, state, peers and message rates (and stream names, with metrics.streams)",
        });
    }
    if let Some(b) = &settings.balancer
        && off_loopback(b.ready.ip())
    {
        out.push(Notice {
            key: "load_balancer.ready_bind",
            addr: b.ready.to_string(),
            reveals: "/ready: whether this node takes clients, and its state (starting, draining) when it does not",
        });
    }
    out
}
