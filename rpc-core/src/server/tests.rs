//! Unit tests of the server state machine: hand-built datagrams, virtual time.

use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use zerocopy::IntoBytes;

use super::*;
use crate::config::ETHERNET_DATAGRAM;
use crate::sim::SIM_WALL_CLOCK;
use crate::wire::{HELLO_BODY_LEN, PacketRepr};

/// Clients are addressed by their id.
type Addr = u64;

const INCARNATION: u32 = 0x00ab_cdef;
const NODE: u64 = 0x5e4e;
const CLIENT_INC: u32 = 3;
const IFACE: u32 = 0x1111_2222;
const METHOD: u32 = 0x3333_4444;
/// Body bytes per datagram at [`ETHERNET_DATAGRAM`].
const CHUNK: usize = ETHERNET_DATAGRAM - HEADER_LEN;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn server_with(config: ServerConfig) -> Server<Addr> {
    let clock = Arc::new(LamportClock::new(NODE, SIM_WALL_CLOCK, Instant::now()));
    Server::new(config, INCARNATION, clock, ChaCha8Rng::seed_from_u64(7)).unwrap()
}

fn server() -> Server<Addr> {
    server_with(ServerConfig::default())
}

/// A server whose reply cache holds 100 bytes per session and 150 in all.
fn small_cache_server() -> Server<Addr> {
    server_with(ServerConfig {
        session_cache_bytes: 100,
        total_cache_bytes: 150,
        ..ServerConfig::default()
    })
}

