//! Throughput on loopback: calls per second, CPU time per call and latency, with 1, 8, 64 and
//! 256 null calls in flight from one client thread, blocking calls from threads sharing a
//! client, tarpc with 64 concurrent calls on a current-thread runtime, and the raw floor: a
//! window of 32 datagrams kept in flight with `sendmmsg` and `recvmmsg` against an echo that
//! answers in batches. Client on cpu 0, server on cpu 1; the cases run one after another,
//! in one process, so their ratios are of one spell of the host.
//!
//! ```text
//! cargo bench -p benches --bench throughput -- --seconds 3
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use examples::{CountingAlloc, allocations, cpu_time};
use hdrhistogram::Histogram;
use rpc_core::rpc;
use rpc_transport::udp::{Io, UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};
use rpc_transport::uring::UringConfig;
use rpc_transport::{Completions, PollStrategy};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(about = "Calls per second and CPU per call, against the raw mmsg window, on loopback")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Seconds measured per case.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Cases to run: raw, tarpc, pipelined, blocking.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "raw,tarpc,pipelined,blocking"
    )]
    cases: Vec<String>,
    /// Threads making blocking calls through one client.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    threads: Vec<usize>,
    /// Calls in flight from one thread.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    in_flight: Vec<usize>,
}

/// The benchmark's interface.
#[rpc]
pub trait Bench {
    /// Does nothing.
    fn null(&self);
}

struct Handlers;

impl Bench for Handlers {
    fn null(&self) {}
}

/// What one case measured.
struct Row {
    name: String,
    calls: u64,
    seconds: f64,
    cpu: Duration,
    hist: Histogram<u64>,
    allocs: u64,
}

impl Row {
    fn print(&self) {
        let rate = self.calls as f64 / self.seconds;
        let cpu_us = self.cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64;
        println!(
            "{:<44} {:>11.0} {:>10.2} {:>9.1} {:>9.1} {:>8.2}",
            self.name,
            rate,
            cpu_us,
            self.hist.value_at_quantile(0.5) as f64 / 1e3,
            self.hist.value_at_quantile(0.99) as f64 / 1e3,
            self.allocs as f64 / self.calls.max(1) as f64,
        );
    }
}

fn io_label(io: &Io) -> &'static str {
    match io {
        Io::Uring(_) => " over io_uring",
        _ => "",
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn server(io: &Io) -> anyhow::Result<rpc_transport::udp::ServerHandle> {
    let config = UdpServerConfig::loopback()
        .poll(PollStrategy::Spin)
        .pin(vec![1])
        .io(io.clone());
    Ok(
        UdpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)?
            .serve(BenchServer::new(Handlers))?,
    )
}

fn client(addr: SocketAddr, window: usize, io: &Io) -> anyhow::Result<BenchClient<UdpClient>> {
    let mut config = UdpClientConfig::loopback()
        .poll(PollStrategy::Spin)
        .io(io.clone());
    config.protocol.window = window.max(1);
    Ok(BenchClient::new(UdpClient::connect(addr, config)?))
}

/// `n` calls in flight from this thread for `seconds`.
fn pipelined(n: usize, seconds: f64, io: &Io) -> anyhow::Result<Row> {
    let server = server(io)?;
    let client = client(server.local_addr(), n.max(128), io)?;
    let run = |d: Duration, hist: &mut Histogram<u64>| -> u64 {
        let mut started: Vec<Instant> = vec![Instant::now(); n];
        let mut pending = Completions::new((0..n).map(|_| client.null_async()));
        let end = Instant::now() + d;
        let mut calls = 0;
        while let Some((i, r)) = pending.next() {
            r.expect("null call");
            calls += 1;
            let slot = i % n;
            hist.saturating_record(started[slot].elapsed().as_nanos() as u64);
            if Instant::now() < end {
                let j = pending.push(client.null_async());
                started[j % n] = Instant::now();
            }
        }
        calls
    };
    let mut warm = hist();
    run(Duration::from_secs_f64(seconds / 5.0), &mut warm);
    let mut h = hist();
    let (cpu0, a0, t0) = (cpu_time(), allocations(), Instant::now());
    let calls = run(Duration::from_secs_f64(seconds), &mut h);
    let (elapsed, cpu, allocs) = (t0.elapsed(), cpu_time() - cpu0, allocations() - a0);
    drop(client);
    server.shutdown();
    Ok(Row {
        name: format!("rpc{}, {n} in flight from one thread", io_label(io)),
        calls,
        seconds: elapsed.as_secs_f64(),
        cpu,
        hist: h,
        allocs,
    })
}

