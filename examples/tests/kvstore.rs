//! The key-value store: every client style, through loss, duplication and reordering, with
//! each write executed once.

use examples::kvstore::{KvStoreClient, KvStoreServer, Store, exercise, key, value};
use examples::mesh;
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::UdpClient;

#[test]
fn every_client_style_reads_back_what_it_wrote() {
    let server =
        rpc_transport::udp::UdpServer::bind("127.0.0.1:0".parse().unwrap(), mesh::server_config())
            .unwrap()
            .serve(KvStoreServer::new(Store::new()))
            .unwrap();
    let kv =
        KvStoreClient::new(UdpClient::connect(server.local_addr(), mesh::client_config()).unwrap());
    let done = exercise(&kv, "a/", 500, 100).unwrap();
    assert_eq!(done.calls, 7 + 2 * 500 + 16);
    let stats = kv.stats().unwrap();
    assert_eq!(stats.keys, 500);
    assert_eq!(stats.bytes, 500 * 100);
    // 2 puts and 2 deletes of the blocking part, 500 pipelined puts.
    assert_eq!(stats.writes, 504);
    // A large value goes in fragments and comes back whole.
    let big = value(7, 200_000);
    assert!(kv.put(b"big", &big).unwrap().is_none());
    assert_eq!(kv.get(b"big").unwrap().as_deref(), Some(&big[..]));
}

#[test]
fn writes_run_once_through_a_faulty_network() {
    let server =
        rpc_transport::udp::UdpServer::bind("127.0.0.1:0".parse().unwrap(), mesh::server_config())
            .unwrap()
            .serve(KvStoreServer::new(Store::new()))
            .unwrap();
    for seed in 0..3 {
        let proxy =
            FaultProxy::start(server.local_addr(), Faults::lossy(0.05, 0.1, 0.2), seed).unwrap();
        let kv = KvStoreClient::new(
            UdpClient::connect(proxy.local_addr(), mesh::client_config()).unwrap(),
        );
        let before = kv.stats().unwrap().writes;
        let prefix = format!("{seed}/");
        exercise(&kv, &prefix, 300, 64).unwrap();
        // Duplicated and retransmitted requests did not run a write twice: the pipelined
        // puts all found fresh keys (checked by `exercise`) and the count is exact.
        assert_eq!(kv.stats().unwrap().writes - before, 304);
        assert!(proxy.counters().dropped > 0 && proxy.counters().duplicated > 0);
        let k = [prefix.as_bytes(), &key(299)].concat();
        assert_eq!(kv.get(&k).unwrap().as_deref(), Some(&value(299, 64)[..]));
    }
}
