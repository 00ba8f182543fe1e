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

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

#[derive(Debug)]
pub(crate) struct Turnstile {
    cap: usize,
    /// Threads in calls.
    inside: AtomicUsize,
    /// Threads waiting (a copy of `queue.len()`, read without the lock).
    waiting: AtomicUsize,
    queue: Mutex<Queue>,
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

    /// Waits for a place, until `deadline`; `None` if it passed first. `now` is the time of
    /// asking; the time of entry is returned (`now` itself unless this thread had to wait), so
    /// a caller that did not wait reads the clock no second time.
    pub(crate) fn enter(&self, deadline: Instant, now: Instant) -> Option<Instant> {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            // No one waits: no turns to keep (a thread that entered here hands its place on
            // as soon as someone waits).
            if self.try_enter() {
                return Some(now);
            }
        } else if self.turn(now).is_some() && self.try_enter() {
            // Within its turn, a thread comes back ahead of those waiting.
            return Some(now);
        }
        if !self.wait_turn(deadline) {
            return None;
        }
        let entered = Instant::now();
        self.start_turn(entered);
        Some(entered)
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

    /// Leaves: once this thread's turn is over, the place goes to the first thread waiting.
    pub(crate) fn leave(&self) {
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

    #[test]
    fn never_more_than_cap_inside_and_everyone_gets_in() {
        let t = Arc::new(Turnstile::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (t, inside, max) = (t.clone(), inside.clone(), max.clone());
                thread::spawn(move || {
                    for _ in 0..2_000 {
                        assert!(
                            t.enter(Instant::now() + Duration::from_secs(60), Instant::now())
                                .is_some()
                        );
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        t.leave();
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
        let t = Turnstile::new(1);
        assert!(t.enter(Instant::now(), Instant::now()).is_some());
        assert!(
            t.enter(Instant::now() + Duration::from_millis(5), Instant::now())
                .is_none()
        );
        t.leave();
        assert!(t.enter(Instant::now(), Instant::now()).is_some());
    }
}
