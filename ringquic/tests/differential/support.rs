//! Helpers that do not depend on the implementation under test: timeouts, configurations,
//! payloads, a loopback UDP relay.
#![allow(dead_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ringquic::{ClientConfig, ServerConfig, TransportConfig};
use rustls::pki_types::PrivateKeyDer;
use tokio::net::UdpSocket;

pub use crate::common::{
    cert, client_config_with as client_cfg, localhost, server_config_with as server_cfg, Cert,
};

/// Where an endpoint's socket comes from: a new one bound to an address, or an existing one.
pub enum Bind {
    Addr(SocketAddr),
    Socket(std::net::UdpSocket),
}

impl From<SocketAddr> for Bind {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl From<std::net::UdpSocket> for Bind {
    fn from(socket: std::net::UdpSocket) -> Self {
        Self::Socket(socket)
    }
}

/// Await `f`, failing the test with `what` if it takes more than `secs` seconds.
pub async fn within<F: Future>(secs: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {secs} s (hang)"),
    }
}

/// Same, in milliseconds.
pub async fn within_ms<F: Future>(ms: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_millis(ms), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {ms} ms (hang)"),
    }
}

/// Whether `f` is still pending after `ms` milliseconds (for "this waits" checks).
pub async fn still_pending<F: Future + Unpin>(f: &mut F, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), f).await.is_err()
}

/// The suite's transport: a 10 s idle timeout (so a lost close shows up as a test timeout,
/// not as `TimedOut`), with `tweak` applied.
pub fn transport(tweak: impl FnOnce(&mut TransportConfig)) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
    tweak(&mut t);
    Arc::new(t)
}

/// `tweak` for a transport: the idle timeout `d`.
pub fn idle_timeout(d: Duration) -> impl Fn(&mut TransportConfig) {
    move |t| {
        t.max_idle_timeout(Some(d.try_into().unwrap()));
    }
}

/// A server configuration announcing `alpn`.
pub fn server_cfg_alpn(c: &Cert, alpn: &[&[u8]]) -> ServerConfig {
    let mut tls =
        rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![c.der.clone()], PrivateKeyDer::Pkcs8(c.key.clone_key()))
            .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let crypto = ringquic::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let mut s = ServerConfig::with_crypto(Arc::new(crypto));
    s.transport_config(transport(|_| {}));
    s
}

/// A client configuration asking for `alpn`.
pub fn client_cfg_alpn(c: &Cert, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.der.clone()).unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let crypto = ringquic::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cc = ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport(|_| {}));
    cc
}

/// Deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A loopback UDP socket that never answers: a peer that is not there (no ICMP either).
pub fn silent_peer() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
}

/// Wait until `addr`'s port can be bound again, i.e. the endpoint that had it closed its
/// socket (its I/O stopped). Bounded by `secs`.
pub async fn wait_socket_released(addr: SocketAddr, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: socket {addr} still open after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Forgets the value instead of dropping it when the test is already failing: a ringquic
/// endpoint whose I/O thread is stuck would otherwise hang the test's unwinding (dropping the
/// last handle joins the thread) instead of letting the failure be reported.
pub struct LeakOnPanic<T>(pub Option<T>);

impl<T> LeakOnPanic<T> {
    pub fn new(v: T) -> Self {
        Self(Some(v))
    }
    pub fn get(&self) -> &T {
        self.0.as_ref().unwrap()
    }
}

impl<T> Drop for LeakOnPanic<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// What the relay is told to do.
#[derive(Default)]
struct RelayCtl {
    blackhole: AtomicBool,
    /// After this many client→server bytes, move to a fresh server-facing socket once.
    rebind_after: AtomicU64,
    /// Then again every this many bytes (0: once).
    rebind_every: AtomicU64,
    forwarded_up: AtomicU64,
    rebinds: AtomicU64,
    target: Mutex<Option<SocketAddr>>,
}

/// A UDP forwarder on loopback between one client and a server, on the test's tokio runtime.
/// It can drop everything (a dead path), move its server-facing socket to a new port (a NAT
/// rebinding: the server sees the client's address change) and send to another server.
/// Runs at most 60 s; stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    ctl: Arc<RelayCtl>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn new(server: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let ctl = Arc::new(RelayCtl {
            rebind_after: AtomicU64::new(u64::MAX),
            target: Mutex::new(Some(server)),
            ..Default::default()
        });
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            let mut up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for _ in 0..10_000_000u64 {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if c.blackhole.load(Ordering::Relaxed) {
                            continue;
                        }
                        let total = c.forwarded_up.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if total >= c.rebind_after.load(Ordering::Relaxed) {
                            let every = c.rebind_every.load(Ordering::Relaxed);
                            let next = if every == 0 { u64::MAX } else { total + every };
                            c.rebind_after.store(next, Ordering::Relaxed);
                            // The old mapping is gone: what the server sends there is lost.
                            up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                            c.rebinds.fetch_add(1, Ordering::Relaxed);
                        }
                        let to = *c.target.lock().unwrap();
                        if let Some(to) = to {
                            let _ = up.send_to(&a[..n], to).await;
                        }
                    }
                    r = up.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { continue };
                        if c.blackhole.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Some(cl) = client {
                            let _ = front.send_to(&b[..n], cl).await;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        });
        Self { addr, ctl, task }
    }

    /// Drop every datagram from now on.
    pub fn blackhole(&self) {
        self.ctl.blackhole.store(true, Ordering::Relaxed);
    }

    /// Move to a fresh server-facing port once `bytes` more client→server bytes have passed.
    pub fn rebind_after(&self, bytes: u64) {
        let now = self.ctl.forwarded_up.load(Ordering::Relaxed);
        self.ctl.rebind_after.store(now + bytes, Ordering::Relaxed);
    }

    /// Move to a fresh server-facing port every `bytes` client→server bytes from now on.
    pub fn rebind_every(&self, bytes: u64) {
        self.ctl.rebind_every.store(bytes, Ordering::Relaxed);
        self.rebind_after(bytes);
    }

    pub fn rebinds(&self) -> u64 {
        self.ctl.rebinds.load(Ordering::Relaxed)
    }

    /// Forward to another server from now on.
    pub fn retarget(&self, server: SocketAddr) {
        *self.ctl.target.lock().unwrap() = Some(server);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A waker that counts its wakeups.
#[derive(Default)]
pub struct WakeCounter(std::sync::atomic::AtomicUsize);

impl WakeCounter {
    pub fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl std::task::Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
