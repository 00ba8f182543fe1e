//! Several packets in one datagram.
//!
//! A datagram holds one or more packets back to back, each a header, its tag if it is flagged
//! `AUTH`, and its payload: each packet's length is given by its own header, so the receiver
//! cuts them apart without any framing of their own. Small requests waiting for the same
//! server share a datagram this way, and so do small replies to the same client; every packet
//! keeps its own sequence number, Lamport stamp, tag and at-most-once entry, and the loss of
//! the datagram is recovered for each message on its own, by its own retransmission.

use super::header::{Flags, HEADER_LEN, TAG_LEN};

/// The packets of a datagram, in order, each exactly one packet's bytes (to be checked with
/// [`super::Packet::new_checked`] like a datagram of its own). Cutting stops at the first
/// piece whose header is truncated or claims more bytes than are left: that piece, the rest of
/// the datagram, is yielded as it is and fails to parse.
pub fn packets(datagram: &[u8]) -> Packets<'_> {
    Packets { rest: datagram }
}

/// Iterator of [`packets`].
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Packets<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = packet_len(self.rest).filter(|&n| n <= self.rest.len());
        let (packet, rest) = match len {
            Some(n) => self.rest.split_at(n),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        Some(packet)
    }
}

/// The length of the packet at the start of `buf` as its header gives it, if the header is
/// there.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    let flags = u16::from_le_bytes([*buf.get(4)?, *buf.get(5)?]);
    let payload = u32::from_le_bytes(buf.get(68..72)?.try_into().ok()?) as usize;
    let tag = if flags & Flags::AUTH.bits() != 0 {
        TAG_LEN
    } else {
        0
    };
    (HEADER_LEN + tag).checked_add(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HeaderRepr, PacketKind, PacketRepr};

    fn packet(seq: u64, payload: &[u8], auth: bool) -> Vec<u8> {
        let header = HeaderRepr {
            kind: PacketKind::Reply,
            flags: if auth { Flags::AUTH } else { Flags::empty() },
            status: 0,
            client_id: 1,
            client_incarnation: 1,
            interface: 1,
            method: 1,
            session: 1,
            seq,
            ack: 0,
            lamport: 1,
            frag_index: 0,
            frag_count: 1,
            message_len: payload.len() as u32,
            payload_len: payload.len() as u32,
        };
        let p = PacketRepr {
            header,
            tag: None,
            payload,
        };
        let mut out = vec![0; p.buffer_len()];
        p.emit(&mut out).unwrap();
        out
    }

    #[test]
    fn packets_back_to_back_are_cut_apart() {
        let (a, b, c) = (
            packet(1, b"one", false),
            packet(2, b"", true),
            packet(3, b"3", false),
        );
        let d = [a.clone(), b.clone(), c.clone()].concat();
        let parts: Vec<&[u8]> = packets(&d).collect();
        assert_eq!(parts, [&a[..], &b[..], &c[..]]);
        for (part, seq) in parts.iter().zip(1..) {
            assert_eq!(PacketRepr::parse(part).unwrap().header.seq, seq);
        }
        // One packet is a datagram of one.
        assert_eq!(packets(&a).collect::<Vec<_>>(), [&a[..]]);
    }

    #[test]
    fn a_damaged_tail_is_one_piece_that_fails_to_parse() {
        let a = packet(1, b"one", false);
        let mut d = [a.clone(), vec![1, 2, 3]].concat();
        let parts: Vec<&[u8]> = packets(&d).collect();
        assert_eq!(parts.len(), 2);
        assert!(PacketRepr::parse(parts[1]).is_err());
        // A header claiming more than is left.
        d.truncate(a.len());
        d.extend_from_slice(&packet(2, &[7; 40], false)[..80]);
        let parts: Vec<&[u8]> = packets(&d).collect();
        assert_eq!((parts.len(), parts[1].len()), (2, 80));
        assert!(PacketRepr::parse(parts[1]).is_err());
        assert_eq!(packets(&[]).count(), 0);
    }
}
