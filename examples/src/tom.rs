//! Totally ordered multicast over the framework: every replica delivers every message in the
//! same order, the order of (Lamport timestamp, sender).
//!
//! A replica stamps each message it multicasts with a tick of its node's clock (the clock the
//! framework stamps into every header and advances on every header received) and queues it;
//! a replica receiving a message queues it and multicasts an acknowledgement. A message is
//! delivered once it heads the queue and every replica has acknowledged it (its sender by
//! sending it). Links are the FIFO links of [`crate::mesh`]: an acknowledgement from a
//! replica follows every message that replica sent before, which is what makes the head of a
//! fully acknowledged queue safe to deliver.

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

/// A message between replicas.
#[derive(Marshal, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TomMsg {
    /// A multicast message: its sender's timestamp and the operation it carries.
    Data {
        /// Lamport timestamp (a tick of the sender's node clock).
        ts: u64,
        /// The operation.
        op: u64,
    },
    /// The sender has queued the message `(ts, origin)`.
    Ack {
        /// The message's timestamp.
        ts: u64,
        /// The message's sender.
        origin: u64,
    },
}

/// A replica's inbox.
#[rpc]
pub trait TomPeer {
    /// Delivers one message; the sender is the calling node.
    fn deliver(&self, ctx: &CallContext, msg: TomMsg);
}

