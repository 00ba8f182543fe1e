//! The client state machine: sequence numbers, the call table, retransmission, the session
//! handshake, and reassembly of large replies.
//!
//! # Driving it
//!
//! The client never touches a socket or a clock; a driver feeds it time and datagrams and
//! carries out what it asks. One turn of a driver's loop:
//!
//! 1. [`Client::start_call`] for each new call. The client only learns the body's *length*:
//!    the body stays in the caller's memory (a shared descriptor) and the driver supplies it
//!    whenever a [`Transmit`] names a byte range of that call. Keep the body alive and
//!    unchanged until the call ends.
//! 2. [`Client::poll_transmit`] until `None`, sending each datagram: the 72-byte header
//!    followed by the payload it names. A driver in which each call's owner sends its own
//!    datagrams uses [`Client::poll_transmit_for`] instead.
//! 3. [`Client::handle_datagram`] for each datagram received. If it completes a call, the
//!    returned [`Response`] borrows the body from the datagram (zero copy) or, for a
//!    reassembled reply, owns it.
//! 4. [`Client::handle_timeout`] once the time of [`Client::poll_timeout`] has come.
//! 5. [`Client::poll_event`] until `None`: calls that failed without a reply (timeouts,
//!    sessions lost) and session changes.
//!
//! Each call ends exactly once: with a [`Response`] from `handle_datagram`, or with an
//! [`Event::CallFailed`], or by [`Client::cancel`].
//!
//! # Protocol
//!
//! No separate acknowledgements: the reply acknowledges the request, and every request carries
//! `ack`, the highest sequence number below which every call has ended here, so the server can
//! free the replies it kept for retransmission. A call that gets no reply within the adaptive
//! timeout ([`crate::rtt`]) is sent again, with exponential backoff, until its deadline. Once
//! any fragment of a multi-fragment reply has arrived, the server evidently holds the request,
//! so retransmissions send only the first fragment, which asks the server to resend the reply.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::auth::{Sealer, SessionKeys};
pub use crate::body::Body;
use crate::clock::{LamportClock, LamportStamp};
use crate::config::{ClientConfig, ConfigError, deadline_after, moved, plan_datagram};
use crate::error::CallError;
use crate::pool::Pool;
use crate::rtt::RttEstimator;
use crate::wire::{
    BusyReason, CookieBody, DropCounters, ErrorCode, Flags, FragmentPlan, HEADER_LEN, HeaderRepr,
    HelloBody, Packet, PacketKind, Reassembly, RefuseReason, TAG_LEN, WelcomeBody, read_body,
};

/// Round-trip samples: every call's until this many are taken, then one call's in
/// [`RTT_SAMPLE_EVERY`] (those whose sequence number it divides). With one call in flight that
/// is one sample per eight round trips, as classic TCP times one segment at a time; each sample
/// costs a clock subtraction and the estimator's update on the path a reply is returned on.
const RTT_FIRST_SAMPLES: u64 = 8;
/// See [`RTT_FIRST_SAMPLES`].
const RTT_SAMPLE_EVERY: u64 = 8;

/// Identifies a call of one client: its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(u64);

impl CallId {
    /// The call's sequence number.
    pub fn seq(self) -> u64 {
        self.0
    }
}

/// What the client needs to know about a new call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRequest {
    /// Interface fingerprint.
    pub interface: u32,
    /// Method fingerprint.
    pub method: u32,
    /// Length of the request body; the driver supplies the bytes.
    pub len: usize,
    /// The method may execute more than once; the server keeps no reply for it.
    pub idempotent: bool,
    /// When to give up; `None` for the configured default.
    pub deadline: Option<Instant>,
}

/// The payload of a datagram to send, after its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Header only.
    None,
    /// A few bytes held by the transmit itself ([`Transmit::inline`]).
    Inline,
    /// These bytes of the call's body; the driver holds the body.
    Call {
        /// Whose body.
        call: CallId,
        /// Which bytes of it.
        offset: usize,
        /// How many.
        len: usize,
    },
}

/// A datagram for the driver to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// The header bytes.
    pub header: [u8; HEADER_LEN],
    /// What follows the header.
    pub payload: Payload,
    /// In authenticated mode, the key whose tag ([`Sealer::tag`] of the header and the
    /// payload's bytes) the driver sends between the header and the payload.
    pub seal: Option<Arc<Sealer>>,
    /// A Hello's body, boxed: a call's transmit, moved several times on its way to the
    /// link, stays small enough to be copied inline (128 bytes) instead of by `memcpy`.
    inline: Option<Box<[u8; INLINE_LEN]>>,
    awaited: bool,
}

/// Bytes a transmit holds itself (a Hello's body).
const INLINE_LEN: usize = crate::wire::HELLO_BODY_LEN;

impl Transmit {
    /// The bytes of an [`Payload::Inline`] payload (empty otherwise).
    pub fn inline(&self) -> &[u8] {
        match self.payload {
            Payload::Inline => self.inline.as_deref().map_or(&[], |b| &b[..]),
            _ => &[],
        }
    }

    /// Whether the server waits for nothing else of this client's: the datagram is the whole
    /// request of a call that acknowledges every call before it (the client has no other in
    /// flight). A link may hand such a datagram over differently (rpc-transport's
    /// `Link::send_awaited`).
    pub fn awaited(&self) -> bool {
        self.awaited
    }

    /// In authenticated mode, the tag to send between the header and the payload, whose
    /// bytes (the inline ones, or the call's range of its body) are given as segments.
    pub fn tag<'a>(&self, payload: impl IntoIterator<Item = &'a [u8]>) -> Option<[u8; TAG_LEN]> {
        self.seal.as_ref().map(|s| s.tag(&self.header, payload))
    }

    /// The whole datagram in one buffer, for drivers that copy (simulations and tests): the
    /// header, the tag if any, then the payload's segments.
    pub fn to_datagram<'a>(&self, payload: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let overhead = HEADER_LEN + if self.seal.is_some() { TAG_LEN } else { 0 };
        let mut out = Vec::with_capacity(overhead + 64);
        out.extend_from_slice(&self.header);
        out.resize(overhead, 0);
        for seg in payload {
            out.extend_from_slice(seg);
        }
        if let Some(tag) = self.tag([&out[overhead..]]) {
            out[HEADER_LEN..overhead].copy_from_slice(&tag);
        }
        out
    }
}

