//! The gateway gate: binds a gateway's claimed region to its certificate.
//!
//! nats-server checks an inbound gateway's certificate against the roots
//! only; the name the peer then claims in its CONNECT (`"gateway":"nyc3"`)
//! is taken on trust, so a compromised node of one region could open a
//! gateway under another region's name and inject traffic and interest in
//! its name (`verify_cert_and_check_known_urls` matches any configured
//! gateway's URLs, not the claimed one's). natsmeshd closes this itself:
//! it listens on the gateway's address, completes the peer's mutual TLS
//! handshake (the peer's certificate chained to the roots, within its
//! intermediate's name constraints), opens the broker's own gateway
//! listener on loopback (mutual TLS again, with this node's certificate),
//! relays the broker's INFO, reads the peer's CONNECT, and passes the
//! connection on only when the peer's certificate names
//! `<claimed region>.<domain>` — a name only that region's intermediate
//! can sign. Anything else is closed and logged.
//!
//! Only inbound gateway connections pass here; the broker dials other
//! regions itself. Each connection costs one extra TLS session on
//! loopback; the certificate and trust are read per connection, so a
//! renewal or a CA rotation needs no restart.

use std::sync::Arc;
use std::time::Duration;

use pki_types::pem::PemObject as _;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use crate::config::settings::gate::GateSettings;
use crate::tls::TlsSettings;

/// A protocol line (INFO, CONNECT) longer than this is not a gateway's.
const MAX_LINE: usize = 64 * 1024;
/// The INFO, both handshakes and the CONNECT must be done within this.
const SETUP: Duration = Duration::from_secs(10);

/// Why a connection was not passed on.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Network or TLS failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificates or trust could not be loaded.
    #[error("{0}")]
    Trust(String),
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// The peer claimed a region its certificate does not name.
    #[error("claimed gateway {claimed:?}, but its certificate names {names:?}, not {wanted}")]
    Impostor {
        /// The claimed region.
        claimed: String,
        /// The certificate's DNS names.
        names: Vec<String>,
        /// The name it would need.
        wanted: String,
    },
    /// Set-up took too long.
    #[error("set-up timed out")]
    Timeout,
}

/// How often [`bind_when_free`] tries the gateway's address again.
const RETRY_BIND: Duration = Duration::from_secs(1);

/// The gateway's address once nobody else listens on it.
///
/// After a package upgrade from a natsmeshd without the gate, the broker
/// it hands over still listens on the gateway's address itself; the gate
/// can take it only once that broker restarts with the new configuration
/// (its gateway on loopback), which the changed configuration brings under
/// the restart lease. Until then the broker keeps answering gateways as it
/// did before the upgrade. Other errors are retried too, at the same pace:
/// the gate must come up without a natsmeshd restart.
pub async fn bind_when_free(listen: std::net::SocketAddr) -> TcpListener {
    let mut told = false;
    loop {
        match TcpListener::bind(listen).await {
            Ok(l) => {
                if told {
                    tracing::info!(%listen, "gateway gate: the address is free and the gate listens");
                }
                return l;
            }
            Err(e) => {
                if !told {
                    tracing::warn!(%listen, error = %e, "gateway gate: the running broker still listens for gateways itself (started by a natsmeshd without the gate); the gate takes the address when it restarts");
                    told = true;
                }
                tokio::time::sleep(RETRY_BIND).await;
            }
        }
    }
}

/// Takes the gateway's address once it is free ([`bind_when_free`]), then
/// serves.
#[tracing::instrument(name = "gate", skip_all)]
pub async fn serve_when_free(settings: GateSettings) {
    let listener = bind_when_free(settings.listen).await;
    serve(listener, settings).await;
}

/// Serves until the task is aborted.
#[tracing::instrument(name = "gate", skip_all)]
pub async fn serve(listener: TcpListener, settings: GateSettings) {
    let settings = Arc::new(settings);
    loop {
        let (peer, from) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "gateway gate: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = settings.clone();
        tokio::spawn(async move {
            match pass(peer, &settings).await {
                Ok(()) => {}
                Err(e @ GateError::Impostor { .. }) => {
                    tracing::error!(peer = %from, error = %e, "gateway refused: a peer claimed a region its certificate does not name");
                }
                Err(e) => tracing::debug!(peer = %from, error = %e, "gateway connection ended"),
            }
        });
    }
}

/// One inbound gateway connection. A gateway listener speaks TLS first
/// (nats-server sends its INFO only inside TLS), then the peer answers the
/// INFO with its CONNECT.
async fn pass(peer: TcpStream, s: &GateSettings) -> Result<(), GateError> {
    let _ = peer.set_nodelay(true);
    let setup = async {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&s.tls)?));
        let mut peer = acceptor.accept(peer).await?;
        let names = peer
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| crate::tls::pki::inspect("the peer's certificate", leaf))
            .transpose()
            .map_err(|e| GateError::Trust(e.to_string()))?
            .map(|i| i.dns_names)
            .unwrap_or_default();
        let broker = TcpStream::connect(s.broker).await?;
        let _ = broker.set_nodelay(true);
        let connector = TlsConnector::from(Arc::new(client_config(&s.tls)?));
        let name = ServerName::try_from(s.own_name.clone())
            .map_err(|e| GateError::Trust(format!("{:?}: {e}", s.own_name)))?;
        let mut broker = connector.connect(name, broker).await?;
        let info = read_line(&mut broker).await?;
        if !info.starts_with(b"INFO ") {
            return Err(GateError::Protocol("the broker did not send INFO".into()));
        }
        peer.write_all(&info).await?;
        let connect = read_line(&mut peer).await?;
        let claimed = claimed_gateway(&connect)?;
        let wanted = format!("{claimed}.{}", s.domain).to_ascii_lowercase();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&wanted)) {
            let _ = peer.write_all(b"-ERR 'Authorization Violation'\r\n").await;
            let _ = peer.shutdown().await;
            return Err(GateError::Impostor {
                claimed,
                names,
                wanted,
            });
        }
        broker.write_all(&connect).await?;
        Ok((peer, broker))
    };
    let (mut peer, mut broker) = tokio::time::timeout(SETUP, setup)
        .await
        .map_err(|_| GateError::Timeout)??;
    tokio::io::copy_bidirectional(&mut peer, &mut broker).await?;
    Ok(())
}

