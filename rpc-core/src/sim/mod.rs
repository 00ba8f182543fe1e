//! A deterministic simulation: several clients and a server over a simulated network with
//! seeded loss, duplication, reordering and delay, server crashes and restarts, and client
//! restarts, all in virtual time.
//!
//! [`run`] plays one seed and checks, after every step:
//!
//! - every call ends exactly once, by its deadline;
//! - a call that ends with a reply gets the right reply (a function of its own request);
//! - no non-idempotent call executes twice, across server restarts; a call refused as busy or
//!   by an interface mismatch never executed; a successful call executed exactly once;
//! - the server's memory stays within its configured bounds;
//! - a reply's Lamport stamp exceeds its request's, and so does the server's stamp of the
//!   request's receipt;
//! - every honest node keeps answering: once the run is over, with faults and attacks
//!   stopped, every client's last call succeeds.
//!
//! In most seeds an adversary ([`adversary`]) shares the network: it sees every datagram and
//! injects forged, replayed and mutated ones, huge stamps, forged acknowledgements and Hello
//! floods; some seeds run in authenticated mode, where it also forges source addresses. The
//! same invariants hold: in particular no honest call executes twice or returns a value its
//! own execution did not produce.
//!
//! A failure names its seed; [`SimConfig::for_seed`] rebuilds the same run, so a failing seed
//! replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod adversary;
mod net;

pub use adversary::Attacks;
pub use net::{NetFaults, SimNet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::auth::AuthKey;
use crate::client::{CallRequest, Client, Event, Payload};
use crate::clock::LamportClock;
use crate::config::{ClientConfig, ServerConfig};
use crate::error::CallError;
use crate::server::{Server, Ticket};
use crate::wire::ErrorCode;

/// The wall clock of simulated nodes when a run starts (2027-01-01, in nanoseconds since the
/// Unix epoch); virtual time advances it.
pub const SIM_WALL_CLOCK: u64 = 1_798_761_600_000_000_000;

/// Interface fingerprint served by the simulated server.
pub const INTERFACE: u32 = 0x5151_0001;
/// A method that is not idempotent: at most once.
pub const METHOD_TRANSFORM: u32 = 1;
/// An idempotent method.
pub const METHOD_READ: u32 = 2;
/// A method the server does not have: the call must fail with an interface mismatch.
pub const METHOD_MISSING: u32 = 99;

/// One simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Number of clients.
    pub clients: usize,
    /// Calls each client makes.
    pub calls_per_client: usize,
    /// Calls each client keeps in flight.
    pub concurrency: usize,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back long enough to be reordered.
    pub reorder: f64,
    /// One-way delay, uniformly distributed in this range.
    pub delay: (Duration, Duration),
    /// Extra delay of a reordered datagram, at most.
    pub reorder_delay: Duration,
    /// Time a handler takes, uniformly distributed in this range.
    pub handler_time: (Duration, Duration),
    /// Probability that a handler takes 20 times longer (duplicates then arrive while it runs).
    pub slow_handler: f64,
    /// Server crashes during the run (each followed by a restart).
    pub server_restarts: usize,
    /// How long a crashed server stays down.
    pub downtime: Duration,
    /// Client crashes during the run (each followed by a new incarnation).
    pub client_restarts: usize,
    /// Probability that a call is idempotent.
    pub idempotent: f64,
    /// Probability that a call names a method the server does not have.
    pub missing_method: f64,
    /// Probability that a request is large (multi-fragment); large bodies are up to this long.
    pub large: (f64, usize),
    /// Deadline of each call.
    pub deadline: Duration,
    /// An adversary shares the network, attacking at intervals drawn from this range.
    pub adversary: Option<(Duration, Duration)>,
    /// Client configuration (a key in it means authenticated mode, and the server has the
    /// same).
    pub client: ClientConfig,
    /// Server configuration.
    pub server: ServerConfig,
}

