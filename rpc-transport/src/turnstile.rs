//! Admission of threads into blocking calls on one client.
//!
//! Every thread in a blocking call needs a turn of a core to send its request and to take its
//! outcome, and on a VM a switch between two threads of one core costs about 2 µs. Beyond a
//! couple of threads per core the waiting threads only take turns from the one that leads
//! the link, and the client gets slower the more threads call it. So at most `cap` threads
//! are in blocking calls at once; the others wait their turn parked (no core), in order of
//! arrival. A turn lasts a slice of time (`SLICE`) over as many calls as the thread makes in
//! it, so that turns change hands (a park and a wake-up, several microseconds) once per slice
//! rather than once per call; then the thread whose call ends hands its place to the first
//! waiting. Futures are not admitted here: they do not hold a thread.
//!
//! While one thread alone has ever called, nothing is counted: it is within any cap, and its
//! calls pay no atomic read-modify-write for admission (two of them, 10 to 15 ns of a
//! shared-memory round trip here), only a plain store and load each way. The first call of a
//! second thread ends that for good: it marks the turnstile shared, makes every thread's
//! accesses visible with `membarrier` (the heavy side of an asymmetric Dekker handshake,
//! whose light side is a compiler fence in the lone thread's entry), and waits until the lone
//! thread's call in progress, if any, has ended (that call was not counted); from then on
//! every entry counts. Where `membarrier` is not available, every entry counts from the
//! start.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, compiler_fence};
use std::sync::{Mutex, OnceLock};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread parks before it looks again: a hand-over wakes it at once, so
/// this only bounds how long a place left free (by a thread that ended its last call within
/// its turn) stays unused.
const RECHECK: Duration = Duration::from_millis(5);

/// How long a thread's turn lasts while others wait.
const SLICE: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's turn: which turnstile (by address) and since when.
    static TURN: std::cell::Cell<Option<(usize, Instant)>> = const { std::cell::Cell::new(None) };
    /// Its address tells this thread from the others that live (see `thread_key`).
    static KEY: u8 = const { 0 };
}

/// A key of the calling thread, unique among the threads alive: the address of its
/// thread-local `KEY` (a thread that ended may leave its key to a new one, and it calls no
/// more).
fn thread_key() -> usize {
    KEY.with(|k| std::ptr::from_ref(k) as usize)
}

/// Whether this process may use `membarrier` to order the other threads' accesses as their
/// own fences would (registered once per process).
fn barriers() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        membarrier_query().contains_command(MembarrierCommand::PrivateExpedited)
            && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
    })
}

/// A thread's place in calls, as `Turnstile::enter` gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// When it entered (see `Turnstile::enter`).
    pub(crate) at: Instant,
    /// Whether it counts among those inside (not while one thread alone has called).
    counted: bool,
}

#[derive(Debug)]
pub(crate) struct Turnstile {
    cap: usize,
    /// Threads in calls.
    inside: AtomicUsize,
    /// Threads waiting (a copy of `queue.len()`, read without the lock).
    waiting: AtomicUsize,
    queue: Mutex<Queue>,
    /// The key of the one thread that has entered so far, or 0.
    alone: AtomicUsize,
    /// That thread is in a call it entered alone (not counted).
    alone_inside: AtomicBool,
    /// A second thread has come: the lone thread enters alone no more.
    shared: AtomicBool,
    /// Shared, and the lone thread's last call not counted has ended: every entry counts.
    settled: AtomicBool,
}

#[derive(Debug)]
struct Queue {
    waiting: VecDeque<(u64, Thread)>,
    next_ticket: u64,
}

