//! `natsmeshd plan digitalocean|linode`: what must exist besides the
//! machines, as Terraform for the provider's official provider — per
//! region a VPC (DigitalOcean), a balancer set up exactly as the
//! balancer's set-up check demands, the machines (`count`, user-data read
//! with `file()`), a firewall opening exactly the listeners' ports to
//! exactly who needs them; the domain and the client names' records — and
//! a script that makes each region's user-data with `natsmeshd user-data`.
//!
//! A pure function from the request to text: nothing is read, written or
//! contacted here (the CLI writes the files). Every number comes from the
//! daemon's own defaults ([`Ports::defaults`]) and the balancer module's
//! constants, never restated. No secret is ever embedded: the machines'
//! user-data, which holds the region's intermediate key and the tokens,
//! enters through `file()`/`filebase64()` at apply time.

pub mod digitalocean;
pub mod hcl;
pub mod linode;

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::schema::RawConfig;
use crate::config::validate::is_region_label;

/// Whose official Terraform provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cloud {
    /// digitalocean/digitalocean.
    Digitalocean,
    /// linode/linode.
    Linode,
}

impl Cloud {
    fn name(self) -> &'static str {
        match self {
            Self::Digitalocean => "digitalocean",
            Self::Linode => "linode",
        }
    }
}

/// What `natsmeshd plan` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct Request {
    /// The provider.
    #[arg(value_enum)]
    pub cloud: Cloud,
    /// The regions (natsmesh's region labels, also the provider's region
    /// ids: fra1,nyc3,sgp1 or eu-central,us-east), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "R,R,…")]
    pub regions: Vec<String>,
    /// Machines per region.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// The supercluster's DNS domain (node.domain); its zone is planned.
    #[arg(long)]
    pub domain: String,
    /// A name all regions share that clients use, outside the domain
    /// (repeatable; `ca intermediate --permit-name` refuses names inside
    /// it): an A record for every region's balancer, in every node
    /// certificate. Each region's balancer also gets `lb.<region>.<domain>`.
    #[arg(long = "client-name", value_name = "NAME")]
    pub client_names: Vec<String>,
    /// The zone (hosted at the same provider) the --client-name records go
    /// into; default: each name's parent.
    #[arg(long, value_name = "ZONE", requires = "client_names")]
    pub client_zone: Option<String>,
    /// The machines' image (default: Debian 12, `debian-12-x64` or
    /// `linode/debian12`; with --appliance, the appliance image's id).
    #[arg(long)]
    pub image: Option<String>,
    /// The machines' size (DigitalOcean slug, Linode type).
    #[arg(long)]
    pub size: Option<String>,
    /// Serve /metrics on the private address and open its port to the
    /// region's private network (a Prometheus there).
    #[arg(long)]
    pub metrics_private: bool,
    /// Open the leafnode port to anyone (leaf nodes dial in from
    /// elsewhere; enable `[broker.leafnodes]` with a drop-in).
    #[arg(long)]
    pub leafnodes: bool,
    /// Linode: the zones' SOA e-mail (default hostmaster@DOMAIN).
    #[arg(long, value_name = "EMAIL")]
    pub soa_email: Option<String>,
    /// For the user-data script: natsmesh's apt repository.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "appliance",
        requires = "apt_key"
    )]
    pub apt_url: Option<String>,
    /// For the user-data script: the repository's OpenPGP key.
    #[arg(long, value_name = "FILE", requires = "apt_url")]
    pub apt_key: Option<PathBuf>,
    /// For the user-data script: the machines run the appliance image
    /// (`--image` names it: a stock image has no natsmesh).
    #[arg(long, conflicts_with_all = ["apt_url", "apt_key"], requires = "image")]
    pub appliance: bool,
    /// For the user-data script: accounts and users (`natsmeshd user add`'s
    /// file), carried by every node.
    #[arg(long, value_name = "FILE")]
    pub accounts: Option<PathBuf>,
    /// Write main.tf and user-data.sh into DIR instead of printing.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Why nothing was planned: always an argument the operator typed.
#[derive(Debug, thiserror::Error)]
#[error("{arg}: {why}")]
pub struct PlanError {
    /// The argument, as typed.
    pub arg: &'static str,
    /// What is wrong, and what is allowed.
    pub why: String,
}

