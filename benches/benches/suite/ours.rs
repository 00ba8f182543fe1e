//! Our cases: a server and a client of the framework over each transport, in each poll
//! strategy, plain or authenticated; closed-loop blocking calls, pipelined calls from one
//! thread, and calls sent at a fixed rate by a spinning pacer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rpc_core::service::{AsyncTransport, Transport};
use rpc_core::{AuthKey, CallError};
use rpc_transport::shm::{ShmClient, ShmClientConfig, ShmServer, ShmServerConfig};
use rpc_transport::udp::{Io, UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};
use rpc_transport::uring::UringConfig;
use rpc_transport::{Completions, PollStrategy};

use crate::{Budget, Sample, closed_loop, hist, measured};

use examples::{BenchClient, BenchServer, Handlers};

/// A transport of the framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Udp,
    Uring,
    Shm,
}

impl Net {
    pub fn label(self) -> &'static str {
        match self {
            Net::Udp => "udp",
            Net::Uring => "io_uring",
            Net::Shm => "shm",
        }
    }
}

/// How a case's client and server are made.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub net: Net,
    pub poll: PollStrategy,
    pub auth: bool,
}

/// A key both ends of an authenticated case share.
fn key(auth: bool) -> Option<AuthKey> {
    auth.then(|| AuthKey::from_bytes([0x42; 32]))
}

/// Runs `f` with a client connected to a fresh server of `setup`, then shuts both down.
/// Generic over the client's transport through `With`.
fn with_client<W: With>(setup: Setup, window: usize, cpu: Option<usize>, w: W) -> W::Out {
    match setup.net {
        Net::Udp | Net::Uring => {
            let io = if setup.net == Net::Uring {
                Io::Uring(UringConfig::default())
            } else {
                Io::Sockets
            };
            let mut sc = UdpServerConfig::loopback()
                .poll(setup.poll)
                .pin(cpu.into_iter().collect())
                .io(io.clone());
            sc.protocol.auth = key(setup.auth);
            let server = match UdpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), sc)
                .and_then(|s| s.serve(BenchServer::new(Handlers)))
            {
                Ok(s) => s,
                Err(e) => return W::failed(e.into()),
            };
            let mut cc = UdpClientConfig::loopback().poll(setup.poll).io(io);
            cc.protocol.auth = key(setup.auth);
            cc.protocol.window = window.max(cc.protocol.window);
            let client = match UdpClient::connect(server.local_addr(), cc) {
                Ok(c) => BenchClient::new(c),
                Err(e) => return W::failed(e.into()),
            };
            let out = w.run(&client);
            drop(client);
            server.shutdown();
            out
        }
        Net::Shm => {
            let dir = shm_dir();
            let socket = dir.join("server.sock");
            let mut sc = ShmServerConfig::default()
                .poll(setup.poll)
                .pin(cpu.into_iter().collect());
            sc.protocol.auth = key(setup.auth);
            let server = match std::fs::create_dir_all(&dir)
                .and_then(|()| ShmServer::bind(&socket, sc))
                .and_then(|s| s.serve(BenchServer::new(Handlers)))
            {
                Ok(s) => s,
                Err(e) => return W::failed(e.into()),
            };
            let mut cc = ShmClientConfig::default().poll(setup.poll);
            cc.protocol.auth = key(setup.auth);
            cc.protocol.window = window.max(cc.protocol.window);
            let client = match ShmClient::connect(&socket, cc) {
                Ok(c) => BenchClient::new(c),
                Err(e) => return W::failed(e.into()),
            };
            let out = w.run(&client);
            drop(client);
            server.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
            out
        }
    }
}

/// A scratch directory for one shared-memory server's socket.
fn shm_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "rpc-suite-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Something to run with a client of any transport.
trait With {
    type Out;
    fn run<T: Transport + AsyncTransport>(self, client: &BenchClient<T>) -> Self::Out;
    fn failed(e: anyhow::Error) -> Self::Out;
}

/// Closed loop: one blocking call at a time, a null call (`payload` None) or an echo.
pub fn latency(setup: Setup, payload: Option<usize>, b: &Budget) -> anyhow::Result<Sample> {
    struct L<'a>(Option<usize>, &'a Budget);
    impl With for L<'_> {
        type Out = anyhow::Result<Sample>;
        fn run<T: Transport + AsyncTransport>(self, client: &BenchClient<T>) -> Self::Out {
            match self.0 {
                None => closed_loop(self.1, || Ok(client.null()?)),
                Some(n) => {
                    let data = vec![0xa5u8; n];
                    closed_loop(self.1, || {
                        let reply = client.echo(&data)?;
                        anyhow::ensure!(reply.len() == n, "an echo of another length");
                        Ok(())
                    })
                }
            }
        }
        fn failed(e: anyhow::Error) -> Self::Out {
            Err(e)
        }
    }
    with_client(setup, 0, b.server_cpu, L(payload, b))
}

