//! Kernel UDP as a [`Link`], through plain system calls ([`SocketLink`]) or io_uring
//! ([`UringLink`]), as the configuration's [`Io`] says.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::sockets::SocketLink;
use crate::link::{Link, RecvBatch};
use crate::uring::{UringConfig, UringError, UringLink};

/// How a UDP link reaches the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Io {
    /// Plain system calls: `send`/`sendmsg`/`sendmmsg`, `recv`/`recvmmsg` (the default).
    #[default]
    Sockets,
    /// io_uring: multishot receives into a buffer ring, sends batched into one submission.
    Uring(UringConfig),
}

/// A UDP socket as a link.
#[derive(Debug)]
pub struct UdpLink {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sockets(SocketLink),
    /// Boxed: a ring's state is large, and the plain link must stay small and hot.
    Uring(Box<UringLink>),
}

impl UdpLink {
    /// A link over `socket` (non-blocking), connected to `peer` if given, reaching the kernel
    /// as `io` says. An io_uring link the kernel cannot set up is an error, or (if its
    /// configuration allows) a plain one, logged; an invalid configuration is always an error.
    pub fn open(
        socket: UdpSocket,
        peer: Option<SocketAddr>,
        max_datagram: usize,
        io: &Io,
    ) -> Result<Self, UringError> {
        let kind = match io {
            Io::Sockets => Kind::Sockets(SocketLink::new(socket, peer, max_datagram)),
            Io::Uring(config) => match UringLink::new(socket, peer, max_datagram, config) {
                Ok(link) => Kind::Uring(Box::new(link)),
                Err((e, socket)) if config.fallback && !matches!(e, UringError::Config(_)) => {
                    tracing::warn!(error = %e, "io_uring unusable: falling back to plain sockets");
                    Kind::Sockets(SocketLink::new(socket, peer, max_datagram))
                }
                Err((e, _)) => return Err(e),
            },
        };
        Ok(Self { kind })
    }

    /// A link through plain system calls.
    pub fn new(socket: UdpSocket, peer: Option<SocketAddr>, max_datagram: usize) -> Self {
        Self {
            kind: Kind::Sockets(SocketLink::new(socket, peer, max_datagram)),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        match &self.kind {
            Kind::Sockets(l) => l.socket(),
            Kind::Uring(l) => l.socket(),
        }
    }

    /// The io_uring link, if this is one.
    pub fn uring(&self) -> Option<&UringLink> {
        match &self.kind {
            Kind::Uring(l) => Some(l),
            Kind::Sockets(_) => None,
        }
    }
}

macro_rules! each {
    ($self:ident, $l:ident => $e:expr) => {
        match &$self.kind {
            Kind::Sockets($l) => $e,
            Kind::Uring($l) => $e,
        }
    };
}

impl Link for UdpLink {
    type Addr = SocketAddr;
    type Rx = ();

    fn receiver(&self) {}

    fn max_datagram(&self) -> usize {
        each!(self, l => l.max_datagram())
    }

    fn recv_buffer_len(&self) -> usize {
        each!(self, l => l.recv_buffer_len())
    }

    #[inline]
    fn send(&self, to: &SocketAddr, iov: &[IoSlice<'_>]) -> io::Result<()> {
        each!(self, l => l.send(to, iov))
    }

    fn send_many(&self, datagrams: &[(SocketAddr, &[IoSlice<'_>])]) -> io::Result<usize> {
        each!(self, l => l.send_many(datagrams))
    }

    #[inline]
    fn recv(&self, rx: &mut (), batch: &mut RecvBatch<SocketAddr>) -> io::Result<usize> {
        each!(self, l => l.recv(rx, batch))
    }

    fn wait(&self, rx: &mut (), deadline: Option<Instant>, cap: Duration) -> io::Result<()> {
        each!(self, l => l.wait(rx, deadline, cap))
    }

    fn attach(&self) {
        each!(self, l => l.attach())
    }

    fn close(&self) {
        each!(self, l => l.close())
    }

    fn reactor_fd(&self) -> Option<OwnedFd> {
        each!(self, l => l.reactor_fd())
    }
}
