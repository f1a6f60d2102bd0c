//! Interoperability with stock quinn 0.11, both ways, with a transfer.
use crate::common;
use common::*;

const SIZE: usize = 8 << 20;

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

/// Serve one bidirectional stream of `$conn` (a quinn or a ringquic connection): read it to its
/// end, write it back, finish; evaluates to what was read.
macro_rules! echo_stream {
    ($conn:expr) => {{
        let (mut send, mut recv) = $conn.accept_bi().await.unwrap();
        let data = recv.read_to_end(SIZE).await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        data
    }};
}

/// Send [`payload`] on a new bidirectional stream of `$conn` (a quinn or a ringquic
/// connection), finished, and check that it comes back whole (`$b` names the backend).
macro_rules! round_trip {
    ($conn:expr, $b:expr) => {{
        let (mut send, mut recv) = $conn.open_bi().await.unwrap();
        send.write_all(&payload()).await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(SIZE).await.unwrap();
        assert_eq!(back, payload(), "{}", $b);
    }};
}

#[tokio::test(flavor = "current_thread")]
async fn quinn_client_to_ringquic_server() {
    for b in backends() {
        let c = cert();
        let server = server_endpoint(b, server_config(&c), |s| s);
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let serve = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            assert_eq!(echo_stream!(conn), payload());
            conn.closed().await
        });
        let Some(mut client) = quinn_or_skip(quinn::Endpoint::client(localhost())) else {
            return;
        };
        client.set_default_client_config(client_config(&c));
        within(30, async {
            let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
            round_trip!(conn, b);
            conn.close(7u32.into(), b"bye");
            let err = serve.await.unwrap();
            match err {
                ringquic::ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, 7u32.into());
                    assert_eq!(&close.reason[..], b"bye");
                }
                other => panic!("{b}: unexpected close reason {other}"),
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ringquic_client_to_quinn_server() {
    for b in backends() {
        let c = cert();
        let served = quinn_serves_one(&c, |conn| async move {
            echo_stream!(conn);
            conn.closed().await
        });
        let Some((addr, serve)) = served else {
            return;
        };
        let client = client_endpoint(b, client_config(&c), |e| e);
        within(30, async {
            let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
            round_trip!(conn, b);
            conn.close(9u32.into(), b"done");
            let (err, _server) = serve.await.unwrap();
            match err {
                quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code, 9u32.into()),
                other => panic!("{b}: unexpected close reason {other}"),
            }
            client.wait_idle().await;
        })
        .await;
    }
}
