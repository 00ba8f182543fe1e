//! The fixed 72-byte packet header and the small fixed bodies of control packets.
//!
//! Every field is little-endian and unaligned (zerocopy's byte-order types), so a header can be
//! read in place from any offset of any buffer. See `docs/protocol.md` for the byte map.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the packet header in bytes. Every datagram starts with one.
pub const HEADER_LEN: usize = 72;

/// The first two bytes of every packet: `b"rp"`.
pub const MAGIC: u16 = u16::from_le_bytes(*b"rp");

/// Protocol version spoken by this crate.
pub const VERSION: u8 = 2;

/// Length of the authentication tag that follows the header of a datagram flagged
/// [`Flags::AUTH`].
pub const TAG_LEN: usize = 16;

/// Lamport timestamps at or above this value are malformed. No clock ever reaches it
/// (`crate::clock` bounds how far a peer can push one), so no node emits a stamp its peers
/// refuse.
pub const MAX_LAMPORT: u64 = 1 << 62;

/// The header as it sits on the wire.
///
/// Field meanings depend on the [`PacketKind`]; `docs/protocol.md` has the table.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: U16,
    /// [`VERSION`].
    pub version: u8,
    /// A [`PacketKind`].
    pub kind: u8,
    /// [`Flags`] bits.
    pub flags: U16,
    /// Error or busy code for `ErrorReply` and `Busy`; zero otherwise.
    pub status: U16,
    /// The client's identifier, chosen by the client.
    pub client_id: U64,
    /// The client's incarnation: a new value each time the client process starts.
    pub client_incarnation: U32,
    /// Interface fingerprint of the called interface (requests and their replies).
    pub interface: U32,
    /// Session identifier assigned by the server; its high 32 bits are the server incarnation.
    pub session: U64,
    /// Call sequence number (requests and replies) or handshake nonce (`Hello`, `Welcome`).
    pub seq: U64,
    /// In requests: every call with a sequence number at or below this one has ended at the
    /// client, so the server may free its cached reply.
    pub ack: U64,
    /// Lamport timestamp of the message.
    pub lamport: U64,
    /// Method fingerprint of the called method.
    pub method: U32,
    /// Index of this fragment, `0..frag_count`.
    pub frag_index: U16,
    /// Number of fragments of the message, at least 1.
    pub frag_count: U16,
    /// Length of the whole message body, summed over all fragments.
    pub message_len: U32,
    /// Length of the body bytes that follow this header in this datagram.
    pub payload_len: U32,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);

/// What a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketKind {
    /// Client to server: open a session. Body: [`HelloBody`].
    Hello = 1,
    /// Server to client: the session is open. Body: [`WelcomeBody`].
    Welcome = 2,
    /// Client to server: a call.
    Request = 3,
    /// Server to client: the result of a call. It also acknowledges the request.
    Reply = 4,
    /// Server to client: the call failed on the server; `status` says why ([`ErrorCode`]).
    ErrorReply = 5,
    /// Server to client: the call was not executed for lack of resources; retry later.
    /// `status` says which resource ([`BusyReason`]).
    Busy = 6,
    /// Server to client: the session named in the request is unknown (the server restarted, or
    /// the session expired or was evicted). `ack` says which calls of that session never
    /// started executing: every one with a sequence number above it.
    Stale = 7,
    /// Server to client, in answer to a `Hello` without a valid cookie: the cookie to send
    /// back. Body: [`CookieBody`]. The server keeps no state for it.
    Retry = 8,
    /// Server to client, in answer to a `Hello`: no session is opened; `status` says why
    /// ([`RefuseReason`]).
    Refused = 9,
}

impl PacketKind {
    /// Decodes a kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Request,
            4 => Self::Reply,
            5 => Self::ErrorReply,
            6 => Self::Busy,
            7 => Self::Stale,
            8 => Self::Retry,
            9 => Self::Refused,
            _ => return None,
        })
    }

    /// Whether a client sends this kind.
    pub fn from_client(self) -> bool {
        matches!(self, Self::Hello | Self::Request)
    }

    /// Whether this kind belongs to the handshake (it names no session).
    pub fn is_handshake(self) -> bool {
        matches!(self, Self::Hello | Self::Retry | Self::Refused)
    }
}

