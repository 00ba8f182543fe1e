//! Schema fingerprints: a 64-bit summary of a type's wire form, computed at compile time.
//!
//! [`Schema::FINGERPRINT`] is what `#[rpc]` folds into each method id, so that a client and
//! a server whose argument or return types differ in shape (a field added, two fields
//! swapped, an enum variant inserted) disagree on the id and the call fails with
//! `CallError::InterfaceMismatch` instead of decoding the wrong value.
//!
//! Everything here is a `const fn`: fingerprints are constants, evaluated by the compiler, and
//! cost nothing when a call is made. They are 64-bit FNV-1a hashes of a canonical description
//! (names as written, never `core::any::type_name` or `TypeId`), so that every build of every
//! compiler agrees on them.

use super::PooledBytes;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A type's schema fingerprint: a hash of its shape as it travels on the wire.
///
/// Implemented for every type `rpc_core` marshals, and by `#[derive(Marshal)]` (both the
/// ordinary derive and `#[marshal(zerocopy)]`) for user types. `#[rpc]` computes each
/// method's id from the fingerprints of its argument and return types, so a change of shape
/// of any type a method carries changes the method's id.
///
/// # What a derived fingerprint covers
///
/// - the type's name (its identifier, not its module path: the same definition in two
///   modules, or two builds, has the same fingerprint);
/// - for a struct, whether its fields are named, positional or absent, and each field's name
///   (or position) and the fingerprint of its type, in declaration order;
/// - for an enum, each variant's name, in declaration order (the order is the wire's variant
///   index), and its fields as for a struct;
/// - the fingerprints of the type's type parameters and the values of its const parameters:
///   `W<u8>` and `W<u16>` differ. Lifetime parameters do not travel and are left out.
///
/// So reordering, renaming, adding or removing a field or variant, changing a field's type
/// (at any depth: fingerprints are recursive) or renaming the type all change it. Attributes,
/// visibility, documentation and derives other than `Marshal` do not.
///
/// # Equivalences
///
/// Types that have the same wire form *and* mean the same value share a fingerprint, so that
/// either spelling can be used at either end:
///
/// | fingerprint | types |
/// |---|---|
/// | a type `T` | `T`, `&T`, `Box<T>` (and so `&'de T` borrowed from the message) |
/// | bytes | `[u8]`, `&[u8]`, `Vec<u8>`, `bytes::Bytes`, `PooledBytes` |
/// | sequence of `T` | `[T]`, `&[T]`, `Vec<T>` |
/// | string | `str`, `&str`, `String` |
/// | `u64`, `i64` | `usize`, `isize` (which travel as 64 bits) |
/// | `u16`, `i32`, `f64`, ... | zerocopy's little-endian `U16<LE>`, `I32<LE>`, `F64<LE>`, ... |
/// | a struct | the same shape derived with or without `#[marshal(zerocopy)]` |
///
/// Everything else is distinct. In particular strings are not bytes (a string is checked to
/// be UTF-8), big-endian zerocopy types are not their native counterparts, an array `[T; N]`
/// (no count on the wire) is not a sequence, `()` is not a struct without fields, a one-tuple
/// `(T,)` is not `T`, and a derived newtype `struct Id(u32)` is not `u32` (the type's name is
/// part of its fingerprint).
///
/// # Recursive types
///
/// A type that contains itself (`struct Tree { kids: Vec<Tree> }`,
/// `enum List { Nil, Cons(u32, Box<List>) }`) would need its own fingerprint to compute its
/// fingerprint. The derive replaces every mention of the type inside its own fields, spelled
/// as its bare name (`Tree`, `Tree<T>`, with any arguments) or as `Self`, by [`Recursive`],
/// whose fingerprint stands for "the type being defined". A mention by a longer path
/// (`crate::Tree`) is not recognised: spell it `Tree` or `Self`.
///
/// Mutual recursion (`A` contains `B`, which contains `A`) is not supported by the derived
/// fingerprint: each depends on the other's, and the crate fails to compile with a cycle
/// error ("cycle detected when ... `<impl at ...>::FINGERPRINT`"), whether or not the types
/// are used in an `#[rpc]` method. Break the cycle by giving one of the types a fingerprint of its own with
/// `#[marshal(fingerprint = "...")]`: that type's fingerprint is then a hash of the string
/// alone (its fields are not examined), and the other type's fingerprint covers it as usual.
/// The string names that type's shape: change it whenever the shape changes. Two types given
/// the same string share a fingerprint.
///
/// # Implementing it by hand
///
/// A type with hand-written `Encode`/`Decode` impls should implement `Schema` too, with
/// [`Fingerprinter`] or [`named`], and change its fingerprint whenever its wire form changes:
///
/// ```
/// use rpc_core::marshal::Schema;
/// use rpc_core::marshal::schema::Fingerprinter;
///
/// struct Celsius(f32);
///
/// impl Schema for Celsius {
///     const FINGERPRINT: u64 = Fingerprinter::new("Celsius")
///         .u64(<f32 as Schema>::FINGERPRINT)
///         .finish();
/// }
/// assert_ne!(Celsius::FINGERPRINT, f32::FINGERPRINT);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no schema fingerprint",
    label = "no `Schema` impl",
    note = "derive it with `#[derive(rpc_core::Marshal)]`, which implements `Schema` with \
            `Encode` and `Decode`; a type with hand-written impls implements \
            `rpc_core::marshal::Schema` itself"
)]
pub trait Schema {
    /// The fingerprint: equal for two types exactly when they have the same shape (up to
    /// the equivalences above and to hash collisions, which for 64 bits are negligible).
    const FINGERPRINT: u64;
}

