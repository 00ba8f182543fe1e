//! `cargo xtask <task>`: project automation. Tasks:
//!
//! - `ci`: what CI runs (formatting check, clippy, the tests).
//! - `fuzz [seconds]`: installs nightly and cargo-fuzz if missing, runs every fuzz target for
//!   `seconds` each (default 60), starting from the committed corpus.
//! - `fuzz-seeds`: rewrites the committed seed corpus (`fuzz/corpus/`).
//! - `sim [seeds]`: the deterministic simulation over many seeds (default 10000), in release.
//! - `bench`: the latency demo, then the criterion benchmarks.

mod seeds;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

const FUZZ_TARGETS: [&str; 7] = [
    "packet",
    "server",
    "client",
    "reassembly",
    "decode",
    "adversary",
    "shm_region",
];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let have_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_fuzz {
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    for target in FUZZ_TARGETS {
        // New inputs go to a scratch corpus; the committed seeds are read but not rewritten.
        let scratch = root().join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        run(Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(root().join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=70000",
            ]))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            run(cargo().args(["test", "--workspace"]))
        }
        Some("fuzz") => fuzz(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60)),
        Some("fuzz-seeds") => seeds::write(&root().join("fuzz/corpus")),
        Some("sim") => {
            let seeds = args.get(1).cloned().unwrap_or_else(|| "10000".into());
            run(cargo().env("RPC_SIM_SEEDS", seeds).args([
                "test",
                "--release",
                "-p",
                "rpc-core",
                "--test",
                "simulation",
                "--",
                "--nocapture",
            ]))
        }
        Some("bench") => {
            run(cargo().args(["run", "--release", "-p", "examples", "--bin", "latency"]))?;
            run(cargo().args(["bench", "-p", "benches"]))
        }
        _ => bail!("usage: cargo xtask <ci | fuzz [seconds] | fuzz-seeds | sim [seeds] | bench>"),
    }
}
