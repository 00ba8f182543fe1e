//! One end-to-end test body, run over every link: plain UDP sockets, io_uring and shared
//! memory. Every method shape, large fragmented messages, many calls in
//! flight, concurrent clients, faults through the proxy, handler errors and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{client_config, localhost, park, pattern, server_config};
use rpc_core::service::CallContext;
use rpc_core::service::CallOptions;
use rpc_core::wire::ErrorCode;
use rpc_core::{CallError, rpc};
use rpc_transport::client::Client;
use rpc_transport::link::Link;
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::server::ServerHandle;
use rpc_transport::shm::{ShmClient, ShmClientConfig, ShmClientLink, ShmServer, ShmServerConfig};
use rpc_transport::udp::{Io, UdpClient, UdpLink, UdpServer};
use rpc_transport::uring::UringConfig;
use rpc_transport::{Completions, PollStrategy, block_on};

/// Every shape of method the generator knows.
#[rpc]
pub trait Shapes {
    /// No arguments, nothing back.
    fn null(&self);
    /// Scalars.
    fn add(&self, a: u64, b: u32) -> u64;
    /// A borrowed slice in, a scalar out; may run again on a retransmission.
    #[rpc(idempotent)]
    fn len(&self, data: &[u8]) -> u64;
    /// Bytes in, bytes out.
    fn echo(&self, data: &[u8]) -> Vec<u8>;
    /// A borrowed string in, a string out.
    fn shout(&self, s: &str) -> String;
    /// A large reply.
    fn blob(&self, len: u64, seed: u8) -> Vec<u8>;
    /// Counts its executions per tag.
    fn record(&self, tag: u64) -> u32;
    /// An application error.
    fn fallible(&self, ok: bool) -> Result<u32, String>;
    /// A handler that panics.
    fn panics(&self) -> u32;
    /// Sleeps on a worker thread.
    #[rpc(blocking)]
    fn slow(&self, millis: u64) -> u64;
    /// Sleeps on a worker thread (not counted as `slow`).
    #[rpc(blocking)]
    fn nap(&self, millis: u64);
    /// An async handler.
    async fn later(&self, x: u32) -> u32;
    /// The caller, as the server sees it.
    fn who(&self, ctx: &CallContext) -> u64;
}

#[derive(Clone, Default)]
struct Impl {
    runs: Arc<Mutex<HashMap<u64, u32>>>,
    slow_started: Arc<AtomicU64>,
    slow_runs: Arc<AtomicU64>,
}

