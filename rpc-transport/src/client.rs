//! The client driver: one session with one server over any [`Link`], shared by every thread
//! and every future that holds a clone.
//!
//! # Calls
//!
//! A call is started by the thread (or the future) that makes it, which sends the call's
//! datagrams itself, gathered from the caller's own memory (the shared descriptor): nothing is
//! copied, on the first transmission or any retransmission. Small requests started by futures
//! in one pass of an executor leave together, packed into one datagram (they are copied: a
//! few scalars each, as the first segment of any datagram is). The session's state machine
//! (`rpc_core::client::Client`) sits behind a mutex; a waiter table holds each call's outcome
//! until its owner takes it.
//!
//! # Who receives
//!
//! One party at a time receives for everyone, the *leader*: a thread blocked in a call, or a
//! future being polled (which drives the link once per executor pass, however many of its
//! client's calls the pass polls), or, under tokio, a task woken by the reactor. It feeds the
//! state machine, runs its timers, and hands each reply to its waiter by moving the receive
//! buffer (no copy; replies that shared a datagram with others are copied, being small) and
//! waking it (a thread is unparked only once the state's lock is released). A thread that is
//! not leading yields its core while its strategy spins (the leader yields back whenever it
//! has handed outcomes to threads) and parks once it would block; a future that is not
//! leading returns `Pending`. At most twice as many threads as there are CPUs are in blocking
//! calls at once (`turnstile`): the others wait their turn parked, so that adding threads
//! never takes the core the leader needs.
//!
//! # Allocation
//!
//! None per call in steady state: receive buffers are pooled, the call table and waiter slots
//! are allocated when the client connects, and a call future owns its descriptor inline.

use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use crossbeam_utils::CachePadded;
use rpc_core::client::{
    Body, CallId, CallRequest, Client as Core, ClientStats, Event, Payload, Transmit,
};
use rpc_core::config::deadline_after;
use rpc_core::marshal::Encoder;
use rpc_core::service::{AsyncTransport, CallOptions, MethodDesc, Reply, Transport};
use rpc_core::wire::{HEADER_LEN, RefuseReason, TAG_LEN, packets};
use rpc_core::{CallError, DecodeError, LamportStamp};

use crate::gather::{Gather, Head, Unpacked};
use crate::link::{Link, RecvBatch};
use crate::poll::PollStrategy;
use crate::sock::transient;
use crate::timer::{LastTimer, PublishedTimer};

/// Datagrams received at once.
const RECV_BATCH: usize = 32;

/// How long a thread waiting for its call parks before it looks whether someone leads.
const FOLLOWER_PARK: Duration = Duration::from_micros(50);

/// Datagrams sent per lock acquisition when a call has many fragments.
const BATCH: usize = 32;

/// A call just started.
struct Started {
    id: CallId,
    /// Its first datagram, if it is one.
    first: Option<Transmit>,
    /// This thread became the leader (a thread's call, when nobody led).
    leading: bool,
    /// A future's call with company in flight whose small request was packed to leave with
    /// theirs (its timers are published already).
    coalesced: bool,
    /// A thread's call whose one datagram left under the state lock, over a link whose sends
    /// are cheap (its timers are published already).
    sent: bool,
    /// The latest precise reading of the clock: after the send for a call that started at the
    /// estimate, the start's own otherwise.
    clock: Instant,
}

/// The longest reply a future decodes under the state lock (see `Inner::complete`).
const DECODE_UNDER_LOCK: usize = 256;

/// A slot's signal: `seq << 2 | flags`, written under the state lock, read without it.
const DONE: u64 = 1;
const TRANSMIT: u64 = 2;

/// Why a client could not open its session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is not valid.
    #[error("invalid configuration: {0}")]
    Config(#[from] rpc_core::ConfigError),
    /// Nothing listens at the server's address: the kernel reported the port unreachable.
    #[error("the server's port is unreachable: nothing listens at {0}")]
    Unreachable(String),
    /// The server did not answer within the connect timeout (or, in authenticated mode, did
    /// not answer with the right key: both sides need the same one).
    #[error("no session: the server at {0} did not answer")]
    TimedOut(String),
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
    /// The io_uring link could not be set up on this kernel (and falling back to plain
    /// sockets was not allowed).
    #[error(transparent)]
    Uring(#[from] crate::uring::UringError),
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> Self {
        let kind = match &e {
            ConnectError::Config(_) => io::ErrorKind::InvalidInput,
            ConnectError::Unreachable(_) => io::ErrorKind::ConnectionRefused,
            ConnectError::TimedOut(_) => io::ErrorKind::TimedOut,
            ConnectError::Io(e) => e.kind(),
            ConnectError::Uring(_) => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::ConnectionRefused,
        };
        io::Error::new(kind, e)
    }
}

/// What a client needs to run, besides its link: the protocol state machine and how its
/// waiters wait.
#[derive(Debug)]
pub struct ClientParts {
    /// The session's state machine, configured.
    pub core: Core,
    /// How waiting threads wait.
    pub poll: PollStrategy,
    /// Threads admitted into blocking calls at once (the others wait their turn parked);
    /// 0: twice the CPUs the connecting thread may run on.
    pub calling_threads: usize,
}

/// Twice the CPUs this thread may run on: what `calling_threads` 0 stands for.
pub(crate) fn default_calling_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(1, usize::from)
}

/// A client of one server over a link. Clone it freely: clones share the session, and any
/// number of threads and futures may call through it at once.
pub struct Client<L: Link> {
    pub(crate) inner: Arc<Inner<L>>,
}

impl<L: Link> Clone for Client<L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: Link> std::fmt::Debug for Client<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<L: Link> {
    pub(crate) link: L,
    pub(crate) server: L::Addr,
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
    /// Earliest protocol timer.
    timer: PublishedTimer,
    io_errors: AtomicU64,
    /// The receive buffers and the link's receiver, for whoever leads.
    recv: Mutex<Receiving<L>>,
    /// A bundle of small requests (taken from `State::coalesced`) while it is sent.
    sending: Mutex<Vec<u8>>,
    /// The executor pass in which a future last drove the link (see `exec::pass`).
    last_pump: AtomicU64,
    /// Datagrams the last receive of a pump got.
    last_batch: std::sync::atomic::AtomicUsize,
    /// Small requests are waiting in `State::coalesced`.
    has_coalesced: AtomicBool,
    /// Pumps so far (the clock is read on every 16th).
    pumps: AtomicU64,
    /// Threads among the waiters (a copy of `State::threads`, read without the lock).
    thread_waiters: std::sync::atomic::AtomicUsize,
    /// Admission of threads into blocking calls.
    turnstile: crate::turnstile::Turnstile,
    /// The time a blocking call over a cheap link starts at, until it has sent.
    estimate: crate::estimate::Estimate,
    /// A task drives the link (under tokio): futures only wait to be woken.
    pub(crate) driven: AtomicBool,
    /// The link's peer is gone for good.
    dead: AtomicBool,
    /// The driver task under tokio.
    #[cfg(feature = "tokio")]
    pub(crate) tokio: crate::tokio_driver::Slot,
}

/// What the leader receives with: the buffers, and the link's receiver (its receive state).
struct Receiving<L: Link> {
    batch: RecvBatch<L::Addr>,
    rx: L::Rx,
}

impl<L: Link> Receiving<L> {
    /// Receives into the batch.
    fn recv(&mut self, link: &L) -> io::Result<usize> {
        link.recv(&mut self.rx, &mut self.batch)
    }
}

