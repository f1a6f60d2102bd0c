//! HTTP/3 with both ends on ringquic-h3 (on each Linux backend): requests one after the other
//! and at once, a 4 MiB body and a 1 MiB upload compared byte for byte, an empty body, a 404;
//! the peer's stream and connection errors as h3 sees them; HTTP datagrams.

mod common;

use std::{future::Future, time::Duration};

use bytes::Bytes;
use common::*;
use h3::error::Code;
use http::{Method, Request, Response, StatusCode};
use ringquic::BackendKind;

/// The endpoints a test keeps open while their connections run.
type Endpoints = (ringquic::Endpoint, ringquic::Endpoint);

/// Both ends on ringquic, on `backend`, connected: the endpoints, the server's h3 connection (not
/// yet built) and the client's.
async fn connected(backend: BackendKind) -> (Endpoints, ringquic_h3::Connection, ringquic_h3::Connection) {
    let id = Identity::new();
    let (server, client) = (ringquic_server(&id, backend), ringquic_client(&id, backend));
    let addr = server.local_addr().expect("server address");
    let (s, c) = handshake(server.accept(), || client.connect(addr, "localhost")).await;
    ((server, client), s.into(), c.into())
}

async fn site_exchange(backend: BackendKind) {
    let (_endpoints, s, c) = connected(backend).await;
    // The last request sender is gone when `exercise` ends: h3 closes with H3_NO_ERROR, which
    // the server must see as the clean end it is (ApplicationClose with that code).
    common::site_exchange(c, s).await;
}

/// `test` within `secs` on a connected pair on the first backend: on the server's h3 connection
/// (not yet built) and the client's, while the endpoints stay open.
async fn on_a_connected_pair<F: Future<Output = ()>>(
    secs: u64,
    test: impl FnOnce(ringquic_h3::Connection, ringquic_h3::Connection) -> F,
) {
    within(secs, async {
        let (_endpoints, s, c) = connected(backends()[0]).await;
        test(s, c).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_big_bodies_and_404() {
    on_every_backend(60, site_exchange).await;
}

/// The current-thread runtime as well: nothing in the mapping may need a second thread.
#[test]
fn requests_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(within(60, site_exchange(backends()[0])));
}

/// The server's next request, answered with a 200 whose body is still to send.
async fn next_request(
    conn: &mut h3::server::Connection<ringquic_h3::Connection, Bytes>,
) -> h3::server::RequestStream<ringquic_h3::BidiStream<Bytes>, Bytes> {
    let (_, mut stream) = conn
        .accept()
        .await
        .unwrap()
        .unwrap()
        .resolve_request()
        .await
        .unwrap();
    stream.send_response(Response::new(())).await.unwrap();
    stream
}

/// A client that stops reading a response mid-body: the server's next write fails with the
/// client's code (STOP_SENDING → `StreamTerminated`), and a request the server resets reaches
/// the client as an error, not as a short body. The connection lives on for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_reset_streams() {
    on_a_connected_pair(60, |s, c| async move {
        let server_task = tokio::spawn(async move {
            let mut conn = h3::server::Connection::<_, Bytes>::new(s)
                .await
                .expect("h3 server");
            // 1: an endless body the client will stop.
            let mut stream = next_request(&mut conn).await;
            let mut error = None;
            for _ in 0..100_000 {
                if let Err(e) = stream.send_data(Bytes::from(vec![7u8; 16 * 1024])).await {
                    error = Some(e);
                    break;
                }
            }
            let error = error.expect("writes went on after the client stopped the stream");
            // 2: reset in the middle of a body.
            let mut stream = next_request(&mut conn).await;
            stream.send_data(Bytes::from_static(b"partial")).await.unwrap();
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
            // 3: the connection still serves.
            let mut stream = next_request(&mut conn).await;
            stream.send_data(Bytes::from_static(b"ok")).await.unwrap();
            stream.finish().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.accept()).await;
            error
        });
        let (mut driver, mut send) = h3::client::new(c).await.expect("h3 client");
        let driving = tokio::spawn(async move { driver.wait_idle().await });
        let get = || Request::get("https://localhost/").body(()).unwrap();

        let mut stream = send.send_request(get()).await.unwrap();
        stream.finish().await.unwrap();
        assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
        assert!(stream.recv_data().await.unwrap().is_some(), "some of the body");
        stream.stop_sending(Code::H3_REQUEST_CANCELLED);
        drop(stream);

        let mut stream = send.send_request(get()).await.unwrap();
        stream.finish().await.unwrap();
        // QUIC may drop what was not read yet when a RESET_STREAM arrives: the error can come
        // before the response as well as in the middle of the body.
        let outcome = async {
            stream.recv_response().await?;
            for _ in 0..10 {
                if stream.recv_data().await?.is_none() {
                    break;
                }
            }
            Ok::<_, h3::error::StreamError>(())
        }
        .await;
        let e = outcome.expect_err("a reset stream read as if it had ended cleanly");
        assert!(
            e.to_string().contains("H3_REQUEST_CANCELLED") || format!("{e:?}").contains("0x10c"),
            "reset seen with the server's code: {e:?}"
        );

        let (status, body) = fetch(&mut send, Method::GET, "/", None).await.unwrap();
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));

        drop(send); // h3 closes the connection: the server's last accept ends
        let server_error = server_task.await.expect("server task");
        let text = format!("{server_error:?} {server_error}");
        assert!(
            text.contains("H3_REQUEST_CANCELLED") || text.contains("0x10c") || text.contains("268"),
            "the server's failed write names the client's code: {text}"
        );
        let _ = driving.await;
    })
    .await;
}

/// A connection the peer closes with an h3 error code: h3 on the other side reports that code
/// (ApplicationClose), and pending calls end instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closes_with_an_error_code() {
    on_a_connected_pair(30, |s, c| async move {
        let raw = s.inner().clone();
        let server_task = tokio::spawn(async move {
            let mut conn = h3::server::Connection::<_, Bytes>::new(s)
                .await
                .expect("h3 server");
            conn.accept()
                .await
                .err()
                .expect("accept fails once the client closes")
        });
        let (mut driver, _send) = h3::client::new(c.clone()).await.expect("h3 client");
        let driving = tokio::spawn(async move { driver.wait_idle().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.inner().close(ringquic::VarInt::from_u32(0x102), b"bye"); // H3_INTERNAL_ERROR
        let seen = server_task.await.expect("server task");
        match &seen {
            h3::error::ConnectionError::Remote(h3::quic::ConnectionErrorIncoming::ApplicationClose {
                error_code,
            }) => assert_eq!(*error_code, 0x102),
            other => panic!("expected the client's ApplicationClose(0x102), got {other:?}"),
        }
        assert!(raw.close_reason().is_some());
        let _ = driving.await;
    })
    .await;
}

/// HTTP datagrams (RFC 9297) over ringquic's QUIC datagrams: the client sends some bound to a
/// request stream, the server echoes each back on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_datagrams_echo() {
    on_a_connected_pair(30, |s, c| {
        datagrams_echoed(datagram_client(c), datagram_echo_server(s))
    })
    .await;
}

/// Every type here can be sent and shared between threads (as h3-quinn's can).
#[test]
fn types_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<ringquic_h3::Connection>();
    check::<ringquic_h3::OpenStreams>();
    check::<ringquic_h3::BidiStream<Bytes>>();
    check::<ringquic_h3::SendStream<Bytes>>();
    check::<ringquic_h3::RecvStream>();
    check::<ringquic_h3::datagram::SendDatagramHandler>();
    check::<ringquic_h3::datagram::RecvDatagramHandler>();
}
