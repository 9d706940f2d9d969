//! The TOML schema of `/etc/natsmesh/natsmesh.toml` and its drop-ins, with
//! every default in one place.
//!
//! These structs are the *input*: they only know shapes and defaults. What
//! a value means, and whether it is allowed, is decided in `validate`. Every
//! table refuses unknown keys, so a typo is an error, not a silent default.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bind::Bind;
use super::units::{Size, Span};

/// The whole file (and every drop-in).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Who this node is.
    pub node: RawNode,
    /// The nats-server natsmesh runs.
    pub broker: RawBroker,
    /// The three probes.
    pub health: RawHealth,
    /// Restarting a broker that exits or hangs.
    pub restart: RawRestart,
    /// The control socket.
    pub control: RawControl,
    /// TLS and trust.
    pub tls: RawTls,
    /// Who may connect.
    pub auth: RawAuth,
    /// Config-file accounts, by name (identical on every node).
    pub accounts: std::collections::BTreeMap<String, RawAccount>,
    /// Peers and regions from DNS.
    pub discovery: RawDiscovery,
    /// This node's own discovery records, written and removed by natsmeshd.
    pub dns_publish: RawDnsPublish,
    /// Membership of the provider's load balancer.
    pub load_balancer: RawLoadBalancer,
    /// Restarts, upgrades and decommission, one node of the region at a time.
    pub fleet: RawFleet,
    /// Coordinated maintenance (`natsmeshd maintenance start|stop`).
    pub maintenance: RawMaintenance,
    /// Prometheus metrics.
    pub metrics: RawMetrics,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Bind address or policy (unauthenticated: loopback or private).
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// How often the broker's own figures are read (never per scrape).
    pub scrape_every: Span,
    /// Series per stream (messages, bytes, consumers, replicas behind) for
    /// the streams this server leads; one `/jsz` read per `scrape_every`.
    pub streams: bool,
    /// Serve HTTPS with the node certificate (needs `[tls]`).
    pub tls: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: Bind::Loopback,
            port: 7778,
            scrape_every: Span(Duration::from_secs(15)),
            streams: false,
            tls: false,
        }
    }
}

/// `[fleet]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFleet {
    /// Take the restart lease before any planned restart.
    pub coordinate: bool,
    /// Whose lease: `region` (one node of each region at a time) or
    /// `supercluster` (one node of all regions at a time, for upgrades).
    pub lease_scope: LeaseScope,
    /// How long a lease lasts without renewal (a dead holder frees it
    /// after this); longer than a restart takes.
    pub lease_ttl: Span,
    /// Operator mode: a `.creds` file of a user in a JetStream-enabled
    /// account, where the lease bucket lives.
    pub lease_creds: Option<PathBuf>,
}

impl Default for RawFleet {
    fn default() -> Self {
        Self {
            coordinate: true,
            lease_scope: LeaseScope::Region,
            lease_ttl: Span(Duration::from_secs(300)),
            lease_creds: None,
        }
    }
}

/// `[maintenance]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMaintenance {
    /// How long a maintenance lease holds while its node is down (a node
    /// that never comes back frees the others after this).
    pub max_down: Span,
    /// OS updates that need a reboot: `"off"` (the operator reboots) or
    /// `"coordinated"` (natsmeshd reboots through the maintenance path).
    pub reboot: RebootMode,
    /// When coordinated reboots may begin (`"Mon-Fri 02:00-05:00 UTC"`);
    /// left out: at any time.
    pub window: Option<String>,
    /// What reboots the machine, as argv (no shell).
    pub reboot_command: Vec<String>,
    /// The file whose presence asks for a reboot (unattended-upgrades').
    pub reboot_required: PathBuf,
}

impl Default for RawMaintenance {
    fn default() -> Self {
        Self {
            max_down: Span(Duration::from_secs(15 * 60)),
            reboot: RebootMode::Off,
            window: None,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            reboot_required: PathBuf::from("/run/reboot-required"),
        }
    }
}

/// `[maintenance] reboot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootMode {
    /// natsmeshd does not reboot the machine.
    #[default]
    Off,
    /// One node at a time across the supercluster, under the maintenance
    /// lease.
    Coordinated,
}