struct State {
    core: Core,
    waiters: Vec<Option<Waiter>>,
    waiting: usize,
    /// Of the waiters, threads (which can lead).
    threads: usize,
    /// Small buffers, for replies copied out of a datagram with several.
    buffers: Vec<Vec<u8>>,
    /// Receive buffers given back by their calls, for the receive batch.
    spares: Vec<Vec<u8>>,
    sessions_seen: u64,
    /// Threads waiting for room in the window.
    window_waiters: usize,
    /// Futures waiting for room in the window.
    window_tasks: Vec<Waker>,
    /// Outcomes handed to waiting threads since the leader last looked.
    handed_to_threads: u64,
    /// Threads to wake once the lock is released.
    unparks: ArrayVec<Thread, UNPARKS>,
    /// The protocol timer last published in `timer`.
    timer_published: LastTimer,
    /// Wakers of this crate's executors kept from ended calls, for the next calls polled
    /// with them: reusing one saves an atomic increment and decrement of its count per call.
    spare_wakers: SpareWakers,
    /// Small requests started by futures, waiting to leave together in one datagram (packed
    /// by the start that holds this lock already).
    coalesced: Vec<u8>,
}

/// Wakers of ended calls kept for the next calls polled with them, in a table indexed by a
/// hash of the waker's data pointer (a newer one replaces an older one in its entry).
struct SpareWakers(Box<[Option<Waker>; SPARE_WAKERS]>);

/// Entries of [`SpareWakers`]: the calls a pass may end before it starts new ones.
const SPARE_WAKERS: usize = 256;

impl SpareWakers {
    fn new() -> Self {
        Self(Box::new([const { None }; SPARE_WAKERS]))
    }

    fn entry(waker: &Waker) -> usize {
        // Fibonacci hashing of the pointer (allocations are at least 16 bytes apart).
        let h = (waker.data() as usize as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - SPARE_WAKERS.trailing_zeros())) as usize
    }

    /// Keeps `waker` (dropping the one it replaces).
    fn keep(&mut self, waker: Waker) {
        let e = Self::entry(&waker);
        self.0[e] = Some(waker);
    }

    /// A clone of `waker`: the spare that wakes the same task if there is one.
    fn clone_of(&mut self, waker: &Waker) -> Waker {
        let e = &mut self.0[Self::entry(waker)];
        match e.take() {
            Some(w) if w.will_wake(waker) => w,
            other => {
                *e = other;
                waker.clone()
            }
        }
    }
}

struct Waiter {
    seq: u64,
    wake: Wake,
    /// The waker is one of this crate's executors' (which live as long as the executor):
    /// kept as a spare when the call ends.
    spare: bool,
    outcome: Option<Outcome>,
}

/// How a waiter is told its call ended.
enum Wake {
    /// A thread: unparked.
    Thread(Thread),
    /// A future: woken.
    Task(Waker),
}

impl Waiter {
    /// Wakes the waiter: a future at once, a thread once the state is unlocked (woken under
    /// the lock, on a shared core, it would run only to wait for the lock).
    fn wake(&self, unparks: &mut ArrayVec<Thread, UNPARKS>) {
        match &self.wake {
            Wake::Thread(t) => {
                if let Err(e) = unparks.try_push(t.clone()) {
                    e.element().unpark();
                }
            }
            Wake::Task(w) => w.wake_by_ref(),
        }
    }
}

/// Threads woken under the lock, at most, before the lock is released.
const UNPARKS: usize = 16;

/// The client's state, locked; threads it must wake are unparked once it is released.
struct Locked<'a>(Option<MutexGuard<'a, State>>);

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.0.as_deref().expect("locked until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_deref_mut().expect("locked until dropped")
    }
}

impl<'a> Locked<'a> {
    /// The plain guard (for a condition variable), waking first whom it must.
    fn into_guard(mut self) -> MutexGuard<'a, State> {
        let mut guard = self.0.take().expect("locked until dropped");
        for t in guard.unparks.drain(..) {
            t.unpark();
        }
        guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else {
            return;
        };
        if guard.unparks.is_empty() {
            return;
        }
        let unparks = std::mem::take(&mut guard.unparks);
        drop(guard);
        for t in unparks {
            t.unpark();
        }
    }
}

enum Outcome {
    Reply {
        buf: Vec<u8>,
        body: Range<usize>,
        request_stamp: LamportStamp,
        reply_stamp: LamportStamp,
    },
    Failed(CallError),
}

/// The end of a call as its owner takes it.
enum Own {
    Reply {
        buf: Vec<u8>,
        body: Range<usize>,
        request_stamp: LamportStamp,
        reply_stamp: LamportStamp,
    },
    /// A reply left where it was received, in buffer `index` of the receive batch its leader
    /// holds (a receive `in_place`); the call is retired already.
    Kept {
        index: usize,
        body: Range<usize>,
        request_stamp: LamportStamp,
        reply_stamp: LamportStamp,
    },
    Failed(CallError),
}

impl From<Outcome> for Own {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Reply {
                buf,
                body,
                request_stamp,
                reply_stamp,
            } => Own::Reply {
                buf,
                body,
                request_stamp,
                reply_stamp,
            },
            Outcome::Failed(e) => Own::Failed(e),
        }
    }
}

/// Hands each segment of a transmit's payload to `f`, in order: its inline bytes, or its range
/// of the call's request.
fn payload_segments<'a>(
    t: &'a Transmit,
    request: Option<&'a Encoder<'_>>,
    mut f: impl FnMut(&'a [u8]),
) {
    match t.payload {
        Payload::None => {}
        Payload::Inline => f(t.inline()),
        Payload::Call { offset, len, .. } => {
            if let Some(r) = request {
                r.for_each_in(offset..offset + len, f);
            }
        }
    }
}

