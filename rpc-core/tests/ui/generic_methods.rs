use rpc_core::rpc;

#[rpc]
trait Generic {
    fn typed<T>(&self, value: T) -> u32;
    fn constant<const N: usize>(&self, value: [u8; N]) -> u32;
    fn bounded<'a>(&self, value: &'a [u8]) -> u32
    where
        Self: Sized;
    // Lifetime parameters are fine.
    fn borrowed<'a, 'b: 'a>(&self, a: &'a [u8], b: &'b str) -> u32;
}

fn main() {}
