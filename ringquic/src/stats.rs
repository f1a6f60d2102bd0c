//! The counters an endpoint reports: [`EndpointStats`], quinn's handshake counts, and
//! [`EndpointIoStats`], ringquic's I/O counters. The I/O thread fills both in each turn (from
//! its backend's counters and its own), the application reads them.

/// Handshake counts, as quinn's `EndpointStats` (`Endpoint::stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Incoming connections accepted (`Incoming::accept`, or awaiting an `Incoming`).
    pub accepted_handshakes: u64,
    /// Outgoing connections started (`Endpoint::connect`), counted once the I/O thread has
    /// created them.
    pub outgoing_handshakes: u64,
    /// Incoming connections the application refused (`Incoming::refuse`, or dropping one).
    /// Refusals of ringquic's own admission cap are counted apart, in
    /// [`EndpointIoStats::incoming_refused`].
    pub refused_handshakes: u64,
    /// Incoming connections the application ignored (`Incoming::ignore`).
    pub ignored_handshakes: u64,
}

/// Counters of an endpoint's I/O, for monitoring and tests (`Endpoint::io_stats`; quinn has no
/// equivalent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointIoStats {
    /// UDP datagrams received (after splitting GRO batches).
    pub datagrams_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// UDP datagrams sent (GSO batches counted per datagram).
    pub datagrams_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// Datagrams dropped on receive: truncated (larger than a receive buffer) or with
    /// unparsable metadata.
    pub recv_dropped: u64,
    /// Times every receive buffer was in use, so receiving paused until buffers came back
    /// (datagrams wait in the kernel's socket buffer meanwhile).
    pub recv_starved: u64,
    /// Times the kernel ended a multishot receive and the I/O thread re-armed it.
    pub recv_rearms: u64,
    /// Sends that failed (the datagrams are lost, as on a lossy path; QUIC recovers them). On
    /// io_uring a full socket buffer (`EAGAIN`/`ENOBUFS`) counts too; the poll backend queues
    /// such sends until the socket is writable instead.
    pub send_errors: u64,
    /// Times a connection had data to send but every TX buffer was in flight.
    pub tx_exhausted: u64,
    /// Times GSO was refused by the kernel and turned off.
    pub gso_disabled: u64,
    /// Receives (one GRO batch each) handed to quinn-proto and the application in the very
    /// buffer the kernel filled, without a copy (io_uring and poll; see
    /// [`EndpointBuilder::zero_copy_threshold`](crate::EndpointBuilder::zero_copy_threshold)).
    pub recv_zero_copy: u64,
    /// Sends submitted as zero-copy `SENDMSG_ZC` (see
    /// [`EndpointBuilder::send_zero_copy_threshold`](crate::EndpointBuilder::send_zero_copy_threshold)).
    pub send_zero_copy: u64,
    /// Zero-copy sends the kernel reported it had to copy after all (on loopback, all of them).
    pub send_zero_copy_copied: u64,
    /// Receive buffers lent out by zero-copy receive that are still held by quinn-proto or the
    /// application now (a gauge, not a counter; at most
    /// [`EndpointBuilder::recv_memory_budget`](crate::EndpointBuilder::recv_memory_budget) bytes' worth).
    pub recv_buffers_lent: u64,
    /// `Endpoint::rebind`s done: the backend serves the new socket (the old one is closed once
    /// nothing of it is in flight any more).
    pub rebinds: u64,
    /// `Endpoint::rebind`s the backend could not do, so it kept serving the old socket: a
    /// socket option it needs could not be set on the new socket, or the kernel refused it
    /// (RIO: a socket without `WSA_FLAG_REGISTERED_IO`). Each is logged once, as a warning.
    pub rebinds_failed: u64,
    /// Endpoint-level responses (version negotiation, stateless reset, refusals) dropped for lack
    /// of a TX buffer.
    pub responses_dropped: u64,
    /// Incoming connections answered with a Retry because address validation is on.
    pub incoming_retried: u64,
    /// Incoming connections refused because `max_incoming` were already pending or handshaking.
    pub incoming_refused: u64,
    /// Wakeups the application sent to the I/O thread (coalesced: many commands, one wakeup).
    pub app_wakeups: u64,
    /// Batches of datagrams the application's threads sent themselves, without a handoff to
    /// the I/O thread (Linux, [`EndpointBuilder::app_thread_sends`](crate::EndpointBuilder::app_thread_sends)).
    pub direct_sends: u64,
    /// Of those, the batches the kernel refused (a full socket buffer): lost datagrams, which
    /// QUIC retransmits.
    pub direct_send_errors: u64,
    /// Packets dropped unprocessed because their connection's application was far behind in
    /// reading datagrams and enough packets were held already (datagram back-pressure): the
    /// sender sees them lost and slows down.
    pub datagram_backpressure_drops: u64,
    /// CONNECTION_CLOSEs sent again: quinn-proto answers every packet a closed connection's
    /// peer sends during the closing period with the close (RFC 9000 §10.2.1), since a peer
    /// that goes on sending has not heard it.
    pub closes_repeated: u64,
    /// Datagrams this shard of a sharded endpoint handed to the shard their connection ID
    /// names (`EndpointBuilder::shards`): without kernel steering most of a connection's
    /// datagrams; with it, only those that raced a change of the socket group.
    pub forwarded_out: u64,
    /// Datagrams other shards handed to this one.
    pub forwarded_in: u64,
    /// Datagrams not forwarded because the shard they were for had 1024 forwarded datagrams
    /// waiting already, or had exited (lost, as on a lossy path).
    pub forward_drops: u64,
    /// Shards running without kernel steering (the kernel refused the program, or
    /// `EndpointBuilder::shard_steering(false)`): 0 normally, else one per such shard.
    pub unsteered_shards: u64,
    /// Turns of the I/O loop.
    pub loop_turns: u64,
    /// Connections the I/O thread drives now.
    pub open_connections: u64,
    /// The handshake counts `Endpoint::stats` reports.
    pub handshakes: EndpointStats,
}

/// `add` for a counter struct: every field summed, so a field left out does not compile
/// (the shards of a sharded endpoint add up this way).
macro_rules! summed {
    ($ty:ident { $($f:ident),* $(,)? } $(nested $n:ident)?) => {
        impl $ty {
            /// Both counts together (the shards of a sharded endpoint): every counter and
            /// gauge adds up.
            pub(crate) fn add(&self, o: &Self) -> Self {
                Self {
                    $($f: self.$f + o.$f,)*
                    $($n: self.$n.add(&o.$n),)?
                }
            }
        }
    };
}

summed!(EndpointStats {
    accepted_handshakes,
    outgoing_handshakes,
    refused_handshakes,
    ignored_handshakes,
});

summed!(EndpointIoStats {
    datagrams_received, bytes_received, datagrams_sent, bytes_sent, recv_dropped, recv_starved,
    recv_rearms, send_errors, tx_exhausted, gso_disabled, recv_zero_copy, send_zero_copy,
    send_zero_copy_copied, recv_buffers_lent, rebinds, rebinds_failed, responses_dropped,
    incoming_retried, incoming_refused, app_wakeups, direct_sends, direct_send_errors,
    datagram_backpressure_drops, closes_repeated, forwarded_out, forwarded_in, forward_drops,
    unsteered_shards, loop_turns, open_connections,
} nested handshakes);
