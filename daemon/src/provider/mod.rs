//! Cloud providers, one module per cloud (`digitalocean/`, `linode/`,
//! `cloudflare/`), each holding what natsmesh asks of that cloud: who this
//! machine is ([`Metadata`]), its load balancer ([`LoadBalancer`]) and its
//! DNS zones ([`DnsZone`]). The features (`balancer`, `publish`, config's
//! identity) see only the traits; which cloud answers is chosen here, by
//! one `match` per capability on the configured provider
//! ([`cloud_identity`], [`load_balancer`], [`dns_zone`]). Base URLs are parameters so tests
//! point them at fakes. HTTP and REST plumbing shared by the clouds stays
//! here (`http`, `rest`), as do the shapes the traits speak in (`lb`,
//! `dns`).

pub mod cloudflare;
pub mod digitalocean;
pub mod dns;
pub mod http;
pub mod identity;
pub mod lb;
pub mod linode;
pub mod rest;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::identity::Identity;
use crate::config::schema::{Provider, RawMetadata};
use crate::config::settings::balancer::{Backend, LbProvider, LbSettings};
use crate::config::settings::publish::Provider as DnsProvider;
use crate::config::settings::record::Record;
use dns::{Present, PublishError};
use lb::{LbError, Setup};
use rest::ClientError;

/// Why the metadata service did not say who we are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// No connection or no answer in time: worth retrying.
    #[error("metadata service {endpoint} unreachable: {reason}")]
    Unreachable {
        /// URL asked.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// An HTTP error status.
    #[error("metadata service {endpoint} answered HTTP {status}: {body}")]
    Status {
        /// URL asked.
        endpoint: String,
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// An answer that is not what the provider documents.
    #[error("metadata service {endpoint}: {field}: {reason}")]
    Invalid {
        /// URL asked.
        endpoint: String,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Whether `a` may be a node's private address: RFC 1918 or the shared
/// (CGNAT) range 100.64.0.0/10, which a provider's VPC may use. Never the
/// unspecified address (`bind = "private"` would listen everywhere), a
/// multicast one or a public one. Loopback is accepted: a listener there
/// exposes nothing, and test fleets that must stay on one machine give
/// each node a 127.0.5.x "private" address.
pub fn is_private_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, ..] = a.octets();
    a.is_private() || (o0 == 100 && (o1 & 0xc0) == 64) || a.is_loopback()
}

/// Whether `a` may be a node's public IPv4 address: global unicast (none of
/// the private, shared, loopback, link-local, "this network" 0/8,
/// multicast, reserved 240/4 or broadcast ranges). The
/// documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)
/// are allowed on purpose: the fakes and tests use them as public addresses,
/// and no real provider hands them out.
pub fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o0, ..] = a.octets();
    !(is_private_v4(a)
        || o0 == 0
        || a.is_loopback()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || o0 >= 240)
}

/// Whether `a` may be a node's public IPv6 address: global unicast (not
/// unspecified, loopback, multicast, link-local fe80::/10, unique-local
/// fc00::/7, nor an IPv4-mapped address). 2001:db8::/32 (documentation) is
/// allowed, as for IPv4.
pub fn is_public_v6(a: Ipv6Addr) -> bool {
    let seg0 = a.segments()[0];
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (seg0 & 0xffc0) == 0xfe80
        || (seg0 & 0xfe00) == 0xfc00
        || a.to_ipv4_mapped().is_some())
}

impl Identity {
    /// Checks each address for its role; `fields` names the private IPv4,
    /// public IPv4 and public IPv6 fields as the provider's answer does.
    pub(crate) fn checked(self, endpoint: &str, fields: [&str; 3]) -> Result<Self, MetadataError> {
        let provider = match self.provider {
            Provider::DigitalOcean => "DigitalOcean",
            Provider::Linode => "Linode",
            Provider::None => "the provider",
        };
        let refuse = |field: &str, value: String, want: &str| MetadataError::Invalid {
            endpoint: endpoint.to_owned(),
            field: field.to_owned(),
            reason: format!("{provider} metadata gave {value}, which is not {want}"),
        };
        if let Some(a) = self.private_ipv4.filter(|a| !is_private_v4(*a)) {
            return Err(refuse(
                fields[0],
                a.to_string(),
                "a private address (10/8, 172.16/12, 192.168/16, 100.64/10 or loopback)",
            ));
        }
        if let Some(a) = self.public_ipv4.filter(|a| !is_public_v4(*a)) {
            return Err(refuse(fields[1], a.to_string(), "a public unicast address"));
        }
        if let Some(a) = self.public_ipv6.filter(|a| !is_public_v6(*a)) {
            return Err(refuse(
                fields[2],
                a.to_string(),
                "a global unicast IPv6 address",
            ));
        }
        Ok(self)
    }
}

