//! A typed model of the nats-server configuration natsmesh runs, and its
//! rendering into the configuration language.
//!
//! The model holds only what natsmesh sets; anything else an operator needs
//! (accounts, authorization, MQTT details) reaches the broker as an `include`
//! inside a named block. Rendering is a pure function of the model and the
//! broker version: it refuses, rather than drops, a key the version does not
//! know (see `version::GATED_KEYS`).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;

use crate::conf::{Block, IncludePath, Name, Value};
use crate::version;

/// A listening port: a fixed number, or `-1`, which asks nats-server to pick
/// a free one (used by tests; `0` would mean the default port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// This port.
    Fixed(u16),
    /// A free port chosen by the server.
    Random,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Fixed(p) => write!(f, "{p}"),
            Port::Random => f.write_str("-1"),
        }
    }
}

/// Where a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listen {
    /// Bind address.
    pub host: IpAddr,
    /// Port.
    pub port: Port,
}

impl Listen {
    /// A listener on `host:port`.
    pub fn new(host: IpAddr, port: u16) -> Self {
        Self {
            host,
            port: Port::Fixed(port),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            IpAddr::V6(h) => write!(f, "[{h}]:{}", self.port),
            IpAddr::V4(h) => write!(f, "{h}:{}", self.port),
        }
    }
}

/// A host name or address with a port, as advertised or dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why a `host:port` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// No `:port` at the end.
    #[error("{0:?} has no port (expected host:port, IPv6 as [addr]:port)")]
    NoPort(String),
    /// Not a number in 1..=65535.
    #[error("{0:?} has an invalid port (expected 1-65535)")]
    BadPort(String),
    /// Neither an IP address nor a DNS name.
    #[error("{0:?} is neither an IP address nor a DNS host name")]
    BadHost(String),
}

impl HostPort {
    /// Parses `host:port`, `a.b.c.d:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, HostPortError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| HostPortError::NoPort(s.to_owned()))?;
            let ip: IpAddr = h
                .parse()
                .map_err(|_| HostPortError::BadHost(s.to_owned()))?;
            (Host::Ip(ip), p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| HostPortError::NoPort(s.to_owned()))?;
            if h.contains(':') {
                // A bare IPv6 address: nats-server would split it wrongly.
                return Err(HostPortError::BadHost(s.to_owned()));
            }
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if is_dns_name(h) => Host::Name(h.to_ascii_lowercase()),
                Err(_) => return Err(HostPortError::BadHost(s.to_owned())),
            };
            (host, p)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| HostPortError::BadPort(s.to_owned()))?;
        Ok(Self { host, port })
    }

    /// From an address and port.
    pub fn from_ip(ip: IpAddr, port: u16) -> Self {
        Self {
            host: Host::Ip(ip),
            port,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }
}

/// Whether `s` is a syntactically valid DNS host name (letters, digits,
/// hyphens and underscores in dot-separated labels of at most 63 bytes).
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(h)) => write!(f, "[{h}]:{}", self.port),
            Host::Ip(IpAddr::V4(h)) => write!(f, "{h}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// Route compression modes (2.10+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    Off,
    /// Compress only if the peer asks.
    Accept,
    /// S2 fast.
    S2Fast,
    /// S2 better.
    S2Better,
    /// S2 best.
    S2Best,
    /// Chosen by round-trip time.
    S2Auto,
}

impl Compression {
    /// The mode string nats-server reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Off => "off",
            Compression::Accept => "accept",
            Compression::S2Fast => "s2_fast",
            Compression::S2Better => "s2_better",
            Compression::S2Best => "s2_best",
            Compression::S2Auto => "s2_auto",
        }
    }

    /// Every mode, for error messages and parsing.
    pub const ALL: [Compression; 6] = [
        Compression::Off,
        Compression::Accept,
        Compression::S2Fast,
        Compression::S2Better,
        Compression::S2Best,
        Compression::S2Auto,
    ];
}

/// A `tls {}` block. The certificate and key files hold this node's chain
/// and key; `ca_file` the roots peers are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
    /// Trusted roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// Require and verify a client certificate (routes and gateways always
    /// do, whatever this says).
    pub verify: bool,
    /// Handshake timeout.
    pub timeout: Option<Duration>,
}