/// How many nodes may be down for planned restarts at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseScope {
    /// One per region: regions roll side by side.
    #[default]
    Region,
    /// One in the whole supercluster. Its bucket lives in the region of
    /// the node that made it first, so with that region down no planned
    /// restart starts anywhere.
    Supercluster,
}

impl LeaseScope {
    /// Whose lease, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Supercluster => "supercluster",
        }
    }
}

/// Whose load balancer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbKind {
    /// None managed by natsmeshd (the default).
    #[default]
    None,
    /// A DigitalOcean Load Balancer.
    Digitalocean,
    /// A Linode NodeBalancer.
    Linode,
}

/// Which of this Linode's addresses a NodeBalancer node points at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LbBackend {
    /// Its private IPv4 address (from the metadata service).
    #[default]
    Private,
    /// Its address in a VPC subnet, with the subnet's id (a VPC backend;
    /// read through the API, the metadata service does not show it).
    Vpc,
}

/// `[load_balancer]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLoadBalancer {
    /// Whose balancer; the node's provider must be the same.
    pub provider: LbKind,
    /// The balancer's id (DigitalOcean: its uuid).
    pub id: Option<String>,
    /// File with the API token (relative: a systemd credential name).
    pub token_file: Option<PathBuf>,
    /// API base URL, for a proxy; default: the provider's.
    pub api_url: Option<String>,
    /// Linode: which address a NodeBalancer node points at.
    pub backend: LbBackend,
    /// Linode, `backend = "vpc"`: the VPC subnet the NodeBalancer
    /// reaches (needed only when this Linode is in several).
    pub subnet_id: Option<u64>,
    /// Where the readiness endpoint listens (for the health check).
    pub ready_bind: Bind,
    /// Its port.
    pub ready_port: u16,
    /// Minimum time a state holds before membership follows it (not for
    /// the first join after start).
    pub dwell: Span,
    /// The most a stop spends leaving the balancer (deregistration and
    /// the drain delay its health check implies); unset, it is derived
    /// from the balancer's health check as read, so the drain delay is
    /// never cut short.
    pub stop_budget: Option<Span>,
}

impl Default for RawLoadBalancer {
    fn default() -> Self {
        Self {
            provider: LbKind::None,
            id: None,
            token_file: None,
            api_url: None,
            backend: LbBackend::Private,
            subnet_id: None,
            ready_bind: Bind::Private,
            ready_port: 8223,
            dwell: Span(Duration::from_secs(5)),
            stop_budget: None,
        }
    }
}

/// Where `[dns_publish]` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsBackend {
    /// Publish nothing (the default): records are managed elsewhere.
    #[default]
    None,
    /// RFC 2136 dynamic update with TSIG (BIND, Knot, PowerDNS).
    Rfc2136,
    /// DigitalOcean Domains API.
    Digitalocean,
    /// Linode (Akamai) Domains API.
    Linode,
    /// Cloudflare DNS API.
    Cloudflare,
}

/// `[dns_publish]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDnsPublish {
    /// Which DNS provider takes the records.
    pub backend: DnsBackend,
    /// The zone the records go into; default: `node.domain`.
    pub zone: Option<String>,
    /// TTL of every record (raised to the provider's minimum).
    pub ttl: Span,
    /// Publish the region name's address record for gateways.
    pub gateway: bool,
    /// How long a stop waits for the withdrawal before lame duck anyway.
    pub withdraw_timeout: Span,
    /// How often published records are checked and repaired.
    pub verify_every: Span,
    /// RFC 2136: the primary server, `ip` or `ip:port`.
    pub server: Option<String>,
    /// RFC 2136: the TSIG key name.
    pub tsig_key_name: Option<String>,
    /// RFC 2136: `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// RFC 2136: file with the base64 secret, or a `tsig-keygen` key clause
    /// (relative: a systemd credential name).
    pub tsig_secret_file: Option<PathBuf>,
    /// API backends: file with the token (relative: a systemd credential name).
    pub token_file: Option<PathBuf>,
    /// API backends: base URL, for a proxy; default: the provider's.
    pub api_url: Option<String>,
}

