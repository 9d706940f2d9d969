//! Trust: this node's certificate, issued from its region's intermediate
//! (mode `issue`) or taken from the operator's PKI (mode `files`), checked
//! before use, written atomically, renewed before it expires.
//!
//! - [`issue`]: making roots, intermediates and node certificates;
//! - [`pki`]: reading and verifying certificates and keys;
//! - [`probe`]: asking a running broker which certificate it serves.
//!
//! Nothing here logs a key. A file that fails a check is never used: the
//! last good certificate stays.

pub mod issue;
pub mod pki;
pub mod probe;

use std::path::Path;
use std::time::{Duration, SystemTime};

use pki_types::CertificateDer;

pub use crate::config::settings::tls::{Source, TlsSettings};
use crate::files::PLAIN;
use issue::{Issued, NodeNames};
use pki::{CertInfo, PkiError};

/// How far the clock may be off before natsmeshd says so.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(300);

/// Why TLS material is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        why: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {why}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        why: String,
    },
    /// A certificate or key problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Issuing failed.
    #[error(transparent)]
    Issue(#[from] issue::IssueError),
    /// The node would need a certificate for names its region's
    /// intermediate may not issue.
    #[error("{intermediate} may not issue {names} (it permits {permitted}): {fix}")]
    NotPermitted {
        /// The intermediate's file.
        intermediate: String,
        /// The names and addresses outside its constraints.
        names: String,
        /// What it permits.
        permitted: String,
        /// What to do.
        fix: String,
    },
    /// A certificate outside its validity period.
    #[error(
        "{what} is not valid now: valid from {from} to {until} (check the clock if this is unexpected)"
    )]
    Expired {
        /// What.
        what: String,
        /// Not before.
        from: String,
        /// Not after.
        until: String,
    },
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The certificate a node uses now, and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The leaf.
    pub info: CertInfo,
    /// When to renew (mode `issue`) or look again (mode `files`).
    pub renew_at: SystemTime,
    /// Warnings to repeat (a root used as issuer, a clock far off).
    pub warnings: Vec<String>,
    /// When the certificate's issuer (the region's intermediate) expires,
    /// where known: node certificates can never outlive it.
    pub issuer_not_after: Option<SystemTime>,
    /// When the earliest-expiring trusted root expires (after a rotation,
    /// drop the old root from `ca_file`, or it keeps this early).
    pub root_not_after: Option<SystemTime>,
}

/// The node certificate set in use: the files the broker loads and what is
/// known about the certificate in them. An input of the broker's
/// effective configuration ([`crate::prepare::effective`]) and, on its
/// watch channel, what status and metrics read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSet {
    /// The certificate (chain) file.
    pub cert_file: std::path::PathBuf,
    /// Its key.
    pub key_file: std::path::PathBuf,
    /// The certificate, its issuer's and the roots' expiry.
    pub current: Current,
}

impl CertSet {
    /// The set `settings` names, holding `current`.
    pub fn new(settings: &TlsSettings, current: Current) -> Self {
        Self {
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
            current,
        }
    }
}

/// The earliest expiry among the trusted roots.
fn earliest_root(settings: &TlsSettings) -> Option<SystemTime> {
    let roots = roots(settings).ok()?;
    roots
        .iter()
        .filter_map(|r| pki::inspect("a trusted root", r).ok())
        .map(|i| i.not_after)
        .min()
}

/// The issuer's expiry from a chain file (leaf first, then its issuer).
fn chain_issuer(path: &Path) -> Option<SystemTime> {
    let text = std::fs::read(path).ok()?;
    let chain = pki::certs_from_pem("the chain", &text).ok()?;
    chain
        .get(1)
        .and_then(|c| pki::inspect("the issuer", c).ok())
        .map(|i| i.not_after)
}

/// Loads the trusted roots.
pub fn roots(settings: &TlsSettings) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(&settings.ca_file)?;
    Ok(pki::certs_from_pem(
        &settings.ca_file.display().to_string(),
        text.as_bytes(),
    )?)
}

