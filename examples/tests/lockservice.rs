//! The replicated lock service: the primary halted mid-run under many clients, every history
//! checked for linearizability against the lock model and for two holders of one lock; and a
//! call whose primary halted after forwarding, answered by the backup as the primary would
//! have answered it.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use examples::linearizability::{Verdict, check, double_holds};
use examples::lockservice::{
    Clerk, LockServer, LockServiceClient, LockServiceServer, Recorded, Served, now_ns, workload,
};
use examples::mesh;
use rpc_transport::Node;
use rpc_transport::proxy::{FaultProxy, Faults};
use rpc_transport::udp::{ServerHandle, UdpClient};

const PRIMARY_TIMEOUT: Duration = Duration::from_millis(300);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(10);

struct Service {
    primary: Arc<LockServer>,
    backup: Arc<LockServer>,
    /// The primary is reached through this proxy; losing everything halts it.
    proxy: Arc<FaultProxy>,
    _servers: (ServerHandle, ServerHandle),
}

impl Service {
    fn start(halt_after_first_forward: bool) -> Service {
        let localhost = "127.0.0.1:0".parse().unwrap();
        let backup = Arc::new(LockServer::backup());
        let backup_server = Node::new()
            .unwrap()
            .bind_udp(localhost, mesh::server_config())
            .unwrap()
            .serve(LockServiceServer::new(backup.clone()))
            .unwrap();
        let node = Node::new().unwrap();
        let to_backup = LockServiceClient::new(
            node.connect_udp(backup_server.local_addr(), mesh::client_config())
                .unwrap(),
        );
        let proxy_cell: Arc<OnceLock<Arc<FaultProxy>>> = Arc::new(OnceLock::new());
        let mut primary = LockServer::primary(to_backup, Duration::from_secs(2));
        if halt_after_first_forward {
            let cell = proxy_cell.clone();
            primary = primary.with_after_forward(Box::new(move || {
                if let Some(proxy) = cell.get() {
                    proxy.set_faults(Faults::lossy(1.0, 0.0, 0.0));
                }
            }));
        }
        let primary = Arc::new(primary);
        let primary_server = node
            .bind_udp(localhost, mesh::server_config())
            .unwrap()
            .serve(LockServiceServer::new(primary.clone()))
            .unwrap();
        let proxy =
            Arc::new(FaultProxy::start(primary_server.local_addr(), Faults::none(), 1).unwrap());
        let _ = proxy_cell.set(proxy.clone());
        Service {
            primary,
            backup,
            proxy,
            _servers: (primary_server, backup_server),
        }
    }

    fn clerk(&self, id: u64, backup_addr: std::net::SocketAddr) -> Clerk {
        Clerk::new(
            id,
            Some(UdpClient::connect(self.proxy.local_addr(), mesh::client_config()).unwrap()),
            UdpClient::connect(backup_addr, mesh::client_config()).unwrap(),
            PRIMARY_TIMEOUT,
            BACKUP_TIMEOUT,
        )
    }

    fn halt_primary(&self) {
        self.proxy.set_faults(Faults::lossy(1.0, 0.0, 0.0));
    }
}

#[test]
fn a_call_retried_after_the_primary_halts_gets_the_answer_it_would_have_had() {
    let service = Service::start(true);
    let backup_addr = service._servers.1.local_addr();
    let mut one = service.clerk(1, backup_addr);
    let mut two = service.clerk(2, backup_addr);
    // The primary decides, the backup applies, and the primary halts before answering:
    // the clerk's retry at the backup gets the primary's answer, not a new decision.
    assert_eq!(one.lock("grades").unwrap(), (true, Served::Backup));
    let b = service.backup.stats();
    assert_eq!((b.applied, b.replayed, b.decided), (1, 1, 0), "{b:?}");
    assert!(service.primary.is_held("grades") && service.backup.is_held("grades"));
    // Another clerk finds the primary silent too, and the lock taken once.
    assert_eq!(two.lock("grades").unwrap(), (false, Served::Backup));
    assert_eq!(one.unlock("grades").unwrap(), (true, Served::Backup));
    assert_eq!(two.lock("grades").unwrap(), (true, Served::Backup));
    assert_eq!(service.backup.stats().decided, 3);
}

#[derive(Default)]
struct History {
    ops: Mutex<Vec<Recorded>>,
    grew: Condvar,
}

#[test]
fn many_clients_with_the_primary_halted_midway_stay_linearizable() {
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let (clerks, ops_each, runs) = (8u64, 40usize, 20u64);
    let mut histories = 0;
    let mut failovers = Vec::new();
    for seed in 0..runs {
        let service = Service::start(false);
        let backup_addr = service._servers.1.local_addr();
        let history = Arc::new(History::default());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for id in 1..=clerks {
            let mut clerk = service.clerk(id, backup_addr);
            let (history, names, done) = (history.clone(), names.clone(), done_tx.clone());
            thread::spawn(move || {
                workload(&mut clerk, &names, ops_each, seed * 100 + id, |r| {
                    history.ops.lock().unwrap().push(r);
                    history.grew.notify_all();
                });
                let _ = done.send(());
            });
        }
        drop(done_tx);
        // Halt the primary once a third of the operations are done.
        let third = clerks as usize * ops_each / 3;
        {
            let ops = history.ops.lock().unwrap();
            let (ops, timeout) = history
                .grew
                .wait_timeout_while(ops, Duration::from_secs(30), |ops| ops.len() < third)
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "seed {seed}: clients stalled at {}",
                ops.len()
            );
        }
        let halted_at = now_ns();
        service.halt_primary();
        for _ in 0..clerks {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a clerk did not finish");
        }
        let recorded = history.ops.lock().unwrap().clone();
        let ops: Vec<_> = recorded.iter().map(|r| r.op.clone()).collect();
        assert!(
            ops.iter().all(|o| o.response.is_some()),
            "seed {seed}: with the backup up every operation is answered"
        );
        match check(&ops) {
            Verdict::Linearizable { histories: h } => histories += h,
            other => panic!("seed {seed}: {other:?}"),
        }
        assert_eq!(double_holds(&ops), None, "seed {seed}: a lock held twice");
        // Operations went through both servers, and the backup took over.
        assert!(recorded.iter().any(|r| r.served == Some(Served::Primary)));
        let first_backup = recorded
            .iter()
            .filter(|r| r.served == Some(Served::Backup))
            .filter_map(|r| r.op.response.map(|(t, _)| t))
            .min()
            .expect("no operation answered by the backup");
        failovers.push(Duration::from_nanos(first_backup.saturating_sub(halted_at)));
        // The backup applied the primary's decisions, then decided alone.
        let b = service.backup.stats();
        assert!(b.applied > 0 && b.decided > 0, "seed {seed}: {b:?}");
        // Every clerk unlocked what it took, and the backup, serving alone, agrees.
        for name in &names {
            assert!(
                !service.backup.is_held(name),
                "seed {seed}: {name} left held"
            );
        }
    }
    eprintln!(
        "{runs} runs, {histories} per-lock histories checked linearizable; failover (halt to first answer from the backup): {failovers:?}"
    );
}