fn invalid(arg: &'static str, why: impl Into<String>) -> PlanError {
    PlanError {
        arg,
        why: why.into(),
    }
}

/// The ports natsmeshd's listeners use unless a drop-in changes them: read
/// from the configuration's defaults, so the plan and the daemon agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// `[broker.client] port`.
    pub client: u16,
    /// `[broker.cluster] port`.
    pub cluster: u16,
    /// `[broker.gateway] port`.
    pub gateway: u16,
    /// `[broker.leafnodes] port`.
    pub leafnodes: u16,
    /// `[metrics] port`.
    pub metrics: u16,
    /// `[load_balancer] ready_port`.
    pub ready: u16,
    /// `[broker.monitoring] port` (never opened: no authentication).
    pub monitoring: u16,
}

impl Ports {
    /// The configuration's defaults.
    pub fn defaults() -> Self {
        let c = RawConfig::default();
        Self {
            client: c.broker.client.port,
            cluster: c.broker.cluster.port,
            gateway: c.broker.gateway.port,
            leafnodes: c.broker.leafnodes.port,
            metrics: c.metrics.port,
            ready: c.load_balancer.ready_port,
            monitoring: c.broker.monitoring.port,
        }
    }
}

/// The DigitalOcean health check's timing. Its drain delay,
/// (interval + timeout) × unhealthy = 12 s, is what a stop waits before
/// lame duck, well inside `load_balancer.stop_budget`; each value is at
/// the provider's minimum (3 s, 3 s, 2, 2) so a node that stops serving
/// leaves soonest.
pub const DO_HEALTH: crate::balancer::Health = crate::balancer::Health {
    protocol: String::new(),
    port: None,
    path: String::new(),
    interval: std::time::Duration::from_secs(3),
    timeout: std::time::Duration::from_secs(3),
    unhealthy: 2,
    healthy: 2,
};

/// A NodeBalancer config's timing: Linode wants the interval above the
/// timeout; drain delay (5 s + 3 s) × 2 = 16 s.
pub const LINODE_HEALTH: crate::balancer::Health = crate::balancer::Health {
    protocol: String::new(),
    port: None,
    path: String::new(),
    interval: std::time::Duration::from_secs(5),
    timeout: std::time::Duration::from_secs(3),
    unhealthy: 2,
    healthy: 2,
};

/// One file of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its name in `--out`.
    pub name: &'static str,
    /// Its text.
    pub text: String,
    /// Whether it is run (a script).
    pub executable: bool,
}

/// The plan: `main.tf` and `user-data.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The files, `main.tf` first.
    pub files: Vec<File>,
}

impl Plan {
    /// What is printed without `--out`: main.tf, then the script as
    /// comments (the whole stays valid HCL).
    pub fn printed(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.files.iter().enumerate() {
            if i == 0 {
                out.push_str(&f.text);
            } else {
                let _ = writeln!(
                    out,
                    "\n# ---- {} (written beside main.tf with --out DIR) ----",
                    f.name
                );
                hcl::comment_lines(&f.text, "", &mut out);
            }
        }
        out
    }
}

/// A checked request: what the generators use.
#[derive(Debug, Clone)]
pub(crate) struct Checked<'a> {
    pub r: &'a Request,
    pub domain: String,
    /// Each shared client name, its zone, and its name relative to the
    /// zone (empty at the zone's apex).
    pub client_names: Vec<ClientName>,
    pub ports: Ports,
}

/// A shared client name and where its records go.
#[derive(Debug, Clone)]
pub(crate) struct ClientName {
    /// `nats.example.com`.
    pub name: String,
    /// `example.com`: a zone at the provider, read with a data source.
    pub zone: String,
    /// `nats`; empty at the zone's apex.
    pub relative: String,
}

impl Checked<'_> {
    /// The zones the shared names live in, each once, in order.
    pub fn client_zones(&self) -> Vec<&str> {
        let mut zones: Vec<&str> = Vec::new();
        for c in &self.client_names {
            if !zones.contains(&c.zone.as_str()) {
                zones.push(&c.zone);
            }
        }
        zones
    }

    /// Every name a region's nodes carry for clients: its balancer's own
    /// name, then the shared ones.
    pub fn names_of(&self, region: &str) -> Vec<String> {
        std::iter::once(lb_name(region, &self.domain))
            .chain(self.client_names.iter().map(|c| c.name.clone()))
            .collect()
    }
}

