//! Who owns each receive buffer: this process, or the kernel.
//!
//! The buffers of the provided-buffer ring are ordinary `Vec<u8>`s. One lent to the kernel (its
//! address written into the ring) belongs to the kernel until a completion names its buffer id:
//! until then nothing may read it, write it, move its heap memory or free it. This table is
//! the only place such buffers live, and it gives one back only for a completion naming it.
//! It has no `unsafe`; `ring.rs` relies on it for the soundness of what it tells the kernel.

/// A buffer lent to the kernel: where it is, for the ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lent {
    pub(crate) bid: u16,
    pub(crate) addr: u64,
    pub(crate) len: u32,
}

/// The receive buffers, by buffer id.
#[derive(Debug)]
pub(crate) struct BufTable {
    /// `Some` while the kernel holds the buffer.
    lent: Vec<Option<Vec<u8>>>,
    /// How many buffers the kernel holds.
    count: usize,
    /// Every buffer lent is at least this long.
    buffer_len: usize,
}

impl BufTable {
    /// A table for `n` buffer ids (at most 2^15: buffer rings hold at most 32,768 entries).
    pub(crate) fn new(n: usize, buffer_len: usize) -> Self {
        assert!(n > 0 && n <= 1 << 15, "buffer ring size");
        assert!(u32::try_from(buffer_len).is_ok(), "buffer length");
        Self {
            lent: (0..n).map(|_| None).collect(),
            count: 0,
            buffer_len,
        }
    }

    /// Buffer ids.
    pub(crate) fn ids(&self) -> usize {
        self.lent.len()
    }

    /// Buffers the kernel holds.
    pub(crate) fn lent_count(&self) -> usize {
        self.count
    }

    /// Lends `buf` to the kernel as buffer `bid` (free until now); returns what the ring entry
    /// must say, or gives `buf` back if `bid` is out of range or still lent. A buffer shorter
    /// than the table's length is lengthened first (the kernel may fill the whole length).
    pub(crate) fn lend(&mut self, bid: u16, mut buf: Vec<u8>) -> Result<Lent, Vec<u8>> {
        let Some(slot) = self.lent.get_mut(usize::from(bid)) else {
            return Err(buf);
        };
        if slot.is_some() {
            return Err(buf);
        }
        if buf.len() < self.buffer_len {
            buf.resize(self.buffer_len, 0);
        }
        let lent = Lent {
            bid,
            addr: buf.as_mut_ptr() as u64,
            len: self.buffer_len as u32,
        };
        // Moving the `Vec` into the table moves its pointer, not its heap memory: the address
        // handed to the kernel stays valid while the table holds it.
        *slot = Some(buf);
        self.count += 1;
        Ok(lent)
    }

    /// Takes back buffer `bid`, which a completion says the kernel filled and returned; `None`
    /// if it is not lent (a completion this table cannot account for is ignored).
    pub(crate) fn reclaim(&mut self, bid: u16) -> Option<Vec<u8>> {
        let buf = self.lent.get_mut(usize::from(bid))?.take()?;
        self.count -= 1;
        Some(buf)
    }

    /// Takes back every buffer at once: only once the kernel can no longer use any (the
    /// buffer ring unregistered, or the ring closed with no request in flight).
    pub(crate) fn reclaim_all(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.count = 0;
        self.lent.iter_mut().filter_map(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_buffer_comes_back_only_for_its_own_id() {
        let mut t = BufTable::new(4, 64);
        let a = t.lend(1, vec![0; 10]).unwrap();
        assert_eq!((a.bid, a.len), (1, 64));
        assert_eq!(t.lent_count(), 1);
        // Lending an id still lent is refused, and the buffer comes back to the caller.
        let refused = t.lend(1, vec![7; 3]).unwrap_err();
        assert_eq!(refused, vec![7; 3]);
        // Out of range.
        assert!(t.lend(4, vec![0; 64]).is_err());
        assert!(t.reclaim(4).is_none());
        // Another id is not this one.
        assert!(t.reclaim(2).is_none());
        let back = t.reclaim(1).unwrap();
        assert_eq!(back.len(), 64, "lengthened to the table's length when lent");
        assert_eq!(
            back.as_ptr() as u64,
            a.addr,
            "the memory the kernel was told about"
        );
        assert!(t.reclaim(1).is_none(), "returned once");
        assert_eq!(t.lent_count(), 0);
    }

    #[test]
    fn reclaiming_everything_empties_the_table() {
        let mut t = BufTable::new(3, 8);
        for bid in 0..3 {
            t.lend(bid, Vec::new()).unwrap();
        }
        t.reclaim(1).unwrap();
        assert_eq!(t.reclaim_all().count(), 2);
        assert_eq!(t.lent_count(), 0);
        // Every id may be lent again.
        for bid in 0..3 {
            t.lend(bid, Vec::new()).unwrap();
        }
    }

    #[test]
    fn the_address_survives_the_table_growing_nothing() {
        // Lending many buffers never moves the ones lent before (each keeps its own heap
        // memory; the table's own storage is allocated once).
        let mut t = BufTable::new(64, 128);
        let addrs: Vec<u64> = (0..64)
            .map(|b| t.lend(b, vec![0; 128]).unwrap().addr)
            .collect();
        for (b, addr) in addrs.into_iter().enumerate() {
            let back = t.reclaim(b as u16).unwrap();
            assert_eq!(back.as_ptr() as u64, addr);
        }
    }
}
