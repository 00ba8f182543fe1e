//! The UDP client: one session with one server, shared by every thread that holds a clone.
//!
//! # Threads
//!
//! Each call is made by a thread that waits for its reply; the caller's arguments stay in its
//! own memory (the shared descriptor) and only that thread ever sends its call's datagrams,
//! with one gather `sendmsg` each. Among the waiting threads, one at a time is the *leader*:
//! it receives from the socket, feeds the protocol state machine, and runs its timers. A
//! reply for another thread's call is handed over by moving the receive buffer (no copy) and
//! signalling that thread's slot; the others (*followers*) spin on their slot, or park, as the
//! poll strategy says. When the leader's own call ends it hands leadership on. With a single
//! calling thread, that thread is always the leader: send, spin on `recv`, decode in place.
//!
//! # Allocation
//!
//! None per call in steady state: receive buffers are pooled, the call table and signal slots
//! are allocated when the client connects.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use crossbeam_utils::CachePadded;
use rpc_core::client::{Body, CallId, CallRequest, Client, ClientStats, Event, Payload, Transmit};
use rpc_core::config::deadline_after;
use rpc_core::marshal::Encoder;
use rpc_core::service::{CallOptions, MethodDesc, Reply, Transport};
use rpc_core::wire::RefuseReason;
use rpc_core::{CallError, ClientConfig, ConfigError, DecodeError, LamportClock, LamportStamp};

use crate::gather::{Gather, Head};
use crate::poll::{PollStrategy, wait_readable};
use crate::sock::{bind_udp, transient};
use crate::sys::{self, Recv};

/// Configuration of a [`UdpClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpClientConfig {
    /// Protocol settings: datagram and message sizes, calls in flight, retransmission timeouts
    /// and the default deadline.
    pub protocol: ClientConfig,
    /// How waiting threads wait.
    pub poll: PollStrategy,
    /// How long [`UdpClient::connect`] waits for the server to open a session.
    pub connect_timeout: Duration,
    /// Kernel send and receive buffer size to ask for, in bytes.
    pub socket_buffer: usize,
}

impl Default for UdpClientConfig {
    fn default() -> Self {
        Self {
            protocol: ClientConfig::default(),
            poll: PollStrategy::default(),
            connect_timeout: Duration::from_secs(2),
            socket_buffer: 4 << 20,
        }
    }
}

impl UdpClientConfig {
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
}

/// Why [`UdpClient::connect`] could not open a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is not valid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Nothing listens at the server's address: the kernel reported the port unreachable.
    #[error("the server's port is unreachable: nothing listens at {0}")]
    Unreachable(SocketAddr),
    /// The server did not answer within the connect timeout (or, in authenticated mode, did
    /// not answer with the right key: both sides need the same one).
    #[error("no session: the server at {0} did not answer")]
    TimedOut(SocketAddr),
    /// The server refused a session until the connect timeout: it is full, or this host
    /// holds as many sessions as it may.
    #[error("the server refused a session: {0:?}")]
    Refused(RefuseReason),
    /// One side authenticates and the other does not: configure the same key on both.
    #[error("authentication mismatch: the server and the client disagree on the use of a key")]
    AuthMismatch,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> Self {
        let kind = match &e {
            ConnectError::Config(_) => io::ErrorKind::InvalidInput,
            ConnectError::Unreachable(_) => io::ErrorKind::ConnectionRefused,
            ConnectError::TimedOut(_) => io::ErrorKind::TimedOut,
            ConnectError::Io(e) => e.kind(),
            _ => io::ErrorKind::ConnectionRefused,
        };
        io::Error::new(kind, e)
    }
}

/// A client connected to one server. Clone it freely: clones share the session, and any
/// number of threads may call through it at once.
#[derive(Clone, Debug)]
pub struct UdpClient {
    inner: Arc<Inner>,
}

/// A slot's signal: `seq << 2 | flags`, written under the state lock, read without it.
const DONE: u64 = 1;
const TRANSMIT: u64 = 2;