impl MetadataError {
    /// Whether asking again may help: no answer, 5xx or 429. A wrong
    /// answer or a 4xx will not change by itself.
    pub fn retryable(&self) -> bool {
        match self {
            MetadataError::Unreachable { .. } => true,
            MetadataError::Status { status, .. } => *status >= 500 || *status == 429,
            MetadataError::Invalid { .. } => false,
        }
    }
}

/// A metadata service.
pub trait Metadata {
    /// Asks once.
    fn identity(&self) -> impl Future<Output = Result<Identity, MetadataError>>;
}

/// Asks the configured cloud's metadata service who this machine is,
/// retrying for at most `retry_for`; `None` without a cloud (`[node]`
/// says it).
pub async fn cloud_identity(
    provider: Provider,
    m: &RawMetadata,
    retry_for: Duration,
) -> Option<Result<Identity, MetadataError>> {
    let http = http::client(m.timeout.0);
    Some(match provider {
        Provider::None => return None,
        Provider::DigitalOcean => {
            identity_with_retry(&digitalocean::DoMetadata::new(&m.url, http), retry_for).await
        }
        Provider::Linode => {
            let mut bases = vec![m.url.clone()];
            bases.extend(m.ipv6_url.clone());
            identity_with_retry(&linode::LinodeMetadata::new(&bases, http), retry_for).await
        }
    })
}

/// A cloud load balancer, seen from this machine: its set-up, and this
/// machine's membership in it. Each call gets the API token, read by the
/// caller at each pass so a rotated credential takes effect.
#[async_trait::async_trait]
pub trait LoadBalancer: Send + Sync {
    /// Reads the balancer: its set-up and whether this machine is in it.
    async fn setup(&self, token: &str) -> Result<Setup, LbError>;
    /// Puts this machine in (idempotent).
    async fn join(&self, token: &str, setup: &Setup) -> Result<(), LbError>;
    /// Takes this machine out of rotation (idempotent).
    async fn leave(&self, token: &str, setup: &Setup) -> Result<(), LbError>;
    /// After the drain delay on stop: removes what leaving left (a Linode
    /// node drained, not deleted). Nothing by default.
    async fn finish_leaving(&self, _token: &str) -> Result<(), LbError> {
        Ok(())
    }
}