impl Shapes for Impl {
    fn null(&self) {}
    fn add(&self, a: u64, b: u32) -> u64 {
        a + u64::from(b)
    }
    fn len(&self, data: &[u8]) -> u64 {
        data.len() as u64
    }
    fn echo(&self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
    fn shout(&self, s: &str) -> String {
        s.to_uppercase()
    }
    fn blob(&self, len: u64, seed: u8) -> Vec<u8> {
        pattern(len as usize, seed)
    }
    fn record(&self, tag: u64) -> u32 {
        let mut runs = self.runs.lock().unwrap();
        let n = runs.entry(tag).or_insert(0);
        *n += 1;
        *n
    }
    fn fallible(&self, ok: bool) -> Result<u32, String> {
        if ok { Ok(7) } else { Err("no".into()) }
    }
    fn panics(&self) -> u32 {
        panic!("a handler that panics (expected by the test)")
    }
    fn slow(&self, millis: u64) -> u64 {
        self.slow_started.fetch_add(1, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(millis));
        self.slow_runs.fetch_add(1, Ordering::Relaxed) + 1
    }
    fn nap(&self, millis: u64) {
        thread::sleep(Duration::from_millis(millis));
    }
    async fn later(&self, x: u32) -> u32 {
        x * 2
    }
    fn who(&self, ctx: &CallContext) -> u64 {
        ctx.client_id
    }
}

impl Impl {
    fn twice(&self) -> usize {
        self.runs
            .lock()
            .unwrap()
            .values()
            .filter(|&&n| n > 1)
            .count()
    }
}

fn tags() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Connects a new client to the server under test.
type Connect<L> = Arc<dyn Fn() -> ShapesClient<Client<L>> + Send + Sync>;

/// The body over UDP, reaching the kernel as `io` says.
fn over_udp(io: Io, poll: PollStrategy) {
    let service = Impl::default();
    let server = UdpServer::bind(localhost(), server_config(poll).io(io.clone()))
        .unwrap()
        .serve(ShapesServer::new(service.clone()))
        .unwrap();
    let addr = server.local_addr();
    let uring = matches!(io, Io::Uring(_));
    assert_eq!(server.uses_io_uring(), uring);
    let config = move || client_config(poll).io(io.clone());
    let connect: Connect<UdpLink> = {
        let config = config.clone();
        Arc::new(move || {
            let c = ShapesClient::new(UdpClient::connect(addr, config()).unwrap());
            assert_eq!(c.transport().link().uring().is_some(), uring);
            c
        })
    };
    // Faults: loss, duplication and reordering between a client and the server.
    let proxy = FaultProxy::start(addr, Faults::lossy(0.05, 0.05, 0.1), 21).unwrap();
    let lossy = ShapesClient::new(UdpClient::connect(proxy.local_addr(), config()).unwrap());
    end_to_end(server, &service, &connect, Some(&lossy));
    assert!(proxy.counters().dropped > 0);
}

/// The body over shared memory (no network between the ends: no lossy client).
fn over_shm(poll: PollStrategy) {
    let service = Impl::default();
    let dir = std::env::temp_dir().join(format!("rpc-e2e-shm-{}-{}", std::process::id(), tags()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("server.sock");
    let mut sc = ShmServerConfig::default().poll(poll);
    sc.dir = dir.clone();
    let server = ShmServer::bind(&socket, sc)
        .unwrap()
        .serve(ShapesServer::new(service.clone()))
        .unwrap();
    let connect: Connect<ShmClientLink> = {
        let socket = socket.clone();
        Arc::new(move || {
            let mut cc = ShmClientConfig::default().poll(poll);
            cc.protocol.default_deadline = Duration::from_secs(20);
            ShapesClient::new(ShmClient::connect(&socket, cc).unwrap())
        })
    };
    end_to_end(server, &service, &connect, None);
    // Every segment went with its connection, and the socket with the server.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The body: everything, through the server `server` runs for `service`, with clients that
/// `connect` makes (and, where there is a network to lose datagrams on, one through a lossy
/// proxy).
fn end_to_end<SL: Link, CL: Link>(
    server: ServerHandle<SL>,
    service: &Impl,
    connect: &Connect<CL>,
    lossy: Option<&ShapesClient<Client<CL>>>,
) {
    let client = connect();

    // Every shape.
    client.null().unwrap();
    assert_eq!(client.add(40, 2).unwrap(), 42);
    assert_eq!(client.len(&[1, 2, 3]).unwrap(), 3);
    assert_eq!(client.echo(b"hello").unwrap(), b"hello");
    assert_eq!(client.shout("quiet").unwrap(), "QUIET");
    assert_eq!(client.fallible(true).unwrap(), Ok(7));
    assert_eq!(client.fallible(false).unwrap(), Err("no".to_string()));
    assert_eq!(
        client.slow(5).unwrap(),
        1,
        "a blocking handler's reply, from a worker"
    );
    assert_eq!(block_on(client.later_async(21)).unwrap(), 42);
    assert_eq!(client.later(4).unwrap(), 8);
    assert_ne!(client.who().unwrap(), 0);
    // A handler that panics is a typed error; the server goes on.
    match client.panics() {
        Err(CallError::Remote(e)) => assert_eq!(e.code, ErrorCode::HandlerPanicked),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.add(1, 1).unwrap(), 2);

    // Deadlines: a call whose handler outlasts its timeout ends `TimedOut` (after running,
    // which the server cannot know it should not); calls well within theirs succeed, the
    // deadline counting from the call's start on every link.
    let short = client.with(CallOptions::new().timeout(Duration::from_millis(30)));
    assert_eq!(short.nap(200).map(|r| r.value), Err(CallError::TimedOut));
    let ample = client.with(CallOptions::new().timeout(Duration::from_secs(2)));
    for i in 0..200u64 {
        assert_eq!(ample.add(i, 1).unwrap().value, i + 1);
    }

    // Large messages, fragmented both ways.
    let big = pattern(300_000, 9);
    assert_eq!(client.echo(&big).unwrap(), big);
    assert_eq!(client.blob(1 << 20, 3).unwrap(), pattern(1 << 20, 3));
    assert_eq!(client.len(&big).unwrap(), 300_000);

    // Many calls in flight from one thread.
    let t: Vec<u64> = (0..300).map(|_| tags()).collect();
    let mut pending = Completions::new(t[..100].iter().map(|&tag| client.record_async(tag)));
    let mut next = 100;
    let mut ended = 0;
    while let Some((_, r)) = pending.next() {
        assert_eq!(r.unwrap(), 1);
        ended += 1;
        if next < t.len() {
            pending.push(client.record_async(t[next]));
            next += 1;
        }
    }
    assert_eq!(ended, 300);

    // Concurrent clients, each on its own thread.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = connect();
            thread::spawn(move || {
                for i in 0..100u64 {
                    assert_eq!(c.add(i, 1).unwrap(), i + 1);
                    assert_eq!(c.record(tags()).unwrap(), 1);
                }
                c.echo(&pattern(70_000, 1)).unwrap().len()
            })
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), 70_000);
    }

    // Faults, where there is a network to lose datagrams on.
    if let Some(lossy) = lossy {
        for _ in 0..200 {
            assert_eq!(
                lossy.record(tags()).unwrap(),
                1,
                "executed once, through duplicates"
            );
        }
        assert_eq!(lossy.echo(&big).unwrap(), big, "fragments lost and resent");
        let calls: Vec<u64> = (0..100).map(|_| tags()).collect();
        for r in rpc_transport::join_all(calls.iter().map(|&tag| lossy.record_async(tag))) {
            assert_eq!(r.unwrap(), 1);
        }
    }
    assert_eq!(service.twice(), 0, "nothing executed twice");

    // Shutdown: a call running finishes and its reply leaves; new ones are refused, typed,
    // without running.
    let slow = {
        let c = connect();
        thread::spawn(move || c.slow(300))
    };
    // Once its handler runs.
    while service.slow_started.load(Ordering::Relaxed) < 2 {
        thread::yield_now();
    }
    let stopping = thread::spawn(move || server.shutdown());
    let refused = loop {
        match client.null() {
            // Sent before the drain began.
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(refused, CallError::ShuttingDown);
    assert_eq!(
        slow.join().unwrap().unwrap(),
        2,
        "the running call's reply left"
    );
    let counters = stopping.join().unwrap();
    assert!(counters.executed > 400, "{counters:?}");
}

fn uring() -> Io {
    Io::Uring(UringConfig::default())
}

#[test]
fn over_plain_sockets_spinning() {
    over_udp(Io::Sockets, PollStrategy::Spin);
}

#[test]
fn over_io_uring_spinning() {
    over_udp(uring(), PollStrategy::Spin);
}

#[test]
fn over_io_uring_spinning_then_parking() {
    over_udp(uring(), park());
}

#[test]
fn over_io_uring_blocking() {
    over_udp(uring(), PollStrategy::Block);
}

#[test]
fn over_shared_memory_spinning() {
    over_shm(PollStrategy::Spin);
}

#[test]
fn over_shared_memory_spinning_then_parking() {
    over_shm(park());
}

#[test]
fn over_shared_memory_blocking() {
    over_shm(PollStrategy::Block);
}

#[test]
fn io_uring_with_authentication() {
    let key = rpc_core::auth::AuthKey::from_bytes([7; 32]);
    let mut sc = server_config(park());
    sc.io = uring();
    sc.protocol.auth = Some(key.clone());
    let server = UdpServer::bind(localhost(), sc)
        .unwrap()
        .serve(ShapesServer::new(Impl::default()))
        .unwrap();
    let mut cc = client_config(park());
    cc.io = uring();
    cc.protocol.auth = Some(key);
    let client = ShapesClient::new(UdpClient::connect(server.local_addr(), cc).unwrap());
    assert_eq!(client.echo(b"signed").unwrap(), b"signed");
    let big = pattern(200_000, 5);
    assert_eq!(client.echo(&big).unwrap(), big);
    assert!(server.stats().bad_tag == 0);
}
