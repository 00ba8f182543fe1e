//! The system calls on the hot path, made directly (rustix) rather than through libc.
//!
//! libc's `send`, `recv` and friends are thread-cancellation points: each call enables and
//! disables asynchronous cancellation around the system call, a hundred-odd instructions a
//! time that a busy-polling loop pays on every empty poll. These wrappers make the system call
//! itself, ask for non-blocking behaviour per call (`MSG_DONTWAIT`), and report "nothing
//! there" without building an `io::Error`.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

/// What a non-blocking receive found.
#[derive(Debug)]
pub(crate) enum Recv<T> {
    /// A datagram.
    Data(T),
    /// Nothing waiting.
    Empty,
    /// An error.
    Failed(io::Error),
}

fn failed<T>(e: Errno) -> Recv<T> {
    if e == Errno::WOULDBLOCK || e == Errno::INTR {
        Recv::Empty
    } else {
        Recv::Failed(e.into())
    }
}

/// Receives one datagram on a connected socket, without blocking. A datagram longer than
/// `buf` is cut to its length (and then fails to parse).
pub(crate) fn recv(socket: &UdpSocket, buf: &mut [u8]) -> Recv<usize> {
    match rustix::net::recv(socket, buf, RecvFlags::DONTWAIT) {
        Ok((n, _)) => Recv::Data(n),
        Err(e) => failed(e),
    }
}

/// Receives one datagram and its sender's address, without blocking.
pub(crate) fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> Recv<(usize, SocketAddr)> {
    match rustix::net::recvfrom(socket, buf, RecvFlags::DONTWAIT) {
        Ok((n, _, Some(addr))) => match SocketAddr::try_from(addr) {
            Ok(addr) => Recv::Data((n, addr)),
            // Not an IP address: not a datagram this socket can answer.
            Err(_) => Recv::Empty,
        },
        Ok((_, _, None)) => Recv::Empty,
        Err(e) => failed(e),
    }
}

/// Sends one buffer on a connected socket.
pub(crate) fn send(socket: &UdpSocket, buf: &[u8]) -> io::Result<()> {
    rustix::net::send(socket, buf, SendFlags::DONTWAIT)
        .map(|_| ())
        .map_err(Into::into)
}

/// Sends one buffer to `dest`.
pub(crate) fn send_to(socket: &UdpSocket, buf: &[u8], dest: &SocketAddr) -> io::Result<()> {
    rustix::net::sendto(socket, buf, SendFlags::DONTWAIT, dest)
        .map(|_| ())
        .map_err(Into::into)
}

/// Sends one datagram gathered from `iov` on a connected socket.
pub(crate) fn send_vectored(socket: &UdpSocket, iov: &[IoSlice<'_>]) -> io::Result<()> {
    let mut control = SendAncillaryBuffer::default();
    rustix::net::sendmsg(socket, iov, &mut control, SendFlags::DONTWAIT)
        .map(|_| ())
        .map_err(Into::into)
}

/// Sends one datagram gathered from `iov` to `dest`.
pub(crate) fn send_vectored_to(
    socket: &UdpSocket,
    iov: &[IoSlice<'_>],
    dest: &SocketAddr,
) -> io::Result<()> {
    let mut control = SendAncillaryBuffer::default();
    rustix::net::sendmsg_addr(socket, dest, iov, &mut control, SendFlags::DONTWAIT)
        .map(|_| ())
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_direct_calls() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(recv_from(&b, &mut buf), Recv::Empty));
        send(&a, b"one").unwrap();
        send_vectored(&a, &[IoSlice::new(b"tw"), IoSlice::new(b"o")]).unwrap();
        // Loopback delivers within the send call.
        let Recv::Data((n, from)) = recv_from(&b, &mut buf) else {
            panic!("no datagram")
        };
        assert_eq!((&buf[..n], from), (&b"one"[..], a.local_addr().unwrap()));
        let Recv::Data((n, _)) = recv_from(&b, &mut buf) else {
            panic!("no datagram")
        };
        assert_eq!(&buf[..n], b"two");
        send_vectored_to(
            &b,
            &[IoSlice::new(b"th"), IoSlice::new(b"ree")],
            &a.local_addr().unwrap(),
        )
        .unwrap();
        send_to(&b, b"four", &a.local_addr().unwrap()).unwrap();
        let Recv::Data(n) = recv(&a, &mut buf) else {
            panic!("no datagram")
        };
        assert_eq!(&buf[..n], b"three");
        let Recv::Data(n) = recv(&a, &mut buf) else {
            panic!("no datagram")
        };
        assert_eq!(&buf[..n], b"four");
        assert!(matches!(recv(&a, &mut buf), Recv::Empty));
    }
}
