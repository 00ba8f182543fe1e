//! A checked view of a datagram ([`Packet`]) and the validated header ([`HeaderRepr`]).
//!
//! [`Packet::new_checked`] verifies the lengths, so that after it succeeds no accessor can fail;
//! [`HeaderRepr::parse`] then checks every field against the rules of its packet kind.
//! Neither allocates, and neither reads a byte outside the buffer it was given.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::WireError;
use super::header::{
    COOKIE_LEN, Flags, HEADER_LEN, HELLO_BODY_LEN, Header, MAGIC, MAX_LAMPORT, PacketKind, TAG_LEN,
    VERSION, WELCOME_BODY_LEN,
};

/// A datagram whose header fits and whose payload length matches the header.
///
/// A datagram flagged [`Flags::AUTH`] carries a [`TAG_LEN`]-byte tag between the header and
/// the payload; [`Packet::tag`] returns it (checking it is the receiver's business: only it
/// knows the key).
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    header: &'a Header,
    tag: Option<&'a [u8; TAG_LEN]>,
    payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Checks that `buf` holds a header of this protocol version, the tag if the header says
    /// there is one, and exactly the number of payload bytes the header announces.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let (header, rest) = Header::ref_from_prefix(buf).map_err(|_| WireError::Truncated)?;
        if header.magic.get() != MAGIC {
            return Err(WireError::BadMagic);
        }
        if header.version != VERSION {
            return Err(WireError::UnsupportedVersion(header.version));
        }
        let (tag, payload) = if header.flags.get() & Flags::AUTH.bits() != 0 {
            let (tag, payload) =
                <[u8; TAG_LEN]>::ref_from_prefix(rest).map_err(|_| WireError::Truncated)?;
            (Some(tag), payload)
        } else {
            (None, rest)
        };
        if header.payload_len.get() as usize != payload.len() {
            return Err(WireError::LengthMismatch);
        }
        Ok(Self {
            header,
            tag,
            payload,
        })
    }

    /// The header, read in place.
    pub fn header(&self) -> &'a Header {
        self.header
    }

    /// The header's bytes, as the tag covers them.
    pub fn header_bytes(&self) -> &'a [u8] {
        self.header.as_bytes()
    }

    /// The authentication tag, if the datagram carries one.
    pub fn tag(&self) -> Option<&'a [u8; TAG_LEN]> {
        self.tag
    }

    /// The body bytes carried by this datagram.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// A validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    /// What the packet is.
    pub kind: PacketKind,
    /// Flag bits.
    pub flags: Flags,
    /// Error or busy code; zero unless `kind` is `ErrorReply` or `Busy`.
    pub status: u16,
    /// Client identifier.
    pub client_id: u64,
    /// Client incarnation.
    pub client_incarnation: u32,
    /// Interface fingerprint.
    pub interface: u32,
    /// Method fingerprint.
    pub method: u32,
    /// Session identifier; zero only in `Hello`.
    pub session: u64,
    /// Call sequence number or handshake nonce.
    pub seq: u64,
    /// Cumulative acknowledgement of ended calls (requests).
    pub ack: u64,
    /// Lamport timestamp, below [`MAX_LAMPORT`].
    pub lamport: u64,
    /// Fragment index, below `frag_count`.
    pub frag_index: u16,
    /// Fragment count, at least 1.
    pub frag_count: u16,
    /// Length of the whole message body.
    pub message_len: u32,
    /// Length of the body bytes in this datagram.
    pub payload_len: u32,
}

impl HeaderRepr {
    /// Validates the header of a checked packet.
    pub fn parse(packet: &Packet<'_>) -> Result<Self, WireError> {
        let h = packet.header();
        let kind = PacketKind::from_u8(h.kind).ok_or(WireError::UnknownKind(h.kind))?;
        let flags = Flags::from_bits(h.flags.get()).ok_or(WireError::UnknownFlags)?;
        let repr = Self {
            kind,
            flags,
            status: h.status.get(),
            client_id: h.client_id.get(),
            client_incarnation: h.client_incarnation.get(),
            interface: h.interface.get(),
            method: h.method.get(),
            session: h.session.get(),
            seq: h.seq.get(),
            ack: h.ack.get(),
            lamport: h.lamport.get(),
            frag_index: h.frag_index.get(),
            frag_count: h.frag_count.get(),
            message_len: h.message_len.get(),
            payload_len: h.payload_len.get(),
        };
        repr.check()?;
        Ok(repr)
    }

