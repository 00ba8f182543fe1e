//! The one thing a transport must provide: a datagram link.
//!
//! The client driver ([`crate::client`]) and the server loop ([`crate::server`]) are written
//! once, over this trait; kernel UDP is one link ([`crate::udp::UdpLink`]), and io_uring and
//! shared memory are others. A link moves datagrams and nothing else: it sends a gather list
//! (the header, and the caller's memory by reference), receives a batch into buffers it is
//! lent, and waits for readiness. Sessions, retransmission, batching of messages into
//! datagrams, handlers and timers are the driver's.

use std::io::{self, IoSlice};
use std::time::Instant;

use rpc_core::server::PeerAddr;

/// A datagram transport between this endpoint and its peers.
pub trait Link: Send + Sync + 'static {
    /// A peer's address.
    type Addr: PeerAddr + Send + Sync + 'static;

    /// What the receiving side keeps between receives (a shared-memory link's ring
    /// consumers, say): owned by the thread that receives and lent to [`Link::recv`] and
    /// [`Link::wait`], so that a receive takes no lock for it. A link whose receive keeps
    /// nothing of its own has `()`.
    type Rx: Send + 'static;

    /// The link's receiver, made once by the driver that will receive (before its first
    /// receive). A link whose receive state must exist once (one consumer per ring) hands it
    /// to the first call; a receiver made by a later call receives nothing and says so.
    fn receiver(&self) -> Self::Rx;

    /// The largest datagram the link carries.
    fn max_datagram(&self) -> usize;

    /// The largest datagram that small requests started together are packed into. On a
    /// network each datagram costs a system call or two, and packing up to the largest pays;
    /// a link whose datagram costs less than the requests in it keeps bundles short, so that
    /// the peer starts on one while the next is packed.
    fn bundle_max(&self) -> usize {
        self.max_datagram()
    }

    /// How large the buffers it receives into must be: the largest datagram, and room for
    /// whatever the link's receive puts before it (see [`RecvBatch::start`]).
    fn recv_buffer_len(&self) -> usize {
        self.max_datagram()
    }

    /// Sends one datagram, gathered from `iov`, to `to` (a link with one peer ignores it).
    /// A datagram the link cannot take now is lost, as on a network: the protocol recovers it.
    fn send(&self, to: &Self::Addr, iov: &[IoSlice<'_>]) -> io::Result<()>;

    /// Whether a send costs no system call and never waits (a shared-memory ring), and copies
    /// every byte itself, so that a longer gather list costs it nothing more. A client then
    /// sends a blocking call's datagram under its state lock, as soon as the protocol has
    /// made it, and does the call's remaining bookkeeping after it has left; nothing is
    /// packed behind a header before such a send. A link whose send enters the kernel says
    /// no (the default): no thread holds the lock across a system call, and small segments
    /// are packed into one buffer, since the kernel pays for each entry of a gather list.
    fn cheap_send(&self) -> bool {
        false
    }

    /// [`Link::send`] from the thread that owns `rx`: a link whose receiver holds what a send
    /// to a peer needs (a shared-memory server's connections) finds it there, with no lock
    /// on the link's own table. The default ignores `rx`.
    fn send_from(&self, rx: &Self::Rx, to: &Self::Addr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        let _ = rx;
        self.send(to, iov)
    }

    /// Sends a datagram its peer waits for with nothing else of this side's to do: a call
    /// alone in flight, or its reply (`Transmit::awaited`, `ReplyPlan::awaited` of rpc-core),
    /// from the thread that owns `rx` if given. A link that can hand such a datagram over
    /// sooner does so (a shared-memory ring demotes its cache lines towards the peer, which
    /// would slow a peer busy with other datagrams); the default sends it as any other.
    fn send_awaited(
        &self,
        rx: Option<&Self::Rx>,
        to: &Self::Addr,
        iov: &[IoSlice<'_>],
    ) -> io::Result<()> {
        match rx {
            Some(rx) => self.send_from(rx, to, iov),
            None => self.send(to, iov),
        }
    }

    /// Sends several datagrams, each a gather list and its destination, in as few system
    /// calls as the link can; returns how many it took.
    fn send_many(&self, datagrams: &[(Self::Addr, &[IoSlice<'_>])]) -> io::Result<usize> {
        for (i, (to, iov)) in datagrams.iter().enumerate() {
            if let Err(e) = self.send(to, iov) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(datagrams.len())
    }

    /// Receives what has arrived, up to `batch.limit()` datagrams, without waiting: `Ok(0)`
    /// when nothing has. Errors that only report a lost datagram (an ICMP error, say) are
    /// returned too; the caller counts them and goes on.
    fn recv(&self, rx: &mut Self::Rx, batch: &mut RecvBatch<Self::Addr>) -> io::Result<usize>;

    /// Blocks until a datagram may have arrived, or `deadline` (at most `cap` from now).
    fn wait(
        &self,
        rx: &mut Self::Rx,
        deadline: Option<Instant>,
        cap: std::time::Duration,
    ) -> io::Result<()>;

    /// Called by the thread that will drive the link (a server's receive thread) before it
    /// receives: a link whose kernel interface is bound to one thread binds to this one.
    fn attach(&self) {}

    /// Called by the driving thread when it is done with the link (a server's receive thread
    /// as it ends): the link lets go of what the kernel holds.
    fn close(&self) {}

    /// A descriptor that becomes readable when a datagram arrives (a duplicate the caller
    /// owns), for a reactor to watch; `None` if the link has none.
    fn reactor_fd(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// Buffers a link receives into: a fixed number, each as large as the largest datagram, so a
/// receive allocates nothing. A buffer can be taken out (handed to a worker, or to the waiter of
/// a call) and is replaced by a spare.
#[derive(Debug)]
pub struct RecvBatch<A> {
    bufs: Vec<Vec<u8>>,
    starts: Vec<usize>,
    lens: Vec<usize>,
    from: Vec<Option<A>>,
    count: usize,
    limit: usize,
    buffer_len: usize,
    spares: Vec<Vec<u8>>,
}

impl<A: Copy> RecvBatch<A> {
    /// `capacity` buffers of `buffer_len` bytes.
    pub fn new(capacity: usize, buffer_len: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            bufs: (0..capacity).map(|_| vec![0u8; buffer_len]).collect(),
            starts: vec![0; capacity],
            lens: vec![0; capacity],
            from: vec![None; capacity],
            count: 0,
            limit: capacity,
            buffer_len,
            spares: Vec::new(),
        }
    }

    /// How many datagrams the next receive may take (at least 1).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Limits the next receives to `n` datagrams (a driver expecting one datagram receives
    /// one, which costs the kernel less).
    pub fn set_limit(&mut self, n: usize) {
        self.limit = n.clamp(1, self.bufs.len());
    }

    /// Datagrams received by the last receive.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last receive, and who sent it.
    pub fn get(&self, i: usize) -> Option<(&[u8], A)> {
        if i >= self.count {
            return None;
        }
        let from = self.from[i]?;
        let start = self.starts[i];
        Some((self.bufs[i].get(start..start + self.lens[i])?, from))
    }

    /// The whole buffer datagram `i` of the last receive lies in (at `start(i)..`).
    pub fn buffer(&self, i: usize) -> Option<&[u8]> {
        (i < self.count).then(|| self.bufs[i].as_slice())
    }

    /// Where datagram `i` starts in its buffer (0 unless the link's receive puts something
    /// before it, as io_uring's multishot receive puts the source address).
    pub fn start(&self, i: usize) -> usize {
        self.starts[i]
    }

    /// Moves datagram `i`'s buffer out (the datagram lies at `start(i)..`, `get(i)`'s length),
    /// putting a spare in its place.
    pub fn take(&mut self, i: usize) -> Vec<u8> {
        let spare = self
            .spares
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buffer_len]);
        std::mem::replace(&mut self.bufs[i], spare)
    }

    /// Gives a buffer back for reuse (one taken out before, or any large enough); false if
    /// the batch has spares enough (the buffer is dropped).
    pub fn give(&mut self, mut buf: Vec<u8>) -> bool {
        if buf.capacity() >= self.buffer_len && self.spares.len() < self.bufs.len() {
            buf.resize(self.buffer_len, 0);
            self.spares.push(buf);
            true
        } else {
            false
        }
    }

    /// For links: the buffers to fill, up to the limit.
    pub fn slots(&mut self) -> impl Iterator<Item = &mut Vec<u8>> {
        let limit = self.limit;
        self.bufs.iter_mut().take(limit)
    }

    /// For links: records what the last receive put in the buffers, in order.
    pub fn filled(&mut self, received: impl IntoIterator<Item = (usize, A)>) {
        self.count = 0;
        for (len, from) in received.into_iter().take(self.limit) {
            self.starts[self.count] = 0;
            self.lens[self.count] = len;
            self.from[self.count] = Some(from);
            self.count += 1;
        }
    }

    /// For links: a buffer to fill at `i`, with room for the largest datagram.
    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        let len = self.buffer_len;
        let b = &mut self.bufs[i];
        if b.len() < len {
            b.resize(len, 0);
        }
        &mut b[..]
    }

    /// For links that fill one buffer at a time: records buffer `i` (all below it being
    /// recorded already).
    pub fn set(&mut self, i: usize, len: usize, from: A) {
        self.starts[i] = 0;
        self.lens[i] = len;
        self.from[i] = Some(from);
        self.count = i + 1;
    }

    /// For links that receive into buffers of their own: puts `filled` at `i` (its datagram
    /// at `start..start + len`, all below `i` being recorded already) and returns the buffer
    /// it replaces, at least as long as the batch's buffers.
    pub fn exchange(
        &mut self,
        i: usize,
        filled: Vec<u8>,
        start: usize,
        len: usize,
        from: A,
    ) -> Vec<u8> {
        let mut old = std::mem::replace(&mut self.bufs[i], filled);
        if old.len() < self.buffer_len {
            old.resize(self.buffer_len, 0);
        }
        self.starts[i] = start;
        self.lens[i] = len;
        self.from[i] = Some(from);
        self.count = i + 1;
        old
    }

    /// For links: forgets what the last receive got.
    pub fn clear(&mut self) {
        self.count = 0;
    }
}
