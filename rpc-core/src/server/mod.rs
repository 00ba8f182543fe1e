//! The server state machine: sessions, at-most-once execution, the reply cache (retransmit
//! buffer), reassembly of large requests, and the control replies that keep memory bounded.
//!
//! # Driving it
//!
//! 1. [`Server::handle_datagram`] for each datagram received. When it returns an
//!    [`IncomingCall`], execute it: the body borrows from the datagram (zero copy) or, for a
//!    reassembled request, is owned.
//! 2. For each executed call, [`Server::begin_reply`] with the reply's length, send the
//!    datagrams of the returned [`ReplyPlan`] (header, then that range of the reply body),
//!    then [`Server::finish_reply`] with the body, which keeps a copy for retransmission
//!    unless the method is idempotent. Sending before copying overlaps the buffering with
//!    the transmission.
//! 3. [`Server::poll_transmit`] until `None`: welcomes, busy, stale and error replies, and
//!    replies resent from the cache.
//! 4. [`Server::handle_timeout`] once the time of [`Server::poll_timeout`] has come.
//!
//! # Sessions
//!
//! A client opens a session with a `Hello`. The first `Hello` is answered with a `Retry`
//! carrying a stateless cookie bound to the client's address; only a `Hello` that returns a
//! valid cookie opens a session, so a `Hello` from a forged address creates nothing. A session
//! is keyed by (client id, client incarnation, address): a datagram of a session from any
//! other address, or (in authenticated mode) without the session's tag, is dropped and changes
//! nothing. Sessions in use are never evicted to make room for a newcomer, which is refused
//! instead; one host holds at most `max_sessions_per_host` of them.
//!
//! # At-most-once
//!
//! A session's id carries the server's incarnation in the high 32 bits and is never reused.
//! Per session the server keeps, for each call above the client's acknowledgement point,
//! whether it is executing, its cached reply, or a tombstone saying why no reply is kept. So:
//!
//! - a new call is executed once;
//! - a duplicate of a call still executing is dropped;
//! - a duplicate of a completed call is answered from the cache without executing;
//! - a duplicate of an acknowledged call is dropped (the client already has the reply);
//! - a request naming a session this server does not have (it restarted, or the session was
//!   evicted or expired) is refused with `Stale`, never executed: its earlier transmissions may
//!   have executed in the lost session. The `Stale` says, when the server knows it (it closed
//!   the session itself), the highest call that ever started executing in it, so the client
//!   can send every later call again in a new session.
//!
//! Every resource has a bound in [`ServerConfig`]; at a bound the server answers `Busy` (the
//! call did not execute, the client retries later) or evicts the least recently used session.

use std::collections::VecDeque;
use std::hash::Hash;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use zerocopy::IntoBytes;

use crate::auth::{CookieKey, Sealer, SessionKeys};
pub use crate::body::Body;
use crate::clock::{LamportClock, LamportStamp};
use crate::config::{ConfigError, MAX_WINDOW, ServerConfig, plan_datagram};
use crate::pool::Pool;
use crate::wire::{
    BusyReason, COOKIE_LEN, CookieBody, DropCounters, ErrorCode, Flags, FragmentPlan, HEADER_LEN,
    HeaderRepr, HelloBody, Packet, PacketKind, Reassembly, RefuseReason, TAG_LEN, WELCOME_BODY_LEN,
    WelcomeBody, read_body,
};

/// Closed sessions remembered per slot, for precise `Stale` answers.
const TOMBSTONES: usize = 4;

/// Where a closed session's record lives among its slot's.
fn tombstone(id: u64) -> usize {
    (id as usize) % TOMBSTONES
}

/// What the server needs of a peer's address: to compare and hash it (sessions and cookies
/// are bound to it) and to name its host (sessions per host are bounded).
pub trait PeerAddr: Copy + Eq + Hash + core::fmt::Debug {
    /// The host part: the IP address, whatever the port.
    fn host(&self) -> u128;
}

impl PeerAddr for std::net::SocketAddr {
    fn host(&self) -> u128 {
        match self.ip() {
            std::net::IpAddr::V4(ip) => u128::from(ip.to_bits()),
            std::net::IpAddr::V6(ip) => ip.to_bits(),
        }
    }
}

/// Simulated addresses: each is its own host.
impl PeerAddr for u32 {
    fn host(&self) -> u128 {
        u128::from(*self)
    }
}

/// Simulated addresses: each is its own host.
impl PeerAddr for u64 {
    fn host(&self) -> u128 {
        u128::from(*self)
    }
}

/// What a handler may know about the call it executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallContext {
    /// The calling client's id.
    pub client_id: u64,
    /// The calling client's incarnation.
    pub client_incarnation: u32,
    /// The call's sequence number in its client.
    pub seq: u64,
    /// The session the call arrived in.
    pub session: u64,
    /// The request's Lamport stamp (the client's clock and id).
    pub request_stamp: LamportStamp,
    /// The server's Lamport stamp of the receipt, after observing the request.
    pub received_stamp: LamportStamp,
    /// Interface fingerprint.
    pub interface: u32,
    /// Method fingerprint.
    pub method: u32,
    /// Whether the call was flagged idempotent.
    pub idempotent: bool,
}

/// A call to execute, handed out once.
#[derive(Debug)]
pub struct IncomingCall<'d, A> {
    /// Pass it to [`Server::begin_reply`] and [`Server::finish_reply`].
    pub ticket: Ticket<A>,
    /// Who called, and when.
    pub context: CallContext,
    /// The request body.
    pub body: Body<'d>,
}

/// Names a call being executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket<A> {
    dest: A,
    session: u64,
    slot: u32,
    seq: u64,
    client_id: u64,
    client_incarnation: u32,
    interface: u32,
    method: u32,
    idempotent: bool,
    max_datagram: u32,
    max_message: u32,
    /// The Lamport time of the request's receive event: the reply's stamp is held after it.
    received: u64,
    /// The request acknowledged every call before it: its client had no other in flight.
    alone: bool,
}

impl<A: Copy> Ticket<A> {
    /// Where the reply goes.
    pub fn dest(&self) -> A {
        self.dest
    }
    /// Whether the reply will be cached.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }
}

/// The datagrams of one reply: for each fragment `i` in `0..count()`, send
/// [`ReplyPlan::header`]`(i)` followed by the bytes [`ReplyPlan::range`]`(i)` of the body.
#[derive(Clone, Debug)]
pub struct ReplyPlan<A> {
    /// Where to send.
    pub dest: A,
    header: HeaderRepr,
    plan: FragmentPlan,
    /// The session's keys, in authenticated mode (shared with the session: a plan is moved
    /// and copied about, and a key is a few hundred bytes).
    keys: Option<Arc<SessionKeys>>,
    awaited: bool,
}

impl<A> ReplyPlan<A> {
    /// The session's key, in authenticated mode: each datagram's tag is [`Sealer::tag`] of
    /// its header and its range of the body, sent after the header.
    pub fn seal(&self) -> Option<&Sealer> {
        self.keys.as_deref().map(|k| &k.to_client)
    }

    /// Number of datagrams.
    pub fn count(&self) -> u16 {
        self.plan.count()
    }

    /// Whether the client waits for this reply alone: it is one datagram, and its request
    /// acknowledged every call before it, so the client had no other in flight. A link may
    /// hand such a datagram over differently (rpc-transport's `Link::send_awaited`).
    pub fn awaited(&self) -> bool {
        self.awaited
    }

    /// Header of datagram `index`.
    pub fn header(&self, index: u16) -> [u8; HEADER_LEN] {
        let range = self.plan.range(index);
        HeaderRepr {
            frag_index: index,
            payload_len: range.len() as u32,
            ..self.header
        }
        .to_bytes()
    }