#[derive(Debug, Default)]
struct Entry {
    op: Option<u64>,
    acked: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct State {
    queue: BTreeMap<(u64, u64), Entry>,
    /// Delivered messages, in order: (timestamp, sender, operation).
    delivered: Vec<(u64, u64, u64)>,
    /// The replicated state: operations applied in delivery order (not commutative, so any
    /// difference of order shows).
    value: u64,
    links: BTreeMap<u64, Sender<TomMsg>>,
}

#[derive(Debug)]
struct Replica {
    me: u64,
    n: usize,
    node: Node,
    state: Mutex<State>,
    changed: Condvar,
    data_sent: AtomicU64,
    acks_sent: AtomicU64,
    anomalies: AtomicU64,
}

impl Replica {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.n as u64).filter(move |&p| p != self.me)
    }

    fn send_all(&self, s: &State, msg: TomMsg) {
        for p in self.peers() {
            if let Some(link) = s.links.get(&p) {
                match msg {
                    TomMsg::Data { .. } => self.data_sent.fetch_add(1, Ordering::Relaxed),
                    TomMsg::Ack { .. } => self.acks_sent.fetch_add(1, Ordering::Relaxed),
                };
                let _ = link.send(msg);
            }
        }
    }

    fn multicast(&self, op: u64) {
        let mut s = self.lock();
        let ts = self.node.clock().tick();
        let e = s.queue.entry((ts, self.me)).or_default();
        e.op = Some(op);
        e.acked.insert(self.me);
        self.send_all(&s, TomMsg::Data { ts, op });
        self.try_deliver(&mut s);
    }

    /// Whether `key` was delivered already (delivery is in key order).
    fn is_past(s: &State, key: (u64, u64)) -> bool {
        s.delivered.last().is_some_and(|&(t, o, _)| key <= (t, o))
    }

    fn on_message(&self, ctx: &CallContext, msg: TomMsg) {
        let from = ctx.client_id;
        if from == self.me || from == 0 || from > self.n as u64 {
            self.anomalies.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut s = self.lock();
        match msg {
            TomMsg::Data { ts, op } => {
                if ts >= ctx.request_stamp.time {
                    // The header is stamped after the tick the message carries.
                    self.anomalies.fetch_add(1, Ordering::Relaxed);
                }
                if Self::is_past(&s, (ts, from)) {
                    // Earlier than something delivered: the order is broken.
                    self.anomalies.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let e = s.queue.entry((ts, from)).or_default();
                e.op = Some(op);
                e.acked.insert(from);
                e.acked.insert(self.me);
                self.send_all(&s, TomMsg::Ack { ts, origin: from });
            }
            TomMsg::Ack { ts, origin } => {
                if origin == 0 || origin > self.n as u64 || Self::is_past(&s, (ts, origin)) {
                    return;
                }
                s.queue.entry((ts, origin)).or_default().acked.insert(from);
            }
        }
        self.try_deliver(&mut s);
    }

    fn try_deliver(&self, s: &mut State) {
        let mut any = false;
        while let Some(first) = s.queue.first_entry() {
            let ready = first.get().op.is_some() && first.get().acked.len() == self.n;
            if !ready {
                break;
            }
            let ((ts, origin), entry) = first.remove_entry();
            let op = entry.op.unwrap_or_default();
            s.value = s.value.wrapping_mul(31).wrapping_add(op);
            s.delivered.push((ts, origin, op));
            any = true;
        }
        if any {
            self.changed.notify_all();
        }
    }
}

struct Inbox(Arc<Replica>);

impl TomPeer for Inbox {
    fn deliver(&self, ctx: &CallContext, msg: TomMsg) {
        self.0.on_message(ctx, msg);
    }
}

/// What one run is.
#[derive(Clone, Copy, Debug)]
pub struct TomConfig {
    /// Replicas.
    pub n: usize,
    /// Messages each replica multicasts.
    pub per_replica: usize,
    /// Seeds delays, faults and pauses.
    pub seed: u64,
    /// Delays and faults.
    pub turbulence: Turbulence,
}

/// What one run delivered.
#[derive(Clone, Debug)]
pub struct TomReport {
    /// Each replica's deliveries, in order: (timestamp, sender, operation).
    pub delivered: Vec<Vec<(u64, u64, u64)>>,
    /// Each replica's final state.
    pub values: Vec<u64>,
    /// Data messages sent.
    pub data_sent: u64,
    /// Acknowledgements sent.
    pub acks_sent: u64,
    /// Messages stamped out of causal order or from non-members (must be zero).
    pub anomalies: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `config.n` replicas multicasting `config.per_replica` messages each, concurrently,
/// and returns what each delivered once every replica has delivered all of them.
pub fn run(config: TomConfig) -> anyhow::Result<TomReport> {
    let n = config.n;
    anyhow::ensure!(n >= 2, "multicast needs two replicas or more");
    let started = Instant::now();
    let replicas: Vec<Arc<Replica>> = (1..=n as u64)
        .map(|me| {
            Arc::new(Replica {
                me,
                n,
                node: Node::with_id(me),
                state: Mutex::default(),
                changed: Condvar::new(),
                data_sent: AtomicU64::new(0),
                acks_sent: AtomicU64::new(0),
                anomalies: AtomicU64::new(0),
            })
        })
        .collect();
    let served = mesh::serve_all(
        replicas.iter().map(|r| {
            (
                &r.node,
                TomPeerServer::new(Inbox(r.clone())),
                config.seed ^ (r.me << 40),
            )
        }),
        config.turbulence.faults,
    )?;
    let addrs = &served.addrs;
    let failures = Arc::new(LinkFailures::default());
    let mut link_threads: Vec<JoinHandle<()>> = Vec::new();
    for r in &replicas {
        let mut links = BTreeMap::new();
        for q in r.peers() {
            let client = TomPeerClient::new(
                r.node
                    .connect_udp(addrs[q as usize - 1], mesh::client_config())
                    .with_context(|| format!("replica {} connecting to {q}", r.me))?,
            );
            let (tx, thread) = mesh::spawn_link(
                format!("link {}->{q}", r.me),
                client,
                |c: &TomPeerClient<UdpClient>, m: &TomMsg| c.deliver(*m),
                config.turbulence.max_delay,
                mesh::link_seed(config.seed, r.me, q),
                failures.clone(),
            )?;
            links.insert(q, tx);
            link_threads.push(thread);
        }
        r.lock().links = links;
    }

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut senders = Vec::new();
    for r in &replicas {
        let (r, done) = (r.clone(), done_tx.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ r.me.rotate_left(23));
        let count = config.per_replica;
        senders.push(thread::spawn(move || {
            for k in 0..count {
                r.multicast(r.me * 1_000_000 + k as u64);
                for _ in 0..rng.random_range(0..200) {
                    thread::yield_now();
                }
            }
            let _ = done.send(());
        }));
    }
    drop(done_tx);
    for _ in 0..n {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .context("a replica did not finish multicasting")?;
    }
    for s in senders {
        let _ = s.join();
    }
    // Wait for every replica to deliver every message.
    let total = n * config.per_replica;
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in &replicas {
        let mut s = r.lock();
        while s.delivered.len() < total {
            if let Some((link, err)) = failures.first() {
                bail!("{link} failed: {err}");
            }
            let late = replicas
                .iter()
                .map(|r| r.anomalies.load(Ordering::Relaxed))
                .sum::<u64>();
            if late > 0 {
                bail!("{late} messages arrived after a later one was delivered");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "replica {} delivered {} of {total}; queue head {:?}",
                    r.me,
                    s.delivered.len(),
                    s.queue.iter().next()
                );
            }
            s = r
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    for r in &replicas {
        r.lock().links.clear();
    }
    for t in link_threads {
        let _ = t.join();
    }
    drop(served);
    let mut report = TomReport {
        delivered: Vec::new(),
        values: Vec::new(),
        data_sent: 0,
        acks_sent: 0,
        anomalies: 0,
        elapsed: started.elapsed(),
    };
    for r in &replicas {
        let s = r.lock();
        report.delivered.push(s.delivered.clone());
        report.values.push(s.value);
        report.data_sent += r.data_sent.load(Ordering::Relaxed);
        report.acks_sent += r.acks_sent.load(Ordering::Relaxed);
        report.anomalies += r.anomalies.load(Ordering::Relaxed);
    }
    Ok(report)
}
