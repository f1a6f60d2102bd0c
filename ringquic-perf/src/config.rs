//! The configuration both systems share: certificate, cipher suite, transport settings and MTU.
//!
//! ringquic and quinn both take quinn-proto's configuration types, so the values built here are
//! handed unchanged to either one: the same certificate, a rustls `CryptoProvider` that offers a
//! single TLS 1.3 cipher suite, the same [`TransportConfig`] (initial MTU, MTU-discovery ceiling,
//! stream limits) and the same [`EndpointConfig`] (maximum UDP payload).

use std::{fmt, path::Path, sync::Arc};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use quinn_proto::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    ClientConfig, EndpointConfig, MtuDiscoveryConfig, ServerConfig, TransportConfig, VarInt,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    CipherSuite, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedCipherSuite,
};
use serde::{Deserialize, Serialize};

use crate::proto::ALPN;

/// The TLS 1.3 cipher suite used for 1-RTT packets (Initial packets always use AES-128-GCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
pub enum Cipher {
    /// TLS_AES_128_GCM_SHA256
    #[default]
    #[value(name = "aes128gcm", alias = "aes-128-gcm")]
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384
    #[value(name = "aes256gcm", alias = "aes-256-gcm")]
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256
    #[value(name = "chacha20", alias = "chacha20-poly1305")]
    Chacha20,
}

impl Cipher {
    fn suite(self) -> SupportedCipherSuite {
        match self {
            Cipher::Aes128Gcm => ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            Cipher::Aes256Gcm => ring_provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
            Cipher::Chacha20 => ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20 => "CHACHA20-POLY1305",
        })
    }
}

/// Network settings applied identically to every endpoint of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NetOptions {
    /// The initial MTU (UDP payload size) before path MTU discovery, in bytes.
    pub initial_mtu: u16,
    /// The largest UDP payload an endpoint sends or accepts; also the MTU-discovery ceiling.
    pub max_udp_payload: u16,
    /// The cipher suite offered by both sides.
    pub cipher: Cipher,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            initial_mtu: 1200,
            max_udp_payload: 1472,
            cipher: Cipher::Aes128Gcm,
        }
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Makes a self-signed certificate for `names` (e.g. `localhost`).
    pub fn self_signed(names: &[&str]) -> Result<Self> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
        Ok(Self {
            certs: vec![cert.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        })
    }

    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading private key from {}", key.display()))?;
        Ok(Self { certs, key })
    }
}

/// An identity's DER, as it travels in JSON (to a bench phase's child process).
#[derive(Serialize, Deserialize)]
struct IdentityDer {
    certs: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let certs = self.certs.iter().map(|c| c.to_vec()).collect();
        IdentityDer {
            certs,
            key: self.key.secret_der().to_vec(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let der = IdentityDer::deserialize(d)?;
        Ok(Self {
            certs: der.certs.into_iter().map(CertificateDer::from).collect(),
            key: PrivateKeyDer::try_from(der.key).map_err(serde::de::Error::custom)?,
        })
    }
}

/// Loads every certificate in a PEM file (at least one is required).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust certificates issued by (or equal to) these.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate (signatures on the handshake are still checked).
    Insecure,
}

/// A rustls provider (ring) that offers only the chosen cipher suite.
pub fn crypto_provider(cipher: Cipher) -> Arc<CryptoProvider> {
    let wanted = cipher.suite().suite();
    let mut provider = ring_provider::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == wanted);
    Arc::new(provider)
}

/// Initial packets are always protected with AES-128-GCM, whatever the 1-RTT suite.
fn initial_suite() -> Result<rustls::quic::Suite> {
    ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .context("ring has no QUIC AES-128-GCM suite")
}

/// The transport settings shared by every endpoint.
pub fn transport_config(net: &NetOptions) -> Result<Arc<TransportConfig>> {
    if net.initial_mtu < 1200 || net.initial_mtu > net.max_udp_payload {
        bail!(
            "initial MTU {} must be between 1200 and the maximum UDP payload {}",
            net.initial_mtu,
            net.max_udp_payload
        );
    }
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(net.max_udp_payload);
    let mut t = TransportConfig::default();
    t.initial_mtu(net.initial_mtu)
        .mtu_discovery_config(Some(mtu))
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(1024))
        // Room for the datagram workload's window of queued datagrams at any MTU.
        .datagram_send_buffer_size(4 << 20);
    Ok(Arc::new(t))
}

/// The endpoint settings shared by every endpoint (maximum UDP payload size).
pub fn endpoint_config(net: &NetOptions) -> Result<EndpointConfig> {
    let mut cfg = EndpointConfig::default();
    cfg.max_udp_payload_size(net.max_udp_payload)
        .context("invalid maximum UDP payload size")?;
    Ok(cfg)
}

/// A server configuration speaking the perf ALPN with `identity`.
pub fn server_config(identity: &Identity, net: &NetOptions) -> Result<ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider(net.cipher))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .context("server certificate")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = u32::MAX;
    let quic = QuicServerConfig::with_initial(Arc::new(tls), initial_suite()?)?;
    let mut cfg = ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport_config(net)?);
    Ok(cfg)
}

/// A client configuration speaking the perf ALPN, trusting the server per `trust`.
pub fn client_config(trust: &Trust, net: &NetOptions) -> Result<ClientConfig> {
    let provider = crypto_provider(net.cipher);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?;
    let mut tls = match trust {
        Trust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone()).context("adding trusted certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Every connection makes a full handshake (certificate and signature), so `handshakes`
    // measures new clients rather than resumed sessions.
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::with_initial(Arc::new(tls), initial_suite()?)?;
    let mut cfg = ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport_config(net)?);
    Ok(cfg)
}

/// `--insecure`: accepts any server certificate, but still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Which cipher suite a provider built by [`crypto_provider`] offers (for checks and reports).
pub fn offered_suites(provider: &CryptoProvider) -> Vec<CipherSuite> {
    provider.cipher_suites.iter().map(|s| s.suite()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_has_one_suite() {
        for (c, want) in [
            (Cipher::Aes128Gcm, CipherSuite::TLS13_AES_128_GCM_SHA256),
            (Cipher::Aes256Gcm, CipherSuite::TLS13_AES_256_GCM_SHA384),
            (Cipher::Chacha20, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            assert_eq!(offered_suites(&crypto_provider(c)), vec![want]);
        }
    }

    #[test]
    fn configs_build_for_every_cipher() {
        let id = Identity::self_signed(&["localhost"]).unwrap();
        for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::Chacha20] {
            let net = NetOptions {
                cipher,
                ..NetOptions::default()
            };
            server_config(&id, &net).unwrap();
            client_config(&Trust::Roots(id.certs.clone()), &net).unwrap();
            client_config(&Trust::Insecure, &net).unwrap();
            endpoint_config(&net).unwrap();
        }
    }

    #[test]
    fn identity_round_trips_through_json() {
        let id = Identity::self_signed(&["localhost"]).unwrap();
        let back: Identity = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back.certs, id.certs);
        assert_eq!(back.key.secret_der(), id.key.secret_der());
    }

    #[test]
    fn bad_mtu_is_rejected() {
        let net = NetOptions {
            initial_mtu: 1500,
            max_udp_payload: 1472,
            ..NetOptions::default()
        };
        assert!(transport_config(&net).is_err());
    }
}