/// A 64-bit FNV-1a hash of a description made of strings and numbers, usable in constants.
///
/// Strings are hashed with their length first and numbers as 8 little-endian bytes, so that
/// the sequence of parts, not only their concatenation, determines the hash.
///
/// ```
/// use rpc_core::marshal::schema::Fingerprinter;
///
/// const A: u64 = Fingerprinter::new("pair").str("ab").str("c").finish();
/// const B: u64 = Fingerprinter::new("pair").str("a").str("bc").finish();
/// assert_ne!(A, B);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Fingerprinter {
    state: u64,
}

impl Fingerprinter {
    /// A hash that starts with `kind` (what is being described: a type's name, `"struct"`).
    pub const fn new(kind: &str) -> Self {
        Self { state: FNV_OFFSET }.str(kind)
    }

    /// Adds raw bytes (no length).
    pub const fn bytes(mut self, bytes: &[u8]) -> Self {
        let mut i = 0;
        while i < bytes.len() {
            self.state = (self.state ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        self
    }

    /// Adds a number, as 8 little-endian bytes.
    pub const fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Adds a string: its length, then its bytes.
    pub const fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// The hash.
    pub const fn finish(self) -> u64 {
        self.state
    }
}

/// The fingerprint of a type known by a name alone: the built-in leaves (`"u32"`,
/// `"string"`) and the types given `#[marshal(fingerprint = "...")]`, in separate domains.
pub const fn named(name: &str) -> u64 {
    Fingerprinter::new("rpc-schema/named").str(name).finish()
}

const fn leaf(name: &str) -> u64 {
    Fingerprinter::new("rpc-schema/leaf").str(name).finish()
}

/// Stands for "the type being defined" inside its own definition.
///
/// `#[derive(Marshal)]` substitutes it for the type's own name (or `Self`) in the field
/// types it fingerprints, so that `struct Tree { kids: Vec<Tree> }` hashes `Vec<Recursive>`
/// instead of depending on its own fingerprint. It is never marshalled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recursive;

impl Schema for Recursive {
    const FINGERPRINT: u64 = leaf("recursive");
}

/// The id of a method: a hash of the interface name, the method name, the schema
/// fingerprints of the arguments (in order) and of the return type (that of `()` if none),
/// and whether it is idempotent, folded to 32 bits. `#[rpc]` evaluates it in a constant.
#[doc(hidden)]
pub const fn method_id(
    interface: &str,
    method: &str,
    args: &[u64],
    ret: u64,
    idempotent: bool,
) -> u32 {
    let mut h = Fingerprinter::new("rpc-method/2")
        .str(interface)
        .str(method)
        .u64(args.len() as u64);
    let mut i = 0;
    while i < args.len() {
        h = h.u64(args[i]);
        i += 1;
    }
    let h = h
        .u64(ret)
        .str(if idempotent {
            "idempotent"
        } else {
            "at-most-once"
        })
        .finish();
    (h ^ (h >> 32)) as u32
}

macro_rules! leaves {
    ($($ty:ty => $name:literal),* $(,)?) => {$(
        impl Schema for $ty {
            const FINGERPRINT: u64 = leaf($name);
        }
    )*};
}
leaves! {
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128",
    f32 => "f32", f64 => "f64",
    bool => "bool", char => "char", () => "()",
    str => "string",
}

// `usize` and `isize` travel as 64 bits.
impl Schema for usize {
    const FINGERPRINT: u64 = u64::FINGERPRINT;
}
impl Schema for isize {
    const FINGERPRINT: u64 = i64::FINGERPRINT;
}

impl Schema for String {
    const FINGERPRINT: u64 = str::FINGERPRINT;
}

impl<T: Schema> Schema for [T] {
    const FINGERPRINT: u64 = Fingerprinter::new("rpc-schema/seq")
        .u64(T::FINGERPRINT)
        .finish();
}
impl<T: Schema> Schema for Vec<T> {
    const FINGERPRINT: u64 = <[T]>::FINGERPRINT;
}
impl Schema for bytes::Bytes {
    const FINGERPRINT: u64 = <[u8]>::FINGERPRINT;
}
impl Schema for PooledBytes {
    const FINGERPRINT: u64 = <[u8]>::FINGERPRINT;
}

impl<T: Schema, const N: usize> Schema for [T; N] {
    const FINGERPRINT: u64 = Fingerprinter::new("rpc-schema/array")
        .u64(N as u64)
        .u64(T::FINGERPRINT)
        .finish();
}

// References (and so the zero-copy borrows `&'de T`, `&'de [T]`, `&'de str`) and boxes travel
// as what they point at.
impl<T: Schema + ?Sized> Schema for &T {
    const FINGERPRINT: u64 = T::FINGERPRINT;
}
impl<T: Schema + ?Sized> Schema for Box<T> {
    const FINGERPRINT: u64 = T::FINGERPRINT;
}

impl<T: Schema> Schema for Option<T> {
    const FINGERPRINT: u64 = Fingerprinter::new("rpc-schema/option")
        .u64(T::FINGERPRINT)
        .finish();
}
impl<T: Schema, E: Schema> Schema for Result<T, E> {
    const FINGERPRINT: u64 = Fingerprinter::new("rpc-schema/result")
        .u64(T::FINGERPRINT)
        .u64(E::FINGERPRINT)
        .finish();
}

macro_rules! tuples {
    ($(($n:literal: $($name:ident),+))*) => {$(
        impl<$($name: Schema),+> Schema for ($($name,)+) {
            const FINGERPRINT: u64 = Fingerprinter::new("rpc-schema/tuple")
                .u64($n)
                $(.u64($name::FINGERPRINT))+
                .finish();
        }
    )*};
}
tuples! {
    (1: A)
    (2: A, B)
    (3: A, B, C)
    (4: A, B, C, D)
    (5: A, B, C, D, E)
    (6: A, B, C, D, E, F)
    (7: A, B, C, D, E, F, G)
    (8: A, B, C, D, E, F, G, H)
}

// zerocopy's byte-order types: little-endian ones are their native type on the wire.
macro_rules! byteorder {
    ($($ty:ident($native:ty, $be:literal)),*) => {$(
        impl<O: zerocopy::byteorder::ByteOrder> Schema for zerocopy::byteorder::$ty<O> {
            const FINGERPRINT: u64 = match O::ORDER {
                zerocopy::byteorder::Order::LittleEndian => <$native>::FINGERPRINT,
                zerocopy::byteorder::Order::BigEndian => leaf($be),
            };
        }
    )*};
}
byteorder!(
    U16(u16, "u16be"),
    U32(u32, "u32be"),
    U64(u64, "u64be"),
    U128(u128, "u128be"),
    I16(i16, "i16be"),
    I32(i32, "i32be"),
    I64(i64, "i64be"),
    I128(i128, "i128be"),
    F32(f32, "f32be"),
    F64(f64, "f64be")
);

#[cfg(test)]
mod tests {
    use zerocopy::byteorder::{BE, LE, U16, U64};

    use super::*;

    #[test]
    fn fnv_1a_reference_values() {
        assert_eq!(
            Fingerprinter { state: FNV_OFFSET }.bytes(b"").finish(),
            0xcbf2_9ce4_8422_2325
        );
        assert_eq!(
            Fingerprinter { state: FNV_OFFSET }.bytes(b"a").finish(),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(
            Fingerprinter { state: FNV_OFFSET }
                .bytes(b"foobar")
                .finish(),
            0x8594_4171_f739_67e8
        );
    }

    #[test]
    fn wire_identical_spellings_share_a_fingerprint() {
        let bytes = <[u8]>::FINGERPRINT;
        assert_eq!(<&[u8]>::FINGERPRINT, bytes);
        assert_eq!(Vec::<u8>::FINGERPRINT, bytes);
        assert_eq!(bytes::Bytes::FINGERPRINT, bytes);
        assert_eq!(PooledBytes::FINGERPRINT, bytes);
        assert_eq!(<&str>::FINGERPRINT, String::FINGERPRINT);
        assert_eq!(Box::<u32>::FINGERPRINT, u32::FINGERPRINT);
        assert_eq!(<&&u32>::FINGERPRINT, u32::FINGERPRINT);
        assert_eq!(usize::FINGERPRINT, u64::FINGERPRINT);
        assert_eq!(isize::FINGERPRINT, i64::FINGERPRINT);
        assert_eq!(U16::<LE>::FINGERPRINT, u16::FINGERPRINT);
        assert_eq!(<&[U64<LE>]>::FINGERPRINT, Vec::<u64>::FINGERPRINT);
    }

    #[test]
    fn different_wire_forms_differ() {
        let all = [
            u8::FINGERPRINT,
            i8::FINGERPRINT,
            u16::FINGERPRINT,
            U16::<BE>::FINGERPRINT,
            u32::FINGERPRINT,
            u64::FINGERPRINT,
            f32::FINGERPRINT,
            f64::FINGERPRINT,
            bool::FINGERPRINT,
            char::FINGERPRINT,
            <()>::FINGERPRINT,
            <(u8,)>::FINGERPRINT,
            <(u8, u8)>::FINGERPRINT,
            <(u16, u8)>::FINGERPRINT,
            <(u8, u16)>::FINGERPRINT,
            <((u8, u8), u8)>::FINGERPRINT,
            <(u8, (u8, u8))>::FINGERPRINT,
            <(u8, u8, u8)>::FINGERPRINT,
            String::FINGERPRINT,
            Vec::<u8>::FINGERPRINT,
            Vec::<u16>::FINGERPRINT,
            Vec::<Vec<u8>>::FINGERPRINT,
            <[u8; 4]>::FINGERPRINT,
            <[u8; 5]>::FINGERPRINT,
            <[u16; 4]>::FINGERPRINT,
            Option::<u8>::FINGERPRINT,
            Option::<Option<u8>>::FINGERPRINT,
            Result::<u8, u16>::FINGERPRINT,
            Result::<u16, u8>::FINGERPRINT,
            Recursive::FINGERPRINT,
            named("u8"),
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "{i} and {j}");
            }
        }
    }

    #[test]
    fn method_ids_cover_every_part_of_the_signature() {
        let bytes = <&[u8]>::FINGERPRINT;
        let string = String::FINGERPRINT;
        let id = method_id("Kv", "get", &[bytes], string, false);
        assert_ne!(id, method_id("Kv2", "get", &[bytes], string, false));
        assert_ne!(id, method_id("Kv", "got", &[bytes], string, false));
        assert_ne!(id, method_id("Kv", "get", &[], string, false));
        assert_ne!(id, method_id("Kv", "get", &[string], string, false));
        assert_ne!(id, method_id("Kv", "get", &[bytes, bytes], string, false));
        assert_ne!(id, method_id("Kv", "get", &[bytes], bytes, false));
        assert_ne!(
            id,
            method_id("Kv", "get", &[bytes], <()>::FINGERPRINT, false)
        );
        assert_ne!(id, method_id("Kv", "get", &[bytes], string, true));
        // Boundaries count: the interface "Kva" and method "b" are not "Kv" and "ab".
        assert_ne!(
            method_id("Kva", "b", &[], string, false),
            method_id("Kv", "ab", &[], string, false)
        );
        // An argument is not a return value.
        assert_ne!(
            method_id("Kv", "get", &[bytes], <()>::FINGERPRINT, false),
            method_id("Kv", "get", &[<()>::FINGERPRINT], bytes, false)
        );
    }

    /// Stable across builds, compilers and versions of this crate: a change here breaks
    /// compatibility with every deployed peer.
    #[test]
    fn pinned_values() {
        assert_eq!(u32::FINGERPRINT, 0x038c_a7aa_af01_4b93);
        assert_eq!(Vec::<u8>::FINGERPRINT, 0xebdd_7fef_489f_886b);
        assert_eq!(String::FINGERPRINT, 0x03e1_6dd7_6be0_ad27);
        assert_eq!(Option::<Vec<u8>>::FINGERPRINT, 0x448c_0122_e0ed_589d);
        // `fn get(&self, key: &[u8]) -> Option<Vec<u8>>` of the interface `Kv`.
        assert_eq!(
            method_id(
                "Kv",
                "get",
                &[<&[u8]>::FINGERPRINT],
                Option::<Vec<u8>>::FINGERPRINT,
                false
            ),
            0xeeec_9f0e
        );
    }

    #[test]
    fn a_known_collision() {
        // Found by search; tests/ui/id_collision.rs shows the compile error it causes.
        let id = |method| method_id("Collide", method, &[], <()>::FINGERPRINT, false);
        assert_eq!(id("m2595"), 0xf447_eaba);
        assert_eq!(id("m148830"), 0xf447_eaba);
    }
}
