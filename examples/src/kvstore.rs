//! A key-value store: the quick-start template for a service of your own.
//!
//! Copy this module, rename the trait and its methods, and keep the shape:
//!
//! - arguments as borrowed slices (`&[u8]`): the client gathers them from the caller's memory
//!   and the server decodes them by borrowing from its receive buffer, so neither end copies
//!   them on the way;
//! - values kept as [`Bytes`], so a `get` reply refers to the stored value itself (a reference
//!   count, not a copy) while the server sends it;
//! - `#[rpc(idempotent)]` on reads (a lost reply is recovered by reading again), and the
//!   default at-most-once execution on writes (the server keeps the reply of a `put` to answer
//!   its retransmissions).

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use rpc_core::{Marshal, rpc};

/// What the store holds.
#[derive(Marshal, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of values stored.
    pub bytes: u64,
    /// Writes executed (`put` and `delete`): each call once, however often it was sent.
    pub writes: u64,
}

/// A key-value store.
#[rpc]
pub trait KvStore {
    /// The value under `key`, if any.
    #[rpc(idempotent)]
    fn get(&self, key: &[u8]) -> Option<Bytes>;
    /// Stores `value` under `key`; returns the value it replaced, if any.
    fn put(&self, key: &[u8], value: &[u8]) -> Option<Bytes>;
    /// Removes `key`; whether it was there.
    fn delete(&self, key: &[u8]) -> bool;
    /// What the store holds.
    #[rpc(idempotent)]
    fn stats(&self) -> StoreStats;
}

/// The store: a map behind a reader-writer lock (reads share it).
#[derive(Debug, Default)]
pub struct Store {
    map: RwLock<HashMap<Box<[u8]>, Bytes>>,
    writes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvStore for Store {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        // A clone of `Bytes` shares the stored buffer: the reply gathers from it.
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Option<Bytes> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The one copy of a put: out of the receive buffer, into the store.
        let value = Bytes::copy_from_slice(value);
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into(), value)
    }

    fn delete(&self, key: &[u8]) -> bool {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .is_some()
    }

    fn stats(&self) -> StoreStats {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        StoreStats {
            keys: map.len() as u64,
            bytes: map.values().map(|v| v.len() as u64).sum(),
            writes: self.writes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// What [`exercise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exercised {
    /// Keys written (and read back) through the pipeline.
    pub keys: usize,
    /// Calls made in all.
    pub calls: usize,
}

/// A key of the exercise.
pub fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// The value the exercise stores under `key(i)`: `len` bytes made from `i`.
pub fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Calls a store in every style a client has, and checks every answer: blocking calls, one
/// future on the spinning executor, `keys` puts and then their reads pipelined 64 at a time,
/// and the first 16 reads again all at once. The keys are this exercise's own (`prefix` keeps two apart).
pub fn exercise<T>(
    kv: &KvStoreClient<T>,
    prefix: &str,
    keys: usize,
    value_len: usize,
) -> anyhow::Result<Exercised>
where
    T: rpc_core::service::Transport + rpc_core::service::AsyncTransport,
{
    use anyhow::ensure;
    use rpc_transport::{Completions, block_on, join_all};

    let mut calls = 0;
    // Blocking calls.
    let hello = format!("{prefix}hello").into_bytes();
    ensure!(kv.put(&hello, b"world")?.is_none(), "fresh key had a value");
    ensure!(
        kv.put(&hello, b"again")?.as_deref() == Some(&b"world"[..]),
        "put did not return the value it replaced"
    );
    ensure!(kv.get(&hello)?.as_deref() == Some(&b"again"[..]));
    ensure!(kv.delete(&hello)?, "delete missed the key");
    ensure!(!kv.delete(&hello)?, "delete found a deleted key");
    ensure!(kv.get(&hello)?.is_none());
    calls += 6;
    // One future.
    ensure!(block_on(kv.get_async(&hello))?.is_none());
    calls += 1;

    // A pipeline of puts: 64 in flight, refilled as they end.
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|i| [prefix.as_bytes(), &key(i)].concat())
        .collect();
    let values: Vec<Vec<u8>> = (0..keys).map(|i| value(i, value_len)).collect();
    let window = 64.min(keys);
    let mut pending = Completions::new((0..window).map(|i| kv.put_async(&names[i], &values[i])));
    let mut next = window;
    while let Some((i, replaced)) = pending.next() {
        ensure!(replaced?.is_none(), "key {i} was there before its put");
        calls += 1;
        if next < keys {
            pending.push(kv.put_async(&names[next], &values[next]));
            next += 1;
        }
    }
    // The reads, pipelined the same way.
    // (Outputs are numbered in the order the futures were pushed: here, the key's index.)
    let mut pending = Completions::new((0..window).map(|i| kv.get_async(&names[i])));
    let mut next = window;
    while let Some((i, got)) = pending.next() {
        ensure!(
            got?.as_deref() == Some(&values[i][..]),
            "key {i} read back wrong"
        );
        calls += 1;
        if next < keys {
            pending.push(kv.get_async(&names[next]));
            next += 1;
        }
    }
    // A few reads at once, results in order.
    let few = keys.min(16);
    for (i, got) in join_all(names[..few].iter().map(|k| kv.get_async(k)))
        .into_iter()
        .enumerate()
    {
        ensure!(
            got?.as_deref() == Some(&values[i][..]),
            "key {i} read back wrong"
        );
        calls += 1;
    }
    Ok(Exercised { keys, calls })
}