/// Why balancer membership cannot even start.
#[derive(Debug, thiserror::Error)]
pub enum LbSetupError {
    /// DigitalOcean names droplets by number.
    #[error("droplet id {0:?} is not a number")]
    DropletId(String),
    /// A private-address backend without one.
    #[error("a NodeBalancer node needs this Linode's private IPv4 address")]
    NoPrivateIp,
    /// No HTTPS client.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The configured cloud's load balancer (nothing is contacted yet).
pub fn load_balancer(s: &LbSettings) -> Result<Box<dyn LoadBalancer>, LbSetupError> {
    Ok(match s.provider {
        LbProvider::DigitalOcean => {
            let id: u64 = s
                .instance_id
                .parse()
                .map_err(|_| LbSetupError::DropletId(s.instance_id.clone()))?;
            Box::new(digitalocean::balancer::DigitalOcean::new(
                &s.url, &s.id, id,
            )?)
        }
        LbProvider::Linode => {
            let reach = match s.backend {
                Backend::Private => {
                    linode::balancer::Reach::Private(s.private_ip.ok_or(LbSetupError::NoPrivateIp)?)
                }
                Backend::Vpc { subnet_id } => linode::balancer::Reach::Vpc {
                    linode_id: s.instance_id.clone(),
                    subnet_id,
                    client_bind: s.client_bind,
                },
            };
            Box::new(linode::balancer::Linode::new(
                &s.url,
                &s.id,
                reach,
                s.client_port,
                &s.server_name,
            )?)
        }
    })
}

/// One DNS zone a node keeps its own records in: a cloud's DNS API, or
/// an RFC 2136 server (not a cloud, so it lives with the publish feature
/// and is chosen there).
#[async_trait::async_trait]
pub trait DnsZone: Send {
    /// The records of natsmesh's types at `names`. Credentials are read
    /// here, at the start of each pass, so a rotated one takes effect.
    async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError>;
    /// Adds one record.
    async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError>;
    /// Removes exactly this record (by id where the provider has ids).
    async fn remove(&mut self, present: &Present) -> Result<(), PublishError>;
}

/// The configured cloud's DNS API for one zone (nothing is read or
/// contacted until the first call).
pub fn dns_zone(
    provider: DnsProvider,
    base: &str,
    token_file: PathBuf,
    zone: &str,
) -> Result<Box<dyn DnsZone>, PublishError> {
    let api = dns::Api::new(provider, base, token_file, zone)?;
    Ok(match provider {
        DnsProvider::DigitalOcean => Box::new(digitalocean::dns::Domains(api)),
        DnsProvider::Linode => Box::new(linode::dns::Domains(api)),
        DnsProvider::Cloudflare => Box::new(cloudflare::dns::Dns(api)),
    })
}

/// How the metadata service is asked again while it is not there yet:
/// from 250 ms doubling to 5 s (it comes up with the machine, so soon).
pub const METADATA_BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_secs(5),
    hint_max: Duration::from_secs(5),
    jitter: Duration::ZERO,
};

