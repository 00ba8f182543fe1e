//! The simulation's adversary: a node on the same network that sees every datagram and
//! injects forged, replayed and mutated ones, huge Lamport stamps, forged acknowledgements
//! and Hello floods.
//!
//! What it may do depends on the mode, as it would on a real LAN:
//!
//! - **Unauthenticated**, it sends from its own address only (a session's datagrams from
//!   another address change nothing, and that is what the protocol promises there; an attacker
//!   who can forge the source address of a client is what authenticated mode is for). It holds
//!   sessions of its own, in which it sends what it likes: huge stamps, forged acks.
//! - **Authenticated**, it forges any source address, to the server and to clients alike, but
//!   does not know the key.

use std::collections::VecDeque;
use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::clock::ADOPT_AHEAD;
use crate::wire::{
    CookieBody, Flags, HEADER_LEN, HELLO_BODY_LEN, HeaderRepr, HelloBody, MAX_LAMPORT, PacketKind,
    PacketRepr, TAG_LEN,
};
use zerocopy::IntoBytes;

/// The adversary's address.
pub(super) const ADDR: u32 = 0xad00;
/// Client ids the adversary uses for the sessions it opens itself.
const OWN_IDS: u64 = 0xad00_0000;
/// First of the made-up addresses of a Hello flood (nobody lives there).
const NOWHERE: u32 = 0xf000_0000;

/// What the adversary has done, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attacks {
    /// Genuine datagrams sent again.
    pub replayed: u64,
    /// Genuine datagrams with bytes changed.
    pub mutated: u64,
    /// Requests naming an honest client's session.
    pub forged_requests: u64,
    /// Requests (in honest clients' sessions or its own) acknowledging far beyond the
    /// session's point.
    pub forged_acks: u64,
    /// Datagrams stamped at or near the Lamport limit, or just past a clock's ceiling.
    pub huge_stamps: u64,
    /// Hellos of made-up clients.
    pub hellos: u64,
}

impl Attacks {
    pub(super) fn merge(&mut self, o: &Attacks) {
        self.replayed += o.replayed;
        self.mutated += o.mutated;
        self.forged_requests += o.forged_requests;
        self.forged_acks += o.forged_acks;
        self.huge_stamps += o.huge_stamps;
        self.hellos += o.hellos;
    }

    /// All injected datagrams.
    pub fn total(&self) -> u64 {
        self.replayed + self.mutated + self.forged_requests + self.huge_stamps + self.hellos
    }
}

/// A session the adversary opened from its own address (unauthenticated mode).
#[derive(Debug)]
struct Own {
    client_id: u64,
    incarnation: u32,
    session: u64,
    next_seq: u64,
}

/// A datagram the adversary wants on the network: from, to, bytes.
pub(super) type Injection = (u32, u32, Vec<u8>);

#[derive(Debug)]
pub(super) struct Adversary {
    authenticated: bool,
    /// Recently seen datagrams: from, to, bytes.
    seen: VecDeque<(u32, u32, Vec<u8>)>,
    own: Vec<Own>,
    next_id: u64,
    pub(super) attacks: Attacks,
}

const SEEN: usize = 64;

impl Adversary {
    pub(super) fn new(authenticated: bool) -> Self {
        Self {
            authenticated,
            seen: VecDeque::with_capacity(SEEN),
            own: Vec::new(),
            next_id: 1,
            attacks: Attacks::default(),
        }
    }

    /// Sees a datagram on the network.
    pub(super) fn observe(&mut self, from: u32, to: u32, bytes: &[u8]) {
        if from == ADDR || from >= NOWHERE {
            return;
        }
        if self.seen.len() == SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back((from, to, bytes.to_vec()));
    }