/// Every figure of `memory()` is within its configured bound.
fn check(s: &Server<Addr>) {
    if let Err(what) = s.memory().check(s.config()) {
        panic!("{what} over its bound: {:?}", s.memory());
    }
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

/// A datagram with this header and payload (`payload_len` filled in).
fn emit(header: HeaderRepr, payload: &[u8]) -> Vec<u8> {
    let header = HeaderRepr {
        payload_len: payload.len() as u32,
        ..header
    };
    let packet = PacketRepr {
        header,
        tag: None,
        payload,
    };
    let mut out = vec![0; packet.buffer_len()];
    packet.emit(&mut out).expect("tests build valid datagrams");
    out
}

fn parse(datagram: &[u8]) -> (HeaderRepr, Vec<u8>) {
    let p = PacketRepr::parse(datagram).expect("the server emits valid datagrams");
    (p.header, p.payload.to_vec())
}

fn hello_header(client: u64, nonce: u64) -> HeaderRepr {
    HeaderRepr {
        kind: PacketKind::Hello,
        flags: Flags::empty(),
        status: 0,
        client_id: client,
        client_incarnation: CLIENT_INC,
        interface: 0,
        method: 0,
        session: 0,
        seq: nonce,
        ack: 0,
        lamport: 1,
        frag_index: 0,
        frag_count: 1,
        message_len: HELLO_BODY_LEN as u32,
        payload_len: 0,
    }
}

fn hello_body(max_datagram: usize, max_message: usize) -> HelloBody {
    HelloBody {
        max_datagram: (max_datagram as u32).into(),
        max_message: (max_message as u32).into(),
        cookie: CookieBody::default(),
    }
}

/// Sends `hello` (without a cookie), checks that the answer is a Retry for `client`, and
/// returns the same Hello carrying the Retry's cookie.
fn with_cookie(s: &mut Server<Addr>, now: Instant, client: u64, hello: &[u8]) -> Vec<u8> {
    assert!(s.handle_datagram(now, client, hello).is_none());
    let out = drain(s);
    assert_eq!(out.len(), 1, "one answer to a Hello: {out:?}");
    let (dest, h, cookie) = &out[0];
    assert_eq!((*dest, h.kind, h.session), (client, PacketKind::Retry, 0));
    let mut d = hello.to_vec();
    d[HEADER_LEN + 8..HEADER_LEN + HELLO_BODY_LEN].copy_from_slice(cookie);
    d
}

fn hello(client: u64) -> Vec<u8> {
    emit(
        hello_header(client, 1),
        hello_body(ETHERNET_DATAGRAM, 1 << 20).as_bytes(),
    )
}

/// Everything the server has queued: destination, header, payload.
fn drain(s: &mut Server<Addr>) -> Vec<(Addr, HeaderRepr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit() {
        let mut datagram = t.header.to_vec();
        datagram.extend_from_slice(t.body);
        let (h, payload) = parse(&datagram);
        out.push((t.dest, h, payload));
        assert!(out.len() < 10_000, "poll_transmit does not end");
    }
    out
}

/// Opens a session for `client` (its Hello, the Welcome); returns the session id.
fn open_with(s: &mut Server<Addr>, now: Instant, client: u64, hello: &[u8]) -> u64 {
    let hello = with_cookie(s, now, client, hello);
    assert!(s.handle_datagram(now, client, &hello).is_none());
    let out = drain(s);
    assert_eq!(out.len(), 1);
    let (dest, h, _) = &out[0];
    assert_eq!(
        (*dest, h.kind, h.client_id),
        (client, PacketKind::Welcome, client)
    );
    h.session
}

fn open(s: &mut Server<Addr>, now: Instant, client: u64) -> u64 {
    open_with(s, now, client, &hello(client))
}

fn request_header(client: u64, session: u64, seq: u64, ack: u64) -> HeaderRepr {
    HeaderRepr {
        kind: PacketKind::Request,
        flags: Flags::empty(),
        status: 0,
        client_id: client,
        client_incarnation: CLIENT_INC,
        interface: IFACE,
        method: METHOD,
        session,
        seq,
        ack,
        lamport: 100 + seq,
        frag_index: 0,
        frag_count: 1,
        message_len: 0,
        payload_len: 0,
    }
}

fn request(client: u64, session: u64, seq: u64, ack: u64, body: &[u8]) -> Vec<u8> {
    emit(
        HeaderRepr {
            message_len: body.len() as u32,
            ..request_header(client, session, seq, ack)
        },
        body,
    )
}

fn idempotent_request(client: u64, session: u64, seq: u64, ack: u64, body: &[u8]) -> Vec<u8> {
    let h = request_header(client, session, seq, ack);
    emit(
        HeaderRepr {
            flags: Flags::IDEMPOTENT,
            message_len: body.len() as u32,
            ..h
        },
        body,
    )
}

/// Fragment `index` of a request with header `h` and `body`, in [`CHUNK`]-byte pieces.
fn fragment(h: HeaderRepr, body: &[u8], index: u16) -> Vec<u8> {
    let start = usize::from(index) * CHUNK;
    let end = (start + CHUNK).min(body.len());
    let h = HeaderRepr {
        frag_index: index,
        frag_count: body.len().div_ceil(CHUNK) as u16,
        message_len: body.len() as u32,
        ..h
    };
    emit(h, &body[start..end])
}

/// Replies to a call: `begin_reply`, the datagrams of its plan (parsed), `finish_reply`.
fn respond(
    s: &mut Server<Addr>,
    now: Instant,
    ticket: &Ticket<Addr>,
    body: &[u8],
) -> Vec<(HeaderRepr, Vec<u8>)> {
    let plan = s
        .begin_reply(now, ticket, Ok(body.len()))
        .expect("the client waits for this reply");
    assert_eq!(plan.dest, ticket.dest());
    let datagrams: Vec<Vec<u8>> = (0..plan.count())
        .map(|i| {
            let mut datagram = plan.header(i).to_vec();
            datagram.extend_from_slice(&body[plan.range(i)]);
            datagram
        })
        .collect();
    // What the server offers to send in one piece is exactly the planned datagram.
    if let Some(kept) = s.finish_reply(ticket, &plan, [body]) {
        assert_eq!([kept.to_vec()], *datagrams);
    }
    check(s);
    datagrams.iter().map(|d| parse(d)).collect()
}

/// Executes call `seq` of `client` and replies `reply`.
fn complete(
    s: &mut Server<Addr>,
    now: Instant,
    client: u64,
    session: u64,
    seq: u64,
    ack: u64,
    reply: &[u8],
) {
    let d = request(client, session, seq, ack, b"req");
    let call = s.handle_datagram(now, client, &d).expect("a new call");
    respond(s, now, &call.ticket, reply);
}

/// The one control datagram queued: its kind and status, and that it echoes the request.
fn control_reply(s: &mut Server<Addr>, client: u64, session: u64, seq: u64) -> (PacketKind, u16) {
    let out = drain(s);
    assert_eq!(out.len(), 1, "{out:?}");
    let (dest, h, payload) = &out[0];
    assert_eq!(
        (*dest, h.client_id, h.client_incarnation),
        (client, client, CLIENT_INC)
    );
    assert_eq!(
        (h.session, h.seq, h.interface, h.method),
        (session, seq, IFACE, METHOD)
    );
    assert!(payload.is_empty());
    (h.kind, h.status)
}

#[test]
fn hello_gets_a_retry_then_a_welcome_and_a_duplicate_hello_the_same_session() {
    let t0 = Instant::now();
    let mut s = server();
    let hello = emit(
        HeaderRepr {
            lamport: 40,
            ..hello_header(1, 5)
        },
        hello_body(1200, 5000).as_bytes(),
    );
    // The first Hello gets a cookie, and leaves nothing behind: no session, no clock change.
    assert!(s.handle_datagram(t0, 1, &hello).is_none());
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let (dest, h, cookie) = &out[0];
    assert_eq!(
        (*dest, h.kind, h.session, h.seq, h.lamport, cookie.len()),
        (1, PacketKind::Retry, 0, 5, 0, COOKIE_LEN)
    );
    assert_eq!(
        (s.memory().sessions, s.lamport(), s.stats().retries),
        (0, 0, 1)
    );
    let hello = with_cookie(&mut s, t0, 1, &hello);
    assert!(s.handle_datagram(t0, 1, &hello).is_none());
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let (dest, h, payload) = &out[0];
    let session = h.session;
    assert_eq!(*dest, 1);
    assert_eq!((session >> 32) as u32, INCARNATION);
    assert_eq!((session >> 16) & 0xffff, 0, "the first slot");
    assert_eq!(
        *h,
        HeaderRepr {
            kind: PacketKind::Welcome,
            flags: Flags::empty(),
            status: 0,
            client_id: 1,
            client_incarnation: CLIENT_INC,
            interface: 0,
            method: 0,
            session,
            seq: 5,
            ack: 0,
            // Observed 40 (41), then ticked for the Welcome.
            lamport: 42,
            frag_index: 0,
            frag_count: 1,
            message_len: WELCOME_BODY_LEN as u32,
            payload_len: WELCOME_BODY_LEN as u32,
        }
    );
    let welcome = read_body::<WelcomeBody>(payload).unwrap();
    assert_eq!(welcome.server_node.get(), NODE);
    assert_eq!(
        welcome.max_datagram.get() as usize,
        ServerConfig::default().max_datagram
    );
    assert_eq!(
        welcome.max_message.get() as usize,
        ServerConfig::default().max_message
    );
    assert_eq!(welcome.idle_timeout_ms.get(), 120_000);
    assert_eq!((s.stats().sessions_opened, s.memory().sessions), (1, 1));

    // The client did not get the Welcome and says Hello again, with the same cookie.
    let mut again = hello.clone();
    again[4] |= Flags::RETRANSMIT.bits() as u8;
    assert!(s.handle_datagram(t0 + ms(1), 1, &again).is_none());
    let out = drain(&mut s);
    assert_eq!((out.len(), out[0].1.session, out[0].1.seq), (1, session, 5));
    assert_eq!((s.stats().sessions_opened, s.memory().sessions), (1, 1));

    // Another client: another slot.
    let other = open(&mut s, t0, 2);
    assert_ne!(other, session);
    assert_eq!(
        ((other >> 32) as u32, (other >> 16) & 0xffff),
        (INCARNATION, 1)
    );
    assert_eq!(s.memory().sessions, 2);

    // A Hello whose datagram limit cannot hold a header is refused.
    let tiny = emit(hello_header(3, 1), hello_body(HEADER_LEN, 5000).as_bytes());
    assert!(s.handle_datagram(t0, 3, &tiny).is_none());
    assert!(drain(&mut s).is_empty());
    assert_eq!((s.stats().dropped.malformed, s.memory().sessions), (1, 2));
    check(&s);
}

#[test]
fn a_cookie_is_bound_to_its_address_ids_and_nonce_and_expires() {
    let t0 = Instant::now();
    let mut s = server();
    let good = with_cookie(&mut s, t0, 1, &hello(1));
    // From another address, or with other ids or nonce: a fresh Retry, and no session.
    let mut other_ids = good.clone();
    other_ids[8] ^= 1;
    let mut other_nonce = good.clone();
    other_nonce[32] ^= 1;
    let mut forged = good.clone();
    forged[HEADER_LEN + 20] ^= 1;
    for (src, d) in [(2, &good), (1, &other_ids), (1, &other_nonce), (1, &forged)] {
        assert!(s.handle_datagram(t0, src, d).is_none());
        let out = drain(&mut s);
        assert_eq!(out[0].1.kind, PacketKind::Retry);
    }
    assert_eq!((s.stats().dropped.bad_cookie, s.memory().sessions), (4, 0));
    // Too late: its lifetime is over.
    let late = t0 + ServerConfig::default().cookie_lifetime + secs(1);
    assert!(s.handle_datagram(late, 1, &good).is_none());
    assert_eq!(drain(&mut s)[0].1.kind, PacketKind::Retry);
    assert_eq!(s.memory().sessions, 0);
    // In time, from the right address: a session.
    assert!(s.handle_datagram(t0 + secs(1), 1, &good).is_none());
    assert_eq!(drain(&mut s)[0].1.kind, PacketKind::Welcome);
    assert_eq!(s.memory().sessions, 1);
}

#[test]
fn a_reply_is_awaited_alone_when_its_request_acknowledged_every_call_before_it() {
    let t0 = Instant::now();
    let mut s = server();
    // The client takes datagrams of 572 bytes (500 of body).
    let hello = emit(hello_header(1, 1), hello_body(572, 4000).as_bytes());
    let session = open_with(&mut s, t0, 1, &hello);
    let awaited = |s: &mut Server<Addr>, seq, ack, len| {
        let d = request(1, session, seq, ack, b"q");
        let call = s.handle_datagram(t0, 1, &d).unwrap();
        let plan = s.begin_reply(t0, &call.ticket, Ok(len)).unwrap();
        s.finish_reply(&call.ticket, &plan, [&body(len)[..]]);
        plan.awaited()
    };
    // Call 1 alone; call 2 sent while 1 was still in flight (ack 0); call 3 after both ended.
    assert!(awaited(&mut s, 1, 0, 10));
    assert!(!awaited(&mut s, 2, 0, 10));
    assert!(awaited(&mut s, 3, 2, 10));
    // Alone, but a reply of several datagrams: a bulk transfer.
    assert!(!awaited(&mut s, 4, 3, 1200));
}

#[test]
fn replies_use_the_smaller_datagram_and_the_clients_maximum_message() {
    let t0 = Instant::now();
    let mut s = server();
    // The client takes datagrams of 572 bytes (500 of body) and messages of 1200 bytes.
    let hello = emit(hello_header(1, 1), hello_body(572, 1200).as_bytes());
    let session = open_with(&mut s, t0, 1, &hello);
    let d = request(1, session, 1, 0, b"q");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let reply = body(1200);
    let out = respond(&mut s, t0, &call.ticket, &reply);
    let frags: Vec<_> = out
        .iter()
        .map(|(h, p)| (h.frag_index, h.frag_count, h.message_len, p.len()))
        .collect();
    assert_eq!(
        frags,
        [(0, 3, 1200, 500), (1, 3, 1200, 500), (2, 3, 1200, 200)]
    );
    assert_eq!(
        out.iter().flat_map(|(_, p)| p.clone()).collect::<Vec<u8>>(),
        reply
    );

    // The duplicate gets every fragment again, from the cache.
    assert!(s.handle_datagram(t0 + ms(1), 1, &d).is_none());
    let resent = drain(&mut s);
    assert_eq!(resent.len(), 3);
    for ((dest, h, p), (original, bytes)) in resent.iter().zip(&out) {
        assert_eq!(*dest, 1);
        assert_eq!(
            *h,
            HeaderRepr {
                flags: Flags::FROM_CACHE,
                ..*original
            }
        );
        assert_eq!(p, bytes);
    }

    // One byte more than the client takes: an error reply instead, kept like a reply.
    let d = request(1, session, 2, 0, b"q");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let plan = s.begin_reply(t0, &call.ticket, Ok(1201)).unwrap();
    assert_eq!(
        (plan.error(), plan.body_len(), plan.count()),
        (Some(ErrorCode::ReplyTooLarge), 0, 1)
    );
    let (h, _) = parse(&plan.header(0));
    assert_eq!(
        (h.kind, h.status, h.seq),
        (PacketKind::ErrorReply, ErrorCode::ReplyTooLarge.to_u16(), 2)
    );
    assert_eq!(s.stats().errors, 1);
    s.finish_reply(&call.ticket, &plan, [&body(1201)[..]]);
    assert!(s.handle_datagram(t0 + ms(1), 1, &d).is_none());
    let resent = drain(&mut s);
    assert_eq!(resent.len(), 1);
    assert_eq!(
        resent[0].1,
        HeaderRepr {
            flags: Flags::FROM_CACHE,
            ..h
        }
    );
    assert_eq!(s.memory().cached_bytes, 1200);
    check(&s);
}

#[test]
fn a_request_is_handed_out_once_and_a_duplicate_while_executing_is_dropped() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = request(1, session, 1, 0, b"hello");
    let call = s.handle_datagram(t0, 1, &d).expect("a new call");
    assert_eq!(
        call.context,
        CallContext {
            client_id: 1,
            client_incarnation: CLIENT_INC,
            seq: 1,
            session,
            request_stamp: LamportStamp::new(101, 1),
            // The clock shows the value held for the reply, one past the receive event.
            received_stamp: LamportStamp::new(s.lamport() - 1, NODE),
            interface: IFACE,
            method: METHOD,
            idempotent: false,
        }
    );
    assert!(call.context.received_stamp.time > 101);
    match call.body {
        Body::Borrowed(b) => assert!(std::ptr::eq(b, &d[HEADER_LEN..]), "zero copy"),
        Body::Owned(_) => panic!("a one-datagram request is borrowed"),
    }
    assert_eq!((call.ticket.dest(), call.ticket.idempotent()), (1, false));
    assert_eq!(s.stats().executed, 1);

    let retransmitted = emit(
        HeaderRepr {
            flags: Flags::RETRANSMIT,
            message_len: 5,
            ..request_header(1, session, 1, 0)
        },
        b"hello",
    );
    assert!(s.handle_datagram(t0 + us(5), 1, &retransmitted).is_none());
    assert!(s.handle_datagram(t0 + us(6), 1, &d).is_none());
    assert_eq!((s.stats().executed, s.stats().dropped_executing), (1, 2));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.memory().max_session_entries, 1);
    check(&s);
}