impl SimConfig {
    /// A configuration drawn from `seed`: fault rates, sizes, limits and timings all vary
    /// from seed to seed, so that many seeds cover many corners.
    pub fn for_seed(seed: u64) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0f1_9000_0000);
        let datagram = [1_472usize, 1_472, 9_000, 65_507][r.random_range(0..4)];
        let tight = r.random_bool(0.3);
        let client = ClientConfig {
            max_datagram: datagram,
            max_message: 1 << 20,
            window: if tight { r.random_range(1..=8) } else { 64 },
            initial_rto: Duration::from_millis(2),
            min_rto: Duration::from_micros(200),
            max_rto: Duration::from_millis(100),
            default_deadline: Duration::from_secs(2),
            max_retransmissions: u32::MAX,
            assumed_bandwidth: 1_000_000_000,
            reassembly_budget: 4 << 20,
            auth: None,
        };
        let server = ServerConfig {
            max_datagram: [1_472usize, 9_000, 65_507][r.random_range(0..3)],
            max_message: 1 << 20,
            max_sessions: if tight { r.random_range(1..=4) } else { 64 },
            window: if tight { r.random_range(2..=16) } else { 256 },
            session_cache_bytes: if tight {
                r.random_range(1..=64) << 10
            } else {
                4 << 20
            },
            total_cache_bytes: if tight { 256 << 10 } else { 16 << 20 },
            reassembly_budget: if tight { 1 << 20 } else { 8 << 20 },
            max_reassemblies: if tight { 2 } else { 16 },
            reassembly_timeout: Duration::from_millis(500),
            session_idle_timeout: Duration::from_secs(if tight { 1 } else { 30 }),
            max_queued_transmits: if tight { 64 } else { 4096 },
            // The adversary is one host: it may not hold more than this.
            max_sessions_per_host: 2,
            evictable_after: Duration::from_millis(if tight { 100 } else { 2000 }),
            cookie_lifetime: Duration::from_secs(10),
            auth: None,
        };
        let base = Duration::from_micros(r.random_range(10..200));
        let mut client = client;
        let mut server = server;
        if r.random_bool(0.4) {
            let key = AuthKey::from_bytes(r.random());
            client.auth = Some(key.clone());
            server.auth = Some(key);
        }
        let adversary = r.random_bool(0.7).then(|| {
            let mean = Duration::from_micros(r.random_range(50..800));
            (mean / 2, mean * 2)
        });
        Self {
            seed,
            clients: r.random_range(2..=5),
            calls_per_client: r.random_range(150..=350),
            concurrency: r.random_range(1..=8),
            loss: [0.0, 0.01, 0.05, 0.1, 0.2][r.random_range(0..5)],
            duplicate: [0.0, 0.02, 0.05, 0.1][r.random_range(0..4)],
            reorder: [0.0, 0.05, 0.2][r.random_range(0..3)],
            delay: (base, base * 2),
            reorder_delay: Duration::from_millis(r.random_range(1..5)),
            handler_time: (
                Duration::ZERO,
                Duration::from_micros(r.random_range(1..300)),
            ),
            slow_handler: 0.02,
            server_restarts: [0, 0, 1, 2][r.random_range(0..4)],
            downtime: Duration::from_millis(r.random_range(1..50)),
            client_restarts: [0, 0, 0, 1][r.random_range(0..4)],
            idempotent: 0.2,
            missing_method: 0.02,
            large: (0.05, [4_000usize, 40_000, 300_000][r.random_range(0..3)]),
            deadline: Duration::from_millis(r.random_range(500..3000)),
            adversary,
            client,
            server,
        }
    }
}

/// What happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Seeds run (1 for a single run; summed by [`SimReport::merge`]).
    pub seeds: u64,
    /// Calls started.
    pub calls: u64,
    /// Calls that ended with the right reply.
    pub succeeded: u64,
    /// Calls that ended with an interface mismatch (they named a missing method).
    pub mismatched: u64,
    /// Calls that timed out.
    pub timed_out: u64,
    /// Calls whose session the server lost (restart, eviction, expiry).
    pub outcome_unknown: u64,
    /// Calls refused as busy until their deadline.
    pub busy: u64,
    /// Calls that ended with another error reply (reply too large to keep, ...).
    pub other_errors: u64,
    /// Calls abandoned by a client crash.
    pub abandoned: u64,
    /// Calls the server said it never executed and never would (`NotExecuted`).
    pub not_executed: u64,
    /// Calls sent again in a new session after a lost one, the server having said they never
    /// started there.
    pub resent_after_stale: u64,
    /// Final calls (one per client, after the run, faults and attacks stopped) that
    /// succeeded: every honest node still answers.
    pub final_calls: u64,
    /// Seeds run in authenticated mode.
    pub authenticated_seeds: u64,
    /// Seeds with an adversary.
    pub adversary_seeds: u64,
    /// What the adversary injected.
    pub attacks: Attacks,
    /// Datagrams the server dropped for a missing or wrong tag.
    pub bad_tag: u64,
    /// Datagrams of a session the server dropped as coming from another address.
    pub wrong_address: u64,
    /// Datagrams the server dropped for a Lamport stamp too far ahead.
    pub bad_stamp: u64,
    /// Hellos the server answered with a fresh cookie, theirs being invalid.
    pub bad_cookie: u64,
    /// Hellos the server refused (sessions full, host limit).
    pub refused_hellos: u64,
    /// Datagrams the server dropped, all causes.
    pub server_dropped: u64,
    /// Handler executions.
    pub executions: u64,
    /// Calls sent again after a timeout or busy reply.
    pub retransmissions: u64,
    /// Duplicate requests answered from the reply cache.
    pub answered_from_cache: u64,
    /// Duplicate requests dropped while their call executed.
    pub dropped_executing: u64,
    /// Busy replies sent by the server.
    pub busy_replies: u64,
    /// Datagrams sent by all nodes.
    pub datagrams: u64,
    /// Datagrams lost by the network.
    pub lost: u64,
    /// Datagrams duplicated by the network.
    pub duplicated: u64,
    /// Datagrams held back (reordered) by the network.
    pub reordered: u64,
    /// Server crashes.
    pub server_restarts: u64,
    /// Client crashes.
    pub client_restarts: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
}

