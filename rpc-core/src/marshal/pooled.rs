//! [`PooledBytes`]: owned bytes without an allocation per call.

use core::fmt;
use core::ops::{Deref, DerefMut};
use std::cell::RefCell;

use super::{Decode, DecodeError, Decoder, Encode, Encoder};

/// Buffers kept per thread.
const POOL_BUFFERS: usize = 32;
/// Largest buffer kept; larger ones are freed when dropped.
const POOL_MAX_CAPACITY: usize = 1 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Owned bytes whose buffer comes from a small per-thread pool and goes back to it when
/// dropped: a handler can return it and a caller receive it without an allocation per call in
/// steady state (a `Vec<u8>` costs one on each side). It encodes by reference, like `[u8]`,
/// and decodes with one copy out of the receive buffer.
///
/// Each thread keeps at most 32 buffers of at most 1 MiB; others are freed on drop.
#[derive(Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PooledBytes {
    buf: Vec<u8>,
}

impl PooledBytes {
    /// Empty, with a buffer from this thread's pool.
    pub fn new() -> Self {
        let buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        Self { buf }
    }

    /// A copy of `bytes`, in a pooled buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut b = Self::new();
        b.buf.extend_from_slice(bytes);
        b
    }

    /// The underlying vector (its buffer leaves the pool).
    pub fn into_vec(mut self) -> Vec<u8> {
        core::mem::take(&mut self.buf)
    }
}

impl Drop for PooledBytes {
    fn drop(&mut self) {
        let mut buf = core::mem::take(&mut self.buf);
        if buf.capacity() == 0 || buf.capacity() > POOL_MAX_CAPACITY {
            return;
        }
        buf.clear();
        // The pool may already be gone while the thread exits; then the buffer is freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_BUFFERS {
                p.push(buf);
            }
        });
    }
}

impl Deref for PooledBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Clone for PooledBytes {
    fn clone(&self) -> Self {
        Self::copy_from(&self.buf)
    }
}

impl fmt::Debug for PooledBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledBytes").field(&self.buf).finish()
    }
}

impl From<&[u8]> for PooledBytes {
    fn from(bytes: &[u8]) -> Self {
        Self::copy_from(bytes)
    }
}

impl Encode for PooledBytes {
    fn encode<'a>(&'a self, enc: &mut Encoder<'a>) {
        self.buf[..].encode(enc);
    }
}

impl<'de> Decode<'de> for PooledBytes {
    const MIN_SIZE: usize = 4;
    fn decode(dec: &mut Decoder<'de>) -> Result<Self, DecodeError> {
        <&[u8]>::decode(dec).map(Self::copy_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marshal;

    #[test]
    fn round_trips_like_a_byte_slice() {
        let b = PooledBytes::copy_from(b"pooled");
        let enc = marshal::encode(&b);
        assert_eq!(enc.to_vec(), marshal::encode(&b"pooled"[..]).to_vec());
        let back: PooledBytes = marshal::decode(&enc.to_vec()).unwrap();
        assert_eq!(&back[..], b"pooled");
    }

    #[test]
    fn buffers_return_to_the_pool() {
        let a = PooledBytes::copy_from(&[1; 100]);
        let ptr = a.as_ptr();
        drop(a);
        let b = PooledBytes::copy_from(&[2; 50]);
        assert_eq!(b.as_ptr(), ptr, "the dropped buffer is reused");
        assert_eq!(&b[..], &[2; 50][..]);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let a = PooledBytes::copy_from(&vec![0; POOL_MAX_CAPACITY + 1]);
        drop(a);
        POOL.with(|p| assert!(p.borrow().iter().all(|b| b.capacity() <= POOL_MAX_CAPACITY)));
    }
}