#[test]
fn a_duplicate_of_a_completed_call_is_answered_from_the_cache() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = request(1, session, 1, 0, b"hello");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let received = call.context.received_stamp.time;
    let out = respond(&mut s, t0 + us(10), &call.ticket, b"world");
    assert_eq!(out.len(), 1);
    let (reply, payload) = &out[0];
    assert_eq!(
        *reply,
        HeaderRepr {
            kind: PacketKind::Reply,
            flags: Flags::empty(),
            status: 0,
            client_id: 1,
            client_incarnation: CLIENT_INC,
            interface: IFACE,
            method: METHOD,
            session,
            seq: 1,
            ack: 0,
            lamport: received + 1,
            frag_index: 0,
            frag_count: 1,
            message_len: 5,
            payload_len: 5,
        }
    );
    assert_eq!(payload, b"world");
    let m = s.memory();
    assert_eq!(
        (
            m.cached_bytes,
            m.max_session_cached_bytes,
            m.max_session_entries
        ),
        (5, 5, 1)
    );

    for n in 1..=2 {
        assert!(s.handle_datagram(t0 + ms(n), 1, &d).is_none());
        let resent = drain(&mut s);
        assert_eq!(resent.len(), 1);
        let (dest, h, p) = &resent[0];
        assert_eq!(*dest, 1);
        // The same reply, stamp included, flagged as resent.
        assert_eq!(
            *h,
            HeaderRepr {
                flags: Flags::FROM_CACHE,
                ..*reply
            }
        );
        assert_eq!(p, b"world");
        assert_eq!((s.stats().answered_from_cache, s.stats().executed), (n, 1));
    }
    check(&s);
}

