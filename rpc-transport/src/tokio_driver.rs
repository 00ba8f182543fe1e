//! Under tokio (feature `tokio`): the first call future a client polls inside a runtime starts
//! a driver task there, which the reactor wakes when the link is readable and a tokio timer
//! wakes when a protocol timer is due. Call futures then only register their wakers and wait:
//! no tokio worker spins. If that runtime goes away, its driver's end hands the driving back
//! to the futures (or to the next runtime that polls one).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::link::Link;

/// A client's tie to its driver task.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Wakes the driver: a call started that it must time, or requests wait to leave together.
    kick: Arc<Notify>,
    /// Ends the driver when the client goes.
    stop: Mutex<Option<Stop>>,
    /// The link has no descriptor a reactor can watch: futures pump it themselves.
    unwatchable: AtomicBool,
    /// The protocol timer the driver sleeps until (as `Inner::next_timer`); `AWAKE` while it
    /// runs, `u64::MAX` if it waits for datagrams only.
    sleeping_until: AtomicU64,
}

const AWAKE: u64 = 0;

#[derive(Debug)]
struct Stop(Arc<Notify>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// What a link gives the reactor to watch: its own descriptor, duplicated.
struct Fd(OwnedFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Slot {
    /// Tells the driver a call started whose first timer is `timer` (as `Inner::next_timer`),
    /// or that requests wait to leave together (`timer` 0).
    pub(crate) fn kick(&self, timer: u64) {
        // Sequentially consistent with the driver's store of `sleeping_until` and the caller's
        // store of the timer: either the driver sees the new timer when it computes its sleep,
        // or this load sees the driver awake or sleeping past it.
        let until = self.sleeping_until.load(Ordering::SeqCst);
        if until == AWAKE || timer < until {
            self.kick.notify_one();
        }
    }
}

/// Ends the driving of a runtime that went away (its task was dropped unfinished): futures
/// pump the link themselves again until another runtime starts a driver.
struct Ended<L: Link>(Weak<Inner<L>>);

impl<L: Link> Drop for Ended<L> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.undriven();
        }
    }
}

/// Starts a driver task for `inner` if the calling thread is inside a tokio runtime and the
/// link has a descriptor to watch. Returns whether a driver runs.
pub(crate) fn ensure<L: Link>(inner: &Arc<Inner<L>>) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let slot = &inner.tokio;
    if slot.unwatchable.load(Ordering::Relaxed) {
        return false;
    }
    let mut stop = slot.stop.lock().unwrap_or_else(|p| p.into_inner());
    if inner.is_driven() {
        return true;
    }
    let Some(fd) = inner.link.reactor_fd() else {
        slot.unwatchable.store(true, Ordering::Relaxed);
        return false;
    };
    // SAFETY: `Fd` owns its descriptor (a duplicate made for this purpose): it stays open and
    // the same for the whole life of the `AsyncFd`, which owns the `Fd`, and `as_raw_fd`
    // always returns it.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }) else {
        return false;
    };
    let stopped = Arc::new(Notify::new());
    *stop = Some(Stop(stopped.clone()));
    let kick = slot.kick.clone();
    let weak = Arc::downgrade(inner);
    inner.set_driven();
    runtime.spawn(async move {
        let ended = Ended(weak);
        loop {
            let Some(inner) = ended.0.upgrade() else {
                return;
            };
            inner.tokio.sleeping_until.store(AWAKE, Ordering::SeqCst);
            let led = inner.drive();
            let timer = inner.next_timer();
            inner.tokio.sleeping_until.store(timer, Ordering::SeqCst);
            let deadline = inner.deadline_of(timer);
            drop(inner);
            if !led {
                // A thread making a blocking call leads the link for now; look again soon.
                tokio::task::yield_now().await;
                continue;
            }
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                // The client went.
                () = stopped.notified() => return,
                ready = fd.readable() => {
                    let Ok(mut guard) = ready else { return };
                    // `drive` took everything there was, down to a receive that would block:
                    // the readiness is cleared, and an arrival since then sets it again.
                    guard.clear_ready();
                }
                () = kick.notified() => {}
                () = sleep => {}
            }
        }
    });
    true
}

impl<L: Link> Inner<L> {
    /// Whether a driver task drives the link (futures then only wait to be woken).
    pub(crate) fn is_driven(&self) -> bool {
        self.driven.load(Ordering::Acquire)
    }

    fn set_driven(&self) {
        self.driven.store(true, Ordering::Release);
    }

    /// The driver went away with its runtime: futures drive the link again.
    fn undriven(&self) {
        let mut stop = self.tokio.stop.lock().unwrap_or_else(|p| p.into_inner());
        *stop = None;
        self.driven.store(false, Ordering::Release);
        drop(stop);
        self.wake_tasks();
    }
}
