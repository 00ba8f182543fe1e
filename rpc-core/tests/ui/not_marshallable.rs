use rpc_core::{Marshal, rpc};

struct Plain;

#[derive(Marshal)]
struct Derived {
    x: u32,
}

#[rpc]
trait Types {
    fn argument(&self, value: Plain);
    fn returned(&self) -> Plain;
    // Only byte slices, strings and zero-copy types decode as references.
    fn by_reference(&self, value: &Derived);
}

fn main() {}
