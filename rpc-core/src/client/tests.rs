//! Unit tests of the client state machine: hand-built datagrams, virtual time.

use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use super::*;
use crate::config::ETHERNET_DATAGRAM;
use crate::sim::SIM_WALL_CLOCK;
use crate::wire::{HELLO_BODY_LEN, PacketRepr};

const ID: u64 = 0x00c1_1e47;
const INC: u32 = 7;
const NODE: u64 = 0x5e4e;
const SESSION: u64 = (0xabcd << 32) | (3 << 16) | 0x42;
const SESSION2: u64 = (0xabce << 32) | (5 << 16) | 0x17;
const IFACE: u32 = 0x1111_2222;
const METHOD: u32 = 0x3333_4444;
/// Body bytes per datagram at [`ETHERNET_DATAGRAM`].
const CHUNK: usize = ETHERNET_DATAGRAM - HEADER_LEN;
/// The server's idle timeout in the Welcomes of these tests.
const IDLE_MS: u32 = 120_000;

/// A fresh Lamport clock of this client's node.
fn clock() -> Arc<LamportClock> {
    Arc::new(LamportClock::new(ID, SIM_WALL_CLOCK, Instant::now()))
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> ClientConfig {
    ClientConfig {
        initial_rto: ms(1),
        min_rto: us(1),
        max_rto: ms(64),
        default_deadline: Duration::from_secs(1),
        ..ClientConfig::default()
    }
}

/// An estimator configured as [`config`]'s, to compute the expected timers independently.
fn estimator() -> RttEstimator {
    let c = config();
    RttEstimator::new(c.initial_rto, c.min_rto, c.max_rto)
}

/// The time a body of `len` bytes takes at the configured bandwidth (125 MB/s: 8 ns a byte).
fn transfer(len: usize) -> Duration {
    Duration::from_nanos(len as u64 * 8)
}

/// Byte `i` of every request body in these tests.
fn body_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn request_body(len: usize) -> Vec<u8> {
    (0..len).map(body_byte).collect()
}

/// A datagram the client asked to send, parsed: its header and its payload bytes.
fn parse_tx(t: &Transmit) -> (HeaderRepr, Vec<u8>) {
    let payload = match t.payload {
        Payload::None => Vec::new(),
        Payload::Inline => t.inline().to_vec(),
        Payload::Call { offset, len, .. } => (offset..offset + len).map(body_byte).collect(),
    };
    let mut datagram = t.header.to_vec();
    datagram.extend_from_slice(&payload);
    let parsed = PacketRepr::parse(&datagram).expect("the client emits valid datagrams");
    (parsed.header, payload)
}

/// Every datagram the client has to send now.
fn drain(c: &mut Client, now: Instant) -> Vec<(HeaderRepr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit(now) {
        out.push(parse_tx(&t));
        assert!(out.len() < 10_000, "poll_transmit does not end");
    }
    out
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
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

/// A header from the server to this client about call `seq` of [`SESSION`].
fn from_server(kind: PacketKind, seq: u64, lamport: u64) -> HeaderRepr {
    HeaderRepr {
        kind,
        flags: Flags::empty(),
        status: 0,
        client_id: ID,
        client_incarnation: INC,
        interface: IFACE,
        method: METHOD,
        session: SESSION,
        seq,
        ack: 0,
        lamport,
        frag_index: 0,
        frag_count: 1,
        message_len: 0,
        payload_len: 0,
    }
}

fn welcome(nonce: u64, session: u64, max_datagram: usize, max_message: usize) -> Vec<u8> {
    let body = WelcomeBody {
        server_node: NODE.into(),
        max_datagram: (max_datagram as u32).into(),
        max_message: (max_message as u32).into(),
        idle_timeout_ms: IDLE_MS.into(),
        reserved: 0.into(),
        server_nonce: [0; 16],
    };
    let header = HeaderRepr {
        kind: PacketKind::Welcome,
        interface: 0,
        method: 0,
        session,
        seq: nonce,
        message_len: body.as_bytes().len() as u32,
        ..from_server(PacketKind::Welcome, 0, 1)
    };
    emit(header, body.as_bytes())
}

fn reply(seq: u64, lamport: u64, body: &[u8]) -> Vec<u8> {
    let header = HeaderRepr {
        message_len: body.len() as u32,
        ..from_server(PacketKind::Reply, seq, lamport)
    };
    emit(header, body)
}

/// Fragment `index` of a reply of `body` cut into `chunk`-byte pieces.
fn reply_fragment(seq: u64, body: &[u8], chunk: usize, index: u16) -> Vec<u8> {
    let count = body.len().div_ceil(chunk) as u16;
    let start = usize::from(index) * chunk;
    let end = (start + chunk).min(body.len());
    let header = HeaderRepr {
        frag_index: index,
        frag_count: count,
        message_len: body.len() as u32,
        ..from_server(PacketKind::Reply, seq, 90)
    };
    emit(header, &body[start..end])
}

fn busy(seq: u64, reason: BusyReason) -> Vec<u8> {
    emit(
        HeaderRepr {
            status: reason.to_u16(),
            ..from_server(PacketKind::Busy, seq, 5)
        },
        &[],
    )
}

/// A Stale for `session` from a server that cannot tell which calls started in it.
fn stale(seq: u64, session: u64) -> Vec<u8> {
    stale_after(seq, session, u64::MAX)
}

/// A Stale saying that no call of `session` above `max_started` ever started executing.
fn stale_after(seq: u64, session: u64, max_started: u64) -> Vec<u8> {
    emit(
        HeaderRepr {
            session,
            ack: max_started,
            ..from_server(PacketKind::Stale, seq, 5)
        },
        &[],
    )
}

fn call(len: usize, idempotent: bool) -> CallRequest {
    CallRequest {
        interface: IFACE,
        method: METHOD,
        len,
        idempotent,
        deadline: None,
    }
}

fn call_until(len: usize, deadline: Instant) -> CallRequest {
    CallRequest {
        deadline: Some(deadline),
        ..call(len, false)
    }
}

/// A client of [`config`] with [`SESSION`] open (server limits as large as the client's).
fn established_with(config: ClientConfig, t0: Instant) -> Client {
    let (max_datagram, max_message) = (config.max_datagram, config.max_message);
    welcomed(config, t0, max_datagram, max_message)
}

/// A client of `config` with [`SESSION`] open, the server having welcomed it with these limits.
fn welcomed(config: ClientConfig, t0: Instant, max_datagram: usize, max_message: usize) -> Client {
    let mut c = Client::new(config, ID, INC, clock()).unwrap();
    c.connect(t0);
    let hello = drain(&mut c, t0);
    assert_eq!(hello.len(), 1);
    assert!(
        c.handle_datagram(
            t0,
            &welcome(hello[0].0.seq, SESSION, max_datagram, max_message)
        )
        .is_none()
    );
    assert_eq!(events(&mut c), [Event::Connected { session: SESSION }]);
    c
}

fn established(t0: Instant) -> Client {
    established_with(config(), t0)
}

/// Asserts that `response` ends `call` with exactly `body`.
fn assert_reply(response: Option<Response<'_>>, call: CallId, body: &[u8]) {
    let r = response.expect("the datagram completes the call");
    assert_eq!(r.call, call);
    match r.result {
        Ok(b) => assert_eq!(&*b, body),
        Err(e) => panic!("call failed: {e}"),
    }
}

#[test]
fn the_first_call_sends_a_hello_and_is_held_until_welcome() {
    let t0 = Instant::now();
    let mut c = Client::new(config(), ID, INC, clock()).unwrap();
    let id = c.start_call(t0, call(10, false)).unwrap();
    assert_eq!(id.seq(), 1);
    assert_eq!((c.in_flight(), c.session(), c.next_seq()), (1, None, 2));

    let sent = drain(&mut c, t0);
    assert_eq!(sent.len(), 1, "only the Hello: the call is held");
    let (hello, body) = &sent[0];
    assert_eq!(
        *hello,
        HeaderRepr {
            kind: PacketKind::Hello,
            flags: Flags::empty(),
            status: 0,
            client_id: ID,
            client_incarnation: INC,
            interface: 0,
            method: 0,
            session: 0,
            seq: 1,
            ack: 0,
            // The call took stamp 1 when it started; the Hello is the next event.
            lamport: 2,
            frag_index: 0,
            frag_count: 1,
            message_len: HELLO_BODY_LEN as u32,
            payload_len: HELLO_BODY_LEN as u32,
        }
    );
    let hello_body = read_body::<HelloBody>(body).unwrap();
    assert_eq!(hello_body.max_datagram.get() as usize, ETHERNET_DATAGRAM);
    assert_eq!(hello_body.max_message.get() as usize, config().max_message);
    assert!(!c.wants_transmit(id));
    assert_eq!(c.stats().hellos, 1);

    // A Welcome answering another nonce opens nothing.
    assert!(
        c.handle_datagram(t0 + us(5), &welcome(2, SESSION, ETHERNET_DATAGRAM, 1 << 20))
            .is_none()
    );
    assert_eq!(c.stats().dropped.stale, 1);
    assert_eq!(c.session(), None);
    assert!(drain(&mut c, t0 + us(5)).is_empty());

    assert!(
        c.handle_datagram(
            t0 + us(10),
            &welcome(1, SESSION, ETHERNET_DATAGRAM, 1 << 20)
        )
        .is_none()
    );
    assert_eq!(c.session(), Some(SESSION));
    assert_eq!(events(&mut c), [Event::Connected { session: SESSION }]);
    assert_eq!(c.stats().sessions_opened, 1);
    assert!(c.wants_transmit(id));

    let sent = drain(&mut c, t0 + us(10));
    assert_eq!(sent.len(), 1);
    let (h, payload) = &sent[0];
    assert_eq!(
        (h.kind, h.session, h.seq, h.ack, h.lamport, h.flags),
        (PacketKind::Request, SESSION, 1, 0, 1, Flags::empty())
    );
    assert_eq!(
        (
            h.interface,
            h.method,
            h.frag_index,
            h.frag_count,
            h.message_len
        ),
        (IFACE, METHOD, 0, 1, 10)
    );
    assert_eq!(*payload, request_body(10));

    // A second Welcome (a duplicate) changes nothing.
    assert!(
        c.handle_datagram(
            t0 + us(11),
            &welcome(1, SESSION2, ETHERNET_DATAGRAM, 1 << 20)
        )
        .is_none()
    );
    assert_eq!(c.session(), Some(SESSION));
    assert_eq!(c.stats().dropped.stale, 2);
    assert!(events(&mut c).is_empty());
}

#[test]
fn the_hello_is_retransmitted_with_backoff_until_welcome() {
    let t0 = Instant::now();
    let mut c = Client::new(config(), ID, INC, clock()).unwrap();
    c.connect(t0);
    assert_eq!(drain(&mut c, t0).len(), 1);
    let rto = estimator();
    let mut at = t0 + rto.backoff(0);
    assert_eq!(c.poll_timeout(), Some(at));
    c.handle_timeout(at - Duration::from_nanos(1));
    assert!(drain(&mut c, at).is_empty());
    for attempt in 1..4 {
        c.handle_timeout(at);
        let sent = drain(&mut c, at);
        assert_eq!(sent.len(), 1);
        let h = sent[0].0;
        assert_eq!(
            (h.kind, h.seq, h.flags),
            (PacketKind::Hello, 1, Flags::RETRANSMIT)
        );
        at += rto.backoff(attempt);
        assert_eq!(c.poll_timeout(), Some(at));
    }
    assert_eq!(c.stats().hellos, 4);
    assert!(
        c.handle_datagram(at, &welcome(1, SESSION, ETHERNET_DATAGRAM, 1 << 20))
            .is_none()
    );
    assert_eq!(c.session(), Some(SESSION));
    assert_eq!(c.poll_timeout(), None, "no calls, no handshake: no timer");
}

#[test]
fn requests_carry_sequence_ack_stamp_and_flags() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let l0 = c.lamport();
    let a = c.start_call(t0, call(5, false)).unwrap();
    let b = c.start_call(t0, call(6, true)).unwrap();
    let d = c.start_call(t0, call(7, false)).unwrap();
    assert_eq!((a.seq(), b.seq(), d.seq()), (1, 2, 3));
    let sent = drain(&mut c, t0);
    let fields: Vec<_> = sent
        .iter()
        .map(|(h, _)| (h.seq, h.ack, h.lamport, h.flags, h.message_len))
        .collect();
    assert_eq!(
        fields,
        [
            (1, 0, l0 + 1, Flags::empty(), 5),
            (2, 0, l0 + 2, Flags::IDEMPOTENT, 6),
            (3, 0, l0 + 3, Flags::empty(), 7),
        ]
    );

    // The call in the middle ends: the oldest in flight is still 1.
    assert_reply(c.handle_datagram(t0 + us(50), &reply(2, 10, b"b")), b, b"b");
    let e = c.start_call(t0 + us(50), call(0, false)).unwrap();
    let sent = drain(&mut c, t0 + us(50));
    assert_eq!((sent[0].0.seq, sent[0].0.ack), (e.seq(), 0));

    // The oldest ends: every call up to 2 has ended.
    assert_reply(c.handle_datagram(t0 + us(60), &reply(1, 11, b"a")), a, b"a");
    let f = c.start_call(t0 + us(60), call(1, true)).unwrap();
    let sent = drain(&mut c, t0 + us(60));
    let h = sent[0].0;
    assert_eq!((h.seq, h.ack, h.flags), (f.seq(), 2, Flags::IDEMPOTENT));
    let f_stamp = h.lamport;
    assert!(
        f_stamp > 11,
        "the call's stamp follows the replies observed"
    );

    // Retransmissions keep the seq and the stamp, carry the current ack and RETRANSMIT.
    // (The replies were round-trip samples, so calls 4 and 5 have shorter timers than call 3.)
    assert_eq!(c.stats().rtt_samples, 2);
    let due = t0 + estimator().rto() + transfer(7);
    c.handle_timeout(due);
    let resent = drain(&mut c, due);
    let summary: Vec<_> = resent
        .iter()
        .map(|(h, _)| (h.seq, h.ack, h.flags))
        .collect();
    assert_eq!(
        summary,
        [
            (3, 2, Flags::RETRANSMIT),
            (4, 2, Flags::RETRANSMIT),
            (5, 2, Flags::IDEMPOTENT | Flags::RETRANSMIT),
        ]
    );
    assert_eq!(resent[0].0.lamport, l0 + 3);
    assert_eq!(resent[2].0.lamport, f_stamp);
    assert_eq!(c.stats().retransmissions, 3);
}

#[test]
fn a_request_is_awaited_alone_only_when_it_is_whole_and_every_call_before_it_ended() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let awaited = |c: &mut Client, now| {
        let mut out = Vec::new();
        while let Some(t) = c.poll_transmit(now) {
            out.push((parse_tx(&t).0.seq, t.awaited()));
        }
        out
    };
    let a = c.start_call(t0, call(5, false)).unwrap();
    assert_eq!(awaited(&mut c, t0), [(a.seq(), true)]);
    // A second call while the first is in flight: the server has the first to answer too.
    let b = c.start_call(t0, call(5, false)).unwrap();
    assert_eq!(awaited(&mut c, t0), [(b.seq(), false)]);
    assert_reply(c.handle_datagram(t0 + us(10), &reply(1, 10, b"a")), a, b"a");
    assert_reply(c.handle_datagram(t0 + us(10), &reply(2, 11, b"b")), b, b"b");
    // Alone again; but a message of several datagrams is a bulk transfer, never awaited.
    let d = c.start_call(t0 + us(20), call(3, false)).unwrap();
    assert_eq!(awaited(&mut c, t0 + us(20)), [(d.seq(), true)]);
    assert_reply(c.handle_datagram(t0 + us(30), &reply(3, 12, b"d")), d, b"d");
    let chunk = config().max_datagram - HEADER_LEN;
    c.start_call(t0 + us(30), call(2 * chunk, false)).unwrap();
    let sent = awaited(&mut c, t0 + us(30));
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|&(_, a)| !a), "{sent:?}");
}

