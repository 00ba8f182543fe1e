//! Shared memory: same-host calls with no system call on the data path, as a [`Link`] under
//! the shared driver.
//!
//! A server listens on a Unix socket (its control channel). Each client that connects gets a
//! segment of its own under `/dev/shm` (mode 0600, named `rpc-shm-<server pid>-...` so that
//! stale ones can be found): a request ring, a reply ring, and their slot arenas
//! (`ring.rs`, `conn.rs`). A datagram is written once, by its sender, into a descriptor and
//! its slot (the copy the kernel makes on UDP); the receiver copies it once into its own receive buffer and
//! decodes it there in place, so bytes the peer changes later cannot change under the parser.
//!
//! **Why reading the shared region is sound.** The mapping is seen only as atomic words
//! (`region.rs`, the one module with `unsafe`): no reference to shared bytes is ever formed,
//! every access is an atomic load or store, and any value such a load returns is a valid
//! `u64`. So whatever the peer does, concurrently or not, this process reads some bits, never
//! undefined behaviour. Those bits are then untrusted input: ring indices and descriptors are
//! checked against this side's own copy of the layout (never re-read from the segment) before
//! they index anything (`ring.rs`), and a datagram's bytes, once copied out, pass the same
//! checked wire views as bytes from the network. A peer that writes garbage or impossible
//! indices gets its connection dropped; nothing here waits on the peer without a timeout.
//!
//! **Waiting.** Spinning reads the next descriptor's commit word (the descriptor holds the
//! datagram's first 120 bytes). A side that would block (spin then park,
//! or block) sets its ring's `sleeping` word and waits on its eventfd doorbell; the other
//! side rings it only if that word is set, so a spinning receiver costs its sender nothing.
//! A ring's consumer belongs to the thread that receives (the link's receiver, [`Link::Rx`]:
//! on a server, the connections that thread took in, each with its consumer), so a poll and a
//! receive take no lock; only a send locks its ring's producer, since any thread may send.
//!
//! **Dead peers.** Each side holds a lock on one byte of the segment; the kernel drops it
//! when the process dies, and the other side, looking every 10 ms while it waits, sees it gone.
//! A server also bumps a heartbeat word; a client whose server's heartbeat stops for
//! `peer_timeout` takes it for hung. Either way the client's calls in flight end with
//! [`CallError::PeerDied`](rpc_core::CallError::PeerDied), and later ones with
//! `Disconnected`; a server drops a dead client's segment.

mod conn;
mod link;
mod region;
pub(crate) mod ring;

/// For fuzz targets and their corpus replay: a ring's reader and writer over arbitrary region
/// contents.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::ring::{Consumer, Layout, Producer, RingError, Words};

    /// Fills a small ring's region with `data` (the first byte picks the ring's shape; the
    /// rest become its words, and every 17th byte also rewrites a word between operations, as
    /// a peer writing while this side reads), then drives a consumer and a producer over it.
    /// Invariants: nothing panics, nothing reads or writes outside the ring, a datagram taken
    /// out is never longer than a slot, and the reader never waits.
    pub fn region(data: &[u8]) {
        let Some((&shape, rest)) = data.split_first() else {
            return;
        };
        let ring_len = 1usize << (shape & 3);
        // Slots of 8 to 256 bytes: datagrams shorter and longer than the elided prefix.
        let slot = 8 * (1 + usize::from(shape >> 2 & 31));
        let layout = Layout::new(0, ring_len, slot);
        let words: Box<[AtomicU64]> = (0..layout.words()).map(|_| AtomicU64::new(0)).collect();
        for (i, c) in rest.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            words.store(i % words.len(), u64::from_le_bytes(b), Ordering::Relaxed);
        }
        let mut consumer = Consumer::new(layout);
        let mut producer = Producer::new(layout);
        let mut out = vec![0u8; layout.slot_bytes()];
        for (k, chunk) in rest.chunks(17).enumerate() {
            if let [a, b, c @ ..] = chunk {
                let i = usize::from(*a) % words.len();
                let v = c
                    .iter()
                    .fold(u64::from(*b), |v, &x| v.rotate_left(8) ^ u64::from(x));
                // Small values (lengths, indices), or a commit word of the first lap with any
                // mask of elided prefix words and any length.
                let v = if *b & 3 == 0 {
                    1 << 32 | (v & 0x1ff << 23) | (v % 300)
                } else {
                    v % 64
                };
                words.store(i, v, Ordering::Relaxed);
            }
            match consumer.pop(&*words, &mut out) {
                Ok(Some(len)) => assert!(len <= layout.slot_bytes()),
                Ok(None) | Err(RingError::Corrupt) => {}
                Err(e) => panic!("a reader never reports {e:?}"),
            }
            if k % 2 == 0 {
                let _ = producer.push(&*words, [chunk].into_iter());
            }
            let _ = consumer.sleep(&*words);
            consumer.wake(&*words);
        }
    }
}

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{ClientConfig, LamportClock, ServerConfig};