#[test]
fn the_clients_ack_frees_cached_replies_and_acknowledged_duplicates_are_dropped() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    complete(&mut s, t0, 1, session, 1, 0, b"first");
    complete(&mut s, t0, 1, session, 2, 0, b"second!");
    let m = s.memory();
    assert_eq!(
        (
            m.cached_bytes,
            m.max_session_cached_bytes,
            m.max_session_entries
        ),
        (12, 12, 2)
    );

    // Call 1 has ended at the client.
    let d = request(1, session, 3, 1, b"third");
    assert!(s.handle_datagram(t0 + us(1), 1, &d).is_some());
    let m = s.memory();
    assert_eq!(
        (
            m.cached_bytes,
            m.max_session_cached_bytes,
            m.max_session_entries
        ),
        (7, 7, 2)
    );

    // A duplicate of call 1 now: an old one. The client ignores the answer (the call has
    // ended there); a client whose call it was would learn it may have executed.
    let dup = request(1, session, 1, 0, b"req");
    assert!(s.handle_datagram(t0 + us(2), 1, &dup).is_none());
    assert_eq!(
        control_reply(&mut s, 1, session, 1),
        (PacketKind::ErrorReply, ErrorCode::Forgotten.to_u16())
    );
    assert_eq!(
        (
            s.stats().dropped.stale,
            s.stats().answered_from_cache,
            s.stats().executed
        ),
        (1, 0, 3)
    );

    // A duplicate of call 2 queues its reply again; before it is sent, calls 2 and 3 end:
    // nothing is sent and nothing kept (call 3 was still executing).
    assert!(
        s.handle_datagram(t0 + us(3), 1, &request(1, session, 2, 1, b"req"))
            .is_none()
    );
    assert_eq!(
        (s.stats().answered_from_cache, s.memory().queued_transmits),
        (1, 1)
    );
    let d = request(1, session, 4, 3, b"fourth");
    assert!(s.handle_datagram(t0 + us(3), 1, &d).is_some());
    assert!(drain(&mut s).is_empty());
    let m = s.memory();
    assert_eq!(
        (
            m.cached_bytes,
            m.max_session_cached_bytes,
            m.max_session_entries
        ),
        (0, 0, 1)
    );
    // An ack older than the session's point changes nothing.
    let d = request(1, session, 5, 1, b"fifth");
    assert!(s.handle_datagram(t0 + us(4), 1, &d).is_some());
    assert_eq!(s.memory().max_session_entries, 2);
    check(&s);
}

#[test]
fn begin_reply_returns_none_once_the_client_acknowledged_the_call() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d1 = request(1, session, 1, 0, b"slow");
    let slow = s.handle_datagram(t0, 1, &d1).unwrap();
    // The client gave up on call 1 (its deadline passed) and says so.
    let d2 = request(1, session, 2, 1, b"next");
    let next = s.handle_datagram(t0 + ms(1), 1, &d2).unwrap();
    assert!(s.begin_reply(t0 + ms(2), &slow.ticket, Ok(4)).is_none());
    assert!(s.begin_reply(t0 + ms(2), &next.ticket, Ok(4)).is_some());
    assert_eq!(s.memory().max_session_entries, 1);
    check(&s);
}

#[test]
fn idempotent_requests_execute_again_once_done_and_keep_single_datagram_replies_never() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = idempotent_request(1, session, 1, 0, b"get");
    let first = s.handle_datagram(t0, 1, &d).expect("executes");
    assert!(first.context.idempotent && first.ticket.idempotent());
    // A duplicate while the first runs is dropped: it would only race the first reply.
    assert!(s.handle_datagram(t0 + us(1), 1, &d).is_none());
    let out = respond(&mut s, t0 + us(2), &first.ticket, b"value");
    assert_eq!(out[0].0.flags, Flags::IDEMPOTENT);
    // Done, and nothing kept: a duplicate executes again.
    let again = s
        .handle_datagram(t0 + us(3), 1, &d)
        .expect("executes again");
    respond(&mut s, t0 + us(4), &again.ticket, b"value");
    let st = s.stats();
    assert_eq!(
        (st.executed, st.dropped_executing, st.answered_from_cache),
        (2, 1, 0)
    );
    let m = s.memory();
    assert_eq!(m.cached_bytes, 0);
    assert!(m.max_session_entries <= 1);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn an_idempotent_reply_of_several_datagrams_is_kept_and_resent_without_executing() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = idempotent_request(1, session, 1, 0, b"get big");
    let call = s.handle_datagram(t0, 1, &d).expect("executes");
    let reply = body(3 * CHUNK + 5);
    let first = respond(&mut s, t0 + us(1), &call.ticket, &reply);
    assert_eq!(first.len(), 4);
    assert_eq!(s.memory().cached_bytes, reply.len());
    // A fragment of the reply was lost; the client asks again.
    assert!(s.handle_datagram(t0 + ms(2), 1, &d).is_none());
    let again = drain(&mut s);
    assert_eq!(again.len(), 4);
    for ((_, h, payload), (h0, p0)) in again.iter().zip(&first) {
        assert_eq!(
            (h.kind, h.seq, h.frag_index),
            (h0.kind, h0.seq, h0.frag_index)
        );
        assert_eq!(h.lamport, h0.lamport, "the same execution's reply");
        assert!(h.flags.contains(Flags::FROM_CACHE | Flags::IDEMPOTENT));
        assert_eq!(payload, p0);
    }
    assert_eq!((s.stats().executed, s.stats().answered_from_cache), (1, 1));
    // Acknowledged: freed.
    assert!(
        s.handle_datagram(t0 + ms(3), 1, &idempotent_request(1, session, 2, 1, b"x"))
            .is_some()
    );
    assert_eq!(s.memory().cached_bytes, 0);
    check(&s);
}

#[test]
fn an_unknown_session_gets_stale_on_fragment_0_only() {
    let t0 = Instant::now();
    let mut s = server();
    // No session at all.
    let unknown = (u64::from(INCARNATION) << 32) | 0x1234;
    let d = request(1, unknown, 1, 0, b"x");
    assert!(s.handle_datagram(t0, 1, &d).is_none());
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let (dest, h, _) = &out[0];
    assert_eq!(*dest, 1);
    assert_eq!(
        *h,
        HeaderRepr {
            kind: PacketKind::Stale,
            flags: Flags::empty(),
            status: 0,
            client_id: 1,
            client_incarnation: CLIENT_INC,
            interface: IFACE,
            method: METHOD,
            session: unknown,
            seq: 1,
            // Which calls never started: unknown (this server never held the session).
            ack: u64::MAX,
            // Nothing of a session it does not hold moves the server's clock.
            lamport: 0,
            frag_index: 0,
            frag_count: 1,
            message_len: 0,
            payload_len: 0,
        }
    );

    let session = open(&mut s, t0, 1);
    // The session's id as an earlier incarnation of this server would have numbered it.
    let earlier = (session & 0xffff_ffff) | (u64::from(INCARNATION - 1) << 32);
    // A later generation of the same slot.
    let later = session + 1;
    for (client, id) in [(1, earlier), (1, later), (2, session)] {
        let d = request(client, id, 1, 0, b"x");
        assert!(s.handle_datagram(t0, client, &d).is_none());
        assert_eq!(control_reply(&mut s, client, id, 1), (PacketKind::Stale, 0));
    }
    // Another incarnation of client 1.
    let other = emit(
        HeaderRepr {
            client_incarnation: CLIENT_INC + 1,
            message_len: 1,
            ..request_header(1, session, 1, 0)
        },
        b"x",
    );
    assert!(s.handle_datagram(t0, 1, &other).is_none());
    assert_eq!(drain(&mut s)[0].1.kind, PacketKind::Stale);
    assert_eq!(s.stats().stale, 5);

    // A later fragment of an unknown session's request: dropped silently.
    let frag = fragment(request_header(1, unknown, 2, 0), &body(CHUNK + 10), 1);
    assert!(s.handle_datagram(t0, 1, &frag).is_none());
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        (s.stats().stale, s.stats().dropped.stale, s.stats().executed),
        (5, 1, 0)
    );

    // The session itself works.
    assert!(
        s.handle_datagram(t0, 1, &request(1, session, 1, 0, b"x"))
            .is_some()
    );
}