bitflags::bitflags! {
    /// Header flag bits. Unknown bits are refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Flags: u16 {
        /// Request: the method is idempotent; the server may execute it again and does not
        /// keep its reply for retransmission.
        const IDEMPOTENT = 1 << 0;
        /// Request: this is a retransmission.
        const RETRANSMIT = 1 << 1;
        /// Reply: resent from the server's retransmit buffer.
        const FROM_CACHE = 1 << 2;
        /// Any kind: a [`TAG_LEN`]-byte authentication tag follows the header, before the
        /// payload (authenticated mode).
        const AUTH = 1 << 3;
    }
}

/// Why a call failed on the server (`status` of an `ErrorReply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The server does not serve the requested interface.
    UnknownInterface,
    /// The server serves the interface but not this method fingerprint: the two sides were
    /// built from different versions of the interface.
    UnknownMethod,
    /// The request body did not decode as the method's arguments.
    BadRequest,
    /// The handler panicked.
    HandlerPanicked,
    /// The reply would exceed the maximum message size.
    ReplyTooLarge,
    /// The call executed, but its reply was lost and was too large to keep for retransmission.
    ReplyUnavailable,
    /// The request exceeds the server's maximum message size.
    MessageTooLarge,
    /// The request was flagged idempotent but the method is not.
    NotIdempotent,
    /// The server is shutting down; the call did not execute.
    ShuttingDown,
    /// The call is below the session's acknowledged point and its outcome is no longer held:
    /// it may have executed.
    Forgotten,
    /// The call is below the session's acknowledged point and never started executing: it
    /// did not execute and never will in this session.
    Skipped,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::UnknownInterface => 1,
            Self::UnknownMethod => 2,
            Self::BadRequest => 3,
            Self::HandlerPanicked => 4,
            Self::ReplyTooLarge => 5,
            Self::ReplyUnavailable => 6,
            Self::MessageTooLarge => 7,
            Self::NotIdempotent => 8,
            Self::ShuttingDown => 9,
            Self::Forgotten => 10,
            Self::Skipped => 11,
            Self::Other(v) => v,
        }
    }

    /// From a wire value; unknown values are kept as [`ErrorCode::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::UnknownInterface,
            2 => Self::UnknownMethod,
            3 => Self::BadRequest,
            4 => Self::HandlerPanicked,
            5 => Self::ReplyTooLarge,
            6 => Self::ReplyUnavailable,
            7 => Self::MessageTooLarge,
            8 => Self::NotIdempotent,
            9 => Self::ShuttingDown,
            10 => Self::Forgotten,
            11 => Self::Skipped,
            v => Self::Other(v),
        }
    }
}

/// Which resource was exhausted (`status` of a `Busy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusyReason {
    /// The call's sequence number is too far ahead of the calls the client has acknowledged.
    WindowFull,
    /// The session's or the server's retransmit buffer is full.
    ReplyCacheFull,
    /// The reassembly buffers are full.
    ReassemblyFull,
    /// The server's queue of calls waiting for a worker is full.
    Overloaded,
    /// The server holds as many sessions as it may, all in use (answer to a `Hello`, as
    /// [`RefuseReason::SessionsFull`]).
    SessionsFull,
    /// The client's address holds as many sessions as one address may (answer to a `Hello`,
    /// as [`RefuseReason::AddressLimit`]).
    AddressLimit,
    /// A reason this version does not know.
    Other(u16),
}

impl BusyReason {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::WindowFull => 1,
            Self::ReplyCacheFull => 2,
            Self::ReassemblyFull => 3,
            Self::Overloaded => 4,
            Self::SessionsFull => 5,
            Self::AddressLimit => 6,
            Self::Other(v) => v,
        }
    }

    /// From a wire value; unknown values are kept as [`BusyReason::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::WindowFull,
            2 => Self::ReplyCacheFull,
            3 => Self::ReassemblyFull,
            4 => Self::Overloaded,
            5 => Self::SessionsFull,
            6 => Self::AddressLimit,
            v => Self::Other(v),
        }
    }
}

