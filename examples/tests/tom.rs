//! Totally ordered multicast: the same delivery order at every replica, over many seeded
//! runs with random delays, loss, duplication and reordering.

use std::collections::BTreeSet;
use std::time::Duration;

use examples::mesh::Turbulence;
use examples::tom::{TomConfig, run};

#[test]
fn every_replica_delivers_everything_in_the_same_order() {
    for (n, per_replica, runs) in [(3, 30, 8), (4, 20, 4), (6, 10, 2)] {
        for seed in 0..runs {
            let config = TomConfig {
                n,
                per_replica,
                seed: seed * 100 + n as u64,
                turbulence: Turbulence::stormy(Duration::from_micros(300)),
            };
            let r = run(config).unwrap_or_else(|e| panic!("n={n} seed={}: {e:#}", config.seed));
            let ctx = format!("n={n} seed={}", config.seed);
            let total = n * per_replica;
            let first = &r.delivered[0];
            assert_eq!(first.len(), total, "{ctx}");
            // Every message exactly once.
            let distinct: BTreeSet<u64> = first.iter().map(|&(_, _, op)| op).collect();
            assert_eq!(distinct.len(), total, "{ctx}: a message delivered twice");
            // In (timestamp, sender) order, and each sender's messages in the order sent.
            assert!(
                first
                    .windows(2)
                    .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)),
                "{ctx}"
            );
            for sender in 1..=n as u64 {
                let ops: Vec<u64> = first
                    .iter()
                    .filter(|m| m.1 == sender)
                    .map(|m| m.2)
                    .collect();
                assert!(
                    ops.windows(2).all(|w| w[0] < w[1]),
                    "{ctx}: sender {sender} reordered"
                );
            }
            for (i, d) in r.delivered.iter().enumerate() {
                assert_eq!(d, first, "{ctx}: replica {} differs", i + 1);
                assert_eq!(r.values[i], r.values[0], "{ctx}");
            }
            let peers = (n - 1) as u64;
            assert_eq!(r.data_sent, peers * total as u64, "{ctx}");
            assert_eq!(r.acks_sent, peers * peers * total as u64, "{ctx}");
            assert_eq!(r.anomalies, 0, "{ctx}");
        }
    }
}
