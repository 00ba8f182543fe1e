//! The shared-memory links: a client's (one segment) and a server's (one segment per client,
//! accepted on a Unix socket by a thread of its own).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpc_core::server::PeerAddr;
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::conn::{
    self, CLIENT_BYTE, CLIENT_CLOSED, HEARTBEAT, SERVER_BYTE, SERVER_CLOSED, Segment,
};
use super::ring::{self, Consumer, Handover, Producer, RingError};
use crate::link::{Link, RecvBatch};

/// How often a side looks whether its peer lives (and a server bumps its heartbeat).
const LOOK_EVERY: Duration = Duration::from_millis(10);
/// Empty polls between two readings of the clock for that.
const POLLS_PER_LOOK: u32 = 1024;
/// The longest bundle of small requests (32 cache lines, 28 null calls): a datagram costs a
/// ring write here, whose fence waits for the lines it wrote to leave for the other core, and
/// the server works on one bundle while the next is packed. With 64 calls in flight, bundles
/// of 2 KiB carried 1.04-1.39 times the calls per second of bundles of 512 bytes (seven runs,
/// interleaved in one process), 1 KiB 1.01-1.10 times, and 4 KiB 0.85 times (one run, in a
/// slow hour); with 8 or 256 in flight the length made no difference.
const BUNDLE_MAX: usize = 2048;

/// When the next look is due, `LOOK_EVERY` after `now` (kept as a time, so that the hot paths
/// compare two instants instead of subtracting them).
fn next_look(now: Instant) -> Instant {
    now.checked_add(LOOK_EVERY).unwrap_or(now)
}

/// A peer over shared memory: its connection (slot and generation) and its process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmAddr {
    conn: u32,
    generation: u32,
    pid: u32,
}

impl PeerAddr for ShmAddr {
    /// Each process is its own host (the per-host session limit applies per process).
    fn host(&self) -> u128 {
        u128::from(self.pid)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An eventfd a peer rings to wake this side.
fn doorbell() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
    )?)
}

