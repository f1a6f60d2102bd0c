//! Helpers shared by ringquic-h3's tests: a certificate (DER and PEM files), endpoints of both
//! QUIC stacks, a small HTTP/3 site and client written once over h3's traits (so the same code
//! runs on ringquic-h3 and h3-quinn), timeouts, temporary directories, child processes.
#![allow(dead_code)]

/// The examples' TLS code (PEM loading, ALPN "h3"), used here as well.
#[path = "../../examples/common/mod.rs"]
pub mod tls;

use std::{
    collections::HashMap,
    fmt::Debug,
    future::{Future, IntoFuture},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use h3::quic;
use h3_datagram::{datagram_handler::HandleDatagramsExt, quic_traits::DatagramConnectionExt};
use http::{Method, Request, Response, StatusCode};
use ringquic::BackendKind;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use tls::BoxError;

/// Fail the test instead of hanging.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test timed out after {secs} s"))
}

#[path = "../../../ringquic/tests/common/backends.rs"]
mod backends;
#[allow(unused_imports)]
pub use backends::backends;

/// `test` on each backend in turn (named on stderr), each within `secs`.
pub async fn on_every_backend<F: Future<Output = ()>>(secs: u64, test: impl Fn(BackendKind) -> F) {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        within(secs, test(backend)).await;
    }
}

/// A self-signed certificate for `localhost`, 127.0.0.1 and ::1.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn new() -> Self {
        let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        Self {
            cert: c.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()),
            cert_pem: c.cert.pem(),
            key_pem: c.signing_key.serialize_pem(),
        }
    }

    /// Write `cert.pem` and `key.pem` into `dir`; their paths.
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert.pem");
        std::fs::write(&key, &self.key_pem).expect("write key.pem");
        (cert, key)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// An HTTP/3 server configuration (idle timeout 10 s).
    pub fn server_config(&self) -> ringquic::ServerConfig {
        let mut c = tls::server_config(vec![self.cert.clone()], self.key()).expect("server config");
        c.transport_config(Arc::new(transport()));
        c
    }

    /// An HTTP/3 client configuration trusting this certificate (idle timeout 10 s).
    pub fn client_config(&self) -> ringquic::ClientConfig {
        let mut c = tls::client_config(std::slice::from_ref(&self.cert)).expect("client config");
        c.transport_config(Arc::new(transport()));
        c
    }
}

fn transport() -> ringquic::TransportConfig {
    let mut t = ringquic::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("idle timeout")));
    t
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A ringquic endpoint on `backend`, on 127.0.0.1, as `config` sets it up; `what` names it in a
/// failure.
fn ringquic_endpoint(
    backend: BackendKind,
    config: impl FnOnce(ringquic::EndpointBuilder) -> ringquic::EndpointBuilder,
    what: &str,
) -> ringquic::Endpoint {
    config(ringquic::Endpoint::builder().backend(backend))
        .bind(localhost())
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// A ringquic server endpoint on `backend`, on 127.0.0.1.
pub fn ringquic_server(id: &Identity, backend: BackendKind) -> ringquic::Endpoint {
    ringquic_endpoint(
        backend,
        |b| b.server_config(id.server_config()),
        "ringquic server endpoint",
    )
}

/// A ringquic client endpoint on `backend`, trusting `id`.
pub fn ringquic_client(id: &Identity, backend: BackendKind) -> ringquic::Endpoint {
    ringquic_endpoint(
        backend,
        |b| b.default_client_config(id.client_config()),
        "ringquic client endpoint",
    )
}

/// A stock quinn server endpoint on 127.0.0.1 (inside a tokio runtime).
pub fn quinn_server(id: &Identity) -> quinn::Endpoint {
    // quinn's ServerConfig is quinn-proto's, as ringquic's is: the same configuration.
    quinn::Endpoint::server(id.server_config(), localhost()).expect("quinn server endpoint")
}

/// A stock quinn client endpoint trusting `id` (inside a tokio runtime).
pub fn quinn_client(id: &Identity) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client(localhost()).expect("quinn client endpoint");
    e.set_default_client_config(id.client_config());
    e
}

