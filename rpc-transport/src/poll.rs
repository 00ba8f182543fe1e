//! How a thread waits for a datagram: spin, spin then park, or block.
//!
//! Spinning keeps the waiting thread on its core, so a reply is picked up within a few hundred
//! nanoseconds of its arrival; blocking costs a wake-up through the scheduler (tens of
//! microseconds across cores on the machines this was measured on), but leaves the core free.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// How a receiving thread waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStrategy {
    /// Busy-poll a non-blocking socket and never sleep: the lowest latency, one core per
    /// waiting thread.
    Spin,
    /// Spin for up to this long after the last datagram, then block until a datagram arrives
    /// or a timer is due: for machines with fewer cores than busy threads.
    SpinThenPark(Duration),
    /// Block at once.
    Block,
}

impl Default for PollStrategy {
    /// Spin for 50 µs, then park: round trips on a LAN fit in the spin, idle threads sleep.
    fn default() -> Self {
        Self::SpinThenPark(Duration::from_micros(50))
    }
}

impl PollStrategy {
    /// How many empty polls a spinning thread makes between two looks at the clock (for its
    /// timers and for deciding to park). Reading the clock on every poll would lengthen each
    /// turn of the loop, and so delay noticing an arriving datagram; every 16th poll is a few
    /// microseconds, well below any retransmission timeout.
    /// A power of two.
    pub(crate) fn clock_every(&self) -> u32 {
        match self {
            Self::Spin | Self::SpinThenPark(_) => 16,
            Self::Block => 1,
        }
    }

    /// Whether a thread that has spun since `since` should now block.
    pub fn should_block(&self, since: Instant, now: Instant) -> bool {
        match *self {
            Self::Spin => false,
            Self::SpinThenPark(budget) => now.saturating_duration_since(since) >= budget,
            Self::Block => true,
        }
    }
}

/// Blocks until `fd` is readable or `deadline` passes (at most `cap` from now). Returns whether
/// it is readable. Interrupted waits return `false`.
pub(crate) fn wait_readable(
    fd: impl AsFd,
    deadline: Option<Instant>,
    cap: Duration,
) -> io::Result<bool> {
    let now = Instant::now();
    let wait = deadline.map_or(cap, |d| d.saturating_duration_since(now).min(cap));
    let timeout = Timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
