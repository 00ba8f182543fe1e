//! `cargo xtask <task>`: project automation.
//!
//! - `ci`: formatting check, clippy with warnings denied, the tests, the docs with warnings
//!   denied, and the benchmark suite's smoke run (`bench --quick`).
//! - `bench [ARGS]`: the benchmark suite (`benches/benches/suite.rs`; `--quick`, `--only`,
//!   `--compare OLD NEW`, ... are passed to it). `bench --micro` runs the criterion
//!   micro-benchmarks instead.
//! - `fuzz [TARGET] [--time SECS]`: installs nightly and cargo-fuzz if missing, runs one fuzz
//!   target or every one for `SECS` each (default 60), starting from the committed corpus,
//!   and prints each target's executions and time.
//! - `fuzz-seeds`: rewrites the committed seed corpus (`fuzz/corpus/`).
//! - `sim [SEEDS]`: the deterministic simulation over many seeds (default 10000), in release.
//! - `loom`: the shared-memory ring's loom models (every interleaving of small rings).
//! - `miri`: the shared-memory ring's tests under Miri (installs the component if missing).

mod seeds;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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

/// Every fuzz target: each decoder, the state machines, the adversarial server and the
/// shared-memory ring reader.
const FUZZ_TARGETS: [&str; 7] = [
    "packet",
    "server",
    "client",
    "reassembly",
    "decode",
    "adversary",
    "shm_region",
];

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn nightly() -> anyhow::Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(())
}

/// What one fuzz target did.
struct FuzzRun {
    target: String,
    executions: u64,
    seconds: f64,
    crashed: bool,
}

fn fuzz(only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    nightly()?;
    if !succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets: {}",
            FUZZ_TARGETS.join(", ")
        ),
        None => FUZZ_TARGETS.to_vec(),
    };
    let mut runs = Vec::new();
    for target in targets {
        // New inputs go to a scratch corpus; the committed seeds are read but not rewritten.
        let scratch = root().join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(root().join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=70000",
                "-print_final_stats=1",
            ])
            .stderr(Stdio::piped());
        eprintln!("$ {cmd:?}");
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
        let mut executions = 0;
        let mut crashed = false;
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines() {
                let line = line?;
                if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                    executions = n.trim().parse().unwrap_or(0);
                }
                if line.contains("ERROR: libFuzzer") || line.contains("SUMMARY:") {
                    crashed = true;
                }
                // libFuzzer's progress lines are many; keep the rest (build output,
                // findings, final statistics).
                if !line.starts_with('#') {
                    eprintln!("{line}");
                }
            }
        }
        let status = child.wait()?;
        runs.push(FuzzRun {
            target: target.into(),
            executions,
            seconds: started.elapsed().as_secs_f64(),
            crashed: crashed || !status.success(),
        });
    }
    println!("\n| target | executions | seconds | result |\n|---|---:|---:|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.0} | {} |",
            r.target,
            r.executions,
            r.seconds,
            if r.crashed {
                "CRASH (see fuzz/artifacts/)"
            } else {
                "no crash"
            }
        );
    }
    if runs.iter().any(|r| r.crashed) {
        bail!("a fuzz target crashed: add the input to its corpus once fixed");
    }
    Ok(())
}

fn usage() -> anyhow::Result<()> {
    bail!(
        "usage: cargo xtask <ci | bench [--micro | suite args] | fuzz [target] [--time SECS] | \
         fuzz-seeds | sim [seeds] | loom | miri>"
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "rpc-transport/tokio",
                "--",
                "-D",
                "warnings",
            ]))?;
            run(cargo().args(["test", "--workspace"]))?;
            run(cargo().env("RUSTDOCFLAGS", "-D warnings").args([
                "doc",
                "--workspace",
                "--no-deps",
            ]))?;
            run(cargo().args([
                "bench", "-p", "benches", "--bench", "suite", "--", "--quick",
            ]))
        }
        Some("bench") if rest.first() == Some(&"--micro") => run(cargo()
            .args(["bench", "-p", "benches", "--bench", "micro", "--"])
            .args(&rest[1..])),
        Some("bench") => run(cargo()
            .args(["bench", "-p", "benches", "--bench", "suite", "--"])
            .args(&rest)),
        Some("fuzz") => {
            let mut target = None;
            let mut seconds = 60;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "--time" => {
                        seconds = it
                            .next()
                            .context("--time needs a number of seconds")?
                            .parse()
                            .context("--time needs a number of seconds")?;
                    }
                    t if target.is_none() && !t.starts_with('-') => target = Some(t),
                    other => bail!("unexpected argument {other:?}"),
                }
            }
            fuzz(target, seconds)
        }
        Some("fuzz-seeds") => seeds::write(&root().join("fuzz/corpus")),
        Some("sim") => {
            let seeds = rest.first().copied().unwrap_or("10000");
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
        Some("loom") => run(cargo().env("RUSTFLAGS", "--cfg loom").args([
            "test",
            "-p",
            "rpc-transport",
            "--lib",
            "--release",
            "--target-dir",
            "target/loom",
            "shm::ring",
        ])),
        Some("miri") => {
            nightly()?;
            if !succeeds(Command::new("cargo").args(["+nightly", "miri", "--version"])) {
                run(Command::new("rustup").args([
                    "component",
                    "add",
                    "--toolchain",
                    "nightly",
                    "miri",
                    "rust-src",
                ]))?;
            }
            // The rustup proxy (not this cargo) picks the nightly toolchain.
            run(Command::new("cargo").current_dir(root()).args([
                "+nightly",
                "miri",
                "test",
                "-p",
                "rpc-transport",
                "--lib",
                "--target-dir",
                "target/miri",
                "shm::ring::tests",
            ]))
        }
        _ => usage(),
    }
}
