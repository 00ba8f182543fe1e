//! The benchmark suite: every transport of the framework, in every poll strategy, plain and
//! authenticated, blocking, pipelined and open-loop calls, against the floors (raw UDP,
//! io_uring and shared-memory ping-pongs, the mmsg window) and the peers (tarpc, tonic,
//! iceoryx2), side by side in one run.
//!
//! ```text
//! cargo xtask bench                 # the default run, at most 10 minutes
//! cargo xtask bench --quick         # every case briefly, under a minute
//! cargo xtask bench --only shm      # the cases whose names contain "shm"
//! cargo xtask bench --only "=udp 64 in flight"   # that case alone
//! cargo xtask bench --compare target/bench/OLD target/bench/NEW
//! ```
//!
//! Cases are interleaved round by round (every case once per round, in turn), so that the
//! host's slow drifts touch them all alike; each result is also given as a ratio to its floor
//! measured in the same round (the median over rounds of the per-round ratios). Only the
//! measured case's server runs at any time: each is set up for its turn and shut down after.
//! The client runs on cpu 0, the servers on cpu 1.
//!
//! Output, under `target/bench/<run>/`: `report.md` (every table, the machine and the
//! configuration), `report.json` (what `--compare` reads), one `.hdr` histogram per case
//! (HdrHistogram V2 format), and SVG plots: latency CDFs per transport, throughput against
//! calls in flight, latency against offered load.

// A binary: its items are public to its modules, not to users.
#![allow(unreachable_pub, missing_debug_implementations)]

#[path = "suite/floors.rs"]
mod floors;
#[path = "iceoryx2_rr/peer.rs"]
mod iceoryx2_peer;
#[path = "suite/ours.rs"]
mod ours;
#[path = "suite/report.rs"]
mod report;

/// The peers over TCP, from their files under `suite/peers/`.
mod suite {
    pub mod peers {
        pub mod serving;
        pub mod tarpc;
        pub mod tonic;
    }
}

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use examples::{CountingAlloc, allocations, cpu_time};
use hdrhistogram::Histogram;
use rpc_transport::PollStrategy;

use ours::{Net, Setup};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "The benchmark suite: every transport against its floors and its peers")]
pub struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Every case briefly (one short round): a smoke test in under a minute.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds (default 5; 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per latency case per round (default 0.4; 0.02 with --quick).
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// Seconds per throughput or open-loop case per round (default 1; 0.05 with --quick).
    #[arg(long)]
    load_seconds: Option<f64>,
    /// Only the cases whose names contain one of these (comma-separated); one that starts
    /// with `=` names one case exactly (`--only "=udp 64 in flight"`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave out the peers (tarpc, tonic, iceoryx2).
    #[arg(long)]
    no_peers: bool,
    /// Where to write the report, relative to the workspace (default: target/bench/<unix
    /// time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Set two runs' reports side by side: `--compare OLD NEW` (directories or report.json).
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    compare: Option<Vec<PathBuf>>,
    /// Do not pin the client to cpu 0 and servers to cpu 1.
    #[arg(long)]
    no_pin: bool,
}

/// What a case is limited to in one round.
#[derive(Clone, Debug)]
pub struct Budget {
    seconds: f64,
    pub server_cpu: Option<usize>,
}

impl Budget {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / 5.0)
    }
}

/// What one case measured in one round (or, merged, in all).
#[derive(Clone, Debug)]
pub struct Sample {
    pub hist: Histogram<u64>,
    pub calls: u64,
    pub wall: Duration,
    pub cpu: Duration,
    pub allocs: u64,
}

impl Sample {
    fn merge(&mut self, other: &Sample) {
        let _ = self.hist.add(&other.hist);
        self.calls += other.calls;
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.allocs += other.allocs;
    }
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
    pub fn allocs_per_call(&self) -> f64 {
        self.allocs as f64 / self.calls.max(1) as f64
    }
    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }
}

