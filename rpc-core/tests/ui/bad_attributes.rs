use rpc_core::rpc;

#[rpc(nme = "kv", name = 5, crate = "not a path")]
trait Args {
    fn ok(&self);
}

#[rpc(name = "")]
trait Empty {}

#[rpc(idempotent)]
trait Misplaced {}

#[rpc(name = "twice", name = "again")]
trait Twice {}

#[rpc]
trait Methods {
    #[rpc(idempotant)]
    fn misspelt(&self);
    #[rpc(idempotent = true)]
    fn valued(&self);
    #[rpc]
    fn bare(&self);
    #[rpc(blocking, blocking)]
    fn duplicate(&self);
    #[rpc(name = "x")]
    fn named(&self);
    #[cfg(test)]
    fn conditional(&self);
}

fn main() {}
