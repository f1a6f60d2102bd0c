//! Streams as tokio `AsyncRead`/`AsyncWrite` and as `futures-io` traits (feature-gated).
use crate::common;
#[allow(unused_imports)]
use common::*;

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn tokio_async_read_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for b in backends() {
        let (_server, _client, sconn, conn) = connected_pair(b).await;
        within(20, async {
            let (mut send, _r) = conn.open_bi().await.unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let writer = async {
                send.write_all(&data).await.unwrap();
                send.shutdown().await.unwrap();
            };
            let reader = async {
                let (_s, mut recv) = sconn.accept_bi().await.unwrap();
                let mut got = Vec::new();
                AsyncReadExt::read_to_end(&mut recv, &mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(writer, reader);
            assert_eq!(got, data, "{b}");
        })
        .await;
    }
}

#[cfg(feature = "futures-io")]
#[test]
fn futures_io_read_write() {
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    for b in backends() {
        let (server, client) = pair(b);
        futures::executor::block_on(async {
            let addr = server.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let sconn = server.accept().await.unwrap().await.unwrap();
            let conn = connecting.await.unwrap();
            let mut send = conn.open_uni().await.unwrap();
            let data = vec![7u8; 100_000];
            let writer = async {
                send.write_all(&data).await.unwrap();
                send.close().await.unwrap();
            };
            let reader = async {
                let mut recv = sconn.accept_uni().await.unwrap();
                let mut got = Vec::new();
                AsyncReadExt::read_to_end(&mut recv, &mut got).await.unwrap();
                got
            };
            let ((), got) = futures::join!(writer, reader);
            assert_eq!(got, data, "{b}");
        });
    }
}