/// A histogram from 1 ns to a minute, three significant digits.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Runs `run` (which records into the histogram it is given and returns its calls) between
/// readings of the clock, the process's CPU time and its allocation count.
pub fn measured(
    run: impl FnOnce(&mut Histogram<u64>) -> anyhow::Result<u64>,
) -> anyhow::Result<Sample> {
    let mut h = hist();
    let (cpu0, a0, t0) = (cpu_time(), allocations(), Instant::now());
    let calls = run(&mut h)?;
    Ok(Sample {
        wall: t0.elapsed(),
        cpu: cpu_time() - cpu0,
        allocs: allocations() - a0,
        hist: h,
        calls,
    })
}

/// Closed loop: `op` (one round trip) repeated for the budget after a fifth of it unmeasured.
pub fn closed_loop(
    b: &Budget,
    mut op: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Sample> {
    let warm = Instant::now() + b.warmup();
    while Instant::now() < warm {
        op()?;
    }
    let d = b.duration();
    measured(|h| {
        let end = Instant::now() + d;
        let mut calls = 0;
        loop {
            let t = Instant::now();
            if t >= end {
                return Ok(calls);
            }
            op()?;
            h.saturating_record(t.elapsed().as_nanos() as u64);
            calls += 1;
        }
    })
}

/// Which family a case belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Floor,
    Ours,
    Peer,
}

/// What a case measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// One call at a time.
    Latency,
    /// This many calls kept in flight.
    Throughput(usize),
    /// Calls sent at this rate per second.
    OpenLoop(f64),
}

type RunFn = Box<dyn Fn(&Budget) -> anyhow::Result<Sample>>;

/// One case of the suite.
pub struct Spec {
    pub name: String,
    pub group: Group,
    pub kind: Kind,
    /// The transport, for grouping in plots: udp, io_uring, shm, tarpc, tonic, iceoryx2.
    pub transport: &'static str,
    /// Payload bytes each way (0: a null call).
    pub payload: usize,
    /// The name of the case this one is compared with.
    pub floor: Option<String>,
    run: RunFn,
}

fn mode_label(poll: PollStrategy) -> &'static str {
    match poll {
        PollStrategy::Spin => "spin",
        PollStrategy::SpinThenPark(_) => "park",
        PollStrategy::Block => "block",
    }
}

