//! The UDP server.
//!
//! ```text
//!   receive thread (one per socket; sockets share the port through SO_REUSEPORT)
//!     recv_from ─▶ protocol state ─▶ new call? ─┬─ short handler: decode in place, run, reply
//!                  (sessions, reply cache)      └─ blocking handler: hand the buffer to the pool
//!   worker pool (created at start) ─▶ run ─▶ reply
//! ```
//!
//! Each receive thread owns one socket and one protocol state machine: the kernel hashes a
//! client's address to one socket, so a session always lives on one thread and receive
//! threads share nothing. A short handler runs to completion on the receiving thread: the
//! call costs no hand-off, its arguments are decoded from the receive buffer in place, and the
//! reply leaves with one gather `sendmsg` from the return value's own memory before a copy is
//! kept in the retransmit buffer. Handlers marked blocking go to a pool of worker threads
//! created at start, so they never stall receiving; their request buffer moves with them.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as JobReceiver, Sender as JobSender, TrySendError};
use rand::SeedableRng;
use rpc_core::marshal::Encoder;
use rpc_core::server::{Body, CallContext, Server, Ticket};
use rpc_core::service::{Dispatch, ReplySink};
use rpc_core::wire::{BusyReason, ErrorCode};
use rpc_core::{LamportClock, ServerConfig};

use rpc_core::config::deadline_after;

use crate::gather::{self, Gather, Head};
use crate::poll::{PollStrategy, wait_readable};
use crate::sock::{bind_udp, transient};
use crate::sys::{self, Recv};

