//! `stream_scenarios!(crate)`: reading, writing, finishing, stopping, resetting, stream limits.

macro_rules! stream_scenarios {
    ($q:ident) => {
        /// Stream behaviours.
        mod streams {
            use std::{
                future::Future as _,
                pin::pin,
                sync::Arc,
                task::{Context, Poll, Waker},
            };

            use $q::{ConnectionError, Dir, ReadError, ReadExactError, ReadToEndError, StoppedError, VarInt, WriteError};

            use super::h::{self, imp};
            use crate::differential::support::*;

            fn code(n: u32) -> VarInt {
                VarInt::from_u32(n)
            }

            /// Written and finished data reads back whole; `stopped` then says `None` (all
            /// acknowledged); after the end, reads give `None` and `received_reset` `None`
            /// (quinn: read_after_close; quinn-proto: finish_stream_simple).
            #[tokio::test]
            async fn finish_then_read_to_end() {
                let p = h::pair().await;
                let mut s = p.client.open_uni().await.unwrap();
                s.write_all(b"goodbye!").await.unwrap();
                s.finish().unwrap();
                assert_eq!(within(5, "stopped after finish", s.stopped()).await, Ok(None), "{}", imp::NAME);
                // The stream was finished before the application accepts it.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let mut r = within(5, "accept_uni", p.server.accept_uni()).await.unwrap();
                assert_eq!(within(5, "read_to_end", r.read_to_end(100)).await.unwrap(), b"goodbye!");
                let mut buf = [0u8; 8];
                assert!(matches!(r.read(&mut buf).await, Ok(None)), "{}", imp::NAME);
                assert!(matches!(r.read_chunk(8, true).await, Ok(None)), "{}", imp::NAME);
                assert_eq!(within(5, "received_reset", r.received_reset()).await.ok(), Some(None), "{}", imp::NAME);
            }

            /// `read_to_end` over the limit is `TooLong`.
            #[tokio::test]
            async fn read_to_end_too_long() {
                let p = h::pair().await;
                let (_s, mut r) = h::uni_stream(&p, &[1u8; 100], true).await;
                let e = within(5, "read_to_end", r.read_to_end(50)).await;
                assert!(matches!(e, Err(ReadToEndError::TooLong)), "{}: {e:?}", imp::NAME);
            }

            /// `read_exact` on a stream that ends early is `FinishedEarly(n)` with `n` the
            /// number of bytes that were read (quinn's meaning).
            #[tokio::test]
            async fn read_exact_finished_early() {
                let p = h::pair().await;
                let (_s, mut r) = h::uni_stream(&p, b"abc", true).await;
                let mut buf = [0u8; 10];
                let e = within(5, "read_exact", r.read_exact(&mut buf)).await;
                assert!(matches!(e, Err(ReadExactError::FinishedEarly(3))), "{}: {e:?}", imp::NAME);
                assert_eq!(&buf[..3], b"abc");
            }

            /// Writing, or finishing again, after `finish` is `ClosedStream`.
            #[tokio::test]
            async fn write_after_finish_is_closed_stream() {
                let p = h::pair().await;
                let mut s = h::sent_uni(&p, b"x", true).await;
                let e = s.write(b"y").await;
                assert!(matches!(e, Err(WriteError::ClosedStream)), "{}: {e:?}", imp::NAME);
                assert!(s.finish().is_err(), "{}: second finish", imp::NAME);
            }

            /// A peer's `stop(9)`: `stopped` says `Some(9)`, writes fail with `Stopped(9)`,
            /// and `finish` is still harmless (quinn-proto: stop_stream, stop_before_finish).
            #[tokio::test]
            async fn write_after_peer_stop_is_stopped() {
                let p = h::pair().await;
                let (mut s, mut r) = h::uni_stream(&p, b"hi", false).await;
                let mut buf = [0u8; 2];
                within(5, "read_exact", r.read_exact(&mut buf)).await.unwrap();
                r.stop(code(9)).unwrap();
                assert!(r.stop(code(9)).is_err(), "{}: stop twice", imp::NAME);
                let st = within(5, "stopped", s.stopped()).await;
                assert!(matches!(st, Ok(Some(c)) if c == code(9)), "{}: {st:?}", imp::NAME);
                let e = s.write(b"more").await;
                assert!(matches!(e, Err(WriteError::Stopped(c)) if c == code(9)), "{}: {e:?}", imp::NAME);
                assert!(s.finish().is_ok(), "{}: finish after stop", imp::NAME);
            }

            /// A peer's `reset(5)`: reads fail with `Reset(5)`, `received_reset` says
            /// `Some(5)` (quinn-proto: reset_stream).
            #[tokio::test]
            async fn reading_a_reset_stream() {
                let p = h::pair().await;
                let (mut s, mut r) = h::uni_stream(&p, b"abc", false).await;
                s.reset(code(5)).unwrap();
                assert!(s.reset(code(5)).is_err(), "{}: reset twice", imp::NAME);
                let e = within(5, "read until reset", async {
                    let mut buf = [0u8; 16];
                    for _ in 0..100 {
                        match r.read(&mut buf).await {
                            Ok(Some(_)) => continue,
                            other => return other,
                        }
                    }
                    Ok(None)
                })
                .await;
                assert!(matches!(e, Err(ReadError::Reset(c)) if c == code(5)), "{}: {e:?}", imp::NAME);

                let (mut s, mut r) = h::uni_stream(&p, b"abc", false).await;
                s.reset(code(6)).unwrap();
                let rr = within(5, "received_reset", r.received_reset()).await;
                assert!(matches!(rr, Ok(Some(c)) if c == code(6)), "{}: {rr:?}", imp::NAME);
            }

            /// Dropping a `RecvStream` before its end stops it with code 0.
            #[tokio::test]
            async fn dropped_recv_stream_stops_with_code_0() {
                let p = h::pair().await;
                // ringquic's `stopped` borrows the stream mutably, quinn's does not (PORTING.md).
                #[allow(unused_mut)]
                let (mut s, r) = h::uni_stream(&p, b"abc", false).await;
                drop(r);
                let st = within(5, "stopped", s.stopped()).await;
                assert!(matches!(st, Ok(Some(c)) if c == code(0)), "{}: {st:?}", imp::NAME);
            }

            /// Ordered chunks come in offset order and respect `max_length`; after an
            /// unordered read an ordered one is `IllegalOrderedRead`.
            #[tokio::test]
            async fn read_chunk_ordered_and_unordered() {
                let p = h::pair().await;
                let data = payload(50_000, 3);
                let (_s, mut r) = h::uni_stream(&p, &data, true).await;
                let mut got = Vec::new();
                within(5, "ordered chunks", async {
                    for _ in 0..10_000 {
                        let Some(c) = r.read_chunk(1000, true).await.unwrap() else { break };
                        assert_eq!(c.offset, got.len() as u64, "{}", imp::NAME);
                        assert!(c.bytes.len() <= 1000, "{}", imp::NAME);
                        got.extend_from_slice(&c.bytes);
                    }
                })
                .await;
                assert!(got == data, "{}: ordered chunks differ", imp::NAME);

                // Not finished: the stream stays open on the receiving side.
                let (_s, mut r) = h::uni_stream(&p, &data, false).await;
                let c = within(5, "unordered chunk", r.read_chunk(usize::MAX, false)).await.unwrap();
                assert!(c.is_some(), "{}", imp::NAME);
                let e = r.read_chunk(usize::MAX, true).await;
                assert!(matches!(e, Err(ReadError::IllegalOrderedRead)), "{}: read_chunk: {e:?}", imp::NAME);
                // Deliberate difference (PORTING.md): after the refused ordered read the
                // stream is still there on ringquic; quinn-proto has dropped its state.
                let mut buf = [0u8; 4];
                let e = r.read(&mut buf).await;
                if imp::ILLEGAL_ORDERED_READ_KEEPS_STREAM {
                    assert!(matches!(e, Err(ReadError::IllegalOrderedRead)), "{}: read: {e:?}", imp::NAME);
                    assert!(r.read_chunk(usize::MAX, false).await.is_ok(), "{}: unordered read after", imp::NAME);
                } else {
                    assert!(matches!(e, Err(ReadError::ClosedStream)), "{}: read: {e:?}", imp::NAME);
                }
            }

            /// `read_to_end` reads in any order and puts the chunks in place, so it works after
            /// an unordered read, and its limit counts the span of the stream it saw (quinn:
            /// `ReadToEnd` over unordered chunks).
            #[tokio::test]
            async fn read_to_end_after_unordered_read() {
                let p = h::pair().await;
                let data = payload(200_000, 5);
                let (_s, mut r) = h::uni_stream(&p, &data, true).await;
                let first = within(5, "unordered chunk", r.read_chunk(1000, false)).await.unwrap().expect("a chunk");
                let rest = within(5, "read_to_end", r.read_to_end(1 << 20)).await.expect("read_to_end after unordered");
                // The span from the lowest offset read_to_end saw to the end, each byte in place;
                // what the first, separate read took is a hole of zeros in it.
                let lo = data.len() - rest.len();
                let mut expected = data[lo..].to_vec();
                let (a, b) = (first.offset as usize, first.offset as usize + first.bytes.len());
                assert!(data[a..b] == first.bytes[..], "{}: the first chunk", imp::NAME);
                for i in a.max(lo)..b.max(lo) {
                    expected[i - lo] = 0;
                }
                assert!(rest == expected, "{}: reassembled stream differs", imp::NAME);
                let (_s, mut r) = h::uni_stream(&p, &data, true).await;
                let e = within(5, "too long", r.read_to_end(1000)).await;
                assert!(matches!(e, Err(ReadToEndError::TooLong)), "{}: {e:?}", imp::NAME);
            }

            /// The peer accepts streams in ID order even when only a later one carried data
            /// (quinn-proto: implicit_open, stop_opens_bidi).
            #[tokio::test]
            async fn accept_order_follows_stream_ids() {
                let p = h::pair().await;
                let (s1, _r1) = p.client.open_bi().await.unwrap();
                let (s2, _r2) = p.client.open_bi().await.unwrap();
                let (mut s3, _r3) = p.client.open_bi().await.unwrap();
                s3.write_all(b"third").await.unwrap();
                s3.finish().unwrap();
                let mut ids = Vec::new();
                let mut last = None;
                for _ in 0..3 {
                    let (_s, r) = within(5, "accept_bi", p.server.accept_bi()).await.unwrap();
                    ids.push(r.id());
                    last = Some(r);
                }
                assert_eq!(ids, [s1.id(), s2.id(), s3.id()], "{}", imp::NAME);
                assert_eq!(within(5, "read", last.unwrap().read_to_end(10)).await.unwrap(), b"third");
            }

            /// One stream allowed at a time: three concurrent `open_uni` all complete as the
            /// peer accepts (and drops) the earlier streams (quinn: stream_id_flow_control).
            #[tokio::test]
            async fn stream_id_flow_control() {
                let p = h::pair_with_stream_limit(Dir::Uni, 1).await;
                within(5, "three opens, two accepts", async {
                    tokio::join!(
                        // Each opened stream is dropped at once (finished, nothing sent).
                        async { drop(p.client.open_uni().await.unwrap()) },
                        async { drop(p.client.open_uni().await.unwrap()) },
                        async { drop(p.client.open_uni().await.unwrap()) },
                        async {
                            p.server.accept_uni().await.unwrap();
                            p.server.accept_uni().await.unwrap();
                        }
                    )
                })
                .await;
            }

            /// At the peer's stream limit `open_bi` waits; raising the limit
            /// (`set_max_concurrent_*_streams`) lets it go on (quinn-proto: stream_id_limit).
            #[tokio::test]
            async fn max_concurrent_streams_waits_and_resumes() {
                let p = h::pair_with_stream_limit(Dir::Bi, 2).await;
                let (mut a, _ra) = p.client.open_bi().await.unwrap();
                let (mut b, _rb) = p.client.open_bi().await.unwrap();
                a.write_all(b"a").await.unwrap();
                b.write_all(b"b").await.unwrap();
                let mut third = Box::pin(p.client.open_bi());
                assert!(still_pending(&mut third, 300).await, "{}: a third stream opened past the limit", imp::NAME);
                imp::set_max_concurrent_streams(&p.server, Dir::Bi, 3);
                let (mut c, _rc) = within(5, "open_bi after the limit was raised", third).await.unwrap();
                c.write_all(b"c").await.unwrap();
                for _ in 0..3 {
                    within(5, "accept_bi", p.server.accept_bi()).await.unwrap();
                }
            }

            /// `received_reset` frees the stream: with one stream allowed, open → reset →
            /// peer sees the reset, three times over.
            #[tokio::test]
            async fn received_reset_returns_stream_credit() {
                let p = h::pair_with_stream_limit(Dir::Uni, 1).await;
                for i in 0..3 {
                    let mut s = within(5, &format!("open_uni #{i}"), p.client.open_uni()).await.unwrap();
                    s.write_all(b"x").await.unwrap();
                    s.reset(code(5)).unwrap();
                    let mut r = within(5, "accept_uni", p.server.accept_uni()).await.unwrap();
                    let rr = within(5, "received_reset", r.received_reset()).await;
                    assert!(matches!(rr, Ok(Some(c)) if c == code(5)), "{}: {rr:?}", imp::NAME);
                }
            }

            /// `stopped` resolves with the peer's code (quinn: stream_stopped, with one
            /// `stopped` future; quinn's is `&self` and `'static`, ringquic's borrows the
            /// stream mutably, see PORTING.md).
            #[tokio::test]
            async fn stopped_resolves_with_peer_code() {
                let p = h::pair().await;
                let mut s = p.client.open_uni().await.unwrap();
                s.write_all(b"hi").await.unwrap();
                let server = p.server.clone();
                let stopper = tokio::spawn(async move {
                    let mut r = server.accept_uni().await.unwrap();
                    let mut buf = [0u8; 2];
                    r.read_exact(&mut buf).await.unwrap();
                    r.stop(VarInt::from_u32(42)).unwrap();
                });
                let st = within(5, "stopped", s.stopped()).await;
                assert!(matches!(st, Ok(Some(c)) if c == code(42)), "{}: {st:?}", imp::NAME);
                within(5, "stopper", stopper).await.unwrap();
            }

            /// `stopped` on a connection that closes fails with `ConnectionLost`.
            #[tokio::test]
            async fn stopped_on_closed_connection() {
                let p = h::pair().await;
                let mut s = h::sent_uni(&p, b"hi", false).await;
                p.server.close(code(3), b"");
                let st = within(5, "stopped", s.stopped()).await;
                assert!(
                    matches!(st, Err(StoppedError::ConnectionLost(ConnectionError::ApplicationClosed(_)))),
                    "{}: {st:?}",
                    imp::NAME
                );
                let e = s.write(b"x").await;
                assert!(matches!(e, Err(WriteError::ConnectionLost(_))), "{}: {e:?}", imp::NAME);
            }

            /// A pending read is woken once by a close; a dropped stream's read is not woken
            /// at all (quinn: stream_drop_removes_blocked_reader).
            #[tokio::test]
            async fn blocked_reader_woken_by_close_not_after_drop() {
                for drop_stream in [false, true] {
                    let p = h::pair().await;
                    let (_s, mut r) = h::uni_stream(&p, b"hello", false).await;
                    let mut buf = [0u8; 5];
                    within(5, "read_exact", r.read_exact(&mut buf)).await.unwrap();
                    let counter = Arc::new(WakeCounter::default());
                    let waker = Waker::from(counter.clone());
                    let mut cx = Context::from_waker(&waker);
                    {
                        let mut buf = [0u8; 64];
                        let fut = pin!(r.read(&mut buf));
                        assert!(matches!(fut.poll(&mut cx), Poll::Pending));
                    }
                    if !drop_stream {
                        assert_eq!(counter.wakes(), 0, "{}", imp::NAME);
                        p.server.close(code(0), b"done");
                        assert_eq!(counter.wakes(), 1, "{}: close wakes the blocked reader once", imp::NAME);
                    } else {
                        drop(r);
                        assert_eq!(counter.wakes(), 0, "{}", imp::NAME);
                        p.server.close(code(0), b"done");
                        assert_eq!(counter.wakes(), 0, "{}: a dropped stream's reader is not woken", imp::NAME);
                    }
                }
            }

            /// Cancel a pending `read_to_end`, then `stop` and drop the stream: no panic, and
            /// the writer sees the stop (quinn: recv_stream_cancel_stop_drop).
            #[tokio::test]
            async fn cancelled_read_then_stop_and_drop() {
                let p = h::pair().await;
                // ringquic's `stopped` borrows the stream mutably, quinn's does not (PORTING.md).
                #[allow(unused_mut)]
                let (mut s, mut r) = h::uni_stream(&p, b"hello", false).await;
                {
                    let fut = pin!(r.read_to_end(usize::MAX));
                    let mut cx = Context::from_waker(Waker::noop());
                    assert!(fut.poll(&mut cx).is_pending());
                }
                r.stop(code(0)).unwrap();
                drop(r);
                let st = within(5, "stopped", s.stopped()).await;
                assert!(matches!(st, Ok(Some(_))), "{}: {st:?}", imp::NAME);
            }

            /// 300 streams, each stopped by the peer (code 7) and then dropped by us: the drop
            /// answers with RESET_STREAM(7), so the peer frees the stream and hands back
            /// credit, and opening goes on past the default limit of 100.
            async fn stream_credit_after_stop_and_drop(dir: Dir) {
                // finding a
                const N: usize = 300;
                let p = h::pair().await;
                let server = p.server.clone();
                let stopper = tokio::spawn(async move {
                    for _ in 0..N {
                        let mut r = match dir {
                            Dir::Uni => server.accept_uni().await.unwrap(),
                            Dir::Bi => {
                                let (s, r) = server.accept_bi().await.unwrap();
                                drop(s); // finishes our half at once
                                r
                            }
                        };
                        r.stop(VarInt::from_u32(7)).unwrap();
                    }
                });
                for i in 0..N {
                    let what = format!("{} #{i} (stopped and dropped streams before it)", if dir == Dir::Uni { "open_uni" } else { "open_bi" });
                    let (mut s, r) = match dir {
                        Dir::Uni => (within(5, &what, p.client.open_uni()).await.unwrap(), None),
                        Dir::Bi => {
                            let (s, r) = within(5, &what, p.client.open_bi()).await.unwrap();
                            (s, Some(r))
                        }
                    };
                    s.write_all(b"x").await.unwrap();
                    let st = within(5, &format!("stopped #{i}"), s.stopped()).await;
                    assert!(matches!(st, Ok(Some(c)) if c == code(7)), "{}: {st:?}", imp::NAME);
                    drop(s);
                    if let Some(mut r) = r {
                        assert!(within(5, "read peer's finished half", r.read_to_end(10)).await.unwrap().is_empty());
                    }
                }
                within(5, "stopper", stopper).await.unwrap();
            }

            /// Finding a, unidirectional streams.
            #[tokio::test]
            async fn stream_credit_after_stop_and_drop_uni() {
                // finding a
                stream_credit_after_stop_and_drop(Dir::Uni).await;
            }

            /// Finding a, bidirectional streams.
            #[tokio::test]
            async fn stream_credit_after_stop_and_drop_bi() {
                // finding a
                stream_credit_after_stop_and_drop(Dir::Bi).await;
            }
        }
    };
}
