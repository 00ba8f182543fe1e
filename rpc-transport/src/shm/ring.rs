//! A single-producer, single-consumer ring of datagrams in shared words, whose other side is
//! not trusted.
//!
//! Layout, in 8-byte words from the ring's base (each control word on its own cache line):
//!
//! | words | what | written by |
//! |---|---|---|
//! | 0 | `head`: datagrams consumed so far | consumer |
//! | 8 | `sleeping`: the consumer is about to wait, wake it | consumer |
//! | 16.. | `ring_len` descriptors of 16 words (two cache lines): word 0 `lap << 32 \| same << 23 \| len`, the commit of the datagram in slot `i`; words 1..16 its first 120 stored bytes | producer |
//! | then | `ring_len` slots of `slot_words` words: the datagrams' stored bytes from the 121st on, little-endian | producer |
//!
//! Datagram `n` lives in descriptor and slot `n % ring_len`. The producer writes its bytes (the
//! first 120 stored into the descriptor, the rest into the slot), then the descriptor's commit
//! word with release ordering (the length last: the commit). The consumer reads the commit word
//! of descriptor `head` with acquire ordering: the lap `n / ring_len + 1` says it holds
//! datagram `n`; the lap before says nothing was committed there yet; any other lap, or an
//! impossible length or mask, is the peer breaking the ring. It copies the bytes out, and only
//! then publishes `head = n + 1`, freeing the slot. The producer keeps its own count privately
//! and caches the consumer's `head`, reading it again only when the cache says full.
//!
//! **Prefix elision.** A datagram of at least [`PREFIX_WORDS`] words begins with a protocol
//! header, most of whose words (client, session, method, lengths) repeat from one datagram to
//! the next. Each side keeps the prefix of the last such datagram on the ring (its template;
//! zeros at first). The producer stores only the prefix words that differ from its template,
//! and sets bit `k` of `same` (9 bits) for each word `k` it left out; the consumer takes those
//! words from its own template. The ring is ordered and loses nothing, and both sides update
//! their template from exactly the same datagrams (those whose committed length reaches the
//! prefix), so the two templates agree. A null call's request or reply (a sequence number, an
//! acknowledgement and a Lamport stamp change) then stores three or four words: with the
//! commit word, one cache line crosses each way, the line the consumer polls; no index line
//! and no arena line is read on the way.
//!
//! Nothing read from the other side is trusted: a `head` that goes backwards or runs more than
//! a ring ahead, a descriptor of the wrong lap, an impossible length, or a `same` mask on a
//! datagram shorter than the prefix is [`RingError::Corrupt`] (the link then drops the
//! connection); bytes changed while being copied are only bytes, checked later by the wire
//! views like any datagram. A lying mask only fills a datagram with this side's own template
//! words, which came from the same peer's earlier datagrams on this ring: a peer can garble
//! only what it sends itself. No operation waits for the other side: full and empty are
//! answers, so a peer cannot make this side hang.
//!
//! Waking: a consumer about to wait sets `sleeping` and looks at descriptor `head` once more;
//! a producer that has committed reads `sleeping` and, if set, rings the consumer's doorbell
//! (an eventfd, outside this module). Each side puts a sequentially consistent fence between
//! its store and its load (the producer's commit, then `sleeping`; the consumer's `sleeping`,
//! then the commit word), so either the consumer sees the datagram on its second look or the
//! producer sees it sleeping. While the consumer spins, the producer skips the doorbell.
//!
//! Handing lines over: a push the caller marks [`Handover::Demote`] (a datagram the other
//! side waits for, alone) hints the CPU after its fence, once its stores are complete
//! ([`Words::demote`]: x86's `CLDEMOTE` on a mapping, nothing under loom or Miri or
//! elsewhere), to move the lines it wrote, which it touches next a lap later, out of its
//! core's private caches to the shared cache, where the consumer's next read finds them sooner
//! than by asking this core for them. A hint changes no value and no ordering: nothing above
//! depends on it.
//!
//! The ring is written over [`Words`], so that loom can check it with its own atomics
//! (`cfg(loom)`), Miri with heap words, and production runs it on a shared mapping.

use std::sync::atomic::Ordering;