/// How a user proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user nkey (public, `U…`); the client signs with its seed.
    Nkey(String),
    /// A user name and its password: a bcrypt hash (`$2a$`/`$2b$`), or for
    /// the `no_auth_user` alone a plain one (nats-server checks that user's
    /// stored password against itself).
    Password {
        /// User name.
        user: String,
        /// bcrypt hash, or plain for the `no_auth_user`.
        password: String,
    },
}

/// Subject permissions of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (empty: any).
    pub publish_allow: Vec<String>,
    /// Subjects it may not publish to.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to (empty: any).
    pub subscribe_allow: Vec<String>,
    /// Subjects it may not subscribe to.
    pub subscribe_deny: Vec<String>,
    /// May answer requests on the reply subjects it receives.
    pub allow_responses: bool,
}

impl Permissions {
    /// Whether it limits anything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A user of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its credential.
    pub credential: Credential,
    /// Its permissions.
    pub permissions: Permissions,
}

/// JetStream for an account: off, or on with optional limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountJetStream {
    /// Memory storage limit, bytes.
    pub max_memory: Option<u64>,
    /// File storage limit, bytes.
    pub max_file: Option<u64>,
    /// Streams.
    pub max_streams: Option<i64>,
    /// Consumers.
    pub max_consumers: Option<i64>,
}

/// What an account offers other accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Messages on these subjects.
    Stream(String),
    /// Requests on these subjects.
    Service(String),
}

/// What an account takes from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// A service (requests) rather than a stream (messages).
    pub service: bool,
    /// The exporting account.
    pub account: Name,
    /// The exported subject.
    pub subject: String,
    /// Where it appears locally (services: `to`; streams: a prefix).
    pub to: Option<String>,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub name: Name,
    /// JetStream, when enabled for it.
    pub jetstream: Option<AccountJetStream>,
    /// Its users.
    pub users: Vec<User>,
    /// Its exports.
    pub exports: Vec<Export>,
    /// Its imports.
    pub imports: Vec<Import>,
}

/// Decentralized (JWT) authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAuth {
    /// The operator JWT file.
    pub jwt: PathBuf,
    /// The system account's public key.
    pub system_account: String,
    /// Where the full resolver keeps account JWTs.
    pub resolver_dir: PathBuf,
    /// Account JWTs to preload, by public key.
    pub preload: Vec<(Name, String)>,
}

/// `jetstream {}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStream {
    /// Parent of the `jetstream/` directory the server creates.
    pub store_dir: PathBuf,
    /// Bytes; never 0 (0 means "dynamic" to nats-server).
    pub max_memory_store: u64,
    /// Bytes; never 0.
    pub max_file_store: u64,
    /// JetStream domain, for leafnode edges.
    pub domain: Option<String>,
    /// How often the file store fsyncs; `None` leaves nats-server's
    /// default (every 2 minutes), which a host's power loss can cost.
    pub sync_interval: Option<SyncInterval>,
}

/// `jetstream.sync_interval` (2.10+): when the file store flushes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// fsync after every write: nothing acknowledged is lost with the
    /// machine's power, at the cost of throughput.
    Always,
    /// fsync in the background this often; never zero.
    Every(Duration),
}

impl SyncInterval {
    /// The value nats-server reads: the string `"always"` (its parser takes
    /// any string equal to it, ignoring case, before trying a duration) or a
    /// quoted Go duration.
    fn value(self) -> Value {
        match self {
            SyncInterval::Always => Value::from("always"),
            SyncInterval::Every(d) => Value::from(d),
        }
    }
}

/// `cluster {}`: the routes of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster name: natsmesh's region.
    pub name: String,
    /// Route listener.
    pub listen: Listen,
    /// Address other servers dial for implicit routes.
    pub advertise: Option<HostPort>,
    /// Do not gossip client URLs to clients.
    pub no_advertise: bool,
    /// One URL per server of the region, this one included.
    pub routes: Vec<HostPort>,
    /// Route pool size (2.10+).
    pub pool_size: Option<i64>,
    /// Route compression (2.10+).
    pub compression: Option<Compression>,
    /// TLS for this listener.
    pub tls: Option<Tls>,
    /// Operator's extra settings for this block.
    pub include: Option<IncludePath>,
}

