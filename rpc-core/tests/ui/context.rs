use rpc_core::rpc;
use rpc_core::service::CallContext;

#[rpc]
trait Context {
    fn second(&self, x: u32, ctx: &CallContext) -> u32;
    fn by_value(&self, ctx: CallContext) -> u32;
    fn mutable(&self, ctx: &mut CallContext) -> u32;
}

fn main() {}
