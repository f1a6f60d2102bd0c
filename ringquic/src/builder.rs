//! [`EndpointBuilder`]: an endpoint's settings, their checks, and the start of its I/O thread
//! (socket, backend, `quinn_proto::Endpoint`), with the constructors `Endpoint::server`,
//! `Endpoint::client` and `Endpoint::builder`.
//!
//! Those constructors are written here, in an `impl Endpoint` of this file, so that the arrow
//! between the two files points one way: the builder makes endpoints; the endpoint handle does
//! not know how.

use std::{
    io,
    net::SocketAddr,
    sync::{mpsc, Arc},
    time::Duration,
};

use quinn_proto::{self as proto, ClientConfig, EndpointConfig, ServerConfig};

use crate::{
    core::Admission,
    driver::{self, DriverSetup},
    io::{BackendKind, IoConfig},
    shared::{Command, EndpointRef, EndpointShared, ShardLink},
    Endpoint, EndpointError, QuicLbCidGenerator, QuicLbConfig,
};

impl Endpoint {
    /// A builder with the defaults: automatic backend choice, 256 receive buffers of 64 KiB
    /// (plus headers), 64 TX buffers of 64 KiB.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder::default()
    }

    /// A server (that can also connect out) bound to `addr`. As in quinn, errors are
    /// `io::Error`s; the [`EndpointError`] that says what failed is inside
    /// (`e.get_ref()` and `downcast_ref`); [`EndpointBuilder::bind`] returns it directly.
    pub fn server(config: ServerConfig, addr: SocketAddr) -> io::Result<Self> {
        Ok(Self::builder().server_config(config).bind(addr)?)
    }

    /// A client bound to `addr` (use port 0 for any). Set a client configuration with
    /// [`Endpoint::set_default_client_config`] or use [`Endpoint::connect_with`]. Errors as for
    /// [`Endpoint::server`].
    pub fn client(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self::builder().bind(addr)?)
    }

    /// An endpoint on an existing socket, as quinn's `Endpoint::new` minus its fourth argument
    /// (the async runtime: ringquic's I/O runs on its own thread, whatever runtime the
    /// application uses). ringquic sets the socket options it needs (see
    /// [`EndpointBuilder::socket`]). Errors as for [`Endpoint::server`].
    pub fn new(
        config: EndpointConfig,
        server_config: Option<ServerConfig>,
        socket: std::net::UdpSocket,
    ) -> io::Result<Self> {
        let mut b = Self::builder().endpoint_config(config);
        if let Some(sc) = server_config {
            b = b.server_config(sc);
        }
        Ok(b.socket(socket)?)
    }
}

/// Builds an [`Endpoint`] with non-default settings.
#[must_use]
pub struct EndpointBuilder {
    backend: Option<BackendKind>,
    server_config: Option<ServerConfig>,
    client_config: Option<ClientConfig>,
    endpoint_config: EndpointConfig,
    recv_buffers: usize,
    recv_buffer_size: usize,
    tx_buffers: usize,
    tx_buffer_size: usize,
    validate_addresses: bool,
    max_incoming: usize,
    zero_copy_min: usize,
    recv_memory_budget: usize,
    send_zc_min: usize,
    busy_poll: Duration,
    app_thread_sends: bool,
    /// `None`: decided at `bind` ([`EndpointBuilder::runs_on_runtime`]).
    io_on_runtime: Option<bool>,
    pin_cpu: Option<usize>,
    sqpoll_idle: Option<Duration>,
    shards: usize,
    quic_lb: Option<QuicLbConfig>,
    shard_steering: bool,
    #[cfg(test)]
    fake: Option<crate::io::fake::FakeFactory>,
}

