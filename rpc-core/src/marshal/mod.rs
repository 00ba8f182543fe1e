//! Marshalling by shared descriptor.
//!
//! A stub does not copy arguments into a contiguous buffer. It builds an [`Encoder`]: a
//! fixed-capacity list of segments, each either a slice of the caller's own memory (byte
//! slices, strings, zero-copy values) or a few bytes in the encoder's inline area (length
//! prefixes and scalars, little-endian). The transport hands the segments to the kernel in one
//! gather call ([`Encoder::gather`]).
//!
//! On the receiving side a [`Decoder`] reads values out of the receive buffer; `&[u8]`, `&str`
//! and zero-copy types borrow from it instead of copying.
//!
//! # Encoding
//!
//! Values are concatenated without padding or tags beyond these: integers and floats are
//! little-endian of their own width (`usize`/`isize` as 64 bits); `bool` is one byte, 0 or 1;
//! `char` is a `u32` scalar value; sequences (`[T]`, `Vec<T>`, `str`, `String`) are a `u32`
//! count followed by their elements; `Option` and `Result` are a one-byte tag (0 = `None`/`Ok`,
//! 1 = `Some`/`Err`) followed by the payload; tuples and structs are their fields in order;
//! enums are a `u32` variant index followed by the variant's fields.
//!
//! # Bounds
//!
//! Decoding never panics and never trusts a count: a sequence count must not exceed the bytes
//! left in the input, and collections grow as elements actually decode. Types that contain
//! themselves decode through [`Decoder::nested`], which bounds the depth of recursion (and so
//! the stack a hostile message can make a decoder use) to [`MAX_DEPTH`].
//!
//! # Schema fingerprints
//!
//! The encoding carries no field names or types, so a peer built with a different version of
//! a type would misread its bytes. Every marshallable type therefore also implements
//! [`Schema`]: a 64-bit fingerprint of its wire form (a derived type's name, its fields' or
//! variants' names and order, their types' fingerprints, its generic arguments), computed by
//! `const fn`s at compile time ([`schema`]). `#[rpc]` folds the fingerprints of a method's
//! argument and return types into the method's id, so two builds that disagree on any type a
//! method carries disagree on its id, and the call fails with `CallError::InterfaceMismatch`
//! before any byte is decoded. [`Schema`] lists which spellings share a fingerprint
//! (`Vec<u8>`, `&[u8]`, `Bytes` and `PooledBytes` are all bytes) and how recursive types are
//! handled.

mod impls;
mod pooled;
pub mod schema;

#[doc(hidden)]
pub use impls::ZeroCopyVec;
pub use impls::{ZeroCopy, decode_zerocopy_vec};
pub use pooled::PooledBytes;
pub use schema::Schema;

use core::ops::Range;
use std::io::IoSlice;

use smallvec::SmallVec;

pub use crate::error::DecodeError;

/// The most segments a descriptor has. Past [`INLINE_SEGMENTS`] the list of segments moves to
/// the heap (the bytes are still the caller's own); the last one is reserved for spilled
/// bytes, so a descriptor never has more than this many segments.
pub const MAX_SEGMENTS: usize = 64;

/// Segments an [`Encoder`] holds in place, without allocating. An async call's future holds
/// its descriptor, and moves with it (into an executor's slot, into an `.await`): the fixed
/// part is kept small, a few hundred bytes, for that.
pub const INLINE_SEGMENTS: usize = 16;

/// Inline bytes (length prefixes, scalars, small copied slices) an [`Encoder`] holds in
/// place, without allocating. Past it the inline area moves to the heap, up to
/// [`MAX_INLINE`] bytes.
pub const INLINE_CAPACITY: usize = 256;

/// The most bytes the inline area holds; later bytes spill.
pub const MAX_INLINE: usize = u16::MAX as usize;

/// Borrowed slices up to this length are copied inline rather than given a segment: copying
/// a few bytes costs less than another entry in the kernel's gather list.
pub const COPY_THRESHOLD: usize = 32;

