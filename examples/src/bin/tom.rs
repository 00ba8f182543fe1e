//! Totally ordered multicast: replicas, each a node of the framework, multicast operations
//! at once through a network that delays, loses, duplicates and reorders datagrams; every
//! replica delivers every operation in the same (Lamport timestamp, sender) order and ends in
//! the same state.
//!
//! ```text
//! cargo run --release -p examples --bin tom
//! ```

use std::time::Duration;

use examples::mesh::Turbulence;
use examples::tom::{TomConfig, run};

fn main() -> anyhow::Result<()> {
    for n in [3, 5] {
        let per_replica = 50;
        let r = run(TomConfig {
            n,
            per_replica,
            seed: n as u64,
            turbulence: Turbulence::stormy(Duration::from_micros(300)),
        })?;
        let same = r.delivered.iter().all(|d| *d == r.delivered[0]);
        let multicasts = (n * per_replica) as u64;
        println!(
            "{n} replicas, {multicasts} multicasts in {:.2?}: every replica delivered {} in {} order, final state {:#018x}; {} data + {} acks = {:.1} messages per multicast (N(N-1) = {})",
            r.elapsed,
            r.delivered[0].len(),
            if same { "the same" } else { "DIFFERENT" },
            r.values[0],
            r.data_sent,
            r.acks_sent,
            (r.data_sent + r.acks_sent) as f64 / multicasts as f64,
            n * (n - 1),
        );
        println!(
            "  first deliveries: {}",
            r.delivered[0]
                .iter()
                .take(6)
                .map(|(ts, from, _)| format!("{ts}@{from}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        anyhow::ensure!(same, "replicas disagree on the order");
    }
    Ok(())
}
