//! From the merged raw configuration to validated settings.
//!
//! Every problem is collected (not just the first), each naming the key,
//! the value and what is allowed, located in the file that set it. What
//! nats-server itself would refuse at start is checked by
//! `natsmesh_broker::validate` on the built model; its problems are mapped
//! back to the TOML key an operator writes.

mod balancer;
mod fleet;
mod publish;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natsmesh_broker::conf::IncludePath;
use natsmesh_broker::model::{
    Account, AccountJetStream, Cluster, Compression, Credential, Export, Gateway, HostPort, Import,
    JetStream, LeafRemote, LeafUser, Leafnodes, Listen, Mqtt, OperatorAuth, Permissions,
    RemoteGateway, ServerConfig, SyncInterval, Tls, User, Websocket,
};

use super::bind::Bind;
use super::identity::Identity;
use super::load::Loaded;
use super::problem::{Problem, Problems, Source};
use super::schema::{AuthMode, ClientTls, HealthTimings, Provider, RawConfig, TlsMode};
use super::settings::fleet::{Coordination, FLEET_ACCOUNT, MaintenanceSettings};
use super::settings::tls::{NodeNames, Source as TlsSource, TlsSettings};
use super::settings::{discovery, gate, metrics};
use crate::nkey;
use natsmesh_broker::conf::Name;

/// Validated settings: everything natsmeshd needs to run a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// natsmesh's region label (cluster and gateway name).
    pub region: String,
    /// Identity source.
    pub provider: Provider,
    /// The nats-server binary, resolved.
    pub binary: PathBuf,
    /// State directory; the rendered config lives here.
    pub state_dir: PathBuf,
    /// The broker configuration, version-independent.
    pub server: ServerConfig,
    /// Probe timings.
    pub health: HealthTimings,
    /// Restart policy.
    pub restart: RestartSettings,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Who this machine is.
    pub identity: Identity,
    /// TLS, when on.
    pub tls: Option<TlsSettings>,
    /// natsmeshd's own user in the system account, when there is one.
    pub system_user: Option<SystemUser>,
    /// Discovery through DNS, when on.
    pub discovery: Option<Discovered>,
    /// This node's own DNS records, when natsmeshd writes them.
    pub publish: Option<super::settings::publish::PublishSettings>,
    /// Load-balancer membership, when natsmeshd manages it.
    pub balancer: Option<super::settings::balancer::LbSettings>,
    /// Whether planned restarts take the region's lease.
    pub fleet: Coordination,
    /// `[maintenance]`.
    pub maintenance: MaintenanceSettings,
    /// Prometheus `/metrics`, when on.
    pub metrics: Option<metrics::MetricsSettings>,
    /// The gate in front of the gateway port (see the `gate` module).
    pub gate: Option<gate::GateSettings>,
    /// `[node.metadata]` on a cloud: asked once at start for the identity
    /// (kept here only so a reload can say a change needs a restart).
    pub metadata: Option<crate::config::schema::RawMetadata>,
}

/// Discovery as validated, with the JetStream bootstrap wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// What to look up.
    pub settings: discovery::DiscoverySettings,
    /// Servers to wait for before JetStream's first start (0: none).
    pub bootstrap_expect: usize,
    /// How long to wait for them.
    pub bootstrap_timeout: Duration,
}

/// The gateway URL of a region: `<region>.<domain>:<port>`, a stable name
/// nats-server resolves itself, so the rendered gateways never depend on
/// addresses.
pub fn region_gateway(region: &str, domain: &str, port: u16) -> Option<RemoteGateway> {
    let url = HostPort::parse(&format!("{region}.{domain}:{port}")).ok()?;
    Some(RemoteGateway {
        name: region.to_owned(),
        urls: vec![url],
    })
}

/// How natsmeshd authenticates as its system-account user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemUser {
    /// `natsmesh` with a password read from (or generated into) `file`;
    /// its bcrypt hash is cached beside it (`<file>.bcrypt`).
    Password {
        /// Secret file (a credential, or `<state_dir>/system.password`).
        file: PathBuf,
        /// Whether natsmeshd may create it on first start.
        generate: bool,
    },
    /// A `.creds` file (operator mode).
    Creds(PathBuf),
}

/// The system account natsmeshd renders in accounts mode.
pub const SYSTEM_ACCOUNT: &str = "SYS";
/// natsmeshd's user name in it.
pub const SYSTEM_USER: &str = "natsmesh";

/// How a broker that exits or hangs is restarted, and how it is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartSettings {
    /// Delay of the second retry (the first is immediate).
    pub backoff_initial: Duration,
    /// Longest delay.
    pub backoff_max: Duration,
    /// Crashes within the window that end natsmeshd.
    pub crash_loop_count: u32,
    /// The window.
    pub crash_loop_window: Duration,
    /// Wait past the lame-duck duration before SIGINT.
    pub stop_margin: Duration,
    /// Wait past SIGINT before SIGKILL.
    pub kill_after: Duration,
}

impl Settings {
    /// Where the rendered nats-server config is written.
    pub fn rendered_path(&self) -> PathBuf {
        self.state_dir.join("nats-server.conf")
    }

    /// The same settings with natsmeshd-issued TLS files in `dir`, for
    /// checking a configuration without touching the state directory.
    pub fn with_issued_tls_in(&self, dir: &Path) -> Settings {
        let mut s = self.clone();
        let Some(tls) = s.tls.as_mut() else {
            return s;
        };
        if !matches!(tls.source, TlsSource::Issue { .. }) {
            return s;
        }
        let mut moves: Vec<(PathBuf, PathBuf)> = vec![
            (tls.cert_file.clone(), dir.join("node.crt")),
            (tls.key_file.clone(), dir.join("node.key")),
        ];
        if let Some(r) = &tls.region_ca_file {
            moves.push((r.clone(), dir.join("region-ca.pem")));
            tls.region_ca_file = Some(dir.join("region-ca.pem"));
        }
        tls.cert_file = dir.join("node.crt");
        tls.key_file = dir.join("node.key");
        let relocate = |t: &mut Option<Tls>| {
            if let Some(t) = t {
                for (from, to) in &moves {
                    for p in [&mut t.cert_file, &mut t.key_file] {
                        if p == from {
                            *p = to.clone();
                        }
                    }
                    if t.ca_file.as_ref() == Some(from) {
                        t.ca_file = Some(to.clone());
                    }
                }
            }
        };
        let srv = &mut s.server;
        relocate(&mut srv.tls);
        if let Some(c) = srv.cluster.as_mut() {
            relocate(&mut c.tls);
        }
        if let Some(g) = srv.gateway.as_mut() {
            relocate(&mut g.tls);
        }
        if let Some(l) = srv.leafnodes.as_mut() {
            relocate(&mut l.tls);
            for r in &mut l.remotes {
                relocate(&mut r.tls);
            }
        }
        if let Some(m) = srv.mqtt.as_mut() {
            relocate(&mut m.tls);
        }
        if let Some(w) = srv.websocket.as_mut() {
            relocate(&mut w.tls);
        }
        s
    }
}

/// Facts about the machine that validation needs; a parameter so tests can
/// set them.
#[derive(Debug, Clone)]
pub struct Environment {
    /// This machine's host name.
    pub hostname: String,
    /// `PATH`, for finding the broker binary.
    pub path: Option<std::ffi::OsString>,
    /// The state directory when the config sets none.
    pub default_state_dir: PathBuf,
    /// The control socket when the config sets none.
    pub default_control_socket: PathBuf,
    /// `$CREDENTIALS_DIRECTORY`: where relative credential paths are found.
    pub credentials_dir: Option<PathBuf>,
    /// Outside the unit (`sudo natsmeshd check`), the directory the unit's
    /// `LoadCredential=natsmesh:<dir>` loads: a relative credential name is
    /// found there, as the unit will find it, not next to the drop-in. Not
    /// systemd's copy, so the secret-mode check stays the strict one.
    pub credentials_source: Option<PathBuf>,
}

impl Environment {
    /// Reads the real environment. `embedded` selects the per-user state
    /// directory of the embedded default.
    pub fn current(embedded: bool) -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        Self {
            hostname,
            path: std::env::var_os("PATH"),
            default_state_dir: if embedded {
                user_state_dir()
            } else {
                system_state_dir()
            },
            default_control_socket: default_control_socket(embedded),
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            credentials_source: None,
        }
    }
}

