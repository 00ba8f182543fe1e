//! Both mutual-exclusion algorithms at N = 3, 5 and 8, over many seeded runs with random
//! delays, loss, duplication and reordering: exact message counts, no two processes inside at
//! once, entries in the order of their requests' (timestamp, process).

use std::time::Duration;

use examples::mesh::Turbulence;
use examples::mutex::{Algorithm, RunConfig, RunReport, run};

fn check(algorithm: Algorithm, n: usize, runs: u64, entries_per_process: usize) {
    for seed in 0..runs {
        let config = RunConfig {
            n,
            entries_per_process,
            algorithm,
            seed: seed * 1000 + n as u64,
            turbulence: Turbulence::stormy(Duration::from_micros(200)),
        };
        let r: RunReport =
            run(config).unwrap_or_else(|e| panic!("{algorithm} n={n} seed={seed}: {e:#}"));
        let entries = (n * entries_per_process) as u64;
        let peers = (n - 1) as u64;
        let ctx = format!("{algorithm} n={n} seed={}: {r:?}", config.seed);
        assert_eq!(r.entries, entries, "{ctx}");
        assert_eq!(r.overlaps, 0, "two inside at once: {ctx}");
        assert_eq!(r.out_of_order, 0, "entries out of request order: {ctx}");
        assert_eq!(r.anomalies, 0, "{ctx}");
        assert_eq!(r.sent, r.delivered, "{ctx}");
        assert_eq!(r.sent.request, peers * entries, "{ctx}");
        match algorithm {
            Algorithm::Lamport => {
                assert_eq!(r.sent.ack, peers * entries, "{ctx}");
                assert_eq!(r.sent.release, peers * entries, "{ctx}");
                assert_eq!(r.sent.reply, 0, "{ctx}");
            }
            Algorithm::RicartAgrawala => {
                assert_eq!(r.sent.reply, peers * entries, "{ctx}");
                assert_eq!(r.sent.ack + r.sent.release, 0, "{ctx}");
            }
        }
        assert_eq!(
            r.sent.total(),
            algorithm.expected_per_entry(n) * entries,
            "{ctx}"
        );
    }
}

#[test]
fn lamport_sends_3_n_minus_1_per_entry_and_excludes() {
    check(Algorithm::Lamport, 3, 12, 6);
    check(Algorithm::Lamport, 5, 6, 4);
    check(Algorithm::Lamport, 8, 4, 3);
}

#[test]
fn ricart_agrawala_sends_2_n_minus_1_per_entry_and_excludes() {
    check(Algorithm::RicartAgrawala, 3, 12, 6);
    check(Algorithm::RicartAgrawala, 5, 6, 4);
    check(Algorithm::RicartAgrawala, 8, 4, 3);
}