#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    /// The caller's memory.
    Borrowed(&'a [u8]),
    /// `inline[start..end]`.
    Inline { start: u16, end: u16 },
    /// `spill[start..end]`.
    Spill { start: u32, end: u32 },
}

/// A shared descriptor under construction: the bytes of a message as a list of segments over
/// the caller's own memory and a small inline area.
///
/// No allocation happens while the descriptor fits in [`INLINE_SEGMENTS`] segments and
/// [`INLINE_CAPACITY`] inline bytes. Past those, the segment list or the inline area moves to
/// the heap (one allocation each; borrowed bytes are still not copied). Past
/// [`MAX_SEGMENTS`] segments or [`MAX_INLINE`] inline bytes, further bytes are copied into
/// one growable spill segment (correct, but no longer zero-copy).
#[derive(Clone, Debug, Default)]
pub struct Encoder<'a> {
    segs: SmallVec<[Seg<'a>; INLINE_SEGMENTS]>,
    inline: SmallVec<[u8; INLINE_CAPACITY]>,
    spill: Vec<u8>,
    len: usize,
}

impl<'a> Encoder<'a> {
    /// An empty descriptor.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Total length of the message in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// Whether some bytes had to be copied into the spill area (the descriptor outgrew
    /// [`MAX_SEGMENTS`] or [`MAX_INLINE`]).
    pub fn spilled(&self) -> bool {
        !self.spill.is_empty()
    }

    /// Whether the descriptor outgrew its in-place capacity ([`INLINE_SEGMENTS`],
    /// [`INLINE_CAPACITY`]) and allocated.
    pub fn allocated(&self) -> bool {
        self.segs.spilled() || self.inline.spilled() || self.spill.capacity() > 0
    }