/// The end of a call, caused by a datagram.
#[derive(Debug)]
pub struct Response<'d> {
    /// Which call.
    pub call: CallId,
    /// The reply body, or the error the server reported.
    pub result: Result<Body<'d>, CallError>,
    /// Lamport stamp of the request.
    pub request_stamp: LamportStamp,
    /// Lamport stamp of the reply (server's clock and node id).
    pub reply_stamp: LamportStamp,
}

/// Something that happened without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A call ended without a reply.
    CallFailed {
        /// Which call.
        call: CallId,
        /// Why.
        error: CallError,
    },
    /// A session was opened with the server.
    Connected {
        /// The session id.
        session: u64,
    },
    /// The server lost the session; a new one is being opened.
    SessionLost {
        /// The session id.
        session: u64,
    },
    /// The server refused to open a session.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
}

/// Counters, for tests, benchmarks and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Calls started.
    pub calls: u64,
    /// Calls that ended with a reply body.
    pub replies: u64,
    /// Calls that ended with an error.
    pub failures: u64,
    /// Of those, by timeout.
    pub timeouts: u64,
    /// Of those, because the session was lost.
    pub outcome_unknown: u64,
    /// Calls the server said never executed in a lost session, sent again in a new one.
    pub resent_after_stale: u64,
    /// Sessions opened again before a call because the old one had been idle for most of
    /// the server's idle timeout.
    pub idle_reopens: u64,
    /// Datagrams sent (all fragments, all kinds).
    pub datagrams_sent: u64,
    /// Calls sent again after a timeout or busy reply, or in a new session after a lost one.
    pub retransmissions: u64,
    /// Hellos sent.
    pub hellos: u64,
    /// Busy replies received.
    pub busy: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions lost.
    pub sessions_lost: u64,
    /// Datagrams dropped, by cause.
    pub dropped: DropCounters,
    /// Round-trip samples taken.
    pub rtt_samples: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a session before the first send.
    Held,
    /// Fragments `next..end` of this round remain to be sent.
    Sending { next: u16, end: u16 },
    /// All sent; waiting for the reply or the retransmission timer.
    Waiting,
}

#[derive(Debug)]
struct Call {
    seq: u64,
    interface: u32,
    method: u32,
    idempotent: bool,
    len: usize,
    lamport: u64,
    deadline: Instant,
    phase: Phase,
    /// Session of the current round (0 while held).
    session: u64,
    /// Fragmentation of the current round.
    plan: FragmentPlan,
    /// When the first round finished sending (for the round-trip sample).
    first_sent: Option<Instant>,
    /// Rounds after the first (timeouts and busy replies).
    attempts: u32,
    /// When to send again if nothing arrives.
    retransmit_at: Option<Instant>,
    last_busy: Option<BusyReason>,
    /// A multi-fragment reply in progress, and the Lamport stamp its fragments carry (one
    /// execution's reply; an idempotent call executed again has a newer one).
    reply: Option<(Reassembly, u64)>,
    /// Some fragment of the reply arrived: the server holds the request.
    reply_seen: bool,
}

#[derive(Clone, Debug)]
enum Conn {
    Idle,
    Connecting {
        nonce: u64,
        attempts: u32,
        pending: bool,
        retry_at: Option<Instant>,
        /// The cookie of the server's Retry (zeros before one came).
        cookie: CookieBody,
        /// The server's last refusal, if it refused.
        refused: Option<RefuseReason>,
    },
    Established {
        session: u64,
        server_node: u64,
        max_datagram: usize,
        max_message: usize,
        /// The server closes a session silent for this long.
        idle_timeout: Duration,
        /// When a datagram of this session last came from the server.
        last_heard: Instant,
        /// Client-to-server key, in authenticated mode.
        seal: Option<Arc<Sealer>>,
        /// Server-to-client key, in authenticated mode.
        open: Option<Arc<Sealer>>,
    },
}

/// The client side of the protocol for one client incarnation talking to one server.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    client_id: u64,
    incarnation: u32,
    clock: Arc<LamportClock>,
    /// Handshake key, in authenticated mode.
    handshake_key: Option<Arc<Sealer>>,
    /// The datagram size fragment plans are made for: the limit, less a tag's room.
    plan_datagram: usize,
    rtt: RttEstimator,
    conn: Conn,
    hello_nonce: u64,
    next_seq: u64,
    /// Lowest sequence number that may still be in flight.
    oldest: u64,
    in_flight: usize,
    /// Indexed by `seq & slot_mask`: a power of two at least the window, so that the calls
    /// in flight (at most `window` consecutive sequence numbers) have distinct slots and
    /// finding one costs no division.
    calls: Vec<Option<Call>>,
    slot_mask: u64,
    /// Calls with datagrams to send, oldest first (entries may be stale; checked on pop, and
    /// dropped once the queue holds twice the window).
    tx_queue: VecDeque<u64>,
    events: VecDeque<Event>,
    /// A lower bound of the earliest timer: lowered when a timer is set, left as it is when
    /// one is cancelled or pushed back (so that starting or ending a call costs no scan of
    /// the calls in flight), and recomputed exactly when `timers_dirty`.
    next_timeout: Option<Instant>,
    timers_dirty: bool,
    reassembly_bytes: usize,
    buffers: Pool<u8>,
    bitmaps: Pool<u64>,
    stats: ClientStats,
}