impl std::fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("backend", &self.backend)
            .field("recv_buffers", &self.recv_buffers)
            .field("recv_buffer_size", &self.recv_buffer_size)
            .field("tx_buffers", &self.tx_buffers)
            .field("tx_buffer_size", &self.tx_buffer_size)
            .field("validate_addresses", &self.validate_addresses)
            .field("max_incoming", &self.max_incoming)
            .field("zero_copy_threshold", &self.zero_copy_min)
            .field("recv_memory_budget", &self.recv_memory_budget)
            .field("send_zero_copy_threshold", &self.send_zc_min)
            .field("busy_poll", &self.busy_poll)
            .field("app_thread_sends", &self.app_thread_sends)
            .field("io_on_runtime", &self.io_on_runtime)
            .field("pin_cpu", &self.pin_cpu)
            .field("sqpoll_idle", &self.sqpoll_idle)
            .field("shards", &self.shards)
            .field("quic_lb", &self.quic_lb)
            .finish_non_exhaustive()
    }
}

/// Default cap on incoming connections waiting for `accept` plus those still handshaking.
pub const DEFAULT_MAX_INCOMING: usize = 1024;

/// Default number of receive buffers.
pub const DEFAULT_RECV_BUFFERS: usize = 256;
/// Default size of one receive buffer: a 64 KiB GRO batch plus the backend's headers.
pub const DEFAULT_RECV_BUFFER_SIZE: usize = 65536 + 256;
/// Default number of TX buffers.
pub const DEFAULT_TX_BUFFERS: usize = 64;
/// Default [`EndpointBuilder::zero_copy_threshold`]: 16 KiB, about a dozen full-size datagrams
/// coalesced by GRO. Each zero-copy buffer then carries at least a quarter of its capacity.
pub const DEFAULT_ZERO_COPY_THRESHOLD: usize = 16 * 1024;
/// Default [`EndpointBuilder::recv_memory_budget`]: 32 MiB, 510 default-size receive buffers (on
/// io_uring, 255 for zero-copy receive and 255 for pooled copies). Measured: 8 MiB (63 lent
/// kernel buffers) cost a one-connection download on io_uring 10% of its throughput and 13%
/// more CPU, because lending ran out and receives were copied; 32 MiB gives all of it back.
pub const DEFAULT_RECV_MEMORY_BUDGET: usize = 32 << 20;
/// Default size of one TX buffer: the largest GSO batch.
pub const DEFAULT_TX_BUFFER_SIZE: usize = 65536;

impl Default for EndpointBuilder {
    fn default() -> Self {
        Self {
            backend: None,
            server_config: None,
            client_config: None,
            endpoint_config: EndpointConfig::default(),
            recv_buffers: DEFAULT_RECV_BUFFERS,
            recv_buffer_size: DEFAULT_RECV_BUFFER_SIZE,
            tx_buffers: DEFAULT_TX_BUFFERS,
            tx_buffer_size: DEFAULT_TX_BUFFER_SIZE,
            validate_addresses: false,
            max_incoming: DEFAULT_MAX_INCOMING,
            zero_copy_min: DEFAULT_ZERO_COPY_THRESHOLD,
            recv_memory_budget: DEFAULT_RECV_MEMORY_BUDGET,
            send_zc_min: usize::MAX,
            busy_poll: Duration::ZERO,
            app_thread_sends: true,
            io_on_runtime: None,
            pin_cpu: None,
            sqpoll_idle: None,
            shards: 1,
            quic_lb: None,
            shard_steering: true,
            #[cfg(test)]
            fake: None,
        }
    }
}

