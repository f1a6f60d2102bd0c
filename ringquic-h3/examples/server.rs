//! An HTTP/3 file server on ringquic: serves the files under `--root` (GET and HEAD), 404 for
//! anything else, and never a path outside the root (no `..`, no symbolic link out of it).
//!
//! ```text
//! cargo run --release -p ringquic-h3 --example server -- --listen [::1]:4433 --cert cert.pem --key key.pem --root DIR
//! ```
//!
//! Prints `listening on ADDR` once it accepts connections; Ctrl-C closes it.

mod common;

use std::{
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use common::BoxError;
use h3::server::RequestStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::AsyncReadExt;

/// Serve the files in a directory over HTTP/3.
#[derive(Parser, Debug)]
struct Args {
    /// UDP address to listen on (port 0: any free port; the line `listening on ...` says which)
    #[arg(long)]
    listen: SocketAddr,
    /// Certificate chain, PEM
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM
    #[arg(long)]
    key: PathBuf,
    /// Directory whose files are served
    #[arg(long)]
    root: PathBuf,
}

/// How much of a file one DATA frame carries.
const CHUNK: usize = 64 * 1024;

type Stream = RequestStream<ringquic_h3::BidiStream<Bytes>, Bytes>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let root = args
        .root
        .canonicalize()
        .map_err(|e| format!("--root {}: {e}", args.root.display()))?;
    if !root.is_dir() {
        return Err(format!("--root {}: not a directory", root.display()).into());
    }
    let config = common::server_config(common::load_certs(&args.cert)?, common::load_key(&args.key)?)?;
    let endpoint = ringquic::Endpoint::server(config, args.listen)
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    println!("listening on {}", endpoint.local_addr()?);
    let root = Arc::new(root);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        let root = root.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = serve_connection(incoming, root).await {
                eprintln!("{remote}: {e}");
            }
        });
    }
    endpoint.close(ringquic::VarInt::from_u32(0x100), b"server shutting down"); // H3_NO_ERROR
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(incoming: ringquic::Incoming, root: Arc<PathBuf>) -> Result<(), BoxError> {
    let conn = incoming.await?;
    let mut h3_conn = h3::server::Connection::new(ringquic_h3::Connection::new(conn)).await?;
    loop {
        match h3_conn.accept().await {
            Ok(Some(resolver)) => {
                let root = root.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => {
                            if let Err(e) = serve_request(req, stream, &root).await {
                                eprintln!("request: {e}");
                            }
                        }
                        Err(e) => eprintln!("request headers: {e}"),
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn serve_request(req: Request<()>, mut stream: Stream, root: &Path) -> Result<(), BoxError> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let resp = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header("allow", "GET, HEAD")
            .body(())?;
        stream.send_response(resp).await?;
        return Ok(stream.finish().await?);
    }
    let file = match resolve(root, req.uri().path()) {
        Some(path) => tokio::fs::File::open(&path).await.ok(),
        None => None,
    };
    let Some(mut file) = file else {
        let body = Bytes::from_static(b"not found\n");
        let resp = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-length", body.len())
            .body(())?;
        stream.send_response(resp).await?;
        if !head {
            stream.send_data(body).await?;
        }
        return Ok(stream.finish().await?);
    };
    let len = file.metadata().await?.len();
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-length", len)
        .body(())?;
    stream.send_response(resp).await?;
    if !head {
        let mut sent = 0u64;
        while sent < len {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = file.read_buf(&mut buf).await?;
            if n == 0 {
                return Err(format!("{}: file shrank while being sent", req.uri().path()).into());
            }
            sent += n as u64;
            stream.send_data(buf.freeze()).await?;
        }
    }
    Ok(stream.finish().await?)
}

/// The file under `root` (canonical) that the request path names, or `None` (then 404): every
/// segment is percent-decoded and must be a plain name (no `..`, `.`, separator, drive or NUL),
/// and the result, symbolic links resolved, must still lie under `root`. A directory serves its
/// `index.html`.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let name = percent_decode(segment)?;
        let mut components = Path::new(&name).components();
        let plain = matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none();
        if !plain || name.contains(['\0', '/', '\\']) {
            return None;
        }
        out.push(name);
    }
    if out.is_dir() {
        out.push("index.html");
    }
    let real = out.canonicalize().ok()?;
    (real.starts_with(root) && real.is_file()).then_some(real)
}

/// `%XX` escapes decoded; `None` for a bad escape or a name that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
