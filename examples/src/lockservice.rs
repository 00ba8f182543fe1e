//! A replicated lock service, primary and backup, after the lab 1 lock service.
//!
//! Named locks: `lock(name)` takes a free lock and answers true, or answers false; `unlock`
//! frees a held lock and answers true, or answers false. Clients send each operation to the
//! primary. The primary decides it, forwards the decision to the backup (a nested call from
//! its async handler, stamped by the same node clock as its server) and answers only once
//! the backup has applied it. Decisions are made one at a time, so the backup applies them in
//! the primary's order and always holds a prefix of the primary's history.
//!
//! When the primary does not answer in time, a client sends the same operation (same
//! operation id) to the backup. The first operation a client sends the backup makes it the
//! primary: from then on it refuses forwards from the old primary (which then answers
//! `NotPrimary` and serves no more), so a primary wrongly presumed dead cannot split the
//! state. The backup remembers each client's last operation and its answer, so an operation
//! the old primary forwarded but never answered gets from the backup the answer the primary
//! would have given.
//!
//! The failure model is lab 1's: one server may halt for good (fail-stop); the network
//! delivers, possibly late.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rpc_core::service::CallOptions;
use rpc_core::{CallError, Marshal, rpc};
use rpc_transport::udp::{UdpClient, UdpClientConfig};

pub use crate::linearizability::OpKind;
use crate::linearizability::{Op, step};

/// A server's answer to an operation.
#[derive(Marshal, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The operation's result.
    Done(bool),
    /// This server no longer serves operations: ask the other one.
    NotPrimary,
}

/// The lock service, as both servers serve it.
#[rpc]
pub trait LockService {
    /// Takes `name` if free. `client` and `seq` name the operation: sent again (to either
    /// server) it gets the same answer.
    async fn lock(&self, client: u64, seq: u64, name: &str) -> Answer;
    /// Frees `name` if held.
    async fn unlock(&self, client: u64, seq: u64, name: &str) -> Answer;
    /// From the primary to the backup: apply the primary's decision of an operation. False
    /// if the backup has become the primary and refuses.
    fn apply(&self, client: u64, seq: u64, kind: OpKind, name: &str, result: bool) -> bool;
}

/// Counters of a lock server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Operations decided here (as primary, or as the backup after taking over).
    pub decided: u64,
    /// Decisions applied from the primary (backup).
    pub applied: u64,
    /// Client operations answered from the record of an earlier decision.
    pub replayed: u64,
    /// Forwards refused after taking over (backup), or refused to this primary.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Inner {
    held: BTreeSet<String>,
    /// Each client's last operation and its answer.
    last: HashMap<u64, (u64, bool)>,
    /// Backup: a client has called this server, which is the primary now.
    took_over: bool,
    /// Primary: the backup refused a forward; this server no longer serves.
    deposed: bool,
    /// Primary: the backup answered no forward in time and is presumed halted.
    backup_down: bool,
}

impl Inner {
    fn recorded(&self, client: u64, seq: u64) -> Option<bool> {
        match self.last.get(&client) {
            Some(&(s, r)) if s == seq => Some(r),
            _ => None,
        }
    }

    fn decide(&self, kind: OpKind, name: &str) -> bool {
        step(self.held.contains(name), kind).0
    }

    fn commit(&mut self, client: u64, seq: u64, kind: OpKind, name: &str, result: bool) {
        match (kind, result) {
            (OpKind::Lock, true) => {
                self.held.insert(name.to_owned());
            }
            (OpKind::Unlock, true) => {
                self.held.remove(name);
            }
            _ => {}
        }
        let entry = self.last.entry(client).or_insert((seq, result));
        if entry.0 <= seq {
            *entry = (seq, result);
        }
    }
}

/// A hook the primary calls after the backup applied a decision and before answering the
/// client: where a test halts the primary at the worst moment.
pub type AfterForward = Box<dyn Fn() + Send + Sync>;