#[test]
fn a_reply_ends_the_call_once_and_a_duplicate_is_dropped() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let id = c.start_call(t0, call(3, false)).unwrap();
    let stamp = drain(&mut c, t0)[0].0.lamport;
    let datagram = reply(1, 50, b"pong");
    let r = c
        .handle_datagram(t0 + us(20), &datagram)
        .expect("the reply ends the call");
    assert_eq!(r.call, id);
    assert_eq!(r.request_stamp, LamportStamp::new(stamp, ID));
    assert_eq!(r.reply_stamp, LamportStamp::new(50, NODE));
    match r.result {
        Ok(Body::Borrowed(b)) => {
            assert_eq!(b, b"pong");
            assert!(
                std::ptr::eq(b.as_ptr(), datagram[HEADER_LEN..].as_ptr()),
                "zero copy"
            );
        }
        other => panic!("expected a borrowed body, got {other:?}"),
    }
    assert_eq!(
        (c.in_flight(), c.call_id(1), c.stats().replies),
        (0, None, 1)
    );
    assert_eq!(c.poll_timeout(), None);

    assert!(c.handle_datagram(t0 + us(30), &datagram).is_none());
    assert_eq!(c.stats().dropped.stale, 1);
    assert_eq!(c.stats().replies, 1);
    assert!(events(&mut c).is_empty());
    assert!(drain(&mut c, t0 + us(30)).is_empty());
}