#[derive(Debug)]
struct Inner {
    socket: UdpSocket,
    server: SocketAddr,
    poll: PollStrategy,
    window: usize,
    /// Waiter and signal slots are `seq & slot_mask`: a power of two at least the window.
    slot_mask: u64,
    buffer_len: usize,
    /// The deadline of a call that names none.
    default_deadline: Duration,
    state: Mutex<State>,
    /// Signalled when a call ends, for threads waiting for room in the window.
    room: Condvar,
    leader: AtomicBool,
    signals: Box<[CachePadded<AtomicU64>]>,
    /// Earliest protocol timer, in nanoseconds since `epoch`; `u64::MAX` if none.
    next_timer: AtomicU64,
    epoch: Instant,
    io_errors: AtomicU64,
}

#[derive(Debug)]
struct State {
    core: Client,
    waiters: Vec<Option<Waiter>>,
    waiting: usize,
    buffers: Vec<Vec<u8>>,
    sessions_seen: u64,
    /// Threads waiting for room in the window.
    window_waiters: usize,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    /// To unpark it: only threads that may park (not under `PollStrategy::Spin`, whose
    /// waiters watch their slot and the leader flag without ever sleeping).
    thread: Option<Thread>,
    outcome: Option<Outcome>,
}

impl Waiter {
    fn unpark(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Reply {
        buf: Vec<u8>,
        body: Range<usize>,
        request_stamp: LamportStamp,
        reply_stamp: LamportStamp,
    },
    Failed(CallError),
}

/// Datagrams sent per lock acquisition when a call has many fragments.
const BATCH: usize = 32;

impl UdpClient {
    /// Connects to `server`: opens a socket, and opens a session with the server (waiting up
    /// to the configured connect timeout). The client has a Lamport clock of its own; clients
    /// and servers of one process that should share one are made by a [`crate::Node`].
    pub fn connect(server: SocketAddr, config: UdpClientConfig) -> Result<Self, ConnectError> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::connect_on(crate::node::new_clock(id), server, config)
    }

    /// Connects as [`UdpClient::connect`] does, stamping with `clock` (whose node id is the
    /// client's id).
    pub(crate) fn connect_on(
        clock: Arc<LamportClock>,
        server: SocketAddr,
        config: UdpClientConfig,
    ) -> Result<Self, ConnectError> {
        // A server on this host is reached from the loopback address itself; any other from
        // whichever address the routes choose.
        let local: SocketAddr = match server {
            SocketAddr::V4(a) if a.ip().is_loopback() => (*a.ip(), 0).into(),
            SocketAddr::V6(a) if a.ip().is_loopback() => (*a.ip(), 0).into(),
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => ([0u16; 8], 0).into(),
        };
        config.protocol.validate()?;
        let socket = bind_udp(local, false, config.socket_buffer)?;
        socket.connect(server)?;
        let client_id = clock.node();
        let incarnation = getrandom::u32().map_err(io::Error::other)?;
        let window = config.protocol.window;
        let buffer_len = config.protocol.max_datagram;
        let default_deadline = config.protocol.default_deadline;
        let core = Client::new(config.protocol, client_id, incarnation, clock)?;
        let inner = Inner {
            socket,
            server,
            poll: config.poll,
            window,
            slot_mask: window.next_power_of_two() as u64 - 1,
            buffer_len,
            default_deadline,
            state: Mutex::new(State {
                core,
                waiters: (0..window.next_power_of_two()).map(|_| None).collect(),
                waiting: 0,
                buffers: Vec::new(),
                sessions_seen: 0,
                window_waiters: 0,
            }),
            room: Condvar::new(),
            leader: AtomicBool::new(false),
            signals: (0..window.next_power_of_two())
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            next_timer: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            io_errors: AtomicU64::new(0),
        };
        inner.handshake(config.connect_timeout)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.inner.server
    }

    /// This client's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// Protocol counters.
    pub fn stats(&self) -> ClientStats {
        *self.inner.lock().core.stats()
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.inner.lock().core.rtt().srtt()
    }

    /// Socket errors seen (and survived) so far.
    pub fn io_errors(&self) -> u64 {
        self.inner.io_errors.load(Ordering::Relaxed)
    }
}

