//! Hostile and unlucky datagrams over real sockets: a raw socket plays the attacker (forged,
//! replayed and mutated datagrams, huge stamps, forged acks, Hello floods, forged source
//! addresses where this process may forge them), the fault proxy the unlucky network. One
//! test per defect of the issue that listed them; each says which.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use common::{
    Book, LedgerClient, LedgerServer, client_config, localhost, park, server_config, tag,
};
use rpc_core::clock::ADOPT_AHEAD;
use rpc_core::service::CallOptions;
use rpc_core::wire::{
    CookieBody, Flags, HELLO_BODY_LEN, HeaderRepr, HelloBody, MAX_LAMPORT, PacketKind, PacketRepr,
    RefuseReason,
};
use rpc_core::{AuthKey, CallError, rpc};
use rpc_transport::proxy::{FaultProxy, Faults, Tapped, spoof};
use rpc_transport::udp::{ConnectError, UdpClient, UdpServer, UdpServerConfig};
use rpc_transport::{Node, PollStrategy};
use zerocopy::IntoBytes;

/// The attacker: a socket of its own on loopback.
struct Attacker {
    socket: UdpSocket,
}

impl Attacker {
    fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket }
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).unwrap();
    }

    /// The next datagram sent to the attacker, parsed (`None` after a quiet 200 ms).
    fn recv(&self) -> Option<(HeaderRepr, Vec<u8>)> {
        let mut buf = vec![0u8; 65_536];
        let n = self.socket.recv(&mut buf).ok()?;
        let p = PacketRepr::parse(&buf[..n]).ok()?;
        Some((p.header, p.payload.to_vec()))
    }

    /// Opens a session from the attacker's own address as client `(id, 1)` with a Hello
    /// stamped `lamport`: the Retry, then the Hello with its cookie. Returns the answer to
    /// the second Hello.
    ///
    /// Datagrams can be lost on a loaded machine: each step is tried a few times.
    fn hello(&self, server: SocketAddr, id: u64, lamport: u64) -> Option<HeaderRepr> {
        let cookie = (0..5).find_map(|_| {
            self.send(server, &hello(id, lamport, CookieBody::default()));
            self.recv_for(id)
        });
        let (retry, cookie) = cookie?;
        assert_eq!(retry.kind, PacketKind::Retry);
        let cookie = zerocopy::FromBytes::read_from_bytes(&cookie).unwrap();
        let answer = (0..3).find_map(|_| {
            self.send(server, &hello(id, lamport, cookie));
            self.recv_for(id)
        });
        answer.map(|(h, _)| h)
    }

    /// The next datagram for client `id`, skipping others.
    fn recv_for(&self, id: u64) -> Option<(HeaderRepr, Vec<u8>)> {
        loop {
            let (h, p) = self.recv()?;
            if h.client_id == id {
                return Some((h, p));
            }
        }
    }
}

fn hello(client_id: u64, lamport: u64, cookie: CookieBody) -> Vec<u8> {
    let body = HelloBody {
        max_datagram: 65_507.into(),
        max_message: (1u32 << 20).into(),
        cookie,
    };
    let h = HeaderRepr {
        kind: PacketKind::Hello,
        flags: Flags::empty(),
        status: 0,
        client_id,
        client_incarnation: 1,
        interface: 0,
        method: 0,
        session: 0,
        seq: 1,
        ack: 0,
        lamport,
        frag_index: 0,
        frag_count: 1,
        message_len: HELLO_BODY_LEN as u32,
        payload_len: HELLO_BODY_LEN as u32,
    };
    emit(h, body.as_bytes())
}

fn emit(header: HeaderRepr, payload: &[u8]) -> Vec<u8> {
    let header = HeaderRepr {
        payload_len: payload.len() as u32,
        ..header
    };
    let p = PacketRepr {
        header,
        tag: None,
        payload,
    };
    let mut out = vec![0u8; p.buffer_len()];
    p.emit(&mut out).unwrap();
    out
}

