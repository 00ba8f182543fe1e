//! A spinning executor for call futures: [`block_on`] one, [`join_all`] many, or take their
//! results as they come ([`Completions`]).
//!
//! It polls on the calling thread and never sleeps while a call is in flight (unless the
//! client's poll strategy parks, after its spin budget): the future of a call drives its
//! client's link when polled, so polling is how replies are received. What it allocates it
//! allocates once per executor (a waker per slot), never per call.
//!
//! Any other executor runs the same futures; under tokio, with the `tokio` feature, a call
//! future polled by a runtime starts a task there that drives its client, woken through the
//! reactor, and the futures only wait to be woken.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

thread_local! {
    /// This thread's executor pass (incremented by every pass of an executor on the thread,
    /// and by every turn of a server loop), with a per-thread tag in the high bits, so that a
    /// client's link is driven at most once per pass however many of its calls are polled.
    static PASS: Cell<u64> = Cell::new(thread_tag() << 40);
}

fn thread_tag() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
}

/// The current pass of this thread's executor.
pub(crate) fn pass() -> u64 {
    PASS.with(Cell::get)
}

/// Starts a new pass.
pub(crate) fn next_pass() {
    PASS.with(|p| p.set(p.get().wrapping_add(1)));
}

thread_local! {
    /// The reading of the clock that calls started in this thread's executor pass share:
    /// the pass, how many calls took it, the kernel's coarse clock when it was taken, the
    /// reading.
    static START_CLOCK: Cell<Shared> = const { Cell::new(Shared::NONE) };
    /// Whether calls started on this thread now may share a reading: inside a pass of
    /// [`Completions`], [`join_all`] or [`block_on`], whose futures are the caller's own, not
    /// in a server's loop, whose handlers run between the calls they start.
    static SHARING: Cell<bool> = const { Cell::new(false) };
}

/// What the calls of a pass share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shared {
    pass: u64,
    /// Calls that took the reading.
    uses: u32,
    /// The kernel's coarse clock when it was taken.
    coarse: u64,
    reading: Option<Instant>,
}

impl Shared {
    /// Nothing to share.
    const NONE: Self = Self {
        pass: 0,
        uses: 0,
        coarse: 0,
        reading: None,
    };
}

/// How many calls started in one pass of this crate's executors share one reading of the
/// clock.
const STARTS_PER_READING: u32 = 8;

/// The time a future's call starts at. Inside a pass of [`Completions`], [`join_all`] or
/// [`block_on`], calls started in the same pass share a reading, at most
/// [`STARTS_PER_READING`] calls to one and within one tick of the kernel's coarse clock, as an
/// event loop keeps one time for an iteration: reading the clock is about a tenth of a
/// pipelined call's cost on the client, the coarse clock a quarter of that. A call thus starts
/// early by what the pass ran since the reading, microseconds (a few other calls' starts),
/// never as much as a tick (1 to 4 ms), and its deadline and first timers count from there.
/// Anywhere else, the clock is read.
pub(crate) fn start_clock() -> Instant {
    if !SHARING.with(Cell::get) {
        return Instant::now();
    }
    START_CLOCK.with(|c| {
        let (reading, kept) =
            shared_reading(c.get(), pass(), crate::estimate::coarse(), Instant::now);
        c.set(kept);
        reading
    })
}

/// The reading a call started in `pass` takes, at `coarse` on the kernel's coarse clock
/// (`None`: no coarse clock, nothing shared), given what the pass's calls share (`kept`),
/// reading the clock with `read` if it must; and what they share from then on.
fn shared_reading(
    kept: Shared,
    pass: u64,
    coarse: Option<u64>,
    read: impl FnOnce() -> Instant,
) -> (Instant, Shared) {
    match (kept.reading, coarse) {
        (Some(t), Some(c))
            if kept.pass == pass && kept.uses < STARTS_PER_READING && kept.coarse == c =>
        {
            let uses = kept.uses + 1;
            (t, Shared { uses, ..kept })
        }
        _ => {
            // The coarse clock is read first: a tick after it means the reading is older than
            // a tick.
            let now = read();
            let kept = coarse.map_or(Shared::NONE, |coarse| Shared {
                pass,
                uses: 1,
                coarse,
                reading: Some(now),
            });
            (now, kept)
        }
    }
}

thread_local! {
    /// Whether one of this crate's executors is polling on this thread (then call futures
    /// drive their links themselves, even inside a tokio runtime: no driver task could run
    /// while this thread spins).
    static OWN: Cell<bool> = const { Cell::new(false) };
}