fn ring_bell(fd: &OwnedFd) {
    // A full counter (2^64 - 2 rings unread) or any error: the peer is awake anyway, or its
    // timeout will look.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

fn drain_bell(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

fn wait_bell(fd: &OwnedFd, timeout: Duration) {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let _ = rustix::event::poll(&mut fds, Some(&ts));
}

fn slices<'a>(iov: &'a [IoSlice<'a>]) -> impl Iterator<Item = &'a [u8]> + Clone {
    iov.iter().map(|s| &**s)
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the shared-memory peer is gone",
    )
}

fn ring_error(e: RingError) -> io::Error {
    match e {
        RingError::Full => io::ErrorKind::WouldBlock.into(),
        RingError::TooLarge => {
            io::Error::new(io::ErrorKind::InvalidInput, "datagram larger than a slot")
        }
        RingError::Corrupt => gone(),
    }
}

/// The client's side of one connection.
#[derive(Debug)]
pub struct ShmClientLink {
    seg: Segment,
    server: ShmAddr,
    producer: Mutex<Producer>,
    /// The receive side, until the driver takes it ([`Link::receiver`]).
    rx: Mutex<Option<ClientRx>>,
    bell: OwnedFd,
    server_bell: OwnedFd,
    dead: AtomicBool,
    peer_timeout: Duration,
}

/// A client link's receiver ([`Link::Rx`]): the reply ring's consumer and the watch on the
/// server, owned by the thread that receives. Only the first receiver of a link has them; a
/// later one receives nothing (every receive is an error).
#[derive(Debug)]
pub struct ShmClientRx(Option<ClientRx>);

#[derive(Debug)]
struct ClientRx {
    consumer: Consumer,
    /// When the next look at the server is due.
    look_at: Instant,
    heartbeat: u64,
    beat_at: Instant,
    /// Empty polls (they space the looks at the server).
    polls: u32,
}

/// A receive through a receiver other than the link's first.
fn no_receiver() -> io::Error {
    io::Error::other("this link's receiver is another's")
}

impl ShmClientLink {
    /// Pushes one request datagram, its lines handed over as `handover` says.
    fn push(&self, iov: &[IoSlice<'_>], handover: Handover) -> io::Result<()> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(gone());
        }
        match push(
            &self.producer,
            self.seg.words(),
            iov,
            &self.server_bell,
            handover,
        ) {
            Ok(()) => Ok(()),
            Err(RingError::Corrupt) => Err(self.die()),
            Err(e) => Err(ring_error(e)),
        }
    }

    /// Connects to the server listening at `socket` (its control channel), within `timeout`;
    /// a server silent for `peer_timeout` (its heartbeat stopped) is taken for hung.
    pub fn connect(socket: &Path, timeout: Duration, peer_timeout: Duration) -> io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let (shape, path, fd, server_bell) = conn::take_offer(&stream)?;
        let seg = Segment::open(fd, shape, path)?;
        let bell = doorbell()?;
        conn::accept(&stream, bell.as_fd())?;
        let now = Instant::now();
        let heartbeat = seg.words()[HEARTBEAT].load(Ordering::Relaxed);
        Ok(Self {
            server: ShmAddr {
                conn: 0,
                generation: 0,
                pid: shape.server_pid as u32,
            },
            producer: Mutex::new(Producer::new(seg.requests)),
            rx: Mutex::new(Some(ClientRx {
                consumer: Consumer::new(seg.replies),
                look_at: next_look(now),
                heartbeat,
                beat_at: now,
                polls: 0,
            })),
            seg,
            bell,
            server_bell,
            dead: AtomicBool::new(false),
            peer_timeout,
        })
    }

    /// The server's address (for the driver).
    pub fn server(&self) -> ShmAddr {
        self.server
    }

    /// The segment's name.
    pub fn segment(&self) -> &Path {
        &self.seg.path
    }

    fn die(&self) -> io::Error {
        self.dead.store(true, Ordering::Release);
        gone()
    }

    /// Looks whether the server lives: its lock, its closing flag, its heartbeat.
    fn look(&self, rx: &mut ClientRx, now: Instant) -> io::Result<()> {
        rx.look_at = next_look(now);
        let w = self.seg.words();
        if w[SERVER_CLOSED].load(Ordering::Acquire) != 0 || !self.seg.peer_alive(SERVER_BYTE) {
            return Err(self.die());
        }
        let beat = w[HEARTBEAT].load(Ordering::Relaxed);
        if beat != rx.heartbeat {
            (rx.heartbeat, rx.beat_at) = (beat, now);
        } else if now.duration_since(rx.beat_at) > self.peer_timeout {
            tracing::warn!("shared-memory server's heartbeat stopped: taken for hung");
            return Err(self.die());
        }
        Ok(())
    }
}

impl Link for ShmClientLink {
    type Addr = ShmAddr;
    type Rx = ShmClientRx;

    fn receiver(&self) -> ShmClientRx {
        ShmClientRx(lock(&self.rx).take())
    }

    fn max_datagram(&self) -> usize {
        self.seg.requests.slot_bytes()
    }

    fn bundle_max(&self) -> usize {
        BUNDLE_MAX.min(self.max_datagram())
    }

    fn cheap_send(&self) -> bool {
        true
    }

    fn send(&self, _to: &ShmAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.push(iov, Handover::Keep)
    }

    fn send_awaited(
        &self,
        _rx: Option<&ShmClientRx>,
        _to: &ShmAddr,
        iov: &[IoSlice<'_>],
    ) -> io::Result<()> {
        self.push(iov, Handover::Demote)
    }

    fn recv(&self, rx: &mut ShmClientRx, batch: &mut RecvBatch<ShmAddr>) -> io::Result<usize> {
        batch.clear();
        if self.dead.load(Ordering::Relaxed) {
            return Err(gone());
        }
        let rx = rx.0.as_mut().ok_or_else(no_receiver)?;
        let w = self.seg.words();
        if !ring::waiting(w, &self.seg.replies) {
            // The common poll, spinning for a reply: the shared words only.
            rx.polls = rx.polls.wrapping_add(1);
            if rx.polls % POLLS_PER_LOOK == 0 {
                let now = Instant::now();
                if now >= rx.look_at {
                    self.look(rx, now)?;
                }
            }
            return Ok(0);
        }
        let mut got = 0;
        while got < batch.limit() {
            match rx.consumer.pop(w, batch.slot(got)) {
                Ok(Some(len)) => {
                    batch.set(got, len, self.server);
                    got += 1;
                }
                Ok(None) => break,
                Err(_) => return Err(self.die()),
            }
        }
        Ok(got)
    }

    fn wait(
        &self,
        rx: &mut ShmClientRx,
        deadline: Option<Instant>,
        cap: Duration,
    ) -> io::Result<()> {
        let rx = rx.0.as_mut().ok_or_else(no_receiver)?;
        let w = self.seg.words();
        let now = Instant::now();
        if now >= rx.look_at {
            self.look(rx, now)?;
        }
        if !rx.consumer.sleep(w) {
            let timeout = deadline
                .map_or(cap, |d| d.saturating_duration_since(now))
                .min(cap)
                .min(LOOK_EVERY * 10);
            wait_bell(&self.bell, timeout);
            drain_bell(&self.bell);
        }
        rx.consumer.wake(w);
        Ok(())
    }

    fn close(&self) {
        self.seg.words()[CLIENT_CLOSED].store(1, Ordering::Release);
        ring_bell(&self.server_bell);
    }
}

impl Drop for ShmClientLink {
    fn drop(&mut self) {
        self.close();
        self.seg.unlink();
    }
}

/// Settings of a server's link.
#[derive(Clone, Debug)]
pub(crate) struct ServerShape {
    pub(crate) dir: PathBuf,
    pub(crate) ring_len: usize,
    pub(crate) slot_bytes: usize,
    pub(crate) max_connections: usize,
}

/// Pushes one datagram onto a ring, and rings the consumer's bell if it waits.
fn push(
    producer: &Mutex<Producer>,
    w: &[AtomicU64],
    iov: &[IoSlice<'_>],
    bell: &OwnedFd,
    handover: Handover,
) -> Result<(), RingError> {
    if lock(producer).push_as(w, slices(iov), handover)?.wake {
        ring_bell(bell);
    }
    Ok(())
}

/// A client's connection, on the server.
#[derive(Debug)]
struct Conn {
    addr: ShmAddr,
    seg: Segment,
    producer: Mutex<Producer>,
    client_bell: OwnedFd,
    dead: AtomicBool,
}

impl Conn {
    /// Pushes one datagram onto the reply ring, and rings the client's bell if it waits.
    fn send(&self, iov: &[IoSlice<'_>], handover: Handover) -> io::Result<()> {
        match push(
            &self.producer,
            self.seg.words(),
            iov,
            &self.client_bell,
            handover,
        ) {
            Ok(()) => Ok(()),
            Err(RingError::Corrupt) => {
                self.dead.store(true, Ordering::Relaxed);
                Err(io::ErrorKind::NotConnected.into())
            }
            Err(e) => Err(ring_error(e)),
        }
    }
}

/// A connection accepted, not yet taken in by the receive thread.
#[derive(Debug)]
struct Accepted {
    seg: Segment,
    client_bell: OwnedFd,
    pid: u32,
}

#[derive(Debug)]
struct Shared {
    shape: ServerShape,
    conns: RwLock<Conns>,
    generations: Mutex<Vec<u32>>,
    pending: Mutex<Vec<Accepted>>,
    has_pending: AtomicBool,
    bell: OwnedFd,
    stop: AtomicBool,
}

type Conns = Vec<Option<Arc<Conn>>>;

impl Shared {
    /// The connections, to read (a panic elsewhere while they were held leaves them usable).
    fn conns(&self) -> RwLockReadGuard<'_, Conns> {
        self.conns.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The connections, to change.
    fn conns_mut(&self) -> RwLockWriteGuard<'_, Conns> {
        self.conns.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server's side: one segment per client, accepted on a Unix socket.
#[derive(Debug)]
pub struct ShmServerLink {
    shared: Arc<Shared>,
    socket: PathBuf,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// A server link's receiver ([`Link::Rx`]), owned by the thread that receives: the
/// connections it took in, each with its request ring's consumer, at the index of the
/// connection's address. A connection belongs to the receiver that took it in; the table of
/// all connections (for replies, which any thread may send) is the link's.
#[derive(Debug)]
pub struct ShmServerRx {
    conns: Vec<Option<(Arc<Conn>, Consumer)>>,
    /// When the next look at the clients is due.
    look_at: Instant,
    /// The connection the next receive looks at first.
    cursor: usize,
    /// Polls so far (they space the looks).
    polls: u32,
}

impl ShmServerLink {
    /// Sends a reply datagram to `to`. A connection the receiver `rx` took in is in the
    /// link's table for as long as it is in the receiver's (both forget it together, in
    /// `look`, on the receiving thread): found there, it needs no read guard of the table.
    /// Another receiver's, or a send from another thread, goes through the table.
    fn send_via(
        &self,
        rx: Option<&ShmServerRx>,
        to: &ShmAddr,
        iov: &[IoSlice<'_>],
        handover: Handover,
    ) -> io::Result<()> {
        if let Some((c, _)) = rx
            .and_then(|rx| rx.conns.get(to.conn as usize))
            .and_then(Option::as_ref)
            .filter(|(c, _)| c.addr == *to)
        {
            return c.send(iov, handover);
        }
        // Under the read guard: no reference count to take and drop on every reply.
        let conns = self.shared.conns();
        let Some(c) = conns
            .get(to.conn as usize)
            .and_then(Option::as_ref)
            .filter(|c| c.addr == *to)
        else {
            // Gone: as a datagram to a host that left.
            return Err(io::ErrorKind::NotConnected.into());
        };
        c.send(iov, handover)
    }

    /// Listens at `socket` (a path, replaced if a dead server left it), creating segments in
    /// `shape.dir`; removes the stale segments found there first.
    pub(crate) fn bind(socket: &Path, shape: ServerShape) -> io::Result<Self> {
        let stale = conn::remove_stale(&shape.dir);
        if stale > 0 {
            tracing::info!(stale, "removed shared segments of dead processes");
        }
        let listener = match UnixListener::bind(socket) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                // Replaced only if nobody answers there.
                if UnixStream::connect(socket).is_ok() {
                    return Err(e);
                }
                std::fs::remove_file(socket)?;
                UnixListener::bind(socket)?
            }
            Err(e) => return Err(e),
        };
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            shape,
            conns: RwLock::new(Vec::new()),
            generations: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            bell: doorbell()?,
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("rpc-shm-accept".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Self {
            shared,
            socket: socket.to_path_buf(),
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.conns().iter().flatten().count()
    }

    /// Takes in the connections the acceptor made, into the link's table and `rx`'s.
    fn adopt(&self, rx: &mut ShmServerRx) {
        // Looked at on every poll: a plain load, the swap only when something is pending.
        if !self.shared.has_pending.load(Ordering::Relaxed)
            || !self.shared.has_pending.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let accepted: Vec<Accepted> = std::mem::take(&mut *lock(&self.shared.pending));
        let mut conns = self.shared.conns_mut();
        let mut generations = lock(&self.shared.generations);
        for a in accepted {
            let i = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                conns.push(None);
                generations.push(0);
                conns.len() - 1
            });
            generations[i] = generations[i].wrapping_add(1);
            let addr = ShmAddr {
                conn: i as u32,
                generation: generations[i],
                pid: a.pid,
            };
            let consumer = Consumer::new(a.seg.requests);
            let c = Arc::new(Conn {
                addr,
                producer: Mutex::new(Producer::new(a.seg.replies)),
                seg: a.seg,
                client_bell: a.client_bell,
                dead: AtomicBool::new(false),
            });
            conns[i] = Some(c.clone());
            if rx.conns.len() <= i {
                rx.conns.resize_with(i + 1, || None);
            }
            rx.conns[i] = Some((c, consumer));
        }
    }

    /// Bumps the heartbeat of every connection of `rx` and drops those whose client died,
    /// closed or broke the rings.
    fn look(&self, rx: &mut ShmServerRx, now: Instant) {
        rx.look_at = next_look(now);
        let mut dead = Vec::new();
        for (c, _) in rx.conns.iter().flatten() {
            let w = c.seg.words();
            w[HEARTBEAT].fetch_add(1, Ordering::Relaxed);
            if c.dead.load(Ordering::Relaxed)
                || w[CLIENT_CLOSED].load(Ordering::Acquire) != 0
                || !c.seg.peer_alive(CLIENT_BYTE)
            {
                dead.push(c.addr.conn as usize);
            }
        }
        if dead.is_empty() {
            return;
        }
        let mut conns = self.shared.conns_mut();
        for i in dead {
            let Some((c, _)) = rx.conns.get_mut(i).and_then(Option::take) else {
                continue;
            };
            if let Some(slot) = conns
                .get_mut(i)
                .filter(|s| s.as_ref().is_some_and(|s| s.addr == c.addr))
            {
                *slot = None;
            }
            c.seg.unlink();
        }
    }
}

fn accept_loop(listener: &UnixListener, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        if !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        match handshake(&stream, shared) {
            Ok(a) => {
                lock(&shared.pending).push(a);
                shared.has_pending.store(true, Ordering::Release);
                // The receive thread may be waiting: it takes the connection in at once.
                ring_bell(&shared.bell);
            }
            Err(e) => tracing::debug!(error = %e, "shared-memory handshake failed"),
        }
    }
}

fn handshake(stream: &UnixStream, shared: &Shared) -> io::Result<Accepted> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let open = shared.conns().iter().flatten().count() + lock(&shared.pending).len();
    if open >= shared.shape.max_connections {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connections full",
        ));
    }
    let pid = rustix::net::sockopt::socket_peercred(stream)
        .map(|c| c.pid.as_raw_nonzero().get() as u32)
        .unwrap_or(0);
    let s = &shared.shape;
    let (seg, shape) = Segment::create(&s.dir, s.ring_len, s.slot_bytes)?;
    let result =
        conn::offer(stream, &seg, shape, shared.bell.as_fd()).and_then(|()| conn::accepted(stream));
    match result {
        Ok(client_bell) => Ok(Accepted {
            seg,
            client_bell,
            pid,
        }),
        Err(e) => {
            seg.unlink();
            Err(e)
        }
    }
}

impl Link for ShmServerLink {
    type Addr = ShmAddr;
    type Rx = ShmServerRx;

    fn receiver(&self) -> ShmServerRx {
        ShmServerRx {
            conns: Vec::new(),
            look_at: next_look(Instant::now()),
            cursor: 0,
            polls: 0,
        }
    }

    /// A reply is a ring write (and a doorbell only for a client that sleeps): its header and
    /// segments go as they are, with nothing packed first.
    fn cheap_send(&self) -> bool {
        true
    }

    fn max_datagram(&self) -> usize {
        self.shared.shape.slot_bytes.next_multiple_of(8)
    }

    fn send(&self, to: &ShmAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.send_via(None, to, iov, Handover::Keep)
    }

    fn send_from(&self, rx: &ShmServerRx, to: &ShmAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.send_via(Some(rx), to, iov, Handover::Keep)
    }

    fn send_awaited(
        &self,
        rx: Option<&ShmServerRx>,
        to: &ShmAddr,
        iov: &[IoSlice<'_>],
    ) -> io::Result<()> {
        self.send_via(rx, to, iov, Handover::Demote)
    }

    fn recv(&self, rx: &mut ShmServerRx, batch: &mut RecvBatch<ShmAddr>) -> io::Result<usize> {
        batch.clear();
        self.adopt(rx);
        let mut got = 0;
        let n = rx.conns.len();
        for k in 0..n {
            let i = (rx.cursor + k) % n;
            let Some((c, consumer)) = &mut rx.conns[i] else {
                continue;
            };
            if c.dead.load(Ordering::Relaxed) || !ring::waiting(c.seg.words(), &c.seg.requests) {
                continue;
            }
            while got < batch.limit() {
                match consumer.pop(c.seg.words(), batch.slot(got)) {
                    Ok(Some(len)) => {
                        batch.set(got, len, c.addr);
                        got += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(
                            pid = c.addr.pid,
                            "a shared-memory client broke its ring: dropped"
                        );
                        c.dead.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            if got == batch.limit() {
                // The next receive starts after this one: every client gets its turn.
                rx.cursor = i + 1;
                break;
            }
        }
        rx.polls = rx.polls.wrapping_add(1);
        let polls = rx.polls;
        if got == 0 && polls % POLLS_PER_LOOK == 0 || polls % (POLLS_PER_LOOK * 16) == 0 {
            let now = Instant::now();
            if now >= rx.look_at {
                self.look(rx, now);
            }
        }
        Ok(got)
    }

    fn wait(
        &self,
        rx: &mut ShmServerRx,
        deadline: Option<Instant>,
        cap: Duration,
    ) -> io::Result<()> {
        let now = Instant::now();
        if now >= rx.look_at {
            self.look(rx, now);
        }
        let mut ready = self.shared.has_pending.load(Ordering::Acquire);
        for (c, consumer) in rx.conns.iter_mut().flatten() {
            ready |= consumer.sleep(c.seg.words());
        }
        if !ready {
            let timeout = deadline
                .map_or(cap, |d| d.saturating_duration_since(now))
                .min(cap)
                .min(LOOK_EVERY * 10);
            wait_bell(&self.shared.bell, timeout);
            drain_bell(&self.shared.bell);
        }
        for (c, consumer) in rx.conns.iter_mut().flatten() {
            consumer.wake(c.seg.words());
        }
        Ok(())
    }

    fn close(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.acceptor).take() {
            let _ = t.join();
        }
        let mut conns = self.shared.conns_mut();
        for c in conns.iter_mut().filter_map(Option::take) {
            c.seg.words()[SERVER_CLOSED].store(1, Ordering::Release);
            ring_bell(&c.client_bell);
            c.seg.unlink();
        }
        for a in lock(&self.shared.pending).drain(..) {
            a.seg.unlink();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for ShmServerLink {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives one datagram through `rx`, waiting for it as a driver would.
    fn one<L: Link>(
        link: &L,
        rx: &mut L::Rx,
        batch: &mut RecvBatch<L::Addr>,
    ) -> (Vec<u8>, L::Addr) {
        loop {
            if link.recv(rx, batch).unwrap() > 0 {
                let (d, from) = batch.get(0).unwrap();
                return (d.to_vec(), from);
            }
            link.wait(rx, None, Duration::from_millis(20)).unwrap();
        }
    }

    #[test]
    fn a_link_has_one_receiver_and_it_takes_every_datagram() {
        let dir = std::env::temp_dir().join(format!("rpc-shm-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = ServerShape {
            dir: dir.clone(),
            ring_len: 8,
            slot_bytes: 256,
            max_connections: 4,
        };
        let socket = dir.join("s.sock");
        let server = ShmServerLink::bind(&socket, shape).unwrap();
        let client =
            ShmClientLink::connect(&socket, Duration::from_secs(5), Duration::from_secs(5))
                .unwrap();
        let (mut srx, mut crx) = (server.receiver(), client.receiver());
        let mut second = client.receiver();
        let (mut sb, mut cb) = (RecvBatch::new(4, 256), RecvBatch::new(4, 256));
        for i in 0..20u8 {
            client
                .send(&client.server(), &[IoSlice::new(&[i; 40])])
                .unwrap();
            let (d, from) = one(&server, &mut srx, &mut sb);
            assert_eq!(d, [i; 40]);
            server.send(&from, &[IoSlice::new(&d[..8])]).unwrap();
            // A later receiver of the client's link gets nothing, and says why.
            let err = client.recv(&mut second, &mut cb).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Other);
            assert!(client.wait(&mut second, None, Duration::ZERO).is_err());
            assert_eq!(one(&client, &mut crx, &mut cb).0, [i; 8]);
        }
        // A second receiver of the server's link takes in no connection the first holds.
        let mut other = server.receiver();
        client
            .send(&client.server(), &[IoSlice::new(b"again")])
            .unwrap();
        assert_eq!(server.recv(&mut other, &mut sb).unwrap(), 0);
        assert_eq!(one(&server, &mut srx, &mut sb).0, b"again");
        drop(client);
        server.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
