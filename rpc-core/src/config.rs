//! Configuration of the client and server state machines. Every bound on memory lives here.

use core::time::Duration;
use std::time::Instant;

use crate::auth::AuthKey;
use crate::wire::{HEADER_LEN, TAG_LEN};

/// `t`, an instant counted from `from`, counted from `to` instead: moved by `to - from`,
/// either way (saturating as [`deadline_after`] does, and never before it can be represented).
pub fn moved(t: Instant, from: Instant, to: Instant) -> Instant {
    if to >= from {
        deadline_after(t, to - from)
    } else {
        t.checked_sub(from - to).unwrap_or(t)
    }
}

/// `now + d`, or a moment far in the future if that cannot be represented: a deadline of
/// `Duration::MAX` means "no deadline", never an overflow.
pub fn deadline_after(now: Instant, d: Duration) -> Instant {
    if let Some(t) = now.checked_add(d) {
        return t;
    }
    // A century, a year or a day: the first an `Instant` can represent here.
    [100 * 365 * 86_400, 365 * 86_400, 86_400]
        .into_iter()
        .find_map(|s| now.checked_add(Duration::from_secs(s)))
        .unwrap_or(now)
}

/// Largest UDP payload over IPv4 (65535 - 20 - 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// UDP payload that fits a 1500-byte Ethernet MTU over IPv4 without IP fragmentation.
pub const ETHERNET_DATAGRAM: usize = 1_472;

/// Default largest message body: 32 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 32 << 20;

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A datagram must hold a header and at least one body byte, and fit in a UDP datagram.
    #[error("max_datagram must be between {min} and {max} bytes, got {got}")]
    Datagram {
        /// Smallest allowed value.
        min: usize,
        /// Largest allowed value.
        max: usize,
        /// The configured value.
        got: usize,
    },
    /// The maximum message needs more than 65535 fragments, or exceeds 4 GiB.
    #[error("max_message of {max_message} bytes needs more than 65535 fragments of {chunk} bytes")]
    MessageTooLarge {
        /// The configured maximum message.
        max_message: usize,
        /// Body bytes per datagram.
        chunk: usize,
    },
    /// Some value is zero or out of order.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

fn check_sizes(max_datagram: usize, max_message: usize) -> Result<(), ConfigError> {
    let min = HEADER_LEN + 1;
    if !(min..=MAX_UDP_PAYLOAD).contains(&max_datagram) {
        return Err(ConfigError::Datagram {
            min,
            max: MAX_UDP_PAYLOAD,
            got: max_datagram,
        });
    }
    let chunk = max_datagram - HEADER_LEN;
    if max_message.div_ceil(chunk) > usize::from(u16::MAX) || u32::try_from(max_message).is_err() {
        return Err(ConfigError::MessageTooLarge { max_message, chunk });
    }
    Ok(())
}

/// Configuration of a [`crate::client::Client`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Largest datagram sent or accepted, header included. The session uses the smaller of
    /// this and the server's value. Default: [`ETHERNET_DATAGRAM`]; on loopback raise it
    /// towards [`MAX_UDP_PAYLOAD`].
    pub max_datagram: usize,
    /// Largest request or reply body. Default: 32 MiB, so that a 16 MiB argument fits with
    /// room to spare for the rest of the call.
    pub max_message: usize,
    /// Calls in flight at once; also the largest distance between the oldest call in flight
    /// and the newest. Default: 128.
    pub window: usize,
    /// Retransmission timeout before any round trip was measured. Default: 10 ms.
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout. Default: 1 ms; may be as low as 1 µs.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout, backoff included. Default: 500 ms.
    pub max_rto: Duration,
    /// Deadline of a call that names none. Default: 5 s.
    pub default_deadline: Duration,
    /// Times a call is sent again (after timeouts or busy replies) before it fails, even if
    /// its deadline is later: with `TimedOut`, or `ServerBusy` if the server's last answer
    /// was busy. Default: no limit but the deadline.
    pub max_retransmissions: u32,
    /// Bandwidth assumed when allowing for the time a large message takes to send, in bytes
    /// per second: a call of `n` bytes waits `RTO + n / assumed_bandwidth` before it is
    /// retransmitted. Default: 125 MB/s (gigabit Ethernet).
    pub assumed_bandwidth: u64,
    /// Bytes of replies being reassembled at once. Default: 64 MiB.
    pub reassembly_budget: usize,
    /// The pre-shared key of authenticated mode: every datagram carries a tag, and datagrams
    /// without a valid one are dropped. The server must have the same key. Default: none.
    pub auth: Option<AuthKey>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_datagram: ETHERNET_DATAGRAM,
            max_message: DEFAULT_MAX_MESSAGE,
            window: 128,
            initial_rto: Duration::from_millis(10),
            min_rto: Duration::from_millis(1),
            max_rto: Duration::from_millis(500),
            default_deadline: Duration::from_secs(5),
            max_retransmissions: u32::MAX,
            assumed_bandwidth: 125_000_000,
            reassembly_budget: 64 << 20,
            auth: None,
        }
    }
}