/// Checks a certificate/key pair on disk against the roots and names.
fn check_pair(
    settings: &TlsSettings,
    names: &NodeNames,
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<CertInfo, TlsError> {
    let what = cert_path.display().to_string();
    let chain = pki::certs_from_pem(&what, read(cert_path)?.as_bytes())?;
    let info = pki::inspect(&what, &chain[0])?;
    if !pki::key_matches(&info, &read(key_path)?) {
        return Err(PkiError::KeyMismatch {
            cert: what,
            key: key_path.display().to_string(),
        }
        .into());
    }
    if !info.valid_at(now) {
        return Err(TlsError::Expired {
            what,
            from: stamp(info.not_before),
            until: stamp(info.not_after),
        });
    }
    let names: Vec<String> = names
        .dns
        .iter()
        .cloned()
        .chain(names.ips.iter().map(ToString::to_string))
        .collect();
    pki::verify_chain(&what, &chain, &roots(settings)?, now, &names)?;
    Ok(info)
}

/// Renewal point: two thirds of the lifetime (counted from issuance, not
/// from the backdated start), minus up to a twelfth of it as jitter so a
/// region's nodes do not renew (and reload) together.
pub fn renew_point(info: &CertInfo, jitter: f64) -> SystemTime {
    let issued = (info.not_before + issue::BACKDATE).min(info.not_after);
    let life = info.not_after.duration_since(issued).unwrap_or_default();
    let two_thirds = life.mul_f64(2.0 / 3.0);
    let spread = life.mul_f64(jitter.clamp(0.0, 1.0) / 12.0);
    issued + two_thirds - spread
}

/// Makes sure a usable certificate is on disk: keeps a good one, issues a
/// new one when it is missing, broken, expiring or no longer covers this
/// node's names (mode `issue`), or refuses (mode `files`).
pub fn ensure(
    settings: &TlsSettings,
    now: SystemTime,
    force: bool,
) -> Result<(Current, bool), TlsError> {
    let done = ensure_pair(settings, now, force)?;
    copy_for_broker(settings)?;
    Ok(done)
}

/// Refreshes the broker's copies of the operator's files (see
/// [`TlsSettings::broker_copies`]) whose content changed; after the
/// originals were checked, so a broken pair is never handed over.
fn copy_for_broker(settings: &TlsSettings) -> Result<(), TlsError> {
    for (from, to) in &settings.broker_copies {
        let bytes = std::fs::read(from).map_err(|e| TlsError::Read {
            path: from.display().to_string(),
            why: e.to_string(),
        })?;
        if std::fs::read(to).is_ok_and(|old| old == bytes) {
            crate::broker_user::share_existing(to).map_err(|e| TlsError::Write {
                path: to.display().to_string(),
                why: e.to_string(),
            })?;
            continue;
        }
        if let Some(dir) = to.parent() {
            make_dir(dir)?;
        }
        crate::broker_user::write_readable(to, &bytes, crate::files::SECRET).map_err(|e| {
            TlsError::Write {
                path: to.display().to_string(),
                why: e.to_string(),
            }
        })?;
    }
    Ok(())
}

fn ensure_pair(
    settings: &TlsSettings,
    now: SystemTime,
    force: bool,
) -> Result<(Current, bool), TlsError> {
    match &settings.source {
        Source::Files { cert, key } => {
            // The operator's certificate need cover only what peers dial;
            // listeners reached by name may be left out of it.
            let info = check_pair(settings, &settings.names, cert, key, now)?;
            let renew_at = now + settings.files_check_every;
            Ok((
                Current {
                    info,
                    renew_at,
                    warnings: Vec::new(),
                    issuer_not_after: chain_issuer(cert),
                    root_not_after: earliest_root(settings),
                },
                false,
            ))
        }
        Source::Issue {
            intermediate_cert,
            intermediate_key,
            validity,
        } => {
            let issuer = Issued {
                cert_pem: read(intermediate_cert)?,
                key_pem: read(intermediate_key)?,
            };
            let what = intermediate_cert.display().to_string();
            let ca_chain = pki::certs_from_pem(&what, issuer.cert_pem.as_bytes())?;
            let ca = pki::inspect(&what, &ca_chain[0])?;
            if !pki::key_matches(&ca, &issuer.key_pem) {
                return Err(PkiError::KeyMismatch {
                    cert: what,
                    key: intermediate_key.display().to_string(),
                }
                .into());
            }
            let mut warnings = Vec::new();
            if ca.self_signed {
                warnings.push(format!(
                    "{what} is a ROOT CA: a node holding the root key can mint certificates for the whole supercluster. Keep the root offline and give each region's nodes an intermediate (`natsmeshd ca intermediate`)."
                ));
            }
            if now + CLOCK_TOLERANCE < ca.not_before {
                warnings.push(format!(
                    "the clock ({}) is before the intermediate's start ({}): is the clock right?",
                    stamp(now),
                    stamp(ca.not_before)
                ));
            }
            if !ca.valid_at(now) {
                return Err(TlsError::Expired {
                    what,
                    from: stamp(ca.not_before),
                    until: stamp(ca.not_after),
                });
            }
            let permitted = pki::permitted(&what, &ca_chain[0])?;
            // An intermediate that may name anything could speak for every
            // region (a root as issuer is warned about above instead).
            if !ca.self_signed && permitted.dns.is_none() {
                return Err(TlsError::NotPermitted {
                    intermediate: what,
                    names: "any name".into(),
                    permitted: "no DNS name constraints".into(),
                    fix: "a region's intermediate must be limited to its region's names; make one with `natsmeshd ca intermediate`".into(),
                });
            }
            let (names, by_name_only) = settings.names.within(|ip| permitted.ip(ip));
            if !by_name_only.is_empty() {
                warnings.push(format!(
                    "{} outside {what}'s address ranges: left out of the node certificate; peers and clients reach this node by name ({}), which the certificate carries",
                    by_name_only
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    names.dns.join(", ")
                ));
            }
            not_permitted(&what, &permitted, &names)?;
            write_region_cas(settings, &ca_chain, now)?;
            if !force
                && let Ok(info) = check_pair(
                    settings,
                    &names,
                    &settings.cert_file,
                    &settings.key_file,
                    now,
                )
                && issued_by(&settings.cert_file, &ca_chain[0])
            {
                let renew_at = renew_point(&info, fastrand::f64());
                if now < renew_at {
                    share_pair(settings)?;
                    return Ok((
                        Current {
                            info,
                            renew_at,
                            warnings,
                            issuer_not_after: Some(ca.not_after),
                            root_not_after: earliest_root(settings),
                        },
                        false,
                    ));
                }
            }
            // A node certificate never outlives its issuer.
            let until = ca.not_after.duration_since(now).unwrap_or_default();
            let lifetime = (*validity).min(until);
            let fresh = issue::node(&issuer, &names, now, lifetime)?;
            let what = "the new node certificate".to_owned();
            let chain = pki::certs_from_pem(&what, fresh.cert_pem.as_bytes())?;
            let info = pki::inspect(&what, &chain[0])?;
            let names: Vec<String> = names
                .dns
                .iter()
                .cloned()
                .chain(names.ips.iter().map(ToString::to_string))
                .collect();
            // Catches names outside the intermediate's constraints before
            // any peer refuses them.
            pki::verify_chain(&what, &chain, &roots(settings)?, now, &names).map_err(|e| match e {
                PkiError::Chain { what, why } if why.contains("NameConstraint") => PkiError::Chain {
                    what,
                    why: format!(
                        "{why}: the intermediate's name constraints do not cover one of {} — issue it with `natsmeshd ca intermediate --permit-ip <range>` for public addresses, or keep listeners on private ones",
                        names.join(", ")
                    ),
                },
                other => other,
            })?;
            write_pair(settings, &fresh)?;
            let renew_at = renew_point(&info, fastrand::f64());
            Ok((
                Current {
                    info,
                    renew_at,
                    warnings,
                    issuer_not_after: Some(ca.not_after),
                    root_not_after: earliest_root(settings),
                },
                true,
            ))
        }
    }
}

/// Refuses, before issuing, names the intermediate may not sign: a
/// region's intermediate permits only its own region's names (and the
/// shared client names it was given), so a node cannot speak for another
/// region; addresses outside its ranges need `--permit-ip`.
fn not_permitted(
    intermediate: &str,
    permitted: &pki::Permitted,
    names: &NodeNames,
) -> Result<(), TlsError> {
    let dns: Vec<&str> = names
        .dns
        .iter()
        .filter(|n| !permitted.dns_name(n))
        .map(String::as_str)
        .collect();
    let ips: Vec<String> = names
        .ips
        .iter()
        .filter(|ip| !permitted.ip(**ip))
        .map(ToString::to_string)
        .collect();
    let fix = match (dns.is_empty(), ips.is_empty()) {
        (true, true) => return Ok(()),
        (false, _) => {
            "a region's intermediate issues only its own region's names (<region>.<domain> and below) and the shared client names given to `natsmeshd ca intermediate --permit-name`; remove the name from tls.extra_names, or issue the intermediate again with --permit-name for a name all regions share"
        }
        (true, false) => {
            "issue the intermediate with `natsmeshd ca intermediate --permit-ip <range>` for public addresses, or keep listeners on private ones"
        }
    };
    Err(TlsError::NotPermitted {
        intermediate: intermediate.to_owned(),
        names: dns
            .into_iter()
            .map(str::to_owned)
            .chain(ips)
            .collect::<Vec<_>>()
            .join(", "),
        permitted: permitted.describe(),
        fix: fix.to_owned(),
    })
}

/// Whether the node certificate on disk came from `issuer` (the chain in
/// the file carries the issuing certificate second). A new intermediate
/// (a rotation) means a new node certificate.
fn issued_by(cert_file: &Path, issuer: &CertificateDer<'_>) -> bool {
    std::fs::read(cert_file)
        .ok()
        .and_then(|b| pki::certs_from_pem("node certificate", &b).ok())
        .is_some_and(|chain| chain.get(1).is_some_and(|c| c.as_ref() == issuer.as_ref()))
}

/// Writes the region's trusted intermediates for routes: every certificate
/// in the intermediate file (the current one first, then those being
/// rotated in or out) that is valid now.
fn write_region_cas(
    settings: &TlsSettings,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), TlsError> {
    let Some(path) = &settings.region_ca_file else {
        return Ok(());
    };
    let mut pem = String::new();
    for der in chain {
        if pki::inspect("intermediate", der).is_ok_and(|i| i.is_ca && i.valid_at(now)) {
            pem.push_str(&pki_pem(der));
        }
    }
    if let Some(dir) = path.parent() {
        make_dir(dir)?;
    }
    crate::broker_user::write_readable(path, pem.as_bytes(), PLAIN).map_err(|e| TlsError::Write {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// A DER certificate as PEM.
fn pki_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

/// Writes key then certificate, each atomically; the key 0600.
fn write_pair(settings: &TlsSettings, fresh: &Issued) -> Result<(), TlsError> {
    if let Some(dir) = settings.key_file.parent() {
        make_dir(dir)?;
    }
    // The broker reads the key: 0600, or 0640 with the broker's group when
    // it runs as its own user (see crate::broker_user).
    crate::broker_user::write_readable(
        &settings.key_file,
        fresh.key_pem.as_bytes(),
        crate::files::SECRET,
    )
    .map_err(|e| TlsError::Write {
        path: settings.key_file.display().to_string(),
        why: e.to_string(),
    })?;
    crate::broker_user::write_readable(&settings.cert_file, fresh.cert_pem.as_bytes(), PLAIN)
        .map_err(|e| TlsError::Write {
            path: settings.cert_file.display().to_string(),
            why: e.to_string(),
        })
}

/// Makes the directory of the issued files, which the broker passes
/// through when it runs as its own user.
fn make_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| crate::broker_user::share_dir(dir))
        .map_err(|e| TlsError::Write {
            path: dir.display().to_string(),
            why: e.to_string(),
        })
}

/// The issued pair still serves, written perhaps before the broker ran as
/// its own user: it gets the broker's group (and its directory too).
fn share_pair(settings: &TlsSettings) -> Result<(), TlsError> {
    if let Some(dir) = settings.key_file.parent() {
        make_dir(dir)?;
    }
    for path in [&settings.key_file, &settings.cert_file] {
        crate::broker_user::share_existing(path).map_err(|e| TlsError::Write {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// Writes a secret atomically with mode 0600 from the start.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    crate::files::write_atomic(path, bytes, crate::files::SECRET).map_err(|e| TlsError::Write {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}
