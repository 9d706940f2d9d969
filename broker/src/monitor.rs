//! Talking to a running broker: its monitoring endpoints and its client
//! port.
//!
//! Each call returns what happened on the wire — an answer (any status), a
//! refused connection, or a timeout — because the supervisor gives them
//! different meanings: only a timeout says "hung"; a refusal during start or
//! lame duck is expected; a status code is an answer.

use std::net::SocketAddr;
use std::time::Duration;

use semver::Version;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What an HTTP probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http {
    /// The broker answered.
    Answered {
        /// HTTP status.
        status: u16,
        /// Body (truncated to 4 KiB).
        body: String,
    },
    /// Nothing listens.
    Refused,
    /// No answer in time.
    Timeout,
    /// Anything else (reset, bad HTTP).
    Failed(String),
}

/// A client for one broker's monitoring port.
#[derive(Debug, Clone)]
pub struct Monitor {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

/// The `/healthz` query that checks JetStream without its streams: the
/// meaning of `js-server-only` changed in 2.11.0 and `js-meta-only` took
/// over the old one (reference §4).
pub fn healthz_js_meta_query(version: &Version) -> &'static str {
    if *version >= Version::new(2, 11, 0) {
        "/healthz?js-meta-only=true"
    } else {
        "/healthz?js-server-only=true"
    }
}

/// `/healthz` that only asks "is JetStream enabled", used for liveness.
pub const HEALTHZ_ALIVE: &str = "/healthz?js-enabled-only=true";

impl Monitor {
    /// A client for `http://addr`, each request bounded by `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self::build(addr, timeout, None)
    }

    /// A client for `https://addr` (the broker's `https` monitoring),
    /// verifying the broker with `tls`.
    pub fn with_tls(addr: SocketAddr, timeout: Duration, tls: rustls::ClientConfig) -> Self {
        Self::build(addr, timeout, Some(tls))
    }

    fn build(addr: SocketAddr, timeout: Duration, tls: Option<rustls::ClientConfig>) -> Self {
        install_crypto_provider();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut builder = reqwest::Client::builder()
            // The environment's proxies must never see loopback probes.
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .pool_max_idle_per_host(1);
        // Always a preconfigured TLS backend: otherwise reqwest loads the
        // system's root store on every client it builds (tens of
        // milliseconds and a few hundred KiB, for plain-HTTP probes).
        builder = builder.tls_backend_preconfigured(tls.unwrap_or_else(plain_only_tls));
        Self {
            http: builder.build().unwrap_or_default(),
            base: format!("{scheme}://{addr}"),
            timeout,
        }
    }

    /// GET `path` (with query), keeping at most [`MAX_BODY`] of the answer.
    pub async fn get(&self, path: &str) -> Http {
        self.get_up_to(path, MAX_BODY).await
    }

    /// GET `path`, keeping at most `max` bytes of the answer.
    async fn get_up_to(&self, path: &str, max: usize) -> Http {
        let req = self.http.get(format!("{}{path}", self.base)).send();
        match tokio::time::timeout(self.timeout, req).await {
            Err(_) => Http::Timeout,
            Ok(Err(e)) if e.is_timeout() => Http::Timeout,
            Ok(Err(e)) if e.is_connect() => {
                if is_refused(&e) {
                    Http::Refused
                } else {
                    Http::Failed(e.to_string())
                }
            }
            Ok(Err(e)) => Http::Failed(e.to_string()),
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                match tokio::time::timeout(self.timeout, read_capped(resp, max)).await {
                    Err(_) => Http::Timeout,
                    Ok(Err(e)) => Http::Failed(e.to_string()),
                    Ok(Ok(b)) => {
                        let body = String::from_utf8_lossy(&b.bytes).into_owned();
                        Http::Answered { status, body }
                    }
                }
            }
        }
    }

    /// `/varz`, parsed.
    pub async fn varz(&self) -> Result<Varz, Http> {
        self.json("/varz").await
    }

    /// `/gatewayz` (connections only, no per-account detail), parsed.
    pub async fn gatewayz(&self) -> Result<Gatewayz, Http> {
        self.json("/gatewayz?accs=0").await
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Http> {
        self.json_up_to(path, MAX_BODY).await
    }

    /// GET `path` and parse its JSON, keeping at most `max` bytes.
    pub async fn json_up_to<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        max: usize,
    ) -> Result<T, Http> {
        match self.get_up_to(path, max).await {
            Http::Answered { status: 200, body } => {
                serde_json::from_str(&body).map_err(|e| Http::Failed(format!("bad {path}: {e}")))
            }
            other => Err(other),
        }
    }
}

/// The most of a monitoring answer kept: `/varz` of a server with many
/// gateways, routes and tags runs to several KiB; this only bounds a
/// broker gone wrong.
pub const MAX_BODY: usize = 1 << 20;