impl Client {
    /// A client with the given identity. `client_id` names the client to the server and breaks
    /// ties between Lamport stamps (a node's clients use the node's id); `incarnation` must
    /// differ each time the client starts, so that the server never mistakes a new process
    /// for an old one's retransmissions; `clock` is the node's Lamport clock.
    pub fn new(
        config: ClientConfig,
        client_id: u64,
        incarnation: u32,
        clock: Arc<LamportClock>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let window = config.window;
        let rtt = RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto);
        let buffers = Pool::new(config.reassembly_budget, 8);
        Ok(Self {
            client_id,
            incarnation,
            clock,
            handshake_key: config.auth.as_ref().map(|k| Arc::new(k.handshake())),
            plan_datagram: plan_datagram(config.max_datagram, config.auth.is_some()),
            rtt,
            conn: Conn::Idle,
            hello_nonce: 0,
            next_seq: 1,
            oldest: 1,
            in_flight: 0,
            calls: (0..window.next_power_of_two()).map(|_| None).collect(),
            slot_mask: window.next_power_of_two() as u64 - 1,
            tx_queue: VecDeque::with_capacity(window),
            events: VecDeque::with_capacity(window),
            next_timeout: None,
            timers_dirty: false,
            reassembly_bytes: 0,
            buffers,
            bitmaps: Pool::new(64 << 10, 8),
            stats: ClientStats::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// This client's id (its Lamport node id).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// This client's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The Lamport clock's current value.
    pub fn lamport(&self) -> u64 {
        self.clock.now()
    }

    /// The node's Lamport clock.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.clock
    }

    /// Counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The round-trip estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// The open session, if any.
    pub fn session(&self) -> Option<u64> {
        match self.conn {
            Conn::Established { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The sequence number the next call will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The id of the call with sequence number `seq`, if it is in flight.
    pub fn call_id(&self, seq: u64) -> Option<CallId> {
        self.call(seq).map(|_| CallId(seq))
    }

    /// Calls started and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a new call could start now without [`CallError::WindowFull`].
    pub fn can_start(&self) -> bool {
        self.in_flight < self.config.window
            && self.next_seq - self.oldest < self.config.window as u64
    }

    /// Bytes held by reply reassemblies and the buffer pool.
    pub fn memory(&self) -> usize {
        self.reassembly_bytes + self.buffers.held_bytes() + self.bitmaps.held_bytes() * 8
    }

    /// Opens a session now rather than with the first call.
    pub fn connect(&mut self, _now: Instant) {
        if matches!(self.conn, Conn::Idle) {
            self.begin_hello();
        }
    }

    fn begin_hello(&mut self) {
        self.hello_nonce += 1;
        self.conn = Conn::Connecting {
            nonce: self.hello_nonce,
            attempts: 0,
            pending: true,
            retry_at: None,
            cookie: CookieBody::default(),
            refused: None,
        };
        self.timers_dirty = true;
    }

    fn slot(&self, seq: u64) -> usize {
        (seq & self.slot_mask) as usize
    }

    fn call(&self, seq: u64) -> Option<&Call> {
        self.calls[self.slot(seq)].as_ref().filter(|c| c.seq == seq)
    }

    fn call_mut(&mut self, seq: u64) -> Option<&mut Call> {
        let slot = self.slot(seq);
        self.calls[slot].as_mut().filter(|c| c.seq == seq)
    }

    fn max_message(&self) -> usize {
        match self.conn {
            Conn::Established { max_message, .. } => max_message.min(self.config.max_message),
            _ => self.config.max_message,
        }
    }

    /// The open session, if it may be used at `now`: a session silent for most of the
    /// server's idle timeout may have been closed by the server, and a call sent in it would
    /// end in doubt, so with no call in flight the client opens a new one first.
    fn usable_session(&mut self, now: Instant) -> Option<(u64, usize)> {
        let Conn::Established {
            session,
            max_datagram,
            idle_timeout,
            last_heard,
            ..
        } = self.conn
        else {
            return None;
        };
        let silent = now.saturating_duration_since(last_heard);
        if self.in_flight == 0 && silent >= idle_timeout - idle_timeout / 4 {
            self.stats.idle_reopens += 1;
            self.begin_hello();
            return None;
        }
        Some((session, max_datagram))
    }

    /// Starts a call. The driver must keep the body's `len` bytes available, unchanged, until
    /// the call ends.
    pub fn start_call(&mut self, now: Instant, req: CallRequest) -> Result<CallId, CallError> {
        self.start(now, req, false).map(|(id, _)| id)
    }

    /// Starts a call as [`Client::start_call`] does and, when the call is one datagram in an
    /// open session, returns that datagram at once: the one [`Client::poll_transmit_for`]
    /// would give next, without passing through the transmit queue. Otherwise the call's
    /// datagrams (and a handshake) come from the `poll_transmit` methods as usual.
    ///
    /// For drivers that send each call from its caller: this is the common call's whole
    /// start, on the path every request waits on.
    pub fn start_call_sending(
        &mut self,
        now: Instant,
        req: CallRequest,
    ) -> Result<(CallId, Option<Transmit>), CallError> {
        self.start(now, req, true)
    }

    /// Moves the timers of a call started at `started` (an estimate of the time, which a
    /// driver may take cheaply before sending) to count from `sent`, a reading of the clock
    /// taken once its first datagram left (or was made): the deadline, the retransmission and
    /// the round-trip sample keep their distances from the start. A driver that sends before
    /// it reads the clock precisely keeps that reading off the request's path. Called once
    /// per call, before any timer of it is handled; nothing changes for a call that is gone
    /// or has been sent again.
    pub fn sent_at(&mut self, call: CallId, started: Instant, sent: Instant) {
        let Some(c) = self.call_mut(call.0) else {
            return;
        };
        if c.attempts != 0 {
            return;
        }
        let retimed = c.first_sent == Some(started);
        c.deadline = moved(c.deadline, started, sent);
        if retimed {
            c.first_sent = Some(sent);
            c.retransmit_at = c.retransmit_at.map(|t| moved(t, started, sent));
        }
        let (deadline, retransmit_at) = (c.deadline, c.retransmit_at);
        // A timer moved earlier becomes the earliest if it is; one moved later leaves the
        // earliest early, which `poll_timeout` allows (`handle_timeout` then finds nothing).
        self.timer_set(deadline);
        if let Some(at) = retransmit_at {
            self.timer_set(at);
        }
    }

    fn start(
        &mut self,
        now: Instant,
        req: CallRequest,
        send_now: bool,
    ) -> Result<(CallId, Option<Transmit>), CallError> {
        let max = self.max_message();
        if req.len > max {
            return Err(CallError::MessageTooLarge { len: req.len, max });
        }
        if !self.can_start() {
            return Err(CallError::WindowFull);
        }
        // Before the call counts as in flight: whether the session must be opened again.
        let usable = self.usable_session(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let lamport = self.clock.tick();
        let deadline = req
            .deadline
            .unwrap_or_else(|| deadline_after(now, self.config.default_deadline));
        // Validated configuration: any length up to max_message has a plan.
        let plan = FragmentPlan::new(req.len, self.plan_datagram)
            .ok_or(CallError::MessageTooLarge { len: req.len, max })?;
        let slot = self.slot(seq);
        debug_assert!(self.calls[slot].is_none());
        // Written in place: the record is too large to build aside and copy cheaply.
        let _ = self.calls[slot].insert(Call {
            seq,
            interface: req.interface,
            method: req.method,
            idempotent: req.idempotent,
            len: req.len,
            lamport,
            deadline,
            phase: Phase::Held,
            session: 0,
            plan,
            first_sent: None,
            attempts: 0,
            retransmit_at: None,
            last_busy: None,
            reply: None,
            reply_seen: false,
        });
        self.in_flight += 1;
        self.stats.calls += 1;
        self.timer_set(deadline);
        match (usable, &self.conn) {
            (Some((session, max_datagram)), _) => {
                let single = FragmentPlan::new(req.len, max_datagram).filter(|p| p.count() == 1);
                if let (true, Some(plan), Some(call)) = (send_now, single, &mut self.calls[slot]) {
                    // What `begin_round` would set up for a first round of one datagram, and
                    // that datagram; nothing is left for the transmit queue.
                    call.session = session;
                    call.plan = plan;
                    call.phase = Phase::Sending { next: 0, end: 1 };
                    return Ok((CallId(seq), self.call_transmit(now, seq)));
                }
                self.begin_round(seq, session, max_datagram, false);
            }
            (None, Conn::Idle) => self.begin_hello(),
            (None, _) => {}
        }
        Ok((CallId(seq), None))
    }

    /// Starts a round of transmissions of a call: all its fragments, or only the first when
    /// the server is known to hold the request.
    fn begin_round(&mut self, seq: u64, session: u64, max_datagram: usize, retransmit: bool) {
        let Some(call) = self.call_mut(seq) else {
            return;
        };
        let Some(plan) = FragmentPlan::new(call.len, max_datagram) else {
            return;
        };
        let mut stale_reply = None;
        if call.session != session {
            // A new session: fragments of an earlier one are of no use.
            stale_reply = call.reply.take().map(|(r, _)| r);
            call.reply_seen = false;
        }
        call.session = session;
        call.plan = plan;
        // Once part of the reply came, the server holds the request and its reply: the first
        // fragment asks for the reply again. Not so for an idempotent call, whose reply the
        // server may not keep: it needs the whole request to execute again.
        let end = if call.reply_seen && !call.idempotent {
            1
        } else {
            plan.count()
        };
        call.phase = Phase::Sending { next: 0, end };
        call.retransmit_at = None;
        // A busy reply said an earlier round did not execute; this round may.
        call.last_busy = None;
        if retransmit {
            call.attempts += 1;
            self.stats.retransmissions += 1;
        }
        if self.tx_queue.len() >= 2 * self.config.window {
            // Drivers that send per call (`poll_transmit_for`) never drain the queue: drop the
            // entries of calls that have nothing left to send, so it stays bounded. This call's
            // own earlier entries go too (it is pushed again below), or a call retransmitted
            // again and again would keep every one of them.
            let (calls, mask) = (&self.calls, self.slot_mask);
            self.tx_queue.retain(|&q| {
                q != seq
                    && calls[(q & mask) as usize]
                        .as_ref()
                        .is_some_and(|c| c.seq == q && matches!(c.phase, Phase::Sending { .. }))
            });
        }
        // The call's retransmission timer, if it had one, is off while it sends: the bound
        // stays valid.
        self.tx_queue.push_back(seq);
        if let Some(r) = stale_reply {
            self.reassembly_bytes -= r.message_len();
            self.give_back(r);
        }
    }

    /// Abandons a call without an event; a reply that arrives later is dropped.
    pub fn cancel(&mut self, call: CallId) {
        if self.call(call.0).is_some() {
            self.end_call(call.0);
        }
    }

    /// Forgets call `seq` (giving back a partial reply's buffers); whether it was in flight.
    /// The call is dropped in place, not moved out: this is on every call's path.
    fn end_call(&mut self, seq: u64) -> bool {
        let slot = self.slot(seq);
        if self.calls[slot].as_ref().is_none_or(|c| c.seq != seq) {
            return false;
        }
        let reply = self.calls[slot].as_mut().and_then(|c| c.reply.take());
        self.calls[slot] = None;
        self.in_flight -= 1;
        if let Some((r, _)) = reply {
            self.reassembly_bytes -= r.message_len();
            self.give_back(r);
        }
        while self.oldest < self.next_seq && self.call(self.oldest).is_none() {
            self.oldest += 1;
        }
        // Its timers are gone: the bound stays valid, and with nothing in flight the exact
        // value costs no scan.
        if self.in_flight == 0 {
            self.timers_dirty = true;
        }
        true
    }

    fn fail(&mut self, seq: u64, error: CallError) {
        if self.end_call(seq) {
            self.stats.failures += 1;
            match error {
                CallError::TimedOut => self.stats.timeouts += 1,
                CallError::OutcomeUnknown => self.stats.outcome_unknown += 1,
                _ => {}
            }
            self.events.push_back(Event::CallFailed {
                call: CallId(seq),
                error,
            });
        }
    }

    fn give_back(&mut self, r: Reassembly) {
        let (buf, bits) = r.into_parts();
        self.buffers.give(buf);
        self.bitmaps.give(bits);
    }

    /// Returns a reassembled reply body's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.buffers.give(buf);
    }

    fn ack(&self) -> u64 {
        self.oldest - 1
    }

    fn hello_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let Conn::Connecting {
            nonce,
            attempts,
            pending: true,
            cookie,
            refused,
            ..
        } = self.conn
        else {
            return None;
        };
        let body = HelloBody {
            max_datagram: (self.config.max_datagram as u32).into(),
            max_message: (self.config.max_message as u32).into(),
            cookie,
        };
        let mut flags = if attempts > 0 {
            Flags::RETRANSMIT
        } else {
            Flags::empty()
        };
        if self.handshake_key.is_some() {
            flags |= Flags::AUTH;
        }
        let header = HeaderRepr {
            kind: PacketKind::Hello,
            flags,
            status: 0,
            client_id: self.client_id,
            client_incarnation: self.incarnation,
            interface: 0,
            method: 0,
            session: 0,
            seq: nonce,
            ack: self.ack(),
            lamport: self.clock.tick(),
            frag_index: 0,
            frag_count: 1,
            message_len: body.as_bytes().len() as u32,
            payload_len: body.as_bytes().len() as u32,
        };
        let mut inline = Box::new([0u8; INLINE_LEN]);
        inline.copy_from_slice(body.as_bytes());
        self.conn = Conn::Connecting {
            nonce,
            attempts,
            pending: false,
            retry_at: Some(now + self.rtt.backoff(attempts)),
            cookie,
            refused,
        };
        self.timers_dirty = true;
        self.stats.hellos += 1;
        self.stats.datagrams_sent += 1;
        Some(Transmit {
            header: header.to_bytes(),
            payload: Payload::Inline,
            seal: self.handshake_key.clone(),
            inline: Some(inline),
            awaited: false,
        })
    }

    /// The next datagram of a call, if it has one to send.
    fn call_transmit(&mut self, now: Instant, seq: u64) -> Option<Transmit> {
        let ack = self.ack();
        let client_id = self.client_id;
        let incarnation = self.incarnation;
        let bandwidth = self.config.assumed_bandwidth;
        let rtt = self.rtt;
        let seal = match &self.conn {
            Conn::Established { seal, .. } => seal.clone(),
            _ => None,
        };
        let call = self.call_mut(seq)?;
        let Phase::Sending { next, end } = call.phase else {
            return None;
        };
        let range = call.plan.range(next);
        let mut flags = if call.idempotent {
            Flags::IDEMPOTENT
        } else {
            Flags::empty()
        };
        if call.attempts > 0 {
            flags |= Flags::RETRANSMIT;
        }
        if seal.is_some() {
            flags |= Flags::AUTH;
        }
        let header = HeaderRepr {
            kind: PacketKind::Request,
            flags,
            status: 0,
            client_id,
            client_incarnation: incarnation,
            interface: call.interface,
            method: call.method,
            session: call.session,
            seq,
            ack,
            lamport: call.lamport,
            frag_index: next,
            frag_count: call.plan.count(),
            message_len: call.len as u32,
            payload_len: range.len() as u32,
        };
        if next + 1 < end {
            call.phase = Phase::Sending {
                next: next + 1,
                end,
            };
        } else {
            call.phase = Phase::Waiting;
            if call.first_sent.is_none() {
                call.first_sent = Some(now);
            }
            // Allow for the time the whole message takes to leave, on top of the RTO. (A
            // message is at most 4 GiB, so the product cannot overflow.)
            let transfer = match call.len as u64 {
                0 => 0,
                len => len.saturating_mul(1_000_000_000) / bandwidth,
            };
            let wait = rtt.backoff_nanos(call.attempts).saturating_add(transfer);
            let at = deadline_after(now, Duration::from_nanos(wait));
            call.retransmit_at = Some(at);
            self.timer_set(at);
        }
        self.stats.datagrams_sent += 1;
        Some(Transmit {
            header: header.to_bytes(),
            payload: Payload::Call {
                call: CallId(seq),
                offset: range.start,
                len: range.len(),
            },
            seal,
            inline: None,
            awaited: header.frag_count == 1 && ack.checked_add(1) == Some(seq),
        })
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.hello_transmit(now) {
            return Some(t);
        }
        while let Some(&seq) = self.tx_queue.front() {
            match self.call_transmit(now, seq) {
                Some(t) => return Some(t),
                None => {
                    self.tx_queue.pop_front();
                }
            }
        }
        None
    }

    /// The next datagram to send on behalf of `call` (the handshake counts for every call).
    /// For drivers in which each caller sends its own call's datagrams.
    pub fn poll_transmit_for(&mut self, now: Instant, call: CallId) -> Option<Transmit> {
        if let Some(t) = self.hello_transmit(now) {
            return Some(t);
        }
        self.call_transmit(now, call.0)
    }

    /// Whether `call` has datagrams waiting to be sent.
    pub fn wants_transmit(&self, call: CallId) -> bool {
        matches!(self.conn, Conn::Connecting { pending: true, .. })
            || self
                .call(call.0)
                .is_some_and(|c| matches!(c.phase, Phase::Sending { .. }))
    }

    /// Lowers the bound of the earliest timer to `at`, a timer just set.
    fn timer_set(&mut self, at: Instant) {
        if !self.timers_dirty {
            self.next_timeout = Some(self.next_timeout.map_or(at, |n| n.min(at)));
        }
    }

    /// When [`Client::handle_timeout`] should next be called. This may be earlier than any
    /// timer still set (one cancelled since, when its call ended, is not searched out), never
    /// later; [`Client::handle_timeout`] at such a time finds nothing due and brings this up
    /// to date.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.timers_dirty {
            let mut next: Option<Instant> = None;
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            };
            if let Conn::Connecting { retry_at, .. } = self.conn {
                consider(retry_at);
            }
            // Only the calls in flight: from the oldest to the newest.
            for seq in self.oldest..self.next_seq {
                let Some(call) = self.calls[(seq & self.slot_mask) as usize].as_ref() else {
                    continue;
                };
                if call.seq != seq {
                    continue;
                }
                consider(Some(call.deadline));
                if call.phase == Phase::Waiting {
                    consider(call.retransmit_at);
                }
            }
            self.next_timeout = next;
            self.timers_dirty = false;
        }
        self.next_timeout
    }

