//! Distributed mutual exclusion over the framework: Lamport's algorithm (request, ack and
//! release: 3(N-1) messages per critical section) and Ricart and Agrawala's (request and a
//! reply deferred while the receiver holds or has an earlier request: 2(N-1)).
//!
//! Each process is a [`Node`]; its request queue is ordered by (Lamport timestamp, process
//! id), the timestamp a tick of the node's clock, the same clock the framework stamps into
//! every header it sends and advances on every header it receives. That is what orders a
//! request after every request its process had heard of. Messages travel over the FIFO links
//! of [`crate::mesh`], one RPC call each.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rpc_core::service::CallContext;
use rpc_core::{Marshal, rpc};
use rpc_transport::Node;
use rpc_transport::udp::UdpClient;

use crate::mesh::{self, LinkFailures, Turbulence};

/// Which algorithm the processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Lamport's: every request is acknowledged at once and every release announced.
    Lamport,
    /// Ricart and Agrawala's: permission is a reply, deferred until the receiver is done.
    RicartAgrawala,
}

impl Algorithm {
    /// Messages per critical section the algorithm needs among `n` processes.
    pub fn expected_per_entry(self, n: usize) -> u64 {
        let n = n as u64;
        match self {
            Algorithm::Lamport => 3 * (n - 1),
            Algorithm::RicartAgrawala => 2 * (n - 1),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Lamport => "Lamport",
            Algorithm::RicartAgrawala => "Ricart-Agrawala",
        })
    }
}

/// A message between the processes.
#[derive(Marshal, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutexMsg {
    /// The sender asks to enter; `ts` is a tick of its node's clock.
    Request {
        /// The request's Lamport timestamp.
        ts: u64,
    },
    /// Lamport: the request was received and queued.
    Ack,
    /// Lamport: the sender left its critical section.
    Release,
    /// Ricart and Agrawala: the receiver may enter, as far as the sender is concerned.
    Reply,
}

/// A process's inbox.
#[rpc]
pub trait MutexPeer {
    /// Delivers one message. The sender is the calling node (`ctx.client_id`).
    fn deliver(&self, ctx: &CallContext, msg: MutexMsg);
}

/// Messages by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Requests.
    pub request: u64,
    /// Acknowledgements (Lamport).
    pub ack: u64,
    /// Releases (Lamport).
    pub release: u64,
    /// Replies (Ricart and Agrawala).
    pub reply: u64,
}

impl MessageCounts {
    /// All messages.
    pub fn total(&self) -> u64 {
        self.request + self.ack + self.release + self.reply
    }

    fn add(&mut self, other: &MessageCounts) {
        self.request += other.request;
        self.ack += other.ack;
        self.release += other.release;
        self.reply += other.reply;
    }
}

#[derive(Debug, Default)]
struct Counters([AtomicU64; 4]);

