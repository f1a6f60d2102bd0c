//! The command line: `bench`, `server` and `client`.

use std::{
    io::{IsTerminal, Write},
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    bench,
    config::{self, Cipher, Identity, NetOptions, Trust},
    measure::{BenchOptions, WorkloadKind},
    perf::{self, ClientOptions, Request},
    proto,
    system::{Backend, Role, System, SystemKind},
    with_system,
};

/// Benchmarks ringquic against stock quinn, and speaks the QUIC perf protocol.
#[derive(Debug, Parser)]
#[command(name = "ringquic-perf", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every workload on ringquic and on stock quinn over loopback and print one table.
    Bench(BenchArgs),
    /// Run one bench phase described on stdin (used by `bench` to isolate phases).
    #[command(hide = true)]
    Phase,
    /// Serve the perf protocol (ALPN `perf`) until killed.
    Server(ServerArgs),
    /// Run perf requests against a server and check every byte count.
    Client(ClientArgs),
}

/// Settings shared by both ends of a connection.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Maximum UDP payload size in bytes (also the ceiling of MTU discovery).
    #[arg(long, default_value_t = 1472)]
    pub mtu: u16,
    /// Initial MTU in bytes, before path MTU discovery.
    #[arg(long, default_value_t = 1200)]
    pub initial_mtu: u16,
    /// TLS 1.3 cipher suite for 1-RTT packets.
    #[arg(long, value_enum, default_value_t = Cipher::Aes128Gcm)]
    pub cipher: Cipher,
}

impl NetArgs {
    fn options(&self) -> NetOptions {
        NetOptions {
            initial_mtu: self.initial_mtu,
            max_udp_payload: self.mtu,
            cipher: self.cipher,
        }
    }
}

/// Which ringquic backends `bench` runs (quinn always runs as the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// ringquic's default (io_uring where available).
    Default,
    /// io_uring only.
    Uring,
    /// The poll fallback only.
    Poll,
    /// Both io_uring and poll.
    All,
}

/// `bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Workloads, comma-separated: bulk, streams, rr, handshakes, datagrams, h3-rr, h3-bulk or all.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub workload: Vec<WorkloadKind>,
    /// ringquic backends to run.
    #[arg(long, value_enum, default_value_t = BenchBackend::Default)]
    pub backend: BenchBackend,
    /// Skip the `+local` rows: ringquic with the application's tasks on its I/O thread
    /// (`Endpoint::spawn`, thread-per-core). They run by default except for `datagrams`.
    #[arg(long)]
    pub no_local: bool,
    /// Skip the `+rt` rows: ringquic with its I/O loop as a task on the application's runtime
    /// (`EndpointBuilder::io_on_runtime`), no I/O thread; what `Endpoint::server`/`client`
    /// give inside a tokio runtime. Not run with --shards, --busy-poll, --pin-io-threads or
    /// --sqpoll, which need I/O threads.
    #[arg(long)]
    pub no_rt: bool,
    /// Skip the `ringquic/<backend>` rows (the I/O loop on its own I/O thread, the application
    /// on tokio), keeping the `+local` and `+rt` rows: with --no-quinn, to profile one of those
    /// alone.
    #[arg(long)]
    pub no_thread: bool,
    /// Repetitions of every phase (systems alternate); the table shows medians and spread.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Write every figure to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput over time to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// `bulk` download size (K/M/G suffixes, powers of 1024).
    #[arg(long, default_value = "1G", value_parser = size_arg)]
    pub size: u64,
    /// Length of the timed workloads (rr, handshakes, datagrams).
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    pub duration: Duration,
    /// `streams`: number of streams.
    #[arg(long, default_value_t = 1000)]
    pub streams: u64,
    /// `streams`: bytes per stream.
    #[arg(long, default_value = "1M", value_parser = size_arg)]
    pub stream_size: u64,
    /// `streams`: streams in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// `rr`: connections; `handshakes`: connection attempts in flight at once.
    #[arg(long, default_value_t = 16)]
    pub connections: u64,
    /// `rr`: concurrent request loops per connection.
    #[arg(long, default_value_t = 4)]
    pub rr_streams: u64,
    /// `rr`: request and response size.
    #[arg(long, default_value = "64", value_parser = size_arg)]
    pub rr_size: u64,
    /// `datagrams`: payload size (capped at what the path allows).
    #[arg(long, default_value = "1024", value_parser = size_arg)]
    pub datagram_size: u64,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "120s", value_parser = duration_arg)]
    pub timeout: Duration,
    /// Run stock quinn only (no ringquic).
    #[arg(long)]
    pub quinn_only: bool,
    /// Run ringquic only (no quinn, so no ratios): for profiling one system at a time.
    #[arg(long, conflicts_with = "quinn_only")]
    pub no_quinn: bool,
    /// ringquic: busy-poll the I/O thread this long before it sleeps (e.g. 50us; 0 = off).
    #[arg(long, value_parser = duration_arg)]
    pub busy_poll: Option<Duration>,
    /// ringquic: pin the client's I/O thread to CPU 0 and the server's to CPU 1.
    #[arg(long)]
    pub pin_io_threads: bool,
    /// ringquic: io_uring SQPOLL with this idle time (e.g. 10ms).
    #[arg(long, value_parser = duration_arg)]
    pub sqpoll: Option<Duration>,
    /// ringquic: zero-copy receive threshold in bytes (0 = always, default 16K).
    #[arg(long, value_parser = size_arg)]
    pub zero_copy_threshold: Option<u64>,
    /// ringquic: send GSO batches of at least this many bytes with SENDMSG_ZC (e.g. 16K).
    #[arg(long, value_parser = size_arg)]
    pub send_zero_copy: Option<u64>,
    /// ringquic: every send through the I/O thread, none from the application's threads
    /// (`EndpointBuilder::app_thread_sends(false)`), to measure what they buy.
    #[arg(long)]
    pub no_app_thread_sends: bool,
    /// ringquic: serve with this many I/O threads on the server's address
    /// (`EndpointBuilder::shards`; Linux; 0 = one per CPU). Reports each server thread's CPU.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Never draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Run all phases in this process instead of one child process per phase.
    #[arg(long)]
    pub in_process: bool,
    /// Network settings.
    #[command(flatten)]
    pub net: NetArgs,
}

