//! `natsmeshd user-data`: a ready-to-paste cloud-init user-data file that
//! turns a new droplet, Linode or NoCloud machine into a member of its
//! region: natsmesh's drop-in and credentials written root-only, natsmesh
//! installed from its signed apt repository, the unit started by the
//! package. Nobody hand-edits YAML: the drop-in is TOML built from typed
//! values and the YAML is serialised, never templated.
//!
//! Every argument is checked before anything is produced: the output is
//! pasted into a machine's creation form and runs as root at first boot, so
//! a newline in a region, a domain or a URL must never become a key of the
//! cloud-config or a line of an apt source list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::units::Size;
use crate::config::validate::{is_region_label, is_server_name};
use crate::tls::{issue, pki};

/// Where the machine's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A droplet: identity from DigitalOcean's metadata service.
    Digitalocean,
    /// A Linode: identity from the Linode Metadata Service.
    Linode,
    /// Any machine with a NoCloud seed (tests, bare metal): identity from
    /// `--name` and `--private-address`.
    Nocloud,
}

/// Whose DNS API publishes the node's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsApi {
    /// DigitalOcean Domains.
    Digitalocean,
    /// Linode Domains.
    Linode,
    /// Cloudflare DNS.
    Cloudflare,
}

impl DnsApi {
    fn name(self) -> &'static str {
        match self {
            Self::Digitalocean => "digitalocean",
            Self::Linode => "linode",
            Self::Cloudflare => "cloudflare",
        }
    }
}

/// What `natsmeshd user-data` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct Request {
    /// The machine's provider.
    #[arg(long)]
    pub provider: Target,
    /// The region label (cluster, gateway and DNS name).
    #[arg(long)]
    pub region: String,
    /// The supercluster's DNS domain.
    #[arg(long)]
    pub domain: String,
    /// natsmesh's apt repository (a flat repository: `URL ./`).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "appliance",
        requires = "apt_key"
    )]
    pub apt_url: Option<String>,
    /// The repository's OpenPGP public key (ASCII-armoured).
    #[arg(long, value_name = "FILE", requires = "apt_url")]
    pub apt_key: Option<PathBuf>,
    /// The machine runs the natsmesh appliance image (`make image`):
    /// natsmesh is installed already, so no apt source and no package.
    #[arg(long, conflicts_with_all = ["apt_url", "apt_key"])]
    pub appliance: bool,
    /// The supercluster's root certificate(s).
    #[arg(long, value_name = "FILE")]
    pub roots: PathBuf,
    /// The region intermediate's certificate.
    #[arg(long, value_name = "FILE")]
    pub intermediate_cert: PathBuf,
    /// The region intermediate's key (short-lived, this region only).
    #[arg(long, value_name = "FILE")]
    pub intermediate_key: PathBuf,
    /// JetStream's first start waits for this many servers of the region.
    #[arg(long, default_value_t = 3)]
    pub bootstrap_expect: usize,
    /// JetStream's memory store limit.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub jetstream_memory: String,
    /// JetStream's file store limit (size it to the machine's disk).
    #[arg(long, default_value = "10GiB", value_name = "SIZE")]
    pub jetstream_store: String,
    /// DNS servers for discovery (`ip` or `ip:port`, repeatable; default:
    /// the machine's resolver).
    #[arg(long = "nameserver", value_name = "ADDR")]
    pub nameservers: Vec<String>,
    /// Publish this node's records through this DNS API.
    #[arg(long, value_name = "API", requires = "dns_token")]
    pub dns: Option<DnsApi>,
    /// A token for it, scoped to the zone's records.
    #[arg(long, value_name = "FILE")]
    pub dns_token: Option<PathBuf>,
    /// The DNS API's base URL, for an egress proxy; default: the provider's.
    #[arg(long, value_name = "URL", requires = "dns")]
    pub dns_api_url: Option<String>,
    /// The load balancer (DigitalOcean: its id; Linode: the NodeBalancer id).
    #[arg(long, value_name = "ID", requires = "lb_token")]
    pub lb_id: Option<String>,
    /// A token for it, scoped to load balancers.
    #[arg(long, value_name = "FILE")]
    pub lb_token: Option<PathBuf>,
    /// The load-balancer API's base URL, for an egress proxy; default: the
    /// provider's.
    #[arg(long, value_name = "URL", requires = "lb_id")]
    pub lb_api_url: Option<String>,
    /// Linode: the NodeBalancer reaches the node in this VPC subnet (a VPC
    /// backend: the node's VPC address; clients are accepted on every
    /// address, as the VPC address is not known before the Linode exists).
    #[arg(long, value_name = "SUBNET_ID", requires = "lb_id")]
    pub lb_vpc_subnet: Option<u64>,
    /// Accounts and their users: a TOML file of `[accounts.*]` tables, as
    /// `natsmeshd user add` writes them; carried as its own drop-in.
    #[arg(long, value_name = "FILE")]
    pub accounts: Option<PathBuf>,
    /// A name clients use (repeatable), e.g. the balancer's DNS name or a
    /// global name: into the node certificate (`tls.extra_names`). The
    /// intermediate must permit it (`ca intermediate --permit-name`).
    #[arg(long = "client-name", value_name = "NAME")]
    pub client_names: Vec<String>,
    /// Where `/metrics` listens (`[metrics] bind`): auto, private, public,
    /// any, loopback or an address.
    #[arg(long, value_name = "BIND")]
    pub metrics_bind: Option<String>,
    /// What the client port advertises (`[broker.client] advertise`):
    /// auto, none or host:port. Default with --lb-id: none (clients behind
    /// the balancer must not be sent to the servers' private addresses).
    #[arg(long, value_name = "VALUE")]
    pub client_advertise: Option<String>,
    /// NoCloud: the server name.
    #[arg(long)]
    pub name: Option<String>,
    /// NoCloud: the private address.
    #[arg(long, value_name = "IPV4")]
    pub private_address: Option<std::net::Ipv4Addr>,
}

