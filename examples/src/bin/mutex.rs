//! Lamport's distributed mutual exclusion and Ricart and Agrawala's, each process a node of
//! the framework whose clock orders the requests; prints the messages each algorithm sent per
//! critical section for N = 3, 5 and 8, under random delays, loss, duplication and
//! reordering, and checks that no two processes were ever inside at once.
//!
//! ```text
//! cargo run --release -p examples --bin mutex
//! ```

use std::time::Duration;

use examples::mesh::Turbulence;
use examples::mutex::{Algorithm, RunConfig, run};

fn main() -> anyhow::Result<()> {
    println!(
        "{:<16} {:>2} {:>8} {:>9} {:>9} {:>7} {:>6} {:>7} {:>10} {:>8}",
        "algorithm",
        "N",
        "entries",
        "messages",
        "per entry",
        "request",
        "ack",
        "release",
        "reply",
        "overlaps"
    );
    for algorithm in [Algorithm::Lamport, Algorithm::RicartAgrawala] {
        for n in [3, 5, 8] {
            let report = run(RunConfig {
                n,
                entries_per_process: 10,
                algorithm,
                seed: n as u64,
                turbulence: Turbulence::stormy(Duration::from_micros(300)),
            })?;
            println!(
                "{:<16} {:>2} {:>8} {:>9} {:>9.2} {:>7} {:>6} {:>7} {:>10} {:>8}   (expected {} per entry; {:.2?})",
                algorithm.to_string(),
                n,
                report.entries,
                report.sent.total(),
                report.per_entry(),
                report.sent.request,
                report.sent.ack,
                report.sent.release,
                report.sent.reply,
                report.overlaps,
                algorithm.expected_per_entry(n),
                report.elapsed,
            );
            anyhow::ensure!(report.overlaps == 0, "two processes were inside at once");
            anyhow::ensure!(report.sent == report.delivered, "messages lost");
        }
    }
    Ok(())
}
