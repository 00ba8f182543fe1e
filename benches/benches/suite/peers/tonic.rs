//! tonic (gRPC over HTTP/2, protobuf through prost) as a peer of the suite: one HTTP/2
//! connection per measurement, reused for every call.
//!
//! No `.proto` file and no `protoc`: the two messages derive `prost::Message` by hand, the
//! client is tonic's `client::Grpc` over a `transport::Channel` with `tonic_prost::ProstCodec`,
//! and the server is a hand-written `tower` service (also a `NamedService`) that routes the
//! two paths to `server::Grpc::unary`, served by `transport::Server`. That is what the code
//! generator would produce, less the traits around it.
//!
//! Setup, the fastest this peer offers here:
//! - `TCP_NODELAY` on both ends (tonic's default, set explicitly).
//! - HTTP/2 flow-control windows of 4 MiB per stream and 16 MiB per connection on both ends
//!   (hyper's server defaults are 1 MiB each, just short of a 1 MiB message with its gRPC
//!   prefix, which would then wait on a window update); message size limits of 16 MiB
//!   (tonic's default is 4 MiB for decoding). Frames stay at 16 KiB: the client side has no
//!   setting for them. Codec buffers are tonic's defaults.
//! - Server: its own thread running a multi-thread tokio runtime. Given a cpu, one worker and
//!   every runtime thread pinned to it; without one, two unpinned workers. hyper runs each
//!   request on a task of its own.
//! - Client: a current-thread runtime on the calling thread (the channel's connection and
//!   buffer tasks run on it too), the whole measured loop inside one `block_on`.
//! - The payload is a protobuf `bytes` field held as `bytes::Bytes`: a request's payload is a
//!   reference count, and the echo moves the decoded message back.
//!
//! Measured from `benches/benches/peers_check.rs`:
//!
//! ```text
//! cargo bench -p benches --bench peers_check
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tonic::codegen::http::uri::PathAndQuery;
use ::tonic::codegen::{BoxFuture, Service, http};
use ::tonic::server::{NamedService, UnaryService};
use ::tonic::transport::server::TcpIncoming;
use ::tonic::transport::{Channel, Endpoint};
use ::tonic::{Request, Response, Status};
use anyhow::Context as _;
use bytes::Bytes;
use futures::future;
use tonic_prost::ProstCodec;

/// The service's name on the wire, and its two methods' paths.
const SERVICE: &str = "spin.bench.Peer";
const NULL_PATH: &str = "/spin.bench.Peer/Null";
const ECHO_PATH: &str = "/spin.bench.Peer/Echo";

/// Largest message either end encodes or decodes.
const MAX_MESSAGE: usize = 16 << 20;
/// HTTP/2 flow-control windows on both ends.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// The null call's argument and result: no fields.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// The echo's argument and result.
#[derive(Clone, PartialEq, prost::Message)]
struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
}

/// The null method's handler.
struct NullMethod;

impl UnaryService<Empty> for NullMethod {
    type Response = Empty;
    type Future = future::Ready<Result<Response<Empty>, Status>>;

    fn call(&mut self, _: Request<Empty>) -> Self::Future {
        future::ready(Ok(Response::new(Empty {})))
    }
}

/// The echo method's handler.
struct EchoMethod;

impl UnaryService<Payload> for EchoMethod {
    type Response = Payload;
    type Future = future::Ready<Result<Response<Payload>, Status>>;

    fn call(&mut self, request: Request<Payload>) -> Self::Future {
        future::ready(Ok(Response::new(request.into_inner())))
    }
}

/// The server's service: routes a request by its path to one of the two methods.
#[derive(Clone, Debug)]
struct PeerService;

impl NamedService for PeerService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<::tonic::body::Body>> for PeerService {
    type Response = http::Response<::tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<::tonic::body::Body>) -> Self::Future {
        match request.uri().path() {
            NULL_PATH => Box::pin(async move {
                let mut grpc = ::tonic::server::Grpc::new(ProstCodec::<Empty, Empty>::default());
                Ok(grpc.unary(NullMethod, request).await)
            }),
            ECHO_PATH => Box::pin(async move {
                let mut grpc =
                    ::tonic::server::Grpc::new(ProstCodec::<Payload, Payload>::default())
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE);
                Ok(grpc.unary(EchoMethod, request).await)
            }),
            _ => Box::pin(future::ready(Ok(
                Status::unimplemented("no such method").into_http()
            ))),
        }
    }
}

pub use super::serving::Server;
use super::serving::{Ready, Stop, client_runtime, nanos};

/// Starts the tonic server on loopback, its runtime's threads pinned to `server_cpu` if given.
pub fn start(server_cpu: Option<usize>) -> anyhow::Result<Server> {
    Server::start("tonic", server_cpu, serve)
}

