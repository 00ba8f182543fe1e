//! Every `unsafe` of the io_uring link, and why each is sound.
//!
//! The kernel reads and writes memory named by the entries this module submits, outside the
//! borrow checker's sight, until their completions arrive. Three kinds of memory are named:
//!
//! 1. **A send's message header, address and gather list** (the caller's own memory: zero
//!    copy). They live on the stack of [`Ring::send`] / [`Ring::send_many`] and of its caller,
//!    and neither returns before every completion of its entries has been reaped (and, for a
//!    zero-copy send, its notification, which says the kernel let go of the pages). Nothing in
//!    between can unwind: the waiting loop calls only the ring and stores into a queue.
//!    A submission that fails in a way that might leave an entry behind aborts the process
//!    rather than return and free what it names.
//! 2. **The receive template** (`msghdr`, boxed, owned by the ring) and the **buffer ring**
//!    (an anonymous mapping, owned by the ring): named by the multishot receive and the
//!    registration. They are freed only after [`Ring::close`] has cancelled the receive, seen
//!    its last completion and unregistered the buffer ring, or after the ring's descriptor is
//!    closed with nothing ever submitted. Otherwise they are leaked, never freed early.
//! 3. **Receive buffers**: lent to the kernel through [`BufTable`], which keeps each until a
//!    completion names its buffer id (see `bufs.rs`); freed under the same rule as 2.
//!
//! Bytes the kernel wrote are read only through slices of buffers this process owns again,
//! parsed with bounds checks (`RecvMsgOut::parse`, then the wire views).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use arrayvec::ArrayVec;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use memmap2::MmapMut;

use super::UringError;
use super::bufs::BufTable;
use crate::link::RecvBatch;

/// The multishot receive's `user_data`.
const RECV: u64 = 1;
/// The cancellation of the receive.
const CANCEL: u64 = 2;
/// Sends: `SEND_BASE` and up, one per entry.
const SEND_BASE: u64 = 1 << 32;
/// The buffer group of the receive buffers.
const BGID: u16 = 0;
/// Bytes of a buffer ring entry (`struct io_uring_buf`).
const ENTRY: usize = 16;
/// Room for the source address in a received buffer: the receive template's name length.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// What a multishot `RecvMsg` puts before the datagram: `struct io_uring_recvmsg_out`, then
/// the name.
pub const RECV_OVERHEAD: usize = 16 + NAME_LEN;
/// Datagrams sent per submission at most.
pub(crate) const SEND_BATCH: usize = 32;

/// How the ring is set up.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    /// Submission queue entries.
    pub(crate) entries: u32,
    /// Receive buffers (a power of two).
    pub(crate) buffers: u16,
    /// Each receive buffer's length (the largest datagram and `RECV_OVERHEAD`).
    pub(crate) buffer_len: usize,
    /// One thread submits (DEFER_TASKRUN, SINGLE_ISSUER); it must call [`Ring::enable`] first.
    pub(crate) single_issuer: bool,
    /// Sends of at least this many bytes go zero-copy.
    pub(crate) zero_copy_from: Option<usize>,
}

/// How the ring was set up, as the kernel allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// DEFER_TASKRUN, SINGLE_ISSUER, TASKRUN_FLAG: completions are made when the one
    /// submitting thread enters the kernel, which it does when the flag says work waits.
    Deferred,
    /// COOP_TASKRUN, TASKRUN_FLAG: any thread submits; completions are made when the thread
    /// that armed the receive next enters the kernel.
    Cooperative,
}

