//! Kernel UDP: [`UdpLink`] under the shared client driver and server loop, as [`UdpClient`]
//! and [`UdpServer`].

mod link;
mod sockets;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use link::{Io, UdpLink};
use rpc_core::{ClientConfig, LamportClock, ServerConfig};
pub(crate) use sockets::send_plain;
pub use sockets::{MMSG, SocketLink};

pub use crate::client::ConnectError;
use crate::client::{Client, ClientParts};
use crate::poll::PollStrategy;
pub use crate::server::ServerCounters;
use crate::server::{Server, ServerOptions};
use crate::sock::bind_udp;

/// A client of one server over UDP: a connected socket. Clone it freely: clones share the
/// session, and any number of threads and futures may call through it at once.
pub type UdpClient = Client<UdpLink>;

/// A running UDP server. Dropping it shuts it down.
pub type ServerHandle = crate::server::ServerHandle<UdpLink>;

/// Configuration of a [`UdpClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpClientConfig {
    /// Protocol settings: datagram and message sizes, calls in flight, retransmission timeouts
    /// and the default deadline.
    pub protocol: ClientConfig,
    /// How waiting threads wait.
    pub poll: PollStrategy,
    /// How long [`UdpClient::connect`] waits for the server to open a session.
    pub connect_timeout: Duration,
    /// Kernel send and receive buffer size to ask for, in bytes.
    pub socket_buffer: usize,
    /// How the socket reaches the kernel: plain system calls (the default) or io_uring.
    pub io: Io,
    /// Threads admitted into blocking calls at once; the others wait their turn parked, in
    /// order. More threads than this would only take turns of the cores from the thread that
    /// leads the link. 0 (the default): twice the CPUs the connecting thread may run on.
    pub calling_threads: usize,
}

impl Default for UdpClientConfig {
    fn default() -> Self {
        Self {
            protocol: ClientConfig::default(),
            poll: PollStrategy::default(),
            connect_timeout: Duration::from_secs(2),
            socket_buffer: 4 << 20,
            io: Io::Sockets,
            calling_threads: 0,
        }
    }
}

impl UdpClientConfig {
    /// Settings for loopback: 64 KiB datagrams.
    pub fn loopback() -> Self {
        let mut c = Self::default();
        c.protocol.max_datagram = rpc_core::config::MAX_UDP_PAYLOAD;
        c
    }

    /// With this poll strategy.
    pub fn poll(mut self, poll: PollStrategy) -> Self {
        self.poll = poll;
        self
    }

    /// Reaching the kernel this way.
    pub fn io(mut self, io: Io) -> Self {
        self.io = io;
        self
    }
}

impl Client<UdpLink> {
    /// Connects to `server`: opens a socket, and opens a session with the server (waiting up
    /// to the configured connect timeout). The client has a Lamport clock of its own; clients
    /// and servers of one process that should share one are made by a [`crate::Node`].
    pub fn connect(server: SocketAddr, config: UdpClientConfig) -> Result<Self, ConnectError> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::connect_on(crate::node::new_clock(id), server, config)
    }

    /// Connects as [`UdpClient::connect`] does, stamping with `clock` (whose node id is the
    /// client's id).
    pub(crate) fn connect_on(
        clock: Arc<LamportClock>,
        server: SocketAddr,
        config: UdpClientConfig,
    ) -> Result<Self, ConnectError> {
        // A server on this host is reached from the loopback address itself; any other from
        // whichever address the routes choose.
        let local: SocketAddr = match server {
            SocketAddr::V4(a) if a.ip().is_loopback() => (*a.ip(), 0).into(),
            SocketAddr::V6(a) if a.ip().is_loopback() => (*a.ip(), 0).into(),
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => ([0u16; 8], 0).into(),
        };
        config.protocol.validate()?;
        let socket = bind_udp(local, false, config.socket_buffer)?;
        socket.connect(server)?;
        let incarnation = getrandom::u32().map_err(io::Error::other)?;
        let max_datagram = config.protocol.max_datagram;
        let core =
            rpc_core::client::Client::new(config.protocol, clock.node(), incarnation, clock)?;
        let link = UdpLink::open(socket, Some(server), max_datagram, &config.io)?;
        let parts = ClientParts {
            core,
            poll: config.poll,
            calling_threads: config.calling_threads,
        };
        Self::open(link, server, parts, config.connect_timeout)
    }

    /// This client's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.link().socket().local_addr()
    }
}

