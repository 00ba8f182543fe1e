//! Schema fingerprints of derived types: every change of shape changes them, identical
//! definitions (as two builds of the same source would make) agree, recursive types have
//! them.
//!
//! Each module below stands for one build of a program; the same names in two modules are
//! two versions of one type.

use rpc_core::Marshal;
use rpc_core::marshal::schema::{self, Recursive};
use rpc_core::marshal::{Schema, decode, encode};
use zerocopy::byteorder::{BE, LE, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

fn fp<T: Schema + ?Sized>() -> u64 {
    T::FINGERPRINT
}

/// The reference build.
mod base {
    use super::*;

    #[derive(Marshal)]
    pub(crate) struct Item {
        pub(crate) price: u32,
        pub(crate) stock: u32,
    }

    #[derive(Marshal)]
    pub(crate) enum State {
        Open,
        Closed(u8),
        Moved { to: String },
    }

    #[derive(Marshal)]
    pub(crate) struct W<T>(pub(crate) T);

    #[derive(Marshal)]
    pub(crate) struct Fixed<const N: usize> {
        pub(crate) bytes: [u8; N],
    }

    #[derive(Marshal)]
    pub(crate) struct Order {
        pub(crate) item: Item,
        pub(crate) count: u16,
    }

    #[derive(Marshal)]
    pub(crate) struct Tree {
        pub(crate) label: u8,
        pub(crate) kids: Vec<Tree>,
    }

    #[derive(Marshal)]
    pub(crate) enum List {
        Nil,
        Cons(u32, Box<List>),
    }

    #[derive(Marshal)]
    pub(crate) struct Chain<'a, T> {
        pub(crate) name: &'a str,
        pub(crate) value: T,
        pub(crate) next: Option<Box<Chain<'a, T>>>,
    }

    #[derive(Marshal)]
    pub(crate) struct Linked {
        pub(crate) value: u64,
        pub(crate) next: Option<Box<Self>>,
    }
}

/// The same definitions, written again: what another build of the same source compiles.
mod same {
    use super::*;

    #[derive(Marshal)]
    pub(crate) struct Item {
        pub(crate) price: u32,
        pub(crate) stock: u32,
    }

    #[derive(Marshal)]
    pub(crate) enum State {
        Open,
        Closed(u8),
        Moved { to: String },
    }

    #[derive(Marshal)]
    pub(crate) struct W<T>(pub(crate) T);

    #[derive(Marshal)]
    pub(crate) struct Fixed<const N: usize> {
        pub(crate) bytes: [u8; N],
    }

    #[derive(Marshal)]
    pub(crate) struct Order {
        pub(crate) item: Item,
        pub(crate) count: u16,
    }

    #[derive(Marshal)]
    pub(crate) struct Tree {
        pub(crate) label: u8,
        pub(crate) kids: Vec<Tree>,
    }

    #[derive(Marshal)]
    pub(crate) enum List {
        Nil,
        Cons(u32, Box<List>),
    }

    #[derive(Marshal)]
    pub(crate) struct Chain<'a, T> {
        pub(crate) name: &'a str,
        pub(crate) value: T,
        pub(crate) next: Option<Box<Chain<'a, T>>>,
    }

    /// Spelled differently, with the same meaning: `Linked` for `Self`; the field's attribute
    /// and these docs do not travel.
    #[derive(Marshal)]
    pub(crate) struct Linked {
        #[allow(unused)]
        pub(crate) value: u64,
        pub(crate) next: Option<Box<Linked>>,
    }
}