#[test]
fn an_error_reply_ends_the_call_with_the_servers_error() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let a = c.start_call(t0, call(3, false)).unwrap();
    let b = c.start_call(t0, call(3, false)).unwrap();
    drain(&mut c, t0);
    let unknown = HeaderRepr {
        status: ErrorCode::UnknownMethod.to_u16(),
        ..from_server(PacketKind::ErrorReply, 1, 9)
    };
    let unknown = emit(unknown, &[]);
    let r = c.handle_datagram(t0 + us(5), &unknown).unwrap();
    assert_eq!(
        (r.call, r.result.unwrap_err()),
        (
            a,
            CallError::InterfaceMismatch {
                interface: IFACE,
                method: METHOD
            }
        )
    );
    let panicked = HeaderRepr {
        status: ErrorCode::HandlerPanicked.to_u16(),
        ..from_server(PacketKind::ErrorReply, 2, 9)
    };
    let panicked = emit(panicked, &[]);
    let r = c.handle_datagram(t0 + us(5), &panicked).unwrap();
    let error = r.result.unwrap_err();
    assert_eq!(
        (r.call, error),
        (
            b,
            CallError::Remote(crate::error::RemoteError {
                code: ErrorCode::HandlerPanicked
            })
        )
    );
    assert!(error.may_have_executed());
    assert_eq!(
        (c.in_flight(), c.stats().failures, c.stats().replies),
        (0, 2, 0)
    );
}

#[test]
fn retransmissions_follow_the_rto_with_exponential_backoff() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let len = 100;
    let deadline = t0 + Duration::from_secs(10);
    c.start_call(t0, call_until(len, deadline)).unwrap();
    assert_eq!(drain(&mut c, t0).len(), 1);
    let rto = estimator();
    let mut at = t0 + rto.backoff(0) + transfer(len);
    assert_eq!(c.poll_timeout(), Some(at));

    // Just before the timer: nothing.
    c.handle_timeout(at - Duration::from_nanos(1));
    assert!(drain(&mut c, at).is_empty());
    assert_eq!(c.stats().retransmissions, 0);

    for attempt in 1..=9u32 {
        c.handle_timeout(at);
        // The driver sends a little later; the next timer runs from the send.
        let sent_at = at + us(3);
        let sent = drain(&mut c, sent_at);
        assert_eq!(sent.len(), 1, "attempt {attempt}");
        assert_eq!((sent[0].0.seq, sent[0].0.flags), (1, Flags::RETRANSMIT));
        assert_eq!(c.stats().retransmissions, u64::from(attempt));
        at = sent_at + rto.backoff(attempt) + transfer(len);
        assert_eq!(c.poll_timeout(), Some(at), "attempt {attempt}");
    }
    // The backoff doubled up to the cap.
    assert_eq!(rto.backoff(6), ms(64));
    assert_eq!(rto.backoff(9), ms(64));
}

