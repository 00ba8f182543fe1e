//! Lamport's logical clock, one per node.
//!
//! Each node keeps a counter. It ticks the counter before every message it sends and stamps the
//! message with the new value; on receiving a message stamped `t` it sets the counter to
//! `max(counter, t) + 1`. So if event `a` happened before event `b`, `a`'s stamp is smaller.
//! Ties between nodes are broken by node id, which turns the partial order into a total one
//! ([`LamportStamp`]'s `Ord`).
//!
//! A [`LamportClock`] is shared (`Arc`) by every client and server of a node, so that a
//! handler's nested call is stamped after the request it serves and the handler's reply after
//! the nested reply: the happened-before order holds across the node, as Lamport's mutual
//! exclusion needs.
//!
//! # How far a peer may push the clock
//!
//! Stamps are 62-bit ([`MAX_LAMPORT`] and above are malformed). A peer that could set a
//! node's clock anywhere below that limit could push it to the end in one message; the node
//! would then emit stamps that its peers refuse, and stop answering. So the clock is bounded
//! by physical time, as hybrid logical clocks are:
//!
//! - the clock adopts a stamp only up to its *ceiling*, the nanoseconds since the Unix epoch
//!   plus [`ADOPT_AHEAD`] (about 13 days); an honest clock, which counts messages, never comes
//!   near it (in 2026 it is about 2^60.6, and reaches 2^62 in the year 2116);
//! - a stamp above the ceiling but within [`ACCEPT_AHEAD`] more (another 13 days of clock
//!   skew between nodes) is accepted and the clock moves to its ceiling only (counted as
//!   clamped);
//! - a stamp beyond that is refused ([`StampRefused`]): the datagram carrying it is dropped
//!   and counted, and nothing of the node changes.
//!
//! An attacker can therefore push clocks forward at most to the ceiling, which advances one
//! per nanosecond of real time: no stamp, however large, stops a node from answering, and a
//! node's stamps are accepted by every peer whose wall clock is within 13 days of its own.
//! Only datagrams that passed every other check (session, address, tag, cookie) are observed
//! at all.

use core::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::wire::MAX_LAMPORT;

/// How far past the wall clock (in nanoseconds since the Unix epoch) a clock may be pushed.
pub const ADOPT_AHEAD: u64 = 1 << 50;

/// How far past its ceiling a stamp may be and still be accepted (skew between wall clocks).
pub const ACCEPT_AHEAD: u64 = 1 << 50;

/// A stamp too far ahead of this node's clock to come from an honest peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lamport stamp {stamp} is beyond what this node accepts ({limit})")]
pub struct StampRefused {
    /// The stamp.
    pub stamp: u64,
    /// The largest stamp the node accepted at that moment.
    pub limit: u64,
}

/// A node's Lamport clock, shared by all its clients and servers.
#[derive(Debug)]
pub struct LamportClock {
    time: AtomicU64,
    node: u64,
    /// Wall-clock nanoseconds since the Unix epoch at `base`.
    base_unix: u64,
    base: Instant,
    /// The ceiling at `base`, below every later one: a stamp up to it is adopted without
    /// reading the time (honest stamps, which count messages, always are).
    base_ceiling: u64,
    refused: AtomicU64,
    clamped: AtomicU64,
}

impl LamportClock {
    /// A clock at zero for node `node`. `unix_nanos` is the wall clock (nanoseconds since the
    /// Unix epoch) at the instant `at`; the clock reads no clock itself, and from then on
    /// counts real time by the instants it is given.
    pub fn new(node: u64, unix_nanos: u64, at: Instant) -> Self {
        Self {
            time: AtomicU64::new(0),
            node,
            base_unix: unix_nanos,
            base: at,
            base_ceiling: unix_nanos.saturating_add(ADOPT_AHEAD).min(MAX_LAMPORT - 1),
            refused: AtomicU64::new(0),
            clamped: AtomicU64::new(0),
        }
    }

    /// The node id that breaks ties between this clock's stamps and others'.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The current value, without ticking.
    pub fn now(&self) -> u64 {
        self.time.load(Ordering::Relaxed)
    }

    /// The current value as a stamp of this node.
    pub fn stamp(&self) -> LamportStamp {
        LamportStamp::new(self.now(), self.node)
    }

    /// Ticks before a send; returns the stamp for the outgoing message.
    pub fn tick(&self) -> u64 {
        // The clock never adopts a stamp above its ceiling, which stays below MAX_LAMPORT
        // until the year 2116: it cannot get near the limit by ticking. Cap the stamp all the
        // same, so that no node ever emits one its peers refuse.
        let t = self.time.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        t.min(MAX_LAMPORT - 1)
    }

