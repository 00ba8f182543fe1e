//! Entry points for fuzz targets (`fuzz/`) and for replaying their corpus as ordinary tests.
//!
//! Each function takes arbitrary bytes, drives one part of the crate with them, and panics only
//! if an invariant breaks: decoding must not panic, what parses must round-trip, and the state
//! machines must stay within their configured bounds whatever arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::client::{CallRequest, Client, Payload};
use crate::clock::LamportClock;
use crate::config::{ClientConfig, ServerConfig};
use crate::marshal::{self, Decoder};
use crate::server::Server;
use crate::wire::{FragmentPlan, HEADER_LEN, PacketRepr, Reassembly};

/// Splits fuzzer input into datagrams: each is preceded by a `u16` length (little-endian).
fn datagrams(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    core::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (d, tail) = rest[2..].split_at(n);
        rest = tail;
        Some(d)
    })
}

/// Parses a datagram; whatever parses must emit back to the same bytes.
pub fn packet(data: &[u8]) {
    if let Ok(p) = PacketRepr::parse(data) {
        let mut out = vec![0u8; p.buffer_len()];
        let n = p.emit(&mut out).expect("a parsed packet emits");
        assert_eq!(&out[..n], data, "emit(parse(x)) == x");
        assert_eq!(PacketRepr::parse(&out[..n]), Ok(p));
    }
}

fn small_server() -> Server<u32> {
    let config = ServerConfig {
        max_sessions: 4,
        window: 16,
        session_cache_bytes: 64 << 10,
        total_cache_bytes: 128 << 10,
        reassembly_budget: 1 << 20,
        max_message: 1 << 20,
        max_reassemblies: 4,
        max_queued_transmits: 64,
        ..ServerConfig::default()
    };
    let clock = Arc::new(LamportClock::new(
        7,
        crate::sim::SIM_WALL_CLOCK,
        Instant::now(),
    ));
    Server::new(config, 7, clock, ChaCha8Rng::seed_from_u64(7)).expect("valid config")
}

/// Opens a session for client `(1, 1)` at address 1 by running a real client's handshake
/// (Hello, Retry, Hello with the cookie, Welcome) against `server`; returns its id.
pub fn open_session(server: &mut Server<u32>, now: Instant) -> Option<u64> {
    let clock = Arc::new(LamportClock::new(1, crate::sim::SIM_WALL_CLOCK, now));
    let config = ClientConfig {
        max_datagram: 1500,
        max_message: 1 << 20,
        reassembly_budget: 1 << 20,
        auth: server.config().auth.clone(),
        ..ClientConfig::default()
    };
    let mut client = Client::new(config, 1, 1, clock).ok()?;
    client.connect(now);
    for _ in 0..4 {
        while let Some(t) = client.poll_transmit(now) {
            let _ = server.handle_datagram(now, 1, &t.to_datagram([t.inline()]));
        }
        while let Some(t) = server.poll_transmit() {
            let d = t.to_datagram();
            let _ = client.handle_datagram(now, &d);
        }
        if let Some(s) = client.session() {
            return Some(s);
        }
    }
    None
}

/// Feeds datagrams to a server that has one open session (whose id is patched into requests
/// that carry the client's id), executing every call it hands out; checks its bounds after
/// every datagram.
pub fn server(data: &[u8]) {
    let mut server = small_server();
    let mut now = Instant::now();
    let session = open_session(&mut server, now);
    assert!(session.is_some(), "the handshake opens a session");
    let mut patched = Vec::new();
    for d in datagrams(data) {
        now += Duration::from_micros(u64::from(d.first().copied().unwrap_or(0)));
        patched.clear();
        patched.extend_from_slice(d);
        // Most requests of the real client id name the real session, so that fuzzed requests
        // reach the session logic.
        if patched.len() >= 32 && patched[8..16] == 1u64.to_le_bytes() {
            if let Some(s) = session {
                patched[24..32].copy_from_slice(&s.to_le_bytes());
            }
        }
        if let Some(call) = server.handle_datagram(now, 1, &patched) {
            let ticket = call.ticket;
            let reply: Vec<u8> = call.body.iter().rev().copied().collect();
            if let Some(plan) = server.begin_reply(now, &ticket, Ok(reply.len())) {
                server.finish_reply(&ticket, &plan, [&reply[..]]);
            }
        }
        while server.poll_transmit().is_some() {}
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        let m = server.memory();
        if let Err(what) = m.check(server.config()) {
            panic!("server exceeds its bound on {what}: {m:?}");
        }
    }
}