#[test]
fn the_timer_after_a_call_ends_is_never_late_and_an_early_one_changes_nothing() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let rto = estimator();
    let deadline = t0 + Duration::from_secs(10);
    let first = c.start_call(t0, call_until(0, deadline)).unwrap();
    assert_eq!(drain(&mut c, t0).len(), 1);
    let t1 = t0 + us(100);
    c.start_call(t1, call_until(0, deadline)).unwrap();
    assert_eq!(drain(&mut c, t1).len(), 1);
    assert_eq!(c.poll_timeout(), Some(t0 + rto.backoff(0)));
    // The first call ends: its timer is gone, and the one reported may still be its (it is
    // not searched out), but never later than the second call's.
    assert_reply(c.handle_datagram(t1, &reply(1, 5, b"")), first, b"");
    let reported = c.poll_timeout().unwrap();
    let second = t1 + rto.backoff(0);
    assert!(reported <= second, "{reported:?} is after {second:?}");
    // Handling the timeout at the reported time sends nothing and brings it up to date.
    c.handle_timeout(reported);
    assert!(drain(&mut c, reported).is_empty());
    assert_eq!(c.stats().retransmissions, 0);
    assert_eq!(c.poll_timeout(), Some(second));
    // With nothing in flight there is no timer at all.
    c.handle_timeout(second);
    assert_eq!(drain(&mut c, second).len(), 1);
    let id = CallId(2);
    let done = second + us(10);
    assert_reply(c.handle_datagram(done, &reply(2, 6, b"")), id, b"");
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn karns_rule_takes_samples_only_from_calls_sent_once() {
    let t0 = Instant::now();
    let mut c = established(t0);
    // Retransmitted: no sample from its reply.
    c.start_call(t0, call(0, false)).unwrap();
    drain(&mut c, t0);
    let due = c.poll_timeout().unwrap();
    c.handle_timeout(due);
    assert_eq!(drain(&mut c, due).len(), 1);
    assert!(c.handle_datagram(due + us(10), &reply(1, 3, b"")).is_some());
    assert_eq!((c.stats().rtt_samples, c.rtt().srtt()), (0, None));

    // A request of two datagrams: no sample.
    let now = due + us(100);
    c.start_call(now, call(CHUNK + 1, false)).unwrap();
    assert_eq!(drain(&mut c, now).len(), 2);
    assert!(c.handle_datagram(now + us(10), &reply(2, 4, b"")).is_some());
    // A reply of two datagrams: no sample.
    let body = vec![7; CHUNK + 1];
    c.start_call(now, call(1, false)).unwrap();
    drain(&mut c, now);
    assert!(
        c.handle_datagram(now + us(10), &reply_fragment(3, &body, CHUNK, 0))
            .is_none()
    );
    assert!(
        c.handle_datagram(now + us(10), &reply_fragment(3, &body, CHUNK, 1))
            .is_some()
    );
    assert_eq!((c.stats().rtt_samples, c.rtt().srtt()), (0, None));

    // Sent once, one datagram each way: a sample of exactly the round trip.
    let now = now + us(100);
    c.start_call(now, call(0, false)).unwrap();
    drain(&mut c, now);
    assert!(
        c.handle_datagram(now + us(100), &reply(4, 5, b""))
            .is_some()
    );
    assert_eq!((c.stats().rtt_samples, c.rtt().srtt()), (1, Some(us(100))));
    let mut expected = estimator();
    expected.sample(us(100));
    assert_eq!(c.rtt().rto(), expected.rto());
    assert_eq!(expected.rto(), us(300));

    // The next call's timer uses the new estimate.
    let now = now + us(200);
    c.start_call(now, call(0, false)).unwrap();
    drain(&mut c, now);
    assert_eq!(c.poll_timeout(), Some(now + us(300)));
}

#[test]
fn a_call_resent_in_a_new_session_gives_no_rtt_sample() {
    let t0 = Instant::now();
    let mut c = established(t0);
    c.start_call(t0, call(0, true)).unwrap();
    drain(&mut c, t0);
    assert!(c.handle_datagram(t0 + ms(5), &stale(1, SESSION)).is_none());
    let hello = drain(&mut c, t0 + ms(5));
    assert!(
        c.handle_datagram(
            t0 + ms(6),
            &welcome(hello[0].0.seq, SESSION2, ETHERNET_DATAGRAM, 1 << 20)
        )
        .is_none()
    );
    let resent = drain(&mut c, t0 + ms(6));
    assert_eq!(resent.len(), 1);
    assert!(
        resent[0].0.flags.contains(Flags::RETRANSMIT),
        "the same message, sent again"
    );
    let answer = emit(
        HeaderRepr {
            session: SESSION2,
            ..from_server(PacketKind::Reply, 1, 9)
        },
        &[],
    );
    assert!(c.handle_datagram(t0 + ms(6) + us(40), &answer).is_some());
    // The call was sent twice: by Karn's rule its reply says nothing about the round trip (it
    // would have measured the first send to the reply: the lost session and the handshake).
    assert_eq!((c.stats().rtt_samples, c.rtt().srtt()), (0, None));
}

#[test]
fn the_deadline_fails_the_call_with_timed_out() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let deadline = t0 + ms(5);
    let id = c.start_call(t0, call_until(0, deadline)).unwrap();
    drain(&mut c, t0);
    // Retransmissions at 1 ms and 3 ms; the next one would be at 7 ms.
    let mut timers = Vec::new();
    while let Some(at) = c.poll_timeout() {
        if at >= deadline {
            break;
        }
        timers.push(at - t0);
        c.handle_timeout(at);
        drain(&mut c, at);
    }
    assert_eq!(timers, [ms(1), ms(3)]);
    assert_eq!(c.poll_timeout(), Some(deadline));
    c.handle_timeout(deadline - Duration::from_nanos(1));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(deadline);
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::TimedOut
        }]
    );
    let s = c.stats();
    assert_eq!((s.timeouts, s.failures, s.replies), (1, 1, 0));
    assert_eq!((c.in_flight(), c.poll_timeout()), (0, None));
    assert!(drain(&mut c, deadline).is_empty());

    // The reply, late: dropped, the call ended once.
    assert!(
        c.handle_datagram(deadline + us(1), &reply(1, 9, b"late"))
            .is_none()
    );
    assert_eq!(c.stats().dropped.stale, 1);
    assert!(events(&mut c).is_empty());
}

