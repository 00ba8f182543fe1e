use std::time::Duration;

use rpc_core::marshal::{self, Decoder, Encoder};
use rpc_core::service::{CallContext, CallOptions, DispatchError, MethodDesc, ReplySink, Service, Transport};
use rpc_transport::PollStrategy;
use rpc_transport::udp::{UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};

const ECHO: MethodDesc = MethodDesc { interface: 0xec40, id: 1, interface_name: "Echo", name: "echo", idempotent: false, blocking: false };
static METHODS: [MethodDesc; 1] = [ECHO];
struct EchoService;
impl Service for EchoService {
    fn interface(&self) -> u32 { ECHO.interface }
    fn methods(&self) -> &'static [MethodDesc] { &METHODS }
    fn call(&self, _ctx: &CallContext, request: &[u8], sink: &mut dyn ReplySink) -> Result<(), DispatchError> {
        let mut dec = Decoder::new(request);
        let data: &[u8] = dec.get()?;
        dec.finish()?;
        let mut enc = Encoder::new();
        enc.put(data);
        sink.send(&enc);
        Ok(())
    }
}

#[test]
fn smoke() {
    for poll in [PollStrategy::Spin, PollStrategy::SpinThenPark(Duration::from_micros(50)), PollStrategy::Block] {
        let server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpServerConfig::loopback().poll(poll)).unwrap().serve(EchoService).unwrap();
        let client = UdpClient::connect(server.local_addr(), UdpClientConfig::loopback().poll(poll)).unwrap();
        for len in [0usize, 10, 1000, 100_000, 2_000_000] {
            let data = vec![7u8; len];
            let mut enc = Encoder::new();
            enc.put(&data[..]);
            let reply = client.call(&ECHO, &CallOptions::new(), &enc, |b| marshal::decode::<Vec<u8>>(b)).unwrap();
            assert_eq!(reply.value, data);
        }
        let t = std::time::Instant::now();
        for _ in 0..2000 {
            let mut enc = Encoder::new();
            enc.put(&b"x"[..]);
            client.call(&ECHO, &CallOptions::new(), &enc, |b| marshal::decode::<Vec<u8>>(b)).unwrap();
        }
        println!("{poll:?}: {:?} per call, {:?}", t.elapsed() / 2000, server.stats());
        drop(client);
        server.shutdown();
    }
}