/// Shared words, as the ring sees them: a slice of atomics, in production a mapping.
pub(crate) trait Words {
    /// Loads word `i` (0 if out of range: the ring's own layout never is).
    fn load(&self, i: usize, order: Ordering) -> u64;
    /// Stores word `i` (nothing if out of range).
    fn store(&self, i: usize, value: u64, order: Ordering);
    /// A sequentially consistent fence (of this kind of atomics).
    fn fence(&self);
    /// A hint, which changes no value and no ordering: words `first..first + count` were
    /// written for the other side and this side will not touch them again soon, so their
    /// cache lines may move to where the other side's next read finds them soonest.
    fn demote(&self, _first: usize, _count: usize) {}
}

impl Words for [std::sync::atomic::AtomicU64] {
    #[inline]
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.get(i).map_or(0, |w| w.load(order))
    }
    #[inline]
    fn store(&self, i: usize, value: u64, order: Ordering) {
        if let Some(w) = self.get(i) {
            w.store(value, order);
        }
    }
    #[inline]
    fn fence(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    #[inline]
    fn demote(&self, first: usize, count: usize) {
        if let Some(words) = self.get(first..first.saturating_add(count)) {
            super::region::demote(words);
        }
    }
}

#[cfg(loom)]
impl Words for [loom::sync::atomic::AtomicU64] {
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.get(i).map_or(0, |w| w.load(order))
    }
    fn store(&self, i: usize, value: u64, order: Ordering) {
        if let Some(w) = self.get(i) {
            w.store(value, order);
        }
    }
    fn fence(&self) {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
}

const HEAD: usize = 0;
const SLEEPING: usize = 8;
const DESCRIPTORS: usize = 16;
/// Words of a descriptor (two cache lines): its commit word, then the datagram's first 120
/// bytes, so that a small call's request or reply (a 72-byte header and a short body) lies in
/// its descriptor whole and the consumer reads no arena line for it.
const DESCRIPTOR_WORDS: usize = 16;
/// Words of a datagram held in its descriptor.
const INLINE_WORDS: usize = DESCRIPTOR_WORDS - 1;
/// Words at the start of a datagram that are stored only where they differ from the last
/// datagram's (see the module's documentation): a protocol header's.
pub(crate) const PREFIX_WORDS: usize = rpc_core::wire::HEADER_LEN / 8;
/// Bytes of such a prefix.
const PREFIX_BYTES: usize = PREFIX_WORDS * 8;
/// The commit word's fields below the lap: the `same` mask, then the length.
const SAME_SHIFT: u32 = 23;
const LEN_MASK: u64 = (1 << SAME_SHIFT) - 1;
/// The longest datagram a commit word can describe.
pub(crate) const MAX_DATAGRAM: usize = LEN_MASK as usize;

// The mask has a bit for each prefix word, and no other.
const _: () = assert!(PREFIX_WORDS as u32 == 32 - SAME_SHIFT);

/// Why a ring operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingError {
    /// No room: the consumer has not caught up.
    Full,
    /// The datagram is larger than a slot.
    TooLarge,
    /// The other side broke the ring's rules.
    Corrupt,
}

/// Where a ring lies, and its shape: this process's own copy, never read from the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// First word.
    pub(crate) base: usize,
    /// Descriptors and slots: a power of two.
    pub(crate) ring_len: usize,
    /// Words per slot.
    pub(crate) slot_words: usize,
    /// `log2(ring_len)`: a datagram's lap is its number shifted right by it (a division by
    /// a length known only at run time costs a spinning poll tens of cycles).
    lap_shift: u32,
}

impl Layout {
    /// A ring of `ring_len` (a power of two) slots of at least `slot_bytes` bytes at `base`.
    pub(crate) fn new(base: usize, ring_len: usize, slot_bytes: usize) -> Self {
        Self {
            base,
            ring_len,
            slot_words: slot_bytes.div_ceil(8),
            lap_shift: ring_len.trailing_zeros(),
        }
    }

    /// Words the ring occupies.
    pub(crate) fn words(&self) -> usize {
        self.slots() - self.base + self.ring_len * self.slot_words
    }

    /// The largest datagram the ring carries.
    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_words * 8
    }

    fn slots(&self) -> usize {
        self.base + DESCRIPTORS + self.ring_len * DESCRIPTOR_WORDS
    }

    fn slot(&self, n: u64) -> usize {
        self.slots() + (n as usize & (self.ring_len - 1)) * self.slot_words
    }

    fn descriptor(&self, n: u64) -> usize {
        self.base + DESCRIPTORS + (n as usize & (self.ring_len - 1)) * DESCRIPTOR_WORDS
    }

    /// `n / ring_len + 1`, in 32 bits (the ring's length is a power of two: see `fits`).
    fn lap(&self, n: u64) -> u64 {
        ((n >> self.lap_shift) + 1) & 0xffff_ffff
    }

    /// The lap a descriptor shows before datagram `n` is committed into it.
    fn lap_before(&self, n: u64) -> u64 {
        self.lap(n).wrapping_sub(1) & 0xffff_ffff
    }

    /// Whether the ring fits in `words` words (and its slots in what a commit word says).
    pub(crate) fn fits(&self, words: usize) -> bool {
        self.ring_len.is_power_of_two()
            && self.slot_bytes() <= MAX_DATAGRAM
            && self.base + self.words() <= words
    }
}