/// Which implementation `server` and `client` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Implementation {
    /// ringquic.
    Ringquic,
    /// Stock quinn on tokio (for comparisons and interop checks).
    Quinn,
}

/// Options shared by `server` and `client`.
#[derive(Debug, Clone, Args)]
pub struct SystemArgs {
    /// ringquic backend (`uring` or `poll`); ringquic's default when absent.
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Which QUIC implementation to run.
    #[arg(long, value_enum, default_value_t = Implementation::Ringquic)]
    pub system: Implementation,
}

impl SystemArgs {
    fn kind(&self) -> Result<SystemKind> {
        match (self.system, self.backend) {
            (Implementation::Quinn, Some(_)) => bail!("--backend applies to ringquic only"),
            (Implementation::Quinn, None) => Ok(SystemKind::Quinn),
            (Implementation::Ringquic, b) => Ok(SystemKind::Ringquic(b)),
        }
    }
}

/// `server` options.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// Certificate chain (PEM); without it a self-signed certificate for `localhost` is made.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Implementation and backend.
    #[command(flatten)]
    pub system: SystemArgs,
    /// ringquic: serve with this many I/O threads on the address (`EndpointBuilder::shards`;
    /// Linux; 0 = one per CPU).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// ringquic: serve on the endpoint's I/O threads (`Endpoint::spawn`), each connection on
    /// its own shard (`Connection::spawn`): thread-per-core serving.
    #[arg(long)]
    pub local: bool,
    /// Print each thread's share of the server's CPU this often (e.g. 10s; 0 = never).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub report: Duration,
    /// Network settings.
    #[command(flatten)]
    pub net: NetArgs,
}

/// `client` options.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server address, `HOST:PORT`.
    pub addr: String,
    /// Bytes each request asks the server for (K/M/G suffixes, powers of 1024).
    #[arg(long, value_parser = size_arg)]
    pub download_size: u64,
    /// Bytes each request uploads.
    #[arg(long, default_value = "0", value_parser = size_arg)]
    pub upload_size: u64,
    /// Number of requests.
    #[arg(long, default_value_t = 1)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u64,
    /// Trust this certificate (PEM: the server's own or its CA).
    #[arg(long, conflicts_with = "insecure")]
    pub cert: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Name to check the certificate against (default: the host in ADDR, or `localhost`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Use unidirectional streams (answers come on new server streams).
    #[arg(long)]
    pub uni: bool,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Implementation and backend.
    #[command(flatten)]
    pub system: SystemArgs,
    /// Network settings.
    #[command(flatten)]
    pub net: NetArgs,
}

