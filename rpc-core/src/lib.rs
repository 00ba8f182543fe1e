//! The protocol core of a low-latency RPC framework, in the sans-IO style.
//!
//! This crate holds the parts of the framework that do not need an operating system: the wire
//! format ([`wire`]), Lamport clocks ([`clock`]), the retransmission timer ([`rtt`]), and the
//! client and server state machines ([`client`], [`server`]). Transports (kernel UDP,
//! io_uring, shared memory) drive these state machines from the outside, feeding them time
//! and datagrams and carrying out the datagrams they ask to send.
//!
//! What this crate never does: make a system call, read a clock, draw from a global random
//! source, start a thread, use `unsafe`, panic on bytes from the network, or allocate memory
//! in proportion to a length a peer claims.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod marshal;
mod pool;
pub mod rtt;
pub mod server;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use body::Body;
pub use clock::{LamportClock, LamportStamp};
pub use config::{ClientConfig, ConfigError, ServerConfig};
pub use error::{CallError, DecodeError, RemoteError};

/// Items the generated code names; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use std::vec::Vec;
    pub use zerocopy;
}