impl SimReport {
    /// Adds another run's figures to these.
    pub fn merge(&mut self, o: &SimReport) {
        self.seeds += o.seeds;
        self.calls += o.calls;
        self.succeeded += o.succeeded;
        self.mismatched += o.mismatched;
        self.timed_out += o.timed_out;
        self.outcome_unknown += o.outcome_unknown;
        self.busy += o.busy;
        self.other_errors += o.other_errors;
        self.abandoned += o.abandoned;
        self.not_executed += o.not_executed;
        self.resent_after_stale += o.resent_after_stale;
        self.final_calls += o.final_calls;
        self.authenticated_seeds += o.authenticated_seeds;
        self.adversary_seeds += o.adversary_seeds;
        self.attacks.merge(&o.attacks);
        self.bad_tag += o.bad_tag;
        self.wrong_address += o.wrong_address;
        self.bad_stamp += o.bad_stamp;
        self.bad_cookie += o.bad_cookie;
        self.refused_hellos += o.refused_hellos;
        self.server_dropped += o.server_dropped;
        self.executions += o.executions;
        self.retransmissions += o.retransmissions;
        self.answered_from_cache += o.answered_from_cache;
        self.dropped_executing += o.dropped_executing;
        self.busy_replies += o.busy_replies;
        self.datagrams += o.datagrams;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.server_restarts += o.server_restarts;
        self.client_restarts += o.client_restarts;
        self.virtual_time += o.virtual_time;
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |n: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                100.0 * n as f64 / d as f64
            }
        };
        writeln!(f, "seeds                      {:>10}", self.seeds)?;
        writeln!(f, "calls                      {:>10}", self.calls)?;
        writeln!(
            f,
            "  right reply              {:>10}  ({:.2}%)",
            self.succeeded,
            pct(self.succeeded, self.calls)
        )?;
        writeln!(
            f,
            "  interface mismatch       {:>10}  (calls to a missing method)",
            self.mismatched
        )?;
        writeln!(f, "  timed out                {:>10}", self.timed_out)?;
        writeln!(
            f,
            "  outcome unknown          {:>10}  (session lost to a restart)",
            self.outcome_unknown
        )?;
        writeln!(f, "  server busy              {:>10}", self.busy)?;
        writeln!(f, "  other error replies      {:>10}", self.other_errors)?;
        writeln!(f, "  abandoned by a crash     {:>10}", self.abandoned)?;
        writeln!(f, "  not executed (skipped)   {:>10}", self.not_executed)?;
        writeln!(
            f,
            "resent after a Stale       {:>10}  (provably never started in the lost session)",
            self.resent_after_stale
        )?;
        writeln!(
            f,
            "final calls, all answered  {:>10}  (one per client after the run)",
            self.final_calls
        )?;
        writeln!(f, "handler executions         {:>10}", self.executions)?;
        writeln!(f, "retransmissions            {:>10}", self.retransmissions)?;
        writeln!(
            f,
            "duplicates from the cache  {:>10}",
            self.answered_from_cache
        )?;
        writeln!(
            f,
            "duplicates while executing {:>10}",
            self.dropped_executing
        )?;
        writeln!(f, "busy replies               {:>10}", self.busy_replies)?;
        writeln!(f, "datagrams sent             {:>10}", self.datagrams)?;
        writeln!(
            f,
            "  lost                     {:>10}  ({:.2}%)",
            self.lost,
            pct(self.lost, self.datagrams)
        )?;
        writeln!(
            f,
            "  duplicated               {:>10}  ({:.2}%)",
            self.duplicated,
            pct(self.duplicated, self.datagrams)
        )?;
        writeln!(
            f,
            "  reordered                {:>10}  ({:.2}%)",
            self.reordered,
            pct(self.reordered, self.datagrams)
        )?;
        writeln!(
            f,
            "seeds authenticated        {:>10}",
            self.authenticated_seeds
        )?;
        writeln!(f, "seeds with an adversary    {:>10}", self.adversary_seeds)?;
        let a = &self.attacks;
        writeln!(f, "adversary datagrams        {:>10}", a.total())?;
        writeln!(f, "  replayed                 {:>10}", a.replayed)?;
        writeln!(f, "  mutated                  {:>10}", a.mutated)?;
        writeln!(f, "  forged (others' sessions){:>10}", a.forged_requests)?;
        writeln!(f, "  forged acks              {:>10}", a.forged_acks)?;
        writeln!(f, "  huge stamps              {:>10}", a.huge_stamps)?;
        writeln!(f, "  flooding hellos          {:>10}", a.hellos)?;
        writeln!(f, "server drops, all causes   {:>10}", self.server_dropped)?;
        writeln!(f, "  bad tag                  {:>10}", self.bad_tag)?;
        writeln!(f, "  wrong address            {:>10}", self.wrong_address)?;
        writeln!(f, "  stamp too far ahead      {:>10}", self.bad_stamp)?;
        writeln!(f, "  bad cookie               {:>10}", self.bad_cookie)?;
        writeln!(f, "hellos refused             {:>10}", self.refused_hellos)?;
        writeln!(f, "server restarts            {:>10}", self.server_restarts)?;
        writeln!(f, "client restarts            {:>10}", self.client_restarts)?;
        write!(
            f,
            "virtual time               {:>10.3} s",
            self.virtual_time.as_secs_f64()
        )
    }
}

