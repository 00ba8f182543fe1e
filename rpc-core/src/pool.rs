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
}
