use rpc_core::rpc;

#[rpc]
struct NotATrait;

#[rpc]
fn not_a_trait_either() {}

fn main() {}