fn size_arg(s: &str) -> Result<u64, String> {
    proto::parse_size(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    proto::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the command line; the process exit code follows the result.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(args) => run_bench(&args),
        Command::Phase => bench::phase_main(),
        Command::Server(args) => run_server(&args),
        Command::Client(args) => run_client(&args),
    }
}

/// The systems a `bench` invocation compares.
pub fn bench_systems(args: &BenchArgs) -> Vec<SystemKind> {
    let mut systems = vec![SystemKind::Quinn];
    if args.quinn_only || !cfg!(feature = "ringquic") {
        return systems;
    }
    match args.backend {
        BenchBackend::Default => systems.push(SystemKind::Ringquic(None)),
        BenchBackend::Uring => systems.push(SystemKind::Ringquic(Some(Backend::Uring))),
        BenchBackend::Poll => systems.push(SystemKind::Ringquic(Some(Backend::Poll))),
        BenchBackend::All => systems.extend([
            SystemKind::Ringquic(Some(Backend::Uring)),
            SystemKind::Ringquic(Some(Backend::Poll)),
        ]),
    }
    if args.no_quinn {
        systems.retain(|s| !matches!(s, SystemKind::Quinn));
    }
    let ringquic: Vec<_> = systems
        .iter()
        .filter_map(|s| match s {
            SystemKind::Ringquic(b) => Some(*b),
            _ => None,
        })
        .collect();
    if !args.no_local {
        // The same ringquic backends again, with the application on the I/O thread.
        systems.extend(ringquic.iter().map(|b| SystemKind::RingquicLocal(*b)));
    }
    // (A loop on the runtime is one shard: not with --shards.) Also busy-poll, pinning and
    // SQPOLL belong to an I/O thread.
    let tuned = args.shards != 1 || args.busy_poll.is_some() || args.pin_io_threads || args.sqpoll.is_some();
    if !args.no_rt && !tuned {
        // And with the I/O loop on the application's runtime: the default inside a runtime.
        systems.extend(ringquic.iter().map(|b| SystemKind::RingquicRuntime(*b)));
    }
    if args.no_thread {
        systems.retain(|s| !matches!(s, SystemKind::Ringquic(_)));
    }
    systems
}

/// The bench options a `bench` invocation describes.
pub fn bench_options(args: &BenchArgs) -> BenchOptions {
    BenchOptions {
        workloads: WorkloadKind::expand(&args.workload),
        systems: bench_systems(args),
        runs: args.runs,
        size: args.size,
        streams: args.streams,
        stream_size: args.stream_size,
        concurrency: args.concurrency,
        connections: args.connections,
        rr_streams: args.rr_streams,
        rr_size: args.rr_size,
        duration: args.duration,
        datagram_size: usize::try_from(args.datagram_size).unwrap_or(usize::MAX),
        net: args.net.options(),
        phase_timeout: args.timeout,
        progress: !args.no_progress && std::io::stdout().is_terminal(),
        isolate: !args.in_process,
        ringquic: crate::system::RingquicTuning {
            busy_poll_us: args.busy_poll.map_or(0, |d| d.as_micros() as u64),
            pin_io_threads: args.pin_io_threads,
            sqpoll_idle_ms: args.sqpoll.map(|d| d.as_millis() as u64),
            zero_copy_threshold: args
                .zero_copy_threshold
                .map(|z| usize::try_from(z).unwrap_or(usize::MAX)),
            send_zero_copy_threshold: args
                .send_zero_copy
                .map(|z| usize::try_from(z).unwrap_or(usize::MAX)),
            no_app_thread_sends: args.no_app_thread_sends,
            shards: args.shards,
        },
    }
}

