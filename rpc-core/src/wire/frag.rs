//! Splitting a message into datagrams and putting it back together.
//!
//! Every fragment but the last carries the same number of body bytes `P`; the last carries the
//! rest. The receiver infers `P` from the first fragment it sees and refuses any fragment that
//! disagrees with it, so fragment `i` always lands at offset `i * P` and never outside the
//! message.

use core::ops::Range;

use super::header::HEADER_LEN;
use super::packet::HeaderRepr;

/// How a message of a given length is cut into datagrams of a given maximum size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentPlan {
    message_len: usize,
    chunk: usize,
    count: u16,
}

impl FragmentPlan {
    /// Plans `message_len` body bytes into datagrams of at most `max_datagram` bytes, header
    /// included. `None` if the datagram cannot hold a header and a byte, or if the message
    /// would need more than `u16::MAX` fragments or is longer than `u32::MAX`.
    pub fn new(message_len: usize, max_datagram: usize) -> Option<Self> {
        let chunk = max_datagram.checked_sub(HEADER_LEN).filter(|&c| c > 0)?;
        u32::try_from(message_len).ok()?;
        let count = message_len.div_ceil(chunk).max(1);
        Some(Self { message_len, chunk, count: u16::try_from(count).ok()? })
    }

    /// Number of datagrams.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Body bytes per datagram (all but the last carry exactly this many).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Total body length.
    pub fn message_len(&self) -> usize {
        self.message_len
    }

    /// The body bytes carried by fragment `index`; empty past the last fragment.
    pub fn range(&self, index: u16) -> Range<usize> {
        let start = (index as usize).saturating_mul(self.chunk).min(self.message_len);
        let end = start.saturating_add(self.chunk).min(self.message_len);
        start..end
    }
}

/// Why a fragment was refused by a reassembly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The fragment's lengths disagree with the message it claims to belong to.
    #[error("fragment inconsistent with its message")]
    Inconsistent,
}

/// A message being put back together from its fragments.
///
/// Memory: one buffer of the message's length, plus one bit per fragment. Both are handed in
/// by the owner (from a pool) after it has checked the length against its own budget, and are
/// handed back by [`Reassembly::into_parts`].
#[derive(Debug)]
pub struct Reassembly {
    buf: Vec<u8>,
    seen: Vec<u64>,
    message_len: u32,
    count: u16,
    chunk: u32,
    received: u16,
}

impl Reassembly {
    /// The fragment size implied by one fragment of a multi-fragment message, checked against
    /// the message length and fragment count it announces.
    fn infer_chunk(h: &HeaderRepr) -> Option<u32> {
        let count = u32::from(h.frag_count);
        if count < 2 || h.frag_index >= h.frag_count || h.payload_len == 0 {
            return None;
        }
        let chunk = if h.frag_index + 1 < h.frag_count {
            h.payload_len
        } else {
            let rest = h.message_len.checked_sub(h.payload_len)?;
            if rest % (count - 1) != 0 {
                return None;
            }
            rest / (count - 1)
        };
        if chunk == 0 || h.message_len.div_ceil(chunk) != count {
            return None;
        }
        let last = h.message_len - (count - 1) * chunk;
        if last == 0 || last > chunk {
            return None;
        }
        Some(chunk)
    }

    /// Starts a reassembly from any fragment of a message (the fragment is not yet added).
    ///
    /// `buf` is resized to the message length and `seen` to one bit per fragment; pass buffers
    /// from a pool to avoid allocating in steady state.
    pub fn start(
        first: &HeaderRepr,
        mut buf: Vec<u8>,
        mut seen: Vec<u64>,
    ) -> Result<Self, ReassemblyError> {
        let chunk = Self::infer_chunk(first).ok_or(ReassemblyError::Inconsistent)?;
        buf.clear();
        buf.resize(first.message_len as usize, 0);
        seen.clear();
        seen.resize(usize::from(first.frag_count).div_ceil(64), 0);
        Ok(Self {
            buf,
            seen,
            message_len: first.message_len,
            count: first.frag_count,
            chunk,
            received: 0,
        })
    }

    /// Adds a fragment. Returns whether the message is now complete. A fragment already seen
    /// is ignored; a fragment that disagrees with the message is refused and changes nothing.
    pub fn add(&mut self, h: &HeaderRepr, payload: &[u8]) -> Result<bool, ReassemblyError> {
        if h.message_len != self.message_len
            || h.frag_count != self.count
            || Self::infer_chunk(h) != Some(self.chunk)
            || payload.len() != h.payload_len as usize
        {
            return Err(ReassemblyError::Inconsistent);
        }
        let index = usize::from(h.frag_index);
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let seen = self.seen.get_mut(word).ok_or(ReassemblyError::Inconsistent)?;
        if *seen & bit == 0 {
            let start = index * self.chunk as usize;
            let dst = self
                .buf
                .get_mut(start..start + payload.len())
                .ok_or(ReassemblyError::Inconsistent)?;
            dst.copy_from_slice(payload);
            *seen |= bit;
            self.received += 1;
        }
        Ok(self.is_complete())
    }

