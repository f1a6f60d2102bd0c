//! A small file server over QUIC, the way quinn ships its example: a client opens a
//! bidirectional stream per request, sends `GET /path\r\n`, and reads the file back; the stream
//! is reset with code 404 if the file is not there (ALPN `hq-29`, as quinn's example).
//!
//! ```text
//! cargo run --example server -- ./some/dir                      # self-signed, cert written out
//! cargo run --example server -- --cert cert.pem --key key.pem --listen 127.0.0.1:4433 ./some/dir
//! ```
//!
//! Without `--cert`/`--key` it makes a self-signed certificate for `localhost` and writes it
//! (PEM) where `--cert-out` says, for the client's `--ca`.

use std::{
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use clap::Parser;
use ringquic::{
    rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    Connection, Endpoint, RecvStream, SendStream, ServerConfig, VarInt,
};

#[derive(Parser, Debug)]
#[command(about = "Serve the files of a directory over QUIC (ringquic's example server)")]
struct Opt {
    /// Directory to serve files from.
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where to write the self-signed certificate when `--cert` is not given.
    #[arg(long, default_value = "ringquic-example-cert.pem")]
    cert_out: PathBuf,
}

/// Requests larger than this are refused.
const MAX_REQUEST: usize = 64 * 1024;
/// Code the stream is reset with when the file is missing.
const NOT_FOUND: u32 = 404;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opt = Opt::parse();
    let (chain, key) = match (&opt.cert, &opt.key) {
        (Some(cert), Some(key)) => (
            CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        ),
        _ => {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
            std::fs::write(&opt.cert_out, c.cert.pem())?;
            println!(
                "self-signed certificate for localhost written to {}",
                opt.cert_out.display()
            );
            let key = PrivateKeyDer::try_from(c.signing_key.serialize_der())?;
            (vec![c.cert.der().clone()], key)
        }
    };
    let mut tls = ringquic::rustls::ServerConfig::builder_with_provider(Arc::new(
        ringquic::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&ringquic::rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"hq-29".to_vec()];
    tls.max_early_data_size = u32::MAX;
    let crypto = ringquic::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = ServerConfig::with_crypto(Arc::new(crypto));

    let root = Arc::new(opt.root.canonicalize()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let endpoint = Endpoint::server(config, opt.listen)?;
        println!(
            "listening on {} ({} backend)",
            endpoint.local_addr()?,
            endpoint.backend()
        );
        while let Some(incoming) = endpoint.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, root).await,
                    Err(e) => eprintln!("handshake failed: {e}"),
                }
            });
        }
        Ok(())
    })
}

async fn serve_connection(conn: Connection, root: Arc<PathBuf>) {
    let peer = conn.remote_address();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let root = root.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_request(send, recv, &root).await {
                        eprintln!("{peer}: {e}");
                    }
                });
            }
            Err(ringquic::ConnectionError::ApplicationClosed(_)) => return,
            Err(e) => {
                eprintln!("{peer}: connection lost: {e}");
                return;
            }
        }
    }
}

async fn serve_request(
    mut send: SendStream,
    mut recv: RecvStream,
    root: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let request = recv.read_to_end(MAX_REQUEST).await?;
    let path = parse_get(&request).ok_or("malformed request")?;
    match file_under(root, path).map(std::fs::read) {
        Some(Ok(body)) => {
            send.write_all(&body).await?;
            send.finish()?;
            // Wait until the client has it all before the stream's state goes.
            send.stopped().await?;
        }
        _ => {
            send.reset(VarInt::from_u32(NOT_FOUND))?;
        }
    }
    Ok(())
}

/// `GET /path\r\n` → `path`.
fn parse_get(request: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(request).ok()?.strip_suffix("\r\n")?;
    line.strip_prefix("GET /")
}

/// `root/path` if it names a file below `root` (no `..`, no absolute paths).
fn file_under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    full.is_file().then_some(full)
}
