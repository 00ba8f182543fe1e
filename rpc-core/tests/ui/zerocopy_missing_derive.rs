use rpc_core::Marshal;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, Unaligned};

// Zero-copy needs all five of zerocopy's traits; `KnownLayout` is missing.
#[derive(Marshal, FromBytes, IntoBytes, Immutable, Unaligned)]
#[marshal(zerocopy)]
#[repr(C)]
struct Header {
    len: U32,
}

fn main() {}
