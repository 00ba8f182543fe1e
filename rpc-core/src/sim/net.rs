//! [`SimNet`]: a [`Transport`] over the simulated network, for testing generated services end
//! to end without sockets. One client and one server state machine exchange datagrams through
//! a seeded network with loss, duplication, reordering and delay, in virtual time; the server
//! executes calls through a [`Dispatch`] synchronously when their last fragment arrives.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::client::{CallRequest, Client, ClientStats, Event, Payload};
use crate::clock::LamportClock;
use std::sync::Arc;

use super::SIM_WALL_CLOCK;
use crate::config::{ClientConfig, ServerConfig};
use crate::error::{CallError, DecodeError};
use crate::marshal::Encoder;
use crate::server::{Server, ServerStats, Ticket};
use crate::service::{
    AsyncTransport, CallOptions, Dispatch, MethodDesc, Reply, ReplySink, RequestBuf, Transport,
};
use crate::wire::ErrorCode;

/// Faults of a [`SimNet`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetFaults {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by up to ten times the delay.
    pub reorder: f64,
    /// One-way delay.
    pub delay: Duration,
}

impl NetFaults {
    /// A perfect network with a 10 µs delay.
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::from_micros(10),
        }
    }

    /// Loss, duplication and reordering at the given rates.
    pub fn lossy(loss: f64, duplicate: f64, reorder: f64) -> Self {
        Self {
            loss,
            duplicate,
            reorder,
            ..Self::none()
        }
    }
}

/// A datagram on the wire: arrival time, send order (ties), destination, bytes.
type InFlight = (Instant, u64, u32, Vec<u8>);

const CLIENT: u32 = 1;
const SERVER: u32 = 0;

struct Net<D> {
    rng: ChaCha8Rng,
    faults: NetFaults,
    now: Instant,
    order: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    client: Client,
    server: Server<u32>,
    dispatch: Arc<D>,
    executions: u64,
}

/// A client and a server over a simulated network, usable as a [`Transport`] by generated
/// client stubs. Single-threaded; each call runs the network until the call ends.
pub struct SimNet<D> {
    net: RefCell<Net<D>>,
}

impl<D> core::fmt::Debug for SimNet<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimNet").finish_non_exhaustive()
    }
}

impl<D: Dispatch> SimNet<D> {
    /// A network with default configurations.
    pub fn new(seed: u64, faults: NetFaults, dispatch: D) -> Self {
        Self::with_config(
            seed,
            faults,
            ClientConfig::default(),
            ServerConfig::default(),
            dispatch,
        )
    }

    /// A network with the given configurations (they must be valid).
    pub fn with_config(
        seed: u64,
        faults: NetFaults,
        client: ClientConfig,
        server: ServerConfig,
        dispatch: D,
    ) -> Self {
        let now = Instant::now();
        let client_clock = Arc::new(LamportClock::new(0xc11e_0000 + seed, SIM_WALL_CLOCK, now));
        let server_clock = Arc::new(LamportClock::new(0x5e7e, SIM_WALL_CLOCK, now));
        let client =
            Client::new(client, 0xc11e_0000 + seed, 1, client_clock).expect("valid client config");
        let server = Server::new(server, 1, server_clock, ChaCha8Rng::seed_from_u64(seed))
            .expect("valid server config");
        Self {
            net: RefCell::new(Net {
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults,
                now,
                order: 0,
                queue: BinaryHeap::new(),
                client,
                server,
                dispatch: Arc::new(dispatch),
                executions: 0,
            }),
        }
    }

    /// Client counters.
    pub fn client_stats(&self) -> ClientStats {
        *self.net.borrow().client.stats()
    }

    /// Server counters.
    pub fn server_stats(&self) -> ServerStats {
        *self.net.borrow().server.stats()
    }

    /// Handler executions so far.
    pub fn executions(&self) -> u64 {
        self.net.borrow().executions
    }
}