/// Why `natsmeshd user-data` produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// An argument's value is not usable (a usage error).
    #[error("{arg}: {why}")]
    Invalid {
        /// The argument, as typed (`--region`).
        arg: &'static str,
        /// What is wrong, with the value quoted and escaped.
        why: String,
    },
    /// Arguments that do not go together (a usage error).
    #[error("{0}")]
    Usage(String),
    /// An input file cannot be read.
    #[error("{arg} {path}: {why}")]
    Read {
        /// The argument naming the file.
        arg: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        why: String,
    },
    /// The document is over the provider's user-data limit (a usage
    /// error: what it carries must shrink).
    #[error(
        "the user-data is {size} bytes{encoded}, over {provider}'s limit of {limit}: carry less (a smaller --accounts file, --apt-key without other keys) or use the appliance image (--appliance)"
    )]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// Its base64 size, where the limit is stated on that.
        encoded: String,
        /// Whose limit.
        provider: &'static str,
        /// The limit, as stated.
        limit: &'static str,
    },
    /// The document could not be serialised.
    #[error("cannot serialise the user-data: {0}")]
    Serialise(String),
}

impl UserDataError {
    /// The argument at fault, when one is.
    pub fn arg(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { arg, .. } | Self::Read { arg, .. } => Some(arg),
            Self::Usage(_) | Self::TooLarge { .. } | Self::Serialise(_) => None,
        }
    }

    /// The exit code: 2 for what the operator typed, as for clap's own
    /// usage errors and `check`; 1 for what went wrong on the machine.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Invalid { .. } | Self::Usage(_) | Self::TooLarge { .. } => crate::EXIT_CONFIG,
            Self::Read { .. } | Self::Serialise(_) => crate::EXIT_FAILURE,
        }
    }
}

fn invalid(arg: &'static str, why: impl Into<String>) -> UserDataError {
    UserDataError::Invalid {
        arg,
        why: why.into(),
    }
}

/// A URL goes into an apt source line or a TOML string as it was given:
/// printable ASCII only (no space, tab, newline or NUL that could end the
/// line or the field; non-ASCII is percent-encoded by whoever needs it).
/// The URL parser alone is not enough: it silently drops tabs and newlines.
fn printable_url(arg: &'static str, url: &str) -> Result<reqwest::Url, UserDataError> {
    if url.is_empty() || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            arg,
            format!(
                "{url:?} holds a space, a control or a non-ASCII character (percent-encode it)"
            ),
        ));
    }
    reqwest::Url::parse(url).map_err(|e| invalid(arg, format!("{url:?} is not a URL: {e}")))
}

/// `--apt-url`: a flat repository apt can fetch (`http`, `https`, or
/// `file` for a local mirror; packages are verified by the key either way),
/// with nothing apt would read as a comment (`#`) or a query.
fn check_apt_url(url: &str) -> Result<(), UserDataError> {
    let arg = "--apt-url";
    let parsed = printable_url(arg, url)?;
    match parsed.scheme() {
        "http" | "https" | "file" => {}
        other => {
            return Err(invalid(
                arg,
                format!("{url:?}: scheme {other:?} is not http, https or file"),
            ));
        }
    }
    if url.contains('#') || parsed.query().is_some() {
        return Err(invalid(
            arg,
            format!("{url:?}: a repository URL has no query and no fragment ('?', '#')"),
        ));
    }
    Ok(())
}

/// `--dns-api-url`, `--lb-api-url`: the rule `check` applies to the
/// settings they become (https, or http to loopback only).
fn check_api_url(arg: &'static str, url: &str) -> Result<(), UserDataError> {
    printable_url(arg, url)?;
    crate::provider::rest::token_safe_url(url).map_err(|why| invalid(arg, why.to_string()))
}

