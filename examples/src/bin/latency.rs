//! The latency demo: our RPC over loopback UDP against the raw UDP floor, measured in the
//! same run, in every poll strategy.
//!
//! ```text
//! cargo run --release -p examples --bin latency
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use examples::{
    BenchClient, BenchServer, Case, CountingAlloc, Handlers, NullResponder, Phases, RawEcho,
    RawPing, RawStyle, UringEcho, UringPing, allocations, measure, plot, print_table, progress,
};
use hdrhistogram::Histogram;
use rpc_core::AuthKey;
use rpc_transport::PollStrategy;
use rpc_transport::udp::{Io, UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};
use rpc_transport::uring::UringConfig;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(about = "Round-trip latency of the RPC framework against the raw UDP floor, on loopback")]
struct Args {
    /// Measured round trips per case in spinning modes (blocking modes use a fifth).
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 20_000)]
    warmup: u64,
    /// Payload of the echo call, in bytes.
    #[arg(long, default_value_t = 1024)]
    echo_bytes: usize,
    /// Poll strategies to measure: spin, park, block.
    #[arg(long, value_delimiter = ',', default_value = "spin,park,block")]
    modes: Vec<String>,
    /// Budget of the spin-then-park strategy, in microseconds.
    #[arg(long, default_value_t = 50)]
    park_after_us: u64,
    /// Do not pin the client to CPU 0 and the server to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Interleaved rounds: every case is measured once per round, in turn.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Leave out the io_uring rows.
    #[arg(long)]
    no_uring: bool,
    /// Where to write the percentile plot.
    #[arg(long, default_value = "results/latency.svg")]
    plot: PathBuf,
}

fn null_call(client: &BenchClient<UdpClient>) {
    client.null().expect("null call");
}

fn echo_call(client: &BenchClient<UdpClient>, data: &[u8]) {
    let reply = client.echo(data).expect("echo call");
    assert_eq!(reply.len(), data.len());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Raw(usize, RawStyle),
    Null,
    /// Our client against a stateless responder: the client's share of a null call.
    ClientOnly,
    Echo,
    /// A datagram echoed through io_uring links, no protocol: io_uring's own floor.
    RawUring(usize),
    /// The calls over io_uring links: compared with the same over plain sockets.
    UringNull,
    UringEcho,
}