/// Both ends of a handshake at once, on either QUIC stack: the server's next connection
/// (`incoming`, its endpoint's `accept()`) and the client's (`connect`, called once the server
/// waits for it, as `|| client.connect(addr, "localhost")`). The server's connection first.
pub async fn handshake<I, SC, SE, CF, CC, CE, E>(
    incoming: impl Future<Output = Option<I>>,
    connect: impl FnOnce() -> Result<CF, E>,
) -> (SC, CC)
where
    I: IntoFuture<Output = Result<SC, SE>>,
    CF: Future<Output = Result<CC, CE>>,
    SE: Debug,
    CE: Debug,
    E: Debug,
{
    tokio::join!(
        async { incoming.await.expect("incoming").await.expect("server handshake") },
        async { connect().expect("connect").await.expect("client handshake") }
    )
}

/// `len` deterministic pseudo-random bytes (xorshift64 from `seed`): a body whose every byte
/// is checked, not a run of zeros.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = BytesMut::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.freeze()
}

/// Compare two bodies, naming the first difference instead of printing megabytes.
pub fn assert_same_body(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: bodies differ first at byte {at} (of {} / {})",
            got.len(),
            want.len()
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: body length");
}

/// The test site: files by path (GET), `POST /echo` answers with the request's body, anything
/// else 404. Counts the requests it answered.
pub struct Site {
    pub files: HashMap<String, Bytes>,
    pub served: AtomicUsize,
}

/// The size of the test site's big file.
pub const BIG: usize = 4 * 1024 * 1024 + 123;

impl Site {
    pub fn new() -> Arc<Self> {
        let mut files = HashMap::new();
        files.insert("/hello".to_owned(), Bytes::from_static(b"hello, HTTP/3\n"));
        files.insert("/empty".to_owned(), Bytes::new());
        files.insert("/big".to_owned(), pattern(BIG, 0x5eed));
        for i in 0..8 {
            files.insert(format!("/file{i}"), pattern(10_000 + 1000 * i, i as u64 + 1));
        }
        Arc::new(Self {
            files,
            served: AtomicUsize::new(0),
        })
    }
}

/// The whole site exchange between an h3 client on `client` and an h3 server on `server` (any
/// QUIC stack on either side): every request answered (17), and both ends close cleanly.
#[allow(dead_code)]
pub async fn site_exchange<CC, SC>(client: CC, server: SC)
where
    CC: quic::Connection<Bytes> + Send + 'static,
    CC::OpenStreams: Clone + Send + 'static,
    CC::BidiStream: Send + 'static,
    CC::SendStream: Send + 'static,
    CC::RecvStream: Send + 'static,
    SC: quic::Connection<Bytes> + Send + 'static,
    SC::BidiStream: Send + 'static,
    SC::SendStream: Send + 'static,
    SC::RecvStream: Send + 'static,
{
    let site = Site::new();
    let serving = tokio::spawn(serve(
        h3::server::Connection::new(server).await.expect("h3 server"),
        site.clone(),
    ));
    let (mut driver, send) = h3::client::new(client).await.expect("h3 client");
    let driving = tokio::spawn(async move { driver.wait_idle().await });
    exercise(send, &site).await.expect("exchange");
    let closed = driving.await.expect("driver task");
    assert!(closed.is_h3_no_error(), "client's end: {closed:?}");
    serving
        .await
        .expect("server task")
        .expect("the server saw a clean close");
    assert_eq!(site.served.load(std::sync::atomic::Ordering::Relaxed), 17);
}