/// One server of the service: the primary (with a client of the backup) or the backup.
pub struct LockServer {
    backup: Option<LockServiceClient<UdpClient>>,
    forward_timeout: Duration,
    /// Primary: one decision at a time, held across the forward.
    turn: futures::lock::Mutex<()>,
    inner: Mutex<Inner>,
    after_forward: Option<AfterForward>,
    decided: AtomicU64,
    applied: AtomicU64,
    replayed: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for LockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockServer")
            .field("primary", &self.backup.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl LockServer {
    /// The primary, forwarding to `backup` (a client made by the same node as the server,
    /// so that forwards are stamped after the requests they serve) and waiting up to
    /// `forward_timeout` for each forward before presuming the backup halted.
    pub fn primary(backup: LockServiceClient<UdpClient>, forward_timeout: Duration) -> Self {
        Self::new(Some(backup), forward_timeout)
    }

    /// The backup.
    pub fn backup() -> Self {
        Self::new(None, Duration::ZERO)
    }

    fn new(backup: Option<LockServiceClient<UdpClient>>, forward_timeout: Duration) -> Self {
        Self {
            backup,
            forward_timeout,
            turn: futures::lock::Mutex::new(()),
            inner: Mutex::default(),
            after_forward: None,
            decided: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Calls `hook` after each forward the backup applied, before the answer leaves.
    pub fn with_after_forward(mut self, hook: AfterForward) -> Self {
        self.after_forward = Some(hook);
        self
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            decided: self.decided.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Whether `name` is held, as this server sees it.
    pub fn is_held(&self, name: &str) -> bool {
        self.inner().held.contains(name)
    }

    async fn execute(&self, client: u64, seq: u64, kind: OpKind, name: &str) -> Answer {
        let Some(backup) = &self.backup else {
            return self.execute_alone(client, seq, kind, name);
        };
        let _turn = self.turn.lock().await;
        let (result, forward) = {
            let inner = self.inner();
            if inner.deposed {
                return Answer::NotPrimary;
            }
            if let Some(r) = inner.recorded(client, seq) {
                self.replayed.fetch_add(1, Ordering::Relaxed);
                return Answer::Done(r);
            }
            (inner.decide(kind, name), !inner.backup_down)
        };
        if forward {
            let options = CallOptions::new().timeout(self.forward_timeout);
            match backup
                .with(options)
                .apply_async(client, seq, kind, name, result)
                .await
            {
                Ok(reply) if reply.value => {
                    if let Some(hook) = &self.after_forward {
                        hook();
                    }
                }
                Ok(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    self.inner().deposed = true;
                    return Answer::NotPrimary;
                }
                // No answer: the backup halted (the failure model has no other reason), and
                // this primary carries on alone.
                Err(_) => self.inner().backup_down = true,
            }
        }
        self.inner().commit(client, seq, kind, name, result);
        self.decided.fetch_add(1, Ordering::Relaxed);
        Answer::Done(result)
    }

    /// The backup serving a client: it takes over, then decides and commits alone.
    fn execute_alone(&self, client: u64, seq: u64, kind: OpKind, name: &str) -> Answer {
        let mut inner = self.inner();
        inner.took_over = true;
        if let Some(r) = inner.recorded(client, seq) {
            self.replayed.fetch_add(1, Ordering::Relaxed);
            return Answer::Done(r);
        }
        let result = inner.decide(kind, name);
        inner.commit(client, seq, kind, name, result);
        self.decided.fetch_add(1, Ordering::Relaxed);
        Answer::Done(result)
    }
}

impl LockService for Arc<LockServer> {
    async fn lock(&self, client: u64, seq: u64, name: &str) -> Answer {
        self.execute(client, seq, OpKind::Lock, name).await
    }

    async fn unlock(&self, client: u64, seq: u64, name: &str) -> Answer {
        self.execute(client, seq, OpKind::Unlock, name).await
    }

    fn apply(&self, client: u64, seq: u64, kind: OpKind, name: &str, result: bool) -> bool {
        let mut inner = self.inner();
        if inner.took_over {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        inner.commit(client, seq, kind, name, result);
        self.applied.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Which server answered an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The primary.
    Primary,
    /// The backup.
    Backup,
}

/// How a clerk's operation failed: neither server answered. It may or may not have taken
/// effect.
#[derive(Debug, thiserror::Error)]
#[error("no server answered the operation (it may or may not have taken effect): {0}")]
pub struct Indeterminate(pub CallError);

/// A client of the service: tries the primary and, once it fails to answer, the backup.
#[derive(Debug)]
pub struct Clerk {
    id: u64,
    seq: u64,
    primary: Option<LockServiceClient<UdpClient>>,
    backup: LockServiceClient<UdpClient>,
    on_backup: bool,
    primary_timeout: Duration,
    backup_timeout: Duration,
}

impl Clerk {
    /// A clerk named `id` (unique among clients), with a client of each server; `primary`
    /// is `None` if it could not be reached at all.
    pub fn new(
        id: u64,
        primary: Option<UdpClient>,
        backup: UdpClient,
        primary_timeout: Duration,
        backup_timeout: Duration,
    ) -> Self {
        Self {
            id,
            seq: 0,
            primary: primary.map(LockServiceClient::new),
            backup: LockServiceClient::new(backup),
            on_backup: false,
            primary_timeout,
            backup_timeout,
        }
    }

    /// Connects to both servers.
    pub fn connect(
        id: u64,
        primary: std::net::SocketAddr,
        backup: std::net::SocketAddr,
        config: UdpClientConfig,
        primary_timeout: Duration,
        backup_timeout: Duration,
    ) -> Result<Self, rpc_transport::udp::ConnectError> {
        let p = UdpClient::connect(primary, config.clone()).ok();
        let b = UdpClient::connect(backup, config)?;
        Ok(Self::new(id, p, b, primary_timeout, backup_timeout))
    }

    /// Takes `name`: true if this clerk now holds it.
    pub fn lock(&mut self, name: &str) -> Result<(bool, Served), Indeterminate> {
        self.call(OpKind::Lock, name)
    }

    /// Frees `name`: true if it was held.
    pub fn unlock(&mut self, name: &str) -> Result<(bool, Served), Indeterminate> {
        self.call(OpKind::Unlock, name)
    }

    fn call(&mut self, kind: OpKind, name: &str) -> Result<(bool, Served), Indeterminate> {
        self.seq += 1;
        let (id, seq) = (self.id, self.seq);
        if let (false, Some(primary)) = (self.on_backup, &self.primary) {
            let p = primary.with(CallOptions::new().timeout(self.primary_timeout));
            let answer = match kind {
                OpKind::Lock => p.lock(id, seq, name),
                OpKind::Unlock => p.unlock(id, seq, name),
            };
            if let Ok(Answer::Done(r)) = answer.map(|reply| reply.value) {
                return Ok((r, Served::Primary));
            }
            // No answer, or the primary says it no longer serves: the backup, for good.
            self.on_backup = true;
        }
        let b = self
            .backup
            .with(CallOptions::new().timeout(self.backup_timeout));
        let answer = match kind {
            OpKind::Lock => b.lock(id, seq, name),
            OpKind::Unlock => b.unlock(id, seq, name),
        };
        match answer.map(|r| r.value) {
            Ok(Answer::Done(r)) => Ok((r, Served::Backup)),
            Ok(Answer::NotPrimary) => Err(Indeterminate(CallError::ShuttingDown)),
            Err(e) => Err(Indeterminate(e)),
        }
    }
}

/// Nanoseconds on the system-wide monotonic clock: one timeline for every process of the
/// host (network namespaces share it), for histories recorded by several processes.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// One operation as a clerk recorded it, with which server answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The operation.
    pub op: Op,
    /// Who answered, if anyone did.
    pub served: Option<Served>,
}

/// A clerk's workload: `ops` operations on locks chosen among `names` by `seed`: try to lock;
/// if that succeeds, hold it a moment and unlock it. Stops at the first operation no server
/// answered. Each operation is passed to `record` once it ended.
pub fn workload(
    clerk: &mut Clerk,
    names: &[String],
    ops: usize,
    seed: u64,
    mut record: impl FnMut(Recorded),
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut done = 0;
    while done < ops {
        let name = &names[rng.random_range(0..names.len())];
        let invoke = now_ns();
        let r = clerk.lock(name);
        let ended = now_ns();
        let (got, ok) = match &r {
            Ok((got, _)) => (*got, true),
            Err(_) => (false, false),
        };
        record(Recorded {
            op: Op {
                client: clerk.id,
                name: name.clone(),
                kind: OpKind::Lock,
                invoke,
                response: ok.then_some((ended, got)),
            },
            served: r.as_ref().ok().map(|&(_, s)| s),
        });
        done += 1;
        if !ok {
            return;
        }
        if !got {
            // Held by someone else: let them work.
            for _ in 0..rng.random_range(0..100) {
                std::thread::yield_now();
            }
            continue;
        }
        for _ in 0..rng.random_range(0..50) {
            std::thread::yield_now();
        }
        let invoke = now_ns();
        let r = clerk.unlock(name);
        let ended = now_ns();
        record(Recorded {
            op: Op {
                client: clerk.id,
                name: name.clone(),
                kind: OpKind::Unlock,
                invoke,
                response: r.as_ref().ok().map(|&(got, _)| (ended, got)),
            },
            served: r.as_ref().ok().map(|&(_, s)| s),
        });
        done += 1;
        if r.is_err() {
            return;
        }
    }
}

/// A history line: `client kind name invoke response result served` (response and result `-`
/// when indeterminate), for histories that cross processes.
pub fn to_line(r: &Recorded) -> String {
    let kind = match r.op.kind {
        OpKind::Lock => "lock",
        OpKind::Unlock => "unlock",
    };
    let (resp, result) = match r.op.response {
        Some((t, b)) => (t.to_string(), b.to_string()),
        None => ("-".into(), "-".into()),
    };
    let served = match r.served {
        Some(Served::Primary) => "primary",
        Some(Served::Backup) => "backup",
        None => "-",
    };
    format!(
        "op {} {kind} {} {} {resp} {result} {served}",
        r.op.client, r.op.name, r.op.invoke
    )
}

/// Parses a line written by [`to_line`]; `None` for any other line.
pub fn from_line(line: &str) -> Option<Recorded> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [tag, client, kind, name, invoke, resp, result, served] = f[..] else {
        return None;
    };
    if tag != "op" {
        return None;
    }
    let kind = match kind {
        "lock" => OpKind::Lock,
        "unlock" => OpKind::Unlock,
        _ => return None,
    };
    let response = match (resp, result) {
        ("-", "-") => None,
        (t, b) => Some((t.parse().ok()?, b.parse().ok()?)),
    };
    let served = match served {
        "primary" => Some(Served::Primary),
        "backup" => Some(Served::Backup),
        _ => None,
    };
    Some(Recorded {
        op: Op {
            client: client.parse().ok()?,
            name: name.to_owned(),
            kind,
            invoke: invoke.parse().ok()?,
            response,
        },
        served,
    })
}
