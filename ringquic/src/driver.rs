//! The I/O thread's loop (seed point 1 and its follow-up): the thread's entry point, and the
//! loop that alternates between the protocol work of a turn (`core.rs`) and the backend's wait
//! for I/O.
//!
//! One turn of the loop:
//!
//! 1. run the application tasks spawned on this thread ([`Endpoint::spawn`](crate::Endpoint::spawn));
//! 2. take the application's commands from the mailbox;
//! 3. drive every connection marked dirty (datagrams arrived, a timer fired, the application
//!    wrote): fire timers, hand endpoint events to the endpoint, wake application tasks, and
//!    write transmits straight into free TX buffers — at most
//!    [`MAX_TRANSMITS_PER_DRIVE`](crate::core::MAX_TRANSMITS_PER_DRIVE) GSO batches per
//!    connection per turn, so one busy connection cannot starve the rest;
//! 4. sleep in the backend (`io_uring_enter`) until a completion, the earliest connection
//!    timer, or a wakeup — unless work is already waiting, then do not sleep;
//! 5. feed received datagrams to the endpoint and their connections, marking them dirty.
//!
//! Steps 2, 3 and 5 are [`Core`]'s. A connection that finds every TX buffer in flight waits
//! there and becomes dirty again when a send completes and frees one: no spinning, no
//! unbounded queue.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use quinn_proto as proto;
use tracing::{debug, error, info, warn};

use crate::{
    core::{internal_error, Admission, Core},
    handoff::DIRECT_TICK,
    io::{BackendKind, IoBackend, IoConfig},
    shared::{Command, EndpointShared},
    ConnectionError, EndpointError,
};

/// What the loop needs to start.
pub(crate) struct DriverSetup {
    pub shared: Arc<EndpointShared>,
    pub socket: std::net::UdpSocket,
    pub io: IoConfig,
    pub backend: Option<BackendKind>,
    pub endpoint: proto::Endpoint,
    pub admission: Admission,
    /// Tests: use this backend instead of a kernel one.
    #[cfg(test)]
    pub fake: Option<crate::io::fake::FakeFactory>,
    /// Dropped when the loop is done, which tells the last handle's drop it may join.
    pub exited: mpsc::Sender<()>,
}

/// The thread's entry point. `ready` says whether the backend could be set up.
pub(crate) fn run(setup: DriverSetup, ready: mpsc::SyncSender<Result<(), EndpointError>>) {
    if let Some(cpu) = setup.io.pin_cpu {
        if let Err(source) = crate::io::pin_current_thread(cpu) {
            let _ = ready.send(Err(EndpointError::Backend {
                what: "pinning the I/O thread to a CPU",
                source,
            }));
            return;
        }
    }
    let (mut driver, _exited) = match Driver::open(setup) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);

    let result = std::panic::catch_unwind(AssertUnwindSafe(|| driver.run()));
    driver.finish(exit_reason(result));
    // Dropping the driver drops the backend, which cancels and reaps in-flight I/O before its
    // buffers are freed.
    drop(driver);
}

/// Why the loop ended, from what it returned: the error every connection still open fails with.
pub(crate) fn exit_reason(result: std::thread::Result<std::io::Result<()>>) -> ConnectionError {
    match result {
        Ok(Ok(())) => ConnectionError::LocallyClosed,
        Ok(Err(e)) => {
            error!("I/O backend failed: {e}; closing the endpoint");
            internal_error(format!("ringquic I/O backend failed: {e}"))
        }
        Err(_) => {
            error!("ringquic I/O loop panicked; failing every connection");
            internal_error("ringquic I/O loop panicked".into())
        }
    }
}

fn log_backend(kind: BackendKind, addr: SocketAddr) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if first {
        info!(backend = %kind, %addr, "ringquic endpoint running");
    } else {
        debug!(backend = %kind, %addr, "ringquic endpoint running");
    }
}

