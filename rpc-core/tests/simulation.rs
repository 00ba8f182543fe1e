//! The deterministic simulation over many seeds (see `rpc_core::sim` for what it checks).
//!
//! - `RPC_SIM_SEEDS=n` runs `n` seeds (default 100); `RPC_SIM_SEED_START=k` starts at `k`.
//! - `RPC_SIM_SEED=s` replays one seed and prints its report.

use rpc_core::sim::{self, SimConfig, SimReport};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn simulation_over_many_seeds() {
    let (start, count) = match env_u64("RPC_SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("RPC_SIM_SEED_START").unwrap_or(0),
            env_u64("RPC_SIM_SEEDS").unwrap_or(100),
        ),
    };
    let mut total = SimReport::default();
    for seed in start..start + count {
        match sim::run(&SimConfig::for_seed(seed)) {
            Ok(report) => total.merge(&report),
            Err(failure) => panic!("{failure}"),
        }
    }
    println!("{total}");
    assert_eq!(total.seeds, count);
    // Over many seeds, most calls get their reply and every fault was really exercised. (A
    // single seed may have limits so tight that most of its calls fail, correctly.)
    if count >= 20 {
        assert!(
            total.succeeded * 10 > total.calls * 8,
            "too few calls succeeded:\n{total}"
        );
        assert!(
            total.lost > 0 && total.duplicated > 0 && total.reordered > 0,
            "{total}"
        );
        assert!(total.retransmissions > 0, "{total}");
        assert!(total.answered_from_cache > 0, "{total}");
        assert!(total.dropped_executing > 0, "{total}");
        assert!(
            total.server_restarts > 0 && total.client_restarts > 0,
            "{total}"
        );
        assert!(total.outcome_unknown > 0, "{total}");
        assert!(total.mismatched > 0, "{total}");
        // The adversary attacked, in both modes, and the server turned it away.
        assert!(
            total.adversary_seeds > 0 && total.authenticated_seeds > 0,
            "{total}"
        );
        let a = &total.attacks;
        assert!(
            a.replayed > 0
                && a.mutated > 0
                && a.forged_requests > 0
                && a.forged_acks > 0
                && a.huge_stamps > 0
                && a.hellos > 0,
            "{total}"
        );
        assert!(
            total.bad_tag > 0 && total.wrong_address > 0 && total.bad_stamp > 0,
            "{total}"
        );
        // Every client's last call, after the run, got its answer.
        assert!(total.final_calls >= total.seeds * 2, "{total}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::for_seed(4242);
    let a = sim::run(&cfg).unwrap();
    let b = sim::run(&cfg).unwrap();
    assert_eq!(a, b);
    assert!(a.calls > 0);
}