impl Counters {
    fn count(&self, msg: &MutexMsg) {
        let i = match msg {
            MutexMsg::Request { .. } => 0,
            MutexMsg::Ack => 1,
            MutexMsg::Release => 2,
            MutexMsg::Reply => 3,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> MessageCounts {
        let g = |i: usize| self.0[i].load(Ordering::Relaxed);
        MessageCounts {
            request: g(0),
            ack: g(1),
            release: g(2),
            reply: g(3),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Lamport: every request heard of, by (timestamp, process).
    queue: BTreeSet<(u64, u64)>,
    /// This process's outstanding request.
    mine: Option<u64>,
    /// Acks (Lamport) or replies (Ricart and Agrawala) to `mine` so far.
    granted: usize,
    /// Ricart and Agrawala: peers whose requests wait for this process to leave.
    deferred: Vec<u64>,
    /// Peers' links, by process id: messages queued here leave in order.
    links: BTreeMap<u64, Sender<MutexMsg>>,
}

/// One process of the system.
#[derive(Debug)]
struct Process {
    me: u64,
    n: usize,
    algorithm: Algorithm,
    node: Node,
    state: Mutex<State>,
    changed: Condvar,
    sent: Counters,
    delivered: Counters,
    /// Messages whose header stamp did not follow their contents' timestamp, or whose sender
    /// is not a member: both impossible for honest members.
    anomalies: AtomicU64,
}

impl Process {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, s: &State, to: u64, msg: MutexMsg) {
        if let Some(link) = s.links.get(&to) {
            self.sent.count(&msg);
            // A closed link (its peer failed) is recorded by the link itself.
            let _ = link.send(msg);
        }
    }

    fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.n as u64).filter(move |&p| p != self.me)
    }

    /// Asks to enter; returns the request's timestamp.
    fn request(&self) -> u64 {
        let mut s = self.lock();
        // The request is an event of this node: a tick of the clock its headers carry.
        let ts = self.node.clock().tick();
        s.mine = Some(ts);
        s.granted = 0;
        if self.algorithm == Algorithm::Lamport {
            s.queue.insert((ts, self.me));
        }
        for p in self.peers() {
            self.send(&s, p, MutexMsg::Request { ts });
        }
        ts
    }

    fn may_enter(&self, s: &State) -> bool {
        let Some(ts) = s.mine else { return false };
        let all = s.granted == self.n - 1;
        match self.algorithm {
            Algorithm::Lamport => all && s.queue.first() == Some(&(ts, self.me)),
            Algorithm::RicartAgrawala => all,
        }
    }

    /// Waits until this process may enter, up to `limit`.
    fn wait_to_enter(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        while !self.may_enter(&s) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "process {} not admitted within {limit:?} ({} of {} grants, queue {:?})",
                    self.me,
                    s.granted,
                    self.n - 1,
                    s.queue
                );
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn release(&self) {
        let mut s = self.lock();
        let Some(ts) = s.mine.take() else { return };
        match self.algorithm {
            Algorithm::Lamport => {
                s.queue.remove(&(ts, self.me));
                for p in self.peers() {
                    self.send(&s, p, MutexMsg::Release);
                }
            }
            Algorithm::RicartAgrawala => {
                for p in std::mem::take(&mut s.deferred) {
                    self.send(&s, p, MutexMsg::Reply);
                }
            }
        }
    }

    fn on_message(&self, ctx: &CallContext, msg: MutexMsg) {
        let from = ctx.client_id;
        if from == self.me || from == 0 || from > self.n as u64 {
            self.anomalies.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.count(&msg);
        let mut s = self.lock();
        match (self.algorithm, msg) {
            (Algorithm::Lamport, MutexMsg::Request { ts }) => {
                self.check_stamp(ctx, ts);
                s.queue.insert((ts, from));
                self.send(&s, from, MutexMsg::Ack);
            }
            (Algorithm::Lamport, MutexMsg::Ack) => s.granted += 1,
            (Algorithm::Lamport, MutexMsg::Release) => s.queue.retain(|&(_, p)| p != from),
            (Algorithm::RicartAgrawala, MutexMsg::Request { ts }) => {
                self.check_stamp(ctx, ts);
                // Defer while holding or wanting with an earlier request.
                if s.mine.is_some_and(|mine| (mine, self.me) < (ts, from)) {
                    s.deferred.push(from);
                } else {
                    self.send(&s, from, MutexMsg::Reply);
                }
            }
            (Algorithm::RicartAgrawala, MutexMsg::Reply) => s.granted += 1,
            _ => {
                self.anomalies.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The framework stamped the request's header after the tick it carries, and this node
    /// observed that stamp before the handler ran.
    fn check_stamp(&self, ctx: &CallContext, ts: u64) {
        if !(ts < ctx.request_stamp.time && ctx.request_stamp.time < ctx.received_stamp.time) {
            self.anomalies.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Inbox(Arc<Process>);

impl MutexPeer for Inbox {
    fn deliver(&self, ctx: &CallContext, msg: MutexMsg) {
        self.0.on_message(ctx, msg);
    }
}

/// What one run is.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig {
    /// Processes.
    pub n: usize,
    /// Critical sections each process enters.
    pub entries_per_process: usize,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Seeds the links' delays, the fault proxies and the processes' pauses.
    pub seed: u64,
    /// Delays and faults.
    pub turbulence: Turbulence,
}

/// What one run measured and checked.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Critical sections entered.
    pub entries: u64,
    /// Messages sent, by kind.
    pub sent: MessageCounts,
    /// Messages delivered to a handler, by kind.
    pub delivered: MessageCounts,
    /// Entries made while another process was inside.
    pub overlaps: u64,
    /// Entries made out of the (timestamp, process) order of their requests.
    pub out_of_order: u64,
    /// Messages with stamps out of causal order, or from non-members (must be zero).
    pub anomalies: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl RunReport {
    /// Messages sent per critical section.
    pub fn per_entry(&self) -> f64 {
        self.sent.total() as f64 / self.entries.max(1) as f64
    }
}

#[derive(Debug, Default)]
struct Monitor {
    holder: Option<u64>,
    overlaps: u64,
    entries: Vec<(u64, u64)>,
}

/// Runs `config.n` processes, each entering its critical section
/// `config.entries_per_process` times, and checks that no two are inside at once.
pub fn run(config: RunConfig) -> anyhow::Result<RunReport> {
    let n = config.n;
    anyhow::ensure!(n >= 2, "mutual exclusion needs two processes or more");
    let started = Instant::now();
    let processes: Vec<Arc<Process>> = (1..=n as u64)
        .map(|me| {
            Arc::new(Process {
                me,
                n,
                algorithm: config.algorithm,
                node: Node::with_id(me),
                state: Mutex::default(),
                changed: Condvar::new(),
                sent: Counters::default(),
                delivered: Counters::default(),
                anomalies: AtomicU64::new(0),
            })
        })
        .collect();
    let served = mesh::serve_all(
        processes.iter().map(|p| {
            (
                &p.node,
                MutexPeerServer::new(Inbox(p.clone())),
                config.seed ^ (p.me << 48),
            )
        }),
        config.turbulence.faults,
    )?;
    let addrs = &served.addrs;
    let failures = Arc::new(LinkFailures::default());
    let mut link_threads: Vec<JoinHandle<()>> = Vec::new();
    for p in &processes {
        let mut links = BTreeMap::new();
        for q in p.peers() {
            let client = MutexPeerClient::new(
                p.node
                    .connect_udp(addrs[q as usize - 1], mesh::client_config())
                    .with_context(|| format!("process {} connecting to {q}", p.me))?,
            );
            let (tx, thread) = mesh::spawn_link(
                format!("link {}->{q}", p.me),
                client,
                |c: &MutexPeerClient<UdpClient>, m: &MutexMsg| c.deliver(*m),
                config.turbulence.max_delay,
                mesh::link_seed(config.seed, p.me, q),
                failures.clone(),
            )?;
            links.insert(q, tx);
            link_threads.push(thread);
        }
        p.lock().links = links;
    }

    let monitor = Arc::new(Mutex::new(Monitor::default()));
    let (done_tx, done_rx) = mpsc::channel::<anyhow::Result<()>>();
    let mut workers = Vec::new();
    for p in &processes {
        let (p, monitor, done) = (p.clone(), monitor.clone(), done_tx.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ p.me.rotate_left(17));
        let entries = config.entries_per_process;
        workers.push(thread::spawn(move || {
            let result = (|| {
                for _ in 0..entries {
                    let ts = p.request();
                    p.wait_to_enter(Duration::from_secs(60))?;
                    {
                        let mut m = monitor.lock().unwrap_or_else(|e| e.into_inner());
                        if m.holder.is_some() {
                            m.overlaps += 1;
                        }
                        m.holder = Some(p.me);
                        m.entries.push((ts, p.me));
                    }
                    // Inside for a little while, so that an intruder would be seen.
                    for _ in 0..rng.random_range(0..50) {
                        thread::yield_now();
                    }
                    {
                        let mut m = monitor.lock().unwrap_or_else(|e| e.into_inner());
                        if m.holder == Some(p.me) {
                            m.holder = None;
                        }
                    }
                    p.release();
                }
                anyhow::Ok(())
            })();
            let _ = done.send(result);
        }));
    }
    drop(done_tx);
    for _ in 0..n {
        let outcome = done_rx
            .recv_timeout(Duration::from_secs(120))
            .context("a process neither finished nor failed in time")?;
        if let Err(e) = outcome {
            if let Some((link, err)) = failures.first() {
                return Err(e.context(format!("{link} failed: {err}")));
            }
            return Err(e);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    // Close the links; each delivers what it still holds (the last releases) and ends.
    for p in &processes {
        p.lock().links.clear();
    }
    for t in link_threads {
        let _ = t.join();
    }
    if let Some((link, err)) = failures.first() {
        bail!("{link} failed: {err}");
    }
    drop(served);

    let monitor = monitor.lock().unwrap_or_else(|e| e.into_inner());
    let out_of_order = monitor.entries.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    let (mut sent, mut delivered) = (MessageCounts::default(), MessageCounts::default());
    for p in &processes {
        sent.add(&p.sent.get());
        delivered.add(&p.delivered.get());
    }
    Ok(RunReport {
        entries: monitor.entries.len() as u64,
        sent,
        delivered,
        overlaps: monitor.overlaps,
        out_of_order,
        anomalies: processes
            .iter()
            .map(|p| p.anomalies.load(Ordering::Relaxed))
            .sum(),
        elapsed: started.elapsed(),
    })
}