/// `n` null calls kept in flight from this thread.
pub fn pipelined(setup: Setup, n: usize, b: &Budget) -> anyhow::Result<Sample> {
    struct P<'a>(usize, &'a Budget);
    impl With for P<'_> {
        type Out = anyhow::Result<Sample>;
        fn run<T: Transport + AsyncTransport>(self, client: &BenchClient<T>) -> Self::Out {
            let n = self.0;
            let run = |d: Duration, h: &mut hdrhistogram::Histogram<u64>| -> anyhow::Result<u64> {
                let began = Instant::now();
                let mut starts = Starts::new(n, began);
                // Indexes count from 0 in the order of the futures.
                let mut pending = Completions::new((0..n).map(|_| client.null_async()));
                (0..n).for_each(|i| starts.start(i, began));
                let end = began + d;
                let mut calls = 0;
                while let Some((i, r)) = pending.next() {
                    r?;
                    calls += 1;
                    // One reading: this call's end, and the start of the one that replaces it.
                    let now = Instant::now();
                    if let Some(sent) = starts.end(i) {
                        h.saturating_record(now.saturating_duration_since(sent).as_nanos() as u64);
                    }
                    if now < end {
                        starts.start(pending.push(client.null_async()), now);
                    }
                }
                Ok(calls)
            };
            run(self.1.warmup(), &mut hist())?;
            measured(|h| run(self.1.duration(), h))
        }
        fn failed(e: anyhow::Error) -> Self::Out {
            Err(e)
        }
    }
    with_client(setup, n, b.server_cpu, P(n, b))
}

/// When each call kept in flight started, by its index in the `Completions` (so that the
/// measured futures are the calls themselves, with no wrapper): a ring of a few windows' worth,
/// and a map for a call still in flight when its entry of the ring is wanted again.
struct Starts {
    ring: Vec<(usize, Instant)>,
    late: std::collections::HashMap<usize, Instant>,
}

impl Starts {
    const FREE: usize = usize::MAX;

    fn new(window: usize, now: Instant) -> Self {
        Self {
            ring: vec![(Self::FREE, now); (4 * window).next_power_of_two()],
            late: std::collections::HashMap::with_capacity(window),
        }
    }

    fn start(&mut self, index: usize, at: Instant) {
        let k = index & (self.ring.len() - 1);
        let (old, t) = std::mem::replace(&mut self.ring[k], (index, at));
        if old != Self::FREE {
            self.late.insert(old, t);
        }
    }

    fn end(&mut self, index: usize) -> Option<Instant> {
        let k = index & (self.ring.len() - 1);
        match self.ring[k] {
            (i, t) if i == index => {
                self.ring[k].0 = Self::FREE;
                Some(t)
            }
            _ => self.late.remove(&index),
        }
    }
}

/// A null call with the time it was meant to be sent.
fn timed<T: AsyncTransport>(
    client: &BenchClient<T>,
    at: Instant,
) -> impl Future<Output = (Instant, Result<(), CallError>)> + '_ {
    let call = client.null_async();
    async move { (at, call.await) }
}

/// The most calls an open-loop case keeps in flight.
pub const OPEN_LOOP_WINDOW: usize = 256;

/// Open loop: null calls sent at `rate` per second on a fixed schedule by a spinning pacer,
/// each call's latency measured from the time it was scheduled, so that a stall delays the
/// calls behind it in the measurement as it does for their callers (no coordinated
/// omission). Calls wait for a free slot when 256 are in flight; calls still unsent when the
/// run has lasted three times its length are counted at the latency they have by then.
pub fn open_loop(setup: Setup, rate: f64, b: &Budget) -> anyhow::Result<Sample> {
    struct O<'a>(f64, &'a Budget);
    impl With for O<'_> {
        type Out = anyhow::Result<Sample>;
        fn run<T: Transport + AsyncTransport>(self, client: &BenchClient<T>) -> Self::Out {
            let interval = Duration::from_secs_f64(1.0 / self.0);
            let run = |d: Duration, h: &mut hdrhistogram::Histogram<u64>| -> anyhow::Result<u64> {
                let mut pending = Completions::new(std::iter::empty());
                let start = Instant::now();
                let (end, cut) = (start + d, start + d * 3);
                let mut next = start;
                let mut calls = 0;
                loop {
                    let now = Instant::now();
                    while next <= now && next < end && pending.len() < OPEN_LOOP_WINDOW {
                        pending.push(timed(client, next));
                        next += interval;
                    }
                    if let Some((_, (at, r))) = pending.try_next() {
                        r?;
                        calls += 1;
                        h.saturating_record(at.elapsed().as_nanos() as u64);
                    }
                    if next >= end && pending.is_empty() {
                        return Ok(calls);
                    }
                    if now >= cut {
                        // Overloaded: what was never sent counts at its lateness so far.
                        while next < end {
                            h.saturating_record((now - next).as_nanos() as u64);
                            calls += 1;
                            next += interval;
                        }
                        while let Some((_, (at, r))) = pending.next() {
                            r?;
                            calls += 1;
                            h.saturating_record(at.elapsed().as_nanos() as u64);
                        }
                        return Ok(calls);
                    }
                }
            };
            run(self.1.warmup(), &mut hist())?;
            measured(|h| run(self.1.duration(), h))
        }
        fn failed(e: anyhow::Error) -> Self::Out {
            Err(e)
        }
    }
    with_client(setup, OPEN_LOOP_WINDOW, b.server_cpu, O(rate, b))
}
