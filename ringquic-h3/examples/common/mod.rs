//! What both examples need: PEM files read into rustls' types, and ringquic's TLS
//! configurations for HTTP/3 (ALPN "h3").
#![allow(dead_code)] // each example (and the tests) uses part of it

use std::{error::Error, path::Path, sync::Arc};

use ringquic::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// The examples' error: a message with its cause, printed by `main` before exiting with 1.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Every certificate in a PEM file (the chain, leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the PEM file", path.display()).into());
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, BoxError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("reading a private key from {}: {e}", path.display()).into())
}

/// A server configuration for HTTP/3 with this certificate chain and key.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ringquic::ServerConfig, BoxError> {
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and key: {e}"))?;
    tls.alpn_protocols = vec![ringquic_h3::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(ringquic::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls)?,
    )))
}

/// A client configuration for HTTP/3 that trusts the certificates in `ca` (and nothing else).
pub fn client_config(ca: &[CertificateDer<'static>]) -> Result<ringquic::ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a CA certificate: {e}"))?;
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![ringquic_h3::ALPN.to_vec()];
    Ok(ringquic::ClientConfig::new(Arc::new(QuicClientConfig::try_from(
        tls,
    )?)))
}