/// A remote region in `gateway.gateways`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGateway {
    /// The remote region's name.
    pub name: String,
    /// Where to dial it.
    pub urls: Vec<HostPort>,
}

/// `gateway {}`: links between regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Must equal the cluster name.
    pub name: String,
    /// Gateway listener.
    pub listen: Listen,
    /// Address other regions dial.
    pub advertise: Option<HostPort>,
    /// Explicit remote regions.
    pub gateways: Vec<RemoteGateway>,
    /// TLS for this listener.
    pub tls: Option<Tls>,
    /// Operator's extra settings for this block.
    pub include: Option<IncludePath>,
}

/// A `leafnodes.remotes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRemote {
    /// Hub URLs.
    pub urls: Vec<HostPort>,
    /// Local account bound to the remote.
    pub account: Option<String>,
    /// Credentials file.
    pub credentials: Option<PathBuf>,
    /// TLS towards the hub.
    pub tls: Option<Tls>,
}

/// A leaf node's login at this hub's listener, bound to a local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafUser {
    /// User name.
    pub user: String,
    /// bcrypt hash of the password.
    pub password: String,
    /// The local account the leaf node's traffic lands in.
    pub account: String,
}

/// `leafnodes {}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leafnodes {
    /// Accepting listener, if this node is a hub.
    pub listen: Option<Listen>,
    /// Who may connect to the listener (`authorization { users }`): with
    /// none, nats-server admits a leaf node that brings no credentials
    /// into `$G`, even when clients need them.
    pub users: Vec<LeafUser>,
    /// Address leaf nodes dial.
    pub advertise: Option<HostPort>,
    /// Outbound connections to hubs.
    pub remotes: Vec<LeafRemote>,
    /// TLS for this listener.
    pub tls: Option<Tls>,
    /// Operator's extra settings for this block.
    pub include: Option<IncludePath>,
}

/// `mqtt {}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// Listener.
    pub listen: Listen,
    /// TLS for this listener.
    pub tls: Option<Tls>,
    /// Operator's extra settings for this block.
    pub include: Option<IncludePath>,
}

/// `websocket {}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Websocket {
    /// Listener.
    pub listen: Listen,
    /// Plain-text websocket (nats-server requires TLS otherwise).
    pub no_tls: bool,
    /// TLS for this listener.
    pub tls: Option<Tls>,
    /// Operator's extra settings for this block.
    pub include: Option<IncludePath>,
}

/// The whole configuration of one nats-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Permanent, unique server name.
    pub server_name: String,
    /// Client listener.
    pub listen: Listen,
    /// Client URL advertised to other servers' clients.
    pub client_advertise: Option<HostPort>,
    /// Monitoring (HTTP) listener; loopback or private only.
    pub monitoring: Option<Listen>,
    /// Where the server writes the ports it took (tests use `Port::Random`).
    pub ports_file_dir: Option<PathBuf>,
    /// Timestamps in the log (off under journald, which adds its own).
    pub logtime: bool,
    /// Debug logging.
    pub debug: bool,
    /// Protocol tracing.
    pub trace: bool,
    /// How long a lame-duck drain spreads client closes over (≥ 30 s).
    pub lame_duck_duration: Duration,
    /// Wait before the first client is closed (< duration).
    pub lame_duck_grace_period: Duration,
    /// `server_tags` (the server lower-cases them).
    pub tags: Vec<String>,
    /// `accounts { include ... }`.
    pub accounts_include: Option<IncludePath>,
    /// `authorization { include ... }`.
    pub authorization_include: Option<IncludePath>,
    /// Client-port TLS (top-level `tls {}`): required of every client.
    pub tls: Option<Tls>,
    /// Config-file accounts (rendered after `accounts_include`).
    pub accounts: Vec<Account>,
    /// The system account's name.
    pub system_account: Option<Name>,
    /// The user a client without credentials becomes.
    pub no_auth_user: Option<String>,
    /// JWT authentication (instead of config-file accounts).
    pub operator: Option<OperatorAuth>,
    /// Serve monitoring over HTTPS (with the client-port certificate).
    pub monitoring_https: bool,
    /// JetStream, when enabled.
    pub jetstream: Option<JetStream>,
    /// Routes, when this node is part of a region.
    pub cluster: Option<Cluster>,
    /// Gateways, when the region is part of a supercluster.
    pub gateway: Option<Gateway>,
    /// Leafnode listener and remotes.
    pub leafnodes: Option<Leafnodes>,
    /// MQTT listener.
    pub mqtt: Option<Mqtt>,
    /// Websocket listener.
    pub websocket: Option<Websocket>,
}

