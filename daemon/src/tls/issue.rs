//! Making certificates with rcgen (ECDSA P-256): the offline root, a
//! region's intermediate with name constraints, and node certificates.
//!
//! The root stays off the nodes. A region's intermediate is what a node
//! holds: name constraints limit it to its own region's names
//! (`<region>.<domain>` and below), the shared client names given
//! explicitly, and the address ranges given (private ranges and loopback by
//! default), so a compromised node cannot mint certificates for another
//! region or for other names. Node
//! certificates are short-lived, backdated a few minutes for clock skew,
//! and good for both server and client use (routes and gateways are mutual
//! TLS with one certificate).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

pub use crate::config::settings::tls::NodeNames;

/// How far certificates are backdated.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate (for a node: leaf then intermediate).
    pub cert_pem: String,
    /// Private key (PKCS#8).
    pub key_pem: String,
}

/// Why issuing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot issue {what}: {why}")]
pub struct IssueError {
    /// What was being issued.
    pub what: String,
    /// Why.
    pub why: String,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> IssueError + '_ {
    move |e| IssueError {
        what: what.to_owned(),
        why: e.to_string(),
    }
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    params.not_before = odt(now - BACKDATE);
    params.not_after = odt(now + lifetime);
}

/// The private ranges (and loopback) a region's intermediate permits by
/// default: RFC 1918, RFC 6598 shared space, IPv6 unique-local, loopback.
pub fn default_permitted_ranges() -> Vec<(IpAddr, u8)> {
    vec![
        ([10, 0, 0, 0].into(), 8),
        ([172, 16, 0, 0].into(), 12),
        ([192, 168, 0, 0].into(), 16),
        ([100, 64, 0, 0].into(), 10),
        ([127, 0, 0, 0].into(), 8),
        ("fc00::".parse().unwrap_or(IpAddr::from([0u8; 16])), 7),
        (IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
    ]
}

/// A self-signed root CA.
pub fn root(common_name: &str, now: SystemTime, lifetime: Duration) -> Result<Issued, IssueError> {
    let e = err("the root CA");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(&e)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "natsmesh");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, now, lifetime);
    let cert = p.self_signed(&key).map_err(&e)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A region's intermediate, signed by the root, limited to its own
/// region's names (`<region>.<domain>` and below), the shared client
/// `names` given explicitly, and `ranges`: what fra1's intermediate signs
/// for `nyc3.<domain>` no verifier accepts.
pub fn intermediate(
    root: &Issued,
    region: &str,
    domain: &str,
    names: &[String],
    ranges: &[(IpAddr, u8)],
    now: SystemTime,
    lifetime: Duration,
) -> Result<Issued, IssueError> {
    let e = err("the region intermediate");
    let root_key = KeyPair::from_pem(&root.key_pem).map_err(&e)?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, root_key).map_err(&e)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(&e)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("natsmesh {region} intermediate"),
    );
    dn.push(DnType::OrganizationName, "natsmesh");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut permitted = vec![GeneralSubtree::DnsName(format!(
        "{region}.{}",
        domain.trim_end_matches('.')
    ))];
    permitted.extend(
        names
            .iter()
            .map(|n| GeneralSubtree::DnsName(n.trim_end_matches('.').to_owned())),
    );
    permitted.extend(ranges.iter().map(|(addr, prefix)| {
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*addr, *prefix))
    }));
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: vec![],
    });
    validity(&mut p, now, lifetime);
    let cert = p.signed_by(&key, &issuer).map_err(&e)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl NodeNames {
    /// The names to issue under an issuer that permits `ip`: every
    /// required one, and the reachable-by-name addresses it permits (the
    /// others are returned, for a warning).
    pub fn within(&self, permits: impl Fn(IpAddr) -> bool) -> (NodeNames, Vec<IpAddr>) {
        let (kept, left): (Vec<IpAddr>, Vec<IpAddr>) =
            self.by_name.iter().partition(|ip| permits(**ip));
        let mut ips = self.ips.clone();
        ips.extend(kept);
        ips.sort();
        ips.dedup();
        (
            NodeNames {
                common_name: self.common_name.clone(),
                dns: self.dns.clone(),
                ips,
                by_name: Vec::new(),
            },
            left,
        )
    }
}

/// A node certificate signed by `issuer` (an intermediate, or a root with a
/// loud warning elsewhere); the PEM holds the leaf, then the issuer.
pub fn node(
    issuer: &Issued,
    names: &NodeNames,
    now: SystemTime,
    lifetime: Duration,
) -> Result<Issued, IssueError> {
    let e = err("the node certificate");
    let ca_key = KeyPair::from_pem(&issuer.key_pem).map_err(&e)?;
    let ca = Issuer::from_ca_cert_pem(&issuer.cert_pem, ca_key).map_err(&e)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(&e)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.common_name.as_str());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = Vec::new();
    for d in &names.dns {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(&e)?));
    }
    sans.extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, now, lifetime);
    let cert = p.signed_by(&key, &ca).map_err(&e)?;
    // The issuer's own certificate (first PEM block) completes the chain.
    let issuer_cert = issuer
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap_or_default()
        .trim();
    Ok(Issued {
        cert_pem: format!("{}{issuer_cert}\n", cert.pem()),
        key_pem: key.serialize_pem(),
    })
}
