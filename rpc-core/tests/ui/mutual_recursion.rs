// Mutually recursive types: each derived fingerprint depends on the other's, which the
// compiler reports as a cycle. `#[marshal(fingerprint = "...")]` on one of them breaks it
// (see tests/schema.rs).
use rpc_core::Marshal;

#[derive(Marshal)]
struct Even {
    next: Option<Box<Odd>>,
}

#[derive(Marshal)]
struct Odd {
    next: Box<Even>,
}

fn main() {}