/// Where the control socket lives when the config does not say:
/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else
/// `/run/natsmesh`; for the embedded default `$XDG_RUNTIME_DIR/natsmesh`,
/// else the per-user state directory.
pub fn default_control_socket(embedded: bool) -> PathBuf {
    let first = |var: &str| {
        std::env::var_os(var)
            .map(|v| v.to_string_lossy().into_owned())
            .and_then(|s| {
                s.split(':')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
    };
    if embedded {
        first("XDG_RUNTIME_DIR")
            .map(|d| d.join("natsmesh"))
            .unwrap_or_else(user_state_dir)
            .join("control.sock")
    } else {
        first("RUNTIME_DIRECTORY")
            .unwrap_or_else(|| PathBuf::from("/run/natsmesh"))
            .join("control.sock")
    }
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else
/// `/var/lib/natsmesh`.
pub fn system_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            // systemd passes a colon-separated list; the first is ours.
            let s = v.to_string_lossy().into_owned();
            s.split(':')
                .next()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/natsmesh"))
}

/// `$XDG_STATE_HOME/natsmesh`, else `~/.local/state/natsmesh`.
pub fn user_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("natsmesh");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/state/natsmesh")
}

struct Checker<'a> {
    loaded: &'a Loaded,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: self.loaded.origins.get(key).cloned(),
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn host_port(&mut self, key: &str, value: &str) -> Option<HostPort> {
        match HostPort::parse(value) {
            Ok(hp) => Some(hp),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    fn host_ports(&mut self, key: &str, values: &[String]) -> Vec<HostPort> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.host_port(&format!("{key}[{i}]"), v))
            .collect()
    }

    /// Resolves an include path against the file that named it, and checks
    /// that nats-server can read and carry it.
    fn include(&mut self, key: &str, path: Option<&PathBuf>) -> Option<IncludePath> {
        let path = path?;
        let base = match self.loaded.origins.get(key).map(|l| &l.source) {
            Some(Source::File(f)) => f.parent().map(Path::to_path_buf),
            _ => None,
        };
        let resolved = if path.is_absolute() {
            path.clone()
        } else if let Some(base) = base {
            base.join(path)
        } else {
            self.problem(key, format!("{} must be an absolute path", path.display()));
            return None;
        };
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                self.problem(key, format!("{} is not a file", resolved.display()));
                return None;
            }
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", resolved.display()));
                return None;
            }
        }
        match IncludePath::new(resolved) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }
}

/// Whether `s` is a lower-case DNS label: the region is the cluster name,
/// the gateway name and a DNS label at once.
pub fn is_region_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `s` may be a permanent server name.
pub fn is_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Finds `binary` (a path, or a name in `PATH`).
pub fn resolve_binary(binary: &Path, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if binary.components().count() > 1 || binary.is_absolute() {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

fn listen(bind: IpAddr, port: u16) -> Listen {
    Listen::new(bind, port)
}

/// What a listener is for: decides where `bind = "auto"` goes and which
/// address is advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Clients (and MQTT, websocket): where the load balancer reaches.
    Client,
    /// Routes inside the region: the private network.
    Cluster,
    /// Gateways and leaf nodes between regions: the public network.
    Edge,
    /// Monitoring: loopback.
    Monitoring,
}

/// What to do about a missing private address, per provider.
fn no_private_hint(provider: Provider) -> &'static str {
    match provider {
        Provider::Linode => {
            "this Linode has no private IPv4 address: add one (Cloud Manager → the Linode → Network → Add an IP Address → Private IPv4), then restart natsmeshd; in a VPC, bind this listener to the Linode's VPC address (the metadata service does not show it)"
        }
        Provider::DigitalOcean => {
            "this droplet has no private (VPC) interface in its metadata: create droplets inside a VPC"
        }
        Provider::None => "set node.private_address",
    }
}

impl Checker<'_> {
    /// Resolves a bind setting for `role` against this machine's identity.
    fn bind(&mut self, key: &str, bind: Bind, role: Role, id: &Identity) -> IpAddr {
        let private = id.private_ipv4.map(IpAddr::V4);
        let public = id.public_ipv4.map(IpAddr::V4);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        match bind {
            Bind::Ip(ip) => ip,
            Bind::Any => any,
            Bind::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Bind::Auto => match role {
                Role::Monitoring => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Role::Client if id.provider.is_cloud() => private.unwrap_or(any),
                Role::Client => any,
                Role::Cluster => private.unwrap_or(any),
                Role::Edge => public.unwrap_or(any),
            },
            Bind::Private => private.unwrap_or_else(|| {
                self.problem(key, format!("\"private\", but {}", no_private_hint(id.provider)));
                any
            }),
            Bind::Public => public.unwrap_or_else(|| {
                self.problem(key, "\"public\", but this machine has no public IPv4 address (set node.public_address with provider \"none\")");
                any
            }),
        }
    }

    /// The advertised `host:port`: as written, else the bound address when it
    /// is a specific one, else the address its role calls for.
    fn advertise(
        &mut self,
        key: &str,
        written: Option<&str>,
        bound: IpAddr,
        port: u16,
        role: Role,
        id: &Identity,
    ) -> Option<HostPort> {
        if let Some(a) = written {
            return self.host_port(key, a);
        }
        if !bound.is_unspecified() {
            return Some(HostPort::from_ip(bound, port));
        }
        let derived = match role {
            Role::Cluster | Role::Client => id.private_ipv4,
            Role::Edge => id.public_ipv4.or(id.private_ipv4),
            Role::Monitoring => None,
        };
        derived.map(|ip| HostPort::from_ip(IpAddr::V4(ip), port))
    }
}

