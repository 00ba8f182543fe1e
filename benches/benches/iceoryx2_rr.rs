//! Round-trip latency of iceoryx2 request-response (zero-copy shared memory, `ipc` service
//! type) for 32-byte and 1 KiB payloads: client on cpu 0, echo server on cpu 1, both
//! busy-polling. A peer to compare the crate's calls against, in the benchmarks only.
//!
//! ```text
//! cargo bench -p benches --bench iceoryx2_rr
//! cargo bench -p benches --bench iceoryx2_rr -- --iterations 200000 --warmup 50000
//! ```

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;

#[path = "iceoryx2_rr/peer.rs"]
pub mod peer;

#[derive(Parser, Debug)]
#[command(about = "Round-trip latency of iceoryx2 request-response, 32 B and 1 KiB")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Measured round trips per payload size.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Unmeasured round trips before them.
    #[arg(long, default_value_t = 20_000)]
    warmup: u64,
    /// Payload sizes in bytes, each at least 8.
    #[arg(long, value_delimiter = ',', default_value = "32,1024")]
    payloads: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Without a config file iceoryx2 warns that it uses its defaults, which is what is meant;
    // IOX2_LOG_LEVEL still overrides this.
    iceoryx2::prelude::set_log_level_from_env_or(iceoryx2::prelude::LogLevel::Error);
    rpc_transport::pin_to_cpu(0).context("pinning the client to cpu 0")?;
    println!(
        "iceoryx2 request-response (ipc), client cpu 0, server cpu 1, {} round trips after {} warm-up",
        args.iterations, args.warmup
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "payload", "p50 us", "p99 us", "p99.9 us", "mean us", "max us"
    );
    for &payload in &args.payloads {
        let times = peer::round_trips(payload, args.warmup, args.iterations, Some(1))
            .with_context(|| format!("{payload}-byte round trips"))?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        for &ns in &times {
            histogram.record(ns.max(1))?;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        println!(
            "{:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            payload,
            us(histogram.value_at_quantile(0.50)),
            us(histogram.value_at_quantile(0.99)),
            us(histogram.value_at_quantile(0.999)),
            histogram.mean() / 1e3,
            us(histogram.max()),
        );
    }
    Ok(())
}