/// Every argument, checked before anything is read or produced.
fn check(r: &Request) -> Result<(), UserDataError> {
    if !is_region_label(&r.region) {
        return Err(invalid(
            "--region",
            format!(
                "{:?} is not a lower-case DNS label (a-z, 0-9 and '-', at most 63, no leading or trailing '-')",
                r.region
            ),
        ));
    }
    if !natsmesh_broker::model::is_dns_name(&r.domain) {
        return Err(invalid(
            "--domain",
            format!(
                "{:?} is not a DNS name (labels of letters, digits, '-' and '_', joined by '.')",
                r.domain
            ),
        ));
    }
    // The node certificate names `<region>.<domain>` and names below it:
    // a domain a TLS client cannot take as a server name (a label of
    // digits alone at the end, say) fails there, on the droplet.
    let region_name = format!("{}.{}", r.region, r.domain.trim_end_matches('.'));
    if pki_types::ServerName::try_from(region_name.as_str()).is_err() {
        return Err(invalid(
            "--domain",
            format!("{region_name:?} is not a name a TLS client accepts"),
        ));
    }
    if let Some(url) = &r.apt_url {
        check_apt_url(url)?;
    }
    if let Some(url) = &r.dns_api_url {
        check_api_url("--dns-api-url", url)?;
    }
    if let Some(url) = &r.lb_api_url {
        check_api_url("--lb-api-url", url)?;
    }
    if let Some(id) = &r.lb_id {
        lb_id(r.provider, id)?;
    }
    if let Some(name) = &r.name
        && !is_server_name(name)
    {
        return Err(invalid(
            "--name",
            format!(
                "{name:?} is not a server name (at most 128 of letters, digits, '_', '.' and '-')"
            ),
        ));
    }
    for ns in &r.nameservers {
        nameserver(ns)?;
    }
    for name in &r.client_names {
        if !natsmesh_broker::model::is_dns_name(name)
            || pki_types::ServerName::try_from(name.trim_end_matches('.')).is_err()
        {
            return Err(invalid(
                "--client-name",
                format!("{name:?} is not a DNS name a TLS client accepts"),
            ));
        }
    }
    if let Some(b) = &r.metrics_bind {
        metrics_bind(b)?;
    }
    if let Some(a) = &r.client_advertise
        && a != "auto"
        && a != "none"
    {
        natsmesh_broker::model::HostPort::parse(a).map_err(|e| {
            invalid(
                "--client-advertise",
                format!("{}; or auto, or none", one_line(&e.to_string())),
            )
        })?;
    }
    size("--jetstream-memory", &r.jetstream_memory)?;
    size("--jetstream-store", &r.jetstream_store)?;
    if r.provider == Target::Nocloud && (r.name.is_none() || r.private_address.is_none()) {
        return Err(UserDataError::Usage(
            "--provider nocloud needs --name and --private-address".into(),
        ));
    }
    if r.lb_id.is_some() && r.provider == Target::Nocloud {
        return Err(UserDataError::Usage(
            "a load balancer needs --provider digitalocean or linode".into(),
        ));
    }
    if r.lb_vpc_subnet.is_some() && r.provider != Target::Linode {
        return Err(UserDataError::Usage(
            "--lb-vpc-subnet is for Linode NodeBalancers (--provider linode)".into(),
        ));
    }
    if r.apt_url.is_none() && !r.appliance {
        return Err(UserDataError::Usage(
            "--apt-url and --apt-key, or --appliance".into(),
        ));
    }
    Ok(())
}

/// `--lb-id`: what the provider's API names a balancer by. DigitalOcean
/// answers 404 for anything but its load balancer's UUID (the hyphenated
/// form its API returns); a Linode NodeBalancer's id is a positive
/// integer. Anything else would surface only on the machine, as 404s.
fn lb_id(provider: Target, id: &str) -> Result<(), UserDataError> {
    let arg = "--lb-id";
    match provider {
        Target::Digitalocean => {
            let groups: Vec<&str> = id.split('-').collect();
            let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
            if !shape
                || !groups
                    .iter()
                    .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(
                    arg,
                    format!(
                        "{id:?} is not a DigitalOcean load balancer id: give its UUID (doctl compute load-balancer list, column ID)"
                    ),
                ));
            }
        }
        Target::Linode => {
            if !id.bytes().all(|b| b.is_ascii_digit()) || id.parse::<u64>().map_or(true, |n| n == 0)
            {
                return Err(invalid(
                    arg,
                    format!(
                        "{id:?} is not a NodeBalancer id: give its number (linode-cli nodebalancers list, column id)"
                    ),
                ));
            }
        }
        // Refused below as a usage error: a balancer needs a provider.
        Target::Nocloud => {}
    }
    Ok(())
}