/// Validates `loaded` into settings for the machine `identity` describes,
/// or lists every problem.
pub fn validate(
    loaded: &Loaded,
    env: &Environment,
    identity: &Identity,
) -> Result<Settings, Problems> {
    let mut c = Checker {
        loaded,
        problems: Vec::new(),
    };
    let raw: &RawConfig = &loaded.raw;

    let region = match raw.node.region.as_deref() {
        None => {
            c.problem("node.region", "required: natsmesh's region label, e.g. \"fra1\" (it names the cluster, the gateway and the DNS label)");
            String::new()
        }
        Some(r) if !is_region_label(r) => {
            c.problem(
                "node.region",
                format!("{r:?} is not a lower-case DNS label (a-z, 0-9 and '-', at most 63, no leading or trailing '-')"),
            );
            String::new()
        }
        Some(r) => r.to_owned(),
    };

    let cloud = identity.provider.is_cloud();
    for (key, set) in [
        ("node.name", raw.node.name.is_some()),
        ("node.private_address", raw.node.private_address.is_some()),
        ("node.public_address", raw.node.public_address.is_some()),
        ("node.public_ipv6", raw.node.public_ipv6.is_some()),
    ] {
        if cloud && set {
            c.problem(
                key,
                format!(
                    "comes from the {} metadata service; remove it",
                    identity.provider
                ),
            );
        }
    }
    let server_name = match raw.node.name.as_deref() {
        Some(n) if !cloud && !is_server_name(n) => {
            c.problem(
                "node.name",
                format!(
                    "{n:?} is not a valid server name (A-Z, a-z, 0-9, '_', '.', '-', at most 128)"
                ),
            );
            String::new()
        }
        _ => identity.server_name(),
    };
    if !server_name.is_empty() && !is_server_name(&server_name) {
        c.problem(
            "node.name",
            format!("the server name {server_name:?} is not valid; set node.name"),
        );
    }

    let b = &raw.broker;
    let binary = match resolve_binary(&b.binary, env.path.as_deref()) {
        Some(p) => p,
        None => {
            c.problem(
                "broker.binary",
                format!(
                    "nats-server binary `{}` not found{}",
                    b.binary.display(),
                    if b.binary.components().count() > 1 {
                        ""
                    } else {
                        " in PATH"
                    }
                ),
            );
            b.binary.clone()
        }
    };

    let state_dir = b
        .state_dir
        .clone()
        .unwrap_or_else(|| env.default_state_dir.clone());
    if !state_dir.is_absolute() {
        c.problem(
            "broker.state_dir",
            format!("{} must be an absolute path", state_dir.display()),
        );
    }

    if !server_name.is_empty()
        && let Err(stored) = super::identity::check_stored_name(&state_dir, &server_name)
    {
        c.problem(
            if cloud { "node.provider" } else { "node.name" },
            stored.to_string(),
        );
    }

    let id = identity;
    let client_ip = c.bind("broker.client.bind", b.client.bind, Role::Client, id);
    let mut server = ServerConfig::standalone(server_name, listen(client_ip, b.client.port));
    // The address `<region>.<domain>` points at when the gateway is
    // advertised by that name.
    let mut gateway_address: Option<IpAddr> = None;
    match b.client.advertise.as_deref() {
        None | Some("auto") => {}
        // Clients behind a load balancer must not learn the servers' own
        // addresses and bypass it.
        Some("none") => {}
        Some(a) => server.client_advertise = c.host_port("broker.client.advertise", a),
    }
    let monitoring_ip = c.bind(
        "broker.monitoring.bind",
        b.monitoring.bind,
        Role::Monitoring,
        id,
    );
    server.monitoring = Some(listen(monitoring_ip, b.monitoring.port));
    server.lame_duck_duration = b.lame_duck_duration.0;
    server.lame_duck_grace_period = b.lame_duck_grace_period.0;
    server.tags = b.tags.clone();
    server.debug = b.debug;
    server.trace = b.trace;
    server.accounts_include = c.include("broker.include.accounts", b.include.accounts.as_ref());
    server.authorization_include = c.include(
        "broker.include.authorization",
        b.include.authorization.as_ref(),
    );

    if b.jetstream.enabled {
        let mut size = |key: &str, v: Option<super::units::Size>| match v {
            None => {
                c.problem(
                    key,
                    "required when JetStream is enabled (nats-server's default of 0 means \"take a share of the machine\"), e.g. \"1GiB\"",
                );
                1
            }
            Some(s) => s.0,
        };
        let max_memory_store = size(
            "broker.jetstream.max_memory_store",
            b.jetstream.max_memory_store,
        );
        let max_file_store = size(
            "broker.jetstream.max_file_store",
            b.jetstream.max_file_store,
        );
        let sync_interval = b
            .jetstream
            .sync_interval
            .as_deref()
            .and_then(|v| sync_interval(&mut c, v));
        server.jetstream = Some(JetStream {
            store_dir: state_dir.clone(),
            max_memory_store,
            max_file_store,
            domain: b.jetstream.domain.clone(),
            sync_interval,
        });
    }

    // A region of one that has gateways still needs a cluster block with its
    // own route (JetStream with gateways refuses to start without one).
    if b.cluster.enabled || b.gateway.enabled {
        let bound = c.bind("broker.cluster.bind", b.cluster.bind, Role::Cluster, id);
        let advertise = c.advertise(
            "broker.cluster.advertise",
            b.cluster.advertise.as_deref(),
            bound,
            b.cluster.port,
            Role::Cluster,
            id,
        );
        if advertise.is_none() && b.cluster.advertise.is_none() {
            c.problem(
                "broker.cluster.advertise",
                format!(
                    "required when the route listener binds {bound} and the node has no private address: this node's own route needs an address its peers can dial"
                ),
            );
        }
        let own = advertise.clone();
        let mut routes = c.host_ports("broker.cluster.routes", &b.cluster.routes);
        routes.extend(own);
        // Identical on every node: sorted, each server once.
        routes.sort();
        routes.dedup();
        let compression = b.cluster.compression.as_deref().and_then(|m| {
            let found = Compression::ALL.into_iter().find(|x| x.as_str() == m);
            if found.is_none() {
                let allowed: Vec<&str> = Compression::ALL.iter().map(|x| x.as_str()).collect();
                c.problem(
                    "broker.cluster.compression",
                    format!("unknown mode {m:?} (allowed: {})", allowed.join(", ")),
                );
            }
            found
        });
        if let Some(p) = b.cluster.pool_size
            && !(p == -1 || (1..=64).contains(&p))
        {
            c.problem(
                "broker.cluster.pool_size",
                format!("{p} is out of range (1-64, or -1 for no pooling)"),
            );
        }
        server.cluster = Some(Cluster {
            tls: None,
            name: region.clone(),
            listen: listen(bound, b.cluster.port),
            advertise,
            no_advertise: b.client.advertise.as_deref() == Some("none"),
            routes,
            pool_size: b.cluster.pool_size,
            compression,
            include: c.include("broker.include.cluster", b.include.cluster.as_ref()),
        });
    } else if b.include.cluster.is_some() {
        c.problem("broker.include.cluster", "set, but no cluster block is rendered (broker.cluster.enabled and broker.gateway.enabled are false)");
    }

    if b.gateway.enabled {
        let bound = c.bind("broker.gateway.bind", b.gateway.bind, Role::Edge, id);
        let address = c.advertise(
            "broker.gateway.advertise",
            b.gateway.advertise.as_deref(),
            bound,
            b.gateway.port,
            Role::Edge,
            id,
        );
        // With discovery, a gateway is known by its region's name, which
        // its certificate carries and every region dials: peers (and the
        // URLs nats-server gossips for implicit gateways) then never
        // depend on a public address nobody knew before the machine
        // existed. The address itself is what `<region>.<domain>` points
        // at. Without discovery nothing says that name resolves.
        let by_name = raw
            .node
            .domain
            .as_deref()
            .filter(|_| b.gateway.advertise.is_none() && raw.discovery.enabled)
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| natsmesh_broker::model::is_dns_name(d) && !region.is_empty())
            .and_then(|d| HostPort::parse(&format!("{region}.{d}:{}", b.gateway.port)).ok());
        gateway_address = address.as_ref().and_then(HostPort::ip);
        let advertise = by_name.or(address);
        let mut remotes = Vec::new();
        for (i, r) in b.gateway.remotes.iter().enumerate() {
            let key = format!("broker.gateway.remotes[{i}]");
            if !is_region_label(&r.name) {
                c.problem(
                    &format!("{key}.name"),
                    format!("{:?} is not a region label", r.name),
                );
            }
            let urls = c.host_ports(&format!("{key}.urls"), &r.urls);
            remotes.push(RemoteGateway {
                name: r.name.clone(),
                urls,
            });
        }
        server.gateway = Some(Gateway {
            tls: None,
            name: region.clone(),
            listen: listen(bound, b.gateway.port),
            advertise,
            gateways: remotes,
            include: c.include("broker.include.gateway", b.include.gateway.as_ref()),
        });
    } else if b.include.gateway.is_some() {
        c.problem(
            "broker.include.gateway",
            "set, but broker.gateway.enabled is false",
        );
    }

    if b.leafnodes.enabled || !b.leafnodes.remotes.is_empty() {
        let bound = c.bind("broker.leafnodes.bind", b.leafnodes.bind, Role::Edge, id);
        let advertise = if b.leafnodes.enabled {
            c.advertise(
                "broker.leafnodes.advertise",
                b.leafnodes.advertise.as_deref(),
                bound,
                b.leafnodes.port,
                Role::Edge,
                id,
            )
        } else {
            None
        };
        let remotes = b
            .leafnodes
            .remotes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("broker.leafnodes.remotes[{i}]");
                match (&r.record, r.urls.is_empty()) {
                    (Some(_), false) => c.problem(&key, "set urls or record, not both"),
                    (None, true) => c.problem(
                        &key,
                        "set urls (host:port) or record (the hub's SRV record)",
                    ),
                    (Some(_), true) if !raw.discovery.enabled => c.problem(
                        &format!("{key}.record"),
                        "a record is followed by discovery: set discovery.enabled",
                    ),
                    _ => {}
                }
                LeafRemote {
                    tls: None,
                    // A record's URLs come from DNS; none yet is not rendered.
                    urls: c.host_ports(&format!("{key}.urls"), &r.urls),
                    account: r.account.clone(),
                    credentials: r.credentials.clone(),
                }
            })
            .collect();
        // Without a domain of its own, an edge's JetStream and its hub's
        // would have to be one meta group across the leafnode link.
        if !b.leafnodes.remotes.is_empty() && b.jetstream.enabled && b.jetstream.domain.is_none() {
            c.problem(
                "broker.jetstream.domain",
                "required on a JetStream edge with leafnode remotes: its JetStream stays its own, apart from the hub's",
            );
        }
        let users = b
            .leafnodes
            .users
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                let key = format!("broker.leafnodes.users[{i}]");
                let ok_hash = bcrypt_hash(&u.password_hash);
                if !ok_hash {
                    c.problem(
                        &format!("{key}.password_hash"),
                        "not a bcrypt hash (write it with `natsmeshd user add --leafnode`)",
                    );
                }
                let ok_name = !u.name.is_empty()
                    && !u
                        .name
                        .chars()
                        .any(|ch| ch.is_whitespace() || ch.is_control());
                if !ok_name {
                    c.problem(
                        &format!("{key}.name"),
                        format!("{:?} is not a usable user name", u.name),
                    );
                }
                (ok_hash && ok_name).then(|| LeafUser {
                    user: u.name.clone(),
                    password: u.password_hash.clone(),
                    account: u.account.clone(),
                })
            })
            .collect();
        server.leafnodes = Some(Leafnodes {
            tls: None,
            users,
            listen: b.leafnodes.enabled.then(|| listen(bound, b.leafnodes.port)),
            advertise,
            remotes,
            include: c.include("broker.include.leafnodes", b.include.leafnodes.as_ref()),
        });
    } else if b.include.leafnodes.is_some() {
        c.problem(
            "broker.include.leafnodes",
            "set, but leafnodes are not enabled and have no remotes",
        );
    }

    if b.mqtt.enabled {
        server.mqtt = Some(Mqtt {
            tls: None,
            listen: listen(
                c.bind("broker.mqtt.bind", b.mqtt.bind, Role::Client, id),
                b.mqtt.port,
            ),
            include: c.include("broker.include.mqtt", b.include.mqtt.as_ref()),
        });
    } else if b.include.mqtt.is_some() {
        c.problem(
            "broker.include.mqtt",
            "set, but broker.mqtt.enabled is false",
        );
    }

    if b.websocket.enabled {
        server.websocket = Some(Websocket {
            tls: None,
            listen: listen(
                c.bind("broker.websocket.bind", b.websocket.bind, Role::Client, id),
                b.websocket.port,
            ),
            no_tls: b.websocket.no_tls,
            include: c.include("broker.include.websocket", b.include.websocket.as_ref()),
        });
    } else if b.include.websocket.is_some() {
        c.problem(
            "broker.include.websocket",
            "set, but broker.websocket.enabled is false",
        );
    }

    let discovery = apply_discovery(&mut c, raw, &region, &mut server);
    let tls = apply_tls(&mut c, raw, env, &region, &state_dir, &mut server);
    peers_need_tls(&mut c, &server, tls.is_some());
    let gate = apply_gate(&mut c, raw, &region, tls.as_ref(), &mut server);
    let system_user = apply_auth(&mut c, raw, env, &state_dir, &mut server);
    let fleet = fleet::apply_fleet(&mut c, raw, env, system_user.as_ref(), &mut server);
    let maintenance = fleet::apply_maintenance(&mut c, raw, &server);
    let metrics = raw.metrics.enabled.then(|| {
        let ip = c.bind("metrics.bind", raw.metrics.bind, Role::Monitoring, identity);
        metrics::MetricsSettings {
            listen: std::net::SocketAddr::new(ip, raw.metrics.port),
            scrape_every: raw
                .metrics
                .scrape_every
                .0
                .max(std::time::Duration::from_secs(1)),
            streams: raw.metrics.streams,
            tls: None,
        }
    });
    let metrics = metrics.map(|mut m| {
        if raw.metrics.tls {
            match &tls {
                Some(t) => {
                    m.tls = Some(metrics::MetricsTls {
                        cert_file: t.cert_file.clone(),
                        key_file: t.key_file.clone(),
                    });
                }
                None => c.problem(
                    "metrics.tls",
                    "HTTPS for /metrics uses the node certificate: set [tls] mode = \"issue\" or \"files\"",
                ),
            }
        }
        m
    });
    let balancer = balancer::apply_balancer(&mut c, raw, env, identity, &server);
    let publish = publish::apply_publish(
        &mut c,
        raw,
        env,
        &state_dir,
        &server,
        gateway_address,
        discovery.as_ref(),
    );

    leaf_accounts(&mut c, &server);
    leaf_logins(&mut c, raw.auth.mode, &server);

    // What nats-server would refuse at start, in natsmesh's words. Missing
    // names are already listed above; stand-ins keep the rest checkable.
    let mut model = server.clone();
    if model.server_name.is_empty() {
        model.server_name = "unnamed".into();
    }
    if region.is_empty() {
        for name in [
            model.cluster.as_mut().map(|x| &mut x.name),
            model.gateway.as_mut().map(|x| &mut x.name),
        ]
        .into_iter()
        .flatten()
        {
            *name = "unnamed".into();
        }
    }
    for p in natsmesh_broker::validate::validate(&model) {
        c.problem(toml_key(p.key), p.message);
    }

    let health = health_timings(&mut c, raw);
    let r = &raw.restart;
    let restart = RestartSettings {
        backoff_initial: r.backoff_initial.0,
        backoff_max: r.backoff_max.0,
        crash_loop_count: r.crash_loop_count,
        crash_loop_window: r.crash_loop_window.0,
        stop_margin: r.stop_margin.0,
        kill_after: r.kill_after.0,
    };
    if restart.crash_loop_count < 2 {
        c.problem(
            "restart.crash_loop_count",
            format!("{} is too small (at least 2)", restart.crash_loop_count),
        );
    }
    if restart.backoff_max < restart.backoff_initial {
        c.problem(
            "restart.backoff_max",
            "must not be below restart.backoff_initial",
        );
    }
    let control_socket = raw
        .control
        .socket
        .clone()
        .unwrap_or_else(|| env.default_control_socket.clone());
    if !control_socket.is_absolute() {
        c.problem(
            "control.socket",
            format!("{} must be an absolute path", control_socket.display()),
        );
    }

    if c.problems.is_empty() {
        Ok(Settings {
            identity: identity.clone(),
            region,
            provider: raw.node.provider,
            binary,
            state_dir,
            server,
            health,
            restart,
            control_socket,
            tls,
            system_user,
            discovery,
            publish,
            balancer,
            fleet,
            maintenance,
            metrics,
            gate,
            metadata: raw
                .node
                .provider
                .is_cloud()
                .then(|| raw.node.metadata.clone()),
        })
    } else {
        Err(Problems(c.problems))
    }
}