/// Serve `site` on an h3 server connection until the peer closes it. Generic over the QUIC
/// stack: the same code serves on ringquic-h3 and on h3-quinn.
pub async fn serve<C>(mut conn: h3::server::Connection<C, Bytes>, site: Arc<Site>) -> Result<(), BoxError>
where
    C: quic::Connection<Bytes> + Send + 'static,
    C::BidiStream: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        match conn.accept().await {
            Ok(Some(resolver)) => {
                let site = site.clone();
                tasks.spawn(async move {
                    let (req, stream) = resolver.resolve_request().await?;
                    answer(req, stream, &site).await
                });
            }
            Ok(None) => break,
            Err(e) if e.is_h3_no_error() => break,
            Err(e) => return Err(e.into()),
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn answer<S>(
    req: Request<()>,
    mut stream: h3::server::RequestStream<S, Bytes>,
    site: &Site,
) -> Result<(), BoxError>
where
    S: quic::SendStream<Bytes> + quic::RecvStream,
{
    let body = match (req.method(), req.uri().path()) {
        (&Method::POST, "/echo") => {
            let mut body = BytesMut::new();
            while let Some(mut chunk) = stream.recv_data().await? {
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    body.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            Some(body.freeze())
        }
        (&Method::GET, path) => site.files.get(path).cloned(),
        _ => None,
    };
    let status = if body.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let body = body.unwrap_or_else(|| Bytes::from_static(b"not found"));
    let resp = Response::builder()
        .status(status)
        .header("content-length", body.len())
        .body(())?;
    stream.send_response(resp).await?;
    // Several DATA frames for a big body, as a file server would send them.
    let mut rest = body;
    while !rest.is_empty() {
        let n = rest.len().min(256 * 1024);
        stream.send_data(rest.split_to(n)).await?;
    }
    stream.finish().await?;
    site.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// One request on an h3 client: its status and body. Generic over the QUIC stack.
pub async fn fetch<O>(
    send: &mut h3::client::SendRequest<O, Bytes>,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Vec<u8>), BoxError>
where
    O: quic::OpenStreams<Bytes>,
{
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())?;
    let method_path = format!("{} {path}", req.method());
    let step = |what: &'static str| {
        let method_path = method_path.clone();
        move |e: h3::error::StreamError| format!("{method_path}: {what}: {e:?}")
    };
    let mut stream = send.send_request(req).await.map_err(step("send_request"))?;
    if let Some(body) = body {
        let mut rest = body;
        while !rest.is_empty() {
            let n = rest.len().min(100_000);
            stream
                .send_data(rest.split_to(n))
                .await
                .map_err(step("send_data"))?;
        }
    }
    match stream.finish().await {
        // The server may answer before it has read the whole request and stop the rest
        // (RFC 9114 §4.1.2); h3 reports that here (its grease frame before the FIN is refused).
        // The response still counts: read it.
        Err(h3::error::StreamError::RemoteTerminate { .. }) | Ok(()) => {}
        Err(e) => return Err(step("finish")(e).into()),
    }
    let resp = stream.recv_response().await.map_err(step("recv_response"))?;
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(step("recv_data"))? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok((resp.status(), out))
}

/// The exchange every stack pairing runs: several requests one after the other and at once,
/// the big body byte for byte, an upload echoed back, an empty body and a 404.
pub async fn exercise<O>(send: h3::client::SendRequest<O, Bytes>, site: &Site) -> Result<(), BoxError>
where
    O: quic::OpenStreams<Bytes> + Clone + Send + 'static,
    O::BidiStream: Send,
{
    let mut send = send;
    for i in 0..5 {
        let (status, body) = fetch(&mut send, Method::GET, "/hello", None).await?;
        assert_eq!(status, StatusCode::OK, "GET /hello #{i}");
        assert_eq!(body, b"hello, HTTP/3\n");
    }
    // Eight requests at once, each on its own clone of the request sender.
    let mut at_once = tokio::task::JoinSet::new();
    for i in 0..8 {
        let mut send = send.clone();
        at_once.spawn(async move {
            let path = format!("/file{i}");
            fetch(&mut send, Method::GET, &path, None)
                .await
                .map(|r| (path, r))
                .map_err(|e| e.to_string())
        });
    }
    while let Some(r) = at_once.join_next().await {
        let (path, (status, body)) = r??;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        assert_same_body(&body, &site.files[&path], &path);
    }
    let (status, body) = fetch(&mut send, Method::GET, "/big", None).await?;
    assert_eq!(status, StatusCode::OK, "GET /big");
    assert_same_body(&body, &site.files["/big"], "GET /big");

    let upload = pattern(1024 * 1024 + 7, 77);
    let (status, body) = fetch(&mut send, Method::POST, "/echo", Some(upload.clone())).await?;
    assert_eq!(status, StatusCode::OK, "POST /echo");
    assert_same_body(&body, &upload, "POST /echo");

    let (status, body) = fetch(&mut send, Method::GET, "/empty", None).await?;
    assert_eq!((status, body.len()), (StatusCode::OK, 0), "GET /empty");

    let (status, body) = fetch(&mut send, Method::GET, "/no/such/file", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "GET /no/such/file");
    assert_eq!(body, b"not found");
    Ok(())
}

/// How many datagrams [`datagram_client`] has echoed.
pub const DATAGRAMS: u8 = 3;

/// An h3 server with HTTP datagrams on: takes one request, echoes [`DATAGRAMS`] datagrams
/// on its stream, then answers it (200, no body). Generic over the QUIC stack.
pub async fn datagram_echo_server<C>(conn: C) -> Result<(), BoxError>
where
    C: quic::Connection<Bytes> + DatagramConnectionExt<Bytes>,
{
    let mut conn = h3::server::builder()
        .enable_datagram(true)
        .build::<_, Bytes>(conn)
        .await?;
    let resolver = conn.accept().await?.ok_or("no request")?;
    let (_, mut stream) = resolver.resolve_request().await?;
    let mut reader = conn.get_datagram_reader();
    let mut sender = conn.get_datagram_sender(stream.id());
    let mut seen = std::collections::HashSet::new();
    // The client resends a datagram until its echo arrives: duplicates are echoed too.
    for _ in 0..200 {
        if seen.len() == DATAGRAMS as usize {
            break;
        }
        let d = reader.read_datagram().await?;
        if d.stream_id() != stream.id() {
            return Err(format!("datagram for stream {:?}, not {:?}", d.stream_id(), stream.id()).into());
        }
        let mut payload = d.into_payload();
        let payload = payload.copy_to_bytes(payload.remaining());
        seen.insert(payload.clone());
        sender.send_datagram(payload)?;
    }
    stream.send_response(Response::new(())).await?;
    stream.finish().await?;
    // Until the client closes the connection (which ends accept), at most 5 s.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.accept()).await;
    Ok(())
}

/// HTTP datagrams echoed: `server` (a [`datagram_echo_server`]) on a task of its own, `client`
/// (a [`datagram_client`]) here; both must succeed.
pub async fn datagrams_echoed(
    client: impl Future<Output = Result<(), BoxError>>,
    server: impl Future<Output = Result<(), BoxError>> + Send + 'static,
) {
    let echoing = tokio::spawn(server);
    client.await.expect("datagrams");
    echoing.await.expect("server task").expect("echo server");
}

/// An h3 client with HTTP datagrams on: opens a request, sends [`DATAGRAMS`] datagrams bound
/// to its stream, each until its echo comes back (datagrams may be lost; bounded), checks
/// every echo's stream and payload, and reads the response to its end.
pub async fn datagram_client<C>(conn: C) -> Result<(), BoxError>
where
    C: quic::Connection<Bytes> + DatagramConnectionExt<Bytes> + Send + 'static,
    C::SendStream: Send,
    C::RecvStream: Send,
{
    let (mut driver, mut send) = h3::client::builder()
        .enable_datagram(true)
        .build::<_, _, Bytes>(conn)
        .await?;
    let mut stream = send
        .send_request(Request::get("https://localhost/datagrams").body(())?)
        .await?;
    let stream_id = stream.id();
    let mut sender = driver.get_datagram_sender(stream_id);
    let mut reader = driver.get_datagram_reader();
    let driving = tokio::spawn(async move { driver.wait_idle().await });
    for i in 0..DATAGRAMS {
        let payload = Bytes::from(vec![i; 100 + i as usize]);
        let mut echoed = false;
        for _ in 0..20 {
            sender.send_datagram(payload.clone())?;
            let Ok(d) = tokio::time::timeout(Duration::from_millis(500), reader.read_datagram()).await else {
                continue;
            };
            let d = d?;
            if d.stream_id() != stream_id {
                return Err(format!("echo on stream {:?}, not {stream_id:?}", d.stream_id()).into());
            }
            let mut got = d.into_payload();
            if got.copy_to_bytes(got.remaining()) == payload {
                echoed = true;
                break;
            }
            // An echo of an earlier datagram's resend: wait for ours.
        }
        if !echoed {
            return Err(format!("datagram {i} never came back").into());
        }
    }
    let _ = stream.finish().await;
    let resp = stream.recv_response().await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()).into());
    }
    // To the end of the response: the server has finished it before h3 closes the
    // connection (which it does at once when the last request sender goes).
    if stream.recv_data().await?.is_some() {
        return Err("a body where none was sent".into());
    }
    drop((stream, send));
    let _ = tokio::time::timeout(Duration::from_secs(5), driving).await;
    Ok(())
}