impl<D: Dispatch> Net<D> {
    fn send(&mut self, to: u32, bytes: Vec<u8>) {
        if self.rng.random_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.faults.delay;
            if self.rng.random_bool(self.faults.reorder) {
                delay += self.faults.delay * self.rng.random_range(1..10);
            }
            self.order += 1;
            self.queue
                .push(Reverse((self.now + delay, self.order, to, bytes.clone())));
        }
    }

    fn flush(&mut self, request: &Encoder<'_>) {
        while let Some(t) = self.client.poll_transmit(self.now) {
            let bytes = match t.payload {
                Payload::None => t.to_datagram([]),
                Payload::Inline => t.to_datagram([t.inline()]),
                Payload::Call { offset, len, .. } => {
                    let mut body = Vec::with_capacity(len);
                    request.for_each_in(offset..offset + len, |s| body.extend_from_slice(s));
                    t.to_datagram([&body[..]])
                }
            };
            self.send(SERVER, bytes);
        }
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            out.push(t.to_datagram());
        }
        for bytes in out {
            self.send(CLIENT, bytes);
        }
    }

    fn serve(&mut self, bytes: &[u8]) {
        let now = self.now;
        let Some(call) = self.server.handle_datagram(now, CLIENT, bytes) else {
            return;
        };
        let ctx = call.context;
        let ticket = call.ticket;
        let mut out = Vec::new();
        match self.dispatch.method(ctx.interface, ctx.method) {
            Err(code) => reply_error(&mut self.server, now, &ticket, code, &mut out),
            Ok(m) if ctx.idempotent && !m.idempotent => reply_error(
                &mut self.server,
                now,
                &ticket,
                ErrorCode::NotIdempotent,
                &mut out,
            ),
            Ok(m) if m.asynchronous => {
                self.executions += 1;
                // Polled to the end here: whatever it awaits (a call through another
                // `SimNet`, say) runs to its end within one poll.
                let request = RequestBuf {
                    buf: call.body.to_vec(),
                    body: 0..call.body.len(),
                };
                let result =
                    D::dispatch_async(self.dispatch.clone(), ctx, request).and_then(|mut f| {
                        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                        loop {
                            if let std::task::Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                                return r;
                            }
                        }
                    });
                match result {
                    Ok(reply) => {
                        let mut enc = Encoder::new();
                        enc.put_bytes(&reply);
                        let mut sink = Sink {
                            server: &mut self.server,
                            now,
                            ticket,
                            out: &mut out,
                            sent: false,
                        };
                        sink.send(&enc);
                    }
                    Err(e) => reply_error(&mut self.server, now, &ticket, e.code(), &mut out),
                }
            }
            Ok(_) => {
                self.executions += 1;
                let mut sink = Sink {
                    server: &mut self.server,
                    now,
                    ticket,
                    out: &mut out,
                    sent: false,
                };
                let result = self.dispatch.dispatch(&ctx, &call.body, &mut sink);
                let sent = sink.sent;
                match result {
                    Err(e) => reply_error(&mut self.server, now, &ticket, e.code(), &mut out),
                    Ok(()) if !sent => reply_error(
                        &mut self.server,
                        now,
                        &ticket,
                        ErrorCode::Other(u16::MAX),
                        &mut out,
                    ),
                    Ok(()) => {}
                }
            }
        }
        if let Some(buf) = call.body.into_owned_buffer() {
            self.server.recycle(buf);
        }
        for bytes in out {
            self.send(CLIENT, bytes);
        }
    }
}

fn reply_error(
    server: &mut Server<u32>,
    now: Instant,
    ticket: &Ticket<u32>,
    code: ErrorCode,
    out: &mut Vec<Vec<u8>>,
) {
    if let Some(plan) = server.begin_reply(now, ticket, Err(code)) {
        out.push(plan.datagram(0, &[]));
        server.finish_reply(ticket, &plan, []);
    }
}

struct Sink<'s> {
    server: &'s mut Server<u32>,
    now: Instant,
    ticket: Ticket<u32>,
    out: &'s mut Vec<Vec<u8>>,
    sent: bool,
}

impl ReplySink for Sink<'_> {
    fn send(&mut self, body: &Encoder<'_>) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        let Some(plan) = self
            .server
            .begin_reply(self.now, &self.ticket, Ok(body.len()))
        else {
            return;
        };
        let whole = body.to_vec();
        for i in 0..plan.count() {
            self.out.push(plan.datagram(i, &whole));
        }
        self.server
            .finish_reply(&self.ticket, &plan, body.segments());
    }
}

impl<D: Dispatch> Transport for SimNet<D> {
    fn call<R>(
        &self,
        method: &'static MethodDesc,
        options: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        let mut net = self.net.borrow_mut();
        let net = &mut *net;
        let now = net.now;
        let req = CallRequest {
            interface: method.interface,
            method: method.id,
            len: request.len(),
            idempotent: method.idempotent,
            deadline: options
                .timeout
                .map(|t| crate::config::deadline_after(now, t)),
        };
        let id = net.client.start_call(now, req)?;
        loop {
            net.flush(request);
            let mut next = net.queue.peek().map(|Reverse((t, ..))| *t);
            for t in [net.client.poll_timeout(), net.server.poll_timeout()]
                .into_iter()
                .flatten()
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            let Some(next) = next else {
                return Err(CallError::Disconnected);
            };
            net.now = net.now.max(next);
            let now = net.now;
            if net.queue.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
                let Some(Reverse((_, _, to, bytes))) = net.queue.pop() else {
                    continue;
                };
                if to == SERVER {
                    net.serve(&bytes);
                } else if let Some(resp) = net.client.handle_datagram(now, &bytes) {
                    if resp.call == id {
                        let body = resp.result?;
                        let value = decode(&body).map_err(CallError::BadReply);
                        if let Some(buf) = body.into_owned_buffer() {
                            net.client.recycle(buf);
                        }
                        return Ok(Reply {
                            value: value?,
                            request_stamp: resp.request_stamp,
                            reply_stamp: resp.reply_stamp,
                        });
                    }
                }
            } else {
                if net.client.poll_timeout().is_some_and(|t| t <= now) {
                    net.client.handle_timeout(now);
                }
                if net.server.poll_timeout().is_some_and(|t| t <= now) {
                    net.server.handle_timeout(now);
                }
            }
            while let Some(ev) = net.client.poll_event() {
                if let Event::CallFailed { call, error } = ev {
                    if call == id {
                        return Err(error);
                    }
                }
            }
        }
    }
}

impl<D: Dispatch> AsyncTransport for SimNet<D> {
    type Call<'a, R>
        = core::future::Ready<Result<Reply<R>, CallError>>
    where
        Self: 'a,
        R: 'a;

    /// The call runs to its end at once (the simulated network is single-threaded).
    fn call_async<'a, R: 'a>(
        &'a self,
        method: &'static MethodDesc,
        options: CallOptions,
        request: Encoder<'a>,
        decode: fn(&[u8]) -> Result<R, DecodeError>,
    ) -> Self::Call<'a, R> {
        core::future::ready(self.call(method, &options, &request, decode))
    }
}
