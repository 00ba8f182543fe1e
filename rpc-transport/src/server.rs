//! The server loop, over any [`Link`].
//!
//! ```text
//!   receive thread (one per link: sockets sharing a port through SO_REUSEPORT, say)
//!     receive a batch ─▶ each packet of each datagram ─▶ protocol state (sessions, cache)
//!        new call? ─┬─ plain handler: decode in place, run, reply
//!                   ├─ async handler: a task, polled on this loop while the loop goes on
//!                   └─ blocking handler: to the worker pool
//!     replies of the turn, small ones packed per client ─▶ one batch send
//!   worker pool (created at start) ─▶ run ─▶ reply
//! ```
//!
//! Each receive thread owns one link and one protocol state machine: a client's datagrams
//! reach one link (the kernel hashes a client's address to one socket), so a session lives on
//! one thread and threads share nothing. A plain handler runs to completion on the receiving
//! thread: its arguments are decoded from the receive buffer in place. An `async fn` handler
//! becomes a task of the loop: the loop polls it, and goes on receiving and running other calls
//! while it awaits (a nested call to another server, or to this one, which this same loop
//! then serves). Handlers marked blocking go to a pool of worker threads created at start.
//!
//! Replies produced in one turn of the loop leave together: small ones to the same client
//! share a datagram (each keeps its own header and tag), and all datagrams of the turn go out
//! in one batch send.

use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as JobReceiver, Sender as JobSender, TrySendError};
use rand::SeedableRng;
use rpc_core::config::deadline_after;
use rpc_core::marshal::Encoder;
use rpc_core::server::{Body, CallContext, Server as Core, Ticket};
use rpc_core::service::{AsyncCall, Dispatch, ReplySink, RequestBuf};
use rpc_core::wire::{BusyReason, ErrorCode, packet_len, packets};
use rpc_core::{LamportClock, ServerConfig};

use crate::gather::{self, Gather, Head, Unpacked};
use crate::link::{Link, RecvBatch};
use crate::poll::PollStrategy;
use crate::sock::transient;
use crate::timer::{LastTimer, PublishedTimer};

/// Datagrams received in one turn of a loop at most.
const RECV_BATCH: usize = 32;

/// Replies of at most this many bytes (header and tag included) are packed with others to the
/// same client; longer ones leave at once, gathered from the reply's memory.
const PACK_MAX: usize = 512;

/// How a server runs, beside its protocol settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Protocol settings: sizes, session and cache bounds, timeouts, authentication.
    pub protocol: ServerConfig,
    /// How receive threads wait.
    pub poll: PollStrategy,
    /// Worker threads for blocking handlers, created at start.
    pub workers: usize,
    /// Calls waiting for a worker; beyond this the server answers busy.
    pub worker_queue: usize,
    /// CPUs to pin receive threads to (thread `i` to `cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    /// At shutdown, how long the server goes on receiving after it stopped taking new calls,
    /// answering them `ShuttingDown` (skipped when no session is open).
    pub drain: Duration,
    /// At shutdown, how long to wait for the calls being executed to finish.
    pub shutdown_timeout: Duration,
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
    /// Link errors survived.
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
    /// Async handler calls running now.
    pub tasks: u64,
    /// Datagrams sent with more than one reply in them.
    pub packed_datagrams: u64,
}

/// The counters of one receive thread, published after every turn so that
/// [`ServerHandle::stats`] never waits for the state machine (and so for a handler).
#[derive(Debug, Default)]
struct Published {
    values: [AtomicU64; PUBLISHED],
}

const PUBLISHED: usize = 17;