/// A body read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// At most the cap's bytes.
    pub bytes: Vec<u8>,
    /// Whether the answer had more (which was not read).
    pub truncated: bool,
}

/// Reads `resp`'s body while it streams, keeping at most `max` bytes and
/// stopping there: the rest is never read (dropping the response closes the
/// connection), so a peer that answers with gigabytes costs at most the cap
/// and one chunk of memory. Every HTTP reader in natsmesh goes through this.
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Capped, reqwest::Error> {
    let mut bytes: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - bytes.len();
        let take = chunk.len().min(room);
        // Grow by doubling, but never past the cap: `Vec`'s own doubling
        // could reserve twice the cap.
        if bytes.capacity() < bytes.len() + take {
            let want = (bytes.len() + take).max(bytes.capacity() * 2).min(max);
            bytes.reserve_exact(want - bytes.len());
        }
        bytes.extend_from_slice(&chunk[..take]);
        if chunk.len() > room {
            return Ok(Capped {
                bytes,
                truncated: true,
            });
        }
    }
    Ok(Capped {
        bytes,
        truncated: false,
    })
}

/// The part of `/gatewayz` natsmesh reads: which regions this server has
/// made a gateway connection to.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Gatewayz {
    /// Connections this server made, by remote gateway (region) name.
    #[serde(default)]
    pub outbound_gateways: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A TLS configuration that trusts nothing: for clients that only speak
/// plain HTTP.
pub fn plain_only_tls() -> rustls::ClientConfig {
    install_crypto_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Makes ring the process's rustls provider. reqwest is built without a
/// provider of its own (no aws-lc-rs, no C toolchain needed) and otherwise
/// refuses to build any client, even a plain-HTTP one. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    false
}

/// The parts of `/varz` natsmesh reads. Fields missing on a version are
/// `None`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Varz {
    /// Server id (for `$SYS` subjects).
    pub server_id: Option<String>,
    /// Server name.
    pub server_name: Option<String>,
    /// Version string.
    pub version: Option<String>,
    /// Client connections.
    #[serde(default)]
    pub connections: u64,
    /// Route connections (pooled ones counted each).
    #[serde(default)]
    pub routes: u64,
    /// Distinct route peers (newer servers); prefer this over `routes`.
    pub remotes: Option<u64>,
    /// Leafnode connections.
    #[serde(default)]
    pub leafnodes: u64,
    /// When the config was last loaded (RFC 3339).
    pub config_load_time: Option<String>,
    /// `sha256:<hex>` of the loaded config (2.11+).
    pub config_digest: Option<String>,
    /// Messages in.
    #[serde(default)]
    pub in_msgs: u64,
    /// Messages out.
    #[serde(default)]
    pub out_msgs: u64,
    /// Bytes in.
    #[serde(default)]
    pub in_bytes: u64,
    /// Bytes out.
    #[serde(default)]
    pub out_bytes: u64,
    /// Slow consumers.
    #[serde(default)]
    pub slow_consumers: u64,
    /// Resident memory of the broker.
    #[serde(default)]
    pub mem: u64,
    /// Broker CPU percentage.
    #[serde(default)]
    pub cpu: f64,
    /// JetStream, when enabled (and readable: a shape this code does not
    /// know leaves it out rather than failing the whole `/varz`).
    #[serde(default, deserialize_with = "lenient")]
    pub jetstream: Option<VarzJetStream>,
}

fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// `/varz.jetstream` (the same shape from 2.9.10 to 2.15).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct VarzJetStream {
    /// Its limits.
    #[serde(default)]
    pub config: JetStreamLimits,
    /// Its usage.
    #[serde(default)]
    pub stats: JetStreamUsage,
    /// The meta group, when clustered.
    #[serde(default)]
    pub meta: Option<JetStreamMeta>,
}

/// JetStream limits, bytes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JetStreamLimits {
    /// Memory store limit.
    #[serde(default)]
    pub max_memory: i64,
    /// File store limit.
    #[serde(default)]
    pub max_storage: i64,
}

/// JetStream usage, bytes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JetStreamUsage {
    /// Memory store used.
    #[serde(default)]
    pub memory: u64,
    /// File store used.
    #[serde(default)]
    pub storage: u64,
    /// API requests and errors.
    #[serde(default)]
    pub api: JetStreamApi,
}

/// JetStream API counts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JetStreamApi {
    /// Requests.
    #[serde(default)]
    pub total: u64,
    /// Errors answered.
    #[serde(default)]
    pub errors: u64,
}

/// The meta group as this server sees it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JetStreamMeta {
    /// The leader's name, if there is one.
    #[serde(default)]
    pub leader: Option<String>,
    /// Servers in the group.
    #[serde(default)]
    pub cluster_size: u64,
}

impl Varz {
    /// Number of route peers: `remotes` where the server reports it (2.10+
    /// pools several connections per peer), else `routes`.
    pub fn route_peers(&self) -> u64 {
        self.remotes.unwrap_or(self.routes)
    }
}

