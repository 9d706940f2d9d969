//! Which certificate does the running broker serve? Connects to a TLS
//! listener the way NATS does (INFO in clear, then the TLS handshake),
//! presents this node's certificate where mutual TLS is required, and
//! returns the serial of the certificate the broker shows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pki_types::pem::PemObject as _;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::TlsSettings;

/// A TLS client for the broker's HTTPS monitoring: trusts the roots, and
/// the chain of a separate client-facing certificate when there is one.
pub fn monitoring_client(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for r in super::roots(settings).map_err(|e| e.to_string())? {
        roots.add(r).map_err(|e| e.to_string())?;
    }
    if let Some(file) = &settings.client_cert_file {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .and_then(|i| i.collect())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        // The last certificate of the served chain is its top issuer.
        if let Some(top) = chain.last() {
            roots.add(top.clone()).map_err(|e| e.to_string())?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
) -> Result<String, String> {
    let attempt = async {
        let mut roots = RootCertStore::empty();
        for r in super::roots(settings).map_err(|e| e.to_string())? {
            roots.add(r).map_err(|e| e.to_string())?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&settings.cert_file)
                .and_then(|i| i.collect())
                .map_err(|e| format!("{}: {e}", settings.cert_file.display()))?;
        let key = PrivateKeyDer::from_pem_file(&settings.key_file)
            .map_err(|e| format!("{}: {e}", settings.key_file.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if info_first {
            let info = read_info(&mut stream).await.map_err(|e| e.to_string())?;
            if !info.starts_with("INFO ") {
                return Err(format!(
                    "expected INFO, got {:?}",
                    info.chars().take(40).collect::<String>()
                ));
            }
        }
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no certificate presented")?;
        let info =
            super::pki::inspect("the served certificate", leaf).map_err(|e| e.to_string())?;
        Ok(info.serial)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no TLS answer from {addr} within {timeout:?}"))?
}
