//! Micro-benchmarks of rpc-core's per-call pieces, each without I/O:
//!
//! - `header`: the checked view of a received datagram (`Packet::new_checked`), its full
//!   validation (`PacketRepr::parse`), and writing a header (`PacketRepr::emit`).
//! - `marshal`: encoding a byte-slice argument into a shared descriptor and its gather list,
//!   and decoding it borrowed (32 B and 1 KiB; `benches/marshal.rs` compares these against
//!   postcard at more sizes).
//! - `client`: one step of the sans-IO client with a session open: starting a null call and
//!   producing its datagram (`Client::start_call_sending`), and handling the reply datagram
//!   that ends it (`Client::handle_datagram`).
//! - `server`: one step of the sans-IO server: handling a null call's request datagram
//!   (`Server::handle_datagram`), a null handler, and producing the reply datagram
//!   (`Server::begin_reply`, `Server::finish_reply`, which keeps it for retransmission).
//! - `auth`: the HMAC-SHA256 tag of a datagram (`Sealer::tag`) and its check
//!   (`Sealer::verify`), header and 0 B, 32 B or 1 KiB of payload.
//!
//! The client and server steps run a real client against a real server in memory: calls go
//! in batches of up to 32 in flight, and only the side being measured is timed (the other
//! side's work between the batches is not), so the clock is read twice per batch. Each timed
//! step includes copying the datagram it produced (72 bytes) into a reused buffer, where a
//! transport would hand it to the kernel instead.
//!
//! ```text
//! cargo bench -p benches --bench micro
//! cargo bench -p benches --bench micro -- --warm-up-time 0.1 --measurement-time 0.2
//! ```

use std::hint::black_box;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng as _;
use rpc_core::client::{CallRequest, Client};
use rpc_core::marshal::{self, Encoder, MAX_SEGMENTS};
use rpc_core::server::Server;
use rpc_core::wire::{Flags, HEADER_LEN, HeaderRepr, Packet, PacketKind, PacketRepr, TAG_LEN};
use rpc_core::{AuthKey, ClientConfig, LamportClock, ServerConfig};

/// A request header of a call in an open session.
fn request_header(payload_len: u32) -> HeaderRepr {
    HeaderRepr {
        kind: PacketKind::Request,
        flags: Flags::empty(),
        status: 0,
        client_id: 0x1234_5678,
        client_incarnation: 7,
        interface: 0xaabb_ccdd,
        method: 0x1122_3344,
        session: (1 << 32) | 5,
        seq: 1000,
        ack: 990,
        lamport: 123_456,
        frag_index: 0,
        frag_count: 1,
        message_len: payload_len,
        payload_len,
    }
}

fn header(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    let payload = [0x5au8; 32];
    let repr = PacketRepr {
        header: request_header(payload.len() as u32),
        tag: None,
        payload: &payload,
    };
    let mut datagram = vec![0u8; repr.buffer_len()];
    repr.emit(&mut datagram).expect("emits");
    group.bench_function("view", |b| {
        b.iter(|| {
            let packet = Packet::new_checked(black_box(&datagram)).expect("checked");
            black_box(packet.header().seq.get())
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            PacketRepr::parse(black_box(&datagram))
                .expect("valid")
                .header
                .seq
        })
    });
    let mut out = vec![0u8; 2048];
    group.bench_function("emit", |b| {
        b.iter(|| black_box(&repr).emit(black_box(&mut out)).expect("emits"))
    });
    group.finish();
}

fn marshal(c: &mut Criterion) {
    let mut group = c.benchmark_group("marshal");
    for len in [32usize, 1024] {
        let data = vec![0xa5u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("encode", len), |b| {
            b.iter(|| {
                let mut enc = Encoder::new();
                enc.put(black_box(&data[..]));
                let mut iov = ArrayVec::<IoSlice<'_>, MAX_SEGMENTS>::new();
                enc.for_each_in(0..enc.len(), |s| iov.push(IoSlice::new(s)));
                black_box(iov.len())
            })
        });
        let encoded = marshal::encode(&data[..]).to_vec();
        group.bench_function(BenchmarkId::new("decode", len), |b| {
            b.iter(|| {
                marshal::decode::<&[u8]>(black_box(&encoded))
                    .expect("decodes")
                    .len()
            })
        });
    }
    group.finish();
}

/// Calls in flight at once in the client and server steps.
const BATCH: usize = 32;

/// The client's address as the server sees it.
const CLIENT_ADDR: u32 = 1;

/// A client and a server with a session open between them, and the buffers the datagrams
/// between them are copied into.
struct Pair {
    client: Client,
    server: Server<u32>,
    requests: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
}

/// A null call.
fn null_call() -> CallRequest {
    CallRequest {
        interface: 0xaabb_ccdd,
        method: 0x1122_3344,
        len: 0,
        idempotent: false,
        deadline: None,
    }
}

impl Pair {
    /// With `auth`, both sides in authenticated mode (one pre-shared key).
    fn new(auth: bool) -> Self {
        let now = Instant::now();
        let unix = 1_700_000_000_000_000_000;
        let key = auth.then(|| AuthKey::from_bytes([0x42; 32]));
        let mut client_config = ClientConfig::default();
        client_config.auth = key.clone();
        let mut server_config = ServerConfig::default();
        server_config.auth = key;
        let client = Client::new(
            client_config,
            0x1234_5678,
            7,
            Arc::new(LamportClock::new(1, unix, now)),
        )
        .expect("client config");
        let server = Server::new(
            server_config,
            3,
            Arc::new(LamportClock::new(2, unix, now)),
            ChaCha8Rng::seed_from_u64(11),
        )
        .expect("server config");
        let mut pair = Self {
            client,
            server,
            requests: (0..BATCH).map(|_| Vec::with_capacity(HEADER_LEN)).collect(),
            replies: (0..BATCH).map(|_| Vec::with_capacity(HEADER_LEN)).collect(),
        };
        pair.handshake(now);
        pair
    }