/// The I/O loop: its backend, and everything else ([`Core`]), kept apart so the backend's
/// receive callback can borrow the core while the backend runs. On the I/O thread
/// ([`Driver::run`]) or as a task on the application's runtime (`driver_task.rs`).
pub(crate) struct Driver {
    pub(crate) io: Box<dyn IoBackend>,
    pub(crate) core: Core,
    commands: VecDeque<Command>,
    /// How long to poll without sleeping before a sleep ([`IoConfig::busy_poll`]).
    busy_poll: Duration,
}

/// What a turn does after its protocol work ([`Driver::plan`]).
pub(crate) enum Plan {
    /// The loop is done (shut down, every close out).
    Exit,
    /// Wait for I/O until `deadline` (`None`: until there is some), spinning until
    /// `spin_until` first if set; then [`Core::end_turn`].
    Wait {
        deadline: Option<Instant>,
        spin_until: Option<Instant>,
    },
}

/// Tasks polled per turn at most, so I/O keeps flowing under a busy application.
const MAX_TASK_POLLS_PER_TURN: usize = 1024;

impl Driver {
    /// Open the backend on `setup.socket` and make the loop, on the calling thread: the I/O
    /// thread, or the application's thread that binds on a runtime (`io.on_runtime`).
    pub(crate) fn open(setup: DriverSetup) -> Result<(Self, mpsc::Sender<()>), EndpointError> {
        let DriverSetup {
            shared,
            socket,
            io,
            backend,
            endpoint,
            admission,
            #[cfg(test)]
            fake,
            exited,
        } = setup;
        #[cfg(test)]
        let opened = match fake {
            Some(f) => Ok(f(&socket, &io)),
            None => crate::io::open_backend(socket, &io, backend),
        };
        #[cfg(not(test))]
        let opened = crate::io::open_backend(socket, &io, backend);
        let backend = opened?;
        let local = backend.local_addr().map_err(|source| EndpointError::Socket {
            option: "getsockname",
            source,
        })?;
        log_backend(backend.kind(), local);
        if io.on_runtime {
            // No thread is the I/O thread: the task may run on any of the runtime's.
            shared.enter_runtime(backend.kind(), local);
        } else {
            shared.enter_io_thread(backend.kind(), local);
            shared.mailbox.set_waker(backend.waker());
        }
        // What one TX buffer holds; the backend's own GSO limit, which a GSO failure or a rebind
        // can change, is asked at every drive.
        let max_segments = (io.tx_buffer_size / io.max_udp_payload.max(1)).max(1);
        #[cfg(target_os = "linux")]
        if io.app_thread_sends {
            shared.set_direct_sender(backend.direct_sender(max_segments.min(backend.max_gso_segments())));
        }
        let driver = Driver {
            io: backend,
            core: Core::new(shared, endpoint, max_segments, admission, io.app_thread_sends),
            commands: VecDeque::new(),
            busy_poll: io.busy_poll,
        };
        Ok((driver, exited))
    }

    /// Take the application's commands and drive the connections they name, outside a turn:
    /// for a call that needs the loop's answer now, on a runtime the loop shares
    /// (`driver_task.rs`).
    #[cfg_attr(not(all(unix, feature = "tokio")), allow(dead_code))]
    pub(crate) fn take_commands(&mut self) {
        self.core.begin_turn(&mut self.commands, &mut *self.io);
    }

    /// The loop on the I/O thread, until shutdown or a backend error.
    fn run(&mut self) -> std::io::Result<()> {
        loop {
            let (deadline, spin_until) = match self.plan()? {
                Plan::Exit => return Ok(()),
                Plan::Wait { deadline, spin_until } => (deadline, spin_until),
            };
            let core = &mut self.core;
            let io = &mut *self.io;
            let waited = Self::wait(io, core, deadline, spin_until);
            core.shared().handoff.woke();
            waited?;
            core.end_turn(io);
        }
    }

