//! The perf protocol across implementations, in-process over 127.0.0.1: the ringquic client
//! against a stock-quinn server, a stock-quinn client against the ringquic server, and ringquic
//! against itself on both backends. Every test checks byte counts and is bounded in time.

use std::{fmt::Debug, net::SocketAddr, sync::atomic::AtomicU64, time::Duration};

use anyhow::Result;
use ringquic_perf::{
    config::{self, Cipher, Identity, NetOptions, Trust},
    perf::{self, ClientOptions, ClientReport, Request},
    system::{Quinn, Role, System},
};

const LIMIT: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn options(request: Request, requests: u64, concurrency: u64) -> ClientOptions {
    ClientOptions {
        server_name: "localhost".into(),
        request,
        requests,
        concurrency,
    }
}

/// The shape the brief asks for: 1 MiB down, 64 KiB up, 8 requests, 4 at a time.
fn standard() -> ClientOptions {
    options(Request::bi(64 << 10, 1 << 20), 8, 4)
}

/// Starts a perf server of system `S` in the current runtime; returns its endpoint.
fn start_server<S: System>(sys: &S, identity: &Identity, net: &NetOptions) -> S::Endpoint {
    let role = Role::Server(config::server_config(identity, net).unwrap());
    let endpoint = sys
        .bind(config::endpoint_config(net).unwrap(), role, loopback())
        .unwrap();
    tokio::spawn(perf::serve(endpoint.clone()));
    endpoint
}

/// Binds a client endpoint of system `C` on loopback that trusts the server per `trust`.
fn client_endpoint<C: System>(sys: &C, trust: &Trust, net: &NetOptions) -> Result<C::Endpoint> {
    let role = Role::Client(config::client_config(trust, net)?);
    sys.bind(config::endpoint_config(net)?, role, loopback())
}

/// Runs `opts` from a client of system `C` against a server of system `S`.
async fn exchange<S: System, C: System>(
    server: S,
    client: C,
    net: NetOptions,
    trust: Option<Trust>,
    opts: ClientOptions,
) -> Result<ClientReport> {
    use ringquic_perf::system::EndpointOps;
    let identity = Identity::self_signed(&["localhost"])?;
    let server_ep = start_server(&server, &identity, &net);
    let addr = server_ep.local_addr()?;
    let trust = trust.unwrap_or_else(|| Trust::Roots(identity.certs.clone()));
    let client_ep = client_endpoint(&client, &trust, &net)?;
    let report = tokio::time::timeout(LIMIT, perf::run_client(&client_ep, addr, &opts))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    server_ep.close(0, b"test over");
    Ok(report)
}

fn assert_complete(report: &ClientReport) {
    assert!(report.success(), "{report:#?}");
    perf::verdict(report).unwrap();
    let o = &report.options;
    assert_eq!(report.requests_ok, o.requests);
    assert_eq!(report.bytes_received, o.requests * o.request.download);
    assert_eq!(report.bytes_sent, o.requests * o.request.upload);
}

/// Runs [`exchange`] and checks that every request got every byte; a failure names both
/// systems and the network settings.
async fn exchange_ok<S: System + Debug, C: System + Debug>(
    server: S,
    client: C,
    net: NetOptions,
    trust: Option<Trust>,
    opts: ClientOptions,
) {
    let what = format!("{client:?} client, {server:?} server, {net:?}");
    let r = exchange(server, client, net, trust, opts)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_complete(&r);
}

#[tokio::test]
async fn quinn_client_quinn_server() {
    exchange_ok(Quinn, Quinn, NetOptions::default(), None, standard()).await;
}

#[tokio::test]
async fn quinn_uni_requests_and_insecure_chacha() {
    let net = NetOptions {
        cipher: Cipher::Chacha20,
        ..NetOptions::default()
    };
    let mut opts = standard();
    opts.request.uni = true;
    exchange_ok(Quinn, Quinn, net, Some(Trust::Insecure), opts).await;
}