/// Whether a datagram may wait in the ring at `layout`, from the shared words alone: the
/// descriptor at the consumer's own published `head`. For a poll that would find nothing,
/// without taking the consumer's state; a lying producer only makes the caller look with
/// [`Consumer::pop`], which checks everything.
pub(crate) fn waiting(w: &(impl Words + ?Sized), layout: &Layout) -> bool {
    let head = w.load(layout.base + HEAD, Ordering::Relaxed);
    w.load(layout.descriptor(head), Ordering::Relaxed) >> 32 != layout.lap_before(head)
}

/// The producing side's private state.
#[derive(Debug)]
pub(crate) struct Producer {
    layout: Layout,
    tail: u64,
    cached_head: u64,
    /// The prefix of the last datagram that had one.
    template: [u64; PREFIX_WORDS],
}

/// What a push does with the cache lines it wrote, once they are complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Leaves them where they are: the consumer's read fetches them from this core. Right
    /// while the consumer is busy, with datagrams of its own or earlier ones of this ring
    /// (demoting then costs: 4-6% fewer calls/s with 64 in flight).
    Keep,
    /// Demotes them to the shared cache ([`Words::demote`]), where the consumer's next read
    /// finds them sooner: for a datagram the consumer waits for, idle, and nothing after it
    /// (a null call 6-9 ns sooner, a 1 KiB echo 10-15%; a bulk transfer's back-to-back
    /// datagrams are slowed by it, 30-50%).
    Demote,
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The consumer is waiting: ring its doorbell.
    pub(crate) wake: bool,
}

impl Producer {
    pub(crate) fn new(layout: Layout) -> Self {
        Self {
            layout,
            tail: 0,
            cached_head: 0,
            template: [0; PREFIX_WORDS],
        }
    }

    /// Whether there is room for one more datagram (reading the consumer's index if the
    /// cache says none).
    pub(crate) fn has_room(&mut self, w: &(impl Words + ?Sized)) -> Result<bool, RingError> {
        let len = self.layout.ring_len as u64;
        if self.tail - self.cached_head < len {
            return Ok(true);
        }
        let head = w.load(self.layout.base + HEAD, Ordering::Acquire);
        if head > self.tail || self.tail - head > len {
            return Err(RingError::Corrupt);
        }
        self.cached_head = head;
        Ok(self.tail - head < len)
    }