/// Who may reach a listener. Both clouds' firewalls are made from one
/// list of [`Rule`]s, so which port is open from where cannot drift
/// between them; each cloud only spells the sources its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The region's balancer, forwarding clients (and, on a cloud whose
    /// balancer has its own network, the region's own network too).
    Balancer,
    /// The region's balancer's health check, on natsmeshd's readiness port.
    HealthCheck,
    /// The region's own machines, on the private network.
    Region,
    /// The other regions' machines, at their public addresses.
    OtherRegions,
    /// Anyone: the listener authenticates.
    Anywhere,
}

/// One inbound firewall rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// A label for clouds that name their rules.
    pub label: &'static str,
    pub port: u16,
    /// What the port serves, first words of the rule's comment.
    pub serves: &'static str,
    pub from: Source,
}

impl Checked<'_> {
    /// Every inbound rule a region's machines need, and nothing else: the
    /// client port from the balancer, the readiness port from its health
    /// check where the cloud checks it (`health_check`), routes from the
    /// region, gateways from the other regions (when there are any),
    /// leaf nodes from anywhere and `/metrics` from the region when asked.
    pub(crate) fn inbound_rules(&self, health_check: bool) -> Vec<Rule> {
        let p = self.ports;
        let rule = |label, port, serves, from| Rule {
            label,
            port,
            serves,
            from,
        };
        let mut rules = vec![rule("nats-client", p.client, "Clients", Source::Balancer)];
        if health_check {
            rules.push(rule(
                "natsmesh-ready",
                p.ready,
                "The balancer's health check on /ready",
                Source::HealthCheck,
            ));
        }
        rules.push(rule("nats-cluster", p.cluster, "Routes", Source::Region));
        if self.r.regions.len() > 1 {
            rules.push(rule(
                "nats-gateway",
                p.gateway,
                "Gateways",
                Source::OtherRegions,
            ));
        }
        if self.r.leafnodes {
            rules.push(rule(
                "nats-leafnode",
                p.leafnodes,
                "Leaf nodes (they authenticate)",
                Source::Anywhere,
            ));
        }
        if self.r.metrics_private {
            rules.push(rule(
                "natsmesh-metrics",
                p.metrics,
                "/metrics, for a Prometheus in the region",
                Source::Region,
            ));
        }
        rules
    }

    /// Every shared client name's record in every region, as
    /// `(resource name, zone index, name)`: each name points at each
    /// region's balancer.
    pub(crate) fn client_records<'c>(
        &'c self,
        region: &str,
    ) -> impl Iterator<Item = (String, usize, &'c ClientName)> + 'c {
        let zones = self.client_zones();
        let id = ident(region);
        self.client_names.iter().enumerate().map(move |(i, n)| {
            let z = zones.iter().position(|z| *z == n.zone).unwrap_or(0);
            (format!("client{i}_{id}"), z, n)
        })
    }
}

/// `lb.<region>.<domain>`: a region's balancer. Below the region's name,
/// so the region's intermediate permits it without `--permit-name`; no
/// server is called `lb` (provider server names are
/// `<provider>-<region>-<id>`).
pub fn lb_name(region: &str, domain: &str) -> String {
    format!("lb.{region}.{domain}")
}

/// A Terraform identifier for a region (a label may start with a digit,
/// an identifier may not).
pub(crate) fn ident(region: &str) -> String {
    if region.starts_with(|c: char| c.is_ascii_digit()) {
        format!("r{region}")
    } else {
        region.to_owned()
    }
}

/// `"natsmesh-<region>-${count.index + 1}"`: a template, from a checked
/// region label (nothing in it to escape).
pub(crate) fn numbered(region: &str) -> hcl::Value {
    hcl::e(format!("\"natsmesh-{region}-${{count.index + 1}}\""))
}