/// Whether `h` looks like a bcrypt hash nats-server accepts.
fn bcrypt_hash(h: &str) -> bool {
    (h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$")) && h.len() == 60
}

/// Who may dial the leafnode listener. nats-server checks a leaf node's
/// CONNECT against `leafnodes.authorization` when it has users; without
/// them, a leaf node that brings no credentials is admitted into `$G`
/// even though clients need credentials (observed on every release). So in
/// accounts mode the listener needs its own users, each bound to an
/// account; operator mode authenticates leaf nodes with their JWTs.
fn leaf_logins(c: &mut Checker<'_>, mode: AuthMode, server: &ServerConfig) {
    let Some(l) = &server.leafnodes else {
        return;
    };
    match mode {
        AuthMode::Accounts if l.listen.is_some() && l.users.is_empty() => c.problem(
            "broker.leafnodes.users",
            "the leafnode listener has no users: nats-server would admit a leaf node without credentials into the global account; add one per leaf node with `natsmeshd user add --leafnode --account A --name N --file F`",
        ),
        AuthMode::Operator | AuthMode::None if !l.users.is_empty() => c.problem(
            "broker.leafnodes.users",
            "only in auth.mode = \"accounts\" (operator mode authenticates leaf nodes with their JWTs)",
        ),
        _ => {}
    }
}

/// A leafnode remote bound to a local account that does not exist: `nats-server
/// -t` accepts the file, and the server then refuses to start ("cannot find
/// local account"), which after a reload is a crash loop. The accounts are
/// those rendered (`[accounts]`, natsmeshd's own), the system account and
/// nats-server's global `$G`. Accounts from JWTs (operator mode) or from an
/// included file are not known here, so those configurations are left to
/// the broker.
fn leaf_accounts(c: &mut Checker<'_>, server: &ServerConfig) {
    let Some(leafnodes) = &server.leafnodes else {
        return;
    };
    if server.operator.is_some() || server.accounts_include.is_some() {
        return;
    }
    let known = |account: &str| {
        account == "$G"
            || server.accounts.iter().any(|a| a.name.as_str() == account)
            || server
                .system_account
                .as_ref()
                .is_some_and(|s| s.as_str() == account)
    };
    for (i, u) in leafnodes.users.iter().enumerate() {
        if !known(&u.account) || u.account == "$G" {
            c.problem(
                &format!("broker.leafnodes.users[{i}].account"),
                format!(
                    "no local account {:?}: a leaf node's user lands in one of [accounts]",
                    u.account
                ),
            );
        }
    }
    for (i, r) in leafnodes.remotes.iter().enumerate() {
        let Some(account) = &r.account else { continue };
        let known = account == "$G"
            || server.accounts.iter().any(|a| a.name.as_str() == account)
            || server
                .system_account
                .as_ref()
                .is_some_and(|s| s.as_str() == account);
        if !known {
            let mut names: Vec<&str> = server.accounts.iter().map(|a| a.name.as_str()).collect();
            names.extend(server.system_account.as_ref().map(|s| s.as_str()));
            c.problem(
                &format!("broker.leafnodes.remotes[{i}].account"),
                format!(
                    "no local account {account:?} (nats-server would refuse to start); local accounts: {}, or leave it unset for the global account",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
    }
}

impl Checker<'_> {
    /// A file path from `key`: absolute, or relative to the credentials
    /// directory (`credential`) or to the file that set it.
    fn file(&mut self, key: &str, path: &Path, env: &Environment, credential: bool) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        if credential && let Some(dir) = &env.credentials_dir {
            return credential_path(dir, path);
        }
        if credential && let Some(source) = &env.credentials_source {
            // The unit's source directory holds `<file>`; systemd hands it
            // over as `natsmesh_<file>`, which `credential_path` accepts.
            return source.join(path);
        }
        match self.loaded.origins.get(key).map(|l| &l.source) {
            Some(Source::File(f)) => f
                .parent()
                .map_or_else(|| path.to_path_buf(), |d| d.join(path)),
            _ => path.to_path_buf(),
        }
    }

    /// Checks that `path` can be read now (the broker and natsmeshd will).
    fn readable(&mut self, key: &str, path: &Path) {
        if let Err(e) = std::fs::File::open(path) {
            self.problem(key, format!("cannot read {}: {e}", path.display()));
        }
    }

    /// Checks that a secret can be read now and by its owner alone (group
    /// read is accepted inside systemd's credentials directory, see
    /// [`crate::files::check_secret_mode`]).
    fn secret(&mut self, key: &str, path: &Path, env: &Environment) {
        self.readable(key, path);
        if let Err(e) = crate::files::check_secret(path, env.credentials_dir.as_deref()) {
            self.problem(key, e.to_string());
        }
    }
}

/// The packaged unit loads the directory /etc/natsmesh/credentials whole
/// (`LoadCredential=natsmesh:/etc/natsmesh/credentials`), and systemd names
/// each of its files `natsmesh_<file>`.
const PACKAGED_CREDENTIAL_PREFIX: &str = "natsmesh_";

/// A credential named `name`: `$CREDENTIALS_DIRECTORY/<name>` as loaded
/// one by one, else the file of that name from the packaged directory.
fn credential_path(dir: &Path, name: &Path) -> PathBuf {
    let own = dir.join(name);
    if own.exists() {
        return own;
    }
    let packaged = dir.join(format!("{PACKAGED_CREDENTIAL_PREFIX}{}", name.display()));
    if packaged.exists() { packaged } else { own }
}

/// TLS from `[tls]`: which certificate, which names it must cover, and a
/// `tls {}` block on every listener that needs one. Client-facing
/// listeners that do not bind loopback require TLS; routes and gateways
/// are always mutual.
fn apply_tls(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    region: &str,
    state_dir: &Path,
    server: &mut ServerConfig,
) -> Option<TlsSettings> {
    let t = &raw.tls;
    if t.mode == TlsMode::Off {
        for (key, set) in [
            ("tls.ca_file", t.ca_file.is_some()),
            ("tls.cert_file", t.cert_file.is_some()),
            ("tls.client_cert_file", t.client_cert_file.is_some()),
            ("tls.monitoring", t.monitoring),
        ] {
            if set {
                c.problem(key, "set, but tls.mode is \"off\"");
            }
        }
        return None;
    }
    let ca_file = match &t.ca_file {
        Some(p) => c.file("tls.ca_file", p, env, false),
        None => {
            c.problem(
                "tls.ca_file",
                "required with TLS: the roots peers and clients are checked against",
            );
            PathBuf::new()
        }
    };
    if !ca_file.as_os_str().is_empty() {
        c.readable("tls.ca_file", &ca_file);
    }
    let domain = raw
        .node
        .domain
        .as_deref()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    if let Some(d) = &domain
        && !natsmesh_broker::model::is_dns_name(d)
    {
        c.problem("node.domain", format!("{d:?} is not a DNS name"));
    }
    let mut broker_copies = Vec::new();
    let (source, cert_file, key_file) = match t.mode {
        TlsMode::Issue => {
            if domain.is_none() {
                c.problem("node.domain", "required with tls.mode = \"issue\": node certificates are named <server>.<region>.<domain>, within the intermediate's constraints");
            }
            let cert = c.file("tls.intermediate_cert", &t.intermediate_cert, env, true);
            let key = c.file("tls.intermediate_key", &t.intermediate_key, env, true);
            c.readable("tls.intermediate_cert", &cert);
            c.secret("tls.intermediate_key", &key, env);
            if t.validity.0 < Duration::from_secs(10) {
                c.problem(
                    "tls.validity",
                    format!("{:?} is too short (at least 10s)", t.validity.0),
                );
            }
            let dir = state_dir.join("tls");
            (
                TlsSource::Issue {
                    intermediate_cert: cert,
                    intermediate_key: key,
                    validity: t.validity.0,
                },
                dir.join("node.crt"),
                dir.join("node.key"),
            )
        }
        _ => {
            let mut need = |key: &str, v: &Option<PathBuf>, secret: bool| match v {
                Some(p) => {
                    let p = c.file(key, p, env, false);
                    if secret {
                        c.secret(key, &p, env);
                    } else {
                        c.readable(key, &p);
                    }
                    p
                }
                None => {
                    c.problem(key, "required with tls.mode = \"files\"");
                    PathBuf::new()
                }
            };
            let cert = need("tls.cert_file", &t.cert_file, false);
            let key = need("tls.key_file", &t.key_file, true);
            // The broker as its own user reads natsmeshd's copies (made
            // by tls::ensure), not the operator's files.
            let (broker_cert, broker_key) = if crate::broker_user::chosen().is_some() {
                let dir = state_dir.join("tls");
                broker_copies.push((cert.clone(), dir.join("node.crt")));
                broker_copies.push((key.clone(), dir.join("node.key")));
                (dir.join("node.crt"), dir.join("node.key"))
            } else {
                (cert.clone(), key.clone())
            };
            (
                TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                broker_cert,
                broker_key,
            )
        }
    };
    let client_pair = match (&t.client_cert_file, &t.client_key_file) {
        (Some(cert), Some(key)) => {
            let cert = c.file("tls.client_cert_file", cert, env, false);
            let key = c.file("tls.client_key_file", key, env, true);
            c.readable("tls.client_cert_file", &cert);
            c.secret("tls.client_key_file", &key, env);
            Some((cert, key))
        }
        (None, None) => None,
        _ => {
            c.problem(
                "tls.client_cert_file",
                "tls.client_cert_file and tls.client_key_file go together",
            );
            None
        }
    };

    // Routes trust only this region's intermediates (a node of another
    // region, under the same root, cannot join the cluster); gateways and
    // clients trust the roots.
    let region_ca_file =
        matches!(source, TlsSource::Issue { .. }).then(|| state_dir.join("tls/region-ca.pem"));
    let timeout = Some(t.handshake_timeout.0);
    let node = |verify: bool| Tls {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        ca_file: Some(ca_file.clone()),
        verify,
        timeout,
    };
    // The client pair as the broker reads it (copies when it runs as its
    // own user, as above).
    let broker_client_pair = client_pair.as_ref().map(|(cert, key)| {
        if crate::broker_user::chosen().is_some() {
            let dir = state_dir.join("tls");
            broker_copies.push((cert.clone(), dir.join("client.crt")));
            broker_copies.push((key.clone(), dir.join("client.key")));
            (dir.join("client.crt"), dir.join("client.key"))
        } else {
            (cert.clone(), key.clone())
        }
    });
    let client = || match &broker_client_pair {
        Some((cert, key)) => Tls {
            cert_file: cert.clone(),
            key_file: key.clone(),
            ca_file: Some(ca_file.clone()),
            verify: false,
            timeout,
        },
        None => node(false),
    };
    // Client-facing listeners need TLS unless they bind loopback only
    // (`tls.client = "required"` asks for it there too).
    let required = t.client == ClientTls::Required;
    let public = |l: &Listen| required || !l.host.is_loopback();
    // HTTPS monitoring serves the top-level (client) certificate, so it
    // brings client TLS along.
    if public(&server.listen) || t.monitoring {
        server.tls = Some(client());
    }
    server.monitoring_https = t.monitoring;
    if let Some(m) = server.mqtt.as_mut()
        && public(&m.listen)
    {
        m.tls = Some(client());
    }
    if let Some(w) = server.websocket.as_mut()
        && public(&w.listen)
        && !w.no_tls
    {
        w.tls = Some(client());
    }
    if let Some(cl) = server.cluster.as_mut() {
        cl.tls = Some(Tls {
            ca_file: Some(region_ca_file.clone().unwrap_or_else(|| ca_file.clone())),
            ..node(true)
        });
    }
    if let Some(g) = server.gateway.as_mut() {
        g.tls = Some(node(true));
    }
    if let Some(l) = server.leafnodes.as_mut() {
        if l.listen.is_some() {
            l.tls = Some(node(false));
        }
        for r in &mut l.remotes {
            r.tls = Some(node(false));
        }
    }

    // The names the certificate must cover.
    let mut dns = Vec::new();
    if let Some(d) = &domain {
        dns.push(format!(
            "{}.{region}.{d}",
            server.server_name.to_ascii_lowercase()
        ));
        dns.push(format!("{region}.{d}"));
    }
    for (i, n) in t.extra_names.iter().enumerate() {
        if natsmesh_broker::model::is_dns_name(n) {
            // A certificate names hosts without the final dot.
            dns.push(n.trim_end_matches('.').to_ascii_lowercase());
        } else {
            c.problem(
                &format!("tls.extra_names[{i}]"),
                format!("{n:?} is not a DNS name"),
            );
        }
    }
    // Addresses peers dial (routes gossip theirs; an advertised address is
    // what others are told) must be in the certificate. With a domain, a
    // listener's own address need not be: its peers and clients reach it
    // by a name the certificate carries, so an address outside the
    // intermediate's ranges (a public address nobody knew in advance) is
    // left out rather than refused.
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut by_name: Vec<IpAddr> = Vec::new();
    let mut add = |ip: IpAddr, dialled: bool| {
        let ip = if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            ip
        };
        if dialled || domain.is_none() || ip.is_loopback() {
            ips.push(ip);
        } else {
            by_name.push(ip);
        }
    };
    add(server.listen.host, false);
    if t.monitoring
        && let Some(m) = server.monitoring
    {
        add(m.host, false);
    }
    if let Some(cl) = &server.cluster {
        add(cl.listen.host, true);
    }
    for l in [
        server.gateway.as_ref().map(|x| x.listen),
        server.leafnodes.as_ref().and_then(|x| x.listen),
        server.mqtt.as_ref().map(|x| x.listen),
        server.websocket.as_ref().map(|x| x.listen),
    ]
    .into_iter()
    .flatten()
    {
        add(l.host, false);
    }
    for a in [
        server.cluster.as_ref().and_then(|x| x.advertise.clone()),
        server.gateway.as_ref().and_then(|x| x.advertise.clone()),
        server.leafnodes.as_ref().and_then(|x| x.advertise.clone()),
        server.client_advertise.clone(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(ip) = a.ip() {
            add(ip, true);
        }
    }
    ips.sort();
    ips.dedup();
    by_name.sort();
    by_name.dedup();
    by_name.retain(|ip| !ips.contains(ip));
    dns.sort();
    dns.dedup();
    // The operator's PKI may replace the files at any time: look often,
    // but not more than the probes do.
    let files_check_every = (health_timings_of(raw).interval * 30)
        .clamp(Duration::from_secs(5), Duration::from_secs(60));
    Some(TlsSettings {
        client_cert_file: client_pair.as_ref().map(|(c, _)| c.clone()),
        monitoring: t.monitoring,
        files_check_every,
        source,
        ca_file,
        cert_file,
        key_file,
        region_ca_file,
        broker_copies,
        names: NodeNames {
            common_name: server.server_name.clone(),
            dns,
            ips,
            by_name,
        },
    })
}

/// `[discovery]`: the SRV record of the region's routes, the regions (from
/// config here, or from TXT at run time), and the gateway list as a pure
/// function of the region names.
fn apply_discovery(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    region: &str,
    server: &mut ServerConfig,
) -> Option<Discovered> {
    let d = &raw.discovery;
    if !d.enabled {
        return None;
    }
    let Some(domain) = raw
        .node
        .domain
        .as_deref()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
    else {
        c.problem(
            "node.domain",
            "required with discovery: records are named under it",
        );
        return None;
    };
    let fill = |t: &str| t.replace("{region}", region).replace("{domain}", &domain);
    // Leafnode remotes that name a hub's SRV record instead of URLs.
    let (leaf_remotes, leaf_records): (Vec<usize>, Vec<String>) = raw
        .broker
        .leafnodes
        .remotes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.record.as_deref().map(|rec| (i, fill(rec))))
        .unzip();
    let own_route = match server.cluster.as_ref() {
        None if leaf_records.is_empty() => {
            c.problem(
                "discovery.enabled",
                "discovery finds the region's routes or leafnode hubs: enable broker.cluster (or broker.gateway), or name a record in broker.leafnodes.remotes",
            );
            return None;
        }
        None => None,
        Some(cluster) => {
            let Some(own) = cluster.advertise.clone() else {
                c.problem(
                    "broker.cluster.advertise",
                    "discovery lists this server's own route by address: bind the cluster to one address or set advertise",
                );
                return None;
            };
            Some(own)
        }
    };
    let mut nameservers = Vec::new();
    for (i, ns) in d.nameservers.iter().enumerate() {
        let parsed = ns
            .parse::<SocketAddr>()
            .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(a) => nameservers.push(a),
            Err(_) => c.problem(
                &format!("discovery.nameservers[{i}]"),
                format!("{ns:?} is not ip or ip:port"),
            ),
        }
    }
    let seeds = c.host_ports("discovery.seeds", &d.seeds);
    if d.min_refresh.0 < Duration::from_millis(100) || d.max_refresh.0 < d.min_refresh.0 {
        c.problem(
            "discovery.max_refresh",
            "refresh bounds must satisfy 100ms <= min_refresh <= max_refresh",
        );
    }
    for (i, r) in d.regions.iter().enumerate() {
        if !is_region_label(r) {
            c.problem(
                &format!("discovery.regions[{i}]"),
                format!("{r:?} is not a region label"),
            );
        }
    }
    if let Some(g) = server.gateway.as_mut() {
        if !raw.broker.gateway.remotes.is_empty() {
            c.problem(
                "broker.gateway.remotes",
                "discovery names the regions; remove the static remotes",
            );
        }
        if !d.regions.is_empty() {
            let port = match g.listen.port {
                natsmesh_broker::model::Port::Fixed(p) => p,
                natsmesh_broker::model::Port::Random => 0,
            };
            let mut regions = d.regions.clone();
            regions.sort();
            regions.dedup();
            g.gateways = regions
                .iter()
                .filter_map(|r| region_gateway(r, &domain, port))
                .collect();
        }
    }
    if let Some(cl) = server.cluster.as_mut() {
        // Until DNS answers: this server and the seeds.
        let mut routes: std::collections::BTreeSet<HostPort> = seeds.iter().cloned().collect();
        routes.extend(own_route.clone());
        cl.routes = routes.into_iter().collect();
    }
    Some(Discovered {
        settings: discovery::DiscoverySettings {
            route_record: own_route.is_some().then(|| fill(&d.route_record)),
            leaf_records,
            leaf_remotes,
            regions_record: (d.regions.is_empty() && server.gateway.is_some())
                .then(|| fill(&d.regions_record)),
            domain,
            region: region.to_owned(),
            nameservers,
            min_refresh: d.min_refresh.0,
            max_refresh: d.max_refresh.0,
            seeds,
            max_records: d.max_records.max(1),
            own_route,
        },
        bootstrap_expect: d.bootstrap_expect,
        bootstrap_timeout: d.bootstrap_timeout.0,
    })
}