    /// A datagram addressed to the adversary: the server's answers to its own Hellos and
    /// requests. It completes its handshakes, to hold real sessions.
    pub(super) fn receive(&mut self, bytes: &[u8]) -> Option<Injection> {
        let p = PacketRepr::parse(bytes).ok()?;
        let h = p.header;
        match h.kind {
            PacketKind::Retry => {
                let cookie = zerocopy::FromBytes::read_from_bytes(p.payload).ok()?;
                Some((
                    ADDR,
                    super::SERVER,
                    hello(h.client_id, h.seq, 1, cookie, false),
                ))
            }
            PacketKind::Welcome => {
                if self.own.iter().all(|o| o.client_id != h.client_id) {
                    self.own.push(Own {
                        client_id: h.client_id,
                        incarnation: h.client_incarnation,
                        session: h.session,
                        next_seq: 1,
                    });
                }
                None
            }
            _ => None,
        }
    }

    /// One attack, of a kind drawn at random.
    pub(super) fn attack(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: Instant,
        ceiling: u64,
    ) -> Vec<Injection> {
        let _ = now;
        match rng.random_range(0..6) {
            0 => self.replay(rng),
            1 => self.mutate(rng),
            2 => self.forge_request(rng, ceiling),
            3 => self.own_request(rng, ceiling),
            4 => self.hello_flood(rng, ceiling),
            _ => self.forge_reply(rng),
        }
    }