/// One protocol line, CRLF included, at most [`MAX_LINE`] bytes; read
/// byte by byte so nothing after it (a TLS handshake) is consumed.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, GateError> {
    let mut line = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(GateError::Protocol("closed before a full line".into()));
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Ok(line);
        }
        if line.len() >= MAX_LINE {
            return Err(GateError::Protocol("a line longer than 64 KiB".into()));
        }
    }
}

/// The region a gateway's `CONNECT {…}` names.
fn claimed_gateway(line: &[u8]) -> Result<String, GateError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| GateError::Protocol("CONNECT is not UTF-8".into()))?;
    let json = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| GateError::Protocol("the first line is not CONNECT".into()))?;
    let v: serde_json::Value = serde_json::from_str(json.trim_end())
        .map_err(|e| GateError::Protocol(format!("CONNECT is not JSON: {e}")))?;
    v["gateway"]
        .as_str()
        .filter(|g| crate::config::validate::is_region_label(g))
        .map(str::to_owned)
        .ok_or_else(|| GateError::Protocol("CONNECT names no gateway (a region label)".into()))
}

fn roots(tls: &TlsSettings) -> Result<RootCertStore, GateError> {
    let mut roots = RootCertStore::empty();
    for r in crate::tls::roots(tls).map_err(|e| GateError::Trust(e.to_string()))? {
        roots.add(r).map_err(|e| GateError::Trust(e.to_string()))?;
    }
    Ok(roots)
}

fn identity(
    tls: &TlsSettings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), GateError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| GateError::Trust(format!("{}: {e}", tls.cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| GateError::Trust(format!("{}: {e}", tls.key_file.display())))?;
    Ok((chain, key))
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Peers must present a certificate chained to the roots.
fn server_config(tls: &TlsSettings) -> Result<ServerConfig, GateError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(tls)?), provider())
        .build()
        .map_err(|e| GateError::Trust(e.to_string()))?;
    let (chain, key) = identity(tls)?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GateError::Trust(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| GateError::Trust(e.to_string()))
}

/// The broker's listener is reached as this node, with its certificate.
fn client_config(tls: &TlsSettings) -> Result<ClientConfig, GateError> {
    let (chain, key) = identity(tls)?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GateError::Trust(e.to_string()))?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| GateError::Trust(e.to_string()))
}

pub use crate::addr::broker_listener;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_takes_its_address_once_the_old_broker_lets_go() {
        // The broker a natsmeshd without the gate started, still on the
        // gateway's address.
        let held = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match held.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("local_addr: {e}"),
        };
        let waiting = tokio::spawn(bind_when_free(addr));
        tokio::time::sleep(RETRY_BIND * 2).await;
        assert!(!waiting.is_finished(), "bound an address someone holds");
        // The broker restarts with its gateway on loopback: the address
        // is free, and the gate has it within one retry.
        drop(held);
        let l = match tokio::time::timeout(RETRY_BIND * 3, waiting).await {
            Ok(Ok(l)) => l,
            other => panic!("the gate did not take the freed address: {other:?}"),
        };
        assert_eq!(l.local_addr().ok(), Some(addr));
    }

    #[test]
    fn the_claimed_region_is_read_from_connect_and_must_be_a_label() {
        let ok = b"CONNECT {\"echo\":false,\"verbose\":false,\"pedantic\":false,\"tls_required\":true,\"name\":\"NABC\",\"gateway\":\"nyc3\"}\r\n";
        assert_eq!(claimed_gateway(ok).unwrap(), "nyc3");
        for bad in [
            &b"PING\r\n"[..],
            b"CONNECT {}\r\n",
            b"CONNECT {\"gateway\":\"NYC3\"}\r\n",
            b"CONNECT {\"gateway\":\"a.b\"}\r\n",
            b"CONNECT not json\r\n",
        ] {
            assert!(
                claimed_gateway(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_brokers_listener_never_collides_with_the_gate() {
        let at = |s: &str| broker_listener(s.parse().unwrap(), 17222);
        assert_eq!(at("203.0.113.10:7222"), "127.0.0.1:7222".parse().unwrap());
        assert_eq!(at("127.0.0.1:7222"), "127.0.0.2:7222".parse().unwrap());
        assert_eq!(at("0.0.0.0:7222"), "127.0.0.1:17222".parse().unwrap());
        assert_eq!(at("[::]:7222"), "127.0.0.1:17222".parse().unwrap());
    }
}