#[test]
fn a_reply_after_the_deadline_ends_the_call_with_timed_out() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let deadline = t0 + ms(5);
    let id = c.start_call(t0, call_until(0, deadline)).unwrap();
    drain(&mut c, t0);
    // The driver did not get to its timer before the reply arrived.
    assert!(
        c.handle_datagram(deadline + us(1), &reply(1, 9, b"late"))
            .is_none()
    );
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::TimedOut
        }]
    );
    assert_eq!(
        (c.stats().replies, c.stats().timeouts, c.in_flight()),
        (0, 1, 0)
    );
    c.handle_timeout(deadline + us(2));
    assert!(events(&mut c).is_empty(), "ended exactly once");
}

#[test]
fn busy_delays_the_call_and_server_busy_needs_busy_as_the_last_answer() {
    let t0 = Instant::now();
    let rto = estimator();
    let mut c = established(t0);
    let deadline = t0 + ms(5);
    let id = c.start_call(t0, call_until(0, deadline)).unwrap();
    drain(&mut c, t0);
    let t1 = t0 + us(10);
    assert!(
        c.handle_datagram(t1, &busy(1, BusyReason::ReplyCacheFull))
            .is_none()
    );
    assert_eq!(c.stats().busy, 1);
    // Sent again after a backed-off timeout, not the plain RTO.
    let again = t1 + rto.backoff(1);
    assert_eq!(c.poll_timeout(), Some(again));
    c.handle_timeout(again - Duration::from_nanos(1));
    assert!(drain(&mut c, again).is_empty());
    c.handle_timeout(again);
    let sent = drain(&mut c, again);
    assert_eq!((sent.len(), sent[0].0.flags), (1, Flags::RETRANSMIT));
    // The first retransmission: twice the RTO, as after a timeout.
    assert_eq!(c.poll_timeout(), Some(again + rto.backoff(1)));
    // Busy again: this is the last answer when the deadline comes.
    let t2 = again + us(10);
    assert!(
        c.handle_datagram(t2, &busy(1, BusyReason::ReplyCacheFull))
            .is_none()
    );
    // The next round would be after the deadline.
    assert!(t2 + rto.backoff(2) > deadline);
    assert_eq!(c.poll_timeout(), Some(deadline));
    c.handle_timeout(deadline);
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::ServerBusy(BusyReason::ReplyCacheFull)
        }]
    );
    assert_eq!(
        (c.stats().busy, c.stats().timeouts, c.stats().failures),
        (2, 0, 1)
    );

    // Busy, then sent again without an answer: the last round may have executed.
    let t0 = deadline;
    let deadline = t0 + ms(4);
    let id = c.start_call(t0, call_until(0, deadline)).unwrap();
    drain(&mut c, t0);
    assert!(
        c.handle_datagram(t0 + us(10), &busy(2, BusyReason::Overloaded))
            .is_none()
    );
    let again = t0 + us(10) + rto.backoff(1);
    c.handle_timeout(again);
    assert_eq!(drain(&mut c, again).len(), 1);
    assert!(again + rto.backoff(1) > deadline);
    c.handle_timeout(deadline);
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::TimedOut
        }]
    );
}

#[test]
fn stale_fails_calls_that_may_have_executed_and_resends_idempotent_ones() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let a = c.start_call(t0, call(4, false)).unwrap();
    let b = c.start_call(t0, call(4, true)).unwrap();
    let sent = drain(&mut c, t0);
    let b_stamp = sent[1].0.lamport;

    assert!(c.handle_datagram(t0 + us(20), &stale(1, SESSION)).is_none());
    assert_eq!(
        events(&mut c),
        [
            Event::SessionLost { session: SESSION },
            Event::CallFailed {
                call: a,
                error: CallError::OutcomeUnknown
            },
        ]
    );
    let s = c.stats();
    assert_eq!((s.sessions_lost, s.outcome_unknown, s.failures), (1, 1, 1));
    assert_eq!(c.session(), None);
    assert_eq!(c.call_id(2), Some(b));

    // A new handshake, with a new nonce; the idempotent call waits for it.
    let sent = drain(&mut c, t0 + us(20));
    assert_eq!(sent.len(), 1);
    let hello = sent[0].0;
    assert_eq!(
        (hello.kind, hello.seq, hello.ack, hello.flags),
        (PacketKind::Hello, 2, 1, Flags::empty())
    );
    // The Stale of the other call, late: changes nothing.
    assert!(c.handle_datagram(t0 + us(21), &stale(2, SESSION)).is_none());
    assert!(events(&mut c).is_empty());

    assert!(
        c.handle_datagram(
            t0 + us(40),
            &welcome(2, SESSION2, ETHERNET_DATAGRAM, 1 << 20)
        )
        .is_none()
    );
    assert_eq!(events(&mut c), [Event::Connected { session: SESSION2 }]);
    let sent = drain(&mut c, t0 + us(40));
    assert_eq!(sent.len(), 1);
    let h = sent[0].0;
    assert_eq!(
        (h.session, h.seq, h.ack, h.lamport),
        (SESSION2, 2, 1, b_stamp)
    );
    assert!(h.flags.contains(Flags::IDEMPOTENT));

    // A reply from the old session is not this call's.
    assert!(
        c.handle_datagram(t0 + us(50), &reply(2, 9, b"old"))
            .is_none()
    );
    assert_eq!(c.in_flight(), 1);
    let answer = emit(
        HeaderRepr {
            session: SESSION2,
            message_len: 3,
            ..from_server(PacketKind::Reply, 2, 9)
        },
        b"new",
    );
    assert_reply(c.handle_datagram(t0 + us(60), &answer), b, b"new");
    assert_eq!(c.stats().sessions_opened, 2);
}

#[test]
fn start_call_refuses_a_full_window_and_a_message_too_large() {
    let t0 = Instant::now();
    let mut c = established_with(
        ClientConfig {
            window: 2,
            max_message: 1000,
            reassembly_budget: 1000,
            ..config()
        },
        t0,
    );
    assert_eq!(
        c.start_call(t0, call(1001, false)),
        Err(CallError::MessageTooLarge {
            len: 1001,
            max: 1000
        })
    );
    let a = c.start_call(t0, call(1000, false)).unwrap();
    c.start_call(t0, call(0, false)).unwrap();
    assert!(!c.can_start());
    assert_eq!(c.start_call(t0, call(0, false)), Err(CallError::WindowFull));
    drain(&mut c, t0);
    // The newer call ends; the window counts from the oldest in flight.
    assert!(c.handle_datagram(t0 + us(5), &reply(2, 9, b"")).is_some());
    assert_eq!(c.in_flight(), 1);
    assert_eq!(c.start_call(t0, call(0, false)), Err(CallError::WindowFull));
    assert_reply(c.handle_datagram(t0 + us(6), &reply(1, 9, b"")), a, b"");
    assert_eq!(c.start_call(t0, call(0, false)).map(CallId::seq), Ok(3));
    assert_eq!(c.stats().calls, 3, "refused calls are not counted");
}