impl Default for RawDnsPublish {
    fn default() -> Self {
        Self {
            backend: DnsBackend::None,
            zone: None,
            ttl: Span(Duration::from_secs(30)),
            gateway: true,
            withdraw_timeout: Span(Duration::from_secs(10)),
            verify_every: Span(Duration::from_secs(300)),
            server: None,
            tsig_key_name: None,
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret_file: None,
            token_file: None,
            api_url: None,
        }
    }
}

/// `[discovery]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDiscovery {
    /// Follow DNS for routes (and regions).
    pub enabled: bool,
    /// The region's route SRV record; `{region}` and `{domain}` are filled in.
    pub route_record: String,
    /// The regions; empty: read them from `regions_record`.
    pub regions: Vec<String>,
    /// TXT record listing the regions.
    pub regions_record: String,
    /// Nameservers (`ip:port`); empty: the system resolver.
    pub nameservers: Vec<String>,
    /// Shortest wait between lookups (a record's TTL, within the bounds).
    pub min_refresh: Span,
    /// Longest wait between lookups.
    pub max_refresh: Span,
    /// Routes (`host:port`) used until DNS has answered once.
    pub seeds: Vec<String>,
    /// Route records beyond this many are ignored.
    pub max_records: usize,
    /// JetStream's first start waits for this many servers in the region
    /// (it fixes the group size for good); 0: do not wait.
    pub bootstrap_expect: usize,
    /// How long to wait for them before giving up (and not starting).
    pub bootstrap_timeout: Span,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        Self {
            enabled: false,
            route_record: "_nats-route._tcp.{region}.{domain}".into(),
            regions: Vec::new(),
            regions_record: "_nats-regions.{domain}".into(),
            nameservers: Vec::new(),
            min_refresh: Span(Duration::from_secs(5)),
            max_refresh: Span(Duration::from_secs(300)),
            seeds: Vec::new(),
            max_records: 64,
            bootstrap_expect: 0,
            bootstrap_timeout: Span(Duration::from_secs(600)),
        }
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Accounts and users from `[accounts]` (the default): nothing
    /// connects without credentials.
    #[default]
    Accounts,
    /// Decentralized JWT auth: an operator JWT and the built-in full
    /// resolver.
    Operator,
    /// No authentication; only where every client-facing listener binds
    /// loopback (the embedded default).
    None,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// How clients authenticate.
    pub mode: AuthMode,
    /// Loopback-only deployments: clients without credentials join this
    /// account (`no_auth_user`).
    pub anonymous_account: Option<String>,
    /// natsmeshd's own system user password (a systemd credential); when
    /// unset, one is generated in the state directory (0600) on first start.
    pub system_password_file: Option<PathBuf>,
    /// `mode = "operator"`.
    pub operator: RawOperator,
}

/// `[auth.operator]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOperator {
    /// The operator JWT file.
    pub jwt: Option<PathBuf>,
    /// The system account's public key (`A…`).
    pub system_account: Option<String>,
    /// Account JWTs to preload into the resolver, by public key.
    pub preload: std::collections::BTreeMap<String, PathBuf>,
    /// natsmeshd's system-account user (a `.creds` file, a systemd
    /// credential).
    pub system_creds: Option<PathBuf>,
}

/// `[accounts.<NAME>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAccount {
    /// JetStream for this account.
    pub jetstream: bool,
    /// JetStream memory limit.
    pub max_memory: Option<Size>,
    /// JetStream file limit.
    pub max_file: Option<Size>,
    /// JetStream streams limit.
    pub max_streams: Option<i64>,
    /// JetStream consumers limit.
    pub max_consumers: Option<i64>,
    /// What it offers other accounts.
    pub exports: Vec<RawExport>,
    /// What it takes from other accounts.
    pub imports: Vec<RawImport>,
    /// Its users.
    pub users: Vec<RawUser>,
}

/// An export: exactly one of `stream` and `service`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawExport {
    /// Messages on these subjects.
    pub stream: Option<String>,
    /// Requests on these subjects.
    pub service: Option<String>,
}