/// Whether one of this crate's executors polls on this thread.
pub(crate) fn in_own_executor() -> bool {
    OWN.with(Cell::get)
}

thread_local! {
    /// The data pointer of the waker this crate's executor is polling with right now (null
    /// when none is): a future polled with exactly that waker is polled by the executor
    /// itself, not through a combinator with wakers of its own.
    static DIRECT: Cell<*const ()> = const { Cell::new(std::ptr::null()) };
}

/// Whether `waker` is the one this crate's executor polls with right now. Then a call that
/// only needs to be polled again soon (to drive its link) need not wake itself: the executor
/// polls its futures in turn in every pass where none was woken. Under any other executor,
/// or a combinator (a `FuturesUnordered`, say) that polls only what was woken, this is false
/// and the call wakes itself.
pub(crate) fn polled_directly(waker: &Waker) -> bool {
    let direct = DIRECT.with(Cell::get);
    !direct.is_null() && std::ptr::eq(waker.data(), direct)
}

/// Marks `waker` as the executor's own for the duration of one poll.
struct Direct(*const ());

impl Direct {
    fn new(waker: &Waker) -> Self {
        Self(DIRECT.with(|d| d.replace(waker.data())))
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        DIRECT.with(|d| d.set(self.0));
    }
}

/// Marks this thread as polling with one of this crate's executors, until dropped (then the
/// marks it replaced are restored).
pub(crate) struct Entered {
    own: bool,
    sharing: bool,
}

impl Entered {
    /// A server's loop: its calls read the clock each (see [`start_clock`]).
    pub(crate) fn new() -> Self {
        Self::with_sharing(false)
    }

    /// [`Completions`], [`join_all`], [`block_on`]: calls of one pass share readings.
    fn sharing() -> Self {
        Self::with_sharing(true)
    }

    fn with_sharing(share: bool) -> Self {
        Self {
            own: OWN.with(|o| o.replace(true)),
            sharing: SHARING.with(|s| s.replace(share)),
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        OWN.with(|o| o.set(self.own));
        SHARING.with(|s| s.set(self.sharing));
    }
}

/// A waker that sets a flag.
#[derive(Debug, Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

thread_local! {
    static BLOCK_ON_WAKER: (Arc<Flag>, Waker) = {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        (flag, waker)
    };
}

/// Runs `future` to its end on this thread, spinning.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let _own = Entered::sharing();
    BLOCK_ON_WAKER.with(|(_, waker)| {
        let mut cx = Context::from_waker(waker);
        let _direct = Direct::new(waker);
        loop {
            next_pass();
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
            std::hint::spin_loop();
        }
    })
}

/// Runs every future of `futures` to its end, concurrently on this thread; returns their
/// outputs in order.
pub fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut c = Completions::new(futures);
    let mut out: Vec<Option<F::Output>> = (0..c.len()).map(|_| None).collect();
    while let Some((i, v)) = c.next() {
        out[i] = Some(v);
    }
    out.into_iter().flatten().collect()
}

/// Slots of a [`Completions`] below this are flagged in a bitmap when woken (one atomic OR);
/// the others are queued in a list under a lock.
const FLAGGED_SLOTS: usize = 256;

/// The slots whose wakers fired since the executor last looked.
#[derive(Debug, Default)]
struct Woken {
    any: AtomicBool,
    flags: [AtomicU64; FLAGGED_SLOTS / 64],
    slots: std::sync::Mutex<Vec<usize>>,
}

/// The waker of one slot of a [`Completions`]: it flags the slot (or, beyond the flagged
/// ones, queues its index once until the slot is polled again).
#[derive(Debug)]
struct SlotWaker {
    slot: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let i = self.slot;
        if i < FLAGGED_SLOTS {
            self.woken.flags[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
        } else if !self.queued.swap(true, Ordering::AcqRel) {
            let mut slots = self.woken.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.push(i);
        } else {
            return;
        }
        // After the flag or the index: whoever sees this sees them.
        self.woken.any.store(true, Ordering::Release);
    }
}