/// What names an image, a size or a type: the providers' slugs.
fn slug(arg: &'static str, v: &str) -> Result<(), PlanError> {
    if v.is_empty()
        || v.len() > 128
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return Err(invalid(
            arg,
            format!("{v:?} is not a provider slug (letters, digits, '.', '_', '/', '-')"),
        ));
    }
    Ok(())
}

/// A path the script passes on: UTF-8 without control characters (it is
/// shell-quoted, but a line break would still split a comment line).
fn script_path(arg: &'static str, p: &std::path::Path) -> Result<String, PlanError> {
    let s = p
        .to_str()
        .ok_or_else(|| invalid(arg, format!("{p:?} is not UTF-8")))?;
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err(invalid(
            arg,
            format!("{s:?} is empty or holds a control character"),
        ));
    }
    Ok(s.to_owned())
}

fn check(r: &Request) -> Result<Checked<'_>, PlanError> {
    if r.regions.is_empty() {
        return Err(invalid("--regions", "give at least one region"));
    }
    for (i, region) in r.regions.iter().enumerate() {
        if !is_region_label(region) {
            return Err(invalid(
                "--regions",
                format!(
                    "{region:?} is not a lower-case DNS label (a-z, 0-9 and '-', at most 63, no leading or trailing '-')"
                ),
            ));
        }
        if r.regions[..i].contains(region) {
            return Err(invalid("--regions", format!("{region:?} is given twice")));
        }
        // Linode labels: NodeBalancer and Firewall 3–32 characters.
        if r.cloud == Cloud::Linode && format!("natsmesh-{region}").len() > 32 {
            return Err(invalid(
                "--regions",
                format!(
                    "{region:?} is too long for Linode's labels (natsmesh-{region} must fit in 32 characters)"
                ),
            ));
        }
    }
    if r.nodes == 0 || r.nodes > 99 {
        return Err(invalid(
            "--nodes",
            format!("{} is not between 1 and 99", r.nodes),
        ));
    }
    let domain = r.domain.trim_end_matches('.').to_ascii_lowercase();
    if !natsmesh_broker::model::is_dns_name(&domain)
        || !domain.contains('.')
        || pki_types::ServerName::try_from(format!("{}.{domain}", r.regions[0])).is_err()
    {
        return Err(invalid(
            "--domain",
            format!(
                "{:?} is not a DNS name with a parent (labels of letters, digits, '-' joined by '.')",
                r.domain
            ),
        ));
    }
    let zone_arg = r
        .client_zone
        .as_deref()
        .map(|z| z.trim_end_matches('.').to_ascii_lowercase());
    if let Some(z) = &zone_arg
        && (!natsmesh_broker::model::is_dns_name(z) || !z.contains('.'))
    {
        return Err(invalid(
            "--client-zone",
            format!("{z:?} is not a DNS name of at least two labels"),
        ));
    }
    let mut client_names: Vec<ClientName> = Vec::new();
    for name in &r.client_names {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        if n.starts_with('_') || pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(invalid(
                "--client-name",
                format!("{name:?} is not a host name a TLS client accepts"),
            ));
        }
        // What `ca intermediate --permit-name` will refuse (a shared name
        // inside or above the domain would let one region's intermediate
        // mint another's names), refused here first.
        for region in &r.regions {
            crate::ca_cli::intermediate_args(region, &domain, std::slice::from_ref(&n), &[])
                .map_err(|why| invalid("--client-name", why.to_string()))?;
        }
        let zone = match &zone_arg {
            Some(z) => z.clone(),
            None => n
                .split_once('.')
                .map(|(_, parent)| parent.to_owned())
                .unwrap_or_default(),
        };
        let relative = if n == zone {
            String::new()
        } else if let Some(rel) = n.strip_suffix(&format!(".{zone}")) {
            rel.to_owned()
        } else {
            return Err(invalid(
                "--client-name",
                format!("{name:?} is not in --client-zone {zone:?}"),
            ));
        };
        if !zone.contains('.') {
            return Err(invalid(
                "--client-name",
                format!(
                    "{name:?}: its parent {zone:?} is a top-level domain, not a zone the plan can add records to; give --client-zone"
                ),
            ));
        }
        if client_names.iter().any(|c| c.name == n) {
            return Err(invalid("--client-name", format!("{name:?} is given twice")));
        }
        client_names.push(ClientName {
            name: n,
            zone,
            relative,
        });
    }
    for (arg, v) in [("--image", &r.image), ("--size", &r.size)] {
        if let Some(v) = v {
            slug(arg, v)?;
        }
    }
    if let Some(email) = &r.soa_email {
        let ok = email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
                && natsmesh_broker::model::is_dns_name(host)
                && host.contains('.')
        });
        if !ok {
            return Err(invalid(
                "--soa-email",
                format!("{email:?} is not an e-mail address"),
            ));
        }
    }
    if let Some(url) = &r.apt_url
        && (url.is_empty() || !url.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(invalid(
            "--apt-url",
            format!("{url:?} holds a space, a control or a non-ASCII character"),
        ));
    }
    if r.apt_url.is_none() && !r.appliance {
        return Err(invalid(
            "--apt-url",
            "--apt-url and --apt-key, or --appliance with --image",
        ));
    }
    if let Some(p) = &r.apt_key {
        script_path("--apt-key", p)?;
    }
    if let Some(p) = &r.accounts {
        script_path("--accounts", p)?;
    }
    Ok(Checked {
        r,
        domain,
        client_names,
        ports: Ports::defaults(),
    })
}

