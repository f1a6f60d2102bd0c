//! Admission control: address validation with Retry, and the cap on pending handshakes.
use crate::common;
use common::*;

use std::future::IntoFuture;

use ringquic::{ConnectionError, Endpoint, TransportErrorCode};

#[tokio::test(flavor = "current_thread")]
async fn validate_addresses_retries_every_new_client() {
    for b in backends() {
        let (server, client) = pair_with(b, |s| s.validate_addresses(true), |c| c);
        let connecting = client.connect(server.local_addr().unwrap(), "localhost").unwrap();
        let incoming = within(10, server.accept()).await.unwrap();
        assert!(
            incoming.remote_address_validated(),
            "{b}: reached accept without a Retry"
        );
        let _s = within(10, incoming.into_future()).await.unwrap();
        within(10, connecting).await.unwrap();
        assert_eq!(server.io_stats().incoming_retried, 1, "{b}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn max_incoming_refuses_the_excess() {
    for b in backends() {
        let (server, client) = pair_with(b, |s| s.max_incoming(2), |c| c);
        let addr = server.local_addr().unwrap();
        // Nobody accepts: two wait in the queue, the third is refused.
        let first = client.connect(addr, "localhost").unwrap();
        let second = client.connect(addr, "localhost").unwrap();
        let s = stats_when(&server, |s| s.datagrams_received >= 2).await;
        assert!(
            s.datagrams_received >= 2,
            "{b}: the first two Initials never arrived: {s:?}"
        );
        let third = client.connect(addr, "localhost").unwrap();
        match within(10, third).await {
            Err(ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(close.error_code, TransportErrorCode::CONNECTION_REFUSED, "{b}")
            }
            other => panic!("{b}: expected a refusal, got {other:?}"),
        }
        assert_eq!(server.io_stats().incoming_refused, 1, "{b}");
        // The queued ones are still served once the application accepts them.
        for connecting in [first, second] {
            let s = within(10, async { server.accept().await.unwrap().await.unwrap() }).await;
            let conn = within(10, connecting).await.unwrap();
            drop((s, conn));
        }
    }
}

#[test]
fn max_incoming_zero_is_a_config_error() {
    let e = Endpoint::builder().max_incoming(0).bind(localhost()).unwrap_err();
    assert!(matches!(e, ringquic::EndpointError::Config(_)), "{e}");
}
