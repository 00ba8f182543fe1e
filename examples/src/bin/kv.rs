//! A key-value store served over UDP, and a client calling it: the smallest complete use of
//! the framework.
//!
//! ```text
//! cargo run --release -p examples --bin kv
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rpc_core::service::{CallContext, CallOptions};
use rpc_core::{Marshal, rpc};
use rpc_transport::udp::{UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};

/// What the store holds.
#[derive(Marshal, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of values stored.
    pub bytes: u64,
}

/// A key-value store.
#[rpc]
pub trait Kv {
    /// The value under `key`. Reading twice is harmless, so retransmissions may run it again.
    #[rpc(idempotent)]
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value` under `key`; whether the key is new. Runs at most once per call.
    fn put(&self, key: &[u8], value: &[u8]) -> bool;
    /// What the store holds.
    fn stats(&self) -> Stats;
    /// Who is calling, as the server sees it.
    fn whoami(&self, ctx: &CallContext) -> u64;
}

#[derive(Default)]
struct Store {
    map: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Kv for Store {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_vec(), value.to_vec())
            .is_none()
    }
    fn stats(&self) -> Stats {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            keys: map.len() as u64,
            bytes: map.values().map(|v| v.len() as u64).sum(),
        }
    }
    fn whoami(&self, ctx: &CallContext) -> u64 {
        ctx.client_id
    }
}

fn main() -> anyhow::Result<()> {
    let server = UdpServer::bind("127.0.0.1:0".parse()?, UdpServerConfig::default())?
        .serve(KvServer::new(Store::default()))?;
    println!("serving on {}", server.local_addr());

    let kv = KvClient::new(UdpClient::connect(
        server.local_addr(),
        UdpClientConfig::default(),
    )?);
    println!("put(answer, 42) -> new key: {}", kv.put(b"answer", b"42")?);
    println!("put(answer, 43) -> new key: {}", kv.put(b"answer", b"43")?);
    let value = kv.get(b"answer")?;
    println!(
        "get(answer)     -> {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    println!("get(question)   -> {:?}", kv.get(b"question")?);
    println!("stats()         -> {:?}", kv.stats()?);

    // One call with its own timeout, and the Lamport stamps of its request and reply.
    let reply = kv
        .with(CallOptions::new().timeout(Duration::from_millis(100)))
        .whoami()?;
    println!(
        "whoami()        -> client {:#x}; request stamped {}, reply stamped {}",
        reply.value, reply.request_stamp, reply.reply_stamp
    );

    let counters = server.shutdown();
    println!(
        "server: {} calls executed, {} sessions",
        counters.executed, counters.sessions
    );
    Ok(())
}