    /// Hello, Retry, Hello with the cookie, Welcome.
    fn handshake(&mut self, now: Instant) {
        self.client.connect(now);
        for _ in 0..8 {
            if self.client.session().is_some() {
                return;
            }
            while let Some(t) = self.client.poll_transmit(now) {
                let datagram = t.to_datagram([t.inline()]);
                let call = self.server.handle_datagram(now, CLIENT_ADDR, &datagram);
                assert!(call.is_none(), "a handshake datagram started a call");
            }
            let mut answers = Vec::new();
            while let Some(t) = self.server.poll_transmit() {
                answers.push(t.to_datagram());
            }
            for answer in &answers {
                let response = self.client.handle_datagram(now, answer);
                assert!(response.is_none(), "a handshake answer ended a call");
            }
        }
        panic!("no session after the handshake");
    }

    /// Starts `n` null calls, keeping their request datagrams.
    fn start(&mut self, now: Instant, n: usize) {
        for request in &mut self.requests[..n] {
            let (_, transmit) = self
                .client
                .start_call_sending(now, null_call())
                .expect("call starts");
            let transmit = transmit.expect("a call in an open session is sent at once");
            request.clear();
            request.extend_from_slice(&transmit.header);
            if let Some(tag) = transmit.tag([]) {
                request.extend_from_slice(&tag);
            }
        }
    }

    /// The server's side of `n` calls: handles each request datagram, runs the null handler
    /// and keeps the reply datagram.
    fn serve(&mut self, now: Instant, n: usize) {
        for (request, reply) in self.requests[..n].iter().zip(&mut self.replies[..n]) {
            let call = self
                .server
                .handle_datagram(now, CLIENT_ADDR, request)
                .expect("a new call");
            // The null handler: no argument, an empty reply body.
            let plan = self
                .server
                .begin_reply(now, &call.ticket, Ok(0))
                .expect("the client waits for the reply");
            let datagram = self
                .server
                .finish_reply(&call.ticket, &plan, [])
                .expect("a one-datagram reply is kept and returned whole");
            reply.clear();
            reply.extend_from_slice(datagram);
        }
    }

    /// Ends `n` calls with their reply datagrams.
    fn finish(&mut self, now: Instant, n: usize) {
        for reply in &self.replies[..n] {
            let response = self
                .client
                .handle_datagram(now, reply)
                .expect("ends a call");
            black_box(response.result.expect("the null call succeeds"));
        }
    }
}

/// Runs `iters` calls in batches, timing only `measured` (one of the three steps).
fn stepped(iters: u64, measured: Step, auth: bool) -> Duration {
    let mut pair = Pair::new(auth);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        left -= n as u64;
        let now = Instant::now();
        let timed = |pair: &mut Pair, step: Step, total: &mut Duration| {
            let start = (step == measured).then(Instant::now);
            match step {
                Step::Start => pair.start(now, n),
                Step::Serve => pair.serve(now, n),
                Step::Finish => pair.finish(now, n),
            }
            if let Some(start) = start {
                *total += start.elapsed();
            }
        };
        timed(&mut pair, Step::Start, &mut total);
        timed(&mut pair, Step::Serve, &mut total);
        timed(&mut pair, Step::Finish, &mut total);
    }
    total
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    Serve,
    Finish,
}

fn client(c: &mut Criterion) {
    let mut group = c.benchmark_group("client");
    for (auth, suffix) in [(false, ""), (true, "_authenticated")] {
        group.bench_function(format!("start_null_call{suffix}"), |b| {
            b.iter_custom(|iters| stepped(iters, Step::Start, auth))
        });
        group.bench_function(format!("handle_reply{suffix}"), |b| {
            b.iter_custom(|iters| stepped(iters, Step::Finish, auth))
        });
    }
    group.finish();
}

fn server(c: &mut Criterion) {
    let mut group = c.benchmark_group("server");
    for (auth, name) in [(false, "null_call"), (true, "null_call_authenticated")] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| stepped(iters, Step::Serve, auth))
        });
    }
    group.finish();
}

fn auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    let keys = AuthKey::from_bytes([0x42; 32]).session(0x1234_5678, 7, 9, (1 << 32) | 5, &[3; 16]);
    let sealer = keys.to_server;
    for len in [0usize, 32, 1024] {
        let payload = vec![0x5au8; len];
        let mut head = request_header(len as u32);
        head.flags = Flags::AUTH;
        let header = head.to_bytes();
        group.throughput(Throughput::Bytes((HEADER_LEN + len) as u64));
        group.bench_function(BenchmarkId::new("tag", len), |b| {
            b.iter(|| sealer.tag(black_box(&header), [black_box(&payload[..])]))
        });
        let tag: [u8; TAG_LEN] = sealer.tag(&header, [&payload[..]]);
        group.bench_function(BenchmarkId::new("verify", len), |b| {
            b.iter(|| {
                let ok = sealer.verify(black_box(&header), black_box(&payload), black_box(&tag));
                assert!(ok);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, header, marshal, client, server, auth);
criterion_main!(benches);
