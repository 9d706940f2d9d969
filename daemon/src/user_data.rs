//! `natsmeshd user-data`: a ready-to-paste cloud-init user-data file that
//! turns a new droplet, Linode or NoCloud machine into a member of its
//! region: natsmesh's drop-in and credentials written root-only, natsmesh
//! installed from its signed apt repository, the unit started by the
//! package. Nobody hand-edits YAML: the drop-in is TOML built from typed
//! values and the YAML is serialised, never templated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

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
    /// NoCloud: the server name.
    #[arg(long)]
    pub name: Option<String>,
    /// NoCloud: the private address.
    #[arg(long, value_name = "IPV4")]
    pub private_address: Option<std::net::Ipv4Addr>,
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

fn read(what: &str, path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
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

/// The node's drop-in, as TOML.
fn dropin(r: &Request) -> Result<String, String> {
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
            return Err("--provider nocloud needs --name and --private-address".into());
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
                ("max_memory_store", s(&r.jetstream_memory)),
                ("max_file_store", s(&r.jetstream_store)),
            ]),
        ),
    ];
    if r.lb_vpc_subnet.is_some() {
        // A VPC backend's address is not known before the Linode exists:
        // clients are accepted on every address (they must authenticate).
        broker.push(("client", table(&[("bind", s("any"))])));
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
                return Err("a load balancer needs --provider digitalocean or linode".into());
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
                return Err(
                    "--lb-vpc-subnet is for Linode NodeBalancers (--provider linode)".into(),
                );
            }
            lb.push(("backend", s("vpc")));
            lb.push((
                "subnet_id",
                toml::Value::Integer(
                    i64::try_from(subnet).map_err(|_| "--lb-vpc-subnet is too large")?,
                ),
            ));
        }
        doc.push(("load_balancer", table(&lb)));
    }
    let text = toml::to_string(&table(&doc)).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by cloud-init from `natsmeshd user-data`; `natsmeshd render --explain` shows the result.\n{text}"
    ))
}

/// The user-data document, and what it exposes (for stderr).
pub fn render(r: &Request) -> Result<(String, String), String> {
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
            content: read("--roots", &r.roots)?,
        },
        secret(
            "intermediate.crt",
            read("--intermediate-cert", &r.intermediate_cert)?,
        ),
        secret(
            "intermediate.key",
            read("--intermediate-key", &r.intermediate_key)?,
        ),
    ];
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
                return Err(format!(
                    "--apt-key {}: not an ASCII-armoured OpenPGP public key (gpg --armor --export)",
                    key_file.display()
                ));
            }
            Some((url.clone(), key))
        }
        _ if r.appliance => None,
        _ => return Err("--apt-url and --apt-key, or --appliance".into()),
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
    let yaml = serde_norway::to_string(&doc).map_err(|e| e.to_string())?;
    let text = format!(
        "#cloud-config\n# natsmesh node of region {} ({}), made by natsmeshd user-data {}.\n# It holds secrets: paste it only into the machine's creation form.\n{yaml}",
        r.region,
        r.domain,
        env!("CARGO_PKG_VERSION")
    );
    let secrets = doc
        .write_files
        .iter()
        .filter(|f| f.path.starts_with(CREDENTIALS))
        .count();
    let mut note = format!(
        "user-data for a {} node of region {}: writes /etc/natsmesh/natsmesh.d/10-node.toml, the roots, and {secrets} root-only (0600) file(s) in {CREDENTIALS}; {}.\n",
        match r.provider {
            Target::Digitalocean => "DigitalOcean",
            Target::Linode => "Linode",
            Target::Nocloud => "NoCloud",
        },
        r.region,
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