/// Adds a round's measurements to a case.
fn merge(into: &mut Option<Case>, round: Case, name: &str) {
    match into {
        None => {
            *into = Some(Case {
                name: name.to_string(),
                ..round
            });
        }
        Some(case) => {
            let _ = case.hist.add(&round.hist);
            case.rounds.extend_from_slice(&round.rounds);
            case.allocs_per_call = match (case.allocs_per_call, round.allocs_per_call) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
    }
}

fn mode(name: &str, park_after: Duration) -> anyhow::Result<PollStrategy> {
    Ok(match name {
        "spin" => PollStrategy::Spin,
        "park" => PollStrategy::SpinThenPark(park_after),
        "block" => PollStrategy::Block,
        other => anyhow::bail!("unknown mode {other:?} (spin, park, block)"),
    })
}

fn label(poll: PollStrategy) -> &'static str {
    match poll {
        PollStrategy::Spin => "spin",
        PollStrategy::SpinThenPark(_) => "spin-then-park",
        PollStrategy::Block => "block",
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !args.no_pin && cpus >= 2;
    if pin {
        rpc_transport::pin_to_cpu(0).context("pinning the client to cpu 0")?;
    }
    let server_cpu = pin.then_some(1);
    let park_after = Duration::from_micros(args.park_after_us);
    let echo = vec![0xa5u8; args.echo_bytes];
    println!(
        "loopback round trips, {} iterations per spinning case after {} warm-up; client on cpu 0, server on cpu 1: {}",
        args.iterations,
        args.warmup,
        if pin { "pinned" } else { "not pinned" }
    );

    // Every case of every mode, in the order of the table. Each mode is compared with the raw
    // floor of its kind: both ends spinning for the spinning modes, both blocking for `block`.
    struct Planned {
        name: String,
        kind: Kind,
        poll: PollStrategy,
        floor: Option<String>,
    }
    let floor_name =
        |poll: PollStrategy, bytes: usize| format!("raw udp {} {bytes} B", label(poll));
    let mut plan: Vec<Planned> = Vec::new();
    for m in &args.modes {
        let poll = mode(m, park_after)?;
        let floor_poll = if poll == PollStrategy::Block {
            PollStrategy::Block
        } else {
            PollStrategy::Spin
        };
        for bytes in [32, args.echo_bytes] {
            let name = floor_name(floor_poll, bytes);
            if !plan.iter().any(|p| p.name == name) {
                plan.push(Planned {
                    name,
                    kind: Kind::Raw(bytes, RawStyle::Direct),
                    poll: floor_poll,
                    floor: None,
                });
            }
        }
        let gathered = format!(
            "raw udp {} {} B gathered",
            label(floor_poll),
            args.echo_bytes
        );
        if floor_poll == PollStrategy::Spin && !plan.iter().any(|p| p.name == gathered) {
            // What the kernel charges for sending without copying (a header, then the
            // caller's bytes: two segments), for comparison with the echo.
            plan.push(Planned {
                name: gathered,
                kind: Kind::Raw(args.echo_bytes, RawStyle::Gathered),
                poll: floor_poll,
                floor: Some(floor_name(floor_poll, args.echo_bytes)),
            });
            // And a raw loop through the standard library's sockets, whose libc wrappers cost
            // what the floor (direct system calls) does not.
            plan.push(Planned {
                name: format!("raw udp {} 32 B std sockets", label(floor_poll)),
                kind: Kind::Raw(32, RawStyle::Std),
                poll: floor_poll,
                floor: Some(floor_name(floor_poll, 32)),
            });
        }
        plan.push(Planned {
            name: format!("rpc {} null call", label(poll)),
            kind: Kind::Null,
            poll,
            floor: Some(floor_name(floor_poll, 32)),
        });
        if poll == PollStrategy::Spin {
            plan.push(Planned {
                name: format!("rpc {} null call, client only", label(poll)),
                kind: Kind::ClientOnly,
                poll,
                floor: Some(floor_name(floor_poll, 32)),
            });
        }
        plan.push(Planned {
            name: format!("rpc {} echo {} B", label(poll), args.echo_bytes),
            kind: Kind::Echo,
            poll,
            floor: Some(floor_name(floor_poll, args.echo_bytes)),
        });
        if poll == PollStrategy::Spin && !args.no_uring {
            // io_uring: its own raw floor (a datagram echoed through the link, no protocol),
            // and the calls against the same calls over plain sockets.
            plan.push(Planned {
                name: format!("raw io_uring {} 32 B", label(poll)),
                kind: Kind::RawUring(32),
                poll,
                floor: Some(floor_name(floor_poll, 32)),
            });
            plan.push(Planned {
                name: format!("rpc {} null call, io_uring", label(poll)),
                kind: Kind::UringNull,
                poll,
                floor: Some(format!("rpc {} null call", label(poll))),
            });
            plan.push(Planned {
                name: format!("rpc {} echo {} B, io_uring", label(poll), args.echo_bytes),
                kind: Kind::UringEcho,
                poll,
                floor: Some(format!("rpc {} echo {} B", label(poll), args.echo_bytes)),
            });
        }
    }
    let rounds = args.rounds.max(1);
    let mut measured: Vec<Option<Case>> = plan.iter().map(|_| None).collect();
    let (mut retransmissions, mut from_cache) = (0, 0);
    // Interleave every case round by round, so that the machine's slow drifts touch them all
    // alike; only the measured case's server runs at any time.
    for round in 0..rounds {
        for (i, p) in plan.iter().enumerate() {
            let blocking = p.poll == PollStrategy::Block;
            let scale = if blocking { 5 } else { 1 };
            let (n, w) = (
                args.iterations / scale / rounds,
                args.warmup / scale / rounds,
            );
            let label = format!("{} ({}/{rounds})", p.name, round + 1);
            let case = match p.kind {
                Kind::Raw(bytes, style) => {
                    let echo_server = RawEcho::start(p.poll, server_cpu, style)?;
                    let mut ping = RawPing::connect(echo_server.addr(), p.poll, bytes, style)?;
                    let mut case = measure(&label, w, n, || ping.ping());
                    case.allocs_per_call = None;
                    case
                }
                Kind::ClientOnly => {
                    let responder = NullResponder::start(server_cpu)?;
                    let client = BenchClient::new(UdpClient::connect(
                        responder.addr(),
                        UdpClientConfig::loopback().poll(p.poll),
                    )?);
                    measure(&label, w, n, || null_call(&client))
                }
                Kind::RawUring(bytes) => {
                    let echo_server = UringEcho::start(server_cpu)?;
                    let mut ping = UringPing::connect(echo_server.addr(), bytes)?;
                    let mut case = measure(&label, w, n, || ping.ping());
                    case.allocs_per_call = None;
                    case
                }
                Kind::Null | Kind::Echo | Kind::UringNull | Kind::UringEcho => {
                    let io = if matches!(p.kind, Kind::UringNull | Kind::UringEcho) {
                        Io::Uring(UringConfig::default())
                    } else {
                        Io::Sockets
                    };
                    let config = UdpServerConfig::loopback()
                        .poll(p.poll)
                        .pin(server_cpu.into_iter().collect())
                        .io(io.clone());
                    let server = UdpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)?
                        .serve(BenchServer::new(Handlers))?;
                    let client_config = UdpClientConfig::loopback().poll(p.poll).io(io);
                    let client =
                        BenchClient::new(UdpClient::connect(server.local_addr(), client_config)?);
                    let case = if matches!(p.kind, Kind::Null | Kind::UringNull) {
                        measure(&label, w, n, || null_call(&client))
                    } else {
                        measure(&label, w, n, || echo_call(&client, &echo))
                    };
                    retransmissions += client.transport().stats().retransmissions;
                    drop(client);
                    from_cache += server.shutdown().answered_from_cache;
                    case
                }
            };
            merge(&mut measured[i], case, &p.name);
        }
    }
    let mut cases: Vec<Case> = Vec::new();
    for (case, p) in measured.into_iter().zip(plan) {
        if let Some(mut case) = case {
            case.floor = p.floor;
            cases.push(case);
        }
    }
    if args.modes.iter().any(|m| m == "spin") {
        // Authenticated mode against the same call without it, measured side by side.
        let null = |c: &BenchClient<UdpClient>| null_call(c);
        let echo_1 = |c: &BenchClient<UdpClient>| echo_call(c, &echo);
        let ops: [(String, &Call<'_>); 2] = [
            ("null call".to_string(), &null),
            (format!("echo {} B", args.echo_bytes), &echo_1),
        ];
        for (what, op) in ops {
            for (case, resent) in auth_paired(&what, server_cpu, args.warmup, args.iterations, op)?
            {
                retransmissions += resent;
                cases.push(case);
            }
        }
    }
    println!(
        "{rounds} interleaved rounds; retransmissions {retransmissions}, duplicates answered from the cache {from_cache}"
    );
    println!();
    print_table(&cases);
    println!(
        "p50/floor: the median over the rounds of the two cases' p50 ratio in the same round; \
         p99/floor: the pooled p99s"
    );
    println!(
        "authenticated rows: against the plain call beside them (\"paired\"), the client \
         alternating between the two servers in {PAIR_BLOCKS} blocks each; their p50/floor is \
         the median over the blocks"
    );
    if args.modes.iter().any(|m| m == "spin") && !args.no_uring {
        phases(server_cpu, (args.iterations / 5) as usize, rounds as usize)?;
    }
    plot(&cases, &args.plot)?;
    println!("\nplot: {}", args.plot.display());
    Ok(())
}

/// What authenticated mode costs a call, measured finely interleaved: a plain and an
/// authenticated server run side by side on the server's cpu, and the client alternates
/// between them in [`PAIR_BLOCKS`] blocks each, so that a change of the host's speed over the run
/// falls on both alike. Both clients spin; the servers spin while calls keep coming and park
/// [`PAIR_PARK_US`] after the last, so the idle one leaves the cpu to the busy one (a server that
/// spins while calls keep coming is a spinning server). Returns the plain case and the
/// authenticated one (its floor the plain one), each with its retransmissions; their
/// `rounds` are the blocks' p50s.
fn auth_paired(
    what: &str,
    server_cpu: Option<usize>,
    warmup: u64,
    n: u64,
    op: &Call<'_>,
) -> anyhow::Result<[(Case, u64); 2]> {
    let poll = PollStrategy::SpinThenPark(Duration::from_micros(PAIR_PARK_US));
    let start = |key: Option<AuthKey>| -> anyhow::Result<_> {
        let mut config = UdpServerConfig::loopback()
            .poll(poll)
            .pin(server_cpu.into_iter().collect());
        config.protocol.auth = key.clone();
        let server = UdpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)?
            .serve(BenchServer::new(Handlers))?;
        let mut client_config = UdpClientConfig::loopback().poll(PollStrategy::Spin);
        client_config.protocol.auth = key;
        let client = BenchClient::new(UdpClient::connect(server.local_addr(), client_config)?);
        Ok((server, client))
    };
    let pair = [start(None)?, start(Some(AuthKey::from_bytes([0x42; 32])))?];
    let hist = || Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds");
    let mut cases = [
        format!("rpc spin {what}, paired"),
        format!("rpc spin {what}, authenticated"),
    ]
    .map(|name| Case {
        name,
        hist: hist(),
        allocs_per_call: None,
        floor: None,
        rounds: Vec::new(),
    });
    cases[1].floor = Some(cases[0].name.clone());
    let (blocks, size) = (PAIR_BLOCKS, (n / PAIR_BLOCKS).max(1));
    let bar = progress(blocks, &format!("rpc spin {what}, auth and plain"));
    for (_, client) in &pair {
        (0..warmup).for_each(|_| op(client));
    }
    let before = allocations();
    for b in 0..blocks {
        // Alternate which of the two goes first, so neither always follows the other.
        for k in [b % 2, 1 - b % 2].map(|k| k as usize) {
            let mut block = hist();
            for _ in 0..size {
                let t = Instant::now();
                op(&pair[k].1);
                let ns = (t.elapsed().as_nanos() as u64).max(1);
                cases[k].hist.saturating_record(ns);
                block.saturating_record(ns);
            }
            cases[k]
                .rounds
                .push(block.value_at_quantile(0.5) as f64 / 1000.0);
        }
        bar.inc(1);
    }
    let allocs = (allocations() - before) as f64 / (2 * blocks * size) as f64;
    bar.finish_and_clear();
    let [plain, auth] = cases.map(|c| Case {
        allocs_per_call: Some(allocs),
        ..c
    });
    let [p, a] = pair.map(|(server, client)| {
        let r = client.transport().stats().retransmissions;
        drop(client);
        server.shutdown();
        r
    });
    Ok([(plain, p), (auth, a)])
}

