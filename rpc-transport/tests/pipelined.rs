//! Many calls in flight: pipelined and async calls from one thread and from several, async
//! handlers with nested calls (a chain across three servers, a call back into the same server),
//! dropped calls; over real sockets, through the fault proxy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::{
    Book, LedgerClient, LedgerServer, client_config, localhost, park, server_config, tag,
};
use rpc_core::service::{CallContext, CallOptions};
use rpc_core::{CallError, rpc};
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::{ServerHandle, UdpClient, UdpServer};
use rpc_transport::{Completions, Node, PollStrategy, block_on, join_all};

/// Checks a pipelined call's outcome: it ran once, or it failed and says whether it may have.
fn settled(book: &Book, t: u64, r: Result<u64, CallError>) -> bool {
    match r {
        Ok(n) => {
            assert_eq!(n, 1, "call {t} ran before");
            assert_eq!(book.runs(t), 1);
            true
        }
        Err(e) if e.may_have_executed() => {
            assert!(book.runs(t) <= 1, "{e}");
            false
        }
        Err(e) => {
            assert_eq!(book.runs(t), 0, "{e}");
            false
        }
    }
}

/// A ledger server, a proxy in front of it that loses 5 %, duplicates 5 % and reorders 10 % of
/// datagrams (seeded), and a client through the proxy.
fn lossy_ledger(seed: u64) -> (Book, ServerHandle, FaultProxy, LedgerClient<UdpClient>) {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy =
        FaultProxy::start(server.local_addr(), Faults::lossy(0.05, 0.05, 0.1), seed).unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap());
    (book, server, proxy, client)
}

#[test]
fn hundreds_of_calls_in_flight_from_one_thread_through_loss() {
    let (book, _server, proxy, client) = lossy_ledger(11);
    let tags: Vec<u64> = (0..600).map(|_| tag()).collect();
    // Up to the window (128) in flight at once, refilled as calls end.
    let mut pending = Completions::new(tags[..128].iter().map(|&t| client.record_async(t, 1)));
    let mut next = 128;
    let mut ok = 0;
    let mut ended = 0;
    while let Some((i, r)) = pending.next() {
        ended += 1;
        if settled(&book, tags[i], r) {
            ok += 1;
        }
        if next < tags.len() {
            pending.push(client.record_async(tags[next], 1));
            next += 1;
        }
    }
    assert_eq!(ended, tags.len());
    // Lost datagrams are retransmitted well before the calls' deadline (20 s): all succeed.
    assert_eq!(ok, tags.len(), "{ok} of {} succeeded", tags.len());
    assert!(book.twice().is_empty());
    assert_eq!(client.transport().in_flight(), (0, 0));
    // The proxy did drop datagrams (coalesced, they may be too few for a duplicate).
    assert!(proxy.counters().dropped > 0);
}