/// Body bytes of a datagram of `max_datagram` bytes once its header, and its tag in
/// authenticated mode, are accounted for: the datagram size fragment plans are made for.
pub(crate) fn plan_datagram(max_datagram: usize, auth: bool) -> usize {
    if auth {
        max_datagram.saturating_sub(TAG_LEN)
    } else {
        max_datagram
    }
}

impl ClientConfig {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_sizes(
            plan_datagram(self.max_datagram, self.auth.is_some()),
            self.max_message,
        )?;
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(ConfigError::Invalid("window must be between 1 and 65536"));
        }
        if self.min_rto.is_zero()
            || self.min_rto > self.initial_rto
            || self.initial_rto > self.max_rto
        {
            return Err(ConfigError::Invalid(
                "need 0 < min_rto <= initial_rto <= max_rto",
            ));
        }
        if self.default_deadline.is_zero() {
            return Err(ConfigError::Invalid("default_deadline must be positive"));
        }
        if self.assumed_bandwidth == 0 {
            return Err(ConfigError::Invalid("assumed_bandwidth must be positive"));
        }
        if self.reassembly_budget < self.max_message {
            return Err(ConfigError::Invalid(
                "reassembly_budget must hold at least max_message",
            ));
        }
        Ok(())
    }
}

/// Configuration of a [`crate::server::Server`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest datagram sent or accepted, header included. Default: [`ETHERNET_DATAGRAM`].
    pub max_datagram: usize,
    /// Largest request or reply body. Default: 32 MiB.
    pub max_message: usize,
    /// Sessions kept at once; the least recently used is evicted to make room. Default: 1024.
    pub max_sessions: usize,
    /// Calls a session may have between its acknowledged point and its newest call; calls
    /// beyond it get a busy reply. Default: 256.
    pub window: usize,
    /// Bytes of cached replies one session may hold. Default: 32 MiB.
    pub session_cache_bytes: usize,
    /// Bytes of cached replies all sessions together may hold. Default: 256 MiB.
    pub total_cache_bytes: usize,
    /// Bytes of requests being reassembled at once. Default: 64 MiB.
    pub reassembly_budget: usize,
    /// Requests being reassembled at once. Default: 64.
    pub max_reassemblies: usize,
    /// A reassembly that receives no fragment for this long is dropped. Default: 2 s.
    pub reassembly_timeout: Duration,
    /// A session that receives nothing for this long is closed. Default: 120 s.
    pub session_idle_timeout: Duration,
    /// Control replies (welcome, busy, stale, errors, resent replies) queued for sending;
    /// beyond this they are dropped, as a router drops. Default: 4096.
    pub max_queued_transmits: usize,
    /// Sessions one host (IP address, any port) may hold; a `Hello` beyond it is refused
    /// (`AddressLimit`), after evicting one of the host's own idle sessions if it can.
    /// Default: 256.
    pub max_sessions_per_host: usize,
    /// A session may be evicted to make room for a newcomer only once it has been silent
    /// this long, with no call executing or being reassembled; while every session is in
    /// use a newcomer is refused (`SessionsFull`) and never displaces one. Default: 2 s
    /// (longer than a client's largest retransmission interval, 500 ms by default).
    pub evictable_after: Duration,
    /// How long a handshake cookie stays valid. Default: 10 s.
    pub cookie_lifetime: Duration,
    /// The pre-shared key of authenticated mode: every datagram carries a tag, and datagrams
    /// without a valid one are dropped. Clients must have the same key. Default: none.
    pub auth: Option<AuthKey>,
}

