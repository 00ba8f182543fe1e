use rpc_core::rpc;

#[rpc]
trait Receivers {
    fn by_value(self) -> u32;
    fn mutable(&mut self) -> u32;
    fn boxed(self: Box<Self>) -> u32;
    fn associated() -> u32;
    fn fine(&self) -> u32;
}

fn main() {}