#[test]
fn identical_definitions_agree() {
    assert_eq!(fp::<base::Item>(), fp::<same::Item>());
    assert_eq!(fp::<base::State>(), fp::<same::State>());
    assert_eq!(fp::<base::W<u8>>(), fp::<same::W<u8>>());
    assert_eq!(fp::<base::Fixed<4>>(), fp::<same::Fixed<4>>());
    assert_eq!(fp::<base::Order>(), fp::<same::Order>());
    assert_eq!(fp::<base::Tree>(), fp::<same::Tree>());
    assert_eq!(fp::<base::List>(), fp::<same::List>());
    assert_eq!(
        fp::<base::Chain<'static, u8>>(),
        fp::<same::Chain<'static, u8>>()
    );
    assert_eq!(fp::<base::Linked>(), fp::<same::Linked>());
}

#[test]
fn struct_changes_change_the_fingerprint() {
    mod swapped {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item {
            pub(crate) stock: u32,
            pub(crate) price: u32,
        }
    }
    mod renamed_field {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item {
            pub(crate) price: u32,
            pub(crate) count: u32,
        }
    }
    mod retyped_field {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item {
            pub(crate) price: u32,
            pub(crate) stock: u64,
        }
    }
    mod added_field {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item {
            pub(crate) price: u32,
            pub(crate) stock: u32,
            pub(crate) weight: u32,
        }
    }
    mod renamed_type {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Article {
            pub(crate) price: u32,
            pub(crate) stock: u32,
        }
    }
    mod positional {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item(pub(crate) u32, pub(crate) u32);
    }
    let base = fp::<base::Item>();
    for (what, other) in [
        ("two fields swapped", fp::<swapped::Item>()),
        ("a field renamed", fp::<renamed_field::Item>()),
        ("a field's type changed", fp::<retyped_field::Item>()),
        ("a field added", fp::<added_field::Item>()),
        ("the type renamed", fp::<renamed_type::Article>()),
        ("the fields made positional", fp::<positional::Item>()),
    ] {
        assert_ne!(base, other, "{what}");
    }
    // The wire form is the same for all but two of them: only the fingerprint tells.
    let item = swapped::Item {
        stock: 1005,
        price: 3,
    };
    let bytes = encode(&item).to_vec();
    let misread: base::Item = decode(&bytes).unwrap();
    assert_eq!((misread.price, misread.stock), (1005, 3));
}

#[test]
fn a_change_inside_a_field_type_changes_the_containing_type() {
    mod swapped {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Item {
            pub(crate) stock: u32,
            pub(crate) price: u32,
        }
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Order {
            pub(crate) item: Item,
            pub(crate) count: u16,
        }
    }
    assert_ne!(fp::<base::Order>(), fp::<swapped::Order>());
    assert_ne!(fp::<Vec<base::Item>>(), fp::<Vec<swapped::Item>>());
    assert_ne!(
        fp::<Option<(u8, base::Item)>>(),
        fp::<Option<(u8, swapped::Item)>>()
    );
}

#[test]
fn enum_changes_change_the_fingerprint() {
    mod added {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Open,
            Closed(u8),
            Moved { to: String },
            Lost,
        }
    }
    mod reordered {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Closed(u8),
            Open,
            Moved { to: String },
        }
    }
    mod renamed_variant {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Opened,
            Closed(u8),
            Moved { to: String },
        }
    }
    mod retyped_variant {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Open,
            Closed(u16),
            Moved { to: String },
        }
    }
    mod reshaped_variant {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Open,
            Closed { code: u8 },
            Moved { to: String },
        }
    }
    mod renamed_variant_field {
        #[derive(rpc_core::Marshal)]
        pub(crate) enum State {
            Open,
            Closed(u8),
            Moved { target: String },
        }
    }
    let base = fp::<base::State>();
    for (what, other) in [
        ("a variant added", fp::<added::State>()),
        ("two variants reordered", fp::<reordered::State>()),
        ("a variant renamed", fp::<renamed_variant::State>()),
        (
            "a variant's field type changed",
            fp::<retyped_variant::State>(),
        ),
        ("a variant's fields named", fp::<reshaped_variant::State>()),
        (
            "a variant's field renamed",
            fp::<renamed_variant_field::State>(),
        ),
    ] {
        assert_ne!(base, other, "{what}");
    }
}

