//! Property tests of the wire format: every valid representation survives emit then parse,
//! and no byte string makes the parser panic or read past its input.

use proptest::prelude::*;
use rpc_core::wire::{
    COOKIE_LEN, Flags, HEADER_LEN, HELLO_BODY_LEN, HeaderRepr, MAX_LAMPORT, Packet, PacketKind,
    PacketRepr, TAG_LEN, WELCOME_BODY_LEN,
};

fn kind() -> impl Strategy<Value = PacketKind> {
    prop_oneof![
        Just(PacketKind::Hello),
        Just(PacketKind::Welcome),
        Just(PacketKind::Request),
        Just(PacketKind::Reply),
        Just(PacketKind::ErrorReply),
        Just(PacketKind::Busy),
        Just(PacketKind::Stale),
        Just(PacketKind::Retry),
        Just(PacketKind::Refused),
    ]
}

/// A valid packet: header fields consistent with each other and with the kind, and a payload
/// of the announced length.
fn packet() -> impl Strategy<Value = (HeaderRepr, Vec<u8>)> {
    (
        kind(),
        any::<[u64; 6]>(),
        any::<[u32; 3]>(),
        any::<u16>(),
        1u16..=8,
        0usize..600,
        any::<u8>(),
    )
        .prop_map(|(kind, w, d, status, count, payload, flag_bits)| {
            let (frag_count, frag_index, message_len, payload_len) = match kind {
                PacketKind::Hello => (1, 0, HELLO_BODY_LEN, HELLO_BODY_LEN),
                PacketKind::Welcome => (1, 0, WELCOME_BODY_LEN, WELCOME_BODY_LEN),
                PacketKind::Retry => (1, 0, COOKIE_LEN, COOKIE_LEN),
                PacketKind::ErrorReply
                | PacketKind::Busy
                | PacketKind::Stale
                | PacketKind::Refused => (1, 0, 0, 0),
                PacketKind::Request | PacketKind::Reply if count == 1 => (1, 0, payload, payload),
                PacketKind::Request | PacketKind::Reply => {
                    let payload = payload.max(1);
                    (
                        count,
                        (w[0] % u64::from(count)) as u16,
                        payload * usize::from(count),
                        payload,
                    )
                }
            };
            let allowed = Flags::AUTH
                | match kind {
                    PacketKind::Request => Flags::IDEMPOTENT | Flags::RETRANSMIT,
                    PacketKind::Hello => Flags::RETRANSMIT,
                    PacketKind::Reply | PacketKind::ErrorReply => {
                        Flags::FROM_CACHE | Flags::IDEMPOTENT
                    }
                    _ => Flags::empty(),
                };
            let status = match kind {
                PacketKind::ErrorReply | PacketKind::Busy | PacketKind::Refused => status.max(1),
                _ => 0,
            };
            let session = match kind {
                PacketKind::Hello | PacketKind::Retry | PacketKind::Refused => 0,
                _ => w[1].max(1),
            };
            // A request acknowledges only calls below its own.
            let (seq, ack) = match kind {
                PacketKind::Request => (w[3].max(1), w[4] % w[3].max(1)),
                _ => (w[3], w[4]),
            };
            let header = HeaderRepr {
                kind,
                flags: Flags::from_bits_truncate(u16::from(flag_bits)) & allowed,
                status,
                client_id: w[2],
                client_incarnation: d[0],
                interface: d[1],
                method: d[2],
                session,
                seq,
                ack,
                lamport: w[5] % MAX_LAMPORT,
                frag_index,
                frag_count,
                message_len: message_len as u32,
                payload_len: payload_len as u32,
            };
            let body = (0..payload_len).map(|i| (i as u8) ^ flag_bits).collect();
            (header, body)
        })
}

proptest! {
    #[test]
    fn parse_of_emit_is_identity((header, body) in packet()) {
        let tag = [0xa5u8; TAG_LEN];
        let tag = header.flags.contains(Flags::AUTH).then_some(&tag);
        let repr = PacketRepr { header, tag, payload: &body };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).expect("a valid packet emits");
        prop_assert_eq!(n, header.overhead() + body.len());
        prop_assert_eq!(PacketRepr::parse(&buf[..n]), Ok(repr));
        // And the header alone round-trips through its byte form.
        prop_assert_eq!(&header.to_bytes()[..], &buf[..HEADER_LEN]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = Packet::new_checked(&bytes) {
            let tag = p.tag().map_or(0, |t| t.len());
            prop_assert_eq!(p.payload().len() + HEADER_LEN + tag, bytes.len());
        }
        if let Ok(repr) = PacketRepr::parse(&bytes) {
            let mut out = vec![0u8; repr.buffer_len()];
            prop_assert_eq!(repr.emit(&mut out), Ok(bytes.len()));
            prop_assert_eq!(out, bytes);
        }
    }

    #[test]
    fn mutated_valid_packets_parse_or_fail_cleanly((header, body) in packet(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let repr = PacketRepr { header, tag: None, payload: &body };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).expect("emits");
        buf[at % n] = byte;
        let cut = cut % (n + 1);
        // Whatever the damage, parsing returns; what still parses re-emits to the same bytes.
        if let Ok(parsed) = PacketRepr::parse(&buf[..cut]) {
            let mut out = vec![0u8; parsed.buffer_len()];
            prop_assert_eq!(parsed.emit(&mut out), Ok(cut));
            prop_assert_eq!(&out[..], &buf[..cut]);
        }
    }
}