/// Many futures polled together on this thread; [`Completions::next`] gives each one's output
/// (with its index) as it ends. Slots are refilled in place ([`Completions::push`]), so a
/// pipeline that keeps `n` calls in flight allocates its `n` slots (and their wakers) once
/// and nothing per call.
///
/// A pass polls the futures whose wakers fired (a call's waker fires when another call's
/// poll, driving the link, received its reply), so that taking one result costs a few polls
/// however many calls are in flight; a pass in which none fired polls the next live future
/// in turn, which drives its client's link (a call polled by this executor does not wake
/// itself only to drive its link again).
pub struct Completions<F: Future> {
    /// Each slot is allocated once and pinned; a future is written into it in place.
    slots: Vec<Pin<Box<Option<F>>>>,
    indexes: Vec<usize>,
    wakers: Vec<(Arc<SlotWaker>, Waker)>,
    woken: Arc<Woken>,
    /// Woken slots taken from `woken`, to poll.
    run: std::collections::VecDeque<usize>,
    /// Whether each slot is in `run` (or `later`) already.
    in_run: Vec<bool>,
    /// The pass in which each slot was last polled: a slot is polled once per pass.
    polled: Vec<u64>,
    /// Slots woken again in the pass that polled them: they wait for the next.
    later: Vec<usize>,
    /// Empty slots, to refill.
    free: Vec<usize>,
    live: usize,
    next_index: usize,
    cursor: usize,
}

impl<F: Future> std::fmt::Debug for Completions<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Completions<F> {
    /// Polls these futures together.
    pub fn new(futures: impl IntoIterator<Item = F>) -> Self {
        let mut c = Self {
            slots: Vec::new(),
            indexes: Vec::new(),
            wakers: Vec::new(),
            woken: Arc::default(),
            run: std::collections::VecDeque::new(),
            in_run: Vec::new(),
            polled: Vec::new(),
            later: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_index: 0,
            cursor: 0,
        };
        for f in futures {
            c.push(f);
        }
        c
    }

