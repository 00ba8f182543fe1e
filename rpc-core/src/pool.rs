//! A bounded free list of vectors, so that reassembly and reply-cache buffers are reused
//! instead of allocated per call. What it keeps is bounded in bytes and in count.

#[derive(Debug)]
pub(crate) struct Pool<T> {
    free: Vec<Vec<T>>,
    /// Bytes of capacity held by `free`.
    held: usize,
    max_bytes: usize,
    max_items: usize,
}

impl<T> Pool<T> {
    pub(crate) fn new(max_bytes: usize, max_items: usize) -> Self {
        Self {
            free: Vec::new(),
            held: 0,
            max_bytes,
            max_items,
        }
    }

    /// A cleared vector, from the free list when there is one.
    pub(crate) fn take(&mut self) -> Vec<T> {
        match self.free.pop() {
            Some(v) => {
                self.held -= v.capacity() * size_of::<T>();
                v
            }
            None => Vec::new(),
        }
    }

    /// A cleared vector for `need` items, from the free list when it holds one with room for
    /// them and at most twice that (or 64 items, for small needs): a small message never
    /// takes, and holds, the buffer of a large one, and alternating sizes find each their
    /// own. Otherwise a new vector (it grows when filled).
    pub(crate) fn take_fit(&mut self, need: usize) -> Vec<T> {
        let most = need.saturating_mul(2).max(64);
        match self
            .free
            .iter()
            .rposition(|v| v.capacity() >= need && v.capacity() <= most)
        {
            Some(i) => {
                let v = self.free.swap_remove(i);
                self.held -= v.capacity() * size_of::<T>();
                v
            }
            None => Vec::new(),
        }
    }

    /// Returns a vector to the free list, or frees it if the list is full.
    pub(crate) fn give(&mut self, mut v: Vec<T>) {
        let bytes = v.capacity() * size_of::<T>();
        if bytes == 0 || self.free.len() >= self.max_items || self.held + bytes > self.max_bytes {
            return;
        }
        v.clear();
        self.held += bytes;
        self.free.push(v);
    }

    /// Bytes of capacity held for reuse.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut p: Pool<u8> = Pool::new(100, 2);
        let mut v = p.take();
        v.extend_from_slice(&[1; 40]);
        let cap = v.capacity();
        let ptr = v.as_ptr();
        p.give(v);
        assert_eq!(p.held_bytes(), cap);
        let w = p.take();
        assert_eq!((w.as_ptr(), w.len()), (ptr, 0));
        assert_eq!(p.held_bytes(), 0);
        p.give(Vec::with_capacity(200)); // too big for the byte bound
        assert_eq!(p.held_bytes(), 0);
        p.give(Vec::with_capacity(10));
        p.give(Vec::with_capacity(10));
        p.give(Vec::with_capacity(10)); // over the item bound
        assert_eq!(p.held_bytes(), 20);
    }

    #[test]
    fn take_fit_picks_a_buffer_of_about_the_size_needed() {
        let mut p: Pool<u8> = Pool::new(1 << 20, 8);
        p.give(Vec::with_capacity(100));
        p.give(Vec::with_capacity(4096));
        // Too small for one, too big for the other: a new one.
        assert_eq!(p.take_fit(1000).capacity(), 0);
        let big = p.take_fit(3000);
        assert_eq!(big.capacity(), 4096);
        let small = p.take_fit(72);
        assert_eq!(small.capacity(), 100);
        assert_eq!(p.held_bytes(), 0);
        // A small need never takes a large buffer.
        p.give(big);
        assert_eq!(p.take_fit(10).capacity(), 0);
        assert_eq!(p.held_bytes(), 4096);
    }
}