/// Configuration of a [`UdpServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpServerConfig {
    /// Protocol settings: sizes, session and cache bounds, timeouts.
    pub protocol: ServerConfig,
    /// How receive threads wait.
    pub poll: PollStrategy,
    /// Receive threads, each with its own socket on the same port (SO_REUSEPORT). Default 1.
    pub receivers: usize,
    /// Worker threads for blocking handlers, created at start. Default 2.
    pub workers: usize,
    /// Calls waiting for a worker; beyond this the server answers busy. Default 1024.
    pub worker_queue: usize,
    /// Kernel send and receive buffer size to ask for, in bytes.
    pub socket_buffer: usize,
    /// CPUs to pin receive threads to (thread `i` to `cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    /// At shutdown, how long the server goes on receiving after it stopped taking new calls,
    /// answering them `ShuttingDown` (not executed) so that callers learn at once. Default
    /// 50 ms (skipped when no session is open).
    pub drain: Duration,
    /// At shutdown, how long to wait for the calls being executed to finish and their replies
    /// to leave. Default 5 s.
    pub shutdown_timeout: Duration,
    /// How the sockets reach the kernel: plain system calls (the default) or io_uring.
    pub io: Io,
}

impl Default for UdpServerConfig {
    fn default() -> Self {
        Self {
            protocol: ServerConfig::default(),
            poll: PollStrategy::default(),
            receivers: 1,
            workers: 2,
            worker_queue: 1024,
            socket_buffer: 8 << 20,
            cpus: Vec::new(),
            drain: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(5),
            io: Io::Sockets,
        }
    }
}

impl UdpServerConfig {
    /// Settings for loopback: 64 KiB datagrams.
    pub fn loopback() -> Self {
        let mut c = Self::default();
        c.protocol.max_datagram = rpc_core::config::MAX_UDP_PAYLOAD;
        c
    }

    /// With this poll strategy.
    pub fn poll(mut self, poll: PollStrategy) -> Self {
        self.poll = poll;
        self
    }

    /// Pinning receive threads to these CPUs.
    pub fn pin(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = cpus;
        self
    }

    /// Reaching the kernel this way.
    pub fn io(mut self, io: Io) -> Self {
        self.io = io;
        self
    }
}

/// A UDP server whose sockets are bound but which does not serve yet.
#[derive(Debug)]
pub struct UdpServer {
    server: Server<UdpLink>,
    local_addr: SocketAddr,
}

impl UdpServer {
    /// Binds the server's sockets to `addr` (port 0 picks a free port). The server has a
    /// Lamport clock of its own; clients and servers of one process that should share one are
    /// made by a [`crate::Node`].
    pub fn bind(addr: SocketAddr, config: UdpServerConfig) -> io::Result<Self> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Self::bind_on(crate::node::new_clock(id), addr, config)
    }

    /// Binds as [`UdpServer::bind`] does, stamping with `clock`.
    pub(crate) fn bind_on(
        clock: Arc<LamportClock>,
        addr: SocketAddr,
        config: UdpServerConfig,
    ) -> io::Result<Self> {
        config
            .protocol
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if config.receivers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one receive thread",
            ));
        }
        let reuse = config.receivers > 1;
        let first = bind_udp(addr, reuse, config.socket_buffer)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..config.receivers {
            sockets.push(bind_udp(local_addr, true, config.socket_buffer)?);
        }
        let max_datagram = config.protocol.max_datagram;
        let links = sockets
            .into_iter()
            .map(|s| UdpLink::open(s, None, max_datagram, &config.io))
            .collect::<Result<Vec<_>, _>>()?;
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
            server: Server::new(links, options, clock)?,
            local_addr,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the receive threads and the worker pool, serving `dispatch` (a generated
    /// `{Trait}Server`, or a `Router` of several).
    ///
    /// Refuses (`InvalidInput`) a service with blocking methods and no worker to run them.
    pub fn serve(
        self,
        dispatch: impl rpc_core::service::Dispatch + 'static,
    ) -> io::Result<ServerHandle> {
        self.server.serve(dispatch)
    }
}

impl crate::server::ServerHandle<UdpLink> {
    /// Whether the receive threads' links are io_uring ones (as configured, unless the
    /// configuration let them fall back to plain sockets).
    pub fn uses_io_uring(&self) -> bool {
        self.receivers.iter().all(|rx| rx.link.uring().is_some())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.receivers
            .first()
            .and_then(|rx| rx.link.socket().local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}
