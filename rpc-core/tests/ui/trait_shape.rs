use rpc_core::rpc;

#[rpc]
trait Generic<T> {
    fn get(&self) -> u32;
}

#[rpc]
trait Items {
    type Output;
    const LIMIT: usize;
    fn get(&self) -> u32;
}

#[rpc]
unsafe trait Unsafe {
    fn get(&self) -> u32;
}

fn main() {}
