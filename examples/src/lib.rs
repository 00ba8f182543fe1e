//! Shared code of the examples and the latency demo: a counting allocator, the raw UDP floor,
//! histograms with a progress bar, the percentile table and the plot.

pub mod kvstore;
pub mod linearizability;
pub mod lockservice;
pub mod mesh;
pub mod mutex;
pub mod tom;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rpc_transport::PollStrategy;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags};

/// The interface of the latency demo and the benchmark suite.
#[rpc_core::rpc]
pub trait Bench {
    /// Does nothing: the round trip of an empty call.
    fn null(&self);
    /// Returns its argument, in a pooled buffer (no allocation per call on either side).
    fn echo(&self, data: &[u8]) -> rpc_core::marshal::PooledBytes;
}

/// [`Bench`]'s handlers.
#[derive(Debug)]
pub struct Handlers;

impl Bench for Handlers {
    fn null(&self) {}
    fn echo(&self, data: &[u8]) -> rpc_core::marshal::PooledBytes {
        rpc_core::marshal::PooledBytes::copy_from(data)
    }
}

/// A global allocator that counts allocations, to measure allocations per call.
#[derive(Debug)]
pub struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations so far, in the whole process (client and server threads alike).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// The measured latencies of one case.
#[derive(Debug)]
pub struct Case {
    /// What was measured.
    pub name: String,
    /// Round trips, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Allocations per call in the measured loop (both ends), if counted.
    pub allocs_per_call: Option<f64>,
    /// Which floor this case is compared with, by name.
    pub floor: Option<String>,
    /// The p50 of each interleaved round, in microseconds, in order.
    pub rounds: Vec<f64>,
}

impl Case {
    /// A percentile in microseconds.
    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The p50 against `floor`'s: the median over rounds of the ratio of the two cases' p50s
    /// in the same round (so that a slow spell of the host during one round, which one case
    /// may have caught and the other not, counts once), or of the pooled p50s when the cases
    /// were not measured round by round alike.
    pub fn p50_ratio(&self, floor: &Case) -> f64 {
        if self.rounds.len() > 1 && self.rounds.len() == floor.rounds.len() {
            let mut r: Vec<f64> = self
                .rounds
                .iter()
                .zip(&floor.rounds)
                .map(|(a, b)| a / b)
                .collect();
            r.sort_by(f64::total_cmp);
            let n = r.len();
            if n % 2 == 1 {
                r[n / 2]
            } else {
                (r[n / 2 - 1] + r[n / 2]) / 2.0
            }
        } else {
            self.us(0.5) / floor.us(0.5)
        }
    }
}

/// The demo's progress bar: `len` steps of the case `name`.
pub fn progress(len: u64, name: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:<34} [{bar:30}] {pos:>7}/{len:7} {per_sec:>12}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