/// `--nameserver`: `ip` or `ip:port`, the rule of `discovery.nameservers`.
fn nameserver(ns: &str) -> Result<std::net::SocketAddr, UserDataError> {
    ns.parse::<std::net::SocketAddr>()
        .or_else(|_| {
            ns.parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| invalid("--nameserver", format!("{ns:?} is not ip or ip:port")))
}

/// `--metrics-bind`: the values `[metrics] bind` takes, read by its own
/// parser, written back in canonical form.
fn metrics_bind(b: &str) -> Result<crate::config::bind::Bind, UserDataError> {
    use serde::Deserialize as _;
    crate::config::bind::Bind::deserialize(toml::Value::String(b.to_owned()))
        .map_err(|e| invalid("--metrics-bind", one_line(&e.to_string())))
}

/// The drop-in `--accounts` becomes.
const ACCOUNTS_DROPIN: &str = "/etc/natsmesh/natsmesh.d/20-accounts.toml";

/// `--accounts`: read and checked as natsmeshd will read it on the node.
/// First as a drop-in by the daemon's own loader (syntax, unknown keys,
/// types: the problem names the file, line, column and key); then only
/// `[accounts.*]` (anything else would override the node's settings);
/// then validated by the daemon's validation together with the node's
/// drop-in, keeping the problems of the keys this file sets (bcrypt
/// hashes, nkeys, subjects, imports, reserved names). Returns the text,
/// carried verbatim (its comments too: it went through the YAML
/// serialiser, never into the YAML's text).
fn accounts(r: &Request, path: &Path, node_dropin: &str) -> Result<String, UserDataError> {
    use crate::config::load::{self, Loaded, Sources};
    let arg = "--accounts";
    let text = read(arg, &path.to_path_buf())?;
    let problems = |ps: &[crate::config::Problem]| {
        invalid(
            arg,
            ps.iter()
                .map(|p| one_line(&p.to_string()))
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    let sources = Sources::Files {
        main: path.to_path_buf(),
        files: vec![path.to_path_buf()],
    };
    let loaded = load::load(&sources).map_err(|ps| problems(&ps.0))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| invalid(arg, one_line(e.message())))?;
    if let Some(other) = table.keys().find(|k| *k != "accounts") {
        return Err(invalid(
            arg,
            format!(
                "{path:?} sets {other:?}: it carries [accounts.*] tables only (what natsmeshd user add writes); the node's settings come from user-data's other arguments"
            ),
        ));
    }
    if loaded.raw.accounts.is_empty() {
        return Err(invalid(
            arg,
            format!(
                "{path:?} holds no [accounts.*] table: add users with natsmeshd user add --file"
            ),
        ));
    }
    let mut raw: crate::config::schema::RawConfig =
        toml::from_str(node_dropin).map_err(|e| UserDataError::Serialise(e.to_string()))?;
    raw.accounts = loaded.raw.accounts.clone();
    let merged = Loaded {
        raw,
        origins: loaded.origins.clone(),
        embedded: false,
        files: loaded.files.clone(),
    };
    // A machine as the node will be; what depends on the machine (the
    // broker binary, the state directory, the credentials) is not what
    // this checks, and is set aside below.
    let env = crate::config::Environment {
        hostname: "user-data".into(),
        path: None,
        default_state_dir: PathBuf::from("/nonexistent/natsmeshd-user-data"),
        default_control_socket: PathBuf::from("/nonexistent/natsmeshd-user-data/control.sock"),
        credentials_dir: None,
        credentials_source: None,
    };
    let identity = crate::provider::Identity {
        provider: match r.provider {
            Target::Digitalocean => crate::config::schema::Provider::DigitalOcean,
            Target::Linode => crate::config::schema::Provider::Linode,
            Target::Nocloud => crate::config::schema::Provider::None,
        },
        instance_id: "1".into(),
        hostname: r.name.clone().unwrap_or_else(|| "user-data".into()),
        provider_region: r.region.clone(),
        private_ipv4: Some(
            r.private_address
                .unwrap_or(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        ),
        public_ipv4: Some(std::net::Ipv4Addr::new(203, 0, 113, 10)),
        public_ipv6: None,
        tags: Vec::new(),
    };
    if let Err(ps) = crate::config::validate::validate(&merged, &env, &identity) {
        // Every origin is in this file, so a located problem is its own.
        let own: Vec<_> = ps
            .0
            .into_iter()
            .filter(|p| {
                p.location.is_some() || p.key.as_deref().is_some_and(|k| k.starts_with("accounts"))
            })
            .collect();
        if !own.is_empty() {
            return Err(problems(&own));
        }
    }
    Ok(text)
}

/// A JetStream limit, written back in its canonical form. The parser
/// forgives surrounding whitespace; an argument holding a line break or a
/// control character is refused all the same, as every other one is.
fn size(arg: &'static str, s: &str) -> Result<Size, UserDataError> {
    if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(invalid(
            arg,
            format!("{s:?} holds a control or a non-ASCII character"),
        ));
    }
    Size::parse(s).map_err(|why| invalid(arg, why.to_string()))
}

/// How long the region intermediate must still be valid when a machine is
/// made from the user-data: the node issues (and renews, at two thirds of
/// `tls.validity`) its certificates from it for as long as it lives, and
/// the user-data is often kept for the region's next machines. 30 days
/// leaves a month to make and roll out the next intermediate (`ca
/// intermediate` makes them for 90 days by default); less is refused on
/// the operator's machine rather than found expired on the droplet.
pub const INTERMEDIATE_MIN_LEFT: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// A secret file must be its owner's alone, as natsmeshd itself requires
/// of `tls.intermediate_key` and every token (`files::check_secret`): the
/// user-data copies it verbatim, and a key others could read on the
/// operator's machine is not a secret any more.
fn secret_mode(arg: &'static str, path: &Path) -> Result<(), UserDataError> {
    crate::files::check_secret(path, None).map_err(|e| {
        invalid(
            arg,
            format!(
                "{:?} has mode {:04o}: a secret must not be readable by group or others; chmod 600 {:?}",
                e.path, e.mode, e.path
            ),
        )
    })
}

/// A refusal's reason on one line, whatever the library's text holds.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The PKI the user-data carries, checked as the droplet will use it: the
/// intermediate is a region intermediate (not a root, its key not a
/// root's), its key belongs to it, its name constraints permit this
/// region's names and every `--client-name`, it is valid for at least
/// [`INTERMEDIATE_MIN_LEFT`], and a node certificate issued from it (as
/// natsmeshd will, here with a throw-away key) verifies against `--roots`.
fn check_pki(
    r: &Request,
    roots_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    now: std::time::SystemTime,
) -> Result<(), UserDataError> {
    let cert_arg = "--intermediate-cert";
    let key_arg = "--intermediate-key";
    let cert_file = format!("{:?}", r.intermediate_cert);
    let roots = pki::certs_from_pem("--roots", roots_pem.as_bytes())
        .map_err(|e| invalid("--roots", one_line(&e.to_string())))?;
    let chain = pki::certs_from_pem(&cert_file, cert_pem.as_bytes())
        .map_err(|e| invalid(cert_arg, one_line(&e.to_string())))?;
    let inter = &chain[0];
    let info =
        pki::inspect(&cert_file, inter).map_err(|e| invalid(cert_arg, one_line(&e.to_string())))?;
    let make_one =
        "make the region's with natsmeshd ca intermediate --root DIR --region R --domain D";
    if info.self_signed {
        return Err(invalid(
            cert_arg,
            format!(
                "{cert_file} is a root certificate (self-signed), not a region intermediate: the root stays offline; {make_one}"
            ),
        ));
    }
    for root in &roots {
        let root_info = pki::inspect("--roots", root)
            .map_err(|e| invalid("--roots", one_line(&e.to_string())))?;
        if pki::key_matches(&root_info, key_pem) {
            return Err(invalid(
                key_arg,
                format!(
                    "{:?} is the key of a root in --roots ({}): the root key never leaves the operator's machine; give the region intermediate's key",
                    r.intermediate_key,
                    one_line(&root_info.subject)
                ),
            ));
        }
    }
    if !info.is_ca {
        return Err(invalid(
            cert_arg,
            format!("{cert_file} is not a CA certificate; {make_one}"),
        ));
    }
    if !pki::key_matches(&info, key_pem) {
        return Err(invalid(
            key_arg,
            format!(
                "{:?} does not belong to the certificate in {cert_file}: give the key natsmeshd ca intermediate wrote beside it",
                r.intermediate_key
            ),
        ));
    }
    let permits = pki::permitted(&cert_file, inter)
        .map_err(|e| invalid(cert_arg, one_line(&e.to_string())))?;
    let region_name = format!("{}.{}", r.region, r.domain.trim_end_matches('.'));
    if !permits.dns_name(&region_name) {
        return Err(invalid(
            cert_arg,
            format!(
                "{cert_file} is not an intermediate of region {} in {}: it permits {}, not {region_name}; give that region's intermediate (natsmeshd ca intermediate --region {} --domain {})",
                r.region,
                r.domain,
                one_line(&permits.describe()),
                r.region,
                r.domain
            ),
        ));
    }
    for name in &r.client_names {
        if !permits.dns_name(name) {
            return Err(invalid(
                "--client-name",
                format!(
                    "{name:?} is not permitted by {cert_file} (it permits {}): issue the intermediate with natsmeshd ca intermediate --region {} --domain {} --permit-name {name}",
                    one_line(&permits.describe()),
                    r.region,
                    r.domain
                ),
            ));
        }
    }
    let date = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if now < info.not_before {
        return Err(invalid(
            cert_arg,
            format!(
                "{cert_file} is not valid before {} (is this machine's clock right?)",
                date(info.not_before)
            ),
        ));
    }
    let left = info.not_after.duration_since(now).unwrap_or_default();
    if left < INTERMEDIATE_MIN_LEFT {
        return Err(invalid(
            cert_arg,
            format!(
                "{cert_file} expires on {} ({} days left; at least {} are needed): {make_one}",
                date(info.not_after),
                left.as_secs() / 86400,
                INTERMEDIATE_MIN_LEFT.as_secs() / 86400
            ),
        ));
    }
    // What natsmeshd will do on the droplet: issue a node certificate for
    // the region's names (and the client names) and verify it against the
    // roots, with the intermediate's name constraints.
    let mut names = vec![format!("probe.{region_name}"), region_name.clone()];
    // As natsmeshd will: a final dot is not part of a certificate's name.
    names.extend(
        r.client_names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
    );
    let issuer = issue::Issued {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    };
    let node_names = issue::NodeNames {
        common_name: names[0].clone(),
        dns: names.clone(),
        ips: Vec::new(),
        by_name: Vec::new(),
    };
    let probe = issue::node(
        &issuer,
        &node_names,
        now,
        std::time::Duration::from_secs(3600),
    )
    .map_err(|e| invalid(cert_arg, one_line(&e.to_string())))?;
    let mut leaf_chain = pki::certs_from_pem("a node certificate", probe.cert_pem.as_bytes())
        .map_err(|e| invalid(cert_arg, one_line(&e.to_string())))?;
    // The leaf, then the whole file (an intermediate may come with more).
    leaf_chain.truncate(1);
    leaf_chain.extend(chain.iter().cloned());
    pki::verify_chain("a node certificate", &leaf_chain, &roots, now, &names).map_err(|e| {
        invalid(
            cert_arg,
            format!(
                "a node certificate issued from {cert_file} does not verify against --roots {:?} ({}): give the roots that signed this intermediate",
                r.roots,
                one_line(&e.to_string())
            ),
        )
    })
}

/// The providers' user-data limits, checked on the finished document.
/// DigitalOcean: 64 KiB (65,536 bytes) of user data, as its Droplet
/// documentation states (the vendored API excerpt has no droplet schema).
/// Linode: its API specification states the limit twice, in one sentence
/// of `metadata.user_data` (reference/provider-specs/linode/openapi.yaml,
/// LinodeRequest, "Unencoded data must not exceed 65535 bytes, or about
/// 16kb encoded"): 65,535 bytes unencoded, or about 16 kB of base64. The
/// second is the stricter (16 kB of base64 is 12 kB of data); "about 16kb"
/// is taken as 16,000 bytes, the smaller reading.
fn size_limit(provider: Target, text: &str) -> Result<(), UserDataError> {
    let size = text.len();
    let encoded = size.div_ceil(3) * 4;
    match provider {
        Target::Digitalocean if size > 65_536 => Err(UserDataError::TooLarge {
            size,
            encoded: String::new(),
            provider: "DigitalOcean",
            limit: "65536 bytes (64 KiB)",
        }),
        Target::Linode if size > 65_535 || encoded > 16_000 => Err(UserDataError::TooLarge {
            size,
            encoded: format!(" ({encoded} base64-encoded)"),
            provider: "Linode",
            limit: "16000 bytes base64-encoded (its specification: 65535 bytes unencoded, or about 16kb encoded; the stricter holds)",
        }),
        _ => Ok(()),
    }
}

/// A cloud-config document (the keys used here).
#[derive(Debug, Serialize)]
struct CloudConfig {
    write_files: Vec<WriteFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apt: Option<Apt>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    package_update: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    packages: Vec<String>,
}

#[derive(Debug, Serialize)]
struct WriteFile {
    path: String,
    owner: String,
    permissions: String,
    content: String,
}

#[derive(Debug, Serialize)]
struct Apt {
    sources: BTreeMap<String, AptSource>,
}

#[derive(Debug, Serialize)]
struct AptSource {
    source: String,
    key: String,
}

/// The credentials directory the packaged unit loads.
const CREDENTIALS: &str = "/etc/natsmesh/credentials";

fn read(arg: &'static str, path: &PathBuf) -> Result<String, UserDataError> {
    std::fs::read_to_string(path).map_err(|e| UserDataError::Read {
        arg,
        // Quoted: a file name may hold a line break too.
        path: format!("{path:?}"),
        why: e.to_string(),
    })
}

fn secret(name: &str, content: String) -> WriteFile {
    WriteFile {
        path: format!("{CREDENTIALS}/{name}"),
        owner: "root:root".into(),
        permissions: "0600".into(),
        content,
    }
}

fn table(entries: &[(&str, toml::Value)]) -> toml::Value {
    toml::Value::Table(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn s(v: &str) -> toml::Value {
    toml::Value::String(v.to_owned())
}

/// One YAML comment line. The region and the domain were checked to be DNS
/// names, so this never refuses; it is here so that no later change can
/// let a line break end the comment and start a key.
fn comment(line: &str) -> Result<String, UserDataError> {
    // YAML 1.1 also breaks lines at NEL, U+2028 and U+2029.
    if line
        .chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    {
        return Err(UserDataError::Serialise(format!(
            "a header comment would hold a control character: {line:?}"
        )));
    }
    Ok(format!("# {line}\n"))
}

/// The node's drop-in, as TOML (built as values and serialised: no
/// argument is ever pasted into its text).
fn dropin(r: &Request) -> Result<String, UserDataError> {
    let provider = match r.provider {
        Target::Digitalocean => "digitalocean",
        Target::Linode => "linode",
        Target::Nocloud => "none",
    };
    let mut node = vec![
        ("region", s(&r.region)),
        ("domain", s(&r.domain)),
        ("provider", s(provider)),
    ];
    if r.provider == Target::Nocloud {
        let (Some(name), Some(addr)) = (&r.name, r.private_address) else {
            return Err(UserDataError::Usage(
                "--provider nocloud needs --name and --private-address".into(),
            ));
        };
        node.push(("name", s(name)));
        node.push(("private_address", s(&addr.to_string())));
    }
    let mut discovery = vec![
        ("enabled", toml::Value::Boolean(true)),
        (
            "bootstrap_expect",
            toml::Value::Integer(i64::try_from(r.bootstrap_expect).unwrap_or(i64::MAX)),
        ),
    ];
    if !r.nameservers.is_empty() {
        discovery.push((
            "nameservers",
            toml::Value::Array(r.nameservers.iter().map(|n| s(n)).collect()),
        ));
    }
    let mut broker = vec![
        ("cluster", table(&[("enabled", toml::Value::Boolean(true))])),
        ("gateway", table(&[("enabled", toml::Value::Boolean(true))])),
        (
            "jetstream",
            table(&[
                (
                    "max_memory_store",
                    s(&size("--jetstream-memory", &r.jetstream_memory)?.to_string()),
                ),
                (
                    "max_file_store",
                    s(&size("--jetstream-store", &r.jetstream_store)?.to_string()),
                ),
            ]),
        ),
    ];
    let mut client = Vec::new();
    if r.lb_vpc_subnet.is_some() {
        // A VPC backend's address is not known before the Linode exists:
        // clients are accepted on every address (they must authenticate).
        client.push(("bind", s("any")));
    }
    // Behind a balancer, clients reach the region through it: advertising
    // the servers' own (private) addresses in `connect_urls` would send
    // clients outside the VPC to addresses they cannot reach.
    match (&r.client_advertise, &r.lb_id) {
        (Some(a), _) => client.push(("advertise", s(a))),
        (None, Some(_)) => client.push(("advertise", s("none"))),
        (None, None) => {}
    }
    if !client.is_empty() {
        broker.push(("client", table(&client)));
    }
    let mut doc = vec![
        ("node", table(&node)),
        (
            "tls",
            table(&[
                ("mode", s("issue")),
                ("ca_file", s("/etc/natsmesh/roots.pem")),
                ("intermediate_cert", s("intermediate.crt")),
                ("intermediate_key", s("intermediate.key")),
            ]),
        ),
        ("broker", table(&broker)),
        ("discovery", table(&discovery)),
    ];
    if !r.client_names.is_empty()
        && let Some((_, toml::Value::Table(tls))) = doc.iter_mut().find(|(k, _)| *k == "tls")
    {
        tls.insert(
            "extra_names".into(),
            toml::Value::Array(r.client_names.iter().map(|n| s(n)).collect()),
        );
    }
    if let Some(b) = &r.metrics_bind {
        doc.push((
            "metrics",
            table(&[("bind", s(&metrics_bind(b)?.to_string()))]),
        ));
    }
    if let Some(api) = r.dns {
        let mut publish = vec![("backend", s(api.name())), ("token_file", s("dns-token"))];
        if let Some(url) = &r.dns_api_url {
            publish.push(("api_url", s(url)));
        }
        doc.push(("dns_publish", table(&publish)));
    }
    if let Some(id) = &r.lb_id {
        let provider = match r.provider {
            Target::Digitalocean => "digitalocean",
            Target::Linode => "linode",
            Target::Nocloud => {
                return Err(UserDataError::Usage(
                    "a load balancer needs --provider digitalocean or linode".into(),
                ));
            }
        };
        let mut lb = vec![
            ("provider", s(provider)),
            ("id", s(id)),
            ("token_file", s("lb-token")),
        ];
        if let Some(url) = &r.lb_api_url {
            lb.push(("api_url", s(url)));
        }
        if let Some(subnet) = r.lb_vpc_subnet {
            if r.provider != Target::Linode {
                return Err(UserDataError::Usage(
                    "--lb-vpc-subnet is for Linode NodeBalancers (--provider linode)".into(),
                ));
            }
            lb.push(("backend", s("vpc")));
            lb.push((
                "subnet_id",
                toml::Value::Integer(
                    i64::try_from(subnet).map_err(|_| {
                        invalid("--lb-vpc-subnet", format!("{subnet} is too large"))
                    })?,
                ),
            ));
        }
        doc.push(("load_balancer", table(&lb)));
    }
    if r.appliance {
        // The image carries unattended-upgrades and the polkit rule that
        // lets natsmeshd reboot: OS updates that need a reboot go through
        // the maintenance lease, one node at a time.
        doc.push(("maintenance", table(&[("reboot", s("coordinated"))])));
    }
    let text =
        toml::to_string(&table(&doc)).map_err(|e| UserDataError::Serialise(e.to_string()))?;
    Ok(format!(
        "# Written by cloud-init from `natsmeshd user-data`; `natsmeshd render --explain` shows the result.\n{text}"
    ))
}

/// The user-data document, and what it exposes (for stderr). Every
/// argument is checked first: on any error nothing is produced.
pub fn render(r: &Request) -> Result<(String, String), UserDataError> {
    check(r)?;
    secret_mode("--intermediate-key", &r.intermediate_key)?;
    for (arg, file) in [("--dns-token", &r.dns_token), ("--lb-token", &r.lb_token)] {
        if let Some(f) = file {
            secret_mode(arg, f)?;
        }
    }
    let roots = read("--roots", &r.roots)?;
    let inter_cert = read("--intermediate-cert", &r.intermediate_cert)?;
    let inter_key = read("--intermediate-key", &r.intermediate_key)?;
    check_pki(
        r,
        &roots,
        &inter_cert,
        &inter_key,
        std::time::SystemTime::now(),
    )?;
    let mut files = vec![
        WriteFile {
            path: "/etc/natsmesh/natsmesh.d/10-node.toml".into(),
            owner: "root:root".into(),
            permissions: "0644".into(),
            content: dropin(r)?,
        },
        WriteFile {
            path: "/etc/natsmesh/roots.pem".into(),
            owner: "root:root".into(),
            permissions: "0644".into(),
            content: roots,
        },
        secret("intermediate.crt", inter_cert),
        secret("intermediate.key", inter_key),
    ];
    if let Some(path) = &r.accounts {
        let node = files[0].content.clone();
        // 0644 root:root like the node's drop-in: natsmeshd reads it as its
        // own user, and the `natsmesh` group a 0640 file would need does
        // not exist yet when cloud-init writes files (the package that
        // makes it is installed after). It holds what `user add` writes:
        // bcrypt hashes and public nkeys, no secret.
        files.push(WriteFile {
            path: ACCOUNTS_DROPIN.into(),
            owner: "root:root".into(),
            permissions: "0644".into(),
            content: accounts(r, path, &node)?,
        });
    }
    let mut exposed = vec![
        "the region intermediate's key (it can issue certificates for this region's names until it expires)",
    ];
    if let Some(t) = &r.dns_token {
        files.push(secret("dns-token", read("--dns-token", t)?));
        exposed.push("the DNS token");
    }
    if let Some(t) = &r.lb_token {
        files.push(secret("lb-token", read("--lb-token", t)?));
        exposed.push("the load-balancer token");
    }
    let repository = match (&r.apt_url, &r.apt_key) {
        (Some(url), Some(key_file)) => {
            let key = read("--apt-key", key_file)?;
            if !key.contains("BEGIN PGP PUBLIC KEY BLOCK") {
                return Err(invalid(
                    "--apt-key",
                    format!(
                        "{key_file:?}: not an ASCII-armoured OpenPGP public key (gpg --armor --export)"
                    ),
                ));
            }
            Some((url.clone(), key))
        }
        _ if r.appliance => None,
        _ => {
            return Err(UserDataError::Usage(
                "--apt-url and --apt-key, or --appliance".into(),
            ));
        }
    };
    let installs = repository.as_ref().map(|(url, _)| url.clone());
    let doc = CloudConfig {
        write_files: files,
        apt: repository.map(|(url, key)| Apt {
            sources: BTreeMap::from([(
                "natsmesh.list".to_owned(),
                AptSource {
                    // cloud-init writes the key to a keyring of its own and
                    // puts its path where $KEY_FILE stands.
                    source: format!("deb [signed-by=$KEY_FILE] {url} ./"),
                    key,
                },
            )]),
        }),
        package_update: installs.is_some(),
        packages: if installs.is_some() {
            vec!["natsmesh".into()]
        } else {
            Vec::new()
        },
    };
    let yaml =
        serde_norway::to_string(&doc).map_err(|e| UserDataError::Serialise(e.to_string()))?;
    let mut text = String::from("#cloud-config\n");
    for line in [
        format!(
            "natsmesh node of region {} ({}), made by natsmeshd user-data {}.",
            r.region,
            r.domain,
            env!("CARGO_PKG_VERSION")
        ),
        "It holds secrets: paste it only into the machine's creation form.".to_owned(),
    ] {
        text.push_str(&comment(&line)?);
    }
    text.push_str(&yaml);
    size_limit(r.provider, &text)?;
    let secrets = doc
        .write_files
        .iter()
        .filter(|f| f.path.starts_with(CREDENTIALS))
        .count();
    let mut note = format!(
        "user-data for a {} node of region {}: writes /etc/natsmesh/natsmesh.d/10-node.toml{}, the roots, and {secrets} root-only (0600) file(s) in {CREDENTIALS}; {}.\n",
        match r.provider {
            Target::Digitalocean => "DigitalOcean",
            Target::Linode => "Linode",
            Target::Nocloud => "NoCloud",
        },
        r.region,
        if r.accounts.is_some() {
            format!(" and {ACCOUNTS_DROPIN}")
        } else {
            String::new()
        },
        installs.map_or_else(
            || "natsmesh comes with the appliance image".to_owned(),
            |url| format!("installs natsmesh from {url}")
        )
    );
    note.push_str(&format!("It exposes {}.\n", exposed.join(", ")));
    match r.provider {
        Target::Digitalocean => note.push_str(
            "DigitalOcean serves user-data to any local process from 169.254.169.254 for the droplet's whole life: give it only short-lived, narrow secrets (a region intermediate of short validity, tokens scoped to the zone and the balancer) and rotate them.\n",
        ),
        Target::Linode => note.push_str(
            "Linode's metadata service serves user-data to local processes that ask for a token: give it only short-lived, narrow secrets.\n",
        ),
        Target::Nocloud => note.push_str("The NoCloud seed keeps these secrets on its medium: remove it after the first boot.\n"),
    }
    Ok((text, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_line_never_carries_a_line_break() {
        assert_eq!(
            comment("region fra1").ok().as_deref(),
            Some("# region fra1\n")
        );
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\0b",
            "a\tb",
        ] {
            assert!(comment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_providers_limits_hold_to_the_byte() {
        let text = |n: usize| "x".repeat(n);
        assert!(size_limit(Target::Digitalocean, &text(65_536)).is_ok());
        assert!(size_limit(Target::Digitalocean, &text(65_537)).is_err());
        // 12,000 bytes are exactly 16,000 of base64; one more is 16,004.
        assert!(size_limit(Target::Linode, &text(12_000)).is_ok());
        let over = size_limit(Target::Linode, &text(12_001)).err();
        assert!(
            over.as_ref()
                .is_some_and(|e| e.to_string().contains("12001 bytes (16004 base64-encoded)")),
            "{over:?}"
        );
        assert!(size_limit(Target::Nocloud, &text(1 << 20)).is_ok());
    }

    #[test]
    fn balancer_ids_are_the_providers_own() {
        let uuid = "4de7ac8b-495b-4884-9a69-1050c6793cd6";
        assert!(lb_id(Target::Digitalocean, uuid).is_ok());
        assert!(lb_id(Target::Digitalocean, &uuid.to_uppercase()).is_ok());
        for bad in [
            "nats-fra1-lb",
            "4de7ac8b495b48849a691050c6793cd6",
            "4de7ac8b-495b-4884-9a69-1050c6793cd",
            "4de7ac8b-495b-4884-9a69-1050c6793cdg",
            "{4de7ac8b-495b-4884-9a69-1050c6793cd6}",
            "",
        ] {
            assert!(lb_id(Target::Digitalocean, bad).is_err(), "{bad:?}");
        }
        assert!(lb_id(Target::Linode, "12345").is_ok());
        for bad in [
            "0",
            "00",
            "-1",
            "+5",
            "12a",
            "",
            "99999999999999999999999",
            uuid,
        ] {
            assert!(lb_id(Target::Linode, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn apt_urls_are_http_https_or_file_without_query_or_fragment() {
        for ok in [
            "https://apt.example.com/natsmesh",
            "http://mirror.internal/natsmesh",
            "file:/srv/natsmesh-apt",
        ] {
            assert!(check_apt_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://apt.example.com/x",
            "https://apt.example.com/x#frag",
            "https://apt.example.com/x?q=1",
            "https://apt.example.com/x ./",
            "https://apt.example.com/\tx",
            "https://apt.example.com/x\n",
            "https://äpt.example.com/x",
            "",
        ] {
            let e = check_apt_url(bad).err();
            assert_eq!(
                e.as_ref().and_then(UserDataError::arg),
                Some("--apt-url"),
                "{bad:?}"
            );
        }
    }
}