/// Builds the datagram of a transmit (header, tag if authenticated, payload segments) and
/// hands its gather list to `f`: packed (see `gather`), or not where `pack` is false (a
/// cheap link's, see `Link::cheap_send`).
fn with_datagram<R>(
    t: &Transmit,
    request: Option<&Encoder<'_>>,
    pack: bool,
    f: impl FnOnce(&[IoSlice<'_>]) -> R,
) -> R {
    let tag = t.seal.as_ref().map(|seal| {
        let mut tagger = seal.begin(&t.header);
        payload_segments(t, request, |s| tagger.update(s));
        tagger.finish()
    });
    if !pack {
        let mut u = Unpacked::new(&t.header, tag.as_ref());
        payload_segments(t, request, |s| u.push(s));
        return f(u.iov());
    }
    let mut head = Head::new(&t.header, tag.as_ref());
    let mut g = Gather::empty();
    payload_segments(t, request, |s| g.push(&mut head, s));
    g.with_iov(&head, f)
}

impl<L: Link> Client<L> {
    /// A client over `link`, talking to `server`: opens its session (waiting up to
    /// `connect_timeout`).
    pub fn open(
        link: L,
        server: L::Addr,
        parts: ClientParts,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let ClientParts {
            core,
            poll,
            calling_threads,
        } = parts;
        let calling_threads = match calling_threads {
            0 => default_calling_threads(),
            n => n,
        };
        let config = core.config().clone();
        let window = config.window;
        let buffer_len = config
            .max_datagram
            .max(link.max_datagram().min(config.max_datagram))
            .max(link.recv_buffer_len());
        let inner = Inner {
            server,
            poll,
            window,
            slot_mask: window.next_power_of_two() as u64 - 1,
            buffer_len,
            default_deadline: config.default_deadline,
            state: Mutex::new(State {
                core,
                waiters: (0..window.next_power_of_two()).map(|_| None).collect(),
                waiting: 0,
                threads: 0,
                buffers: Vec::new(),
                spares: Vec::new(),
                sessions_seen: 0,
                window_waiters: 0,
                window_tasks: Vec::new(),
                handed_to_threads: 0,
                unparks: ArrayVec::new(),
                timer_published: LastTimer::default(),
                spare_wakers: SpareWakers::new(),
                coalesced: Vec::with_capacity(buffer_len),
            }),
            room: Condvar::new(),
            leader: AtomicBool::new(false),
            signals: (0..window.next_power_of_two())
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            timer: PublishedTimer::new(),
            io_errors: AtomicU64::new(0),
            recv: Mutex::new(Receiving {
                batch: RecvBatch::new(RECV_BATCH, buffer_len),
                rx: link.receiver(),
            }),
            sending: Mutex::new(Vec::with_capacity(buffer_len)),
            last_pump: AtomicU64::new(u64::MAX),
            last_batch: std::sync::atomic::AtomicUsize::new(0),
            has_coalesced: AtomicBool::new(false),
            pumps: AtomicU64::new(0),
            thread_waiters: std::sync::atomic::AtomicUsize::new(0),
            turnstile: crate::turnstile::Turnstile::new(calling_threads),
            estimate: crate::estimate::Estimate::new(),
            driven: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            #[cfg(feature = "tokio")]
            tokio: crate::tokio_driver::Slot::default(),
            link,
        };
        inner.handshake(connect_timeout)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The server's address.
    pub fn server(&self) -> L::Addr {
        self.inner.server
    }

    /// The link.
    pub fn link(&self) -> &L {
        &self.inner.link
    }

    /// Protocol counters.
    pub fn stats(&self) -> ClientStats {
        *self.inner.lock().core.stats()
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.inner.lock().core.rtt().srtt()
    }

    /// Calls in flight now (started, not ended), and calls whose owner has not collected
    /// the outcome yet.
    pub fn in_flight(&self) -> (usize, usize) {
        let st = self.inner.lock();
        (st.core.in_flight(), st.waiting)
    }

    /// Link errors seen (and survived) so far.
    pub fn io_errors(&self) -> u64 {
        self.inner.io_errors.load(Ordering::Relaxed)
    }
}

impl<L: Link> Inner<L> {
    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves the state machine consistent (every method
        // of `Client` is transactional on its own); keep going.
        Locked(Some(self.state.lock().unwrap_or_else(|p| p.into_inner())))
    }

    fn slot(&self, seq: u64) -> usize {
        (seq & self.slot_mask) as usize
    }

    fn store_timer(&self, st: &mut State) {
        let next = st.core.poll_timeout();
        self.timer.publish(&mut st.timer_published, next);
    }

    fn timer_due(&self, now: Instant) -> bool {
        self.timer.due(now)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timer.get()
    }

    /// The earliest protocol timer, as stored (see `PublishedTimer::raw`).
    #[cfg(feature = "tokio")]
    pub(crate) fn next_timer(&self) -> u64 {
        self.timer.raw()
    }

    /// The instant of a stored timer.
    #[cfg(feature = "tokio")]
    pub(crate) fn deadline_of(&self, t: u64) -> Option<Instant> {
        self.timer.instant_of(t)
    }

    /// Wakes every future waiting on this client (they look at their calls again).
    #[cfg(feature = "tokio")]
    pub(crate) fn wake_tasks(&self) {
        let st = self.lock();
        for w in st.waiters.iter().flatten() {
            if let Wake::Task(t) = &w.wake {
                t.wake_by_ref();
            }
        }
        for w in &st.window_tasks {
            w.wake_by_ref();
        }
    }

    fn report(&self, sent: io::Result<()>) {
        if let Err(e) = sent {
            // A lost datagram: the protocol's retransmission recovers it.
            if !transient(&e) {
                tracing::warn!(error = %e, "client send failed");
            }
            self.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, t: &Transmit, request: Option<&Encoder<'_>>) {
        let pack = !self.link.cheap_send();
        let awaited = t.awaited();
        let sent = with_datagram(t, request, pack, |iov| {
            if awaited {
                self.link.send_awaited(None, &self.server, iov)
            } else {
                self.link.send(&self.server, iov)
            }
        });
        self.report(sent);
    }

    fn handshake(&self, timeout: Duration) -> Result<(), ConnectError> {
        let start = Instant::now();
        let deadline = deadline_after(start, timeout);
        let mut refused = None;
        let mut recv = self.recv.lock().unwrap_or_else(|p| p.into_inner());
        recv.batch.set_limit(1);
        self.lock().core.connect(start);
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
                    self.store_timer(&mut st);
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
                    None => ConnectError::TimedOut(format!("{:?}", self.server)),
                });
            }
            let wake = self
                .lock()
                .core
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            self.link
                .wait(&mut recv.rx, Some(wake), Duration::from_millis(50))?;
            match recv.recv(&self.link) {
                Ok(_) => {
                    let mut st = self.lock();
                    if let Some((d, _)) = recv.batch.get(0) {
                        for p in packets(d) {
                            let _ = st.core.handle_datagram(Instant::now(), p);
                        }
                    }
                }
                // The kernel says nothing listens there: no point in waiting.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ConnectError::Unreachable(format!("{:?}", self.server)));
                }
                Err(e) if !transient(&e) => return Err(e.into()),
                Err(_) => {}
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
        self.store_timer(st);
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

    /// Sends the small requests waiting to leave together: their bundle is swapped out under
    /// the state lock and sent after it is released.
    fn flush_coalesced(&self) {
        if !self.has_coalesced.load(Ordering::Acquire) {
            return;
        }
        let mut out = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.lock();
            if st.coalesced.is_empty() {
                return;
            }
            std::mem::swap(&mut *out, &mut st.coalesced);
            self.has_coalesced.store(false, Ordering::Release);
        }
        let sent = self.link.send(&self.server, &[IoSlice::new(&out)]);
        out.clear();
        drop(out);
        self.report(sent);
    }

    /// Packs a call's one datagram (whose payload packs whole: a few small segments) into
    /// the bundle leaving next, under the state lock its start holds; returns false if it
    /// must be sent on its own. A bundle that would grow past the link's limit is sent first,
    /// under the lock: that is rare where bundles are long (a datagram's worth), and costs no
    /// system call where they are short (shared memory).
    fn coalesce(&self, st: &mut State, t: &Transmit, request: &Encoder<'_>) -> bool {
        let Payload::Call { offset, len, .. } = t.payload else {
            return false;
        };
        let mut segments_fit = true;
        let mut n = 0;
        request.for_each_in(offset..offset + len, |s| {
            n += 1;
            segments_fit &= s.len() <= rpc_core::marshal::COPY_THRESHOLD;
        });
        if !segments_fit || n > 8 {
            return false;
        }
        let tag = t.seal.as_ref().map(|seal| {
            let mut tagger = seal.begin(&t.header);
            request.for_each_in(offset..offset + len, |s| tagger.update(s));
            tagger.finish()
        });
        let size = HEADER_LEN + tag.map_or(0, |_| TAG_LEN) + len;
        let c = &mut st.coalesced;
        if !c.is_empty() && c.len() + size > self.link.bundle_max() {
            let sent = self.link.send(&self.server, &[IoSlice::new(c)]);
            c.clear();
            self.report(sent);
        }
        c.extend_from_slice(&t.header);
        if let Some(tag) = tag {
            c.extend_from_slice(&tag);
        }
        request.for_each_in(offset..offset + len, |s| c.extend_from_slice(s));
        self.has_coalesced.store(true, Ordering::Release);
        true
    }

    /// Gives `outcome` to the waiter of `seq` (if it still waits) and wakes it.
    fn deliver(&self, st: &mut State, seq: u64, outcome: Outcome) {
        let slot = self.slot(seq);
        match st.waiters[slot].as_mut() {
            Some(w) if w.seq == seq => {
                w.outcome = Some(outcome);
                self.signals[slot].store(seq << 2 | DONE, Ordering::Release);
                w.wake(&mut st.unparks);
                if matches!(w.wake, Wake::Thread(_)) {
                    st.handed_to_threads += 1;
                }
            }
            _ => {
                if let Outcome::Reply { buf, .. } = outcome {
                    st.buffers.push(buf);
                }
            }
        }
    }

    /// Routes failures to their waiters; returns `me`'s own failure, if any.
    fn route_events(&self, st: &mut State, me: Option<CallId>) -> (Option<CallError>, bool) {
        let mut mine = None;
        let mut any = false;
        while let Some(ev) = st.core.poll_event() {
            any = true;
            if let Event::CallFailed { call, error } = ev {
                if Some(call) == me {
                    mine = Some(error);
                } else {
                    self.deliver(st, call.seq(), Outcome::Failed(error));
                }
            }
        }
        (mine, any)
    }

    /// Tells the waiters whose calls have datagrams to send (after timers fired or a session
    /// opened) to send them.
    fn notify_transmits(&self, st: &mut State, me: Option<CallId>) {
        for (slot, w) in st.waiters.iter().enumerate() {
            let Some(w) = w else { continue };
            if Some(w.seq) == me.map(CallId::seq) {
                continue;
            }
            if let Some(id) = st.core.call_id(w.seq) {
                if st.core.wants_transmit(id) {
                    let sig = &self.signals[slot];
                    sig.store(sig.load(Ordering::Relaxed) | TRANSMIT, Ordering::Release);
                    w.wake(&mut st.unparks);
                }
            }
        }
    }

    /// After the state machine ran: route what it produced. Returns `me`'s failure.
    fn after_core(
        &self,
        st: &mut State,
        me: Option<CallId>,
        force_scan: bool,
        timers_later: bool,
    ) -> Option<CallError> {
        let (mine, events) = self.route_events(st, me);
        let opened = st.core.stats().sessions_opened;
        let scan = force_scan || opened != st.sessions_seen;
        if scan {
            st.sessions_seen = opened;
            if st.waiting > usize::from(me.is_some()) {
                self.notify_transmits(st, me);
            }
        }
        // Timers that only moved later (a call ended, nothing else happened) leave the
        // published one early, which is allowed: it is published again when a call starts or
        // a timer fires, off the path a reply is returned on.
        if !(timers_later && !events && !scan) {
            self.store_timer(st);
        }
        mine
    }

    /// Feeds a received batch to the state machine and hands each reply to its waiter.
    /// Returns `me`'s own outcome, if the batch ended its call.
    ///
    /// `in_place`: `me`'s reply, if it comes in a datagram of its own, stays in the batch
    /// (`Own::Kept`, for a leader that decodes it before receiving again), and `me` is retired
    /// here, under the lock already held.
    fn on_batch(
        &self,
        now: Instant,
        me: Option<CallId>,
        batch: &mut RecvBatch<L::Addr>,
        in_place: bool,
    ) -> Option<Own> {
        let mut st = self.lock();
        // Buffers the calls gave back become spares of the batch again.
        while let Some(b) = st.spares.pop() {
            if !batch.give(b) {
                break;
            }
        }
        let mut own = None;
        for i in 0..batch.len() {
            let Some((d, _)) = batch.get(i) else { continue };
            // Ranges below are of the whole buffer, where the datagram starts at `start(i)`.
            let base = d.as_ptr() as usize - batch.start(i);
            if rpc_core::wire::packet_len(d) == Some(d.len()) {
                // One packet: its reply keeps the whole buffer, moved to the waiter.
                let got = st.core.handle_datagram(now, d).map(|r| {
                    let result = r.result.map(|b| match b {
                        Body::Borrowed(x) => {
                            let start = x.as_ptr() as usize - base;
                            Ok(start..start + x.len())
                        }
                        Body::Owned(v) => Err(v),
                    });
                    (r.call, result, r.request_stamp, r.reply_stamp)
                });
                let Some((call, result, request_stamp, reply_stamp)) = got else {
                    continue;
                };
                let outcome = match result {
                    Ok(Ok(body)) if in_place && Some(call) == me => {
                        own = Some(Own::Kept {
                            index: i,
                            body,
                            request_stamp,
                            reply_stamp,
                        });
                        continue;
                    }
                    Ok(Ok(body)) => Outcome::Reply {
                        buf: batch.take(i),
                        body,
                        request_stamp,
                        reply_stamp,
                    },
                    Ok(Err(v)) => {
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
                if Some(call) == me {
                    own = Some(Own::from(outcome));
                } else {
                    self.deliver(&mut st, call.seq(), outcome);
                }
                continue;
            }
            // Several packets: each reply is copied out (they are small).
            for p in packets(d) {
                let Some(r) = st.core.handle_datagram(now, p) else {
                    continue;
                };
                let (call, request_stamp, reply_stamp) = (r.call, r.request_stamp, r.reply_stamp);
                let outcome = match r.result {
                    Ok(body) => {
                        let mut buf = st.buffers.pop().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(&body);
                        if let Some(v) = body.into_owned_buffer() {
                            st.core.recycle(v);
                        }
                        let len = buf.len();
                        Outcome::Reply {
                            buf,
                            body: 0..len,
                            request_stamp,
                            reply_stamp,
                        }
                    }
                    Err(e) => Outcome::Failed(e),
                };
                if Some(call) == me {
                    own = Some(Own::from(outcome));
                } else {
                    self.deliver(&mut st, call.seq(), outcome);
                }
            }
        }
        // The batch only ended this thread's own call, whose reply it keeps: no timer moved
        // earlier.
        let only_mine = batch.len() == 1 && matches!(own, Some(Own::Kept { .. }));
        if let Some(e) = self.after_core(&mut st, me, false, only_mine) {
            own.get_or_insert(Own::Failed(e));
        }
        if let (Some(me), Some(Own::Kept { .. })) = (me, &own) {
            self.retire(&mut st, me, false);
        }
        own
    }

    /// Runs due timers as the leader. Returns `me`'s failure, if any.
    fn on_timers(&self, me: Option<CallId>) -> Option<Own> {
        let mut st = self.lock();
        let now = Instant::now();
        if st.core.poll_timeout().is_some_and(|t| t <= now) {
            st.core.handle_timeout(now);
        }
        self.after_core(&mut st, me, true, false).map(Own::Failed)
    }

    /// Takes the outcome delivered to `me`'s slot.
    fn take_delivered(&self, me: CallId) -> Option<Own> {
        let slot = self.slot(me.seq());
        let mut st = self.lock();
        let w = st.waiters[slot].as_mut().filter(|w| w.seq == me.seq())?;
        Some(Own::from(w.outcome.take()?))
    }

    /// Receives what has arrived, as the leader, and hands it out. Returns `me`'s outcome if
    /// it came, and whether anything arrived.
    ///
    /// `clock` is a recent reading of the clock to take for the time of arrival, if the
    /// caller has one (a spinning thread's latest, at most `clock_every` polls old: its error
    /// is far below any retransmission timeout, and a call's round trip shorter than that
    /// many polls is below the shortest timeout too).
    fn receive(
        &self,
        me: Option<CallId>,
        recv: &mut Receiving<L>,
        clock: Option<Instant>,
        in_place: bool,
    ) -> (Option<Own>, bool) {
        match recv.recv(&self.link) {
            Ok(0) => (None, false),
            Ok(_) => {
                let now = clock.unwrap_or_else(Instant::now);
                let own = self.on_batch(now, me, &mut recv.batch, in_place);
                (own, true)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                // The link says its peer is gone for good: every call ends now.
                (self.peer_died(me), false)
            }
            Err(e) => {
                if !transient(&e) {
                    tracing::error!(error = %e, "client receive failed");
                    self.io_errors.fetch_add(1, Ordering::Relaxed);
                    return (Some(Own::Failed(CallError::Io(e.kind()))), false);
                }
                // An ICMP error, say, from a server restarting: a lost datagram.
                self.io_errors.fetch_add(1, Ordering::Relaxed);
                (None, false)
            }
        }
    }

    /// The peer is gone: every waiting call ends with `PeerDied` (`me`'s is returned), and
    /// calls started from now on fail with `Disconnected`.
    fn peer_died(&self, me: Option<CallId>) -> Option<Own> {
        if !self.dead.swap(true, Ordering::AcqRel) {
            tracing::warn!("the peer is gone: calls in flight end");
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let seqs: Vec<u64> = st
            .waiters
            .iter()
            .flatten()
            .filter(|w| w.outcome.is_none() && Some(w.seq) != me.map(CallId::seq))
            .map(|w| w.seq)
            .collect();
        for seq in seqs {
            self.deliver(st, seq, Outcome::Failed(CallError::PeerDied));
        }
        me.map(|_| Own::Failed(CallError::PeerDied))
    }

    /// Drives the link for a driver task: sends what waits to leave together, receives and
    /// hands out everything that arrived (down to a receive that would block), and runs due
    /// timers. Returns false if a thread leads the link meanwhile (nothing was received).
    #[cfg(feature = "tokio")]
    pub(crate) fn drive(&self) -> bool {
        self.flush_coalesced();
        if self
            .leader
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        {
            let mut recv = self.recv.lock().unwrap_or_else(|p| p.into_inner());
            recv.batch.set_limit(RECV_BATCH);
            while let (_, true) = self.receive(None, &mut recv, None, false) {}
        }
        if self.timer_due(Instant::now()) {
            let _ = self.on_timers(None);
        }
        self.leader.store(false, Ordering::Release);
        true
    }

    /// Whether a driver task drives the link for this poll: under tokio, unless one of this
    /// crate's executors polls (it spins on this thread, where the driver may need to run).
    #[inline]
    fn by_driver(&self) -> bool {
        self.driven.load(Ordering::Relaxed) && !crate::exec::in_own_executor()
    }

    /// Drives the link once for futures: sends what waits to leave together, receives and
    /// hands out what arrived, runs due timers. At most once per executor pass, and only if no
    /// one else leads.
    fn pump(&self) {
        // Under another executor, whose passes this crate cannot see, every poll drives.
        if !crate::exec::in_own_executor() {
            crate::exec::next_pass();
        }
        // Passes are tagged by thread: two threads never share one, and two that both drive
        // in theirs only race for the leadership below.
        let pass = crate::exec::pass();
        if self.last_pump.load(Ordering::Relaxed) == pass {
            return;
        }
        self.last_pump.store(pass, Ordering::Relaxed);
        self.flush_coalesced();
        if self
            .leader
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Everything that has arrived, batch after batch.
        {
            let mut recv = self.recv.lock().unwrap_or_else(|p| p.into_inner());
            // One datagram at a time while they come one at a time (the plain receive costs
            // the kernel less); batches once they come several at a time.
            let limit = if self.last_batch.load(Ordering::Relaxed) > 1 {
                RECV_BATCH
            } else {
                1
            };
            recv.batch.set_limit(limit);
            loop {
                let (_, got) = self.receive(None, &mut recv, None, false);
                self.last_batch.store(recv.batch.len(), Ordering::Relaxed);
                if !got {
                    break;
                }
                recv.batch.set_limit(RECV_BATCH);
            }
        }
        // The clock is read every 16th pump (a reading costs tens of nanoseconds; timers are
        // retransmission timeouts, microseconds and more).
        // Counted by the leader alone.
        let pumps = self.pumps.load(Ordering::Relaxed);
        self.pumps.store(pumps.wrapping_add(1), Ordering::Relaxed);
        if pumps % 16 == 0 && self.timer_due(Instant::now()) {
            let _ = self.on_timers(None);
        }
        self.leader.store(false, Ordering::Release);
        if self.thread_waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        // A thread waiting for its call may lead now that the futures do not.
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.threads > 0 {
            if let Some(w) = st
                .waiters
                .iter()
                .flatten()
                .find(|w| matches!(w.wake, Wake::Thread(_)))
            {
                w.wake(&mut st.unparks);
            }
        }
    }

    /// Waits (as the poll strategy says, and at most until `deadline`) until a call may have
    /// ended and made room in the window.
    fn wait_for_room<'a>(&'a self, mut st: Locked<'a>, deadline: Instant) -> Locked<'a> {
        st.window_waiters += 1;
        if self.poll == PollStrategy::Spin {
            drop(st);
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            st = self.lock();
        } else {
            let st_guard = st.into_guard();
            // Woken by `retire`; the timeout bounds the wait by the deadline and by a lost
            // wake-up (a call ended before this thread registered).
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5));
            st = Locked(Some(match self.room.wait_timeout(st_guard, wait) {
                Ok((st, _)) => st,
                Err(p) => p.into_inner().0,
            }));
        }
        st.window_waiters -= 1;
        st
    }

    /// Forgets the waiter of `me` and, if it leads, hands leadership on.
    fn retire(&self, st: &mut State, me: CallId, leading: bool) {
        let slot = self.slot(me.seq());
        st.core.cancel(me);
        if st.window_waiters > 0 {
            self.room.notify_all();
        }
        for w in st.window_tasks.drain(..) {
            w.wake();
        }
        if let Some(w) = st.waiters[slot].as_ref() {
            if w.seq == me.seq() {
                if matches!(w.wake, Wake::Thread(_)) {
                    st.threads -= 1;
                    self.thread_waiters.store(st.threads, Ordering::Relaxed);
                }
                if let Some(Waiter {
                    wake: Wake::Task(w),
                    spare: true,
                    ..
                }) = st.waiters[slot].take()
                {
                    st.spare_wakers.keep(w);
                }
                st.waiting -= 1;
                self.signals[slot].store(0, Ordering::Release);
            }
        }
        if leading {
            // Someone must receive for the calls still waiting: the next call this thread
            // makes, most often at once (so waking another thread to lead would only cost a
            // wake-up and a turn of the core), or a waiting thread when its short park ends.
            self.leader.store(false, Ordering::Release);
        }
    }

    /// Ends a call: retires it if that was not done yet, and recycles its buffer.
    fn finish(&self, me: CallId, buf: Option<Vec<u8>>, leading: bool) {
        let slot = self.slot(me.seq());
        let registered = self.signals[slot].load(Ordering::Acquire) >> 2 == me.seq();
        if !leading && buf.is_none() && !registered {
            return;
        }
        let mut st = self.lock();
        self.retire(&mut st, me, leading);
        self.recycle(&mut st, buf);
    }

    fn recycle(&self, st: &mut State, buf: Option<Vec<u8>>) {
        if let Some(v) = buf {
            // Receive buffers go back through the state (the leader holds the receive batch,
            // and takes them from there): never wait for the leader here.
            if v.capacity() >= self.buffer_len && st.spares.len() < 2 * self.window {
                st.spares.push(v);
            } else if v.capacity() >= 64 && st.buffers.len() < 2 * self.window {
                st.buffers.push(v);
            } else {
                st.core.recycle(v);
            }
        }
    }

    /// A future's end once its outcome is delivered: the outcome taken, decoded and the call
    /// retired under one lock when the reply is short (its decoding is bounded by its
    /// length); a longer reply is decoded outside the lock, which is taken again to retire.
    fn complete<R>(
        &self,
        me: CallId,
        decode: fn(&[u8]) -> Result<R, DecodeError>,
    ) -> Option<Result<Reply<R>, CallError>> {
        let slot = self.slot(me.seq());
        let mut st = self.lock();
        let w = st.waiters[slot].as_mut().filter(|w| w.seq == me.seq())?;
        let own = Own::from(w.outcome.take()?);
        let long = matches!(&own, Own::Reply { body, .. } if body.len() > DECODE_UNDER_LOCK);
        let held = (!long).then_some(st);
        let (result, buf) = decoded(own, None::<&RecvBatch<L::Addr>>, decode);
        match held {
            Some(mut st) => {
                self.retire(&mut st, me, false);
                self.recycle(&mut st, buf);
            }
            None => self.finish(me, buf, false),
        }
        Some(result)
    }

    /// Starts a call: assigns its sequence number and registers its waiter (waiting for room
    /// in the window as long as `deadline` allows; a future registers its waker and returns
    /// `None` instead).
    fn start(
        &self,
        Span {
            mut now,
            mut deadline,
            mut estimated,
        }: Span,
        method: &'static MethodDesc,
        request: &Encoder<'_>,
        wake: &mut Option<Wake>,
        cx: Option<&mut Context<'_>>,
        batch: &mut ArrayVec<Transmit, BATCH>,
    ) -> Result<Option<Started>, CallError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(CallError::Disconnected);
        }
        let mut req = CallRequest {
            interface: method.interface,
            method: method.id,
            len: request.len(),
            idempotent: method.idempotent,
            deadline: Some(deadline),
        };
        let mut st = self.lock();
        let (me, first) = loop {
            // The protocol frees a call's slot when the call ends, but its waiter holds the
            // slot of the waiter table until it has collected the outcome: a new call whose
            // sequence number maps there must wait for that, or it would take the outcome
            // away from under the old waiter.
            let free = st.waiters[self.slot(st.core.next_seq())].is_none();
            let started = if free {
                st.core.start_call_sending(now, req)
            } else {
                Err(CallError::WindowFull)
            };
            match started {
                Ok(started) => break started,
                Err(CallError::WindowFull) => {
                    // Not sent: it fails with `WindowFull` (not executed) at its deadline.
                    let precise = Instant::now();
                    if std::mem::take(&mut estimated) {
                        // The deadline counted from the estimate: from now on, from the clock.
                        deadline = rpc_core::config::moved(deadline, now, precise);
                        req.deadline = Some(deadline);
                    }
                    now = precise;
                    if now >= deadline {
                        return Err(CallError::WindowFull);
                    }
                    if let Some(cx) = cx {
                        st.window_tasks.push(cx.waker().clone());
                        return Ok(None);
                    }
                    st = self.wait_for_room(st, deadline);
                    now = Instant::now();
                }
                Err(e) => return Err(e),
            }
        };
        if first.is_none() {
            self.take_own(&mut st, now, me, batch);
        }
        // A thread's one datagram over a cheap link leaves at once, under the lock: the
        // leader's election and the waiter below follow it (no reply can be taken in before
        // they are done, since taking one needs this lock), and so do the timers.
        let mut sent = false;
        if let (None, None, Some(t), true) = (&cx, &*wake, &first, self.link.cheap_send()) {
            self.send(t, Some(request));
            sent = true;
        }
        let mut clock = now;
        if estimated {
            // The estimate served until the request left (or, for a call whose datagrams
            // leave later, until they were made): the clock is read now, off the request's
            // path, and the call's timers count from it.
            clock = Instant::now();
            st.core.sent_at(me, now, clock);
        }
        if sent || estimated {
            self.store_timer(&mut st);
        }
        let spare = cx
            .as_deref()
            .is_some_and(|cx| crate::exec::polled_directly(cx.waker()));
        let wake = match (wake.take(), cx.as_deref()) {
            (Some(w), _) => w,
            (None, Some(cx)) => Wake::Task(st.spare_wakers.clone_of(cx.waker())),
            // A thread that can lead from the start receives its own reply: it needs no waiter
            // (nobody hands it anything), and keeps leading until its call is finished.
            (None, None)
                if !self.leader.load(Ordering::Relaxed)
                    && self
                        .leader
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok() =>
            {
                return Ok(Some(Started {
                    id: me,
                    first,
                    leading: true,
                    coalesced: false,
                    sent,
                    clock,
                }));
            }
            (None, None) => Wake::Thread(thread::current()),
        };
        let slot = self.slot(me.seq());
        if matches!(wake, Wake::Thread(_)) {
            st.threads += 1;
            self.thread_waiters.store(st.threads, Ordering::Relaxed);
        }
        st.waiters[slot] = Some(Waiter {
            seq: me.seq(),
            wake,
            spare,
            outcome: None,
        });
        st.waiting += 1;
        self.signals[slot].store(me.seq() << 2, Ordering::Release);
        // A future's small request may leave with others in flight (see `CallFuture::poll`):
        // its timers are published now, under the lock it would otherwise take again.
        let mut coalesced = false;
        if cx.is_some() && st.core.in_flight() > 1 {
            if let Some(t) = &first {
                coalesced = self.coalesce(&mut st, t, request);
            }
            if coalesced {
                self.store_timer(&mut st);
            }
        }
        Ok(Some(Started {
            id: me,
            first,
            leading: false,
            coalesced,
            sent,
            clock,
        }))
    }

    /// Waits for the end of `me`, as leader or follower. Sets `leading` when this thread
    /// became the leader (it must hand leadership on when the call ends).
    ///
    /// Returns the call's end, with the receive batch if this thread holds it as the leader
    /// (where an `Own::Kept` reply lies).
    fn wait(
        &self,
        started: Instant,
        me: CallId,
        request: &Encoder<'_>,
        leading: &mut bool,
    ) -> (Own, Option<MutexGuard<'_, Receiving<L>>>) {
        let slot = self.slot(me.seq());
        let mut idle_since = started;
        let (mut empty_polls, clock_every) = (0u32, self.poll.clock_every());
        // The latest reading of the clock, if no wait came since (see `receive`).
        let mut clock = Some(started);
        // The receive buffers, held while this thread leads.
        let mut recv: Option<MutexGuard<'_, Receiving<L>>> = None;
        loop {
            let sig = self.signals[slot].load(Ordering::Acquire);
            if sig >> 2 == me.seq() {
                if sig & DONE != 0 {
                    if let Some(own) = self.take_delivered(me) {
                        return (own, None);
                    }
                }
                if sig & TRANSMIT != 0 {
                    self.signals[slot].store(me.seq() << 2 | (sig & DONE), Ordering::Release);
                    self.flush_own(me, request);
                }
            }
            // A thread leads even where a driver task runs: that task may need this very
            // thread to run (a blocking call inside a runtime), and stands aside meanwhile.
            if !*leading {
                *leading = !self.leader.load(Ordering::Relaxed)
                    && self
                        .leader
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok();
            }
            if !*leading {
                // Follower: the leader hands the outcome over and wakes this thread, which
                // meanwhile leaves the core to it: it yields while the strategy spins (the
                // leader yields back when it has handed something over: no wake-up through the
                // scheduler's timers, which costs tens of microseconds on a VM), and parks once
                // the strategy would block, looking again after a short while in case the
                // leader went away.
                if self.poll.should_block(idle_since, Instant::now()) {
                    thread::park_timeout(FOLLOWER_PARK);
                } else {
                    thread::yield_now();
                }
                // Yielded or parked: the reading is stale.
                clock = None;
                continue;
            }
            let batch = recv.get_or_insert_with(|| {
                let mut r = self.recv.lock().unwrap_or_else(|p| p.into_inner());
                // A thread waits for its own reply: one datagram at a time, with the plain
                // receive, which costs less.
                r.batch.set_limit(1);
                r
            });
            match self.receive(Some(me), batch, clock, true) {
                // Leadership is handed on when the caller has finished the call (decoded a
                // reply kept in the batch, which it gets with it).
                (Some(own), _) => return (own, recv),
                (None, true) => {
                    idle_since = Instant::now();
                    clock = Some(idle_since);
                    let mut st = self.lock();
                    let handed = std::mem::take(&mut st.handed_to_threads);
                    if st.core.wants_transmit(me) {
                        let mut batch = ArrayVec::new();
                        self.take_own(&mut st, idle_since, me, &mut batch);
                        drop(st);
                        self.send_own(me, request, &mut batch);
                    } else {
                        drop(st);
                    }
                    if handed > 0 {
                        // The threads just woken may share this core: let them run now
                        // rather than at the end of this thread's time slice.
                        thread::yield_now();
                        clock = None;
                    }
                    continue;
                }
                (None, false) => {}
            }
            empty_polls = empty_polls.wrapping_add(1);
            if self.thread_waiters.load(Ordering::Relaxed) > 1 {
                // Other threads wait for their calls, perhaps on this core: let them run (to
                // take an outcome, or to send their next call) between two looks at the link,
                // so that their calls overlap this one's instead of queueing behind it.
                thread::yield_now();
            } else if empty_polls & (clock_every - 1) != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            clock = Some(now);
            if self.timer_due(now) {
                if let Some(own) = self.on_timers(Some(me)) {
                    return (own, None);
                }
                let mut st = self.lock();
                if st.core.wants_transmit(me) {
                    let mut batch = ArrayVec::new();
                    self.take_own(&mut st, now, me, &mut batch);
                    drop(st);
                    self.send_own(me, request, &mut batch);
                }
            }
            if self.poll.should_block(idle_since, now) {
                let woke = self.link.wait(
                    &mut batch.rx,
                    self.next_deadline(),
                    Duration::from_millis(50),
                );
                clock = None;
                if woke.is_ok() {
                    idle_since = Instant::now();
                    clock = Some(idle_since);
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// When a call starts (the caller's latest reading of the clock) and when it must have ended.
#[derive(Clone, Copy)]
struct Span {
    now: Instant,
    deadline: Instant,
    /// `now` is the estimate (never early) a blocking call over a cheap link starts at; the
    /// clock is read once the request has left.
    estimated: bool,
}

/// A thread's turn in blocking calls, passed on when its call ends.
struct Turn<'a>(&'a crate::turnstile::Turnstile, crate::turnstile::Entry);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// A thread's call, finished when dropped (the waiter forgotten, leadership handed on, the
/// reply's buffer recycled). The waiter is forgotten (and its signal slot reused) only under
/// the lock, so a registered signal still naming the call means it has not been retired yet.
struct End<'a, L: Link> {
    inner: &'a Inner<L>,
    me: CallId,
    buf: Option<Vec<u8>>,
    leading: bool,
    /// Retired already (its reply was kept in the receive batch, so there is no buffer to
    /// recycle): only leadership is left.
    retired: bool,
}

impl<L: Link> Drop for End<'_, L> {
    fn drop(&mut self) {
        if self.retired {
            if self.leading {
                self.inner.leader.store(false, Ordering::Release);
            }
        } else {
            self.inner.finish(self.me, self.buf.take(), self.leading);
        }
    }
}

/// Decodes a call's reply.
fn decoded<R, A: Copy>(
    own: Own,
    batch: Option<&RecvBatch<A>>,
    decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
) -> (Result<Reply<R>, CallError>, Option<Vec<u8>>) {
    match own {
        Own::Failed(e) => (Err(e), None),
        Own::Kept {
            index,
            body,
            request_stamp,
            reply_stamp,
        } => {
            let bytes = batch.and_then(|b| b.buffer(index)?.get(body));
            let value = decode(bytes.unwrap_or_default()).map_err(CallError::BadReply);
            let reply = value.map(|value| Reply {
                value,
                request_stamp,
                reply_stamp,
            });
            (reply, None)
        }
        Own::Reply {
            buf,
            body,
            request_stamp,
            reply_stamp,
        } => {
            let value = decode(buf.get(body).unwrap_or_default()).map_err(CallError::BadReply);
            (
                value.map(|value| Reply {
                    value,
                    request_stamp,
                    reply_stamp,
                }),
                Some(buf),
            )
        }
    }
}

impl<L: Link> Transport for Client<L> {
    fn call<R>(
        &self,
        method: &'static MethodDesc,
        options: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        let inner = &*self.inner;
        // Over a cheap link, with no thread waiting for a turn (turns are timed), the call
        // starts at an estimate of the time that is never early, and reads the clock once its
        // request has left (see `start`): the precise reading is off the request's path.
        let estimate = (inner.link.cheap_send() && inner.turnstile.quiet())
            .then(|| inner.estimate.upper())
            .flatten();
        let now = estimate.unwrap_or_else(Instant::now);
        let deadline = deadline_after(now, options.timeout.unwrap_or(inner.default_deadline));
        // Not sent if no turn comes before the deadline: not executed, like a full window.
        let Some(entry) = inner.turnstile.enter(deadline, now) else {
            return Err(CallError::WindowFull);
        };
        let _turn = Turn(&inner.turnstile, entry);
        let entered = entry.at;
        // Built in place and passed by reference: a batch is a few kilobytes.
        let mut batch = ArrayVec::new();
        // A thread that waited for its turn read the clock as it entered; its deadline stays
        // (counted from the estimate if it was one: at most three coarse ticks late).
        let span = Span {
            now: entered,
            deadline,
            estimated: estimate.is_some() && entered == now,
        };
        let started = inner.start(span, method, request, &mut None, None, &mut batch);
        let Some(Started {
            id: me,
            first,
            mut leading,
            sent,
            clock,
            ..
        }) = started?
        else {
            return Err(CallError::WindowFull);
        };
        match first {
            _ if sent => {}
            Some(t) => {
                // The common call: one datagram, sent straight away. Its timers are published
                // after it left, off the path its reply waits on.
                inner.send(&t, Some(request));
                inner.store_timer(&mut inner.lock());
            }
            None => inner.send_own(me, request, &mut batch),
        }
        let (own, batch) = inner.wait(clock, me, request, &mut leading);
        // Finished even if decoding panics: leadership must be handed on.
        let mut end = End {
            inner,
            me,
            buf: None,
            leading,
            retired: matches!(own, Own::Kept { .. }),
        };
        let (result, buf) = decoded(own, batch.as_deref().map(|r| &r.batch), decode);
        drop(batch);
        end.buf = buf;
        drop(end);
        result
    }
}

/// The future of one call ([`AsyncTransport::call_async`]). It owns the call's descriptor,
/// which borrows the caller's arguments, so every (re)transmission gathers from them; dropping
/// it cancels the call.
pub struct CallFuture<'a, L: Link, R> {
    inner: &'a Arc<Inner<L>>,
    method: &'static MethodDesc,
    options: CallOptions,
    request: Encoder<'a>,
    decode: fn(&[u8]) -> Result<R, DecodeError>,
    state: CallState,
}

enum CallState {
    Init,
    Running { id: CallId, waker: Registered },
    Done,
}

/// The waker a running call's waiter holds, as its future remembers it.
enum Registered {
    /// The waker of this crate's executor polling the future (its data pointer: the
    /// waiter's clone keeps it alive, so no other waker has it meanwhile). No clone kept.
    Direct(usize),
    /// Any other waker, cloned.
    Task(Waker),
}

impl Registered {
    fn of(waker: &Waker) -> Self {
        if crate::exec::polled_directly(waker) {
            Self::Direct(waker.data() as usize)
        } else {
            Self::Task(waker.clone())
        }
    }

    fn will_wake(&self, waker: &Waker) -> bool {
        match self {
            Self::Direct(data) => {
                *data == waker.data() as usize && crate::exec::polled_directly(waker)
            }
            Self::Task(w) => w.will_wake(waker),
        }
    }
}

impl<L: Link, R> std::fmt::Debug for CallFuture<'_, L, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture")
            .field("method", &self.method.name)
            .finish_non_exhaustive()
    }
}