/// A directory under the system's temporary directory, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ringquic-h3-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when dropped, whatever the test's outcome.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Start `cmd` with stdout piped and wait (at most `secs`) for a stdout line containing
    /// `ready`; returns the process and that line. Later stdout lines are echoed to stderr.
    pub fn start(mut cmd: Command, what: &str, ready: &str, secs: u64) -> (Self, String) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut process = Self {
            child,
            what: what.to_owned(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (wanted, tag) = (ready.to_owned(), what.to_owned());
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains(&wanted) {
                    let _ = tx.send(line);
                    sent = true;
                } else {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(line) => (process, line),
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                panic!(
                    "{what}: no line containing {:?} within {secs} s (exit status: {status:?})",
                    ready
                );
            }
        }
    }

    /// Wait at most `secs` for the process to exit; its status (killed and a panic on timeout).
    pub fn wait(mut self, secs: u64) -> ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!("{}: still running after {secs} s", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `cmd` to completion within `secs` (killed on timeout): its exit status and stderr.
pub fn run(mut cmd: Command, what: &str, secs: u64) -> (ExitStatus, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let process = Process {
        child,
        what: what.to_owned(),
    };
    let status = process.wait(secs);
    let stderr = reader.join().unwrap_or_default();
    eprintln!("[{what}] {stderr}");
    (status, stderr)
}

#[path = "../../../ringquic/tests/common/example_bin.rs"]
mod example_bin;

/// This package's example binary `name` (`cargo test` builds it; another package's example of
/// the same name may sit at the plain path, see `example_bin`).
pub fn example(name: &str) -> PathBuf {
    example_bin::example_binary(env!("CARGO_MANIFEST_DIR"), name)
}

/// The address at the end of a `listening on ADDR` line.
pub fn listening_addr(line: &str) -> SocketAddr {
    let addr = line.rsplit(' ').next().unwrap_or_default();
    addr.parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
}

/// A served directory for the process tests, and a file beside it (outside) that must never
/// be served: `small.txt`, `big.bin` (3 MiB + 5), `sub dir/nested.txt`, `index.html`, an
/// empty file, and (on Unix) a symbolic link out of the root.
pub struct Files {
    pub dir: TempDir,
    pub root: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub big: Bytes,
}

impl Files {
    /// The files in a new temporary directory (named after `tag`), with a new [`Identity`]'s
    /// certificate and key beside them.
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub dir")).expect("mkdir");
        let big = pattern(3 * 1024 * 1024 + 5, 0xb16);
        std::fs::write(root.join("big.bin"), &big).expect("write");
        std::fs::write(root.join("small.txt"), b"small file\n").expect("write");
        std::fs::write(root.join("empty"), b"").expect("write");
        std::fs::write(root.join("index.html"), b"<p>index</p>\n").expect("write");
        std::fs::write(root.join("sub dir").join("nested.txt"), b"nested\n").expect("write");
        std::fs::write(dir.path().join("secret.txt"), b"outside the root\n").expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).expect("symlink");
        let (cert, key) = Identity::new().write_pem(dir.path());
        Self {
            dir,
            root,
            cert,
            key,
            big,
        }
    }

    /// A path for a downloaded body (in the temporary directory, outside the root).
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Paths that must not reach the file beside the root (or anything under it): dot segments
/// plain and percent-encoded, an encoded separator, a symbolic link.
pub const ESCAPES: &[&str] = &[
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/sub%20dir/../../secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/..%5Csecret.txt",
    "/link",
];