#[test]
fn the_welcomes_smaller_limits_are_honoured() {
    let t0 = Instant::now();
    let mut c = Client::new(config(), ID, INC, clock()).unwrap();
    let big = c.start_call(t0, call(2001, false)).unwrap();
    let fits = c.start_call(t0, call(1500, false)).unwrap();
    let hello = drain(&mut c, t0);
    // The server takes datagrams of 1072 bytes (1000 of body) and messages of 2000.
    assert!(
        c.handle_datagram(t0 + us(10), &welcome(hello[0].0.seq, SESSION, 1072, 2000))
            .is_none()
    );
    assert_eq!(
        events(&mut c),
        [
            Event::Connected { session: SESSION },
            Event::CallFailed {
                call: big,
                error: CallError::MessageTooLarge {
                    len: 2001,
                    max: 2000
                }
            },
        ]
    );
    let sent = drain(&mut c, t0 + us(10));
    let frags: Vec<_> = sent
        .iter()
        .map(|(h, p)| (h.seq, h.frag_index, h.frag_count, h.message_len, p.len()))
        .collect();
    assert_eq!(
        frags,
        [
            (fits.seq(), 0, 2, 1500, 1000),
            (fits.seq(), 1, 2, 1500, 500)
        ]
    );
    assert_eq!(sent[1].1, request_body(1500)[1000..]);
    assert_eq!(
        c.start_call(t0 + us(10), call(2001, false)),
        Err(CallError::MessageTooLarge {
            len: 2001,
            max: 2000
        })
    );
}

#[test]
fn misdirected_and_malformed_datagrams_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let id = c.start_call(t0, call(1, false)).unwrap();
    drain(&mut c, t0);
    let clock = c.lamport();
    let good = reply(1, 1000, b"ok");
    let other_client = emit(
        HeaderRepr {
            client_id: ID + 1,
            message_len: 2,
            ..from_server(PacketKind::Reply, 1, 1000)
        },
        b"ok",
    );
    let other_incarnation = emit(
        HeaderRepr {
            client_incarnation: INC + 1,
            message_len: 2,
            ..from_server(PacketKind::Reply, 1, 1000)
        },
        b"ok",
    );
    let a_request = emit(
        HeaderRepr {
            message_len: 2,
            ..from_server(PacketKind::Request, 1, 1000)
        },
        b"ok",
    );
    for d in [&other_client, &other_incarnation, &a_request] {
        assert!(c.handle_datagram(t0 + us(1), d).is_none());
    }
    assert_eq!(c.stats().dropped.misdirected, 3);
    assert_eq!(
        c.lamport(),
        clock,
        "a datagram for someone else does not move the clock"
    );

    let mut bad_magic = good.clone();
    bad_magic[0] = b'x';
    let mut bad_flags = good.clone();
    bad_flags[4] = Flags::RETRANSMIT.bits() as u8; // not allowed on a reply
    let mut long = good.clone();
    long.push(0);
    for d in [
        &good[..HEADER_LEN - 1],
        &good[..good.len() - 1],
        &bad_magic,
        &bad_flags,
        &long,
    ] {
        assert!(c.handle_datagram(t0 + us(1), d).is_none());
    }
    assert_eq!(c.stats().dropped.malformed, 5);
    assert_eq!(c.stats().dropped.total(), 8);
    assert_eq!((c.in_flight(), c.lamport()), (1, clock));

    assert_reply(c.handle_datagram(t0 + us(2), &good), id, b"ok");
}

#[test]
fn a_multi_fragment_reply_reassembles_and_retransmissions_then_send_fragment_0() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let request_len = CHUNK + 100;
    let id = c.start_call(t0, call(request_len, false)).unwrap();
    let sent = drain(&mut c, t0);
    assert_eq!(sent.len(), 2);
    let body: Vec<u8> = (0..2 * CHUNK + 200).map(|i| (i * 7) as u8).collect();

    assert!(
        c.handle_datagram(t0 + us(10), &reply_fragment(1, &body, CHUNK, 1))
            .is_none()
    );
    assert_eq!(c.reassembly_bytes, body.len());
    assert!(c.memory() >= body.len());
    // The same fragment again: ignored.
    assert!(
        c.handle_datagram(t0 + us(11), &reply_fragment(1, &body, CHUNK, 1))
            .is_none()
    );
    // A fragment that disagrees with the others: dropped and counted.
    let odd = emit(
        HeaderRepr {
            frag_index: 2,
            frag_count: 3,
            message_len: body.len() as u32 + 1,
            ..from_server(PacketKind::Reply, 1, 90)
        },
        &[1; 201],
    );
    assert!(c.handle_datagram(t0 + us(12), &odd).is_none());
    assert_eq!(c.stats().dropped.bad_fragment, 1);

    // The server holds the request: the retransmission is fragment 0 alone.
    let due = c.poll_timeout().unwrap();
    c.handle_timeout(due);
    let resent = drain(&mut c, due);
    assert_eq!(resent.len(), 1);
    let h = resent[0].0;
    assert_eq!(
        (h.frag_index, h.frag_count, h.message_len, h.payload_len),
        (0, 2, request_len as u32, CHUNK as u32)
    );
    assert_eq!(h.flags, Flags::RETRANSMIT);

    assert!(
        c.handle_datagram(due + us(10), &reply_fragment(1, &body, CHUNK, 2))
            .is_none()
    );
    let last = reply_fragment(1, &body, CHUNK, 0);
    let r = c.handle_datagram(due + us(10), &last).expect("complete");
    assert_eq!(r.call, id);
    let got = r.result.unwrap();
    assert!(matches!(got, Body::Owned(_)));
    assert_eq!(*got, body[..]);
    assert_eq!(
        (c.reassembly_bytes, c.in_flight(), c.stats().replies),
        (0, 0, 1)
    );
    c.recycle(got.into_owned_buffer().unwrap());
    assert!(c.memory() <= config().reassembly_budget);
}