#[test]
fn a_call_beyond_the_window_gets_busy_window_full() {
    let t0 = Instant::now();
    let mut s = server_with(ServerConfig {
        window: 4,
        ..ServerConfig::default()
    });
    let session = open(&mut s, t0, 1);
    assert!(
        s.handle_datagram(t0, 1, &request(1, session, 5, 0, b"x"))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 1, session, 5),
        (PacketKind::Busy, BusyReason::WindowFull.to_u16())
    );
    assert_eq!((s.stats().busy, s.stats().executed), (1, 0));
    // A later fragment beyond the window: no answer.
    let frag = fragment(request_header(1, session, 6, 0), &body(CHUNK + 10), 1);
    assert!(s.handle_datagram(t0, 1, &frag).is_none());
    assert!(drain(&mut s).is_empty());
    assert!(
        s.handle_datagram(t0, 1, &request(1, session, 4, 0, b"x"))
            .is_some()
    );
    assert_eq!(s.memory().max_session_entries, 4);
    check(&s);
    // Once call 1 has ended at the client, call 5 is within the window.
    assert!(
        s.handle_datagram(t0, 1, &request(1, session, 5, 1, b"x"))
            .is_some()
    );
    assert_eq!((s.memory().max_session_entries, s.stats().executed), (4, 2));
    check(&s);
}

#[test]
fn a_full_reply_cache_gets_busy_reply_cache_full() {
    let t0 = Instant::now();
    let mut s = small_cache_server();
    let s1 = open(&mut s, t0, 1);
    complete(&mut s, t0, 1, s1, 1, 0, &[1; 100]);
    assert_eq!(s.memory().cached_bytes, 100);
    // The session's bound.
    assert!(
        s.handle_datagram(t0, 1, &request(1, s1, 2, 0, b"x"))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 1, s1, 2),
        (PacketKind::Busy, BusyReason::ReplyCacheFull.to_u16())
    );
    assert_eq!(s.memory().max_session_entries, 1, "nothing recorded");
    check(&s);

    // The server's bound: session 2 holds 50 bytes, well under its own bound.
    let s2 = open(&mut s, t0, 2);
    complete(&mut s, t0, 2, s2, 1, 0, &[2; 50]);
    assert_eq!(s.memory().cached_bytes, 150);
    assert!(
        s.handle_datagram(t0, 2, &request(2, s2, 2, 0, b"x"))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 2, s2, 2),
        (PacketKind::Busy, BusyReason::ReplyCacheFull.to_u16())
    );
    // With the cache full, a session's oldest unacknowledged call still executes: refusing
    // it would stall the session, since nothing after it can be acknowledged. Its reply does
    // not fit, so a tombstone is kept instead. The session's next call waits.
    let s3 = open(&mut s, t0, 3);
    let first = request(3, s3, 1, 0, b"x");
    let ticket = s
        .handle_datagram(t0, 3, &first)
        .expect("the oldest call runs")
        .ticket;
    let plan = s.begin_reply(t0, &ticket, Ok(10)).expect("a reply plan");
    s.finish_reply(&ticket, &plan, [&[3u8; 10][..]]);
    assert_eq!(s.memory().cached_bytes, 150, "nothing more cached");
    assert_eq!(s.stats().uncached_replies, 1);
    assert!(
        s.handle_datagram(t0, 3, &request(3, s3, 1, 0, b"x"))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 3, s3, 1),
        (PacketKind::ErrorReply, ErrorCode::ReplyUnavailable.to_u16())
    );
    assert!(
        s.handle_datagram(t0, 3, &request(3, s3, 2, 0, b"x"))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 3, s3, 2),
        (PacketKind::Busy, BusyReason::ReplyCacheFull.to_u16())
    );
    assert_eq!((s.stats().busy, s.stats().executed), (3, 3));

    // Duplicates of completed calls are still answered.
    assert!(
        s.handle_datagram(t0, 1, &request(1, s1, 1, 0, b"req"))
            .is_none()
    );
    assert_eq!(drain(&mut s)[0].1.flags, Flags::FROM_CACHE);

    // Client 1 acknowledges its call: room again, for everyone.
    assert!(
        s.handle_datagram(t0, 1, &request(1, s1, 2, 1, b"x"))
            .is_some()
    );
    assert_eq!(s.memory().cached_bytes, 50);
    assert!(
        s.handle_datagram(t0, 3, &request(3, s3, 2, 0, b"x"))
            .is_some()
    );
    check(&s);
}

#[test]
fn a_reply_too_large_for_the_cache_leaves_a_tombstone() {
    let t0 = Instant::now();
    let mut s = small_cache_server();
    let session = open(&mut s, t0, 1);
    let d = request(1, session, 1, 0, b"x");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let reply = body(101);
    let plan = s.begin_reply(t0, &call.ticket, Ok(reply.len())).unwrap();
    assert_eq!(
        (plan.count(), plan.range(0).len()),
        (1, 101),
        "the reply itself is sent"
    );
    // Not kept, so not offered: the driver sends it from the reply's own memory.
    assert!(s.finish_reply(&call.ticket, &plan, [&reply[..]]).is_none());
    assert_eq!(
        (s.stats().uncached_replies, s.memory().cached_bytes),
        (1, 0)
    );

    assert!(s.handle_datagram(t0 + ms(1), 1, &d).is_none());
    let (kind, status) = control_reply(&mut s, 1, session, 1);
    assert_eq!(
        (kind, ErrorCode::from_u16(status)),
        (PacketKind::ErrorReply, ErrorCode::ReplyUnavailable)
    );
    assert_eq!((s.stats().answered_from_cache, s.stats().executed), (1, 1));
    // The tombstone goes with the client's ack like a cached reply.
    assert!(
        s.handle_datagram(t0 + ms(2), 1, &request(1, session, 2, 1, b"x"))
            .is_some()
    );
    assert_eq!(s.memory().max_session_entries, 1);
    check(&s);
}