/// An import: exactly one of `stream` and `service`, from `account`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawImport {
    /// Messages on these subjects.
    pub stream: Option<String>,
    /// Requests on these subjects.
    pub service: Option<String>,
    /// The exporting account.
    pub account: String,
    /// Local subject (service) or prefix (stream).
    pub to: Option<String>,
}

/// `[[accounts.<NAME>.users]]`: an nkey, or a name with a bcrypt hash.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUser {
    /// User name (with `password_hash`).
    pub name: Option<String>,
    /// bcrypt hash of the password (`natsmeshd user add` writes it).
    pub password_hash: Option<String>,
    /// Public user nkey (`U…`).
    pub nkey: Option<String>,
    /// Subjects it may publish to (empty: any).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (empty: any).
    pub subscribe: Vec<String>,
    /// Subjects it may not publish to.
    pub deny_publish: Vec<String>,
    /// Subjects it may not subscribe to.
    pub deny_subscribe: Vec<String>,
    /// May reply to requests it receives.
    pub allow_responses: bool,
}

/// Where node certificates come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS (loopback-only set-ups).
    #[default]
    Off,
    /// natsmeshd issues short-lived node certificates from the region's
    /// intermediate.
    Issue,
    /// The operator's PKI (step-ca, Vault…) keeps the files; natsmeshd checks
    /// them and reloads the broker when they change.
    Files,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// Where node certificates come from.
    pub mode: TlsMode,
    /// Trusted roots (PEM bundle; old and new during a CA rotation).
    pub ca_file: Option<PathBuf>,
    /// `issue`: the region intermediate's certificate. A relative path is
    /// looked up in `$CREDENTIALS_DIRECTORY`, else next to this file.
    pub intermediate_cert: PathBuf,
    /// `issue`: the intermediate's key (keep it a systemd credential).
    pub intermediate_key: PathBuf,
    /// `issue`: lifetime of node certificates (renewed at two thirds).
    pub validity: Span,
    /// `files`: the node certificate chain.
    pub cert_file: Option<PathBuf>,
    /// `files`: the node key.
    pub key_file: Option<PathBuf>,
    /// A separate certificate for client-facing listeners (a public CA's).
    pub client_cert_file: Option<PathBuf>,
    /// Its key.
    pub client_key_file: Option<PathBuf>,
    /// More DNS names for the node certificate (the load balancer's name).
    pub extra_names: Vec<String>,
    /// TLS handshake timeout on every listener.
    pub handshake_timeout: Span,
    /// Client-facing TLS: `auto` requires it on every listener that is not
    /// loopback-only; `required` everywhere.
    pub client: ClientTls,
    /// Serve monitoring over HTTPS (with the client-port certificate; the
    /// client port then requires TLS too).
    pub monitoring: bool,
}

/// When client-facing listeners require TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// On every listener that is not loopback-only.
    #[default]
    Auto,
    /// On every listener.
    Required,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            mode: TlsMode::Off,
            ca_file: None,
            intermediate_cert: PathBuf::from("intermediate.crt"),
            intermediate_key: PathBuf::from("intermediate.key"),
            validity: Span(Duration::from_secs(7 * 24 * 3600)),
            cert_file: None,
            key_file: None,
            client_cert_file: None,
            client_key_file: None,
            extra_names: Vec::new(),
            handshake_timeout: Span(Duration::from_secs(2)),
            client: ClientTls::Auto,
            monitoring: false,
        }
    }
}

/// A set of probe timings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthProfile {
    /// Patient: a broker that is busy or recovering JetStream is left alone.
    #[default]
    Default,
    /// Quick to act, for small brokers and tests.
    Fast,
}

/// Probe timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTimings {
    /// Time between probe rounds.
    pub interval: Duration,
    /// Time a single probe may take.
    pub timeout: Duration,
    /// Timeouts-only time after which the broker is killed.
    pub liveness_budget: Duration,
    /// Start-up grace.
    pub startup_grace: Duration,
    /// Wait for a first route.
    pub route_wait: Duration,
}

