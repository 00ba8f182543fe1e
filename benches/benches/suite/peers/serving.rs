//! What the TCP peers' servers share: a thread of their own running a multi-thread tokio
//! runtime (one worker pinned to a given cpu, or two unpinned), started once the server
//! listens and stopped on drop; and the clients' current-thread runtime.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;

/// Where a server sends the address it listens on, or why its setup failed.
pub type Ready = mpsc::Sender<anyhow::Result<SocketAddr>>;

/// Fires when the server is to stop.
pub type Stop = tokio::sync::oneshot::Receiver<()>;

/// What a peer runs on its server thread: sends to `ready`, then serves until `stop`.
pub type Serve = fn(&tokio::runtime::Runtime, &Ready, Stop) -> anyhow::Result<()>;

/// A running peer server (its own thread and runtime), stopped on drop.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts `serve` on loopback on a thread of its own, its runtime's threads pinned to
    /// `cpu` if given; returns once it listens.
    pub fn start(name: &'static str, cpu: Option<usize>, serve: Serve) -> anyhow::Result<Server> {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("{name}-server"))
            .spawn(move || match runtime(name, cpu) {
                Ok(runtime) => serve(&runtime, &ready_tx, stop_rx),
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(())
                }
            })
            .with_context(|| format!("spawning the {name} server thread"))?;
        let addr = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.context(format!("{name} server setup")));
            }
            Err(_) => {
                return Err(match thread.join() {
                    Ok(Err(e)) => e.context(format!("{name} server setup")),
                    Ok(Ok(())) => anyhow::anyhow!("{name} server ended before it was ready"),
                    Err(_) => anyhow::anyhow!("{name} server thread panicked during setup"),
                });
            }
        };
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server's runtime, built on its thread (which it pins first, if `cpu` is given).
fn runtime(name: &str, cpu: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    match cpu {
        Some(cpu) => {
            rpc_transport::pin_to_cpu(cpu)
                .with_context(|| format!("pinning the {name} server to cpu {cpu}"))?;
            builder.worker_threads(1).on_thread_start(move || {
                // The same cpu as just above, so it cannot fail where that did not.
                let _ = rpc_transport::pin_to_cpu(cpu);
            });
        }
        None => {
            builder.worker_threads(2);
        }
    }
    Ok(builder.build()?)
}

/// A client's runtime: current-thread, on the calling thread.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")
}

/// A duration in nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