/// Start a file server `cmd` (it takes the example server's arguments, added here) on `files`,
/// on 127.0.0.1, any port; the process and its address. `what` names it in its output.
pub fn start_file_server(mut cmd: Command, what: &str, files: &Files) -> (Process, SocketAddr) {
    cmd.args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--root")
        .arg(&files.root);
    let (process, line) = Process::start(cmd, what, "listening", 30);
    (process, listening_addr(&line))
}

/// Start the example server on `files` (127.0.0.1, any port); the process and its address.
pub fn start_example_server(files: &Files) -> (Process, SocketAddr) {
    start_file_server(Command::new(example("server")), "example server", files)
}

/// Run a client program `cmd` (it takes the example client's arguments, added here) for `url`,
/// trusting `ca`, the body to `out`; its exit status and stderr. `what` names it in its output.
pub fn run_client(mut cmd: Command, what: &str, url: &str, ca: &Path, out: &Path) -> (ExitStatus, String) {
    cmd.arg(url)
        .arg("--ca")
        .arg(ca)
        .arg("--out")
        .arg(out)
        .args(["--timeout", "30"]);
    run(cmd, what, 60)
}

/// Run the example client for `url`; exit status and stderr.
pub fn example_client(url: &str, ca: &Path, out: &Path) -> (ExitStatus, String) {
    run_client(Command::new(example("client")), "example client", url, ca, out)
}

