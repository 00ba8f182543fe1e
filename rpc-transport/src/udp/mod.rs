//! Kernel UDP transport: [`UdpClient`] and [`UdpServer`].

mod client;
mod server;

pub use client::{ConnectError, UdpClient, UdpClientConfig};
pub use server::{ServerCounters, ServerHandle, UdpServer, UdpServerConfig};
