//! Every `unsafe` of the shared-memory link: seeing a mapped file as words.
//!
//! A shared mapping is memory another process may write at any moment, with any bytes. Rust
//! may only read such memory through atomics: an ordinary read racing with a write is
//! undefined behaviour, and the compiler may assume an ordinary read's value cannot change
//! (reading it twice, say, and trusting both). So the link never forms a `&[u8]` or `&mut`
//! over the mapping: it sees it as `&[AtomicU64]`, and every access, to control words and
//! payload bytes alike, is an atomic load or store. Any value an atomic load returns is a
//! valid `u64`; what the peer wrote is then checked like any bytes from a network.
//!
//! The view is sound because: the mapping is page-aligned (so aligned for `AtomicU64`); it is
//! `len` bytes long and stays mapped for as long as the view lives (the view borrows the
//! `Mapping`, which owns the `MmapRaw`); `AtomicU64` has the size and bit validity of `u64`,
//! and every bit pattern is a valid `u64`; and the file is never truncated while mapped (this
//! process sizes it before mapping and never shrinks it; a peer that truncated it would
//! make accesses fault with SIGBUS, which the file's 0600 mode and ownership restrict to this
//! user's own processes, the same trust a Unix socket gives).

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use memmap2::MmapRaw;

/// A file mapped shared, seen as words.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapRaw,
    words: usize,
}

impl Mapping {
    /// Maps all of `file` (whose length is a multiple of 8, and at least 8).
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        let map = MmapRaw::map_raw(file)?;
        let len = map.len();
        if len < 8 || len % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared segment of a length that is not whole words",
            ));
        }
        if map.as_ptr().align_offset(std::mem::align_of::<AtomicU64>()) != 0 {
            return Err(io::Error::other("shared mapping not aligned"));
        }
        Ok(Self {
            map,
            words: len / 8,
        })
    }

    /// The mapping as words.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY: see the module notes: the pointer is aligned (checked in `new`) and valid
        // for `words * 8` bytes for as long as `self.map` lives, which the returned borrow
        // cannot outlive; all access goes through atomics, so concurrent writes by another
        // process are no data race in this one; every bit pattern is a valid `AtomicU64`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }
}

/// Asks the CPU to move the cache lines of `words`, just written for the peer, out of this
/// core's private caches to the shared last-level cache (x86's `CLDEMOTE`), so that the peer,
/// polling them from another core, reads them from there instead of from this core. A hint
/// only: it changes no memory and orders nothing.
#[inline]
pub(crate) fn demote(words: &[AtomicU64]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let mut last_line = usize::MAX;
        for w in words {
            let line = (w as *const AtomicU64 as usize) >> 6;
            if line != last_line {
                last_line = line;
                // SAFETY: `CLDEMOTE` reads and writes no memory and leaves every register and
                // flag as it was (`nostack`, `preserves_flags`): it only hints the cache
                // where a line should live. Its operand is the address of a word that is
                // mapped for as long as the borrow of `words` lasts. Processors without the
                // instruction execute its encoding as a `NOP`.
                unsafe {
                    std::arch::asm!(
                        "cldemote [{}]",
                        in(reg) w.as_ptr(),
                        options(nostack, preserves_flags)
                    );
                }
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = words;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn demoting_lines_changes_no_word() {
        let words: Vec<AtomicU64> = (0..40u64)
            .map(|i| AtomicU64::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let before: Vec<u64> = words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        // Empty, one word, unaligned runs across lines, and all of it.
        for (first, count) in [(0, 0), (3, 1), (5, 11), (7, 26), (0, 40)] {
            demote(&words[first..first + count]);
        }
        let after: Vec<u64> = words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        assert_eq!(before, after);
    }
}