/// One io_uring over one UDP socket: a multishot receive into a buffer ring, and sends.
pub(crate) struct Ring {
    // Field order is drop order: the ring's descriptor closes before the memory it may name
    // is freed (and `Drop` makes sure nothing is in flight by then).
    ring: IoUring,
    fd: RawFd,
    mode: Mode,
    /// The buffer ring: `buffers` entries of 16 bytes; the tail is the last entry's field at
    /// offset 14 of the first.
    bufring: MmapMut,
    mask: u16,
    tail: u16,
    table: BufTable,
    /// The receive template (only its name and control lengths matter).
    msghdr: Box<libc::msghdr>,
    armed: bool,
    /// The receive ended for good (cancelled, or the socket failed): not re-armed.
    closed: bool,
    /// A submission was refused by a ring this process can no longer trust: nothing more is
    /// submitted, and the memory it names is leaked at drop.
    poisoned: bool,
    /// Receive completions reaped while a send waited for its own.
    pending: VecDeque<(u64, i32, u32)>,
    next_send: u64,
    zero_copy_from: Option<usize>,
    /// Buffers the receive could not put back at once (the batch had none to exchange).
    spare: Vec<Vec<u8>>,
}

// SAFETY: the raw pointers inside (`msghdr`'s, and those the kernel holds) point into memory
// this value owns; it is used by one thread at a time (the link keeps it behind a mutex), and
// nothing in it is tied to the thread that made it (a single-issuer ring is only entered by
// the thread that enabled it: the link checks).
unsafe impl Send for Ring {}

fn setup_error(what: &'static str) -> impl FnOnce(io::Error) -> UringError {
    move |e| UringError::Unsupported { what, source: e }
}

impl Ring {
    /// Sets up a ring over `fd` (a UDP socket this ring's owner keeps open): probes what it
    /// needs, registers the buffer ring and lends it every buffer.
    pub(crate) fn new(fd: RawFd, setup: &Setup) -> Result<Self, UringError> {
        let (ring, mode) = build(setup)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(setup_error("probing operations (Linux 5.6)"))?;
        for (code, what) in [
            (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
            (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                return Err(UringError::Missing(what));
            }
        }
        if setup.zero_copy_from.is_some() && !probe.is_supported(opcode::SendMsgZc::CODE) {
            return Err(UringError::Missing("IORING_OP_SENDMSG_ZC (Linux 6.1)"));
        }
        let n = setup.buffers;
        assert!(n.is_power_of_two() && n <= 1 << 15, "buffer count");
        let bufring = MmapMut::map_anon(usize::from(n) * ENTRY)
            .map_err(setup_error("mapping the buffer ring"))?;
        // SAFETY: the mapping is page-aligned, `n` entries long, and lives in this `Ring`
        // until `close` unregisters it or the ring's descriptor is closed (field order).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufring.as_ptr() as u64, n, BGID, 0)
                .map_err(setup_error("provided buffer rings (Linux 5.19)"))?;
        }
        let mut msghdr: Box<libc::msghdr> = Box::new(
            // SAFETY: `msghdr` is plain data; all zeroes is a valid (empty) header.
            unsafe { std::mem::zeroed() },
        );
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut this = Self {
            ring,
            fd,
            mode,
            bufring,
            mask: n - 1,
            tail: 0,
            table: BufTable::new(usize::from(n), setup.buffer_len),
            msghdr,
            armed: false,
            closed: false,
            poisoned: false,
            pending: VecDeque::with_capacity(256),
            next_send: SEND_BASE,
            zero_copy_from: setup.zero_copy_from,
            spare: Vec::new(),
        };
        for bid in 0..n {
            this.provide(bid, vec![0u8; setup.buffer_len]);
        }
        this.publish();
        Ok(this)
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Makes the calling thread the ring's one submitter (a single-issuer ring is set up
    /// disabled, so that the thread that will drive it, not the one that made it, submits).
    pub(crate) fn enable(&mut self) -> io::Result<()> {
        self.ring.submitter().register_enable_rings()
    }

    /// Writes a buffer into the next ring entry (published by `publish`).
    fn provide(&mut self, bid: u16, buf: Vec<u8>) {
        match self.table.lend(bid, buf) {
            Ok(lent) => {
                let i = usize::from(self.tail & self.mask);
                let base = self.bufring.as_mut_ptr();
                // SAFETY: entry `i` lies inside the mapping (`i < n`, 16 bytes each). Only
                // its `addr`, `len` and `bid` fields are written (offsets 0, 8, 12), never the
                // tail at offset 14 of entry 0, which the kernel reads; the kernel reads an
                // entry only below the tail this process publishes after writing it.
                unsafe {
                    let e = base.add(i * ENTRY);
                    e.cast::<u64>().write_unaligned(lent.addr);
                    e.add(8).cast::<u32>().write_unaligned(lent.len);
                    e.add(12).cast::<u16>().write_unaligned(lent.bid);
                }
                self.tail = self.tail.wrapping_add(1);
            }
            Err(buf) => self.spare.push(buf),
        }
    }

    /// Publishes the entries written since the last time (release: the kernel sees them
    /// whole).
    fn publish(&mut self) {
        let base = self.bufring.as_mut_ptr();
        // SAFETY: the tail is the 2-byte field at offset 14 of the first entry, inside the
        // mapping and aligned to 2 (the mapping is page-aligned); the kernel only reads it,
        // this process only writes it, through this atomic.
        let tail = unsafe { &*base.add(14).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Arms the multishot receive, if it is not (submitted with the next entry to the kernel).
    fn arm(&mut self) {
        if self.armed || self.closed || self.poisoned {
            return;
        }
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.msghdr, BGID)
            .build()
            .user_data(RECV);
        // SAFETY: the template lives in `self.msghdr` (boxed, never moved or freed while the
        // receive may run: see the module notes); its buffers come from the buffer group.
        if unsafe { self.push(&entry) } {
            self.armed = true;
        }
    }

    /// Pushes one entry, making room by submitting if the queue is full. False if the ring is
    /// poisoned.
    ///
    /// # Safety
    ///
    /// Whatever `entry` names must stay valid until its completions are reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        loop {
            if self.poisoned {
                return false;
            }
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            self.enter(0);
        }
    }

