//! Building the gather list of one datagram.
//!
//! A datagram is the 72-byte header (and, in authenticated mode, its 16-byte tag) followed by
//! a range of the message's segments. Segments
//! of the caller's memory are passed to the kernel by reference. The small segments at the
//! front — length prefixes and scalars, bytes the encoder already holds in its own scratch
//! area — are packed behind the header in one stack buffer, so that a small call is a single
//! buffer (a plain `send`) and a byte-slice argument is two (header and prefix, then the
//! caller's bytes), not three: every entry in a gather list costs the kernel something.

use std::io::IoSlice;

use arrayvec::ArrayVec;
use rpc_core::marshal::MAX_SEGMENTS;
use rpc_core::wire::{HEADER_LEN, TAG_LEN};

/// Bytes after the header that may be packed into the header's buffer: the scalars and
/// length prefixes of a small call.
const PACKED: usize = 120;

/// The header, its tag if any, and the leading small segments, contiguous.
pub(crate) struct Head {
    buf: [u8; HEADER_LEN + TAG_LEN + PACKED],
    len: usize,
    /// `len` may grow up to this: [`PACKED`] bytes past the header and tag.
    limit: usize,
}

impl Head {
    pub(crate) fn new(header: &[u8; HEADER_LEN], tag: Option<&[u8; TAG_LEN]>) -> Self {
        let mut buf = [0u8; HEADER_LEN + TAG_LEN + PACKED];
        buf[..HEADER_LEN].copy_from_slice(header);
        let len = match tag {
            Some(tag) => {
                buf[HEADER_LEN..HEADER_LEN + TAG_LEN].copy_from_slice(tag);
                HEADER_LEN + TAG_LEN
            }
            None => HEADER_LEN,
        };
        Self {
            buf,
            len,
            limit: len + PACKED,
        }
    }

    /// Room left for packed segments.
    fn room(&self) -> usize {
        self.limit - self.len
    }
}

/// Whether `segments` would all be packed into a [`Head`] (the datagram would be one buffer),
/// worked out without copying anything.
pub(crate) fn packs_whole<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut used = 0;
    for seg in segments {
        if seg.len() > rpc_core::marshal::COPY_THRESHOLD || used + seg.len() > PACKED {
            return false;
        }
        used += seg.len();
    }
    true
}

/// A datagram's gather list with nothing packed: the header, its tag if any, then every
/// segment by reference. For a link whose send copies every byte itself and costs nothing
/// more for a longer list (shared memory), where packing would only copy the bytes twice.
pub(crate) struct Unpacked<'a> {
    iov: ArrayVec<IoSlice<'a>, { MAX_SEGMENTS + 2 }>,
}

impl<'a> Unpacked<'a> {
    pub(crate) fn new(header: &'a [u8; HEADER_LEN], tag: Option<&'a [u8; TAG_LEN]>) -> Self {
        let mut iov = ArrayVec::new();
        iov.push(IoSlice::new(header));
        if let Some(tag) = tag {
            iov.push(IoSlice::new(tag));
        }
        Self { iov }
    }

    /// Appends a segment (a descriptor has at most MAX_SEGMENTS).
    pub(crate) fn push(&mut self, seg: &'a [u8]) {
        if !seg.is_empty() {
            let _ = self.iov.try_push(IoSlice::new(seg));
        }
    }

    pub(crate) fn iov(&self) -> &[IoSlice<'a>] {
        &self.iov
    }
}

/// The gather list of one datagram: `head` (the header and what was packed behind it), then
/// the remaining segments by reference.
pub(crate) struct Gather<'a> {
    rest: ArrayVec<&'a [u8], MAX_SEGMENTS>,
    packing: bool,
}

impl<'a> Gather<'a> {
    /// Nothing after the head yet.
    pub(crate) fn empty() -> Self {
        Self {
            rest: ArrayVec::new(),
            packing: true,
        }
    }

    /// Appends `segments` in order, as [`Gather::push`] does. (There is no constructor taking
    /// them: a gather list is a kilobyte, and returning one by value would copy it.)
    pub(crate) fn extend(&mut self, head: &mut Head, segments: impl IntoIterator<Item = &'a [u8]>) {
        for seg in segments {
            self.push(head, seg);
        }
    }

    /// Appends a segment: packed into `head` while the segments so far were all packed and
    /// this one is small and fits, by reference otherwise.
    pub(crate) fn push(&mut self, head: &mut Head, seg: &'a [u8]) {
        if seg.is_empty() {
            return;
        }
        let room = head.room();
        if self.packing && seg.len() <= rpc_core::marshal::COPY_THRESHOLD && seg.len() <= room {
            head.buf[head.len..head.len + seg.len()].copy_from_slice(seg);
            head.len += seg.len();
            return;
        }
        self.packing = false;
        // A descriptor has at most MAX_SEGMENTS segments.
        let _ = self.rest.try_push(seg);
    }

    /// Whether the datagram is the head alone: one buffer, no gather list (for tests).
    #[cfg(test)]
    fn is_one_buffer(&self) -> bool {
        self.rest.is_empty()
    }

