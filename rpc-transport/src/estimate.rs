//! A cheap reading of the clock that is never early, for the start of a call whose precise
//! reading can wait until its request has left.
//!
//! `Instant::now` costs about 17 ns on the machines this was measured on; the kernel's coarse
//! monotonic clock (the time of its last tick) costs about 4. The two clocks move together
//! (both are the kernel's monotonic time; the coarse one stops at each tick), so the coarse
//! clock's progress since one precise reading, taken at creation, plus the coarse clock's lag
//! at most (one tick), bounds the time from above; a second tick of slack covers the lag of
//! the reading at creation. The estimate is thus late by one to three ticks (4 to 12 ms at
//! 250 Hz), not early: only a tick the kernel runs late (a virtual machine paused past it)
//! makes it early, by that delay, and a call's timers are moved to a precise reading anyway.
//!
//! A shared-memory client starts a blocking call at this estimate (its idle-session check
//! only ever errs towards reopening a session a little early), sends the request, and only
//! then reads the clock precisely and moves the call's timers there (`Client::sent_at` of the
//! core).

use std::time::{Duration, Instant};

// Through libc, not rustix: rustix finds the vDSO itself, and that crashes under valgrind
// (rustix issue 1559), which users profile with.
use nix::time::{ClockId, clock_getres, clock_gettime};

/// Coarse ticks longer than this make the estimate useless: callers read the clock instead.
const LONGEST_TICK: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub(crate) struct Estimate {
    /// A precise reading, and the coarse clock's (nanoseconds) just after it.
    base: Instant,
    base_coarse: u64,
    /// Two ticks of the coarse clock; `None` if it ticks too slowly to be of use.
    ahead: Option<Duration>,
}

/// The coarse clock in nanoseconds (`None` if it cannot be read: then no estimate).
pub(crate) fn coarse() -> Option<u64> {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .ok()
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
}

impl Estimate {
    pub(crate) fn new() -> Self {
        let base = Instant::now();
        let base_coarse = coarse();
        let usable = base_coarse.is_some();
        // No resolution, no estimate.
        let tick = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::ZERO, |r| {
            Duration::new(
                r.tv_sec().max(0) as u64,
                r.tv_nsec().clamp(0, 999_999_999) as u32,
            )
        });
        Self {
            base,
            base_coarse: base_coarse.unwrap_or(0),
            ahead: (usable && !tick.is_zero() && tick <= LONGEST_TICK).then(|| tick * 2),
        }
    }

    /// An instant no earlier than now, and at most three coarse ticks later; `None` where the
    /// coarse clock is of no use (then read the clock).
    pub(crate) fn upper(&self) -> Option<Instant> {
        self.upper_at(coarse()?)
    }

    /// The estimate at a reading `coarse` of the coarse clock.
    fn upper_at(&self, coarse: u64) -> Option<Instant> {
        let ahead = self.ahead?;
        let since = Duration::from_nanos(coarse.saturating_sub(self.base_coarse));
        Some(self.base + since + ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_runs_two_ticks_ahead_of_the_coarse_clock_from_its_base() {
        let tick = Duration::from_millis(4);
        let base = Instant::now();
        let e = Estimate {
            base,
            base_coarse: 1_000_000_000,
            ahead: Some(tick * 2),
        };
        // The coarse clock lags real time by up to a tick, at the base and now: the estimate
        // is one to three ticks ahead of the time.
        assert_eq!(e.upper_at(1_000_000_000), Some(base + tick * 2));
        assert_eq!(
            e.upper_at(1_003_000_000),
            Some(base + Duration::from_millis(11))
        );
        // A coarse reading below the base (it cannot happen) counts as none elapsed.
        assert_eq!(e.upper_at(5), Some(base + tick * 2));
        // Without a usable coarse clock there is no estimate.
        let none = Estimate { ahead: None, ..e };
        assert_eq!(none.upper_at(1_003_000_000), None);
    }

    #[test]
    fn on_this_machine_the_estimate_follows_the_clock() {
        let e = Estimate::new();
        let Some(ahead) = e.ahead else {
            assert!(e.upper().is_none());
            return;
        };
        // Far looser than the bound (a paused machine's tick may run late): only a broken
        // reading of either clock is this far off.
        let before = Instant::now();
        let u = e.upper().expect("a usable coarse clock");
        let after = Instant::now();
        assert!(u + Duration::from_secs(1) >= before);
        assert!(u <= after + 3 * (ahead / 2) + Duration::from_secs(1));
    }
}