/// The requests a tapped client sent, parsed, with the datagrams as they were.
fn tapped_requests(tap: &[Tapped]) -> Vec<(HeaderRepr, Tapped)> {
    tap.iter()
        .filter(|t| t.to_server)
        .filter_map(|t| {
            let p = PacketRepr::parse(&t.bytes).ok()?;
            (p.header.kind == PacketKind::Request).then(|| (p.header, t.clone()))
        })
        .collect()
}

/// A server with `book`, a client through a tapping proxy (no faults), and the proxy.
fn tapped_pair(
    book: &Book,
) -> (
    rpc_transport::udp::ServerHandle,
    LedgerClient<UdpClient>,
    FaultProxy,
) {
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr(), Faults::none(), 1).unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap());
    (server, client, proxy)
}

/// Whether this process may forge source addresses (a raw socket needs `CAP_NET_RAW`).
fn can_spoof() -> bool {
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    target
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let from: SocketAddr = "127.0.0.9:4321".parse().unwrap();
    if spoof(from, target.local_addr().unwrap(), b"x").is_err() {
        eprintln!("skipping the forged-address part: no raw sockets here (needs CAP_NET_RAW)");
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(target.recv_from(&mut buf), Ok((1, f)) if f == from)
}

// Defect 1: one datagram from anyone stopped the server answering everyone.
#[test]
fn huge_lamport_stamps_never_stop_a_server_answering() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let addr = server.local_addr();
    let attacker = Attacker::new();
    // A Hello stamped at the limit's edge, without a cookie: answered with a Retry, nothing
    // else (no session, no clock change).
    attacker.send(addr, &hello(0xbad, MAX_LAMPORT - 1, CookieBody::default()));
    assert_eq!(attacker.recv().unwrap().0.kind, PacketKind::Retry);
    // With its cookie, from its own address: the stamp is refused, the Hello dropped.
    for stamp in [MAX_LAMPORT - 1, MAX_LAMPORT - 200] {
        assert!(attacker.hello(addr, 0xbad, stamp).is_none(), "no answer");
    }
    assert!(server.stats().bad_stamp >= 2);
    // A stamp within the skew allowance past the server's ceiling: adopted up to the ceiling.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let pushed = wall + ADOPT_AHEAD + ADOPT_AHEAD / 2;
    let welcome = attacker.hello(addr, 0xbad2, pushed).unwrap();
    assert_eq!(welcome.kind, PacketKind::Welcome);
    assert!(welcome.lamport < pushed && welcome.lamport < MAX_LAMPORT);
    // Everyone is still answered: clients connect and their calls succeed, with valid stamps
    // in order.
    let client = LedgerClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
    for _ in 0..200 {
        let reply = client.with(CallOptions::new()).record(tag(), 1).unwrap();
        assert!(reply.reply_stamp > reply.request_stamp);
        assert!(reply.reply_stamp.time < MAX_LAMPORT);
    }
    let other = LedgerClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
    assert_eq!(other.record(tag(), 1).unwrap(), 1);
    assert!(book.twice().is_empty());
}

// Defect 2: an idempotent call whose argument and reply span several datagrams never
// recovered from one lost reply datagram.
#[test]
fn idempotent_calls_of_many_datagrams_recover_from_loss() {
    #[rpc]
    trait Mirror {
        #[rpc(idempotent)]
        fn mirror(&self, data: &[u8]) -> Vec<u8>;
    }
    struct M(AtomicU64);
    impl Mirror for M {
        fn mirror(&self, data: &[u8]) -> Vec<u8> {
            self.0.fetch_add(1, Ordering::Relaxed);
            data.to_vec()
        }
    }
    // Ethernet-sized datagrams: 100 KB is 70 of them each way.
    let server = UdpServer::bind(localhost(), UdpServerConfig::default().poll(park()))
        .unwrap()
        .serve(MirrorServer::new(M(AtomicU64::new(0))))
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr(), Faults::lossy(0.03, 0.0, 0.0), 7).unwrap();
    let mut config = client_config(park());
    config.protocol.max_datagram = rpc_core::config::ETHERNET_DATAGRAM;
    let client = MirrorClient::new(UdpClient::connect(proxy.local_addr(), config).unwrap());
    let data = common::pattern(100_000, 3);
    let options = CallOptions::new().timeout(Duration::from_secs(5));
    for _ in 0..10 {
        let back = client.with(options).mirror(&data).unwrap().value;
        assert_eq!(back, data);
    }
    assert!(proxy.counters().dropped > 0);
}