/// Why a server answered a `Hello` with `Refused` (`status` of a `Refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Every session slot holds a session in use; try again later.
    SessionsFull,
    /// The client's address already holds as many sessions as one address may.
    AddressLimit,
    /// The server accepts authenticated datagrams only.
    AuthRequired,
    /// The server does not use authentication, but the `Hello` was authenticated.
    AuthUnsupported,
    /// The server is shutting down.
    ShuttingDown,
    /// A reason this version does not know.
    Other(u16),
}

impl RefuseReason {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::SessionsFull => 1,
            Self::AddressLimit => 2,
            Self::AuthRequired => 3,
            Self::AuthUnsupported => 4,
            Self::ShuttingDown => 5,
            Self::Other(v) => v,
        }
    }

    /// From a wire value; unknown values are kept as [`RefuseReason::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::SessionsFull,
            2 => Self::AddressLimit,
            3 => Self::AuthRequired,
            4 => Self::AuthUnsupported,
            5 => Self::ShuttingDown,
            v => Self::Other(v),
        }
    }
}

/// A handshake cookie: when the server issued it, and a MAC binding it to the client's
/// address, ids and handshake nonce under a secret only the server knows.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
#[repr(C)]
pub struct CookieBody {
    /// Milliseconds since the server's epoch when the cookie was issued.
    pub issued: U64,
    /// The MAC.
    pub mac: [u8; 16],
}

/// Body of a `Hello`: what the client can receive, and the cookie of the server's `Retry`
/// (all zeros in a first `Hello`). Always this long, so that the `Retry` it may draw is no
/// larger than the `Hello` (no amplification).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct HelloBody {
    /// Largest datagram the client accepts, header included.
    pub max_datagram: U32,
    /// Largest reply body the client accepts.
    pub max_message: U32,
    /// The cookie, or zeros.
    pub cookie: CookieBody,
}

/// Body of a `Welcome`: who the server is and what it accepts.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct WelcomeBody {
    /// The server's node id, the tie-breaker of its Lamport timestamps.
    pub server_node: U64,
    /// Largest datagram the server accepts, header included.
    pub max_datagram: U32,
    /// Largest request body the server accepts.
    pub max_message: U32,
    /// Milliseconds a session may stay silent before the server closes it.
    pub idle_timeout_ms: U32,
    /// Zero.
    pub reserved: U32,
    /// The server's random nonce for this session (salt of the session keys in
    /// authenticated mode).
    pub server_nonce: [u8; 16],
}

/// Length of [`HelloBody`] on the wire.
pub const HELLO_BODY_LEN: usize = core::mem::size_of::<HelloBody>();
/// Length of [`WelcomeBody`] on the wire.
pub const WELCOME_BODY_LEN: usize = core::mem::size_of::<WelcomeBody>();
/// Length of [`CookieBody`] on the wire (the body of a `Retry`).
pub const COOKIE_LEN: usize = core::mem::size_of::<CookieBody>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_is_rp_on_the_wire() {
        assert_eq!(MAGIC.to_le_bytes(), *b"rp");
    }

    #[test]
    fn kind_round_trips_and_rejects_unknown() {
        for v in 0..=255u8 {
            match PacketKind::from_u8(v) {
                Some(k) => assert_eq!(k as u8, v),
                None => assert!(v == 0 || v > 9, "{v} should be a kind"),
            }
        }
    }

    #[test]
    fn codes_round_trip() {
        for v in 0..=64u16 {
            assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
            assert_eq!(BusyReason::from_u16(v).to_u16(), v);
            assert_eq!(RefuseReason::from_u16(v).to_u16(), v);
        }
    }

    #[test]
    fn body_sizes() {
        assert_eq!(HELLO_BODY_LEN, 32);
        assert_eq!(WELCOME_BODY_LEN, 40);
        assert_eq!(COOKIE_LEN, 24);
        // A Retry is never larger than the Hello it answers.
        const { assert!(COOKIE_LEN <= HELLO_BODY_LEN) };
    }
}
