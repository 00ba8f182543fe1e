use rpc_core::rpc;

#[rpc]
trait Reserved {
    fn new(&self) -> u32;
    fn with(&self, x: u32);
    fn r#transport(&self, raw: u8);
}

fn main() {}