/// A combinator that polls only the futures whose wakers fired (`FuturesUnordered`), inside
/// this crate's `block_on`: the calls still drive their link, through loss, because a call
/// polled through wakers that are not the executor's own wakes itself.
#[test]
fn calls_under_a_combinator_that_polls_only_woken_futures_finish_through_loss() {
    use futures::StreamExt as _;
    use futures::stream::FuturesUnordered;
    let (book, _server, proxy, client) = lossy_ledger(12);
    let tags: Vec<u64> = (0..200).map(|_| tag()).collect();
    let ok = block_on(async {
        let client = &client;
        let mut calls: FuturesUnordered<_> = tags
            .iter()
            .map(|&t| async move { (t, client.record_async(t, 1).await) })
            .collect();
        let mut ok = 0;
        while let Some((t, r)) = calls.next().await {
            if settled(&book, t, r) {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, tags.len(), "{ok} of {} succeeded", tags.len());
    assert!(book.twice().is_empty());
    assert!(proxy.counters().dropped > 0);
}

#[test]
fn several_threads_pipeline_on_one_client() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy =
        FaultProxy::start(server.local_addr(), Faults::lossy(0.02, 0.02, 0.05), 12).unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let book = book.clone();
            thread::spawn(move || {
                let tags: Vec<u64> = (0..150).map(|_| tag()).collect();
                let results = join_all(tags.iter().map(|&t| client.record_async(t, 1)));
                // And a blocking call from the same thread, between pipelines.
                let t = tag();
                let blocking = client.record(t, 1);
                assert!(settled(&book, t, blocking));
                tags.iter()
                    .zip(results)
                    .filter(|&(&t, ref r)| settled(&book, t, *r))
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 450, "{ok} of 450");
    assert!(book.twice().is_empty());
}

#[test]
fn more_threads_than_the_client_admits_take_turns_and_all_finish() {
    // Twelve threads on a client that admits two into blocking calls at once (the others wait
    // their turn parked), through loss; a call whose deadline passes while it waits for its
    // turn is never sent.
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy =
        FaultProxy::start(server.local_addr(), Faults::lossy(0.02, 0.02, 0.05), 13).unwrap();
    let mut config = client_config(PollStrategy::Spin);
    config.calling_threads = 2;
    let client = LedgerClient::new(UdpClient::connect(proxy.local_addr(), config).unwrap());
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let client = client.clone();
            let book = book.clone();
            thread::spawn(move || {
                (0..40)
                    .filter(|_| {
                        let t = tag();
                        settled(&book, t, client.record(t, 1))
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 480, "{ok} of 480");
    assert!(book.twice().is_empty());

    // One thread holds the only turn in a slow call: another's call, whose deadline comes
    // first, ends `WindowFull` without being sent.
    let mut config = client_config(park());
    config.calling_threads = 1;
    let client = LedgerClient::new(UdpClient::connect(server.local_addr(), config).unwrap());
    let (slow_tag, waiting_tag) = (tag(), tag());
    let holder = {
        let client = client.clone();
        thread::spawn(move || client.slow(slow_tag, 300))
    };
    // The holder has its turn once its call is in flight.
    while client.transport().in_flight().0 == 0 {
        thread::yield_now();
    }
    let r = client
        .with(CallOptions::new().timeout(Duration::from_millis(20)))
        .record(waiting_tag, 1);
    assert!(matches!(r, Err(CallError::WindowFull)), "{r:?}");
    assert_eq!(book.runs(waiting_tag), 0);
    assert_eq!(holder.join().unwrap().unwrap(), 1);
}

#[test]
fn a_dropped_call_leaks_nothing_and_its_reply_goes_to_no_one() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    for round in 0..20 {
        // Start a few calls (one poll each sends them), then drop them before their replies.
        let slow: Vec<u64> = (0..4).map(|_| tag()).collect();
        {
            let mut futures: Vec<_> = slow
                .iter()
                .map(|&t| Box::pin(client.slow_async(t, 5)))
                .collect();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for f in &mut futures {
                let _ = f.as_mut().poll(&mut cx);
            }
        }
        // Later calls get their own replies, never a dropped call's.
        let t = tag();
        let echoed = client.echo(t, &[round as u8; 10]).unwrap();
        assert_eq!(echoed, vec![round as u8; 10]);
        let mine = block_on(client.record_async(tag(), 1)).unwrap();
        assert_eq!(mine, 1);
    }
    assert_eq!(client.transport().in_flight(), (0, 0));
    assert!(book.twice().is_empty());
}

/// A link in a chain of servers: forwards to the next one (if any) and returns the stamps it
/// saw, so the test can check the Lamport order along the chain.
#[rpc]
pub trait Chain {
    /// The receipt stamp here and the stamps of every hop after this one.
    async fn hop(&self, ctx: &CallContext, depth: u32) -> Vec<(u64, u64, u64)>;
    /// Calls `leaf` on this same server, from an async handler.
    async fn back_into_self(&self) -> u32;
    fn leaf(&self) -> u32;
}

struct Hop {
    next: Option<ChainClient<UdpClient>>,
    this: std::sync::OnceLock<ChainClient<UdpClient>>,
    hops: AtomicU64,
}

impl Chain for Hop {
    async fn hop(&self, ctx: &CallContext, depth: u32) -> Vec<(u64, u64, u64)> {
        self.hops.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        if let (Some(next), true) = (&self.next, depth > 0) {
            let r = next
                .with(CallOptions::new())
                .hop_async(depth - 1)
                .await
                .unwrap();
            // (received here, nested request, nested reply), then the rest of the chain.
            out.push((
                ctx.received_stamp.time,
                r.request_stamp.time,
                r.reply_stamp.time,
            ));
            out.extend(r.value);
        }
        out
    }
    async fn back_into_self(&self) -> u32 {
        let this = self.this.get().expect("set after start");
        this.leaf_async().await.unwrap() + 1
    }
    fn leaf(&self) -> u32 {
        41
    }
}

#[test]
fn async_handlers_chain_nested_calls_across_three_servers_under_loss() {
    // C, then B calling C, then A calling B: each a node, whose server and clients share its
    // clock; each reached through a lossy proxy.
    let mut previous: Option<std::net::SocketAddr> = None;
    let mut servers = Vec::new();
    let mut hops = Vec::new();
    for _ in 0..3 {
        let node = Node::new().unwrap();
        let next = previous
            .map(|addr| ChainClient::new(node.connect_udp(addr, client_config(park())).unwrap()));
        let server = node.bind_udp(localhost(), server_config(park())).unwrap();
        let addr = server.local_addr();
        let proxy =
            FaultProxy::start(addr, Faults::lossy(0.05, 0.02, 0.05), addr.port().into()).unwrap();
        let hop = Arc::new(Hop {
            next,
            this: std::sync::OnceLock::new(),
            hops: AtomicU64::new(0),
        });
        struct Shared(Arc<Hop>);
        impl Chain for Shared {
            async fn hop(&self, ctx: &CallContext, depth: u32) -> Vec<(u64, u64, u64)> {
                self.0.hop(ctx, depth).await
            }
            async fn back_into_self(&self) -> u32 {
                self.0.back_into_self().await
            }
            fn leaf(&self) -> u32 {
                self.0.leaf()
            }
        }
        let handle = server.serve(ChainServer::new(Shared(hop.clone()))).unwrap();
        let own = ChainClient::new(node.connect_udp(addr, client_config(park())).unwrap());
        let _ = hop.this.set(own);
        previous = Some(proxy.local_addr());
        servers.push((handle, proxy));
        hops.push(hop);
    }
    let front =
        ChainClient::new(UdpClient::connect(previous.unwrap(), client_config(park())).unwrap());
    for _ in 0..30 {
        let r = front.with(CallOptions::new()).hop(2).unwrap();
        let chain = r.value;
        assert_eq!(chain.len(), 2, "two nested calls: A to B, B to C");
        let mut last = r.request_stamp.time;
        for (received, nested_request, nested_reply) in &chain {
            assert!(last < *received);
            assert!(
                received < nested_request,
                "stamped after the receipt of its caller"
            );
            assert!(nested_request < nested_reply);
            last = *received;
        }
        // Each hop's reply is stamped after the nested reply it waited for.
        assert!(chain[0].2 < r.reply_stamp.time);
        assert!(chain[1].2 < chain[0].2);
    }
    // A call back into the same server, from its async handler, does not deadlock its loop.
    for _ in 0..20 {
        assert_eq!(front.back_into_self().unwrap(), 42);
    }
    assert!(hops.iter().all(|h| h.hops.load(Ordering::Relaxed) >= 30));
    let stats = servers[2].0.stats();
    assert_eq!(stats.tasks, 0, "every task ended");
}

#[test]
fn a_plain_handler_calling_its_own_server_from_a_blocking_method_does_not_deadlock() {
    // The old failure: a handler calling its own server blocked the receive thread. A
    // blocking (worker) handler calls through a client; the receive thread serves the call.
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(PollStrategy::Spin))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    let r = client
        .with(CallOptions::new().timeout(Duration::from_secs(10)))
        .slow(tag(), 1)
        .unwrap();
    assert_eq!(r.value, 1);
}