impl ServerConfig {
    /// A standalone server with natsmesh's defaults: lame-duck 2m / 10s, no
    /// JetStream, no cluster.
    pub fn standalone(server_name: impl Into<String>, listen: Listen) -> Self {
        Self {
            server_name: server_name.into(),
            listen,
            client_advertise: None,
            monitoring: None,
            ports_file_dir: None,
            logtime: true,
            debug: false,
            trace: false,
            lame_duck_duration: Duration::from_secs(120),
            lame_duck_grace_period: Duration::from_secs(10),
            tags: Vec::new(),
            accounts_include: None,
            authorization_include: None,
            tls: None,
            monitoring_https: false,
            accounts: Vec::new(),
            system_account: None,
            no_auth_user: None,
            operator: None,
            jetstream: None,
            cluster: None,
            gateway: None,
            leafnodes: None,
            mqtt: None,
            websocket: None,
        }
    }

    /// Every include path the config names.
    pub fn includes(&self) -> Vec<&IncludePath> {
        [
            self.accounts_include.as_ref(),
            self.authorization_include.as_ref(),
            self.cluster.as_ref().and_then(|c| c.include.as_ref()),
            self.gateway.as_ref().and_then(|g| g.include.as_ref()),
            self.leafnodes.as_ref().and_then(|l| l.include.as_ref()),
            self.mqtt.as_ref().and_then(|m| m.include.as_ref()),
            self.websocket.as_ref().and_then(|w| w.include.as_ref()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A configuration rendered for one broker version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The version it was rendered for.
    pub version: Version,
    /// The value tree (what the classifier compares).
    pub tree: Block,
    /// The file text.
    pub text: String,
    /// Include files it names, in order.
    pub includes: Vec<IncludePath>,
}

/// Why a model could not be rendered for a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A key this version's parser does not know; rendering it would stop the
    /// server from starting.
    #[error("`{key}` needs nats-server {since} or newer; this broker is {version}")]
    UnsupportedKey {
        /// Dotted key path.
        key: String,
        /// First release that knows it.
        since: Version,
        /// The broker's version.
        version: Version,
    },
    /// `no_auth_user` with a route or leafnode listener bypasses
    /// authentication on this release (fixed in 2.11.16, 2.12.7, 2.14.0).
    #[error(
        "`no_auth_user` together with a {listener} listener lets unauthenticated connections through on nats-server {version} (fixed in 2.11.16, 2.12.7 and 2.14.0)"
    )]
    UnsafeNoAuthUser {
        /// Which listener.
        listener: &'static str,
        /// The broker's version.
        version: Version,
    },
    /// A path that is not UTF-8 cannot be written into the file.
    #[error("`{key}`: path {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// Dotted key path.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
}

fn path_value(key: &'static str, p: &Path) -> Result<Value, RenderError> {
    p.to_str()
        .map(Value::from)
        .ok_or_else(|| RenderError::NonUtf8Path {
            key,
            path: p.to_owned(),
        })
}

fn listen_value(l: &Listen) -> Value {
    Value::Str(l.to_string())
}

fn size_value(bytes: u64) -> Value {
    // nats-server stores sizes as int64; clamp rather than wrap.
    Value::Int(i64::try_from(bytes).unwrap_or(i64::MAX))
}