    #[inline]
    fn spilling(&self) -> bool {
        matches!(self.segs.last(), Some(Seg::Spill { .. }))
    }

    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        let start = self.spill.len();
        self.spill.extend_from_slice(bytes);
        let end = self.spill.len() as u32;
        match self.segs.last_mut() {
            Some(Seg::Spill { end: e, .. }) => *e = end,
            _ => self.segs.push(Seg::Spill {
                start: start as u32,
                end,
            }),
        }
    }

    /// Appends bytes by reference: the descriptor points at them, nothing is copied (unless
    /// they are shorter than [`COPY_THRESHOLD`] or the descriptor is full).
    #[inline]
    pub fn put_bytes(&mut self, bytes: &'a [u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len() <= COPY_THRESHOLD {
            self.put_inline(bytes);
            return;
        }
        self.len += bytes.len();
        if self.spilling() || self.segs.len() + 1 >= MAX_SEGMENTS {
            self.spill(bytes);
        } else {
            self.segs.push(Seg::Borrowed(bytes));
        }
    }

    /// Appends bytes by copying them into the inline area.
    #[inline]
    pub fn put_inline(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if self.spilling() || MAX_INLINE - self.inline.len() < bytes.len() {
            self.spill(bytes);
            return;
        }
        // Both fit in a u16: at most MAX_INLINE, checked above.
        let start = self.inline.len() as u16;
        self.inline.extend_from_slice(bytes);
        let end = self.inline.len() as u16;
        if let Some(Seg::Inline { end: e, .. }) = self.segs.last_mut() {
            if *e == start {
                *e = end;
                return;
            }
        }
        if self.segs.len() + 1 >= MAX_SEGMENTS {
            // Keep the last segment for spilling: move these bytes there instead.
            self.inline.truncate(start as usize);
            self.spill(bytes);
        } else {
            self.segs.push(Seg::Inline { start, end });
        }
    }

    /// Appends a `u8`.
    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.put_inline(&[v]);
    }
    /// Appends a little-endian `u16`.
    #[inline]
    pub fn put_u16(&mut self, v: u16) {
        self.put_inline(&v.to_le_bytes());
    }
    /// Appends a little-endian `u32`.
    #[inline]
    pub fn put_u32(&mut self, v: u32) {
        self.put_inline(&v.to_le_bytes());
    }
    /// Appends a little-endian `u64`.
    #[inline]
    pub fn put_u64(&mut self, v: u64) {
        self.put_inline(&v.to_le_bytes());
    }

    /// Appends a sequence count. Counts above `u32::MAX` cannot be represented; no message of
    /// this protocol can hold such a sequence, so the count saturates and the peer's decoder
    /// refuses it.
    #[inline]
    pub fn put_len(&mut self, len: usize) {
        self.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    /// Appends a value.
    pub fn put<T: Encode + ?Sized>(&mut self, value: &'a T) {
        value.encode(self);
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.segs.iter().map(move |s| self.seg_bytes(s))
    }

    fn seg_bytes<'s>(&'s self, s: &Seg<'a>) -> &'s [u8] {
        match *s {
            Seg::Borrowed(b) => b,
            Seg::Inline { start, end } => &self.inline[start as usize..end as usize],
            Seg::Spill { start, end } => &self.spill[start as usize..end as usize],
        }
    }

    /// Writes into `out` the slices that cover exactly bytes `range` of the message, and
    /// returns how many it wrote. `out` needs at most [`MAX_SEGMENTS`] entries; if it is
    /// shorter, the slices that do not fit are left out (check the returned count's total).
    pub fn gather<'s>(&'s self, range: Range<usize>, out: &mut [IoSlice<'s>]) -> usize {
        let mut n = 0;
        self.for_each_in(range, |bytes| {
            if let Some(slot) = out.get_mut(n) {
                *slot = IoSlice::new(bytes);
                n += 1;
            }
        });
        n
    }

    /// Calls `f` with the slices covering bytes `range` of the message, in order. The slices
    /// borrow the descriptor, so `f` may keep them (to build a gather list, say).
    pub fn for_each_in<'s>(&'s self, range: Range<usize>, mut f: impl FnMut(&'s [u8])) {
        if range.is_empty() {
            return;
        }
        let mut offset = 0;
        for s in &self.segs {
            if offset >= range.end {
                break;
            }
            let bytes = self.seg_bytes(s);
            let (start, end) = (offset, offset + bytes.len());
            offset = end;
            if end <= range.start {
                continue;
            }
            let lo = range.start.saturating_sub(start);
            let hi = (range.end - start).min(bytes.len());
            f(&bytes[lo..hi]);
        }
    }

    /// Copies the whole message into `out` (tests, baselines, retransmit buffers).
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        for s in self.segments() {
            out.extend_from_slice(s);
        }
    }

    /// The whole message as one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.copy_to(&mut v);
        v
    }
}

/// How deeply [`Decoder::nested`] calls may nest: derived types that contain themselves
/// (a tree of `Vec<Node>`, a `Box<Expr>`) decode at most this many levels deep.
pub const MAX_DEPTH: u32 = 128;

/// Reads values from a received message, borrowing from it where the type allows.
#[derive(Clone, Copy, Debug)]
pub struct Decoder<'de> {
    input: &'de [u8],
    /// Nesting depth of [`Decoder::nested`] calls.
    depth: u32,
}

impl<'de> Decoder<'de> {
    /// A decoder over a whole message.
    #[inline]
    pub fn new(input: &'de [u8]) -> Self {
        Self { input, depth: 0 }
    }

