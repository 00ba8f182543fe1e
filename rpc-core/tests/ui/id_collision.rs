// Two method names whose ids collide in this interface (found by search, and pinned by
// the tests of rpc_core::marshal::schema).
use rpc_core::rpc;

#[rpc]
trait Collide {
    fn m2595(&self);
    fn m148830(&self);
}

fn main() {}
