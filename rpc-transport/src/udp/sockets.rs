//! Kernel UDP through plain system calls: one non-blocking socket; batches of datagrams go
//! out with one `sendmmsg` and come in with one `recvmmsg`, and single datagrams with the
//! plain calls, which cost the kernel less.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::link::{Link, RecvBatch};
use crate::poll::wait_readable;
use crate::sys::{self, Recv};

/// Datagrams in one `recvmmsg` or `sendmmsg` at most.
pub const MMSG: usize = 32;

/// A UDP socket as a link, through plain system calls: connected to one peer (a client), or
/// not (a server).
#[derive(Debug)]
pub struct SocketLink {
    socket: UdpSocket,
    /// The peer of a connected socket.
    peer: Option<SocketAddr>,
    max_datagram: usize,
}

impl SocketLink {
    /// A link over `socket` (non-blocking), connected to `peer` if given.
    pub fn new(socket: UdpSocket, peer: Option<SocketAddr>, max_datagram: usize) -> Self {
        Self {
            socket,
            peer,
            max_datagram,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

/// Sends one datagram by plain system call: `send` (connected) or `sendto`, `sendmsg` for a
/// gather list of more than one buffer.
pub(crate) fn send_plain(
    socket: &UdpSocket,
    connected: bool,
    to: &SocketAddr,
    iov: &[IoSlice<'_>],
) -> io::Result<()> {
    match (connected, iov) {
        (true, [one]) => sys::send(socket, one),
        (true, _) => sys::send_vectored(socket, iov),
        (false, [one]) => sys::send_to(socket, one, to),
        (false, _) => sys::send_vectored_to(socket, iov, to),
    }
}

thread_local! {
    /// `recvmmsg`'s headers, kept by each receiving thread (they hold raw pointers, so they
    /// cannot be shared, and are allocated once).
    static HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

impl Link for SocketLink {
    type Addr = SocketAddr;
    type Rx = ();

    fn receiver(&self) {}

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn send(&self, to: &SocketAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        send_plain(&self.socket, self.peer.is_some(), to, iov)
    }

    fn send_many(&self, datagrams: &[(SocketAddr, &[IoSlice<'_>])]) -> io::Result<usize> {
        if datagrams.len() == 1 {
            let (to, iov) = &datagrams[0];
            return self.send(to, iov).map(|()| 1);
        }
        let mut sent = 0;
        for chunk in datagrams.chunks(MMSG) {
            let addrs: ArrayVec<SocketAddrAny, MMSG> =
                chunk.iter().map(|(to, _)| to.as_any()).collect();
            let mut controls: ArrayVec<SendAncillaryBuffer<'_, '_, '_>, MMSG> = chunk
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: ArrayVec<MMsgHdr<'_>, MMSG> = ArrayVec::new();
            for ((addr, control), (_, iov)) in addrs.iter().zip(controls.iter_mut()).zip(chunk) {
                msgs.push(if self.peer.is_some() {
                    MMsgHdr::new(iov, control)
                } else {
                    MMsgHdr::new_with_addr(addr, iov, control)
                });
            }
            match rustix::net::sendmmsg(&self.socket, &mut msgs, SendFlags::DONTWAIT) {
                Ok(n) => {
                    sent += n;
                    if n < chunk.len() {
                        return Ok(sent);
                    }
                }
                Err(e) if sent == 0 => return Err(e.into()),
                Err(_) => return Ok(sent),
            }
        }
        Ok(sent)
    }

    fn recv(&self, _: &mut (), batch: &mut RecvBatch<SocketAddr>) -> io::Result<usize> {
        batch.clear();
        if batch.limit() == 1 {
            // One datagram: the plain call.
            let got = match self.peer {
                Some(peer) => match sys::recv(&self.socket, batch.slot(0)) {
                    Recv::Data(n) => Recv::Data((n, peer)),
                    Recv::Empty => Recv::Empty,
                    Recv::Failed(e) => Recv::Failed(e),
                },
                None => sys::recv_from(&self.socket, batch.slot(0)),
            };
            return match got {
                Recv::Data((n, from)) => {
                    batch.set(0, n, from);
                    Ok(1)
                }
                Recv::Empty => Ok(0),
                Recv::Failed(e) => Err(e),
            };
        }
        let peer = self.peer;
        let fd = self.socket.as_raw_fd();
        let limit = batch.limit();
        let received: io::Result<ArrayVec<(usize, SocketAddr), MMSG>> = HEADERS.with(|cell| {
            let mut guard = cell.borrow_mut();
            let headers =
                guard.get_or_insert_with(|| MultiHeaders::preallocate(MMSG.max(limit), None));
            // A plain array (no drop glue): `recvmmsg` borrows it for as long as the buffers.
            let mut iovs: [[IoSliceMut<'_>; 1]; MMSG] =
                std::array::from_fn(|_| [IoSliceMut::new(&mut [])]);
            let mut count = 0;
            for (slot, buf) in iovs.iter_mut().zip(batch.slots()) {
                *slot = [IoSliceMut::new(&mut buf[..])];
                count += 1;
            }
            let slices = iovs[..count].iter_mut();
            match recvmmsg(fd, headers, slices, MsgFlags::MSG_DONTWAIT, None) {
                Ok(results) => Ok(results
                    .filter_map(|r| {
                        let from = r.address.as_ref().and_then(socket_addr).or(peer)?;
                        Some((r.bytes, from))
                    })
                    .collect()),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(ArrayVec::new()),
                Err(e) => Err(io::Error::from(e)),
            }
        });
        let received = received?;
        let n = received.len();
        batch.filled(received);
        Ok(n)
    }

    fn wait(&self, _: &mut (), deadline: Option<Instant>, cap: Duration) -> io::Result<()> {
        wait_readable(&self.socket, deadline, cap).map(|_| ())
    }

    fn reactor_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.socket.try_clone().ok().map(Into::into)
    }
}
