//! A generated service over real UDP sockets on 127.0.0.1.

mod common;

use std::thread;
use std::time::Duration;

use common::{
    Book, LedgerClient, LedgerServer, client_config, localhost, park, pattern, server_config, tag,
};
use rpc_core::CallError;
use rpc_core::service::CallOptions;
use rpc_transport::PollStrategy;
use rpc_transport::udp::{UdpClient, UdpServer};

#[test]
fn every_poll_strategy_end_to_end() {
    for poll in [PollStrategy::Spin, park(), PollStrategy::Block] {
        let book = Book::default();
        let server = UdpServer::bind(localhost(), server_config(poll))
            .unwrap()
            .serve(LedgerServer::new(book.clone()))
            .unwrap();
        let client = LedgerClient::new(
            UdpClient::connect(server.local_addr(), client_config(poll)).unwrap(),
        );
        for i in 0..200u64 {
            let t = tag();
            assert_eq!(
                client.record(t, i).unwrap(),
                1,
                "{poll:?}: first run of the call"
            );
            let data = pattern((i * 97 % 3000) as usize, i as u8);
            assert_eq!(client.echo(tag(), &data).unwrap(), data);
        }
        assert_eq!(client.total().unwrap(), (0..200).sum::<u64>());
        // Context: the handler sees the caller's id and Lamport stamps in causal order, and
        // the reply's stamp exceeds the request's.
        let reply = client.with(CallOptions::new()).whoami().unwrap();
        let (caller, request_time, received_time) = reply.value;
        assert_eq!(caller, client.transport().stats().calls.min(1) * caller);
        assert!(received_time > request_time);
        assert!(reply.reply_stamp.time > received_time);
        assert_eq!(reply.request_stamp.time, request_time);
        // Blocking handlers run on the worker pool.
        assert_eq!(client.slow(tag(), 2).unwrap(), 1);
        assert!(book.twice().is_empty());
        let counters = server.shutdown();
        assert_eq!(counters.executed, 200 * 2 + 3);
        assert_eq!(counters.malformed, 0);
    }
}

#[test]
fn several_threads_share_a_client_and_several_clients_share_a_server() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let shared =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    let mut handles = Vec::new();
    for t in 0..4u8 {
        let client = LedgerClient::new(shared.transport().clone());
        handles.push(thread::spawn(move || {
            for i in 0..300u64 {
                let data = pattern((i as usize * 13) % 2000, t);
                assert_eq!(client.echo(tag(), &data).unwrap(), data);
            }
        }));
    }
    for c in 0..3u8 {
        let addr = server.local_addr();
        handles.push(thread::spawn(move || {
            let client =
                LedgerClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
            for i in 0..300u64 {
                let data = pattern((i as usize * 7) % 5000, c ^ 0x55);
                assert_eq!(client.echo(tag(), &data).unwrap(), data);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(book.executions(), 7 * 300);
    assert!(book.twice().is_empty());
    let counters = server.shutdown();
    assert_eq!(counters.sessions, 4);
}

/// Threads that share a client race for the slots of its call table: a thread that finished
/// quickly starts calls whose slots are those of calls whose waiters have their reply but
/// have not woken to collect it. Many rounds, so that the race is met.
#[test]
fn threads_sharing_a_client_always_collect_their_own_replies() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let mut config = client_config(park());
    config.protocol.window = 8;
    for _ in 0..10 {
        let shared = UdpClient::connect(server.local_addr(), config.clone()).unwrap();
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let client = LedgerClient::new(shared.clone());
                thread::spawn(move || {
                    for i in 0..200u64 {
                        let data = (t << 32 | i).to_le_bytes();
                        assert_eq!(client.echo(tag(), &data).unwrap(), data);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    assert_eq!(book.executions(), 10 * 4 * 200);
    assert!(book.twice().is_empty());
}

#[test]
fn one_and_sixteen_mebibyte_arguments_and_replies() {
    let book = Book::default();
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    for len in [1 << 20, 16 << 20] {
        let data = pattern(len, 3);
        assert_eq!(
            client.echo(tag(), &data).unwrap(),
            data,
            "{len}-byte argument and reply"
        );
        assert_eq!(
            client.blob(tag(), len as u64, 9).unwrap(),
            pattern(len, 9),
            "{len}-byte reply"
        );
    }
    assert!(book.twice().is_empty());
    drop(server);
}

#[test]
fn a_message_over_the_limit_is_refused_before_sending() {
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(Book::default()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    let data = vec![0u8; (32 << 20) + 1];
    assert!(matches!(
        client.echo(tag(), &data),
        Err(CallError::MessageTooLarge { .. })
    ));
    assert_eq!(server.stats().executed, 0);
}

#[test]
fn a_call_to_a_missing_server_times_out_by_its_deadline() {
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(Book::default()))
        .unwrap();
    let client =
        LedgerClient::new(UdpClient::connect(server.local_addr(), client_config(park())).unwrap());
    drop(server);
    let err = client
        .with(CallOptions::new().timeout(Duration::from_millis(50)))
        .record(tag(), 1)
        .unwrap_err();
    assert_eq!(err, CallError::TimedOut);
}

#[test]
fn several_receive_threads_share_the_port() {
    let book = Book::default();
    let mut config = server_config(park());
    config.receivers = 3;
    let server = UdpServer::bind(localhost(), config)
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    let addr = server.local_addr();
    let handles: Vec<_> = (0..6u8)
        .map(|c| {
            thread::spawn(move || {
                let client =
                    LedgerClient::new(UdpClient::connect(addr, client_config(park())).unwrap());
                for i in 0..100u64 {
                    let data = pattern((i as usize * 31) % 3000, c);
                    assert_eq!(client.echo(tag(), &data).unwrap(), data);
                }
                assert_eq!(client.transport().stats().sessions_opened, 1);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(book.executions(), 600);
    assert!(book.twice().is_empty());
    let counters = server.shutdown();
    // Each client's session lives on the one receive thread its address hashes to.
    assert_eq!((counters.sessions, counters.executed), (6, 600));
}

#[test]
fn a_retry_limit_ends_a_call_before_its_deadline() {
    let server = UdpServer::bind(localhost(), server_config(park()))
        .unwrap()
        .serve(LedgerServer::new(Book::default()))
        .unwrap();
    let mut config = client_config(park());
    config.protocol.max_retransmissions = 2;
    let client = LedgerClient::new(UdpClient::connect(server.local_addr(), config).unwrap());
    drop(server);
    // The default deadline is 20 s; three sends 2 + 4 + 8 ms apart end the call long before.
    let err = client.record(tag(), 1).unwrap_err();
    assert_eq!(err, CallError::TimedOut);
    let stats = client.transport().stats();
    assert_eq!((stats.retransmissions, stats.timeouts), (2, 1));
}
