//! Test support for real sockets: a fault-injecting UDP proxy and a garbage flood.
//!
//! This kernel has no netem, so loss, duplication, reordering and delay on real sockets come
//! from [`FaultProxy`]: clients talk to the proxy, the proxy talks to the server from one
//! socket per client (so the server still tells clients apart), and every datagram in either
//! direction passes the seeded fault model. [`Flood`] sprays a port with hostile datagrams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustix::event::{PollFd, PollFlags, Timespec};

/// The fault model of a [`FaultProxy`], applied to each datagram independently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to `reorder_delay` extra.
    pub reorder: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Largest extra delay of a held-back datagram.
    pub reorder_delay: Duration,
}

impl Faults {
    /// No faults: forward at once.
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::ZERO,
            reorder_delay: Duration::from_millis(1),
        }
    }

    /// Loss, duplication and reordering at these rates.
    pub fn lossy(loss: f64, duplicate: f64, reorder: f64) -> Self {
        Self {
            loss,
            duplicate,
            reorder,
            ..Self::none()
        }
    }
}

/// Datagram counters of a [`FaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// Datagrams received from either side.
    pub received: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Datagrams held back.
    pub reordered: u64,
}

/// A datagram the proxy forwarded, as a test playing an eavesdropper sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tapped {
    /// Whether it went to the server (else to a client).
    pub to_server: bool,
    /// The address the server knows the client by (the proxy's socket for that client).
    pub client: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Datagrams kept for [`FaultProxy::tapped`].
const TAPPED: usize = 512;

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

/// A UDP proxy that loses, duplicates, reorders and delays datagrams with seeded
/// probabilities. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
    tap: Arc<Mutex<VecDeque<Tapped>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> io::Result<Self> {
        let front = UdpSocket::bind(("127.0.0.1", 0))?;
        front.set_nonblocking(true)?;
        crate::sock::set_buffers(&socket2::SockRef::from(&front), 8 << 20);
        let addr = front.local_addr()?;
        let faults = Arc::new(Mutex::new(faults));
        let counters = Arc::new(Counters::default());
        let tap = Arc::new(Mutex::new(VecDeque::with_capacity(TAPPED)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = ProxyState {
            tap: tap.clone(),
            front,
            upstream,
            backs: Vec::new(),
            by_client: HashMap::new(),
            queue: BinaryHeap::new(),
            order: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults: faults.clone(),
            counters: counters.clone(),
        };
        let stop2 = stop.clone();
        let thread = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || state.run(&stop2))?;
        Ok(Self {
            addr,
            faults,
            counters,
            tap,
            stop,
            thread: Some(thread),
        })
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the fault model from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// The last datagrams the proxy forwarded (hundreds), oldest first: what an eavesdropper
    /// on the path would have seen.
    pub fn tapped(&self) -> Vec<Tapped> {
        self.tap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Counters so far.
    pub fn counters(&self) -> ProxyCounters {
        ProxyCounters {
            received: self.counters.received.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            duplicated: self.counters.duplicated.load(Ordering::Relaxed),
            reordered: self.counters.reordered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a held datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    /// To the server, from the back socket of this index.
    Upstream(usize),
    /// To this client, from the front socket.
    Client(SocketAddr),
}

/// A datagram held by the proxy: release time, arrival order (ties), destination, bytes.
type Held = (Instant, u64, Dest, Vec<u8>);

struct ProxyState {
    tap: Arc<Mutex<VecDeque<Tapped>>>,
    front: UdpSocket,
    upstream: SocketAddr,
    /// One socket per client, connected to the upstream: (socket, client address).
    backs: Vec<(UdpSocket, SocketAddr)>,
    by_client: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<Held>>,
    order: u64,
    rng: ChaCha8Rng,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
}

impl ProxyState {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            self.release(Instant::now());
            let wait = self
                .queue
                .peek()
                .map_or(Duration::from_millis(10), |Reverse((t, ..))| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(10));
            let readable = {
                let mut fds = Vec::with_capacity(1 + self.backs.len());
                fds.push(PollFd::new(&self.front, PollFlags::IN));
                for (s, _) in &self.backs {
                    fds.push(PollFd::new(s, PollFlags::IN));
                }
                let timeout = Timespec {
                    tv_sec: 0,
                    tv_nsec: wait.as_nanos() as _,
                };
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
                fds.iter()
                    .map(|f| !f.revents().is_empty())
                    .collect::<Vec<_>>()
            };
            if readable[0] {
                while let Ok((n, from)) = self.front.recv_from(&mut buf) {
                    let back = self.back_for(from);
                    if let Some(back) = back {
                        self.admit(Dest::Upstream(back), &buf[..n]);
                    }
                }
            }
            for i in 0..self.backs.len() {
                if readable.get(i + 1).copied().unwrap_or(false) {
                    while let Ok(n) = self.backs[i].0.recv(&mut buf) {
                        let client = self.backs[i].1;
                        self.admit(Dest::Client(client), &buf[..n]);
                    }
                }
            }
        }
    }

    fn back_for(&mut self, client: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_client.get(&client) {
            return Some(i);
        }
        let s = UdpSocket::bind(("127.0.0.1", 0)).ok()?;
        s.connect(self.upstream).ok()?;
        s.set_nonblocking(true).ok()?;
        crate::sock::set_buffers(&socket2::SockRef::from(&s), 8 << 20);
        self.backs.push((s, client));
        self.by_client.insert(client, self.backs.len() - 1);
        Some(self.backs.len() - 1)
    }

    fn admit(&mut self, dest: Dest, bytes: &[u8]) {
        let (to_server, back) = match dest {
            Dest::Upstream(i) => (true, i),
            Dest::Client(addr) => (false, self.by_client.get(&addr).copied().unwrap_or(0)),
        };
        if let Some(client) = self.backs.get(back).and_then(|(s, _)| s.local_addr().ok()) {
            let mut tap = self.tap.lock().unwrap_or_else(|p| p.into_inner());
            if tap.len() == TAPPED {
                tap.pop_front();
            }
            tap.push_back(Tapped {
                to_server,
                client,
                bytes: bytes.to_vec(),
            });
        }
        let f = *self.faults.lock().unwrap_or_else(|p| p.into_inner());
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.rng.random_bool(f.loss.clamp(0.0, 1.0)) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let copies = if self.rng.random_bool(f.duplicate.clamp(0.0, 1.0)) {
            self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        let now = Instant::now();
        for _ in 0..copies {
            let mut at = now + f.delay;
            if self.rng.random_bool(f.reorder.clamp(0.0, 1.0)) {
                self.counters.reordered.fetch_add(1, Ordering::Relaxed);
                let extra = self.rng.random_range(0..=f.reorder_delay.as_nanos() as u64);
                at += Duration::from_nanos(extra);
            }
            self.order += 1;
            self.queue
                .push(Reverse((at, self.order, dest, bytes.to_vec())));
        }
        self.release(now);
    }

    fn release(&mut self, now: Instant) {
        while let Some(Reverse((at, ..))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, dest, bytes))) = self.queue.pop() else {
                break;
            };
            // Send errors are losses, as on a real network.
            let _ = match dest {
                Dest::Upstream(i) => self.backs[i].0.send(&bytes),
                Dest::Client(addr) => self.front.send_to(&bytes, addr),
            };
        }
    }
}

