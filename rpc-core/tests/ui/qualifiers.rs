use rpc_core::rpc;

#[rpc]
trait Qualifiers {
    #[rpc(blocking)]
    async fn asynchronous(&self) -> u32;
    unsafe fn dangerous(&self) -> u32;
    extern "C" fn foreign(&self) -> u32;
}

fn main() {}