    /// Expires deadlines and fires retransmission timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Conn::Connecting {
            nonce,
            attempts,
            pending: false,
            retry_at: Some(at),
            cookie,
            refused,
        } = self.conn
        {
            if now >= at {
                self.conn = Conn::Connecting {
                    nonce,
                    attempts: attempts.saturating_add(1),
                    pending: true,
                    retry_at: None,
                    cookie,
                    refused,
                };
                self.timers_dirty = true;
            }
        }
        let refused = match self.conn {
            Conn::Connecting { refused, .. } => refused,
            _ => None,
        };
        let session = match self.conn {
            Conn::Established {
                session,
                max_datagram,
                ..
            } => Some((session, max_datagram)),
            _ => None,
        };
        let (from, to) = (self.oldest, self.next_seq);
        for seq in from..to {
            let Some(call) = self.call(seq) else { continue };
            if now >= call.deadline {
                let error = match (call.last_busy, refused) {
                    (Some(reason), _) => CallError::ServerBusy(reason),
                    // Never sent, for want of a session the server would open.
                    (None, Some(RefuseReason::AddressLimit)) if call.phase == Phase::Held => {
                        CallError::ServerBusy(BusyReason::AddressLimit)
                    }
                    (None, Some(_)) if call.phase == Phase::Held => {
                        CallError::ServerBusy(BusyReason::SessionsFull)
                    }
                    _ => CallError::TimedOut,
                };
                self.fail(seq, error);
                continue;
            }
            let due = call.phase == Phase::Waiting && call.retransmit_at.is_some_and(|t| now >= t);
            if due && call.attempts >= self.config.max_retransmissions {
                let error = match call.last_busy {
                    Some(reason) => CallError::ServerBusy(reason),
                    None => CallError::TimedOut,
                };
                self.fail(seq, error);
                continue;
            }
            if due {
                match session {
                    Some((session, max_datagram)) => {
                        self.begin_round(seq, session, max_datagram, true)
                    }
                    None => {
                        // The session went away while the call waited; it is held until the
                        // next one opens (only idempotent calls get here).
                        if let Some(call) = self.call_mut(seq) {
                            call.phase = Phase::Held;
                            call.retransmit_at = None;
                        }
                    }
                }
            }
        }
        self.timers_dirty = true;
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Processes a received datagram. Returns the response if it completed a call.
    ///
    /// The datagram's Lamport stamp is observed only once it matched the handshake or a call
    /// in flight and (in authenticated mode) its tag checked.
    pub fn handle_datagram<'d>(
        &mut self,
        now: Instant,
        datagram: &'d [u8],
    ) -> Option<Response<'d>> {
        let Some((packet, h)) = Packet::new_checked(datagram)
            .and_then(|p| Ok((p, HeaderRepr::parse(&p)?)))
            .ok()
        else {
            self.stats.dropped.malformed += 1;
            return None;
        };
        if h.kind.from_client()
            || h.client_id != self.client_id
            || h.client_incarnation != self.incarnation
        {
            self.stats.dropped.misdirected += 1;
            return None;
        }
        if packet.tag().is_some() != self.handshake_key.is_some() {
            self.stats.dropped.bad_tag += 1;
            // A refusal that says the two sides disagree on the key is believed without a tag
            // (they share no key to tag it with): it can only end a handshake.
            let disagree = matches!(
                RefuseReason::from_u16(h.status),
                RefuseReason::AuthRequired | RefuseReason::AuthUnsupported
            );
            if h.kind == PacketKind::Refused && disagree {
                self.on_refused(now, &h);
            }
            return None;
        }
        match h.kind {
            PacketKind::Welcome => {
                self.on_welcome(now, &h, &packet);
                None
            }
            PacketKind::Retry | PacketKind::Refused => {
                if !self.check_handshake(&packet) {
                    return None;
                }
                if h.kind == PacketKind::Retry {
                    self.on_retry(&h, packet.payload());
                } else {
                    self.on_refused(now, &h);
                }
                None
            }
            _ => self.on_call_packet(now, &h, &packet),
        }
    }

    /// Checks a handshake-keyed datagram's tag (always true in unauthenticated mode).
    fn check_handshake(&mut self, packet: &Packet<'_>) -> bool {
        match (&self.handshake_key, packet.tag()) {
            (Some(k), Some(tag)) => {
                let ok = k.verify(packet.header_bytes(), packet.payload(), tag);
                if !ok {
                    self.stats.dropped.bad_tag += 1;
                }
                ok
            }
            _ => true,
        }
    }

    fn on_retry(&mut self, h: &HeaderRepr, payload: &[u8]) {
        let Conn::Connecting {
            nonce,
            attempts,
            retry_at,
            refused,
            ..
        } = self.conn
        else {
            self.stats.dropped.stale += 1;
            return;
        };
        let Ok(cookie) = read_body::<CookieBody>(payload) else {
            self.stats.dropped.malformed += 1;
            return;
        };
        if h.seq != nonce {
            self.stats.dropped.stale += 1;
            return;
        }
        // Send the Hello again at once, with the cookie.
        self.conn = Conn::Connecting {
            nonce,
            attempts,
            pending: true,
            retry_at,
            cookie,
            refused,
        };
        self.timers_dirty = true;
    }

    fn on_refused(&mut self, now: Instant, h: &HeaderRepr) {
        let Conn::Connecting {
            nonce,
            attempts,
            cookie,
            ..
        } = self.conn
        else {
            self.stats.dropped.stale += 1;
            return;
        };
        if h.seq != nonce {
            self.stats.dropped.stale += 1;
            return;
        }
        let reason = RefuseReason::from_u16(h.status);
        self.events.push_back(Event::Refused { reason });
        let fatal = match reason {
            RefuseReason::AuthRequired | RefuseReason::AuthUnsupported => {
                Some(CallError::AuthMismatch)
            }
            RefuseReason::ShuttingDown => Some(CallError::ShuttingDown),
            _ => None,
        };
        match fatal {
            Some(error) => {
                // Every call waiting for the session fails now: none was sent.
                self.conn = Conn::Idle;
                for seq in self.oldest..self.next_seq {
                    if self.call(seq).is_some() {
                        self.fail(seq, error);
                    }
                }
            }
            None => {
                // No room now: try again after a backoff, the calls held meanwhile.
                let attempts = attempts.saturating_add(1);
                self.conn = Conn::Connecting {
                    nonce,
                    attempts,
                    pending: false,
                    retry_at: Some(now + self.rtt.backoff(attempts)),
                    cookie,
                    refused: Some(reason),
                };
            }
        }
        self.timers_dirty = true;
    }

    fn on_welcome(&mut self, now: Instant, h: &HeaderRepr, packet: &Packet<'_>) {
        let Conn::Connecting { nonce, .. } = self.conn else {
            self.stats.dropped.stale += 1;
            return;
        };
        let Ok(body) = read_body::<WelcomeBody>(packet.payload()) else {
            self.stats.dropped.malformed += 1;
            return;
        };
        if h.seq != nonce {
            self.stats.dropped.stale += 1;
            return;
        }
        let keys: Option<SessionKeys> = self.config.auth.as_ref().map(|k| {
            k.session(
                self.client_id,
                self.incarnation,
                nonce,
                h.session,
                &body.server_nonce,
            )
        });
        if let (Some(keys), Some(tag)) = (&keys, packet.tag()) {
            if !keys
                .to_client
                .verify(packet.header_bytes(), packet.payload(), tag)
            {
                self.stats.dropped.bad_tag += 1;
                return;
            }
        }
        let server_datagram = body.max_datagram.get() as usize;
        let max_datagram = plan_datagram(
            server_datagram.min(self.config.max_datagram),
            keys.is_some(),
        );
        let max_message = (body.max_message.get() as usize).min(self.config.max_message);
        if FragmentPlan::new(max_message, max_datagram).is_none() {
            // The server's limits cannot carry a message; treat as malformed.
            self.stats.dropped.malformed += 1;
            return;
        }
        if self.clock.observe(h.lamport, now).is_err() {
            self.stats.dropped.bad_stamp += 1;
            return;
        }
        let idle_timeout = Duration::from_millis(u64::from(body.idle_timeout_ms.get()).max(1));
        let (seal, open) = match keys {
            Some(k) => (Some(Arc::new(k.to_server)), Some(Arc::new(k.to_client))),
            None => (None, None),
        };
        self.conn = Conn::Established {
            session: h.session,
            server_node: body.server_node.get(),
            max_datagram,
            max_message,
            idle_timeout,
            last_heard: now,
            seal,
            open,
        };
        self.stats.sessions_opened += 1;
        self.events
            .push_back(Event::Connected { session: h.session });
        // The handshake's timer is over.
        self.timers_dirty = true;
        let (from, to) = (self.oldest, self.next_seq);
        for seq in from..to {
            let Some(call) = self.call(seq) else { continue };
            if call.phase != Phase::Held {
                continue;
            }
            // A call already sent in a lost session is sent again: a retransmission (so, by
            // Karn's rule, no round-trip sample from its reply).
            let sent_before = call.first_sent.is_some();
            if call.len > max_message {
                self.fail(
                    seq,
                    CallError::MessageTooLarge {
                        len: call.len,
                        max: max_message,
                    },
                );
            } else {
                self.begin_round(seq, h.session, max_datagram, sent_before);
            }
        }
    }

    fn server_node(&self) -> u64 {
        match self.conn {
            Conn::Established { server_node, .. } => server_node,
            _ => 0,
        }
    }

    fn on_call_packet<'d>(
        &mut self,
        now: Instant,
        h: &HeaderRepr,
        packet: &Packet<'d>,
    ) -> Option<Response<'d>> {
        let payload = packet.payload();
        let Some(call) = self.call(h.seq) else {
            self.stats.dropped.stale += 1;
            return None;
        };
        if call.session != h.session || call.session == 0 {
            self.stats.dropped.stale += 1;
            return None;
        }
        let (current, open) = match &self.conn {
            Conn::Established { session, open, .. } => (*session, open.as_deref()),
            _ => (0, None),
        };
        if let Some(tag) = packet.tag() {
            // Stale is the handshake key's (the server may have lost the session's keys);
            // everything else within the session is the session's.
            let key = if h.kind == PacketKind::Stale {
                self.handshake_key.as_deref()
            } else if h.session == current {
                open
            } else {
                None
            };
            if !key.is_some_and(|k| k.verify(packet.header_bytes(), payload, tag)) {
                self.stats.dropped.bad_tag += 1;
                return None;
            }
        }
        let request_stamp = LamportStamp::new(call.lamport, self.client_id);
        let (interface, method) = (call.interface, call.method);
        let (attempts, deadline) = (call.attempts, call.deadline);
        if h.kind == PacketKind::Stale {
            self.session_lost(h.session, h.ack);
            return None;
        }
        let Ok(received) = self.clock.observe(h.lamport, now) else {
            self.stats.dropped.bad_stamp += 1;
            return None;
        };
        let _ = received;
        if let Conn::Established { last_heard, .. } = &mut self.conn {
            if h.session == current {
                *last_heard = now;
            }
        }
        let reply_stamp = LamportStamp::new(h.lamport, self.server_node());
        match h.kind {
            PacketKind::Busy => {
                self.stats.busy += 1;
                let backoff = self.rtt.backoff(attempts + 1);
                let call = self.call_mut(h.seq)?;
                call.last_busy = Some(BusyReason::from_u16(h.status));
                // The round that follows counts as the attempt (`begin_round`).
                call.phase = Phase::Waiting;
                call.retransmit_at = Some(now + backoff);
                // Pushed back, and rare: recomputed exactly.
                self.timers_dirty = true;
                None
            }
            PacketKind::ErrorReply => {
                let error = CallError::from_code(ErrorCode::from_u16(h.status), interface, method);
                self.end_call(h.seq);
                self.stats.failures += 1;
                if error == CallError::OutcomeUnknown {
                    self.stats.outcome_unknown += 1;
                }
                Some(Response {
                    call: CallId(h.seq),
                    result: Err(error),
                    request_stamp,
                    reply_stamp,
                })
            }
            PacketKind::Reply => {
                // At its deadline a call is over, as `handle_timeout` at that instant says.
                if now >= deadline {
                    self.fail(h.seq, CallError::TimedOut);
                    return None;
                }
                let body = if h.frag_count == 1 {
                    let call = self.call(h.seq)?;
                    let timed =
                        self.stats.rtt_samples < RTT_FIRST_SAMPLES || h.seq % RTT_SAMPLE_EVERY == 0;
                    if timed && call.attempts == 0 && call.plan.count() == 1 {
                        if let Some(sent) = call.first_sent {
                            self.rtt.sample(now.saturating_duration_since(sent));
                            self.stats.rtt_samples += 1;
                        }
                    }
                    Body::Borrowed(payload)
                } else {
                    Body::Owned(self.reassemble(h, payload)?)
                };
                self.end_call(h.seq);
                self.stats.replies += 1;
                Some(Response {
                    call: CallId(h.seq),
                    result: Ok(body),
                    request_stamp,
                    reply_stamp,
                })
            }
            _ => {
                self.stats.dropped.misdirected += 1;
                None
            }
        }
    }

    /// Adds a reply fragment; returns the body once complete. Fragments of one execution's
    /// reply carry one Lamport stamp: a fragment with a newer stamp (an idempotent call
    /// executed again) starts the reassembly over, one with an older stamp is dropped.
    fn reassemble(&mut self, h: &HeaderRepr, payload: &[u8]) -> Option<Vec<u8>> {
        let max_message = self.config.max_message;
        let budget = self.config.reassembly_budget;
        let current = self.call(h.seq)?.reply.as_ref().map(|&(_, stamp)| stamp);
        match current {
            Some(stamp) if h.lamport < stamp => {
                self.stats.dropped.stale += 1;
                return None;
            }
            Some(stamp) if h.lamport > stamp => {
                let (r, _) = self.call_mut(h.seq)?.reply.take()?;
                self.reassembly_bytes -= r.message_len();
                self.give_back(r);
            }
            _ => {}
        }
        let in_use = self.reassembly_bytes;
        let starting = self.call(h.seq)?.reply.is_none();
        if starting {
            let len = h.message_len as usize;
            if len > max_message || in_use + len > budget {
                self.stats.dropped.bad_fragment += 1;
                return None;
            }
            let (mut buf, bits) = (self.buffers.take(), self.bitmaps.take());
            if buf.capacity() > 2 * len {
                // Much larger than this reply: it would hold memory the budget does not count.
                buf = Vec::new();
            }
            match Reassembly::start(h, buf, bits) {
                Ok(r) => {
                    self.reassembly_bytes += len;
                    self.call_mut(h.seq)?.reply = Some((r, h.lamport));
                }
                Err(_) => {
                    self.stats.dropped.bad_fragment += 1;
                    return None;
                }
            }
        }
        let call = self.call_mut(h.seq)?;
        call.reply_seen = true;
        let (r, _) = call.reply.as_mut()?;
        match r.add(h, payload) {
            Ok(false) => None,
            Ok(true) => {
                let (r, _) = call.reply.take()?;
                self.reassembly_bytes -= r.message_len();
                let (buf, bits) = r.into_parts();
                self.bitmaps.give(bits);
                Some(buf)
            }
            Err(_) => {
                self.stats.dropped.bad_fragment += 1;
                None
            }
        }
    }

    /// The server no longer knows `session`: calls sent in it that started executing there
    /// (sequence number up to `max_started`, which is `u64::MAX` when the server cannot
    /// tell) may or may not have executed, and fail with [`CallError::OutcomeUnknown`] unless
    /// they are idempotent. Every other call provably never executed, and is sent again in a
    /// new session.
    fn session_lost(&mut self, session: u64, max_started: u64) {
        if let Conn::Established {
            session: current, ..
        } = self.conn
        {
            if current == session {
                self.stats.sessions_lost += 1;
                self.events.push_back(Event::SessionLost { session });
                self.begin_hello();
            }
        }
        let (from, to) = (self.oldest, self.next_seq);
        for seq in from..to {
            let Some(call) = self.call(seq) else { continue };
            if call.session != session {
                continue;
            }
            // A call none of whose datagrams left (its first round has not started sending)
            // cannot have executed: it waits for the new session like an idempotent one.
            let unsent =
                call.first_sent.is_none() && matches!(call.phase, Phase::Sending { next: 0, .. });
            let never_started = seq > max_started;
            if call.idempotent || unsent || never_started {
                if !call.idempotent && !unsent {
                    self.stats.resent_after_stale += 1;
                }
                let Some(call) = self.call_mut(seq) else {
                    continue;
                };
                call.phase = Phase::Held;
                call.session = 0;
                call.retransmit_at = None;
                call.reply_seen = false;
                if let Some((r, _)) = call.reply.take() {
                    self.reassembly_bytes -= r.message_len();
                    self.give_back(r);
                }
            } else {
                self.fail(seq, CallError::OutcomeUnknown);
            }
        }
        self.timers_dirty = true;
    }
}

#[cfg(test)]
mod tests;
