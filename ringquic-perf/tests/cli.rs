//! The built `ringquic-perf` binary: `server` and `client` across implementations, a client that
//! must fail with a clear message, and a smoke run of `bench` with tiny sizes that checks the
//! table, the JSON and the SVG. Every child process is bounded in time and uses loopback only.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_ringquic-perf");

/// A scratch directory unique to this test process and `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringquic-perf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, killing it after `limit`.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringquic-perf");
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr: {}",
                err.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A `ringquic-perf server` child, killed on drop.
struct Server {
    child: Child,
    addr: String,
    /// The lines it printed after `listening on`, as they come (read to its end, so the
    /// server never writes into a closed pipe). Kept even where no test reads it (the sharded
    /// server's test is Linux-only): while it lives, the reader drains the pipe.
    #[cfg_attr(not(all(feature = "ringquic", target_os = "linux")), allow(dead_code))]
    lines: std::sync::mpsc::Receiver<String>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed nothing");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, addr, lines }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(addr: &str, extra: &[&str]) -> Output {
    run(
        Command::new(BIN)
            .args([
                "client",
                addr,
                "--download-size",
                "1M",
                "--upload-size",
                "64K",
                "--requests",
                "8",
                "--concurrency",
                "4",
            ])
            .args(extra),
        Duration::from_secs(60),
    )
}

fn assert_client_ok(out: &Output) {
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("8/8 requests ok"), "{}", out.stdout);
}

#[test]
fn stock_quinn_server_and_client() {
    let server = Server::start(&["--system", "quinn"]);
    let dir = scratch("quinn");
    let json = dir.join("client.json");
    let out = client(
        &server.addr,
        &[
            "--system",
            "quinn",
            "--insecure",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_client_ok(&out);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["bytes_received"], 8u64 << 20);
    assert_eq!(report["bytes_sent"], 8u64 * (64 << 10));
    assert_eq!(report["requests_ok"], 8);
}

#[cfg(feature = "ringquic")]
#[test]
fn ringquic_server_with_both_clients() {
    for backend in ["uring", "poll"] {
        let server = Server::start(&["--backend", backend]);
        assert_client_ok(&client(&server.addr, &["--insecure"]));
        assert_client_ok(&client(&server.addr, &["--insecure", "--system", "quinn"]));
        assert_client_ok(&client(
            &server.addr,
            &["--insecure", "--backend", "poll", "--uni"],
        ));
    }
}

#[cfg(feature = "ringquic")]
#[test]
fn ringquic_client_against_stock_quinn_server_with_cert_files() {
    let dir = scratch("certs");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let server = Server::start(&["--system", "quinn", "--cert", cert_arg, "--key", key_arg]);
    assert_client_ok(&client(&server.addr, &["--cert", cert_arg]));
    assert_client_ok(&client(
        &server.addr,
        &[
            "--cert",
            cert_arg,
            "--server-name",
            "localhost",
            "--backend",
            "uring",
        ],
    ));
}

#[test]
fn client_fails_clearly() {
    let server = Server::start(&["--system", "quinn"]);
    let dir = scratch("wrong-cert");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let wrong = dir.join("other.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let out = client(
        &server.addr,
        &["--system", "quinn", "--cert", wrong.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(out.stderr.contains("connecting to"), "{}", out.stderr);

    let out = client(&server.addr, &["--system", "quinn"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--insecure"), "{}", out.stderr);
}

#[test]
fn bench_smoke() {
    let dir = scratch("bench");
    let (json, svg) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = run(
        Command::new(BIN).args([
            "bench",
            "--size",
            "4M",
            "--streams",
            "8",
            "--stream-size",
            "256K",
            "--duration",
            "500ms",
            // Two runs, so the systems still alternate and the table shows medians and spread;
            // the default three made this the suite's longest test (~50 s).
            "--runs",
            "2",
            "--connections",
            "4",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ]),
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let systems: &[&str] = if cfg!(feature = "ringquic") {
        &["quinn", "ringquic/", "+local", "+rt"]
    } else {
        &["quinn"]
    };
    for workload in [
        "bulk",
        "streams",
        "rr",
        "handshakes",
        "datagrams",
        "h3-rr",
        "h3-bulk",
    ] {
        for system in systems {
            if workload == "datagrams" && *system == "+local" {
                // The datagram workload does not run with the application on the I/O thread.
                continue;
            }
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.starts_with(workload) && l.contains(system)),
                "no {workload}/{system} row in:\n{}",
                out.stdout
            );
        }
    }
    assert!(out.stdout.contains("×quinn"), "{}", out.stdout);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let groups = report["groups"].as_array().unwrap();
    // Every workload on every system, except datagrams on the `+local` system.
    assert_eq!(groups.len(), 7 * systems.len() - usize::from(systems.len() > 1));
    for g in groups {
        let summary = &g["summary"];
        assert!(summary["figure"].as_f64().unwrap() > 0.0, "{g}");
        assert!(g["runs"][0]["error"].is_null(), "{g}");
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "bad svg");
}

/// `server --shards 2 --local` runs and reports how its CPU spread over its threads: four
/// clients at once (each one connection) get every answer, and a report names the I/O
/// threads. Asking quinn for shards is refused. (That `--local` serves each connection on its
/// own shard is `tests/bench.rs`'s `spawn_home` test: the few milliseconds of CPU these
/// clients cost are too coarse, in ticks of 10 ms, to tell the threads apart here.)
#[cfg(all(feature = "ringquic", target_os = "linux"))]
#[test]
fn sharded_server_reports_its_threads() {
    let server = Server::start(&["--shards", "2", "--local", "--report", "200ms"]);
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || client(&addr, &["--insecure"]))
        })
        .collect();
    for c in clients {
        assert_client_ok(&c.join().unwrap());
    }
    // The report covering the clients' work: at most a few intervals after they finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let busy = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = server.lines.recv_timeout(left) else {
            break None;
        };
        if line.contains("ringquic-io") {
            break Some(line);
        }
        seen.push(line);
    };
    drop(server);
    let busy = busy.unwrap_or_else(|| panic!("no report named an I/O thread: {seen:?}"));
    eprintln!("{busy}");
    assert!(busy.starts_with("server CPU over the last 200ms: "), "{busy}");

    let refused = run(
        Command::new(BIN).args(["server", "--system", "quinn", "--shards", "2"]),
        Duration::from_secs(30),
    );
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("ringquic only"), "{}", refused.stderr);
}