pub use link::{ShmAddr, ShmClientLink, ShmClientRx, ShmServerLink, ShmServerRx};

/// The cache hint a ring gives after each push, for other code that shares words between
/// cores as the link does (the benchmarks' flag floor uses it, so that the floor and the link
/// are measured alike): the cache lines of `words`, just written for a reader on another
/// core, move from this core's private caches to the shared one (x86's `CLDEMOTE`; nothing
/// elsewhere), where the reader's next load finds them sooner. It changes no value and
/// orders nothing.
pub fn demote(words: &[std::sync::atomic::AtomicU64]) {
    region::demote(words);
}

use crate::client::{Client, ClientParts, ConnectError};
use crate::link::Link;
use crate::poll::PollStrategy;
use crate::server::{Server, ServerOptions};

/// The largest slot: the protocol's largest datagram, in whole words.
const MAX_SLOT: usize = rpc_core::config::MAX_UDP_PAYLOAD / 8 * 8;

/// A client over shared memory.
pub type ShmClient = Client<ShmClientLink>;

/// A running shared-memory server. Dropping it shuts it down.
pub type ShmServerHandle = crate::server::ServerHandle<ShmServerLink>;

/// Configuration of a [`ShmClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShmClientConfig {
    /// Protocol settings (the datagram size is the server's slot size at most).
    pub protocol: ClientConfig,
    /// How waiting threads wait.
    pub poll: PollStrategy,
    /// How long connecting waits for the server.
    pub connect_timeout: Duration,
    /// A server whose heartbeat stops this long is taken for hung. Default 2 s.
    pub peer_timeout: Duration,
    /// Threads admitted into blocking calls at once (0: twice the CPUs).
    pub calling_threads: usize,
}

impl Default for ShmClientConfig {
    fn default() -> Self {
        let mut protocol = ClientConfig::default();
        // Datagrams as large as the server's slots (the link lowers it to theirs).
        protocol.max_datagram = MAX_SLOT;
        // Nothing is lost in a ring but for a full one: retransmit late.
        protocol.initial_rto = Duration::from_millis(20);
        protocol.min_rto = Duration::from_millis(5);
        Self {
            protocol,
            poll: PollStrategy::default(),
            connect_timeout: Duration::from_secs(2),
            peer_timeout: Duration::from_secs(2),
            calling_threads: 0,
        }
    }
}

impl ShmClientConfig {
    /// With this poll strategy.
    pub fn poll(mut self, poll: PollStrategy) -> Self {
        self.poll = poll;
        self
    }
}

/// Configuration of a [`ShmServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShmServerConfig {
    /// Protocol settings (the datagram size is the slot size).
    pub protocol: ServerConfig,
    /// How the receive thread waits.
    pub poll: PollStrategy,
    /// Worker threads for blocking handlers. Default 2.
    pub workers: usize,
    /// Calls waiting for a worker. Default 1024.
    pub worker_queue: usize,
    /// CPUs to pin the receive thread to; empty: no pinning.
    pub cpus: Vec<usize>,
    /// At shutdown, how long new calls are answered `ShuttingDown`. Default 50 ms.
    pub drain: Duration,
    /// At shutdown, how long running calls may take to finish. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Where segments are created. Default `/dev/shm`.
    pub dir: PathBuf,
    /// Descriptors per ring (a power of two). Default 256.
    pub ring_len: usize,
    /// Bytes per slot: the largest datagram (larger messages are fragmented), at most 65,504.
    /// Default 16 KiB.
    pub slot_bytes: usize,
    /// Clients at once. Default 256.
    pub max_connections: usize,
}

