//! Sends from the application's threads (`EndpointBuilder::app_thread_sends`, on by default on
//! Linux): requests leave without a handoff to the I/O thread, the I/O thread still learns
//! the timers of what they sent (a lost direct send is retransmitted on time), and a write
//! whose runtime ends, or is not driven, before the send ran still goes out.
#![cfg(target_os = "linux")]

use crate::common;
use common::impair::{Impair, ImpairedRelay};
use common::*;

use std::time::{Duration, Instant};

use ringquic::{Connection, Endpoint};

/// One request: open a stream, send `req`, finish, read the whole answer.
async fn request(conn: &Connection, req: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_all(req).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(1 << 16).await.expect("read")
}

/// Answer every request on `conn` with its bytes reversed, until the connection ends.
fn spawn_reverser(conn: Connection) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let Ok(mut data) = recv.read_to_end(1 << 16).await else {
                    return;
                };
                data.reverse();
                let _ = send.write_all(&data).await;
                let _ = send.finish();
            });
        }
    });
}

/// 400 requests from 8 concurrent loops, every answer checked.
async fn requests(conn: &Connection) {
    let loops = (0..8u8).map(|l| async move {
        for i in 0..50u8 {
            let req = [l, i, 1, 2, 3, 4, 5, 6];
            let mut want = req.to_vec();
            want.reverse();
            assert_eq!(request(conn, &req).await, want);
        }
    });
    futures::future::join_all(loops).await;
}

fn ends(b: ringquic::BackendKind, on: bool) -> (Endpoint, Endpoint) {
    pair_with(b, |s| s.app_thread_sends(on), |c| c.app_thread_sends(on))
}

/// On a tokio runtime both sides send their requests and answers themselves: the 8 loops'
/// requests of a round leave together in about one direct send (50 rounds), the I/O thread is
/// woken far less than once per request, and every answer is right.
/// With the setting off, nothing is sent directly.
#[tokio::test(flavor = "current_thread")]
async fn requests_and_answers_leave_from_the_application_thread() {
    for b in backends() {
        for on in [true, false] {
            let (server, client) = ends(b, on);
            within(30, async {
                let (server_side, conn) = connected(&server, &client).await;
                spawn_reverser(server_side);
                requests(&conn).await;
                let (c, s) = (client.io_stats(), server.io_stats());
                if on {
                    assert!(c.direct_sends >= 25, "{b}: client {c:?}");
                    assert!(s.direct_sends >= 25, "{b}: server {s:?}");
                    assert!(
                        c.app_wakeups < 200,
                        "{b}: client woke its I/O thread {} times",
                        c.app_wakeups
                    );
                    assert!(
                        c.bytes_sent >= 400 * 8,
                        "{b}: direct sends count in bytes_sent: {c:?}"
                    );
                } else {
                    assert_eq!((c.direct_sends, s.direct_sends), (0, 0), "{b}");
                }
                assert_eq!((c.direct_send_errors, s.direct_send_errors), (0, 0), "{b}");
                conn.close(0u32.into(), b"done");
                client.wait_idle().await;
            })
            .await;
        }
    }
}

/// A request sent directly while the I/O thread sleeps long (no direct send for well over
/// `DIRECT_ACTIVE`) is lost: the I/O thread must have learned its loss-detection timer, so the
/// retransmission goes out after a PTO (tens of milliseconds here), not at the next event the
/// I/O thread would otherwise wait for (the 10 s idle timeout).
#[tokio::test(flavor = "current_thread")]
async fn a_lost_direct_send_is_retransmitted_on_time() {
    for b in backends() {
        let (server, client) = pair(b);
        let relay = ImpairedRelay::new(server.local_addr().unwrap(), Impair::none(), 31);
        within(30, async {
            let (server_side, conn) = connected_via(&server, &client, relay.addr).await;
            spawn_reverser(server_side);
            assert_eq!(request(&conn, b"warm").await, b"mraw");
            // Idle: the I/O threads go back to sleeping until their connection timers.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let direct_before = client.io_stats().direct_sends;
            relay.blackhole(true);
            let answer = tokio::spawn({
                let conn = conn.clone();
                async move {
                    let t = Instant::now();
                    (request(&conn, b"lost once").await, t.elapsed())
                }
            });
            tokio::time::sleep(Duration::from_millis(60)).await;
            relay.blackhole(false);
            let (got, took) = answer.await.unwrap();
            assert_eq!(got, b"ecno tsol");
            assert!(
                client.io_stats().direct_sends > direct_before,
                "{b}: the request was not sent directly, so this tested nothing"
            );
            assert!(
                took < Duration::from_secs(2),
                "{b}: the retransmission took {took:?}"
            );
            conn.close(0u32.into(), b"done");
            client.wait_idle().await;
        })
        .await;
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Endpoints on `b` and a settled connection, driven from a current-thread runtime; `data` is
/// written (and the stream finished) on a second runtime, which is dropped right after unless
/// `keep_writer` (then it stays alive, never driven again, until the end). The peer must
/// receive `data` within 3 s. Returns the client's `direct_sends` before and after.
fn written_on_another_runtime(
    b: ringquic::BackendKind,
    data: &'static [u8],
    keep_writer: bool,
) -> (u64, u64) {
    let main = current_thread();
    let (server, client) = main.block_on(async { ends(b, true) });
    let (server_side, conn) = main.block_on(async { connected(&server, &client).await });
    let send = main.block_on(async {
        // Let the handshake's last packets settle, so nothing else makes the I/O thread drive
        // the connection while the write waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.open_uni().await.unwrap()
    });
    let before = client.io_stats().direct_sends;
    let writer = current_thread();
    writer.block_on(async move {
        let mut send = send;
        send.write_all(data).await.unwrap();
        send.finish().unwrap();
    });
    let writer = keep_writer.then_some(writer);
    let got = main.block_on(within(3, async {
        let mut recv = server_side.accept_uni().await.unwrap();
        recv.read_to_end(1024).await.unwrap()
    }));
    assert_eq!(got, data, "{b}");
    let after = client.io_stats().direct_sends;
    main.block_on(async {
        conn.close(0u32.into(), b"done");
        within(10, client.wait_idle()).await;
    });
    drop(writer);
    (before, after)
}

/// A write schedules its send on the runtime it runs on; if that runtime is dropped before the
/// send ran, the I/O thread sends it instead: the peer still gets the whole stream.
#[test]
fn a_write_whose_runtime_ends_first_still_goes_out() {
    for b in backends() {
        let (before, after) = written_on_another_runtime(b, b"outlived its runtime", false);
        assert_eq!(after, before, "{b}: sent directly after all");
    }
}

/// A write on a current-thread runtime that nobody drives afterwards (`block_on` returned, the
/// thread went on to other work): its scheduled flush never runs, so the I/O thread sends for
/// it once the flush is overdue. The peer gets the stream while the writer's runtime sits idle.
#[test]
fn a_write_whose_runtime_is_not_driven_still_goes_out() {
    for b in backends() {
        written_on_another_runtime(b, b"written, then the runtime idles", true);
    }
}