/// Sends one UDP datagram to `to` with the source address `from` forged, through a raw socket
/// (which needs `CAP_NET_RAW`: the error is `PermissionDenied` without it). IPv4 only; the
/// kernel fills in the IP header's checksum, and the UDP checksum is left out (zero), as IPv4
/// allows.
pub fn spoof(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (from, to) else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "spoofing is IPv4 only",
        ));
    };
    const IPPROTO_RAW: i32 = 255;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]); // IPv4, 5-word header; no TOS
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0]); // id (filled in), don't fragment
    packet.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum (filled in)
    packet.extend_from_slice(&src.ip().octets());
    packet.extend_from_slice(&dst.ip().octets());
    packet.extend_from_slice(&src.port().to_be_bytes());
    packet.extend_from_slice(&dst.port().to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no UDP checksum
    packet.extend_from_slice(payload);
    socket.send_to(&packet, &to.into())?;
    Ok(())
}

/// A thread that sprays hostile datagrams at a port until dropped: random bytes, truncated
/// headers, and headers with the right magic and version but arbitrary fields.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts flooding `target`, pausing `pause` between datagrams (zero: as fast as possible).
    pub fn start(target: SocketAddr, seed: u64, pause: Duration) -> io::Result<Self> {
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = thread::Builder::new().name("flood".into()).spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut buf = vec![0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let len = rng.random_range(0..buf.len());
                rng.fill_bytes(&mut buf[..len]);
                if len >= 4 && rng.random_bool(0.7) {
                    // Right magic and version, so the datagram gets past the first checks.
                    buf[..3].copy_from_slice(&[b'r', b'p', rpc_core::wire::VERSION]);
                    buf[3] = rng.random_range(0..9);
                }
                if socket.send_to(&buf[..len], target).is_ok() {
                    sent2.fetch_add(1, Ordering::Relaxed);
                }
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
        })?;
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