    fn pick<'a>(&'a self, rng: &mut ChaCha8Rng) -> Option<&'a (u32, u32, Vec<u8>)> {
        if self.seen.is_empty() {
            return None;
        }
        self.seen.get(rng.random_range(0..self.seen.len()))
    }

    /// Where an injected copy of a datagram seen going `from` → `to` goes, and from whom:
    /// unauthenticated, only to the server and from the adversary's own address.
    fn route(&self, from: u32, to: u32) -> Option<(u32, u32)> {
        if self.authenticated {
            Some((from, to))
        } else if to == super::SERVER {
            Some((ADDR, to))
        } else {
            None
        }
    }

    fn replay(&mut self, rng: &mut ChaCha8Rng) -> Vec<Injection> {
        let Some((from, to, bytes)) = self.pick(rng).cloned() else {
            return Vec::new();
        };
        let Some((from, to)) = self.route(from, to) else {
            return Vec::new();
        };
        self.attacks.replayed += 1;
        vec![(from, to, bytes)]
    }

    fn mutate(&mut self, rng: &mut ChaCha8Rng) -> Vec<Injection> {
        let Some((from, to, mut bytes)) = self.pick(rng).cloned() else {
            return Vec::new();
        };
        let Some((from, to)) = self.route(from, to) else {
            return Vec::new();
        };
        // Mostly the fields that matter: flags, session, sequence, ack, stamp; else anywhere.
        for _ in 0..rng.random_range(1..=3) {
            let at = match rng.random_range(0..6) {
                0 => 4,
                1 => rng.random_range(24..32),
                2 => rng.random_range(32..40),
                3 => rng.random_range(40..48),
                4 => rng.random_range(48..56),
                _ => rng.random_range(0..bytes.len().max(1)),
            };
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << rng.random_range(0..8);
            }
        }
        self.attacks.mutated += 1;
        vec![(from, to, bytes)]
    }

    /// A request in an honest client's session, learned from one of its requests: another
    /// body, the client's next sequence numbers, a forged ack or a huge stamp.
    fn forge_request(&mut self, rng: &mut ChaCha8Rng, ceiling: u64) -> Vec<Injection> {
        let seen: Vec<_> = self
            .seen
            .iter()
            .filter(|(_, to, b)| {
                *to == super::SERVER
                    && PacketRepr::parse(b).is_ok_and(|p| p.header.kind == PacketKind::Request)
            })
            .cloned()
            .collect();
        if seen.is_empty() {
            return Vec::new();
        }
        let (victim, _, bytes) = &seen[rng.random_range(0..seen.len())];
        let Ok(p) = PacketRepr::parse(bytes) else {
            return Vec::new();
        };
        let mut h = p.header;
        h.seq = h.seq.saturating_add(rng.random_range(0..3));
        if rng.random_bool(0.3) {
            self.attacks.forged_acks += 1;
            h.ack = [1 << 40, h.seq.saturating_add(100_000), u64::MAX - 2][rng.random_range(0..3)];
            h.seq = h.ack.saturating_add(1);
        } else {
            h.ack = h.ack.min(h.seq.saturating_sub(1));
        }
        if rng.random_bool(0.3) {
            self.attacks.huge_stamps += 1;
            h.lamport = huge_stamp(rng, ceiling);
        }
        let body: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
        h.frag_index = 0;
        h.frag_count = 1;
        h.message_len = body.len() as u32;
        h.flags.remove(Flags::IDEMPOTENT);
        self.attacks.forged_requests += 1;
        let from = if self.authenticated { *victim } else { ADDR };
        vec![(from, super::SERVER, emit(h, &body, self.authenticated, rng))]
    }

    /// In unauthenticated mode, a request in one of the adversary's own sessions, with a
    /// stamp near the limit or a forged acknowledgement; in authenticated mode (it has no
    /// session), a Hello of its own with a huge stamp.
    fn own_request(&mut self, rng: &mut ChaCha8Rng, ceiling: u64) -> Vec<Injection> {
        if self.authenticated || self.own.is_empty() {
            self.attacks.huge_stamps += 1;
            let id = OWN_IDS + self.next_id;
            self.next_id += 1;
            let mut d = hello(
                id,
                1,
                huge_stamp(rng, ceiling),
                CookieBody::default(),
                false,
            );
            if self.authenticated {
                d = authed(d, rng);
            }
            return vec![(ADDR, super::SERVER, d)];
        }
        let i = rng.random_range(0..self.own.len());
        let own = &mut self.own[i];
        let seq = own.next_seq;
        own.next_seq += 1;
        let (mut ack, lamport) = (seq - 1, huge_stamp(rng, ceiling));
        self.attacks.huge_stamps += 1;
        if rng.random_bool(0.3) {
            self.attacks.forged_acks += 1;
            ack = 1 << 40;
        }
        let h = HeaderRepr {
            kind: PacketKind::Request,
            flags: Flags::empty(),
            status: 0,
            client_id: own.client_id,
            client_incarnation: own.incarnation,
            interface: super::INTERFACE,
            method: super::METHOD_TRANSFORM,
            session: own.session,
            seq: if ack >= seq { ack + 1 } else { seq },
            ack,
            lamport,
            frag_index: 0,
            frag_count: 1,
            message_len: 3,
            payload_len: 3,
        };
        vec![(ADDR, super::SERVER, emit(h, b"adv", false, rng))]
    }

    /// Hellos of made-up clients: from made-up addresses (their cookies go nowhere), and in
    /// unauthenticated mode from the adversary's own address, whose cookies it returns to open
    /// sessions (as many as the server lets one host hold).
    fn hello_flood(&mut self, rng: &mut ChaCha8Rng, ceiling: u64) -> Vec<Injection> {
        let mut out = Vec::new();
        for k in 0..rng.random_range(1..8u32) {
            let id = OWN_IDS + self.next_id;
            self.next_id += 1;
            let stamp = if rng.random_bool(0.1) {
                self.attacks.huge_stamps += 1;
                huge_stamp(rng, ceiling)
            } else {
                1
            };
            let mut d = hello(id, 1, stamp, CookieBody::default(), false);
            if self.authenticated {
                d = authed(d, rng);
            }
            let from = if !self.authenticated && k % 4 == 0 {
                ADDR
            } else {
                NOWHERE + rng.random_range(0..1_000_000)
            };
            self.attacks.hellos += 1;
            out.push((from, super::SERVER, d));
        }
        out
    }

    /// Authenticated mode only: a reply, busy or stale to an honest client, forged from the
    /// server's address without the key (unauthenticated, a client's socket takes datagrams
    /// from the server's address only, which the adversary cannot forge there).
    fn forge_reply(&mut self, rng: &mut ChaCha8Rng) -> Vec<Injection> {
        if !self.authenticated {
            return self.replay(rng);
        }
        let seen: Vec<_> = self
            .seen
            .iter()
            .filter(|(from, _, _)| *from == super::SERVER)
            .cloned()
            .collect();
        if seen.is_empty() {
            return Vec::new();
        }
        let (_, to, bytes) = &seen[rng.random_range(0..seen.len())];
        let Ok(p) = PacketRepr::parse(bytes) else {
            return Vec::new();
        };
        let mut h = p.header;
        let kind = [PacketKind::Reply, PacketKind::Stale, PacketKind::Busy][rng.random_range(0..3)];
        h.kind = kind;
        h.flags = Flags::empty();
        h.status = if kind == PacketKind::Busy { 1 } else { 0 };
        h.seq = h.seq.saturating_add(rng.random_range(0..3));
        h.ack = if kind == PacketKind::Stale { 0 } else { h.ack };
        h.frag_index = 0;
        h.frag_count = 1;
        let body: Vec<u8> = if kind == PacketKind::Reply {
            (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
        } else {
            Vec::new()
        };
        h.message_len = body.len() as u32;
        self.attacks.forged_requests += 1;
        vec![(super::SERVER, *to, emit(h, &body, true, rng))]
    }
}

