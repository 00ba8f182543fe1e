//! The suite's report: tables on the terminal and in Markdown, a JSON summary for
//! `--compare`, one HdrHistogram file per case, and SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{Group, Kind, Outcome, Spec};

/// One finished run.
pub struct Run<'a> {
    pub specs: &'a [Spec],
    pub outcomes: &'a [Outcome],
    pub rounds: u32,
    pub latency_seconds: f64,
    pub load_seconds: f64,
    pub pinned: bool,
    pub elapsed: Duration,
    pub quick: bool,
}

/// The machine a run came from.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
}

/// One case in the JSON summary.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CaseJson {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub in_flight: Option<usize>,
    pub offered_rate: Option<f64>,
    pub transport: String,
    pub payload: usize,
    pub floor: Option<String>,
    pub calls: u64,
    pub seconds: f64,
    pub calls_per_s: f64,
    pub cpu_us_per_call: f64,
    pub allocs_per_call: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The median over rounds of this case's p50 (latency) or calls/s (throughput) over its
    /// floor's in the same round.
    pub ratio: Option<f64>,
    pub errors: Vec<String>,
}

/// The JSON summary of a run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Report {
    pub machine: Machine,
    pub rounds: u32,
    pub latency_seconds: f64,
    pub load_seconds: f64,
    pub pinned: bool,
    pub quick: bool,
    pub elapsed_seconds: f64,
    pub cases: Vec<CaseJson>,
}