impl HealthProfile {
    /// The profile's timings.
    pub fn timings(self) -> HealthTimings {
        match self {
            HealthProfile::Default => HealthTimings {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(2),
                liveness_budget: Duration::from_secs(60),
                startup_grace: Duration::from_secs(120),
                route_wait: Duration::from_secs(30),
            },
            HealthProfile::Fast => HealthTimings {
                interval: Duration::from_millis(250),
                timeout: Duration::from_millis(500),
                liveness_budget: Duration::from_secs(3),
                startup_grace: Duration::from_secs(10),
                route_wait: Duration::from_secs(5),
            },
        }
    }
}

/// `[health]`: the profile's timings, each overridable.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHealth {
    /// Base timings.
    pub profile: HealthProfile,
    /// Time between probe rounds.
    pub interval: Option<Span>,
    /// Time a single probe may take.
    pub timeout: Option<Span>,
    /// Only timeouts for this long make a broker "hung" (then it is killed).
    pub liveness_budget: Option<Span>,
    /// After a start, timeouts do not count for this long; extended while the
    /// broker answers but does not serve yet (JetStream recovering).
    pub startup_grace: Option<Span>,
    /// With peers configured, how long a started broker waits for its first
    /// route before it serves anyway (it never waits on another machine for
    /// longer).
    pub route_wait: Option<Span>,
}

/// `[restart]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRestart {
    /// Second retry delay (the first is immediate); doubles up to the max.
    pub backoff_initial: Span,
    /// Longest delay between retries.
    pub backoff_max: Span,
    /// This many crashes within the window end natsmeshd with an error, so
    /// systemd sees the failure.
    pub crash_loop_count: u32,
    /// The crash-loop window.
    pub crash_loop_window: Span,
    /// After the lame-duck duration, how long to wait before SIGINT.
    pub stop_margin: Span,
    /// After SIGINT, how long to wait before SIGKILL.
    pub kill_after: Span,
}

impl Default for RawRestart {
    fn default() -> Self {
        Self {
            backoff_initial: Span(Duration::from_millis(500)),
            backoff_max: Span(Duration::from_secs(30)),
            crash_loop_count: 5,
            crash_loop_window: Span(Duration::from_secs(300)),
            stop_margin: Span(Duration::from_secs(10)),
            kill_after: Span(Duration::from_secs(20)),
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawControl {
    /// Control socket path. Default: `$RUNTIME_DIRECTORY/control.sock`
    /// under systemd, else `/run/natsmesh/control.sock`; the embedded
    /// default uses `$XDG_RUNTIME_DIR/natsmesh/control.sock`.
    pub socket: Option<PathBuf>,
}

/// Where natsmesh learns its identity from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Everything from this file.
    #[default]
    None,
    /// The droplet metadata service.
    DigitalOcean,
    /// The Linode Metadata Service.
    Linode,
}

/// `[node]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNode {
    /// natsmesh's region label: the cluster name, the gateway name and the
    /// DNS label at once. Required.
    pub region: Option<String>,
    /// Identity source.
    pub provider: Provider,
    /// Permanent server name (`provider = "none"` only; a cloud derives it
    /// from the instance); defaults to the host name.
    pub name: Option<String>,
    /// Private address (`provider = "none"`; a cloud's metadata says).
    pub private_address: Option<std::net::Ipv4Addr>,
    /// Public address (`provider = "none"`).
    pub public_address: Option<std::net::Ipv4Addr>,
    /// Public IPv6 address (`provider = "none"`).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The supercluster's DNS domain: certificate names
    /// (`<server>.<region>.<domain>`) and, later, discovery records.
    pub domain: Option<String>,
    /// The metadata service.
    pub metadata: RawMetadata,
}

/// `[node.metadata]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetadata {
    /// Base URL of the metadata service.
    pub url: String,
    /// The Linode service's IPv6 address, tried when the first is unreachable.
    pub ipv6_url: Option<String>,
    /// Per request.
    pub timeout: Span,
    /// How long to keep trying at start before giving up.
    pub retry_for: Span,
}