/// A client program's run for a URL, trusting a CA file, the body to a path (as
/// [`example_client`]): its exit status and stderr.
pub type ClientProgram = fn(&str, &Path, &Path) -> (ExitStatus, String);

/// A client program fetching from a server of `files`, trusting `files.cert`, each body into a
/// file of the given name in the temporary directory ([`Files::out`]).
pub struct Fetch<'a>(pub ClientProgram, pub &'a Files);

impl Fetch<'_> {
    /// `url` into `out`: the client must succeed and write `want` (compared byte for byte).
    /// `what` names the request in a failure.
    pub fn ok(&self, url: &str, out: &str, want: &[u8], what: &str) {
        let out = self.1.out(out);
        let (status, stderr) = self.0(url, &self.1.cert, &out);
        assert!(status.success(), "{what}: {status}: {stderr}");
        assert_same_body(&std::fs::read(&out).expect("body written"), want, what);
    }

    /// `url` into `out`: the client must fail with a 404 (in its stderr) and write nothing.
    /// `what` names the request in a failure.
    pub fn not_found(&self, url: &str, out: &str, what: &str) {
        let out = self.1.out(out);
        let (status, stderr) = self.0(url, &self.1.cert, &out);
        assert!(
            !status.success() && stderr.contains("404"),
            "{what} must be a 404: {status}: {stderr}"
        );
        assert!(!out.exists(), "{what} wrote a body");
    }
}
