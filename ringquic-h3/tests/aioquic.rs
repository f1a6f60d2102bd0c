//! An independent HTTP/3 stack: aioquic (Python), through `tests/aioquic_h3.py` (a client and
//! a file server on aioquic's `H3Connection`), against the example server and the example
//! client, bodies compared byte for byte, 404s and path escapes included.
//!
//! Without aioquic (`python3 -c "import aioquic"` fails) each test prints
//! `SKIPPED: aioquic not installed` and passes, unless `RINGQUIC_REQUIRE_AIOQUIC=1` (as in CI),
//! which makes that a failure.

mod common;

use std::{path::Path, process::Command};

use common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioquic_h3.py");

/// Whether the tests can run: aioquic importable, or a skip (a failure when it is required).
fn aioquic_available() -> bool {
    let importable = Command::new("python3")
        .args(["-c", "import aioquic"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if importable {
        return true;
    }
    if std::env::var("RINGQUIC_REQUIRE_AIOQUIC").as_deref() == Ok("1") {
        panic!("aioquic is required (RINGQUIC_REQUIRE_AIOQUIC=1) but `python3 -c 'import aioquic'` fails");
    }
    println!("SKIPPED: aioquic not installed");
    false
}

fn aioquic_client(url: &str, ca: &Path, out: &Path) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .arg("client")
        .arg(url)
        .arg("--ca")
        .arg(ca)
        .arg("--out")
        .arg(out)
        .args(["--timeout", "30"]);
    run(cmd, "aioquic client", 60)
}

#[test]
fn aioquic_client_against_example_server() {
    if !aioquic_available() {
        return;
    }
    let id = Identity::new();
    let files = Files::new("aioquic-client", &id);
    let (_server, addr) = start_example_server(&files);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", addr.port());

    let out = files.out("big.out");
    let (status, stderr) = aioquic_client(&url("/big.bin"), &files.cert, &out);
    assert!(status.success(), "aioquic GET /big.bin: {status}: {stderr}");
    assert_same_body(
        &std::fs::read(&out).expect("body"),
        &files.big,
        "aioquic GET /big.bin",
    );

    let out = files.out("small.out");
    let (status, stderr) = aioquic_client(&url("/sub%20dir/nested.txt"), &files.cert, &out);
    assert!(status.success(), "aioquic GET nested: {status}: {stderr}");
    assert_eq!(std::fs::read(&out).expect("body"), b"nested\n");

    for path in ["/missing.txt", ESCAPES[0], ESCAPES[1]] {
        let out = files.out("missing.out");
        let (status, stderr) = aioquic_client(&url(path), &files.cert, &out);
        assert!(
            !status.success() && stderr.contains("404"),
            "aioquic GET {path}: {status}: {stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn example_client_against_aioquic_server() {
    if !aioquic_available() {
        return;
    }
    let id = Identity::new();
    let files = Files::new("aioquic-server", &id);
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["server", "--listen", "127.0.0.1:0", "--cert"])
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--root")
        .arg(&files.root);
    let (_server, line) = Process::start(cmd, "aioquic server", "listening", 30);
    let addr = listening_addr(&line);
    let url = |path: &str| format!("https://{addr}{path}");

    let out = files.out("big.out");
    let (status, stderr) = example_client(&url("/big.bin"), &files.cert, &out);
    assert!(status.success(), "GET /big.bin from aioquic: {status}: {stderr}");
    assert_same_body(
        &std::fs::read(&out).expect("body"),
        &files.big,
        "GET /big.bin from aioquic",
    );

    for (path, want) in [
        ("/small.txt", &b"small file\n"[..]),
        ("/", b"<p>index</p>\n"),
        ("/empty", b""),
    ] {
        let out = files.out("small.out");
        let (status, stderr) = example_client(&url(path), &files.cert, &out);
        assert!(status.success(), "GET {path} from aioquic: {status}: {stderr}");
        assert_eq!(
            std::fs::read(&out).expect("body"),
            want,
            "GET {path} from aioquic"
        );
    }

    let out = files.out("missing.out");
    let (status, stderr) = example_client(&url("/missing.txt"), &files.cert, &out);
    assert_eq!(status.code(), Some(1), "GET /missing.txt from aioquic: {stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!out.exists());
}