    /// Whether every fragment has arrived.
    pub fn is_complete(&self) -> bool {
        self.received == self.count
    }

    /// Whether fragment `index` has arrived.
    pub fn has(&self, index: u16) -> bool {
        let index = usize::from(index);
        self.seen.get(index / 64).is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Length of the whole message.
    pub fn message_len(&self) -> usize {
        self.message_len as usize
    }

    /// Number of fragments received so far.
    pub fn received(&self) -> u16 {
        self.received
    }

    /// Gives back the message buffer (complete or not) and the bitmap storage.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u64>) {
        (self.buf, self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Flags, PacketKind};

    fn frag(message_len: u32, index: u16, count: u16, payload_len: u32) -> HeaderRepr {
        HeaderRepr {
            kind: PacketKind::Reply,
            flags: Flags::empty(),
            status: 0,
            client_id: 1,
            client_incarnation: 1,
            interface: 0,
            method: 0,
            session: 1,
            seq: 1,
            ack: 0,
            lamport: 1,
            frag_index: index,
            frag_count: count,
            message_len,
            payload_len,
        }
    }

    #[test]
    fn plan_covers_the_message_exactly() {
        let plan = FragmentPlan::new(10_000, HEADER_LEN + 1000).unwrap();
        assert_eq!(plan.count(), 10);
        assert_eq!(plan.range(0), 0..1000);
        assert_eq!(plan.range(9), 9000..10_000);
        assert_eq!(plan.range(10), 10_000..10_000);
        let plan = FragmentPlan::new(10_001, HEADER_LEN + 1000).unwrap();
        assert_eq!(plan.count(), 11);
        assert_eq!(plan.range(10), 10_000..10_001);
        let empty = FragmentPlan::new(0, 1500).unwrap();
        assert_eq!((empty.count(), empty.range(0)), (1, 0..0));
        assert_eq!(FragmentPlan::new(10, HEADER_LEN), None);
        assert_eq!(FragmentPlan::new(1 << 20, HEADER_LEN + 1), None);
    }

    #[test]
    fn reassembles_out_of_order_with_duplicates() {
        let msg: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let plan = FragmentPlan::new(msg.len(), HEADER_LEN + 1000).unwrap();
        let order = [2u16, 0, 2, 1];
        let first = frag(2500, 2, 3, 500);
        let mut r = Reassembly::start(&first, Vec::new(), Vec::new()).unwrap();
        let mut done = false;
        for &i in &order {
            let range = plan.range(i);
            let h = frag(2500, i, 3, range.len() as u32);
            done = r.add(&h, &msg[range]).unwrap();
        }
        assert!(done);
        assert_eq!(r.into_parts().0, msg);
    }

    #[test]
    fn refuses_inconsistent_fragments() {
        let first = frag(2500, 0, 3, 1000);
        let mut r = Reassembly::start(&first, Vec::new(), Vec::new()).unwrap();
        // Different fragment size.
        assert!(r.add(&frag(2500, 1, 3, 900), &[0; 900]).is_err());
        // Different message length.
        assert!(r.add(&frag(2600, 1, 3, 1000), &[0; 1000]).is_err());
        // Last fragment too long for the message.
        assert!(r.add(&frag(2500, 2, 3, 600), &[0; 600]).is_err());
        // Payload shorter than its header says.
        assert!(r.add(&frag(2500, 1, 3, 1000), &[0; 10]).is_err());
        assert_eq!(r.received(), 0);
        // Fragment counts that cannot describe the message.
        assert!(Reassembly::start(&frag(2500, 0, 2, 1000), Vec::new(), Vec::new()).is_err());
        assert!(Reassembly::start(&frag(2500, 2, 3, 499), Vec::new(), Vec::new()).is_err());
        assert!(Reassembly::start(&frag(2500, 0, 1, 2500), Vec::new(), Vec::new()).is_err());
    }

    #[test]
    fn last_fragment_alone_implies_the_chunk() {
        let r = Reassembly::start(&frag(2500, 2, 3, 500), Vec::new(), Vec::new()).unwrap();
        assert_eq!(r.chunk, 1000);
        // The rest (1999 bytes) does not split evenly over the two earlier fragments.
        assert!(Reassembly::start(&frag(2500, 2, 3, 501), Vec::new(), Vec::new()).is_err());
    }
}
