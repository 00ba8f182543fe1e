//! `Encode` and `Decode` for the standard types, and the zero-copy marker.

use arrayvec::ArrayVec;
use zerocopy::byteorder::{ByteOrder, F32, F64, I16, I32, I64, I128, U16, U32, U64, U128};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Decode, DecodeError, Decoder, Encode, Encoder};

/// Types whose wire form is their own memory: every bit pattern is a valid value, there is no
/// padding, alignment is 1, and multi-byte fields have a fixed byte order (zerocopy's
/// `U32<LE>` and friends). Values and slices of them travel by reference and decode as
/// `&T` / `&[T]` borrowed from the receive buffer.
///
/// Implement it (together with [`Encode`] and [`Decode`]) with
/// `#[derive(Marshal)] #[marshal(zerocopy)]` on a type deriving zerocopy's `FromBytes`,
/// `IntoBytes`, `KnownLayout`, `Immutable` and `Unaligned`.
pub trait ZeroCopy: Sized + FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned {}

/// Implements `Encode`/`Decode` for a `ZeroCopy` type: values, slices and arrays of it go by
/// reference to their own bytes (copied inline when no longer than `COPY_THRESHOLD`). Generic
/// parameters go in braces first, bounds in braces after `where`:
/// `{T: ZeroCopy} Wrapper<T> where {T: Copy}`.
#[doc(hidden)]
#[macro_export]
macro_rules! __zerocopy_marshal {
    ($({$($gen:tt)*})? $ty:ty $(where {$($bound:tt)*})?) => {
        impl $(<$($gen)*>)? $crate::marshal::Encode for $ty $(where $($bound)*)? {
            #[inline]
            fn encode<'a>(&'a self, enc: &mut $crate::marshal::Encoder<'a>) {
                enc.put_bytes($crate::__private::zerocopy::IntoBytes::as_bytes(self));
            }
            #[inline]
            fn encode_elements<'a>(items: &'a [Self], enc: &mut $crate::marshal::Encoder<'a>) {
                enc.put_bytes($crate::__private::zerocopy::IntoBytes::as_bytes(items));
            }
        }
        impl $(<$($gen)*>)? $crate::marshal::ZeroCopyVec for $ty $(where $($bound)*)? {}
        impl<'de, $($($gen)*)?> $crate::marshal::Decode<'de> for $ty $(where $($bound)*)? {
            const MIN_SIZE: usize = ::core::mem::size_of::<$ty>();
            #[inline]
            fn decode(
                dec: &mut $crate::marshal::Decoder<'de>,
            ) -> ::core::result::Result<Self, $crate::marshal::DecodeError> {
                let bytes = dec.take(::core::mem::size_of::<$ty>())?;
                <$ty as $crate::__private::zerocopy::FromBytes>::read_from_bytes(bytes)
                    .map_err(|_| $crate::marshal::DecodeError::InvalidValue)
            }
            fn decode_vec(
                dec: &mut $crate::marshal::Decoder<'de>,
            ) -> ::core::result::Result<$crate::__private::Vec<Self>, $crate::marshal::DecodeError> {
                $crate::marshal::decode_zerocopy_vec(dec)
            }
        }
    };
}

macro_rules! zerocopy_types {
    ($($ty:ty),*) => {$(
        impl ZeroCopy for $ty {}
        crate::__zerocopy_marshal!($ty);
    )*};
}
zerocopy_types!(u8, i8);

macro_rules! zerocopy_byteorder {
    ($($ty:ident),*) => {$(
        impl<O: ByteOrder> ZeroCopy for $ty<O> {}
        crate::__zerocopy_marshal!({O: ByteOrder} $ty<O>);
    )*};
}
zerocopy_byteorder!(U16, U32, U64, U128, I16, I32, I64, I128, F32, F64);

impl<T: ZeroCopy, const N: usize> ZeroCopy for [T; N] {}

/// Marker for the `decode_vec` fast path (implemented by the zero-copy macro).
#[doc(hidden)]
pub trait ZeroCopyVec {}

/// Decodes a `Vec<T>` of a zero-copy type with one copy of the whole slice.
#[doc(hidden)]
pub fn decode_zerocopy_vec<T: ZeroCopy>(dec: &mut Decoder<'_>) -> Result<Vec<T>, DecodeError> {
    let n = dec.get_len(size_of::<T>())?;
    let bytes = dec.take(
        n.checked_mul(size_of::<T>())
            .ok_or(DecodeError::LengthOverflow)?,
    )?;
    // The count was checked against the input, so this allocation is bounded by the message.
    let mut v = T::new_vec_zeroed(n).map_err(|_| DecodeError::LengthOverflow)?;
    v.as_mut_bytes().copy_from_slice(bytes);
    Ok(v)
}

impl<'de, T: ZeroCopy> Decode<'de> for &'de T {
    const MIN_SIZE: usize = size_of::<T>();
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        let bytes = dec.take(size_of::<T>())?;
        T::ref_from_bytes(bytes).map_err(|_| DecodeError::InvalidValue)
    }
}

impl<'de, T: ZeroCopy> Decode<'de> for &'de [T] {
    const MIN_SIZE: usize = 4;
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        let n = dec.get_len(size_of::<T>())?;
        let bytes = dec.take(
            n.checked_mul(size_of::<T>())
                .ok_or(DecodeError::LengthOverflow)?,
        )?;
        <[T]>::ref_from_bytes(bytes).map_err(|_| DecodeError::InvalidValue)
    }
}