impl Default for ShmServerConfig {
    fn default() -> Self {
        Self {
            protocol: ServerConfig::default(),
            poll: PollStrategy::default(),
            workers: 2,
            worker_queue: 1024,
            cpus: Vec::new(),
            drain: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(5),
            dir: PathBuf::from("/dev/shm"),
            ring_len: 256,
            slot_bytes: 16 << 10,
            max_connections: 256,
        }
    }
}

impl ShmServerConfig {
    /// With this poll strategy.
    pub fn poll(mut self, poll: PollStrategy) -> Self {
        self.poll = poll;
        self
    }

    /// Pinning the receive thread to these CPUs.
    pub fn pin(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = cpus;
        self
    }
}

impl Client<ShmClientLink> {
    /// Connects to the server whose control socket is at `socket`. The client has a Lamport
    /// clock of its own; a [`crate::Node`] makes clients and servers that share one.
    pub fn connect(
        socket: impl AsRef<Path>,
        config: ShmClientConfig,
    ) -> Result<Self, ConnectError> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::connect_shm_on(crate::node::new_clock(id), socket.as_ref(), config)
    }

    pub(crate) fn connect_shm_on(
        clock: Arc<LamportClock>,
        socket: &Path,
        mut config: ShmClientConfig,
    ) -> Result<Self, ConnectError> {
        let link = ShmClientLink::connect(socket, config.connect_timeout, config.peer_timeout)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ConnectError::Unreachable(socket.display().to_string())
                }
                _ => ConnectError::Io(e),
            })?;
        config.protocol.max_datagram = config.protocol.max_datagram.min(link.max_datagram());
        config.protocol.validate()?;
        let incarnation = getrandom::u32().map_err(io::Error::other)?;
        let core =
            rpc_core::client::Client::new(config.protocol, clock.node(), incarnation, clock)?;
        let server = link.server();
        let parts = ClientParts {
            core,
            poll: config.poll,
            calling_threads: config.calling_threads,
        };
        Self::open(link, server, parts, config.connect_timeout)
    }
}

/// A shared-memory server listening on its control socket, not serving yet.
#[derive(Debug)]
pub struct ShmServer {
    server: Server<ShmServerLink>,
}

impl ShmServer {
    /// Listens at `socket` (a path; one a dead server left is replaced), removing stale
    /// segments of dead processes from the segment directory first.
    pub fn bind(socket: impl AsRef<Path>, config: ShmServerConfig) -> io::Result<Self> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::bind_on(crate::node::new_clock(id), socket.as_ref(), config)
    }

    pub(crate) fn bind_on(
        clock: Arc<LamportClock>,
        socket: &Path,
        mut config: ShmServerConfig,
    ) -> io::Result<Self> {
        let invalid = |what: &'static str| io::Error::new(io::ErrorKind::InvalidInput, what);
        if !config.ring_len.is_power_of_two() || config.ring_len > 1 << 16 {
            return Err(invalid("ring_len must be a power of two, at most 65536"));
        }
        if config.slot_bytes < 256 || config.slot_bytes > MAX_SLOT {
            return Err(invalid("slot_bytes must be between 256 and 65,504 bytes"));
        }
        config.protocol.max_datagram = config.slot_bytes.next_multiple_of(8);
        config
            .protocol
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let link = ShmServerLink::bind(
            socket,
            link::ServerShape {
                dir: config.dir.clone(),
                ring_len: config.ring_len,
                slot_bytes: config.slot_bytes,
                max_connections: config.max_connections,
            },
        )?;
        let options = ServerOptions {
            protocol: config.protocol,
            poll: config.poll,
            workers: config.workers,
            worker_queue: config.worker_queue,
            cpus: config.cpus,
            drain: config.drain,
            shutdown_timeout: config.shutdown_timeout,
        };
        Ok(Self {
            server: Server::new(vec![link], options, clock)?,
        })
    }

    /// Starts serving `dispatch`.
    pub fn serve(
        self,
        dispatch: impl rpc_core::service::Dispatch + 'static,
    ) -> io::Result<ShmServerHandle> {
        self.server.serve(dispatch)
    }
}

impl crate::server::ServerHandle<ShmServerLink> {
    /// Clients connected now.
    pub fn connections(&self) -> usize {
        self.receivers.iter().map(|rx| rx.link.connections()).sum()
    }
}
