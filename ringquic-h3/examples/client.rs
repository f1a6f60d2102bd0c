//! An HTTP/3 client on ringquic: GETs one URL and writes the body to `--out`.
//!
//! ```text
//! cargo run --release -p ringquic-h3 --example client -- https://localhost:4433/file --ca cert.pem --out file
//! ```
//!
//! Exits with 0 only on `200 OK` (the file is written then, and only then); on any other status
//! or failure it prints `error: ...` and exits with 1.

mod common;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Buf;
use clap::Parser;
use common::BoxError;
use http::{StatusCode, Uri};
use tokio::io::AsyncWriteExt;

/// Fetch one URL over HTTP/3.
#[derive(Parser, Debug)]
struct Args {
    /// The URL: https://HOST:PORT/PATH (HOST a name or an IP address, [..] for IPv6)
    url: Uri,
    /// CA certificate(s), PEM, that the server's certificate must chain to
    #[arg(long)]
    ca: PathBuf,
    /// Where the body goes (written only on 200)
    #[arg(long)]
    out: PathBuf,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout);
    let url = args.url.clone();
    let result = match tokio::time::timeout(timeout, run(args)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs()).into()),
    };
    match result {
        Ok(bytes) => eprintln!("200 OK: {bytes} bytes"),
        Err(e) => {
            eprintln!("error: GET {url}: {e}");
            std::process::exit(1);
        }
    }
}

/// Fetch the URL; the body's length on 200.
async fn run(args: Args) -> Result<u64, BoxError> {
    if args.url.scheme_str() != Some("https") {
        return Err("the URL must be https://HOST:PORT/PATH".into());
    }
    let host = args.url.host().ok_or("the URL has no host")?;
    // `Uri::host` keeps an IPv6 address's brackets; neither DNS nor TLS wants them.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = args.url.port_u16().unwrap_or(443);
    let remote = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;

    let mut config = common::client_config(&common::load_certs(&args.ca)?)?;
    let mut transport = ringquic::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into()?));
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = ringquic::Endpoint::client(local)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(remote, &host)?
        .await
        .map_err(|e| format!("connecting to {remote}: {e}"))?;

    let (mut driver, mut send_request) = h3::client::new(ringquic_h3::Connection::new(conn)).await?;
    // The connection's control streams need polling for as long as it lives.
    let driver = tokio::spawn(async move { driver.wait_idle().await });

    let req = http::Request::get(args.url.clone()).body(())?;
    let mut stream = send_request.send_request(req).await?;
    match stream.finish().await {
        // A server may answer before it has read the request's end and stop the rest
        // (STOP_SENDING, RFC 9114 §4.1.2); h3 reports that here. Its response still counts.
        Ok(()) | Err(h3::error::StreamError::RemoteTerminate { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let resp = stream.recv_response().await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("the server answered {}", resp.status()).into());
    }
    let expected: Option<u64> = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // The body goes to a temporary file beside `--out`, renamed into place only once it is
    // whole: a failed fetch leaves no partial file behind.
    let partial = args.out.with_extension("partial");
    let body = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        let mut received = 0u64;
        while let Some(mut chunk) = stream.recv_data().await? {
            received += chunk.remaining() as u64;
            file.write_all_buf(&mut chunk).await?;
        }
        file.flush().await?;
        if let Some(expected) = expected.filter(|&n| n != received) {
            return Err(format!("content-length {expected}, but the body had {received} bytes").into());
        }
        Ok::<_, BoxError>(received)
    }
    .await;
    let received = match body {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;

    // The last `SendRequest` gone, h3 closes the connection (H3_NO_ERROR); the endpoint then
    // sends the close before it goes.
    drop((stream, send_request));
    let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(received)
}
