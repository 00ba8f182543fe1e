//! Shared memory between processes: this test binary runs the parent's checks, and re-executes
//! itself as the child (a server, a client, or a hostile client writing into its segment).
//! Dead peers (killed, or stopped) are reported as typed errors, never hangs; a dead client's
//! segment goes; stale segments of dead processes are removed; garbage in the region harms
//! no one else; and many calls from several threads cross between two processes intact.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use rpc_core::service::CallOptions;
use rpc_core::{CallError, rpc};
use rpc_transport::PollStrategy;
use rpc_transport::shm::{ShmClient, ShmClientConfig, ShmServer, ShmServerConfig};

#[rpc]
pub trait Peer {
    fn echo(&self, data: &[u8]) -> Vec<u8>;
    fn add(&self, a: u64, b: u64) -> u64;
    #[rpc(blocking)]
    fn sleep(&self, millis: u64) -> u64;
    fn pid(&self) -> u32;
}

struct Impl;

impl Peer for Impl {
    fn echo(&self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
    fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
    fn sleep(&self, millis: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(millis));
        millis
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

const ROLE: &str = "RPC_SHM_TEST_ROLE";

fn server_config(dir: &Path, poll: PollStrategy) -> ShmServerConfig {
    let mut c = ShmServerConfig::default().poll(poll);
    c.dir = dir.to_path_buf();
    c
}

fn client_config() -> ShmClientConfig {
    let mut c =
        ShmClientConfig::default().poll(PollStrategy::SpinThenPark(Duration::from_micros(50)));
    c.protocol.default_deadline = Duration::from_secs(60);
    c.peer_timeout = Duration::from_millis(300);
    c
}

/// A scratch directory for one check: its socket and segments.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "rpc-shm-proc-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn child(role: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env("RPC_SHM_TEST_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the child to say it is ready (a line on its stdout).
fn ready(c: &mut Child) {
    use std::io::BufRead;
    let out = c.stdout.as_mut().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rpc-shm-"))
        })
        .collect()
}

fn signal(c: &Child, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
}

/// Stops the child and returns once it is stopped (a signal is delivered asynchronously: the
/// child could otherwise still answer a call sent right after `kill`).
fn stop(c: &Child) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
            WaitStatus::Stopped(_, Signal::SIGSTOP) => return,
            other => assert!(
                !matches!(other, WaitStatus::Exited(..) | WaitStatus::Signaled(..)),
                "the server ended instead of stopping: {other:?}"
            ),
        }
    }
}

// ---- the child roles

fn serve_forever(dir: &Path) -> ! {
    let _server = ShmServer::bind(
        dir.join("s.sock"),
        server_config(dir, PollStrategy::SpinThenPark(Duration::from_micros(50))),
    )
    .unwrap()
    .serve(PeerServer::new(Impl))
    .unwrap();
    println!("ready");
    loop {
        std::thread::park();
    }
}

fn client_forever(dir: &Path) -> ! {
    let c = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    assert_eq!(c.add(1, 2).unwrap(), 3);
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// Connects, then writes garbage all over its own segment, through the file (the same pages as
/// the mapping), again and again.
fn scribble_forever(dir: &Path) -> ! {
    let c = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    assert_eq!(c.add(1, 2).unwrap(), 3);
    let path = c.transport().link().segment().to_path_buf();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    println!("ready");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % len;
        let _ = file.write_at(&x.to_le_bytes()[..(x % 8 + 1) as usize], at);
        // And the client keeps calling, to have the server read its ring.
        let _ = c
            .with(CallOptions::new().timeout(Duration::from_millis(5)))
            .add(1, 1);
    }
}

// ---- the checks

