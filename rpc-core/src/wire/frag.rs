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
        // Most messages fit one datagram: no division for them.
        let count = if message_len <= chunk {
            1
        } else {
            message_len.div_ceil(chunk)
        };
        Some(Self {
            message_len,
            chunk,
            count: u16::try_from(count).ok()?,
        })
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
        let start = (index as usize)
            .saturating_mul(self.chunk)
            .min(self.message_len);
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
/// Fragments are appended in the order they arrive, each at a stride of the fragment size, so
/// the memory and the work a reassembly costs follow the bytes actually received, never the
/// length a first fragment claims. When fragments arrive in order (the usual case on a LAN)
/// the buffer is the message as it stands; otherwise it is put in order once, at completion.
///
/// The buffer and the bitmap storage are handed in by the owner (from a pool) and handed back
/// by [`Reassembly::into_parts`].
#[derive(Debug)]
pub struct Reassembly {
    /// Received fragments, the `k`-th to arrive at `k * chunk`.
    buf: Vec<u8>,
    seen: Vec<u64>,
    /// Fragment index of each arrival, once fragments arrived out of order (empty before).
    arrival: Vec<u16>,
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
    /// `buf` and `seen` are cleared and reused; pass buffers from a pool to avoid allocating
    /// in steady state.
    pub fn start(
        first: &HeaderRepr,
        mut buf: Vec<u8>,
        mut seen: Vec<u64>,
    ) -> Result<Self, ReassemblyError> {
        let chunk = Self::infer_chunk(first).ok_or(ReassemblyError::Inconsistent)?;
        buf.clear();
        seen.clear();
        // One bit per fragment: at most 8 KiB, whatever the message claims.
        seen.resize(usize::from(first.frag_count).div_ceil(64), 0);
        Ok(Self {
            buf,
            seen,
            arrival: Vec::new(),
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
        let seen = self
            .seen
            .get_mut(word)
            .ok_or(ReassemblyError::Inconsistent)?;
        if *seen & bit != 0 {
            return Ok(self.is_complete());
        }
        *seen |= bit;
        let k = self.received;
        if self.arrival.is_empty() && h.frag_index != k {
            // The first fragment out of order: from now on, remember where each one went.
            self.arrival.extend(0..k);
        }
        if !self.arrival.is_empty() {
            self.arrival.push(h.frag_index);
        }
        self.buf.extend_from_slice(payload);
        // Keep the stride: a short last fragment that arrives early is padded.
        let stride = (usize::from(k) + 1) * self.chunk as usize;
        if self.buf.len() < stride && usize::from(k) + 1 < usize::from(self.count) {
            self.buf.resize(stride, 0);
        }
        self.received += 1;
        Ok(self.is_complete())
    }

    /// Whether every fragment has arrived.
    pub fn is_complete(&self) -> bool {
        self.received == self.count
    }

    /// Whether fragment `index` has arrived.
    pub fn has(&self, index: u16) -> bool {
        let index = usize::from(index);
        self.seen
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Length of the whole message.
    pub fn message_len(&self) -> usize {
        self.message_len as usize
    }

    /// Number of fragments received so far.
    pub fn received(&self) -> u16 {
        self.received
    }

    /// Gives back the buffer and the bitmap storage. Once the reassembly is complete, the
    /// buffer is the message, in order.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u64>) {
        if !self.is_complete() || self.arrival.is_empty() {
            let mut buf = self.buf;
            if self.received == self.count {
                buf.truncate(self.message_len as usize);
            }
            return (buf, self.seen);
        }
        // Out of order: fragment `arrival[k]` sits at `k * chunk`. Put them in order.
        let chunk = self.chunk as usize;
        let mut position = vec![0usize; usize::from(self.count)];
        for (k, &index) in self.arrival.iter().enumerate() {
            position[usize::from(index)] = k;
        }
        let mut out = Vec::with_capacity(self.message_len as usize);
        for (index, &k) in position.iter().enumerate() {
            let len = if index + 1 == position.len() {
                self.message_len as usize - index * chunk
            } else {
                chunk
            };
            out.extend_from_slice(&self.buf[k * chunk..k * chunk + len]);
        }
        (out, self.seen)
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
    fn memory_follows_bytes_received_not_bytes_claimed() {
        // A first fragment claiming a 60,000-fragment message costs its own bytes, not the
        // claim.
        let claim = frag(60_000 * 1000, 59_999, 60_000, 1000);
        let mut r = Reassembly::start(&claim, Vec::new(), Vec::new()).unwrap();
        assert!(!r.add(&claim, &[1; 1000]).unwrap());
        assert!(r.buf.capacity() < 64 << 10, "{}", r.buf.capacity());
    }

    #[test]
    fn reassembles_every_arrival_order() {
        let msg: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
        let plan = FragmentPlan::new(msg.len(), HEADER_LEN + 1000).unwrap();
        let orders: [&[u16]; 5] = [
            &[0, 1, 2, 3, 4],
            &[4, 3, 2, 1, 0],
            &[4, 0, 1, 2, 3],
            &[1, 0, 3, 4, 2],
            &[0, 4, 1, 3, 2],
        ];
        for order in orders {
            let first = frag(4500, order[0], 5, plan.range(order[0]).len() as u32);
            let mut r = Reassembly::start(&first, Vec::new(), Vec::new()).unwrap();
            for &i in order {
                let range = plan.range(i);
                r.add(&frag(4500, i, 5, range.len() as u32), &msg[range])
                    .unwrap();
            }
            assert!(r.is_complete());
            assert_eq!(r.into_parts().0, msg, "order {order:?}");
        }
    }

    #[test]
    fn last_fragment_alone_implies_the_chunk() {
        let r = Reassembly::start(&frag(2500, 2, 3, 500), Vec::new(), Vec::new()).unwrap();
        assert_eq!(r.chunk, 1000);
        // The rest (1999 bytes) does not split evenly over the two earlier fragments.
        assert!(Reassembly::start(&frag(2500, 2, 3, 501), Vec::new(), Vec::new()).is_err());
    }
}