/// The plan for `r`, or the argument at fault. Nothing is read or written.
pub fn plan(r: &Request) -> Result<Plan, PlanError> {
    let c = check(r)?;
    let main = match r.cloud {
        Cloud::Digitalocean => digitalocean::main_tf(&c),
        Cloud::Linode => linode::main_tf(&c),
    };
    Ok(Plan {
        files: vec![
            File {
                name: "main.tf",
                text: main,
                executable: false,
            },
            File {
                name: "user-data.sh",
                text: script(&c),
                executable: true,
            },
        ],
    })
}

/// `'…'` for sh: nothing inside is interpreted.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The order of work, shown at the top of main.tf and the script.
pub(crate) fn steps(c: &Checked<'_>, balancers: &[String]) -> String {
    let targets: Vec<String> = balancers.iter().map(|b| format!("-target={b}")).collect();
    format!(
        "Order (the user-data names each region's balancer, which exists only once made):\n\
         1. terraform init && terraform apply {}\n\
         2. run user-data.sh from where `natsmeshd plan` ran (it makes user-data-<region>.yaml here:\n   \
         secrets, mode 0600; keep them out of version control)\n\
         3. terraform apply\n\
         4. at {}'s parent, point its NS records at {}",
        targets.join(" "),
        c.domain,
        match c.r.cloud {
            Cloud::Digitalocean =>
                "ns1.digitalocean.com, ns2.digitalocean.com, ns3.digitalocean.com",
            Cloud::Linode => "ns1.linode.com … ns5.linode.com",
        }
    )
}