    /// Publishes one datagram gathered from `parts`.
    pub(crate) fn push<'p>(
        &mut self,
        w: &(impl Words + ?Sized),
        parts: impl Iterator<Item = &'p [u8]> + Clone,
    ) -> Result<Pushed, RingError> {
        self.push_as(w, parts, Handover::Keep)
    }

    /// Publishes one datagram gathered from `parts`, handing its lines over as `handover`
    /// says.
    pub(crate) fn push_as<'p>(
        &mut self,
        w: &(impl Words + ?Sized),
        parts: impl Iterator<Item = &'p [u8]> + Clone,
        handover: Handover,
    ) -> Result<Pushed, RingError> {
        let len: usize = parts.clone().map(<[u8]>::len).sum();
        if len > self.layout.slot_bytes() {
            return Err(RingError::TooLarge);
        }
        if !self.has_room(w)? {
            return Err(RingError::Full);
        }
        let n = self.tail;
        let d = self.layout.descriptor(n);
        let (inline, rest) = (d + 1, self.layout.slot(n));
        let mut same = 0u64;
        // Words stored: those of the prefix that differ from the template, then the rest.
        let stored = if len >= PREFIX_BYTES {
            // The prefix is read where it lies when the first part holds it (a header does),
            // else gathered.
            let mut gathered = [0u8; PREFIX_BYTES];
            let prefix = match parts.clone().next() {
                Some(first) if first.len() >= PREFIX_BYTES => &first[..PREFIX_BYTES],
                _ => {
                    let mut filled = 0;
                    for part in parts.clone() {
                        let take = part.len().min(PREFIX_BYTES - filled);
                        gathered[filled..filled + take].copy_from_slice(&part[..take]);
                        filled += take;
                        if filled == PREFIX_BYTES {
                            break;
                        }
                    }
                    &gathered[..]
                }
            };
            let mut k = 0;
            for (i, c) in prefix.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                if v == self.template[i] {
                    same |= 1 << i;
                } else {
                    self.template[i] = v;
                    w.store(word_at(inline, rest, k), v, Ordering::Relaxed);
                    k += 1;
                }
            }
            write_bytes(w, inline, rest, k, after(parts, PREFIX_BYTES));
            k + (len - PREFIX_BYTES).div_ceil(8)
        } else {
            write_bytes(w, inline, rest, 0, parts);
            len.div_ceil(8)
        };
        // The commit: the length, with its lap and mask, last, with release ordering.
        let commit = self.layout.lap(n) << 32 | same << SAME_SHIFT | len as u64;
        w.store(d, commit, Ordering::Release);
        self.tail = n + 1;
        // Dekker with the consumer's `sleep`: the commit and the `sleeping` load are separated
        // by a full fence on this side, the `sleeping` store and the commit word's load by one
        // on that side, so at least one of the two loads sees the other side's store.
        w.fence();
        if handover == Handover::Demote {
            // The stores are complete (the fence waited for them): the lines they wrote, which
            // this side touches next a lap from now, are sent towards the consumer, which then
            // reads them from the shared cache instead of from this core's.
            w.demote(d, 1 + stored.min(INLINE_WORDS));
            if stored > INLINE_WORDS {
                w.demote(rest, stored - INLINE_WORDS);
            }
        }
        Ok(Pushed {
            wake: w.load(self.layout.base + SLEEPING, Ordering::Relaxed) != 0,
        })
    }
}

/// The consuming side's private state.
#[derive(Debug)]
pub(crate) struct Consumer {
    layout: Layout,
    head: u64,
    /// The prefix of the last datagram that had one.
    template: [u64; PREFIX_WORDS],
}

impl Consumer {
    pub(crate) fn new(layout: Layout) -> Self {
        Self {
            layout,
            head: 0,
            template: [0; PREFIX_WORDS],
        }
    }

    /// Takes the next datagram into `out` (at least a slot long); its length, or `None` if
    /// there is none.
    pub(crate) fn pop(
        &mut self,
        w: &(impl Words + ?Sized),
        out: &mut [u8],
    ) -> Result<Option<usize>, RingError> {
        let n = self.head;
        let at = self.layout.descriptor(n);
        let d = w.load(at, Ordering::Acquire);
        if d >> 32 != self.layout.lap(n) {
            return if d >> 32 == self.layout.lap_before(n) {
                Ok(None)
            } else {
                Err(RingError::Corrupt)
            };
        }
        let len = (d & LEN_MASK) as usize;
        let same = (d & 0xffff_ffff) >> SAME_SHIFT;
        if len > self.layout.slot_bytes() || len > out.len() || (same != 0 && len < PREFIX_BYTES) {
            return Err(RingError::Corrupt);
        }
        let (inline, rest) = (at + 1, self.layout.slot(n));
        let out = &mut out[..len];
        if len >= PREFIX_BYTES {
            let (prefix, tail) = out.split_at_mut(PREFIX_BYTES);
            let mut k = 0;
            for (i, c) in prefix.chunks_exact_mut(8).enumerate() {
                if same >> i & 1 == 0 {
                    self.template[i] = w.load(word_at(inline, rest, k), Ordering::Relaxed);
                    k += 1;
                }
                c.copy_from_slice(&self.template[i].to_le_bytes());
            }
            read_bytes(w, inline, rest, k, tail);
        } else {
            read_bytes(w, inline, rest, 0, out);
        }
        self.head = n + 1;
        w.store(self.layout.base + HEAD, self.head, Ordering::Release);
        Ok(Some(len))
    }

    /// Says this side is about to wait; returns whether a datagram came meanwhile (then it
    /// must not wait; so too if the descriptor is one `pop` refuses).
    pub(crate) fn sleep(&mut self, w: &(impl Words + ?Sized)) -> bool {
        w.store(self.layout.base + SLEEPING, 1, Ordering::Relaxed);
        w.fence();
        let d = w.load(self.layout.descriptor(self.head), Ordering::Acquire);
        d >> 32 != self.layout.lap_before(self.head)
    }

