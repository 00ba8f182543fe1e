//! A quick check of the suite's peer modules (tarpc, tonic): starts each peer's server, runs
//! closed-loop round trips at each payload size and a throughput run with calls in flight, and
//! prints percentiles. Client on cpu 0, server on cpu 1 (when the machine has two, unless
//! `--unpinned`). Short by
//! default; the suite itself does the real runs.
//!
//! ```text
//! cargo bench -p benches --bench peers_check
//! cargo bench -p benches --bench peers_check -- --peers tonic --payloads 32,1048576 --iterations 2000
//! cargo bench -p benches --bench peers_check -- --payloads 32 --in-flight 64 --unpinned
//! ```

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;

/// The peers, from their files under `suite/peers/`.
pub mod suite {
    /// The peer modules.
    pub mod peers {
        pub mod serving;
        pub mod tarpc;
        pub mod tonic;
    }
}

use suite::peers;

#[derive(Parser, Debug)]
#[command(about = "A short run of the suite's tarpc and tonic peers")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Peers to run: tarpc, tonic.
    #[arg(long, value_delimiter = ',', default_value = "tarpc,tonic")]
    peers: Vec<String>,
    /// Payload sizes in bytes for the round trips (0: the null call).
    #[arg(long, value_delimiter = ',', default_value = "0,32,1024,65536,1048576")]
    payloads: Vec<usize>,
    /// Measured round trips per payload size (a tenth of it for 64 KiB and up).
    #[arg(long, default_value_t = 5_000)]
    iterations: u64,
    /// Unmeasured round trips before them (likewise scaled).
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Calls in flight for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    in_flight: Vec<usize>,
    /// Seconds measured per throughput run.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Leave the server unpinned (two workers on any cpu) instead of on cpu 1.
    #[arg(long)]
    unpinned: bool,
}

fn histogram(times: &[u64]) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for &ns in times {
        h.saturating_record(ns.max(1));
    }
    Ok(h)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The two peers' functions, behind one face.
trait Peer {
    type Server;
    fn start(cpu: Option<usize>) -> anyhow::Result<Self::Server>;
    fn round_trips(
        s: &Self::Server,
        payload: usize,
        warmup: u64,
        n: u64,
    ) -> anyhow::Result<Vec<u64>>;
    fn throughput(
        s: &Self::Server,
        in_flight: usize,
        seconds: f64,
    ) -> anyhow::Result<(u64, f64, std::time::Duration, Vec<u64>)>;
}

struct Tarpc;
impl Peer for Tarpc {
    type Server = peers::tarpc::Server;
    fn start(cpu: Option<usize>) -> anyhow::Result<Self::Server> {
        peers::tarpc::start(cpu)
    }
    fn round_trips(s: &Self::Server, p: usize, w: u64, n: u64) -> anyhow::Result<Vec<u64>> {
        peers::tarpc::round_trips(s, p, w, n)
    }
    fn throughput(
        s: &Self::Server,
        k: usize,
        t: f64,
    ) -> anyhow::Result<(u64, f64, std::time::Duration, Vec<u64>)> {
        peers::tarpc::throughput(s, k, t)
    }
}

struct Tonic;
impl Peer for Tonic {
    type Server = peers::tonic::Server;
    fn start(cpu: Option<usize>) -> anyhow::Result<Self::Server> {
        peers::tonic::start(cpu)
    }
    fn round_trips(s: &Self::Server, p: usize, w: u64, n: u64) -> anyhow::Result<Vec<u64>> {
        peers::tonic::round_trips(s, p, w, n)
    }
    fn throughput(
        s: &Self::Server,
        k: usize,
        t: f64,
    ) -> anyhow::Result<(u64, f64, std::time::Duration, Vec<u64>)> {
        peers::tonic::throughput(s, k, t)
    }
}

fn run<P: Peer>(name: &str, args: &Args, server_cpu: Option<usize>) -> anyhow::Result<()> {
    let server = P::start(server_cpu).with_context(|| format!("starting the {name} server"))?;
    for &payload in &args.payloads {
        let scale = if payload >= 64 << 10 { 10 } else { 1 };
        let times = P::round_trips(
            &server,
            payload,
            args.warmup / scale,
            (args.iterations / scale).max(1),
        )
        .with_context(|| format!("{name}: {payload}-byte round trips"))?;
        let h = histogram(&times)?;
        println!(
            "{:<6} round trip {:>8} B {:>7} calls  p50 {:>9.2} us  p99 {:>9.2} us  mean {:>9.2} us",
            name,
            payload,
            times.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            h.mean() / 1e3,
        );
    }
    for &k in &args.in_flight {
        let (calls, wall, cpu, times) = P::throughput(&server, k, args.seconds)
            .with_context(|| format!("{name}: {k} in flight"))?;
        let h = histogram(&times)?;
        println!(
            "{:<6} {:>4} in flight {:>10.0} calls/s  CPU {:>6.2} us/call  p50 {:>9.2} us  p99 {:>9.2} us",
            name,
            k,
            calls as f64 / wall,
            cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if two_cpus {
        rpc_transport::pin_to_cpu(0).context("pinning the client to cpu 0")?;
    }
    let server_cpu = (two_cpus && !args.unpinned).then_some(1);
    println!("client on cpu 0, server on {server_cpu:?}");
    for peer in &args.peers {
        match peer.as_str() {
            "tarpc" => run::<Tarpc>("tarpc", &args, server_cpu)?,
            "tonic" => run::<Tonic>("tonic", &args, server_cpu)?,
            other => anyhow::bail!("unknown peer {other:?}"),
        }
    }
    Ok(())
}