/// The script making each region's user-data with `natsmeshd user-data`.
fn script(c: &Checked<'_>) -> String {
    let r = c.r;
    let cloud = r.cloud.name();
    let mut out = String::new();
    let _ = writeln!(out, "#!/bin/sh");
    let _ = writeln!(
        out,
        "# Written by `natsmeshd plan {cloud}`: makes user-data-<region>.yaml, which main.tf\n\
         # reads with file(). They hold the region's intermediate key and the nodes'\n\
         # tokens: made 0600, never committed, never in main.tf.\n\
         #\n\
         # Needs, where it is run (or where PKI and TOKENS point):\n\
         #   $PKI/root.crt, $PKI/root.key   the offline root (natsmeshd ca init --out pki)\n\
         #   $TOKENS/lb-token               load balancers: {lb}\n\
         #   $TOKENS/dns-token              DNS: {dns}\n\
         # and `terraform output` after the balancers exist (see main.tf's header).",
        lb = lb_scopes(r.cloud),
        dns = dns_scopes(r.cloud),
    );
    let _ = writeln!(
        out,
        "#\n\
         # Run it where `natsmeshd plan` ran: the paths it was given (--apt-key,\n\
         # --accounts) and PKI and TOKENS are relative to there; the user-data\n\
         # files go beside main.tf."
    );
    let _ = writeln!(out, "set -eu");
    let _ = writeln!(out, "here=$(dirname \"$0\")");
    let _ = writeln!(out, "umask 077");
    let _ = writeln!(out, "PKI=${{PKI:-pki}}");
    let _ = writeln!(out, "TOKENS=${{TOKENS:-tokens}}");
    let _ = writeln!(out, "NATSMESHD=${{NATSMESHD:-natsmeshd}}");
    let _ = writeln!(
        out,
        "for f in \"$PKI/root.crt\" \"$TOKENS/lb-token\" \"$TOKENS/dns-token\"; do\n  \
         [ -e \"$f\" ] || {{ echo \"user-data.sh: $f is missing\" >&2; exit 1; }}\ndone"
    );
    let permit: String = c
        .client_names
        .iter()
        .map(|n| format!(" --permit-name {}", sh_quote(&n.name)))
        .collect();
    for region in &r.regions {
        let d = sh_quote(&c.domain);
        let _ = writeln!(out, "\n# {region}");
        let _ = writeln!(
            out,
            "[ -e \"$PKI/{region}.crt\" ] || \"$NATSMESHD\" ca intermediate --root \"$PKI\" --region {region} --domain {d}{permit} --out \"$PKI\""
        );
        let _ = writeln!(
            out,
            "lb=$(terraform -chdir=\"$here\" output -raw lb_id_{})",
            ident(region)
        );
        let mut args = vec![
            format!("--provider {cloud} --region {region} --domain {d}"),
            "--roots \"$PKI/root.crt\"".to_owned(),
            format!(
                "--intermediate-cert \"$PKI/{region}.crt\" --intermediate-key \"$PKI/{region}.key\""
            ),
            match (&r.apt_url, &r.apt_key) {
                (Some(url), Some(key)) => format!(
                    "--apt-url {} --apt-key {}",
                    sh_quote(url),
                    sh_quote(&key.to_string_lossy())
                ),
                _ => "--appliance".to_owned(),
            },
            format!("--dns {cloud} --dns-token \"$TOKENS/dns-token\""),
            "--lb-id \"$lb\" --lb-token \"$TOKENS/lb-token\"".to_owned(),
            format!("--bootstrap-expect {}", r.nodes),
        ];
        for n in c.names_of(region) {
            args.push(format!("--client-name {}", sh_quote(&n)));
        }
        if r.metrics_private {
            args.push("--metrics-bind private".to_owned());
        }
        if let Some(a) = &r.accounts {
            args.push(format!("--accounts {}", sh_quote(&a.to_string_lossy())));
        }
        let _ = writeln!(
            out,
            "\"$NATSMESHD\" user-data \\\n    {} \\\n    > \"$here/user-data-{region}.yaml.new\"",
            args.join(" \\\n    ")
        );
        let _ = writeln!(
            out,
            "mv \"$here/user-data-{region}.yaml.new\" \"$here/user-data-{region}.yaml\""
        );
    }
    out
}

/// The nodes' load-balancer token, as the balancer code states it.
pub(crate) fn lb_scopes(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Digitalocean => crate::balancer::LbProvider::DigitalOcean.scopes(),
        Cloud::Linode => crate::balancer::LbProvider::Linode.scopes(),
    }
}