/// Runs `op` `warmup` times, then `iterations` times timing each, with a progress bar.
pub fn measure(name: &str, warmup: u64, iterations: u64, mut op: impl FnMut()) -> Case {
    let bar = progress(warmup + iterations, name);
    let tick = ((warmup + iterations) / 200).max(1);
    for i in 0..warmup {
        op();
        if i % tick == 0 {
            bar.set_position(i);
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds");
    let before = allocations();
    for i in 0..iterations {
        let t = Instant::now();
        op();
        let ns = t.elapsed().as_nanos() as u64;
        hist.saturating_record(ns.max(1));
        if i % tick == 0 {
            bar.set_position(warmup + i);
        }
    }
    let allocs = allocations() - before;
    bar.finish_and_clear();
    let p50 = hist.value_at_quantile(0.5) as f64 / 1000.0;
    Case {
        name: name.to_string(),
        hist,
        allocs_per_call: Some(allocs as f64 / iterations as f64),
        floor: None,
        rounds: vec![p50],
    }
}

/// How a raw floor moves its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawStyle {
    /// One buffer per datagram, direct system calls (rustix), as the RPC transport makes
    /// them: the floor.
    Direct,
    /// As `Direct`, but each datagram leaves as a two-segment gather (a 76-byte head, then
    /// the rest), as a sender that does not copy the caller's bytes must send it.
    Gathered,
    /// One buffer per datagram through the standard library's sockets (libc's wrappers).
    Std,
}

/// Where a gathered raw datagram is split: a header and a length prefix, as in the RPC's.
const GATHER_HEAD: usize = 76;

fn raw_send_to(socket: &UdpSocket, bytes: &[u8], to: SocketAddr, style: RawStyle) {
    match style {
        RawStyle::Std => {
            let _ = socket.send_to(bytes, to);
        }
        RawStyle::Gathered if bytes.len() > GATHER_HEAD => {
            let iov = [
                IoSlice::new(&bytes[..GATHER_HEAD]),
                IoSlice::new(&bytes[GATHER_HEAD..]),
            ];
            let mut control = SendAncillaryBuffer::default();
            let _ = rustix::net::sendmsg_addr(socket, &to, &iov, &mut control, SendFlags::empty());
        }
        _ => {
            let _ = rustix::net::sendto(socket, bytes, SendFlags::empty(), &to);
        }
    }
}

fn raw_recv_from(
    socket: &UdpSocket,
    buf: &mut [u8],
    style: RawStyle,
) -> Option<(usize, SocketAddr)> {
    match style {
        RawStyle::Std => socket.recv_from(buf).ok(),
        _ => match rustix::net::recvfrom(socket, buf, RecvFlags::empty()) {
            Ok((n, _, Some(from))) => SocketAddr::try_from(from).ok().map(|a| (n, a)),
            _ => None,
        },
    }
}

/// A thread answering the datagrams that reach a loopback socket, until dropped: the shared
/// body of [`RawEcho`] and [`NullResponder`].
#[derive(Debug)]
struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Spawns `name`, pinned to `cpu` if given, calling `answer` with each datagram received.
    fn start(
        name: &str,
        socket: UdpSocket,
        cpu: Option<usize>,
        style: RawStyle,
        mut answer: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
    ) -> std::io::Result<Self> {
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            if let Some(cpu) = cpu {
                let _ = rpc_transport::pin_to_cpu(cpu);
            }
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                match raw_recv_from(&socket, &mut buf, style) {
                    Some((n, from)) => answer(&socket, &buf[..n], from),
                    None => std::hint::spin_loop(),
                }
            }
        })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw UDP echo server: the floor a protocol on UDP cannot beat. Spins on a non-blocking
/// socket, or blocks, as told.
#[derive(Debug)]
pub struct RawEcho(Responder);

impl RawEcho {
    /// Starts the echo thread on a free loopback port, pinned to `cpu` if given.
    pub fn start(poll: PollStrategy, cpu: Option<usize>, style: RawStyle) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        let spin = poll == PollStrategy::Spin;
        socket.set_nonblocking(spin)?;
        if !spin {
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        }
        Responder::start(
            "raw-echo",
            socket,
            cpu,
            style,
            move |socket, bytes, from| raw_send_to(socket, bytes, from, style),
        )
        .map(Self)
    }

    /// The echo's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// A minimal responder speaking the RPC's wire protocol: it opens a session for any hello and
/// answers every request at once with an empty reply, keeping no state at all (no sessions, no
/// reply cache, no at-most-once bookkeeping, no dispatch). Our client against it measures
/// what the client adds to the raw floor; our server's share is the rest. A diagnostic, not a
/// server: it answers calls it never executes.
#[derive(Debug)]
pub struct NullResponder(Responder);

