//! Across real network namespaces joined by veth pairs: a key-value server in one namespace
//! and its client in another, each on its own address; and the lock service across three
//! (primary, backup, clients), the primary process killed mid-run and the history checked.
//!
//! Needs root (CI runs as root) and `ip netns`; elsewhere each test says why it skips. Each
//! test makes namespaces named after this process and the test, and its guard removes them
//! (and kills what it started in them) however the test ends. No traffic leaves them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use examples::linearizability::{Verdict, check, double_holds};
use examples::lockservice::{Served, from_line, now_ns};

/// Namespaces and the processes started in them; dropping it kills and removes everything.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Namespaces `roles` (one letter each), their loopbacks up, none linked yet.
    fn new(test: char, roles: &[char]) -> Result<Lab, String> {
        let mut lab = Lab {
            tag: format!("{}{test}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        for &role in roles {
            let ns = lab.ns(role);
            ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn ns(&self, role: char) -> String {
        format!("sr{}{role}", self.tag)
    }

    /// A veth pair between namespaces `a` and `b`, addressed `a_addr` and `b_addr` (CIDR).
    fn link(&self, a: char, a_addr: &str, b: char, b_addr: &str) -> Result<(), String> {
        let (na, nb) = (self.ns(a), self.ns(b));
        let (ia, ib) = (
            format!("v{}{a}{b}", self.tag),
            format!("v{}{b}{a}", self.tag),
        );
        ip(&[
            "link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns", &nb,
        ])?;
        for (ns, dev, addr) in [(&na, &ia, a_addr), (&nb, &ib, b_addr)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Starts `bin args` inside namespace `role`; its stdout lines come through the receiver.
    fn spawn(&mut self, role: char, bin: &str, args: &[&str]) -> (usize, Receiver<String>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role), bin])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn in namespace");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.children.push(child);
        (self.children.len() - 1, rx)
    }

    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    fn wait(&mut self, i: usize) -> std::process::ExitStatus {
        self.children[i].wait().expect("wait for child")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The lab, or the reason it cannot be made here.
fn lab(test: char, roles: &[char]) -> Option<Lab> {
    match Lab::new(test, roles) {
        Ok(lab) => Some(lab),
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot create network namespaces here ({e}); run as root with iproute2 to test across namespaces"
            );
            None
        }
    }
}

/// Waits for the line starting `ready` (or `serving on`) from a server just started.
fn ready(rx: &Receiver<String>) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server did not report it was serving");
        if line.starts_with("ready") || line.starts_with("serving on") {
            return line;
        }
    }
}

#[test]
fn a_key_value_client_calls_its_server_across_two_namespaces() {
    let Some(mut lab) = lab('k', &['s', 'c']) else {
        return;
    };
    lab.link('s', "10.77.1.2/24", 'c', "10.77.1.1/24").unwrap();
    let (_, server) = lab.spawn(
        's',
        env!("CARGO_BIN_EXE_kvstore"),
        &["--serve", "0.0.0.0:7100"],
    );
    ready(&server);
    let (client, lines) = lab.spawn(
        'c',
        env!("CARGO_BIN_EXE_kvstore"),
        &["--connect", "10.77.1.2:7100", "--keys", "2000"],
    );
    let status = lab.wait(client);
    // Everything it printed: the reader thread ends at the pipe's end, which may come after
    // the exit status (taking only what had arrived by then could miss the last lines).
    let out: Vec<String> = lines.iter().collect();
    assert!(status.success(), "client failed: {out:?}");
    assert!(
        out.iter().any(|l| l.contains("all answers checked")),
        "{out:?}"
    );
    eprintln!("{}", out.join("\n"));
}

#[test]
fn the_lock_service_survives_its_primary_killed_across_three_namespaces() {
    let mut histories = 0;
    for run in 0..5 {
        match lock_run(run) {
            Some(h) => histories += h,
            None => return,
        }
    }
    eprintln!("{histories} per-lock histories checked in all");
}

/// One run: the lab, the servers, the clients, the kill and the checks; the number of
/// per-lock histories checked, or `None` if namespaces cannot be made here.
fn lock_run(run: u64) -> Option<usize> {
    // Clients (c), primary (p), backup (b): each pair joined by a veth pair of its own.
    let mut lab = lab('l', &['c', 'p', 'b'])?;
    lab.link('c', "10.77.1.1/24", 'p', "10.77.1.2/24").unwrap();
    lab.link('c', "10.77.2.1/24", 'b', "10.77.2.2/24").unwrap();
    lab.link('p', "10.77.3.1/24", 'b', "10.77.3.2/24").unwrap();
    let bin = env!("CARGO_BIN_EXE_lockservice");
    let (_, backup) = lab.spawn('b', bin, &["backup", "--listen", "0.0.0.0:7001"]);
    ready(&backup);
    let (primary, primary_out) = lab.spawn(
        'p',
        bin,
        &[
            "primary",
            "--listen",
            "0.0.0.0:7000",
            "--backup",
            "10.77.3.2:7001",
        ],
    );
    ready(&primary_out);
    let (clients, n, ops) = ("8", 8usize, 80usize);
    let (client, lines) = lab.spawn(
        'c',
        bin,
        &[
            "clients",
            "--primary",
            "10.77.1.2:7000",
            "--backup",
            "10.77.2.2:7001",
            "--clients",
            clients,
            "--ops",
            &ops.to_string(),
            "--seed",
            &(u64::from(std::process::id()) * 10 + run).to_string(),
        ],
    );
    // Kill the primary (SIGKILL) once a third of the operations have ended.
    let mut recorded = Vec::new();
    let third = n * ops / 3;
    while recorded.len() < third {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("clients stalled before the primary was killed");
        recorded.extend(from_line(&line));
    }
    let killed_at = now_ns();
    lab.kill(primary);
    // The rest, until the clients exit.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        recorded.extend(from_line(&line));
    }
    assert!(lab.wait(client).success(), "the clients failed");

    let ops_seen: Vec<_> = recorded.iter().map(|r| r.op.clone()).collect();
    assert!(
        ops_seen.iter().all(|o| o.response.is_some()),
        "with the backup up every operation is answered"
    );
    let histories = match check(&ops_seen) {
        Verdict::Linearizable { histories } => histories,
        other => panic!("{other:?}"),
    };
    assert_eq!(double_holds(&ops_seen), None, "a lock held by two clients");
    let after_kill: Vec<_> = recorded
        .iter()
        .filter(|r| r.served == Some(Served::Backup))
        .filter_map(|r| r.op.response.map(|(t, _)| t))
        .collect();
    let first = *after_kill
        .iter()
        .min()
        .expect("no operation was answered by the backup");
    assert!(recorded.iter().any(|r| r.served == Some(Served::Primary)));
    eprintln!(
        "{} operations ({} through the primary, {} through the backup), {histories} per-lock histories linearizable; failover across namespaces (primary killed to first answer from the backup): {:.1?}",
        recorded.len(),
        recorded
            .iter()
            .filter(|r| r.served == Some(Served::Primary))
            .count(),
        after_kill.len(),
        Duration::from_nanos(first.saturating_sub(killed_at)),
    );
    Some(histories)
}
