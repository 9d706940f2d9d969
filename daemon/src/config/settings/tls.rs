//! `[tls]` as validated: the data the `tls` feature reads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the node certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Issued here from a region intermediate.
    Issue {
        /// The intermediate's certificate.
        intermediate_cert: PathBuf,
        /// The intermediate's key (a systemd credential).
        intermediate_key: PathBuf,
        /// Lifetime of node certificates.
        validity: Duration,
    },
    /// Kept by the operator's PKI; natsmeshd only reads and checks it.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
}

/// TLS as configured for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where the certificate comes from.
    pub source: Source,
    /// Trusted roots (several during a CA rotation).
    pub ca_file: PathBuf,
    /// The certificate file the broker reads.
    pub cert_file: PathBuf,
    /// The key file the broker reads.
    pub key_file: PathBuf,
    /// The client-facing certificate, when it is not the node's (its chain
    /// is trusted for the HTTPS monitoring probe).
    pub client_cert_file: Option<PathBuf>,
    /// Monitoring over HTTPS.
    pub monitoring: bool,
    /// Mode `files`: how often the files are read again for a new
    /// certificate.
    pub files_check_every: Duration,
    /// Trust for routes (mode `issue`): the region's intermediates only, so
    /// a node of another region (same root) cannot join this region's
    /// cluster. Written from the intermediate file.
    pub region_ca_file: Option<PathBuf>,
    /// The names the certificate must cover.
    pub names: NodeNames,
    /// Files the operator keeps that the broker reads, with the copy in the
    /// state directory it reads instead when it runs as its own user
    /// (`tls.mode = "files"`'s pair, the client pair): natsmeshd reads the
    /// originals, the broker cannot. Empty otherwise.
    pub broker_copies: Vec<(PathBuf, PathBuf)>,
}

/// What a node certificate must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    /// Subject common name (the server name).
    pub common_name: String,
    /// DNS names.
    pub dns: Vec<String>,
    /// Addresses peers dial (advertised, route) and loopback: always in
    /// the certificate.
    pub ips: Vec<IpAddr>,
    /// Addresses it listens on that peers and clients reach by a DNS name
    /// the certificate carries: in it only where the issuer permits them
    /// (see [`NodeNames::within`]).
    pub by_name: Vec<IpAddr>,
}