fn urls(scheme: &str, hosts: &[HostPort]) -> Value {
    Value::Array(
        hosts
            .iter()
            .map(|h| Value::Str(format!("{scheme}://{h}")))
            .collect(),
    )
}

fn tls_block(t: &Tls) -> Result<Block, RenderError> {
    let mut b = Block::new();
    b.set("cert_file", path_value("tls.cert_file", &t.cert_file)?)
        .set("key_file", path_value("tls.key_file", &t.key_file)?);
    if let Some(ca) = &t.ca_file {
        b.set("ca_file", path_value("tls.ca_file", ca)?);
    }
    if t.verify {
        b.set("verify", true);
    }
    if let Some(d) = t.timeout {
        // A quoted Go duration: every supported release reads it here.
        b.set("timeout", d);
    }
    Ok(b)
}

fn subjects(list: &[String]) -> Value {
    Value::Array(list.iter().map(|s| Value::Str(s.clone())).collect())
}

fn account_block(a: &Account) -> Block {
    let mut b = Block::new();
    if let Some(js) = &a.jetstream {
        let limits = [js.max_memory, js.max_file];
        if limits.iter().all(Option::is_none)
            && js.max_streams.is_none()
            && js.max_consumers.is_none()
        {
            b.set("jetstream", "enabled");
        } else {
            let mut j = Block::new();
            j.set_opt("max_memory", js.max_memory.map(size_value))
                .set_opt("max_file", js.max_file.map(size_value))
                .set_opt("max_streams", js.max_streams)
                .set_opt("max_consumers", js.max_consumers);
            b.set("jetstream", j);
        }
    }
    let users: Vec<Value> = a
        .users
        .iter()
        .map(|u| {
            let mut ub = Block::new();
            match &u.credential {
                Credential::Nkey(k) => {
                    ub.set("nkey", k.as_str());
                }
                Credential::Password { user, password } => {
                    ub.set("user", user.as_str())
                        .set("password", password.as_str());
                }
            }
            let p = &u.permissions;
            if !p.is_empty() {
                let mut pb = Block::new();
                let side = |allow: &[String], deny: &[String]| {
                    let mut s = Block::new();
                    if !allow.is_empty() {
                        s.set("allow", subjects(allow));
                    }
                    if !deny.is_empty() {
                        s.set("deny", subjects(deny));
                    }
                    s
                };
                if !p.publish_allow.is_empty() || !p.publish_deny.is_empty() {
                    pb.set("publish", side(&p.publish_allow, &p.publish_deny));
                }
                if !p.subscribe_allow.is_empty() || !p.subscribe_deny.is_empty() {
                    pb.set("subscribe", side(&p.subscribe_allow, &p.subscribe_deny));
                }
                if p.allow_responses {
                    pb.set("allow_responses", true);
                }
                ub.set("permissions", pb);
            }
            Value::Block(ub)
        })
        .collect();
    if !users.is_empty() {
        b.set("users", Value::Array(users));
    }
    if !a.exports.is_empty() {
        let exports = a
            .exports
            .iter()
            .map(|e| {
                let mut eb = Block::new();
                match e {
                    Export::Stream(s) => eb.set("stream", s.as_str()),
                    Export::Service(s) => eb.set("service", s.as_str()),
                };
                Value::Block(eb)
            })
            .collect();
        b.set("exports", Value::Array(exports));
    }
    if !a.imports.is_empty() {
        let imports = a
            .imports
            .iter()
            .map(|i| {
                let mut src = Block::new();
                src.set("account", i.account.as_str())
                    .set("subject", i.subject.as_str());
                let mut ib = Block::new();
                if i.service {
                    ib.set("service", src).set_opt("to", i.to.clone());
                } else {
                    ib.set("stream", src).set_opt("prefix", i.to.clone());
                }
                Value::Block(ib)
            })
            .collect();
        b.set("imports", Value::Array(imports));
    }
    b
}

/// Starts a block with the operator's include first, so that every key
/// natsmesh writes after it wins (nats-server keeps the last duplicate).
fn block_with(include: Option<&IncludePath>) -> Block {
    let mut b = Block::new();
    if let Some(i) = include {
        b.include(i);
    }
    b
}

