//! The service the real-socket tests call, and what they check it with.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::rpc;
use rpc_core::service::CallContext;
use rpc_transport::PollStrategy;
use rpc_transport::udp::{UdpClientConfig, UdpServerConfig};

/// A ledger whose handlers count how often each call ran.
#[rpc]
pub trait Ledger {
    /// Records a call tagged `tag` (unique per call); returns how often that tag ran so far.
    fn record(&self, tag: u64, amount: u64) -> u64;
    /// The sum of all amounts recorded.
    #[rpc(idempotent)]
    fn total(&self) -> u64;
    /// The argument, back.
    fn echo(&self, tag: u64, data: &[u8]) -> Vec<u8>;
    /// `len` bytes made from `seed`.
    fn blob(&self, tag: u64, len: u64, seed: u8) -> Vec<u8>;
    /// Sleeps, on a worker thread.
    #[rpc(blocking)]
    fn slow(&self, tag: u64, millis: u64) -> u64;
    /// The caller's id and the Lamport stamps the handler saw.
    fn whoami(&self, ctx: &CallContext) -> (u64, u64, u64);
}

/// Execution counts, shared by every server instance of a test (a restarted server keeps
/// them, as a real service keeps its state on disk).
#[derive(Clone, Default)]
pub struct Book {
    runs: Arc<Mutex<HashMap<u64, u32>>>,
    total: Arc<AtomicU64>,
}

impl Book {
    fn run(&self, tag: u64) -> u64 {
        let mut runs = self.runs.lock().unwrap();
        let n = runs.entry(tag).or_insert(0);
        *n += 1;
        u64::from(*n)
    }

    /// How often `tag` ran.
    pub fn runs(&self, tag: u64) -> u32 {
        self.runs.lock().unwrap().get(&tag).copied().unwrap_or(0)
    }

    /// The tags that ran more than once.
    pub fn twice(&self) -> Vec<u64> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&t, _)| t)
            .collect()
    }

    /// Calls that ran, all told.
    pub fn executions(&self) -> u64 {
        self.runs
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n))
            .sum()
    }
}

impl Ledger for Book {
    fn record(&self, tag: u64, amount: u64) -> u64 {
        self.total.fetch_add(amount, Ordering::Relaxed);
        self.run(tag)
    }
    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    fn echo(&self, tag: u64, data: &[u8]) -> Vec<u8> {
        self.run(tag);
        data.to_vec()
    }
    fn blob(&self, tag: u64, len: u64, seed: u8) -> Vec<u8> {
        self.run(tag);
        pattern(len as usize, seed)
    }
    fn slow(&self, tag: u64, millis: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(millis));
        self.run(tag)
    }
    fn whoami(&self, ctx: &CallContext) -> (u64, u64, u64) {
        (
            ctx.client_id,
            ctx.request_stamp.time,
            ctx.received_stamp.time,
        )
    }
}

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A unique tag per call across a test.
pub fn tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Client settings for tests: loopback datagrams, timers suited to a loaded 2-core machine.
pub fn client_config(poll: PollStrategy) -> UdpClientConfig {
    let mut c = UdpClientConfig::loopback().poll(poll);
    c.protocol.initial_rto = Duration::from_millis(5);
    c.protocol.min_rto = Duration::from_millis(2);
    c.protocol.max_rto = Duration::from_millis(200);
    c.protocol.default_deadline = Duration::from_secs(20);
    c.protocol.assumed_bandwidth = 500_000_000;
    c
}

/// Server settings for tests.
pub fn server_config(poll: PollStrategy) -> UdpServerConfig {
    UdpServerConfig::loopback().poll(poll)
}

/// The poll strategy most tests use: spinning briefly, then parking, so that tests running
/// side by side on two cores do not starve each other.
pub fn park() -> PollStrategy {
    PollStrategy::SpinThenPark(Duration::from_micros(20))
}

pub fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
