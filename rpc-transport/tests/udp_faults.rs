//! Real sockets with faults: loss, duplication and reordering through the fault-injecting
//! proxy, a server restart, and a flood of garbage.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{
    Book, LedgerClient, LedgerServer, client_config, localhost, park, pattern, server_config, tag,
};
use rpc_core::CallError;
use rpc_core::service::CallOptions;
use rpc_transport::proxy::{FaultProxy, Faults, Flood};
use rpc_transport::udp::{UdpClient, UdpServer};

fn faults(loss: f64, duplicate: f64, reorder: f64) -> Faults {
    Faults {
        reorder_delay: Duration::from_millis(2),
        ..Faults::lossy(loss, duplicate, reorder)
    }
}

#[test]
fn ten_percent_loss_with_duplication_and_reordering() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr(), faults(0.10, 0.05, 0.05), 42).unwrap();
    let shared = UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap();
    let mut handles = Vec::new();
    for t in 0..3u64 {
        // Two threads share a client; the third has its own.
        let transport = if t < 2 {
            shared.clone()
        } else {
            UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap()
        };
        let book = book.clone();
        handles.push(thread::spawn(move || {
            let client = LedgerClient::new(transport);
            for i in 0..200u64 {
                let t = tag();
                // Every call completes, and its reply says it ran exactly once.
                assert_eq!(client.record(t, i).unwrap(), 1, "call {t}");
                assert_eq!(book.runs(t), 1);
                let data = pattern((i as usize * 37) % 4000, i as u8);
                assert_eq!(client.echo(tag(), &data).unwrap(), data);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(book.executions(), 3 * 200 * 2);
    assert!(
        book.twice().is_empty(),
        "executed twice: {:?}",
        book.twice()
    );
    let p = proxy.counters();
    assert!(
        p.dropped > 0 && p.duplicated > 0 && p.reordered > 0,
        "{p:?}"
    );
    let s = shared.stats();
    assert!(s.retransmissions > 0, "{s:?}");
    let counters = server.shutdown();
    // Duplicated requests met their call either running or done: never executed again.
    assert!(
        counters.answered_from_cache + counters.dropped_executing > 0,
        "{counters:?}"
    );
}

#[test]
fn large_messages_under_loss() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr(), faults(0.05, 0.02, 0.02), 7).unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(proxy.local_addr(), client_config(park())).unwrap());
    for len in [1 << 20, 16 << 20] {
        let data = pattern(len, 5);
        assert_eq!(
            client.echo(tag(), &data).unwrap(),
            data,
            "{len}-byte argument and reply"
        );
        assert_eq!(
            client.blob(tag(), len as u64, 6).unwrap(),
            pattern(len, 6),
            "{len}-byte reply"
        );
    }
    assert!(book.twice().is_empty());
    eprintln!(
        "large messages: proxy {:?}, client {:?}",
        proxy.counters(),
        client.transport().stats()
    );
    assert!(proxy.counters().dropped > 0);
    assert_eq!(book.executions(), 4);
}

#[test]
fn a_server_restart_in_the_middle_of_a_run() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
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
            let (mut ok, mut unknown) = (0u64, 0u64);
            let options = CallOptions::new().timeout(Duration::from_secs(2));
            while !stop.load(Ordering::Relaxed) || ok < 400 {
                let t = tag();
                match client.with(options).record(t, 1) {
                    Ok(reply) => {
                        assert_eq!(reply.value, 1, "call {t} ran before");
                        assert_eq!(book.runs(t), 1);
                        ok += 1;
                    }
                    // The session was lost with the server: the call may or may not have run,
                    // and it will not run again.
                    Err(CallError::OutcomeUnknown | CallError::TimedOut) => {
                        assert!(book.runs(t) <= 1);
                        unknown += 1;
                    }
                    // Sent while the old server drained: refused, not executed.
                    Err(CallError::ShuttingDown) => assert_eq!(book.runs(t), 0),
                    Err(e) => panic!("call {t}: unexpected {e:?}"),
                }
            }
            (ok, unknown, client)
        })
    };
    // Let calls flow, then restart the server on the same address, keeping its state.
    while book.executions() < 200 {
        thread::yield_now();
    }
    let before = server.shutdown();
    let server = UdpServer::bind(addr, server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let executed_before = book.executions();
    while book.executions() < executed_before + 200 {
        thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, unknown, client) = caller.join().unwrap();
    assert!(
        book.twice().is_empty(),
        "executed twice: {:?}",
        book.twice()
    );
    assert!(
        ok >= 400 && before.executed >= 200,
        "ok {ok}, unknown {unknown}"
    );
    let stats = client.transport().stats();
    assert_eq!(
        stats.sessions_opened, 2,
        "a new session with the new server: {stats:?}"
    );
    assert!(server.shutdown().executed >= 200);
}

#[test]
fn a_garbage_flood_does_not_stop_real_calls() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let flood = Flood::start(server.local_addr(), 99, Duration::ZERO).unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    for i in 0..500u64 {
        assert_eq!(client.record(tag(), i).unwrap(), 1);
    }
    let sent = flood.sent();
    drop(flood);
    let counters = server.shutdown();
    assert!(sent > 1000, "the flood sent {sent}");
    assert!(counters.malformed > 0, "{counters:?}");
    assert_eq!(counters.executed, 500);
    assert!(book.twice().is_empty());
}