    /// Enters the kernel: submits what is queued and waits for `want` completions (none:
    /// only runs the work that makes them). Retries what is transient; a ring that refuses
    /// entries otherwise is poisoned.
    fn enter(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // The completion queue is full: make room, then go on.
                    Some(libc::EAGAIN | libc::EBUSY) => {
                        self.drain_to_pending();
                        if want == 0 {
                            return;
                        }
                    }
                    _ => {
                        self.poison(&e);
                        return;
                    }
                },
            }
        }
    }

    fn poison(&mut self, e: &io::Error) {
        if !self.poisoned {
            tracing::error!(error = %e, "io_uring refused a submission; the link stops");
            self.poisoned = true;
        }
    }

    /// Moves every completion in the queue to `pending`.
    fn drain_to_pending(&mut self) {
        for c in self.ring.completion() {
            self.pending
                .push_back((c.user_data(), c.result(), c.flags()));
        }
    }

    /// Whether the kernel has completions to make that need this thread to enter it.
    fn work_waiting(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow() || !sq.is_empty()
    }

    /// Receives into `batch` what has arrived, up to its limit, without waiting.
    pub(crate) fn recv(
        &mut self,
        batch: &mut RecvBatch<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> io::Result<usize> {
        batch.clear();
        let limit = batch.limit();
        let mut got = 0;
        let mut error = None;
        while got < limit {
            let Some(c) = self.pending.pop_front() else {
                break;
            };
            self.on_completion(c, batch, peer, &mut got, &mut error);
        }
        if got < limit {
            if !self.armed {
                self.arm();
            }
            if self.ring.completion().is_empty() && self.work_waiting() {
                self.enter(0);
            }
            let mut reaped: ArrayVec<(u64, i32, u32), 64> = ArrayVec::new();
            {
                let mut cq = self.ring.completion();
                while reaped.len() < limit - got {
                    let Some(c) = cq.next() else { break };
                    reaped.push((c.user_data(), c.result(), c.flags()));
                }
            }
            for c in reaped {
                self.on_completion(c, batch, peer, &mut got, &mut error);
            }
        }
        self.publish();
        if !self.armed {
            // Ended (out of buffers, or an error): armed again now that buffers are back, and
            // submitted with the next entry.
            self.arm();
            self.enter(0);
        }
        match error {
            Some(e) if got == 0 => Err(e),
            _ => Ok(got),
        }
    }

    fn on_completion(
        &mut self,
        (user_data, result, flags): (u64, i32, u32),
        batch: &mut RecvBatch<SocketAddr>,
        peer: Option<SocketAddr>,
        got: &mut usize,
        error: &mut Option<io::Error>,
    ) {
        if user_data != RECV {
            // A cancellation's own completion, or a send's stray one: nothing to do.
            return;
        }
        if !cqueue::more(flags) {
            self.armed = false;
        }
        if result < 0 {
            match -result {
                // Out of buffers: armed again once they are back.
                libc::ENOBUFS => {}
                libc::ECANCELED => self.closed = true,
                e => *error = Some(io::Error::from_raw_os_error(e)),
            }
            return;
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            return;
        };
        let Some(buf) = self.table.reclaim(bid) else {
            return;
        };
        let filled = usize::try_from(result).unwrap_or(0).min(buf.len());
        let parsed = types::RecvMsgOut::parse(&buf[..filled], &self.msghdr)
            .ok()
            .filter(|out| !out.is_payload_truncated() && !out.is_name_data_truncated())
            .and_then(|out| {
                let from = peer.or_else(|| sockaddr(out.name_data()))?;
                let start = out.payload_data().as_ptr() as usize - buf.as_ptr() as usize;
                Some((start, out.payload_data().len(), from))
            });
        let Some((start, len, from)) = parsed else {
            // Truncated or unreadable: dropped, the buffer lent again.
            self.provide(bid, buf);
            return;
        };
        let old = batch.exchange(*got, buf, start, len, from);
        *got += 1;
        self.provide(bid, old);
    }

    /// Sends one datagram gathered from `iov` (to `to`, unless the socket is connected), and
    /// returns once the kernel is done with it.
    pub(crate) fn send(&mut self, to: Option<&SocketAddr>, iov: &[IoSlice<'_>]) -> io::Result<()> {
        let mut out = [Ok(())];
        self.send_each(&[(to, iov)], &mut out);
        let [r] = out;
        r
    }

    /// Sends several datagrams in one submission, each its gather list and destination;
    /// returns how many the kernel took.
    pub(crate) fn send_many(
        &mut self,
        datagrams: &[(Option<&SocketAddr>, &[IoSlice<'_>])],
    ) -> io::Result<usize> {
        let mut sent = 0;
        for chunk in datagrams.chunks(SEND_BATCH) {
            let mut results: ArrayVec<io::Result<()>, SEND_BATCH> =
                chunk.iter().map(|_| Ok(())).collect();
            self.send_each(chunk, &mut results);
            for r in results {
                match r {
                    Ok(()) => sent += 1,
                    Err(e) if sent == 0 => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(sent)
    }

    /// Submits a send per datagram (at most `SEND_BATCH`), waits for them all, and records
    /// each one's result.
    fn send_each(
        &mut self,
        datagrams: &[(Option<&SocketAddr>, &[IoSlice<'_>])],
        results: &mut [io::Result<()>],
    ) {
        debug_assert!(datagrams.len() <= SEND_BATCH && results.len() == datagrams.len());
        if self.poisoned {
            for r in results.iter_mut() {
                *r = Err(io::Error::other("io_uring link stopped"));
            }
            return;
        }
        // Addresses and headers, in arrays that do not move until every send completed.
        let names: ArrayVec<Option<socket2::SockAddr>, SEND_BATCH> = datagrams
            .iter()
            .map(|(to, _)| to.map(|a| socket2::SockAddr::from(*a)))
            .collect();
        let mut headers: ArrayVec<libc::msghdr, SEND_BATCH> = ArrayVec::new();
        for ((_, iov), name) in datagrams.iter().zip(&names) {
            // SAFETY: `msghdr` is plain data; all zeroes is a valid (empty) header.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            if let Some(name) = name {
                h.msg_name = name.as_ptr() as *mut libc::c_void;
                h.msg_namelen = name.len();
            }
            // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix.
            h.msg_iov = iov.as_ptr() as *mut libc::iovec;
            h.msg_iovlen = iov.len() as _;
            headers.push(h);
        }
        let first = self.next_send;
        self.next_send += datagrams.len() as u64;
        // Zero-copy sends complete twice: the send, then a notification that the kernel let
        // go of the pages. `waits[i]` counts what is still to come for send `i`.
        let mut waits: ArrayVec<u8, SEND_BATCH> = ArrayVec::new();
        for (i, (h, (_, iov))) in headers.iter().zip(datagrams).enumerate() {
            let len: usize = iov.iter().map(|s| s.len()).sum();
            let zc = self.zero_copy_from.is_some_and(|from| len >= from);
            let entry = if zc {
                opcode::SendMsgZc::new(types::Fd(self.fd), h).build()
            } else {
                opcode::SendMsg::new(types::Fd(self.fd), h).build()
            }
            .user_data(first + i as u64);
            // SAFETY: the header, its address (in `names`) and the gather list (the caller's,
            // borrowed for this call) all outlive the loop below, which does not end before
            // every completion of these entries has been reaped. If the ring is poisoned
            // before the entry is pushed, the send is reported failed and nothing is named.
            if unsafe { self.push(&entry) } {
                waits.push(1 + u8::from(zc));
            } else {
                waits.push(0);
                results[i] = Err(io::Error::other("io_uring link stopped"));
            }
        }
        let mut left: usize = waits.iter().map(|&w| usize::from(w)).sum();
        let ours = first..first + datagrams.len() as u64;
        while left > 0 {
            self.enter(1);
            if self.poisoned {
                // Entries may still be in the kernel's hands, naming this frame's memory:
                // returning would free it under the kernel. There is no safe way on.
                eprintln!("io_uring refused a submission with sends in flight; aborting");
                std::process::abort();
            }
            // Completions a full queue pushed aside while entering.
            let mut k = 0;
            while k < self.pending.len() {
                if ours.contains(&self.pending[k].0) {
                    if let Some(c) = self.pending.remove(k) {
                        left -= account(c, first, &mut waits, results);
                    }
                } else {
                    k += 1;
                }
            }
            for c in self.ring.completion() {
                let c = (c.user_data(), c.result(), c.flags());
                if ours.contains(&c.0) {
                    left -= account(c, first, &mut waits, results);
                } else {
                    self.pending.push_back(c);
                }
            }
        }
    }

    /// Waits in the kernel until a completion may have come, or `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if !self.pending.is_empty() || !self.ring.completion().is_empty() || self.poisoned {
            return Ok(());
        }
        if !self.armed {
            self.arm();
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                self.drain_to_pending();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the receive and waits for its last completion, then unregisters the buffer ring:
    /// from then on the kernel names none of this ring's memory. Only the submitting thread
    /// of a single-issuer ring may call it. False if that could not be made sure.
    pub(crate) fn close(&mut self) -> bool {
        if self.poisoned {
            return false;
        }
        if self.armed {
            let entry = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
            // SAFETY: a cancellation names no memory.
            if !unsafe { self.push(&entry) } {
                return false;
            }
            let mut rounds = 0;
            while self.armed && !self.poisoned {
                rounds += 1;
                if rounds > 1_000 {
                    return false;
                }
                let ts = types::Timespec::from(Duration::from_millis(5));
                let args = types::SubmitArgs::new().timespec(&ts);
                if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) {
                        return false;
                    }
                }
                for c in self.ring.completion() {
                    if c.user_data() == RECV && !cqueue::more(c.flags()) {
                        self.armed = false;
                    }
                    // Buffers filled before the cancellation: taken back (dropped with the
                    // table).
                    if c.user_data() == RECV {
                        if let Some(bid) = cqueue::buffer_select(c.flags()) {
                            drop(self.table.reclaim(bid));
                        }
                    }
                }
            }
            // Completions reaped earlier by sends, naming buffers.
            for (ud, _, flags) in self.pending.drain(..) {
                if ud == RECV {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        drop(self.table.reclaim(bid));
                    }
                }
            }
        }
        self.closed = true;
        if self.ring.submitter().unregister_buf_ring(BGID).is_err() {
            return false;
        }
        // The kernel names no buffer now.
        self.table.reclaim_all().for_each(drop);
        true
    }

    /// Receive buffers the kernel holds (for tests and counters).
    pub(crate) fn lent(&self) -> usize {
        self.table.lent_count()
    }

    /// Buffer ids of the buffer ring.
    pub(crate) fn buffer_ids(&self) -> usize {
        self.table.ids()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Sends never outlive their call, so only the receive can be in flight. If it is not,
        // closing the descriptor (the first field dropped) before the memory goes is enough.
        if !self.armed && !self.poisoned {
            return;
        }
        // A cooperative ring can be closed from any thread; a single-issuer one only from its
        // own (the link closes it there).
        if self.mode == Mode::Cooperative && self.close() {
            return;
        }
        tracing::warn!("io_uring link dropped with its receive in flight: its buffers leak");
        std::mem::forget(std::mem::replace(&mut self.table, BufTable::new(1, 0)));
        if let Ok(empty) = MmapMut::map_anon(1) {
            std::mem::forget(std::mem::replace(&mut self.bufring, empty));
        } else {
            // No way to keep the mapping alive other than never dropping this value's parts.
            std::process::abort();
        }
        std::mem::forget(std::mem::replace(
            &mut self.msghdr,
            // SAFETY: plain data, as above.
            Box::new(unsafe { std::mem::zeroed() }),
        ));
    }
}

/// Counts a completion of send `first + i`: returns how many of the completions awaited it
/// settles (a zero-copy send completes twice, unless it failed or needed no pages).
fn account(
    (ud, result, flags): (u64, i32, u32),
    first: u64,
    waits: &mut [u8],
    results: &mut [io::Result<()>],
) -> usize {
    let i = (ud - first) as usize;
    if waits[i] == 0 {
        return 0;
    }
    if cqueue::notif(flags) {
        waits[i] -= 1;
        return 1;
    }
    if result < 0 {
        results[i] = Err(io::Error::from_raw_os_error(-result));
    }
    waits[i] -= 1;
    if waits[i] > 0 && !cqueue::more(flags) {
        waits[i] = 0;
        return 2;
    }
    1
}

/// The ring, set up the best way this kernel allows.
fn build(setup: &Setup) -> Result<(IoUring, Mode), UringError> {
    let entries = setup.entries.max(2 * SEND_BATCH as u32);
    if setup.single_issuer {
        let mut b = IoUring::builder();
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .setup_cqsize(entries * 4);
        if let Ok(ring) = b.build(entries) {
            return Ok((ring, Mode::Deferred));
        }
    }
    let mut b = IoUring::builder();
    b.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(entries * 4);
    match b.build(entries) {
        Ok(ring) => Ok((ring, Mode::Cooperative)),
        Err(e) => Err(UringError::Unsupported {
            what: "io_uring_setup with COOP_TASKRUN and TASKRUN_FLAG (Linux 5.19)",
            source: e,
        }),
    }
}

/// A source address from the bytes of a `sockaddr_in` or `sockaddr_in6`.
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let flow = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                port,
                u32::from_be(flow),
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_parse_from_their_bytes() {
        let v4 = socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 4242)));
        // SAFETY: the address's storage is `len()` bytes long.
        let bytes =
            unsafe { std::slice::from_raw_parts(v4.as_ptr().cast::<u8>(), v4.len() as usize) };
        assert_eq!(
            sockaddr(bytes),
            Some(SocketAddr::from(([127, 0, 0, 1], 4242)))
        );
        let a6: SocketAddr = "[::1]:7".parse().unwrap();
        let v6 = socket2::SockAddr::from(a6);
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts(v6.as_ptr().cast::<u8>(), v6.len() as usize) };
        assert_eq!(sockaddr(bytes), Some(a6));
        assert_eq!(sockaddr(&[1, 2, 3]), None);
        assert_eq!(sockaddr(&[]), None);
    }
}
