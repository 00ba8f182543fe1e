//! A driver's earliest protocol timer, published from the state machine behind its lock into
//! an atomic, so that a spinning thread tells whether a timer is due without the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The published timer: nanoseconds since `epoch`, `u64::MAX` if none.
#[derive(Debug)]
pub(crate) struct PublishedTimer {
    nanos: AtomicU64,
    epoch: Instant,
}

/// What was last published, kept beside the state machine under its lock: most often the
/// bound the state machine keeps has not moved (it is lowered when a timer is set earlier and
/// raised only when the timers run), and then nothing is stored.
#[derive(Debug, Default)]
pub(crate) struct LastTimer(Option<Instant>);

impl PublishedTimer {
    pub(crate) fn new() -> Self {
        Self {
            nanos: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// Publishes `next`, the state machine's earliest timer, unless it is what `last` says
    /// was published.
    pub(crate) fn publish(&self, last: &mut LastTimer, next: Option<Instant>) {
        if next == last.0 {
            return;
        }
        last.0 = next;
        let t = next.map_or(u64::MAX, |t| {
            t.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        self.nanos.store(t, Ordering::Release);
    }

    /// The published timer.
    pub(crate) fn get(&self) -> Option<Instant> {
        self.instant_of(self.nanos.load(Ordering::Acquire))
    }

    /// Whether the published timer is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        let t = self.nanos.load(Ordering::Acquire);
        t != u64::MAX && now.saturating_duration_since(self.epoch).as_nanos() as u64 >= t
    }

    /// The published timer as stored (for a driver that compares it with its own).
    #[cfg(feature = "tokio")]
    pub(crate) fn raw(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    /// The instant of a stored value.
    pub(crate) fn instant_of(&self, t: u64) -> Option<Instant> {
        (t != u64::MAX).then(|| self.epoch + Duration::from_nanos(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_is_published_when_it_moves_and_is_due_from_its_instant() {
        let timer = PublishedTimer::new();
        let mut last = LastTimer::default();
        assert_eq!(timer.get(), None);
        assert!(!timer.due(Instant::now() + Duration::from_secs(3600)));
        let at = Instant::now() + Duration::from_millis(5);
        timer.publish(&mut last, Some(at));
        let got = timer.get().unwrap();
        // Nanosecond precision from the epoch.
        assert!(got <= at && at - got < Duration::from_micros(1));
        assert!(!timer.due(at - Duration::from_millis(1)));
        assert!(timer.due(at));
        timer.publish(&mut last, None);
        assert_eq!(timer.get(), None);
        assert!(!timer.due(at + Duration::from_secs(1)));
    }
}