/// Sends one datagram: the header (and its tag, in authenticated mode, computed over the
/// caller's memory where it lies), then the payload's bytes, gathered by the kernel from where
/// they are (one `send` when the datagram is small, one `sendmsg` otherwise).
fn send_transmit(
    socket: &UdpSocket,
    t: &Transmit,
    request: Option<&Encoder<'_>>,
) -> io::Result<()> {
    let tag = t.seal.as_ref().map(|seal| {
        let mut tagger = seal.begin(&t.header);
        match t.payload {
            Payload::None => {}
            Payload::Inline => tagger.update(t.inline()),
            Payload::Call { offset, len, .. } => {
                if let Some(r) = request {
                    r.for_each_in(offset..offset + len, |s| tagger.update(s));
                }
            }
        }
        tagger.finish()
    });
    let mut head = Head::new(&t.header, tag.as_ref());
    let mut gather = Gather::empty();
    match t.payload {
        Payload::None => {}
        Payload::Inline => gather.push(&mut head, t.inline()),
        Payload::Call { offset, len, .. } => {
            if let Some(r) = request {
                r.for_each_in(offset..offset + len, |s| gather.push(&mut head, s));
            }
        }
    }
    gather.send(&head, socket)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state machine consistent (every method
        // of `Client` is transactional on its own); keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, seq: u64) -> usize {
        (seq & self.slot_mask) as usize
    }

    fn store_timer(&self, core: &mut Client) {
        let t = core.poll_timeout().map_or(u64::MAX, |t| {
            t.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        self.next_timer.store(t, Ordering::Release);
    }

    fn timer_due(&self, now: Instant) -> bool {
        let t = self.next_timer.load(Ordering::Acquire);
        t != u64::MAX && now.saturating_duration_since(self.epoch).as_nanos() as u64 >= t
    }

    fn next_deadline(&self) -> Option<Instant> {
        let t = self.next_timer.load(Ordering::Acquire);
        (t != u64::MAX).then(|| self.epoch + Duration::from_nanos(t))
    }

    fn send(&self, t: &Transmit, request: Option<&Encoder<'_>>) {
        if let Err(e) = send_transmit(&self.socket, t, request) {
            // A lost datagram: the protocol's retransmission recovers it.
            if !transient(&e) {
                tracing::warn!(error = %e, "udp client send failed");
            }
            self.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handshake(&self, timeout: Duration) -> Result<(), ConnectError> {
        let start = Instant::now();
        let deadline = deadline_after(start, timeout);
        let mut buf = vec![0u8; self.buffer_len];
        let mut refused = None;
        {
            let mut st = self.lock();
            st.core.connect(start);
        }
        loop {
            let now = Instant::now();
            {
                let mut st = self.lock();
                while let Some(ev) = st.core.poll_event() {
                    if let Event::Refused { reason } = ev {
                        match reason {
                            RefuseReason::AuthRequired | RefuseReason::AuthUnsupported => {
                                return Err(ConnectError::AuthMismatch);
                            }
                            RefuseReason::ShuttingDown => return Err(ConnectError::ShuttingDown),
                            // No room now: the core tries again after a backoff.
                            other => refused = Some(other),
                        }
                    }
                }
                if st.core.session().is_some() {
                    st.sessions_seen = st.core.stats().sessions_opened;
                    self.store_timer(&mut st.core);
                    return Ok(());
                }
                if st.core.poll_timeout().is_some_and(|t| t <= now) {
                    st.core.handle_timeout(now);
                }
                while let Some(t) = st.core.poll_transmit(now) {
                    self.send(&t, None);
                }
            }
            if now >= deadline {
                return Err(match refused {
                    Some(reason) => ConnectError::Refused(reason),
                    None => ConnectError::TimedOut(self.server),
                });
            }
            let wake = self
                .lock()
                .core
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            if wait_readable(&self.socket, Some(wake), Duration::from_millis(50))? {
                match sys::recv(&self.socket, &mut buf) {
                    Recv::Data(n) => {
                        let mut st = self.lock();
                        let _ = st.core.handle_datagram(Instant::now(), &buf[..n]);
                    }
                    // The kernel says nothing listens there: no point in waiting.
                    Recv::Failed(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(ConnectError::Unreachable(self.server));
                    }
                    Recv::Failed(e) if !transient(&e) => return Err(e.into()),
                    _ => {}
                }
            }
        }
    }

    /// Takes up to [`BATCH`] datagrams `call` has waiting (and a handshake, if one is due).
    fn take_own(
        &self,
        st: &mut State,
        now: Instant,
        call: CallId,
        batch: &mut ArrayVec<Transmit, BATCH>,
    ) {
        while !batch.is_full() {
            match st.core.poll_transmit_for(now, call) {
                Some(t) => batch.push(t),
                None => break,
            }
        }
        self.store_timer(&mut st.core);
    }

    /// Sends the batch, then everything else `call` has waiting.
    fn send_own(&self, call: CallId, request: &Encoder<'_>, batch: &mut ArrayVec<Transmit, BATCH>) {
        loop {
            for t in batch.iter() {
                self.send(t, Some(request));
            }
            if !batch.is_full() {
                return;
            }
            batch.clear();
            let mut st = self.lock();
            self.take_own(&mut st, Instant::now(), call, batch);
        }
    }

    /// Sends every datagram `call` has waiting.
    fn flush_own(&self, call: CallId, request: &Encoder<'_>) {
        let mut batch = ArrayVec::new();
        {
            let mut st = self.lock();
            self.take_own(&mut st, Instant::now(), call, &mut batch);
        }
        self.send_own(call, request, &mut batch);
    }

    /// Gives `outcome` to the waiter of `seq` (if it still waits) and wakes it.
    fn deliver(&self, st: &mut State, seq: u64, outcome: Outcome) {
        let slot = self.slot(seq);
        match st.waiters[slot].as_mut() {
            Some(w) if w.seq == seq => {
                w.outcome = Some(outcome);
                self.signals[slot].store(seq << 2 | DONE, Ordering::Release);
                w.unpark();
            }
            _ => {
                if let Outcome::Reply { buf, .. } = outcome {
                    st.buffers.push(buf);
                }
            }
        }
    }

    /// Routes failures to their waiters; returns this thread's own failure, if any.
    fn route_events(&self, st: &mut State, me: CallId) -> Option<CallError> {
        let mut mine = None;
        while let Some(ev) = st.core.poll_event() {
            if let Event::CallFailed { call, error } = ev {
                if call == me {
                    mine = Some(error);
                } else {
                    self.deliver(st, call.seq(), Outcome::Failed(error));
                }
            }
        }
        mine
    }

    /// Tells the other waiters whose calls have datagrams to send (after timers fired or a
    /// session opened) to send them.
    fn notify_transmits(&self, st: &mut State, me: CallId) {
        if st.waiting <= 1 {
            return;
        }
        for (slot, w) in st.waiters.iter().enumerate() {
            let Some(w) = w else { continue };
            if w.seq == me.seq() {
                continue;
            }
            if let Some(id) = st.core.call_id(w.seq) {
                if st.core.wants_transmit(id) {
                    let sig = &self.signals[slot];
                    sig.store(sig.load(Ordering::Relaxed) | TRANSMIT, Ordering::Release);
                    w.unpark();
                }
            }
        }
    }

    /// After the state machine ran: route what it produced. Returns this thread's failure.
    fn after_core(&self, st: &mut State, me: CallId, force_scan: bool) -> Option<CallError> {
        let mine = self.route_events(st, me);
        let opened = st.core.stats().sessions_opened;
        if force_scan || opened != st.sessions_seen {
            st.sessions_seen = opened;
            self.notify_transmits(st, me);
        }
        self.store_timer(&mut st.core);
        mine
    }
}

/// The end of this thread's call as seen by the leader.
enum Own {
    Reply {
        body: OwnBody,
        request_stamp: LamportStamp,
        reply_stamp: LamportStamp,
    },
    Failed(CallError),
}

enum OwnBody {
    /// In this thread's receive buffer.
    InBuffer(Range<usize>),
    /// Reassembled.
    Owned(Vec<u8>),
    /// Handed over by the leader with its buffer.
    Handed(Vec<u8>, Range<usize>),
}

impl Inner {
    /// Processes one received datagram as the leader. Returns this thread's outcome if the
    /// datagram ended its call; otherwise fills `batch` with its call's datagrams to send.
    fn on_datagram(
        &self,
        now: Instant,
        me: CallId,
        buf: &mut Vec<u8>,
        n: usize,
        batch: &mut ArrayVec<Transmit, BATCH>,
        leading: &mut bool,
    ) -> Option<Own> {
        let mut st = self.lock();
        let got = st.core.handle_datagram(now, &buf[..n]).map(|r| {
            let result = r.result.map(|b| match b {
                // The payload ends the datagram (it follows the header, and the tag if any).
                Body::Borrowed(p) => OwnBody::InBuffer(n - p.len()..n),
                Body::Owned(v) => OwnBody::Owned(v),
            });
            (r.call, result, r.request_stamp, r.reply_stamp)
        });
        let mut own = None;
        if let Some((call, result, request_stamp, reply_stamp)) = got {
            if call == me {
                own = Some(match result {
                    Ok(body) => Own::Reply {
                        body,
                        request_stamp,
                        reply_stamp,
                    },
                    Err(e) => Own::Failed(e),
                });
            } else {
                let outcome = match result {
                    Ok(OwnBody::InBuffer(range)) => {
                        let spare = st.buffers.pop().unwrap_or_else(|| vec![0; self.buffer_len]);
                        let full = std::mem::replace(buf, spare);
                        Outcome::Reply {
                            buf: full,
                            body: range,
                            request_stamp,
                            reply_stamp,
                        }
                    }
                    Ok(OwnBody::Owned(v) | OwnBody::Handed(v, _)) => {
                        let len = v.len();
                        Outcome::Reply {
                            buf: v,
                            body: 0..len,
                            request_stamp,
                            reply_stamp,
                        }
                    }
                    Err(e) => Outcome::Failed(e),
                };
                self.deliver(&mut st, call.seq(), outcome);
            }
        }
        if let Some(e) = self.after_core(&mut st, me, false) {
            own.get_or_insert(Own::Failed(e));
        }
        if own.is_none() && st.core.wants_transmit(me) {
            self.take_own(&mut st, now, me, batch);
        }
        if own.is_some() {
            // Retire the call while the lock is held anyway: the fast path then needs no
            // further lock once the reply is decoded.
            self.retire(&mut st, me, *leading);
            *leading = false;
        }
        own
    }

    /// Runs due timers as the leader.
    fn on_timers(&self, me: CallId, batch: &mut ArrayVec<Transmit, BATCH>) -> Option<Own> {
        let mut st = self.lock();
        let now = Instant::now();
        if st.core.poll_timeout().is_some_and(|t| t <= now) {
            st.core.handle_timeout(now);
        }
        let own = self.after_core(&mut st, me, true).map(Own::Failed);
        if own.is_none() && st.core.wants_transmit(me) {
            self.take_own(&mut st, now, me, batch);
        }
        own
    }

    /// Takes the outcome a leader delivered to this thread's slot.
    fn take_delivered(&self, me: CallId) -> Option<Own> {
        let slot = self.slot(me.seq());
        let mut st = self.lock();
        let w = st.waiters[slot].as_mut().filter(|w| w.seq == me.seq())?;
        Some(match w.outcome.take()? {
            Outcome::Reply {
                buf,
                body,
                request_stamp,
                reply_stamp,
            } => Own::Reply {
                body: OwnBody::Handed(buf, body),
                request_stamp,
                reply_stamp,
            },
            Outcome::Failed(e) => Own::Failed(e),
        })
    }

    /// Waits for the end of `me`, as leader or follower. Sets `leading` when this thread
    /// became the leader (it must hand leadership on when the call ends).
    fn wait(
        &self,
        started: Instant,
        me: CallId,
        request: &Encoder<'_>,
        buf: &mut Vec<u8>,
        leading: &mut bool,
    ) -> Own {
        let slot = self.slot(me.seq());
        let mut idle_since = started;
        let (mut empty_polls, clock_every) = (0u32, self.poll.clock_every());
        loop {
            let sig = self.signals[slot].load(Ordering::Acquire);
            if sig >> 2 == me.seq() {
                if sig & DONE != 0 {
                    if let Some(own) = self.take_delivered(me) {
                        return own;
                    }
                }
                if sig & TRANSMIT != 0 {
                    self.signals[slot].store(me.seq() << 2 | (sig & DONE), Ordering::Release);
                    self.flush_own(me, request);
                }
            }
            if !*leading {
                *leading = !self.leader.load(Ordering::Relaxed)
                    && self
                        .leader
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok();
            }
            if !*leading {
                // Follower: the leader signals and unparks us.
                let now = Instant::now();
                if self.poll.should_block(idle_since, now) {
                    thread::park_timeout(Duration::from_millis(5));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let n = match sys::recv(&self.socket, buf) {
                Recv::Data(n) => n,
                Recv::Failed(e) if !transient(&e) => {
                    tracing::error!(error = %e, "udp client receive failed");
                    self.io_errors.fetch_add(1, Ordering::Relaxed);
                    return Own::Failed(CallError::Io(e.kind()));
                }
                empty => {
                    if matches!(empty, Recv::Failed(_)) {
                        // An ICMP error, say, from a server restarting: a lost datagram.
                        self.io_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    empty_polls = empty_polls.wrapping_add(1);
                    if empty_polls & (clock_every - 1) != 0 {
                        std::hint::spin_loop();
                        continue;
                    }
                    let now = Instant::now();
                    if self.timer_due(now) {
                        let mut batch = ArrayVec::new();
                        if let Some(own) = self.on_timers(me, &mut batch) {
                            return own;
                        }
                        if !batch.is_empty() {
                            self.send_own(me, request, &mut batch);
                        }
                    }
                    if self.poll.should_block(idle_since, now) {
                        let woke = wait_readable(
                            &self.socket,
                            self.next_deadline(),
                            Duration::from_millis(50),
                        );
                        if !matches!(woke, Ok(false)) {
                            idle_since = Instant::now();
                        }
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
            };
            idle_since = Instant::now();
            let mut batch = ArrayVec::new();
            if let Some(own) = self.on_datagram(idle_since, me, buf, n, &mut batch, leading) {
                return own;
            }
            if !batch.is_empty() {
                self.send_own(me, request, &mut batch);
            }
        }
    }

    /// Waits (as the poll strategy says, and at most until `deadline`) until a call may have
    /// ended and made room in the window.
    fn wait_for_room<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> MutexGuard<'a, State> {
        st.window_waiters += 1;
        if self.poll == PollStrategy::Spin {
            drop(st);
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            st = self.lock();
        } else {
            // Woken by `retire`; the timeout bounds the wait by the deadline and by a lost
            // wake-up (a call ended before this thread registered).
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5));
            st = match self.room.wait_timeout(st, wait) {
                Ok((st, _)) => st,
                Err(p) => p.into_inner().0,
            };
        }
        st.window_waiters -= 1;
        st
    }

    /// Forgets the waiter of `me` and, if this thread leads, hands leadership on.
    fn retire(&self, st: &mut State, me: CallId, leading: bool) {
        let slot = self.slot(me.seq());
        st.core.cancel(me);
        if st.window_waiters > 0 {
            self.room.notify_all();
        }
        if st.waiters[slot].as_ref().is_some_and(|w| w.seq == me.seq()) {
            st.waiters[slot] = None;
            st.waiting -= 1;
            self.signals[slot].store(0, Ordering::Release);
        }
        if leading {
            self.leader.store(false, Ordering::Release);
            // Someone must receive for the calls still waiting.
            if st.waiting > 0 {
                if let Some(w) = st.waiters.iter().flatten().next() {
                    w.unpark();
                }
            }
        }
    }

    /// Ends a call: retires it if that was not done yet, and recycles a reply buffer.
    fn finish(&self, me: CallId, extra: Option<Vec<u8>>, leading: bool) {
        let slot = self.slot(me.seq());
        let registered = self.signals[slot].load(Ordering::Acquire) >> 2 == me.seq();
        if !leading && extra.is_none() && !registered {
            return;
        }
        let mut st = self.lock();
        self.retire(&mut st, me, leading);
        if let Some(v) = extra {
            if v.capacity() >= self.buffer_len && st.buffers.len() < 2 * self.window {
                st.buffers.push(v);
            } else {
                st.core.recycle(v);
            }
        }
    }
}

thread_local! {
    /// Each calling thread's receive buffer, kept between calls.
    static RECV_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Transport for UdpClient {
    fn call<R>(
        &self,
        method: &'static MethodDesc,
        options: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        let inner = &*self.inner;
        let mut now = Instant::now();
        let deadline = deadline_after(now, options.timeout.unwrap_or(inner.default_deadline));
        let req = CallRequest {
            interface: method.interface,
            method: method.id,
            len: request.len(),
            idempotent: method.idempotent,
            deadline: Some(deadline),
        };
        let mut buf = RECV_BUF.take();
        if buf.len() < inner.buffer_len {
            buf.resize(inner.buffer_len, 0);
        }
        // Built in place and passed by reference: a batch is a few kilobytes.
        let mut batch = ArrayVec::new();
        let (me, first) = {
            let mut st = inner.lock();
            let (me, first) = loop {
                // The protocol frees a call's slot when the call ends, but its waiter holds the
                // slot of the waiter table until it has collected the outcome: a new call whose
                // sequence number maps there must wait for that, or it would take the outcome
                // away from under the old waiter.
                let free = st.waiters[inner.slot(st.core.next_seq())].is_none();
                let started = if free {
                    st.core.start_call_sending(now, req)
                } else {
                    Err(CallError::WindowFull)
                };
                match started {
                    Ok(started) => break started,
                    Err(CallError::WindowFull) => {
                        // Wait for a call to end, as long as this call's deadline allows: it
                        // has not been sent, so it fails with `WindowFull` (not executed).
                        now = Instant::now();
                        if now >= deadline {
                            return Err(CallError::WindowFull);
                        }
                        st = inner.wait_for_room(st, deadline);
                        now = Instant::now();
                    }
                    Err(e) => return Err(e),
                }
            };
            let slot = inner.slot(me.seq());
            st.waiters[slot] = Some(Waiter {
                seq: me.seq(),
                thread: (inner.poll != PollStrategy::Spin).then(thread::current),
                outcome: None,
            });
            st.waiting += 1;
            inner.signals[slot].store(me.seq() << 2, Ordering::Release);
            if first.is_none() {
                inner.take_own(&mut st, now, me, &mut batch);
            }
            (me, first)
        };
        match first {
            Some(t) => {
                // The common call: one datagram, sent straight away. Its timers are published
                // after it left, off the path its reply waits on.
                inner.send(&t, Some(request));
                inner.store_timer(&mut inner.lock().core);
            }
            None => inner.send_own(me, request, &mut batch),
        }
        let mut leading = false;
        let own = inner.wait(now, me, request, &mut buf, &mut leading);
        let (result, extra) = match own {
            Own::Failed(e) => (Err(e), None),
            Own::Reply {
                body,
                request_stamp,
                reply_stamp,
            } => {
                let reply = |value| Reply {
                    value,
                    request_stamp,
                    reply_stamp,
                };
                match body {
                    OwnBody::InBuffer(range) => (
                        decode(&buf[range]).map(reply).map_err(CallError::BadReply),
                        None,
                    ),
                    OwnBody::Owned(v) => {
                        (decode(&v).map(reply).map_err(CallError::BadReply), Some(v))
                    }
                    OwnBody::Handed(v, range) => (
                        decode(&v[range]).map(reply).map_err(CallError::BadReply),
                        Some(v),
                    ),
                }
            }
        };
        // The waiter is forgotten (and its signal slot reused) only under the lock, so a
        // registered signal still naming this call means it has not been retired yet.
        inner.finish(me, extra, leading);
        RECV_BUF.set(buf);
        result
    }
}