impl EndpointBuilder {
    /// Choose the backend. Without this, `RINGQUIC_BACKEND` (`uring`, `poll` or `rio`) decides,
    /// and without that, io_uring is used on Linux where the kernel allows it, Registered I/O on
    /// Windows where the system has it, and the poll backend elsewhere.
    /// A backend chosen here or through the variable that cannot run is an error, not a silent
    /// fallback.
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }

    /// Accept incoming connections with this configuration.
    pub fn server_config(mut self, config: ServerConfig) -> Self {
        self.server_config = Some(config);
        self
    }

    /// The client configuration [`Endpoint::connect`] uses.
    pub fn default_client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = Some(config);
        self
    }

    /// Endpoint-wide QUIC settings (maximum UDP payload, connection ID generator, …).
    pub fn endpoint_config(mut self, config: EndpointConfig) -> Self {
        self.endpoint_config = config;
        self
    }

    /// Number of receive buffers kept armed with the kernel (rounded up to a power of two for
    /// io_uring). More absorbs bigger bursts. Default 256.
    pub fn recv_buffers(mut self, n: usize) -> Self {
        self.recv_buffers = n;
        self
    }

    /// Bytes per receive buffer, headers included. Below 64 KiB + 256 the io_uring backend
    /// turns GRO off (a coalesced batch would not fit). Default 64 KiB + 256.
    pub fn recv_buffer_size(mut self, n: usize) -> Self {
        self.recv_buffer_size = n;
        self
    }

    /// Number of TX buffers; when all are in flight, sending waits for a completion.
    /// Default 64.
    pub fn tx_buffers(mut self, n: usize) -> Self {
        self.tx_buffers = n;
        self
    }

    /// Bytes per TX buffer: the largest GSO batch one send carries. Default 64 KiB.
    pub fn tx_buffer_size(mut self, n: usize) -> Self {
        self.tx_buffer_size = n;
        self
    }

    /// Make every new client prove its address with a Retry round trip before it reaches
    /// [`Endpoint::accept`] (costs one round trip per handshake; blunts spoofed-source floods
    /// and amplification). Off by default, as in quinn.
    pub fn validate_addresses(mut self, on: bool) -> Self {
        self.validate_addresses = on;
        self
    }

    /// At most `n` incoming connections waiting for [`Endpoint::accept`] plus accepted ones still
    /// handshaking; more are refused (CONNECTION_REFUSED) and counted in
    /// [`EndpointIoStats::incoming_refused`]. Bounds the memory a handshake flood can take.
    /// Default [`DEFAULT_MAX_INCOMING`].
    pub fn max_incoming(mut self, n: usize) -> Self {
        self.max_incoming = n;
        self
    }

    /// Zero-copy receive (io_uring and the poll backend): a receive of at least `bytes` of
    /// payload (one GRO batch, several datagrams) is not copied. The buffer the kernel filled
    /// goes to quinn-proto, which decrypts in place, and the application's `read_chunk` gets
    /// slices of that same memory; another buffer takes its place (in the kernel's ring on
    /// io_uring, in the next `recvmmsg` on poll). Smaller receives are copied, each datagram
    /// into an allocation of its own size, and the receive buffer is reused at once.
    ///
    /// A lent buffer is `recv_buffer_size` bytes and lives until the last piece of it is
    /// dropped (a stream chunk or datagram the application has not read holds the whole
    /// buffer), so lending is bounded by [`EndpointBuilder::recv_memory_budget`]. `0` lends every
    /// receive (within the budget); `usize::MAX` copies every receive. The RIO backend always
    /// copies (its buffers are one registered region). Default
    /// [`DEFAULT_ZERO_COPY_THRESHOLD`]; [`EndpointIoStats::recv_zero_copy`] counts the receives
    /// lent.
    pub fn zero_copy_threshold(mut self, bytes: usize) -> Self {
        self.zero_copy_min = bytes;
        self
    }

    /// The receive memory budget: at most `bytes` of receive buffers lent to quinn-proto and
    /// the application at once, endpoint-wide. Lent buffers are the ones the kernel filled
    /// (zero-copy receive: io_uring, poll) and the pooled buffers a GRO batch is copied into
    /// (io_uring over its zero-copy share, poll for batches under the threshold, RIO); io_uring
    /// splits the budget evenly between the two, poll shares it. A buffer comes back, and is
    /// reused instead of allocating a new one, once quinn-proto and the application hold no
    /// piece of it. While the budget is used up, each datagram is copied into an allocation of its own
    /// size instead, which quinn-proto's own accounting covers.
    ///
    /// This is what bounds the memory a peer can make the endpoint hold by having it keep
    /// tiny pieces of big receives (docs/RELIABILITY.md, "Receive memory budget"); rounded down
    /// to whole buffers. Default [`DEFAULT_RECV_MEMORY_BUDGET`]; `0` lends nothing (no
    /// zero-copy receive, every datagram copied on its own). [`EndpointIoStats::recv_buffers_lent`]
    /// says how many are out.
    pub fn recv_memory_budget(mut self, bytes: usize) -> Self {
        self.recv_memory_budget = bytes;
        self
    }

    /// Zero-copy send (io_uring, Linux 6.0+): a GSO batch of at least `bytes` goes out as
    /// `SENDMSG_ZC` from TX buffers registered with the kernel (fixed buffers, used where the
    /// kernel allows them with `SENDMSG_ZC`, 6.15+), so the kernel sends from our memory instead
    /// of copying it into socket buffers. Each such send costs a second completion (the kernel's
    /// "done with the buffer" notification), and the TX buffer stays busy until it arrives.
    ///
    /// It pays only for large sends on a real NIC: the kernel copies anyway when the receiver is
    /// on the same host (loopback), which [`EndpointIoStats::send_zero_copy_copied`] reports, and
    /// below ~10 KB the notification costs more than the copy saves. A kernel without
    /// `SENDMSG_ZC` keeps ordinary sends (logged). Default `usize::MAX`: off.
    pub fn send_zero_copy_threshold(mut self, bytes: usize) -> Self {
        self.send_zc_min = bytes;
        self
    }

    /// Busy-poll: when a turn of the I/O loop finds nothing to do, keep asking the kernel for
    /// completions (without sleeping) for up to `d` before going to sleep. This trades a
    /// spinning core for the cost of a sleep and a cross-CPU wakeup per burst of packets, and
    /// pays only when the I/O thread has a core to itself: with the application's tasks on the
    /// I/O thread ([`Endpoint::spawn`]) and [`EndpointBuilder::pin_to_cpu`], say. On a machine
    /// with fewer cores than busy threads it takes CPU time from them instead. At most 1 s.
    /// Default zero: sleep at once.
    pub fn busy_poll(mut self, d: Duration) -> Self {
        self.busy_poll = d;
        self
    }

    /// Let the application's threads send a connection's packets themselves (Linux, on a
    /// tokio runtime): after a task writes to a stream (or reads, freeing flow-control credit),
    /// once the task yields, its thread asks quinn-proto for the packets and sends them on the
    /// endpoint's socket, instead of waking the I/O thread to do it. That saves a thread
    /// handoff per message each way, which is most of the cost of small requests and
    /// responses (docs/PERFORMANCE.md). The I/O thread still receives, runs timers and sends
    /// everything else (ACKs, retransmits, large transfers beyond two batches per yield); it
    /// is told of each direct send, so no timer is missed (DESIGN.md, "Sends from application
    /// threads"). Off, or without a tokio runtime, or on other systems, every send goes
    /// through the I/O thread. Default: on.
    pub fn app_thread_sends(mut self, on: bool) -> Self {
        self.app_thread_sends = on;
        self
    }

    /// Where the endpoint's I/O loop runs: `true`, as a task on the tokio runtime that calls
    /// [`bind`](EndpointBuilder::bind) (or [`socket`](EndpointBuilder::socket)); `false`, on
    /// an I/O thread of its own. The turn is the same; on the runtime it waits in the
    /// runtime's reactor (which watches the poll backend's epoll instance, or the ring's fd)
    /// instead of in `epoll_wait`/`io_uring_enter`, so a received datagram wakes the task that
    /// reads it on the same thread, as in quinn, where the I/O thread pays a cross-thread
    /// wakeup per handoff. On this project's 2-core bench that beats the I/O thread with the
    /// application on tokio on every workload but h3-rr, where the runs were too noisy to say
    /// (docs/PERFORMANCE.md); an I/O thread gives the endpoint's I/O a core of its own, which
    /// pays where cores are spare, and it needs no runtime.
    ///
    /// **Default: decided at `bind`.** On the runtime when `bind` is called inside a tokio
    /// runtime and nothing asked for needs a thread of its own: no backend chosen by name
    /// ([`backend`](Self::backend) or `RINGQUIC_BACKEND`), one shard, no
    /// [`busy_poll`](Self::busy_poll), [`pin_to_cpu`](Self::pin_to_cpu) or
    /// [`sqpoll`](Self::sqpoll). Otherwise on an I/O thread, as always outside a runtime.
    ///
    /// On the runtime:
    /// - the backend is the poll backend unless one is chosen: io_uring's completions reach a
    ///   runtime's `epoll_wait` through a signal-like wakeup each, which made it half as fast
    ///   there; chosen, it runs, without `SINGLE_ISSUER` and `COOP_TASKRUN`;
    /// - the runtime needs its I/O and time drivers (`enable_all`): `bind` fails with
    ///   [`EndpointError::Config`] or [`EndpointError::Backend`] otherwise, as it does with
    ///   `true` and more than one shard, busy-poll, pinning or SQPOLL, or on Windows (RIO has no
    ///   fd a runtime can watch);
    /// - [`app_thread_sends`](Self::app_thread_sends) has no effect: every send is the loop's,
    ///   on the runtime already; [`Endpoint::spawn`] runs its tasks inside the loop's task;
    /// - dropping the last handle does not wait for the loop: the loop closes the connections
    ///   and ends on the runtime (after at most the shutdown's 500 ms wait for the closes'
    ///   answers), which frees the port then; if the runtime shuts down first, the loop's task
    ///   is dropped, which fails what is left with
    ///   [`ConnectionError::LocallyClosed`](crate::ConnectionError::LocallyClosed) and closes
    ///   the socket;
    /// - `Connecting::into_0rtt` has the loop take the `connect` on the calling thread, so it
    ///   succeeds at once, as in quinn; it waits (at most `INTO_0RTT_WAIT`) only while another
    ///   worker of a multi-thread runtime runs the loop's turn, and inside that turn (a task of
    ///   `Endpoint::spawn`) it gives the `Connecting` back.
    #[cfg(feature = "tokio")]
    pub fn io_on_runtime(mut self, on: bool) -> Self {
        self.io_on_runtime = Some(on);
        self
    }

    /// Where the loop runs, decided once at `bind`/`socket`: as told
    /// ([`EndpointBuilder::io_on_runtime`]), else on the tokio runtime the call is made in
    /// unless something asked for needs an I/O thread of its own (a backend chosen by name
    /// or `RINGQUIC_BACKEND`, shards, busy-poll, pinning, SQPOLL), else on an I/O thread.
    fn runs_on_runtime(&self) -> bool {
        if let Some(on) = self.io_on_runtime {
            return on;
        }
        #[cfg(test)]
        if self.fake.is_some() {
            return false;
        }
        cfg!(all(unix, feature = "tokio"))
            && in_tokio_runtime()
            && matches!(self.choose_backend(), Ok(None))
            && self.needs_io_thread().is_none()
    }

    /// What asked for needs a loop on its own thread, if anything: said by `io_config` when
    /// `io_on_runtime(true)` was asked for too; by default it keeps the I/O thread.
    fn needs_io_thread(&self) -> Option<&'static str> {
        if self.shard_count() > 1 {
            Some("io_on_runtime runs one shard")
        } else if !self.busy_poll.is_zero() || self.pin_cpu.is_some() || self.sqpoll_idle.is_some() {
            Some("busy_poll, pin_to_cpu and sqpoll belong to an I/O thread: not with io_on_runtime")
        } else {
            None
        }
    }

    /// Serve the endpoint with `n` I/O threads (shards), each with its own UDP socket on the
    /// same address (`SO_REUSEPORT`), its own buffers and its own `quinn_proto::Endpoint`; `0`
    /// means one per CPU the process may use. Default: 1.
    ///
    /// A connection lives on one shard for its whole life. The kernel hands each datagram to
    /// the shard its destination connection ID names ([`steer_by_shard`](crate::steer_by_shard)),
    /// so a client that changes address stays on its shard; new connections spread over the
    /// shards. The endpoint handle works as for one shard: `accept` yields connections from
    /// every shard, `connect` takes the shards in turn, `io_stats` adds them up and
    /// [`Endpoint::shard_io_stats`] gives each. See docs/SCALING.md.
    ///
    /// With more than one shard ringquic chooses the connection ID generator (QUIC-LB's if
    /// [`EndpointBuilder::quic_lb`] was given), so one set in the `EndpointConfig` is not used;
    /// `pin_to_cpu(c)` pins shard `i` to CPU `c + i`; `max_incoming` holds per shard; and the
    /// endpoint cannot be [rebound](Endpoint::rebind) nor started on an adopted socket
    /// ([`EndpointBuilder::socket`]).
    ///
    /// Linux only (elsewhere `bind` fails with [`EndpointError::Config`]). If the kernel refuses
    /// the steering program (`EPERM` under a security policy, kernels before 4.5), the endpoint
    /// still works: each shard forwards a datagram that arrives for another shard to it
    /// (bounded, counted in [`EndpointIoStats::forwarded_out`](crate::EndpointIoStats)), a
    /// warning is logged once, and `io_stats().unsteered_shards` says so. Forwarding costs a
    /// handoff per datagram, so it is a fallback.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Whether a sharded endpoint asks the kernel to steer datagrams to their shard (default:
    /// yes). Off, the shards forward datagrams among themselves as they do when the kernel
    /// refuses the program: for measuring that fallback, or where the program must not be
    /// attached.
    pub fn shard_steering(mut self, on: bool) -> Self {
        self.shard_steering = on;
        self
    }

    /// Issue connection IDs a QUIC-LB load balancer can route (draft-ietf-quic-load-balancers,
    /// plaintext): config rotation bits, this host's server ID, the shard, a random nonce
    /// ([`QuicLbCidGenerator`]). `bind` fails with [`EndpointError::QuicLb`] on a configuration
    /// the draft forbids. Default: quinn-proto's generator (or, with several shards, ringquic's
    /// own shard-naming one).
    pub fn quic_lb(mut self, config: QuicLbConfig) -> Self {
        self.quic_lb = Some(config);
        self
    }

    /// How many shards `bind` starts.
    fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Pin the I/O thread to CPU `cpu` (Linux and Windows). Failing to pin (a CPU the process
    /// may not use, say) fails [`EndpointBuilder::bind`]. Default: not pinned.
    pub fn pin_to_cpu(mut self, cpu: usize) -> Self {
        self.pin_cpu = Some(cpu);
        self
    }

    /// io_uring `SQPOLL`: a kernel thread picks up submissions, so sends need no
    /// `io_uring_enter`; it sleeps after `idle` without work (rounded to milliseconds, at least
    /// 1). It costs a kernel thread that spins while busy: worth it only with cores to spare.
    /// If the kernel refuses it, [`EndpointBuilder::bind`] fails rather than silently running
    /// without. Other backends ignore it. Default: off.
    pub fn sqpoll(mut self, idle: Duration) -> Self {
        self.sqpoll_idle = Some(idle);
        self
    }

    /// Tests: run on a fake backend.
    #[cfg(test)]
    pub(crate) fn fake_backend(mut self, f: crate::io::fake::FakeFactory) -> Self {
        self.fake = Some(f);
        self
    }

    fn io_config(&self) -> Result<IoConfig, EndpointError> {
        let max_udp_payload = self.endpoint_config.get_max_udp_payload_size() as usize;
        if self.recv_buffers == 0 {
            return Err(EndpointError::Config("recv_buffers must be at least 1"));
        }
        if self.recv_buffers > 32768 {
            return Err(EndpointError::Config("recv_buffers must be at most 32768"));
        }
        if self.tx_buffers == 0 {
            return Err(EndpointError::Config("tx_buffers must be at least 1"));
        }
        if self.tx_buffers > 4096 {
            return Err(EndpointError::Config("tx_buffers must be at most 4096"));
        }
        if self.max_incoming == 0 {
            return Err(EndpointError::Config("max_incoming must be at least 1"));
        }
        if self.busy_poll > Duration::from_secs(1) {
            return Err(EndpointError::Config("busy_poll must be at most 1 s"));
        }
        if self.sqpoll_idle.is_some_and(|d| d > Duration::from_secs(60)) {
            return Err(EndpointError::Config("sqpoll idle time must be at most 60 s"));
        }
        if self.io_on_runtime == Some(true) {
            if !cfg!(unix) {
                return Err(EndpointError::Config(
                    "io_on_runtime runs on Unix only (Windows' RIO has no fd a runtime can watch)",
                ));
            }
            if let Some(why) = self.needs_io_thread() {
                return Err(EndpointError::Config(why));
            }
        }
        let min_rx = max_udp_payload + crate::io::RECV_HEADROOM;
        if self.recv_buffer_size < min_rx {
            return Err(EndpointError::RecvBufferTooSmall {
                size: self.recv_buffer_size,
                min: min_rx,
                max_udp_payload,
            });
        }
        if self.tx_buffer_size < max_udp_payload {
            return Err(EndpointError::TxBufferTooSmall {
                size: self.tx_buffer_size,
                min: max_udp_payload,
            });
        }
        Ok(IoConfig {
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            tx_buffers: self.tx_buffers,
            tx_buffer_size: self.tx_buffer_size,
            max_udp_payload,
            zero_copy_min: self.zero_copy_min,
            recv_memory_budget: self.recv_memory_budget,
            send_zc_min: self.send_zc_min,
            busy_poll: self.busy_poll,
            pin_cpu: self.pin_cpu,
            // On a runtime every send is the loop's, on the runtime's threads already.
            app_thread_sends: self.app_thread_sends && self.io_on_runtime != Some(true),
            sqpoll_idle: self.sqpoll_idle,
            on_runtime: self.io_on_runtime == Some(true),
        })
    }

    /// The backend to open: the one chosen, else on a runtime the poll backend (there it is
    /// faster than io_uring, whose completions reach a runtime's `epoll_wait` through a
    /// signal-like task-work wakeup each: docs/PERFORMANCE.md), else the best there is.
    fn backend_for(&self, cfg: &IoConfig) -> Result<Option<BackendKind>, EndpointError> {
        match self.choose_backend()? {
            None if cfg.on_runtime => Ok(Some(BackendKind::Poll)),
            chosen => Ok(chosen),
        }
    }

    fn choose_backend(&self) -> Result<Option<BackendKind>, EndpointError> {
        if let Some(b) = self.backend {
            return Ok(Some(b));
        }
        match std::env::var("RINGQUIC_BACKEND") {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Create a socket bound to `addr` and start the endpoint on it. An IPv6 wildcard address
    /// (`[::]:port`) is dual-stack.
    pub fn bind(mut self, addr: SocketAddr) -> Result<Endpoint, EndpointError> {
        self.io_on_runtime = Some(self.runs_on_runtime());
        let cfg = self.io_config()?;
        let backend = self.backend_for(&cfg)?;
        let shards = self.shard_count();
        if shards == 1 {
            let socket = crate::socket::create(addr)?;
            return self.start(socket, cfg, backend);
        }
        if shards > 256 {
            return Err(EndpointError::Config(
                "at most 256 shards (one octet of the connection ID)",
            ));
        }
        let generator = match &self.quic_lb {
            Some(c) => QuicLbCidGenerator::new(c.clone())?,
            None => QuicLbCidGenerator::unconfigured(),
        };
        let sockets = crate::socket::create_group(addr, shards)?;
        let offset = generator.config().shard_offset();
        let steered = self.shard_steering && steer(&sockets[0], offset, shards);
        let mut started = Vec::with_capacity(shards);
        for (i, socket) in sockets.into_iter().enumerate() {
            let mut endpoint_config = self.endpoint_config.clone();
            let g = generator.for_shard(i as u8);
            endpoint_config.cid_generator(move || Box::new(g.clone()));
            let mut cfg = cfg.clone();
            cfg.pin_cpu = cfg.pin_cpu.map(|c| c + i);
            // A shard that fails to start drops the ones before it, which shuts them down.
            started.push(self.start_one(socket, cfg, backend, endpoint_config)?);
        }
        let peers: Vec<_> = started.iter().map(|r| Arc::downgrade(&r.0)).collect();
        for (index, r) in started.iter().enumerate() {
            let link = ShardLink {
                index,
                shard_offset: offset,
                peers: peers.clone(),
                steered,
            };
            // Before any application command: the shard learns of the others on its next turn.
            r.0.mailbox
                .push(Command::JoinShards(link))
                .map_err(|_| EndpointError::Stopping)?;
        }
        Ok(Endpoint::started(started))
    }

    /// Start the endpoint on an existing socket. The socket must be a bound UDP socket; ringquic
    /// sets the options it needs on it (non-blocking, ECN and packet-info control messages, GRO,
    /// no fragmentation) and says which one failed if it cannot.
    pub fn socket(self, socket: std::net::UdpSocket) -> Result<Endpoint, EndpointError> {
        if self.shard_count() > 1 {
            return Err(EndpointError::Config(
                "a sharded endpoint binds its own sockets: use bind, not socket",
            ));
        }
        let mut this = self;
        this.io_on_runtime = Some(this.runs_on_runtime());
        let cfg = this.io_config()?;
        let backend = this.backend_for(&cfg)?;
        crate::socket::adopt(&socket)?;
        this.start(socket, cfg, backend)
    }

    /// One I/O thread for `socket`: the endpoint, or (one shard of) it.
    fn start(
        mut self,
        socket: std::net::UdpSocket,
        cfg: IoConfig,
        backend: Option<BackendKind>,
    ) -> Result<Endpoint, EndpointError> {
        let mut endpoint_config = self.endpoint_config.clone();
        if let Some(c) = &self.quic_lb {
            let g = QuicLbCidGenerator::new(c.clone())?;
            endpoint_config.cid_generator(move || Box::new(g.clone()));
        }
        let one = self.start_one(socket, cfg, backend, endpoint_config)?;
        Ok(Endpoint::started(vec![one]))
    }

    fn start_one(
        &mut self,
        socket: std::net::UdpSocket,
        cfg: IoConfig,
        backend: Option<BackendKind>,
        endpoint_config: EndpointConfig,
    ) -> Result<EndpointRef, EndpointError> {
        let endpoint_config = Arc::new(endpoint_config);
        let server_config = self.server_config.clone().map(Arc::new);
        // quinn-proto's path MTU discovery needs the socket to send with "don't fragment",
        // which every backend sets.
        let allow_mtud = true;
        let (exit_tx, exit_rx) = mpsc::channel();
        let shared = EndpointShared::new(self.client_config.clone(), exit_rx);
        let setup = DriverSetup {
            shared: shared.clone(),
            socket,
            io: cfg,
            backend,
            endpoint: proto::Endpoint::new(endpoint_config, server_config, allow_mtud, None),
            admission: Admission {
                validate_addresses: self.validate_addresses,
                max_incoming: self.max_incoming,
            },
            #[cfg(test)]
            fake: self.fake.take(),
            exited: exit_tx,
        };
        if setup.io.on_runtime {
            return spawn_on_runtime(setup).map(|()| EndpointRef::new(shared));
        }
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ringquic-io".into())
            .spawn(move || driver::run(setup, ready_tx))
            .map_err(EndpointError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                shared.set_thread(thread);
                Ok(EndpointRef::new(shared))
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EndpointError::Thread(io::Error::other(
                    "the I/O thread exited during setup",
                )))
            }
        }
    }
}

