//! The example file server and client (`examples/server.rs`, `examples/client.rs`), run as a
//! user runs them: the server on a temporary directory with a self-signed certificate, the
//! client fetching a file (compared byte for byte) and a missing one (exit status 1). `cargo
//! test` builds the examples next to the test binaries.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[path = "../common/example_bin.rs"]
mod example_bin;

/// Kills the server when the test ends, however it ends.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn example_server_serves_files_to_example_client() {
    let server = example_bin::example_binary(env!("CARGO_MANIFEST_DIR"), "server");
    let client = example_bin::example_binary(env!("CARGO_MANIFEST_DIR"), "client");
    let dir = std::env::temp_dir().join(format!("ringquic-examples-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("sub/file.bin"), &body).unwrap();
    std::fs::write(dir.join("secret"), b"outside the root").unwrap();
    let cert = dir.join("cert.pem");

    let mut child = Command::new(&server)
        .args(["--listen", "127.0.0.1:0", "--cert-out"])
        .arg(&cert)
        .arg(&root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    // The line `listening on ADDR (...)`, within 30 s.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                return;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server said it listens");
    let port = addr.rsplit(':').next().unwrap();

    let fetch = |path: &str, out: &PathBuf| {
        let start = Instant::now();
        let status = Command::new(&client)
            .arg(format!("https://localhost:{port}/{path}"))
            .arg("--ca")
            .arg(&cert)
            .arg("--out")
            .arg(out)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the client took too long"
        );
        status
    };
    let out = dir.join("got.bin");
    assert!(fetch("sub/file.bin", &out).success());
    assert_eq!(std::fs::read(&out).unwrap(), body);
    let missing = dir.join("missing.bin");
    assert_eq!(fetch("nope.bin", &missing).code(), Some(1));
    assert!(!missing.exists());
    // No escaping the root.
    assert_eq!(fetch("../secret", &missing).code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
