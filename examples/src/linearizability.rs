//! A linearizability checker for histories of a named-lock service, in the style of Wing and
//! Gong: search for an order of the operations that respects real time (an operation that
//! responded before another was invoked comes first) and in which each operation's result is
//! what the sequential lock model answers. Operations without a response (timed out: they
//! may or may not have taken effect) may be placed anywhere after their invocation, with any
//! result, or left out. Locks are independent objects, so each lock's sub-history is checked
//! alone (linearizability is compositional), and states already explored are remembered.

use std::collections::{BTreeMap, HashSet};

use rpc_core::Marshal;

/// What an operation does.
#[derive(Marshal, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Takes the lock if it is free; true if it did.
    Lock,
    /// Frees the lock if it is held; true if it did.
    Unlock,
}

/// One operation of a history, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client that made it.
    pub client: u64,
    /// The lock it names.
    pub name: String,
    /// What it does.
    pub kind: OpKind,
    /// When it was invoked (nanoseconds on a clock every client shares).
    pub invoke: u64,
    /// When it responded and what, or `None` if it timed out (indeterminate).
    pub response: Option<(u64, bool)>,
}

/// The sequential model of one lock: the result of `kind` on a lock `held`, and the state
/// after.
pub fn step(held: bool, kind: OpKind) -> (bool, bool) {
    match kind {
        OpKind::Lock => (!held, true),
        OpKind::Unlock => (held, false),
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The lock whose sub-history has no linearization.
    pub name: String,
    /// That sub-history.
    pub ops: Vec<Op>,
}

/// The search gave up (more states than its budget): the history is neither accepted nor
/// refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge;

/// What checking a history found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every lock's sub-history has a linearization; how many sub-histories were checked.
    Linearizable {
        /// Sub-histories (one per lock) checked.
        histories: usize,
    },
    /// One lock's sub-history has none.
    NotLinearizable(Violation),
    /// A sub-history was too large to decide.
    Undecided(TooLarge),
}

/// Checks a whole history (every lock); locks start free.
pub fn check(history: &[Op]) -> Verdict {
    let mut by_name: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_name.entry(&op.name).or_default().push(op.clone());
    }
    let histories = by_name.len();
    for (name, ops) in by_name {
        match check_one(&ops) {
            Ok(true) => {}
            Ok(false) => {
                return Verdict::NotLinearizable(Violation {
                    name: name.to_owned(),
                    ops,
                });
            }
            Err(e) => return Verdict::Undecided(e),
        }
    }
    Verdict::Linearizable { histories }
}

/// States the search of one sub-history may visit before giving up.
const BUDGET: usize = 5_000_000;

/// Whether the operations on one lock (free at first) have a linearization.
pub fn check_one(ops: &[Op]) -> Result<bool, TooLarge> {
    let mut search = Search {
        ops,
        completed: ops.iter().filter(|o| o.response.is_some()).count(),
        seen: HashSet::new(),
    };
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    search.run(&mut done, 0, false)
}

struct Search<'a> {
    ops: &'a [Op],
    completed: usize,
    seen: HashSet<(Vec<u64>, bool)>,
}

