//! The floors: what the hardware and the kernel cost with no framework at all, measured in
//! the same round as the cases compared with them.
//!
//! - UDP ping-pong, both ends spinning or both blocking (the client on a connected socket,
//!   the echo answering with `sendto`); payloads above one datagram go as a burst of
//!   60,000-byte datagrams each way, echoed one by one.
//! - io_uring ping-pong: a datagram echoed through io_uring links.
//! - Shared-memory flag ping-pong: two threads on two cores, a sequence word each way on its
//!   own cache line, the payload copied into and out of shared words first (the one copy a
//!   shared-memory transport needs, done as the link does it: word by word with atomics).
//! - eventfd ping-pong: two threads blocking in turn (the floor of blocking shared memory).
//! - The mmsg window: 32 datagrams kept in flight with `sendmmsg`/`recvmmsg`, echoed in
//!   batches (the throughput floor).

use std::collections::VecDeque;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use examples::{RawEcho, RawPing, RawStyle, UringEcho, UringPing};
use rpc_transport::PollStrategy;
use rpc_transport::shm::demote;

use crate::{Budget, Sample, closed_loop, hist, measured};

/// Raw UDP ping-pong of `payload` bytes (one datagram).
pub fn udp(payload: usize, poll: PollStrategy, b: &Budget) -> anyhow::Result<Sample> {
    if payload > CHUNK {
        return udp_burst(payload, b);
    }
    let echo = RawEcho::start(poll, b.server_cpu, RawStyle::Direct)?;
    let mut ping = RawPing::connect(echo.addr(), poll, payload, RawStyle::Direct)?;
    closed_loop(b, || {
        ping.ping();
        Ok(())
    })
}

/// The largest datagram of a burst.
const CHUNK: usize = 60_000;

