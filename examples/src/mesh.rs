//! Reliable FIFO links between the processes of a small distributed system, built from RPC
//! calls: what the message-passing algorithms of the other modules assume of their network.
//!
//! Each process is a [`rpc_transport::Node`]: one server (its inbox) and one client per peer,
//! all stamped by the node's Lamport clock. A message to a peer is one call; a link keeps one
//! call in flight at a time, so a peer handles the messages of one sender in the order they
//! were queued, whatever the network below does to datagrams (the framework retransmits,
//! drops duplicates and runs each call at most once). Before each call the link waits a
//! seeded random delay, so messages on different links overtake one another.

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rpc_core::CallError;
use rpc_transport::Node;
use rpc_transport::PollStrategy;
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::{ServerHandle, UdpClientConfig, UdpServerConfig};

/// How the network between the processes misbehaves.
#[derive(Clone, Copy, Debug)]
pub struct Turbulence {
    /// Largest random delay a link waits before each message (uniform from zero).
    pub max_delay: Duration,
    /// Datagram faults injected by a [`rpc_transport::proxy::FaultProxy`] in front of each
    /// process's server; `None` for direct sockets.
    pub faults: Option<Faults>,
}

impl Turbulence {
    /// No delays and direct sockets.
    pub fn calm() -> Self {
        Self {
            max_delay: Duration::ZERO,
            faults: None,
        }
    }

    /// Random delays of up to `max_delay` per message, and datagrams lost, duplicated and
    /// reordered on the way.
    pub fn stormy(max_delay: Duration) -> Self {
        Self {
            max_delay,
            faults: Some(Faults {
                loss: 0.02,
                duplicate: 0.05,
                reorder: 0.3,
                delay: Duration::ZERO,
                reorder_delay: Duration::from_millis(1),
            }),
        }
    }
}

/// Client settings for links on one host: parked waits (many processes share few cores),
/// short retransmission timers, and a generous deadline.
pub fn client_config() -> UdpClientConfig {
    let mut c = UdpClientConfig::loopback().poll(PollStrategy::Block);
    c.protocol.initial_rto = Duration::from_millis(5);
    c.protocol.min_rto = Duration::from_millis(2);
    c.protocol.max_rto = Duration::from_millis(100);
    c.protocol.default_deadline = Duration::from_secs(20);
    c.connect_timeout = Duration::from_secs(5);
    c
}

/// Server settings for the processes' inboxes.
pub fn server_config() -> UdpServerConfig {
    UdpServerConfig::loopback().poll(PollStrategy::Block)
}

/// The first failure of any link of a run (a call that failed: the peer is gone).
#[derive(Debug, Default)]
pub struct LinkFailures {
    first: Mutex<Option<(String, CallError)>>,
}

impl LinkFailures {
    fn record(&self, link: &str, error: CallError) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some((link.to_owned(), error));
        }
    }

    /// The first failure, if any: which link, and how its call failed.
    pub fn first(&self) -> Option<(String, CallError)> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts a link: messages sent into the returned channel are delivered by `send` (one call
/// through `client`), in order, one at a time, each after a random delay of up to
/// `max_delay` drawn from `seed`. The thread ends when the channel is closed and drained, or
/// at the first failed call (recorded in `failures`).
pub fn spawn_link<C, M, F>(
    name: String,
    client: C,
    send: F,
    max_delay: Duration,
    seed: u64,
    failures: Arc<LinkFailures>,
) -> std::io::Result<(Sender<M>, JoinHandle<()>)>
where
    C: Send + 'static,
    M: Send + 'static,
    F: Fn(&C, &M) -> Result<(), CallError> + Send + 'static,
{
    let (tx, rx): (Sender<M>, Receiver<M>) = mpsc::channel();
    let thread = thread::Builder::new().name(name.clone()).spawn(move || {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for msg in rx {
            if !max_delay.is_zero() {
                let nanos = rng.random_range(0..=max_delay.as_nanos() as u64);
                // An injected network delay, not a wait for a condition.
                thread::sleep(Duration::from_nanos(nanos));
            }
            if let Err(e) = send(&client, &msg) {
                failures.record(&name, e);
                return;
            }
        }
    })?;
    Ok((tx, thread))
}

/// A seed for the link from `from` to `to` in a run seeded `seed`.
pub fn link_seed(seed: u64, from: u64, to: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (from << 32) ^ to
}

/// The servers of a mesh, each behind a fault proxy when there are faults. Dropping it stops
/// the proxies, then the servers.
#[derive(Debug)]
pub struct Served {
    proxies: Vec<FaultProxy>,
    servers: Vec<ServerHandle>,
    /// The address each process's peers call, in process order.
    pub addrs: Vec<SocketAddr>,
}

/// Serves each process on loopback: its node, its service, and the seed of the fault proxy
/// put in front of it if `faults` is given.
pub fn serve_all<'a, D: rpc_core::service::Dispatch + 'static>(
    each: impl IntoIterator<Item = (&'a Node, D, u64)>,
    faults: Option<Faults>,
) -> anyhow::Result<Served> {
    let mut served = Served {
        proxies: Vec::new(),
        servers: Vec::new(),
        addrs: Vec::new(),
    };
    for (node, service, seed) in each {
        let server = node
            .bind_udp(([127, 0, 0, 1], 0).into(), server_config())?
            .serve(service)?;
        let mut addr = server.local_addr();
        if let Some(faults) = faults {
            let proxy = FaultProxy::start(addr, faults, seed)?;
            addr = proxy.local_addr();
            served.proxies.push(proxy);
        }
        served.addrs.push(addr);
        served.servers.push(server);
    }
    Ok(served)
}