/// Asks `source` until it answers, a non-retryable error, or `retry_for`
/// has passed (waiting [`METADATA_BACKOFF`] between attempts).
pub async fn identity_with_retry(
    source: &impl Metadata,
    retry_for: Duration,
) -> Result<Identity, MetadataError> {
    let deadline = Instant::now() + retry_for;
    let mut failures = 0u32;
    loop {
        match source.identity().await {
            Ok(id) => return Ok(id),
            Err(e) if e.retryable() => {
                failures = failures.saturating_add(1);
                let delay = METADATA_BACKOFF.wait(failures, None);
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in = ?delay, "metadata not available yet");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks a provider region or host name field: non-empty, printable, short.
pub(crate) fn text_field(
    endpoint: &str,
    field: &str,
    value: &str,
) -> Result<String, MetadataError> {
    let v = value.trim();
    if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(MetadataError::Invalid {
            endpoint: endpoint.to_owned(),
            field: field.to_owned(),
            reason: format!("{value:?} is not a valid value"),
        });
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_roles() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().expect("v4");
        for a in [
            "10.132.0.5",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.139.7",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.5.21",
        ] {
            assert!(is_private_v4(v4(a)), "{a} is private");
            assert!(!is_public_v4(v4(a)), "{a} is not public");
        }
        for a in [
            "0.0.0.0",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.169.254",
        ] {
            assert!(!is_private_v4(v4(a)), "{a} is not private");
        }
        for a in [
            "104.131.20.105",
            "8.8.8.8",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.5",
        ] {
            assert!(is_public_v4(v4(a)), "{a} is public");
        }
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public_v4(v4(a)), "{a} is not public");
        }
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
        for a in [
            "2604:a880:1:20::2e7:f001",
            "2600:3c03::f03c:91ff:fe24:3a2f",
            "2001:db8::1",
        ] {
            assert!(is_public_v6(v6(a)), "{a} is public");
        }
        for a in [
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public_v6(v6(a)), "{a} is not public");
        }
    }

    fn id(provider: Provider, region: &str, instance: &str, host: &str) -> Identity {
        Identity {
            provider,
            instance_id: instance.into(),
            hostname: host.into(),
            provider_region: region.into(),
            private_ipv4: None,
            public_ipv4: None,
            public_ipv6: None,
            tags: vec![],
        }
    }

    #[test]
    fn server_names() {
        assert_eq!(
            id(Provider::DigitalOcean, "nyc3", "2756294", "x").server_name(),
            "digitalocean-nyc3-2756294"
        );
        assert_eq!(
            id(Provider::Linode, "us-east", "532754976", "x").server_name(),
            "linode-us-east-532754976"
        );
        assert_eq!(id(Provider::None, "", "", "web 1").server_name(), "web-1");
    }

    fn lb(provider: LbProvider) -> LbSettings {
        LbSettings {
            provider,
            id: "lb".into(),
            url: "http://127.0.0.1:1".into(),
            token_file: "/nonexistent".into(),
            instance_id: "42".into(),
            private_ip: None,
            backend: Backend::Private,
            client_bind: Ipv4Addr::new(10, 0, 0, 5).into(),
            server_name: "n1".into(),
            region: "fra1".into(),
            client_port: 4222,
            monitoring_port: Some(8222),
            ready: "10.0.0.5:8223".parse().expect("addr"),
            dwell: Duration::from_secs(5),
            stop_budget: None,
        }
    }

    #[test]
    fn the_configured_cloud_gets_its_balancer_or_says_what_it_lacks() {
        assert!(load_balancer(&lb(LbProvider::DigitalOcean)).is_ok());
        let named = LbSettings {
            instance_id: "web-1".into(),
            ..lb(LbProvider::DigitalOcean)
        };
        assert!(matches!(
            load_balancer(&named).err(),
            Some(LbSetupError::DropletId(id)) if id == "web-1"
        ));
        // A Linode node points at the private address: none, no balancer.
        assert!(matches!(
            load_balancer(&lb(LbProvider::Linode)).err(),
            Some(LbSetupError::NoPrivateIp)
        ));
        let private = LbSettings {
            private_ip: Some(Ipv4Addr::new(192, 168, 130, 5)),
            ..lb(LbProvider::Linode)
        };
        assert!(load_balancer(&private).is_ok());
        let vpc = LbSettings {
            backend: Backend::Vpc { subnet_id: None },
            ..lb(LbProvider::Linode)
        };
        assert!(load_balancer(&vpc).is_ok());
    }

    #[tokio::test]
    async fn the_configured_cloud_is_asked_who_this_machine_is() {
        let m = RawMetadata {
            // Nothing listens on port 1: the answer names who was asked.
            url: "http://127.0.0.1:1".into(),
            ipv6_url: None,
            timeout: crate::config::units::Span(Duration::from_secs(1)),
            retry_for: crate::config::units::Span(Duration::ZERO),
        };
        assert!(
            cloud_identity(Provider::None, &m, Duration::ZERO)
                .await
                .is_none()
        );
        for (provider, path) in [
            (Provider::DigitalOcean, "/metadata/v1"),
            (Provider::Linode, "/v1/token"),
        ] {
            match cloud_identity(provider, &m, Duration::ZERO).await {
                Some(Err(MetadataError::Unreachable { endpoint, .. })) => {
                    assert!(endpoint.contains(path), "{provider:?} asked {endpoint}");
                }
                other => panic!("{provider:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_is_worth_retrying() {
        let st = |status| MetadataError::Status {
            endpoint: "e".into(),
            status,
            body: String::new(),
        };
        assert!(st(500).retryable() && st(503).retryable() && st(429).retryable());
        assert!(!st(404).retryable() && !st(401).retryable());
        assert!(
            MetadataError::Unreachable {
                endpoint: "e".into(),
                reason: "r".into()
            }
            .retryable()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn metadata_is_asked_again_on_the_shared_backoff_until_the_deadline() {
        struct Down(std::sync::Mutex<Vec<Duration>>, Instant);
        impl Metadata for Down {
            async fn identity(&self) -> Result<Identity, MetadataError> {
                if let Ok(mut asked) = self.0.lock() {
                    asked.push(self.1.elapsed());
                }
                Err(MetadataError::Unreachable {
                    endpoint: "e".into(),
                    reason: "down".into(),
                })
            }
        }
        let down = Down(std::sync::Mutex::default(), Instant::now());
        let res = identity_with_retry(&down, Duration::from_secs(4)).await;
        assert!(matches!(res, Err(MetadataError::Unreachable { .. })));
        let asked: Vec<u128> = down
            .0
            .lock()
            .map(|a| a.iter().map(Duration::as_millis).collect())
            .unwrap_or_default();
        // 250 ms doubling; the 4 s wait after the fifth would pass the
        // deadline, so the fifth answer is the last.
        assert_eq!(asked, [0, 250, 750, 1750, 3750]);
    }
}