impl Published {
    fn store<A: rpc_core::server::PeerAddr>(&self, core: &Core<A>) {
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

/// A server whose links are ready but which does not serve yet.
#[derive(Debug)]
pub struct Server<L: Link> {
    links: Vec<L>,
    options: ServerOptions,
    clock: Arc<LamportClock>,
}

impl<L: Link> Server<L> {
    /// A server receiving on `links` (one receive thread each), stamping with `clock`.
    pub fn new(
        links: Vec<L>,
        options: ServerOptions,
        clock: Arc<LamportClock>,
    ) -> io::Result<Self> {
        options
            .protocol
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if links.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one receive thread",
            ));
        }
        Ok(Self {
            links,
            options,
            clock,
        })
    }

    /// Starts the receive threads and the worker pool, serving `dispatch` (a generated
    /// `{Trait}Server`, or a `Router` of several).
    ///
    /// Refuses (`InvalidInput`) a service with blocking methods and no worker to run them.
    pub fn serve(self, dispatch: impl Dispatch + 'static) -> io::Result<ServerHandle<L>> {
        let options = self.options;
        if options.workers == 0 && dispatch.has_blocking() {
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
            tasks: AtomicU64::new(0),
            packed: AtomicU64::new(0),
            handler_panics: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
        });
        let incarnation_base = getrandom::u32().map_err(io::Error::other)?;
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job<L>>(options.worker_queue.max(1));
        let mut receivers = Vec::new();
        for (i, link) in self.links.into_iter().enumerate() {
            // Each receive thread's state machine is its own incarnation: session ids never
            // collide between threads, nor with those of an earlier run.
            let incarnation = incarnation_base.wrapping_add(i as u32).max(1);
            let seed = getrandom::u64().map_err(io::Error::other)?;
            let core = Core::new(
                options.protocol.clone(),
                incarnation,
                self.clock.clone(),
                rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            receivers.push(Arc::new(Rx {
                link,
                core: Mutex::new(Guarded {
                    core,
                    timer_published: LastTimer::default(),
                }),
                timer: PublishedTimer::new(),
                published: Published::default(),
            }));
        }
        let mut threads = Vec::new();
        for (i, rx) in receivers.iter().enumerate() {
            let cpu = (!options.cpus.is_empty()).then(|| options.cpus[i % options.cpus.len()]);
            let ctx = Loop {
                cpu,
                rx: rx.clone(),
                shared: shared.clone(),
                dispatch: dispatch.clone(),
                jobs: jobs.clone(),
                poll: options.poll,
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("rpc-recv-{i}"))
                    .spawn(move || ctx.run())?,
            );
        }
        let mut workers = Vec::new();
        for i in 0..options.workers {
            let (rx, dispatch, shared) = (job_rx.clone(), dispatch.clone(), shared.clone());
            workers.push(
                thread::Builder::new()
                    .name(format!("rpc-worker-{i}"))
                    .spawn(move || worker(rx, dispatch, shared))?,
            );
        }
        Ok(ServerHandle {
            shared,
            receivers,
            threads,
            workers,
            jobs: Some(jobs),
            drain: options.drain,
            shutdown_timeout: options.shutdown_timeout,
        })
    }
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// Shutting down: new calls are answered `ShuttingDown`.
    draining: AtomicBool,
    /// Calls handed to the worker pool or running as tasks, and not finished yet.
    executing: AtomicU64,
    tasks: AtomicU64,
    packed: AtomicU64,
    handler_panics: AtomicU64,
    io_errors: AtomicU64,
}

/// The server's state machine, with the protocol timer last published from it.
pub(crate) struct Guarded<A> {
    core: Core<A>,
    timer_published: LastTimer,
}

impl<A> std::ops::Deref for Guarded<A> {
    type Target = Core<A>;
    fn deref(&self) -> &Core<A> {
        &self.core
    }
}

impl<A> std::ops::DerefMut for Guarded<A> {
    fn deref_mut(&mut self) -> &mut Core<A> {
        &mut self.core
    }
}

pub(crate) struct Rx<L: Link> {
    pub(crate) link: L,
    core: Mutex<Guarded<L::Addr>>,
    /// Earliest protocol timer.
    timer: PublishedTimer,
    published: Published,
}

impl<L: Link> Rx<L> {
    fn lock(&self) -> MutexGuard<'_, Guarded<L::Addr>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_timer(&self, g: &mut Guarded<L::Addr>) {
        // The sweep's time moves once per sweep: most turns have nothing to publish.
        let next = g.core.poll_timeout();
        self.timer.publish(&mut g.timer_published, next);
    }

    fn timer(&self) -> Option<Instant> {
        self.timer.get()
    }
}

