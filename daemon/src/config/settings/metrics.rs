//! `[metrics]` as validated: the data the `metrics` feature reads.

use std::net::SocketAddr;
use std::time::Duration;

/// Where `/metrics` listens and how often the broker is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The listener.
    pub listen: SocketAddr,
    /// The broker's own pace.
    pub scrape_every: Duration,
    /// Per-stream series (opt-in).
    pub streams: bool,
    /// HTTPS, with the node certificate.
    pub tls: Option<MetricsTls>,
}

/// The certificate `/metrics` is served with over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsTls {
    /// The node certificate chain (renewed in place: read per connection).
    pub cert_file: std::path::PathBuf,
    /// Its key.
    pub key_file: std::path::PathBuf,
}