    /// Checks the rules that tie the fields together; [`HeaderRepr::parse`] and
    /// [`PacketRepr::emit`] both apply them, so only valid headers are read or written.
    /// Inlined into `parse`, the header under check stays in registers instead of going
    /// through memory on every datagram.
    #[inline]
    pub fn check(&self) -> Result<(), WireError> {
        if self.lamport >= MAX_LAMPORT {
            return Err(WireError::BadTimestamp);
        }
        if self.frag_count == 0 || self.frag_index >= self.frag_count {
            return Err(WireError::BadFragment);
        }
        if self.payload_len > self.message_len {
            return Err(WireError::LengthMismatch);
        }
        if self.frag_count == 1 {
            if self.payload_len != self.message_len {
                return Err(WireError::LengthMismatch);
            }
        } else if self.payload_len == 0 || self.message_len < u32::from(self.frag_count) {
            return Err(WireError::BadFragment);
        }
        let status_expected = matches!(
            self.kind,
            PacketKind::ErrorReply | PacketKind::Busy | PacketKind::Refused
        );
        if status_expected != (self.status != 0) {
            return Err(WireError::BadStatus);
        }
        let client_flags = Flags::IDEMPOTENT | Flags::RETRANSMIT;
        let allowed = match self.kind {
            PacketKind::Request => client_flags,
            PacketKind::Hello => Flags::RETRANSMIT,
            PacketKind::Reply | PacketKind::ErrorReply => Flags::FROM_CACHE | Flags::IDEMPOTENT,
            PacketKind::Welcome
            | PacketKind::Busy
            | PacketKind::Stale
            | PacketKind::Retry
            | PacketKind::Refused => Flags::empty(),
        } | Flags::AUTH;
        if !allowed.contains(self.flags) {
            return Err(WireError::UnknownFlags);
        }
        let fixed_body = match self.kind {
            PacketKind::Hello => Some(HELLO_BODY_LEN),
            PacketKind::Welcome => Some(WELCOME_BODY_LEN),
            PacketKind::Retry => Some(COOKIE_LEN),
            PacketKind::ErrorReply | PacketKind::Busy | PacketKind::Stale | PacketKind::Refused => {
                Some(0)
            }
            PacketKind::Request | PacketKind::Reply => None,
        };
        if let Some(len) = fixed_body {
            if self.frag_count != 1 || self.message_len as usize != len {
                return Err(WireError::LengthMismatch);
            }
        }
        if self.kind.is_handshake() == (self.session != 0) {
            return Err(WireError::BadSession);
        }
        // A request's own call is in flight at the client, so everything the client
        // acknowledges lies below it.
        if self.kind == PacketKind::Request && self.ack >= self.seq {
            return Err(WireError::BadAck);
        }
        Ok(())
    }

    /// The header in wire form. The caller is responsible for having checked it.
    pub fn to_header(&self) -> Header {
        Header {
            magic: U16::new(MAGIC),
            version: VERSION,
            kind: self.kind as u8,
            flags: U16::new(self.flags.bits()),
            status: U16::new(self.status),
            client_id: U64::new(self.client_id),
            client_incarnation: U32::new(self.client_incarnation),
            interface: U32::new(self.interface),
            session: U64::new(self.session),
            seq: U64::new(self.seq),
            ack: U64::new(self.ack),
            lamport: U64::new(self.lamport),
            method: U32::new(self.method),
            frag_index: U16::new(self.frag_index),
            frag_count: U16::new(self.frag_count),
            message_len: U32::new(self.message_len),
            payload_len: U32::new(self.payload_len),
        }
    }

    /// Bytes before the payload: the header, and the tag when the packet is flagged `AUTH`.
    pub fn overhead(&self) -> usize {
        if self.flags.contains(Flags::AUTH) {
            HEADER_LEN + TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(self.to_header().as_bytes());
        out
    }
}

/// A validated packet: header, tag and the payload it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRepr<'a> {
    /// The validated header.
    pub header: HeaderRepr,
    /// The authentication tag, when the header is flagged `AUTH` (not checked: only the
    /// receiver knows the key).
    pub tag: Option<&'a [u8; TAG_LEN]>,
    /// The body bytes of this datagram.
    pub payload: &'a [u8],
}