/// Replies waiting to leave at the end of a turn: per client, the packed datagram so far.
struct Outbox<A> {
    /// (destination, datagram bytes, packets in it)
    out: Vec<(A, Vec<u8>, u32)>,
    used: usize,
    max_datagram: usize,
}

impl<A: Copy + PartialEq> Outbox<A> {
    fn new(max_datagram: usize) -> Self {
        Self {
            out: Vec::new(),
            used: 0,
            max_datagram,
        }
    }

    /// Appends a whole packet for `dest`; false if the turn's datagrams are full (send them).
    fn push(&mut self, dest: A, packet_parts: &[&[u8]]) -> bool {
        let len: usize = packet_parts.iter().map(|p| p.len()).sum();
        let open = self.out[..self.used]
            .iter()
            .position(|(d, buf, _)| *d == dest && buf.len() + len <= self.max_datagram);
        let i = match open {
            Some(i) => i,
            None => {
                if self.used == RECV_BATCH * 2 {
                    return false;
                }
                if self.used == self.out.len() {
                    self.out
                        .push((dest, Vec::with_capacity(self.max_datagram), 0));
                }
                self.out[self.used].0 = dest;
                self.out[self.used].1.clear();
                self.out[self.used].2 = 0;
                self.used += 1;
                self.used - 1
            }
        };
        let (_, buf, n) = &mut self.out[i];
        for p in packet_parts {
            buf.extend_from_slice(p);
        }
        *n += 1;
        true
    }

