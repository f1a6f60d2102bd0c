//! The client of the example file server (`examples/server.rs`): fetches one URL and writes
//! the body to stdout or `--out`, exiting 0 only if the file was served.
//!
//! ```text
//! cargo run --example client -- --ca ringquic-example-cert.pem https://localhost:4433/README.md
//! ```

use std::{net::ToSocketAddrs, path::PathBuf, sync::Arc, time::Instant};

use clap::Parser;
use ringquic::{
    rustls::pki_types::{pem::PemObject, CertificateDer},
    ClientConfig, Endpoint, ReadError, ReadToEndError, VarInt,
};

#[derive(Parser, Debug)]
#[command(about = "Fetch a file from the example server over QUIC (ringquic's example client)")]
struct Opt {
    /// `https://HOST:PORT/PATH`.
    url: String,
    /// The server's certificate, or the CA that signed it (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Write the body here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Largest body accepted.
const MAX_BODY: usize = 1 << 30;

fn main() {
    if let Err(e) = run(Opt::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(opt: Opt) -> Result<(), Box<dyn std::error::Error>> {
    let rest = opt
        .url
        .strip_prefix("https://")
        .ok_or("the URL must start with https://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;

    let mut roots = ringquic::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&opt.ca)? {
        roots.add(cert?)?;
    }
    let mut tls = ringquic::rustls::ClientConfig::builder_with_provider(Arc::new(
        ringquic::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&ringquic::rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"hq-29".to_vec()];
    let crypto = ringquic::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let config = ClientConfig::new(Arc::new(crypto));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bind = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let endpoint = Endpoint::client(bind.parse()?)?;
        let start = Instant::now();
        let conn = endpoint.connect_with(config, addr, host)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(format!("GET /{path}\r\n").as_bytes()).await?;
        send.finish()?;
        let body = match recv.read_to_end(MAX_BODY).await {
            Ok(body) => body,
            Err(ReadToEndError::Read(ReadError::Reset(code))) if code == VarInt::from_u32(404) => {
                return Err(format!("/{path}: not found").into());
            }
            Err(e) => return Err(e.into()),
        };
        eprintln!("{} bytes in {:?}", body.len(), start.elapsed());
        match &opt.out {
            Some(file) => std::fs::write(file, &body)?,
            None => std::io::Write::write_all(&mut std::io::stdout(), &body)?,
        }
        conn.close(VarInt::from_u32(0), b"done");
        endpoint.wait_idle().await;
        Ok(())
    })
}
