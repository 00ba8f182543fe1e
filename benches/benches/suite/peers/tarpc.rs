//! tarpc as a peer of the suite: bincode over TCP (tarpc's serde transport), one connection
//! per measurement, reused for every call.
//!
//! Setup, the fastest this peer offers here:
//! - `TCP_NODELAY` on both ends, so a small frame leaves at once.
//! - Server: its own thread running a multi-thread tokio runtime. Given a cpu, one worker and
//!   every runtime thread pinned to it (two workers on one core would only take turns);
//!   without one, two unpinned workers. Each request runs on its connection's task (no spawn
//!   per request), which was the faster of the two in the throughput bench.
//! - Client: a current-thread runtime on the calling thread, the whole measured loop inside
//!   one `block_on`.
//! - Payloads are `bytes::Bytes` serialized through serde's bytes path (a length then the
//!   bytes, not a sequence of `u8` elements), so a request is not copied before encoding and
//!   the echo moves the received buffer back. The length-delimited frame limit is 16 MiB on
//!   both ends (the default is 8 MiB), so a 1 MiB payload fits with room to spare.
//!
//! Measured from `benches/benches/peers_check.rs`:
//!
//! ```text
//! cargo bench -p benches --bench peers_check
//! ```

use std::time::{Duration, Instant};

use ::tarpc::server::{BaseChannel, Channel as _};
use ::tarpc::tokio_serde::formats::Bincode;
use anyhow::Context as _;
use bytes::Bytes;
use futures::{StreamExt as _, future};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest frame either end accepts.
const MAX_FRAME: usize = 16 << 20;

/// A payload serialized as one byte string.
#[derive(Clone, Debug)]
struct Blob(Bytes);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BlobVisitor)
    }
}

struct BlobVisitor;

impl serde::de::Visitor<'_> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(Bytes::from(v)))
    }
}

/// The peer's interface: a null call and an echo.
#[::tarpc::service]
trait Peer {
    async fn null();
    async fn echo(payload: Blob) -> Blob;
}

#[derive(Clone)]
struct Handlers;

impl Peer for Handlers {
    async fn null(self, _: ::tarpc::context::Context) {}

    async fn echo(self, _: ::tarpc::context::Context, payload: Blob) -> Blob {
        payload
    }
}

pub use super::serving::Server;
use super::serving::{Ready, Stop, client_runtime, nanos};

/// Starts the tarpc server on loopback, its runtime's threads pinned to `server_cpu` if given.
pub fn start(server_cpu: Option<usize>) -> anyhow::Result<Server> {
    Server::start("tarpc", server_cpu, serve)
}

/// The server: listens, says where, serves until `stop`.
fn serve(runtime: &tokio::runtime::Runtime, ready: &Ready, stop: Stop) -> anyhow::Result<()> {
    runtime.block_on(async move {
        let mut listener =
            match ::tarpc::serde_transport::tcp::listen(("127.0.0.1", 0), Bincode::default).await {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready.send(Err(anyhow::Error::from(e).context("tarpc listen")));
                    return Ok(());
                }
            };
        listener.config_mut().max_frame_length(MAX_FRAME);
        let _ = ready.send(Ok(listener.local_addr()));
        let serve = listener
            .filter_map(|r| future::ready(r.ok()))
            .for_each(|transport| {
                let _ = transport.get_ref().set_nodelay(true);
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(channel.execute(Handlers.serve()).for_each(|call| call));
                future::ready(())
            });
        tokio::select! {
            () = serve => {}
            _ = stop => {}
        }
        anyhow::Ok(())
    })
}

/// A current-thread runtime and a client connected to `server` on it.
fn connect(server: &Server) -> anyhow::Result<(tokio::runtime::Runtime, PeerClient)> {
    let runtime = client_runtime()?;
    let client = runtime.block_on(async {
        let mut connect = ::tarpc::serde_transport::tcp::connect(server.addr, Bincode::default);
        connect.config_mut().max_frame_length(MAX_FRAME);
        let transport = connect.await.context("tarpc connect")?;
        transport.get_ref().set_nodelay(true)?;
        anyhow::Ok(PeerClient::new(::tarpc::client::Config::default(), transport).spawn())
    })?;
    Ok((runtime, client))
}

/// Closed loop: one call at a time from the calling thread, `payload` bytes echoed (0: the
/// null call, with no argument and no result). Returns one round-trip time in ns per measured
/// call, after `warmup` unmeasured calls. A round trip is timed from before the call (the
/// request's payload is a clone of a `Bytes`, a reference count) to its checked result.
pub fn round_trips(
    server: &Server,
    payload: usize,
    warmup: u64,
    iterations: u64,
) -> anyhow::Result<Vec<u64>> {
    let (runtime, client) = connect(server)?;
    let data = Bytes::from((0..payload).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let times = runtime.block_on(async {
        let mut times = Vec::with_capacity(usize::try_from(iterations).unwrap_or(0));
        for i in 0..warmup + iterations {
            let start = Instant::now();
            if payload == 0 {
                client
                    .null(::tarpc::context::current())
                    .await
                    .context("tarpc null call")?;
            } else {
                let echoed = client
                    .echo(::tarpc::context::current(), Blob(data.clone()))
                    .await
                    .context("tarpc echo call")?;
                anyhow::ensure!(
                    echoed.0.len() == payload,
                    "echo of {payload} bytes came back with {}",
                    echoed.0.len()
                );
            }
            let elapsed = start.elapsed();
            if i >= warmup {
                times.push(nanos(elapsed));
            }
        }
        anyhow::Ok(times)
    })?;
    drop(client);
    drop(runtime);
    Ok(times)
}

/// `in_flight` concurrent null calls from one current-thread runtime on the calling thread
/// for `seconds` (after unmeasured warm-up of a fifth of that, at most a second): each of
/// `in_flight` callers makes one call after another. Returns the calls completed, the wall
/// seconds, the CPU time of the whole process (client and server) over the measured run,
/// and every measured call's latency in ns.
pub fn throughput(
    server: &Server,
    in_flight: usize,
    seconds: f64,
) -> anyhow::Result<(u64, f64, Duration, Vec<u64>)> {
    anyhow::ensure!(in_flight > 0, "no calls in flight");
    let (runtime, client) = connect(server)?;
    let run = |d: Duration| -> anyhow::Result<Vec<u64>> {
        runtime.block_on(async {
            let end = Instant::now() + d;
            let callers = (0..in_flight).map(|_| {
                let client = client.clone();
                async move {
                    let mut times = Vec::new();
                    while Instant::now() < end {
                        let start = Instant::now();
                        client
                            .null(::tarpc::context::current())
                            .await
                            .context("tarpc null call")?;
                        times.push(nanos(start.elapsed()));
                    }
                    anyhow::Ok(times)
                }
            });
            let mut all = Vec::new();
            for times in future::join_all(callers).await {
                all.extend(times?);
            }
            Ok(all)
        })
    };
    run(Duration::from_secs_f64((seconds / 5.0).min(1.0)))?;
    let (cpu0, t0) = (examples::cpu_time(), Instant::now());
    let times = run(Duration::from_secs_f64(seconds))?;
    let (wall, cpu) = (t0.elapsed(), examples::cpu_time() - cpu0);
    drop(client);
    drop(runtime);
    Ok((times.len() as u64, wall.as_secs_f64(), cpu, times))
}