/// `payload` bytes as a burst of datagrams each way, both ends spinning.
fn udp_burst(payload: usize, b: &Budget) -> anyhow::Result<Sample> {
    let big = |s: &UdpSocket| -> anyhow::Result<()> {
        let s = socket2::SockRef::from(s);
        s.set_recv_buffer_size(8 << 20)?;
        s.set_send_buffer_size(8 << 20)?;
        Ok(())
    };
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    big(&echo)?;
    echo.set_nonblocking(true)?;
    let addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = b.server_cpu;
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = rpc_transport::pin_to_cpu(cpu);
            }
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                match echo.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let _ = echo.send_to(&buf[..n], from);
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
        })
    };
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    big(&socket)?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let data = vec![0x5au8; payload];
    let mut buf = vec![0u8; 65_536];
    let chunks = payload.div_ceil(CHUNK);
    let result = closed_loop(b, || {
        for c in data.chunks(CHUNK) {
            socket.send(c)?;
        }
        let mut got = 0;
        let give_up = Instant::now() + Duration::from_secs(1);
        while got < chunks {
            match socket.recv(&mut buf) {
                Ok(_) => got += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    anyhow::ensure!(Instant::now() < give_up, "a raw burst lost a datagram");
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    result
}

/// A datagram of `payload` bytes echoed through io_uring links.
pub fn uring(payload: usize, b: &Budget) -> anyhow::Result<Sample> {
    let echo = UringEcho::start(b.server_cpu)?;
    let mut ping = UringPing::connect(echo.addr(), payload)?;
    closed_loop(b, || {
        ping.ping();
        Ok(())
    })
}

/// A word on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

#[derive(Default)]
struct Flags {
    ping: Line,
    pong: Line,
    stop: Line,
}

/// Copies `from` into shared words, as the shared-memory link writes a slot: whole words
/// first (a fixed-size copy the compiler turns into one load), then the tail's bytes padded.
fn store(words: &[AtomicU64], from: &[u8]) {
    let mut chunks = from.chunks_exact(8);
    let mut words = words.iter();
    for (w, c) in (&mut words).zip(&mut chunks) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    let tail = chunks.remainder();
    if let (false, Some(w)) = (tail.is_empty(), words.next()) {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Copies shared words out into `to`, as the shared-memory link reads a slot.
fn load(words: &[AtomicU64], to: &mut [u8]) {
    let mut chunks = to.chunks_exact_mut(8);
    let mut words = words.iter();
    for (w, c) in (&mut words).zip(&mut chunks) {
        c.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    if let (false, Some(w)) = (tail.is_empty(), words.next()) {
        let b = w.load(Ordering::Relaxed).to_le_bytes();
        tail.copy_from_slice(&b[..tail.len()]);
    }
}

/// Raises `flag` to `seq` over the words just stored, then gives the cache the hint the
/// shared-memory rings give after a push (the lines written move towards the reader).
fn publish(flag: &AtomicU64, seq: u64, data: &[AtomicU64]) {
    flag.store(seq, Ordering::Release);
    demote(data);
    demote(std::slice::from_ref(flag));
}

/// Shared-memory flag ping-pong with `payload` bytes copied each way.
pub fn shm_flag(payload: usize, b: &Budget) -> anyhow::Result<Sample> {
    let flags = Arc::new(Flags::default());
    let words = payload.div_ceil(8);
    let request: Arc<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
    let reply: Arc<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
    let cpu = b.server_cpu;
    let thread = {
        let (flags, request, reply) = (flags.clone(), request.clone(), reply.clone());
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = rpc_transport::pin_to_cpu(cpu);
            }
            let mut buf = vec![0u8; payload];
            let mut seen = 0;
            loop {
                let seq = flags.ping.0.load(Ordering::Acquire);
                if seq == seen {
                    if flags.stop.0.load(Ordering::Relaxed) != 0 {
                        return;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                seen = seq;
                load(&request, &mut buf);
                store(&reply, &buf);
                publish(&flags.pong.0, seq, &reply);
            }
        })
    };
    let data = vec![0x5au8; payload];
    let mut buf = vec![0u8; payload];
    let mut seq = 0u64;
    let give_up = Duration::from_secs(1);
    let result = closed_loop(b, || {
        seq += 1;
        store(&request, &data);
        publish(&flags.ping.0, seq, &request);
        let t = Instant::now();
        let mut spins = 0u32;
        while flags.pong.0.load(Ordering::Acquire) != seq {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 {
                anyhow::ensure!(t.elapsed() < give_up, "the flag's echo thread stopped");
            }
        }
        load(&reply, &mut buf);
        Ok(())
    });
    flags.stop.0.store(1, Ordering::Relaxed);
    let _ = thread.join();
    result
}

/// Two threads waking each other through eventfds, both blocking in `read`: what a
/// blocking shared-memory round trip costs the kernel (two wake-ups), with no data.
pub fn eventfd_block(b: &Budget) -> anyhow::Result<Sample> {
    use rustix::event::{EventfdFlags, eventfd};
    let there = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
    let back = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = b.server_cpu;
    let thread = {
        let (there, back, stop) = (there.clone(), back.clone(), stop.clone());
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = rpc_transport::pin_to_cpu(cpu);
            }
            let mut word = [0u8; 8];
            while rustix::io::read(&*there, &mut word).is_ok() && !stop.load(Ordering::Relaxed) {
                let _ = rustix::io::write(&*back, &1u64.to_ne_bytes());
            }
        })
    };
    let mut word = [0u8; 8];
    let result = closed_loop(b, || {
        rustix::io::write(&*there, &1u64.to_ne_bytes())?;
        rustix::io::read(&*back, &mut word)?;
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let _ = rustix::io::write(&*there, &1u64.to_ne_bytes());
    let _ = thread.join();
    result
}

/// The throughput floor: a window of 32 datagrams of 72 bytes (a null call's size) kept in
/// flight with `sendmmsg`/`recvmmsg` against an echo answering in batches.
pub fn mmsg_window(b: &Budget) -> anyhow::Result<Sample> {
    const WINDOW: usize = 32;
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_nonblocking(true)?;
    let addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = b.server_cpu;
    let echo_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = rpc_transport::pin_to_cpu(cpu);
            }
            let mut bufs = vec![vec![0u8; 2048]; WINDOW];
            while !stop.load(Ordering::Relaxed) {
                let got = examples::recv_batch(&echo, &mut bufs);
                if got.is_empty() {
                    std::hint::spin_loop();
                    continue;
                }
                examples::send_batch_to(&echo, &bufs, &got);
            }
        })
    };
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    let payload = [0x5au8; 72];
    let mut bufs = vec![vec![0u8; 2048]; WINDOW];
    let mut run = |d: Duration, h: &mut hdrhistogram::Histogram<u64>| -> u64 {
        let mut sent_at = VecDeque::with_capacity(WINDOW);
        for _ in 0..WINDOW {
            sent_at.push_back(Instant::now());
        }
        examples::send_batch(&socket, &payload, WINDOW);
        let end = Instant::now() + d;
        let give_up = end + Duration::from_secs(1);
        let (mut calls, mut outstanding) = (0u64, WINDOW);
        while outstanding > 0 && Instant::now() < give_up {
            let got = examples::recv_batch(&socket, &mut bufs).len();
            if got == 0 {
                std::hint::spin_loop();
                continue;
            }
            outstanding -= got;
            calls += got as u64;
            for _ in 0..got {
                if let Some(t) = sent_at.pop_front() {
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                }
            }
            if Instant::now() < end {
                for _ in 0..got {
                    sent_at.push_back(Instant::now());
                }
                examples::send_batch(&socket, &payload, got);
                outstanding += got;
            }
        }
        calls
    };
    run(b.warmup(), &mut hist());
    let sample = measured(|h| Ok(run(b.duration(), h)));
    stop.store(true, Ordering::Relaxed);
    let _ = echo_thread.join();
    sample
}