impl Default for RawMetadata {
    fn default() -> Self {
        Self {
            url: "http://169.254.169.254".into(),
            ipv6_url: None,
            timeout: Span(Duration::from_secs(2)),
            retry_for: Span(Duration::from_secs(60)),
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBroker {
    /// nats-server binary: a path, or a name looked up in `PATH`.
    pub binary: PathBuf,
    /// State directory (rendered config, JetStream store). Default:
    /// `$STATE_DIRECTORY` under systemd, else `/var/lib/natsmesh`; the
    /// embedded default uses a per-user directory.
    pub state_dir: Option<PathBuf>,
    /// Lame-duck drain length (nats-server minimum 30s).
    pub lame_duck_duration: Span,
    /// Wait before lame duck starts closing clients (< duration).
    pub lame_duck_grace_period: Span,
    /// `server_tags`.
    pub tags: Vec<String>,
    /// Broker debug logging.
    pub debug: bool,
    /// Broker protocol tracing (very verbose).
    pub trace: bool,
    /// Client listener.
    pub client: RawClient,
    /// Monitoring (HTTP) listener.
    pub monitoring: RawMonitoring,
    /// JetStream.
    pub jetstream: RawJetStream,
    /// Routes inside the region.
    pub cluster: RawCluster,
    /// Gateways between regions.
    pub gateway: RawGateway,
    /// Leafnode listener and remotes.
    pub leafnodes: RawLeafnodes,
    /// MQTT listener.
    pub mqtt: RawMqtt,
    /// Websocket listener.
    pub websocket: RawWebsocket,
    /// Extra nats-server settings, each included inside its named block.
    pub include: RawIncludes,
}

impl Default for RawBroker {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("nats-server"),
            state_dir: None,
            lame_duck_duration: Span(Duration::from_secs(120)),
            lame_duck_grace_period: Span(Duration::from_secs(10)),
            tags: Vec::new(),
            debug: false,
            trace: false,
            client: RawClient::default(),
            monitoring: RawMonitoring::default(),
            jetstream: RawJetStream::default(),
            cluster: RawCluster::default(),
            gateway: RawGateway::default(),
            leafnodes: RawLeafnodes::default(),
            mqtt: RawMqtt::default(),
            websocket: RawWebsocket::default(),
            include: RawIncludes::default(),
        }
    }
}

/// `[broker.monitoring]`: no authentication, so loopback by default and
/// never a public address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMonitoring {
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
}

impl Default for RawMonitoring {
    fn default() -> Self {
        Self {
            bind: Bind::Loopback,
            port: 8222,
        }
    }
}

/// `[broker.client]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClient {
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// `host:port` advertised to clients of other servers.
    pub advertise: Option<String>,
}

impl Default for RawClient {
    fn default() -> Self {
        Self {
            bind: Bind::Auto,
            port: 4222,
            advertise: None,
        }
    }
}

/// `[broker.mqtt]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMqtt {
    /// Whether it listens.
    pub enabled: bool,
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: Bind::Auto,
            port: 1883,
        }
    }
}

/// `[broker.jetstream]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawJetStream {
    /// JetStream on this node.
    pub enabled: bool,
    /// Required when enabled: nats-server's 0 means "dynamic", not "none".
    pub max_memory_store: Option<Size>,
    /// Required when enabled.
    pub max_file_store: Option<Size>,
    /// JetStream domain (leafnode edges).
    pub domain: Option<String>,
    /// When the file store fsyncs: a duration (`"10s"`) or `"always"`.
    /// Unset keeps nats-server's default (2 minutes). Kept as text so a bad
    /// value is reported by validation with the key and the reason.
    pub sync_interval: Option<String>,
}

impl Default for RawJetStream {
    fn default() -> Self {
        Self {
            enabled: true,
            max_memory_store: None,
            max_file_store: None,
            domain: None,
            sync_interval: None,
        }
    }
}

