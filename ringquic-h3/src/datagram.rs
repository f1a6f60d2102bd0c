//! HTTP Datagrams (RFC 9297) on ringquic's QUIC datagrams: the `h3-datagram` crate's transport
//! traits ([`DatagramConnectionExt`], [`SendDatagram`], [`RecvDatagram`]) for [`Connection`].
//! Only with the `datagram` feature.
//!
//! Both sides must enable datagrams: QUIC's (`TransportConfig::datagram_receive_buffer_size`,
//! on by default in quinn-proto) and HTTP/3's (`h3` builders' `enable_datagram(true)`). Then
//! `h3_datagram::datagram_handler::HandleDatagramsExt` gives a request's datagram sender and
//! the connection's datagram reader.

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::ConnectionErrorIncoming;
use h3_datagram::{
    datagram::EncodedDatagram,
    quic_traits::{DatagramConnectionExt, RecvDatagram, SendDatagram, SendDatagramErrorIncoming},
};
use ringquic::SendDatagramError;

use crate::{connection::Connection, error::connection_error, poll::poll_once};

/// Sends HTTP datagrams on a connection. A full send buffer drops the oldest queued datagram
/// (datagrams are unreliable; ringquic's `send_datagram`).
#[derive(Debug, Clone)]
pub struct SendDatagramHandler {
    conn: ringquic::Connection,
}

impl<B: Buf> SendDatagram<B> for SendDatagramHandler {
    fn send_datagram<T: Into<EncodedDatagram<B>>>(
        &mut self,
        data: T,
    ) -> Result<(), SendDatagramErrorIncoming> {
        let mut data: EncodedDatagram<B> = data.into();
        let bytes = data.copy_to_bytes(data.remaining());
        self.conn.send_datagram(bytes).map_err(send_error)
    }
}

/// Receives the connection's HTTP datagrams (h3-datagram sorts them by request stream).
#[derive(Debug, Clone)]
pub struct RecvDatagramHandler {
    conn: ringquic::Connection,
}

impl RecvDatagram for RecvDatagramHandler {
    type Buffer = Bytes;

    fn poll_incoming_datagram(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, ConnectionErrorIncoming>> {
        poll_once(self.conn.read_datagram(), cx).map(|r| r.map_err(connection_error))
    }
}

impl<B: Buf> DatagramConnectionExt<B> for Connection {
    type SendDatagramHandler = SendDatagramHandler;
    type RecvDatagramHandler = RecvDatagramHandler;

    fn send_datagram_handler(&self) -> SendDatagramHandler {
        SendDatagramHandler {
            conn: self.inner().clone(),
        }
    }

    fn recv_datagram_handler(&self) -> RecvDatagramHandler {
        RecvDatagramHandler {
            conn: self.inner().clone(),
        }
    }
}

fn send_error(e: SendDatagramError) -> SendDatagramErrorIncoming {
    match e {
        SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => {
            SendDatagramErrorIncoming::NotAvailable
        }
        SendDatagramError::TooLarge => SendDatagramErrorIncoming::TooLarge,
        SendDatagramError::ConnectionLost(e) => {
            SendDatagramErrorIncoming::ConnectionError(connection_error(e))
        }
    }
}
