//! Helpers shared by the integration tests: certificates, configs, both backends, timeouts.
#![allow(dead_code)]
pub mod impair;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ringquic::{BackendKind, ClientConfig, Endpoint, EndpointBuilder, ServerConfig, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate for "localhost".
pub struct Cert {
    pub der: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

pub fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    Cert {
        der: c.cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()),
    }
}

pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
    t
}

pub fn server_config(c: &Cert) -> ServerConfig {
    let mut s = ServerConfig::with_single_cert(vec![c.der.clone()], PrivateKeyDer::Pkcs8(c.key.clone_key()))
        .expect("server config");
    s.transport_config(Arc::new(transport()));
    s
}

pub fn client_config(c: &Cert) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.der.clone()).expect("root");
    let mut cc = ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    cc.transport_config(Arc::new(transport()));
    cc
}

/// The backends to run a test on: both on Linux, unless `RINGQUIC_BACKEND` forces one.
pub fn backends() -> Vec<BackendKind> {
    match std::env::var("RINGQUIC_BACKEND").ok().as_deref() {
        Some("poll") => vec![BackendKind::Poll],
        Some("uring") => vec![BackendKind::IoUring],
        Some("rio") => vec![BackendKind::Rio],
        _ if cfg!(target_os = "linux") => vec![BackendKind::IoUring, BackendKind::Poll],
        _ => vec![BackendKind::Poll],
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server and a client endpoint on `backend`, sharing one certificate.
pub fn pair(backend: BackendKind) -> (Endpoint, Endpoint) {
    pair_with(backend, |b| b, |b| b)
}

/// [`pair`] with extra builder settings for the server and for the client.
pub fn pair_with(
    backend: BackendKind,
    server: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
    client: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
) -> (Endpoint, Endpoint) {
    let c = cert();
    let server = server(
        Endpoint::builder()
            .backend(backend)
            .server_config(server_config(&c)),
    )
    .bind(localhost())
    .expect("server endpoint");
    let client = client(
        Endpoint::builder()
            .backend(backend)
            .default_client_config(client_config(&c)),
    )
    .bind(localhost())
    .expect("client endpoint");
    assert_eq!(server.backend(), backend);
    (server, client)
}

/// Connect `client` to `server` (by address `to`) and accept on the server: (server side,
/// client side), both established, within 10 s each.
pub async fn connected_via(
    server: &Endpoint,
    client: &Endpoint,
    to: SocketAddr,
) -> (ringquic::Connection, ringquic::Connection) {
    let connecting = client.connect(to, "localhost").expect("connect");
    let server_side = within(10, async {
        server.accept().await.expect("incoming").await.expect("accept")
    })
    .await;
    let client_side = within(10, connecting).await.expect("handshake");
    (server_side, client_side)
}

/// [`connected_via`] straight to the server's address.
pub async fn connected(server: &Endpoint, client: &Endpoint) -> (ringquic::Connection, ringquic::Connection) {
    connected_via(server, client, server.local_addr().expect("server address")).await
}

/// Fail the test instead of hanging.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

/// Names of this process's threads, to check that none is left behind.
pub fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|n| n.trim() == "ringquic-io")
                })
                .count()
        })
        .unwrap_or(0)
}

/// A UDP relay between one client and a server on loopback that can be told to drop
/// everything (a blackholed path). Stops and joins its thread on drop.
pub struct Relay {
    pub addr: SocketAddr,
    blackhole: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn new(server: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = sock.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (bh, st) = (blackhole.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if bh.load(Ordering::Relaxed) {
                    continue;
                }
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = sock.send_to(&buf[..n], to);
            }
        });
        Self {
            addr,
            blackhole,
            stop,
            thread: Some(thread),
        }
    }

    pub fn blackhole(&self) {
        self.blackhole.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