impl<L: Link, R> Unpin for CallFuture<'_, L, R> {}

impl<L: Link, R> Future for CallFuture<'_, L, R> {
    type Output = Result<Reply<R>, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = this.inner;
        loop {
            match &mut this.state {
                CallState::Done => return Poll::Ready(Err(CallError::Disconnected)),
                CallState::Init => {
                    #[cfg(feature = "tokio")]
                    if !inner.driven.load(Ordering::Relaxed) && !crate::exec::in_own_executor() {
                        crate::tokio_driver::ensure(inner);
                    }
                    // Shared with the calls started just before in this executor pass (see
                    // `exec::start_clock`).
                    let now = crate::exec::start_clock();
                    let deadline =
                        deadline_after(now, this.options.timeout.unwrap_or(inner.default_deadline));
                    // The waiter's waker: a clone of this context's, made under the lock.
                    let mut wake = None;
                    let mut batch = ArrayVec::new();
                    let started = inner.start(
                        Span {
                            now,
                            deadline,
                            estimated: false,
                        },
                        this.method,
                        &this.request,
                        &mut wake,
                        Some(cx),
                        &mut batch,
                    );
                    let Started {
                        id,
                        first,
                        coalesced,
                        ..
                    } = match started {
                        Ok(Some(started)) => started,
                        // No room in the window: woken when a call ends.
                        Ok(None) => return Poll::Pending,
                        Err(e) => {
                            this.state = CallState::Done;
                            return Poll::Ready(Err(e));
                        }
                    };
                    this.state = CallState::Running {
                        id,
                        waker: Registered::of(cx.waker()),
                    };
                    // Alone in flight, it leaves at once; else a small request leaves with the
                    // others started in this pass: the next pass sends them all.
                    match first {
                        Some(_) if coalesced => {
                            // Whoever drives the link next sends them: this crate's executors
                            // in their next pass (which polls a live future even if none was
                            // woken), a driver task once woken (after the tasks woken before
                            // it, which may add theirs), any other executor when this future
                            // wakes itself.
                            if inner.by_driver() {
                                #[cfg(feature = "tokio")]
                                inner.tokio.kick(0);
                            } else if !crate::exec::polled_directly(cx.waker()) {
                                cx.waker().wake_by_ref();
                            }
                            return Poll::Pending;
                        }
                        Some(t) => {
                            inner.flush_coalesced();
                            inner.send(&t, Some(&this.request));
                            inner.store_timer(&mut inner.lock());
                        }
                        None => inner.send_own(id, &this.request, &mut batch),
                    }
                    #[cfg(feature = "tokio")]
                    if inner.by_driver() {
                        inner.tokio.kick(inner.next_timer());
                    }
                }
                CallState::Running { id, waker } => {
                    let id = *id;
                    let slot = inner.slot(id.seq());
                    let sig = inner.signals[slot].load(Ordering::Acquire);
                    if sig >> 2 == id.seq() && sig & DONE != 0 {
                        if let Some(result) = inner.complete(id, this.decode) {
                            this.state = CallState::Done;
                            return Poll::Ready(result);
                        }
                    }
                    if sig >> 2 == id.seq() && sig & TRANSMIT != 0 {
                        inner.signals[slot].store(id.seq() << 2 | (sig & DONE), Ordering::Release);
                        inner.flush_own(id, &this.request);
                        // A retransmission sets the call's next timer: the driver must know.
                        #[cfg(feature = "tokio")]
                        if inner.by_driver() {
                            inner.tokio.kick(inner.next_timer());
                        }
                    }
                    let mut rewoken = false;
                    if !waker.will_wake(cx.waker()) {
                        *waker = Registered::of(cx.waker());
                        let mut st = inner.lock();
                        if let Some(w) = st.waiters[slot].as_mut().filter(|w| w.seq == id.seq()) {
                            w.wake = Wake::Task(cx.waker().clone());
                            w.spare = crate::exec::polled_directly(cx.waker());
                            rewoken = true;
                        }
                    }
                    if inner.by_driver() {
                        // The driver wakes this future when its call ends; if that happened
                        // while the waker was being replaced, the old one was woken: look
                        // again.
                        let after = inner.signals[slot].load(Ordering::Acquire);
                        if rewoken && after >> 2 == id.seq() && after & DONE != 0 {
                            continue;
                        }
                        return Poll::Pending;
                    }
                    // Drive the link (once per pass), then look again.
                    inner.pump();
                    let after = inner.signals[slot].load(Ordering::Acquire);
                    if after >> 2 != id.seq() || after & DONE == 0 {
                        // Polled again soon: by this crate's executors in turn (its reply,
                        // or a retransmission due, wakes it before that), by any other
                        // because it is woken now (it then spins, as a caller does).
                        if !crate::exec::polled_directly(cx.waker()) {
                            cx.waker().wake_by_ref();
                        }
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<L: Link, R> Drop for CallFuture<'_, L, R> {
    fn drop(&mut self) {
        if let CallState::Running { id, .. } = self.state {
            // Cancelled: nothing more is sent, a later reply is dropped.
            self.inner.finish(id, None, false);
        }
    }
}

impl<L: Link> AsyncTransport for Client<L> {
    type Call<'a, R>
        = CallFuture<'a, L, R>
    where
        Self: 'a,
        R: 'a;

    fn call_async<'a, R: 'a>(
        &'a self,
        method: &'static MethodDesc,
        options: CallOptions,
        request: Encoder<'a>,
        decode: fn(&[u8]) -> Result<R, DecodeError>,
    ) -> CallFuture<'a, L, R> {
        CallFuture {
            inner: &self.inner,
            method,
            options,
            request,
            decode,
            state: CallState::Init,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_kept_waker_is_given_back_for_its_own_task_only() {
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut spares = SpareWakers::new();
        spares.keep(wa.clone());
        assert_eq!(Arc::strong_count(&a), 3);
        // The kept clone comes back: no new clone is made, and none stays kept.
        let again = spares.clone_of(&wa);
        assert!(again.will_wake(&wa));
        assert_eq!(Arc::strong_count(&a), 3);
        drop(again);
        assert_eq!(Arc::strong_count(&a), 2);
        // Another task's waker is cloned, whatever the table holds.
        spares.keep(wa.clone());
        let other = spares.clone_of(&wb);
        assert!(other.will_wake(&wb) && !other.will_wake(&wa));
        other.wake_by_ref();
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (0, 1)
        );
        assert_eq!(Arc::strong_count(&b), 3);
    }
}