    /// A turn up to its wait: run the tasks spawned on the loop, take the commands, drive the
    /// dirty connections; then say how long the wait may last, or that the loop is done.
    pub(crate) fn plan(&mut self) -> std::io::Result<Plan> {
        // Application tasks spawned on this loop run first.
        self.run_local_tasks();
        let core = &mut self.core;
        let io = &mut *self.io;
        core.begin_turn(&mut self.commands, io);
        if let Some(until) = core.flush_deadline() {
            // Shutting down: done once every close is out (the backend's shutdown submits
            // what is queued and waits for it) and answered by its peer or at the end of
            // its closing period, or at the time limit.
            if !core.closes_pending(io) {
                // Hand what was just queued to the kernel before the backend shuts down.
                io.turn(Some(Instant::now()), &mut |meta, data| core.receive(meta, data))?;
                return Ok(Plan::Exit);
            }
            if Instant::now() >= until {
                if core.closes_unsent() > 0 {
                    warn!(
                        connections = core.closes_unsent(),
                        "shutdown: some connections' CONNECTION_CLOSE could not be sent in time"
                    );
                } else {
                    debug!(
                        connections = core.closes_unanswered(),
                        "shutdown: some peers did not answer the CONNECTION_CLOSE in time"
                    );
                }
                return Ok(Plan::Exit);
            }
        }
        // Datagrams another shard forwarded (taken with the commands) are routed after the
        // wait: do not sleep on them.
        let busy = core.has_dirty()
            || core.has_received()
            || core.shared().mailbox.is_notified()
            || core.shared().has_tasks();
        let now = Instant::now();
        let mut deadline = if busy { Some(now) } else { core.next_timeout() };
        if let Some(until) = core.flush_deadline() {
            // While closes are due, wake at least every 5 ms (a send completion, an ACK or a
            // pacing timer lets them out) and at the time limit.
            deadline = Some(
                deadline
                    .unwrap_or(until)
                    .min(now + Duration::from_millis(5))
                    .min(until),
            );
        }
        if let Some(due) = core.shared().handoff.flush_due() {
            // A flush scheduled on an application runtime: send for it if it is overdue.
            deadline = Some(deadline.map_or(due, |d| d.min(due)));
        }
        if core.direct_active(now) {
            // Application threads send directly: look at their connections' timers often
            // enough that those need no wakeup (handoff.rs).
            deadline = Some(deadline.map_or(now + DIRECT_TICK, |d| d.min(now + DIRECT_TICK)));
        }
        // Busy-poll (opt-in) only when there is nothing to do yet.
        let spin_until = (!busy && !self.busy_poll.is_zero() && core.flush_deadline().is_none())
            .then(|| Instant::now() + self.busy_poll);
        // This turn's sends go to the kernel in the wait; then, if connections were sent
        // for directly since the commands were taken, do not sleep past their timers.
        let handoff = &core.shared().handoff;
        handoff.submitted(core.turn());
        if handoff.going_to_sleep(deadline) {
            deadline = Some(now);
        }
        Ok(Plan::Wait { deadline, spin_until })
    }

