use rpc_core::rpc;

#[rpc]
trait Unsupported {
    fn impl_trait(&self, value: impl std::fmt::Display);
    fn returns_impl(&self) -> impl Iterator<Item = u8>;
    fn mutable(&self, out: &mut Vec<u8>);
    fn nested_mutable(&self, out: Option<&mut u8>);
    fn pointer(&self, p: *const u8);
    fn function(&self, f: fn(u8) -> u8);
    fn object(&self, f: Box<dyn Fn()>);
    fn borrowed_return(&self) -> &[u8];
    fn lifetime_return<'a>(&self, x: &'a str) -> Vec<&'a str>;
    fn self_type(&self, other: Option<Box<Self>>);
    fn never(&self) -> !;
    // Arguments borrow from the request buffer.
    fn static_ref(&self, value: &'static str);
}

fn main() {}
