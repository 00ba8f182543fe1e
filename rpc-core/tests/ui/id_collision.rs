// Two method names whose ids collide in this interface (found by search, and pinned by
// rpc-derive's fingerprint tests).
use rpc_core::rpc;

#[rpc]
trait Collide {
    fn m23268(&self);
    fn m32351(&self);
}

fn main() {}