/// Configuration of a [`UdpServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpServerConfig {
    /// Protocol settings: sizes, session and cache bounds, timeouts.
    pub protocol: ServerConfig,
    /// How receive threads wait.
    pub poll: PollStrategy,
    /// Receive threads, each with its own socket on the same port (SO_REUSEPORT). Default 1.
    pub receivers: usize,
    /// Worker threads for blocking handlers, created at start. Default 2.
    pub workers: usize,
    /// Calls waiting for a worker; beyond this the server answers busy. Default 1024.
    pub worker_queue: usize,
    /// Kernel send and receive buffer size to ask for, in bytes.
    pub socket_buffer: usize,
    /// CPUs to pin receive threads to (thread `i` to `cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    /// At shutdown, how long the server goes on receiving after it stopped taking new calls,
    /// answering them `ShuttingDown` (not executed) so that callers learn at once. Default
    /// 50 ms (skipped when no session is open).
    pub drain: Duration,
    /// At shutdown, how long to wait for the calls being executed to finish and their replies
    /// to leave. Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for UdpServerConfig {
    fn default() -> Self {
        Self {
            protocol: ServerConfig::default(),
            poll: PollStrategy::default(),
            receivers: 1,
            workers: 2,
            worker_queue: 1024,
            socket_buffer: 8 << 20,
            cpus: Vec::new(),
            drain: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl UdpServerConfig {
    /// Settings for loopback: 64 KiB datagrams.
    pub fn loopback() -> Self {
        let mut c = Self::default();
        c.protocol.max_datagram = rpc_core::config::MAX_UDP_PAYLOAD;
        c
    }

    /// With this poll strategy.
    pub fn poll(mut self, poll: PollStrategy) -> Self {
        self.poll = poll;
        self
    }

    /// Pinning receive threads to these CPUs.
    pub fn pin(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = cpus;
        self
    }
}

/// Counters of a running server, summed over its receive threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerCounters {
    /// Calls executed (handed to a handler).
    pub executed: u64,
    /// Duplicate requests answered from the reply cache without executing.
    pub answered_from_cache: u64,
    /// Duplicate requests dropped because their call was still executing.
    pub dropped_executing: u64,
    /// Datagrams dropped because they did not parse.
    pub malformed: u64,
    /// Datagrams dropped for any reason (malformed included).
    pub dropped: u64,
    /// Busy replies sent.
    pub busy: u64,
    /// Stale-session replies sent.
    pub stale: u64,
    /// Error replies sent.
    pub errors: u64,
    /// Bytes of replies held in the reply cache now.
    pub cached_bytes: u64,
    /// Sessions open now.
    pub sessions: u64,
    /// Handlers that panicked (each answered with an error reply).
    pub handler_panics: u64,
    /// Socket errors survived.
    pub io_errors: u64,
    /// Datagrams dropped for a missing, unexpected or wrong authentication tag.
    pub bad_tag: u64,
    /// Datagrams of a session from an address other than the session's.
    pub wrong_address: u64,
    /// Datagrams whose Lamport stamp was too far ahead to be honest.
    pub bad_stamp: u64,
    /// Hellos whose cookie was not valid.
    pub bad_cookie: u64,
    /// Hellos refused (sessions full, host limit, authentication, shutdown).
    pub refused_hellos: u64,
    /// Sessions evicted (only idle ones ever are).
    pub sessions_evicted: u64,
    /// Requests answered `ShuttingDown` during the drain.
    pub shutting_down: u64,
}

/// The counters of one receive thread, published after every datagram so that
/// [`ServerHandle::stats`] never waits for the state machine (and so for a handler).
#[derive(Debug, Default)]
struct Published {
    values: [AtomicU64; PUBLISHED],
}

const PUBLISHED: usize = 17;

impl Published {
    fn store(&self, core: &Server<SocketAddr>) {
        let s = core.stats();
        let values = [
            s.executed,
            s.answered_from_cache,
            s.dropped_executing,
            s.dropped.malformed,
            s.dropped.total(),
            s.busy,
            s.stale,
            s.errors,
            core.cached_bytes() as u64,
            core.session_count() as u64,
            s.dropped.bad_tag,
            s.dropped.wrong_address,
            s.dropped.bad_stamp,
            s.dropped.bad_cookie,
            s.refused_hellos,
            s.sessions_evicted,
            s.shutting_down,
        ];
        for (slot, v) in self.values.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    fn add_to(&self, c: &mut ServerCounters) {
        let v: [u64; PUBLISHED] = core::array::from_fn(|i| self.values[i].load(Ordering::Relaxed));
        c.executed += v[0];
        c.answered_from_cache += v[1];
        c.dropped_executing += v[2];
        c.malformed += v[3];
        c.dropped += v[4];
        c.busy += v[5];
        c.stale += v[6];
        c.errors += v[7];
        c.cached_bytes += v[8];
        c.sessions += v[9];
        c.bad_tag += v[10];
        c.wrong_address += v[11];
        c.bad_stamp += v[12];
        c.bad_cookie += v[13];
        c.refused_hellos += v[14];
        c.sessions_evicted += v[15];
        c.shutting_down += v[16];
    }
}

/// A server whose sockets are bound but which does not serve yet.
#[derive(Debug)]
pub struct UdpServer {
    sockets: Vec<UdpSocket>,
    local_addr: SocketAddr,
    config: UdpServerConfig,
    clock: Arc<LamportClock>,
}

impl UdpServer {
    /// Binds the server's sockets to `addr` (port 0 picks a free port). The server has a
    /// Lamport clock of its own; clients and servers of one process that should share one are
    /// made by a [`crate::Node`].
    pub fn bind(addr: SocketAddr, config: UdpServerConfig) -> io::Result<Self> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::bind_on(crate::node::new_clock(id), addr, config)
    }

    /// Binds as [`UdpServer::bind`] does, stamping with `clock`.
    pub(crate) fn bind_on(
        clock: Arc<LamportClock>,
        addr: SocketAddr,
        config: UdpServerConfig,
    ) -> io::Result<Self> {
        config
            .protocol
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if config.receivers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one receive thread",
            ));
        }
        let reuse = config.receivers > 1;
        let first = bind_udp(addr, reuse, config.socket_buffer)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..config.receivers {
            sockets.push(bind_udp(local_addr, true, config.socket_buffer)?);
        }
        Ok(Self {
            sockets,
            local_addr,
            config,
            clock,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the receive threads and the worker pool, serving `dispatch` (a generated
    /// `{Trait}Server`, or a `Router` of several).
    ///
    /// Refuses (`InvalidInput`) a service with blocking methods and no worker to run them.
    pub fn serve(self, dispatch: impl Dispatch + 'static) -> io::Result<ServerHandle> {
        if self.config.workers == 0 && dispatch.has_blocking() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the service has blocking methods, which run on the worker pool, but workers = 0",
            ));
        }
        let dispatch: Arc<dyn Dispatch> = Arc::new(dispatch);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            executing: AtomicU64::new(0),
            handler_panics: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
        });
        let incarnation_base = getrandom::u32().map_err(io::Error::other)?;
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(self.config.worker_queue.max(1));
        let mut receivers = Vec::new();
        for (i, socket) in self.sockets.into_iter().enumerate() {
            // Each receive thread's state machine is its own incarnation: session ids never
            // collide between threads, nor with those of an earlier run.
            let incarnation = incarnation_base.wrapping_add(i as u32).max(1);
            let seed = getrandom::u64().map_err(io::Error::other)?;
            let core = Server::new(
                self.config.protocol.clone(),
                incarnation,
                self.clock.clone(),
                rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            receivers.push(Arc::new(Rx {
                socket,
                core: Mutex::new(core),
                next_timer: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
                published: Published::default(),
            }));
        }
        let mut threads = Vec::new();
        for (i, rx) in receivers.iter().enumerate() {
            let cpu = (!self.config.cpus.is_empty())
                .then(|| self.config.cpus[i % self.config.cpus.len()]);
            let ctx = RxThread {
                cpu,
                rx: rx.clone(),
                shared: shared.clone(),
                dispatch: dispatch.clone(),
                jobs: jobs.clone(),
                poll: self.config.poll,
                buffer_len: self.config.protocol.max_datagram,
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("rpc-recv-{i}"))
                    .spawn(move || ctx.run())?,
            );
        }
        let mut workers = Vec::new();
        for i in 0..self.config.workers {
            let (rx, dispatch, shared) = (job_rx.clone(), dispatch.clone(), shared.clone());
            workers.push(
                thread::Builder::new()
                    .name(format!("rpc-worker-{i}"))
                    .spawn(move || worker(rx, dispatch, shared))?,
            );
        }
        Ok(ServerHandle {
            local_addr: self.local_addr,
            shared,
            receivers,
            threads,
            workers,
            jobs: Some(jobs),
            drain: self.config.drain,
            shutdown_timeout: self.config.shutdown_timeout,
        })
    }
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// Shutting down: new calls are answered `ShuttingDown`.
    draining: AtomicBool,
    /// Calls handed to the worker pool and not finished yet.
    executing: AtomicU64,
    handler_panics: AtomicU64,
    io_errors: AtomicU64,
}