/// One call of a paired case.
type Call<'a> = dyn Fn(&BenchClient<UdpClient>) + 'a;

/// Blocks of [`auth_paired`] for each of its two servers.
const PAIR_BLOCKS: u64 = 20;

/// How long [`auth_paired`]'s servers spin after their last call: well above the gap between
/// two calls of a busy client (a round trip, with its stalls), so that a busy server never
/// parks, and short against a block, so the server a block leaves soon gives the cpu to the
/// other.
const PAIR_PARK_US: u64 = 50;

/// Where the two raw floors' time goes, on the client's side: the send call, and the receive
/// call that returned the datagram (p50s over `n` round trips, in `rounds` interleaved rounds).
fn phases(server_cpu: Option<usize>, n: usize, rounds: usize) -> anyhow::Result<()> {
    let n = (n / rounds).max(1);
    let (mut udp, mut uring) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let echo = RawEcho::start(PollStrategy::Spin, server_cpu, RawStyle::Direct)?;
        let mut ping = RawPing::connect(echo.addr(), PollStrategy::Spin, 32, RawStyle::Direct)?;
        (0..n / 5).for_each(|_| ping.ping());
        udp.extend((0..n).map(|_| ping.ping_phases()));
        drop(echo);
        let echo = UringEcho::start(server_cpu)?;
        let mut ping = UringPing::connect(echo.addr(), 32)?;
        (0..n / 5).for_each(|_| ping.ping());
        uring.extend((0..n).map(|_| ping.ping_phases()));
    }
    let p50 = |v: &[Phases], f: fn(&Phases) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        d.sort_unstable();
        d[d.len() / 2].as_secs_f64() * 1e6
    };
    println!(
        "\nwhere a raw 32 B round trip's time goes on the client (p50 µs over {} round trips each):",
        udp.len()
    );
    println!(
        "{:<14} {:>10} {:>18}",
        "floor", "send call", "completing receive"
    );
    for (name, v) in [("raw udp", &udp), ("raw io_uring", &uring)] {
        println!(
            "{name:<14} {:>10.2} {:>18.2}",
            p50(v, |p| p.send),
            p50(v, |p| p.receive)
        );
    }
    Ok(())
}