impl NullResponder {
    /// Starts the responder thread on a free loopback port, spinning, pinned to `cpu` if given.
    pub fn start(cpu: Option<usize>) -> std::io::Result<Self> {
        use rpc_core::wire::{
            Flags, HEADER_LEN, PacketKind, PacketRepr, WELCOME_BODY_LEN, WelcomeBody,
        };
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.set_nonblocking(true)?;
        let mut out = [0u8; HEADER_LEN + WELCOME_BODY_LEN];
        let answer = move |socket: &UdpSocket, datagram: &[u8], from: SocketAddr| {
            let Ok(packet) = PacketRepr::parse(datagram) else {
                return;
            };
            let mut h = packet.header;
            h.lamport = h.lamport.saturating_add(1);
            h.flags = Flags::empty();
            h.frag_index = 0;
            h.frag_count = 1;
            let len = match h.kind {
                PacketKind::Hello => {
                    let body = WelcomeBody {
                        server_node: 1.into(),
                        max_datagram: (rpc_core::config::MAX_UDP_PAYLOAD as u32).into(),
                        max_message: (1u32 << 20).into(),
                        idle_timeout_ms: 120_000.into(),
                        reserved: 0.into(),
                        server_nonce: [0; 16],
                    };
                    h.kind = PacketKind::Welcome;
                    h.session = 1 << 32 | 1;
                    h.message_len = WELCOME_BODY_LEN as u32;
                    h.payload_len = WELCOME_BODY_LEN as u32;
                    out[HEADER_LEN..].copy_from_slice(zerocopy::IntoBytes::as_bytes(&body));
                    HEADER_LEN + WELCOME_BODY_LEN
                }
                PacketKind::Request => {
                    h.kind = PacketKind::Reply;
                    h.message_len = 0;
                    h.payload_len = 0;
                    HEADER_LEN
                }
                _ => return,
            };
            out[..HEADER_LEN].copy_from_slice(&h.to_bytes());
            raw_send_to(socket, &out[..len], from, RawStyle::Direct);
        };
        Responder::start("null-responder", socket, cpu, RawStyle::Direct, answer).map(Self)
    }

    /// The responder's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

/// The client side of the raw floor: a connected socket that sends a payload and waits for
/// it to come back, spinning or blocking.
#[derive(Debug)]
pub struct RawPing {
    socket: UdpSocket,
    payload: Vec<u8>,
    buf: Vec<u8>,
    style: RawStyle,
}

impl RawPing {
    /// One round trip of a direct-style ping, timed by phase as [`UringPing::ping_phases`]
    /// times its own.
    pub fn ping_phases(&mut self) -> Phases {
        Phases::time(
            || {
                let _ = rustix::net::send(&self.socket, &self.payload, SendFlags::empty());
            },
            || {
                !matches!(
                    rustix::net::recv(&self.socket, &mut self.buf[..], RecvFlags::empty()),
                    Err(rustix::io::Errno::WOULDBLOCK)
                )
            },
        )
    }

    /// Connects to a [`RawEcho`]. A gathered ping carries the payload behind a 76-byte head,
    /// as the RPC's datagrams do.
    pub fn connect(
        server: SocketAddr,
        poll: PollStrategy,
        payload_len: usize,
        style: RawStyle,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.connect(server)?;
        socket.set_nonblocking(poll == PollStrategy::Spin)?;
        let len = if style == RawStyle::Gathered {
            payload_len + GATHER_HEAD
        } else {
            payload_len
        };
        Ok(Self {
            socket,
            payload: vec![0x5a; len],
            buf: vec![0u8; 65_536],
            style,
        })
    }