// Defect 3: anyone who saw a client's packets could act inside its session.
#[test]
fn nobody_acts_inside_another_clients_session() {
    let book = Book::default();
    let (server, victim, proxy) = tapped_pair(&book);
    let addr = server.local_addr();
    let t = tag();
    assert_eq!(victim.record(t, 1).unwrap(), 1);
    let (genuine, seen) = tapped_requests(&proxy.tapped()).pop().unwrap();
    let attacker = Attacker::new();

    // A request with the victim's ids, session and next sequence number, from elsewhere:
    // not executed, and the victim's own call with that number runs and gets its own reply.
    let forged_tag = tag();
    let forged = emit(
        HeaderRepr {
            seq: genuine.seq + 1,
            ack: genuine.seq,
            message_len: 16,
            ..genuine
        },
        &[forged_tag.to_le_bytes(), 5u64.to_le_bytes()].concat(),
    );
    attacker.send(addr, &forged);
    let answer = attacker.recv().unwrap().0;
    assert_eq!(answer.kind, PacketKind::Stale, "it learns nothing new");
    assert_eq!(book.runs(forged_tag), 0);
    let mine = tag();
    assert_eq!(victim.record(mine, 2).unwrap(), 1);
    assert_eq!(book.runs(mine), 1);

    // A replay of the genuine request with its sequence number changed: not executed.
    let mut replay = seen.bytes.clone();
    replay[32..40].copy_from_slice(&(genuine.seq + 5).to_le_bytes());
    attacker.send(addr, &replay);
    assert_eq!(attacker.recv().unwrap().0.kind, PacketKind::Stale);
    // The exact replay, from elsewhere: not the victim's cached reply.
    attacker.send(addr, &seen.bytes);
    let (h, payload) = attacker.recv().unwrap();
    assert_eq!((h.kind, payload.len()), (PacketKind::Stale, 0));
    assert_eq!(book.runs(t), 1);

    // A Hello with the victim's ids from elsewhere: a session of its own, not the victim's.
    let welcome = attacker.hello(addr, genuine.client_id, 1).unwrap();
    assert_eq!(welcome.kind, PacketKind::Welcome);
    assert_ne!(welcome.session, genuine.session);
    let stats = server.stats();
    assert!(stats.wrong_address >= 3, "{stats:?}");
    assert!(book.twice().is_empty());
    // And the victim goes on.
    assert_eq!(victim.record(tag(), 1).unwrap(), 1);
}

// Defect 4: one forged ack killed another client's session.
#[test]
fn a_forged_ack_does_not_kill_a_session() {
    let book = Book::default();
    let (server, victim, proxy) = tapped_pair(&book);
    let addr = server.local_addr();
    for _ in 0..3 {
        victim.record(tag(), 1).unwrap();
    }
    let (genuine, seen) = tapped_requests(&proxy.tapped()).pop().unwrap();
    let attacker = Attacker::new();
    let ack = 1u64 << 40;
    let forged = emit(
        HeaderRepr {
            seq: ack + 1,
            ack,
            message_len: 16,
            ..genuine
        },
        &[tag().to_le_bytes(), 1u64.to_le_bytes()].concat(),
    );
    // From another address: nothing changes.
    attacker.send(addr, &forged);
    assert_eq!(attacker.recv().unwrap().0.kind, PacketKind::Stale);
    for _ in 0..20 {
        assert_eq!(victim.record(tag(), 1).unwrap(), 1);
    }
    assert_eq!(victim.transport().stats().sessions_lost, 0);
    // Forged from the victim's own address (where this process may forge one): the ack is
    // refused as beyond anything the session has seen; the session is reset with a Stale
    // that says which calls never started, and the victim's calls go on in a new session.
    if can_spoof() {
        spoof(seen.client, addr, &forged).unwrap();
        for _ in 0..20 {
            assert_eq!(victim.record(tag(), 1).unwrap(), 1);
        }
    }
    assert!(book.twice().is_empty());
}