impl<'a> PacketRepr<'a> {
    /// Checks and validates a datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let packet = Packet::new_checked(buf)?;
        let header = HeaderRepr::parse(&packet)?;
        Ok(Self {
            header,
            tag: packet.tag(),
            payload: packet.payload(),
        })
    }

    /// Bytes needed to emit this packet (a tag's room included when it is flagged `AUTH`).
    pub fn buffer_len(&self) -> usize {
        self.header.overhead() + self.payload.len()
    }

    /// Writes the packet into `out`, returning the number of bytes written. An `AUTH`
    /// packet's tag is written as given, or left zero (for the sender's key to fill in).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        if self.header.payload_len as usize != self.payload.len() {
            return Err(WireError::LengthMismatch);
        }
        self.header.check()?;
        let len = self.buffer_len();
        let out = out.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        let (head, body) = out.split_at_mut(self.header.overhead());
        head[..HEADER_LEN].copy_from_slice(self.header.to_header().as_bytes());
        match self.tag {
            Some(tag) if head.len() > HEADER_LEN => head[HEADER_LEN..].copy_from_slice(tag),
            _ => head[HEADER_LEN..].fill(0),
        }
        body.copy_from_slice(self.payload);
        Ok(len)
    }
}

/// Reads a fixed-size body (`HelloBody`, `WelcomeBody`) from a payload of the exact length.
pub fn read_body<T: FromBytes>(payload: &[u8]) -> Result<T, WireError> {
    T::read_from_bytes(payload).map_err(|_| WireError::LengthMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{HelloBody, WelcomeBody};

    /// A request for interface 0x11223344, method 0xaabbccdd, carrying 3 body bytes.
    const REQUEST: [u8; HEADER_LEN + 3] = [
        b'r', b'p', // magic
        2,    // version
        3,    // kind: Request
        0x03, 0x00, // flags: IDEMPOTENT | RETRANSMIT
        0x00, 0x00, // status
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // client_id
        0x2a, 0x00, 0x00, 0x00, // client_incarnation = 42
        0x44, 0x33, 0x22, 0x11, // interface
        0x07, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, // session = 9 << 32 | 7
        0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq = 16
        0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ack = 15
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // lamport = 256
        0xdd, 0xcc, 0xbb, 0xaa, // method
        0x00, 0x00, // frag_index
        0x01, 0x00, // frag_count
        0x03, 0x00, 0x00, 0x00, // message_len
        0x03, 0x00, 0x00, 0x00, // payload_len
        b'a', b'b', b'c',
    ];

    fn request_repr() -> HeaderRepr {
        HeaderRepr {
            kind: PacketKind::Request,
            flags: Flags::IDEMPOTENT | Flags::RETRANSMIT,
            status: 0,
            client_id: 0x0807_0605_0403_0201,
            client_incarnation: 42,
            interface: 0x1122_3344,
            method: 0xaabb_ccdd,
            session: (9 << 32) | 7,
            seq: 16,
            ack: 15,
            lamport: 256,
            frag_index: 0,
            frag_count: 1,
            message_len: 3,
            payload_len: 3,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(packet.header().kind, 3);
        assert_eq!(packet.header().seq.get(), 16);
        assert_eq!(packet.payload(), b"abc");
    }

    #[test]
    fn parse() {
        let repr = PacketRepr::parse(&REQUEST).unwrap();
        assert_eq!(repr.header, request_repr());
        assert_eq!(repr.payload, b"abc");
    }

    #[test]
    fn emit() {
        let repr = PacketRepr {
            header: request_repr(),
            tag: None,
            payload: b"abc",
        };
        let mut out = [0u8; 128];
        let n = repr.emit(&mut out).unwrap();
        assert_eq!(&out[..n], &REQUEST[..]);
        assert_eq!(repr.emit(&mut out[..10]), Err(WireError::BufferTooSmall));
    }

    #[test]
    fn construct_header_bytes() {
        assert_eq!(request_repr().to_bytes()[..], REQUEST[..HEADER_LEN]);
    }

    #[test]
    fn truncated_and_length_errors() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                PacketRepr::parse(&REQUEST[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        // Header says 3 payload bytes; give 2 or 4.
        assert_eq!(
            PacketRepr::parse(&REQUEST[..HEADER_LEN + 2]).unwrap_err(),
            WireError::LengthMismatch
        );
        let mut long = REQUEST.to_vec();
        long.push(0);
        assert_eq!(
            PacketRepr::parse(&long).unwrap_err(),
            WireError::LengthMismatch
        );
    }

    #[test]
    fn field_errors() {
        let cases: &[(usize, u8, WireError)] = &[
            (0, b'x', WireError::BadMagic),
            (2, 1, WireError::UnsupportedVersion(1)),
            (3, 0, WireError::UnknownKind(0)),
            (3, 99, WireError::UnknownKind(99)),
            (5, 0x80, WireError::UnknownFlags),
            (4, 0x04, WireError::UnknownFlags), // FROM_CACHE on a request
            (6, 1, WireError::BadStatus),       // status on a request
            (60, 1, WireError::BadFragment),    // index 1 of 1
            (62, 0, WireError::BadFragment),    // count 0
            (55, 0x40, WireError::BadTimestamp),
        ];
        for &(offset, value, err) in cases {
            let mut bytes = REQUEST;
            bytes[offset] = value;
            assert_eq!(
                PacketRepr::parse(&bytes).unwrap_err(),
                err,
                "byte {offset} = {value}"
            );
        }
        // A request acknowledging its own call.
        let mut bytes = REQUEST;
        bytes[40] = 0x10;
        assert_eq!(PacketRepr::parse(&bytes).unwrap_err(), WireError::BadAck);
        // A request without a session.
        let mut bytes = REQUEST;
        bytes[24..32].fill(0);
        assert_eq!(
            PacketRepr::parse(&bytes).unwrap_err(),
            WireError::BadSession
        );
    }

    #[test]
    fn an_auth_packet_carries_its_tag_between_header_and_payload() {
        let mut bytes = REQUEST.to_vec();
        bytes[4] |= Flags::AUTH.bits() as u8;
        // Flagged, but too short for a tag.
        assert_eq!(
            PacketRepr::parse(&bytes[..HEADER_LEN + 2]).unwrap_err(),
            WireError::Truncated
        );
        let tag = [0x5a; TAG_LEN];
        bytes.splice(HEADER_LEN..HEADER_LEN, tag);
        let p = PacketRepr::parse(&bytes).unwrap();
        assert_eq!((p.tag, p.payload), (Some(&tag), &b"abc"[..]));
        assert!(p.header.flags.contains(Flags::AUTH));
        let mut out = vec![0u8; p.buffer_len()];
        assert_eq!(p.emit(&mut out), Ok(bytes.len()));
        assert_eq!(out, bytes);
        // The payload length counts the payload only.
        bytes.push(0);
        assert_eq!(
            PacketRepr::parse(&bytes).unwrap_err(),
            WireError::LengthMismatch
        );
    }

    #[test]
    fn control_bodies_have_fixed_lengths() {
        let hello = HeaderRepr {
            kind: PacketKind::Hello,
            flags: Flags::empty(),
            session: 0,
            message_len: HELLO_BODY_LEN as u32,
            payload_len: HELLO_BODY_LEN as u32,
            ..request_repr()
        };
        assert_eq!(hello.check(), Ok(()));
        assert_eq!(
            HeaderRepr {
                message_len: 0,
                payload_len: 0,
                ..hello
            }
            .check(),
            Err(WireError::LengthMismatch)
        );
        let body = HelloBody {
            max_datagram: 1472.into(),
            max_message: 1024.into(),
            cookie: Default::default(),
        };
        let mut out = [0u8; HEADER_LEN + HELLO_BODY_LEN];
        let n = PacketRepr {
            header: hello,
            tag: None,
            payload: body.as_bytes(),
        }
        .emit(&mut out)
        .unwrap();
        let parsed = PacketRepr::parse(&out[..n]).unwrap();
        assert_eq!(read_body::<HelloBody>(parsed.payload).unwrap(), body);
        assert_eq!(
            read_body::<WelcomeBody>(parsed.payload),
            Err(WireError::LengthMismatch)
        );
    }
}
