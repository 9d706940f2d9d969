//! `natsmeshd ca init` and `natsmeshd ca intermediate`: the offline part of
//! the trust model, run on an operator's machine, never on a node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::validate::is_region_label;
use crate::files::UnsafeMode;
use crate::tls::issue::{self, IssueError, Issued};
use crate::tls::pki::PkiError;
use crate::tls::{TlsError, pki, write_secret};

/// Why `ca init` or `ca intermediate` did nothing (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A range that is no `addr/prefix`.
    #[error("{0:?} is not a CIDR range (addr/prefix)")]
    NotCidr(String),
    /// A range whose address part is no address.
    #[error("{range:?}: {addr:?} is not an address")]
    CidrAddress {
        /// The range as written.
        range: String,
        /// Its address part.
        addr: String,
    },
    /// A prefix longer than the address.
    #[error("{0:?}: bad prefix length")]
    CidrPrefix(String),
    /// An argument refused before anything is read or written (a usage
    /// error), with what to type instead.
    #[error("{0}")]
    Usage(String),
    /// `--permit-ip` that is no range.
    #[error("--permit-ip {0}")]
    PermitIp(#[source] Box<CaError>),
    /// CA material is never overwritten.
    #[error("{} exists; natsmeshd never overwrites CA material", .0.display())]
    Exists(PathBuf),
    /// A stem that would name a file outside the output directory.
    #[error("{stem:?} cannot name a file in {}", dir.display())]
    BadStem {
        /// The stem.
        stem: String,
        /// The output directory.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// `create`, `write`, `read`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The root key may be read by others.
    #[error(transparent)]
    Mode(#[from] UnsafeMode),
    /// Writing the key failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The root certificate cannot be read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Making the certificate failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The root's files do not belong together.
    #[error("{0}: root.key does not belong to root.crt")]
    KeyMismatch(String),
}

/// Parses `a.b.c.d/n` or `v6::/n`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), CaError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| CaError::NotCidr(s.to_owned()))?;
    let addr: IpAddr = a.parse().map_err(|_| CaError::CidrAddress {
        range: s.to_owned(),
        addr: a.to_owned(),
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| CaError::CidrPrefix(s.to_owned()))?;
    Ok((addr, prefix))
}

fn refuse_overwrite(paths: &[&Path]) -> Result<(), CaError> {
    for p in paths {
        if p.exists() {
            return Err(CaError::Exists(p.to_path_buf()));
        }
    }
    Ok(())
}

fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> Result<(), CaError> {
    // The files go into `dir` and nowhere else, whatever a caller passes.
    if !is_region_label(stem) && stem != "root" {
        return Err(CaError::BadStem {
            stem: stem.to_owned(),
            dir: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        what: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    refuse_overwrite(&[&cert, &key])?;
    write_secret(&key, issued.key_pem.as_bytes())?;
    crate::files::write_atomic(&cert, issued.cert_pem.as_bytes(), 0o644).map_err(|source| {
        CaError::Io {
            what: "write",
            path: cert.clone(),
            source,
        }
    })
}

/// `ca init`: a new offline root in `out` (`root.crt`, `root.key` 0600).
pub fn init(out: &Path, name: &str, validity: Duration) -> Result<String, CaError> {
    refuse_overwrite(&[&out.join("root.crt"), &out.join("root.key")])?;
    let root = issue::root(name, SystemTime::now(), validity)?;
    write_pair(out, "root", &root)?;
    Ok(format!(
        "root CA written to {dir}/root.crt and {dir}/root.key (0600).\n\
         Keep root.key offline. Distribute root.crt to every node as tls.ca_file (/etc/natsmesh/ca.crt).\n\
         Next: natsmeshd ca intermediate --root {dir} --region <region> --domain <domain> --out <dir>",
        dir = out.display()
    ))
}

/// `ca intermediate`'s typed arguments, checked before anything is read or
/// written (a usage error): the region names the files in `--out` (`../x`
/// would write beside it) and, with the domain, the names the intermediate
/// may issue.
pub fn intermediate_args(
    region: &str,
    domain: &str,
    names: &[String],
    extra_ranges: &[String],
) -> Result<(), CaError> {
    if !is_region_label(region) {
        return Err(CaError::Usage(format!(
            "--region {region:?} is not a region label: a lower-case DNS label (a-z, 0-9 and '-', at most 63, no leading or trailing '-'), as node.region"
        )));
    }
    if !natsmesh_broker::model::is_dns_name(domain) {
        return Err(CaError::Usage(format!(
            "--domain {domain:?} is not a DNS name (labels of letters, digits, '-' and '_', joined by '.')"
        )));
    }
    // An empty or top-level domain would let the region's names reach
    // into a space natsmesh does not own.
    if domain.trim_end_matches('.').split('.').count() < 2 {
        return Err(CaError::Usage(format!(
            "--domain {domain:?} must have at least two labels (e.g. nats.example.com): the supercluster's own domain, not a top-level one"
        )));
    }
    let dom = domain.trim_end_matches('.').to_ascii_lowercase();
    for n in names {
        if !natsmesh_broker::model::is_dns_name(n) || n.trim_end_matches('.').split('.').count() < 2
        {
            return Err(CaError::Usage(format!(
                "--permit-name {n:?} is not a DNS name of at least two labels (a name clients use, e.g. nats.example.com; it permits that name and the names below it)"
            )));
        }
        // A shared name inside the supercluster's domain (or above it)
        // would let this region's intermediate mint every region's names,
        // or another region's.
        let name = n.trim_end_matches('.').to_ascii_lowercase();
        if name == dom || dom.ends_with(&format!(".{name}")) || name.ends_with(&format!(".{dom}")) {
            return Err(CaError::Usage(format!(
                "--permit-name {n:?} lies inside or above --domain {domain:?}: a shared client name must be outside the supercluster's domain, or it would permit other regions' names"
            )));
        }
    }
    for r in extra_ranges {
        parse_cidr(r).map_err(|e| CaError::PermitIp(Box::new(e)))?;
    }
    Ok(())
}

/// What a region's intermediate may issue besides `<region>.<domain>`.
#[derive(Debug, Clone, Copy)]
pub struct Permits<'a> {
    /// Shared client names (`--permit-name`).
    pub names: &'a [String],
    /// More address ranges (`--permit-ip`).
    pub extra_ranges: &'a [String],
    /// The private ranges and loopback.
    pub default_ranges: bool,
}

/// `ca intermediate`: a region's intermediate, signed by the root in `root_dir`.
pub fn intermediate(
    root_dir: &Path,
    region: &str,
    domain: &str,
    permits: Permits<'_>,
    validity: Duration,
    out: &Path,
) -> Result<String, CaError> {
    let Permits {
        names,
        extra_ranges,
        default_ranges,
    } = permits;
    intermediate_args(region, domain, names, extra_ranges)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CaError::Io {
            what: "read",
            path: p.to_path_buf(),
            source,
        })
    };
    let root_key = root_dir.join("root.key");
    // The root key must be the operator's alone, as `ca init` wrote it.
    crate::files::check_secret(&root_key, None)?;
    let root = Issued {
        cert_pem: read(&root_dir.join("root.crt"))?,
        key_pem: read(&root_key)?,
    };
    let what = root_dir.join("root.crt").display().to_string();
    let info = pki::inspect(
        &what,
        &pki::certs_from_pem(&what, root.cert_pem.as_bytes())?[0],
    )?;
    if !pki::key_matches(&info, &root.key_pem) {
        return Err(CaError::KeyMismatch(what));
    }
    let mut ranges = if default_ranges {
        issue::default_permitted_ranges()
    } else {
        Vec::new()
    };
    for r in extra_ranges {
        ranges.push(parse_cidr(r)?);
    }
    let now = SystemTime::now();
    // Never outlive the root.
    let validity = validity.min(info.not_after.duration_since(now).unwrap_or_default());
    let inter = issue::intermediate(&root, region, domain, names, &ranges, now, validity)?;
    write_pair(out, region, &inter)?;
    Ok(format!(
        "intermediate for region {region} written to {dir}/{region}.crt and {dir}/{region}.key (0600),\n\
         limited to {region}.{domain} and below{shared} and {n} address ranges, valid {days} days.\n\
         Give it to the region's nodes as systemd credentials (tls.intermediate_cert / tls.intermediate_key).",
        dir = out.display(),
        shared = names.iter().map(|n| format!(", {n}")).collect::<String>(),
        n = ranges.len(),
        days = validity.as_secs() / 86400
    ))
}