    /// Futures not ended yet.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether every future has ended.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds a future; its index (given with its output) follows the earlier ones'. It goes
    /// into a free slot if there is one.
    pub fn push(&mut self, future: F) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i].as_mut().set(Some(future));
                self.indexes[i] = index;
                i
            }
            None => {
                let i = self.slots.len();
                self.slots.push(Box::pin(Some(future)));
                self.indexes.push(index);
                let w = Arc::new(SlotWaker {
                    slot: i,
                    queued: AtomicBool::new(false),
                    woken: self.woken.clone(),
                });
                let waker = Waker::from(w.clone());
                self.wakers.push((w, waker));
                self.polled.push(0);
                self.in_run.push(false);
                i
            }
        };
        // A new future is polled in the next pass: queued as its waker would queue it, with
        // no atomic operation (this executor owns the queue).
        if !std::mem::replace(&mut self.in_run[slot], true) {
            self.run.push_back(slot);
        }
        self.live += 1;
        index
    }

    /// Runs the futures until one ends; `None` once all have.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(usize, F::Output)> {
        if self.live == 0 {
            return None;
        }
        loop {
            if let Some(done) = self.try_next() {
                return Some(done);
            }
            std::hint::spin_loop();
        }
    }

    /// Moves the slots woken since the last look to `run`.
    fn take_woken(&mut self) {
        // Most looks find nothing: a load, and the swap only when something was woken.
        if !self.woken.any.load(Ordering::Acquire) || !self.woken.any.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let (run, in_run) = (&mut self.run, &mut self.in_run);
        let mut queue = |i: usize| {
            if !std::mem::replace(&mut in_run[i], true) {
                run.push_back(i);
            }
        };
        for (w, word) in self.woken.flags.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::Acquire);
            while bits != 0 {
                queue(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        if self.slots.len() > FLAGGED_SLOTS {
            let mut slots = self.woken.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.drain(..).for_each(queue);
        }
    }

    /// Polls slot `i` if it holds a future; its output if it ended.
    fn poll_slot(&mut self, i: usize) -> Option<(usize, F::Output)> {
        self.polled[i] = pass();
        let (w, waker) = &self.wakers[i];
        // Cleared before the poll, so that a wake during or after it queues the slot again.
        self.in_run[i] = false;
        if i >= FLAGGED_SLOTS {
            w.queued.store(false, Ordering::Release);
        }
        let mut cx = Context::from_waker(waker);
        let fut = self.slots[i].as_mut().as_pin_mut()?;
        let direct = Direct::new(waker);
        let polled = fut.poll(&mut cx);
        drop(direct);
        match polled {
            Poll::Ready(v) => {
                self.slots[i].as_mut().set(None);
                self.free.push(i);
                self.live -= 1;
                Some((self.indexes[i], v))
            }
            Poll::Pending => None,
        }
    }

    /// One pass: polls the futures woken since the last (or, if none was, every live future,
    /// which drives their links) and gives the output of the first that ended, if any: for a
    /// caller that has other work between polls, such as a pacer sending calls at fixed times.
    pub fn try_next(&mut self) -> Option<(usize, F::Output)> {
        if self.live == 0 {
            return None;
        }
        let _own = Entered::sharing();
        next_pass();
        self.take_woken();
        if self.run.is_empty() {
            // Nothing was woken: poll the next live future in turn. Its poll drives its
            // client's link, which wakes the calls whose replies came; taking turns, every
            // future is polled within as many such passes as there are futures (so every
            // client among them is driven).
            let n = self.slots.len();
            for k in 0..n {
                let i = (self.cursor + k) % n;
                if self.slots[i].is_none() {
                    continue;
                }
                self.cursor = (i + 1) % n;
                if let Some(done) = self.poll_slot(i) {
                    return Some(done);
                }
                break;
            }
            self.take_woken();
        }
        // The woken ones, each once per pass (a future that wakes itself when polled, such
        // as a call waiting for the next pass to send it, waits for that pass).
        let this_pass = pass();
        while let Some(i) = self.run.pop_front() {
            if self.polled[i] == this_pass {
                self.later.push(i);
                continue;
            }
            if let Some(done) = self.poll_slot(i) {
                self.run.extend(self.later.drain(..));
                return Some(done);
            }
            self.take_woken();
        }
        self.run.extend(self.later.drain(..));
        None
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn calls_started_in_one_pass_share_a_reading_up_to_the_bound() {
        let base = Instant::now();
        let mut reads = 0u64;
        let mut read = || {
            reads += 1;
            base + Duration::from_micros(reads)
        };
        let mut kept = Shared::NONE;
        let mut got = Vec::new();
        for _ in 0..=STARTS_PER_READING {
            let (t, k) = shared_reading(kept, 7, Some(100), &mut read);
            got.push(t);
            kept = k;
        }
        // The first reading serves `STARTS_PER_READING` calls; the next call reads again.
        let bound = STARTS_PER_READING as usize;
        let first = base + Duration::from_micros(1);
        assert!(got[..bound].iter().all(|&t| t == first));
        assert_eq!(got[bound], base + Duration::from_micros(2));
        // A new pass reads again at once.
        let (t, kept) = shared_reading(kept, 8, Some(100), &mut read);
        assert_eq!(t, base + Duration::from_micros(3));
        // So does a call after a tick of the coarse clock, in the same pass.
        let (t, kept) = shared_reading(kept, 8, Some(101), &mut read);
        assert_eq!(t, base + Duration::from_micros(4));
        // Without a coarse clock nothing is shared.
        let (t, kept) = shared_reading(kept, 8, None, &mut read);
        assert_eq!(t, base + Duration::from_micros(5));
        let (t, _) = shared_reading(kept, 8, None, &mut read);
        assert_eq!(t, base + Duration::from_micros(6));
        assert_eq!(reads, 6);
    }

    #[test]
    fn only_calls_polled_by_the_callers_executors_share_readings() {
        START_CLOCK.with(|c| c.set(Shared::NONE));
        // Outside any executor, and in a server's loop, every start reads the clock and
        // leaves nothing to share.
        start_clock();
        {
            let _server_loop = Entered::new();
            next_pass();
            start_clock();
            start_clock();
        }
        assert!(START_CLOCK.with(Cell::get).reading.is_none());
        // In a pass of the caller's executors, the starts share the reading (if the coarse
        // clock does not tick between them, as it does at most once here).
        let entered = Entered::sharing();
        next_pass();
        let (a, b, c) = (start_clock(), start_clock(), start_clock());
        assert!(a == b || b == c);
        drop(entered);
        assert!(!in_own_executor() && !SHARING.with(Cell::get));
    }

    /// What the gates of a test share: which are open, their wakers, how often each was
    /// polled.
    #[derive(Default)]
    struct Gates {
        open: Vec<bool>,
        wakers: Vec<Option<Waker>>,
        polls: Vec<u32>,
    }

    /// Ready with its id once its gate is open; wakes itself at every poll if `restless`.
    struct Gate {
        id: usize,
        gates: Rc<RefCell<Gates>>,
        restless: bool,
    }

    impl Future for Gate {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let mut g = self.gates.borrow_mut();
            g.polls[self.id] += 1;
            if g.open[self.id] {
                return Poll::Ready(self.id);
            }
            g.wakers[self.id] = Some(cx.waker().clone());
            if self.restless {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    fn gates(n: usize) -> (Rc<RefCell<Gates>>, Vec<Gate>) {
        let g = Rc::new(RefCell::new(Gates {
            open: vec![false; n],
            wakers: vec![None; n],
            polls: vec![0; n],
        }));
        let futures = (0..n)
            .map(|id| Gate {
                id,
                gates: g.clone(),
                restless: false,
            })
            .collect();
        (g, futures)
    }

    #[test]
    fn a_woken_future_is_polled_alone() {
        let (g, futures) = gates(64);
        let mut c = Completions::new(futures);
        assert!(c.try_next().is_none());
        assert!(g.borrow().polls.iter().all(|&p| p == 1));
        let waker = {
            let mut g = g.borrow_mut();
            g.open[10] = true;
            g.wakers[10].take().unwrap()
        };
        waker.wake();
        assert_eq!(c.try_next(), Some((10, 10)));
        let g = g.borrow();
        assert_eq!(g.polls[10], 2);
        assert!(g.polls.iter().enumerate().all(|(i, &p)| i == 10 || p == 1));
        assert_eq!(c.len(), 63);
    }

    #[test]
    fn wakes_of_flagged_and_listed_slots_are_each_polled_once() {
        // Slots below FLAGGED_SLOTS are flagged in the bitmap, the others listed.
        let n = FLAGGED_SLOTS + 40;
        let (g, futures) = gates(n);
        let mut c = Completions::new(futures);
        assert!(c.try_next().is_none());
        let picked = [0, 63, 64, 200, FLAGGED_SLOTS - 1, FLAGGED_SLOTS, n - 1];
        let wakers: Vec<Waker> = {
            let mut g = g.borrow_mut();
            picked
                .iter()
                .map(|&i| {
                    g.open[i] = true;
                    g.wakers[i].take().unwrap()
                })
                .collect()
        };
        // Woken twice before the pass: polled once all the same.
        for w in wakers.iter().chain(&wakers) {
            w.wake_by_ref();
        }
        let mut ended: Vec<usize> = (0..picked.len()).map(|_| c.try_next().unwrap().0).collect();
        ended.sort_unstable();
        assert_eq!(ended, picked);
        let g = g.borrow();
        assert!(picked.iter().all(|&i| g.polls[i] == 2));
        assert!(g.polls.iter().all(|&p| p <= 2));
        assert_eq!(c.len(), n - picked.len());
    }

    #[test]
    fn with_nothing_woken_the_futures_are_polled_in_turn() {
        // What drives a link is a poll: a reply that arrived without a wake-up is found.
        let (g, futures) = gates(8);
        let mut c = Completions::new(futures);
        // The first pass polls every new future (each is woken once, when pushed).
        assert!(c.try_next().is_none());
        assert_eq!(g.borrow().polls, vec![1; 8]);
        // Then, with nothing woken, one future per pass, in turn.
        for _ in 0..8 {
            assert!(c.try_next().is_none());
        }
        assert_eq!(g.borrow().polls, vec![2; 8]);
        g.borrow_mut().open[5] = true;
        // Found within as many passes as there are futures.
        let got = (0..8).find_map(|_| c.try_next());
        assert_eq!(got, Some((5, 5)));
        for i in 0..8 {
            g.borrow_mut().open[i] = true;
        }
        let mut ended: Vec<usize> = std::iter::from_fn(|| c.next()).map(|(i, _)| i).collect();
        ended.sort_unstable();
        assert_eq!(ended, vec![0, 1, 2, 3, 4, 6, 7]);
        assert!(c.next().is_none());
    }

    #[test]
    fn a_future_waking_itself_does_not_hold_a_pass() {
        let (g, mut futures) = gates(4);
        futures[0].restless = true;
        let mut c = Completions::new(futures);
        for _ in 0..10 {
            assert!(c.try_next().is_none());
        }
        // One poll per pass: waking itself does not get it polled again in the same pass.
        assert_eq!(g.borrow().polls[0], 10);
    }

    #[test]
    fn slots_are_reused_and_indexes_keep_counting() {
        let (g, futures) = gates(3);
        let mut c = Completions::new(futures);
        g.borrow_mut().open = vec![true; 3];
        assert!(c.next().is_some());
        let gates = g.clone();
        let i = c.push(Gate {
            id: 0,
            gates,
            restless: false,
        });
        assert_eq!(i, 3);
        let mut ended: Vec<usize> = std::iter::from_fn(|| c.next()).map(|(i, _)| i).collect();
        ended.sort_unstable();
        assert_eq!(ended.len(), 3);
        assert_eq!(c.slots.len(), 3);
    }
}