impl Search<'_> {
    fn run(&mut self, done: &mut [u64], placed: usize, held: bool) -> Result<bool, TooLarge> {
        if placed == self.completed {
            // Every completed operation is placed; the pending ones may be left out.
            return Ok(true);
        }
        if !self.seen.insert((done.to_vec(), held)) {
            return Ok(false);
        }
        if self.seen.len() > BUDGET {
            return Err(TooLarge);
        }
        let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An operation may come next only if no remaining operation responded before it was
        // invoked.
        let earliest = (0..self.ops.len())
            .filter(|&i| !is_done(done, i))
            .filter_map(|i| self.ops[i].response.map(|(t, _)| t))
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if is_done(done, i) || op.invoke > earliest {
                continue;
            }
            let (result, after) = step(held, op.kind);
            let counts = match op.response {
                Some((_, r)) if r != result => continue,
                Some(_) => 1,
                None => 0,
            };
            done[i / 64] |= 1 << (i % 64);
            let found = self.run(done, placed + counts, after)?;
            done[i / 64] &= !(1 << (i % 64));
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Two clients holding one lock at once, seen from the clients' side: a client holds a lock
/// from the response of its successful `lock` to the invocation of its next `unlock` of it
/// (for ever if there is none). Returns the first pair of overlapping holds found.
pub fn double_holds(history: &[Op]) -> Option<(String, u64, u64)> {
    // (name) -> list of (from, until, client)
    let mut holds: BTreeMap<&str, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut by_client: BTreeMap<(u64, &str), Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_client.entry((op.client, &op.name)).or_default().push(op);
    }
    for ((client, name), mut ops) in by_client {
        ops.sort_by_key(|o| o.invoke);
        let mut from = None;
        for op in ops {
            match (op.kind, op.response, from) {
                (OpKind::Lock, Some((t, true)), None) => from = Some(t),
                (OpKind::Unlock, _, Some(start)) => {
                    holds
                        .entry(name)
                        .or_default()
                        .push((start, op.invoke, client));
                    from = None;
                }
                _ => {}
            }
        }
        if let Some(start) = from {
            holds
                .entry(name)
                .or_default()
                .push((start, u64::MAX, client));
        }
    }
    for (name, mut list) in holds {
        list.sort();
        for w in list.windows(2) {
            if w[1].0 < w[0].1 && w[0].2 != w[1].2 {
                return Some((name.to_owned(), w[0].2, w[1].2));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, kind: OpKind, invoke: u64, response: Option<(u64, bool)>) -> Op {
        Op {
            client,
            name: "a".into(),
            kind,
            invoke,
            response,
        }
    }

    use OpKind::{Lock, Unlock};

    #[test]
    fn a_sequential_history_of_the_model_is_linearizable() {
        let h = vec![
            op(1, Lock, 0, Some((1, true))),
            op(2, Lock, 2, Some((3, false))),
            op(1, Unlock, 4, Some((5, true))),
            op(2, Lock, 6, Some((7, true))),
            op(1, Unlock, 8, Some((9, true))),
            op(2, Unlock, 10, Some((11, false))),
        ];
        assert_eq!(check(&h), Verdict::Linearizable { histories: 1 });
        assert_eq!(double_holds(&h), None);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // Both locks overlap in time: one of them won, which is fine either way.
        let h = vec![
            op(1, Lock, 0, Some((10, false))),
            op(2, Lock, 1, Some((9, true))),
        ];
        assert!(matches!(check(&h), Verdict::Linearizable { .. }));
    }

    #[test]
    fn two_successful_locks_without_an_unlock_are_refused() {
        let h = vec![
            op(1, Lock, 0, Some((1, true))),
            op(2, Lock, 2, Some((3, true))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
        assert_eq!(double_holds(&h), Some(("a".into(), 1, 2)));
        // Even overlapping in time: a lock is taken once.
        let h = vec![
            op(1, Lock, 0, Some((5, true))),
            op(2, Lock, 1, Some((6, true))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn real_time_order_is_respected() {
        // An unlock that responded before the lock was invoked cannot free it.
        let h = vec![
            op(1, Unlock, 0, Some((1, true))),
            op(2, Lock, 2, Some((3, true))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn a_timed_out_operation_may_or_may_not_have_happened() {
        // Client 1's lock timed out; client 2 found the lock held: the lock took effect.
        let h = vec![op(1, Lock, 0, None), op(2, Lock, 5, Some((6, false)))];
        assert!(matches!(check(&h), Verdict::Linearizable { .. }));
        // Or client 2 got it: the timed-out lock never happened (or came later).
        let h = vec![op(1, Lock, 0, None), op(2, Lock, 5, Some((6, true)))];
        assert!(matches!(check(&h), Verdict::Linearizable { .. }));
        // But it cannot account for a lock held and freed twice.
        let h = vec![
            op(1, Lock, 0, None),
            op(2, Unlock, 5, Some((6, true))),
            op(2, Unlock, 7, Some((8, true))),
        ];
        assert!(matches!(check(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn locks_are_checked_apart() {
        let mut h = vec![
            op(1, Lock, 0, Some((1, true))),
            op(2, Lock, 2, Some((3, true))),
        ];
        h[1].name = "b".into();
        assert_eq!(check(&h), Verdict::Linearizable { histories: 2 });
    }
}