// Defect 5: a Hello flood evicted active clients.
#[test]
fn a_hello_flood_never_evicts_sessions_in_use() {
    let book = Book::default();
    let mut config = server_config(park());
    config.protocol.max_sessions = 16;
    config.protocol.max_sessions_per_host = 4;
    let server = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let addr = server.local_addr();
    let client = LedgerClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        let book = book.clone();
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let t = tag();
                match client.record(t, 1) {
                    Ok(1) => n += 1,
                    other => panic!("call {t}: {other:?} (ran {} times)", book.runs(t)),
                }
            }
            client
        })
    };
    // 100,000 made-up clients without cookies: Retries only, no state.
    let attacker = Attacker::new();
    for id in 0..100_000u64 {
        attacker.send(addr, &hello(0x5000_0000 + id, 1, CookieBody::default()));
    }
    // Some with cookies, from another of the attacker's sockets: a host's share of sessions
    // at most (here every client is on 127.0.0.1, one host).
    let opener = Attacker::new();
    let mut refused = 0;
    for id in 0..20u64 {
        match opener.hello(addr, 0x6000_0000 + id, 1).map(|h| h.kind) {
            Some(PacketKind::Refused) => refused += 1,
            Some(PacketKind::Welcome) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        refused,
        20 - 3,
        "the host holds four sessions, the victim's among them"
    );
    // And from forged addresses, where possible: their cookies go nowhere.
    if can_spoof() {
        for i in 0..2000u32 {
            let from = SocketAddr::from(([127, 0, (i >> 8) as u8 + 10, i as u8], 9000));
            spoof(
                from,
                addr,
                &hello(0x7000_0000 + u64::from(i), 1, CookieBody::default()),
            )
            .unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let client = caller.join().unwrap();
    let stats = server.stats();
    assert!(stats.sessions <= 1 + 4, "{stats:?}");
    assert_eq!(stats.sessions_evicted, 0);
    assert!(stats.refused_hellos > 0);
    assert_eq!(client.transport().stats().sessions_lost, 0);
    assert!(book.twice().is_empty());
}

// Defect 6, first half: the first call after an idle pause longer than the server's idle
// timeout was reported OutcomeUnknown, though it never ran.
#[test]
fn a_call_after_a_long_idle_pause_succeeds() {
    let book = Book::default();
    let mut config = server_config(park());
    config.protocol.session_idle_timeout = Duration::from_millis(200);
    let server = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    client.record(tag(), 1).unwrap();
    // The pause itself is what this test is about.
    thread::sleep(Duration::from_millis(300));
    let t = tag();
    assert_eq!(client.record(t, 1).unwrap(), 1);
    let stats = client.transport().stats();
    assert_eq!((stats.idle_reopens, stats.outcome_unknown), (1, 0));
}

// Defect 6, second half: with more clients than sessions, calls that never ran were reported
// OutcomeUnknown.
#[test]
fn more_clients_than_sessions_get_typed_answers_never_doubt() {
    let book = Book::default();
    let mut config = server_config(park());
    config.protocol.max_sessions = 4;
    config.protocol.evictable_after = Duration::from_millis(500);
    let server = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let addr = server.local_addr();
    let mut client_cfg = client_config(park());
    // Short enough that all twelve tries fit in less time than a session takes to fall idle.
    client_cfg.connect_timeout = Duration::from_millis(30);
    let mut clients = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match UdpClient::connect(addr, client_cfg.clone()) {
            Ok(c) => clients.push(LedgerClient::new(c)),
            Err(ConnectError::Refused(RefuseReason::SessionsFull)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Four got sessions; the others were told the server is full (while the four were in
    // use, none was displaced).
    assert_eq!((clients.len(), refused), (4, 8));
    client_cfg.connect_timeout = Duration::from_millis(300);
    // Sixty calls round the clients, with newcomers arriving as sessions fall idle: each call
    // succeeds or fails with an error that says it did not run; none ends in doubt.
    let (mut ok, mut not_run) = (0, 0);
    for i in 0..60 {
        if i % 10 == 9 {
            // Let the sessions fall idle (the pause is the point), then a newcomer evicts one.
            thread::sleep(Duration::from_millis(600));
            if let Ok(c) = UdpClient::connect(addr, client_cfg.clone()) {
                clients.push(LedgerClient::new(c));
            }
        }
        let c = &clients[i % clients.len()];
        let t = tag();
        match c
            .with(CallOptions::new().timeout(Duration::from_millis(300)))
            .record(t, 1)
        {
            Ok(r) => {
                assert_eq!(r.value, 1);
                ok += 1;
            }
            Err(e) if !e.may_have_executed() => {
                assert_eq!(book.runs(t), 0, "{e}");
                not_run += 1;
            }
            Err(e) => panic!("call {t} ended in doubt: {e}"),
        }
    }
    assert_eq!(ok + not_run, 60);
    assert!(ok > 0);
    assert!(book.twice().is_empty());
}

// Defect 7: a call's own timeout was not honoured while the client's window was full.
#[test]
fn a_calls_timeout_holds_while_the_window_is_full() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let mut config = client_config(park());
    config.protocol.window = 1;
    let client = LedgerClient::new(UdpClient::connect(server.local_addr(), config).unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    let busy = {
        let client = client.clone();
        thread::spawn(move || {
            // Holds the only slot of the window for a second.
            let r = client.slow(tag(), 1000);
            done_tx.send(()).unwrap();
            r
        })
    };
    // Wait until the slow call is in flight (its handler started).
    while server.stats().executed == 0 {
        thread::yield_now();
    }
    let t = tag();
    let r = client
        .with(CallOptions::new().timeout(Duration::from_millis(50)))
        .record(t, 1);
    assert_eq!(r.unwrap_err(), CallError::WindowFull);
    // It gave up before the call holding the window ended, and never ran.
    assert!(
        done_rx.try_recv().is_err(),
        "the short call waited for the long one"
    );
    assert_eq!(book.runs(t), 0);
    busy.join().unwrap().unwrap();
}

// Defect 8: Duration::MAX as a timeout, deadline or connect timeout panicked.
#[test]
fn the_longest_durations_saturate() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book))
        .unwrap();
    let mut config = client_config(park());
    config.connect_timeout = Duration::MAX;
    config.protocol.default_deadline = Duration::MAX;
    config.protocol.max_rto = Duration::MAX;
    let client = LedgerClient::new(UdpClient::connect(server.local_addr(), config).unwrap());
    assert_eq!(client.record(tag(), 1).unwrap(), 1);
    let r = client
        .with(CallOptions::new().timeout(Duration::MAX))
        .record(tag(), 1);
    assert_eq!(r.unwrap().value, 1);
}

// Defect 9: workers = 0 was accepted, and blocking methods then failed only at their deadline.
#[test]
fn a_service_with_blocking_methods_needs_workers() {
    let mut config = server_config(park());
    config.workers = 0;
    let err = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(Book::default()))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("workers"), "{err}");
}

