//! Call futures under tokio (feature `tokio`): on current-thread and multi-thread runtimes,
//! pipelined, through loss, without spinning a worker (each call's future is polled a handful
//! of times, however long its handler takes), and handed back to the crate's own executor when
//! the runtime goes away.
#![cfg(feature = "tokio")]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{
    Book, LedgerClient, LedgerServer, client_config, localhost, park, server_config, tag,
};
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::{ServerHandle, UdpClient, UdpServer};
use rpc_transport::{PollStrategy, block_on};

/// A future that counts how often it is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicU64>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

fn counted<F: Future>(f: F, polls: &Arc<AtomicU64>) -> Counted<F> {
    Counted {
        inner: Box::pin(f),
        polls: polls.clone(),
    }
}

fn serve(book: &Book) -> ServerHandle {
    UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap()
}

/// A client whose calls are not retransmitted while a slow handler runs (so that every poll
/// counted is one the driver caused by a reply, not by a timer).
fn patient_client(server: std::net::SocketAddr) -> LedgerClient<UdpClient> {
    let mut config = client_config(PollStrategy::Spin);
    config.protocol.initial_rto = Duration::from_millis(500);
    config.protocol.min_rto = Duration::from_millis(500);
    config.protocol.max_rto = Duration::from_secs(2);
    LedgerClient::new(UdpClient::connect(server, config).unwrap())
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Calls one after another and 64 at a time, and one slow call, on `rt`; asserts each call ran
/// once and its future was polled a few times only (a spinning future would be polled
/// thousands of times while the slow handler sleeps).
fn calls_without_spinning(rt: &tokio::runtime::Runtime) {
    let book = Book::default();
    let server = serve(&book);
    let client = Arc::new(patient_client(server.local_addr()));
    let polls = Arc::new(AtomicU64::new(0));
    let tags: Vec<u64> = (0..256).map(|_| tag()).collect();
    let (c, p, t) = (client.clone(), polls.clone(), tags.clone());
    rt.block_on(async move {
        for &t in &t[..64] {
            assert_eq!(counted(c.record_async(t, 1), &p).await.unwrap(), 1);
        }
        let many = t[64..].iter().map(|&t| counted(c.record_async(t, 1), &p));
        for r in futures::future::join_all(many).await {
            assert_eq!(r.unwrap(), 1);
        }
    });
    for &t in &tags {
        assert_eq!(book.runs(t), 1);
    }
    let per_call = polls.load(Ordering::Relaxed) as f64 / tags.len() as f64;
    assert!(per_call <= 4.0, "{per_call} polls per call");

    // A call whose handler sleeps 50 ms on a worker thread.
    let slow = Arc::new(AtomicU64::new(0));
    let (c, p, t) = (client.clone(), slow.clone(), tag());
    let got = rt.block_on(async move { counted(c.slow_async(t, 50), &p).await });
    assert_eq!(got.unwrap(), 1);
    let n = slow.load(Ordering::Relaxed);
    assert!(n <= 4, "polled {n} times while its handler slept");
    assert_eq!(client.transport().in_flight(), (0, 0));
    drop(server);
}

#[test]
fn current_thread_runtime_drives_calls_through_the_reactor() {
    calls_without_spinning(&current_thread());
}

#[test]
fn multi_thread_runtime_drives_calls_through_the_reactor() {
    calls_without_spinning(&multi_thread());
}

#[test]
fn tasks_on_several_workers_share_one_client_through_loss() {
    let book = Book::default();
    let server = serve(&book);
    let proxy = FaultProxy::start(server.local_addr(), Faults::lossy(0.05, 0.05, 0.1), 7).unwrap();
    let client = Arc::new(LedgerClient::new(
        UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap(),
    ));
    let rt = multi_thread();
    let tags: Vec<Vec<u64>> = (0..4).map(|_| (0..100).map(|_| tag()).collect()).collect();
    let tasks: Vec<_> = tags
        .iter()
        .cloned()
        .map(|mine| {
            let c = client.clone();
            rt.spawn(async move {
                // 20 in flight per task, refilled in rounds.
                let mut ok = 0;
                for round in mine.chunks(20) {
                    let calls = round.iter().map(|&t| c.record_async(t, 1));
                    for r in futures::future::join_all(calls).await {
                        ok += u32::from(r.is_ok());
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u32 = rt.block_on(async {
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        ok
    });
    // Timers run on the driver task: lost requests and replies are retransmitted, well
    // before the calls' deadline (20 s).
    assert_eq!(ok, 400, "{ok} of 400 succeeded");
    assert!(book.twice().is_empty());
    assert!(proxy.counters().dropped > 0);
    assert_eq!(client.transport().in_flight(), (0, 0));
}

#[test]
fn a_client_outlives_its_runtime() {
    let book = Book::default();
    let server = serve(&book);
    let client = patient_client(server.local_addr());
    let (a, b) = (tag(), tag());
    {
        let rt = current_thread();
        assert_eq!(rt.block_on(client.record_async(a, 1)).unwrap(), 1);
        // The runtime goes, and its driver task with it.
    }
    // The crate's executor drives the link itself again.
    assert_eq!(block_on(client.record_async(b, 1)).unwrap(), 1);
    // A new runtime starts a new driver.
    let rt = current_thread();
    assert_eq!(rt.block_on(client.total_async()).unwrap(), 2);
    // Blocking calls and the crate's executor work inside a runtime too (the thread leads the
    // link itself: the driver task could not run while it blocks).
    rt.block_on(async {
        assert_eq!(client.record(tag(), 1).unwrap(), 1);
        assert_eq!(block_on(client.record_async(tag(), 1)).unwrap(), 1);
    });
    assert_eq!(book.runs(a) + book.runs(b), 2);
}