#[test]
fn a_reply_larger_than_the_reassembly_budget_is_dropped() {
    let t0 = Instant::now();
    let config = ClientConfig {
        max_message: 2 * CHUNK,
        reassembly_budget: 2 * CHUNK,
        ..config()
    };
    let mut c = established_with(config, t0);
    c.start_call(t0, call(0, false)).unwrap();
    c.start_call(t0, call(0, false)).unwrap();
    drain(&mut c, t0);
    let body = vec![3; 2 * CHUNK];
    assert!(
        c.handle_datagram(t0 + us(1), &reply_fragment(1, &body, CHUNK, 0))
            .is_none()
    );
    // The budget is held by call 1's reply: call 2's cannot start.
    assert!(
        c.handle_datagram(t0 + us(1), &reply_fragment(2, &body, CHUNK, 0))
            .is_none()
    );
    assert_eq!(
        (c.stats().dropped.bad_fragment, c.reassembly_bytes),
        (1, 2 * CHUNK)
    );
    // Too large for max_message.
    let huge = vec![3; 2 * CHUNK + 1];
    assert!(
        c.handle_datagram(t0 + us(1), &reply_fragment(2, &huge, CHUNK, 0))
            .is_none()
    );
    assert_eq!(c.stats().dropped.bad_fragment, 2);
    assert!(
        c.handle_datagram(t0 + us(2), &reply_fragment(1, &body, CHUNK, 1))
            .is_some()
    );
    assert_eq!(c.reassembly_bytes, 0);
    assert!(
        c.handle_datagram(t0 + us(3), &reply_fragment(2, &body, CHUNK, 1))
            .is_none()
    );
    assert!(
        c.handle_datagram(t0 + us(3), &reply_fragment(2, &body, CHUNK, 0))
            .is_some()
    );
}

#[test]
fn the_transmit_queue_stays_bounded_when_calls_send_their_own_datagrams() {
    let t0 = Instant::now();
    let window = 2;
    let config = ClientConfig {
        window,
        max_rto: ms(2),
        default_deadline: Duration::from_secs(60),
        ..config()
    };
    let mut c = established_with(config, t0);
    let id = c.start_call(t0, call(10, false)).unwrap();
    let mut now = t0;
    // The server never answers; the call's owner sends its datagrams, nobody drains the queue.
    for round in 0..200 {
        while let Some(t) = c.poll_transmit_for(now, id) {
            assert_eq!(parse_tx(&t).0.seq, id.seq());
        }
        assert!(
            c.tx_queue.len() <= 2 * window,
            "round {round}: {} queued",
            c.tx_queue.len()
        );
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    assert_eq!(c.stats().retransmissions, 200);

    // Several calls, each sent by its owner, retransmitted at the same instants.
    assert!(c.handle_datagram(now, &reply(1, 9, b"")).is_some());
    let ids: Vec<CallId> = (0..window)
        .map(|_| c.start_call(now, call(10, true)).unwrap())
        .collect();
    for round in 0..200 {
        for &id in &ids {
            assert!(c.poll_transmit_for(now, id).is_some(), "round {round}");
            assert!(c.poll_transmit_for(now, id).is_none());
        }
        assert!(
            c.tx_queue.len() <= 2 * window,
            "round {round}: {} queued",
            c.tx_queue.len()
        );
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
}

#[test]
fn poll_transmit_for_sends_the_handshake_and_only_that_calls_datagrams() {
    let t0 = Instant::now();
    let mut c = Client::new(config(), ID, INC, clock()).unwrap();
    let a = c.start_call(t0, call(1, false)).unwrap();
    let b = c.start_call(t0, call(1, false)).unwrap();
    assert!(c.wants_transmit(b));
    let hello = parse_tx(&c.poll_transmit_for(t0, b).unwrap()).0;
    assert_eq!(hello.kind, PacketKind::Hello);
    assert!(c.poll_transmit_for(t0, a).is_none());
    c.handle_datagram(t0, &welcome(hello.seq, SESSION, ETHERNET_DATAGRAM, 1 << 20));
    let h = parse_tx(&c.poll_transmit_for(t0, b).unwrap()).0;
    assert_eq!(h.seq, b.seq());
    assert!(c.poll_transmit_for(t0, b).is_none());
    assert!(!c.wants_transmit(b));
    assert!(c.wants_transmit(a));
    let sent = drain(&mut c, t0);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.seq, a.seq());
}

#[test]
fn the_clock_observes_the_reply_stamp() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let first = c.start_call(t0, call(0, false)).unwrap();
    let stamp = drain(&mut c, t0)[0].0.lamport;
    let answer = reply(1, 1_000, b"");
    let r = c.handle_datagram(t0 + us(5), &answer).unwrap();
    assert_eq!(r.call, first);
    assert!(r.reply_stamp > r.request_stamp);
    assert!(c.lamport() > 1_000);
    c.start_call(t0 + us(6), call(0, false)).unwrap();
    let next = drain(&mut c, t0 + us(6))[0].0.lamport;
    assert!(next > 1_000 && next > stamp);
    // A stale stamp does not move the clock back.
    let before = c.lamport();
    assert!(c.handle_datagram(t0 + us(7), &reply(2, 3, b"")).is_some());
    assert_eq!(c.lamport(), before + 1);
}

#[test]
fn a_cancelled_call_ends_without_an_event_and_its_reply_is_dropped() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let a = c.start_call(t0, call(0, false)).unwrap();
    let b = c.start_call(t0, call(0, false)).unwrap();
    drain(&mut c, t0);
    c.cancel(a);
    assert_eq!((c.in_flight(), c.call_id(1)), (1, None));
    assert!(c.handle_datagram(t0 + us(5), &reply(1, 9, b"")).is_none());
    assert!(events(&mut c).is_empty());
    c.start_call(t0 + us(5), call(0, false)).unwrap();
    let h = drain(&mut c, t0 + us(5))[0].0;
    assert_eq!((h.seq, h.ack), (3, 1), "the cancelled call has ended");
    assert_reply(c.handle_datagram(t0 + us(6), &reply(2, 9, b"")), b, b"");
}

#[test]
fn max_retransmissions_limits_the_rounds_after_timeouts_and_busy_replies() {
    let t0 = Instant::now();
    let mut c = established_with(
        ClientConfig {
            max_retransmissions: 2,
            ..config()
        },
        t0,
    );
    // A silent server: sent three times, then the call fails at its next timer.
    let id = c.start_call(t0, call(0, false)).unwrap();
    drain(&mut c, t0);
    for _ in 0..2 {
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at);
        assert_eq!(drain(&mut c, at).len(), 1);
    }
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    assert!(drain(&mut c, at).is_empty());
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::TimedOut
        }]
    );
    assert_eq!(c.stats().retransmissions, 2);

    // A busy server: each busy reply is followed by one retransmission, two in all.
    let mut now = at;
    let id = c.start_call(now, call(0, false)).unwrap();
    drain(&mut c, now);
    for round in 0..3 {
        assert!(
            c.handle_datagram(now + us(10), &busy(id.seq(), BusyReason::Overloaded))
                .is_none()
        );
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        let sent = drain(&mut c, now);
        if round < 2 {
            assert_eq!(sent.len(), 1, "round {round}");
        } else {
            assert!(sent.is_empty());
        }
    }
    assert_eq!(
        events(&mut c),
        [Event::CallFailed {
            call: id,
            error: CallError::ServerBusy(BusyReason::Overloaded)
        }]
    );
    assert_eq!((c.stats().retransmissions, c.stats().busy), (4, 3));
}

