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

struct Plain;

#[derive(Marshal)]
struct Field {
    plain: Plain,
}

fn main() {}