/// Whether a listener can be reached from other machines.
fn reachable(l: &Listen) -> bool {
    !l.host.is_loopback()
}

/// Routes, gateways and leafnodes that other machines can reach accept
/// only peers that prove themselves: without TLS, nats-server lets any
/// server that connects join the cluster (and see and inject every
/// account's messages) or link as a gateway. `[tls]` renders mutual TLS
/// for routes and gateways (routes trusting only the region's
/// intermediates); leafnodes then need TLS and authenticate with account
/// users. There is no TLS-less mode beyond loopback.
/// With TLS and a domain, natsmeshd's gate takes the gateway's address and
/// the broker's own gateway listener moves to loopback behind it, so that
/// a peer's claimed region is checked against its certificate.
fn apply_gate(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    region: &str,
    tls: Option<&TlsSettings>,
    server: &mut ServerConfig,
) -> Option<gate::GateSettings> {
    let g = &raw.broker.gateway;
    let gateway = server.gateway.as_mut()?;
    if !g.gate {
        return None;
    }
    let domain = raw
        .node
        .domain
        .as_deref()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| natsmesh_broker::model::is_dns_name(d))?;
    let tls = tls?;
    let natsmesh_broker::model::Port::Fixed(port) = gateway.listen.port else {
        return None;
    };
    let public = SocketAddr::new(gateway.listen.host, port);
    let internal_port = g.gate_port.unwrap_or_else(|| {
        g.port
            .checked_add(10_000)
            .unwrap_or_else(|| g.port.saturating_sub(10_000))
    });
    let broker = crate::addr::broker_listener(public, internal_port);
    if broker == public || broker.port() == 0 {
        c.problem(
            "broker.gateway.gate_port",
            "must differ from broker.gateway.port (the gate listens there)",
        );
        return None;
    }
    gateway.listen = listen(broker.ip(), broker.port());
    Some(gate::GateSettings {
        listen: public,
        broker,
        own_name: format!("{region}.{domain}"),
        domain,
        tls: tls.clone(),
    })
}