    /// Body bytes of datagram `index`.
    pub fn range(&self, index: u16) -> Range<usize> {
        self.plan.range(index)
    }

    /// Body length: zero when the plan is an error reply.
    pub fn body_len(&self) -> usize {
        self.plan.message_len()
    }

    /// Whether this is an error reply rather than the reply the handler produced.
    pub fn error(&self) -> Option<ErrorCode> {
        (self.header.kind == PacketKind::ErrorReply)
            .then(|| ErrorCode::from_u16(self.header.status))
    }

    /// The reply's Lamport stamp.
    pub fn lamport(&self) -> u64 {
        self.header.lamport
    }

    /// In authenticated mode, the tag of datagram `index`, whose body bytes (its range of
    /// the reply body) are given as segments; it goes between the header and the body.
    pub fn tag<'a>(
        &self,
        index: u16,
        body: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<[u8; TAG_LEN]> {
        self.seal().map(|s| s.tag(&self.header(index), body))
    }

    /// Datagram `index` in one buffer, for drivers that copy (simulations and tests): its
    /// header, its tag if any, then `body` (the whole reply body; its range is taken).
    pub fn datagram(&self, index: u16, body: &[u8]) -> Vec<u8> {
        let range = self.range(index);
        let part = if self.error().is_none() {
            body.get(range).unwrap_or_default()
        } else {
            &[]
        };
        let mut out = self.header(index).to_vec();
        if let Some(tag) = self.tag(index, [part]) {
            out.extend_from_slice(&tag);
        }
        out.extend_from_slice(part);
        out
    }
}

/// A datagram for the driver to send.
#[derive(Debug)]
pub struct Transmit<'a, A> {
    /// Where to send it.
    pub dest: A,
    /// The header bytes.
    pub header: [u8; HEADER_LEN],
    /// The body bytes.
    pub body: &'a [u8],
    /// In authenticated mode, the key whose tag ([`Sealer::tag`] of header and body) goes
    /// between the header and the body.
    pub seal: Option<&'a Sealer>,
}

impl<A> Transmit<'_, A> {
    /// In authenticated mode, the tag to send between the header and the body.
    pub fn tag(&self) -> Option<[u8; TAG_LEN]> {
        self.seal.map(|s| s.tag(&self.header, [self.body]))
    }

    /// The whole datagram in one buffer, for drivers that copy (simulations and tests).
    pub fn to_datagram(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + TAG_LEN + self.body.len());
        out.extend_from_slice(&self.header);
        if let Some(tag) = self.tag() {
            out.extend_from_slice(&tag);
        }
        out.extend_from_slice(self.body);
        out
    }
}

/// Counters, for tests, benchmarks and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Calls handed out for execution.
    pub executed: u64,
    /// Duplicate requests answered from the reply cache (or its tombstones), not executed.
    pub answered_from_cache: u64,
    /// Duplicate requests dropped because the call was still executing.
    pub dropped_executing: u64,
    /// Busy replies sent.
    pub busy: u64,
    /// Stale replies sent (requests naming an unknown session).
    pub stale: u64,
    /// Error replies produced (dispatch errors and limits).
    pub errors: u64,
    /// Replies not cached for lack of room (a tombstone is kept instead).
    pub uncached_replies: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions evicted to make room.
    pub sessions_evicted: u64,
    /// Sessions closed after being idle.
    pub sessions_expired: u64,
    /// Reassemblies dropped after being idle.
    pub reassemblies_expired: u64,
    /// Control replies dropped because the transmit queue was full.
    pub transmits_dropped: u64,
    /// Retries (cookies) sent in answer to Hellos without a valid cookie.
    pub retries: u64,
    /// Hellos refused (sessions full, host limit, authentication, shutdown).
    pub refused_hellos: u64,
    /// Sessions closed because a request was too far beyond its acknowledged point to be
    /// honest (each answered with a `Stale`).
    pub sessions_reset: u64,
    /// Requests answered `ShuttingDown` during a drain.
    pub shutting_down: u64,
    /// Datagrams dropped, by cause.
    pub dropped: DropCounters,
}

/// What the server holds, to check against [`ServerConfig`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerMemory {
    /// Open sessions.
    pub sessions: usize,
    /// Bytes of cached replies, all sessions.
    pub cached_bytes: usize,
    /// Most bytes of cached replies held by one session.
    pub max_session_cached_bytes: usize,
    /// Most call entries held by one session.
    pub max_session_entries: usize,
    /// Bytes of requests being reassembled.
    pub reassembly_bytes: usize,
    /// Requests being reassembled.
    pub reassemblies: usize,
    /// Control replies queued.
    pub queued_transmits: usize,
    /// Bytes kept in buffer pools for reuse.
    pub pooled_bytes: usize,
}

impl ServerMemory {
    /// Checks every figure against its bound; returns the first one exceeded.
    pub fn check(&self, c: &ServerConfig) -> Result<(), &'static str> {
        let checks = [
            (self.sessions <= c.max_sessions, "sessions"),
            (self.cached_bytes <= c.total_cache_bytes, "cached bytes"),
            (
                self.max_session_cached_bytes <= c.session_cache_bytes,
                "session cached bytes",
            ),
            (self.max_session_entries <= c.window, "session entries"),
            (
                self.reassembly_bytes <= c.reassembly_budget,
                "reassembly bytes",
            ),
            (self.reassemblies <= c.max_reassemblies, "reassemblies"),
            (
                self.queued_transmits <= c.max_queued_transmits,
                "queued transmits",
            ),
            (self.pooled_bytes <= pool_bound(c), "pooled bytes"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(what),
            None => Ok(()),
        }
    }
}

fn pool_bound(c: &ServerConfig) -> usize {
    // Buffers kept for reuse: cache buffers up to a quarter of the cache budget, reassembly
    // buffers up to a quarter of the reassembly budget, and their bitmaps.
    c.total_cache_bytes / 4 + c.reassembly_budget / 4 + (64 << 10)
}

#[derive(Debug)]
struct Cached {
    kind: PacketKind,
    status: u16,
    lamport: u64,
    /// The reply's first datagram header as first sent (and its tag, in authenticated
    /// mode), then the whole body: a reply of one datagram can leave from here in one piece.
    /// Only the body counts as cached bytes; the header is a fixed cost per entry, bounded by
    /// the window.
    datagram: Vec<u8>,
    overhead: u8,
}

impl Cached {
    fn body(&self) -> &[u8] {
        self.datagram
            .get(usize::from(self.overhead)..)
            .unwrap_or_default()
    }
}

#[derive(Debug)]
enum Entry {
    /// Not received yet (a gap below a received call).
    Unseen,
    /// Handed out for execution; no reply yet.
    Executing,
    /// Executed (or refused); the reply is kept for retransmission.
    Done(Cached),
    /// Executed or refused; the reply could not be kept. Duplicates get this error.
    Gone(ErrorCode),
}

#[derive(Debug)]
struct Session<A> {
    id: u64,
    client_id: u64,
    client_incarnation: u32,
    addr: A,
    /// For replies: the smaller of the two sides' datagram limits.
    max_datagram: usize,
    /// For replies: the client's message limit.
    max_message: usize,
    last_used: Instant,
    /// Every call with a sequence number at or below this one has ended at the client.
    acked: u64,
    /// `entries[i]` is the call with sequence number `acked + 1 + i`.
    entries: VecDeque<Entry>,
    cached_bytes: usize,
    /// The highest sequence number that started executing in this session (0 if none):
    /// every later call never executed here.
    max_started: u64,
    /// The client's handshake nonce that opened the session.
    hello_nonce: u64,
    /// The server's nonce, sent in the Welcome.
    server_nonce: [u8; 16],
    /// The session's keys, in authenticated mode.
    keys: Option<Arc<SessionKeys>>,
}

