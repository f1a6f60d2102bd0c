//! The example programs as processes: the example client fetching from the example server
//! (a 3 MiB file byte for byte, a file in a directory whose name needs escaping, a directory's
//! index), its exit status and message on a 404 and on an untrusted certificate, and the
//! server refusing every path that would leave its root.

mod common;

use common::*;

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

#[test]
fn example_client_fetches_from_example_server() {
    let files = Files::new("examples");
    let (_server, addr) = start_example_server(&files);
    let fetch = Fetch(example_client, &files);

    fetch.ok(&url(addr, "/big.bin"), "big.out", &files.big, "GET /big.bin");
    for (path, want) in [
        ("/small.txt", &b"small file\n"[..]),
        ("/sub%20dir/nested.txt", b"nested\n"),
        ("/", b"<p>index</p>\n"),
        ("/empty", b""),
    ] {
        fetch.ok(&url(addr, path), "small.out", want, &format!("GET {path}"));
    }
}

#[test]
fn example_client_fails_clearly_on_404_and_bad_certificate() {
    let files = Files::new("examples-errors");
    let (_server, addr) = start_example_server(&files);

    let out = files.out("missing.out");
    let (status, stderr) = example_client(&url(addr, "/missing.txt"), &files.cert, &out);
    assert_eq!(status.code(), Some(1), "GET /missing.txt: {stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("404"),
        "a clear message: {stderr}"
    );
    assert!(!out.exists(), "no body file on a 404");

    // A CA that did not sign the server's certificate: the handshake fails, and says so.
    let other_dir = files.out("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let (other_ca, _) = Identity::new().write_pem(&other_dir);
    let (status, stderr) = example_client(&url(addr, "/small.txt"), &other_ca, &out);
    assert_eq!(status.code(), Some(1), "untrusted certificate: {stderr}");
    assert!(
        stderr.contains("error:") && stderr.to_lowercase().contains("certificate"),
        "the message names the certificate: {stderr}"
    );
    assert!(!out.exists(), "no body file on a failed handshake");

    // A CA file that is not PEM.
    let (status, stderr) = example_client(&url(addr, "/small.txt"), &files.out("nonexistent.pem"), &out);
    assert_eq!(status.code(), Some(1), "missing CA file: {stderr}");
    assert!(
        stderr.contains("nonexistent.pem"),
        "the message names the file: {stderr}"
    );
}

#[test]
fn example_server_stays_inside_its_root() {
    let files = Files::new("examples-escape");
    let (_server, addr) = start_example_server(&files);
    let fetch = Fetch(example_client, &files);
    for path in ESCAPES {
        fetch.not_found(&url(addr, path), "escape.out", &format!("GET {path}"));
    }
}
