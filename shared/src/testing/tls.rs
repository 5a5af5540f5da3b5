//! HTTPS servers on loopback for tests: a throwaway CA, a `localhost` certificate it signed, and
//! an axum router served behind it. A handshake the client refuses is counted, so a test can
//! tell "never tried" from "tried and refused the certificate".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A running HTTPS server.
pub struct TlsServer {
    /// `https://localhost:{port}` (the name its certificate carries).
    pub url: String,
    /// The PEM of the CA that signed its certificate.
    pub ca_pem: String,
    refused: Arc<AtomicUsize>,
}

impl TlsServer {
    /// Handshakes that failed (a client that refused the certificate).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

struct Listener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Listener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, peer),
                _ => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A new CA and a `localhost` certificate it signed, as PEM.
pub struct LocalhostCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

pub fn localhost_cert() -> anyhow::Result<LocalhostCert> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
    Ok(LocalhostCert {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
        chain: vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())],
        key_der: key.serialize_der(),
    })
}

/// Serves `app` over HTTPS with a certificate from a new CA.
pub async fn serve(app: axum::Router) -> anyhow::Result<TlsServer> {
    let cert = localhost_cert()?;
    let chain = cert.chain.clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}", tcp.local_addr()?.port());
    let refused = Arc::new(AtomicUsize::new(0));
    let listener = Listener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        refused: refused.clone(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(TlsServer {
        url,
        ca_pem: cert.ca_pem,
        refused,
    })
}
