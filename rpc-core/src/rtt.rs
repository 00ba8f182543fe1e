//! Retransmission timeout estimation, after RFC 6298 ("Computing TCP's Retransmission Timer").
//!
//! - Before the first sample the timeout is the configured initial value (RFC 6298 §2.1).
//! - The first sample `R` sets `SRTT = R`, `RTTVAR = R/2` (§2.2); later samples update
//!   `RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|` and then `SRTT = 7/8 SRTT + 1/8 R` (§2.3).
//! - `RTO = SRTT + max(G, 4 RTTVAR)`, clamped to the configured minimum and maximum. RFC 6298
//!   asks for a one-second minimum, which suits the Internet, not a LAN whose round trips are
//!   microseconds; the minimum is configurable down to a microsecond.
//! - Karn's rule (§3): samples are never taken from a call that was retransmitted, because a
//!   reply cannot tell which transmission it answers. The client enforces this.
//! - Each timeout doubles that call's timeout, up to the maximum (§5.5).

use core::time::Duration;

/// Clock granularity `G`: the drivers read a nanosecond monotonic clock.
const GRANULARITY: Duration = Duration::from_micros(1);

/// Smoothed round-trip time and the retransmission timeout derived from it.
///
/// Kept in integer nanoseconds, with the timeout computed once per sample rather than per
/// transmission: a call's first transmission reads it and nothing else.
#[derive(Clone, Copy, Debug)]
pub struct RttEstimator {
    /// Smoothed round-trip time in nanoseconds; `None` before the first sample.
    srtt: Option<u64>,
    rttvar: u64,
    min: u64,
    max: u64,
    /// The current timeout, in nanoseconds: kept up to date by `sample`.
    rto: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RttEstimator {
    /// An estimator with no samples. `min <= initial <= max` is the caller's to ensure
    /// ([`crate::ClientConfig::validate`] does).
    pub fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        let (min, max) = (nanos(min), nanos(max));
        Self {
            srtt: None,
            rttvar: 0,
            min,
            max,
            rto: nanos(initial).clamp(min, max.max(min)),
        }
    }

    /// Takes a round-trip sample.
    pub fn sample(&mut self, rtt: Duration) {
        let rtt = nanos(rtt);
        let srtt = match self.srtt {
            None => {
                self.rttvar = rtt / 2;
                rtt
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar.saturating_mul(3).saturating_add(err)) / 4;
                (srtt.saturating_mul(7).saturating_add(rtt)) / 8
            }
        };
        self.srtt = Some(srtt);
        let spread = nanos(GRANULARITY).max(self.rttvar.saturating_mul(4));
        self.rto = srtt
            .saturating_add(spread)
            .clamp(self.min, self.max.max(self.min));
    }

    /// The smoothed round-trip time, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_nanos)
    }

    /// The round-trip variation.
    pub fn rttvar(&self) -> Duration {
        Duration::from_nanos(self.rttvar)
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        Duration::from_nanos(self.rto)
    }

    /// The timeout after `attempts` timeouts of the same call: `RTO * 2^attempts`, capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        Duration::from_nanos(self.backoff_nanos(attempts))
    }

    /// [`RttEstimator::backoff`] in nanoseconds.
    pub fn backoff_nanos(&self, attempts: u32) -> u64 {
        if attempts == 0 {
            return self.rto;
        }
        let factor = 1u64.checked_shl(attempts.min(63)).unwrap_or(u64::MAX);
        self.rto.saturating_mul(factor).min(self.max.max(self.min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn est() -> RttEstimator {
        RttEstimator::new(Duration::from_millis(10), us(2), Duration::from_secs(1))
    }

    #[test]
    fn initial_before_samples() {
        assert_eq!(est().rto(), Duration::from_millis(10));
        assert_eq!(est().srtt(), None);
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let mut e = est();
        e.sample(us(100));
        assert_eq!(e.srtt(), Some(us(100)));
        assert_eq!(e.rttvar(), us(50));
        assert_eq!(e.rto(), us(300));
    }

    #[test]
    fn later_samples_smooth() {
        let mut e = est();
        e.sample(us(100));
        e.sample(us(200));
        // RTTVAR = 3/4*50 + 1/4*100 = 62.5; SRTT = 7/8*100 + 1/8*200 = 112.5
        assert_eq!(e.rttvar(), Duration::from_nanos(62_500));
        assert_eq!(e.srtt(), Some(Duration::from_nanos(112_500)));
        assert_eq!(e.rto(), Duration::from_nanos(112_500 + 250_000));
    }

    #[test]
    fn converges_on_a_steady_rtt_and_respects_the_minimum() {
        let mut e = est();
        for _ in 0..200 {
            e.sample(us(5));
        }
        assert_eq!(e.srtt(), Some(us(5)));
        // RTTVAR decays towards 0, so G dominates: 5 + 1 = 6 µs.
        assert!(e.rto() >= us(6) && e.rto() < us(8), "{:?}", e.rto());
        let mut floor = RttEstimator::new(us(100), us(50), Duration::from_secs(1));
        floor.sample(us(5));
        for _ in 0..100 {
            floor.sample(us(5));
        }
        assert_eq!(floor.rto(), us(50));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let e = est();
        assert_eq!(e.backoff(0), Duration::from_millis(10));
        assert_eq!(e.backoff(1), Duration::from_millis(20));
        assert_eq!(e.backoff(3), Duration::from_millis(80));
        assert_eq!(e.backoff(7), Duration::from_secs(1));
        assert_eq!(e.backoff(u32::MAX), Duration::from_secs(1));
    }
}
