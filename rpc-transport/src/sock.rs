//! Socket setup.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking UDP socket bound to `addr`, with large kernel buffers.
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    set_buffers(&socket, buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Asks for `bytes` of send and receive buffer: beyond the system's limit when the process is
/// privileged (SO_*BUFFORCE), up to it otherwise. Large messages arrive as bursts of
/// datagrams; a small receive buffer would drop most of a burst.
pub(crate) fn set_buffers(socket: &Socket, bytes: usize) {
    if bytes == 0 {
        return;
    }
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, bytes).is_err() {
        let _ = socket.set_recv_buffer_size(bytes);
    }
    if rustix::net::sockopt::set_socket_send_buffer_size_force(socket, bytes).is_err() {
        let _ = socket.set_send_buffer_size(bytes);
    }
}

/// Whether an error from a UDP send or receive only reports a lost datagram (for example an
/// ICMP port-unreachable from a server that is restarting) rather than a broken socket.
pub(crate) fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    ) || e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error())
}
