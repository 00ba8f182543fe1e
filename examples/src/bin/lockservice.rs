//! The replicated lock service (primary and backup, after the lab 1 lock service): clients
//! lock and unlock named locks through the primary, which forwards every decision to the
//! backup before answering; midway the primary halts, the clients go on through the backup,
//! and the history of every operation is checked for linearizability against the lock model.
//!
//! ```text
//! cargo run --release -p examples --bin lockservice            # all of it in this process
//! ```
//!
//! Or one process per role, on hosts (or network namespaces) of their own:
//!
//! ```text
//! lockservice backup  --listen 0.0.0.0:7001
//! lockservice primary --listen 0.0.0.0:7000 --backup 10.0.3.2:7001
//! lockservice clients --primary 10.0.1.2:7000 --backup 10.0.2.2:7001 --clients 8 --ops 60
//! ```
//!
//! The servers print `ready <addr> pid <pid>` once serving; the clients print one `op ...` line per
//! operation as it ends (see `examples::lockservice::to_line`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use examples::linearizability::{Verdict, check, double_holds};
use examples::lockservice::{
    Clerk, LockServer, LockServiceClient, LockServiceServer, Recorded, Served, now_ns, to_line,
    workload,
};
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::{UdpClient, UdpClientConfig, UdpServerConfig};
use rpc_transport::{Node, PollStrategy};

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve as the backup.
    Backup {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Serve as the primary, forwarding to the backup at `backup`.
    Primary {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        backup: SocketAddr,
    },
    /// Run clients against the two servers and print every operation.
    Clients {
        #[arg(long)]
        primary: SocketAddr,
        #[arg(long)]
        backup: SocketAddr,
        #[arg(long, default_value_t = 8)]
        clients: u64,
        #[arg(long, default_value_t = 60)]
        ops: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long a client waits for the primary before turning to the backup.
        #[arg(long, default_value_t = 300)]
        primary_timeout_ms: u64,
    },
}

fn client_config(server: SocketAddr) -> UdpClientConfig {
    let mut c = if server.ip().is_loopback() {
        UdpClientConfig::loopback()
    } else {
        UdpClientConfig::default()
    };
    c = c.poll(PollStrategy::Block);
    c.protocol.initial_rto = Duration::from_millis(5);
    c.protocol.min_rto = Duration::from_millis(2);
    c.protocol.max_rto = Duration::from_millis(100);
    c.connect_timeout = Duration::from_secs(5);
    c
}

fn server_config(addr: SocketAddr) -> UdpServerConfig {
    let c = if addr.ip().is_loopback() {
        UdpServerConfig::loopback()
    } else {
        UdpServerConfig::default()
    };
    c.poll(PollStrategy::Block)
}

