//! A program written for stock quinn 0.11, and compiled twice: against quinn itself
//! (`porting/quinn`) and against ringquic with nothing changed but the dependency
//! (`porting/ringquic`'s Cargo.toml says `quinn = { package = "ringquic", … }`). That is what
//! porting means in ringquic's README: change the import, keep the code. Every call of quinn's
//! high-level API that ringquic promises is used here at least once, with quinn's types named
//! where a port would name them (the named futures, exhaustive matches on the error enums), and
//! the tests check that both builds behave alike.
//!
//! The only call of quinn's left out is `Endpoint::new` with its fourth argument (the runtime),
//! which PORTING.md lists as the one-line change a port makes.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use quinn::{
    congestion, crypto::rustls::HandshakeData, AcceptBi, AcceptUni, ClientConfig, Connecting, Connection,
    ConnectionError, Endpoint, EndpointStats, Incoming, IncomingFuture, OpenBi, OpenUni, ReadDatagram,
    ReadError, ReadExactError, ReadToEndError, RecvStream, ResetError, SendDatagram, SendDatagramError,
    SendStream, ServerConfig, StoppedError, TokenMemoryCache, TransportConfig, ValidationTokenConfig, VarInt,
    WriteError, Written, ZeroRttAccepted,
};

/// Everything a test needs: a server and a client endpoint that trust each other.
pub struct Pair {
    pub server: Endpoint,
    pub client: Endpoint,
    pub addr: SocketAddr,
}

/// A self-signed certificate for "localhost", and configurations built the way quinn's
/// examples build them (with a BBR congestion controller and a token store, so those
/// re-exports are used).
pub fn configs() -> (ServerConfig, ClientConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut transport = TransportConfig::default();
    transport.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()));
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
    let transport = Arc::new(transport);
    let mut server = ServerConfig::with_single_cert(vec![der.clone()], key.into()).unwrap();
    server.transport_config(transport.clone());
    server.validation_token_config(ValidationTokenConfig::default());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    client.transport_config(transport);
    client.token_store(Arc::new(TokenMemoryCache::default()));
    (server, client)
}

/// A server and a client on loopback (`Endpoint::server`/`client` return `io::Result`).
pub fn pair() -> std::io::Result<Pair> {
    let (server_config, client_config) = configs();
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap())?;
    let mut client = Endpoint::client("127.0.0.1:0".parse().unwrap())?;
    client.set_default_client_config(client_config);
    let addr = server.local_addr()?;
    Ok(Pair { server, client, addr })
}

/// Connect and accept, through quinn's named futures.
pub async fn connect(p: &Pair) -> Result<(Connection, Connection), ConnectionError> {
    let connecting: Connecting = p.client.connect(p.addr, "localhost").expect("connect");
    let incoming: Incoming = p.server.accept().await.expect("endpoint open");
    assert!(incoming.orig_dst_cid().len() >= 8);
    let accepting: IncomingFuture = std::future::IntoFuture::into_future(incoming);
    let (c, s) = tokio::join!(connecting, accepting);
    Ok((c?, s?))
}

/// The stream futures, named.
pub fn open_bi(c: &Connection) -> OpenBi<'_> {
    c.open_bi()
}
pub fn open_uni(c: &Connection) -> OpenUni<'_> {
    c.open_uni()
}
pub fn accept_bi(c: &Connection) -> AcceptBi<'_> {
    c.accept_bi()
}
pub fn accept_uni(c: &Connection) -> AcceptUni<'_> {
    c.accept_uni()
}
pub fn read_datagram(c: &Connection) -> ReadDatagram<'_> {
    c.read_datagram()
}
pub fn send_datagram_wait(c: &Connection, d: Bytes) -> SendDatagram<'_> {
    c.send_datagram_wait(d)
}

/// The futures quinn makes `Send + Sync` are so here too.
pub fn futures_are_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<OpenBi<'static>>();
    check::<OpenUni<'static>>();
    check::<AcceptBi<'static>>();
    check::<AcceptUni<'static>>();
    check::<ReadDatagram<'static>>();
    check::<SendDatagram<'static>>();
    check::<ZeroRttAccepted>();
    fn debug<T: std::fmt::Debug>() {}
    debug::<IncomingFuture>();
    debug::<Incoming>();
}