    /// Sends everything queued: one batch.
    fn flush<L: Link<Addr = A>>(&mut self, link: &L, shared: &Shared) {
        if self.used == 0 {
            return;
        }
        let packed = self.out[..self.used]
            .iter()
            .filter(|(_, _, n)| *n > 1)
            .count() as u64;
        if packed > 0 {
            shared.packed.fetch_add(packed, Ordering::Relaxed);
        }
        if self.used == 1 {
            // One datagram (a single call's reply): straight to the link.
            let (dest, buf, _) = &self.out[0];
            if link.send(dest, &[IoSlice::new(buf)]).is_err() {
                shared.io_errors.fetch_add(1, Ordering::Relaxed);
            }
            self.used = 0;
            return;
        }
        let slices: arrayvec::ArrayVec<[IoSlice<'_>; 1], { RECV_BATCH * 2 }> = self.out
            [..self.used]
            .iter()
            .map(|(_, buf, _)| [IoSlice::new(buf)])
            .collect();
        let datagrams: arrayvec::ArrayVec<(A, &[IoSlice<'_>]), { RECV_BATCH * 2 }> = self.out
            [..self.used]
            .iter()
            .zip(slices.iter())
            .map(|((dest, _, _), iov)| (*dest, &iov[..]))
            .collect();
        match link.send_many(&datagrams) {
            Ok(n) if n == datagrams.len() => {}
            Ok(_) | Err(_) => {
                // Losses, recovered by the clients' retransmissions.
                shared.io_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.used = 0;
    }
}

/// Sends the control replies and cached replies the state machine has queued (into the
/// outbox, or at once when large), and publishes the counters.
fn drain_core<L: Link>(
    rx: &Rx<L>,
    core: &mut Guarded<L::Addr>,
    outbox: &mut Outbox<L::Addr>,
    shared: &Shared,
) {
    while let Some(t) = core.poll_transmit() {
        let tag = t.tag();
        let len = t.header.len() + tag.map_or(0, |t| t.len()) + t.body.len();
        let tag_bytes: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
        if len <= PACK_MAX && outbox.push(t.dest, &[&t.header, tag_bytes, t.body]) {
            continue;
        }
        let mut head = Head::new(&t.header, tag.as_ref());
        let mut g = Gather::empty();
        g.extend(&mut head, [t.body]);
        if g.with_iov(&head, |iov| rx.link.send(&t.dest, iov)).is_err() {
            shared.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    rx.store_timer(core);
    rx.published.store(core);
}

/// A blocking call on its way to a worker, with the buffer holding its request.
struct Job<L: Link> {
    rx: Arc<Rx<L>>,
    ticket: Ticket<L::Addr>,
    ctx: CallContext,
    buf: Vec<u8>,
    body: Range<usize>,
}

/// Sends a reply (or an error reply) for `ticket` and keeps it for retransmission.
///
/// A small reply goes to the outbox (when there is one), to leave with the turn's others. A
/// reply of several datagrams leaves as one gather per datagram from the reply's own memory
/// (the body's segments are the handler's), then is copied into the retransmit buffer. A
/// reply of one datagram that would need a gather list and is kept anyway (the call is not
/// idempotent) is copied first, behind its header, and leaves from the retransmit buffer in one
/// piece: the copy is made either way, and one buffer costs the kernel less than a list.
#[allow(clippy::too_many_arguments)]
fn send_reply<L: Link>(
    now: Instant,
    core: &mut Core<L::Addr>,
    link: &L,
    from: Option<&L::Rx>,
    mut outbox: Option<&mut Outbox<L::Addr>>,
    shared: &Shared,
    ticket: &Ticket<L::Addr>,
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
                tracing::warn!(error = %e, "server send failed");
            }
            shared.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    // From the receiving thread, through its receiver (see `Link::send_from`); a reply its
    // client waits for alone as the link hands such a datagram over (`Link::send_awaited`).
    let awaited = plan.awaited();
    let send = |iov: &[IoSlice<'_>]| match from {
        _ if awaited => link.send_awaited(from, &plan.dest, iov),
        Some(rx) => link.send_from(rx, &plan.dest, iov),
        None => link.send(&plan.dest, iov),
    };
    let whole = gather::packs_whole(segments());
    // Kept (not idempotent) and of one datagram: the cache holds it whole.
    if plan.count() == 1 && !ticket.idempotent() && (!whole || outbox.is_some()) {
        if let Some(datagram) = core.finish_reply(ticket, &plan, segments()) {
            let packed = match outbox.as_deref_mut() {
                Some(o) if datagram.len() <= PACK_MAX => o.push(plan.dest, &[datagram]),
                _ => false,
            };
            if !packed {
                report(send(&[IoSlice::new(datagram)]));
            }
            return;
        }
        // Not kept after all (no room in the cache): it leaves from the reply's memory.
    }
    for i in 0..plan.count() {
        let header = plan.header(i);
        let tag = plan.seal().map(|seal| {
            let mut tagger = seal.begin(&header);
            if let Some(body) = body {
                body.for_each_in(plan.range(i), |s| tagger.update(s));
            }
            tagger.finish()
        });
        if outbox.is_none() && link.cheap_send() {
            // Nothing to pack with, over a link that copies every byte itself: the header
            // and the body's segments as they are (see `gather::Unpacked`).
            let mut u = Unpacked::new(&header, tag.as_ref());
            if let Some(body) = body {
                body.for_each_in(plan.range(i), |s| u.push(s));
            }
            report(send(u.iov()));
            continue;
        }
        let mut head = Head::new(&header, tag.as_ref());
        let mut g = Gather::empty();
        if let Some(body) = body {
            body.for_each_in(plan.range(i), |s| g.push(&mut head, s));
        }
        let packed = outbox.is_some()
            && g.with_iov(&head, |iov| match (outbox.as_deref_mut(), iov) {
                (Some(o), [one]) if one.len() <= PACK_MAX => o.push(plan.dest, &[one]),
                _ => false,
            });
        if !packed {
            report(g.with_iov(&head, send));
        }
    }
    core.finish_reply(ticket, &plan, segments());
}

/// The protocol state a reply needs: held by the receive thread already, or to be locked by
/// a worker once its handler has returned.
enum CoreRef<'a, L: Link> {
    /// The receive thread's core, its receiver, and the turn's outbox (none when the turn
    /// received one datagram: its reply leaves at once, from the reply's memory).
    Held(
        &'a mut Core<L::Addr>,
        &'a L::Rx,
        Option<&'a mut Outbox<L::Addr>>,
    ),
    Shared(&'a Rx<L>),
}

/// The reply path handed to a dispatcher.
struct Sink<'a, L: Link> {
    now: Instant,
    core: CoreRef<'a, L>,
    link: &'a L,
    shared: &'a Shared,
    ticket: Ticket<L::Addr>,
    sent: bool,
}

impl<L: Link> Sink<'_, L> {
    fn reply(&mut self, reply: Result<&Encoder<'_>, ErrorCode>) {
        match &mut self.core {
            CoreRef::Held(core, from, outbox) => send_reply(
                self.now,
                core,
                self.link,
                Some(*from),
                outbox.as_deref_mut(),
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
                    self.link,
                    None,
                    None,
                    self.shared,
                    &self.ticket,
                    reply,
                );
                let mut outbox = Outbox::new(rx.link.max_datagram());
                drain_core(rx, &mut core, &mut outbox, self.shared);
                outbox.flush(&rx.link, self.shared);
            }
        }
    }
}

impl<L: Link> ReplySink for Sink<'_, L> {
    fn send(&mut self, body: &Encoder<'_>) {
        if !std::mem::replace(&mut self.sent, true) {
            self.reply(Ok(body));
        }
    }
}

/// Runs a call through the dispatcher, answering errors and panics with error replies.
fn execute<L: Link>(
    mut sink: Sink<'_, L>,
    dispatch: &dyn Dispatch,
    ctx: &CallContext,
    body: &[u8],
) {
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

/// Wakes a task of a loop: marks it and unparks the loop's thread (if it parked).
struct TaskWake {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// An async handler's call, running on its loop.
struct Task<A> {
    future: AsyncCall,
    ticket: Ticket<A>,
    wake: Arc<TaskWake>,
    waker: Waker,
}

struct Loop<L: Link> {
    cpu: Option<usize>,
    rx: Arc<Rx<L>>,
    shared: Arc<Shared>,
    dispatch: Arc<dyn Dispatch>,
    jobs: JobSender<Job<L>>,
    poll: PollStrategy,
}

impl<L: Link> Loop<L> {
    fn run(self) {
        if let Some(cpu) = self.cpu {
            if let Err(e) = crate::pin_to_cpu(cpu) {
                tracing::warn!(cpu, error = %e, "could not pin receive thread");
            }
        }
        // This loop is the executor of its async handlers (and their nested calls), and the
        // one thread that drives its link.
        let _executor = crate::exec::Entered::new();
        self.rx.link.attach();
        let mut receiver = self.rx.link.receiver();
        let max_datagram = self.rx.link.max_datagram();
        let mut batch = RecvBatch::<L::Addr>::new(RECV_BATCH, self.rx.link.recv_buffer_len());
        let mut outbox = Outbox::new(max_datagram);
        let mut tasks: Vec<Task<L::Addr>> = Vec::new();
        let mut idle_since = Instant::now();
        let (mut empty_polls, clock_every) = (0u32, self.poll.clock_every());
        // The protocol's clock for a datagram is the last reading, if it is at most
        // `clock_every` polls old: its timers (idle sessions, stalled reassemblies) are
        // milliseconds and more, and reading the clock costs a call tens of nanoseconds.
        let mut clock = Some(idle_since);
        let mut since_clock = 0u32;
        let mut draining = false;
        let mut last_got = 0;
        while !self.shared.stop.load(Ordering::Relaxed) {
            crate::exec::next_pass();
            if !draining && self.shared.draining.load(Ordering::Acquire) {
                draining = true;
                let mut core = self.rx.lock();
                core.begin_drain();
                drain_core(&self.rx, &mut core, &mut outbox, &self.shared);
                outbox.flush(&self.rx.link, &self.shared);
            }
            if !tasks.is_empty() {
                self.poll_tasks(&mut tasks, &mut outbox);
            }
            // One datagram at a time while they come one at a time (the plain receive costs
            // the kernel less); batches once they come several at a time.
            batch.set_limit(if last_got > 1 { RECV_BATCH } else { 1 });
            let got = match self.rx.link.recv(&mut receiver, &mut batch) {
                Ok(n) => n,
                Err(e) => {
                    self.shared.io_errors.fetch_add(1, Ordering::Relaxed);
                    if !transient(&e) {
                        tracing::warn!(error = %e, "server receive failed");
                    }
                    0
                }
            };
            last_got = got;
            if got == 0 {
                empty_polls = empty_polls.wrapping_add(1);
                if empty_polls & (clock_every - 1) != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let now = Instant::now();
                (clock, since_clock) = (Some(now), 0);
                if self.rx.timer().is_some_and(|t| t <= now) {
                    let mut core = self.rx.lock();
                    core.handle_timeout(now);
                    drain_core(&self.rx, &mut core, &mut outbox, &self.shared);
                    drop(core);
                    outbox.flush(&self.rx.link, &self.shared);
                }
                // Tasks waiting on nested calls are polled each turn (that is what drives
                // their clients), so the loop does not block while there are any.
                if tasks.is_empty() && self.poll.should_block(idle_since, now) {
                    let _ = self.rx.link.wait(
                        &mut receiver,
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
            since_clock += 1;
            idle_since = match clock {
                Some(t) if since_clock <= clock_every => t,
                _ => {
                    let now = Instant::now();
                    (clock, since_clock) = (Some(now), 0);
                    now
                }
            };
            self.on_batch(idle_since, &receiver, &mut batch, &mut outbox, &mut tasks);
        }
        // Whatever the kernel holds of the link's (io_uring's buffers) comes back, on the
        // thread that drove it.
        self.rx.link.close();
    }

    fn on_batch(
        &self,
        now: Instant,
        receiver: &L::Rx,
        batch: &mut RecvBatch<L::Addr>,
        outbox: &mut Outbox<L::Addr>,
        tasks: &mut Vec<Task<L::Addr>>,
    ) {
        let rx = &*self.rx;
        let mut core = rx.lock();
        for i in 0..batch.len() {
            let Some((d, src)) = batch.get(i) else {
                continue;
            };
            let single = packet_len(d) == Some(d.len());
            // The datagram's end in its buffer (it starts at `start(i)`).
            let n = batch.start(i) + d.len();
            if single {
                if let Some(call) = core.handle_datagram(now, src, d) {
                    let body = match &call.body {
                        Body::Borrowed(p) => Ok(n - p.len()..n),
                        Body::Owned(_) => Err(()),
                    };
                    let (ticket, ctx) = (call.ticket, call.context);
                    match self.route(ctx) {
                        Route::Here => {
                            // The turn's only datagram: nothing to pack its reply with.
                            let outbox = (batch.len() > 1).then_some(&mut *outbox);
                            let sink = self.sink(now, &mut core, receiver, outbox, ticket);
                            execute(sink, &*self.dispatch, &ctx, &call.body);
                            if let Some(v) = call.body.into_owned_buffer() {
                                core.recycle(v);
                            }
                        }
                        Route::Refuse(code) => {
                            send_reply(
                                now,
                                &mut core,
                                &rx.link,
                                Some(receiver),
                                Some(outbox),
                                &self.shared,
                                &ticket,
                                Err(code),
                            );
                        }
                        route => {
                            // The request's buffer moves with the call.
                            let (buf, body) = match (body, call.body) {
                                (Ok(range), _) => (batch.take(i), range),
                                (Err(()), b) => {
                                    let v = b.into_owned_buffer().unwrap_or_default();
                                    let len = v.len();
                                    (v, 0..len)
                                }
                            };
                            self.hand_off(route, &mut core, outbox, tasks, ticket, ctx, buf, body);
                        }
                    }
                }
                continue;
            }
            for p in packets(d) {
                let Some(call) = core.handle_datagram(now, src, p) else {
                    continue;
                };
                let (ticket, ctx) = (call.ticket, call.context);
                match self.route(ctx) {
                    Route::Here => {
                        let sink = self.sink(now, &mut core, receiver, Some(&mut *outbox), ticket);
                        execute(sink, &*self.dispatch, &ctx, &call.body);
                        if let Some(v) = call.body.into_owned_buffer() {
                            core.recycle(v);
                        }
                    }
                    Route::Refuse(code) => {
                        send_reply(
                            now,
                            &mut core,
                            &rx.link,
                            Some(receiver),
                            Some(outbox),
                            &self.shared,
                            &ticket,
                            Err(code),
                        );
                    }
                    route => {
                        // One of several requests in a datagram: its (small) body is copied.
                        let buf = call.body.to_vec();
                        let len = buf.len();
                        self.hand_off(route, &mut core, outbox, tasks, ticket, ctx, buf, 0..len);
                    }
                }
            }
        }
        drain_core(rx, &mut core, outbox, &self.shared);
        drop(core);
        outbox.flush(&rx.link, &self.shared);
    }

    fn sink<'s>(
        &'s self,
        now: Instant,
        core: &'s mut Core<L::Addr>,
        receiver: &'s L::Rx,
        outbox: Option<&'s mut Outbox<L::Addr>>,
        ticket: Ticket<L::Addr>,
    ) -> Sink<'s, L> {
        Sink {
            now,
            core: CoreRef::Held(core, receiver, outbox),
            link: &self.rx.link,
            shared: &self.shared,
            ticket,
            sent: false,
        }
    }

    fn route(&self, ctx: CallContext) -> Route {
        match self.dispatch.method(ctx.interface, ctx.method) {
            Err(code) => Route::Refuse(code),
            Ok(m) if ctx.idempotent && !m.idempotent => Route::Refuse(ErrorCode::NotIdempotent),
            Ok(m) if m.blocking => Route::Worker,
            Ok(m) if m.asynchronous => Route::Task,
            Ok(_) => Route::Here,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &self,
        route: Route,
        core: &mut Core<L::Addr>,
        outbox: &mut Outbox<L::Addr>,
        tasks: &mut Vec<Task<L::Addr>>,
        ticket: Ticket<L::Addr>,
        ctx: CallContext,
        buf: Vec<u8>,
        body: Range<usize>,
    ) {
        match route {
            Route::Worker => {
                let job = Job {
                    rx: self.rx.clone(),
                    ticket,
                    ctx,
                    buf,
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
            Route::Task => {
                let request = RequestBuf { buf, body };
                match self.dispatch.clone().dispatch_async(ctx, request) {
                    Ok(future) => {
                        let wake = Arc::new(TaskWake {
                            woken: AtomicBool::new(true),
                            thread: thread::current(),
                        });
                        let waker = Waker::from(wake.clone());
                        self.shared.executing.fetch_add(1, Ordering::AcqRel);
                        self.shared.tasks.fetch_add(1, Ordering::Relaxed);
                        let mut task = Task {
                            future,
                            ticket,
                            wake,
                            waker,
                        };
                        // Polled at once: a handler that does not wait ends here.
                        match self.poll_task(&mut task) {
                            Some(result) => {
                                self.end_task(Instant::now(), core, outbox, task, result)
                            }
                            None => tasks.push(task),
                        }
                    }
                    Err(e) => send_reply(
                        Instant::now(),
                        core,
                        &self.rx.link,
                        None,
                        Some(outbox),
                        &self.shared,
                        &ticket,
                        Err(e.code()),
                    ),
                }
            }
            Route::Here | Route::Refuse(_) => {}
        }
    }

    /// Polls one task; its result once it ends.
    fn poll_task(&self, task: &mut Task<L::Addr>) -> Option<Result<Vec<u8>, ErrorCode>> {
        task.wake.woken.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&task.waker);
        let polled = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut task.future).as_mut().poll(&mut cx)
        }));
        match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(Ok(reply))) => Some(Ok(reply)),
            Ok(Poll::Ready(Err(e))) => Some(Err(e.code())),
            Err(_) => {
                self.shared.handler_panics.fetch_add(1, Ordering::Relaxed);
                Some(Err(ErrorCode::HandlerPanicked))
            }
        }
    }

    fn end_task(
        &self,
        now: Instant,
        core: &mut Core<L::Addr>,
        outbox: &mut Outbox<L::Addr>,
        task: Task<L::Addr>,
        result: Result<Vec<u8>, ErrorCode>,
    ) {
        self.shared.executing.fetch_sub(1, Ordering::AcqRel);
        self.shared.tasks.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(bytes) => {
                let mut enc = Encoder::new();
                enc.put_bytes(&bytes);
                send_reply(
                    now,
                    core,
                    &self.rx.link,
                    None,
                    Some(outbox),
                    &self.shared,
                    &task.ticket,
                    Ok(&enc),
                );
            }
            Err(code) => send_reply(
                now,
                core,
                &self.rx.link,
                None,
                Some(outbox),
                &self.shared,
                &task.ticket,
                Err(code),
            ),
        }
    }

