//! The node's own series beside the supervisor's: its certificate, its
//! place in DNS and the load balancer, discovery, the gateways it should
//! have, the clock, and the providers' APIs answering.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{counter, gauge};
use crate::discovery::Health;
use crate::health;
use crate::provider::rest::{self, ErrorKey};

/// What a scrape reads beside the status.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Discovery, when it follows DNS.
    pub discovery: Option<DiscoveryFigures>,
    /// How many other regions this node should have gateways to.
    pub gateways_expected: Option<u64>,
    /// Failed provider API calls so far.
    pub api_errors: Vec<(ErrorKey, u64)>,
}

/// A copy of [`Health`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscoveryFigures {
    /// When a lookup last answered (Unix milliseconds).
    pub last_ok_unix_ms: u64,
    /// Lookups that failed.
    pub failures: u64,
    /// Routes in the last good answer.
    pub routes: u64,
    /// Regions in the last good TXT answer.
    pub regions: u64,
}

impl Figures {
    /// Read now.
    pub fn now(discovery: Option<&Health>, gateways_configured: Option<u64>) -> Self {
        let discovery = discovery.map(|h| DiscoveryFigures {
            last_ok_unix_ms: h.last_ok_unix_ms.load(Ordering::Relaxed),
            failures: h.failures.load(Ordering::Relaxed),
            routes: h.routes.load(Ordering::Relaxed),
            regions: h.regions.load(Ordering::Relaxed),
        });
        // Regions found in DNS win over the ones the gateway block was
        // rendered with: a region added later joins without a restart.
        let gateways_expected = gateways_configured.map(|configured| {
            discovery
                .filter(|d| d.regions > 0)
                .map_or(configured, |d| d.regions - 1)
        });
        Self {
            discovery,
            gateways_expected,
            api_errors: rest::errors(),
        }
    }
}

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// Per-stream series for the streams this server leads (so that a sum
/// over the nodes counts each stream once): messages, bytes, consumers,
/// and replicas the leader sees behind.
pub fn streams(
    e: &mut DescriptorEncoder,
    jsz: &crate::fleet::view::Jsz,
    varz: Option<&natsmesh_broker::monitor::Varz>,
) -> Result<(), std::fmt::Error> {
    use crate::fleet::view::StreamDetail;
    let me = varz.and_then(|v| v.server_name.as_deref()).unwrap_or("");
    let led: Vec<(&str, &StreamDetail)> = jsz
        .account_details
        .iter()
        .flat_map(|a| a.stream_detail.iter().map(move |s| (a.name.as_str(), s)))
        // A stream without a group (no cluster) is this server's alone.
        .filter(|(_, s)| {
            s.cluster
                .as_ref()
                .is_none_or(|c| c.leader == me || c.leader.is_empty())
        })
        .collect();
    type Value = fn(&StreamDetail) -> u64;
    let families: [(&str, &str, Value); 4] = [
        ("natsmesh_stream_messages", "Messages in the stream", |s| {
            s.state.messages
        }),
        ("natsmesh_stream_bytes", "Bytes in the stream", |s| {
            s.state.bytes
        }),
        (
            "natsmesh_stream_consumers",
            "Consumers of the stream",
            |s| s.state.consumer_count,
        ),
        (
            "natsmesh_stream_replicas_behind",
            "Replicas the stream's leader does not see current",
            |s| {
                s.cluster.as_ref().map_or(0, |c| {
                    c.replicas.iter().filter(|r| !r.current).count() as u64
                })
            },
        ),
    ];
    for (name, help, value) in families {
        let mut m = e.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        for (account, stream) in &led {
            let v = i64::try_from(value(stream)).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(
                m.encode_family(&[("account", *account), ("stream", stream.name.as_str())])?,
            )?;
        }
    }
    Ok(())
}

/// Encodes the node's series.
pub fn encode(
    e: &mut DescriptorEncoder,
    s: &health::Health,
    f: &Figures,
) -> Result<(), std::fmt::Error> {
    // Whole seconds, as the status gives them.
    let secs = |t| (crate::unix_ms(t) / 1000) as f64;
    if let Some(cert) = &s.certificate {
        gauge(
            e,
            "natsmesh_certificate_expiry_timestamp_seconds",
            "When the node certificate in use expires",
            secs(cert.not_after),
        )?;
        if let Some(t) = cert.intermediate_not_after {
            gauge(
                e,
                "natsmesh_intermediate_expiry_timestamp_seconds",
                "When the region's intermediate (the node certificate's issuer) expires",
                secs(t),
            )?;
        }
        if let Some(t) = cert.root_not_after {
            gauge(
                e,
                "natsmesh_root_expiry_timestamp_seconds",
                "When the earliest-expiring trusted root expires",
                secs(t),
            )?;
        }
        gauge(
            e,
            "natsmesh_certificate_renewal_failing",
            "1 while renewing the node certificate fails (the current one stays)",
            flag(s.certificate_failing.is_some()),
        )?;
    }
    gauge(
        e,
        "natsmesh_degraded",
        "1 while serving but not where it should be (balancer unreadable or set up wrong, DNS publication failing)",
        flag(!s.degraded_why().is_empty()),
    )?;
    if let Some(up) = s.dns.as_ref().map(|a| a.up) {
        gauge(
            e,
            "natsmesh_dns_published",
            "1 while this node's DNS records are (or may be) published",
            flag(up),
        )?;
    }
    if let Some(up) = s.load_balancer.as_ref().and_then(|a| a.member) {
        gauge(
            e,
            "natsmesh_load_balancer_registered",
            "1 while the provider's load balancer lists this node",
            flag(up),
        )?;
    }
    if let Some(d) = f.discovery {
        gauge(
            e,
            "natsmesh_discovery_last_success_timestamp_seconds",
            "When a DNS lookup of the region's peers last answered (0: not yet)",
            d.last_ok_unix_ms as f64 / 1000.0,
        )?;
        counter(
            e,
            "natsmesh_discovery_lookup_failures",
            "DNS lookups that gave nothing usable (the last good peers stay)",
            d.failures,
        )?;
        gauge(
            e,
            "natsmesh_discovery_routes",
            "Routes of the region in the last good answer, this node's included",
            d.routes as f64,
        )?;
    }
    if let Some(n) = f.gateways_expected {
        gauge(
            e,
            "natsmesh_gateway_regions_expected",
            "Other regions this node should have a gateway to",
            n as f64,
        )?;
    }
    // The supervisor reads systemd-timesyncd's verdict with every probe.
    if let Some(synced) = s.clock_synchronized {
        gauge(
            e,
            "natsmesh_clock_synchronized",
            "1 while systemd-timesyncd reports the clock synchronised",
            flag(synced),
        )?;
    }
    let c = ConstCounter::new(0u64);
    let mut m = e.encode_descriptor(
        "natsmesh_provider_api_errors",
        "Provider API calls without the expected answer, by use, provider and HTTP status",
        None,
        c.metric_type(),
    )?;
    for ((purpose, provider, status), n) in &f.api_errors {
        let provider = provider.to_string();
        ConstCounter::new(*n).encode(m.encode_family(&[
            ("purpose", purpose.as_str()),
            ("provider", provider.as_str()),
            ("status", status.as_str()),
        ])?)?;
    }
    Ok(())
}
