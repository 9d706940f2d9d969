//! The gate as validated: the data the `gate` feature reads.

use std::net::SocketAddr;

use super::tls::TlsSettings;

/// Where the gate listens and passes connections on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSettings {
    /// The gateway's address, as peers reach it.
    pub listen: SocketAddr,
    /// The broker's own gateway listener (loopback).
    pub broker: SocketAddr,
    /// The supercluster's domain: a region R's gateway must present a
    /// certificate for `R.<domain>`.
    pub domain: String,
    /// The name the broker's certificate is checked for (`<region>.<domain>`).
    pub own_name: String,
    /// This node's TLS (certificate, key, roots).
    pub tls: TlsSettings,
}