/// Whether the calling thread is in a tokio runtime's context.
#[cfg(feature = "tokio")]
fn in_tokio_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

#[cfg(not(feature = "tokio"))]
fn in_tokio_runtime() -> bool {
    false
}

/// Start the loop as a task on the calling tokio runtime (`io_on_runtime`).
#[cfg(all(unix, feature = "tokio"))]
fn spawn_on_runtime(setup: DriverSetup) -> Result<(), EndpointError> {
    crate::driver_task::spawn(setup)
}

/// `io_config` refuses `io_on_runtime` where it cannot run, and it cannot be set without the
/// `tokio` feature.
#[cfg(not(all(unix, feature = "tokio")))]
fn spawn_on_runtime(_setup: DriverSetup) -> Result<(), EndpointError> {
    Err(EndpointError::Config(
        "io_on_runtime needs Unix and the tokio feature",
    ))
}

/// Attach the kernel's steering program to a shard group; `false` (logged once) if the kernel
/// refuses it, and the shards then forward among themselves.
#[cfg(target_os = "linux")]
fn steer(socket: &std::net::UdpSocket, offset: usize, shards: usize) -> bool {
    match crate::steer_by_shard(socket, offset, shards) {
        Ok(()) => true,
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    "the kernel refused the shard steering program ({e}); shards forward datagrams \
                     to each other instead (slower)"
                )
            });
            false
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn steer(_socket: &std::net::UdpSocket, _offset: usize, _shards: usize) -> bool {
    false
}