/// Exhaustive matches, as a quinn program writes them: they compile only if the enums have
/// exactly quinn's variants and no `#[non_exhaustive]`.
pub fn describe_write(e: &WriteError) -> &'static str {
    match e {
        WriteError::Stopped(_) => "stopped",
        WriteError::ConnectionLost(_) => "lost",
        WriteError::ClosedStream => "closed",
        WriteError::ZeroRttRejected => "0-rtt rejected",
    }
}
pub fn describe_read(e: &ReadError) -> &'static str {
    match e {
        ReadError::Reset(_) => "reset",
        ReadError::ConnectionLost(_) => "lost",
        ReadError::ClosedStream => "closed",
        ReadError::IllegalOrderedRead => "illegal ordered read",
        ReadError::ZeroRttRejected => "0-rtt rejected",
    }
}
pub fn describe_read_exact(e: &ReadExactError) -> &'static str {
    match e {
        ReadExactError::FinishedEarly(_) => "finished early",
        ReadExactError::ReadError(e) => describe_read(e),
    }
}
pub fn describe_read_to_end(e: &ReadToEndError) -> &'static str {
    match e {
        ReadToEndError::Read(e) => describe_read(e),
        ReadToEndError::TooLong => "too long",
    }
}
pub fn describe_stopped(e: &StoppedError) -> &'static str {
    match e {
        StoppedError::ConnectionLost(_) => "lost",
        StoppedError::ZeroRttRejected => "0-rtt rejected",
    }
}
pub fn describe_reset(e: &ResetError) -> &'static str {
    match e {
        ResetError::ConnectionLost(_) => "lost",
        ResetError::ZeroRttRejected => "0-rtt rejected",
    }
}
pub fn describe_datagram(e: &SendDatagramError) -> &'static str {
    match e {
        SendDatagramError::UnsupportedByPeer => "unsupported",
        SendDatagramError::Disabled => "disabled",
        SendDatagramError::TooLarge => "too large",
        SendDatagramError::ConnectionLost(_) => "lost",
    }
}

/// `poll_write` and `poll_read` driven by hand, as code written against the poll API does.
pub struct PollCopy<'a> {
    pub send: &'a mut SendStream,
    pub recv: &'a mut RecvStream,
    pub out: &'a [u8],
    pub written: usize,
    pub got: Vec<u8>,
}

impl Future for PollCopy<'_> {
    type Output = Result<Vec<u8>, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        while this.written < this.out.len() {
            match Pin::new(&mut *this.send).poll_write(cx, &this.out[this.written..]) {
                Poll::Ready(Ok(n)) => this.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(describe_write(&e).into())),
                Poll::Pending => break,
            }
        }
        if this.written == this.out.len() {
            let _ = this.send.finish();
        }
        loop {
            let mut buf = [0u8; 700];
            match this.recv.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(std::mem::take(&mut this.got))),
                Poll::Ready(Ok(n)) => this.got.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(describe_read(&e).into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Echo every bidirectional stream the peer opens, through tokio's `AsyncRead`/`AsyncWrite`.
pub async fn echo_server(conn: Connection) {
    while let Ok((mut send, mut recv)) = accept_bi(&conn).await {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut recv, &mut send).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        });
    }
}

/// The connection accessors, used once each; returns what was read for the caller to check.
pub fn accessors(c: &Connection) -> (quinn::Side, Duration, u64, Vec<u8>, Option<Vec<u8>>) {
    let side = c.side();
    let min_rtt = c.min_rtt();
    let window = c.congestion_state().window();
    let mut key = vec![0u8; 32];
    c.export_keying_material(&mut key, b"porting", b"ctx")
        .expect("keying material");
    c.set_max_concurrent_uni_streams(VarInt::from_u32(50));
    c.set_max_concurrent_bi_streams(VarInt::from_u32(50));
    c.set_send_window(2 << 20);
    c.set_receive_window(VarInt::from_u32(4 << 20));
    c.force_key_update();
    let _ = (
        c.rtt(),
        c.stats(),
        c.stable_id(),
        c.remote_address(),
        c.local_ip(),
        c.peer_identity(),
    );
    let _ = (
        c.max_datagram_size(),
        c.datagram_send_buffer_space(),
        c.close_reason(),
    );
    let alpn = c
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    (side, min_rtt, window, key, alpn)
}