/// Feeds datagrams to a client with calls in flight (replies name their sequence numbers);
/// every call must end at most once, and the client's memory stays bounded.
pub fn client(data: &[u8]) {
    let config = ClientConfig {
        window: 8,
        reassembly_budget: 1 << 20,
        max_message: 1 << 20,
        ..ClientConfig::default()
    };
    let mut now = Instant::now();
    let clock = Arc::new(LamportClock::new(1, crate::sim::SIM_WALL_CLOCK, now));
    let Ok(mut client) = Client::new(config, 1, 1, clock) else {
        return;
    };
    client.connect(now);
    while client.poll_transmit(now).is_some() {}
    let mut ended = std::collections::BTreeSet::new();
    let mut started = 0u64;
    for d in datagrams(data) {
        now += Duration::from_micros(u64::from(d.first().copied().unwrap_or(0)) * 10);
        // Attempts, not successes, are counted: a server may legitimately make every call
        // fail to start (a Welcome advertising a zero message size, say).
        while client.can_start() && started < 64 {
            let req = CallRequest {
                interface: 1,
                method: 1,
                len: d.len() % 3000,
                idempotent: started % 3 == 0,
                deadline: None,
            };
            started += 1;
            let _ = client.start_call(now, req);
        }
        if let Some(resp) = client.handle_datagram(now, d) {
            assert!(ended.insert(resp.call), "call {:?} ended twice", resp.call);
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        while let Some(ev) = client.poll_event() {
            if let crate::client::Event::CallFailed { call, .. } = ev {
                assert!(ended.insert(call), "call {call:?} ended twice");
            }
        }
        while let Some(t) = client.poll_transmit(now) {
            if let Payload::Call { offset, len, .. } = t.payload {
                assert!(offset + len <= 3000);
            }
        }
        assert!(
            client.memory() <= 2 << 20,
            "client holds {} bytes",
            client.memory()
        );
    }
}

/// Reassembles fragments whose headers come from the input.
pub fn reassembly(data: &[u8]) {
    let mut r: Option<Reassembly> = None;
    for d in datagrams(data) {
        let Ok(p) = PacketRepr::parse(d) else {
            continue;
        };
        if p.header.frag_count < 2 || p.header.message_len > 1 << 20 {
            continue;
        }
        match &mut r {
            None => r = Reassembly::start(&p.header, Vec::new(), Vec::new()).ok(),
            Some(r) => {
                let _ = r.add(&p.header, p.payload);
                assert!(r.received() <= p.header.frag_count);
            }
        }
    }
    let _ = FragmentPlan::new(data.len(), HEADER_LEN + 1 + data.len() % 2000);
}

/// Decodes the input as a range of types; none may panic, and what decodes must re-encode to
/// the same bytes.
pub fn decode(data: &[u8]) {
    fn check<'de, T: marshal::Decode<'de> + marshal::Encode>(data: &'de [u8]) {
        if let Ok(v) = marshal::decode::<T>(data) {
            assert_eq!(marshal::encode(&v).to_vec(), data, "encode(decode(x)) == x");
        }
    }
    check::<Vec<u8>>(data);
    check::<String>(data);
    check::<(u8, u16, u32, u64)>(data);
    check::<Option<Vec<String>>>(data);
    check::<Result<Vec<u64>, String>>(data);
    check::<Vec<Vec<(bool, char)>>>(data);
    check::<[u32; 4]>(data);
    let mut dec = Decoder::new(data);
    let _ = dec.get::<&[u8]>();
    let _ = dec.get::<&str>();
    let _ = dec.get::<Vec<Option<u128>>>();
    let _ = marshal::decode::<Vec<()>>(data);
}

/// A server, two honest clients and an attacker, driven by the input: honest calls start,
/// datagrams are delivered, lost or duplicated, time passes, and the attacker injects
/// datagrams of its own, replays and mutates what it saw (from its own address, or in
/// authenticated mode from anyone's). Whatever the input: no honest call executes twice or
/// gets a reply its own execution did not produce, each call ends once, and the server stays
/// within its bounds.
pub fn adversary(data: &[u8]) {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    const ATTACKER: u32 = 9;
    let Some((&mode, mut ops)) = data.split_first() else {
        return;
    };
    let auth = mode & 1 == 1;
    let key = auth.then(|| crate::auth::AuthKey::from_bytes([mode; 32]));
    let mut now = Instant::now();
    let mut server = {
        let config = ServerConfig {
            max_sessions: 4,
            max_sessions_per_host: 2,
            window: 16,
            session_cache_bytes: 64 << 10,
            total_cache_bytes: 128 << 10,
            reassembly_budget: 1 << 20,
            max_message: 1 << 20,
            max_reassemblies: 4,
            max_queued_transmits: 64,
            auth: key.clone(),
            ..ServerConfig::default()
        };
        let clock = Arc::new(LamportClock::new(7, crate::sim::SIM_WALL_CLOCK, now));
        Server::new(config, 7, clock, ChaCha8Rng::seed_from_u64(7)).expect("valid config")
    };
    let mut clients: Vec<Client> = (1..=2u64)
        .map(|id| {
            let config = ClientConfig {
                max_datagram: 1500,
                window: 8,
                reassembly_budget: 1 << 20,
                max_message: 1 << 20,
                auth: key.clone(),
                ..ClientConfig::default()
            };
            let clock = Arc::new(LamportClock::new(id, crate::sim::SIM_WALL_CLOCK, now));
            Client::new(config, id, 1, clock).expect("valid config")
        })
        .collect();
    // Bodies of the calls in flight, by client and sequence number.
    let mut bodies: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); 2];
    let mut ended: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut executed: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    // Datagrams on the wire: from, to (0 is the server), bytes.
    let mut wire: VecDeque<(u32, u32, Vec<u8>)> = VecDeque::new();
    let mut seen: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let reply_of = |body: &[u8]| -> Vec<u8> { body.iter().rev().map(|b| b ^ 0x5a).collect() };

    let next = |ops: &mut &[u8]| -> Option<u8> {
        let (&b, rest) = ops.split_first()?;
        *ops = rest;
        Some(b)
    };
    for _ in 0..400 {
        let Some(op) = next(&mut ops) else { break };
        match op % 8 {
            // An honest call.
            0 | 1 => {
                let i = usize::from(op & 0x10 != 0);
                let len = usize::from(next(&mut ops).unwrap_or(0)) * 23;
                let body: Vec<u8> = (0..len).map(|k| (k as u8) ^ op).collect();
                let req = CallRequest {
                    interface: 1,
                    method: 1,
                    len,
                    idempotent: op & 0x20 != 0,
                    deadline: None,
                };
                if let Ok(id) = clients[i].start_call(now, req) {
                    bodies[i].insert(id.seq(), body);
                }
            }
            // Deliver (or lose, or duplicate) the oldest datagram on the wire.
            2 | 3 => {
                let Some((from, to, bytes)) = wire.pop_front() else {
                    continue;
                };
                match op >> 5 {
                    0 => continue,
                    1 => wire.push_back((from, to, bytes.clone())),
                    _ => {}
                }
                if seen.len() < 256 {
                    seen.push((from, to, bytes.clone()));
                }
                if to == 0 {
                    if let Some(call) = server.handle_datagram(now, from, &bytes) {
                        let ctx = call.context;
                        if from != ATTACKER {
                            let n = executed.entry((ctx.client_id, ctx.seq)).or_insert(0);
                            *n += 1;
                            assert!(
                                *n == 1 || ctx.idempotent,
                                "call {:?} executed twice",
                                (ctx.client_id, ctx.seq)
                            );
                        }
                        let reply = reply_of(&call.body);
                        let ticket = call.ticket;
                        if let Some(plan) = server.begin_reply(now, &ticket, Ok(reply.len())) {
                            for k in 0..plan.count() {
                                wire.push_back((0, from, plan.datagram(k, &reply)));
                            }
                            server.finish_reply(&ticket, &plan, [&reply[..]]);
                        }
                    }
                } else if let Some(c) = clients.get_mut(to as usize - 1) {
                    let i = to as usize - 1;
                    if let Some(resp) = c.handle_datagram(now, &bytes) {
                        let seq = resp.call.seq();
                        assert!(ended.insert((i, seq)), "call {seq} ended twice");
                        if let (Ok(body), Some(sent)) = (&resp.result, bodies[i].remove(&seq)) {
                            assert_eq!(
                                &body[..],
                                &reply_of(&sent)[..],
                                "call {seq} got a reply its execution did not produce"
                            );
                        }
                    }
                }
            }
            // The attacker injects its own bytes, to the server or (authenticated) anyone.
            4 => {
                let len = usize::from(next(&mut ops).unwrap_or(0));
                let take = len.min(ops.len());
                let (bytes, rest) = ops.split_at(take);
                ops = rest;
                let to = if auth { u32::from(op >> 6) % 3 } else { 0 };
                let from = if auth {
                    u32::from(op >> 4) % 3
                } else {
                    ATTACKER
                };
                wire.push_back((from, to, bytes.to_vec()));
            }
            // The attacker replays, or mutates, something it saw.
            5 | 6 => {
                if seen.is_empty() {
                    continue;
                }
                let k = usize::from(next(&mut ops).unwrap_or(0)) % seen.len();
                let (from, to, mut bytes) = seen[k].clone();
                if op % 8 == 6 && !bytes.is_empty() {
                    let at = usize::from(next(&mut ops).unwrap_or(0)) % bytes.len();
                    bytes[at] ^= next(&mut ops).unwrap_or(1) | 1;
                }
                if auth {
                    wire.push_back((from, to, bytes));
                } else if to == 0 {
                    wire.push_back((ATTACKER, 0, bytes));
                }
            }
            // Time passes; timers fire; clients and the server send what they have.
            _ => {
                now += Duration::from_micros(u64::from(op) * 50);
                if server.poll_timeout().is_some_and(|t| t <= now) {
                    server.handle_timeout(now);
                }
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while let Some(ev) = c.poll_event() {
                if let crate::client::Event::CallFailed { call, .. } = ev {
                    assert!(ended.insert((i, call.seq())), "call {call:?} ended twice");
                    bodies[i].remove(&call.seq());
                }
            }
            while let Some(t) = c.poll_transmit(now) {
                let d = match t.payload {
                    Payload::Call { call, offset, len } => {
                        let body = bodies[i].get(&call.seq()).map_or(&[][..], |b| &b[..]);
                        t.to_datagram([body.get(offset..offset + len).unwrap_or_default()])
                    }
                    _ => t.to_datagram([t.inline()]),
                };
                if wire.len() < 4096 {
                    wire.push_back((i as u32 + 1, 0, d));
                }
            }
        }
        while let Some(t) = server.poll_transmit() {
            if wire.len() < 4096 {
                wire.push_back((0, t.dest, t.to_datagram()));
            }
        }
        let m = server.memory();
        if let Err(what) = m.check(server.config()) {
            panic!("server exceeds its bound on {what}: {m:?}");
        }
    }
}