    /// One wait for I/O: if `spin_until` is set, first turn the backend without sleeping until
    /// there is work (a datagram, a command, a local task, a due timer, a freed TX buffer
    /// somebody waits for) or that time passes; then, if nothing turned up, sleep until
    /// `deadline` as usual.
    fn wait(
        io: &mut dyn IoBackend,
        core: &mut Core,
        deadline: Option<Instant>,
        spin_until: Option<Instant>,
    ) -> std::io::Result<()> {
        if let Some(until) = spin_until {
            loop {
                io.turn(Some(Instant::now()), &mut |meta, data| core.receive(meta, data))?;
                let now = Instant::now();
                let work = core.has_received()
                    || core.shared().mailbox.is_notified()
                    || core.shared().has_tasks()
                    || deadline.is_some_and(|d| d <= now)
                    || (core.waits_for_tx() && io.has_free_tx());
                if work {
                    return Ok(());
                }
                if now >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        io.turn(deadline, &mut |meta, data| core.receive(meta, data))
    }

    /// Run the application tasks that are ready (bounded, so I/O keeps flowing).
    fn run_local_tasks(&mut self) {
        let shared = self.core.shared();
        for _ in 0..MAX_TASK_POLLS_PER_TURN {
            let Some(runnable) = shared.next_task() else {
                break;
            };
            runnable.run();
        }
    }

    /// The loop has ended (shutdown, backend failure or panic): nothing will drive connections
    /// any more. Fail everything still waiting so no future hangs, and refuse new commands and
    /// new connections.
    pub(crate) fn finish(&mut self, reason: ConnectionError) {
        let shared = self.core.shared().clone();
        // Commands still queued are dropped.
        drop(shared.mailbox.close());
        // Tasks spawned on this thread are cancelled once the rest is down.
        let tasks = shared.take_tasks();
        self.core.fail_all(reason);
        // Application threads send no more, and the port is free once this thread is done.
        #[cfg(target_os = "linux")]
        shared.set_direct_sender(None);
        shared.driver_exited();
        self.core.publish_stats(&*self.io);
        self.io.shutdown();
        tasks.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crate::{shared::Command, ConnectionError, Endpoint, TransportErrorCode};

    fn configs() -> (crate::ServerConfig, crate::ClientConfig) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = c.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
        let server = crate::ServerConfig::with_single_cert(vec![der.clone()], key.into()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = crate::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        (server, client)
    }

    /// A panic on the I/O thread fails pending futures with an error instead of hanging them,
    /// and later calls fail fast.
    #[test]
    fn panic_on_the_io_thread_fails_pending_futures() {
        let (sc, cc) = configs();
        let server = Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(cc);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = server.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let _s = server.accept().await.unwrap().await.unwrap();
            let conn = connecting.await.unwrap();
            let (_send, mut recv) = conn.open_bi().await.unwrap();
            let reader = async { recv.read(&mut [0u8; 10]).await };
            let kill = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(client.shared().mailbox.push(Command::Panic).is_ok());
            };
            let (res, ()) =
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(reader, kill) })
                    .await
                    .expect("a pending read hung after the I/O thread panicked");
            match res {
                Err(crate::ReadError::ConnectionLost(ConnectionError::TransportError(e))) => {
                    assert_eq!(e.code, TransportErrorCode::INTERNAL_ERROR)
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(
                conn.open_uni().await,
                Err(ConnectionError::TransportError(_))
            ));
            assert!(client.accept().await.is_none());
            assert!(matches!(
                client.connect(addr, "localhost"),
                Err(crate::ConnectError::EndpointStopping)
            ));
        });
    }

    /// Run `f` on a current-thread runtime, failing with `what` if it takes over `secs` seconds.
    fn block_on_within<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(secs), f).await })
            .unwrap_or_else(|_| panic!("{what}"))
    }

    fn fake_endpoint(
        net: &Arc<crate::io::fake::FakeNet>,
        server: Option<crate::ServerConfig>,
        client: Option<crate::ClientConfig>,
        tx_buffers: usize,
    ) -> Endpoint {
        let net = net.clone();
        let mut b = Endpoint::builder()
            .tx_buffers(tx_buffers)
            .fake_backend(Box::new(move |sock, cfg| {
                let addr = sock.local_addr().expect("bound socket");
                Box::new(crate::io::fake::FakeBackend::new(net, addr, cfg))
            }));
        if let Some(s) = server {
            b = b.server_config(s);
        }
        if let Some(c) = client {
            b = b.default_client_config(c);
        }
        b.bind("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// Push `size` bytes from client to server over the fake network; both ends hash.
    fn fake_transfer(
        faults: crate::io::fake::Faults,
        tx_buffers: usize,
        size: usize,
    ) -> (Endpoint, Endpoint) {
        use ring::digest::{digest, SHA256};
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(faults);
        let server = fake_endpoint(&net, Some(sc), None, 64);
        let client = fake_endpoint(&net, None, Some(cc), tx_buffers);
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                let addr = server.local_addr().unwrap();
                let connecting = client.connect(addr, "localhost").unwrap();
                let srv = server.clone();
                let receiver = async move {
                    let conn = srv.accept().await.unwrap().await.unwrap();
                    let mut recv = conn.accept_uni().await.unwrap();
                    let got = recv.read_to_end(usize::MAX).await.unwrap();
                    (conn, got)
                };
                let sender = async {
                    let conn = connecting.await.unwrap();
                    let mut send = conn.open_uni().await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                    conn
                };
                let ((sconn, got), conn) = tokio::join!(receiver, sender);
                assert_eq!(got.len(), data.len());
                assert_eq!(digest(&SHA256, &got).as_ref(), digest(&SHA256, &data).as_ref());
                conn.close(0u32.into(), b"");
                drop(sconn);
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "transfer over the fake network hung: client {:?} server {:?}",
                    client.io_stats(),
                    server.io_stats()
                )
            });
        });
        assert!(net.dropped() > 0 || faults.drop_every.is_none());
        (server, client)
    }

    /// A backend that fails under a live connection ends the endpoint with an error that
    /// says so (`INTERNAL_ERROR` and the backend's error), not as if the application had
    /// closed it; later calls fail at once.
    #[test]
    fn a_failed_backend_is_an_internal_error() {
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(crate::io::fake::Faults::default());
        let server = fake_endpoint(&net, Some(sc), None, 8);
        let client = fake_endpoint(&net, None, Some(cc), 8);
        block_on_within(20, "a failed backend hung the endpoint", async {
            let addr = server.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let _s = server.accept().await.unwrap().await.unwrap();
            let _conn = connecting.await.unwrap();
            net.set_faults(crate::io::fake::Faults {
                fail_turns: true,
                ..Default::default()
            });
            // Make the server's loop turn (and fail) now, without anything the client
            // could answer with before its own turns fail.
            // (It may have failed already: then these fail with the error checked below.)
            if let Ok(mut wake) = _s.open_uni().await {
                let _ = wake.write_all(b"x").await;
            }
            match _s.closed().await {
                ConnectionError::TransportError(e) => {
                    assert_eq!(e.code, TransportErrorCode::INTERNAL_ERROR);
                    assert!(e.reason.contains("backend failed"), "{}", e.reason);
                }
                other => panic!("the server side: {other:?}"),
            }
            // The server's I/O thread has exited: no accept, no connect.
            assert!(server.accept().await.is_none());
            assert!(matches!(
                server.connect_with(configs().1, addr, "localhost"),
                Err(crate::ConnectError::EndpointStopping)
            ));
        });
    }

    /// One TX buffer held "in the kernel" for three turns, drops, duplicates and batches
    /// delivered backwards: the loop parks the connection on `waiting_tx`, resumes it on
    /// completions, and the data arrives exact.
    #[test]
    fn fake_backend_tx_exhaustion_loss_duplication_reordering() {
        let faults = crate::io::fake::Faults {
            drop_every: Some(13),
            duplicate_every: Some(7),
            reverse_batches: true,
            tx_completion_turns: 3,
            ..Default::default()
        };
        let (_server, client) = fake_transfer(faults, 1, 2 << 20);
        let s = client.io_stats();
        assert!(s.tx_exhausted > 0, "{s:?}");
    }

    /// Poll `cond` every 5 ms until it holds; `false` after `secs` seconds.
    async fn eventually(secs: u64, cond: impl Fn() -> bool) -> bool {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while !cond() {
            if std::time::Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A client rebinds in the middle of an upload, with a second, idle connection open: the
    /// loop swaps the backend's socket, `local_addr` reports the new address, every connection
    /// migrates (the server sees both at the new address), and the upload arrives intact.
    #[test]
    fn fake_backend_rebind_moves_every_connection() {
        use ring::digest::{digest, SHA256};
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(crate::io::fake::Faults::default());
        let server = fake_endpoint(&net, Some(sc), None, 64);
        let client = fake_endpoint(&net, None, Some(cc), 8);
        let data: Vec<u8> = (0..4 << 20).map(|i| (i * 31 % 251) as u8).collect();
        block_on_within(60, "a transfer across a rebind hung", async {
            let addr = server.local_addr().unwrap();
            let old = client.local_addr().unwrap();
            let mut pairs = Vec::new();
            for _ in 0..2 {
                let connecting = client.connect(addr, "localhost").unwrap();
                let s = server.accept().await.unwrap().await.unwrap();
                pairs.push((connecting.await.unwrap(), s));
            }
            assert!(pairs.iter().all(|(_, s)| s.remote_address() == old));
            let (uploader, receiver) = (&pairs[0].0, &pairs[0].1);
            let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let new = fresh.local_addr().unwrap();
            let receive = async {
                let mut recv = receiver.accept_uni().await.unwrap();
                recv.read_to_end(usize::MAX).await.unwrap()
            };
            let upload = async {
                let mut send = uploader.open_uni().await.unwrap();
                send.write_all(&data[..1 << 20]).await.unwrap();
                client.rebind(fresh).unwrap();
                assert!(
                    eventually(10, || client.local_addr().unwrap() == new).await,
                    "local_addr still {:?}",
                    client.local_addr()
                );
                send.write_all(&data[1 << 20..]).await.unwrap();
                send.finish().unwrap();
                send
            };
            let (got, _send) = tokio::join!(receive, upload);
            assert_eq!(digest(&SHA256, &got).as_ref(), digest(&SHA256, &data).as_ref());
            // Each connection was told its local address changed: it moved to a new
            // connection ID, retiring the old one.
            for (c, _) in &pairs {
                let tx = c.stats().frame_tx;
                assert!(tx.retire_connection_id >= 1, "{tx:?}");
            }
            // The idle connection migrated too: the rebind pinged it from the new address.
            assert!(
                eventually(10, || pairs.iter().all(|(_, s)| s.remote_address() == new)).await,
                "the server still sees {:?}",
                pairs.iter().map(|(_, s)| s.remote_address()).collect::<Vec<_>>()
            );
            let (c2, s2) = &pairs[1];
            let mut send = c2.open_uni().await.unwrap();
            send.write_all(b"after the rebind").await.unwrap();
            send.finish().unwrap();
            let mut recv = s2.accept_uni().await.unwrap();
            assert_eq!(recv.read_to_end(100).await.unwrap(), b"after the rebind");
            assert_eq!(net.rebinds_refused(), 0);
        });
    }

    /// A rebind the backend refuses changes nothing: `rebind` itself succeeded (the socket was
    /// fine and handed over), the endpoint keeps its old address and its connection, which
    /// still carries data.
    #[test]
    fn fake_backend_refused_rebind_keeps_the_old_socket() {
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(crate::io::fake::Faults {
            fail_rebind: true,
            ..Default::default()
        });
        let server = fake_endpoint(&net, Some(sc), None, 8);
        let client = fake_endpoint(&net, None, Some(cc), 8);
        block_on_within(20, "a refused rebind hung the endpoint", async {
            let addr = server.local_addr().unwrap();
            let old = client.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let s = server.accept().await.unwrap().await.unwrap();
            let c = connecting.await.unwrap();
            client
                .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            assert!(eventually(10, || net.rebinds_refused() == 1).await);
            assert_eq!(client.local_addr().unwrap(), old);
            let mut send = c.open_uni().await.unwrap();
            send.write_all(b"still on the old socket").await.unwrap();
            send.finish().unwrap();
            let mut recv = s.accept_uni().await.unwrap();
            assert_eq!(recv.read_to_end(100).await.unwrap(), b"still on the old socket");
            assert_eq!(s.remote_address(), old);
            assert_eq!(net.unreachable(), 0, "nothing went to an address nobody is at");
        });
    }

    /// Every fifth send fails: counted, treated as loss, the transfer completes.
    #[test]
    fn fake_backend_failed_sends_are_loss() {
        let faults = crate::io::fake::Faults {
            fail_send_every: Some(5),
            ..Default::default()
        };
        let (_server, client) = fake_transfer(faults, 8, 1 << 20);
        assert!(client.io_stats().send_errors > 0);
    }
}