    /// Says this side waits no more.
    pub(crate) fn wake(&mut self, w: &(impl Words + ?Sized)) {
        w.store(self.layout.base + SLEEPING, 0, Ordering::Relaxed);
    }
}

/// Word `k` of a datagram: in its descriptor from word `inline` on, then in its slot at `rest`.
fn word_at(inline: usize, rest: usize, k: usize) -> usize {
    if k < INLINE_WORDS {
        inline + k
    } else {
        rest + (k - INLINE_WORDS)
    }
}

/// The bytes of `parts` from byte `skip` on.
fn after<'p>(
    parts: impl Iterator<Item = &'p [u8]>,
    mut skip: usize,
) -> impl Iterator<Item = &'p [u8]> {
    parts.map(move |p| {
        let k = skip.min(p.len());
        skip -= k;
        &p[k..]
    })
}

/// Writes `parts`, back to back, as a datagram's stored words from the `k`th on
/// (little-endian bytes): the first `INLINE_WORDS` stored words from word `inline` on, the
/// rest from word `rest` on.
fn write_bytes<'p>(
    w: &(impl Words + ?Sized),
    inline: usize,
    rest: usize,
    mut k: usize,
    parts: impl Iterator<Item = &'p [u8]>,
) {
    let mut word = [0u8; 8];
    let mut fill = 0;
    for part in parts {
        let mut bytes = part;
        while !bytes.is_empty() {
            if fill == 0 && bytes.len() >= 8 {
                // Whole words straight from the part.
                let (chunks, tail) = bytes.split_at(bytes.len() & !7);
                for c in chunks.chunks_exact(8) {
                    let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                    w.store(word_at(inline, rest, k), v, Ordering::Relaxed);
                    k += 1;
                }
                bytes = tail;
                continue;
            }
            let take = (8 - fill).min(bytes.len());
            word[fill..fill + take].copy_from_slice(&bytes[..take]);
            fill += take;
            bytes = &bytes[take..];
            if fill == 8 {
                w.store(
                    word_at(inline, rest, k),
                    u64::from_le_bytes(word),
                    Ordering::Relaxed,
                );
                k += 1;
                fill = 0;
            }
        }
    }
    if fill > 0 {
        word[fill..].fill(0);
        w.store(
            word_at(inline, rest, k),
            u64::from_le_bytes(word),
            Ordering::Relaxed,
        );
    }
}