fn run_bench(args: &BenchArgs) -> Result<()> {
    let opts = bench_options(args);
    let report = bench::run(&opts)?;
    print!("{}", report.table());
    std::io::stdout().flush()?;
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.svg {
        report.write_svg(path)?;
    }
    if report.any_failed() {
        bail!("some phases failed (see the table)");
    }
    Ok(())
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")
}

fn run_server(args: &ServerArgs) -> Result<()> {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
        _ => Identity::self_signed(&["localhost"])?,
    };
    let net = args.net.options();
    let server_config = config::server_config(&identity, &net)?;
    let endpoint_config = config::endpoint_config(&net)?;
    let kind = match (args.system.kind()?, args.local) {
        (SystemKind::Quinn, _) if args.shards != 1 || args.local => {
            bail!("--shards and --local apply to ringquic only")
        }
        (SystemKind::Ringquic(b), true) => SystemKind::RingquicLocal(b),
        (kind, _) => kind,
    };
    crate::system::set_ringquic_tuning(crate::system::RingquicTuning {
        shards: args.shards,
        ..crate::system::RingquicTuning::DEFAULTS
    });
    let rt = current_thread_runtime()?;
    let _guard = rt.enter();
    with_system!(kind, sys => {
        let endpoint = sys.bind(endpoint_config, Role::Server(server_config), args.listen)?;
        let addr = endpoint.local_addr()?;
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        if !args.report.is_zero() {
            let every = args.report;
            std::thread::Builder::new()
                .name("perf-report".into())
                .spawn(move || report_thread_shares(every))
                .context("starting the report thread")?;
        }
        rt.block_on(sys.host(&endpoint, perf::serve(endpoint.clone())))?;
        Ok(())
    })
}

/// Every `every`, one line: how the process's CPU over the last interval spread over its
/// threads (the runtime thread, each shard's I/O thread), busiest first. Runs until the
/// process ends (the server runs until killed).
fn report_thread_shares(every: Duration) {
    // CPU seconds so far of each thread but this one, by thread id, with its name.
    let sample = || -> std::collections::HashMap<u32, (String, f64)> {
        crate::usage::each_thread_cpu(&crate::usage::thread_ids())
            .into_iter()
            .filter(|(_, name, _)| name != "perf-report")
            .map(|(tid, name, cpu)| (tid, (name, cpu.total())))
            .collect()
    };
    // The first report covers its own interval too, not the threads' whole lives.
    let mut before = sample();
    loop {
        std::thread::sleep(every);
        let now = sample();
        let mut shares: Vec<(&str, f64)> = now
            .iter()
            .map(|(tid, (name, total))| (name.as_str(), total - before.get(tid).map_or(0.0, |b| b.1)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        let sum: f64 = shares.iter().map(|(_, d)| d).sum();
        let line = if shares.is_empty() {
            format!("server CPU over the last {every:?}: idle")
        } else {
            let parts: Vec<String> = shares
                .iter()
                .map(|(n, d)| format!("{n} {:.0}%", 100.0 * d / sum))
                .collect();
            format!(
                "server CPU over the last {every:?}: {sum:.2} s over {} threads: {}",
                shares.len(),
                parts.join(", ")
            )
        };
        // Written, not printed: once nobody reads the server's output, the reports stop.
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return;
        }
        drop(out);
        before = now;
    }
}

/// Resolves `HOST:PORT` and picks the certificate name to check.
pub fn resolve(addr: &str, server_name: Option<&str>) -> Result<(SocketAddr, String)> {
    let resolved = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{addr:?} resolved to no address"))?;
    let name = match server_name {
        Some(n) => n.to_owned(),
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
                "localhost".to_owned()
            } else {
                host.to_owned()
            }
        }
    };
    Ok((resolved, name))
}