#[test]
fn generic_arguments_are_part_of_the_fingerprint() {
    assert_ne!(fp::<base::W<u8>>(), fp::<base::W<u16>>());
    assert_ne!(fp::<base::W<base::W<u8>>>(), fp::<base::W<u8>>());
    assert_ne!(fp::<base::Fixed<3>>(), fp::<base::Fixed<4>>());
    assert_ne!(fp::<base::Chain<'_, u8>>(), fp::<base::Chain<'_, i8>>());
    // Lifetimes do not travel.
    fn chain_fp<'a>(_: &'a str) -> u64 {
        fp::<base::Chain<'a, u8>>()
    }
    assert_eq!(
        chain_fp(&String::from("x")),
        fp::<base::Chain<'static, u8>>()
    );
    // A derived struct is neither its fields' tuple nor a newtype's field.
    assert_ne!(fp::<base::W<u8>>(), fp::<(u8,)>());
    assert_ne!(fp::<base::W<u8>>(), fp::<u8>());
}

#[test]
fn recursive_types_have_fingerprints() {
    // They compile, and mentions of the type itself stand for "this type", whatever it is
    // called: the fingerprints still depend on everything else.
    let all = [
        fp::<base::Tree>(),
        fp::<base::List>(),
        fp::<base::Linked>(),
        fp::<base::Chain<'_, u8>>(),
        fp::<base::Chain<'_, u16>>(),
        fp::<Recursive>(),
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    mod changed {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Tree {
            pub(crate) label: u16,
            pub(crate) kids: Vec<Tree>,
        }
        #[derive(rpc_core::Marshal)]
        pub(crate) enum List {
            Nil,
            Cons(u32, Box<Self>),
            Both(Box<List>, Box<List>),
        }
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Forest {
            pub(crate) label: u8,
            pub(crate) kids: Vec<Forest>,
        }
    }
    assert_ne!(fp::<base::Tree>(), fp::<changed::Tree>());
    assert_ne!(fp::<base::List>(), fp::<changed::List>());
    assert_ne!(
        fp::<base::Tree>(),
        fp::<changed::Forest>(),
        "the name counts"
    );
    // And they still marshal.
    let tree = base::Tree {
        label: 1,
        kids: vec![base::Tree {
            label: 2,
            kids: vec![],
        }],
    };
    let back: base::Tree = decode(&encode(&tree).to_vec()).unwrap();
    assert_eq!(back.kids[0].label, 2);
}

/// Mutual recursion: `Even` contains `Odd`, which contains `Even`. The derived fingerprint of
/// either would depend on itself (a compile error, "cycle detected"); `Even` names its own.
mod mutual {
    #[derive(rpc_core::Marshal, Debug, PartialEq)]
    #[marshal(fingerprint = "test.Even/1")]
    pub(crate) struct Even {
        pub(crate) next: Option<Box<Odd>>,
    }

    #[derive(rpc_core::Marshal, Debug, PartialEq)]
    pub(crate) struct Odd {
        pub(crate) next: Box<Even>,
    }
}

mod mutual_v2 {
    #[derive(rpc_core::Marshal)]
    #[marshal(fingerprint = "test.Even/2")]
    pub(crate) struct Even {
        pub(crate) next: Option<Box<Odd>>,
    }

    #[derive(rpc_core::Marshal)]
    pub(crate) struct Odd {
        pub(crate) next: Box<Even>,
    }
}

#[test]
fn mutual_recursion_with_a_named_fingerprint() {
    assert_eq!(fp::<mutual::Even>(), schema::named("test.Even/1"));
    assert_ne!(fp::<mutual::Even>(), fp::<mutual_v2::Even>());
    // `Odd`'s fingerprint is derived, and covers the name `Even` was given.
    assert_ne!(fp::<mutual::Odd>(), fp::<mutual_v2::Odd>());
    let value = mutual::Even {
        next: Some(Box::new(mutual::Odd {
            next: Box::new(mutual::Even { next: None }),
        })),
    };
    let back: mutual::Even = decode(&encode(&value).to_vec()).unwrap();
    assert_eq!(back, value);
}

#[test]
fn a_named_fingerprint_of_a_generic_type_covers_its_arguments() {
    #[derive(Marshal)]
    #[marshal(fingerprint = "test.Boxed")]
    struct Boxed<T> {
        _value: T,
    }
    assert_ne!(fp::<Boxed<u8>>(), fp::<Boxed<u16>>());
    assert_ne!(fp::<Boxed<u8>>(), schema::named("test.Boxed"));
}

#[derive(Marshal, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[marshal(zerocopy)]
#[repr(C)]
struct ZcHeader {
    kind: u8,
    len: U32<LE>,
    offset: U64<LE>,
}

/// What `ZcHeader` is on the wire, in the ordinary encoding.
mod ordinary {
    #[derive(rpc_core::Marshal)]
    pub(crate) struct ZcHeader {
        pub(crate) kind: u8,
        pub(crate) len: u32,
        pub(crate) offset: u64,
    }
}

mod big_endian {
    use super::*;

    #[derive(Marshal, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
    #[marshal(zerocopy)]
    #[repr(C)]
    pub(crate) struct ZcHeader {
        kind: u8,
        len: U32<BE>,
        offset: U64<LE>,
    }
}

mod zc_swapped {
    use super::*;

    #[derive(Marshal, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
    #[marshal(zerocopy)]
    #[repr(C)]
    pub(crate) struct ZcHeader {
        kind: u8,
        offset: U64<LE>,
        len: U32<LE>,
    }
}

#[test]
fn zero_copy_types_have_the_fingerprint_of_their_wire_form() {
    // A zero-copy struct's bytes are its fields' in order, as the ordinary encoding's are.
    assert_eq!(fp::<ZcHeader>(), fp::<ordinary::ZcHeader>());
    let header = ZcHeader {
        kind: 1,
        len: 2.into(),
        offset: 3.into(),
    };
    let plain = ordinary::ZcHeader {
        kind: 1,
        len: 2,
        offset: 3,
    };
    assert_eq!(encode(&header).to_vec(), encode(&plain).to_vec());
    // Borrowed, boxed or by value, the same.
    assert_eq!(fp::<&ZcHeader>(), fp::<ZcHeader>());
    assert_eq!(fp::<&[ZcHeader]>(), fp::<Vec<ZcHeader>>());
    // Changes of shape or byte order are changes.
    assert_ne!(fp::<ZcHeader>(), fp::<big_endian::ZcHeader>());
    assert_ne!(fp::<ZcHeader>(), fp::<zc_swapped::ZcHeader>());
}

#[test]
fn wire_identical_spellings_in_derived_types() {
    mod owned {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Entry {
            pub(crate) key: String,
            pub(crate) value: Vec<u8>,
            pub(crate) hits: usize,
        }
    }
    mod borrowed {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Entry<'a> {
            pub(crate) key: &'a str,
            pub(crate) value: &'a [u8],
            pub(crate) hits: u64,
        }
    }
    mod bytes {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Entry {
            pub(crate) key: String,
            pub(crate) value: ::bytes::Bytes,
            pub(crate) hits: usize,
        }
    }
    mod pooled {
        #[derive(rpc_core::Marshal)]
        pub(crate) struct Entry {
            pub(crate) key: String,
            pub(crate) value: rpc_core::marshal::PooledBytes,
            pub(crate) hits: u64,
        }
    }
    assert_eq!(fp::<owned::Entry>(), fp::<borrowed::Entry<'_>>());
    assert_eq!(fp::<owned::Entry>(), fp::<bytes::Entry>());
    assert_eq!(fp::<owned::Entry>(), fp::<pooled::Entry>());
}
