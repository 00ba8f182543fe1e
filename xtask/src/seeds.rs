//! The committed fuzz seed corpus, built from the real header types so the seeds stay valid.

use std::path::Path;

use rpc_core::marshal;
use rpc_core::wire::{
    Flags, FragmentPlan, HEADER_LEN, HELLO_BODY_LEN, HeaderRepr, HelloBody, PacketKind,
    WELCOME_BODY_LEN, WelcomeBody,
};
use zerocopy::IntoBytes;

fn header(kind: PacketKind, seq: u64, len: usize) -> HeaderRepr {
    HeaderRepr {
        kind,
        flags: Flags::empty(),
        status: 0,
        client_id: 1,
        client_incarnation: 1,
        interface: 0x1111,
        method: 0x2222,
        session: (7 << 32) | 1,
        seq,
        ack: seq.saturating_sub(1),
        lamport: seq * 2 + 1,
        frag_index: 0,
        frag_count: 1,
        message_len: len as u32,
        payload_len: len as u32,
    }
}

fn packet(h: &HeaderRepr, body: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Every fragment of a message, as datagrams.
fn fragments(mut h: HeaderRepr, body: &[u8], datagram: usize) -> Vec<Vec<u8>> {
    let plan = FragmentPlan::new(body.len(), datagram).expect("plan");
    h.frag_count = plan.count();
    h.message_len = body.len() as u32;
    (0..plan.count())
        .map(|i| {
            let r = plan.range(i);
            let fh = HeaderRepr {
                frag_index: i,
                payload_len: r.len() as u32,
                ..h
            };
            packet(&fh, &body[r])
        })
        .collect()
}

/// Joins datagrams with the `u16` length prefixes the stateful targets expect.
fn stream(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        out.extend_from_slice(&(d.len() as u16).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

fn hello() -> Vec<u8> {
    let mut h = header(PacketKind::Hello, 1, HELLO_BODY_LEN);
    h.session = 0;
    h.ack = 0;
    packet(
        &h,
        HelloBody {
            max_datagram: 1472.into(),
            max_message: 65536.into(),
            cookie: Default::default(),
        }
        .as_bytes(),
    )
}

fn welcome() -> Vec<u8> {
    welcome_with(65536)
}

fn welcome_with(max_message: u32) -> Vec<u8> {
    let h = header(PacketKind::Welcome, 1, WELCOME_BODY_LEN);
    packet(
        &h,
        WelcomeBody {
            server_node: 9.into(),
            max_datagram: 1472.into(),
            max_message: max_message.into(),
            idle_timeout_ms: 120_000.into(),
            reserved: 0.into(),
            server_nonce: [0; 16],
        }
        .as_bytes(),
    )
}

pub(crate) fn write(dir: &Path) -> anyhow::Result<()> {
    let body: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let request = packet(&header(PacketKind::Request, 1, 5), b"hello");
    let idempotent = packet(
        &HeaderRepr {
            flags: Flags::IDEMPOTENT,
            ..header(PacketKind::Request, 2, 3)
        },
        b"abc",
    );
    let reply = packet(&header(PacketKind::Reply, 1, 5), b"olleh");
    let error = packet(
        &HeaderRepr {
            status: 2,
            ..header(PacketKind::ErrorReply, 1, 0)
        },
        b"",
    );
    let busy = packet(
        &HeaderRepr {
            status: 1,
            ..header(PacketKind::Busy, 2, 0)
        },
        b"",
    );
    let stale = packet(&header(PacketKind::Stale, 3, 0), b"");
    let request_frags = fragments(header(PacketKind::Request, 3, 0), &body, HEADER_LEN + 1000);
    let reply_frags = fragments(header(PacketKind::Reply, 2, 0), &body, HEADER_LEN + 700);

    let mut corpus: Vec<(&str, &str, Vec<u8>)> = vec![
        ("packet", "hello", hello()),
        ("packet", "welcome", welcome()),
        ("packet", "request", request.clone()),
        ("packet", "request-idempotent", idempotent.clone()),
        ("packet", "reply", reply.clone()),
        ("packet", "error", error.clone()),
        ("packet", "busy", busy.clone()),
        ("packet", "stale", stale.clone()),
        ("packet", "fragment", request_frags[1].clone()),
        ("packet", "truncated", request[..HEADER_LEN - 1].to_vec()),
        (
            "server",
            "requests-and-duplicates",
            stream(&[
                request.clone(),
                request.clone(),
                idempotent.clone(),
                idempotent.clone(),
            ]),
        ),
        (
            "server",
            "fragmented-request",
            stream(&request_frags.iter().rev().cloned().collect::<Vec<_>>()),
        ),
        (
            "server",
            "hello-then-requests",
            stream(&[hello(), request.clone(), hello(), request.clone()]),
        ),
        (
            "client",
            "welcome-then-replies",
            stream(&[welcome(), reply.clone(), reply.clone(), busy, error]),
        ),
        (
            "client",
            "fragmented-reply",
            stream(&[
                welcome(),
                reply_frags[3].clone(),
                reply_frags[0].clone(),
                reply_frags[1].clone(),
                reply_frags[2].clone(),
                reply_frags[4].clone(),
            ]),
        ),
        ("client", "stale", stream(&[welcome(), stale])),
        // Found by fuzzing: a Welcome advertising a zero message size once made the client
        // harness loop.
        (
            "client",
            "welcome-with-zero-message-size",
            stream(&[welcome_with(0), reply.clone()]),
        ),
        ("reassembly", "in-order", stream(&request_frags)),
        (
            "reassembly",
            "reversed-with-duplicates",
            stream(&[
                request_frags[2].clone(),
                request_frags[2].clone(),
                request_frags[0].clone(),
                request_frags[1].clone(),
            ]),
        ),
    ];
    let values: [(&str, Vec<u8>); 6] = [
        ("bytes", marshal::encode(&body[..100]).to_vec()),
        ("string", marshal::encode("zero-copy").to_vec()),
        ("tuple", marshal::encode(&(1u8, 2u16, 3u32, 4u64)).to_vec()),
        (
            "option-strings",
            marshal::encode(&Some(vec![String::from("a"), String::from("bc")])).to_vec(),
        ),
        (
            "result",
            marshal::encode(&Err::<Vec<u64>, String>(String::from("no"))).to_vec(),
        ),
        (
            "nested",
            marshal::encode(&vec![vec![(true, 'x')], vec![]]).to_vec(),
        ),
    ];
    for (name, bytes) in values {
        corpus.push(("decode", name, bytes));
    }
    // The adversary target's input is a mode byte (odd: authenticated) and operations: 0/1
    // start a call (next byte: length / 23), 2/3 deliver the oldest datagram, 4 inject
    // bytes, 5 replay and 6 mutate a seen datagram, 7 let time pass.
    let deliver = |n: usize| vec![0x22u8; n];
    let mut honest = vec![0u8];
    honest.extend([0x00, 3, 0x07]);
    honest.extend(deliver(12));
    honest.extend([0x10, 60, 0x07]);
    honest.extend(deliver(30));
    let mut replays = honest.clone();
    for k in 0..8u8 {
        replays.extend([0x05, k, 0x22, 0x06, k, 40, 0x80, 0x22]);
    }
    let mut injected = honest.clone();
    injected.extend([0x04, request.len() as u8]);
    injected.extend(&request);
    injected.extend([0x22, 0x22, 0x07, 0x22]);
    let mut authenticated = honest.clone();
    authenticated[0] = 1;
    authenticated.extend(&replays[honest.len()..]);
    for (name, bytes) in [
        ("honest", honest),
        ("replays-and-mutations", replays),
        ("injected-request", injected),
        ("authenticated", authenticated),
    ] {
        corpus.push(("adversary", name, bytes));
    }
    // The shared-memory region target: a shape byte (ring of 2, slots of 8 bytes: 1), then
    // the region's words: an empty ring, one committed datagram, a tail that lies, a length
    // beyond the slot.
    let region = |words: &[(usize, u64)]| {
        let mut w = vec![0u64; 34];
        for &(i, v) in words {
            w[i] = v;
        }
        let mut bytes = vec![1u8];
        for v in w {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    };
    let hello = u64::from_le_bytes(*b"hello\0\0\0");
    for (name, bytes) in [
        ("empty", region(&[])),
        (
            "one-committed",
            region(&[(0, 1), (24, 1 << 32 | 5), (32, hello)]),
        ),
        ("lying-tail", region(&[(0, 2), (24, 1 << 32 | 5)])),
        ("too-long", region(&[(0, 1), (24, 1 << 32 | 4096)])),
    ] {
        corpus.push(("shm_region", name, bytes));
    }
    for (target, name, bytes) in corpus {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
    }
    Ok(())
}