#[test]
fn start_call_sending_hands_out_a_one_datagram_call_at_once_and_queues_the_rest() {
    let t0 = Instant::now();
    // Two clients in the same state: one starts its calls the usual way, the other sending.
    let (mut usual, mut sending) = (established(t0), established(t0));
    for (i, len) in [0, 5, 100, CHUNK].into_iter().enumerate() {
        let now = t0 + us(10 * i as u64);
        let idempotent = i % 2 == 1;
        let a = usual.start_call(now, call(len, idempotent)).unwrap();
        let queued = usual.poll_transmit_for(now, a).unwrap();
        assert!(usual.poll_transmit_for(now, a).is_none());
        let (b, first) = sending
            .start_call_sending(now, call(len, idempotent))
            .unwrap();
        let first = first.expect("one datagram in an open session goes at once");
        assert_eq!(a, b);
        assert_eq!(parse_tx(&first), parse_tx(&queued));
        // Nothing left to send, and the same timers and counters as the usual way.
        assert!(sending.poll_transmit(now).is_none());
        assert_eq!(usual.poll_timeout(), sending.poll_timeout());
        assert_eq!(usual.stats(), sending.stats());
    }

    // More than one datagram: nothing at once; every fragment comes from the queue.
    let (_, first) = sending
        .start_call_sending(t0, call(CHUNK + 1, false))
        .unwrap();
    assert!(first.is_none());
    assert_eq!(drain(&mut sending, t0).len(), 2);

    // One datagram by the client's limit, two by the smaller one the server welcomed.
    let mut c = welcomed(config(), t0, HEADER_LEN + 100, 1 << 20);
    let (_, first) = c.start_call_sending(t0, call(150, false)).unwrap();
    assert!(first.is_none());
    let sent = drain(&mut c, t0);
    assert_eq!(
        sent.iter()
            .map(|(h, p)| (h.frag_count, p.len()))
            .collect::<Vec<_>>(),
        [(2, 100), (2, 50)]
    );

    // Before a session: the handshake goes first and the call waits for it.
    let mut c = Client::new(config(), ID, INC, clock()).unwrap();
    let (_, first) = c.start_call_sending(t0, call(5, false)).unwrap();
    assert!(first.is_none());
    let sent = drain(&mut c, t0);
    assert_eq!(
        sent.iter().map(|(h, _)| h.kind).collect::<Vec<_>>(),
        [PacketKind::Hello]
    );
}

#[test]
fn a_call_started_at_an_estimate_and_retimed_to_its_send_keeps_its_timers_from_there() {
    let t0 = Instant::now();
    // The same call on two clients: one started when it was sent, one at an estimate a few
    // milliseconds off either way and re-timed once it was sent.
    for off in [ms(4), ms(0)] {
        for ahead in [true, false] {
            let sent = t0 + ms(10);
            let estimate = if ahead { sent + off } else { sent - off };
            let (mut exact, mut retimed) = (established(t0), established(t0));
            let (a, _) = exact
                .start_call_sending(sent, call_until(0, sent + ms(50)))
                .unwrap();
            let (b, first) = retimed
                .start_call_sending(estimate, call_until(0, estimate + ms(50)))
                .unwrap();
            assert!(first.is_some());
            retimed.sent_at(b, estimate, sent);
            assert_eq!(a, b);
            // Never a timer later than the exact one (an earlier bound is allowed).
            let rto = exact.poll_timeout().unwrap();
            assert!(retimed.poll_timeout().unwrap() <= rto, "{off:?} {ahead}");
            // Retransmitted at the same instant, failed at the same deadline.
            for c in [&mut exact, &mut retimed] {
                c.handle_timeout(rto - Duration::from_nanos(1));
                assert!(drain(c, rto).is_empty(), "{off:?} {ahead}");
                c.handle_timeout(rto);
                let resent = drain(c, rto);
                assert_eq!(resent.len(), 1, "{off:?} {ahead}");
                assert!(resent[0].0.flags.contains(Flags::RETRANSMIT));
                c.handle_timeout(sent + ms(50) - Duration::from_nanos(1));
                assert!(events(c).is_empty(), "{off:?} {ahead}");
                c.handle_timeout(sent + ms(50));
                assert_eq!(
                    events(c),
                    [Event::CallFailed {
                        call: a,
                        error: CallError::TimedOut
                    }]
                );
            }
            // The round trip counts from the send.
            let (mut exact, mut retimed) = (established(t0), established(t0));
            exact.start_call_sending(sent, call(0, false)).unwrap();
            let (b, _) = retimed
                .start_call_sending(estimate, call(0, false))
                .unwrap();
            retimed.sent_at(b, estimate, sent);
            for c in [&mut exact, &mut retimed] {
                assert!(
                    c.handle_datagram(sent + us(100), &reply(1, 200, b""))
                        .is_some()
                );
            }
            assert_eq!(exact.rtt().srtt(), retimed.rtt().srtt());
            assert_eq!(retimed.rtt().srtt(), Some(us(100)));
        }
    }
    // A call sent again (or gone) is left as it is.
    let mut c = established(t0);
    let (id, _) = c.start_call_sending(t0, call(0, false)).unwrap();
    let rto = c.poll_timeout().unwrap();
    c.handle_timeout(rto);
    drain(&mut c, rto);
    let next = c.poll_timeout().unwrap();
    c.sent_at(id, t0, t0 - ms(1));
    c.sent_at(CallId(99), t0, t0 - ms(1));
    c.handle_timeout(next - Duration::from_nanos(1));
    assert!(drain(&mut c, next).is_empty());
}

#[test]
fn round_trips_are_timed_on_every_call_at_first_then_on_one_call_in_eight() {
    let t0 = Instant::now();
    let mut c = established(t0);
    let mut now = t0;
    for seq in 1..=40u64 {
        let (id, first) = c.start_call_sending(now, call(0, false)).unwrap();
        assert_eq!((id.seq(), first.is_some()), (seq, true));
        assert!(
            c.handle_datagram(now + us(100), &reply(seq, 100 + seq, b""))
                .is_some()
        );
        now += us(200);
    }
    // Calls 1 to 8 were all timed; of calls 9 to 40, those whose number eight divides.
    assert_eq!(c.stats().rtt_samples, 8 + [16, 24, 32, 40].len() as u64);
    assert_eq!(c.rtt().srtt(), Some(us(100)));
}

#[test]
fn a_transmit_is_small_enough_to_be_copied_inline() {
    // A call's transmit is moved through several frames on its way to the link: at 128
    // bytes the compiler copies it with a few vector moves, above it calls memcpy.
    assert!(std::mem::size_of::<Transmit>() <= 128);
}