// Defect 10: shutdown and refusal were slow to tell.
#[test]
fn shutdown_finishes_running_calls_and_refuses_new_ones() {
    #[rpc]
    trait Gate {
        /// Waits until the gate opens.
        #[rpc(blocking)]
        fn pass(&self) -> u32;
        fn ping(&self) -> u32;
    }
    struct G {
        entered: Barrier,
        open: Mutex<mpsc::Receiver<()>>,
        pings: AtomicU64,
    }
    impl Gate for G {
        fn pass(&self) -> u32 {
            self.entered.wait();
            let _ = self.open.lock().unwrap().recv();
            7
        }
        fn ping(&self) -> u32 {
            self.pings.fetch_add(1, Ordering::Relaxed);
            1
        }
    }
    let (open_tx, open_rx) = mpsc::channel();
    let gate = Arc::new(G {
        entered: Barrier::new(2),
        open: Mutex::new(open_rx),
        pings: AtomicU64::new(0),
    });
    struct Shared(Arc<G>);
    impl Gate for Shared {
        fn pass(&self) -> u32 {
            self.0.pass()
        }
        fn ping(&self) -> u32 {
            self.0.ping()
        }
    }
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(GateServer::new(Shared(gate.clone())))
        .unwrap();
    let addr = server.local_addr();
    let a = GateClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
    let b = GateClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
    let running = thread::spawn(move || a.pass());
    gate.entered.wait();
    // Shut down while `pass` runs: the server drains until it ends.
    let stopping = thread::spawn(move || server.shutdown());
    // A new call during the drain is refused, typed, without running.
    let r = loop {
        match b.ping() {
            // Sent before the drain began.
            Ok(_) => continue,
            r => break r,
        }
    };
    assert_eq!(r.unwrap_err(), CallError::ShuttingDown);
    let before = gate.pings.load(Ordering::Relaxed);
    assert_eq!(b.ping().unwrap_err(), CallError::ShuttingDown);
    assert_eq!(gate.pings.load(Ordering::Relaxed), before);
    // The running call finishes, and its reply is sent.
    open_tx.send(()).unwrap();
    assert_eq!(running.join().unwrap().unwrap(), 7);
    stopping.join().unwrap();

    // Connecting where nobody listens fails at once with a typed error (the kernel reports
    // the port unreachable), however long the connect timeout.
    let nobody = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = client_config(park());
    config.connect_timeout = Duration::from_secs(3600);
    match UdpClient::connect(nobody, config) {
        Err(ConnectError::Unreachable(a)) => assert_eq!(a, nobody.to_string()),
        other => panic!("{other:?}"),
    }
}