#[tokio::test]
async fn wrong_certificate_fails_the_handshake() {
    let other = Identity::self_signed(&["localhost"]).unwrap();
    let err = exchange(
        Quinn,
        Quinn,
        NetOptions::default(),
        Some(Trust::Roots(other.certs)),
        standard(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("connecting"), "{err:#}");
}

/// A request whose header is cut short gets no answer, and the server keeps serving.
#[tokio::test]
async fn short_header_does_not_break_the_server() {
    use ringquic_perf::system::{ConnOps, EndpointOps, RecvOps, SendOps};
    let net = NetOptions::default();
    let identity = Identity::self_signed(&["localhost"]).unwrap();
    let server = start_server(&Quinn, &identity, &net);
    let client = client_endpoint(&Quinn, &Trust::Roots(identity.certs.clone()), &net).unwrap();
    let run = async {
        let conn = EndpointOps::connect(&client, server.local_addr()?, "localhost").await?;
        let (mut send, mut recv) = ConnOps::open_bi(&conn).await?;
        SendOps::write_all(&mut send, &[0, 0, 1]).await?;
        SendOps::finish(&mut send)?;
        // The server drops the stream: no payload comes back (end of stream or a reset).
        let mut total = 0;
        while let Ok(Some(chunk)) = RecvOps::read_chunk(&mut recv, usize::MAX).await {
            total += chunk.len();
        }
        assert_eq!(total, 0);
        // The connection still serves well-formed requests.
        perf::request(&conn, Request::bi(10, 1000), &AtomicU64::new(0)).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
}

#[cfg(feature = "ringquic")]
mod with_ringquic {
    use ringquic_perf::system::Ringquic;

    use super::*;

    fn backends() -> [Ringquic; 2] {
        [
            Ringquic(Some(ringquic::BackendKind::IoUring)),
            Ringquic(Some(ringquic::BackendKind::Poll)),
        ]
    }

    #[tokio::test]
    async fn ringquic_client_quinn_server() {
        for rq in backends() {
            exchange_ok(Quinn, rq, NetOptions::default(), None, standard()).await;
        }
    }

    #[tokio::test]
    async fn quinn_client_ringquic_server() {
        for rq in backends() {
            exchange_ok(rq, Quinn, NetOptions::default(), None, standard()).await;
        }
    }

    #[tokio::test]
    async fn ringquic_client_ringquic_server() {
        let [uring, poll] = backends();
        for (s, c) in [(uring, uring), (poll, poll), (uring, poll)] {
            exchange_ok(s, c, NetOptions::default(), None, standard()).await;
        }
    }

    #[tokio::test]
    async fn uni_requests_across_implementations() {
        let mut opts = standard();
        opts.request.uni = true;
        exchange_ok(Quinn, Ringquic(None), NetOptions::default(), None, opts.clone()).await;
        exchange_ok(Ringquic(None), Quinn, NetOptions::default(), None, opts).await;
    }

    #[tokio::test]
    async fn every_cipher_across_implementations() {
        for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::Chacha20] {
            let net = NetOptions {
                cipher,
                ..NetOptions::default()
            };
            let opts = options(Request::bi(1000, 100 << 10), 4, 2);
            exchange_ok(Ringquic(None), Quinn, net, Some(Trust::Insecure), opts.clone()).await;
            exchange_ok(Quinn, Ringquic(None), net, None, opts).await;
        }
    }
}

/// A second, independent implementation of the perf draft, written directly against stock
/// quinn's own API with quinn's default transport settings and a default rustls provider: it
/// shares no protocol or configuration code with ringquic-perf, so a mistake made the same way
/// on both ends of ringquic-perf (byte order, FIN handling, ALPN) cannot pass unnoticed.
mod independent {
    use std::{net::SocketAddr, sync::Arc};

    use anyhow::Result;
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Binds a perf server on loopback and serves until the endpoint is closed.
    pub fn server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Result<quinn::Endpoint> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
        tls.alpn_protocols = vec![b"perf".to_vec()];
        let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let uni_conn = conn.clone();
                    tokio::spawn(async move {
                        while let Ok(recv) = uni_conn.accept_uni().await {
                            let conn = uni_conn.clone();
                            tokio::spawn(async move {
                                let want = read_request(recv).await?;
                                respond(conn.open_uni().await?, want).await
                            });
                        }
                    });
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(async move { respond(send, read_request(recv).await?).await });
                    }
                });
            }
        });
        Ok(endpoint)
    }

    async fn read_request(mut recv: quinn::RecvStream) -> Result<u64> {
        let mut head = [0u8; 8];
        recv.read_exact(&mut head).await?;
        while recv.read_chunk(1 << 16, true).await?.is_some() {}
        Ok(u64::from_be_bytes(head))
    }

    /// Writes `left` bytes of filler.
    async fn fill(send: &mut quinn::SendStream, mut left: u64) -> Result<()> {
        let block = vec![0xa5u8; 50_000];
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            send.write_all(&block[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }

    async fn respond(mut send: quinn::SendStream, size: u64) -> Result<()> {
        fill(&mut send, size).await?;
        send.finish()?;
        Ok(())
    }

    /// Connects to `addr` trusting `cert`.
    pub async fn connect(addr: SocketAddr, cert: CertificateDer<'static>) -> Result<quinn::Connection> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"perf".to_vec()];
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(
            tls,
        )?)));
        Ok(endpoint.connect(addr, "localhost")?.await?)
    }

    /// One bidirectional request; returns how many bytes came back.
    pub async fn request(conn: &quinn::Connection, upload: u64, download: u64) -> Result<u64> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&download.to_be_bytes()).await?;
        fill(&mut send, upload).await?;
        send.finish()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut received = 0u64;
        while let Some(n) = recv.read(&mut buf).await? {
            received += n as u64;
        }
        Ok(received)
    }
}

