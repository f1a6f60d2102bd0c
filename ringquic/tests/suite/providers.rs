//! The crypto providers the `rustls-ring` and `rustls-aws-lc-rs` features select: a handshake
//! and an echo with TLS configurations built on each provider compiled in, on every backend.
//! (CI builds with `--all-features`, so both run there.)

use crate::common;

use std::sync::Arc;

use common::*;
use ringquic::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    rustls::{self, crypto::CryptoProvider},
    ClientConfig, ServerConfig,
};

/// Server and client configurations on `provider`, trusting `c`.
fn configs(provider: CryptoProvider, c: &Cert) -> (ServerConfig, ClientConfig) {
    let provider = Arc::new(provider);
    let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.der.clone()], c.key.clone_key().into())
        .unwrap();
    let server = ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    (server, client)
}

fn echo_with(name: &str, provider: impl Fn() -> CryptoProvider) {
    let rt = current_thread_runtime();
    for backend in backends() {
        let c = cert();
        let (sc, cc) = configs(provider(), &c);
        let server = server_endpoint(backend, sc, |b| b);
        let client = client_endpoint(backend, cc, |b| b);
        rt.block_on(within(20, async {
            let (s, conn) = connected(&server, &client).await;
            let serve = tokio::spawn(async move {
                let _send = echo_one(&s, 1 << 20).await;
                s.closed().await
            });
            let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
            assert_eq!(request(&conn, &msg, 1 << 20).await, msg, "{name} on {backend}");
            conn.close(0u32.into(), b"");
            let _ = serve.await;
        }));
        println!("{name} on {backend}: handshake and echo ok");
    }
}

#[cfg(feature = "rustls-ring")]
#[test]
fn ring_provider() {
    echo_with("ring", rustls::crypto::ring::default_provider);
}

#[cfg(feature = "rustls-aws-lc-rs")]
#[test]
fn aws_lc_rs_provider() {
    echo_with("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider);
}

#[cfg(not(feature = "rustls-aws-lc-rs"))]
#[test]
fn aws_lc_rs_provider() {
    println!(
        "SKIPPED: built without the rustls-aws-lc-rs feature (CI's Linux builds have it; its \
         Windows build leaves it out, .ci/windows.sh)"
    );
}
