//! Liveness of a service's own loops: what `/healthz` reports.
//!
//! A process can answer HTTP while the loop that does its work is stuck: an await that never
//! returns, a loop spinning on one record. So every long-running loop holds a [`Heartbeat`]
//! and says three things: that it **ran** (an iteration, a retry attempt, a timer tick), that
//! it **progressed** (finished a unit of work), and whether it is **busy** (has work in hand).
//!
//! `/healthz` fails (Kubernetes restarts the pod) when a loop
//! - has not run for `liveness.stall_timeout`: it hangs, whatever the cause; or
//! - is busy and has not progressed for `liveness.stall_timeout` *while the broker and the
//!   database answer*: it is stuck on something a restart may clear.
//!
//! A loop that keeps retrying because PostgreSQL or the broker is away keeps running but does
//! not progress; as long as the dependency is away that is an outage, reported by `/readyz`,
//! and liveness stays green: restarting every pod would add a restart storm to the outage and
//! bring nothing back. `/healthz` asks both dependencies itself, but they can answer its ping
//! and still fail the loop's work (a database out of connections or timing out under load, a
//! partition without a leader), so a loop also says *why* it retries ([`Heartbeat::retrying`]):
//! a loop whose last failure was a dependency's is `waiting`, not `stuck`. Each iteration of every loop is bounded (statement timeout, produce
//! timeout, timer ticks), so a loop that runs beats well within the timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

struct LoopState {
    name: String,
    /// Milliseconds since `Liveness::epoch`.
    ran: AtomicU64,
    progressed: AtomicU64,
    busy: AtomicBool,
    /// The last retry was for a dependency (cleared by progress).
    waiting: AtomicBool,
}

#[derive(Clone)]
pub struct Liveness {
    epoch: Instant,
    loops: Arc<Mutex<Vec<Arc<LoopState>>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            loops: Arc::default(),
        }
    }
}

/// A loop's handle on its liveness; cheap to clone (all clones are one loop).
#[derive(Clone)]
pub struct Heartbeat {
    epoch: Instant,
    state: Arc<LoopState>,
}

/// A loop that fails liveness, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub name: String,
    /// `hung` (not even running), `stuck` (busy, no progress) or `waiting` (busy, no
    /// progress, retrying because a dependency fails it: not a reason to restart).
    pub kind: &'static str,
    pub seconds: u64,
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Liveness {
    /// A heartbeat for a loop called `name` (shown by `/healthz`).
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let now = millis(self.epoch);
        let state = Arc::new(LoopState {
            name: name.into(),
            ran: AtomicU64::new(now),
            progressed: AtomicU64::new(now),
            busy: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
        });
        self.loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(state.clone());
        Heartbeat {
            epoch: self.epoch,
            state,
        }
    }

    /// Loops that have not run for `timeout` (`hung`), and busy loops that have not progressed
    /// for `timeout` (`stuck`, or `waiting` when their last retry was for a dependency).
    pub fn stalls(&self, timeout: Duration) -> Vec<Stall> {
        let now = millis(self.epoch);
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let loops = self
            .loops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for l in loops.iter() {
            let ran = now.saturating_sub(l.ran.load(Ordering::Relaxed));
            let progressed = now.saturating_sub(l.progressed.load(Ordering::Relaxed));
            if ran > limit {
                out.push(Stall {
                    name: l.name.clone(),
                    kind: "hung",
                    seconds: ran / 1000,
                });
            } else if l.busy.load(Ordering::Relaxed) && progressed > limit {
                out.push(Stall {
                    name: l.name.clone(),
                    kind: if l.waiting.load(Ordering::Relaxed) {
                        "waiting"
                    } else {
                        "stuck"
                    },
                    seconds: progressed / 1000,
                });
            }
        }
        out
    }
}

impl Heartbeat {
    /// The loop ran (an iteration, a retry attempt, a tick).
    pub fn ran(&self) {
        self.state.ran.store(millis(self.epoch), Ordering::Relaxed);
    }

    /// The loop failed and will try again: `dependency` when the failure was the database's
    /// or the broker's (unreachable, overloaded, no leader), so that a long run of them is an
    /// outage, not a stuck loop (module docs).
    pub fn retrying(&self, dependency: bool) {
        self.ran();
        self.state.waiting.store(dependency, Ordering::Relaxed);
    }

    /// The loop finished a unit of work (and so also ran).
    pub fn progressed(&self) {
        self.state.waiting.store(false, Ordering::Relaxed);
        let now = millis(self.epoch);
        self.state.ran.store(now, Ordering::Relaxed);
        self.state.progressed.store(now, Ordering::Relaxed);
    }

    /// The loop has work in hand (`true`) or waits for some (`false`). Becoming busy counts as
    /// progress, so the clock starts with the work.
    pub fn busy(&self, busy: bool) {
        if busy && !self.state.busy.load(Ordering::Relaxed) {
            self.progressed();
        }
        self.state.busy.store(busy, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hung_and_stuck_loops_are_reported() {
        let l = Liveness::default();
        let a = l.register("a");
        let b = l.register("b");
        std::thread::sleep(Duration::from_millis(30));
        let timeout = Duration::from_millis(10);
        // Neither has run since registering.
        assert_eq!(l.stalls(timeout).len(), 2);
        a.ran();
        b.ran();
        assert!(l.stalls(timeout).is_empty(), "idle loops that run are fine");
        b.busy(true);
        std::thread::sleep(Duration::from_millis(30));
        b.ran();
        a.ran();
        let stalls = l.stalls(timeout);
        assert_eq!(stalls.len(), 1, "{stalls:?}");
        assert_eq!((stalls[0].name.as_str(), stalls[0].kind), ("b", "stuck"));
        b.progressed();
        assert!(l.stalls(timeout).is_empty());
        b.busy(false);
        assert!(l.stalls(Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_loop_retrying_for_a_dependency_is_waiting_not_stuck() {
        let l = Liveness::default();
        let a = l.register("a");
        a.busy(true);
        std::thread::sleep(Duration::from_millis(30));
        let timeout = Duration::from_millis(10);
        a.retrying(true);
        assert_eq!(l.stalls(timeout)[0].kind, "waiting");
        // The next failure is the loop's own: stuck again.
        a.retrying(false);
        assert_eq!(l.stalls(timeout)[0].kind, "stuck");
        a.retrying(true);
        a.progressed();
        std::thread::sleep(Duration::from_millis(30));
        a.ran();
        assert_eq!(
            l.stalls(timeout)[0].kind,
            "stuck",
            "progress clears waiting"
        );
    }
}
