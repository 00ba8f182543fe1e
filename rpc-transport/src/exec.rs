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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

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
    /// Whether one of this crate's executors is polling on this thread (then call futures
    /// drive their links themselves, even inside a tokio runtime: no driver task could run
    /// while this thread spins).
    static OWN: Cell<bool> = const { Cell::new(false) };
}

/// Whether one of this crate's executors polls on this thread.
pub(crate) fn in_own_executor() -> bool {
    OWN.with(Cell::get)
}

/// Marks this thread as polling with one of this crate's executors, until dropped.
pub(crate) struct Entered(bool);

impl Entered {
    pub(crate) fn new() -> Self {
        Self(OWN.with(|o| o.replace(true)))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        OWN.with(|o| o.set(self.0));
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
    let _own = Entered::new();
    BLOCK_ON_WAKER.with(|(_, waker)| {
        let mut cx = Context::from_waker(waker);
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

/// Many futures polled together on this thread; [`Completions::next`] gives each one's output
/// (with its index) as it ends. Slots are refilled in place ([`Completions::push`]), so a
/// pipeline that keeps `n` calls in flight allocates its `n` slots once and nothing per call.
pub struct Completions<F: Future> {
    /// Each slot is allocated once and pinned; a future is written into it in place.
    slots: Vec<Pin<Box<Option<F>>>>,
    indexes: Vec<usize>,
    waker: Waker,
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
            waker: Waker::from(Arc::new(Flag::default())),
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
        match self.slots.iter().position(|s| s.is_none()) {
            Some(i) => {
                self.slots[i].as_mut().set(Some(future));
                self.indexes[i] = index;
            }
            None => {
                self.slots.push(Box::pin(Some(future)));
                self.indexes.push(index);
            }
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

    /// Polls every live future once (which drives their links once) and gives the output of
    /// the first that ended, if any: for a caller that has other work between polls, such as
    /// a pacer sending calls at fixed times.
    pub fn try_next(&mut self) -> Option<(usize, F::Output)> {
        if self.live == 0 {
            return None;
        }
        let mut cx = Context::from_waker(&self.waker);
        let _own = Entered::new();
        next_pass();
        let n = self.slots.len();
        // Every live future is polled each pass: a call's poll is what drives its client's
        // link (once per pass, however many of its calls are polled).
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let Some(fut) = self.slots[i].as_mut().as_pin_mut() else {
                continue;
            };
            if let Poll::Ready(v) = fut.poll(&mut cx) {
                self.slots[i].as_mut().set(None);
                self.live -= 1;
                self.cursor = (i + 1) % n;
                return Some((self.indexes[i], v));
            }
        }
        None
    }
}