// Scalars: little-endian, copied inline.
macro_rules! scalars {
    ($($ty:ty),*) => {$(
        impl Encode for $ty {
            #[inline]
            fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
                enc.put_inline(&self.to_le_bytes());
            }
        }
        impl<'de> Decode<'de> for $ty {
            const MIN_SIZE: usize = size_of::<$ty>();
            #[inline]
            fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_le_bytes(dec.take_array()?))
            }
        }
    )*};
}
scalars!(u16, u32, u64, u128, i16, i32, i64, i128, f32, f64);

impl Encode for usize {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        enc.put_u64(*self as u64);
    }
}
impl<'de> Decode<'de> for usize {
    const MIN_SIZE: usize = 8;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        usize::try_from(dec.get_u64()?).map_err(|_| DecodeError::OutOfRange)
    }
}
impl Encode for isize {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        enc.put_u64(*self as i64 as u64);
    }
}
impl<'de> Decode<'de> for isize {
    const MIN_SIZE: usize = 8;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        isize::try_from(dec.get_u64()? as i64).map_err(|_| DecodeError::OutOfRange)
    }
}

impl Encode for bool {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        enc.put_u8(u8::from(*self));
    }
}
impl<'de> Decode<'de> for bool {
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        match dec.get_u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::InvalidTag(u32::from(t))),
        }
    }
}

impl Encode for char {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        enc.put_u32(u32::from(*self));
    }
}
impl<'de> Decode<'de> for char {
    const MIN_SIZE: usize = 4;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        char::from_u32(dec.get_u32()?).ok_or(DecodeError::OutOfRange)
    }
}

impl Encode for () {
    #[inline]
    fn encode<'a>(&'a self, _: &mut Encoder<'a>) {}
}
impl<'de> Decode<'de> for () {
    const MIN_SIZE: usize = 0;
    #[inline]
    fn decode(_: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

// Sequences.
impl<T: Encode> Encode for [T] {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        T::encode_slice(self, enc);
    }
}
impl<T: Encode> Encode for Vec<T> {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        T::encode_slice(self, enc);
    }
}
impl<'de, T: Decode<'de>> Decode<'de> for Vec<T> {
    const MIN_SIZE: usize = 4;
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        T::decode_vec(dec)
    }
}
impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        T::encode_elements(self, enc);
    }
}
impl<'de, T: Decode<'de>, const N: usize> Decode<'de> for [T; N] {
    const MIN_SIZE: usize = T::MIN_SIZE.saturating_mul(N);
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        let mut items = ArrayVec::<T, N>::new();
        for _ in 0..N {
            items.push(T::decode(dec)?);
        }
        items.into_inner().map_err(|_| DecodeError::Truncated)
    }
}

impl Encode for str {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        self.as_bytes().encode(enc);
    }
}
impl Encode for String {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        self.as_bytes().encode(enc);
    }
}
impl<'de> Decode<'de> for &'de str {
    const MIN_SIZE: usize = 4;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        let bytes = <&[u8]>::decode(dec)?;
        core::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }
}
impl<'de> Decode<'de> for String {
    const MIN_SIZE: usize = 4;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        <&str>::decode(dec).map(str::to_owned)
    }
}

impl Encode for bytes::Bytes {
    #[inline]
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        self[..].encode(enc);
    }
}
impl<'de> Decode<'de> for bytes::Bytes {
    const MIN_SIZE: usize = 4;
    #[inline]
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        <&[u8]>::decode(dec).map(bytes::Bytes::copy_from_slice)
    }
}

// Wrappers.
impl<T: Encode + ?Sized> Encode for &T {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        (**self).encode(enc);
    }
}
impl<T: Encode + ?Sized> Encode for Box<T> {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        (**self).encode(enc);
    }
}
impl<'de, T: Decode<'de>> Decode<'de> for Box<T> {
    const MIN_SIZE: usize = T::MIN_SIZE;
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        T::decode(dec).map(Box::new)
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        match self {
            None => enc.put_u8(0),
            Some(v) => {
                enc.put_u8(1);
                v.encode(enc);
            }
        }
    }
}
impl<'de, T: Decode<'de>> Decode<'de> for Option<T> {
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        match dec.get_u8()? {
            0 => Ok(None),
            1 => T::decode(dec).map(Some),
            t => Err(DecodeError::InvalidTag(u32::from(t))),
        }
    }
}

impl<T: Encode, E: Encode> Encode for Result<T, E> {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        match self {
            Ok(v) => {
                enc.put_u8(0);
                v.encode(enc);
            }
            Err(e) => {
                enc.put_u8(1);
                e.encode(enc);
            }
        }
    }
}
impl<'de, T: Decode<'de>, E: Decode<'de>> Decode<'de> for Result<T, E> {
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        match dec.get_u8()? {
            0 => T::decode(dec).map(Ok),
            1 => E::decode(dec).map(Err),
            t => Err(DecodeError::InvalidTag(u32::from(t))),
        }
    }
}

macro_rules! tuples {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: Encode),+> Encode for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
                let ($($name,)+) = self;
                $($name.encode(enc);)+
            }
        }
        impl<'de, $($name: Decode<'de>),+> Decode<'de> for ($($name,)+) {
            const MIN_SIZE: usize = 0 $(+ $name::MIN_SIZE)+;
            fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
                Ok(($($name::decode(dec)?,)+))
            }
        }
    )*};
}
tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H)
}