impl Turnstile {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inside: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
            alone: AtomicUsize::new(0),
            alone_inside: AtomicBool::new(false),
            shared: AtomicBool::new(!barriers()),
            settled: AtomicBool::new(!barriers()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_enter(&self) -> bool {
        let mut n = self.inside.load(Ordering::SeqCst);
        while n < self.cap {
            match self
                .inside
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The start of this thread's turn here, if it has one still in its slice.
    fn turn(&self, now: Instant) -> Option<Instant> {
        TURN.with(std::cell::Cell::get)
            .filter(|&(id, since)| id == self.id() && now.duration_since(since) < SLICE)
            .map(|(_, since)| since)
    }

    fn start_turn(&self, now: Instant) {
        TURN.with(|t| t.set(Some((self.id(), now))));
    }

    /// Whether no thread waits for a turn (then none is timed).
    pub(crate) fn quiet(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) == 0
    }

    /// Enters without counting if the calling thread is the only one that has ever come:
    /// a plain store and load (but for its first call, which takes the turnstile).
    fn enter_alone(&self) -> bool {
        if self.shared.load(Ordering::Relaxed) {
            return false;
        }
        let me = thread_key();
        let alone = self.alone.load(Ordering::Relaxed);
        let mine = alone == me
            || alone == 0
                && self
                    .alone
                    .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
        if !mine {
            return false;
        }
        self.alone_inside.store(true, Ordering::Relaxed);
        // The light side of the handshake with `settle`: the store above, then the load below,
        // in this order (the hardware's part of the order is `settle`'s `membarrier`). Either
        // this load sees `shared`, or `settle` sees this thread inside.
        compiler_fence(Ordering::SeqCst);
        if self.shared.load(Ordering::Relaxed) {
            self.alone_inside.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// The first entries after a second thread came: makes the lone thread enter alone no
    /// more, and waits (until `deadline`; `false` if it passed first) for its call in
    /// progress, not counted, to end. Says whether it waited.
    fn settle(&self, deadline: Instant) -> Option<bool> {
        self.shared.store(true, Ordering::SeqCst);
        // The heavy side of the handshake: every thread of the process passes a full barrier,
        // so the lone thread's store in `enter_alone` is visible now, or its load comes after
        // this thread's store above.
        let _ = membarrier(MembarrierCommand::PrivateExpedited);
        let mut looks = 0u32;
        while self.alone_inside.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Once per client at most, for the length of one call: look now and then.
            looks += 1;
            if looks < 100 {
                thread::yield_now();
            } else {
                thread::park_timeout(Duration::from_micros(200).min(deadline - now));
            }
        }
        self.settled.store(true, Ordering::Release);
        Some(looks > 0)
    }

    /// Waits for a place, until `deadline`; `None` if it passed first. `now` is the time of
    /// asking; the time of entry is in the answer (`now` itself unless this thread had to
    /// wait), so a caller that did not wait reads the clock no second time. The place is
    /// given back with `leave`.
    pub(crate) fn enter(&self, deadline: Instant, mut now: Instant) -> Option<Entry> {
        let at = |at| Some(Entry { at, counted: true });
        if self.enter_alone() {
            return Some(Entry {
                at: now,
                counted: false,
            });
        }
        if !self.settled.load(Ordering::Acquire) && self.settle(deadline)? {
            now = Instant::now();
        }
        if self.waiting.load(Ordering::SeqCst) == 0 {
            // No one waits: no turns to keep (a thread that entered here hands its place on
            // as soon as someone waits).
            if self.try_enter() {
                return at(now);
            }
        } else if self.turn(now).is_some() && self.try_enter() {
            // Within its turn, a thread comes back ahead of those waiting.
            return at(now);
        }
        if !self.wait_turn(deadline) {
            return None;
        }
        let entered = Instant::now();
        self.start_turn(entered);
        at(entered)
    }

    fn wait_turn(&self, deadline: Instant) -> bool {
        let ticket = {
            let mut q = self.queue();
            // First come, first served: a place freed while others wait goes to the first.
            if q.waiting.is_empty() && self.try_enter() {
                return true;
            }
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.waiting.push_back((ticket, thread::current()));
            self.waiting.store(q.waiting.len(), Ordering::SeqCst);
            // A place freed between the first look and the queueing (its holder saw no one
            // waiting, so handed it to no one): take it if this thread is first.
            if q.waiting.front().map(|w| w.0) == Some(ticket) && self.try_enter() {
                q.waiting.pop_front();
                self.waiting.store(q.waiting.len(), Ordering::SeqCst);
                return true;
            }
            // A place left free (by a thread whose turn ran out between two of its calls, as
            // this one's may have): the first takes it.
            if self.inside.load(Ordering::SeqCst) < self.cap {
                if let Some((_, first)) = q.waiting.front() {
                    first.unpark();
                }
            }
            ticket
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                let mut q = self.queue();
                if let Some(i) = q.waiting.iter().position(|w| w.0 == ticket) {
                    q.waiting.remove(i);
                    self.waiting.store(q.waiting.len(), Ordering::SeqCst);
                    return false;
                }
                // Handed a place just now.
                return true;
            }
            thread::park_timeout(RECHECK.min(deadline - now));
            let mut q = self.queue();
            if !q.waiting.iter().any(|w| w.0 == ticket) {
                // Handed over by a thread that left: its place is this thread's.
                return true;
            }
            if q.waiting.front().map(|w| w.0) == Some(ticket) && self.try_enter() {
                q.waiting.pop_front();
                self.waiting.store(q.waiting.len(), Ordering::SeqCst);
                return true;
            }
        }
    }

    /// Leaves the place `entry` gave: once this thread's turn is over, the place goes to the
    /// first thread waiting.
    pub(crate) fn leave(&self, entry: Entry) {
        if !entry.counted {
            self.alone_inside.store(false, Ordering::Release);
            return;
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            if self.turn(Instant::now()).is_some() {
                // Still its turn: the place is free until this thread's next call (the
                // first waiting, if it looks meanwhile, may take it).
                self.inside.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            TURN.with(|t| t.set(None));
            let mut q = self.queue();
            if let Some((_, next)) = q.waiting.pop_front() {
                self.waiting.store(q.waiting.len(), Ordering::SeqCst);
                drop(q);
                // The place passes on as it is: `inside` does not change.
                next.unpark();
                return;
            }
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        // A thread that queued after the look above, and missed this place when it tried
        // once more after queueing: wake the first to take it.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            if let Some((_, first)) = self.queue().waiting.front() {
                first.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Two threads have entered: from then on every entry counts.
    fn shared(cap: usize) -> Turnstile {
        let t = Turnstile::new(cap);
        let e = t.enter(far(), Instant::now()).unwrap();
        t.leave(e);
        thread::scope(|s| {
            s.spawn(|| {
                let e = t.enter(far(), Instant::now()).unwrap();
                t.leave(e);
            });
        });
        t
    }

    #[test]
    fn a_thread_alone_is_not_counted_until_a_second_one_enters() {
        let t = Turnstile::new(1);
        for _ in 0..3 {
            let e = t.enter(far(), Instant::now()).unwrap();
            // Without `membarrier`, every entry counts.
            assert_eq!(e.counted, !barriers());
            if e.counted {
                t.leave(e);
                continue;
            }
            assert_eq!(t.inside.load(Ordering::SeqCst), 0);
            t.leave(e);
        }
        let (inside, out) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        thread::scope(|s| {
            s.spawn(|| {
                let e = t.enter(far(), Instant::now()).unwrap();
                assert!(e.counted);
                inside.wait();
                out.wait();
                t.leave(e);
            });
            inside.wait();
            // The other thread holds the only place now, and this one is counted too: it
            // waits for it, here until its deadline.
            let soon = Instant::now() + Duration::from_millis(5);
            assert!(t.enter(soon, Instant::now()).is_none());
            out.wait();
        });
        let e = t.enter(far(), Instant::now()).unwrap();
        assert!(e.counted);
        assert_eq!(t.inside.load(Ordering::SeqCst), 1);
        t.leave(e);
        assert_eq!(t.inside.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_second_thread_waits_for_the_call_the_lone_thread_entered_uncounted() {
        let t = Turnstile::new(2);
        let e = t.enter(far(), Instant::now()).unwrap();
        if e.counted {
            // No `membarrier`: counted from the start, and a second thread enters beside it.
            thread::scope(|s| {
                s.spawn(|| t.leave(t.enter(far(), Instant::now()).unwrap()));
            });
            t.leave(e);
            return;
        }
        // There is room for two, but the call in progress was not counted: the second
        // thread's first entry waits for its end (here, until its own deadline)...
        thread::scope(|s| {
            s.spawn(|| {
                let soon = Instant::now() + Duration::from_millis(5);
                assert!(t.enter(soon, Instant::now()).is_none());
            });
        });
        assert!(t.alone_inside.load(Ordering::SeqCst));
        let started = std::sync::Barrier::new(2);
        thread::scope(|s| {
            let waiter = s.spawn(|| {
                started.wait();
                let e = t.enter(far(), Instant::now()).unwrap();
                assert!(e.counted);
                t.leave(e);
            });
            started.wait();
            // ...and enters once it has ended.
            t.leave(e);
            waiter.join().unwrap();
        });
        // The lone thread counts now, beside the other.
        let mine = t.enter(far(), Instant::now()).unwrap();
        assert!(mine.counted);
        assert_eq!(t.inside.load(Ordering::SeqCst), 1);
        t.leave(mine);
    }

    #[test]
    fn never_more_than_cap_inside_and_everyone_gets_in() {
        // From the first entries on, while the lone thread's entry gives way to counting.
        let t = Arc::new(Turnstile::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (t, inside, max) = (t.clone(), inside.clone(), max.clone());
                thread::spawn(move || {
                    for _ in 0..2_000 {
                        let e = t.enter(far(), Instant::now()).unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        t.leave(e);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(max.load(Ordering::SeqCst) <= 2);
        assert_eq!(t.inside.load(Ordering::SeqCst), 0);
        assert_eq!(t.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wait_ends_at_its_deadline() {
        let t = shared(1);
        let e = t.enter(Instant::now(), Instant::now()).unwrap();
        assert!(
            t.enter(Instant::now() + Duration::from_millis(5), Instant::now())
                .is_none()
        );
        t.leave(e);
        assert!(t.enter(Instant::now(), Instant::now()).is_some());
    }
}
