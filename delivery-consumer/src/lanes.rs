//! Per-endpoint state: the lane a delivery waits in, its in-flight cap, its rate limit, its
//! `Retry-After` pause and its circuit breaker.
//!
//! **Circuit breaker.** Closed, an endpoint is sent to freely and consecutive failed attempts
//! are counted; at `delivery.circuit_failure_threshold` it opens for the cool-down. Open,
//! nothing is sent: records that arrive are deferred to the retry tier that covers the rest of
//! the cool-down, without counting an attempt (never dropped). When the cool-down has passed,
//! the next record is sent as the one probe (half-open) while others wait in the lane; a
//! successful probe closes the circuit, a failed one re-opens it with the cool-down doubled, up
//! to `delivery.circuit_max_cooldown`. A 429 does not count as a failure here: it pauses the
//! endpoint instead, for as long as the receiver asked.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::job::Job;

/// The longest gap a rate limit imposes between two requests.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// How long a first request may go unanswered before its endpoint counts as suspect: far above
/// a healthy receiver's first answer, far below how long a backlog takes to fill the budgets.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
}

/// May a lane send now?
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Send,
    /// Send this one as the probe of a half-open circuit.
    Probe,
    /// The probe is in flight: wait in the lane.
    Wait,
    /// Open (or paused): defer, the block lasts this much longer.
    Defer(Duration),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub threshold: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Circuit {
    pub fn is_open(&self) -> bool {
        !matches!(self, Self::Closed { .. })
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match *self {
            Self::Closed { .. } => Admission::Send,
            Self::Open { until, cooldown } if now >= until => {
                *self = Self::HalfOpen {
                    probing: true,
                    cooldown,
                };
                Admission::Probe
            }
            Self::Open { until, .. } => Admission::Defer(until - now),
            Self::HalfOpen { probing: true, .. } => Admission::Wait,
            Self::HalfOpen { cooldown, .. } => {
                *self = Self::HalfOpen {
                    probing: true,
                    cooldown,
                };
                Admission::Probe
            }
        }
    }

    /// A probe was admitted but not sent (rate limit) or told nothing: let the next one probe.
    pub fn unprobe(&mut self) {
        if let Self::HalfOpen { cooldown, .. } = *self {
            *self = Self::HalfOpen {
                probing: false,
                cooldown,
            };
        }
    }

    /// Closes the circuit; true if it was open or probing (worth a log line).
    pub fn success(&mut self) -> bool {
        let was_open = !matches!(self, Self::Closed { .. });
        *self = Self::Closed { failures: 0 };
        was_open
    }

    /// Counts a failed attempt; returns the cool-down when this failure opened the circuit (or
    /// re-opened it after a failed probe).
    pub fn failure(&mut self, now: Instant, b: &Breaker) -> Option<Duration> {
        let was_open = matches!(self, Self::Open { .. });
        *self = match *self {
            Self::Closed { failures } if failures + 1 >= b.threshold => Self::Open {
                until: now + b.cooldown,
                cooldown: b.cooldown,
            },
            Self::Closed { failures } => Self::Closed {
                failures: failures + 1,
            },
            Self::HalfOpen { cooldown, .. } | Self::Open { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(b.max_cooldown);
                Self::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
        };
        match *self {
            Self::Open { cooldown, .. } if !was_open => Some(cooldown),
            _ => None,
        }
    }
}

pub struct Lane {
    pub queue: VecDeque<Job>,
    pub in_flight: u32,
    /// When each request in flight was sent, oldest first.
    started: VecDeque<Instant>,
    /// When a request last finished.
    last_finished: Option<Instant>,
    pub paused_until: Option<Instant>,
    pub circuit: Circuit,
    limiter: Option<(f64, DefaultDirectRateLimiter)>,
    /// A wake-up is scheduled (rate limit), so no second timer is started.
    pub wake_pending: bool,
    /// Queued behind the global in-flight cap.
    pub waiting_global: bool,
    /// Queued behind its tenant's in-flight share.
    pub waiting_tenant: bool,
    /// Moving average of request durations, in seconds (none before the first request).
    latency: Option<f64>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            in_flight: 0,
            started: VecDeque::new(),
            last_finished: None,
            paused_until: None,
            circuit: Circuit::Closed { failures: 0 },
            limiter: None,
            wake_pending: false,
            waiting_global: false,
            waiting_tenant: false,
            latency: None,
        }
    }
}

impl Lane {
    /// Whether a request of this endpoint has been answered yet (its pace is known).
    pub fn proven(&self) -> bool {
        self.latency.is_some()
    }

    /// Records held: queued or in flight.
    pub fn held(&self) -> usize {
        self.queue.len() + self.in_flight as usize
    }