#[test]
fn a_request_larger_than_the_maximum_message_gets_message_too_large() {
    let t0 = Instant::now();
    let mut s = server_with(ServerConfig {
        max_message: 2000,
        reassembly_budget: 4000,
        ..ServerConfig::default()
    });
    let session = open(&mut s, t0, 1);
    let too_large = body(2001);
    let d = fragment(request_header(1, session, 1, 0), &too_large, 0);
    assert!(s.handle_datagram(t0, 1, &d).is_none());
    let (kind, status) = control_reply(&mut s, 1, session, 1);
    assert_eq!(
        (kind, ErrorCode::from_u16(status)),
        (PacketKind::ErrorReply, ErrorCode::MessageTooLarge)
    );
    // Its other fragment, and a retransmission: the same answer, never executed.
    assert!(
        s.handle_datagram(
            t0,
            1,
            &fragment(request_header(1, session, 1, 0), &too_large, 1)
        )
        .is_none()
    );
    assert!(drain(&mut s).is_empty());
    assert!(s.handle_datagram(t0, 1, &d).is_none());
    let (_, status) = control_reply(&mut s, 1, session, 1);
    assert_eq!(ErrorCode::from_u16(status), ErrorCode::MessageTooLarge);
    assert_eq!(s.stats().answered_from_cache, 1);

    // The later fragment first: the entry is refused, fragment 0 then gets the error.
    let h3 = request_header(1, session, 3, 0);
    assert!(
        s.handle_datagram(t0, 1, &fragment(h3, &too_large, 1))
            .is_none()
    );
    assert!(drain(&mut s).is_empty());
    assert!(
        s.handle_datagram(t0, 1, &fragment(h3, &too_large, 0))
            .is_none()
    );
    let (_, status) = control_reply(&mut s, 1, session, 3);
    assert_eq!(ErrorCode::from_u16(status), ErrorCode::MessageTooLarge);

    // Idempotent: the error, and nothing kept.
    let h2 = HeaderRepr {
        flags: Flags::IDEMPOTENT,
        ..request_header(1, session, 2, 0)
    };
    assert!(
        s.handle_datagram(t0, 1, &fragment(h2, &too_large, 0))
            .is_none()
    );
    let (_, status) = control_reply(&mut s, 1, session, 2);
    assert_eq!(ErrorCode::from_u16(status), ErrorCode::MessageTooLarge);
    let st = s.stats();
    assert_eq!((st.executed, st.answered_from_cache), (0, 2));
    assert_eq!(
        (s.memory().reassemblies, s.memory().reassembly_bytes),
        (0, 0)
    );
    check(&s);
}

#[test]
fn only_an_idle_session_is_evicted_and_a_newcomer_waits_while_all_are_in_use() {
    let t0 = Instant::now();
    let mut s = server_with(ServerConfig {
        max_sessions: 2,
        evictable_after: secs(2),
        ..ServerConfig::default()
    });
    let s1 = open(&mut s, t0, 1);
    let s2 = open(&mut s, t0 + ms(1), 2);
    complete(&mut s, t0 + ms(1), 2, s2, 1, 0, b"kept");
    // Client 1 has a call executing.
    let d = request(1, s1, 1, 0, b"x");
    let running = s.handle_datagram(t0 + ms(2), 1, &d).unwrap();
    assert_eq!(s.memory().cached_bytes, 4);

    // A third client while both are in use: refused, nobody evicted.
    let hello3 = with_cookie(&mut s, t0 + ms(3), 3, &hello(3));
    assert!(s.handle_datagram(t0 + ms(3), 3, &hello3).is_none());
    let out = drain(&mut s);
    assert_eq!(
        (out[0].1.kind, out[0].1.status),
        (PacketKind::Refused, RefuseReason::SessionsFull.to_u16())
    );
    assert_eq!((s.stats().sessions_evicted, s.memory().sessions), (0, 2));

    // Later, client 2 has been silent long enough; client 1 still has a call executing.
    let later = t0 + secs(3);
    let hello3 = with_cookie(&mut s, later, 3, &hello(3));
    assert!(s.handle_datagram(later, 3, &hello3).is_none());
    let out = drain(&mut s);
    assert_eq!(out[0].1.kind, PacketKind::Welcome);
    let s3 = out[0].1.session;
    assert_eq!(s.stats().sessions_evicted, 1);
    assert_eq!((s.memory().sessions, s.memory().cached_bytes), (2, 0));
    assert_eq!((s3 >> 16) & 0xffff, (s2 >> 16) & 0xffff, "the evicted slot");
    assert_ne!(s3, s2);

    // Client 2's next request names the evicted session: Stale, saying that nothing after
    // call 1 ever started in it, so call 2 can go again in a new session.
    assert!(
        s.handle_datagram(later + ms(1), 2, &request(2, s2, 2, 1, b"x"))
            .is_none()
    );
    let out = drain(&mut s);
    assert_eq!(
        (out[0].1.kind, out[0].1.session, out[0].1.ack),
        (PacketKind::Stale, s2, 1)
    );
    // Client 1's call finishes; its session works on.
    respond(&mut s, later + ms(2), &running.ticket, b"y");
    assert!(
        s.handle_datagram(later + ms(2), 1, &request(1, s1, 2, 1, b"x"))
            .is_some()
    );
    assert!(
        s.handle_datagram(later + ms(2), 3, &request(3, s3, 1, 0, b"x"))
            .is_some()
    );
    assert_eq!(s.stats().sessions_opened, 3);
    check(&s);
}

#[test]
fn an_idle_session_expires() {
    let t0 = Instant::now();
    let config = ServerConfig {
        session_idle_timeout: secs(10),
        reassembly_timeout: secs(2),
        ..ServerConfig::default()
    };
    let mut s = server_with(config);
    assert_eq!(s.poll_timeout(), None);
    let session = open(&mut s, t0, 1);
    // Sweeps every second (half the shorter timeout).
    assert_eq!(s.poll_timeout(), Some(t0 + secs(1)));
    let mut poked = false;
    let mut closed = None;
    while let Some(at) = s.poll_timeout() {
        assert!(at <= t0 + secs(30), "the session never expires");
        if !poked && at > t0 + secs(5) {
            // Traffic at 5 s: idle from then on.
            assert!(
                s.handle_datagram(t0 + secs(5), 1, &request(1, session, 1, 0, b"x"))
                    .is_some()
            );
            poked = true;
        }
        s.handle_timeout(at);
        if s.memory().sessions == 0 {
            closed = Some(at);
        }
    }
    assert_eq!(closed, Some(t0 + secs(15)));
    assert_eq!(s.stats().sessions_expired, 1);
    assert!(
        s.handle_datagram(t0 + secs(16), 1, &request(1, session, 2, 0, b"x"))
            .is_none()
    );
    assert_eq!(control_reply(&mut s, 1, session, 2), (PacketKind::Stale, 0));
}