    /// The largest value the clock adopts at `now`.
    pub fn ceiling(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.base).as_nanos();
        let wall = u64::try_from(u128::from(self.base_unix) + elapsed).unwrap_or(u64::MAX);
        wall.saturating_add(ADOPT_AHEAD).min(MAX_LAMPORT - 1)
    }

    /// Whether `stamp` would be accepted at `now`, without observing it.
    pub fn accepts(&self, stamp: u64, now: Instant) -> Result<(), StampRefused> {
        if stamp <= self.now() || stamp <= self.base_ceiling {
            return Ok(());
        }
        let limit = self.ceiling(now).saturating_add(ACCEPT_AHEAD);
        if stamp >= MAX_LAMPORT || stamp > limit {
            return Err(StampRefused { stamp, limit });
        }
        Ok(())
    }

    /// Observes a received stamp at `now`; returns the stamp of the receive event. A stamp
    /// beyond what the clock accepts is refused and the clock is left as it was.
    pub fn observe(&self, stamp: u64, now: Instant) -> Result<u64, StampRefused> {
        self.observe_holding(stamp, now, 0)
    }

    /// Observes a request's stamp as [`LamportClock::observe`] does, and holds the value
    /// after the receive event for the request's answer: the clock moves past both in one
    /// step, and [`LamportClock::tick_after`] gives the answer the held value if no event
    /// took a stamp meanwhile (a server's receive and reply cost one atomic step, not two).
    /// A held value that goes unused is a gap in the clock, which the order allows.
    pub fn observe_for_answer(&self, stamp: u64, now: Instant) -> Result<u64, StampRefused> {
        self.observe_holding(stamp, now, 1)
    }

    /// Ticks for the answer to a request whose receive event took `received` (from
    /// [`LamportClock::observe_for_answer`]): the value held for it if the clock still shows
    /// it (no event of this node took a stamp since, so the answer follows all of them),
    /// a fresh tick otherwise.
    pub fn tick_after(&self, received: u64) -> u64 {
        let held = received.saturating_add(1).min(MAX_LAMPORT - 1);
        if held > received && self.time.load(Ordering::Relaxed) == held {
            held
        } else {
            self.tick()
        }
    }

    /// `observe`, leaving the clock `hold` past the receive event.
    fn observe_holding(&self, stamp: u64, now: Instant, hold: u64) -> Result<u64, StampRefused> {
        let mut cur = self.time.load(Ordering::Relaxed);
        // Computed on the first jump only: honest stamps at or below the clock need no limit.
        let mut ceiling = None;
        loop {
            let target = if stamp <= self.base_ceiling {
                stamp.max(cur)
            } else if stamp > cur {
                let c = *ceiling.get_or_insert_with(|| self.ceiling(now));
                let limit = c.saturating_add(ACCEPT_AHEAD);
                if stamp >= MAX_LAMPORT || stamp > limit {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(StampRefused { stamp, limit });
                }
                // Never below the clock itself: the ceiling read from an older instant (another
                // thread's, or one read a little earlier) may lie below what it already shows.
                stamp.min(c).max(cur)
            } else {
                cur
            };
            let next = target.saturating_add(1).min(MAX_LAMPORT - 1);
            let shown = next.saturating_add(hold).min(MAX_LAMPORT - 1);
            match self
                .time
                .compare_exchange_weak(cur, shown, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if stamp > target {
                        self.clamped.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(next);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Stamps refused so far, and stamps adopted only up to the ceiling.
    pub fn refusals(&self) -> (u64, u64) {
        (
            self.refused.load(Ordering::Relaxed),
            self.clamped.load(Ordering::Relaxed),
        )
    }
}

/// A Lamport timestamp together with the node that took it: a total order over all events of a
/// system, ordered by time and then by node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LamportStamp {
    /// The clock value.
    pub time: u64,
    /// The node whose clock it is.
    pub node: u64,
}

impl LamportStamp {
    /// A stamp.
    pub fn new(time: u64, node: u64) -> Self {
        Self { time, node }
    }
}

impl core::fmt::Display for LamportStamp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}@{:x}", self.time, self.node)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2026-12-01 in nanoseconds since the Unix epoch.
    const WALL: u64 = 1_796_083_200_000_000_000;

    fn clock() -> (LamportClock, Instant) {
        let at = Instant::now();
        (LamportClock::new(7, WALL, at), at)
    }

    #[test]
    fn tick_increments() {
        let (c, _) = clock();
        assert_eq!(c.tick(), 1);
        assert_eq!(c.tick(), 2);
        assert_eq!(c.now(), 2);
        assert_eq!(c.stamp(), LamportStamp::new(2, 7));
    }

    #[test]
    fn observe_takes_max_plus_one() {
        let (c, at) = clock();
        c.tick();
        assert_eq!(c.observe(10, at), Ok(11));
        assert_eq!(c.observe(3, at), Ok(12));
        assert_eq!(c.tick(), 13);
    }

    #[test]
    fn send_receive_orders_causally() {
        let (a, at) = clock();
        let (b, _) = clock();
        for _ in 0..5 {
            a.tick();
        }
        let sent = a.tick();
        let received = b.observe(sent, at).unwrap();
        assert!(received > sent);
        let reply = b.tick();
        assert!(a.observe(reply, at).unwrap() > reply);
    }

    #[test]
    fn hostile_stamps_are_refused_and_change_nothing() {
        let (c, at) = clock();
        c.tick();
        for stamp in [u64::MAX, MAX_LAMPORT, MAX_LAMPORT - 1, MAX_LAMPORT - 200] {
            assert!(c.observe(stamp, at).is_err(), "{stamp}");
            assert!(c.accepts(stamp, at).is_err(), "{stamp}");
        }
        assert_eq!(c.now(), 1);
        assert_eq!(c.refusals(), (4, 0));
        // The node keeps stamping valid messages.
        assert!(c.tick() < MAX_LAMPORT);
    }

    #[test]
    fn a_push_stops_at_the_ceiling_which_follows_real_time() {
        let (c, at) = clock();
        let ceiling = c.ceiling(at);
        assert_eq!(ceiling, WALL + ADOPT_AHEAD);
        // Within the skew allowance: adopted up to the ceiling only.
        assert_eq!(c.observe(ceiling + 1000, at), Ok(ceiling + 1));
        assert_eq!(c.refusals(), (0, 1));
        // A pushed clock's stamps are accepted by a fresh node whose wall clock lags a day.
        let day = 86_400_000_000_000;
        let behind = LamportClock::new(8, WALL - day, at);
        let sent = c.tick();
        assert!(behind.observe(sent, at).is_ok());
        // A ceiling read from an earlier instant never moves the clock back.
        let before = c.now();
        let earlier = at.checked_sub(Duration::from_secs(1)).unwrap_or(at);
        assert!(c.observe(ceiling + 2_000, earlier).unwrap() > before);
        // The ceiling moves on with time, one per nanosecond.
        let later = at + Duration::from_secs(1);
        assert_eq!(c.ceiling(later), ceiling + 1_000_000_000);
        // Far in the future the ceiling stays below the limit.
        let c = LamportClock::new(1, u64::MAX - 5, at);
        assert_eq!(c.ceiling(at), MAX_LAMPORT - 1);
        assert!(c.observe(MAX_LAMPORT - 1, at).is_ok());
        assert!(c.tick() < MAX_LAMPORT);
        assert!(c.tick() < MAX_LAMPORT);
    }

    /// Runs `f(clock, thread index)` on four threads sharing one clock; their results.
    fn on_four_threads<R: Send>(
        c: &LamportClock,
        f: impl Fn(&LamportClock, u64) -> R + Sync,
    ) -> Vec<R> {
        let f = &f;
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..4).map(|i| s.spawn(move || f(c, i))).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn shared_between_threads_stays_monotonic() {
        let (c, at) = clock();
        on_four_threads(&c, |c, i| {
            let mut last = 0;
            for n in 0..1000u64 {
                let t = if n % 2 == 0 {
                    c.tick()
                } else {
                    c.observe(n * i, at).unwrap()
                };
                assert!(t > last);
                last = t;
            }
        });
        assert!(c.now() >= 4000);
    }

    #[test]
    fn an_answer_takes_the_held_stamp_only_if_nothing_came_between() {
        let (c, at) = clock();
        c.tick();
        // Nothing between receive and answer: the answer follows the receive by one, as a
        // tick would, and the clock moved once.
        let received = c.observe_for_answer(10, at).unwrap();
        assert_eq!(received, 11);
        assert_eq!(c.tick_after(received), 12);
        assert_eq!(c.tick(), 13);
        // An event between (a tick, or another request's receive) takes a stamp past the held
        // one: the answer ticks past that event.
        let first = c.observe_for_answer(3, at).unwrap();
        let between = c.tick();
        assert!(between > first + 1);
        let answer = c.tick_after(first);
        assert!(answer > between);
        let a = c.observe_for_answer(0, at).unwrap();
        let b = c.observe_for_answer(0, at).unwrap();
        assert!(b > a + 1);
        let (ra, rb) = (c.tick_after(a), c.tick_after(b));
        assert!(ra > b && rb > ra, "{a} {b} {ra} {rb}");
        // Refused stamps hold nothing.
        let before = c.now();
        assert!(c.observe_for_answer(u64::MAX, at).is_err());
        assert_eq!(c.now(), before);
        // At the limit there is nothing to hold: the answer ticks (and stays below the limit).
        let c = LamportClock::new(1, u64::MAX - 5, at);
        let top = c.observe_for_answer(MAX_LAMPORT - 1, at).unwrap();
        assert_eq!(top, MAX_LAMPORT - 1);
        assert_eq!(c.tick_after(top), MAX_LAMPORT - 1);
    }

    #[test]
    fn held_answers_stay_unique_across_threads() {
        let (c, at) = clock();
        let mut all: Vec<u64> = on_four_threads(&c, |c, i| {
            let mut seen = Vec::new();
            for n in 0..1000u64 {
                let r = c.observe_for_answer(n * i, at).unwrap();
                let a = c.tick_after(r);
                assert!(a > r);
                seen.extend([r, a]);
            }
            seen
        })
        .into_iter()
        .flatten()
        .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two events of one node took one stamp");
    }

    #[test]
    fn total_order_breaks_ties_by_node() {
        let a = LamportStamp::new(5, 1);
        let b = LamportStamp::new(5, 2);
        let c = LamportStamp::new(4, 9);
        let mut v = vec![b, a, c];
        v.sort();
        assert_eq!(v, vec![c, a, b]);
        assert_eq!(a.to_string(), "5@1");
    }
}
