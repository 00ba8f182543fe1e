//! UDP through io_uring, as a [`Link`] under the shared driver.
//!
//! - **Receives**: one multishot `RecvMsg` per socket, filling buffers of a provided-buffer
//!   ring; each completion's buffer is exchanged for one of the receive batch (no copy), and
//!   the batch's goes back into the ring. When the ring runs dry the receive ends (`ENOBUFS`)
//!   and is armed again once buffers are back. The completion queue is read in user space
//!   while spinning; the kernel is entered only when the ring's `TASKRUN` flag says it has
//!   completions to make, or to wait when parking or blocking.
//! - **Sends**: `SendMsg` straight from the gather list (the caller's memory), or `SendMsgZc`
//!   from a configured size on (for real NICs: on loopback the kernel copies anyway); a batch
//!   of datagrams is one submission. A send returns once its completion (and a zero-copy
//!   send's notification) has been reaped, so the caller's memory is never in the kernel's
//!   hands after the call.
//! - **Rings**: a server's is set up `SINGLE_ISSUER` and `DEFER_TASKRUN` where the kernel has
//!   them, and driven by its receive thread alone (a worker thread's reply goes out by a plain
//!   system call on the same socket); a client's, which any thread may drive, is set up
//!   `COOP_TASKRUN`. Both with `TASKRUN_FLAG`. No SQPOLL: it needs a spare core.
//! - **Probing**: at start the link probes the operations and features it needs and fails
//!   with a [`UringError`] naming what is missing, or falls back to plain sockets if the
//!   configuration allows (with a log line).
//!
//! All `unsafe` is in `ring.rs`; the ownership of receive buffers is `bufs.rs`, tested alone.

mod bufs;
mod ring;

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::link::{Link, RecvBatch};

pub use ring::RECV_OVERHEAD;

/// Settings of an io_uring link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UringConfig {
    /// Submission queue entries (the completion queue has four times as many). Default 256.
    pub entries: u32,
    /// Receive buffers in the provided-buffer ring, a power of two; each holds the largest
    /// datagram. Default 64.
    pub buffers: u16,
    /// Sends of at least this many bytes go zero-copy (`SendMsgZc`); `None` (the default):
    /// never. Worth it on real NICs above about 10 KB; on loopback the kernel copies anyway.
    pub zero_copy_from: Option<usize>,
    /// If the kernel lacks what the link needs (or forbids io_uring), use plain sockets
    /// instead (logged), rather than fail. Default false.
    pub fallback: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            entries: 256,
            buffers: 64,
            zero_copy_from: None,
            fallback: false,
        }
    }
}

impl UringConfig {
    /// Falling back to plain sockets where io_uring cannot be used.
    pub fn with_fallback(mut self) -> Self {
        self.fallback = true;
        self
    }

    /// With `n` receive buffers (a power of two).
    pub fn buffers(mut self, n: u16) -> Self {
        self.buffers = n;
        self
    }

    /// Zero-copy sends from `bytes` on (`None`: never).
    pub fn zero_copy_from(mut self, bytes: Option<usize>) -> Self {
        self.zero_copy_from = bytes;
        self
    }
}

/// Why an io_uring link could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UringError {
    /// The kernel refused a setup step: what it was, and its error.
    #[error("this kernel's io_uring lacks {what}: {source}")]
    Unsupported {
        /// What was refused.
        what: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// An operation the link needs is missing.
    #[error("this kernel's io_uring lacks the operation {0}")]
    Missing(&'static str),
    /// The configuration cannot work.
    #[error("io_uring configuration: {0}")]
    Config(&'static str),
}

impl From<UringError> for io::Error {
    fn from(e: UringError) -> Self {
        io::Error::new(io::ErrorKind::Unsupported, e)
    }
}

thread_local! {
    static THIS_THREAD: u8 = const { 0 };
}

/// This thread, as a number no other live thread has (the address of a thread-local), cheaper
/// to get than its `ThreadId`.
fn this_thread() -> usize {
    THIS_THREAD.with(|t| std::ptr::from_ref(t) as usize)
}

/// UDP through io_uring: one socket, one ring.
pub struct UringLink {
    socket: UdpSocket,
    peer: Option<SocketAddr>,
    max_datagram: usize,
    ring: Mutex<ring::Ring>,
    /// A single-issuer ring's one thread, once attached (see `this_thread`).
    owner: OnceLock<usize>,
    single_issuer: bool,
    /// Sends that went by plain system call (another thread than a single issuer's, or the
    /// ring busy).
    plain_sends: AtomicU64,
}

impl std::fmt::Debug for UringLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringLink")
            .field("peer", &self.peer)
            .field("single_issuer", &self.single_issuer)
            .finish_non_exhaustive()
    }
}