#[test]
fn a_fragmented_request_executes_once_when_complete() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let msg = body(2 * CHUNK + 200);
    let h1 = request_header(1, session, 1, 0);
    for (i, index) in [0u16, 0, 1].into_iter().enumerate() {
        assert!(
            s.handle_datagram(t0 + us(i as u64), 1, &fragment(h1, &msg, index))
                .is_none()
        );
        let m = s.memory();
        assert_eq!((m.reassemblies, m.reassembly_bytes), (1, msg.len()));
        check(&s);
    }
    let last = fragment(h1, &msg, 2);
    let call = s.handle_datagram(t0 + us(5), 1, &last).expect("complete");
    assert!(matches!(call.body, Body::Owned(_)));
    assert_eq!(*call.body, msg[..]);
    assert_eq!(call.context.seq, 1);
    assert_eq!(
        (
            s.memory().reassemblies,
            s.memory().reassembly_bytes,
            s.stats().executed
        ),
        (0, 0, 1)
    );
    s.recycle(call.body.into_owned_buffer().unwrap());
    // A retransmission of any fragment: the call is executing.
    assert!(
        s.handle_datagram(t0 + us(6), 1, &fragment(h1, &msg, 1))
            .is_none()
    );
    assert_eq!(s.stats().dropped_executing, 1);

    // Out of order, with a duplicate.
    let h2 = request_header(1, session, 2, 0);
    let mut done = Vec::new();
    for index in [2u16, 0, 2, 1] {
        if let Some(call) = s.handle_datagram(t0 + us(7), 1, &fragment(h2, &msg, index)) {
            done.push(call.body.to_vec());
        }
        check(&s);
    }
    assert_eq!(done.len(), 1);
    assert_eq!(done[0], msg);
    assert_eq!(s.stats().executed, 2);
    // A fragment that disagrees with its message: dropped and counted.
    let h3 = request_header(1, session, 3, 0);
    assert!(s.handle_datagram(t0, 1, &fragment(h3, &msg, 0)).is_none());
    let odd = emit(
        HeaderRepr {
            frag_index: 1,
            frag_count: 3,
            message_len: msg.len() as u32 + 1,
            ..h3
        },
        &[0; CHUNK],
    );
    assert!(s.handle_datagram(t0, 1, &odd).is_none());
    assert_eq!(s.stats().dropped.bad_fragment, 1);
}

#[test]
fn an_exhausted_reassembly_budget_gets_busy_reassembly_full() {
    let t0 = Instant::now();
    let config = ServerConfig {
        max_message: 4000,
        reassembly_budget: 5000,
        max_reassemblies: 2,
        ..ServerConfig::default()
    };
    let mut s = server_with(config);
    let session = open(&mut s, t0, 1);
    let big = body(3000);
    let small = body(1500);
    let h = |seq| request_header(1, session, seq, 0);
    assert!(s.handle_datagram(t0, 1, &fragment(h(1), &big, 0)).is_none());
    // Bytes: 3000 + 3000 > 5000.
    assert!(s.handle_datagram(t0, 1, &fragment(h(2), &big, 0)).is_none());
    assert_eq!(
        control_reply(&mut s, 1, session, 2),
        (PacketKind::Busy, BusyReason::ReassemblyFull.to_u16())
    );
    assert!(s.handle_datagram(t0, 1, &fragment(h(2), &big, 1)).is_none());
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().dropped.bad_fragment, 1);
    // Count: two reassemblies at most.
    assert!(
        s.handle_datagram(t0, 1, &fragment(h(3), &small, 0))
            .is_none()
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        (s.memory().reassemblies, s.memory().reassembly_bytes),
        (2, 4500)
    );
    assert!(
        s.handle_datagram(t0, 1, &fragment(h(4), &small, 0))
            .is_none()
    );
    assert_eq!(
        control_reply(&mut s, 1, session, 4),
        (PacketKind::Busy, BusyReason::ReassemblyFull.to_u16())
    );
    assert_eq!((s.stats().busy, s.stats().executed), (2, 0));
    check(&s);

    // Call 1 completes: call 2 fits now.
    for i in 1..3 {
        let done = s.handle_datagram(t0, 1, &fragment(h(1), &big, i)).is_some();
        assert_eq!(done, i == 2);
    }
    assert!(s.handle_datagram(t0, 1, &fragment(h(2), &big, 0)).is_none());
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        (s.memory().reassemblies, s.memory().reassembly_bytes),
        (2, 4500)
    );
    check(&s);
}

#[test]
fn an_idle_reassembly_is_dropped() {
    let t0 = Instant::now();
    let config = ServerConfig {
        reassembly_timeout: secs(2),
        ..ServerConfig::default()
    };
    let mut s = server_with(config);
    let session = open(&mut s, t0, 1);
    let msg = body(2 * CHUNK + 1);
    let h = request_header(1, session, 1, 0);
    assert!(s.handle_datagram(t0, 1, &fragment(h, &msg, 0)).is_none());
    let mut expired = None;
    let mut poked = false;
    while let Some(at) = s.poll_timeout() {
        if at > t0 + secs(10) {
            break;
        }
        if !poked && at > t0 + ms(1500) {
            // A fragment at 1.5 s: idle from then on.
            assert_eq!(s.memory().reassemblies, 1);
            assert!(
                s.handle_datagram(t0 + ms(1500), 1, &fragment(h, &msg, 1))
                    .is_none()
            );
            poked = true;
        }
        s.handle_timeout(at);
        if expired.is_none() && s.memory().reassemblies == 0 {
            expired = Some(at);
        }
    }
    // Sweeps at 1, 2, 3, 4 s: idle 0.5, 1.5, 2.5 s at the last three.
    assert_eq!(expired, Some(t0 + secs(4)));
    assert_eq!(
        (s.stats().reassemblies_expired, s.memory().reassembly_bytes),
        (1, 0)
    );
    check(&s);

    // The client's retransmission starts over; the message is recovered.
    let now = t0 + secs(11);
    assert!(s.handle_datagram(now, 1, &fragment(h, &msg, 2)).is_none());
    assert!(s.handle_datagram(now, 1, &fragment(h, &msg, 1)).is_none());
    let first = fragment(h, &msg, 0);
    let call = s.handle_datagram(now, 1, &first).expect("complete");
    assert_eq!(*call.body, msg[..]);
}

#[test]
fn a_refused_call_gets_busy_overloaded_and_can_execute_later() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = request(1, session, 1, 0, b"work");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    s.refuse(&call.ticket, BusyReason::Overloaded);
    assert_eq!(
        control_reply(&mut s, 1, session, 1),
        (PacketKind::Busy, BusyReason::Overloaded.to_u16())
    );
    assert_eq!((s.stats().executed, s.stats().busy), (0, 1));
    let again = s.handle_datagram(t0 + ms(1), 1, &d).expect("executes now");
    assert_eq!(s.stats().executed, 1);
    respond(&mut s, t0 + ms(2), &again.ticket, b"done");
    assert_eq!(s.memory().cached_bytes, 4);

    // Abandoned: no answer; the retransmission executes.
    let d = request(1, session, 2, 0, b"work");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    s.abandon(&call.ticket);
    assert!(drain(&mut s).is_empty());
    assert!(s.handle_datagram(t0 + ms(1), 1, &d).is_some());
    assert_eq!(s.stats().executed, 3);
}

