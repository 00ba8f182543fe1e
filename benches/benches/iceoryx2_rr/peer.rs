//! iceoryx2 request-response as a peer: a client on the calling thread and an echo server on a
//! thread of its own, each with its own node on the `ipc` service type, so every request and
//! response goes through shared memory as between two processes. Both ends busy-poll.
//!
//! Payloads are `[u8]` slices (the service is `request_response::<[u8], [u8]>`), with both
//! ports' `initial_max_slice_len` set to the payload, so one code path serves every size.

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use iceoryx2::prelude::*;

/// Calls made in this process, to give each call's service a name of its own.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// How long the client waits for one response before it gives up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls between two looks at the clock and at the server thread while waiting.
const POLLS_PER_CHECK: u64 = 1 << 16;

/// Round trips of iceoryx2 request-response between this thread (the client) and a server
/// thread pinned to `server_cpu` (if given), each request and response carrying `payload`
/// bytes (at least 8: a u64 sequence number then filler), both ends busy-polling (no waits or
/// sleeps in the loop). Returns one round-trip time per iteration in nanoseconds, after
/// `warmup` unmeasured round trips.
///
/// A round trip is timed from the loan of the request to the release of its response: loan,
/// copy of the payload into the shared-memory sample, send, polling until the echo arrives,
/// the check of its sequence number, and dropping the response and the pending response.
pub fn round_trips(
    payload: usize,
    warmup: u64,
    iterations: u64,
    server_cpu: Option<usize>,
) -> anyhow::Result<Vec<u64>> {
    ensure!(
        payload >= 8,
        "payload must hold the u64 sequence number: {payload} < 8 bytes"
    );
    let name = format!(
        "spin-rpc/benches/iceoryx2_rr/{}/{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let server = {
        let (name, stop) = (name.clone(), Arc::clone(&stop));
        thread::Builder::new()
            .name("iceoryx2-server".into())
            .spawn(move || serve(&name, payload, server_cpu, &stop, &ready_tx))
            .context("spawning the server thread")?
    };
    // The server has created the service and its port (or failed) before the client opens it,
    // so the client's first request finds the server connected.
    if ready_rx.recv().is_err() {
        return Err(match server.join() {
            Ok(Err(e)) => e.context("iceoryx2 server setup"),
            Ok(Ok(())) => anyhow::anyhow!("iceoryx2 server ended before it was ready"),
            Err(_) => anyhow::anyhow!("iceoryx2 server thread panicked during setup"),
        });
    }

    let measured = client(&name, payload, warmup, iterations, &server);
    stop.store(true, Ordering::Relaxed);
    let served = match server.join() {
        Ok(result) => result.context("iceoryx2 server"),
        Err(_) => Err(anyhow::anyhow!("iceoryx2 server thread panicked")),
    };
    let times = measured?;
    served?;
    Ok(times)
}

/// The client's side: opens the service, then times `warmup + iterations` round trips.
fn client(
    name: &str,
    payload: usize,
    warmup: u64,
    iterations: u64,
    server: &thread::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Vec<u64>> {
    let node = NodeBuilder::new()
        .create::<ipc::Service>()
        .context("creating the client's node")?;
    let service = node
        .service_builder(&ServiceName::new(name).context("service name")?)
        .request_response::<[u8], [u8]>()
        .open()
        .context("opening the service")?;
    let client = service
        .client_builder()
        .initial_max_slice_len(payload)
        .create()
        .context("creating the client port")?;

    let mut request: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    let mut times = Vec::with_capacity(usize::try_from(iterations).unwrap_or(0));
    for seq in 0..warmup + iterations {
        request[..8].copy_from_slice(&seq.to_le_bytes());
        let start = Instant::now();
        let pending = client
            .loan_slice_uninit(payload)
            .context("loaning a request")?
            .write_from_slice(&request)
            .send()
            .context("sending a request")?;
        let mut polls = 0u64;
        let response = loop {
            if let Some(response) = pending.receive().context("receiving a response")? {
                break response;
            }
            polls += 1;
            if polls % POLLS_PER_CHECK == 0 {
                if server.is_finished() {
                    bail!("the server ended while request {seq} waited for its response");
                }
                if start.elapsed() > RESPONSE_TIMEOUT {
                    bail!("no response to request {seq} in {RESPONSE_TIMEOUT:?}");
                }
            }
            spin_loop();
        };
        let echoed = response.payload();
        ensure!(
            echoed.len() == payload && echoed[..8] == request[..8],
            "response to request {seq} has {} bytes starting {:?}",
            echoed.len(),
            &echoed[..echoed.len().min(8)]
        );
        drop(response);
        drop(pending);
        let elapsed = start.elapsed();
        if seq >= warmup {
            times.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(times)
}

/// The server's side: creates the service and its port, says so on `ready`, then echoes each
/// request's payload back as its response until `stop` is set.
fn serve(
    name: &str,
    payload: usize,
    cpu: Option<usize>,
    stop: &AtomicBool,
    ready: &mpsc::SyncSender<()>,
) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        rpc_transport::pin_to_cpu(cpu)
            .with_context(|| format!("pinning the server to cpu {cpu}"))?;
    }
    let node = NodeBuilder::new()
        .create::<ipc::Service>()
        .context("creating the server's node")?;
    let service = node
        .service_builder(&ServiceName::new(name).context("service name")?)
        .request_response::<[u8], [u8]>()
        .max_clients(1)
        .max_servers(1)
        .create()
        .context("creating the service")?;
    let server = service
        .server_builder()
        .initial_max_slice_len(payload)
        .create()
        .context("creating the server port")?;
    ready
        .send(())
        .context("telling the client the server is ready")?;

    while !stop.load(Ordering::Relaxed) {
        match server.receive().context("receiving a request")? {
            Some(request) => {
                let body = request.payload();
                request
                    .loan_slice_uninit(body.len())
                    .context("loaning a response")?
                    .write_from_slice(body)
                    .send()
                    .context("sending a response")?;
            }
            None => spin_loop(),
        }
    }
    Ok(())
}
