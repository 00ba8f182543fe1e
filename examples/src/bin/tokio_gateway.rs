//! Calls under tokio: a gateway whose `async fn` handler awaits a nested call to a backend,
//! and a tokio client keeping 64 calls in flight through it, on a current-thread runtime.
//! Call futures are woken through tokio's reactor: no worker spins.
//!
//! ```text
//! cargo run --release -p examples --bin tokio_gateway
//! ```

use std::time::Instant;

use futures::future::join_all;
use rpc_core::rpc;
use rpc_transport::Node;
use rpc_transport::PollStrategy;
use rpc_transport::udp::{UdpClient, UdpClientConfig, UdpServerConfig};

/// The backend: prices by item.
#[rpc]
pub trait Prices {
    /// The price of `item`, in cents.
    #[rpc(idempotent)]
    fn price(&self, item: u64) -> u64;
}

/// The gateway: totals an order by asking the backend for each item's price.
#[rpc]
pub trait Orders {
    /// The total of `items`, each priced by the backend; an async handler, so the gateway's
    /// receive loop serves other calls while this one waits for its nested calls.
    async fn total(&self, items: Vec<u64>) -> u64;
}

struct Catalogue;

impl Prices for Catalogue {
    fn price(&self, item: u64) -> u64 {
        100 + item % 900
    }
}

struct Gateway {
    prices: PricesClient<UdpClient>,
}

impl Orders for Gateway {
    async fn total(&self, items: Vec<u64>) -> u64 {
        // The nested calls of one order are in flight together.
        let mut sum = 0;
        for r in join_all(items.iter().map(|&i| self.prices.price_async(i))).await {
            sum += r.unwrap_or(0);
        }
        sum
    }
}

fn main() -> anyhow::Result<()> {
    // Parking after a short spin: three processes' worth of loops share this machine's cores.
    let poll = PollStrategy::SpinThenPark(std::time::Duration::from_micros(50));
    let localhost = "127.0.0.1:0".parse()?;
    let node = Node::new()?;
    let backend = node
        .bind_udp(localhost, UdpServerConfig::loopback().poll(poll))?
        .serve(PricesServer::new(Catalogue))?;
    let prices = PricesClient::new(
        node.connect_udp(backend.local_addr(), UdpClientConfig::loopback().poll(poll))?,
    );
    let gateway = node
        .bind_udp(localhost, UdpServerConfig::loopback().poll(poll))?
        .serve(OrdersServer::new(Gateway { prices }))?;
    let orders = OrdersClient::new(UdpClient::connect(
        gateway.local_addr(),
        UdpClientConfig::loopback().poll(poll),
    )?);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (calls, revenue) = runtime.block_on(async {
        let orders = &orders;
        let order = |n: u64| -> Vec<u64> { (n..n + 4).collect() };
        let (mut calls, mut revenue) = (0u64, 0u64);
        // 64 orders in flight at a time, 10,000 orders in all.
        for round in 0..(10_000 / 64 + 1) {
            let batch: Vec<Vec<u64>> = (0..64).map(|i| order(round * 64 + i)).collect();
            let totals = batch.into_iter().map(|items| orders.total_async(items));
            for total in join_all(totals).await {
                revenue += total?;
                calls += 1;
            }
        }
        anyhow::Ok((calls, revenue))
    })?;
    let took = started.elapsed();
    println!(
        "{calls} orders (each 4 nested calls) in {:.2?}: {:.0} orders/s, revenue {revenue}",
        took,
        calls as f64 / took.as_secs_f64()
    );
    let stats = gateway.stats();
    println!(
        "gateway: {} calls executed, {} async handler tasks still running",
        stats.executed, stats.tasks
    );
    Ok(())
}