/// A broken invariant, with what is needed to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed that failed.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at: Duration,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at {:?} of virtual time: {} (replay with RPC_SIM_SEED={})",
            self.seed, self.at, self.message, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// Address of the server on the simulated network; clients are 1, 2, ...
const SERVER: u32 = 0;

/// The reply the server's application gives to a request body.
pub fn expected_reply(request: &[u8]) -> Vec<u8> {
    let copies = request.first().map_or(1, |b| usize::from(b % 3) + 1);
    let mut out = Vec::with_capacity(request.len() * copies + 8);
    out.extend_from_slice(&(request.len() as u64).to_le_bytes());
    for _ in 0..copies {
        out.extend(request.iter().rev().map(|b| b ^ 0xa5));
    }
    out
}

#[derive(Debug)]
enum Happening {
    Deliver {
        from: u32,
        to: u32,
        bytes: Vec<u8>,
    },
    HandlerDone {
        incarnation: u32,
        ticket: Ticket<u32>,
        reply: Result<Vec<u8>, ErrorCode>,
    },
    ServerCrash,
    ServerBoot,
    ClientCrash {
        index: usize,
    },
    Attack,
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    order: u64,
    what: Happening,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

#[derive(Debug)]
struct SimCall {
    body: Vec<u8>,
    method: u32,
    idempotent: bool,
    deadline: Instant,
}

#[derive(Debug)]
struct SimClient {
    addr: u32,
    id: u64,
    core: Client,
    calls: BTreeMap<u64, SimCall>,
    started: usize,
    next_start: Option<Instant>,
    /// Calls of the final round that failed.
    final_failures: u32,
}

/// Key of an execution record: client id, incarnation, sequence number.
type CallKey = (u64, u32, u64);

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    base: Instant,
    now: Instant,
    order: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    server: Option<Server<u32>>,
    incarnation: u32,
    clients: Vec<SimClient>,
    /// Executions of each call, and whether it is idempotent.
    executions: BTreeMap<CallKey, (u32, bool)>,
    /// Calls that ended: how, so the execution counts can be checked at the end.
    ended: Vec<(CallKey, Outcome)>,
    report: SimReport,
    /// Server counters of crashed incarnations.
    server_stats: crate::server::ServerStats,
    adversary: Option<adversary::Adversary>,
    /// The run is over; each client makes one more call, faults and attacks stopped.
    final_round: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Replied,
    NotExecuted,
    Unknown,
}

