//! Helpers shared by the integration tests: certificates, configs, both backends, endpoints,
//! connections, timeouts. Submodules: `impair` (an impairing relay), `hashed` (hashed
//! transfers), `process` (child processes, memory, threads).
#![allow(dead_code)]
pub mod hashed;
pub mod impair;
pub mod process;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ringquic::{
    BackendKind, ClientConfig, Connection, Endpoint, EndpointBuilder, EndpointIoStats, ServerConfig,
    TransportConfig,
};
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

/// A server configuration for `c` with [`transport`].
pub fn server_config(c: &Cert) -> ServerConfig {
    server_config_with(c, Arc::new(transport()))
}

/// A server configuration for `c` with transport `t`.
pub fn server_config_with(c: &Cert, t: Arc<TransportConfig>) -> ServerConfig {
    let mut s = ServerConfig::with_single_cert(vec![c.der.clone()], PrivateKeyDer::Pkcs8(c.key.clone_key()))
        .expect("server config");
    s.transport_config(t);
    s
}

/// A client configuration trusting `c`, with [`transport`].
pub fn client_config(c: &Cert) -> ClientConfig {
    client_config_with(c, Arc::new(transport()))
}

/// A client configuration trusting `c`, with transport `t`.
pub fn client_config_with(c: &Cert, t: Arc<TransportConfig>) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.der.clone()).expect("root");
    let mut cc = ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    cc.transport_config(t);
    cc
}

#[path = "backends.rs"]
mod backends;
#[allow(unused_imports)]
pub use backends::backends;

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server endpoint on `backend` serving `config` on 127.0.0.1, with extra builder settings.
pub fn server_endpoint(
    backend: BackendKind,
    config: ServerConfig,
    tweak: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
) -> Endpoint {
    let server = tweak(Endpoint::builder().backend(backend).server_config(config))
        .bind(localhost())
        .expect("server endpoint");
    assert_eq!(server.backend(), backend);
    server
}

/// A client endpoint on `backend` connecting with `config` by default, on 127.0.0.1, with
/// extra builder settings.
pub fn client_endpoint(
    backend: BackendKind,
    config: ClientConfig,
    tweak: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
) -> Endpoint {
    tweak(Endpoint::builder().backend(backend).default_client_config(config))
        .bind(localhost())
        .expect("client endpoint")
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
    pair_with_transport(backend, transport(), server, client)
}

/// [`pair_with`] with `t` as both sides' transport.
pub fn pair_with_transport(
    backend: BackendKind,
    t: TransportConfig,
    server: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
    client: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
) -> (Endpoint, Endpoint) {
    let c = cert();
    let t = Arc::new(t);
    (
        server_endpoint(backend, server_config_with(&c, t.clone()), server),
        client_endpoint(backend, client_config_with(&c, t), client),
    )
}

/// Connect `client` to `server` (by address `to`) and accept on the server: (server side,
/// client side), both established, within `secs` seconds each.
pub async fn connected_within(
    secs: u64,
    server: &Endpoint,
    client: &Endpoint,
    to: SocketAddr,
) -> (Connection, Connection) {
    let connecting = client.connect(to, "localhost").expect("connect");
    let server_side = within(secs, async {
        server.accept().await.expect("incoming").await.expect("accept")
    })
    .await;
    let client_side = within(secs, connecting).await.expect("handshake");
    (server_side, client_side)
}

/// [`connected_within`] 10 s.
pub async fn connected_via(server: &Endpoint, client: &Endpoint, to: SocketAddr) -> (Connection, Connection) {
    connected_within(10, server, client, to).await
}

/// [`connected_via`] straight to the server's address.
pub async fn connected(server: &Endpoint, client: &Endpoint) -> (Connection, Connection) {
    connected_via(server, client, server.local_addr().expect("server address")).await
}

/// A [`pair`] on `backend` with one connection between them: (server endpoint, client
/// endpoint, server side, client side).
pub async fn connected_pair(backend: BackendKind) -> (Endpoint, Endpoint, Connection, Connection) {
    let (server, client) = pair(backend);
    let (server_side, client_side) = connected(&server, &client).await;
    (server, client, server_side, client_side)
}

/// `n` connections from `client` to `server`, one after another: (server sides, client sides).
pub async fn connections(
    server: &Endpoint,
    client: &Endpoint,
    n: usize,
) -> (Vec<Connection>, Vec<Connection>) {
    let mut sides = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (s, c) = connected(server, client).await;
        sides.0.push(s);
        sides.1.push(c);
    }
    sides
}

/// Connect `client` to `addr` and wait (10 s at most) for the handshake, with nobody accepting
/// here: the server side is someone else's business.
pub async fn connect_to(client: &Endpoint, addr: SocketAddr) -> Connection {
    within(10, client.connect(addr, "localhost").expect("connect"))
        .await
        .expect("handshake")
}