/// `target/bench/<unix time>`, next to the build.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/suite-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .context("the suite runs from a cargo target directory")?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(target.join("bench").join(secs.to_string()))
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let dirty = !command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    Machine {
        cpu,
        // Every CPU of the machine (this thread is pinned to one by now).
        cpus: std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        rustc: command_line("rustc", &["--version"]),
        commit: format!(
            "{}{}",
            command_line("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { " (with changes)" } else { "" }
        ),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The median over rounds of the case's p50 (or rate) over its floor's.
fn ratio(run: &Run<'_>, i: usize) -> Option<f64> {
    let spec = &run.specs[i];
    let floor = spec.floor.as_ref()?;
    let j = run.specs.iter().position(|s| &s.name == floor)?;
    let (mine, theirs) = (&run.outcomes[i].rounds, &run.outcomes[j].rounds);
    let throughput = matches!(spec.kind, Kind::Throughput(_));
    median(
        mine.iter()
            .zip(theirs)
            .map(|(&(p, r), &(fp, fr))| {
                if throughput {
                    r / fr.max(1e-9)
                } else {
                    p as f64 / (fp as f64).max(1.0)
                }
            })
            .collect(),
    )
}

fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

fn to_json(run: &Run<'_>) -> Report {
    let cases = run
        .specs
        .iter()
        .zip(run.outcomes)
        .enumerate()
        .map(|(i, (s, o))| {
            let t = o.total.as_ref();
            let q = |q: f64| t.map_or(0.0, |t| t.us(q));
            CaseJson {
                name: s.name.clone(),
                group: format!("{:?}", s.group).to_lowercase(),
                kind: match s.kind {
                    Kind::Latency => "latency",
                    Kind::Throughput(_) => "throughput",
                    Kind::OpenLoop(_) => "open-loop",
                }
                .into(),
                in_flight: match s.kind {
                    Kind::Throughput(n) => Some(n),
                    _ => None,
                },
                offered_rate: match s.kind {
                    Kind::OpenLoop(r) => Some(r),
                    _ => None,
                },
                transport: s.transport.into(),
                payload: s.payload,
                floor: s.floor.clone(),
                calls: t.map_or(0, |t| t.calls),
                seconds: t.map_or(0.0, |t| t.wall.as_secs_f64()),
                calls_per_s: t.map_or(0.0, |t| t.rate()),
                cpu_us_per_call: t.map_or(0.0, |t| t.cpu_us_per_call()),
                allocs_per_call: t.map_or(0.0, |t| t.allocs_per_call()),
                p50_us: q(0.5),
                p90_us: q(0.9),
                p99_us: q(0.99),
                p999_us: q(0.999),
                max_us: t.map_or(0.0, |t| t.hist.max() as f64 / 1e3),
                ratio: ratio(run, i),
                errors: o.errors.clone(),
            }
        })
        .collect();
    Report {
        machine: machine(),
        rounds: run.rounds,
        latency_seconds: run.latency_seconds,
        load_seconds: run.load_seconds,
        pinned: run.pinned,
        quick: run.quick,
        elapsed_seconds: run.elapsed.as_secs_f64(),
        cases,
    }
}

/// A table as Markdown (which also reads well on a terminal).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        out.push('|');
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(out, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{c} |", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        &mut out,
    );
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let dashes = "-".repeat((*w).max(3));
        if i == 0 {
            let _ = write!(out, "{dashes}--|");
        } else {
            let _ = write!(out, "-{dashes}:|");
        }
    }
    out.push('\n');
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn f2(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio_cell(c: &CaseJson) -> String {
    match (c.ratio, &c.floor) {
        (Some(r), Some(_)) => format!("{r:.2}x"),
        _ => "—".into(),
    }
}

fn tables(r: &Report) -> String {
    let mut out = String::new();
    let lat: Vec<Vec<String>> = r
        .cases
        .iter()
        .filter(|c| c.kind == "latency")
        .map(|c| {
            vec![
                c.name.clone(),
                f2(c.p50_us),
                f2(c.p90_us),
                f2(c.p99_us),
                f2(c.p999_us),
                f2(c.max_us),
                ratio_cell(c),
                c.floor.clone().unwrap_or_default().replace("floor: ", ""),
                if c.group == "ours" {
                    format!("{:.2}", c.allocs_per_call)
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str("### Closed loop: one call at a time (µs)\n\n");
    out.push_str(&table(
        &[
            "case",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "p50 / floor",
            "floor",
            "allocs/call",
        ],
        &lat,
    ));
    let tput: Vec<Vec<String>> = r
        .cases
        .iter()
        .filter(|c| c.kind == "throughput")
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{:.0}", c.calls_per_s),
                f2(c.cpu_us_per_call),
                f2(c.p50_us),
                f2(c.p99_us),
                ratio_cell(c),
                if c.group == "ours" {
                    format!("{:.2}", c.allocs_per_call)
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str("\n### Throughput: null calls kept in flight\n\n");
    out.push_str(&table(
        &[
            "case",
            "calls/s",
            "CPU µs/call",
            "p50 µs",
            "p99 µs",
            "calls/s / floor",
            "allocs/call",
        ],
        &tput,
    ));
    let open: Vec<Vec<String>> = r
        .cases
        .iter()
        .filter(|c| c.kind == "open-loop")
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{:.0}", c.offered_rate.unwrap_or(0.0)),
                format!("{:.0}", c.calls_per_s),
                f2(c.p50_us),
                f2(c.p99_us),
                f2(c.p999_us),
                f2(c.max_us),
                ratio_cell(c),
            ]
        })
        .collect();
    out.push_str(
        "\n### Open loop: null calls at a fixed rate, latency from each call's scheduled time (µs)\n\n",
    );
    out.push_str(&table(
        &[
            "case",
            "offered/s",
            "done/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "p50 / closed loop",
        ],
        &open,
    ));
    let failed: Vec<&CaseJson> = r.cases.iter().filter(|c| !c.errors.is_empty()).collect();
    if !failed.is_empty() {
        out.push_str("\n### Errors\n\n");
        for c in failed {
            let _ = writeln!(out, "- {}: {}", c.name, c.errors.join("; "));
        }
    }
    out
}

fn header(r: &Report) -> String {
    let m = &r.machine;
    format!(
        "Machine: {} ({} CPUs), Linux {}, {}; commit {}; {}.\n\
         {} interleaved round(s), {} s per latency case and {} s per load case per round; \
         client on cpu 0, servers on cpu 1: {}; the run took {:.0} s.\n",
        m.cpu,
        m.cpus,
        m.kernel,
        m.rustc,
        m.commit,
        m.date,
        r.rounds,
        r.latency_seconds,
        r.load_seconds,
        if r.pinned { "pinned" } else { "not pinned" },
        r.elapsed_seconds
    )
}

/// Writes everything under `dir` and prints the tables.
pub fn write(run: &Run<'_>, dir: &Path) -> anyhow::Result<()> {
    let report = to_json(run);
    let text = tables(&report);
    println!("{}\n{text}", header(&report));
    let hdr_dir = dir.join("hdr");
    std::fs::create_dir_all(&hdr_dir)?;
    for (s, o) in run.specs.iter().zip(run.outcomes) {
        if let Some(t) = &o.total {
            let mut f = std::fs::File::create(hdr_dir.join(format!("{}.hdr", slug(&s.name))))?;
            hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2Serializer::new(),
                &t.hist,
                &mut f,
            )
            .map_err(|e| anyhow::anyhow!("writing a histogram: {e:?}"))?;
        }
    }
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let plots = plots(run, dir)?;
    let mut md = String::from("# Benchmark suite report\n\n");
    md.push_str(&header(&report));
    md.push_str(
        "\nRatios are medians over rounds of per-round ratios to the floor named, measured in \
         the same round. CPU µs/call is the process's CPU time (client and server, every \
         thread) per call. Histograms: `hdr/*.hdr` (HdrHistogram V2).\n\n",
    );
    md.push_str(&text);
    md.push_str("\n### Plots\n\n");
    for p in &plots {
        let _ = writeln!(md, "![{p}]({p})");
    }
    std::fs::write(dir.join("report.md"), md)?;
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// Latency CDFs per transport, throughput against calls in flight, latency against offered
/// load. Returns the files' names.
fn plots(run: &Run<'_>, dir: &Path) -> anyhow::Result<Vec<String>> {
    use plotters::prelude::*;
    let mut files = Vec::new();
    let cases: Vec<(&Spec, &crate::Sample)> = run
        .specs
        .iter()
        .zip(run.outcomes)
        .filter_map(|(s, o)| o.total.as_ref().filter(|t| t.calls > 0).map(|t| (s, t)))
        .collect();

    // Latency CDFs: for each transport, its closed-loop cases of up to 1 KiB (with their
    // floors), by percentile on a "nines" axis.
    let mut transports: Vec<&str> = cases.iter().map(|(s, _)| s.transport).collect();
    transports.dedup();
    transports.sort_unstable();
    transports.dedup();
    let nines = |q: f64| -(1.0 - q).log10();
    let top = 0.999;
    let qs: Vec<f64> = (0..=75)
        .map(|i| 1.0 - 0.5 * 10f64.powf(-(i as f64) / 25.0))
        .filter(|&q| q <= top)
        .collect();
    for t in transports {
        let mine: Vec<&(&Spec, &crate::Sample)> = cases
            .iter()
            .filter(|(s, _)| s.kind == Kind::Latency && s.transport == t && s.payload <= 1024)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let name = format!("latency-cdf-{}.svg", slug(t));
        let lo = mine
            .iter()
            .map(|(_, c)| c.us(0.5))
            .fold(f64::INFINITY, f64::min)
            * 0.7;
        let hi = mine.iter().map(|(_, c)| c.us(top)).fold(0.1, f64::max) * 1.3;
        let path = dir.join(&name);
        let root = SVGBackend::new(&path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Round-trip latency by percentile: {t}"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(nines(0.5)..nines(top), (lo.max(0.01)..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("round trip, µs (log scale)")
            .x_label_formatter(&|x| {
                let n = x.round();
                if (x - n).abs() > 1e-6 || n < 1.0 {
                    return String::new();
                }
                format!("p{}", 100.0 - 100.0 * 10f64.powf(-n))
            })
            .y_label_formatter(&|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()?;
        for (i, (s, c)) in mine.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = qs.iter().map(|&q| (nines(q), c.us(q).max(0.01))).collect();
            let style = if s.group == Group::Floor {
                color.stroke_width(1)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(pts, style))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        files.push(name);
    }

    // Throughput against calls in flight, one line per transport.
    let tput: Vec<&(&Spec, &crate::Sample)> = cases
        .iter()
        .filter(|(s, _)| matches!(s.kind, Kind::Throughput(_)) && s.group != Group::Floor)
        .filter(|(s, _)| !s.name.contains("auth"))
        .collect();
    if !tput.is_empty() {
        let name = "throughput.svg".to_string();
        let hi = tput.iter().map(|(_, c)| c.rate()).fold(1.0, f64::max) * 1.15;
        let path = dir.join(&name);
        let root = SVGBackend::new(&path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Null calls per second against calls in flight",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((1f64..300f64).log_scale(), 0f64..hi / 1e3)?;
        chart
            .configure_mesh()
            .x_desc("calls in flight (log scale)")
            .y_desc("thousand calls/s")
            .draw()?;
        let mut ts: Vec<&str> = tput.iter().map(|(s, _)| s.transport).collect();
        ts.sort_unstable();
        ts.dedup();
        for (i, t) in ts.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = tput
                .iter()
                .filter(|(s, _)| s.transport == *t)
                .filter_map(|(s, c)| match s.kind {
                    Kind::Throughput(n) => Some((n as f64, c.rate() / 1e3)),
                    _ => None,
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(t.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if let Some((_, floor)) = cases
            .iter()
            .find(|(s, _)| matches!(s.kind, Kind::Throughput(_)) && s.group == Group::Floor)
        {
            let y = floor.rate() / 1e3;
            chart
                .draw_series(LineSeries::new(
                    vec![(1.0, y), (300.0, y)],
                    BLACK.stroke_width(1),
                ))?
                .label("floor: raw udp mmsg window of 32")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        files.push(name);
    }

    // Latency against offered load: p50 and p99 per transport.
    let open: Vec<&(&Spec, &crate::Sample)> = cases
        .iter()
        .filter(|(s, _)| matches!(s.kind, Kind::OpenLoop(_)))
        .collect();
    if !open.is_empty() {
        let name = "open-loop.svg".to_string();
        let rate = |s: &Spec| match s.kind {
            Kind::OpenLoop(r) => r,
            _ => 0.0,
        };
        let (lo_r, hi_r) = open
            .iter()
            .fold((f64::INFINITY, 1.0f64), |(lo, hi), (s, _)| {
                (lo.min(rate(s)), hi.max(rate(s)))
            });
        let lo = open
            .iter()
            .map(|(_, c)| c.us(0.5))
            .fold(f64::INFINITY, f64::min)
            * 0.7;
        let hi = open.iter().map(|(_, c)| c.us(0.99)).fold(1.0, f64::max) * 1.5;
        let path = dir.join(&name);
        let root = SVGBackend::new(&path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency against offered load (open loop)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (lo_r * 0.8..hi_r * 1.25).log_scale(),
                (lo.max(0.01)..hi).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("offered calls/s (log scale)")
            .y_desc("latency from scheduled send, µs (log scale)")
            .draw()?;
        let mut ts: Vec<&str> = open.iter().map(|(s, _)| s.transport).collect();
        ts.sort_unstable();
        ts.dedup();
        for (i, t) in ts.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            for (q, width, label) in [(0.5, 2, "p50"), (0.99, 1, "p99")] {
                let pts: Vec<(f64, f64)> = open
                    .iter()
                    .filter(|(s, _)| s.transport == *t)
                    .map(|(s, c)| (rate(s), c.us(q).max(0.01)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(width)))?
                    .label(format!("{t} {label}"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        files.push(name);
    }
    Ok(files)
}

fn load(path: &Path) -> anyhow::Result<Report> {
    let file = if path.is_dir() {
        path.join("report.json")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
}

/// Prints two runs side by side: p50 (latency cases) or calls/s (load cases), and NEW / OLD.
pub fn compare(old: &Path, new: &Path) -> anyhow::Result<()> {
    let (a, b) = (load(old)?, load(new)?);
    println!("OLD: {}", header(&a));
    println!("NEW: {}", header(&b));
    let rows: Vec<Vec<String>> = b
        .cases
        .iter()
        .map(|n| {
            let o = a.cases.iter().find(|o| o.name == n.name);
            let (metric, ov, nv) = match n.kind.as_str() {
                "throughput" => ("calls/s", o.map(|o| o.calls_per_s), n.calls_per_s),
                _ => ("p50 µs", o.map(|o| o.p50_us), n.p50_us),
            };
            vec![
                n.name.clone(),
                metric.into(),
                ov.map_or("—".into(), f2),
                f2(nv),
                ov.filter(|&v| v > 0.0)
                    .map_or("—".into(), |v| format!("{:.2}x", nv / v)),
                o.and_then(|o| o.ratio)
                    .map_or("—".into(), |r| format!("{r:.2}x")),
                n.ratio.map_or("—".into(), |r| format!("{r:.2}x")),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "case",
                "metric",
                "OLD",
                "NEW",
                "NEW / OLD",
                "OLD vs floor",
                "NEW vs floor"
            ],
            &rows
        )
    );
    let gone: Vec<&str> = a
        .cases
        .iter()
        .filter(|o| !b.cases.iter().any(|n| n.name == o.name))
        .map(|o| o.name.as_str())
        .collect();
    if !gone.is_empty() {
        println!("only in OLD: {}", gone.join(", "));
    }
    Ok(())
}