// Defect 11: Lamport order broke across a nested call.
#[test]
fn a_nested_call_keeps_happened_before_across_one_node() {
    #[rpc]
    trait Back {
        fn inner(&self) -> u64;
    }
    struct B;
    impl Back for B {
        fn inner(&self) -> u64 {
            1
        }
    }
    #[rpc]
    trait Front {
        /// The outer receipt stamp, and the nested call's request and reply stamps.
        #[rpc(blocking)]
        fn outer(&self, ctx: &rpc_core::service::CallContext) -> (u64, u64, u64);
    }
    struct F(BackClient<UdpClient>);
    impl Front for F {
        fn outer(&self, ctx: &rpc_core::service::CallContext) -> (u64, u64, u64) {
            let r = self.0.with(CallOptions::new()).inner().unwrap();
            (
                ctx.received_stamp.time,
                r.request_stamp.time,
                r.reply_stamp.time,
            )
        }
    }
    let back = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(BackServer::new(B))
        .unwrap();
    let node = Node::new().unwrap();
    let nested = BackClient::new(
        node.connect_udp(back.local_addr(), client_config(park()))
            .unwrap(),
    );
    let front = node
        .bind_udp(localhost(), server_config(park()))
        .unwrap()
        .serve(FrontServer::new(F(nested)))
        .unwrap();
    let client =
        FrontClient::new(UdpClient::connect(front.local_addr(), client_config(park())).unwrap());
    for _ in 0..20 {
        let r = client.with(CallOptions::new()).outer().unwrap();
        let (received, nested_request, nested_reply) = r.value;
        assert!(r.request_stamp.time < received);
        assert!(
            received < nested_request,
            "the nested call is stamped after the receipt"
        );
        assert!(nested_request < nested_reply);
        assert!(
            nested_reply < r.reply_stamp.time,
            "the reply is stamped after the nested one"
        );
        assert_eq!(r.reply_stamp.node, node.id());
    }
}