impl UringLink {
    /// A link over `socket` (non-blocking), connected to `peer` if given (a client: its ring
    /// is driven by whichever thread leads), else a server's (driven by the one thread that
    /// [`Link::attach`]es). On failure the socket comes back with the error.
    pub fn new(
        socket: UdpSocket,
        peer: Option<SocketAddr>,
        max_datagram: usize,
        config: &UringConfig,
    ) -> Result<Self, (UringError, UdpSocket)> {
        if !config.buffers.is_power_of_two() || config.buffers > 1 << 15 {
            return Err((
                UringError::Config("buffers must be a power of two, at most 32768"),
                socket,
            ));
        }
        let setup = ring::Setup {
            entries: config.entries.clamp(8, 32_768),
            buffers: config.buffers,
            buffer_len: max_datagram + RECV_OVERHEAD,
            single_issuer: peer.is_none(),
            zero_copy_from: config.zero_copy_from,
        };
        match ring::Ring::new(socket.as_raw_fd(), &setup) {
            Ok(r) => {
                let single_issuer = r.mode() == ring::Mode::Deferred;
                Ok(Self {
                    socket,
                    peer,
                    max_datagram,
                    ring: Mutex::new(r),
                    owner: OnceLock::new(),
                    single_issuer,
                    plain_sends: AtomicU64::new(0),
                })
            }
            Err(e) => Err((e, socket)),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Whether the ring is single-issuer (`DEFER_TASKRUN`).
    pub fn single_issuer(&self) -> bool {
        self.single_issuer
    }

    /// Sends that went by plain system call so far.
    pub fn plain_sends(&self) -> u64 {
        self.plain_sends.load(Ordering::Relaxed)
    }

    /// Receive buffers the kernel holds, of how many.
    pub fn buffers_lent(&self) -> (usize, usize) {
        let r = self.lock();
        (r.lent(), r.buffer_ids())
    }

    fn lock(&self) -> MutexGuard<'_, ring::Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring, if this thread may drive it: a single-issuer ring only on its own thread; a
    /// shared one if no other thread holds it (`wait_for_it`: or once it lets go).
    fn ring(&self, wait_for_it: bool) -> Option<MutexGuard<'_, ring::Ring>> {
        if self.single_issuer {
            return (self.owner.get() == Some(&this_thread())).then(|| self.lock());
        }
        if wait_for_it {
            return Some(self.lock());
        }
        match self.ring.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// A send by plain system call.
    fn plain_send(&self, to: &SocketAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        self.plain_sends.fetch_add(1, Ordering::Relaxed);
        crate::udp::send_plain(&self.socket, self.peer.is_some(), to, iov)
    }
}

impl Link for UringLink {
    type Addr = SocketAddr;
    type Rx = ();

    fn receiver(&self) {}

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn recv_buffer_len(&self) -> usize {
        self.max_datagram + RECV_OVERHEAD
    }

    fn attach(&self) {
        if !self.single_issuer {
            return;
        }
        if self.owner.set(this_thread()).is_ok() {
            if let Err(e) = self.lock().enable() {
                tracing::error!(error = %e, "enabling the io_uring ring");
            }
        }
    }

    fn send(&self, to: &SocketAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        match self.ring(false) {
            Some(mut r) => r.send(self.peer.is_none().then_some(to), iov),
            None => self.plain_send(to, iov),
        }
    }

    fn send_many(&self, datagrams: &[(SocketAddr, &[IoSlice<'_>])]) -> io::Result<usize> {
        let Some(mut r) = self.ring(false) else {
            for (i, (to, iov)) in datagrams.iter().enumerate() {
                if let Err(e) = self.plain_send(to, iov) {
                    return if i == 0 { Err(e) } else { Ok(i) };
                }
            }
            return Ok(datagrams.len());
        };
        let connected = self.peer.is_some();
        let mut list: arrayvec::ArrayVec<
            (Option<&SocketAddr>, &[IoSlice<'_>]),
            { ring::SEND_BATCH },
        > = arrayvec::ArrayVec::new();
        let mut sent = 0;
        for chunk in datagrams.chunks(ring::SEND_BATCH) {
            list.clear();
            list.extend(
                chunk
                    .iter()
                    .map(|(to, iov)| ((!connected).then_some(to), *iov)),
            );
            match r.send_many(&list) {
                Ok(n) => sent += n,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    fn recv(&self, _: &mut (), batch: &mut RecvBatch<SocketAddr>) -> io::Result<usize> {
        match self.ring(true) {
            Some(mut r) => r.recv(batch, self.peer),
            None => {
                batch.clear();
                Ok(0)
            }
        }
    }

    fn wait(&self, _: &mut (), deadline: Option<Instant>, cap: Duration) -> io::Result<()> {
        let timeout = deadline
            .map_or(cap, |d| d.saturating_duration_since(Instant::now()))
            .min(cap);
        match self.ring(true) {
            Some(mut r) => r.wait(timeout),
            None => {
                thread::park_timeout(timeout);
                Ok(())
            }
        }
    }

    fn close(&self) {
        if let Some(mut r) = self.ring(true) {
            if !r.close() {
                tracing::warn!("io_uring link could not be closed cleanly");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(config: &UringConfig) -> (UringLink, UringLink) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        a.connect(ba).unwrap();
        let client = UringLink::new(a, Some(ba), 2048, config)
            .map_err(|e| e.0)
            .unwrap();
        let server = UringLink::new(b, None, 2048, config)
            .map_err(|e| e.0)
            .unwrap();
        server.attach();
        let _ = aa;
        (client, server)
    }

    fn recv_one(link: &UringLink, batch: &mut RecvBatch<SocketAddr>) -> (Vec<u8>, SocketAddr) {
        loop {
            match link.recv(&mut (), batch) {
                Ok(0) => link.wait(&mut (), None, Duration::from_millis(10)).unwrap(),
                Ok(_) => {
                    let (d, from) = batch.get(0).unwrap();
                    return (d.to_vec(), from);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn datagrams_go_both_ways_and_buffers_circulate() {
        let (client, server) = pair(&UringConfig::default().buffers(4));
        assert!(server.single_issuer(), "this kernel has DEFER_TASKRUN");
        let mut sb = RecvBatch::new(8, server.recv_buffer_len());
        let mut cb = RecvBatch::new(8, client.recv_buffer_len());
        let client_addr = client.socket().local_addr().unwrap();
        // More round trips than there are buffers: they go back into the ring.
        for i in 0..50u32 {
            let msg = i.to_le_bytes();
            client
                .send(
                    &server.socket().local_addr().unwrap(),
                    &[IoSlice::new(b"ab"), IoSlice::new(&msg)],
                )
                .unwrap();
            let (d, from) = recv_one(&server, &mut sb);
            assert_eq!(&d[..2], b"ab");
            assert_eq!(&d[2..], &msg);
            assert_eq!(from, client_addr);
            server.send(&from, &[IoSlice::new(&d)]).unwrap();
            let (back, _) = recv_one(&client, &mut cb);
            assert_eq!(back, d);
        }
        assert_eq!(server.buffers_lent(), (4, 4));
        // A batch of sends is one submission, and all arrive.
        let to = server.socket().local_addr().unwrap();
        let bodies: Vec<[u8; 4]> = (0..20u32).map(u32::to_le_bytes).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = bodies.iter().map(|b| [IoSlice::new(b)]).collect();
        let list: Vec<(SocketAddr, &[IoSlice<'_>])> = iovs.iter().map(|v| (to, &v[..])).collect();
        assert_eq!(client.send_many(&list).unwrap(), 20);
        let mut seen = 0;
        while seen < 20 {
            let n = server.recv(&mut (), &mut sb).unwrap();
            if n == 0 {
                server
                    .wait(&mut (), None, Duration::from_millis(10))
                    .unwrap();
            }
            seen += n;
        }
        server.close();
        assert_eq!(server.buffers_lent().0, 0, "every buffer back once closed");
    }

    #[test]
    fn a_server_ring_is_driven_by_its_own_thread_only() {
        let (client, server) = pair(&UringConfig::default());
        let server = std::sync::Arc::new(server);
        let to = client.socket().local_addr().unwrap();
        // Another thread's send goes by plain system call, and arrives.
        let s = server.clone();
        thread::spawn(move || s.send(&to, &[IoSlice::new(b"from a worker")]).unwrap())
            .join()
            .unwrap();
        assert_eq!(server.plain_sends(), 1);
        let mut cb = RecvBatch::new(4, client.recv_buffer_len());
        assert_eq!(recv_one(&client, &mut cb).0, b"from a worker");
        server.close();
    }

    #[test]
    fn zero_copy_sends_wait_for_their_notification() {
        let (client, server) = pair(&UringConfig::default().zero_copy_from(Some(1)));
        let to = server.socket().local_addr().unwrap();
        let mut sb = RecvBatch::new(4, server.recv_buffer_len());
        for i in 0..20u8 {
            let body = vec![i; 1000];
            client.send(&to, &[IoSlice::new(&body)]).unwrap();
            // The body may be dropped now: the kernel let go of it before `send` returned.
            drop(body);
            let (d, _) = recv_one(&server, &mut sb);
            assert_eq!(d, vec![i; 1000]);
        }
        server.close();
    }
}
