//! Which certificate does the running broker serve? Connects to a TLS
//! listener the way NATS does (INFO in clear, then the TLS handshake),
//! presents this node's certificate where mutual TLS is required, and
//! returns the serial of the certificate the broker shows. Also the trust
//! the probes use: HTTPS monitoring and the client port's TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use natsmesh_broker::monitor::ProbeTls;
use pki_types::pem::PemObject as _;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::pki::PkiError;
use super::{TlsError, TlsSettings};

/// Why a probe's trust could not be loaded or the served certificate not
/// read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The trusted roots could not be read.
    #[error(transparent)]
    Roots(#[from] TlsError),
    /// rustls refused a root, the set-up or the node's pair.
    #[error(transparent)]
    Rustls(#[from] tokio_rustls::rustls::Error),
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: pki_types::pem::Error,
    },
    /// A certificate file without a certificate.
    #[error("{}: no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A certificate natsmesh cannot read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A client-facing certificate's DNS name that is no server name.
    #[error("{name:?}: {source}")]
    CertName {
        /// The name.
        name: String,
        /// Why.
        source: pki_types::InvalidDnsNameError,
    },
    /// The name to check the served certificate for is no server name.
    #[error(transparent)]
    Name(#[from] pki_types::InvalidDnsNameError),
    /// Connecting or reading INFO failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The listener did not start with INFO.
    #[error("expected INFO, got {0:?}")]
    NotInfo(String),
    /// The handshake failed.
    #[error("TLS handshake: {0}")]
    Handshake(#[source] std::io::Error),
    /// The handshake ended without a certificate.
    #[error("no certificate presented")]
    NoPeerCertificate,
    /// Nothing within the time allowed.
    #[error("no TLS answer from {addr} within {timeout:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// How long it waited.
        timeout: Duration,
    },
}

fn pem(path: &std::path::Path) -> impl FnOnce(pki_types::pem::Error) -> ProbeError {
    let path = path.to_path_buf();
    move |source| ProbeError::Pem { path, source }
}

/// A TLS client for the broker's HTTPS monitoring: trusts the roots, and
/// the chain of a separate client-facing certificate when there is one.
pub fn monitoring_client(settings: &TlsSettings) -> Result<ClientConfig, ProbeError> {
    let mut roots = RootCertStore::empty();
    for r in super::roots(settings)? {
        roots.add(r)?;
    }
    if let Some(file) = &settings.client_cert_file {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .and_then(|i| i.collect())
            .map_err(pem(file))?;
        // The last certificate of the served chain is its top issuer.
        if let Some(top) = chain.last() {
            roots.add(top.clone())?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The client port's TLS as the serving probe meets it: the configured
/// roots and the name the served certificate must be valid for. Loaded
/// again for every round, so rotated roots or a replaced client-facing
/// certificate are followed without a restart.
#[derive(Debug, Clone)]
pub struct ClientPortTls {
    settings: TlsSettings,
    host: IpAddr,
}

impl ClientPortTls {
    /// For a client listener bound to `host` under `settings`.
    pub fn new(settings: TlsSettings, host: IpAddr) -> Self {
        Self { settings, host }
    }

    /// The trust and name for one probe.
    pub fn load(&self) -> Result<ProbeTls, ProbeError> {
        let config = monitoring_client(&self.settings)?;
        // The node certificate always covers the listener's address, or
        // 127.0.0.1 for a wildcard bind (see the names validation gives
        // it), which is where the probe dials.
        let ip = if self.host.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host
        };
        let name = match &self.settings.client_cert_file {
            Some(file) => client_cert_name(file, ip)?,
            None => ServerName::IpAddress(ip.into()),
        };
        Ok(ProbeTls {
            config: Arc::new(config),
            name,
        })
    }
}

/// A separate client-facing certificate (a public CA's) need not carry
/// the listener's address: then it is checked for its own first DNS name,
/// the name clients dial.
fn client_cert_name(file: &std::path::Path, ip: IpAddr) -> Result<ServerName<'static>, ProbeError> {
    let leaf = CertificateDer::pem_file_iter(file)
        .map_err(pem(file))?
        .next()
        .ok_or_else(|| ProbeError::NoCertificate {
            path: file.to_path_buf(),
        })?
        .map_err(pem(file))?;
    let info = super::pki::inspect(&file.display().to_string(), &leaf)?;
    if info.ips.contains(&ip) {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    match info.dns_names.first() {
        Some(dns) => ServerName::try_from(dns.clone()).map_err(|source| ProbeError::CertName {
            name: dns.clone(),
            source,
        }),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// Reads up to the end of the INFO line, byte by byte, so nothing of the
/// TLS handshake that follows is consumed.
async fn read_info(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while line.len() < 64 * 1024 {
        stream.read_exact(&mut byte).await?;
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The serial (lower-case hex) of the certificate served at `addr`, whose
/// certificate must be valid for `name` (an address or DNS name). Client
/// ports send INFO in clear before the handshake (`info_first`); route and
/// gateway ports start with the handshake.
pub async fn served_serial(
    settings: &TlsSettings,
    addr: SocketAddr,
    name: &str,
    info_first: bool,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let attempt = async {
        let mut roots = RootCertStore::empty();
        for r in super::roots(settings)? {
            roots.add(r)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&settings.cert_file)
                .and_then(|i| i.collect())
                .map_err(pem(&settings.cert_file))?;
        let key =
            PrivateKeyDer::from_pem_file(&settings.key_file).map_err(pem(&settings.key_file))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let mut stream = TcpStream::connect(addr).await?;
        if info_first {
            let info = read_info(&mut stream).await?;
            if !info.starts_with("INFO ") {
                return Err(ProbeError::NotInfo(info.chars().take(40).collect()));
            }
        }
        let server_name = ServerName::try_from(name.to_owned())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(ProbeError::Handshake)?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(ProbeError::NoPeerCertificate)?;
        let info = super::pki::inspect("the served certificate", leaf)?;
        Ok(info.serial)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::net::Ipv6Addr;
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    use natsmesh_broker::monitor::{ClientPort, probe_client_port};
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;

    use super::super::Source;
    use super::super::issue::{self, Issued, NodeNames};
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const TLS_INFO: &str = "INFO {\"server_id\":\"x\",\"tls_required\":true}\r\n";

    /// A root and a certificate it signed for `dns` and `ips`.
    fn pki(dns: &[&str], ips: &[IpAddr]) -> (Issued, Issued) {
        let now = SystemTime::now();
        let root = issue::root("probe test root", now, HOUR).unwrap();
        let names = NodeNames {
            common_name: "n1".into(),
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: ips.to_vec(),
            by_name: vec![],
        };
        let leaf = issue::node(&root, &names, now, HOUR).unwrap();
        (root, leaf)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Settings trusting `root` for a node serving `leaf`.
    fn settings(dir: &Path, root: &Issued, leaf: &Issued, client: Option<&Issued>) -> TlsSettings {
        let cert = write(dir, "node.crt", &leaf.cert_pem);
        let key = write(dir, "node.key", &leaf.key_pem);
        TlsSettings {
            source: Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            ca_file: write(dir, "ca.crt", &root.cert_pem),
            cert_file: cert,
            key_file: key,
            client_cert_file: client.map(|c| write(dir, "client.crt", &c.cert_pem)),
            monitoring: false,
            files_check_every: Duration::from_secs(60),
            region_ca_file: None,
            broker_copies: Vec::new(),
            names: NodeNames {
                common_name: "n1".into(),
                dns: vec![],
                ips: vec![],
                by_name: vec![],
            },
        }
    }

    fn server_config(leaf: &Issued) -> Arc<ServerConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }

    /// What a fake broker saw of the probe's connection.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        /// Hung up in clear after INFO (what nats-server logs as
        /// `TLS handshake error: EOF` where TLS is required).
        HungUpInClear,
        /// Completed the handshake, then close_notify.
        ClosedCleanly,
        /// Completed the handshake, then closed without close_notify.
        ClosedDirty(String),
        /// The handshake failed.
        HandshakeFailed,
    }

    /// A one-connection broker on loopback: sends `info`, then (with
    /// `tls`) accepts the handshake like nats-server and closes like it.
    async fn fake_broker(
        info: &'static str,
        tls: Option<Arc<ServerConfig>>,
        stall: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tcp.write_all(info.as_bytes()).await.unwrap();
            if stall {
                // Accepts and never answers the ClientHello.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Seen::HandshakeFailed;
            }
            let Some(config) = tls else {
                let mut rest = Vec::new();
                let n = tcp.read_to_end(&mut rest).await.unwrap_or(0);
                assert_eq!(n, 0, "the probe sent something in clear");
                return Seen::HungUpInClear;
            };
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
                return Seen::HungUpInClear;
            }
            let Ok(mut tls) = TlsAcceptor::from(config).accept(tcp).await else {
                return Seen::HandshakeFailed;
            };
            let mut rest = Vec::new();
            let seen = match tls.read_to_end(&mut rest).await {
                Ok(_) => Seen::ClosedCleanly,
                Err(e) => Seen::ClosedDirty(e.to_string()),
            };
            // nats-server closes its side with close_notify too.
            let _ = tls.shutdown().await;
            seen
        });
        (addr, task)
    }

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn the_probe_completes_the_handshake_and_closes_it_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (root, leaf) = pki(&[], &[LOOPBACK]);
        let tls = ClientPortTls::new(settings(dir.path(), &root, &leaf, None), LOOPBACK)
            .load()
            .unwrap();
        let (addr, broker) = fake_broker(TLS_INFO, Some(server_config(&leaf)), false).await;
        let got = probe_client_port(addr, Duration::from_secs(5), Some(&tls)).await;
        assert_eq!(got, ClientPort::Serving);
        assert_eq!(broker.await.unwrap(), Seen::ClosedCleanly);
        // Lame duck is still read from INFO, and the session still closed.
        let ldm = "INFO {\"tls_required\":true,\"ldm\":true}\r\n";
        let (addr, broker) = fake_broker(ldm, Some(server_config(&leaf)), false).await;
        let got = probe_client_port(addr, Duration::from_secs(5), Some(&tls)).await;
        assert_eq!(got, ClientPort::LameDuck);
        assert_eq!(broker.await.unwrap(), Seen::ClosedCleanly);
    }

    #[tokio::test]
    async fn without_trust_the_probe_hangs_up_in_clear_as_before() {
        // What natsmeshd did for every probe before (and still does for a
        // broker without client TLS): the fake sees the hang-up.
        let dir = tempfile::tempdir().unwrap();
        let (_, leaf) = pki(&[], &[LOOPBACK]);
        let (addr, broker) = fake_broker(TLS_INFO, Some(server_config(&leaf)), false).await;
        let got = probe_client_port(addr, Duration::from_secs(5), None).await;
        assert_eq!(got, ClientPort::Serving);
        assert_eq!(broker.await.unwrap(), Seen::HungUpInClear);
        // A plain broker is never offered a handshake, trust or not.
        let (root, leaf) = pki(&[], &[LOOPBACK]);
        let tls = ClientPortTls::new(settings(dir.path(), &root, &leaf, None), LOOPBACK)
            .load()
            .unwrap();
        let plain = "INFO {\"server_id\":\"x\"}\r\n";
        let (addr, broker) = fake_broker(plain, None, false).await;
        let got = probe_client_port(addr, Duration::from_secs(5), Some(&tls)).await;
        assert_eq!(got, ClientPort::Serving);
        assert_eq!(broker.await.unwrap(), Seen::HungUpInClear);
    }

    #[tokio::test]
    async fn a_certificate_of_another_root_or_name_is_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (root, _) = pki(&[], &[LOOPBACK]);
        let (_, foreign) = pki(&[], &[LOOPBACK]);
        let (_, other_name) = {
            let now = SystemTime::now();
            let names = NodeNames {
                common_name: "n2".into(),
                dns: vec![],
                ips: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
                by_name: vec![],
            };
            (root.clone(), issue::node(&root, &names, now, HOUR).unwrap())
        };
        let tls = ClientPortTls::new(settings(dir.path(), &root, &other_name, None), LOOPBACK)
            .load()
            .unwrap();
        for (what, served) in [("another root", &foreign), ("another name", &other_name)] {
            let (addr, broker) = fake_broker(TLS_INFO, Some(server_config(served)), false).await;
            let got = probe_client_port(addr, Duration::from_secs(5), Some(&tls)).await;
            let ClientPort::Failed(why) = &got else {
                panic!("{what}: {got:?}");
            };
            assert!(why.starts_with("TLS handshake: "), "{what}: {why}");
            assert!(why.contains("certificate"), "{what}: {why}");
            assert_eq!(broker.await.unwrap(), Seen::HandshakeFailed, "{what}");
        }
    }

    #[tokio::test]
    async fn a_handshake_that_stalls_fails_within_the_probe_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (root, leaf) = pki(&[], &[LOOPBACK]);
        let tls = ClientPortTls::new(settings(dir.path(), &root, &leaf, None), LOOPBACK)
            .load()
            .unwrap();
        let (addr, broker) = fake_broker(TLS_INFO, None, true).await;
        let timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let got = probe_client_port(addr, timeout, Some(&tls)).await;
        let took = started.elapsed();
        broker.abort();
        assert!(
            matches!(&got, ClientPort::Failed(w) if w.contains("no answer within")),
            "{got:?}"
        );
        assert!(took >= timeout && took < timeout * 3, "{took:?}");
        // Silence before INFO is still a timeout, as before.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let got = probe_client_port(silent.local_addr().unwrap(), timeout, Some(&tls)).await;
        assert_eq!(got, ClientPort::Timeout);
    }

    #[test]
    fn the_name_checked_is_the_one_the_served_certificate_carries() {
        let dir = tempfile::tempdir().unwrap();
        let (root, leaf) = pki(&[], &[LOOPBACK]);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let name = |s: TlsSettings, host: IpAddr| ClientPortTls::new(s, host).load().unwrap().name;
        let ip = |i: IpAddr| ServerName::IpAddress(i.into());
        // A wildcard bind: the node certificate carries 127.0.0.1 (dialled).
        let s = settings(dir.path(), &root, &leaf, None);
        assert_eq!(name(s.clone(), any), ip(LOOPBACK));
        assert_eq!(
            name(s.clone(), IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ip(LOOPBACK)
        );
        let lan = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(name(s, lan), ip(lan));
        // A public CA's client certificate without the address: its name.
        let (_, public) = pki(&["nats.example.com", "eu.nats.example.com"], &[]);
        let s = settings(dir.path(), &root, &leaf, Some(&public));
        assert_eq!(
            name(s, any),
            ServerName::try_from("nats.example.com".to_owned()).unwrap()
        );
        // One that carries the address is checked for it.
        let (_, both) = pki(&["nats.example.com"], &[LOOPBACK]);
        let s = settings(dir.path(), &root, &leaf, Some(&both));
        assert_eq!(name(s, any), ip(LOOPBACK));
        // Unreadable trust is an error, not a silent fallback.
        let mut s = settings(dir.path(), &root, &leaf, None);
        s.ca_file = dir.path().join("missing.crt");
        assert!(ClientPortTls::new(s, any).load().is_err());
    }
}