/// `[broker.cluster]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    /// Whether this node routes to the rest of its region.
    pub enabled: bool,
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// `host:port` peers dial; also this node's own route. Needed when
    /// `bind` is an unspecified address.
    pub advertise: Option<String>,
    /// Static routes (`host:port`) to the region's other servers; this
    /// node's own route is always added.
    pub routes: Vec<String>,
    /// Route pool size (nats-server 2.10+).
    pub pool_size: Option<i64>,
    /// Route compression (nats-server 2.10+).
    pub compression: Option<String>,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: Bind::Auto,
            port: 6222,
            advertise: None,
            routes: Vec::new(),
            pool_size: None,
            compression: None,
        }
    }
}

/// `[broker.gateway]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGateway {
    /// Whether this region links to others.
    pub enabled: bool,
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// `host:port` other regions dial.
    pub advertise: Option<String>,
    /// Static remote regions.
    pub remotes: Vec<RawRemoteGateway>,
    /// natsmeshd's gate in front of the gateway port binds a peer's
    /// claimed region to its certificate (with TLS and a domain).
    pub gate: bool,
    /// The broker's own gateway port behind a gate on every address
    /// (default: port + 10000, or port - 10000 above 55535).
    pub gate_port: Option<u16>,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: Bind::Auto,
            port: 7222,
            advertise: None,
            remotes: Vec::new(),
            gate: true,
            gate_port: None,
        }
    }
}

/// `[[broker.gateway.remotes]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteGateway {
    /// The remote region.
    pub name: String,
    /// `host:port` of its gateways.
    pub urls: Vec<String>,
}

/// `[broker.leafnodes]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLeafnodes {
    /// Whether this node accepts leaf nodes.
    pub enabled: bool,
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// `host:port` leaf nodes dial.
    pub advertise: Option<String>,
    /// Outbound connections to hubs.
    pub remotes: Vec<RawLeafRemote>,
    /// Who may connect to the listener, each bound to a local account
    /// (`natsmeshd user add --leafnode` writes them).
    pub users: Vec<RawLeafUser>,
}

impl Default for RawLeafnodes {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: Bind::Auto,
            port: 7422,
            advertise: None,
            remotes: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// `[[broker.leafnodes.users]]`: a leaf node's login at this hub.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeafUser {
    /// User name.
    pub name: String,
    /// bcrypt hash of its password.
    pub password_hash: String,
    /// The local account its traffic lands in.
    pub account: String,
}

/// `[[broker.leafnodes.remotes]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeafRemote {
    /// `host:port` of the hub's leafnode listeners.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Or the hub's SRV record (`{region}` and `{domain}` filled in),
    /// followed by discovery.
    #[serde(default)]
    pub record: Option<String>,
    /// Local account bound to this remote.
    #[serde(default)]
    pub account: Option<String>,
    /// Credentials file for the hub.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
}

/// `[broker.websocket]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebsocket {
    /// Whether it listens.
    pub enabled: bool,
    /// Bind address or policy.
    pub bind: Bind,
    /// Port.
    pub port: u16,
    /// Plain-text websocket; nats-server requires TLS otherwise.
    pub no_tls: bool,
}

impl Default for RawWebsocket {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: Bind::Auto,
            port: 8080,
            no_tls: false,
        }
    }
}

/// `[broker.include]`: files of nats-server settings, each rendered as an
/// `include` inside its block. Paths are absolute or relative to the TOML
/// file that names them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIncludes {
    /// Inside `accounts {}`.
    pub accounts: Option<PathBuf>,
    /// Inside `authorization {}`.
    pub authorization: Option<PathBuf>,
    /// Inside `cluster {}`.
    pub cluster: Option<PathBuf>,
    /// Inside `gateway {}`.
    pub gateway: Option<PathBuf>,
    /// Inside `leafnodes {}`.
    pub leafnodes: Option<PathBuf>,
    /// Inside `mqtt {}`.
    pub mqtt: Option<PathBuf>,
    /// Inside `websocket {}`.
    pub websocket: Option<PathBuf>,
}

impl Provider {
    /// The lower-case name used in config and server names.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::None => "none",
            Provider::DigitalOcean => "digitalocean",
            Provider::Linode => "linode",
        }
    }

    /// Whether this is a cloud with a metadata service.
    pub fn is_cloud(self) -> bool {
        self != Provider::None
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