    /// Hands the datagram's gather list (head, then the segments by reference) to `f`.
    pub(crate) fn with_iov<R>(&self, head: &Head, f: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
        let head = &head.buf[..head.len];
        let mut iov = ArrayVec::<IoSlice<'_>, { MAX_SEGMENTS + 1 }>::new();
        self.fill(head, &mut iov);
        f(&iov)
    }

    /// The gather list, built in place (it is a kilobyte: returning it would copy it).
    fn fill<'s>(&'s self, head: &'s [u8], iov: &mut ArrayVec<IoSlice<'s>, { MAX_SEGMENTS + 1 }>) {
        iov.push(IoSlice::new(head));
        for seg in &self.rest {
            let _ = iov.try_push(IoSlice::new(seg));
        }
    }

    /// Bytes after the head (for tests).
    #[cfg(test)]
    fn rest_len(&self) -> usize {
        self.rest.iter().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_leading_segments_are_packed_and_large_ones_kept_by_reference() {
        let header = [7u8; HEADER_LEN];
        let data = vec![9u8; 1024];
        let prefix = 1024u32.to_le_bytes();
        let mut head = Head::new(&header, None);
        let mut g = Gather::empty();
        g.extend(&mut head, [&prefix[..], &data[..], &prefix[..]]);
        assert_eq!(head.len, HEADER_LEN + 4);
        assert_eq!(&head.buf[HEADER_LEN..head.len], &prefix);
        // The caller's bytes are referenced, not copied; what follows them stays in order.
        assert_eq!(g.rest.len(), 2);
        assert!(!g.is_one_buffer());
        assert_eq!(g.rest[0].as_ptr(), data.as_ptr());
        assert_eq!(g.rest_len(), 1028);
    }

    #[test]
    fn an_unpacked_list_is_the_header_the_tag_and_every_segment_by_reference() {
        let header = [7u8; HEADER_LEN];
        let tag = [9u8; TAG_LEN];
        let (a, b) = ([1u8; 4], vec![2u8; 100]);
        let mut u = Unpacked::new(&header, Some(&tag));
        for seg in [&a[..], &[], &b[..], &a[..]] {
            u.push(seg);
        }
        let iov = u.iov();
        let starts: Vec<*const u8> = iov.iter().map(|s| s.as_ptr()).collect();
        // Nothing copied, the empty segment left out, the order kept.
        assert_eq!(
            starts,
            [
                header.as_ptr(),
                tag.as_ptr(),
                a.as_ptr(),
                b.as_ptr(),
                a.as_ptr()
            ]
        );
        let mut u = Unpacked::new(&header, None);
        u.push(&b);
        assert_eq!(u.iov().len(), 2);
        assert_eq!(
            u.iov().iter().map(|s| s.len()).sum::<usize>(),
            HEADER_LEN + 100
        );
    }

    #[test]
    fn a_small_message_is_one_buffer() {
        let header = [1u8; HEADER_LEN];
        let mut head = Head::new(&header, None);
        let a = 5u64.to_le_bytes();
        let b = [1u8; 20];
        let mut g = Gather::empty();
        g.extend(&mut head, [&a[..], &b[..]]);
        assert!(g.is_one_buffer());
        assert_eq!(head.len, HEADER_LEN + 28);
    }

    #[test]
    fn packs_whole_agrees_with_the_gather_list() {
        let (a, b, big) = ([1u8; 8], [2u8; 32], [3u8; 33]);
        let cases: [&[&[u8]]; 6] = [
            &[],
            &[&a, &[], &b],
            &[&b, &b, &b],
            &[&b, &b, &b, &b],
            &[&a, &big],
            &[&big],
        ];
        for segs in cases {
            let mut head = Head::new(&[0; HEADER_LEN], None);
            let mut g = Gather::empty();
            g.extend(&mut head, segs.iter().copied());
            assert_eq!(
                packs_whole(segs.iter().copied()),
                g.is_one_buffer(),
                "{segs:?}"
            );
        }
    }

    #[test]
    fn a_tag_follows_the_header_and_leaves_the_packing_room_as_it_was() {
        let header = [1u8; HEADER_LEN];
        let tag = [9u8; TAG_LEN];
        let mut head = Head::new(&header, Some(&tag));
        assert_eq!(&head.buf[HEADER_LEN..head.len], &tag);
        let small = [2u8; 32];
        let mut g = Gather::empty();
        g.extend(&mut head, vec![&small[..]; 10]);
        assert_eq!(head.len, HEADER_LEN + TAG_LEN + 96);
        assert_eq!(g.rest.len(), 7);
    }

    #[test]
    fn packing_stops_when_the_head_is_full() {
        let header = [1u8; HEADER_LEN];
        let mut head = Head::new(&header, None);
        let small = [2u8; 32];
        let segs = vec![&small[..]; 10];
        let mut g = Gather::empty();
        g.extend(&mut head, segs);
        assert_eq!(head.len, HEADER_LEN + 96);
        assert_eq!(g.rest.len(), 7);
    }
}