impl Sim {
    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.cfg.seed,
            at: self.now - self.base,
            message: message.into(),
        }
    }

    fn schedule(&mut self, at: Instant, what: Happening) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            order: self.order,
            what,
        }));
    }

    fn uniform(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        Duration::from_nanos(
            self.rng
                .random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64),
        )
    }

    /// Puts a datagram on the network: maybe lost, maybe duplicated, maybe held back. The
    /// adversary sees it.
    fn send(&mut self, from: u32, to: u32, bytes: Vec<u8>) {
        if let Some(adv) = self.adversary.as_mut() {
            adv.observe(from, to, &bytes);
        }
        self.inject(from, to, bytes);
    }

    /// Puts a datagram on the network without the adversary seeing it (its own).
    fn inject(&mut self, from: u32, to: u32, bytes: Vec<u8>) {
        self.report.datagrams += 1;
        if self.rng.random_bool(self.cfg.loss) {
            self.report.lost += 1;
            return;
        }
        if self.rng.random_bool(self.cfg.duplicate) {
            self.report.duplicated += 1;
            let at = self.arrival();
            self.schedule(
                at,
                Happening::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        let at = self.arrival();
        self.schedule(at, Happening::Deliver { from, to, bytes });
    }

    /// When a datagram sent now arrives.
    fn arrival(&mut self) -> Instant {
        let mut delay = self.uniform(self.cfg.delay);
        if self.rng.random_bool(self.cfg.reorder) {
            self.report.reordered += 1;
            delay += self.uniform((Duration::ZERO, self.cfg.reorder_delay));
        }
        self.now + delay
    }

    fn new_client(&mut self, index: usize, incarnation: u32) -> Result<Client, SimFailure> {
        let id = 0x1000 + index as u64;
        let clock = Arc::new(LamportClock::new(id, SIM_WALL_CLOCK, self.base));
        Client::new(self.cfg.client.clone(), id, incarnation, clock)
            .map_err(|e| self.fail(format!("client config: {e}")))
    }

    fn boot_server(&mut self) -> Result<(), SimFailure> {
        self.incarnation += 1;
        let rng =
            ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_add(u64::from(self.incarnation)));
        // A restarted server is a new process: a new clock, from the wall clock of now.
        let wall = SIM_WALL_CLOCK + (self.now - self.base).as_nanos() as u64;
        let clock = Arc::new(LamportClock::new(0xfeed, wall, self.now));
        let server = Server::new(self.cfg.server.clone(), self.incarnation, clock, rng)
            .map_err(|e| self.fail(format!("server config: {e}")))?;
        self.server = Some(server);
        Ok(())
    }

    fn flush(&mut self) {
        for i in 0..self.clients.len() {
            while let Some(t) = self.clients[i].core.poll_transmit(self.now) {
                let bytes = match t.payload {
                    Payload::None => t.to_datagram([]),
                    Payload::Inline => t.to_datagram([t.inline()]),
                    Payload::Call { call, offset, len } => {
                        let body = &self.clients[i].calls[&call.seq()].body;
                        t.to_datagram([&body[offset..offset + len]])
                    }
                };
                let from = self.clients[i].addr;
                self.send(from, SERVER, bytes);
            }
        }
        let mut out = Vec::new();
        if let Some(server) = self.server.as_mut() {
            while let Some(t) = server.poll_transmit() {
                out.push((t.dest, t.to_datagram()));
            }
        }
        for (to, bytes) in out {
            self.send(SERVER, to, bytes);
        }
    }

    fn start_calls(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.clients.len() {
            loop {
                let c = &self.clients[i];
                let ready = c.next_start.is_some_and(|t| t <= self.now);
                if !ready
                    || c.started >= self.cfg.calls_per_client
                    || c.calls.len() >= self.cfg.concurrency
                    || !c.core.can_start()
                {
                    break;
                }
                let large = self.rng.random_bool(self.cfg.large.0);
                let len = if large {
                    self.rng.random_range(1..=self.cfg.large.1)
                } else {
                    self.rng.random_range(0..200)
                };
                let mut body = vec![0u8; len];
                self.rng.fill(&mut body[..]);
                let missing = self.rng.random_bool(self.cfg.missing_method);
                let idempotent = !missing && self.rng.random_bool(self.cfg.idempotent);
                let method = if missing {
                    METHOD_MISSING
                } else if idempotent {
                    METHOD_READ
                } else {
                    METHOD_TRANSFORM
                };
                let deadline = self.now + self.cfg.deadline;
                let req = CallRequest {
                    interface: INTERFACE,
                    method,
                    len,
                    idempotent,
                    deadline: Some(deadline),
                };
                let now = self.now;
                let c = &mut self.clients[i];
                let id = match c.core.start_call(now, req) {
                    Ok(id) => id,
                    Err(e) => return Err(self.fail(format!("start_call: {e}"))),
                };
                let c = &mut self.clients[i];
                c.calls.insert(
                    id.seq(),
                    SimCall {
                        body,
                        method,
                        idempotent,
                        deadline,
                    },
                );
                c.started += 1;
                let think = Duration::from_micros(self.rng.random_range(0..100));
                self.clients[i].next_start = Some(self.now + think);
                self.report.calls += 1;
            }
        }
        Ok(())
    }

    fn key(c: &SimClient, seq: u64) -> CallKey {
        (c.id, c.core.incarnation(), seq)
    }

    fn end_call(
        &mut self,
        index: usize,
        seq: u64,
        result: Result<&[u8], CallError>,
    ) -> Result<(), SimFailure> {
        let Some(call) = self.clients[index].calls.remove(&seq) else {
            return Err(self.fail(format!(
                "client {index} call {seq} ended twice or was never started"
            )));
        };
        if self.now > call.deadline {
            return Err(self.fail(format!(
                "call {seq} ended {:?} after its deadline",
                self.now - call.deadline
            )));
        }
        let key = Self::key(&self.clients[index], seq);
        if self.final_round && result.is_err() {
            // A call may still fail once for a reason of the run (say, the first call in a
            // session the server lost in a restart ends in doubt); the next must succeed.
            let c = &mut self.clients[index];
            c.final_failures += 1;
            if c.final_failures > 2 {
                return Err(self.fail(format!(
                    "an honest node stopped answering: client {index}'s last calls failed, the last with {:?}",
                    result.err()
                )));
            }
            c.started -= 1;
            c.next_start = Some(self.now);
        }
        let outcome = match result {
            Ok(body) => {
                if call.method == METHOD_MISSING {
                    return Err(self.fail(format!("call {seq} to a missing method got a reply")));
                }
                if body != expected_reply(&call.body).as_slice() {
                    return Err(self.fail(format!("call {seq} got the wrong reply")));
                }
                self.report.succeeded += 1;
                Outcome::Replied
            }
            Err(CallError::InterfaceMismatch { .. }) if call.method == METHOD_MISSING => {
                self.report.mismatched += 1;
                Outcome::NotExecuted
            }
            Err(CallError::TimedOut) => {
                self.report.timed_out += 1;
                Outcome::Unknown
            }
            Err(CallError::OutcomeUnknown) if !call.idempotent => {
                self.report.outcome_unknown += 1;
                Outcome::Unknown
            }
            Err(CallError::ServerBusy(_)) => {
                self.report.busy += 1;
                Outcome::NotExecuted
            }
            Err(CallError::NotExecuted) => {
                self.report.not_executed += 1;
                Outcome::NotExecuted
            }
            Err(CallError::Remote(r)) if r.code == ErrorCode::ReplyUnavailable => {
                self.report.other_errors += 1;
                Outcome::Unknown
            }
            Err(e) => {
                return Err(self.fail(format!(
                    "call {seq} (method {}) failed with {e:?}",
                    call.method
                )));
            }
        };
        self.ended.push((key, outcome));
        Ok(())
    }

    fn deliver_to_server(&mut self, from: u32, bytes: &[u8]) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let Some(call) = server.handle_datagram(now, from, bytes) else {
            return Ok(());
        };
        let ctx = call.context;
        // (The adversary's own requests carry stamps past the clock's ceiling on purpose: the
        // clock stops there.)
        if ctx.received_stamp.time <= ctx.request_stamp.time && from != adversary::ADDR {
            return Err(self.fail("server's receipt stamp does not exceed the request's"));
        }
        let reply = if ctx.interface != INTERFACE {
            Err(ErrorCode::UnknownInterface)
        } else if ctx.method == METHOD_MISSING {
            Err(ErrorCode::UnknownMethod)
        } else if from == adversary::ADDR {
            // A call in one of the adversary's own sessions (perhaps with an honest client's
            // ids, but its own address: a session of its own, which no honest call is in).
            Ok(expected_reply(&call.body))
        } else {
            let key = (ctx.client_id, ctx.client_incarnation, ctx.seq);
            let entry = self.executions.entry(key).or_insert((0, ctx.idempotent));
            entry.0 += 1;
            if entry.0 > 1 && !entry.1 {
                return Err(self.fail(format!("call {key:?} executed twice")));
            }
            self.report.executions += 1;
            Ok(expected_reply(&call.body))
        };
        let ticket = call.ticket;
        if let Some(buf) = call.body.into_owned_buffer() {
            if let Some(server) = self.server.as_mut() {
                server.recycle(buf);
            }
        }
        let mut time = self.uniform(self.cfg.handler_time);
        if self.rng.random_bool(self.cfg.slow_handler) {
            time *= 20;
        }
        let incarnation = self.incarnation;
        self.schedule(
            now + time,
            Happening::HandlerDone {
                incarnation,
                ticket,
                reply,
            },
        );
        Ok(())
    }

    fn handler_done(
        &mut self,
        incarnation: u32,
        ticket: Ticket<u32>,
        reply: Result<Vec<u8>, ErrorCode>,
    ) {
        if incarnation != self.incarnation {
            return; // the server crashed while the handler ran
        }
        let now = self.now;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let body = reply.as_deref().unwrap_or(&[]);
        let result = reply.as_ref().map(Vec::len).map_err(|&c| c);
        let Some(plan) = server.begin_reply(now, &ticket, result) else {
            return;
        };
        let out: Vec<Vec<u8>> = (0..plan.count()).map(|i| plan.datagram(i, body)).collect();
        server.finish_reply(&ticket, &plan, [body]);
        for bytes in out {
            self.send(SERVER, plan.dest, bytes);
        }
    }

    fn deliver_to_client(&mut self, to: u32, bytes: &[u8]) -> Result<(), SimFailure> {
        let index = (to as usize).wrapping_sub(1);
        if index >= self.clients.len() {
            // A made-up address: nobody lives there.
            return Ok(());
        }
        let now = self.now;
        let response = self.clients[index].core.handle_datagram(now, bytes);
        let Some(resp) = response else {
            return self.client_events(index);
        };
        if resp.reply_stamp.time <= resp.request_stamp.time {
            return Err(self.fail(format!(
                "reply stamp {} does not exceed request stamp {}",
                resp.reply_stamp, resp.request_stamp
            )));
        }
        let seq = resp.call.seq();
        match resp.result {
            Ok(body) => {
                self.end_call(index, seq, Ok(&body))?;
                if let Some(buf) = body.into_owned_buffer() {
                    self.clients[index].core.recycle(buf);
                }
            }
            Err(e) => self.end_call(index, seq, Err(e))?,
        }
        self.client_events(index)
    }

    fn client_events(&mut self, index: usize) -> Result<(), SimFailure> {
        while let Some(ev) = self.clients[index].core.poll_event() {
            if let Event::CallFailed { call, error } = ev {
                self.end_call(index, call.seq(), Err(error))?;
            }
        }
        Ok(())
    }

    fn crash_client(&mut self, index: usize) -> Result<(), SimFailure> {
        self.report.client_restarts += 1;
        let c = &mut self.clients[index];
        let abandoned = core::mem::take(&mut c.calls);
        self.report.abandoned += abandoned.len() as u64;
        let incarnation = c.core.incarnation() + 1;
        let core = self.new_client(index, incarnation)?;
        let c = &mut self.clients[index];
        c.core = core;
        Ok(())
    }

    fn done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.started >= self.cfg.calls_per_client && c.calls.is_empty())
    }

    fn check_memory(&self) -> Result<(), SimFailure> {
        if let Some(server) = &self.server {
            if let Err(what) = server.memory().check(&self.cfg.server) {
                return Err(self.fail(format!(
                    "server exceeds its bound on {what}: {:?}",
                    server.memory()
                )));
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.core.in_flight() > self.cfg.client.window {
                return Err(self.fail(format!(
                    "client {i} has more calls in flight than its window"
                )));
            }
            if c.core.memory() > 2 * self.cfg.client.reassembly_budget {
                return Err(self.fail(format!("client {i} holds {} bytes", c.core.memory())));
            }
        }
        Ok(())
    }

    fn next_time(&mut self) -> Option<Instant> {
        let mut next = self.queue.peek().map(|Reverse(s)| s.at);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for c in &mut self.clients {
            consider(c.core.poll_timeout());
            if c.started < self.cfg.calls_per_client
                && c.calls.len() < self.cfg.concurrency
                && c.core.can_start()
            {
                consider(c.next_start);
            }
        }
        if !self.done() {
            if let Some(server) = &self.server {
                consider(server.poll_timeout());
            }
        }
        next
    }

    fn run(mut self) -> Result<SimReport, SimFailure> {
        self.boot_server()?;
        for i in 0..self.cfg.clients {
            let core = self.new_client(i, 1)?;
            self.clients.push(SimClient {
                addr: i as u32 + 1,
                id: core.client_id(),
                core,
                calls: BTreeMap::new(),
                started: 0,
                next_start: Some(self.now),
                final_failures: 0,
            });
        }
        // Crashes happen somewhere in the first part of the run.
        let horizon = Duration::from_millis(300);
        for _ in 0..self.cfg.server_restarts {
            let at = self.now + self.uniform((Duration::from_millis(5), horizon));
            self.schedule(at, Happening::ServerCrash);
        }
        for _ in 0..self.cfg.client_restarts {
            let at = self.now + self.uniform((Duration::from_millis(5), horizon));
            let index = self.rng.random_range(0..self.clients.len());
            self.schedule(at, Happening::ClientCrash { index });
        }
        if let Some(range) = self.cfg.adversary {
            self.adversary = Some(adversary::Adversary::new(self.cfg.client.auth.is_some()));
            let at = self.now + self.uniform(range);
            self.schedule(at, Happening::Attack);
        }
        self.run_until_done()?;
        // Every honest node still answers: one more call per client, with faults and attacks
        // over, must succeed.
        self.final_round = true;
        self.cfg.loss = 0.0;
        self.cfg.duplicate = 0.0;
        self.cfg.reorder = 0.0;
        self.cfg.missing_method = 0.0;
        self.cfg.deadline = Duration::from_secs(10);
        self.cfg.calls_per_client += 1;
        for c in &mut self.clients {
            c.next_start = Some(self.now);
        }
        let before = self.report.succeeded;
        self.run_until_done()?;
        self.report.final_calls = self.report.succeeded - before;
        if let Some(s) = self.server.take() {
            self.absorb_server_stats(&s);
        }
        self.check_executions()?;
        for c in &self.clients {
            self.report.retransmissions += c.core.stats().retransmissions;
            self.report.resent_after_stale += c.core.stats().resent_after_stale;
        }
        if let Some(adv) = &self.adversary {
            self.report.attacks = adv.attacks;
            self.report.adversary_seeds = 1;
        }
        self.report.authenticated_seeds = u64::from(self.cfg.client.auth.is_some());
        self.report.answered_from_cache = self.server_stats.answered_from_cache;
        self.report.dropped_executing = self.server_stats.dropped_executing;
        self.report.busy_replies = self.server_stats.busy;
        self.report.virtual_time = self.now - self.base;
        self.report.seeds = 1;
        Ok(self.report)
    }

    fn run_until_done(&mut self) -> Result<(), SimFailure> {
        let mut steps: u64 = 0;
        loop {
            steps += 1;
            if steps > 20_000_000 {
                return Err(self.fail("no progress after 20 million steps"));
            }
            self.start_calls()?;
            self.flush();
            if self.done() {
                return Ok(());
            }
            let Some(next) = self.next_time() else {
                let state: Vec<String> = self
                    .clients
                    .iter_mut()
                    .map(|c| {
                        format!(
                            "client {}: {} calls open, {} in flight, started {}, timeout {:?}, session {:?}",
                            c.addr,
                            c.calls.len(),
                            c.core.in_flight(),
                            c.started,
                            c.core.poll_timeout(),
                            c.core.session()
                        )
                    })
                    .collect();
                return Err(self.fail(format!(
                    "nothing left to happen, yet calls are unfinished: {}",
                    state.join("; ")
                )));
            };
            self.now = self.now.max(next);
            let now = self.now;
            if let Some(Reverse(top)) = self.queue.peek() {
                if top.at <= now {
                    let Some(Reverse(item)) = self.queue.pop() else {
                        continue;
                    };
                    match item.what {
                        Happening::Deliver {
                            from,
                            to: SERVER,
                            bytes,
                        } => {
                            self.deliver_to_server(from, &bytes)?;
                        }
                        Happening::Deliver {
                            to: adversary::ADDR,
                            bytes,
                            ..
                        } => {
                            let answer = self.adversary.as_mut().and_then(|a| a.receive(&bytes));
                            if let Some((from, to, bytes)) = answer {
                                self.inject(from, to, bytes);
                            }
                        }
                        Happening::Deliver { to, bytes, .. } => {
                            self.deliver_to_client(to, &bytes)?
                        }
                        Happening::Attack => self.attack(),
                        Happening::HandlerDone {
                            incarnation,
                            ticket,
                            reply,
                        } => self.handler_done(incarnation, ticket, reply),
                        Happening::ServerCrash => {
                            if let Some(s) = self.server.take() {
                                self.absorb_server_stats(&s);
                                self.report.server_restarts += 1;
                                let at = now + self.cfg.downtime;
                                self.schedule(at, Happening::ServerBoot);
                            }
                        }
                        Happening::ServerBoot => self.boot_server()?,
                        Happening::ClientCrash { index } => self.crash_client(index)?,
                    }
                    self.check_memory()?;
                    continue;
                }
            }
            for i in 0..self.clients.len() {
                if self.clients[i]
                    .core
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.clients[i].core.handle_timeout(now);
                }
                self.client_events(i)?;
            }
            if let Some(server) = self.server.as_mut() {
                if server.poll_timeout().is_some_and(|t| t <= now) {
                    server.handle_timeout(now);
                }
            }
            self.check_memory()?;
        }
    }

    /// The adversary's turn, and the next one scheduled (until the run is over).
    fn attack(&mut self) {
        let Some(range) = self.cfg.adversary else {
            return;
        };
        if self.final_round {
            return;
        }
        let wall = SIM_WALL_CLOCK + (self.now - self.base).as_nanos() as u64;
        let ceiling = wall + crate::clock::ADOPT_AHEAD;
        let now = self.now;
        let injections = match self.adversary.as_mut() {
            Some(adv) => adv.attack(&mut self.rng, now, ceiling),
            None => Vec::new(),
        };
        for (from, to, bytes) in injections {
            self.inject(from, to, bytes);
        }
        let at = self.now + self.uniform(range);
        self.schedule(at, Happening::Attack);
    }

    fn absorb_server_stats(&mut self, s: &Server<u32>) {
        let st = s.stats();
        self.server_stats.answered_from_cache += st.answered_from_cache;
        self.server_stats.dropped_executing += st.dropped_executing;
        self.server_stats.busy += st.busy;
        self.report.bad_tag += st.dropped.bad_tag;
        self.report.wrong_address += st.dropped.wrong_address;
        self.report.bad_stamp += st.dropped.bad_stamp;
        self.report.bad_cookie += st.dropped.bad_cookie;
        self.report.refused_hellos += st.refused_hellos;
        self.report.server_dropped += st.dropped.total();
    }

    fn check_executions(&self) -> Result<(), SimFailure> {
        for &(key, outcome) in &self.ended {
            let (count, idempotent) = self.executions.get(&key).copied().unwrap_or((0, false));
            let ok = match outcome {
                Outcome::Replied => count >= 1 && (idempotent || count == 1),
                // Idempotent calls keep no record on the server: a busy reply speaks only for
                // the attempt it answers, and an earlier attempt may have executed.
                Outcome::NotExecuted => count == 0 || idempotent,
                Outcome::Unknown => idempotent || count <= 1,
            };
            if !ok {
                return Err(self.fail(format!(
                    "call {key:?} ended {outcome:?} but executed {count} times"
                )));
            }
        }
        Ok(())
    }
}

/// Plays one seed.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let base = Instant::now();
    let sim = Sim {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        cfg: cfg.clone(),
        base,
        now: base,
        order: 0,
        queue: BinaryHeap::new(),
        server: None,
        incarnation: 0,
        clients: Vec::new(),
        executions: BTreeMap::new(),
        ended: Vec::new(),
        report: SimReport::default(),
        server_stats: Default::default(),
        adversary: None,
        final_round: false,
    };
    sim.run()
}
