//! A key-value store with zero-copy `get` and `put`, called by blocking, async and pipelined
//! clients: the template to start a service from (`examples/src/kvstore.rs` holds the
//! interface and the store).
//!
//! ```text
//! cargo run --release -p examples --bin kvstore                  # server and clients here
//! cargo run --release -p examples --bin kvstore -- --serve 0.0.0.0:7000
//! cargo run --release -p examples --bin kvstore -- --connect 10.0.0.1:7000
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use clap::Parser;
use examples::kvstore::{KvStoreClient, KvStoreServer, Store, exercise};
use rpc_transport::PollStrategy;
use rpc_transport::udp::{UdpClient, UdpClientConfig, UdpServer, UdpServerConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Only serve, on this address, until killed.
    #[arg(long, conflicts_with = "connect")]
    serve: Option<SocketAddr>,
    /// Only call the server at this address, check every answer, and exit.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Keys to write and read back through the pipeline.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_len: usize,
}

fn client_config(server: SocketAddr) -> UdpClientConfig {
    let config = if server.ip().is_loopback() {
        UdpClientConfig::loopback()
    } else {
        UdpClientConfig::default()
    };
    config.poll(PollStrategy::SpinThenPark(
        std::time::Duration::from_micros(50),
    ))
}

fn run_client(server: SocketAddr, args: &Args) -> anyhow::Result<()> {
    let kv = KvStoreClient::new(UdpClient::connect(server, client_config(server))?);
    let started = Instant::now();
    let prefix = format!("{:x}/", kv.transport().local_addr()?.port());
    let done = exercise(&kv, &prefix, args.keys, args.value_len)?;
    let took = started.elapsed();
    println!(
        "{} calls ({} keys of {} bytes put pipelined and read back) in {took:.2?}: {:.0} calls/s, all answers checked",
        done.calls,
        done.keys,
        args.value_len,
        done.calls as f64 / took.as_secs_f64()
    );

    // The same client under tokio: the call futures are awaited, woken by tokio's reactor.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = [prefix.as_bytes(), b"tokio"].concat();
    runtime.block_on(async {
        kv.put_async(&key, b"awaited").await?;
        let value = kv.get_async(&key).await?;
        anyhow::ensure!(
            value.as_deref() == Some(&b"awaited"[..]),
            "tokio read back wrong"
        );
        println!(
            "under tokio: put and get awaited, value {:?}",
            String::from_utf8_lossy(&value.unwrap_or_default())
        );
        anyhow::Ok(())
    })?;
    let stats = kv.stats()?;
    println!(
        "store: {} keys, {} bytes, {} writes executed",
        stats.keys, stats.bytes, stats.writes
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve {
        let config = if addr.ip().is_loopback() {
            UdpServerConfig::loopback()
        } else {
            UdpServerConfig::default()
        };
        let server = UdpServer::bind(addr, config.poll(PollStrategy::Block))?
            .serve(KvStoreServer::new(Store::new()))?;
        println!("serving on {}", server.local_addr());
        loop {
            std::thread::park();
        }
    }
    if let Some(addr) = args.connect {
        return run_client(addr, &args);
    }
    let server = UdpServer::bind(
        "127.0.0.1:0".parse()?,
        UdpServerConfig::loopback().poll(PollStrategy::SpinThenPark(
            std::time::Duration::from_micros(50),
        )),
    )?
    .serve(KvStoreServer::new(Store::new()))?;
    println!("serving on {}", server.local_addr());
    run_client(server.local_addr(), &args)?;
    let counters = server.shutdown();
    println!("server: {} calls executed", counters.executed);
    Ok(())
}