#[derive(Debug)]
struct InProgress {
    session: u64,
    seq: u64,
    idempotent: bool,
    last_activity: Instant,
    r: Reassembly,
}

#[derive(Clone, Copy, Debug)]
enum PendingBody {
    None,
    Welcome(WelcomeBody),
    Retry(CookieBody),
    /// Fragments `next..` of a cached reply.
    Cached {
        slot: u32,
        next: u16,
    },
}

/// Which key tags a queued datagram (authenticated mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// None: unauthenticated mode, or answers to unauthenticated Hellos.
    None,
    /// The handshake key.
    Handshake,
    /// The session in this slot, if it is still the one with this id.
    Session { slot: u32, id: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Pending<A> {
    dest: A,
    header: HeaderRepr,
    body: PendingBody,
    key: Key,
}

/// The server side of the protocol, generic over the driver's address type.
pub struct Server<A> {
    config: ServerConfig,
    incarnation: u32,
    node_id: u64,
    clock: Arc<LamportClock>,
    sessions: Vec<Option<Session<A>>>,
    /// Per slot: the low 16 bits of the id of the slot's latest session.
    generations: Vec<u16>,
    /// Per slot: the ids of the last [`TOMBSTONES`] sessions the slot closed and the highest
    /// call that started executing in each, for the `Stale` answers to their late requests
    /// (indexed by generation).
    closed: Vec<[(u64, u64); TOMBSTONES]>,
    session_count: usize,
    rng: ChaCha8Rng,
    cookies: CookieKey,
    /// The first instant the server was given: cookies carry milliseconds since then.
    epoch: Option<Instant>,
    handshake_key: Option<Sealer>,
    /// New calls and sessions are refused with `ShuttingDown`.
    draining: bool,
    reassemblies: Vec<InProgress>,
    reassembly_bytes: usize,
    cached_bytes: usize,
    tx: VecDeque<Pending<A>>,
    scratch: [u8; WELCOME_BODY_LEN],
    buffers: Pool<u8>,
    big_buffers: Pool<u8>,
    bitmaps: Pool<u64>,
    next_sweep: Option<Instant>,
    stats: ServerStats,
}

impl<A: core::fmt::Debug> core::fmt::Debug for Server<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("incarnation", &self.incarnation)
            .field("node_id", &self.node_id)
            .field("sessions", &self.session_count)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<A: PeerAddr> Server<A> {
    /// A server. `incarnation` must be non-zero and differ from every earlier incarnation of
    /// this server (a boot counter, or random bits), so that requests sent to an earlier
    /// incarnation are recognised; `clock` is the node's Lamport clock (its node id breaks
    /// ties between stamps); `rng` seeds the per-slot part of session ids, the cookie secret
    /// and the session nonces (the core draws no randomness of its own).
    pub fn new(
        config: ServerConfig,
        incarnation: u32,
        clock: Arc<LamportClock>,
        rng: impl RngCore,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if incarnation == 0 {
            return Err(ConfigError::Invalid("server incarnation must be non-zero"));
        }
        let mut rng = ChaCha8Rng::from_rng(&mut { rng });
        let sessions = (0..config.max_sessions).map(|_| None).collect();
        let generations = (0..config.max_sessions)
            .map(|_| rng.next_u32() as u16)
            .collect();
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Ok(Self {
            generations,
            closed: vec![[(0, 0); TOMBSTONES]; config.max_sessions],
            incarnation,
            node_id: clock.node(),
            clock,
            sessions,
            session_count: 0,
            rng,
            cookies: CookieKey::new(&secret),
            epoch: None,
            handshake_key: config.auth.as_ref().map(|k| k.handshake()),
            draining: false,
            reassemblies: Vec::with_capacity(config.max_reassemblies),
            reassembly_bytes: 0,
            cached_bytes: 0,
            tx: VecDeque::new(),
            scratch: [0; WELCOME_BODY_LEN],
            buffers: Pool::new(config.total_cache_bytes / 4, 4 * config.window),
            big_buffers: Pool::new(config.reassembly_budget / 4, 8),
            bitmaps: Pool::new(64 << 10, 16),
            next_sweep: None,
            stats: ServerStats::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// This server's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// This server's Lamport node id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The Lamport clock's current value.
    pub fn lamport(&self) -> u64 {
        self.clock.now()
    }

    /// The node's Lamport clock.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.clock
    }

    /// Starts a graceful shutdown: from now on new calls are answered `ShuttingDown` (they do
    /// not execute) and new sessions are refused, while calls already executing finish and
    /// duplicates are still answered from the reply cache.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Whether [`Server::begin_drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Whether authenticated mode is on.
    pub fn authenticated(&self) -> bool {
        self.handshake_key.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Sessions open now (what [`Server::memory`] says, without its scan).
    pub fn session_count(&self) -> usize {
        self.session_count
    }

    /// Bytes of cached replies now (what [`Server::memory`] says, without its scan).
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// What the server holds now.
    pub fn memory(&self) -> ServerMemory {
        let mut m = ServerMemory {
            sessions: self.session_count,
            cached_bytes: self.cached_bytes,
            reassembly_bytes: self.reassembly_bytes,
            reassemblies: self.reassemblies.len(),
            queued_transmits: self.tx.len(),
            pooled_bytes: self.buffers.held_bytes()
                + self.big_buffers.held_bytes()
                + self.bitmaps.held_bytes() * 8,
            ..Default::default()
        };
        for s in self.sessions.iter().flatten() {
            m.max_session_cached_bytes = m.max_session_cached_bytes.max(s.cached_bytes);
            m.max_session_entries = m.max_session_entries.max(s.entries.len());
        }
        m
    }

    fn queue(&mut self, p: Pending<A>) {
        if self.tx.len() >= self.config.max_queued_transmits {
            self.stats.transmits_dropped += 1;
        } else {
            self.tx.push_back(p);
        }
    }

    /// The key that tags answers within the session in `slot`.
    fn session_key(&self, slot: usize) -> Key {
        match (&self.handshake_key, self.sessions[slot].as_ref()) {
            (Some(_), Some(s)) => Key::Session {
                slot: slot as u32,
                id: s.id,
            },
            _ => Key::None,
        }
    }

    /// The key that tags handshake answers and `Stale`.
    fn handshake(&self) -> Key {
        if self.handshake_key.is_some() {
            Key::Handshake
        } else {
            Key::None
        }
    }

    fn control(&mut self, dest: A, req: &HeaderRepr, kind: PacketKind, status: u16, key: Key) {
        match kind {
            PacketKind::Busy => self.stats.busy += 1,
            PacketKind::Stale => self.stats.stale += 1,
            PacketKind::ErrorReply => self.stats.errors += 1,
            _ => {}
        }
        self.queue_reply(dest, req, kind, status, Flags::empty(), key);
    }

    /// Queues a header-only answer to the request `req`: it echoes the request's session,
    /// sequence number, interface and method, so the client can match it to the call.
    fn queue_reply(
        &mut self,
        dest: A,
        req: &HeaderRepr,
        kind: PacketKind,
        status: u16,
        flags: Flags,
        key: Key,
    ) {
        let header = HeaderRepr {
            kind,
            flags,
            status,
            client_id: req.client_id,
            client_incarnation: req.client_incarnation,
            interface: req.interface,
            method: req.method,
            session: req.session,
            seq: req.seq,
            ack: 0,
            lamport: self.clock.tick(),
            frag_index: 0,
            frag_count: 1,
            message_len: 0,
            payload_len: 0,
        };
        self.queue(Pending {
            dest,
            header,
            body: PendingBody::None,
            key,
        });
    }

    /// Answers a request naming a session this server does not hold (or holds for another
    /// address) with `Stale`. `ack` is the highest call that started executing in that
    /// session, when the server knows it, `u64::MAX` otherwise. Not a new event of a session:
    /// the stamp is the clock's current value, without ticking.
    fn stale(&mut self, dest: A, req: &HeaderRepr, ack: u64) {
        if req.frag_index != 0 {
            self.stats.dropped.stale += 1;
            return;
        }
        self.stats.stale += 1;
        let header = HeaderRepr {
            kind: PacketKind::Stale,
            flags: Flags::empty(),
            status: 0,
            client_id: req.client_id,
            client_incarnation: req.client_incarnation,
            interface: req.interface,
            method: req.method,
            session: req.session,
            seq: req.seq,
            ack,
            lamport: self.clock.now(),
            frag_index: 0,
            frag_count: 1,
            message_len: 0,
            payload_len: 0,
        };
        let key = self.handshake();
        self.queue(Pending {
            dest,
            header,
            body: PendingBody::None,
            key,
        });
    }

    /// What a `Stale` for session `id` can say: the highest call that started executing in
    /// it, if this server closed it and still remembers.
    fn stale_ack(&self, id: u64) -> u64 {
        if (id >> 32) as u32 != self.incarnation {
            return u64::MAX;
        }
        let slot = ((id >> 16) & 0xffff) as usize;
        match self.closed.get(slot).map(|t| t[tombstone(id)]) {
            Some((closed, max_started)) if closed == id => max_started,
            _ => u64::MAX,
        }
    }

    /// Refuses a request: the first fragment gets the answer, the others are dropped and
    /// counted (answering each would multiply the answers by the fragment count).
    fn refuse_fragment(
        &mut self,
        dest: A,
        req: &HeaderRepr,
        kind: PacketKind,
        status: u16,
        key: Key,
    ) {
        if req.frag_index == 0 {
            self.control(dest, req, kind, status, key);
        } else {
            self.stats.dropped.refused += 1;
        }
    }

    /// Processes a received datagram. Returns a call to execute, if it completes a new one.
    ///
    /// The datagram's Lamport stamp is observed only once it passed every check (its
    /// session, its address, its tag, its cookie), so nothing from outside a session moves
    /// the clock.
    pub fn handle_datagram<'d>(
        &mut self,
        now: Instant,
        src: A,
        datagram: &'d [u8],
    ) -> Option<IncomingCall<'d, A>> {
        let Some((packet, h)) = Packet::new_checked(datagram)
            .and_then(|p| Ok((p, HeaderRepr::parse(&p)?)))
            .ok()
        else {
            self.stats.dropped.malformed += 1;
            return None;
        };
        if !h.kind.from_client() {
            self.stats.dropped.misdirected += 1;
            return None;
        }
        if self.epoch.is_none() {
            self.epoch = Some(now);
        }
        if packet.tag().is_some() != self.handshake_key.is_some() {
            // One side authenticates and the other does not: a Hello learns which, so that
            // a misconfigured client gets a clear error; anything else is dropped.
            self.stats.dropped.bad_tag += 1;
            if h.kind == PacketKind::Hello {
                let reason = if self.handshake_key.is_some() {
                    RefuseReason::AuthRequired
                } else {
                    RefuseReason::AuthUnsupported
                };
                self.refuse_hello(src, &h, reason, Key::None);
            }
            return None;
        }
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_interval());
        }
        match h.kind {
            PacketKind::Hello => {
                self.on_hello(now, src, &h, &packet);
                None
            }
            _ => self.on_request(now, src, &h, &packet),
        }
    }

    fn sweep_interval(&self) -> Duration {
        (self
            .config
            .reassembly_timeout
            .min(self.config.session_idle_timeout)
            / 2)
        .max(Duration::from_millis(1))
    }

    /// The slot of the session of client `(client_id, incarnation)` at `addr`.
    fn find_session(&self, client_id: u64, incarnation: u32, addr: A) -> Option<usize> {
        self.sessions.iter().position(|s| {
            s.as_ref().is_some_and(|s| {
                s.client_id == client_id && s.client_incarnation == incarnation && s.addr == addr
            })
        })
    }

    /// The slot of a session id, if this server holds that session for that client.
    fn lookup(&self, id: u64, client_id: u64, incarnation: u32) -> Option<usize> {
        if (id >> 32) as u32 != self.incarnation {
            return None;
        }
        let slot = ((id >> 16) & 0xffff) as usize;
        let s = self.sessions.get(slot)?.as_ref()?;
        (s.id == id && s.client_id == client_id && s.client_incarnation == incarnation)
            .then_some(slot)
    }

    fn millis_since_epoch(&self, now: Instant) -> u64 {
        let epoch = self.epoch.unwrap_or(now);
        u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `cookie` is one this server issued to `src` for this Hello, and still valid.
    fn cookie_valid(&self, now: Instant, src: &A, h: &HeaderRepr, cookie: &CookieBody) -> bool {
        let issued = cookie.issued.get();
        // Issued as milliseconds since the epoch plus one (see `retry`).
        let age = (self.millis_since_epoch(now) + 1).checked_sub(issued);
        let lifetime = u64::try_from(self.config.cookie_lifetime.as_millis()).unwrap_or(u64::MAX);
        age.is_some_and(|age| age <= lifetime)
            && self.cookies.check(
                src,
                h.client_id,
                h.client_incarnation,
                h.seq,
                issued,
                &cookie.mac,
            )
    }

    /// Answers a Hello with a cookie to send back. Stateless: nothing is recorded, and the
    /// clock is read, not ticked.
    fn retry(&mut self, now: Instant, src: A, h: &HeaderRepr) {
        self.stats.retries += 1;
        // Offset by one so that a cookie is never all zeros (a Hello's "no cookie").
        let issued = self.millis_since_epoch(now) + 1;
        let cookie = CookieBody {
            issued: issued.into(),
            mac: self
                .cookies
                .mac(&src, h.client_id, h.client_incarnation, h.seq, issued),
        };
        let header = HeaderRepr {
            kind: PacketKind::Retry,
            flags: Flags::empty(),
            status: 0,
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            interface: 0,
            method: 0,
            session: 0,
            seq: h.seq,
            ack: 0,
            lamport: self.clock.now(),
            frag_index: 0,
            frag_count: 1,
            message_len: COOKIE_LEN as u32,
            payload_len: COOKIE_LEN as u32,
        };
        let key = self.handshake();
        self.queue(Pending {
            dest: src,
            header,
            body: PendingBody::Retry(cookie),
            key,
        });
    }

    fn refuse_hello(&mut self, src: A, h: &HeaderRepr, reason: RefuseReason, key: Key) {
        self.stats.refused_hellos += 1;
        let header = HeaderRepr {
            kind: PacketKind::Refused,
            flags: Flags::empty(),
            status: reason.to_u16(),
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            interface: 0,
            method: 0,
            session: 0,
            seq: h.seq,
            ack: 0,
            lamport: self.clock.now(),
            frag_index: 0,
            frag_count: 1,
            message_len: 0,
            payload_len: 0,
        };
        self.queue(Pending {
            dest: src,
            header,
            body: PendingBody::None,
            key,
        });
    }

    fn on_hello(&mut self, now: Instant, src: A, h: &HeaderRepr, packet: &Packet<'_>) {
        if let (Some(key), Some(tag)) = (&self.handshake_key, packet.tag()) {
            if !key.verify(packet.header_bytes(), packet.payload(), tag) {
                self.stats.dropped.bad_tag += 1;
                return;
            }
        }
        let Ok(body) = read_body::<HelloBody>(packet.payload()) else {
            self.stats.dropped.malformed += 1;
            return;
        };
        let client_datagram = body.max_datagram.get() as usize;
        let overhead = if self.handshake_key.is_some() {
            HEADER_LEN + TAG_LEN
        } else {
            HEADER_LEN
        };
        if client_datagram <= overhead {
            self.stats.dropped.malformed += 1;
            return;
        }
        if self.draining {
            let key = self.handshake();
            self.refuse_hello(src, h, RefuseReason::ShuttingDown, key);
            return;
        }
        if body.cookie == CookieBody::default() {
            self.retry(now, src, h);
            return;
        }
        if !self.cookie_valid(now, &src, h, &body.cookie) {
            self.stats.dropped.bad_cookie += 1;
            self.retry(now, src, h);
            return;
        }
        // The address is proven and the Hello authentic: only now is its stamp observed.
        if self.clock.observe(h.lamport, now).is_err() {
            self.stats.dropped.bad_stamp += 1;
            return;
        }
        let max_datagram = client_datagram.min(self.config.max_datagram);
        // No reply may need more fragments than a header can number.
        let carriable = usize::from(u16::MAX) * (max_datagram - overhead);
        let max_message = (body.max_message.get() as usize)
            .min(self.config.max_message)
            .min(carriable);
        let existing = self.find_session(h.client_id, h.client_incarnation, src);
        let slot = match existing {
            Some(slot) => {
                let nonce = self.sessions[slot].as_ref().map_or(0, |s| s.hello_nonce);
                if h.seq < nonce {
                    // A late copy of an earlier handshake.
                    self.stats.dropped.stale += 1;
                    return;
                }
                if h.seq > nonce {
                    // The client started over (it thought the session lost, or idle too
                    // long): a new session, and the old one's calls are settled by Stale.
                    self.close_session(slot);
                    match self.open_session(now, src, h) {
                        Ok(slot) => slot,
                        Err(reason) => return self.refuse_hello(src, h, reason, self.handshake()),
                    }
                } else {
                    slot
                }
            }
            None => match self.open_session(now, src, h) {
                Ok(slot) => slot,
                Err(reason) => return self.refuse_hello(src, h, reason, self.handshake()),
            },
        };
        let idle_ms =
            u32::try_from(self.config.session_idle_timeout.as_millis()).unwrap_or(u32::MAX);
        let key = self.session_key(slot);
        let Some(s) = self.sessions[slot].as_mut() else {
            return;
        };
        s.last_used = now;
        s.max_datagram = max_datagram;
        s.max_message = max_message;
        let session = s.id;
        let server_nonce = s.server_nonce;
        let header = HeaderRepr {
            kind: PacketKind::Welcome,
            flags: Flags::empty(),
            status: 0,
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            interface: 0,
            method: 0,
            session,
            seq: h.seq,
            ack: 0,
            lamport: self.clock.tick(),
            frag_index: 0,
            frag_count: 1,
            message_len: WELCOME_BODY_LEN as u32,
            payload_len: WELCOME_BODY_LEN as u32,
        };
        let body = WelcomeBody {
            server_node: self.node_id.into(),
            max_datagram: (self.config.max_datagram as u32).into(),
            max_message: (self.config.max_message as u32).into(),
            idle_timeout_ms: idle_ms.into(),
            reserved: 0.into(),
            server_nonce,
        };
        self.queue(Pending {
            dest: src,
            header,
            body: PendingBody::Welcome(body),
            key,
        });
    }

    /// Whether the session in `slot` may be evicted for a newcomer at `now`: silent for
    /// `evictable_after`, with no call executing or being reassembled.
    fn evictable(&self, slot: usize, now: Instant) -> bool {
        let Some(s) = self.sessions[slot].as_ref() else {
            return true;
        };
        now.saturating_duration_since(s.last_used) >= self.config.evictable_after
            && !s.entries.iter().any(|e| matches!(e, Entry::Executing))
            && !self.reassemblies.iter().any(|r| r.session == s.id)
    }

    /// The least recently used evictable session among those `filter` accepts.
    fn lru_evictable(&self, now: Instant, filter: impl Fn(&Session<A>) -> bool) -> Option<usize> {
        let mut best: Option<(usize, Instant)> = None;
        for (i, s) in self.sessions.iter().enumerate() {
            let Some(s) = s else { continue };
            if !filter(s) || !self.evictable(i, now) {
                continue;
            }
            if best.is_none_or(|(_, t)| s.last_used < t) {
                best = Some((i, s.last_used));
            }
        }
        best.map(|(i, _)| i)
    }

    fn open_session(
        &mut self,
        now: Instant,
        src: A,
        h: &HeaderRepr,
    ) -> Result<usize, RefuseReason> {
        let host = src.host();
        let same_host = |s: &Session<A>| s.addr.host() == host;
        let on_host = self
            .sessions
            .iter()
            .flatten()
            .filter(|s| same_host(s))
            .count();
        let slot = if on_host >= self.config.max_sessions_per_host {
            // Make room among the host's own sessions, or refuse.
            let victim = self
                .lru_evictable(now, same_host)
                .ok_or(RefuseReason::AddressLimit)?;
            self.close_session(victim);
            self.stats.sessions_evicted += 1;
            victim
        } else {
            match self.sessions.iter().position(Option::is_none) {
                Some(slot) => slot,
                None => {
                    let victim = self
                        .lru_evictable(now, |_| true)
                        .ok_or(RefuseReason::SessionsFull)?;
                    self.close_session(victim);
                    self.stats.sessions_evicted += 1;
                    victim
                }
            }
        };
        // High 32 bits: incarnation; then the slot; then the slot's generation, which starts at
        // a random value and advances with every session the slot holds, so that an id is not
        // reused until 65536 sessions have passed through the slot.
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let id = (u64::from(self.incarnation) << 32)
            | ((slot as u64) << 16)
            | u64::from(self.generations[slot]);
        let mut server_nonce = [0u8; 16];
        self.rng.fill_bytes(&mut server_nonce);
        let keys = self.config.auth.as_ref().map(|k| {
            Arc::new(k.session(h.client_id, h.client_incarnation, h.seq, id, &server_nonce))
        });
        self.sessions[slot] = Some(Session {
            id,
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            addr: src,
            max_datagram: self.config.max_datagram,
            max_message: self.config.max_message,
            last_used: now,
            // Everything the client had ended before it opened the session.
            acked: h.ack,
            entries: VecDeque::new(),
            cached_bytes: 0,
            max_started: 0,
            hello_nonce: h.seq,
            server_nonce,
            keys,
        });
        self.session_count += 1;
        self.stats.sessions_opened += 1;
        Ok(slot)
    }

    fn close_session(&mut self, slot: usize) {
        let Some(mut s) = self.sessions[slot].take() else {
            return;
        };
        self.closed[slot][tombstone(s.id)] = (s.id, s.max_started);
        self.session_count -= 1;
        for e in s.entries.drain(..) {
            if let Entry::Done(c) = e {
                self.cached_bytes -= c.body().len();
                self.buffers.give(c.datagram);
            }
        }
        let id = s.id;
        let mut i = 0;
        while i < self.reassemblies.len() {
            if self.reassemblies[i].session == id {
                let p = self.reassemblies.swap_remove(i);
                self.drop_reassembly(p);
            } else {
                i += 1;
            }
        }
    }

    fn drop_reassembly(&mut self, p: InProgress) {
        self.reassembly_bytes -= p.r.message_len();
        let (buf, bits) = p.r.into_parts();
        self.big_buffers.give(buf);
        self.bitmaps.give(bits);
    }

    /// Frees every entry at or below the client's acknowledgement.
    fn advance_ack(&mut self, slot: usize, ack: u64) {
        let Some(s) = self.sessions[slot].as_mut() else {
            return;
        };
        if ack <= s.acked {
            return;
        }
        let n = (ack - s.acked).min(s.entries.len() as u64) as usize;
        // One at a time from the front (a drain's guard costs more than the usual one entry).
        for _ in 0..n {
            if let Some(Entry::Done(c)) = s.entries.pop_front() {
                s.cached_bytes -= c.body().len();
                self.cached_bytes -= c.body().len();
                self.buffers.give(c.datagram);
            }
        }
        s.acked = ack;
    }

    fn on_request<'d>(
        &mut self,
        now: Instant,
        src: A,
        h: &HeaderRepr,
        packet: &Packet<'d>,
    ) -> Option<IncomingCall<'d, A>> {
        let first = h.frag_index == 0;
        let payload = packet.payload();
        let Some(slot) = self.lookup(h.session, h.client_id, h.client_incarnation) else {
            let ack = self.stale_ack(h.session);
            self.stale(src, h, ack);
            return None;
        };
        let s = self.sessions[slot].as_ref()?;
        if let (Some(keys), Some(tag)) = (&s.keys, packet.tag()) {
            if !keys.to_server.verify(packet.header_bytes(), payload, tag) {
                self.stats.dropped.bad_tag += 1;
                return None;
            }
        }
        if s.addr != src {
            // Someone else's session: nothing changes, and the answer says nothing new.
            self.stats.dropped.wrong_address += 1;
            self.stale(src, h, u64::MAX);
            return None;
        }
        // The stamp after the receive event is held for the reply (one atomic step for both,
        // see `LamportClock::observe_for_answer`); a datagram that starts no call leaves it
        // unused.
        let Ok(received) = self.clock.observe_for_answer(h.lamport, now) else {
            self.stats.dropped.bad_stamp += 1;
            return None;
        };
        if h.seq > s.acked.saturating_add(MAX_WINDOW as u64) {
            // Further beyond the acknowledged point than any client's window: not an honest
            // request of this session (or one that lost 65536 calls in a row). The session is
            // closed, so that its Stale can say which calls never started, and stays true.
            self.stats.sessions_reset += 1;
            let max_started = s.max_started;
            self.close_session(slot);
            self.stale(src, h, max_started);
            return None;
        }
        // `ack < seq` (checked on parse) and `seq` within reach of the acknowledged point:
        // an acknowledgement moves at most one window at a time.
        self.advance_ack(slot, h.ack);
        let key = self.session_key(slot);
        let s = self.sessions[slot].as_mut()?;
        s.last_used = now;
        if h.seq <= s.acked {
            // Below the acknowledged point: the client has ended this call, and this is an
            // old duplicate it ignores; or someone moved the point past a call still in
            // flight, and the client learns what became of it.
            self.stats.dropped.stale += 1;
            if first {
                let code = if h.seq > s.max_started {
                    ErrorCode::Skipped
                } else {
                    ErrorCode::Forgotten
                };
                self.queue_reply(
                    src,
                    h,
                    PacketKind::ErrorReply,
                    code.to_u16(),
                    Flags::empty(),
                    key,
                );
            }
            return None;
        }
        let idempotent = h.flags.contains(Flags::IDEMPOTENT);
        let offset = (h.seq - s.acked - 1) as usize;
        if offset >= self.config.window {
            self.refuse_fragment(
                src,
                h,
                PacketKind::Busy,
                BusyReason::WindowFull.to_u16(),
                key,
            );
            return None;
        }
        match s.entries.get(offset) {
            Some(Entry::Executing) => {
                self.stats.dropped_executing += 1;
                return None;
            }
            Some(Entry::Done(_)) => {
                if first {
                    self.stats.answered_from_cache += 1;
                    self.resend_cached(slot, offset, src, h);
                } else {
                    self.stats.dropped.stale += 1;
                }
                return None;
            }
            Some(&Entry::Gone(code)) => {
                if first {
                    self.stats.answered_from_cache += 1;
                    self.resend_tombstone(src, h, code, key);
                } else {
                    self.stats.dropped.stale += 1;
                }
                return None;
            }
            Some(Entry::Unseen) | None => {}
        }
        if self.draining {
            self.stats.shutting_down += 1;
            self.refuse_fragment(
                src,
                h,
                PacketKind::ErrorReply,
                ErrorCode::ShuttingDown.to_u16(),
                key,
            );
            return None;
        }
        if h.message_len as usize > self.config.max_message {
            if !idempotent {
                self.set_entry(slot, offset, Entry::Gone(ErrorCode::MessageTooLarge));
            }
            self.refuse_fragment(
                src,
                h,
                PacketKind::ErrorReply,
                ErrorCode::MessageTooLarge.to_u16(),
                key,
            );
            return None;
        }
        if !idempotent {
            let s = self.sessions[slot].as_ref()?;
            // With the cache full, new calls wait (busy) for the client to acknowledge replies.
            // The oldest call it has not acknowledged is let through all the same: the client
            // cannot acknowledge anything past it until it ends, so refusing it would stall
            // the session until its deadline. Its reply is kept only if it fits. Idempotent
            // calls need no room: their replies are kept only when there is some.
            let full = s.cached_bytes >= self.config.session_cache_bytes
                || self.cached_bytes >= self.config.total_cache_bytes;
            if full && offset != 0 {
                self.refuse_fragment(
                    src,
                    h,
                    PacketKind::Busy,
                    BusyReason::ReplyCacheFull.to_u16(),
                    key,
                );
                return None;
            }
        }

        let body = if h.frag_count == 1 {
            Body::Borrowed(payload)
        } else {
            Body::Owned(self.reassemble(now, src, h, payload, idempotent, key)?)
        };
        self.set_entry(slot, offset, Entry::Executing);
        let s = self.sessions[slot].as_mut()?;
        s.max_started = s.max_started.max(h.seq);
        let ticket = Ticket {
            dest: src,
            session: s.id,
            slot: slot as u32,
            seq: h.seq,
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            interface: h.interface,
            method: h.method,
            idempotent,
            max_datagram: s.max_datagram as u32,
            max_message: s.max_message as u32,
            received,
            alone: h.ack.checked_add(1) == Some(h.seq),
        };
        let context = CallContext {
            client_id: h.client_id,
            client_incarnation: h.client_incarnation,
            seq: h.seq,
            session: s.id,
            request_stamp: LamportStamp::new(h.lamport, h.client_id),
            received_stamp: LamportStamp::new(received, self.node_id),
            interface: h.interface,
            method: h.method,
            idempotent,
        };
        self.stats.executed += 1;
        Some(IncomingCall {
            ticket,
            context,
            body,
        })
    }

    fn set_entry(&mut self, slot: usize, offset: usize, entry: Entry) {
        let Some(s) = self.sessions[slot].as_mut() else {
            return;
        };
        // Gaps below it stay unseen; the entry is appended (the usual case) or replaced.
        while s.entries.len() < offset {
            s.entries.push_back(Entry::Unseen);
        }
        match s.entries.get_mut(offset) {
            Some(e) => *e = entry,
            None => s.entries.push_back(entry),
        }
    }

    /// Adds a request fragment; returns the body once complete.
    fn reassemble(
        &mut self,
        now: Instant,
        src: A,
        h: &HeaderRepr,
        payload: &[u8],
        idempotent: bool,
        key: Key,
    ) -> Option<Vec<u8>> {
        let index = self
            .reassemblies
            .iter()
            .position(|p| p.session == h.session && p.seq == h.seq);
        let index = match index {
            Some(i) => i,
            None => {
                let len = h.message_len as usize;
                if self.reassemblies.len() >= self.config.max_reassemblies
                    || self.reassembly_bytes + len > self.config.reassembly_budget
                {
                    if h.frag_index == 0 {
                        self.control(
                            src,
                            h,
                            PacketKind::Busy,
                            BusyReason::ReassemblyFull.to_u16(),
                            key,
                        );
                    } else {
                        self.stats.dropped.bad_fragment += 1;
                    }
                    return None;
                }
                let (mut buf, bits) = (self.big_buffers.take(), self.bitmaps.take());
                if buf.capacity() > 2 * len {
                    // A pooled buffer much larger than this message would hold memory that
                    // the reassembly budget does not count.
                    buf = Vec::new();
                }
                let r = match Reassembly::start(h, buf, bits) {
                    Ok(r) => r,
                    Err(_) => {
                        self.stats.dropped.bad_fragment += 1;
                        return None;
                    }
                };
                self.reassembly_bytes += len;
                self.reassemblies.push(InProgress {
                    session: h.session,
                    seq: h.seq,
                    idempotent,
                    last_activity: now,
                    r,
                });
                self.reassemblies.len() - 1
            }
        };
        let p = &mut self.reassemblies[index];
        if p.idempotent != idempotent {
            self.stats.dropped.bad_fragment += 1;
            return None;
        }
        p.last_activity = now;
        match p.r.add(h, payload) {
            Ok(false) => None,
            Ok(true) => {
                let p = self.reassemblies.swap_remove(index);
                self.reassembly_bytes -= p.r.message_len();
                let (buf, bits) = p.r.into_parts();
                self.bitmaps.give(bits);
                Some(buf)
            }
            Err(_) => {
                self.stats.dropped.bad_fragment += 1;
                None
            }
        }
    }

    /// Answers a duplicate of a call whose reply could not be kept with that call's error,
    /// marked as coming from the cache.
    fn resend_tombstone(&mut self, dest: A, req: &HeaderRepr, code: ErrorCode, key: Key) {
        self.queue_reply(
            dest,
            req,
            PacketKind::ErrorReply,
            code.to_u16(),
            Flags::FROM_CACHE,
            key,
        );
    }

    /// Queues the cached reply of entry `offset` for `dest`, in answer to the duplicate `req`
    /// (whose interface and method it carries, as the original reply did).
    fn resend_cached(&mut self, slot: usize, offset: usize, dest: A, req: &HeaderRepr) {
        let key = self.session_key(slot);
        let Some(s) = self.sessions[slot].as_ref() else {
            return;
        };
        let seq = s.acked + 1 + offset as u64;
        let Some(Entry::Done(c)) = s.entries.get(offset) else {
            return;
        };
        let Some(plan) = FragmentPlan::new(c.body().len(), self.reply_datagram(s)) else {
            return;
        };
        let mut flags = Flags::FROM_CACHE;
        if req.flags.contains(Flags::IDEMPOTENT) {
            flags |= Flags::IDEMPOTENT;
        }
        let header = HeaderRepr {
            kind: c.kind,
            flags,
            status: c.status,
            client_id: s.client_id,
            client_incarnation: s.client_incarnation,
            interface: req.interface,
            method: req.method,
            session: s.id,
            seq,
            ack: 0,
            lamport: c.lamport,
            frag_index: 0,
            frag_count: plan.count(),
            message_len: c.body().len() as u32,
            payload_len: 0,
        };
        self.queue(Pending {
            dest,
            header,
            body: PendingBody::Cached {
                slot: slot as u32,
                next: 0,
            },
            key,
        });
    }

    /// The datagram size a session's replies are planned for: its limit, less the tag.
    fn reply_datagram(&self, s: &Session<A>) -> usize {
        plan_datagram(s.max_datagram, self.handshake_key.is_some())
    }

    fn sealer(&self, key: Key) -> Option<&Sealer> {
        match key {
            Key::None => None,
            Key::Handshake => self.handshake_key.as_ref(),
            Key::Session { slot, id } => self
                .sessions
                .get(slot as usize)?
                .as_ref()
                .filter(|s| s.id == id)?
                .keys
                .as_ref()
                .map(|k| &k.to_client),
        }
    }

    /// Starts the reply to a call: `result` is the reply body's length, or the error to
    /// report. Returns the datagrams to send, or `None` if nobody waits for the reply any more
    /// (the client acknowledged the call, having given up on it, or the session is gone).
    pub fn begin_reply(
        &mut self,
        _now: Instant,
        ticket: &Ticket<A>,
        result: Result<usize, ErrorCode>,
    ) -> Option<ReplyPlan<A>> {
        let live = self.live_session(ticket);
        if let Some(s) = live {
            if ticket.seq <= s.acked {
                return None;
            }
        }
        let seal = match (&self.handshake_key, live) {
            (None, _) => None,
            // Its keys are gone with the session: the client learns the outcome from Stale.
            (Some(_), None) => return None,
            (Some(_), Some(s)) => s.keys.clone(),
        };
        let limit = (ticket.max_message as usize).min(self.config.max_message);
        let result = match result {
            Ok(len) if len > limit => Err(ErrorCode::ReplyTooLarge),
            r => r,
        };
        let (kind, status, len) = match result {
            Ok(len) => (PacketKind::Reply, 0, len),
            Err(code) => {
                self.stats.errors += 1;
                (PacketKind::ErrorReply, code.to_u16(), 0)
            }
        };
        let datagram = plan_datagram(ticket.max_datagram as usize, seal.is_some());
        let plan = FragmentPlan::new(len, datagram)?;
        let mut flags = if ticket.idempotent {
            Flags::IDEMPOTENT
        } else {
            Flags::empty()
        };
        if seal.is_some() {
            flags |= Flags::AUTH;
        }
        let header = HeaderRepr {
            kind,
            flags,
            status,
            client_id: ticket.client_id,
            client_incarnation: ticket.client_incarnation,
            interface: ticket.interface,
            method: ticket.method,
            session: ticket.session,
            seq: ticket.seq,
            ack: 0,
            lamport: self.clock.tick_after(ticket.received),
            frag_index: 0,
            frag_count: plan.count(),
            message_len: len as u32,
            payload_len: 0,
        };
        Some(ReplyPlan {
            dest: ticket.dest,
            header,
            plan,
            keys: seal,
            awaited: ticket.alone && plan.count() == 1,
        })
    }

    fn live_session(&self, ticket: &Ticket<A>) -> Option<&Session<A>> {
        self.sessions
            .get(ticket.slot as usize)?
            .as_ref()
            .filter(|s| s.id == ticket.session)
    }

    /// Ends a reply begun with [`Server::begin_reply`]: keeps it (its first header, then the
    /// body's segments in order) for retransmission, or a tombstone if it does not fit.
    ///
    /// An idempotent call's reply is kept only when it spans several datagrams (so that the
    /// loss of one is recovered without executing again) and fits; otherwise a duplicate
    /// executes the call again.
    ///
    /// Returns the kept reply's first datagram, header (and tag) and body, when the reply is
    /// one datagram: a driver may send it from here in one piece instead of gathering it from
    /// the reply's memory, calling this before sending rather than after.
    pub fn finish_reply<'b>(
        &mut self,
        ticket: &Ticket<A>,
        plan: &ReplyPlan<A>,
        body: impl IntoIterator<Item = &'b [u8]>,
    ) -> Option<&[u8]> {
        let s = self.live_session(ticket)?;
        if ticket.seq <= s.acked {
            return None;
        }
        let offset = (ticket.seq - s.acked - 1) as usize;
        if !matches!(s.entries.get(offset), Some(Entry::Executing)) {
            return None;
        }
        let len = plan.body_len();
        let fits = s.cached_bytes + len <= self.config.session_cache_bytes
            && self.cached_bytes + len <= self.config.total_cache_bytes;
        let slot = ticket.slot as usize;
        if ticket.idempotent && (plan.count() == 1 || !fits) {
            // Nothing kept: a duplicate runs the call again.
            self.set_entry(slot, offset, Entry::Unseen);
            return None;
        }
        if !fits {
            self.stats.uncached_replies += 1;
            self.set_entry(slot, offset, Entry::Gone(ErrorCode::ReplyUnavailable));
            return None;
        }
        let overhead = plan.header.overhead();
        let total = overhead + len;
        // Of about this reply's size, so that the cache holds no more memory than
        // `cached_bytes` counts, with nothing freed or grown when sizes alternate.
        let mut buf = self.buffers.take_fit(total);
        buf.reserve_exact(total);
        let header = plan.header(0);
        buf.extend_from_slice(&header);
        buf.resize(overhead, 0);
        for seg in body {
            let room = total - buf.len();
            buf.extend_from_slice(&seg[..seg.len().min(room)]);
        }
        buf.resize(total, 0);
        if let Some(seal) = plan.seal() {
            let tag = seal.tag(&header, [&buf[overhead..]]);
            buf[HEADER_LEN..overhead].copy_from_slice(&tag);
        }
        let cached = Cached {
            kind: plan.header.kind,
            status: plan.header.status,
            lamport: plan.header.lamport,
            datagram: buf,
            overhead: overhead as u8,
        };
        if let Some(s) = self.sessions[slot].as_mut() {
            s.cached_bytes += len;
        }
        self.cached_bytes += len;
        self.set_entry(slot, offset, Entry::Done(cached));
        if plan.count() != 1 {
            return None;
        }
        match self.sessions[slot].as_ref()?.entries.get(offset)? {
            Entry::Done(c) => Some(&c.datagram),
            _ => None,
        }
    }

    /// Abandons a call handed out by `handle_datagram` without replying (the driver could
    /// not execute it). Duplicates will find it neither executing nor done, and execute it.
    /// Only for calls that did not start executing.
    pub fn abandon(&mut self, ticket: &Ticket<A>) {
        let Some(s) = self.live_session(ticket) else {
            return;
        };
        if ticket.seq <= s.acked {
            return;
        }
        let offset = (ticket.seq - s.acked - 1) as usize;
        if matches!(s.entries.get(offset), Some(Entry::Executing)) {
            self.set_entry(ticket.slot as usize, offset, Entry::Unseen);
        }
    }

    /// Refuses a call handed out by `handle_datagram` without executing it: the client is told
    /// the server is busy and retries later (the worker queue was full, say).
    pub fn refuse(&mut self, ticket: &Ticket<A>, reason: BusyReason) {
        self.abandon(ticket);
        self.stats.executed = self.stats.executed.saturating_sub(1);
        let header = HeaderRepr {
            kind: PacketKind::Busy,
            flags: Flags::empty(),
            status: reason.to_u16(),
            client_id: ticket.client_id,
            client_incarnation: ticket.client_incarnation,
            interface: ticket.interface,
            method: ticket.method,
            session: ticket.session,
            seq: ticket.seq,
            ack: 0,
            lamport: 0,
            frag_index: 0,
            frag_count: 1,
            message_len: 0,
            payload_len: 0,
        };
        let key = match self.live_session(ticket) {
            Some(_) => self.session_key(ticket.slot as usize),
            None if self.handshake_key.is_some() => return,
            None => Key::None,
        };
        self.control(ticket.dest, &header, PacketKind::Busy, reason.to_u16(), key);
    }

    /// Gives back a reassembled request body's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.big_buffers.give(buf);
    }

    /// The next control datagram or cached reply to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_, A>> {
        loop {
            let p = *self.tx.front()?;
            let auth = p.key != Key::None;
            if auth && self.sealer(p.key).is_none() {
                // Its session went away: nothing can tag it, and nobody waits for it.
                self.tx.pop_front();
                continue;
            }
            let with_flag = |h: HeaderRepr| {
                if auth {
                    HeaderRepr {
                        flags: h.flags | Flags::AUTH,
                        ..h
                    }
                } else {
                    h
                }
            };
            match p.body {
                PendingBody::None => {
                    self.tx.pop_front();
                    return Some(Transmit {
                        dest: p.dest,
                        header: with_flag(p.header).to_bytes(),
                        body: &[],
                        seal: self.sealer(p.key),
                    });
                }
                PendingBody::Welcome(body) => {
                    self.tx.pop_front();
                    self.scratch.copy_from_slice(body.as_bytes());
                    return Some(Transmit {
                        dest: p.dest,
                        header: with_flag(p.header).to_bytes(),
                        body: &self.scratch,
                        seal: self.sealer(p.key),
                    });
                }
                PendingBody::Retry(cookie) => {
                    self.tx.pop_front();
                    self.scratch[..COOKIE_LEN].copy_from_slice(cookie.as_bytes());
                    return Some(Transmit {
                        dest: p.dest,
                        header: with_flag(p.header).to_bytes(),
                        body: &self.scratch[..COOKIE_LEN],
                        seal: self.sealer(p.key),
                    });
                }
                PendingBody::Cached { slot, next } => {
                    let Some((range, last)) = self.cached_fragment(&p, slot, next) else {
                        self.tx.pop_front();
                        continue;
                    };
                    if last {
                        self.tx.pop_front();
                    } else if let Some(front) = self.tx.front_mut() {
                        front.body = PendingBody::Cached {
                            slot,
                            next: next + 1,
                        };
                    }
                    let header = with_flag(HeaderRepr {
                        frag_index: next,
                        payload_len: range.len() as u32,
                        ..p.header
                    });
                    let body = self.cached_body(slot, p.header.seq)?;
                    return Some(Transmit {
                        dest: p.dest,
                        header: header.to_bytes(),
                        body: &body[range],
                        seal: self.sealer(p.key),
                    });
                }
            }
        }
    }

    /// Fragment `next` of a queued resend: its byte range and whether it is the last one.
    /// `None` if the cached reply is gone.
    fn cached_fragment(
        &self,
        p: &Pending<A>,
        slot: u32,
        next: u16,
    ) -> Option<(Range<usize>, bool)> {
        let body = self.cached_body(slot, p.header.seq)?;
        if self.sessions[slot as usize].as_ref()?.id != p.header.session {
            return None;
        }
        let chunk = FragmentPlan::new(
            body.len(),
            self.reply_datagram(self.sessions[slot as usize].as_ref()?),
        )?;
        if next >= chunk.count() || chunk.count() != p.header.frag_count {
            return None;
        }
        Some((chunk.range(next), next + 1 == chunk.count()))
    }

    fn cached_body(&self, slot: u32, seq: u64) -> Option<&[u8]> {
        let s = self.sessions.get(slot as usize)?.as_ref()?;
        let offset = usize::try_from(seq.checked_sub(s.acked + 1)?).ok()?;
        match s.entries.get(offset)? {
            Entry::Done(c) => Some(c.body()),
            _ => None,
        }
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.session_count == 0 && self.reassemblies.is_empty() {
            return None;
        }
        self.next_sweep
    }

    /// Drops idle reassemblies and closes idle sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.next_sweep else { return };
        if now < at {
            return;
        }
        self.next_sweep = Some(now + self.sweep_interval());
        let mut i = 0;
        while i < self.reassemblies.len() {
            if now.saturating_duration_since(self.reassemblies[i].last_activity)
                >= self.config.reassembly_timeout
            {
                let p = self.reassemblies.swap_remove(i);
                self.drop_reassembly(p);
                self.stats.reassemblies_expired += 1;
            } else {
                i += 1;
            }
        }
        for slot in 0..self.sessions.len() {
            let idle = self.sessions[slot].as_ref().is_some_and(|s| {
                now.saturating_duration_since(s.last_used) >= self.config.session_idle_timeout
            });
            if idle {
                self.close_session(slot);
                self.stats.sessions_expired += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