/// What the client port said when a client connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPort {
    /// INFO received and the server is accepting clients.
    Serving,
    /// INFO received with `"ldm": true`.
    LameDuck,
    /// Nothing listens (start-up, lame duck, or stopped).
    Refused,
    /// No INFO in time.
    Timeout,
    /// Anything else.
    Failed(String),
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    ldm: bool,
    #[serde(default)]
    tls_required: bool,
}

/// How the client-port probe speaks TLS where the broker requires it.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// Trust (the configured roots); no client certificate.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the served certificate must be valid for.
    pub name: ServerName<'static>,
}

/// The INFO line is a few hundred bytes; a peer sending more is not a
/// broker and must not grow memory.
const MAX_INFO: u64 = 64 * 1024;

/// Connects to the client port, reads the INFO line the server sends first,
/// and leaves the way a client does.
///
/// Where INFO says `"tls_required": true` and `tls` is given, the TLS
/// handshake is completed (verifying the served certificate) and then
/// closed with close_notify: a client that hangs up before the handshake
/// makes nats-server log `[ERR] … TLS handshake error: EOF` on every
/// probe, while a closed TLS session (or a plain connection closed after
/// INFO) is logged at debug level only. A handshake that fails or stalls
/// is `Failed`: clients could not connect either. The whole probe, close
/// included, stays within `timeout`.
pub async fn probe_client_port(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> ClientPort {
    let deadline = tokio::time::Instant::now() + timeout;
    let (stream, info) = match tokio::time::timeout_at(deadline, read_info(addr)).await {
        Err(_) => return ClientPort::Timeout,
        Ok(Err(seen)) => return seen,
        Ok(Ok(got)) => got,
    };
    let seen = if info.ldm {
        ClientPort::LameDuck
    } else {
        ClientPort::Serving
    };
    let Some(tls) = tls.filter(|_| info.tls_required) else {
        // Plain: hanging up after INFO is a client leaving.
        return seen;
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let handshake = connector.connect(tls.name.clone(), stream);
    let mut session = match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => {
            return ClientPort::Failed(format!("TLS handshake: no answer within {timeout:?}"));
        }
        Ok(Err(e)) => return ClientPort::Failed(format!("TLS handshake: {e}")),
        Ok(Ok(s)) => s,
    };
    // close_notify and FIN, then read to the broker's own close (its
    // session tickets and close_notify): closing with unread data would
    // reset the connection. Bounded by the deadline; the verdict is made.
    let close = async {
        session.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = MAX_INFO;
        while left > 0 {
            let n = session.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n as u64);
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout_at(deadline, close).await;
    seen
}

/// Connects and reads the INFO line, leaving nothing of what follows read
/// (the TLS handshake starts right after it).
async fn read_info(addr: SocketAddr) -> Result<(TcpStream, Info), ClientPort> {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ClientPort::Refused);
        }
        Err(e) => return Err(ClientPort::Failed(e.to_string())),
    };
    let mut reader = tokio::io::BufReader::new((&mut stream).take(MAX_INFO));
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) => return Err(ClientPort::Failed("closed before INFO".into())),
        Ok(_) => {}
        Err(e) => return Err(ClientPort::Failed(e.to_string())),
    }
    // The broker waits for the client after INFO; anything already
    // buffered beyond it would be lost to a TLS handshake.
    let extra = !reader.buffer().is_empty();
    drop(reader);
    let Some(json) = line.strip_prefix("INFO ") else {
        return Err(ClientPort::Failed(format!(
            "expected INFO, got {:?}",
            line.chars().take(40).collect::<String>()
        )));
    };
    let info = serde_json::from_str::<Info>(json.trim())
        .map_err(|e| ClientPort::Failed(format!("bad INFO: {e}")))?;
    if extra && info.tls_required {
        return Err(ClientPort::Failed(
            "data after INFO before the TLS handshake".into(),
        ));
    }
    Ok((stream, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_answer_is_cut_at_the_cap_while_it_streams() {
        let total: u64 = 300 << 20;
        let (addr, server) = natsmesh_harness::flood::serve(total).await;
        let before = natsmesh_harness::flood::rss_kib().unwrap_or(0);
        let m = Monitor::new(addr, Duration::from_secs(10));
        let answer = tokio::time::timeout(Duration::from_secs(30), m.get("/varz"))
            .await
            .expect("answers in time");
        let Http::Answered { status, body } = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(status, 200);
        assert_eq!(body.len(), MAX_BODY);
        let grown = natsmesh_harness::flood::rss_kib()
            .unwrap_or(0)
            .saturating_sub(before);
        drop(m);
        let sent = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops")
            .expect("server task");
        // The cap plus what the socket buffers held, not 300 MB.
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
        assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
    }
}
