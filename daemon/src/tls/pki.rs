//! Reading and checking certificates and keys: PEM, X.509 facts, whether a
//! key belongs to a certificate, and whether a chain verifies (with name
//! constraints) — the checks natsmeshd makes before a file is used.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pki_types::pem::PemObject as _;
use pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

/// Why a certificate or key is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// Not PEM, or no certificate / key in it.
    #[error("{what}: {why}")]
    Pem {
        /// The file or thing read.
        what: String,
        /// Why.
        why: String,
    },
    /// The chain does not verify against the trusted roots.
    #[error("{what} does not verify against the trusted roots: {why}")]
    Chain {
        /// The certificate.
        what: String,
        /// webpki's reason.
        why: String,
    },
    /// Key and certificate do not belong together.
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
    },
}

/// What natsmeshd needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Subject, as text.
    pub subject: String,
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
    /// Basic constraints CA.
    pub is_ca: bool,
    /// Issuer equals subject (a root).
    pub self_signed: bool,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// The subject public key (raw bits), to match a key.
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Whether `now` is inside the validity period.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            what: what.to_owned(),
            why: format!("not valid PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_owned(),
            why: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Reads the facts of one certificate.
pub fn inspect(what: &str, der: &CertificateDer<'_>) -> Result<CertInfo, PkiError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Pem {
        what: what.to_owned(),
        why: format!("not an X.509 certificate ({e})"),
    })?;
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        serial: cert.raw_serial_as_string().replace(':', "").to_lowercase(),
        subject: cert.subject().to_string(),
        not_before: system_time(cert.validity().not_before),
        not_after: system_time(cert.validity().not_after),
        is_ca: cert.is_ca(),
        self_signed: cert.subject() == cert.issuer(),
        dns_names,
        ips,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// What a CA certificate's name constraints permit (an absent list means
/// that kind of name is not constrained).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permitted {
    /// Permitted DNS subtrees (each name and everything below it).
    pub dns: Option<Vec<String>>,
    /// Permitted address ranges (address, prefix length).
    pub ips: Option<Vec<(IpAddr, u8)>>,
}

impl Permitted {
    /// Whether `name` (a DNS name) lies in a permitted subtree.
    pub fn dns_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.dns.as_ref().is_none_or(|subtrees| {
            subtrees.iter().any(|t| {
                let t = t.trim_start_matches('.').to_ascii_lowercase();
                name == t || name.ends_with(&format!(".{t}"))
            })
        })
    }

    /// Whether `ip` lies in a permitted range.
    pub fn ip(&self, ip: IpAddr) -> bool {
        self.ips
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|(net, len)| in_range(ip, *net, *len)))
    }

    /// The permitted names and ranges, for a message.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = match &self.dns {
            None => vec!["any DNS name".into()],
            Some(d) => d.iter().map(|t| format!("{t} and below")).collect(),
        };
        match &self.ips {
            None => parts.push("any address".into()),
            Some(r) => parts.extend(r.iter().map(|(a, l)| format!("{a}/{l}"))),
        }
        parts.join(", ")
    }
}

fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The name constraints of a CA certificate.
pub fn permitted(what: &str, der: &CertificateDer<'_>) -> Result<Permitted, PkiError> {
    let bad = |why: String| PkiError::Pem {
        what: what.to_owned(),
        why,
    };
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let Some(nc) = cert
        .name_constraints()
        .map_err(|e| bad(format!("unreadable name constraints ({e})")))?
    else {
        return Ok(Permitted::default());
    };
    let Some(subtrees) = &nc.value.permitted_subtrees else {
        return Ok(Permitted::default());
    };
    let mut dns = None::<Vec<String>>;
    let mut ips = None::<Vec<(IpAddr, u8)>>;
    for t in subtrees {
        match &t.base {
            GeneralName::DNSName(d) => dns.get_or_insert_with(Vec::new).push((*d).to_owned()),
            GeneralName::IPAddress(b) => {
                let range = match b.len() {
                    8 => <[u8; 4]>::try_from(&b[..4])
                        .ok()
                        .zip(<[u8; 4]>::try_from(&b[4..]).ok())
                        .map(|(a, m)| (IpAddr::from(a), u32::from_be_bytes(m).count_ones())),
                    32 => <[u8; 16]>::try_from(&b[..16])
                        .ok()
                        .zip(<[u8; 16]>::try_from(&b[16..]).ok())
                        .map(|(a, m)| (IpAddr::from(a), u128::from_be_bytes(m).count_ones())),
                    _ => None,
                };
                let (addr, len) =
                    range.ok_or_else(|| bad("a malformed address constraint".into()))?;
                ips.get_or_insert_with(Vec::new)
                    .push((addr, u8::try_from(len).unwrap_or(u8::MAX)));
            }
            _ => {}
        }
    }
    Ok(Permitted { dns, ips })
}

/// Whether the PEM private key belongs to the certificate.
pub fn key_matches(cert: &CertInfo, key_pem: &str) -> bool {
    rcgen::KeyPair::from_pem(key_pem)
        .is_ok_and(|k| k.public_key_raw() == cert.public_key.as_slice())
}

/// Verifies `chain` (leaf first, then intermediates) against `roots` at
/// `now` for both server and client use, and for each of `names`.
pub fn verify_chain(
    what: &str,
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: SystemTime,
    names: &[String],
) -> Result<(), PkiError> {
    let fail = |why: String| PkiError::Chain {
        what: what.to_owned(),
        why,
    };
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| fail("empty chain".into()))?;
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(fail("no usable trusted root".into()));
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| fail(format!("{e:?}")))?;
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let time = UnixTime::since_unix_epoch(secs);
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| fail(format!("{e:?}")))?;
    }
    for name in names {
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|e| fail(format!("{name}: {e}")))?;
        ee.verify_is_valid_for_subject_name(&server_name)
            .map_err(|e| fail(format!("not valid for {name}: {e:?}")))?;
    }
    Ok(())
}