/// Reads `out.len()` bytes of a datagram's stored words from the `k`th on, laid out as
/// [`write_bytes`] writes them.
fn read_bytes(w: &(impl Words + ?Sized), inline: usize, rest: usize, mut k: usize, out: &mut [u8]) {
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(
            &w.load(word_at(inline, rest, k), Ordering::Relaxed)
                .to_le_bytes(),
        );
        k += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let v = w
            .load(word_at(inline, rest, k), Ordering::Relaxed)
            .to_le_bytes();
        tail.copy_from_slice(&v[..tail.len()]);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn words(n: usize) -> Box<[AtomicU64]> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    fn push(p: &mut Producer, w: &[AtomicU64], parts: &[&[u8]]) -> Result<Pushed, RingError> {
        p.push(w, parts.iter().copied())
    }

    fn ring(len: usize, slot: usize) -> (Box<[AtomicU64]>, Producer, Consumer) {
        let layout = Layout::new(8, len, slot);
        let w = words(8 + layout.words());
        assert!(layout.fits(w.len()));
        (w, Producer::new(layout), Consumer::new(layout))
    }

    #[test]
    fn a_datagram_whose_lines_are_demoted_comes_out_as_it_went_in() {
        let (w, mut p, mut c) = ring(4, 400);
        let mut out = vec![0u8; 400];
        for len in [0usize, 7, 72, 119, 200, 400] {
            let d: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            p.push_as(&*w, [&d[..]].into_iter(), Handover::Demote)
                .unwrap();
            assert_eq!(c.pop(&*w, &mut out).unwrap(), Some(len));
            assert_eq!(&out[..len], &d[..]);
        }
    }

    #[test]
    fn datagrams_come_out_as_they_went_in_across_laps() {
        let (w, mut p, mut c) = ring(4, 100);
        let mut out = vec![0u8; 104];
        for n in 0..50u32 {
            let body: Vec<u8> = (0..(n % 97) as u8).collect();
            let head = n.to_le_bytes();
            push(&mut p, &w, &[&head, &body, b"x"]).unwrap();
            let len = c.pop(&*w, &mut out).unwrap().unwrap();
            assert_eq!(&out[..4], &head);
            assert_eq!(&out[4..len - 1], &body[..]);
            assert_eq!(out[len - 1], b'x');
            assert_eq!(c.pop(&*w, &mut out).unwrap(), None);
        }
    }

    #[test]
    fn datagrams_of_every_length_cross_the_descriptor_and_the_slot_whole() {
        let (w, mut p, mut c) = ring(4, 200);
        let mut out = vec![0u8; 200];
        for len in 0..=200usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            // Gathered from three parts of uneven lengths, as a header and its arguments are.
            let (a, rest) = bytes.split_at(len.min(5));
            let (b, d) = rest.split_at(rest.len() / 2);
            push(&mut p, &w, &[a, b, d]).unwrap();
            assert_eq!(c.pop(&*w, &mut out), Ok(Some(len)), "{len}");
            assert_eq!(&out[..len], &bytes[..], "{len}");
        }
    }

    #[test]
    fn waiting_says_whether_a_pop_would_find_a_datagram() {
        let (w, mut p, mut c) = ring(4, 16);
        let layout = Layout::new(8, 4, 16);
        let mut out = [0u8; 16];
        assert!(!waiting(&*w, &layout));
        push(&mut p, &w, &[b"one"]).unwrap();
        push(&mut p, &w, &[b"two"]).unwrap();
        assert!(waiting(&*w, &layout));
        assert_eq!(c.pop(&*w, &mut out), Ok(Some(3)));
        assert!(waiting(&*w, &layout));
        assert_eq!(c.pop(&*w, &mut out), Ok(Some(3)));
        assert!(!waiting(&*w, &layout));
        assert_eq!(c.pop(&*w, &mut out), Ok(None));
    }

    #[test]
    fn a_full_ring_says_so_and_frees_as_the_consumer_goes() {
        let (w, mut p, mut c) = ring(4, 16);
        let mut out = vec![0u8; 16];
        for i in 0..4u8 {
            push(&mut p, &w, &[&[i; 3]]).unwrap();
        }
        assert_eq!(push(&mut p, &w, &[b"no"]), Err(RingError::Full));
        assert_eq!(push(&mut p, &w, &[&[0; 17]]), Err(RingError::TooLarge));
        assert_eq!(c.pop(&*w, &mut out).unwrap(), Some(3));
        assert_eq!(&out[..3], &[0; 3]);
        push(&mut p, &w, &[b"yes"]).unwrap();
        for i in 1..4u8 {
            assert_eq!(c.pop(&*w, &mut out).unwrap(), Some(3));
            assert_eq!(&out[..3], &[i; 3]);
        }
        assert_eq!(c.pop(&*w, &mut out).unwrap(), Some(3));
        assert_eq!(&out[..3], b"yes");
    }

    #[test]
    fn a_header_that_repeats_crosses_as_the_words_that_changed() {
        let (w, mut p, mut c) = ring(4, 200);
        let mut out = vec![0u8; 200];
        let header = |seq: u64| -> Vec<u8> {
            let mut h: Vec<u8> = (0..PREFIX_BYTES as u8).collect();
            h[32..40].copy_from_slice(&seq.to_le_bytes());
            h
        };
        for seq in 0..12u64 {
            let (h, body) = (header(seq), vec![seq as u8; (seq as usize * 5) % 40]);
            if seq % 2 == 0 {
                // The header split across parts, as a gather list may split it.
                push(&mut p, &w, &[&h[..20], &h[20..], &body]).unwrap();
            } else {
                // The header and more in the first part (the prefix is read in place).
                let whole = [&h[..], &body[..]].concat();
                push(&mut p, &w, &[&whole]).unwrap();
            }
            let commit =
                w[8 + DESCRIPTORS + (seq as usize % 4) * DESCRIPTOR_WORDS].load(Ordering::Relaxed);
            let same = (commit & 0xffff_ffff) >> SAME_SHIFT;
            // Only word 4 (the sequence number) changes after the first.
            if seq > 0 {
                assert_eq!(same, 0x1ff & !(1 << 4), "datagram {seq}");
            }
            let len = c.pop(&*w, &mut out).unwrap().unwrap();
            assert_eq!(&out[..PREFIX_BYTES], &h[..]);
            assert_eq!(&out[PREFIX_BYTES..len], &body[..]);
        }
        // A short datagram in between neither uses nor changes the templates.
        push(&mut p, &w, &[b"short"]).unwrap();
        assert_eq!(c.pop(&*w, &mut out), Ok(Some(5)));
        let h = header(99);
        push(&mut p, &w, &[&h]).unwrap();
        assert_eq!(c.pop(&*w, &mut out), Ok(Some(PREFIX_BYTES)));
        assert_eq!(&out[..PREFIX_BYTES], &h[..]);
    }

    #[test]
    fn an_impossible_mask_is_caught() {
        let layout = Layout::new(0, 4, 200);
        let w = words(layout.words());
        let mut out = vec![0u8; 200];
        // Elided words in a datagram too short to have them.
        w.store(
            DESCRIPTORS,
            1 << 32 | 1 << SAME_SHIFT | 20,
            Ordering::Relaxed,
        );
        assert_eq!(
            Consumer::new(layout).pop(&*w, &mut out),
            Err(RingError::Corrupt)
        );
        // Any mask of the prefix on a long enough datagram is only bytes.
        w.store(
            DESCRIPTORS,
            1 << 32 | 0x1ff << SAME_SHIFT | 100,
            Ordering::Relaxed,
        );
        assert_eq!(Consumer::new(layout).pop(&*w, &mut out), Ok(Some(100)));
    }

    #[test]
    fn a_lying_peer_is_caught_not_believed() {
        let layout = Layout::new(0, 4, 16);
        let w = words(layout.words());
        let mut c = Consumer::new(layout);
        let mut out = vec![0u8; 16];
        // A descriptor of a lap that is neither the one expected nor the one before.
        w.store(DESCRIPTORS, 5 << 32 | 3, Ordering::Relaxed);
        assert_eq!(c.pop(&*w, &mut out), Err(RingError::Corrupt));
        // A descriptor of the right lap but an impossible length.
        let mut c = Consumer::new(layout);
        w.store(DESCRIPTORS, 1 << 32 | 4096, Ordering::Relaxed);
        assert_eq!(c.pop(&*w, &mut out), Err(RingError::Corrupt));
        // A lying head, published where the consumer keeps its own: its polls only look.
        let mut c = Consumer::new(layout);
        w.store(DESCRIPTORS, 0, Ordering::Relaxed);
        w.store(HEAD, 3, Ordering::Relaxed);
        assert!(!waiting(&*w, &layout));
        assert_eq!(c.pop(&*w, &mut out), Ok(None));
        // A head that goes backwards, seen by the producer.
        let mut p = Producer::new(layout);
        for _ in 0..4 {
            push(&mut p, &w, &[b"a"]).unwrap();
        }
        w.store(HEAD, 7, Ordering::Relaxed);
        assert_eq!(push(&mut p, &w, &[b"a"]), Err(RingError::Corrupt));
    }

    #[test]
    fn the_doorbell_is_rung_only_for_a_sleeper() {
        let (w, mut p, mut c) = ring(8, 8);
        assert!(!push(&mut p, &w, &[b"1"]).unwrap().wake);
        let mut out = [0u8; 8];
        c.pop(&*w, &mut out).unwrap();
        assert!(!c.sleep(&*w), "nothing came");
        assert!(push(&mut p, &w, &[b"2"]).unwrap().wake);
        c.wake(&*w);
        assert!(!push(&mut p, &w, &[b"3"]).unwrap().wake);
        assert!(c.sleep(&*w), "two came: do not wait");
    }

    #[test]
    fn a_producer_and_a_consumer_on_two_threads() {
        // Under Miri, a check that every access to the shared words is free of data races.
        let layout = Layout::new(0, 8, 24);
        let w: std::sync::Arc<Box<[AtomicU64]>> = std::sync::Arc::new(words(layout.words()));
        let n = if cfg!(miri) { 50u32 } else { 20_000 };
        let producer = {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut p = Producer::new(layout);
                let mut i = 0u32;
                while i < n {
                    let bytes = i.to_le_bytes();
                    match push(&mut p, &w, &[&bytes, &bytes[..(i % 4) as usize]]) {
                        Ok(_) => i += 1,
                        Err(RingError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        };
        let mut c = Consumer::new(layout);
        let mut out = [0u8; 24];
        let mut next = 0u32;
        while next < n {
            match c.pop(&**w, &mut out).unwrap() {
                Some(len) => {
                    assert_eq!(len, 4 + (next % 4) as usize);
                    assert_eq!(&out[..4], &next.to_le_bytes());
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
    }

    #[test]
    fn garbage_anywhere_never_panics() {
        // Every word the peer controls set to arbitrary values, repeatedly.
        let layout = Layout::new(0, 8, 64);
        let w = words(layout.words());
        let mut out = vec![0u8; 64];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..if cfg!(miri) { 200 } else { 10_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % w.len() as u64) as usize;
            w.store(i, x.rotate_left(7) % 20, Ordering::Relaxed);
            let mut c = Consumer::new(layout);
            for _ in 0..3 {
                let _ = c.pop(&*w, &mut out);
            }
            let mut p = Producer::new(layout);
            let _ = push(&mut p, &w, &[b"abc"]);
        }
    }
}

#[cfg(loom)]
mod loom_tests {
    //! Every interleaving of a producer, a consumer and the wake-up, for small rings:
    //! `RUSTFLAGS="--cfg loom" cargo test -p rpc-transport --lib --release shm::ring`.
    use super::*;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::{Arc, Condvar, Mutex};

    fn words(n: usize) -> Arc<Box<[AtomicU64]>> {
        Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    /// An eventfd: a counter and a condition variable.
    #[derive(Default)]
    struct Doorbell {
        rung: Mutex<u64>,
        cv: Condvar,
    }

    impl Doorbell {
        fn ring(&self) {
            *self.rung.lock().unwrap() += 1;
            self.cv.notify_one();
        }
        fn wait(&self) {
            let mut rung = self.rung.lock().unwrap();
            while *rung == 0 {
                rung = self.cv.wait(rung).unwrap();
            }
            *rung = 0;
        }
    }

    #[test]
    fn every_datagram_arrives_once_in_order_and_no_wake_up_is_lost() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            // Datagrams of a prefix and a byte: the prefix's first word changes, the others
            // repeat and are elided, so the templates are checked in every interleaving too.
            let layout = Layout::new(0, 4, PREFIX_BYTES + 8);
            let w = words(layout.words());
            let bell = Arc::new(Doorbell::default());
            let producer = {
                let (w, bell) = (w.clone(), bell.clone());
                loom::thread::spawn(move || {
                    let mut p = Producer::new(layout);
                    for n in 0..3u8 {
                        let mut prefix = [0u8; PREFIX_BYTES];
                        prefix[0] = n;
                        let parts = [&prefix[..], &[n][..]];
                        let pushed = p.push(&**w, parts.into_iter()).unwrap();
                        if pushed.wake {
                            bell.ring();
                        }
                    }
                })
            };
            let mut c = Consumer::new(layout);
            let mut out = [0u8; PREFIX_BYTES + 8];
            let mut next = 0u8;
            while next < 3 {
                match c.pop(&**w, &mut out).unwrap() {
                    Some(len) => {
                        assert_eq!(
                            (len, out[0], out[PREFIX_BYTES]),
                            (PREFIX_BYTES + 1, next, next)
                        );
                        assert!(out[1..PREFIX_BYTES].iter().all(|&b| b == 0));
                        next += 1;
                    }
                    None => {
                        if !c.sleep(&**w) {
                            // Blocks for good if the producer missed this sleep: loom
                            // reports the deadlock.
                            bell.wait();
                        }
                        c.wake(&**w);
                    }
                }
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn a_slot_is_reused_only_once_its_datagram_was_copied_out() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            // Two slots; the producer fills them, then tries a third while the consumer
            // takes the first out: the third either waits (full) or lands in the freed slot,
            // never over a datagram not yet copied.
            let layout = Layout::new(0, 2, 8);
            let w = words(layout.words());
            let mut p = Producer::new(layout);
            p.push(&**w, [&[10u8; 8][..]].into_iter()).unwrap();
            p.push(&**w, [&[11u8; 8][..]].into_iter()).unwrap();
            let consumer = {
                let w = w.clone();
                loom::thread::spawn(move || {
                    let mut c = Consumer::new(layout);
                    let mut out = [0u8; 8];
                    assert_eq!(c.pop(&**w, &mut out).unwrap(), Some(8));
                    assert_eq!(out, [10u8; 8], "the first datagram, whole");
                    c
                })
            };
            let third = p.push(&**w, [&[12u8; 8][..]].into_iter());
            let mut c = consumer.join().unwrap();
            let mut out = [0u8; 8];
            assert_eq!(c.pop(&**w, &mut out).unwrap(), Some(8));
            assert_eq!(out, [11u8; 8]);
            match third {
                Ok(_) => {
                    assert_eq!(c.pop(&**w, &mut out).unwrap(), Some(8));
                    assert_eq!(out, [12u8; 8]);
                }
                Err(e) => assert_eq!(e, RingError::Full),
            }
            assert_eq!(c.pop(&**w, &mut out).unwrap(), None);
        });
    }
}