/// Poll `server`'s statistics until `done` holds (at most 10 s); returns the last snapshot,
/// taken 50 ms later so that stragglers (an excess) show.
pub async fn stats_when(server: &Endpoint, done: impl Fn(&EndpointIoStats) -> bool) -> EndpointIoStats {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = server.io_stats();
        if done(&s) || std::time::Instant::now() > end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return server.io_stats();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serve one bidirectional stream of `conn`: read it to its end (at most `limit` bytes), write
/// it back and finish. Returns the send half, for the caller to wait on or drop.
pub async fn echo_one(conn: &Connection, limit: usize) -> ringquic::SendStream {
    let (mut send, mut recv) = conn.accept_bi().await.expect("accept_bi");
    let msg = recv.read_to_end(limit).await.expect("read");
    send.write_all(&msg).await.expect("write");
    send.finish().expect("finish");
    send
}

/// Send `msg` on a new bidirectional stream of `conn`, finished, and return what comes back (at
/// most `limit` bytes).
pub async fn request(conn: &Connection, msg: &[u8], limit: usize) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open_bi");
    send.write_all(msg).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(limit).await.expect("read")
}

/// Serve `server`: echo every bidirectional stream (up to 1 KiB) of every connection it
/// accepts, until it is closed; the number of connections accepted.
pub fn serve_echoes(server: &Endpoint) -> tokio::task::JoinHandle<usize> {
    let server = server.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Some(incoming) = server.accept().await {
            let Ok(conn) = incoming.await else { continue };
            accepted += 1;
            tokio::spawn(echo_streams(conn));
        }
        accepted
    })
}

/// Echo every bidirectional stream (up to 1 KiB) the peer opens on `conn`, until it ends.
pub async fn echo_streams(conn: Connection) {
    while let Ok((mut s, mut r)) = conn.accept_bi().await {
        if let Ok(v) = r.read_to_end(1024).await {
            let _ = s.write_all(&v).await;
            let _ = s.finish();
        }
    }
}

/// Whether `msg` sent on a new stream of `conn` came back within `secs` (a peer running
/// [`echo_streams`]).
pub async fn echoes(conn: &Connection, msg: &[u8], secs: u64) -> bool {
    let round = async {
        let (mut s, mut r) = conn.open_bi().await.ok()?;
        s.write_all(msg).await.ok()?;
        s.finish().ok()?;
        r.read_to_end(1024).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(secs), round).await, Ok(Some(v)) if v == msg)
}

/// `per_client` connections from each of `clients` to `addr`, each checked with one echo.
pub async fn echoing_connections(
    clients: &[Endpoint],
    addr: SocketAddr,
    per_client: usize,
) -> Vec<Connection> {
    let mut conns = Vec::new();
    for client in clients {
        for _ in 0..per_client {
            let c = within(10, client.connect(addr, "localhost").unwrap())
                .await
                .expect("handshake");
            assert!(echoes(&c, b"first echo", 10).await, "the first echo");
            conns.push(c);
        }
    }
    conns
}

/// A tokio runtime on the calling thread, timers and I/O on.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A tokio runtime with two workers (the machines have two cores), timers and I/O on.
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Fail the test instead of hanging.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

/// Run `f` on `futures::executor::block_on` (no tokio), aborting the process if it takes more
/// than `secs` seconds: without tokio's timers a hang would otherwise stall the whole run.
pub fn block_on_within<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(secs)).is_err() {
            eprintln!("{what}: still running after {secs} s (hang)");
            std::process::abort();
        }
    });
    let out = futures::executor::block_on(f);
    done_tx.send(()).expect("watchdog");
    watchdog.join().expect("watchdog");
    out
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

/// Stock quinn's endpoint, or `None` (with a message) on Windows when quinn-udp cannot configure
/// a socket, as under Wine 8 (it refuses `IP_RECVECN`); ringquic falls back to plain sockets
/// there, quinn cannot.
#[allow(dead_code)]
pub fn quinn_or_skip(r: std::io::Result<quinn::Endpoint>) -> Option<quinn::Endpoint> {
    match r {
        Ok(e) => Some(e),
        Err(e) if cfg!(windows) => {
            eprintln!("stock quinn cannot open a socket here ({e}); skipping");
            None
        }
        Err(e) => panic!("quinn endpoint: {e}"),
    }
}

/// Stock quinn's server on loopback with `c`'s certificate, its first connection handed to
/// `serve` on a task that also keeps the endpoint alive (returned with `serve`'s result); `None`
/// where [`quinn_or_skip`] skips.
pub fn quinn_serves_one<T, F>(
    c: &Cert,
    serve: impl FnOnce(quinn::Connection) -> F + Send + 'static,
) -> Option<(SocketAddr, tokio::task::JoinHandle<(T, quinn::Endpoint)>)>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let server = quinn_or_skip(quinn::Endpoint::server(server_config(c), localhost()))?;
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        (serve(conn).await, server)
    });
    Some((addr, task))
}
