use rpc_core::Marshal;

#[derive(Marshal)]
union Union {
    a: u32,
    b: f32,
}

#[derive(Marshal)]
#[marshal(zerocopy = true, crate = 7, packed)]
struct BadArgs {
    a: u32,
}

#[derive(Marshal)]
enum FieldAttr {
    A(#[marshal(zerocopy)] u32),
    #[marshal(zerocopy)]
    B,
}

#[derive(Marshal)]
#[marshal(fingerprint = 5)]
struct NotAString;

#[derive(Marshal)]
#[marshal(fingerprint = "", fingerprint)]
struct EmptyAndDuplicate;

struct Plain;

#[derive(Marshal)]
struct Field {
    plain: Plain,
}

fn main() {}