    /// A request was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.in_flight += 1;
        self.started.push_back(at);
    }

    /// The request sent at `started` is over after `took`.
    pub fn finished(&mut self, started: Instant, took: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_finished = Some(started + took);
        if let Some(i) = self.started.iter().position(|t| *t == started) {
            self.started.remove(i);
        } else {
            self.started.pop_front();
        }
        if took.is_zero() {
            return;
        }
        let s = took.as_secs_f64();
        self.latency = Some(self.latency.map_or(s, |avg| 0.8 * avg + 0.2 * s));
    }

    /// How long a record joining the queue now would wait, from the endpoint's pace — its
    /// recent latency, or, when every slot is taken, at least the age of the oldest request in
    /// flight (an endpoint that never answers has no "recent latency", but its oldest request
    /// says how slow it is) — its in-flight cap and its rate limit; zero while nothing is known.
    pub fn expected_wait(&self, cap: u32, rate: Option<f64>, now: Instant) -> Duration {
        let Some(per_sec) = self.pace(cap, rate, now) else {
            return Duration::ZERO;
        };
        #[allow(clippy::cast_precision_loss)] // Queue lengths are far below 2^52.
        let queued = (self.queue.len() + 1) as f64;
        Duration::try_from_secs_f64(queued / per_sec).unwrap_or(Duration::MAX)
    }

    /// Records a second this endpoint drains at (module docs of `expected_wait`), if known.
    /// The age of the oldest request in flight counts only when every slot is busy and nothing
    /// has finished since it was sent: then the endpoint is stuck, not merely busy.
    fn pace(&self, cap: u32, rate: Option<f64>, now: Instant) -> Option<f64> {
        let latency = self.effective_latency(cap, now)?;
        let by_cap = f64::from(cap.max(1)) / latency.max(1e-4);
        Some(rate.map_or(by_cap, |r| by_cap.min(r.max(1e-3))))
    }

    /// How long this endpoint takes per request, in seconds, as the wait estimate sees it: its
    /// recent latency, or the age of its oldest request when every slot is busy and nothing has
    /// finished since that one was sent (then it is stuck, not merely busy).
    pub fn effective_latency(&self, cap: u32, now: Instant) -> Option<f64> {
        let oldest = (self.in_flight >= cap.max(1))
            .then(|| self.started.front())
            .flatten()
            .filter(|t| self.last_finished.is_none_or(|f| f < **t))
            .map(|t| now.saturating_duration_since(*t).as_secs_f64());
        match (self.latency, oldest) {
            (Some(l), Some(o)) => Some(l.max(o)),
            (Some(l), None) => Some(l),
            (None, Some(o)) if o > 0.0 => Some(o),
            _ => None,
        }
    }

    /// How many queued records can start within `within` at the endpoint's pace; `None` while
    /// nothing is known.
    pub fn drains_within(
        &self,
        cap: u32,
        rate: Option<f64>,
        now: Instant,
        within: Duration,
    ) -> Option<usize> {
        let per_sec = self.pace(cap, rate, now)?;
        // Truncation is intended: whole records.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let n = (within.as_secs_f64() * per_sec).floor().min(1e12) as usize;
        Some(n)
    }

    /// Not yet answered although a request has been in flight for [`SUSPECT_AFTER`]: an
    /// endpoint that may never answer, whose records must not pile up (admission.rs).
    pub fn suspect(&self, now: Instant) -> bool {
        !self.proven()
            && self
                .started
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > SUSPECT_AFTER)
    }

    /// Nothing here is worth keeping: the lane can be forgotten (memory stays proportional to
    /// the endpoints with work or state, not to all endpoints ever seen).
    pub fn idle(&self, now: Instant) -> bool {
        self.queue.is_empty()
            && self.in_flight == 0
            && self.started.is_empty()
            && self.paused_until.is_none_or(|t| t <= now)
            && self.circuit == Circuit::Closed { failures: 0 }
    }

    /// A token from the endpoint's rate limit, or how long until one is available. The limiter
    /// is rebuilt when the endpoint's rate changes; the burst is one second's worth.
    ///
    /// Any rate works: the API accepts 0.001 to 10,000 per second, but a row written otherwise
    /// (an older release, a manual update) may hold any positive number, and a service must
    /// not panic on a value it did not choose. The period is clamped to [1 µs, 1 day], the
    /// burst to [1, 10,000]; a rate that is not a positive finite number means no limit.
    pub fn take_token(&mut self, rate: Option<f64>) -> Result<(), Duration> {
        let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) else {
            self.limiter = None;
            return Ok(());
        };
        if self.limiter.as_ref().is_none_or(|(r, _)| *r != rate) {
            let period = Duration::try_from_secs_f64(1.0 / rate)
                .unwrap_or(MAX_PERIOD)
                .clamp(Duration::from_micros(1), MAX_PERIOD);
            // Truncation is intended: the burst is the whole requests of one second.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let burst =
                NonZeroU32::new((rate.min(10_000.0) as u32).max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .map(|q| q.allow_burst(burst))
                .unwrap_or_else(|| Quota::per_second(burst));
            self.limiter = Some((rate, RateLimiter::direct(quota)));
        }
        match &self.limiter {
            Some((_, limiter)) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Breaker = Breaker {
        threshold: 3,
        cooldown: Duration::from_secs(1),
        max_cooldown: Duration::from_secs(3),
    };

    #[test]
    fn opens_probes_and_closes() {
        let now = Instant::now();
        let mut c = Circuit::Closed { failures: 0 };
        assert_eq!(c.failure(now, &B), None);
        assert_eq!(c.failure(now, &B), None);
        assert_eq!(c.admit(now), Admission::Send);
        // The opening failure says so (one log line), later ones while open do not.
        assert_eq!(c.failure(now, &B), Some(Duration::from_secs(1)));
        assert_eq!(c.admit(now), Admission::Defer(Duration::from_secs(1)));
        let later = now + Duration::from_secs(1);
        assert_eq!(c.admit(later), Admission::Probe);
        assert_eq!(c.admit(later), Admission::Wait);
        assert_eq!(c.failure(later, &B), Some(Duration::from_secs(2)));
        // Doubled cool-down after a failed probe.
        assert_eq!(c.admit(later), Admission::Defer(Duration::from_secs(2)));
        let after = later + Duration::from_secs(2);
        assert_eq!(c.admit(after), Admission::Probe);
        c.failure(after, &B);
        // Capped.
        assert_eq!(c.admit(after), Admission::Defer(Duration::from_secs(3)));
        assert_eq!(c.admit(after + Duration::from_secs(3)), Admission::Probe);
        assert!(c.success());
        assert_eq!(c, Circuit::Closed { failures: 0 });
        assert!(!c.success());
        assert_eq!(c.admit(after), Admission::Send);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let now = Instant::now();
        let mut c = Circuit::Closed { failures: 0 };
        c.failure(now, &B);
        c.failure(now, &B);
        c.success();
        c.failure(now, &B);
        assert_eq!(c.admit(now), Admission::Send);
    }

    #[test]
    fn the_wait_estimate_follows_latency_cap_and_rate() {
        let mut lane = Lane::default();
        let now = Instant::now();
        assert_eq!(
            lane.expected_wait(10, None, now),
            Duration::ZERO,
            "unknown: no estimate"
        );
        lane.sent(now);
        lane.finished(now, Duration::from_secs(2));
        for _ in 0..9 {
            lane.queue.push_back(crate::job::Job::placeholder());
        }
        // 10 records ahead of it (9 queued + itself), 10 at a time, 2 s each: 2 s.
        let wait = lane.expected_wait(10, None, now);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        // A rate limit of 1/s is the tighter bound: 10 s.
        let wait = lane.expected_wait(10, Some(1.0), now);
        assert!((wait.as_secs_f64() - 10.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn an_endpoint_that_never_answers_has_a_pace_too() {
        let mut lane = Lane::default();
        let start = Instant::now();
        lane.sent(start);
        lane.queue.push_back(crate::job::Job::placeholder());
        // Its one slot has been busy for 8 s without an answer: a second record waits >= 16 s.
        let wait = lane.expected_wait(1, None, start + Duration::from_secs(8));
        assert!(wait >= Duration::from_secs(16), "{wait:?}");
        // Below the cap the oldest request says nothing (a slot is free).
        assert_eq!(
            lane.expected_wait(2, None, start + Duration::from_secs(8)),
            Duration::ZERO
        );
    }

    #[test]
    fn any_rate_is_handled() {
        for rate in [
            1e-20,
            1e-9,
            0.001,
            1.0,
            1e4,
            1e9,
            1e300,
            f64::MIN_POSITIVE,
            f64::MAX,
        ] {
            let mut lane = Lane::default();
            assert!(lane.take_token(Some(rate)).is_ok(), "{rate}: first token");
            if let Err(wait) = lane.take_token(Some(rate)) {
                assert!(wait <= MAX_PERIOD, "{rate}: {wait:?}");
            }
        }
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut lane = Lane::default();
            assert!(lane.take_token(Some(rate)).is_ok(), "{rate}: no limit");
            assert!(lane.take_token(Some(rate)).is_ok(), "{rate}: no limit");
        }
    }

    #[test]
    fn rate_limit_hands_out_a_second_worth_then_waits() {
        let mut lane = Lane::default();
        for _ in 0..5 {
            assert!(lane.take_token(Some(5.0)).is_ok());
        }
        let wait = lane.take_token(Some(5.0)).expect_err("bucket empty");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(lane.take_token(None).is_ok());
    }
}