/// Whether `no_auth_user` next to route or leafnode listeners lets
/// connections skip authentication on `v` (fixed in 2.11.16, 2.12.7 and
/// 2.14.0).
pub fn no_auth_user_bypass(v: &Version) -> bool {
    match (v.major, v.minor) {
        (2, 12) => *v < Version::new(2, 12, 7),
        (2, 13) => true,
        _ => *v < Version::new(2, 11, 16),
    }
}

/// Renders the model for `version`, as a file that will be written into the
/// absolute directory `file_dir` (include paths are relative to it).
pub fn render(
    cfg: &ServerConfig,
    version: &Version,
    file_dir: &Path,
) -> Result<Rendered, RenderError> {
    if cfg.no_auth_user.is_some() && no_auth_user_bypass(version) {
        let listener = if cfg.cluster.is_some() {
            Some("route")
        } else if cfg.leafnodes.as_ref().is_some_and(|l| l.listen.is_some()) {
            Some("leafnode")
        } else {
            None
        };
        if let Some(listener) = listener {
            return Err(RenderError::UnsafeNoAuthUser {
                listener,
                version: version.clone(),
            });
        }
    }
    let tree = to_tree(cfg)?;
    for key in crate::conf::key_paths(&tree) {
        if let Some(since) = version::key_since(&key)
            && version < since
        {
            return Err(RenderError::UnsupportedKey {
                key,
                since: since.clone(),
                version: version.clone(),
            });
        }
    }
    let mut text = String::from(
        "# Rendered by natsmeshd; every edit is overwritten. Change /etc/natsmesh instead.\n",
    );
    text.push_str(&tree.to_file_text(file_dir));
    Ok(Rendered {
        version: version.clone(),
        includes: cfg.includes().into_iter().cloned().collect(),
        tree,
        text,
    })
}

