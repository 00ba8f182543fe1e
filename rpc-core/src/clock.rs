//! Lamport's logical clock.
//!
//! Each node keeps a counter. It ticks the counter before every message it sends and stamps the
//! message with the new value; on receiving a message stamped `t` it sets the counter to
//! `max(counter, t) + 1`. So if event `a` happened before event `b`, `a`'s stamp is smaller.
//! Ties between nodes are broken by node id, which turns the partial order into a total one
//! ([`LamportStamp`]'s `Ord`).

use crate::wire::MAX_LAMPORT;

/// A node's Lamport clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value, without ticking.
    pub fn now(&self) -> u64 {
        self.time
    }

    /// Ticks before a send; returns the stamp for the outgoing message.
    pub fn tick(&mut self) -> u64 {
        // Received stamps are below MAX_LAMPORT (checked on parse), so the clock can only get
        // near u64::MAX after 2^63 local events; saturate rather than wrap all the same.
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Observes a received stamp; returns the stamp of the receive event.
    ///
    /// Stamps at or above [`MAX_LAMPORT`] are refused by the wire parser before they get here;
    /// should one arrive anyway it is clamped, so a hostile peer cannot freeze the clock.
    pub fn observe(&mut self, received: u64) -> u64 {
        self.time = self.time.max(received.min(MAX_LAMPORT)).saturating_add(1);
        self.time
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
    use super::*;

    #[test]
    fn tick_increments() {
        let mut c = LamportClock::new();
        assert_eq!(c.tick(), 1);
        assert_eq!(c.tick(), 2);
        assert_eq!(c.now(), 2);
    }

    #[test]
    fn observe_takes_max_plus_one() {
        let mut c = LamportClock::new();
        c.tick();
        assert_eq!(c.observe(10), 11);
        assert_eq!(c.observe(3), 12);
        assert_eq!(c.tick(), 13);
    }

    #[test]
    fn send_receive_orders_causally() {
        let (mut a, mut b) = (LamportClock::new(), LamportClock::new());
        for _ in 0..5 {
            a.tick();
        }
        let sent = a.tick();
        let received = b.observe(sent);
        assert!(received > sent);
        let reply = b.tick();
        assert!(a.observe(reply) > reply);
    }

    #[test]
    fn hostile_stamp_cannot_freeze_the_clock() {
        let mut c = LamportClock::new();
        let t = c.observe(u64::MAX);
        assert_eq!(t, MAX_LAMPORT + 1);
        assert!(c.tick() > t);
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