fn run_client(args: &ClientArgs) -> Result<()> {
    let (server, server_name) = resolve(&args.addr, args.server_name.as_deref())?;
    let trust = match (&args.cert, args.insecure) {
        (Some(path), _) => Trust::Roots(config::load_certs(path)?),
        (None, true) => Trust::Insecure,
        (None, false) => bail!(
            "no way to check the server's certificate: pass --cert PEM (its certificate or CA) \
             or --insecure"
        ),
    };
    let net = args.net.options();
    let client_config = config::client_config(&trust, &net)?;
    let endpoint_config = config::endpoint_config(&net)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let opts = ClientOptions {
        server_name,
        request: Request {
            upload: args.upload_size,
            download: args.download_size,
            uni: args.uni,
        },
        requests: args.requests,
        concurrency: args.concurrency,
    };
    let rt = current_thread_runtime()?;
    let _guard = rt.enter();
    let report = with_system!(args.system.kind()?, sys => {
        let endpoint = sys.bind(endpoint_config, Role::Client(client_config), bind)?;
        rt.block_on(perf::run_client(&endpoint, server, &opts))
    })?;
    println!("{}", report.summary());
    if let Some(path) = &args.json {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(file, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    perf::verdict(&report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let cli = Cli::parse_from(["ringquic-perf", "bench"]);
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        let opts = bench_options(&args);
        assert_eq!(opts.workloads, WorkloadKind::EVERY.to_vec());
        assert_eq!(opts.size, 1 << 30);
        assert_eq!(opts.net.initial_mtu, 1200);
        assert_eq!(opts.net.max_udp_payload, 1472);
        assert_eq!(opts.net.cipher, Cipher::Aes128Gcm);
        assert_eq!(opts.systems[0], SystemKind::Quinn);
    }

    #[test]
    fn bench_flags() {
        let cli = Cli::parse_from([
            "ringquic-perf",
            "bench",
            "--workload",
            "rr,bulk",
            "--size",
            "4M",
            "--duration",
            "1s",
            "--backend",
            "all",
            "--cipher",
            "chacha20",
            "--mtu",
            "1400",
        ]);
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        let opts = bench_options(&args);
        assert_eq!(opts.workloads, vec![WorkloadKind::Bulk, WorkloadKind::Rr]);
        assert_eq!(opts.size, 4 << 20);
        assert_eq!(opts.duration, Duration::from_secs(1));
        assert_eq!(opts.net.cipher, Cipher::Chacha20);
        assert_eq!(opts.net.max_udp_payload, 1400);
        if cfg!(feature = "ringquic") {
            // quinn, ringquic/uring, ringquic/poll, both again with the application on the
            // I/O thread, and both with the I/O loop on the application's runtime.
            assert_eq!(opts.systems.len(), 7);
            assert!(opts
                .systems
                .contains(&SystemKind::RingquicLocal(Some(Backend::Poll))));
            assert!(opts
                .systems
                .contains(&SystemKind::RingquicRuntime(Some(Backend::Uring))));
        }
    }

    #[test]
    fn client_flags() {
        let cli = Cli::try_parse_from([
            "ringquic-perf",
            "client",
            "127.0.0.1:4433",
            // Both of clap's forms: `--flag=value` and `--flag value`.
            "--download-size=1G",
            "--upload-size=64K",
            "--requests",
            "8",
            "--concurrency",
            "4",
            "--insecure",
            "--backend",
            "poll",
        ])
        .unwrap();
        let Command::Client(args) = cli.command else {
            panic!("not client")
        };
        assert_eq!(args.download_size, 1 << 30);
        assert_eq!(args.upload_size, 64 << 10);
        assert_eq!(
            args.system.kind().unwrap(),
            SystemKind::Ringquic(Some(Backend::Poll))
        );
        assert!(Cli::try_parse_from(["ringquic-perf", "client", "x:1", "--download-size", "1Q"]).is_err());
        assert!(Cli::try_parse_from([
            "ringquic-perf",
            "client",
            "x:1",
            "--download-size",
            "1",
            "--insecure",
            "--cert",
            "c.pem"
        ])
        .is_err());
    }

    #[test]
    fn server_needs_cert_and_key_together() {
        assert!(Cli::try_parse_from(["ringquic-perf", "server", "--cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from([
            "ringquic-perf",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            "c.pem",
            "--key",
            "k.pem"
        ])
        .is_ok());
    }

    #[test]
    fn names_from_addresses() {
        let (addr, name) = resolve("127.0.0.1:4433", None).unwrap();
        assert_eq!(addr.port(), 4433);
        assert_eq!(name, "localhost");
        let (_, name) = resolve("localhost:4433", None).unwrap();
        assert_eq!(name, "localhost");
        let (_, name) = resolve("[::1]:4433", Some("example")).unwrap();
        assert_eq!(name, "example");
        assert!(resolve("no-port", None).is_err());
    }
}
