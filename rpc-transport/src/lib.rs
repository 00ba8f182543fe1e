//! Transports that drive the `rpc-core` state machines over real I/O.
//!
//! - [`udp`]: kernel UDP sockets. The client busy-polls (or spins then parks, or blocks), sends
//!   each datagram with one gather `sendmsg` from the caller's own memory, and multiplexes the
//!   calls of many threads over one session. The server runs short handlers to completion on
//!   its receiving threads and blocking ones on a worker pool.
//! - [`Node`]: one Lamport clock shared by the clients and servers of a process.
//! - [`proxy`]: a fault-injecting UDP proxy (loss, duplication, reordering, delay) for tests and
//!   demos, since this kernel has no netem.
//!
//! This crate is the only one with I/O, threads and clocks; the protocol lives in `rpc-core`.

pub mod client;
mod estimate;
pub mod exec;
mod gather;
pub mod link;
mod node;
pub mod poll;
pub mod proxy;
pub mod server;
pub mod shm;
mod sock;
mod sys;
mod timer;
#[cfg(feature = "tokio")]
mod tokio_driver;
mod turnstile;
pub mod udp;
pub mod uring;

pub use exec::{Completions, block_on, join_all};
pub use link::Link;
pub use node::Node;
pub use poll::PollStrategy;

/// Pins the calling thread to one CPU (for latency measurements: the benchmarks pin the client
/// to one core and the server to another).
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(Into::into)
}