/// The endpoint's handshake counts.
pub fn handshakes(e: &Endpoint) -> EndpointStats {
    e.stats()
}

/// quinn's re-exports of quinn-proto that a program names: they exist under the same paths.
pub fn reexports() -> usize {
    let _store: Option<Arc<dyn quinn::TokenStore>> = Some(Arc::new(quinn::NoneTokenStore));
    let _log: Option<Arc<dyn quinn::TokenLog>> = Some(Arc::new(quinn::NoneTokenLog));
    let _bloom = quinn::BloomTokenLog::default();
    let _reuse: Option<quinn::TokenReuseError> = None;
    let _cids: Option<Box<dyn quinn::ConnectionIdGenerator>> = None;
    let _time: Arc<dyn quinn::TimeSource> = Arc::new(quinn::StdSystemTime);
    let _: (quinn::EcnCodepoint, Option<quinn::FrameType>) = (quinn::EcnCodepoint::Ect0, None);
    let _transmit: Option<quinn::Transmit> = None;
    let _ = (
        congestion::CubicConfig::default(),
        congestion::NewRenoConfig::default(),
    );
    let mut read_buf_storage = [0u8; 4];
    let mut buf = tokio::io::ReadBuf::new(&mut read_buf_storage);
    // `RecvStream::poll_read_buf` takes this type.
    let _: fn(&mut RecvStream, &mut Context<'_>, &mut tokio::io::ReadBuf<'_>) -> Poll<Result<(), ReadError>> =
        RecvStream::poll_read_buf;
    buf.put_slice(b"ok");
    buf.filled().len()
}