/// A stamp meant to push a clock: at or near the limit, or just past a clock's ceiling.
fn huge_stamp(rng: &mut ChaCha8Rng, ceiling: u64) -> u64 {
    match rng.random_range(0..4) {
        0 => MAX_LAMPORT - 1,
        1 => MAX_LAMPORT - 200,
        2 => ceiling + rng.random_range(1..1_000_000),
        _ => ceiling.saturating_add(ADOPT_AHEAD / 2).min(MAX_LAMPORT - 1),
    }
}

fn hello(
    client_id: u64,
    nonce: u64,
    lamport: u64,
    cookie: CookieBody,
    retransmit: bool,
) -> Vec<u8> {
    let body = HelloBody {
        max_datagram: 1472.into(),
        max_message: (1u32 << 20).into(),
        cookie,
    };
    let h = HeaderRepr {
        kind: PacketKind::Hello,
        flags: if retransmit {
            Flags::RETRANSMIT
        } else {
            Flags::empty()
        },
        status: 0,
        client_id,
        client_incarnation: 1,
        interface: 0,
        method: 0,
        session: 0,
        seq: nonce,
        ack: 0,
        lamport: lamport.min(MAX_LAMPORT - 1),
        frag_index: 0,
        frag_count: 1,
        message_len: HELLO_BODY_LEN as u32,
        payload_len: HELLO_BODY_LEN as u32,
    };
    let mut d = h.to_bytes().to_vec();
    d.extend_from_slice(body.as_bytes());
    d
}

/// A datagram with header `h` and `body`; flagged `AUTH` with a made-up tag if `auth`.
fn emit(mut h: HeaderRepr, body: &[u8], auth: bool, rng: &mut ChaCha8Rng) -> Vec<u8> {
    h.payload_len = body.len() as u32;
    h.lamport = h.lamport.min(MAX_LAMPORT - 1);
    if auth {
        h.flags |= Flags::AUTH;
    }
    let mut d = h.to_bytes().to_vec();
    if auth {
        d.extend((0..TAG_LEN).map(|_| rng.random::<u8>()));
    }
    d.extend_from_slice(body);
    d
}

/// A Hello with the `AUTH` flag and a made-up tag.
fn authed(mut d: Vec<u8>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    d[4] |= Flags::AUTH.bits() as u8;
    let tag: Vec<u8> = (0..TAG_LEN).map(|_| rng.random()).collect();
    d.splice(HEADER_LEN..HEADER_LEN, tag);
    d
}