fn peers_need_tls(c: &mut Checker<'_>, server: &ServerConfig, tls: bool) {
    // `no_tls` is for a TLS-terminating proxy on this machine: off
    // loopback, passwords and tokens would cross the network in clear.
    if let Some(w) = &server.websocket
        && w.no_tls
        && reachable(&w.listen)
    {
        c.problem(
            "broker.websocket.no_tls",
            format!(
                "the websocket listener on {} is reachable from other machines, and without TLS clients' credentials cross the network in clear: bind broker.websocket to loopback behind a TLS-terminating proxy on this machine, or remove no_tls",
                w.listen.host
            ),
        );
    }
    if tls {
        return;
    }
    let listeners = [
        (
            "broker.cluster.bind",
            "routes",
            server.cluster.as_ref().map(|x| x.listen),
        ),
        (
            "broker.gateway.bind",
            "gateways",
            server.gateway.as_ref().map(|x| x.listen),
        ),
        (
            "broker.leafnodes.bind",
            "leafnodes",
            server.leafnodes.as_ref().and_then(|x| x.listen),
        ),
    ];
    for (key, what, listen) in listeners {
        if let Some(l) = listen
            && reachable(&l)
        {
            c.problem(
                key,
                format!(
                    "{} is reachable from other machines and {what} there would accept any server without a certificate: set [tls] mode = \"issue\" (or \"files\") so they require mutual TLS, or bind {key} to loopback",
                    l.host
                ),
            );
        }
    }
}

