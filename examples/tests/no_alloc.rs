//! Calls allocate nothing, on either end, once a client and its server are warm: over every
//! link and in every poll strategy, sync and async, plain and authenticated.
//!
//! Each case measures 1,800 calls, three times, and keeps the smallest count. A rare event of
//! the host (a wake-up late enough to cause a retransmission, whose queue then grows once) may
//! allocate, so each case allows a few allocations in all: one per call, or one per hundred
//! calls, fails every time.

use std::net::SocketAddr;
use std::time::Duration;

use examples::{BenchClient, BenchServer, CountingAlloc, Handlers, allocations};
use rpc_core::AuthKey;
use rpc_core::service::{AsyncTransport, Transport};
use rpc_transport::shm::{ShmClient, ShmClientConfig, ShmServer, ShmServerConfig};
use rpc_transport::udp::{Io, UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};
use rpc_transport::uring::UringConfig;
use rpc_transport::{Completions, PollStrategy};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const CALLS: usize = 300;

/// Allocations allowed per case (not per call).
const ALLOWED: u64 = 4;

fn strategies() -> [PollStrategy; 3] {
    [
        PollStrategy::Spin,
        PollStrategy::SpinThenPark(Duration::from_micros(20)),
        PollStrategy::Block,
    ]
}

/// Allocations made by two rounds of `CALLS` null calls, `CALLS` echoes and `CALLS`
/// pipelined calls (16 in flight, their slots refilled), after two rounds to warm up: the
/// fewest of three such measurements.
fn allocations_of<T: Transport + AsyncTransport>(client: &BenchClient<T>) -> u64 {
    let payload = vec![0x5au8; 1024];
    // The executor allocates its slots when they are first filled, and reuses them.
    let mut pending = Completions::new(std::iter::empty());
    let mut round = || {
        for _ in 0..CALLS {
            client.null().unwrap();
            assert_eq!(client.echo(&payload).unwrap().len(), payload.len());
        }
        for _ in 0..16 {
            pending.push(client.null_async());
        }
        for _ in 0..CALLS {
            let (_, r) = pending.next().unwrap();
            r.unwrap();
            pending.push(client.null_async());
        }
        while let Some((_, r)) = pending.next() {
            r.unwrap();
        }
    };
    round();
    round();
    (0..3)
        .map(|_| {
            let before = allocations();
            round();
            round();
            allocations() - before
        })
        .min()
        .unwrap_or(0)
}

fn key(auth: bool) -> Option<AuthKey> {
    auth.then(|| AuthKey::from_bytes([7; 32]))
}

fn over_udp(poll: PollStrategy, io: Io, auth: bool) -> u64 {
    let mut config = UdpServerConfig::loopback().poll(poll).io(io.clone());
    config.protocol.auth = key(auth);
    let server = UdpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .unwrap()
        .serve(BenchServer::new(Handlers))
        .unwrap();
    let mut config = UdpClientConfig::loopback().poll(poll).io(io);
    config.protocol.auth = key(auth);
    let client = BenchClient::new(UdpClient::connect(server.local_addr(), config).unwrap());
    let n = allocations_of(&client);
    drop(client);
    server.shutdown();
    n
}

/// One test, so that no other test's allocations are counted (the counter is the process's).
#[test]
fn calls_allocate_nothing_over_any_link_in_any_poll_strategy() {
    for poll in strategies() {
        for auth in [false, true] {
            let n = over_udp(poll, Io::Sockets, auth);
            assert!(
                n <= ALLOWED,
                "udp, {poll:?}, authenticated {auth}: {n} allocations"
            );
        }
        let n = over_udp(poll, Io::Uring(UringConfig::default()), false);
        assert!(n <= ALLOWED, "io_uring, {poll:?}: {n} allocations");
    }
    let dir = std::env::temp_dir().join(format!("rpc-no-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, poll) in strategies().into_iter().enumerate() {
        let socket = dir.join(format!("{i}.sock"));
        let server = ShmServer::bind(&socket, ShmServerConfig::default().poll(poll))
            .unwrap()
            .serve(BenchServer::new(Handlers))
            .unwrap();
        let client = BenchClient::new(
            ShmClient::connect(&socket, ShmClientConfig::default().poll(poll)).unwrap(),
        );
        let n = allocations_of(&client);
        drop(client);
        server.shutdown();
        assert!(n <= ALLOWED, "shared memory, {poll:?}: {n} allocations");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