fn a_killed_server_ends_calls_in_flight_with_a_typed_error() {
    let dir = scratch("killed");
    let mut server = child("server", &dir);
    ready(&mut server);
    let client = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    assert_ne!(client.pid().unwrap(), std::process::id());
    let pending = {
        let client = client.clone();
        std::thread::spawn(move || client.sleep(30_000))
    };
    // The call is running on the server (its worker sleeps); the server dies.
    while client.transport().in_flight().0 == 0 {
        std::thread::yield_now();
    }
    signal(&server, Signal::SIGKILL);
    server.wait().unwrap();
    // Long before the call's 60 s deadline: the server's lock went with it.
    assert_eq!(pending.join().unwrap(), Err(CallError::PeerDied));
    // Later calls: not executed, said at once.
    assert_eq!(client.add(1, 1), Err(CallError::Disconnected));
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_stopped_server_is_taken_for_hung_after_the_peer_timeout() {
    let dir = scratch("stopped");
    let mut server = child("server", &dir);
    ready(&mut server);
    let client = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    assert_eq!(client.add(2, 2).unwrap(), 4);
    stop(&server);
    // Alive (its lock held) but silent: its heartbeat stops, and after 300 ms the call ends.
    assert_eq!(client.add(3, 3), Err(CallError::PeerDied));
    signal(&server, Signal::SIGKILL);
    server.wait().unwrap();
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_dead_client_is_dropped_and_its_segment_removed() {
    let dir = scratch("dead-client");
    let server = ShmServer::bind(
        dir.join("s.sock"),
        server_config(&dir, PollStrategy::SpinThenPark(Duration::from_micros(50))),
    )
    .unwrap()
    .serve(PeerServer::new(Impl))
    .unwrap();
    let mut c = child("client", &dir);
    ready(&mut c);
    assert_eq!(server.connections(), 1);
    assert_eq!(segments(&dir).len(), 1);
    signal(&c, Signal::SIGKILL);
    c.wait().unwrap();
    // The server looks every 10 ms while it runs.
    while server.connections() > 0 {
        std::thread::yield_now();
    }
    assert!(segments(&dir).is_empty());
    server.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn stale_segments_of_dead_processes_are_removed_at_start() {
    let dir = scratch("stale");
    let mut server = child("server", &dir);
    ready(&mut server);
    let client = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    assert_eq!(client.add(1, 1).unwrap(), 2);
    // Both ends die without cleaning up: the client's end is this process's, so its segment is
    // left behind by forgetting the client (no drop), and the server is killed.
    let seg = client.transport().link().segment().to_path_buf();
    std::mem::forget(client);
    signal(&server, Signal::SIGKILL);
    server.wait().unwrap();
    assert!(seg.exists());
    // This process still holds the client's lock on it: not stale yet.
    let s = ShmServer::bind(
        dir.join("s2.sock"),
        server_config(&dir, PollStrategy::Block),
    )
    .unwrap();
    assert!(seg.exists(), "held by a live process: kept");
    drop(s);
    // A segment no one holds (as one whose both ends died): removed by the next server.
    let orphan = dir.join("rpc-shm-1-2-deadbeef");
    std::fs::write(&orphan, [0u8; 64]).unwrap();
    let s = ShmServer::bind(
        dir.join("s3.sock"),
        server_config(&dir, PollStrategy::Block),
    )
    .unwrap();
    assert!(!orphan.exists());
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn garbage_in_one_clients_region_harms_no_one_else() {
    let dir = scratch("garbage");
    let server = ShmServer::bind(dir.join("s.sock"), server_config(&dir, PollStrategy::Spin))
        .unwrap()
        .serve(PeerServer::new(Impl))
        .unwrap();
    let mut hostile = child("scribbler", &dir);
    ready(&mut hostile);
    let honest = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    for i in 0..2_000u64 {
        assert_eq!(honest.add(i, 1).unwrap(), i + 1);
        let data = vec![i as u8; (i % 3000) as usize];
        assert_eq!(honest.echo(&data).unwrap(), data);
    }
    signal(&hostile, Signal::SIGKILL);
    hostile.wait().unwrap();
    drop(honest);
    server.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn many_calls_from_several_threads_cross_between_two_processes() {
    let dir = scratch("stress");
    let mut server = child("server", &dir);
    ready(&mut server);
    let client = PeerClient::new(ShmClient::connect(dir.join("s.sock"), client_config()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let data: Vec<u8> = (0..(i * 7 % 20_000))
                        .map(|k| (k as u8) ^ (t as u8))
                        .collect();
                    assert_eq!(client.echo(&data).unwrap(), data);
                }
                // And pipelined.
                let calls: Vec<u64> = (0..500).collect();
                let results =
                    rpc_transport::join_all(calls.iter().map(|&i| client.add_async(i, t)));
                for (i, r) in results.into_iter().enumerate() {
                    assert_eq!(r.unwrap(), i as u64 + t);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    signal(&server, Signal::SIGKILL);
    server.wait().unwrap();
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let dir = PathBuf::from(std::env::var("RPC_SHM_TEST_DIR").unwrap());
        match role.as_str() {
            "server" => serve_forever(&dir),
            "client" => client_forever(&dir),
            "scribbler" => scribble_forever(&dir),
            other => panic!("unknown role {other}"),
        }
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let checks: [(&str, fn()); 6] = [
        (
            "a_killed_server_ends_calls_in_flight_with_a_typed_error",
            a_killed_server_ends_calls_in_flight_with_a_typed_error,
        ),
        (
            "a_stopped_server_is_taken_for_hung_after_the_peer_timeout",
            a_stopped_server_is_taken_for_hung_after_the_peer_timeout,
        ),
        (
            "a_dead_client_is_dropped_and_its_segment_removed",
            a_dead_client_is_dropped_and_its_segment_removed,
        ),
        (
            "stale_segments_of_dead_processes_are_removed_at_start",
            stale_segments_of_dead_processes_are_removed_at_start,
        ),
        (
            "garbage_in_one_clients_region_harms_no_one_else",
            garbage_in_one_clients_region_harms_no_one_else,
        ),
        (
            "many_calls_from_several_threads_cross_between_two_processes",
            many_calls_from_several_threads_cross_between_two_processes,
        ),
    ];
    let mut ran = 0;
    for (name, check) in checks {
        if !args.is_empty() && !args.iter().any(|a| name.contains(a.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        check();
        println!("ok");
        ran += 1;
    }
    println!("\n{ran} checks passed");
}