/// `threads` threads making blocking calls through one client.
fn blocking(threads: usize, seconds: f64) -> anyhow::Result<Row> {
    let server = server(&Io::Sockets)?;
    let client = client(server.local_addr(), 128, &Io::Sockets)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, a0, t0) = (cpu_time(), allocations(), Instant::now());
    let count = threads;
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut h = hist();
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    client.null().expect("null call");
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    calls += 1;
                }
                (calls, h)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut h = hist();
    let mut calls = 0;
    for t in threads {
        let (c, th) = t.join().expect("caller");
        calls += c;
        let _ = h.add(&th);
    }
    let (elapsed, cpu, allocs) = (t0.elapsed(), cpu_time() - cpu0, allocations() - a0);
    drop(client);
    server.shutdown();
    Ok(Row {
        name: format!("rpc, {count} thread(s) blocking on one client"),
        calls,
        seconds: elapsed.as_secs_f64(),
        cpu,
        hist: h,
        allocs,
    })
}

/// The floor: 32 datagrams kept in flight with `sendmmsg`/`recvmmsg`, echoed in batches.
fn raw_window(seconds: f64) -> anyhow::Result<Row> {
    const WINDOW: usize = 32;
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_nonblocking(true)?;
    let addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = rpc_transport::pin_to_cpu(1);
            let mut bufs = vec![vec![0u8; 2048]; WINDOW];
            while !stop.load(Ordering::Relaxed) {
                let got = examples::recv_batch(&echo, &mut bufs);
                if got.is_empty() {
                    std::hint::spin_loop();
                    continue;
                }
                examples::send_batch_to(&echo, &bufs, &got);
            }
        })
    };
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let payload = [0x5au8; 72];
    let mut bufs = vec![vec![0u8; 2048]; WINDOW];
    let run = |d: Duration, hist: &mut Histogram<u64>, bufs: &mut Vec<Vec<u8>>| -> u64 {
        let mut sent_at = std::collections::VecDeque::with_capacity(WINDOW);
        for _ in 0..WINDOW {
            sent_at.push_back(Instant::now());
        }
        examples::send_batch(&socket, &payload, WINDOW);
        let end = Instant::now() + d;
        let mut calls = 0u64;
        let mut outstanding = WINDOW;
        while outstanding > 0 {
            let got = examples::recv_batch(&socket, bufs).len();
            if got == 0 {
                std::hint::spin_loop();
                continue;
            }
            outstanding -= got;
            calls += got as u64;
            for _ in 0..got {
                if let Some(t) = sent_at.pop_front() {
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                }
            }
            if Instant::now() < end {
                for _ in 0..got {
                    sent_at.push_back(Instant::now());
                }
                examples::send_batch(&socket, &payload, got);
                outstanding += got;
            }
        }
        calls
    };
    let mut warm = hist();
    run(Duration::from_secs_f64(seconds / 5.0), &mut warm, &mut bufs);
    let mut h = hist();
    let (cpu0, a0, t0) = (cpu_time(), allocations(), Instant::now());
    let calls = run(Duration::from_secs_f64(seconds), &mut h, &mut bufs);
    let (elapsed, cpu, allocs) = (t0.elapsed(), cpu_time() - cpu0, allocations() - a0);
    stop.store(true, Ordering::Relaxed);
    let _ = echo_thread.join();
    Ok(Row {
        name: "raw udp, window of 32, sendmmsg/recvmmsg".into(),
        calls,
        seconds: elapsed.as_secs_f64(),
        cpu,
        hist: h,
        allocs,
    })
}

/// The peer tarpc measures: a null call.
#[tarpc::service]
trait TarpcBench {
    async fn null();
}

#[derive(Clone)]
struct TarpcHandlers;

