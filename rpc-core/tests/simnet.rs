//! A hand-written service (what `#[rpc]` generates, spelled out) over the simulated network.

use rpc_core::marshal::{self, Decoder, Encoder};
use rpc_core::service::{
    CallContext, CallOptions, DispatchError, MethodDesc, ReplySink, Service, Transport,
};
use rpc_core::sim::{NetFaults, SimNet};
use rpc_core::{CallError, DecodeError};

const ECHO: MethodDesc = MethodDesc {
    interface: 0xec40,
    id: 1,
    interface_name: "Echo",
    name: "echo",
    idempotent: false,
    blocking: false,
    asynchronous: false,
};
const MISSING: MethodDesc = MethodDesc {
    id: 2,
    name: "missing",
    ..ECHO
};
static METHODS: [MethodDesc; 1] = [ECHO];

struct EchoService;

impl Service for EchoService {
    fn interface(&self) -> u32 {
        ECHO.interface
    }
    fn methods(&self) -> &'static [MethodDesc] {
        &METHODS
    }
    fn call(
        &self,
        ctx: &CallContext,
        request: &[u8],
        sink: &mut dyn ReplySink,
    ) -> Result<(), DispatchError> {
        let mut dec = Decoder::new(request);
        let data: &[u8] = dec.get()?;
        let times: u32 = dec.get()?;
        dec.finish()?;
        let reply: Vec<u8> = data
            .iter()
            .copied()
            .cycle()
            .take(data.len() * times as usize)
            .collect();
        let stamp = ctx.received_stamp.time;
        let mut enc = Encoder::new();
        enc.put(&reply);
        enc.put(&stamp);
        sink.send(&enc);
        Ok(())
    }
}

fn echo(
    t: &impl Transport,
    method: &'static MethodDesc,
    data: &[u8],
    times: u32,
) -> Result<(Vec<u8>, u64), CallError> {
    let mut enc = Encoder::new();
    enc.put(data);
    enc.put(&times);
    let reply = t.call(
        method,
        &CallOptions::new(),
        &enc,
        |body: &[u8]| -> Result<(Vec<u8>, u64), DecodeError> { marshal::decode(body) },
    )?;
    assert!(reply.reply_stamp.time > reply.request_stamp.time);
    Ok(reply.value)
}

#[test]
fn echo_over_a_lossy_network() {
    let net = SimNet::new(7, NetFaults::lossy(0.1, 0.05, 0.1), EchoService);
    for i in 0..300u32 {
        let data: Vec<u8> = (0..(i * 37 % 5000)).map(|b| b as u8).collect();
        let times = i % 3 + 1;
        let (reply, _) = echo(&net, &ECHO, &data, times).unwrap();
        assert_eq!(reply.len(), data.len() * times as usize);
        assert!(
            reply
                .chunks(data.len().max(1))
                .all(|c| data.is_empty() || c == &data[..])
        );
    }
    assert_eq!(net.executions(), 300, "each call executed exactly once");
    assert!(net.client_stats().retransmissions > 0);
}

#[test]
fn unknown_method_is_an_interface_mismatch() {
    let net = SimNet::new(1, NetFaults::none(), EchoService);
    let err = echo(&net, &MISSING, b"x", 1).unwrap_err();
    assert_eq!(
        err,
        CallError::InterfaceMismatch {
            interface: 0xec40,
            method: 2
        }
    );
    assert_eq!(net.executions(), 0);
}