/// The server: listens, says where, serves until `stop`.
fn serve(runtime: &tokio::runtime::Runtime, ready: &Ready, stop: Stop) -> anyhow::Result<()> {
    runtime.block_on(async move {
        let incoming = match TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
            Ok(incoming) => incoming.with_nodelay(Some(true)),
            Err(e) => {
                let _ = ready.send(Err(anyhow::Error::from(e).context("tonic bind")));
                return Ok(());
            }
        };
        let _ = ready.send(incoming.local_addr().context("tonic local address"));
        ::tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .serve_with_incoming_shutdown(PeerService, incoming, async move {
                let _ = stop.await;
            })
            .await
            .context("tonic server")
    })
}

/// A client of `server`'s service over one HTTP/2 connection.
type Client = ::tonic::client::Grpc<Channel>;

/// A current-thread runtime and a client connected to `server` on it.
fn connect(server: &Server) -> anyhow::Result<(tokio::runtime::Runtime, Client)> {
    let runtime = client_runtime()?;
    let client = runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))?
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .connect()
            .await
            .context("tonic connect")?;
        anyhow::Ok(
            ::tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    })?;
    Ok((runtime, client))
}

/// One null call.
async fn null(client: &mut Client) -> anyhow::Result<()> {
    client.ready().await.context("tonic channel")?;
    client
        .unary::<Empty, Empty, _>(
            Request::new(Empty {}),
            PathAndQuery::from_static(NULL_PATH),
            ProstCodec::default(),
        )
        .await
        .context("tonic null call")?;
    Ok(())
}

/// Closed loop: one call at a time from the calling thread, `payload` bytes echoed (0: the
/// null call, an empty message each way). Returns one round-trip time in ns per measured call,
/// after `warmup` unmeasured calls. A round trip is timed from before the call (the request's
/// payload is a clone of a `Bytes`, a reference count) to its checked result.
pub fn round_trips(
    server: &Server,
    payload: usize,
    warmup: u64,
    iterations: u64,
) -> anyhow::Result<Vec<u64>> {
    let (runtime, mut client) = connect(server)?;
    let data = Bytes::from((0..payload).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let times = runtime.block_on(async {
        let mut times = Vec::with_capacity(usize::try_from(iterations).unwrap_or(0));
        for i in 0..warmup + iterations {
            let start = Instant::now();
            if payload == 0 {
                null(&mut client).await?;
            } else {
                client.ready().await.context("tonic channel")?;
                let echoed = client
                    .unary::<Payload, Payload, _>(
                        Request::new(Payload { data: data.clone() }),
                        PathAndQuery::from_static(ECHO_PATH),
                        ProstCodec::default(),
                    )
                    .await
                    .context("tonic echo call")?
                    .into_inner();
                anyhow::ensure!(
                    echoed.data.len() == payload,
                    "echo of {payload} bytes came back with {}",
                    echoed.data.len()
                );
            }
            let elapsed = start.elapsed();
            if i >= warmup {
                times.push(nanos(elapsed));
            }
        }
        anyhow::Ok(times)
    })?;
    drop(client);
    drop(runtime);
    Ok(times)
}

/// `in_flight` concurrent null calls (HTTP/2 streams on the one connection) from one
/// current-thread runtime on the calling thread for `seconds` (after unmeasured warm-up of a
/// fifth of that, at most a second): each of `in_flight` callers makes one call after
/// another. Returns the calls completed, the wall seconds, the CPU time of the whole process
/// (client and server) over the measured run, and every measured call's latency in ns.
pub fn throughput(
    server: &Server,
    in_flight: usize,
    seconds: f64,
) -> anyhow::Result<(u64, f64, Duration, Vec<u64>)> {
    anyhow::ensure!(in_flight > 0, "no calls in flight");
    let (runtime, client) = connect(server)?;
    let run = |d: Duration| -> anyhow::Result<Vec<u64>> {
        runtime.block_on(async {
            let end = Instant::now() + d;
            let callers = (0..in_flight).map(|_| {
                let mut client = client.clone();
                async move {
                    let mut times = Vec::new();
                    while Instant::now() < end {
                        let start = Instant::now();
                        null(&mut client).await?;
                        times.push(nanos(start.elapsed()));
                    }
                    anyhow::Ok(times)
                }
            });
            let mut all = Vec::new();
            for times in future::join_all(callers).await {
                all.extend(times?);
            }
            Ok(all)
        })
    };
    run(Duration::from_secs_f64((seconds / 5.0).min(1.0)))?;
    let (cpu0, t0) = (examples::cpu_time(), Instant::now());
    let times = run(Duration::from_secs_f64(seconds))?;
    let (wall, cpu) = (t0.elapsed(), examples::cpu_time() - cpu0);
    drop(client);
    drop(runtime);
    Ok((times.len() as u64, wall.as_secs_f64(), cpu, times))
}