impl TarpcBench for TarpcHandlers {
    async fn null(self, _: tarpc::context::Context) {}
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// tarpc (bincode over TCP, `TCP_NODELAY`): `n` concurrent calls from one current-thread
/// runtime on this thread, against a server on a multi-thread runtime.
fn tarpc_concurrent(n: usize, seconds: f64) -> anyhow::Result<Row> {
    use futures::{StreamExt as _, future};
    use tarpc::server::{BaseChannel, Channel as _};
    use tarpc::tokio_serde::formats::Bincode;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            // tarpc's best setup here (of those tried: current-thread or multi-thread, pinned
            // or not, each request spawned or run on its channel's task): a multi-thread
            // runtime on both cores, running each request on its connection's task.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tarpc::serde_transport::tcp::listen(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    Bincode::default,
                )
                .await?;
                addr_tx.send(listener.local_addr())?;
                let serve = listener
                    .filter_map(|r| future::ready(r.ok()))
                    .for_each(|transport| {
                        let _ = transport.get_ref().set_nodelay(true);
                        let channel = BaseChannel::with_defaults(transport);
                        tokio::spawn(channel.execute(TarpcHandlers.serve()).for_each(|call| call));
                        future::ready(())
                    });
                tokio::select! {
                    () = serve => {}
                    () = stop.notified() => {}
                }
                anyhow::Ok(())
            })
        })
    };
    let addr = addr_rx.recv().context("tarpc server start")?;
    let runtime = current_thread()?;
    let client = runtime.block_on(async {
        let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default).await?;
        transport.get_ref().set_nodelay(true)?;
        anyhow::Ok(TarpcBenchClient::new(tarpc::client::Config::default(), transport).spawn())
    })?;
    let run = |d: Duration| -> (u64, Histogram<u64>) {
        runtime.block_on(async {
            let end = Instant::now() + d;
            let callers = (0..n).map(|_| {
                let client = client.clone();
                async move {
                    let mut h = hist();
                    let mut calls = 0u64;
                    while Instant::now() < end {
                        let t = Instant::now();
                        client
                            .null(tarpc::context::current())
                            .await
                            .expect("tarpc null call");
                        h.saturating_record(t.elapsed().as_nanos() as u64);
                        calls += 1;
                    }
                    (calls, h)
                }
            });
            let mut all = hist();
            let mut calls = 0;
            for (c, h) in future::join_all(callers).await {
                calls += c;
                let _ = all.add(&h);
            }
            (calls, all)
        })
    };
    run(Duration::from_secs_f64(seconds / 5.0));
    let (cpu0, a0, t0) = (cpu_time(), allocations(), Instant::now());
    let (calls, h) = run(Duration::from_secs_f64(seconds));
    let (elapsed, cpu, allocs) = (t0.elapsed(), cpu_time() - cpu0, allocations() - a0);
    drop(client);
    drop(runtime);
    stop.notify_one();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("tarpc server panicked"))??;
    Ok(Row {
        name: format!("tarpc, {n} concurrent, current-thread tokio"),
        calls,
        seconds: elapsed.as_secs_f64(),
        cpu,
        hist: h,
        allocs,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rpc_transport::pin_to_cpu(0).context("pinning the client to cpu 0")?;
    println!(
        "loopback throughput, {} s per case; client on cpu 0, server on cpu 1 (both spinning)\n",
        args.seconds
    );
    println!(
        "{:<44} {:>11} {:>10} {:>9} {:>9} {:>8}",
        "case", "calls/s", "CPU µs", "p50 µs", "p99 µs", "allocs"
    );
    println!("{}", "-".repeat(96));
    let run = |case: &str| args.cases.iter().any(|c| c == case);
    if run("raw") {
        raw_window(args.seconds)?.print();
    }
    if run("tarpc") {
        tarpc_concurrent(64, args.seconds)?.print();
    }
    let uring = Io::Uring(UringConfig::default());
    // Over plain sockets and over io_uring, interleaved for each number in flight.
    for &n in &args.in_flight {
        if run("pipelined") {
            pipelined(n, args.seconds, &Io::Sockets)?.print();
        }
        if run("uring") {
            pipelined(n, args.seconds, &uring)?.print();
        }
    }
    if run("blocking") {
        for &threads in &args.threads {
            blocking(threads, args.seconds)?.print();
        }
    }
    println!(
        "\nCPU µs: process CPU time (both ends) per call; allocs: allocations per call, both ends."
    );
    Ok(())
}