// Defect 12: fingerprints ignored the shape of user types (here over UDP; rpc-core's
// end-to-end tests cover every change of shape).
#[test]
#[allow(unreachable_pub, dead_code)]
fn a_reordered_struct_between_builds_is_an_interface_mismatch() {
    #[allow(unreachable_pub, dead_code)]
    mod v1 {
        #[derive(rpc_core::Marshal, Debug, PartialEq)]
        pub struct Item {
            pub price: u64,
            pub stock: u64,
        }
        #[rpc_core::rpc(name = "Shop")]
        pub trait Shop {
            fn item(&self) -> Item;
        }
    }
    #[allow(unreachable_pub)]
    mod v2 {
        #[derive(rpc_core::Marshal, Debug, PartialEq)]
        pub struct Item {
            pub stock: u64,
            pub price: u64,
        }
        #[rpc_core::rpc(name = "Shop")]
        pub trait Shop {
            fn item(&self) -> Item;
        }
    }
    struct S;
    impl v2::Shop for S {
        fn item(&self) -> v2::Item {
            v2::Item {
                stock: 1005,
                price: 3,
            }
        }
    }
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(v2::ShopServer::new(S))
        .unwrap();
    let old = v1::ShopClient::new(
        UdpClient::connect(server.local_addr(), client_config(park())).unwrap(),
    );
    assert!(matches!(
        old.item(),
        Err(CallError::InterfaceMismatch { .. })
    ));
    let new = v2::ShopClient::new(
        UdpClient::connect(server.local_addr(), client_config(park())).unwrap(),
    );
    assert_eq!(new.item().unwrap().price, 3);
}

// Defect 13: ServerHandle::stats() waited for a running plain handler.
#[test]
fn stats_never_wait_for_a_handler() {
    #[rpc]
    trait Hold {
        /// Runs on the receive thread until released.
        fn hold(&self) -> u8;
    }
    struct H(Barrier, Mutex<mpsc::Receiver<()>>);
    impl Hold for H {
        fn hold(&self) -> u8 {
            self.0.wait();
            let _ = self.1.lock().unwrap().recv();
            1
        }
    }
    let (release, held) = mpsc::channel();
    let h = Arc::new(H(Barrier::new(2), Mutex::new(held)));
    struct Shared(Arc<H>);
    impl Hold for Shared {
        fn hold(&self) -> u8 {
            self.0.hold()
        }
    }
    let server = Arc::new(
        UdpServer::bind(localhost(), server_config(park()))
            .unwrap()
            .serve(HoldServer::new(Shared(h.clone())))
            .unwrap(),
    );
    let client =
        HoldClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    let call = thread::spawn(move || client.hold());
    h.0.wait();
    // The handler runs, holding the receive thread; the counters come at once.
    let (tx, rx) = mpsc::channel();
    let s = server.clone();
    thread::spawn(move || tx.send(s.stats()).unwrap());
    let stats = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("stats() waited for the handler");
    assert_eq!(stats.sessions, 1);
    release.send(()).unwrap();
    assert_eq!(call.join().unwrap().unwrap(), 1);
}

