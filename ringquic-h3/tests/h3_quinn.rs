//! ringquic-h3 against stock h3-quinn 0.0.10 (on quinn 0.11), both ways: the same exchange as
//! `ringquic_h3.rs` (requests one after the other and at once, a 4 MiB body and a 1 MiB
//! upload byte for byte, an empty body, a 404) and HTTP datagrams.

mod common;

use common::*;

/// A ringquic client's connection to a quinn server, and the quinn server's.
async fn ringquic_to_quinn(
    id: &Identity,
    backend: ringquic::BackendKind,
) -> (
    ringquic::Connection,
    quinn::Connection,
    ringquic::Endpoint,
    quinn::Endpoint,
) {
    let server = quinn_server(id);
    let client = ringquic_client(id, backend);
    let addr = server.local_addr().expect("address");
    let (s, c) = tokio::join!(
        async {
            server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("quinn server handshake")
        },
        async {
            client
                .connect(addr, "localhost")
                .expect("connect")
                .await
                .expect("ringquic client handshake")
        }
    );
    (c, s, client, server)
}

/// A quinn client's connection to a ringquic server, and the ringquic server's.
async fn quinn_to_ringquic(
    id: &Identity,
    backend: ringquic::BackendKind,
) -> (
    quinn::Connection,
    ringquic::Connection,
    quinn::Endpoint,
    ringquic::Endpoint,
) {
    let server = ringquic_server(id, backend);
    let client = quinn_client(id);
    let addr = server.local_addr().expect("address");
    let (s, c) = tokio::join!(
        async {
            server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("ringquic server handshake")
        },
        async {
            client
                .connect(addr, "localhost")
                .expect("connect")
                .await
                .expect("quinn client handshake")
        }
    );
    (c, s, client, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringquic_h3_client_against_h3_quinn_server() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        within(60, async {
            let id = Identity::new();
            let (c, s, _client, _server) = ringquic_to_quinn(&id, backend).await;
            site_exchange(ringquic_h3::Connection::new(c), h3_quinn::Connection::new(s)).await;
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_quinn_client_against_ringquic_h3_server() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        within(60, async {
            let id = Identity::new();
            let (c, s, _client, _server) = quinn_to_ringquic(&id, backend).await;
            site_exchange(h3_quinn::Connection::new(c), ringquic_h3::Connection::new(s)).await;
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_ringquic_h3_client_h3_quinn_server() {
    within(30, async {
        let id = Identity::new();
        let (c, s, _client, _server) = ringquic_to_quinn(&id, backends()[0]).await;
        let echoing = tokio::spawn(datagram_echo_server(h3_quinn::Connection::new(s)));
        datagram_client(ringquic_h3::Connection::new(c))
            .await
            .expect("datagrams");
        echoing.await.expect("server task").expect("h3-quinn echo server");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_h3_quinn_client_ringquic_h3_server() {
    within(30, async {
        let id = Identity::new();
        let (c, s, _client, _server) = quinn_to_ringquic(&id, backends()[0]).await;
        let echoing = tokio::spawn(datagram_echo_server(ringquic_h3::Connection::new(s)));
        datagram_client(h3_quinn::Connection::new(c))
            .await
            .expect("datagrams");
        echoing
            .await
            .expect("server task")
            .expect("ringquic-h3 echo server");
    })
    .await;
}