/// Runs our client on system `C` against the independent stock-quinn server.
async fn against_independent_server<C: System>(client: C, uni: bool) -> Result<ClientReport> {
    let identity = Identity::self_signed(&["localhost"])?;
    let server = independent::server(identity.certs[0].clone(), identity.key.clone_key())?;
    let net = NetOptions::default();
    let client_ep = client_endpoint(&client, &Trust::Roots(identity.certs.clone()), &net)?;
    let mut opts = standard();
    opts.request.uni = uni;
    let run = perf::run_client(&client_ep, server.local_addr()?, &opts);
    let report = tokio::time::timeout(LIMIT, run).await??;
    server.close(0u32.into(), b"test over");
    Ok(report)
}

/// Runs the independent stock-quinn client against our server on system `S`.
async fn independent_client_against<S: System>(server: S) -> Result<()> {
    use ringquic_perf::system::EndpointOps;
    let identity = Identity::self_signed(&["localhost"])?;
    let server_ep = start_server(&server, &identity, &NetOptions::default());
    let addr = server_ep.local_addr()?;
    let run = async {
        let conn = independent::connect(addr, identity.certs[0].clone()).await?;
        let (a, b) = tokio::join!(
            independent::request(&conn, 64 << 10, 1 << 20),
            independent::request(&conn, 0, 12_345),
        );
        assert_eq!(a?, 1 << 20);
        assert_eq!(b?, 12_345);
        for _ in 0..4 {
            assert_eq!(independent::request(&conn, 100, 0).await?, 0);
        }
        conn.close(0u32.into(), b"done");
        anyhow::Ok(())
    };
    tokio::time::timeout(LIMIT, run).await??;
    EndpointOps::close(&server_ep, 0, b"test over");
    Ok(())
}

#[tokio::test]
async fn our_quinn_client_against_independent_server() {
    assert_complete(&against_independent_server(Quinn, false).await.unwrap());
    assert_complete(&against_independent_server(Quinn, true).await.unwrap());
}

#[tokio::test]
async fn independent_client_against_our_quinn_server() {
    independent_client_against(Quinn).await.unwrap();
}

#[cfg(feature = "ringquic")]
#[tokio::test]
async fn ringquic_client_against_independent_quinn_server() {
    use ringquic_perf::system::Ringquic;
    for backend in [ringquic::BackendKind::IoUring, ringquic::BackendKind::Poll] {
        for uni in [false, true] {
            let r = against_independent_server(Ringquic(Some(backend)), uni)
                .await
                .unwrap_or_else(|e| panic!("{backend} uni={uni}: {e:#}"));
            assert_complete(&r);
        }
    }
}

#[cfg(feature = "ringquic")]
#[tokio::test]
async fn independent_quinn_client_against_ringquic_server() {
    use ringquic_perf::system::Ringquic;
    for backend in [ringquic::BackendKind::IoUring, ringquic::BackendKind::Poll] {
        independent_client_against(Ringquic(Some(backend)))
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e:#}"));
    }
}