/// Accounts, users and the system account from `[auth]` and `[accounts]`.
/// The system account's own user is added when the configuration is
/// prepared (its password hash lives in the state directory).
fn apply_auth(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    state_dir: &Path,
    server: &mut ServerConfig,
) -> Option<SystemUser> {
    let a = &raw.auth;
    let mut client_facing = vec![("broker.client.bind", server.listen)];
    client_facing.extend(server.mqtt.as_ref().map(|m| ("broker.mqtt.bind", m.listen)));
    client_facing.extend(
        server
            .websocket
            .as_ref()
            .map(|w| ("broker.websocket.bind", w.listen)),
    );
    client_facing.extend(
        server
            .leafnodes
            .as_ref()
            .and_then(|l| l.listen)
            .map(|l| ("broker.leafnodes.bind", l)),
    );
    let public: Vec<&str> = client_facing
        .iter()
        .filter(|(_, l)| reachable(l))
        .map(|(k, _)| *k)
        .collect();
    match a.mode {
        AuthMode::None => {
            if !public.is_empty() {
                c.problem(
                    "auth.mode",
                    format!(
                        "\"none\" leaves the broker open, allowed only when every client-facing listener binds loopback; {} do not",
                        public.join(", ")
                    ),
                );
            }
            if !raw.accounts.is_empty() {
                c.problem(
                    "auth.mode",
                    "\"none\" but [accounts] are configured; use \"accounts\"",
                );
            }
            None
        }
        AuthMode::Operator => apply_operator(c, raw, env, state_dir, server),
        AuthMode::Accounts => {
            let mut names = std::collections::HashSet::new();
            for (name, acct) in &raw.accounts {
                let key = format!("accounts.{name}");
                let Some(n) = Name::new(name) else {
                    c.problem(&key, format!("account name {name:?} may hold letters, digits, '_' and '-' (at most 64)"));
                    continue;
                };
                if name == SYSTEM_ACCOUNT || name == "$G" || name == "$SYS" {
                    c.problem(&key, format!("{name:?} is reserved (natsmeshd keeps the system account {SYSTEM_ACCOUNT})"));
                    continue;
                }
                if name == FLEET_ACCOUNT {
                    c.problem(
                        &key,
                        format!("{name:?} is reserved (natsmeshd keeps its restart lease there)"),
                    );
                    continue;
                }
                let account = account(c, &key, n, acct, raw, &mut names);
                if account.jetstream.is_some() && server.jetstream.is_none() {
                    c.problem(
                        &format!("{key}.jetstream"),
                        "JetStream for the account, but broker.jetstream.enabled is false",
                    );
                }
                server.accounts.push(account);
            }
            if let Some(anon) = &a.anonymous_account {
                if !public.is_empty() {
                    c.problem(
                        "auth.anonymous_account",
                        format!("clients without credentials only on loopback-only listeners; {} are reachable from other machines", public.join(", ")),
                    );
                }
                match server.accounts.iter_mut().find(|x| x.name.as_str() == anon) {
                    None => c.problem(
                        "auth.anonymous_account",
                        format!("no account {anon:?} in [accounts]"),
                    ),
                    Some(acct) => {
                        acct.users.push(User {
                            credential: Credential::Password {
                                user: ANONYMOUS_USER.into(),
                                password: nkey::anonymous_password(anon),
                            },
                            permissions: Permissions::default(),
                        });
                        server.no_auth_user = Some(ANONYMOUS_USER.into());
                    }
                }
            }
            server.system_account = Name::new(SYSTEM_ACCOUNT);
            Some(match &a.system_password_file {
                Some(p) => {
                    let file = c.file("auth.system_password_file", p, env, true);
                    c.secret("auth.system_password_file", &file, env);
                    SystemUser::Password {
                        file,
                        generate: false,
                    }
                }
                None => SystemUser::Password {
                    file: state_dir.join("system.password"),
                    generate: true,
                },
            })
        }
    }
}

/// The user clients without credentials become (loopback only).
pub const ANONYMOUS_USER: &str = "anonymous";

fn subjects_ok(c: &mut Checker<'_>, key: &str, list: &[String]) -> Vec<String> {
    for (i, s) in list.iter().enumerate() {
        if s.is_empty()
            || s.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            || s.starts_with('.')
            || s.ends_with('.')
        {
            c.problem(
                &format!("{key}[{i}]"),
                format!("{s:?} is not a NATS subject"),
            );
        }
    }
    list.to_vec()
}

fn account(
    c: &mut Checker<'_>,
    key: &str,
    name: Name,
    a: &super::schema::RawAccount,
    raw: &RawConfig,
    user_names: &mut std::collections::HashSet<String>,
) -> Account {
    let jetstream = a.jetstream.then(|| AccountJetStream {
        max_memory: a.max_memory.map(|s| s.0),
        max_file: a.max_file.map(|s| s.0),
        max_streams: a.max_streams,
        max_consumers: a.max_consumers,
    });
    if !a.jetstream
        && (a.max_memory.is_some()
            || a.max_file.is_some()
            || a.max_streams.is_some()
            || a.max_consumers.is_some())
    {
        c.problem(
            &format!("{key}.jetstream"),
            "JetStream limits are set, but jetstream is false",
        );
    }
    let mut users = Vec::new();
    for (i, u) in a.users.iter().enumerate() {
        let ukey = format!("{key}.users[{i}]");
        let credential = match (&u.name, &u.password_hash, &u.nkey) {
            (Some(n), Some(h), None) => {
                if !bcrypt_hash(h) {
                    c.problem(
                        &format!("{ukey}.password_hash"),
                        "not a bcrypt hash (write it with `natsmeshd user add`)",
                    );
                }
                if n.is_empty()
                    || n.chars().any(|ch| ch.is_whitespace() || ch.is_control())
                    || n == ANONYMOUS_USER
                    || n == SYSTEM_USER
                {
                    c.problem(
                        &format!("{ukey}.name"),
                        format!("{n:?} is not a usable user name"),
                    );
                }
                if !user_names.insert(n.clone()) {
                    c.problem(
                        &format!("{ukey}.name"),
                        format!(
                            "user {n:?} is defined twice (user names are unique across accounts)"
                        ),
                    );
                }
                Credential::Password {
                    user: n.clone(),
                    password: h.clone(),
                }
            }
            (None, None, Some(k)) => {
                if !nkey::is_user_nkey(k) {
                    c.problem(
                        &format!("{ukey}.nkey"),
                        format!("{k:?} is not a public user nkey (U…, 56 characters)"),
                    );
                }
                if !user_names.insert(k.clone()) {
                    c.problem(&format!("{ukey}.nkey"), "this nkey is defined twice");
                }
                Credential::Nkey(k.clone())
            }
            _ => {
                c.problem(&ukey, "a user has either name + password_hash, or nkey");
                continue;
            }
        };
        users.push(User {
            credential,
            permissions: Permissions {
                publish_allow: subjects_ok(c, &format!("{ukey}.publish"), &u.publish),
                publish_deny: subjects_ok(c, &format!("{ukey}.deny_publish"), &u.deny_publish),
                subscribe_allow: subjects_ok(c, &format!("{ukey}.subscribe"), &u.subscribe),
                subscribe_deny: subjects_ok(
                    c,
                    &format!("{ukey}.deny_subscribe"),
                    &u.deny_subscribe,
                ),
                allow_responses: u.allow_responses,
            },
        });
    }
    let mut exports = Vec::new();
    for (i, e) in a.exports.iter().enumerate() {
        let ekey = format!("{key}.exports[{i}]");
        match (&e.stream, &e.service) {
            (Some(s), None) => exports.push(Export::Stream(
                subjects_ok(c, &ekey, std::slice::from_ref(s)).remove(0),
            )),
            (None, Some(s)) => exports.push(Export::Service(
                subjects_ok(c, &ekey, std::slice::from_ref(s)).remove(0),
            )),
            _ => c.problem(&ekey, "an export has exactly one of stream and service"),
        }
    }
    let mut imports = Vec::new();
    for (i, im) in a.imports.iter().enumerate() {
        let ikey = format!("{key}.imports[{i}]");
        if !raw.accounts.contains_key(&im.account) {
            c.problem(
                &format!("{ikey}.account"),
                format!("no account {:?} in [accounts]", im.account),
            );
        }
        let (service, subject) = match (&im.stream, &im.service) {
            (Some(s), None) => (false, s),
            (None, Some(s)) => (true, s),
            _ => {
                c.problem(&ikey, "an import has exactly one of stream and service");
                continue;
            }
        };
        if let Some(account) = Name::new(&im.account) {
            imports.push(Import {
                service,
                account,
                subject: subjects_ok(c, &ikey, std::slice::from_ref(subject)).remove(0),
                to: im.to.clone(),
            });
        }
    }
    Account {
        name,
        jetstream,
        users,
        exports,
        imports,
    }
}