    /// One round trip.
    pub fn ping(&mut self) {
        match self.style {
            RawStyle::Std => {
                let _ = self.socket.send(&self.payload);
                while let Err(e) = self.socket.recv(&mut self.buf) {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        return;
                    }
                    std::hint::spin_loop();
                }
            }
            style => {
                if style == RawStyle::Gathered {
                    let iov = [
                        IoSlice::new(&self.payload[..GATHER_HEAD]),
                        IoSlice::new(&self.payload[GATHER_HEAD..]),
                    ];
                    let mut control = SendAncillaryBuffer::default();
                    let _ =
                        rustix::net::sendmsg(&self.socket, &iov, &mut control, SendFlags::empty());
                } else {
                    let _ = rustix::net::send(&self.socket, &self.payload, SendFlags::empty());
                }
                loop {
                    match rustix::net::recv(&self.socket, &mut self.buf[..], RecvFlags::empty()) {
                        Ok(_) => return,
                        Err(e) if e == rustix::io::Errno::WOULDBLOCK => std::hint::spin_loop(),
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

/// The io_uring floor's echo: a thread echoing datagrams through an io_uring link (multishot
/// receive, sends from the received buffer), spinning, with no protocol at all.
#[derive(Debug)]
pub struct UringEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UringEcho {
    /// Starts the echo thread on a free loopback port, pinned to `cpu` if given.
    pub fn start(cpu: Option<usize>) -> std::io::Result<Self> {
        use rpc_transport::link::{Link, RecvBatch};
        use rpc_transport::uring::{UringConfig, UringLink};
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let link = UringLink::new(socket, None, 65_536, &UringConfig::default())
            .map_err(|(e, _)| std::io::Error::from(e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("uring-echo".into())
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        let _ = rpc_transport::pin_to_cpu(cpu);
                    }
                    link.attach();
                    let mut batch = RecvBatch::new(32, link.recv_buffer_len());
                    while !stop.load(Ordering::Relaxed) {
                        let n = link.recv(&mut (), &mut batch).unwrap_or(0);
                        for i in 0..n {
                            if let Some((d, from)) = batch.get(i) {
                                let _ = link.send(&from, &[IoSlice::new(d)]);
                            }
                        }
                        if n == 0 {
                            std::hint::spin_loop();
                        }
                    }
                    link.close();
                })?
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The echo's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UringEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client side of the io_uring floor: sends a payload through an io_uring link and spins
/// on its completion queue until it comes back.
#[derive(Debug)]
pub struct UringPing {
    link: rpc_transport::uring::UringLink,
    batch: rpc_transport::link::RecvBatch<SocketAddr>,
    to: SocketAddr,
    payload: Vec<u8>,
}

impl UringPing {
    /// Connects to a [`UringEcho`].
    pub fn connect(server: SocketAddr, payload_len: usize) -> std::io::Result<Self> {
        use rpc_transport::link::{Link, RecvBatch};
        use rpc_transport::uring::{UringConfig, UringLink};
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.connect(server)?;
        socket.set_nonblocking(true)?;
        let link = UringLink::new(socket, Some(server), 65_536, &UringConfig::default())
            .map_err(|(e, _)| std::io::Error::from(e))?;
        let mut batch = RecvBatch::new(4, link.recv_buffer_len());
        batch.set_limit(1);
        Ok(Self {
            link,
            batch,
            to: server,
            payload: vec![0x5a; payload_len],
        })
    }

    /// One round trip, timed by phase: how long the send took, and how long the receive
    /// call that returned the datagram took (the spinning before it is not counted).
    pub fn ping_phases(&mut self) -> Phases {
        use rpc_transport::link::Link;
        Phases::time(
            || {
                let _ = self.link.send(&self.to, &[IoSlice::new(&self.payload)]);
            },
            || !matches!(self.link.recv(&mut (), &mut self.batch), Ok(0)),
        )
    }

    /// One round trip.
    pub fn ping(&mut self) {
        use rpc_transport::link::Link;
        let _ = self.link.send(&self.to, &[IoSlice::new(&self.payload)]);
        loop {
            match self.link.recv(&mut (), &mut self.batch) {
                Ok(0) => std::hint::spin_loop(),
                _ => return,
            }
        }
    }
}

/// Where a raw round trip's time goes on the client's side: see [`UringPing::ping_phases`].
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// The send call.
    pub send: Duration,
    /// The receive call that returned the datagram.
    pub receive: Duration,
}

impl Phases {
    /// Times `send`, then `try_receive` until it says the datagram came (or the link failed),
    /// counting only its last call.
    fn time(send: impl FnOnce(), mut try_receive: impl FnMut() -> bool) -> Self {
        let t = Instant::now();
        send();
        let send = t.elapsed();
        loop {
            let t = Instant::now();
            if try_receive() {
                return Self {
                    send,
                    receive: t.elapsed(),
                };
            }
            std::hint::spin_loop();
        }
    }
}

/// Prints the percentile table, with each case's p50 and p99 against its floor's.
pub fn print_table(cases: &[Case]) {
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "case", "p50 µs", "p99 µs", "p99.9 µs", "mean µs", "p50/floor", "p99/floor", "allocs"
    );
    println!("{}", "-".repeat(108));
    for c in cases {
        let floor = c
            .floor
            .as_ref()
            .and_then(|f| cases.iter().find(|x| &x.name == f));
        let ratio = |q: f64| {
            floor.map_or(String::from("-"), |f| {
                let r = if q == 0.5 {
                    c.p50_ratio(f)
                } else {
                    c.us(q) / f.us(q)
                };
                format!("{r:.2}x")
            })
        };
        let allocs = c
            .allocs_per_call
            .map_or(String::from("-"), |a| format!("{a:.2}"));
        println!(
            "{:<36} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>10} {:>9}",
            c.name,
            c.us(0.5),
            c.us(0.99),
            c.us(0.999),
            c.hist.mean() / 1000.0,
            ratio(0.5),
            ratio(0.99),
            allocs
        );
    }
}

/// Writes an SVG plot of each case's latency by percentile.
pub fn plot(cases: &[Case], path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // x: the "nines" of the percentile, -log10(1 - q): p90 is 1, p99 is 2, p99.9 is 3.
    let nines = |q: f64| -(1.0 - q).log10();
    let top = 0.9995;
    let qs: Vec<f64> = (0..=80)
        .map(|i| 1.0 - 0.5 * 10f64.powf(-(i as f64) / 25.0))
        .filter(|&q| q <= top)
        .collect();
    let lo_us = cases
        .iter()
        .map(|c| c.us(0.5))
        .fold(f64::INFINITY, f64::min)
        * 0.7;
    let hi_us = cases.iter().map(|c| c.us(top)).fold(1.0, f64::max) * 1.3;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round-trip latency by percentile, loopback",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(nines(0.5)..nines(top), (lo_us.max(0.01)..hi_us).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("round trip, µs (log scale)")
        .x_labels(7)
        // Label the whole nines only: p90, p99, p99.9.
        .x_label_formatter(&|x| {
            let n = x.round();
            if (x - n).abs() > 1e-6 || n < 1.0 {
                return String::new();
            }
            format!("p{}", 100.0 - 100.0 * 10f64.powf(-n))
        })
        .y_labels(12)
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .draw()?;
    for (i, c) in cases.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = qs
            .iter()
            .filter(|&&q| q <= 0.9995)
            .map(|&q| (nines(q), c.us(q).max(0.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(c.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rpc_core::{CallError, rpc};
    use rpc_transport::udp::{UdpClient, UdpClientConfig};

    use super::*;

    // Only the generated client is used: the responder plays the server.
    #[allow(dead_code)]
    #[rpc]
    trait Probe {
        fn nothing(&self);
        fn number(&self) -> u64;
    }

    #[test]
    fn null_responder_answers_calls_without_results_and_fails_the_others() {
        let responder = NullResponder::start(None).unwrap();
        let client = ProbeClient::new(
            UdpClient::connect(
                responder.addr(),
                UdpClientConfig::loopback().poll(PollStrategy::Spin),
            )
            .unwrap(),
        );
        for _ in 0..100 {
            client.nothing().unwrap();
        }
        // An empty reply cannot decode as a number: a typed error, not a made-up value.
        assert!(matches!(client.number(), Err(CallError::BadReply(_))));
    }
}

/// CPU time of the whole process (every thread, user and system) so far.
pub fn cpu_time() -> Duration {
    // Through libc (not rustix's vDSO lookup, which valgrind's auxiliary vector defeats), so
    // that the benchmarks also run under callgrind.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Datagrams in one batch of the raw window at most.
pub const RAW_BATCH: usize = 64;

thread_local! {
    static MMSG_HEADERS: std::cell::RefCell<Option<nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>>> =
        const { std::cell::RefCell::new(None) };
}

/// Receives up to `bufs.len()` datagrams at once (`recvmmsg`, non-blocking): their lengths
/// and senders.
pub fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
) -> arrayvec::ArrayVec<(usize, SocketAddr), RAW_BATCH> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg};
    let fd = socket.as_raw_fd();
    MMSG_HEADERS.with(|cell| {
        let mut guard = cell.borrow_mut();
        let headers = guard.get_or_insert_with(|| MultiHeaders::preallocate(RAW_BATCH, None));
        let mut iovs: [[std::io::IoSliceMut<'_>; 1]; RAW_BATCH] =
            std::array::from_fn(|_| [std::io::IoSliceMut::new(&mut [])]);
        let mut n = 0;
        for (slot, buf) in iovs.iter_mut().zip(bufs.iter_mut()) {
            *slot = [std::io::IoSliceMut::new(&mut buf[..])];
            n += 1;
        }
        match recvmmsg(
            fd,
            headers,
            iovs[..n].iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(results) => results
                .filter_map(|r| {
                    let a = r.address?;
                    let from = a.as_sockaddr_in().map(|v4| SocketAddr::V4((*v4).into()))?;
                    Some((r.bytes, from))
                })
                .collect(),
            Err(_) => arrayvec::ArrayVec::new(),
        }
    })
}

/// Sends `n` copies of `payload` on a connected socket, in one `sendmmsg`.
pub fn send_batch(socket: &UdpSocket, payload: &[u8], n: usize) {
    use rustix::net::MMsgHdr;
    let iov = [IoSlice::new(payload)];
    let mut controls: arrayvec::ArrayVec<SendAncillaryBuffer<'_, '_, '_>, RAW_BATCH> = (0..n
        .min(RAW_BATCH))
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: arrayvec::ArrayVec<MMsgHdr<'_>, RAW_BATCH> =
        controls.iter_mut().map(|c| MMsgHdr::new(&iov, c)).collect();
    let _ = rustix::net::sendmmsg(socket, &mut msgs, SendFlags::DONTWAIT);
}

/// Sends each received datagram back to its sender, in one `sendmmsg`.
pub fn send_batch_to(socket: &UdpSocket, bufs: &[Vec<u8>], got: &[(usize, SocketAddr)]) {
    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SocketAddrAny};
    let addrs: arrayvec::ArrayVec<SocketAddrAny, RAW_BATCH> =
        got.iter().map(|(_, a)| a.as_any()).collect();
    let iovs: arrayvec::ArrayVec<[IoSlice<'_>; 1], RAW_BATCH> = got
        .iter()
        .zip(bufs)
        .map(|((n, _), b)| [IoSlice::new(&b[..*n])])
        .collect();
    let mut controls: arrayvec::ArrayVec<SendAncillaryBuffer<'_, '_, '_>, RAW_BATCH> =
        got.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: arrayvec::ArrayVec<MMsgHdr<'_>, RAW_BATCH> = addrs
        .iter()
        .zip(iovs.iter())
        .zip(controls.iter_mut())
        .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
        .collect();
    let _ = rustix::net::sendmmsg(socket, &mut msgs, SendFlags::DONTWAIT);
}