fn names() -> Vec<String> {
    ["grades", "exams", "roster"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn serve_forever(addr: SocketAddr, backup: Option<SocketAddr>) -> anyhow::Result<()> {
    let node = Node::new()?;
    let server = match backup {
        None => LockServer::backup(),
        Some(b) => LockServer::primary(
            LockServiceClient::new(
                node.connect_udp(b, client_config(b))
                    .context("connecting to the backup")?,
            ),
            Duration::from_secs(2),
        ),
    };
    let handle = node
        .bind_udp(addr, server_config(addr))?
        .serve(LockServiceServer::new(Arc::new(server)))?;
    println!("ready {} pid {}", handle.local_addr(), std::process::id());
    std::io::stdout().flush()?;
    loop {
        thread::park();
    }
}

fn clients(
    primary: SocketAddr,
    backup: SocketAddr,
    clients: u64,
    ops: usize,
    seed: u64,
    primary_timeout: Duration,
) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    for id in 1..=clients {
        let mut clerk = Clerk::connect(
            id,
            primary,
            backup,
            client_config(primary),
            primary_timeout,
            Duration::from_secs(10),
        )?;
        threads.push(thread::spawn(move || {
            workload(&mut clerk, &names(), ops, seed * 1000 + id, |r| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", to_line(&r));
                let _ = out.flush();
            });
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Everything in one process: the primary is halted by losing every datagram to and from it.
fn demo() -> anyhow::Result<()> {
    let localhost: SocketAddr = "127.0.0.1:0".parse()?;
    let backup = Arc::new(LockServer::backup());
    let backup_server = Node::new()?
        .bind_udp(localhost, server_config(localhost))?
        .serve(LockServiceServer::new(backup.clone()))?;
    let backup_addr = backup_server.local_addr();
    let node = Node::new()?;
    let primary = Arc::new(LockServer::primary(
        LockServiceClient::new(node.connect_udp(backup_addr, client_config(backup_addr))?),
        Duration::from_secs(2),
    ));
    let primary_server = node
        .bind_udp(localhost, server_config(localhost))?
        .serve(LockServiceServer::new(primary.clone()))?;
    let proxy = FaultProxy::start(primary_server.local_addr(), Faults::none(), 1)?;

    let (n, ops) = (8u64, 60usize);
    let history: Arc<(Mutex<Vec<Recorded>>, Condvar)> = Arc::default();
    let mut threads = Vec::new();
    for id in 1..=n {
        let mut clerk = Clerk::new(
            id,
            Some(UdpClient::connect(
                proxy.local_addr(),
                client_config(localhost),
            )?),
            UdpClient::connect(backup_addr, client_config(localhost))?,
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        let history = history.clone();
        threads.push(thread::spawn(move || {
            workload(&mut clerk, &names(), ops, id, |r| {
                history.0.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                history.1.notify_all();
            });
        }));
    }
    let third = (n as usize * ops) / 3;
    {
        let guard = history.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = history
            .1
            .wait_timeout_while(guard, Duration::from_secs(60), |h| h.len() < third);
    }
    let halted_at = now_ns();
    proxy.set_faults(Faults::lossy(1.0, 0.0, 0.0));
    println!("primary halted after {third} operations");
    for t in threads {
        let _ = t.join();
    }
    let recorded = history.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report(&recorded, halted_at)?;
    println!(
        "primary: {:?}\nbackup:  {:?}",
        primary.stats(),
        backup.stats()
    );
    Ok(())
}

fn report(recorded: &[Recorded], halted_at: u64) -> anyhow::Result<()> {
    let by = |s: Served| recorded.iter().filter(|r| r.served == Some(s)).count();
    let indeterminate = recorded.iter().filter(|r| r.served.is_none()).count();
    println!(
        "{} operations: {} answered by the primary, {} by the backup, {indeterminate} indeterminate",
        recorded.len(),
        by(Served::Primary),
        by(Served::Backup)
    );
    let first_backup = recorded
        .iter()
        .filter(|r| r.served == Some(Served::Backup))
        .filter_map(|r| r.op.response.map(|(t, _)| t))
        .min();
    if let Some(t) = first_backup {
        println!(
            "failover: {:.1?} from the halt to the first answer from the backup",
            Duration::from_nanos(t.saturating_sub(halted_at))
        );
    }
    let ops: Vec<_> = recorded.iter().map(|r| r.op.clone()).collect();
    match check(&ops) {
        Verdict::Linearizable { histories } => {
            println!("linearizable: {histories} per-lock histories checked against the lock model")
        }
        other => anyhow::bail!("history is not linearizable: {other:?}"),
    }
    anyhow::ensure!(
        double_holds(&ops).is_none(),
        "a lock was held by two clients"
    );
    println!("no lock was ever held by two clients");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().role {
        None => demo(),
        Some(Role::Backup { listen }) => serve_forever(listen, None),
        Some(Role::Primary { listen, backup }) => serve_forever(listen, Some(backup)),
        Some(Role::Clients {
            primary,
            backup,
            clients: n,
            ops,
            seed,
            primary_timeout_ms,
        }) => clients(
            primary,
            backup,
            n,
            ops,
            seed,
            Duration::from_millis(primary_timeout_ms),
        ),
    }
}