fn size_label(bytes: usize) -> String {
    match bytes {
        0 => "null".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

const PAYLOADS: [usize; 4] = [32, 1 << 10, 64 << 10, 1 << 20];
const IN_FLIGHT: [usize; 4] = [1, 8, 64, 256];

/// Every case, in the order of the tables.
fn plan(args: &Args) -> Vec<Spec> {
    let mut v: Vec<Spec> = Vec::new();
    let mut add = |name: String,
                   group: Group,
                   kind: Kind,
                   transport: &'static str,
                   payload: usize,
                   floor: Option<String>,
                   run: RunFn| {
        v.push(Spec {
            name,
            group,
            kind,
            transport,
            payload,
            floor,
            run,
        })
    };
    let spin = PollStrategy::Spin;
    let park = PollStrategy::SpinThenPark(Duration::from_micros(50));
    let block = PollStrategy::Block;
    let raw_udp = |p: usize| format!("floor: raw udp spin {}", size_label(p));
    let raw_shm = |p: usize| format!("floor: shm flag {}", size_label(p));
    let raw_uring = |p: usize| format!("floor: raw io_uring {}", size_label(p));
    let raw_block = |p: usize| format!("floor: raw udp block {}", size_label(p));

    // Floors.
    for p in PAYLOADS {
        add(
            raw_udp(p),
            Group::Floor,
            Kind::Latency,
            "udp",
            p,
            None,
            Box::new(move |b| floors::udp(p, PollStrategy::Spin, b)),
        );
    }
    for p in [32, 1 << 10] {
        add(
            raw_block(p),
            Group::Floor,
            Kind::Latency,
            "udp",
            p,
            None,
            Box::new(move |b| floors::udp(p, PollStrategy::Block, b)),
        );
        add(
            raw_uring(p),
            Group::Floor,
            Kind::Latency,
            "io_uring",
            p,
            Some(raw_udp(p)),
            Box::new(move |b| floors::uring(p, b)),
        );
    }
    for p in PAYLOADS {
        add(
            raw_shm(p),
            Group::Floor,
            Kind::Latency,
            "shm",
            p,
            None,
            Box::new(move |b| floors::shm_flag(p, b)),
        );
    }
    let eventfd = "floor: eventfd block".to_string();
    add(
        eventfd.clone(),
        Group::Floor,
        Kind::Latency,
        "shm",
        0,
        None,
        Box::new(floors::eventfd_block),
    );

    // Ours, closed loop. A null call is compared with the 32-byte floor.
    let ours_latency =
        |add: &mut dyn FnMut(String, Group, Kind, &'static str, usize, Option<String>, RunFn),
         net: Net,
         poll: PollStrategy,
         auth: bool,
         sizes: &[usize],
         floor: &dyn Fn(usize) -> String| {
            for &p in sizes {
                let setup = Setup { net, poll, auth };
                let name = format!(
                    "{} {} {}{}",
                    net.label(),
                    mode_label(poll),
                    if p == 0 {
                        "null".to_string()
                    } else {
                        format!("echo {}", size_label(p))
                    },
                    if auth { ", auth" } else { "" }
                );
                let floor_of = if p == 0 { floor(32) } else { floor(p) };
                add(
                    name,
                    Group::Ours,
                    Kind::Latency,
                    net.label(),
                    p,
                    Some(floor_of),
                    Box::new(move |b| ours::latency(setup, (p > 0).then_some(p), b)),
                );
            }
        };
    let all = [0, 1 << 10, 64 << 10, 1 << 20];
    let small = [0, 1 << 10];
    ours_latency(&mut add, Net::Udp, spin, false, &all, &raw_udp);
    ours_latency(&mut add, Net::Udp, park, false, &small, &raw_udp);
    ours_latency(&mut add, Net::Udp, block, false, &small, &raw_block);
    ours_latency(&mut add, Net::Udp, spin, true, &small, &raw_udp);
    ours_latency(&mut add, Net::Uring, spin, false, &small, &raw_uring);
    ours_latency(&mut add, Net::Uring, park, false, &[0], &raw_uring);
    ours_latency(&mut add, Net::Uring, block, false, &[0], &raw_block);
    ours_latency(&mut add, Net::Uring, spin, true, &[0], &raw_uring);
    ours_latency(&mut add, Net::Shm, spin, false, &all, &raw_shm);
    ours_latency(&mut add, Net::Shm, park, false, &small, &raw_shm);
    ours_latency(&mut add, Net::Shm, block, false, &[0], &|_| eventfd.clone());
    ours_latency(&mut add, Net::Shm, spin, true, &[0], &raw_shm);

    // Peers, closed loop.
    if !args.no_peers {
        for p in PAYLOADS {
            add(
                format!("iceoryx2 request-response {}", size_label(p)),
                Group::Peer,
                Kind::Latency,
                "iceoryx2",
                p,
                Some(raw_shm(p)),
                Box::new(move |b| iceoryx2(p, b)),
            );
        }
    }

    if !args.no_peers {
        for peer in ["tarpc", "tonic"] {
            for p in PAYLOADS {
                add(
                    format!("{peer} {}", size_label(p)),
                    Group::Peer,
                    Kind::Latency,
                    peer,
                    p,
                    Some(raw_udp(p)),
                    Box::new(move |b| tcp_latency(peer, p, b)),
                );
            }
        }
    }

    // Throughput.
    let window = "floor: raw udp mmsg window of 32".to_string();
    add(
        window.clone(),
        Group::Floor,
        Kind::Throughput(32),
        "udp",
        0,
        None,
        Box::new(floors::mmsg_window),
    );
    for n in IN_FLIGHT {
        for net in [Net::Udp, Net::Uring, Net::Shm] {
            let setup = Setup {
                net,
                poll: spin,
                auth: false,
            };
            add(
                format!("{} {n} in flight", net.label()),
                Group::Ours,
                Kind::Throughput(n),
                net.label(),
                0,
                Some(window.clone()),
                Box::new(move |b| ours::pipelined(setup, n, b)),
            );
        }
    }
    let setup = Setup {
        net: Net::Udp,
        poll: spin,
        auth: true,
    };
    add(
        "udp 64 in flight, auth".into(),
        Group::Ours,
        Kind::Throughput(64),
        "udp",
        0,
        Some(window.clone()),
        Box::new(move |b| ours::pipelined(setup, 64, b)),
    );

    if !args.no_peers {
        for peer in ["tarpc", "tonic"] {
            for n in IN_FLIGHT {
                add(
                    format!("{peer} {n} in flight"),
                    Group::Peer,
                    Kind::Throughput(n),
                    peer,
                    0,
                    Some(window.clone()),
                    Box::new(move |b| tcp_throughput(peer, n, b)),
                );
            }
        }
    }

    // Open loop: null calls at fixed offered rates.
    let rates: [(Net, &[f64]); 3] = [
        (Net::Udp, &[25e3, 50e3, 100e3, 200e3, 400e3]),
        (Net::Uring, &[25e3, 100e3, 400e3]),
        (Net::Shm, &[100e3, 300e3, 600e3]),
    ];
    for (net, rs) in rates {
        for &r in rs {
            let setup = Setup {
                net,
                poll: spin,
                auth: false,
            };
            add(
                format!("{} open loop {}k/s", net.label(), r / 1e3),
                Group::Ours,
                Kind::OpenLoop(r),
                net.label(),
                0,
                Some(format!("{} spin null", net.label())),
                Box::new(move |b| ours::open_loop(setup, r, b)),
            );
        }
    }

    let wanted = |name: &str, o: &str| match o.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(o),
    };
    v.retain(|s| args.only.is_empty() || args.only.iter().any(|o| wanted(&s.name, o)));
    v
}

/// Closed-loop round trips of a peer, `rt(warmup, iterations)`, as many as the budget is
/// likely to hold (sized by a short probe first).
fn sized(
    b: &Budget,
    mut rt: impl FnMut(u64, u64) -> anyhow::Result<Vec<u64>>,
) -> anyhow::Result<Sample> {
    let probe = rt(5, 20)?;
    let mean = probe.iter().sum::<u64>() as f64 / probe.len().max(1) as f64;
    let iterations = ((b.seconds * 1e9 / mean.max(100.0)) as u64).clamp(20, 2_000_000);
    let times = rt(iterations / 5, iterations)?;
    let mut s = measured(|h| {
        for &t in &times {
            h.saturating_record(t);
        }
        Ok(times.len() as u64)
    })?;
    // The peer timed each round trip itself; their sum is the run's length.
    s.wall = Duration::from_nanos(times.iter().sum());
    s.cpu = Duration::ZERO;
    Ok(s)
}

/// iceoryx2's request-response (a server thread of its own per run).
fn iceoryx2(payload: usize, b: &Budget) -> anyhow::Result<Sample> {
    sized(b, |w, n| {
        iceoryx2_peer::round_trips(payload.max(8), w, n, b.server_cpu)
    })
}

/// A TCP peer's closed loop: `payload` bytes echoed. Each peer's server runs in its best
/// setup measured on these machines: here a two-worker runtime free to use both CPUs (with
/// one worker pinned to cpu 1, tarpc's p50 was 4x and tonic's 2x as long).
fn tcp_latency(peer: &'static str, payload: usize, b: &Budget) -> anyhow::Result<Sample> {
    match peer {
        "tarpc" => {
            let server = suite::peers::tarpc::start(None)?;
            sized(b, |w, n| {
                suite::peers::tarpc::round_trips(&server, payload, w, n)
            })
        }
        _ => {
            let server = suite::peers::tonic::start(None)?;
            sized(b, |w, n| {
                suite::peers::tonic::round_trips(&server, payload, w, n)
            })
        }
    }
}

/// A TCP peer with `n` null calls in flight from a current-thread runtime, its server in its
/// best setup: tarpc's a two-worker runtime on both CPUs (2.1x the calls/s of one worker
/// pinned to cpu 1), tonic's one worker pinned to cpu 1 (1.8x the calls/s of two unpinned).
fn tcp_throughput(peer: &'static str, n: usize, b: &Budget) -> anyhow::Result<Sample> {
    let (calls, wall, cpu, times) = match peer {
        "tarpc" => {
            let server = suite::peers::tarpc::start(None)?;
            suite::peers::tarpc::throughput(&server, n, b.seconds)?
        }
        _ => {
            let server = suite::peers::tonic::start(b.server_cpu)?;
            suite::peers::tonic::throughput(&server, n, b.seconds)?
        }
    };
    let mut h = hist();
    for &t in &times {
        h.saturating_record(t);
    }
    Ok(Sample {
        hist: h,
        calls,
        wall: Duration::from_secs_f64(wall),
        cpu,
        allocs: 0,
    })
}

/// A case's results over all rounds.
pub struct Outcome {
    pub total: Option<Sample>,
    /// Per round: its p50 in ns and its calls per second.
    pub rounds: Vec<(u64, f64)>,
    pub errors: Vec<String>,
    /// Wall time spent on the case, setup included.
    pub spent: Duration,
}

fn main() -> anyhow::Result<()> {
    iceoryx2::prelude::set_log_level_from_env_or(iceoryx2::prelude::LogLevel::Error);
    let args = Args::parse();
    if let Some(runs) = &args.compare {
        return report::compare(&runs[0], &runs[1]);
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !args.no_pin && cpus >= 2;
    if pin {
        rpc_transport::pin_to_cpu(0).context("pinning the client to cpu 0")?;
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let latency_budget = Budget {
        seconds: args
            .latency_seconds
            .unwrap_or(if args.quick { 0.02 } else { 0.4 }),
        server_cpu: pin.then_some(1),
    };
    let load_budget = Budget {
        seconds: args
            .load_seconds
            .unwrap_or(if args.quick { 0.05 } else { 1.0 }),
        server_cpu: pin.then_some(1),
    };
    let specs = plan(&args);
    anyhow::ensure!(!specs.is_empty(), "no case matches {:?}", args.only);
    let out = match &args.out {
        // Relative to the workspace (cargo runs benchmarks in their package's directory).
        Some(o) => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(o),
        None => report::default_dir()?,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(specs.len() as u64 * u64::from(rounds));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} round {prefix} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut outcomes: Vec<Outcome> = specs
        .iter()
        .map(|_| Outcome {
            total: None,
            rounds: Vec::new(),
            errors: Vec::new(),
            spent: Duration::ZERO,
        })
        .collect();
    for round in 0..rounds {
        bar.set_prefix(format!("{}/{rounds}", round + 1));
        for (spec, outcome) in specs.iter().zip(&mut outcomes) {
            bar.set_message(spec.name.clone());
            let budget = match spec.kind {
                Kind::Latency => &latency_budget,
                _ => &load_budget,
            };
            let t0 = Instant::now();
            let result = (spec.run)(budget);
            outcome.spent += t0.elapsed();
            match result {
                Ok(sample) => {
                    outcome
                        .rounds
                        .push((sample.hist.value_at_quantile(0.5), sample.rate()));
                    match &mut outcome.total {
                        Some(t) => t.merge(&sample),
                        None => outcome.total = Some(sample),
                    }
                }
                Err(e) => {
                    bar.println(format!("{}: {e:#}", spec.name));
                    outcome.errors.push(format!("{e:#}"));
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let run = report::Run {
        specs: &specs,
        outcomes: &outcomes,
        rounds,
        latency_seconds: latency_budget.seconds,
        load_seconds: load_budget.seconds,
        pinned: pin,
        elapsed,
        quick: args.quick,
    };
    report::write(&run, &out)?;
    let mut slowest: Vec<(Duration, &str)> = outcomes
        .iter()
        .zip(&specs)
        .map(|(o, s)| (o.spent, s.name.as_str()))
        .collect();
    slowest.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(d, n)| format!("{n} {:.1} s", d.as_secs_f64()))
        .collect();
    println!("slowest cases: {}", slowest.join(", "));
    let missing: Vec<&str> = specs
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.total.as_ref().is_none_or(|t| t.calls == 0) || !o.errors.is_empty())
        .map(|(s, _)| s.name.as_str())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} case(s) did not run cleanly: {missing:?}",
        missing.len()
    );
    Ok(())
}