    /// Runs `f` one nesting level deeper, refusing with [`DecodeError::TooDeep`] past
    /// [`MAX_DEPTH`] levels. `#[derive(Marshal)]` decodes every struct and enum through it, so
    /// that a hostile message cannot make a recursive type's decoder overflow the stack;
    /// hand-written `Decode` impls of recursive types should do the same.
    pub fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// Bytes not yet read.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// The bytes not yet read.
    #[inline]
    pub fn rest(&self) -> &'de [u8] {
        self.input
    }

    /// Takes the next `n` bytes, borrowed from the input.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if n > self.input.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn take_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    #[inline]
    pub fn get_u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take_array::<1>()?[0])
    }
    /// Reads a little-endian `u16`.
    #[inline]
    pub fn get_u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take_array()?))
    }
    /// Reads a little-endian `u32`.
    #[inline]
    pub fn get_u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }
    /// Reads a little-endian `u64`.
    #[inline]
    pub fn get_u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// Reads a sequence count of elements of at least `min_size` bytes each, refusing counts
    /// that the rest of the input could not hold.
    ///
    /// Zero-sized elements count as one byte each here, so that no count can make a decoder
    /// loop (or a collection grow) beyond what the message's own length justifies.
    #[inline]
    pub fn get_len(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.get_u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.input.len() {
            return Err(DecodeError::LengthOverflow);
        }
        Ok(n)
    }

    /// Reads a value.
    pub fn get<T: Decode<'de>>(&mut self) -> Result<T, DecodeError> {
        T::decode(self)
    }

    /// Ends decoding: refuses trailing bytes.
    #[inline]
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// A type that can be described by segments of a shared descriptor.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be marshalled",
    label = "not marshallable",
    note = "derive it with `#[derive(rpc_core::Marshal)]`, or use a type rpc_core marshals"
)]
pub trait Encode {
    /// Appends this value to the descriptor, by reference where the type allows.
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>);

    /// Appends a sequence of values: a `u32` count, then the elements.
    #[doc(hidden)]
    fn encode_slice<'a>(items: &'a [Self], enc: &mut Encoder<'a>)
    where
        Self: Sized,
    {
        enc.put_len(items.len());
        Self::encode_elements(items, enc);
    }

    /// Appends the elements of a slice, without a count. Zero-copy types override this to
    /// append the whole slice by reference.
    #[doc(hidden)]
    fn encode_elements<'a>(items: &'a [Self], enc: &mut Encoder<'a>)
    where
        Self: Sized,
    {
        for item in items {
            item.encode(enc);
        }
    }
}

/// A type that can be read from a received message, borrowing from it for `'de`.
///
/// Decoding is pure: a transport may decode a reply while it holds its client's locks (a
/// calling thread decodes its own reply where it was received; a future decodes a short one
/// as its call ends), so an implementation must not make calls on an RPC client, and its work
/// should be bounded by the bytes it reads, as every derived one is.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be decoded from a message",
    label = "not decodable",
    note = "derive it with `#[derive(rpc_core::Marshal)]`; references can only borrow from the \
            message as `&[u8]`, `&str`, or `&T`/`&[T]` of a `ZeroCopy` type"
)]
pub trait Decode<'de>: Sized {
    /// Smallest number of bytes one value takes on the wire (bounds sequence counts).
    const MIN_SIZE: usize = 1;

    /// Reads one value.
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError>;

    /// Reads a sequence (count, then elements) into a vector. Byte-like types override this
    /// to copy the slice at once.
    #[doc(hidden)]
    fn decode_vec(dec: &mut Decoder<'de>) -> Result<Vec<Self>, DecodeError> {
        let n = dec.get_len(Self::MIN_SIZE)?;
        // Grow as elements decode; never reserve more than a page's worth up front.
        let mut v = Vec::with_capacity(n.min(4096 / size_of::<Self>().max(1)));
        for _ in 0..n {
            v.push(Self::decode(dec)?);
        }
        Ok(v)
    }
}

/// A type that decodes without borrowing from the input.
pub trait DecodeOwned: for<'de> Decode<'de> {}
impl<T: for<'de> Decode<'de>> DecodeOwned for T {}

/// Decodes a whole message as one value, refusing trailing bytes.
pub fn decode<'de, T: Decode<'de>>(input: &'de [u8]) -> Result<T, DecodeError> {
    let mut dec = Decoder::new(input);
    let v = T::decode(&mut dec)?;
    dec.finish()?;
    Ok(v)
}

/// Encodes a value into a new descriptor.
pub fn encode<T: Encode + ?Sized>(value: &T) -> Encoder<'_> {
    let mut enc = Encoder::new();
    value.encode(&mut enc);
    enc
}

#[cfg(test)]
mod tests;
