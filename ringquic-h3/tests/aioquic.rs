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

/// The aioquic script in `mode` (`client` or `server`); its further arguments are the example
/// programs'.
fn aioquic(mode: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT).arg(mode);
    cmd
}

fn aioquic_client(url: &str, ca: &Path, out: &Path) -> (std::process::ExitStatus, String) {
    run_client(aioquic("client"), "aioquic client", url, ca, out)
}

#[test]
fn aioquic_client_against_example_server() {
    if !aioquic_available() {
        return;
    }
    let files = Files::new("aioquic-client");
    let (_server, addr) = start_example_server(&files);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", addr.port());
    let fetch = Fetch(aioquic_client, &files);

    fetch.ok(&url("/big.bin"), "big.out", &files.big, "aioquic GET /big.bin");
    let nested = url("/sub%20dir/nested.txt");
    fetch.ok(&nested, "small.out", b"nested\n", "aioquic GET nested");

    for path in ["/missing.txt", ESCAPES[0], ESCAPES[1]] {
        fetch.not_found(&url(path), "missing.out", &format!("aioquic GET {path}"));
    }
}

#[test]
fn example_client_against_aioquic_server() {
    if !aioquic_available() {
        return;
    }
    let files = Files::new("aioquic-server");
    let (_server, addr) = start_file_server(aioquic("server"), "aioquic server", &files);
    let url = |path: &str| format!("https://{addr}{path}");
    let fetch = Fetch(example_client, &files);

    fetch.ok(
        &url("/big.bin"),
        "big.out",
        &files.big,
        "GET /big.bin from aioquic",
    );
    for (path, want) in [
        ("/small.txt", &b"small file\n"[..]),
        ("/", b"<p>index</p>\n"),
        ("/empty", b""),
    ] {
        fetch.ok(&url(path), "small.out", want, &format!("GET {path} from aioquic"));
    }

    let out = files.out("missing.out");
    let (status, stderr) = example_client(&url("/missing.txt"), &files.cert, &out);
    assert_eq!(status.code(), Some(1), "GET /missing.txt from aioquic: {stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!out.exists());
}