    /// Polls every task (a task awaiting a nested call drives that call's client when
    /// polled, once per turn), and replies for those that ended.
    fn poll_tasks(&self, tasks: &mut Vec<Task<L::Addr>>, outbox: &mut Outbox<L::Addr>) {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < tasks.len() {
            match self.poll_task(&mut tasks[i]) {
                Some(result) => ended.push((tasks.swap_remove(i), result)),
                None => i += 1,
            }
        }
        if ended.is_empty() {
            return;
        }
        let mut core = self.rx.lock();
        let now = Instant::now();
        for (task, result) in ended {
            self.end_task(now, &mut core, outbox, task, result);
        }
        drain_core(&self.rx, &mut core, outbox, &self.shared);
        drop(core);
        outbox.flush(&self.rx.link, &self.shared);
    }
}

/// Where a call runs.
#[derive(Clone, Copy)]
enum Route {
    /// On the receive thread, to completion.
    Here,
    /// On the worker pool.
    Worker,
    /// As a task of the loop.
    Task,
    /// Nowhere: refused with this error.
    Refuse(ErrorCode),
}

fn worker<L: Link>(jobs: JobReceiver<Job<L>>, dispatch: Arc<dyn Dispatch>, shared: Arc<Shared>) {
    for job in jobs {
        // The handler runs without the receive thread's lock; the sink takes it to reply.
        let sink = Sink {
            now: Instant::now(),
            core: CoreRef::Shared(&job.rx),
            link: &job.rx.link,
            shared: &shared,
            ticket: job.ticket,
            sent: false,
        };
        execute(sink, &*dispatch, &job.ctx, &job.buf[job.body.clone()]);
        shared.executing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running server. Dropping it shuts it down.
pub struct ServerHandle<L: Link> {
    shared: Arc<Shared>,
    pub(crate) receivers: Vec<Arc<Rx<L>>>,
    threads: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    jobs: Option<JobSender<Job<L>>>,
    drain: Duration,
    shutdown_timeout: Duration,
}

impl<L: Link> std::fmt::Debug for ServerHandle<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("receivers", &self.receivers.len())
            .finish_non_exhaustive()
    }
}

impl<L: Link> ServerHandle<L> {
    /// Counters, summed over the receive threads. Never waits: each thread publishes its
    /// counters after every turn, so a handler running (or a long one on a receive thread)
    /// does not delay them.
    pub fn stats(&self) -> ServerCounters {
        let mut c = ServerCounters {
            handler_panics: self.shared.handler_panics.load(Ordering::Relaxed),
            io_errors: self.shared.io_errors.load(Ordering::Relaxed),
            tasks: self.shared.tasks.load(Ordering::Relaxed),
            packed_datagrams: self.shared.packed.load(Ordering::Relaxed),
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

impl<L: Link> Drop for ServerHandle<L> {
    fn drop(&mut self) {
        self.stop();
    }
}