/// A written `Written` (the type `write_chunks` returns).
pub fn chunks_written(w: Written) -> (usize, usize) {
    (w.bytes, w.chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .unwrap_or_else(|_| panic!("{what} hung"))
    }

    #[test]
    fn streams_datagrams_and_accessors() {
        futures_are_send_sync();
        assert_eq!(reexports(), 2);
        rt().block_on(within("the program", async {
            let p = pair().unwrap();
            let (c, s) = connect(&p).await.unwrap();
            tokio::spawn(echo_server(s.clone()));

            // write / read_to_end through the echo.
            let (mut send, mut recv) = open_bi(&c).await.unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            send.set_priority(3).unwrap();
            assert_eq!(send.priority().unwrap(), 3);
            let mut chunks = [
                Bytes::from(data[..100_000].to_vec()),
                Bytes::from(data[100_000..].to_vec()),
            ];
            let mut sent = 0;
            while sent < data.len() {
                let (bytes, _) = chunks_written(send.write_chunks(&mut chunks).await.unwrap());
                sent += bytes;
            }
            send.finish().unwrap();
            // `stopped` is 'static: it can be spawned and outlive the stream.
            let stopped = tokio::spawn(send.stopped());
            drop(send);
            assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), data);
            assert_eq!(stopped.await.unwrap().unwrap(), None);

            // Active migration: the client moves to a new socket and the connection goes on.
            let before = p.client.local_addr().unwrap();
            p.client
                .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();

            // read_exact, and its FinishedEarly carrying the bytes read.
            let (mut send, mut recv) = open_bi(&c).await.unwrap();
            send.write_all(b"hello").await.unwrap();
            send.finish().unwrap();
            let mut four = [0u8; 4];
            recv.read_exact(&mut four).await.unwrap();
            let mut more = [0u8; 10];
            match recv.read_exact(&mut more).await {
                Err(ReadExactError::FinishedEarly(n)) => assert_eq!(n, 1),
                other => panic!("{other:?}"),
            }
            assert!(!recv.is_0rtt());

            // The poll API by hand.
            let (mut send, mut recv) = open_bi(&c).await.unwrap();
            let out = vec![7u8; 50_000];
            let got = PollCopy {
                send: &mut send,
                recv: &mut recv,
                out: &out,
                written: 0,
                got: Vec::new(),
            }
            .await
            .unwrap();
            assert_eq!(got, out);

            // A reset reaches the reader as `Reset`, and `received_reset` says so.
            let mut uni = open_uni(&c).await.unwrap();
            uni.write_all(b"x").await.unwrap();
            uni.reset(VarInt::from_u32(9)).unwrap();
            let mut r = accept_uni(&s).await.unwrap();
            let mut buf = [0u8; 8];
            let code = loop {
                match r.read(&mut buf).await {
                    Ok(Some(_)) => continue,
                    Err(ReadError::Reset(code)) => break code,
                    other => panic!("{other:?}"),
                }
            };
            assert_eq!(code, VarInt::from_u32(9));
            assert_eq!(r.received_reset().await.unwrap(), Some(VarInt::from_u32(9)));

            // Datagrams, both ways of sending.
            c.send_datagram(Bytes::from_static(b"one")).unwrap();
            send_datagram_wait(&c, Bytes::from_static(b"two")).await.unwrap();
            let mut got = vec![read_datagram(&s).await.unwrap(), read_datagram(&s).await.unwrap()];
            got.sort();
            assert_eq!(got, [Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
            let too_big = Bytes::from(vec![0u8; 100_000]);
            assert_eq!(
                describe_datagram(&c.send_datagram(too_big).unwrap_err()),
                "too large"
            );

            // By now the new socket is in use (ringquic swaps on the I/O thread's next turn).
            assert_ne!(p.client.local_addr().unwrap(), before);
            let (side, _min_rtt, window, key, _alpn) = accessors(&c);
            assert_eq!(side, quinn::Side::Client);
            assert!(window > 0);
            let (server_side, _, _, server_key, _) = accessors(&s);
            assert_eq!(server_side, quinn::Side::Server);
            assert_eq!(key, server_key, "both ends derive the same keying material");

            // Errors after close, matched exhaustively.
            c.close(VarInt::from_u32(5), b"bye");
            let e = s.closed().await;
            assert!(
                matches!(e, ConnectionError::ApplicationClosed(ref a) if a.error_code == VarInt::from_u32(5)),
                "{e:?}"
            );
            let err = open_uni(&c).await.unwrap_err();
            assert_eq!(err, ConnectionError::LocallyClosed);
            assert_eq!(
                describe_write(&WriteError::from(StoppedError::ConnectionLost(err))),
                "lost"
            );
            let h = handshakes(&p.server);
            assert_eq!(h.accepted_handshakes, 1);
            assert_eq!(handshakes(&p.client).outgoing_handshakes, 1);
            p.client.wait_idle().await;
        }));
    }

    #[test]
    fn zero_rtt_resumption() {
        rt().block_on(within("0-RTT", async {
            let p = pair().unwrap();
            let server = p.server.clone();
            let serve = tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..2 {
                    let incoming = server.accept().await.unwrap();
                    let mut connecting = incoming.accept().unwrap();
                    let hd = connecting.handshake_data().await.unwrap();
                    assert!(hd.downcast::<HandshakeData>().is_ok());
                    let (conn, _accepted) = connecting.into_0rtt().map_err(|_| ()).expect("0.5-RTT");
                    let mut r = accept_uni(&conn).await.unwrap();
                    got.push(r.read_to_end(1024).await.unwrap());
                    let _ = conn.closed().await;
                }
                got
            });
            let first = p.client.connect(p.addr, "localhost").unwrap();
            let conn = match first.into_0rtt() {
                Ok(_) => panic!("no ticket yet"),
                Err(connecting) => connecting.await.unwrap(),
            };
            let mut s = open_uni(&conn).await.unwrap();
            s.write_all(b"first").await.unwrap();
            s.finish().unwrap();
            s.stopped().await.unwrap();
            conn.close(VarInt::from_u32(0), b"");
            let (conn, accepted): (Connection, ZeroRttAccepted) = p
                .client
                .connect(p.addr, "localhost")
                .unwrap()
                .into_0rtt()
                .map_err(|_| ())
                .expect("0-RTT");
            let mut s = open_uni(&conn).await.unwrap();
            s.write_all(b"early").await.unwrap();
            s.finish().unwrap();
            assert!(accepted.await);
            s.stopped().await.unwrap();
            conn.close(VarInt::from_u32(0), b"");
            assert_eq!(serve.await.unwrap(), [b"first".to_vec(), b"early".to_vec()]);
            assert!(describe_reset(&ResetError::ZeroRttRejected).contains("0-rtt"));
            assert!(describe_read_to_end(&ReadToEndError::TooLong).contains("long"));
            assert!(describe_read_exact(&ReadExactError::FinishedEarly(0)).contains("early"));
            assert!(describe_stopped(&StoppedError::ZeroRttRejected).contains("0-rtt"));
        }));
    }
}
