//! ringquic-h3 against stock h3-quinn 0.0.10 (on quinn 0.11), both ways: the same exchange as
//! `ringquic_h3.rs` (requests one after the other and at once, a 4 MiB body and a 1 MiB
//! upload byte for byte, an empty body, a 404) and HTTP datagrams.

mod common;

use std::future::Future;

use common::*;
use ringquic::BackendKind;

/// A ringquic client on `backend` connected to a quinn server: `then` on their h3 connections
/// (the client's first) while both endpoints stay open.
async fn ringquic_to_quinn<F: Future>(
    backend: BackendKind,
    then: impl FnOnce(ringquic_h3::Connection, h3_quinn::Connection) -> F,
) -> F::Output {
    let id = Identity::new();
    let (server, client) = (quinn_server(&id), ringquic_client(&id, backend));
    let addr = server.local_addr().expect("address");
    let (s, c) = handshake(server.accept(), || client.connect(addr, "localhost")).await;
    then(ringquic_h3::Connection::new(c), h3_quinn::Connection::new(s)).await
}

/// A quinn client connected to a ringquic server on `backend`: `then` on their h3 connections
/// (the client's first) while both endpoints stay open.
async fn quinn_to_ringquic<F: Future>(
    backend: BackendKind,
    then: impl FnOnce(h3_quinn::Connection, ringquic_h3::Connection) -> F,
) -> F::Output {
    let id = Identity::new();
    let (server, client) = (ringquic_server(&id, backend), quinn_client(&id));
    let addr = server.local_addr().expect("address");
    let (s, c) = handshake(server.accept(), || client.connect(addr, "localhost")).await;
    then(h3_quinn::Connection::new(c), ringquic_h3::Connection::new(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringquic_h3_client_against_h3_quinn_server() {
    on_every_backend(60, |backend| ringquic_to_quinn(backend, site_exchange)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_quinn_client_against_ringquic_h3_server() {
    on_every_backend(60, |backend| quinn_to_ringquic(backend, site_exchange)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_ringquic_h3_client_h3_quinn_server() {
    let echo = |c, s| datagrams_echoed(datagram_client(c), datagram_echo_server(s));
    within(30, ringquic_to_quinn(backends()[0], echo)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_h3_quinn_client_ringquic_h3_server() {
    let echo = |c, s| datagrams_echoed(datagram_client(c), datagram_echo_server(s));
    within(30, quinn_to_ringquic(backends()[0], echo)).await;
}
