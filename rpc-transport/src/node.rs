//! A node: one Lamport clock for every client and server a process makes.
//!
//! Lamport's rules hold across a node only if all its messages are stamped by one clock: a
//! handler that makes a nested call must stamp it after the request it serves, and its reply
//! after the nested reply. A [`Node`] owns that clock and hands out clients and servers that
//! share it:
//!
//! ```no_run
//! use rpc_transport::Node;
//! use rpc_transport::udp::{UdpClientConfig, UdpServerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Node::new()?;
//! let backend = node.connect_udp("127.0.0.1:7001".parse()?, UdpClientConfig::default())?;
//! let server = node.bind_udp("127.0.0.1:7000".parse()?, UdpServerConfig::default())?;
//! // A handler holding `backend` (a clone of the client) calls through it: the nested request
//! // is stamped after the outer request's receipt, and the outer reply after the nested one.
//! # let _ = (backend, server);
//! # Ok(())
//! # }
//! ```
//!
//! A client or server made on its own (`UdpClient::connect`, `UdpServer::bind`) has a clock
//! of its own, as a process of its own would.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rpc_core::LamportClock;

use crate::udp::{ConnectError, UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};

/// One process's identity in the Lamport order: a node id and the clock every client and
/// server made from it shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Node {
    clock: Arc<LamportClock>,
}

impl Node {
    /// A node with a random id.
    pub fn new() -> io::Result<Self> {
        let id = getrandom::u64().map_err(io::Error::other)?;
        Ok(Self::with_id(id))
    }

    /// A node with this id (ids must differ between the nodes of a system: they break ties
    /// between equal stamps).
    pub fn with_id(id: u64) -> Self {
        Self {
            clock: new_clock(id),
        }
    }

    /// The node id: its clients' client id and its servers' Lamport node.
    pub fn id(&self) -> u64 {
        self.clock.node()
    }

    /// The node's Lamport clock, for the application's own events (ticks and observations)
    /// beside the framework's messages.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.clock
    }

    /// Connects a client to `server` stamped by this node's clock.
    pub fn connect_udp(
        &self,
        server: SocketAddr,
        config: UdpClientConfig,
    ) -> Result<UdpClient, ConnectError> {
        UdpClient::connect_on(self.clock.clone(), server, config)
    }

    /// Binds a server stamped by this node's clock.
    pub fn bind_udp(&self, addr: SocketAddr, config: UdpServerConfig) -> io::Result<UdpServer> {
        UdpServer::bind_on(self.clock.clone(), addr, config)
    }
}

/// A clock for node `id`, bounded by this machine's wall clock.
pub(crate) fn new_clock(id: u64) -> Arc<LamportClock> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Arc::new(LamportClock::new(id, unix, Instant::now()))
}