#[test]
fn stamps_order_request_receipt_and_reply() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let d = emit(
        HeaderRepr {
            lamport: 1_000,
            message_len: 1,
            ..request_header(1, session, 1, 0)
        },
        b"x",
    );
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let ctx = call.context;
    assert_eq!(ctx.request_stamp, LamportStamp::new(1_000, 1));
    assert!(ctx.received_stamp > ctx.request_stamp);
    assert_eq!(ctx.received_stamp.node, NODE);
    // Something else happens before the reply.
    assert!(s.handle_datagram(t0, 2, &hello(2)).is_none());
    let plan = s.begin_reply(t0, &call.ticket, Ok(1)).unwrap();
    assert!(plan.lamport() > ctx.received_stamp.time);
    assert_eq!(
        parse(&[&plan.header(0)[..], b"y"].concat()).0.lamport,
        plan.lamport()
    );
    assert_eq!(s.lamport(), plan.lamport());
    s.finish_reply(&call.ticket, &plan, [&b"y"[..]]);
    // An earlier stamp does not move the clock back.
    let low = emit(
        HeaderRepr {
            lamport: 3,
            message_len: 1,
            ..request_header(1, session, 2, 0)
        },
        b"x",
    );
    let call = s.handle_datagram(t0, 1, &low).unwrap();
    assert_eq!(call.context.received_stamp.time, plan.lamport() + 1);
}

#[test]
fn control_replies_beyond_the_queue_bound_are_dropped() {
    let t0 = Instant::now();
    let mut s = server_with(ServerConfig {
        max_queued_transmits: 2,
        ..ServerConfig::default()
    });
    // Hellos with their cookies, for later.
    let hellos: Vec<(u64, Vec<u8>)> = (2..=4)
        .map(|client| (client, with_cookie(&mut s, t0, client, &hello(client))))
        .collect();
    let unknown = (u64::from(INCARNATION) << 32) | 0x1234;
    for seq in 1..=3 {
        assert!(
            s.handle_datagram(t0, 1, &request(1, unknown, seq, 0, b"x"))
                .is_none()
        );
        check(&s);
    }
    assert_eq!(
        (s.memory().queued_transmits, s.stats().transmits_dropped),
        (2, 1)
    );
    let out = drain(&mut s);
    assert_eq!(
        out.iter().map(|(_, h, _)| h.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    // A Hello's Welcome is dropped the same way; the session is open all the same.
    for (client, hello) in &hellos {
        assert!(s.handle_datagram(t0, *client, hello).is_none());
    }
    assert_eq!(
        (
            s.memory().queued_transmits,
            s.stats().transmits_dropped,
            s.memory().sessions
        ),
        (2, 2, 3)
    );
    check(&s);
}

#[test]
fn datagrams_a_server_never_takes_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut s = server();
    let session = open(&mut s, t0, 1);
    let clock = s.lamport();
    let reply = emit(
        HeaderRepr {
            kind: PacketKind::Reply,
            message_len: 1,
            lamport: 5_000,
            ..request_header(1, session, 1, 0)
        },
        b"x",
    );
    assert!(s.handle_datagram(t0, 1, &reply).is_none());
    let mut garbage = request(1, session, 1, 0, b"x");
    garbage[2] = 9; // version
    assert!(s.handle_datagram(t0, 1, &garbage).is_none());
    assert!(s.handle_datagram(t0, 1, &garbage[..10]).is_none());
    let d = s.stats().dropped;
    assert_eq!((d.misdirected, d.malformed), (1, 2));
    assert_eq!(s.lamport(), clock);
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().executed, 0);
}

/// Bytes of memory the cached replies really hold (their buffers' capacity).
fn cached_capacity(s: &Server<Addr>) -> usize {
    s.sessions
        .iter()
        .flatten()
        .flat_map(|session| &session.entries)
        .map(|e| match e {
            // The header in front of each body is a fixed cost per entry, not a cached byte.
            Entry::Done(c) => c.datagram.capacity() - HEADER_LEN,
            _ => 0,
        })
        .sum()
}

#[test]
fn cached_replies_hold_no_more_memory_than_they_count() {
    let t0 = Instant::now();
    let big = vec![9; 256 << 10];
    let config = ServerConfig {
        window: 16,
        session_cache_bytes: 1 << 20,
        total_cache_bytes: 4 << 20,
        ..ServerConfig::default()
    };
    let mut s = server_with(config);
    let s1 = open(&mut s, t0, 1);
    let s2 = open(&mut s, t0, 2);
    for seq in 1..=16 {
        // Client 2 acknowledges its previous call, whose large reply's buffer goes to the
        // pool; then client 1's small reply is cached, and kept (client 1 acknowledges nothing).
        let d = request(2, s2, seq, seq - 1, b"big");
        let large = s.handle_datagram(t0, 2, &d).unwrap();
        complete(&mut s, t0, 1, s1, seq, 0, b"tiny");
        respond(&mut s, t0, &large.ticket, &big);
    }
    let m = s.memory();
    assert_eq!(m.cached_bytes, 16 * 4 + big.len());
    let held = cached_capacity(&s);
    assert!(
        held <= 2 * m.cached_bytes,
        "cached replies hold {held} bytes, count {}",
        m.cached_bytes
    );
    check(&s);
}

#[test]
fn a_kept_single_datagram_reply_is_offered_whole_and_nothing_else_is() {
    let t0 = Instant::now();
    let config = ServerConfig {
        session_cache_bytes: 4 << 20,
        total_cache_bytes: 8 << 20,
        ..ServerConfig::default()
    };
    let mut s = server_with(config);
    let sess = open(&mut s, t0, 1);
    // Kept, one datagram: its header as planned, then the body, from two segments.
    let reply = body(300);
    let d = request(1, sess, 1, 0, b"req");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let plan = s.begin_reply(t0, &call.ticket, Ok(reply.len())).unwrap();
    let mut expected = plan.header(0).to_vec();
    expected.extend_from_slice(&reply);
    let kept = s.finish_reply(&call.ticket, &plan, [&reply[..100], &reply[100..]]);
    assert_eq!(kept.map(<[u8]>::to_vec), Some(expected));
    // A duplicate is answered from the same bytes, flagged as coming from the cache.
    assert!(s.handle_datagram(t0, 1, &d).is_none());
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    assert!(out[0].1.flags.contains(Flags::FROM_CACHE));
    assert_eq!(out[0].2, reply);
    // Several datagrams (the request acknowledges the first reply): kept, not offered whole.
    let big = body(3 * CHUNK);
    let d = request(1, sess, 2, 1, b"req");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let plan = s.begin_reply(t0, &call.ticket, Ok(big.len())).unwrap();
    assert!(plan.count() > 1);
    assert!(s.finish_reply(&call.ticket, &plan, [&big[..]]).is_none());
    assert_eq!(s.memory().cached_bytes, big.len());
    // Idempotent: nothing kept.
    let d = idempotent_request(1, sess, 3, 2, b"req");
    let call = s.handle_datagram(t0, 1, &d).unwrap();
    let plan = s.begin_reply(t0, &call.ticket, Ok(reply.len())).unwrap();
    assert!(s.finish_reply(&call.ticket, &plan, [&reply[..]]).is_none());
    check(&s);
}