// Authenticated mode: with the same key both sides work; forged, modified and replayed
// datagrams are dropped, even from the victim's own address, so defects 3 to 5 cannot
// happen to an attacker who sees every packet.
#[test]
fn authenticated_mode_drops_forged_and_modified_datagrams() {
    let key = AuthKey::from_passphrase(b"correct horse battery staple");
    let book = Book::default();
    let mut config = server_config(park());
    config.protocol.auth = Some(key.clone());
    let server = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let addr = server.local_addr();
    let proxy = FaultProxy::start(addr, Faults::none(), 3).unwrap();
    let mut client_cfg = client_config(park());
    client_cfg.protocol.auth = Some(key.clone());
    let victim =
        LedgerClient::new(UdpClient::connect(proxy.local_addr(), client_cfg.clone()).unwrap());
    let data = common::pattern(5000, 1);
    for _ in 0..5 {
        assert_eq!(victim.echo(tag(), &data).unwrap(), data);
        victim.record(tag(), 1).unwrap();
    }
    let (genuine, seen) = tapped_requests(&proxy.tapped()).pop().unwrap();
    assert!(genuine.flags.contains(Flags::AUTH));
    let spoofing = can_spoof();
    let send = |bytes: &[u8]| {
        if spoofing {
            spoof(seen.client, addr, bytes).unwrap();
        } else {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .send_to(bytes, addr)
                .unwrap();
        }
    };
    // A modified request (sequence number, ack, body), a forged one without the key, a
    // forged ack: all dropped for their tags.
    let before = server.stats();
    let mut modified = seen.bytes.clone();
    modified[32..40].copy_from_slice(&(genuine.seq + 1).to_le_bytes());
    send(&modified);
    let mut body_changed = seen.bytes.clone();
    let last = body_changed.len() - 1;
    body_changed[last] ^= 1;
    send(&body_changed);
    let mut acked = seen.bytes.clone();
    acked[32..40].copy_from_slice(&((1u64 << 40) + 1).to_le_bytes());
    acked[40..48].copy_from_slice(&(1u64 << 40).to_le_bytes());
    send(&acked);
    // The ids the session's key binds (client id, incarnation, session id) changed: no
    // session of that name, so a Stale for it, which the victim drops; nothing executes.
    for range in [8..16, 16..20, 24..32] {
        let mut renamed = seen.bytes.clone();
        renamed[range.start] ^= 1;
        send(&renamed);
    }
    // Replayed exactly: at most a duplicate, answered from the cache to the victim.
    send(&seen.bytes);
    // The drops are counted before anything else reaches the server, so a call of the
    // victim's after them proves they were handled.
    assert_eq!(victim.record(tag(), 1).unwrap(), 1);
    let after = server.stats();
    assert_eq!(after.bad_tag, before.bad_tag + 3);
    // Each renamed request named no session the server holds, and was answered Stale.
    assert_eq!(after.stale, before.stale + 3);
    assert!(book.twice().is_empty());
    for _ in 0..20 {
        assert_eq!(victim.record(tag(), 1).unwrap(), 1);
    }
    assert_eq!(victim.transport().stats().sessions_lost, 0);

    // The wrong key: no session; no key against a keyed server, or a key against a server
    // without one: a typed error.
    let mut wrong = client_cfg.clone();
    wrong.protocol.auth = Some(AuthKey::from_passphrase(b"wrong"));
    wrong.connect_timeout = Duration::from_millis(300);
    assert!(matches!(
        UdpClient::connect(addr, wrong),
        Err(ConnectError::TimedOut(_))
    ));
    let mut none = client_config(park());
    none.connect_timeout = Duration::from_secs(10);
    assert!(matches!(
        UdpClient::connect(addr, none),
        Err(ConnectError::AuthMismatch)
    ));
    let plain = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(Book::default()))
        .unwrap();
    let mut keyed = client_cfg;
    keyed.connect_timeout = Duration::from_secs(10);
    assert!(matches!(
        UdpClient::connect(plain.local_addr(), keyed),
        Err(ConnectError::AuthMismatch)
    ));
}

#[test]
fn the_poll_strategies_work_in_authenticated_mode() {
    let key = AuthKey::from_bytes([7; 32]);
    for poll in [PollStrategy::Spin, park(), PollStrategy::Block] {
        let mut config = server_config(poll);
        config.protocol.auth = Some(key.clone());
        let server = UdpServer::bind(localhost(), config)
            .unwrap()
            .serve(LedgerServer::new(Book::default()))
            .unwrap();
        let mut client_cfg = client_config(poll);
        client_cfg.protocol.auth = Some(key.clone());
        let client =
            LedgerClient::new(UdpClient::connect(server.local_addr(), client_cfg).unwrap());
        let big = common::pattern(200_000, 9);
        assert_eq!(client.echo(tag(), &big).unwrap(), big);
        assert_eq!(client.record(tag(), 1).unwrap(), 1);
    }
}
