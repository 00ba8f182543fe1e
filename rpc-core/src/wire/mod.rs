//! Wire format: the packet header, checked views, validated representations, fragments.
//!
//! Nothing here allocates, panics on any input, or reads outside the buffer it is given.

mod bundle;
mod frag;
mod header;
mod packet;

pub use bundle::{Packets, packet_len, packets};
pub use frag::{FragmentPlan, Reassembly, ReassemblyError};
pub use header::{
    BusyReason, COOKIE_LEN, CookieBody, ErrorCode, Flags, HEADER_LEN, HELLO_BODY_LEN, Header,
    HelloBody, MAGIC, MAX_LAMPORT, PacketKind, RefuseReason, TAG_LEN, VERSION, WELCOME_BODY_LEN,
    WelcomeBody,
};
pub use packet::{HeaderRepr, Packet, PacketRepr, read_body};

/// Why a datagram was refused. Small and `Copy`, so dropping a packet costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than a header.
    #[error("datagram shorter than the header")]
    Truncated,
    /// The magic bytes are wrong: not a packet of this protocol.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this crate does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown packet kind.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// Flag bits that are unknown or not allowed on this packet kind.
    #[error("unknown or misplaced flags")]
    UnknownFlags,
    /// The length fields disagree with each other or with the datagram.
    #[error("length fields disagree")]
    LengthMismatch,
    /// Fragment index and count are inconsistent.
    #[error("bad fragment index or count")]
    BadFragment,
    /// A status code where none belongs, or none where one must be.
    #[error("bad status")]
    BadStatus,
    /// A session id where none belongs, or none where one must be.
    #[error("bad session id")]
    BadSession,
    /// A Lamport timestamp too large to accept.
    #[error("lamport timestamp out of range")]
    BadTimestamp,
    /// A request acknowledging its own sequence number or a later one.
    #[error("request acknowledges its own call")]
    BadAck,
    /// The output buffer is too small (emit only).
    #[error("buffer too small")]
    BufferTooSmall,
}

/// Counters of datagrams dropped, by cause. Every drop is counted exactly once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Failed [`PacketRepr::parse`].
    pub malformed: u64,
    /// Well-formed, but of a kind this side never receives, or addressed to another client.
    pub misdirected: u64,
    /// Fragments inconsistent with the other fragments of their message.
    pub bad_fragment: u64,
    /// For a call that already ended or is unknown (late or duplicate replies, old requests).
    pub stale: u64,
    /// Later fragments of a request the server refused (its first fragment got the answer).
    pub refused: u64,
    /// Authentication failed: a missing, unexpected or wrong tag (forged or modified
    /// datagrams, or a peer with another key).
    pub bad_tag: u64,
    /// A valid datagram of a session, from an address other than the one that opened it.
    pub wrong_address: u64,
    /// A Lamport stamp too far ahead of this node's clock to be honest (`crate::clock`).
    pub bad_stamp: u64,
    /// Hellos with a cookie that is not valid (forged, expired, or for another address).
    pub bad_cookie: u64,
}

impl DropCounters {
    /// Sum of all causes.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.misdirected
            + self.bad_fragment
            + self.stale
            + self.refused
            + self.bad_tag
            + self.wrong_address
            + self.bad_stamp
            + self.bad_cookie
    }
}
