//! Every marshallable type: round trips (property tests), canonical encodings, and decoding of
//! arbitrary bytes, which never panics.

use std::fmt::Debug;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use rpc_core::Marshal;
use rpc_core::marshal::{Decode, DecodeError, Encode, MAX_DEPTH, decode, encode};
use zerocopy::byteorder::{BE, LE};
use zerocopy::byteorder::{F32, F64, I16, I32, I64, I128, U16, U32, U64, U128};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Encodes `value`, checks the descriptor's length, decodes it back, and checks that every
/// strict prefix is refused and that a trailing byte is refused.
fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Encode + for<'de> Decode<'de> + PartialEq + Debug,
{
    let enc = encode(value);
    let bytes = enc.to_vec();
    prop_assert_eq!(enc.len(), bytes.len());
    let back: T = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(&back, value);
    for cut in 0..bytes.len() {
        prop_assert!(
            decode::<T>(&bytes[..cut]).is_err(),
            "prefix of {} bytes decoded",
            cut
        );
    }
    let mut longer = bytes;
    longer.push(0);
    prop_assert_eq!(decode::<T>(&longer), Err(DecodeError::TrailingBytes));
    Ok(())
}

/// Decodes arbitrary bytes as `T`; what decodes must encode back to the same bytes (the
/// encoding is canonical), what does not gives a typed error. Never panics.
fn arbitrary<'de, T: Decode<'de> + Encode>(bytes: &'de [u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = decode::<T>(bytes) {
        prop_assert_eq!(encode(&v).to_vec(), bytes);
    }
    Ok(())
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Named {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: Option<i32>,
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Tuple(u8, String, [u16; 2]);

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Unit;

#[derive(Marshal, Clone, Debug, PartialEq)]
enum Enum {
    Empty,
    One(u32),
    Two(String, bool),
    Fields { a: i64, b: Vec<u8>, c: Unit },
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Generic<T, const N: usize> {
    items: Vec<T>,
    fixed: [T; N],
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Borrowed<'a> {
    key: &'a str,
    value: &'a [u8],
    extra: Option<(&'a str, u8)>,
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct TwoLifetimes<'a, 'b> {
    first: &'a str,
    second: &'b [u8],
}

#[derive(Marshal, Clone, Debug, PartialEq)]
enum Expr {
    Lit(u32),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
}

#[derive(Marshal, Clone, Debug, PartialEq)]
struct Tree {
    label: u8,
    children: Vec<Tree>,
}

#[derive(
    Marshal, Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[marshal(zerocopy)]
#[repr(C)]
struct Header {
    kind: u8,
    flags: u8,
    len: U16<LE>,
    offset: U64<LE>,
}

#[derive(
    Marshal, Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[marshal(zerocopy)]
#[repr(transparent)]
struct Wrapper<T: Copy>(T);

fn named() -> impl Strategy<Value = Named> {
    (
        any::<u64>(),
        ".{0,20}",
        vec(".{0,8}", 0..4),
        any::<Option<i32>>(),
    )
        .prop_map(|(id, name, tags, score)| Named {
            id,
            name,
            tags,
            score,
        })
}

fn tuple() -> impl Strategy<Value = Tuple> {
    (any::<u8>(), ".{0,40}", any::<[u16; 2]>()).prop_map(|(a, b, c)| Tuple(a, b, c))
}

fn an_enum() -> impl Strategy<Value = Enum> {
    prop_oneof![
        Just(Enum::Empty),
        any::<u32>().prop_map(Enum::One),
        (".{0,10}", any::<bool>()).prop_map(|(s, b)| Enum::Two(s, b)),
        (any::<i64>(), vec(any::<u8>(), 0..100)).prop_map(|(a, b)| Enum::Fields { a, b, c: Unit }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    any::<u32>()
        .prop_map(Expr::Lit)
        .prop_recursive(6, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
                (inner.clone(), inner).prop_map(|(a, b)| Expr::Add(Box::new(a), Box::new(b))),
            ]
        })
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u8>(), any::<u8>(), any::<u16>(), any::<u64>()).prop_map(|(kind, flags, len, offset)| {
        Header {
            kind,
            flags,
            len: len.into(),
            offset: offset.into(),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn integers(a in any::<u8>(), b in any::<u16>(), c in any::<u32>(), d in any::<u64>(), e in any::<u128>(),
                f in any::<i8>(), g in any::<i16>(), h in any::<i32>(), i in any::<i64>(), j in any::<i128>(),
                k in any::<usize>(), l in any::<isize>()) {
        round_trip(&a)?; round_trip(&b)?; round_trip(&c)?; round_trip(&d)?; round_trip(&e)?;
        round_trip(&f)?; round_trip(&g)?; round_trip(&h)?; round_trip(&i)?; round_trip(&j)?;
        round_trip(&k)?; round_trip(&l)?;
        // Little-endian, of their own width.
        prop_assert_eq!(encode(&c).to_vec(), c.to_le_bytes());
        prop_assert_eq!(encode(&k).to_vec(), (k as u64).to_le_bytes());
    }

    #[test]
    fn floats_keep_their_bits(a in any::<u32>(), b in any::<u64>()) {
        let (x, y) = (f32::from_bits(a), f64::from_bits(b));
        prop_assert_eq!(decode::<f32>(&encode(&x).to_vec()).unwrap().to_bits(), a);
        prop_assert_eq!(decode::<f64>(&encode(&y).to_vec()).unwrap().to_bits(), b);
    }

    #[test]
    fn scalars(a in any::<bool>(), b in any::<char>()) {
        round_trip(&a)?;
        round_trip(&b)?;
        round_trip(&())?;
    }

    #[test]
    fn strings_and_bytes(s in ".{0,100}", v in vec(any::<u8>(), 0..300)) {
        round_trip(&s)?;
        round_trip(&v)?;
        round_trip(&Bytes::from(v.clone()))?;
        let bytes = encode(&s[..]).to_vec();
        prop_assert_eq!(decode::<&str>(&bytes).unwrap(), &s[..]);
        let bytes = encode(&v[..]).to_vec();
        prop_assert_eq!(decode::<&[u8]>(&bytes).unwrap(), &v[..]);
        // The same wire form, whichever type holds the bytes.
        prop_assert_eq!(encode(&v).to_vec(), encode(&Bytes::from(v.clone())).to_vec());
        prop_assert_eq!(encode(s.as_bytes()).to_vec(), encode(&s).to_vec());
    }

    #[test]
    fn sequences_and_arrays(a in vec(any::<u32>(), 0..50), b in vec(".{0,5}", 0..10),
                            c in any::<[u64; 4]>(), d in any::<[u8; 40]>(), e in vec(vec(any::<i16>(), 0..5), 0..5)) {
        round_trip(&a)?;
        round_trip(&b)?;
        round_trip(&c)?;
        round_trip(&d)?;
        round_trip(&e)?;
        // Arrays have no count.
        prop_assert_eq!(encode(&c).len(), 32);
    }

    #[test]
    fn wrappers(a in any::<Option<u16>>(), b in any::<Result<u8, String>>(), c in any::<Box<i32>>(),
                d in any::<Option<Option<bool>>>(), e in any::<Result<Vec<u8>, (u8, char)>>()) {
        round_trip(&a)?;
        round_trip(&b)?;
        round_trip(&c)?;
        round_trip(&d)?;
        round_trip(&e)?;
    }

    #[test]
    fn tuples(a in any::<(u8,)>(), b in any::<(u8, u16)>(), c in any::<(u8, u16, u32)>(),
              d in any::<(u8, u16, u32, u64)>(), e in any::<(bool, u8, i16, char, u32)>(),
              f in any::<(u8, u8, u8, u8, u8, u8)>(), g in any::<(u8, u8, u8, u8, u8, u8, i64)>(),
              h in any::<(u8, u16, u32, u64, i8, i16, i32, i64)>()) {
        round_trip(&a)?; round_trip(&b)?; round_trip(&c)?; round_trip(&d)?;
        round_trip(&e)?; round_trip(&f)?; round_trip(&g)?; round_trip(&h)?;
    }

    #[test]
    fn byte_order_types(a in any::<u16>(), b in any::<u32>(), c in any::<u64>(), d in any::<u128>(),
                        e in any::<i16>(), f in any::<i32>(), g in any::<i64>(), h in any::<i128>(),
                        i in any::<f32>(), j in any::<f64>()) {
        round_trip(&U16::<LE>::new(a))?; round_trip(&U32::<BE>::new(b))?;
        round_trip(&U64::<LE>::new(c))?; round_trip(&U128::<BE>::new(d))?;
        round_trip(&I16::<LE>::new(e))?; round_trip(&I32::<BE>::new(f))?;
        round_trip(&I64::<LE>::new(g))?; round_trip(&I128::<LE>::new(h))?;
        let x = F32::<LE>::new(i);
        prop_assert_eq!(decode::<F32<LE>>(&encode(&x).to_vec()).unwrap().get().to_bits(), i.to_bits());
        let y = F64::<BE>::new(j);
        prop_assert_eq!(decode::<F64<BE>>(&encode(&y).to_vec()).unwrap().get().to_bits(), j.to_bits());
        // Big-endian types travel in their own byte order.
        prop_assert_eq!(encode(&U32::<BE>::new(b)).to_vec(), b.to_be_bytes());
    }

    #[test]
    fn zero_copy_values_and_slices(hs in vec(header(), 0..20), words in vec(any::<u32>(), 0..20)) {
        for h in &hs {
            round_trip(h)?;
            let bytes = encode(h).to_vec();
            prop_assert_eq!(decode::<&Header>(&bytes).unwrap(), h);
        }
        round_trip(&hs)?;
        let bytes = encode(&hs[..]).to_vec();
        prop_assert_eq!(decode::<&[Header]>(&bytes).unwrap(), &hs[..]);
        let words: Vec<U32<LE>> = words.into_iter().map(U32::new).collect();
        round_trip(&words)?;
        let bytes = encode(&words[..]).to_vec();
        prop_assert_eq!(decode::<&[U32<LE>]>(&bytes).unwrap(), &words[..]);
        round_trip(&Wrapper(U64::<LE>::new(7)))?;
    }

    #[test]
    fn derived_types(a in named(), b in tuple(), c in an_enum(), d in expr()) {
        round_trip(&a)?;
        round_trip(&b)?;
        round_trip(&c)?;
        round_trip(&d)?;
        round_trip(&Unit)?;
        round_trip(&Generic::<u16, 3> { items: vec![1, 2], fixed: [3, 4, 5] })?;
        round_trip(&Generic::<String, 1> { items: vec![], fixed: ["x".into()] })?;
    }

    #[test]
    fn derived_types_with_borrowed_fields(key in ".{0,50}", value in vec(any::<u8>(), 0..100), n in any::<u8>()) {
        let b = Borrowed { key: &key, value: &value, extra: Some((&key, n)) };
        let bytes = encode(&b).to_vec();
        let back: Borrowed<'_> = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &b);
        let range = bytes.as_ptr_range();
        prop_assert!(value.is_empty() || range.contains(&back.value.as_ptr()), "borrowed from the input");
        let t = TwoLifetimes { first: &key, second: &value };
        let bytes = encode(&t).to_vec();
        prop_assert_eq!(decode::<TwoLifetimes<'_, '_>>(&bytes).unwrap(), t);
    }
}

#[test]
fn derived_encodings_are_fields_in_order() {
    let v = Tuple(1, "ab".into(), [0x0302, 0x0504]);
    assert_eq!(encode(&v).to_vec(), [1, 2, 0, 0, 0, b'a', b'b', 2, 3, 4, 5]);
    assert_eq!(encode(&Unit).to_vec(), Vec::<u8>::new());
    // Enums: a u32 variant index (in declaration order), then the fields.
    assert_eq!(encode(&Enum::Empty).to_vec(), [0, 0, 0, 0]);
    assert_eq!(
        encode(&Enum::Two("".into(), true)).to_vec(),
        [2, 0, 0, 0, 0, 0, 0, 0, 1]
    );
    assert_eq!(
        decode::<Enum>(&[4, 0, 0, 0]),
        Err(DecodeError::InvalidTag(4))
    );
    assert_eq!(<Tuple as Decode<'_>>::MIN_SIZE, 1 + 4 + 4);
    assert_eq!(<Header as Decode<'_>>::MIN_SIZE, 12);
}

#[test]
fn hostile_nesting_is_refused_without_overflowing_the_stack() {
    // Neg(Neg(Neg(...))): a variant index of 1, a million times.
    let deep: Vec<u8> = [1u8, 0, 0, 0].repeat(1 << 20);
    assert_eq!(decode::<Expr>(&deep), Err(DecodeError::TooDeep));
    // A tree whose every node has one child.
    let deep: Vec<u8> = [7u8, 1, 0, 0, 0].repeat(1 << 20);
    assert_eq!(decode::<Tree>(&deep), Err(DecodeError::TooDeep));

    // Legitimate nesting within the bound decodes.
    let mut e = Expr::Lit(1);
    for _ in 0..MAX_DEPTH - 1 {
        e = Expr::Neg(Box::new(e));
    }
    let bytes = encode(&e).to_vec();
    assert_eq!(decode::<Expr>(&bytes).as_ref(), Ok(&e));
    let e = Expr::Neg(Box::new(e));
    assert_eq!(
        decode::<Expr>(&encode(&e).to_vec()),
        Err(DecodeError::TooDeep)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary bytes, decoded as each type: a value (whose encoding is those bytes) or a
    /// typed error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..48)) {
        let b = &bytes[..];
        arbitrary::<u8>(b)?; arbitrary::<u16>(b)?; arbitrary::<u32>(b)?; arbitrary::<u64>(b)?;
        arbitrary::<u128>(b)?; arbitrary::<i8>(b)?; arbitrary::<i16>(b)?; arbitrary::<i32>(b)?;
        arbitrary::<i64>(b)?; arbitrary::<i128>(b)?; arbitrary::<usize>(b)?; arbitrary::<isize>(b)?;
        arbitrary::<f32>(b)?; arbitrary::<f64>(b)?; arbitrary::<bool>(b)?; arbitrary::<char>(b)?;
        arbitrary::<()>(b)?; arbitrary::<String>(b)?; arbitrary::<&str>(b)?; arbitrary::<&[u8]>(b)?;
        arbitrary::<Vec<u8>>(b)?; arbitrary::<Vec<u32>>(b)?; arbitrary::<Vec<String>>(b)?;
        arbitrary::<Vec<()>>(b)?; arbitrary::<[u16; 3]>(b)?; arbitrary::<Bytes>(b)?;
        arbitrary::<Box<u32>>(b)?; arbitrary::<Option<u8>>(b)?; arbitrary::<Result<u8, String>>(b)?;
        arbitrary::<(u8, &str, Option<u16>)>(b)?;
        arbitrary::<(u8, u16, u32, u64, i8, i16, i32, i64)>(b)?;
        arbitrary::<U32<LE>>(b)?; arbitrary::<F64<BE>>(b)?; arbitrary::<&[U16<LE>]>(b)?;
        arbitrary::<Header>(b)?; arbitrary::<&Header>(b)?; arbitrary::<&[Header]>(b)?;
        arbitrary::<Vec<Header>>(b)?; arbitrary::<Named>(b)?; arbitrary::<Tuple>(b)?;
        arbitrary::<Unit>(b)?; arbitrary::<Enum>(b)?; arbitrary::<Generic<u8, 2>>(b)?;
        arbitrary::<Borrowed<'_>>(b)?; arbitrary::<Expr>(b)?; arbitrary::<Tree>(b)?;
    }
}