/// Largest window either side may configure; a request further than this beyond the
/// session's acknowledged point cannot come from an honest client.
pub const MAX_WINDOW: usize = 1 << 16;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_datagram: ETHERNET_DATAGRAM,
            max_message: DEFAULT_MAX_MESSAGE,
            max_sessions: 1024,
            window: 256,
            session_cache_bytes: 32 << 20,
            total_cache_bytes: 256 << 20,
            reassembly_budget: 64 << 20,
            max_reassemblies: 64,
            reassembly_timeout: Duration::from_secs(2),
            session_idle_timeout: Duration::from_secs(120),
            max_queued_transmits: 4096,
            max_sessions_per_host: 256,
            evictable_after: Duration::from_secs(2),
            cookie_lifetime: Duration::from_secs(10),
            auth: None,
        }
    }
}

impl ServerConfig {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_sizes(
            plan_datagram(self.max_datagram, self.auth.is_some()),
            self.max_message,
        )?;
        if self.max_sessions == 0 || self.max_sessions > 1 << 16 {
            return Err(ConfigError::Invalid(
                "max_sessions must be between 1 and 65536",
            ));
        }
        if self.max_sessions_per_host == 0 {
            return Err(ConfigError::Invalid(
                "max_sessions_per_host must be positive",
            ));
        }
        if self.cookie_lifetime.is_zero() {
            return Err(ConfigError::Invalid("cookie_lifetime must be positive"));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(ConfigError::Invalid("window must be between 1 and 65536"));
        }
        if self.session_cache_bytes > self.total_cache_bytes {
            return Err(ConfigError::Invalid(
                "session_cache_bytes exceeds total_cache_bytes",
            ));
        }
        if self.reassembly_budget < self.max_message || self.max_reassemblies == 0 {
            return Err(ConfigError::Invalid(
                "reassembly_budget must hold max_message and max_reassemblies be positive",
            ));
        }
        if self.reassembly_timeout.is_zero() || self.session_idle_timeout.is_zero() {
            return Err(ConfigError::Invalid("timeouts must be positive"));
        }
        if self.max_queued_transmits == 0 {
            return Err(ConfigError::Invalid(
                "max_queued_transmits must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ClientConfig::default().validate().unwrap();
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn refuses_bad_sizes() {
        let c = ClientConfig {
            max_datagram: HEADER_LEN,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Datagram { .. })));
        let c = ClientConfig {
            max_datagram: 70_000,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Datagram { .. })));
        // 32 MiB in 1400-byte chunks is 23,968 fragments: fine. 1 GiB is not.
        let c = ClientConfig {
            max_message: 1 << 30,
            reassembly_budget: 1 << 30,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MessageTooLarge { .. })
        ));
        let s = ServerConfig {
            session_cache_bytes: 1 << 30,
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let c = ClientConfig {
            min_rto: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn long_durations_saturate() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(86_400));
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let c = ClientConfig {
            default_deadline: Duration::MAX,
            max_rto: Duration::MAX,
            ..Default::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn microsecond_timeouts_are_allowed() {
        let c = ClientConfig {
            min_rto: Duration::from_micros(1),
            initial_rto: Duration::from_micros(20),
            ..Default::default()
        };
        c.validate().unwrap();
    }
}