fn to_tree(cfg: &ServerConfig) -> Result<Block, RenderError> {
    let mut top = Block::new();
    top.set("server_name", cfg.server_name.as_str())
        .set("listen", listen_value(&cfg.listen))
        .set_opt(
            "client_advertise",
            cfg.client_advertise.as_ref().map(|h| h.to_string()),
        )
        .set_opt(
            if cfg.monitoring_https {
                "https"
            } else {
                "http"
            },
            cfg.monitoring.as_ref().map(listen_value),
        );
    if let Some(dir) = &cfg.ports_file_dir {
        top.set("ports_file_dir", path_value("ports_file_dir", dir)?);
    }
    top.set("logtime", cfg.logtime)
        .set("debug", cfg.debug)
        .set("trace", cfg.trace)
        .set("lame_duck_duration", cfg.lame_duck_duration)
        .set("lame_duck_grace_period", cfg.lame_duck_grace_period);
    if !cfg.tags.is_empty() {
        top.set("server_tags", cfg.tags.clone());
    }
    if let Some(t) = &cfg.tls {
        top.set("tls", tls_block(t)?);
    }
    if cfg.accounts_include.is_some() || !cfg.accounts.is_empty() {
        let mut accounts = block_with(cfg.accounts_include.as_ref());
        for a in &cfg.accounts {
            accounts.set_named(&a.name, account_block(a));
        }
        top.set("accounts", accounts);
    }
    if let Some(s) = &cfg.system_account {
        top.set("system_account", s.as_str());
    }
    top.set_opt("no_auth_user", cfg.no_auth_user.clone());
    if let Some(o) = &cfg.operator {
        top.set("operator", path_value("operator", &o.jwt)?)
            .set("system_account", o.system_account.as_str());
        let mut r = Block::new();
        r.set("type", "full")
            .set("dir", path_value("resolver.dir", &o.resolver_dir)?)
            .set("allow_delete", false)
            .set("interval", Duration::from_secs(120));
        top.set("resolver", r);
        if !o.preload.is_empty() {
            let mut p = Block::new();
            for (k, jwt) in &o.preload {
                p.set_named(k, jwt.as_str());
            }
            top.set("resolver_preload", p);
        }
    }
    if let Some(inc) = &cfg.authorization_include {
        top.set("authorization", block_with(Some(inc)));
    }
    if let Some(js) = &cfg.jetstream {
        let mut b = Block::new();
        b.set(
            "store_dir",
            path_value("jetstream.store_dir", &js.store_dir)?,
        )
        .set("max_memory_store", size_value(js.max_memory_store))
        .set("max_file_store", size_value(js.max_file_store))
        .set_opt("domain", js.domain.clone())
        .set_opt("sync_interval", js.sync_interval.map(SyncInterval::value));
        top.set("jetstream", b);
    }
    if let Some(c) = &cfg.cluster {
        let mut b = block_with(c.include.as_ref());
        b.set("name", c.name.as_str())
            .set("listen", listen_value(&c.listen))
            .set_opt("advertise", c.advertise.as_ref().map(|h| h.to_string()));
        if c.no_advertise {
            b.set("no_advertise", true);
        }
        if let Some(t) = &c.tls {
            b.set("tls", tls_block(t)?);
        }
        b.set("routes", urls("nats-route", &c.routes))
            .set_opt("pool_size", c.pool_size)
            .set_opt("compression", c.compression.map(|m| m.as_str()));
        top.set("cluster", b);
    }
    if let Some(g) = &cfg.gateway {
        let mut b = block_with(g.include.as_ref());
        b.set("name", g.name.as_str())
            .set("listen", listen_value(&g.listen))
            .set_opt("advertise", g.advertise.as_ref().map(|h| h.to_string()));
        if let Some(t) = &g.tls {
            b.set("tls", tls_block(t)?);
        }
        if !g.gateways.is_empty() {
            let remotes = g
                .gateways
                .iter()
                .map(|r| {
                    let mut rb = Block::new();
                    rb.set("name", r.name.as_str())
                        .set("urls", urls("nats", &r.urls));
                    Value::Block(rb)
                })
                .collect();
            b.set("gateways", Value::Array(remotes));
        }
        top.set("gateway", b);
    }
    if let Some(l) = &cfg.leafnodes {
        let mut b = block_with(l.include.as_ref());
        b.set_opt("listen", l.listen.as_ref().map(listen_value))
            .set_opt("advertise", l.advertise.as_ref().map(|h| h.to_string()));
        if let Some(t) = &l.tls {
            b.set("tls", tls_block(t)?);
        }
        if l.listen.is_some() && !l.users.is_empty() {
            let users = l
                .users
                .iter()
                .map(|u| {
                    let mut ub = Block::new();
                    ub.set("user", u.user.as_str())
                        .set("password", u.password.as_str())
                        .set("account", u.account.as_str());
                    Value::Block(ub)
                })
                .collect();
            let mut auth = Block::new();
            auth.set("users", Value::Array(users));
            b.set("authorization", auth);
        }
        // A remote whose URLs are not known yet (a hub's DNS record that
        // has not answered) is left out: nats-server refuses one without.
        if l.remotes.iter().any(|r| !r.urls.is_empty()) {
            let mut remotes = Vec::new();
            for r in l.remotes.iter().filter(|r| !r.urls.is_empty()) {
                let mut rb = Block::new();
                rb.set("urls", urls("nats-leaf", &r.urls))
                    .set_opt("account", r.account.clone());
                if let Some(c) = &r.credentials {
                    rb.set(
                        "credentials",
                        path_value("leafnodes.remotes.credentials", c)?,
                    );
                }
                if let Some(t) = &r.tls {
                    rb.set("tls", tls_block(t)?);
                }
                remotes.push(Value::Block(rb));
            }
            b.set("remotes", Value::Array(remotes));
        }
        top.set("leafnodes", b);
    }
    if let Some(m) = &cfg.mqtt {
        let mut b = block_with(m.include.as_ref());
        b.set("listen", listen_value(&m.listen));
        if let Some(t) = &m.tls {
            b.set("tls", tls_block(t)?);
        }
        top.set("mqtt", b);
    }
    if let Some(w) = &cfg.websocket {
        let mut b = block_with(w.include.as_ref());
        b.set("listen", listen_value(&w.listen));
        if let Some(t) = &w.tls {
            b.set("tls", tls_block(t)?);
        } else if w.no_tls {
            b.set("no_tls", true);
        }
        top.set("websocket", b);
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            HostPort::parse("[::1]:6222").map(|h| h.to_string()),
            Ok("[::1]:6222".into())
        );
        assert_eq!(
            HostPort::parse("N1.Example.com:6222").map(|h| h.to_string()),
            Ok("n1.example.com:6222".into())
        );
        assert!(matches!(
            HostPort::parse("::1:6222"),
            Err(HostPortError::BadHost(_))
        ));
        assert!(matches!(
            HostPort::parse("h:0"),
            Err(HostPortError::BadPort(_))
        ));
        assert!(matches!(
            HostPort::parse("h"),
            Err(HostPortError::NoPort(_))
        ));
        assert!(matches!(
            HostPort::parse("a b:1"),
            Err(HostPortError::BadHost(_))
        ));
        assert!(matches!(
            HostPort::parse("h\":1"),
            Err(HostPortError::BadHost(_))
        ));
    }

    #[test]
    fn refuses_keys_the_version_does_not_know() {
        let mut cfg = ServerConfig::standalone("n1", Listen::new(LOCAL, 4222));
        cfg.cluster = Some(Cluster {
            name: "fra1".into(),
            listen: Listen::new(LOCAL, 6222),
            advertise: None,
            no_advertise: false,
            routes: vec![HostPort::from_ip(LOCAL, 6222)],
            pool_size: Some(3),
            compression: None,
            include: None,
            tls: None,
        });
        let err = render(&cfg, &Version::new(2, 9, 10), Path::new("/"))
            .expect_err("2.9.10 lacks pool_size");
        assert_eq!(
            err.to_string(),
            "`cluster.pool_size` needs nats-server 2.10.0 or newer; this broker is 2.9.10"
        );
        let ok =
            render(&cfg, &Version::new(2, 10, 0), Path::new("/")).expect("2.10 knows pool_size");
        assert!(ok.text.contains("pool_size: 3"));
    }

    #[test]
    fn sync_interval_renders_in_the_jetstream_block_from_2_10() {
        let mut cfg = ServerConfig::standalone("n1", Listen::new(LOCAL, 4222));
        let js = |sync| JetStream {
            store_dir: "/var/lib/natsmesh".into(),
            max_memory_store: 1 << 20,
            max_file_store: 1 << 20,
            domain: None,
            sync_interval: sync,
        };
        let v = Version::new(2, 10, 0);
        cfg.jetstream = Some(js(Some(SyncInterval::Always)));
        let r = render(&cfg, &v, Path::new("/")).expect("2.10 knows sync_interval");
        assert!(r.text.contains("sync_interval: \"always\""), "{}", r.text);
        cfg.jetstream = Some(js(Some(SyncInterval::Every(Duration::from_secs(120)))));
        let r = render(&cfg, &v, Path::new("/")).expect("renders");
        assert!(r.text.contains("sync_interval: \"120s\""), "{}", r.text);
        let err = render(&cfg, &Version::new(2, 9, 10), Path::new("/"))
            .expect_err("2.9.10 lacks sync_interval");
        assert_eq!(
            err.to_string(),
            "`jetstream.sync_interval` needs nats-server 2.10.0 or newer; this broker is 2.9.10"
        );
        // Unset is nats-server's own default: nothing rendered, any release.
        cfg.jetstream = Some(js(None));
        let r = render(&cfg, &Version::new(2, 9, 10), Path::new("/")).expect("renders");
        assert!(!r.text.contains("sync_interval"), "{}", r.text);
    }

    #[test]
    fn ipv6_listeners_are_quoted() {
        let cfg = ServerConfig::standalone(
            "n1",
            Listen::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 4222),
        );
        let r = render(&cfg, &Version::new(2, 9, 10), Path::new("/")).expect("renders");
        assert!(r.text.contains("listen: \"[::1]:4222\""), "{}", r.text);
    }
}