/// Decentralized JWT auth: the operator JWT, the full resolver in the
/// state directory, preloaded accounts.
fn apply_operator(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    state_dir: &Path,
    server: &mut ServerConfig,
) -> Option<SystemUser> {
    let o = &raw.auth.operator;
    if !raw.accounts.is_empty() {
        c.problem(
            "auth.mode",
            "\"operator\" takes accounts from JWTs; remove [accounts]",
        );
    }
    let jwt = match &o.jwt {
        Some(p) => {
            let p = c.file("auth.operator.jwt", p, env, false);
            c.readable("auth.operator.jwt", &p);
            p
        }
        None => {
            c.problem(
                "auth.operator.jwt",
                "required with auth.mode = \"operator\"",
            );
            PathBuf::new()
        }
    };
    let system_account = match &o.system_account {
        Some(s) if nkey::is_account_key(s) => s.clone(),
        Some(s) => {
            c.problem(
                "auth.operator.system_account",
                format!("{s:?} is not an account public key (A…, 56 characters)"),
            );
            String::new()
        }
        None => {
            c.problem(
                "auth.operator.system_account",
                "required with auth.mode = \"operator\"",
            );
            String::new()
        }
    };
    let mut preload = Vec::new();
    for (k, p) in &o.preload {
        let key = format!("auth.operator.preload.{k}");
        let p = c.file(&key, p, env, false);
        match (
            nkey::is_account_key(k).then(|| Name::new(k)).flatten(),
            std::fs::read_to_string(&p),
        ) {
            (Some(n), Ok(jwt)) => preload.push((n, jwt.trim().to_owned())),
            (None, _) => c.problem(&key, format!("{k:?} is not an account public key")),
            (_, Err(e)) => c.problem(&key, format!("cannot read {}: {e}", p.display())),
        }
    }
    let creds = match &o.system_creds {
        Some(p) => {
            let p = c.file("auth.operator.system_creds", p, env, true);
            c.secret("auth.operator.system_creds", &p, env);
            Some(SystemUser::Creds(p))
        }
        None => {
            c.problem(
                "auth.operator.system_creds",
                "required: natsmeshd's system-account user (a .creds file)",
            );
            None
        }
    };
    server.operator = Some(OperatorAuth {
        jwt,
        system_account,
        resolver_dir: state_dir.join("jwt"),
        preload,
    });
    creds
}

/// The profile's timings with the explicit overrides.
fn health_timings_of(raw: &RawConfig) -> HealthTimings {
    let h = &raw.health;
    let mut t = h.profile.timings();
    for (value, slot) in [
        (h.interval, &mut t.interval),
        (h.timeout, &mut t.timeout),
        (h.liveness_budget, &mut t.liveness_budget),
        (h.startup_grace, &mut t.startup_grace),
        (h.route_wait, &mut t.route_wait),
    ] {
        if let Some(v) = value {
            *slot = v.0;
        }
    }
    t
}

/// The profile's timings with the explicit overrides, checked for sense.
fn health_timings(c: &mut Checker<'_>, raw: &RawConfig) -> HealthTimings {
    let t = health_timings_of(raw);
    if t.interval < Duration::from_millis(50) {
        c.problem(
            "health.interval",
            format!("{:?} is too short (at least 50ms)", t.interval),
        );
    }
    if t.timeout < Duration::from_millis(50) {
        c.problem(
            "health.timeout",
            format!("{:?} is too short (at least 50ms)", t.timeout),
        );
    }
    if t.liveness_budget <= t.timeout.max(t.interval) {
        c.problem(
            "health.liveness_budget",
            format!(
                "{:?} must be longer than both health.interval and health.timeout, or one slow answer would kill the broker",
                t.liveness_budget
            ),
        );
    }
    t
}

/// The longest background fsync interval natsmesh renders. The interval is
/// how much acknowledged data a host's power loss can take with it; beyond
/// an hour it is no longer a schedule but a gamble (nats-server's default
/// is 2 minutes).
const SYNC_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// `broker.jetstream.sync_interval`: `"always"` (any case, as nats-server
/// reads it) or a duration in (0, 1h].
fn sync_interval(c: &mut Checker<'_>, raw: &str) -> Option<SyncInterval> {
    const KEY: &str = "broker.jetstream.sync_interval";
    let text = raw.trim();
    if text.eq_ignore_ascii_case("always") {
        return Some(SyncInterval::Always);
    }
    let d = match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            c.problem(
                KEY,
                format!(
                    "{raw:?} is neither \"always\" nor a duration ({e}); write e.g. \"10s\", \"2m\" or \"always\""
                ),
            );
            return None;
        }
    };
    if d.is_zero() {
        c.problem(
            KEY,
            "0 is no interval; write \"always\" to fsync after every write, or leave the key out for nats-server's default (2m)",
        );
        return None;
    }
    if d > SYNC_INTERVAL_MAX {
        c.problem(
            KEY,
            format!(
                "{raw:?} is longer than 1h: a host's power loss can take every acknowledged write of that window; use at most \"1h\", or \"always\""
            ),
        );
        return None;
    }
    Some(SyncInterval::Every(d))
}

/// The TOML key an operator writes for a nats-server key.
fn toml_key(nats_key: &str) -> &'static str {
    match nats_key {
        "server_name" => "node.name",
        "listen" => "broker.client.port",
        "http" => "broker.monitoring.bind",
        "lame_duck_duration" => "broker.lame_duck_duration",
        "lame_duck_grace_period" => "broker.lame_duck_grace_period",
        "server_tags" => "broker.tags",
        "jetstream.max_memory_store" => "broker.jetstream.max_memory_store",
        "jetstream.max_file_store" => "broker.jetstream.max_file_store",
        "jetstream.domain" => "broker.jetstream.domain",
        "jetstream.sync_interval" => "broker.jetstream.sync_interval",
        "cluster.name" | "gateway.name" => "node.region",
        "cluster" | "cluster.routes" => "broker.cluster.routes",
        "cluster.listen" => "broker.cluster.port",
        "gateway.listen" => "broker.gateway.port",
        "gateway.gateways.name" | "gateway.gateways.urls" => "broker.gateway.remotes",
        "leafnodes" | "leafnodes.remotes.urls" => "broker.leafnodes.remotes",
        "leafnodes.listen" => "broker.leafnodes.port",
        "mqtt" => "broker.mqtt.enabled",
        "mqtt.listen" => "broker.mqtt.port",
        "websocket.no_tls" => "broker.websocket.no_tls",
        "websocket.listen" => "broker.websocket.port",
        _ => "broker",
    }
}