/// The nodes' DNS token, as DNS publication states it.
pub(crate) fn dns_scopes(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Digitalocean => crate::publish::Provider::DigitalOcean.scopes(),
        Cloud::Linode => crate::publish::Provider::Linode.scopes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        r: Request,
    }

    pub(crate) fn request(args: &str) -> Request {
        let argv = std::iter::once("plan").chain(args.split_whitespace());
        match Cli::try_parse_from(argv) {
            Ok(c) => c.r,
            Err(e) => panic!("{args}: {e}"),
        }
    }

    #[test]
    fn ports_come_from_the_configurations_defaults() {
        let p = Ports::defaults();
        let c = RawConfig::default();
        assert_eq!(p.client, c.broker.client.port);
        assert_eq!(p.gateway, c.broker.gateway.port);
        assert_eq!(p.ready, c.load_balancer.ready_port);
        // Distinct: one firewall rule per listener.
        let mut all = vec![
            p.client,
            p.cluster,
            p.gateway,
            p.leafnodes,
            p.metrics,
            p.ready,
            p.monitoring,
        ];
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 7);
    }

    #[test]
    fn the_health_checks_drain_delay_fits_the_stop_budget() {
        // Even before a node has read its balancer (when its stop budget
        // is the fixed fallback), the planned check's drain delay fits.
        let budget = crate::balancer::UNKNOWN_STOP_BUDGET;
        for h in [&DO_HEALTH, &LINODE_HEALTH] {
            assert!(h.drain_delay() < budget / 2, "{h:?}");
        }
        // Linode wants the interval above the timeout.
        assert!(LINODE_HEALTH.interval > LINODE_HEALTH.timeout);
        assert_eq!(DO_HEALTH.drain_delay().as_secs(), 12);
    }

    #[test]
    fn refuses_what_the_plan_cannot_make_naming_the_argument() {
        let base = "--domain nats.example.com --appliance --image private/7";
        let cases = [
            (
                "digitalocean --regions FRA1",
                "--regions",
                "not a lower-case",
            ),
            ("digitalocean --regions fra1,fra1", "--regions", "twice"),
            (
                "linode --regions this-region-name-is-far-too-long",
                "--regions",
                "32 characters",
            ),
            (
                "digitalocean --regions fra1 --nodes 0",
                "--nodes",
                "between",
            ),
            (
                "digitalocean --regions fra1 --client-name lb.fra1.nats.example.com",
                "--client-name",
                "inside or above --domain",
            ),
            (
                "digitalocean --regions fra1 --client-name example.com",
                "--client-name",
                "inside or above --domain",
            ),
            (
                "digitalocean --regions fra1 --client-name nats.example.org --client-zone example.net",
                "--client-name",
                "not in --client-zone",
            ),
            (
                "digitalocean --regions fra1 --client-name nats.org",
                "--client-name",
                "top-level domain",
            ),
            (
                "digitalocean --regions fra1 --size s-2vcpu;rm",
                "--size",
                "slug",
            ),
            (
                "linode --regions eu-central --soa-email nobody",
                "--soa-email",
                "e-mail",
            ),
        ];
        for (args, arg, why) in cases {
            let e = plan(&request(&format!("{args} {base}"))).err();
            let e = e.unwrap_or_else(|| panic!("{args}: planned"));
            assert_eq!(e.arg, arg, "{args}: {e}");
            assert!(e.why.contains(why), "{args}: {e}");
        }
        let e = plan(&request(
            "digitalocean --regions fra1 --domain 1.2 --appliance --image private/7",
        ))
        .err();
        assert_eq!(e.map(|e| e.arg), Some("--domain"));
    }

    #[test]
    fn the_script_makes_each_regions_user_data_from_terraforms_balancer_ids() {
        let p = plan(&request(
            "digitalocean --regions fra1,nyc3 --nodes 3 --domain nats.example.com \
             --client-name nats.example.org --metrics-private --appliance --image private/7 --accounts it's.toml",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let script = &p.files[1].text;
        assert!(p.files[1].executable);
        for region in ["fra1", "nyc3"] {
            assert!(script.contains(&format!(
                "lb=$(terraform -chdir=\"$here\" output -raw lb_id_{region})"
            )));
            assert!(script.contains(&format!("> \"$here/user-data-{region}.yaml.new\"")));
            assert!(script.contains(&format!(
                "ca intermediate --root \"$PKI\" --region {region} --domain 'nats.example.com' --permit-name 'nats.example.org'"
            )));
            // Its balancer's own name, then the shared one.
            assert!(script.contains(&format!(
                "--client-name 'lb.{region}.nats.example.com' \\\n    --client-name 'nats.example.org'"
            )));
        }
        assert!(script.contains("--lb-id \"$lb\""));
        assert!(script.contains("--bootstrap-expect 3"));
        assert!(script.contains("--metrics-bind private"));
        assert!(script.contains("--accounts 'it'\\''s.toml'"));
        assert!(script.contains("umask 077"));
        // Printed, the script follows main.tf as comments.
        let printed = p.printed();
        assert!(printed.starts_with(&p.files[0].text));
        assert!(printed.contains("\n# umask 077\n"));
    }
}