struct Rx {
    socket: UdpSocket,
    core: Mutex<Server<SocketAddr>>,
    /// Earliest protocol timer, nanoseconds since `epoch`; `u64::MAX` if none.
    next_timer: AtomicU64,
    epoch: Instant,
    published: Published,
}

impl Rx {
    fn lock(&self) -> MutexGuard<'_, Server<SocketAddr>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_timer(&self, core: &Server<SocketAddr>) {
        let t = core.poll_timeout().map_or(u64::MAX, |t| {
            t.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        self.next_timer.store(t, Ordering::Relaxed);
    }

    fn timer(&self) -> Option<Instant> {
        let t = self.next_timer.load(Ordering::Relaxed);
        (t != u64::MAX).then(|| self.epoch + Duration::from_nanos(t))
    }

    /// Sends the control replies and cached replies the state machine has queued, and
    /// publishes the counters.
    fn flush(&self, core: &mut Server<SocketAddr>, shared: &Shared) {
        while let Some(t) = core.poll_transmit() {
            let tag = t.tag();
            let mut head = Head::new(&t.header, tag.as_ref());
            let mut gather = Gather::empty();
            gather.extend(&mut head, [t.body]);
            if gather.send_to(&head, &self.socket, t.dest).is_err() {
                shared.io_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.store_timer(core);
        self.published.store(core);
    }
}

/// A blocking call on its way to a worker, with the buffer holding its request.
struct Job {
    rx: Arc<Rx>,
    ticket: Ticket<SocketAddr>,
    ctx: CallContext,
    buf: Vec<u8>,
    body: Range<usize>,
}

/// Sends a reply (or an error reply) for `ticket` and keeps it for retransmission.
///
/// A reply of several datagrams leaves as one gather per datagram from the reply's own memory
/// (the body's segments are the handler's), then is copied into the retransmit buffer. A reply
/// of one datagram that would need a gather list and is kept anyway (the call is not
/// idempotent) is copied first, behind its header, and leaves from the retransmit buffer in one
/// piece: the copy is made either way, and one buffer costs the kernel less than a list.
fn send_reply(
    now: Instant,
    core: &mut Server<SocketAddr>,
    socket: &UdpSocket,
    shared: &Shared,
    ticket: &Ticket<SocketAddr>,
    reply: Result<&Encoder<'_>, ErrorCode>,
) {
    let Some(plan) = core.begin_reply(now, ticket, reply.map(Encoder::len)) else {
        return;
    };
    let body = reply.ok().filter(|_| plan.error().is_none());
    let segments = || body.into_iter().flat_map(Encoder::segments);
    let report = |sent: io::Result<()>| {
        if let Err(e) = sent {
            if !transient(&e) {
                tracing::warn!(error = %e, "udp server send failed");
            }
            shared.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Decided before building anything: the one-piece path needs no gather list.
    let one_piece = plan.count() == 1 && !ticket.idempotent() && !gather::packs_whole(segments());
    if one_piece {
        if let Some(datagram) = core.finish_reply(ticket, &plan, segments()) {
            report(sys::send_to(socket, datagram, &plan.dest));
            return;
        }
        // Not kept after all (no room in the cache): it leaves from the reply's memory.
    }
    for i in 0..plan.count() {
        let header = plan.header(i);
        let tag = plan.seal.as_ref().map(|seal| {
            let mut tagger = seal.begin(&header);
            if let Some(body) = body {
                body.for_each_in(plan.range(i), |s| tagger.update(s));
            }
            tagger.finish()
        });
        let mut head = Head::new(&header, tag.as_ref());
        let mut gather = Gather::empty();
        if let Some(body) = body {
            body.for_each_in(plan.range(i), |s| gather.push(&mut head, s));
        }
        report(gather.send_to(&head, socket, plan.dest));
    }
    if !one_piece {
        core.finish_reply(ticket, &plan, segments());
    }
}

/// The protocol state a reply needs: held by the receive thread already, or to be locked by
/// a worker once its handler has returned.
enum CoreRef<'a> {
    Held(&'a mut Server<SocketAddr>),
    Shared(&'a Rx),
}

/// The reply path handed to a dispatcher.
struct Sink<'a> {
    now: Instant,
    core: CoreRef<'a>,
    socket: &'a UdpSocket,
    shared: &'a Shared,
    ticket: Ticket<SocketAddr>,
    sent: bool,
}

impl Sink<'_> {
    fn reply(&mut self, reply: Result<&Encoder<'_>, ErrorCode>) {
        match &mut self.core {
            CoreRef::Held(core) => send_reply(
                self.now,
                core,
                self.socket,
                self.shared,
                &self.ticket,
                reply,
            ),
            CoreRef::Shared(rx) => {
                let mut core = rx.lock();
                let now = Instant::now();
                send_reply(
                    now,
                    &mut core,
                    self.socket,
                    self.shared,
                    &self.ticket,
                    reply,
                );
                rx.flush(&mut core, self.shared);
            }
        }
    }
}

impl ReplySink for Sink<'_> {
    fn send(&mut self, body: &Encoder<'_>) {
        if !std::mem::replace(&mut self.sent, true) {
            self.reply(Ok(body));
        }
    }
}

/// Runs a call through the dispatcher, answering errors and panics with error replies.
fn execute(mut sink: Sink<'_>, dispatch: &dyn Dispatch, ctx: &CallContext, body: &[u8]) {
    let result = catch_unwind(AssertUnwindSafe(|| dispatch.dispatch(ctx, body, &mut sink)));
    let error = match result {
        Ok(Ok(())) if sink.sent => return,
        // A dispatcher that returns without replying breaks its contract: say so.
        Ok(Ok(())) => ErrorCode::Other(u16::MAX),
        Ok(Err(e)) => e.code(),
        Err(_) => {
            sink.shared.handler_panics.fetch_add(1, Ordering::Relaxed);
            ErrorCode::HandlerPanicked
        }
    };
    if !sink.sent {
        sink.reply(Err(error));
    }
}

struct RxThread {
    cpu: Option<usize>,
    rx: Arc<Rx>,
    shared: Arc<Shared>,
    dispatch: Arc<dyn Dispatch>,
    jobs: JobSender<Job>,
    poll: PollStrategy,
    buffer_len: usize,
}

impl RxThread {
    fn run(self) {
        if let Some(cpu) = self.cpu {
            if let Err(e) = crate::pin_to_cpu(cpu) {
                tracing::warn!(cpu, error = %e, "could not pin receive thread");
            }
        }
        let mut buf = vec![0u8; self.buffer_len];
        let mut idle_since = Instant::now();
        let (mut empty_polls, clock_every) = (0u32, self.poll.clock_every());
        // The protocol's clock for a datagram is the last reading, if it is at most
        // `clock_every` polls old: its timers (idle sessions, stalled reassemblies) are
        // milliseconds and more, and reading the clock costs a call tens of nanoseconds.
        let mut clock = Some(idle_since);
        let mut since_clock = 0u32;
        let mut draining = false;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if !draining && self.shared.draining.load(Ordering::Acquire) {
                draining = true;
                let mut core = self.rx.lock();
                core.begin_drain();
                self.rx.flush(&mut core, &self.shared);
            }
            let (n, src) = match sys::recv_from(&self.rx.socket, &mut buf) {
                Recv::Data(d) => d,
                other => {
                    if let Recv::Failed(e) = other {
                        self.shared.io_errors.fetch_add(1, Ordering::Relaxed);
                        if !transient(&e) {
                            tracing::warn!(error = %e, "udp server receive failed");
                        }
                    }
                    empty_polls = empty_polls.wrapping_add(1);
                    if empty_polls & (clock_every - 1) != 0 {
                        std::hint::spin_loop();
                        continue;
                    }
                    let now = Instant::now();
                    (clock, since_clock) = (Some(now), 0);
                    let timer = self.rx.timer();
                    if timer.is_some_and(|t| t <= now) {
                        let mut core = self.rx.lock();
                        core.handle_timeout(now);
                        self.rx.flush(&mut core, &self.shared);
                    }
                    if self.poll.should_block(idle_since, now) {
                        let _ = wait_readable(
                            &self.rx.socket,
                            self.rx.timer(),
                            Duration::from_millis(20),
                        );
                        // Blocked for who knows how long: the reading is stale.
                        clock = None;
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
            };
            since_clock += 1;
            idle_since = match clock {
                Some(t) if since_clock <= clock_every => t,
                _ => {
                    let now = Instant::now();
                    (clock, since_clock) = (Some(now), 0);
                    now
                }
            };
            self.on_datagram(idle_since, &mut buf, n, src);
        }
    }

    fn on_datagram(&self, now: Instant, buf: &mut Vec<u8>, n: usize, src: SocketAddr) {
        let rx = &*self.rx;
        let mut core = rx.lock();
        let Some(call) = core.handle_datagram(now, src, &buf[..n]) else {
            rx.flush(&mut core, &self.shared);
            return;
        };
        let (ticket, ctx) = (call.ticket, call.context);
        let method = self.dispatch.method(ctx.interface, ctx.method);
        match method {
            Err(code) => send_reply(now, &mut core, &rx.socket, &self.shared, &ticket, Err(code)),
            Ok(m) if ctx.idempotent && !m.idempotent => send_reply(
                now,
                &mut core,
                &rx.socket,
                &self.shared,
                &ticket,
                Err(ErrorCode::NotIdempotent),
            ),
            Ok(m) if m.blocking => {
                let (job_buf, body) = match call.body {
                    Body::Borrowed(p) => {
                        // The payload ends the datagram (after the header, and the tag if any).
                        let range = n - p.len()..n;
                        let spare = vec![0u8; self.buffer_len];
                        (std::mem::replace(buf, spare), range)
                    }
                    Body::Owned(v) => {
                        let len = v.len();
                        (v, 0..len)
                    }
                };
                let job = Job {
                    rx: self.rx.clone(),
                    ticket,
                    ctx,
                    buf: job_buf,
                    body,
                };
                self.shared.executing.fetch_add(1, Ordering::AcqRel);
                if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                    self.jobs.try_send(job)
                {
                    self.shared.executing.fetch_sub(1, Ordering::AcqRel);
                    core.refuse(&job.ticket, BusyReason::Overloaded);
                }
            }
            Ok(_) => {
                // Run to completion here, decoding from the receive buffer in place.
                let body = call.body;
                let sink = Sink {
                    now,
                    core: CoreRef::Held(&mut core),
                    socket: &rx.socket,
                    shared: &self.shared,
                    ticket,
                    sent: false,
                };
                execute(sink, &*self.dispatch, &ctx, &body);
                if let Some(v) = body.into_owned_buffer() {
                    core.recycle(v);
                }
            }
        }
        rx.flush(&mut core, &self.shared);
    }
}

fn worker(jobs: JobReceiver<Job>, dispatch: Arc<dyn Dispatch>, shared: Arc<Shared>) {
    for job in jobs {
        // The handler runs without the receive thread's lock; the sink takes it to reply.
        let sink = Sink {
            now: Instant::now(),
            core: CoreRef::Shared(&job.rx),
            socket: &job.rx.socket,
            shared: &shared,
            ticket: job.ticket,
            sent: false,
        };
        execute(sink, &*dispatch, &job.ctx, &job.buf[job.body.clone()]);
        shared.executing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running server. Dropping it shuts it down.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    receivers: Vec<Arc<Rx>>,
    threads: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    jobs: Option<JobSender<Job>>,
    drain: Duration,
    shutdown_timeout: Duration,
}

impl core::fmt::Debug for Rx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rx")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters, summed over the receive threads. Never waits: each thread publishes its
    /// counters after every datagram, so a handler running (or a long one on a receive
    /// thread) does not delay them.
    pub fn stats(&self) -> ServerCounters {
        let mut c = ServerCounters {
            handler_panics: self.shared.handler_panics.load(Ordering::Relaxed),
            io_errors: self.shared.io_errors.load(Ordering::Relaxed),
            ..Default::default()
        };
        for rx in &self.receivers {
            rx.published.add_to(&mut c);
        }
        c
    }

    /// Shuts down gracefully and joins every thread: new calls are answered `ShuttingDown`
    /// (they do not execute) while the calls being executed finish and their replies leave,
    /// for at least the configured drain (when sessions are open) and at most the shutdown
    /// timeout. Returns the final counters.
    pub fn shutdown(mut self) -> ServerCounters {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        if self.threads.is_empty() && self.workers.is_empty() {
            return;
        }
        let start = Instant::now();
        self.shared.draining.store(true, Ordering::Release);
        let sessions = self.stats().sessions > 0;
        let drain_until = if sessions { start + self.drain } else { start };
        let give_up = deadline_after(start, self.shutdown_timeout);
        loop {
            let now = Instant::now();
            let busy = self.shared.executing.load(Ordering::Acquire) > 0;
            if now >= give_up || (!busy && now >= drain_until) {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Receive threads are gone: closing the queue lets workers drain it and exit.
        self.jobs = None;
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
