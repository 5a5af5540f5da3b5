//! Which queued record of which endpoint is sent now, and which is deferred.
//!
//! This is the dispatcher's scheduling, without I/O: it takes records, the endpoints'
//! settings and what finished, and answers with actions (send this job, defer that one, wake
//! this lane later) that the dispatcher carries out. Being pure, it is driven by a property
//! test over every setting the API and the configuration accept (no panic, every bound holds).
//!
//! **Budgets are shared, not first come first served.** Global limits alone would let one
//! endpoint take everything: an endpoint that accepts connections and never answers, with
//! `max_in_flight` 1000 and a 300 s timeout, would hold every in-flight slot, and its queue
//! would fill `delivery.max_pending` so that reading stops for everyone. So each budget has a
//! share per tenant and per endpoint (`delivery.tenant_share`, `delivery.endpoint_share`), shaped
//! so that a healthy backlog — one tenant alone, a fast endpoint catching up — is never held
//! back by them:
//!
//! - **in flight**: an endpoint sends at most `min(its max_in_flight, endpoint_share ×
//!   delivery.max_in_flight)` (a hard cap: a slot taken by an endpoint that never answers
//!   cannot be taken back for its whole timeout). A tenant may go beyond `tenant_share ×
//!   delivery.max_in_flight` only while the global count is below `(1 − tenant_share) ×` it,
//!   so other tenants always find slots, and a tenant alone still uses most of them.
//! - **pending**: records held (queued or in flight) harm others only when they do not drain.
//!   An endpoint whose own pace binds — its rate limit sets it, or it is markedly slower than
//!   the endpoints this consumer serves as a whole (its latency over [`SLOWER`] times theirs,
//!   the reference kept between 25 ms and a tenth of `delivery.max_queue_wait`) — is bounded by
//!   its pace: a record that would wait longer than `delivery.max_queue_wait` is deferred, and
//!   what its queue holds beyond that is shed (deferred) every second. An endpoint that keeps
//!   up with the rest is deferred for pace only beyond [`CATCH_UP_SHARES`] endpoint shares of
//!   the pending budget (half of it by default): when every endpoint's queue is deep at once —
//!   a backlog that built while the consumer was away (a restart, a rebalance, an outage, a
//!   deployment) — the consumer is what is slow, not the endpoints, and a deferral would only
//!   send healthy deliveries round the retry tiers and make them later (issue 20;
//!   `platform-tests/tests/it/catch_up.rs`); the bound keeps one endpoint (a lone slow one is
//!   its own reference) from taking the whole budget and stopping reading for everyone. The
//!   lane's hard bound (`delivery.endpoint_queue`) still holds. An endpoint whose first request has gone unanswered for 100 ms
//!   (suspect: it may never answer) may hold at most `endpoint_share × delivery.max_pending`
//!   records, and all a tenant's endpoints of unknown pace together `tenant_share ×` that;
//!   records beyond are deferred at once and its queue is shed down to that, so the records of
//!   a stuck endpoint flow through to the retry tiers (durable and quick) and reading goes on.
//!   A healthy endpoint answers its first request well within 100 ms, so a backlog of it is
//!   queued, not deferred. The same bounds hold for a lane that waits on its tenant's share
//!   while none of the tenant's requests has come back for 100 ms (the tenant is stalled:
//!   all it holds counts against its share), and for one that waits on the global cap while
//!   none of anyone's has: queues behind slots that do not come back do not drain either.
//!
//! A lane blocked by its tenant's share waits in its tenant's queue, one blocked by the global
//! cap in the global queue; a finished request wakes its own lane first, then its tenant's
//! waiting lanes, then the global queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use shared::ids::{EndpointId, TenantId};

use crate::job::{Deferral, Job, Signal};
use crate::lanes::{Admission, Breaker, Circuit, Lane, SUSPECT_AFTER};

/// An endpoint is slower than the rest when its latency exceeds this many times the latency of
/// all answered requests (the consumer's reference)...
pub const SLOWER: f64 = 4.0;
/// ...and the reference is taken as at least this, so that endpoints answering in a few
/// milliseconds beside ones answering in a fraction of one are not told apart...
const REFERENCE_FLOOR: f64 = 0.025;
/// (The reference is also at most a tenth of `delivery.max_queue_wait`, so slow answers — an
/// attacker's, or a lone slow endpoint's own — cannot raise it until nothing counts as slow.)
/// A lane that keeps up with the rest may hold this many endpoint shares of the pending budget
/// while it catches up (half the budget with the default share).
const CATCH_UP_SHARES: usize = 5;

/// The budgets, with the shares already applied.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_in_flight: usize,
    pub tenant_in_flight: usize,
    pub endpoint_in_flight: u32,
    pub tenant_pending: usize,
    pub endpoint_pending: usize,
    pub endpoint_queue: usize,
    pub max_queue_wait: Duration,
    /// The longest pause a `Retry-After` may impose (the largest tier's delay).
    pub max_pause: Duration,
    pub breaker: Breaker,
}

/// `share` of `total`, at least one.
pub fn share(total: usize, share: f64) -> usize {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let n = (total as f64 * share).floor() as usize;
    n.clamp(1, total.max(1))
}

/// What the core needs to know of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    pub max_in_flight: u32,
    pub rate: Option<f64>,
}

/// Until an endpoint is loaded (by its first task), one request at a time.
const UNKNOWN: EndpointLimits = EndpointLimits {
    max_in_flight: 1,
    rate: None,
};

#[derive(Debug)]
pub enum Action {
    Send(Job),
    Defer {
        job: Job,
        why: Deferral,
        wanted: Duration,
    },
    /// Pump this lane again after the rate limit's wait.
    Wake {
        endpoint: EndpointId,
        after: Duration,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    in_flight: usize,
    queued: usize,
    /// Records held (queued or in flight) by this tenant's lanes whose pace is not yet known.
    unproven: usize,
    activity: Activity,
}

/// When requests of a group (a tenant, or all) started being in flight and last finished.
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    busy_since: Option<Instant>,
    last_finished: Option<Instant>,
}

impl Activity {
    fn started(&mut self, in_flight_before: usize, now: Instant) {
        if in_flight_before == 0 {
            self.busy_since = Some(now);
        }
    }

    fn finished(&mut self, now: Instant) {
        self.last_finished = Some(now);
    }

    /// Requests in flight, and none finished for [`SUSPECT_AFTER`] since they began: every
    /// slot of the group is held by requests that do not come back (its waiting lanes do not
    /// drain), not merely busy.
    fn stalled(&self, in_flight: usize, now: Instant) -> bool {
        let since = match (self.busy_since, self.last_finished) {
            (Some(b), Some(f)) => b.max(f),
            (Some(b), None) => b,
            (None, _) => return false,
        };
        in_flight > 0 && now.saturating_duration_since(since) > SUSPECT_AFTER
    }
}

pub struct Core {
    pub lanes: HashMap<EndpointId, Lane>,
    tenants: HashMap<TenantId, Usage>,
    in_flight: usize,
    activity: Activity,
    /// Lanes with work blocked only by the global cap, in arrival order.
    waiting: VecDeque<EndpointId>,
    /// Lanes blocked by their tenant's share.
    tenant_waiting: HashMap<TenantId, VecDeque<EndpointId>>,
    limits: Limits,
    /// Moving average of every answered request's duration, in seconds: what "slow" is
    /// measured against (none before the first answer).
    latency: Option<f64>,
}

/// Looks an endpoint's settings up (the endpoint cache).
pub trait Settings {
    fn limits(&self, endpoint: &EndpointId) -> Option<EndpointLimits>;
}

impl Core {
    pub fn new(limits: Limits) -> Self {
        Self {
            lanes: HashMap::new(),
            tenants: HashMap::new(),
            in_flight: 0,
            activity: Activity::default(),
            waiting: VecDeque::new(),
            tenant_waiting: HashMap::new(),
            limits,
            latency: None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn cap(&self, ep: EndpointLimits) -> u32 {
        ep.max_in_flight
            .clamp(1, self.limits.endpoint_in_flight.max(1))
    }

    /// The lane does not drain: its endpoint is suspect, or the slots it waits for are all
    /// held by requests that do not come back (its tenant's, or everyone's).
    fn stuck(&self, lane: &Lane, tenant: &TenantId, now: Instant) -> bool {
        lane.suspect(now)
            || (lane.waiting_tenant
                && self
                    .tenants
                    .get(tenant)
                    .is_some_and(|u| u.activity.stalled(u.in_flight, now)))
            || (lane.waiting_global && self.activity.stalled(self.in_flight, now))
    }

    /// Whether `lane`'s own pace is what holds its records back (module docs): its rate limit
    /// sets its pace (the tenant's setting, not the consumer's), or it is markedly slower than
    /// the endpoints this consumer serves as a whole. The reference is bounded above, so slow
    /// answers (an attacker's, or the lane's own) cannot raise it until nothing counts as slow.
    /// Unknown while nothing has been answered anywhere (an endpoint that never answers is the
    /// suspect rule's).
    fn own_pace_binds(&self, lane: &Lane, cap: u32, rate: Option<f64>, now: Instant) -> bool {
        let Some(own) = lane.effective_latency(cap, now) else {
            return false;
        };
        let by_cap = f64::from(cap.max(1)) / own.max(1e-4);
        if rate.is_some_and(|r| r < by_cap) {
            return true;
        }
        let ceiling = (self.limits.max_queue_wait.as_secs_f64() / 10.0).max(REFERENCE_FLOOR);
        self.latency
            .is_some_and(|all| own > SLOWER * all.clamp(REFERENCE_FLOOR, ceiling))
    }

    /// The most a lane that keeps up with the rest may hold while its queue waits longer than
    /// `max_queue_wait`: catching up is queued, but no one endpoint takes more than half the
    /// pending budget (reading goes on for everyone whose records are still on the topic).
    fn catch_up_bound(&self) -> usize {
        self.limits.endpoint_pending.saturating_mul(CATCH_UP_SHARES)
    }

    /// What of `tenant`'s holdings counts against its pending share: those of its endpoints
    /// of unknown pace, or everything it holds while none of its requests comes back.
    fn tenant_held(&self, tenant: &TenantId, now: Instant) -> usize {
        self.tenants.get(tenant).map_or(0, |u| {
            if u.activity.stalled(u.in_flight, now) {
                u.unproven.max(u.queued + u.in_flight)
            } else {
                u.unproven
            }
        })
    }

    /// A record read for its endpoint: queue it (and send what may go), or defer it.
    pub fn admit(&mut self, job: Job, settings: &impl Settings, now: Instant) -> Vec<Action> {
        let id = job.record.endpoint_id;
        let tenant = job.record.tenant_id;
        let ep = settings.limits(&id).unwrap_or(UNKNOWN);
        let cap = self.cap(ep);
        let stuck = self
            .lanes
            .get(&id)
            .is_some_and(|lane| self.stuck(lane, &tenant, now));
        let slow = self
            .lanes
            .get(&id)
            .is_some_and(|lane| self.own_pace_binds(lane, cap, ep.rate, now));
        let catch_up_bound = self.catch_up_bound();
        let tenant_over = self.tenant_held(&tenant, now) >= self.limits.tenant_pending;
        let lane = self.lanes.entry(id).or_default();
        if let Some(until) = lane.paused_until.filter(|t| *t > now) {
            return vec![defer(job, Deferral::Paused, until - now)];
        }
        if let Circuit::Open { until, .. } = lane.circuit
            && until > now
        {
            return vec![defer(job, Deferral::CircuitOpen, until - now)];
        }
        // A lane that does not drain holds its share of the pending budget, or its tenant does
        // (module docs); or its queue is full, or — for an endpoint markedly slower than the
        // rest — a new record would wait longer than `max_queue_wait` at its pace. A deep queue
        // of an endpoint that keeps up with the others is the consumer catching up: queued.
        let unproven = !lane.proven();
        let over_share = stuck && (lane.held() >= self.limits.endpoint_pending || tenant_over);
        let over_pace = !lane.waiting_global
            && !lane.queue.is_empty()
            && (lane.queue.len() >= self.limits.endpoint_queue
                || ((slow || lane.held() >= catch_up_bound)
                    && lane.expected_wait(cap, ep.rate, now) > self.limits.max_queue_wait));
        if over_share || over_pace {
            return vec![defer(job, Deferral::Overflow, Duration::ZERO)];
        }
        lane.queue.push_back(job);
        let usage = self.tenants.entry(tenant).or_default();
        usage.queued += 1;
        if unproven {
            usage.unproven += 1;
        }
        let mut actions = Vec::new();
        self.pump(id, settings, now, &mut actions);
        actions
    }

    /// Starts as many of the lane's records as its state and the budgets allow.
    fn pump(
        &mut self,
        id: EndpointId,
        settings: &impl Settings,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ep = settings.limits(&id).unwrap_or(UNKNOWN);
        let cap = self.cap(ep);
        loop {
            let Some(lane) = self.lanes.get_mut(&id) else {
                return;
            };
            let Some(tenant) = lane.queue.front().map(|j| j.record.tenant_id) else {
                return;
            };
            if lane.in_flight >= cap {
                return;
            }
            if let Some(until) = lane.paused_until.filter(|t| *t > now) {
                let unproven = !lane.proven();
                let jobs: Vec<Job> = lane.queue.drain(..).collect();
                self.dequeued(&jobs, unproven);
                out.extend(
                    jobs.into_iter()
                        .map(|job| defer(job, Deferral::Paused, until - now)),
                );
                return;
            }
            if self.in_flight >= self.limits.max_in_flight {
                if !lane.waiting_global {
                    lane.waiting_global = true;
                    self.waiting.push_back(id);
                }
                return;
            }
            let usage = self.tenants.entry(tenant).or_default();
            // Beyond its share only while enough slots stay free for the others.
            let spare = self.in_flight
                < self
                    .limits
                    .max_in_flight
                    .saturating_sub(self.limits.tenant_in_flight);
            if usage.in_flight >= self.limits.tenant_in_flight && !spare {
                if !lane.waiting_tenant {
                    lane.waiting_tenant = true;
                    self.tenant_waiting.entry(tenant).or_default().push_back(id);
                }
                return;
            }
            let admission = lane.circuit.admit(now);
            match admission {
                Admission::Defer(rest) => {
                    let unproven = !lane.proven();
                    let jobs: Vec<Job> = lane.queue.drain(..).collect();
                    self.dequeued(&jobs, unproven);
                    out.extend(
                        jobs.into_iter()
                            .map(|job| defer(job, Deferral::CircuitOpen, rest)),
                    );
                    return;
                }
                Admission::Wait => return,
                Admission::Send | Admission::Probe => {}
            }
            if let Err(wait) = lane.take_token(ep.rate) {
                if admission == Admission::Probe {
                    lane.circuit.unprobe();
                }
                if !lane.wake_pending {
                    lane.wake_pending = true;
                    out.push(Action::Wake {
                        endpoint: id,
                        after: wait,
                    });
                }
                return;
            }
            let Some(mut job) = lane.queue.pop_front() else {
                return;
            };
            lane.sent(now);
            job.sent_at = now;
            usage.activity.started(usage.in_flight, now);
            usage.in_flight += 1;
            usage.queued = usage.queued.saturating_sub(1);
            self.activity.started(self.in_flight, now);
            self.in_flight += 1;
            out.push(Action::Send(job));
        }
    }

    /// `jobs` left their lane's queue without being sent (deferred, handed back).
    fn dequeued(&mut self, jobs: &[Job], unproven: bool) {
        for job in jobs {
            if let Some(u) = self.tenants.get_mut(&job.record.tenant_id) {
                u.queued = u.queued.saturating_sub(1);
                if unproven {
                    u.unproven = u.unproven.saturating_sub(1);
                }
            }
        }
    }

    /// A request is over: free its slots, learn from the answer, and send what may go now.
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        &mut self,
        endpoint: EndpointId,
        tenant: TenantId,
        signal: Signal,
        started: Instant,
        took: Duration,
        settings: &impl Settings,
        now: Instant,
    ) -> Vec<Action> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !took.is_zero() {
            let t = took.as_secs_f64();
            self.latency = Some(self.latency.map_or(t, |avg| 0.95 * avg + 0.05 * t));
        }
        // Its pace before and after this answer: the first answer proves it, and its records
        // held stop counting against the tenant's unproven budget.
        let (before, after) = match self.lanes.get_mut(&endpoint) {
            Some(lane) => {
                let before = !lane.proven();
                lane.finished(started, took);
                let after = if before && lane.proven() {
                    lane.held()
                } else {
                    0
                };
                (before, after)
            }
            None => (false, 0),
        };
        self.activity.finished(now);
        if let Some(u) = self.tenants.get_mut(&tenant) {
            u.in_flight = u.in_flight.saturating_sub(1);
            u.activity.finished(now);
            if before {
                // This request, and (once proven) everything else the lane holds.
                u.unproven = u.unproven.saturating_sub(1 + after);
            }
        }
        if let Some(lane) = self.lanes.get_mut(&endpoint) {
            match signal {
                Signal::Success => {
                    if lane.circuit.success() {
                        tracing::info!(endpoint_id = %endpoint, "circuit closed: the probe succeeded");
                    }
                }
                Signal::Failure => {
                    if let Some(cooldown) = lane.circuit.failure(now, &self.limits.breaker) {
                        // Once per opening, not per deferred record: the runbook's signal.
                        tracing::warn!(endpoint_id = %endpoint, cooldown = ?cooldown,
                            "circuit opened: nothing is sent to this endpoint until a probe succeeds");
                    }
                }
                Signal::Pause(d) => {
                    lane.circuit.unprobe();
                    lane.paused_until = Some(now + d.min(self.limits.max_pause));
                }
                Signal::Nothing => lane.circuit.unprobe(),
            }
        }
        let mut out = Vec::new();
        self.pump(endpoint, settings, now, &mut out);
        while self
            .tenants
            .get(&tenant)
            .is_some_and(|u| u.in_flight < self.limits.tenant_in_flight)
        {
            let Some(next) = self
                .tenant_waiting
                .get_mut(&tenant)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            if let Some(lane) = self.lanes.get_mut(&next) {
                lane.waiting_tenant = false;
            }
            self.pump(next, settings, now, &mut out);
        }
        while self.in_flight < self.limits.max_in_flight {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            if let Some(lane) = self.lanes.get_mut(&next) {
                lane.waiting_global = false;
            }
            self.pump(next, settings, now, &mut out);
        }
        out
    }

    /// A lane's rate-limit wait is over.
    pub fn wake(&mut self, id: EndpointId, settings: &impl Settings, now: Instant) -> Vec<Action> {
        if let Some(lane) = self.lanes.get_mut(&id) {
            lane.wake_pending = false;
        }
        let mut out = Vec::new();
        self.pump(id, settings, now, &mut out);
        out
    }

    /// Drops the queued (not started) records of `partitions` (revoked: their next owner reads
    /// them from the committed offset); returns how many.
    pub fn purge(&mut self, partitions: &HashSet<i32>) -> usize {
        let mut dropped = Vec::new();
        for lane in self.lanes.values_mut() {
            let (gone, keep): (VecDeque<Job>, VecDeque<Job>) = lane
                .queue
                .drain(..)
                .partition(|j| partitions.contains(&j.partition));
            lane.queue = keep;
            dropped.push((gone, !lane.proven()));
        }
        let mut n = 0;
        for (jobs, unproven) in dropped {
            n += jobs.len();
            let jobs: Vec<Job> = jobs.into();
            self.dequeued(&jobs, unproven);
        }
        n
    }

    /// Defers what queues hold beyond their bounds (module docs): a suspect endpoint's queue
    /// beyond its share (or all of it, when its tenant is over its share), a known endpoint's
    /// that is slower than the rest beyond what drains within `max_queue_wait`. Newest records
    /// go first.
    pub fn shed(&mut self, settings: &impl Settings, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let ids: Vec<EndpointId> = self.lanes.keys().copied().collect();
        for id in ids {
            let ep = settings.limits(&id).unwrap_or(UNKNOWN);
            let cap = self.cap(ep);
            let Some(lane) = self.lanes.get(&id) else {
                continue;
            };
            let Some(tenant) = lane.queue.front().map(|j| j.record.tenant_id) else {
                continue;
            };
            let keep = if self.stuck(lane, &tenant, now) {
                if self.tenant_held(&tenant, now) > self.limits.tenant_pending {
                    0
                } else {
                    self.limits
                        .endpoint_pending
                        .saturating_sub(lane.in_flight as usize)
                }
            } else if lane.waiting_global || lane.waiting_tenant {
                continue; // Waiting on shared slots that do come back.
            } else {
                let Some(n) = lane.drains_within(cap, ep.rate, now, self.limits.max_queue_wait)
                else {
                    continue;
                };
                if self.own_pace_binds(lane, cap, ep.rate, now) {
                    n.max(1)
                } else {
                    // Keeping up with the others: catching up, within half the budget.
                    n.max(
                        self.catch_up_bound()
                            .saturating_sub(lane.in_flight as usize),
                    )
                }
            };
            let Some(lane) = self.lanes.get_mut(&id) else {
                continue;
            };
            if lane.queue.len() <= keep {
                continue;
            }
            let unproven = !lane.proven();
            let excess: Vec<Job> = lane.queue.drain(keep..).collect();
            self.dequeued(&excess, unproven);
            out.extend(
                excess
                    .into_iter()
                    .map(|job| defer(job, Deferral::Overflow, Duration::ZERO)),
            );
        }
        out
    }

    /// Per second: counts paused and open endpoints, forgets lanes and tenants with nothing
    /// worth keeping (memory stays proportional to the endpoints with work or state).
    pub fn housekeeping(&mut self, now: Instant) -> (i64, i64) {
        let (mut paused, mut open) = (0, 0);
        for lane in self.lanes.values_mut() {
            if lane.paused_until.is_some_and(|t| t > now) {
                paused += 1;
            } else if lane.paused_until.is_some() {
                lane.paused_until = None;
            }
            if lane.circuit.is_open() {
                open += 1;
            }
        }
        self.lanes.retain(|_, lane| {
            !lane.idle(now) || lane.wake_pending || lane.waiting_global || lane.waiting_tenant
        });
        self.tenants.retain(|_, u| u.in_flight > 0 || u.queued > 0);
        self.tenant_waiting.retain(|_, q| !q.is_empty());
        (paused, open)
    }

    /// In flight, queued, and held by lanes of unknown pace, of `tenant`.
    #[cfg(test)]
    pub fn tenant_usage(&self, tenant: &TenantId) -> (usize, usize, usize) {
        self.tenants
            .get(tenant)
            .map_or((0, 0, 0), |u| (u.in_flight, u.queued, u.unproven))
    }
}

fn defer(job: Job, why: Deferral, wanted: Duration) -> Action {
    Action::Defer { job, why, wanted }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use shared::ids::{EndpointId, TenantId};

    use super::*;

    /// The rates a row may hold: what the API accepts, and what it never would.
    fn rate() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            (0.001f64..=10_000.0).prop_map(Some),
            prop::sample::select(vec![1e-20, 1e-9, 1e9, 1e300, f64::MIN_POSITIVE, f64::MAX])
                .prop_map(Some),
        ]
    }

    #[derive(Debug, Clone)]
    struct Setup {
        limits: Limits,
        endpoints: Vec<(TenantId, EndpointId, EndpointLimits)>,
    }

    fn setup() -> impl Strategy<Value = Setup> {
        let limits = (
            1usize..=3_000,
            1usize..=50_000,
            0.001f64..=1.0,
            0.001f64..=1.0,
            1usize..=50_000,
            0u64..=86_400_000,
            1u32..=100,
            1u64..=60_000,
        );
        let endpoint = (0usize..4, 1u32..=1000, rate());
        (limits, prop::collection::vec(endpoint, 1..8)).prop_map(|(l, eps)| {
            let (in_flight, pending, t_share, e_share, queue, wait_ms, threshold, cool_ms) = l;
            let tenants: Vec<TenantId> = (0..4).map(|_| TenantId::new()).collect();
            Setup {
                limits: Limits {
                    max_in_flight: in_flight,
                    tenant_in_flight: share(in_flight, t_share),
                    endpoint_in_flight: u32::try_from(share(in_flight, e_share))
                        .unwrap_or(u32::MAX),
                    tenant_pending: share(pending, t_share),
                    endpoint_pending: share(pending, e_share),
                    endpoint_queue: queue,
                    max_queue_wait: Duration::from_millis(wait_ms),
                    max_pause: Duration::from_secs(36_000),
                    breaker: Breaker {
                        threshold,
                        cooldown: Duration::from_millis(cool_ms),
                        max_cooldown: Duration::from_millis(cool_ms * 20),
                    },
                },
                endpoints: eps
                    .into_iter()
                    .map(|(t, cap, rate)| {
                        (
                            tenants[t],
                            EndpointId::new(),
                            EndpointLimits {
                                max_in_flight: cap,
                                rate,
                            },
                        )
                    })
                    .collect(),
            }
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(usize, i32),
        /// Finish the n-th request in flight with this answer after `took` ms.
        Finish(usize, u8, u64),
        Wake,
        Tick(u64),
        Revoke(i32),
        Shed,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..8, 0i32..3).prop_map(|(e, p)| Op::Admit(e, p)),
            4 => (0usize..64, 0u8..4, 0u64..300_000).prop_map(|(n, s, t)| Op::Finish(n, s, t)),
            1 => Just(Op::Wake),
            1 => (0u64..120_000).prop_map(Op::Tick),
            1 => (0i32..3).prop_map(Op::Revoke),
            1 => Just(Op::Shed),
        ]
    }

    struct Table(HashMap<EndpointId, EndpointLimits>);

    impl Settings for Table {
        fn limits(&self, endpoint: &EndpointId) -> Option<EndpointLimits> {
            self.0.get(endpoint).copied()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every setting the API and the configuration accept (and rates they never would):
        /// no panic, no budget exceeded, no record lost or counted twice.
        #[test]
        fn the_core_keeps_every_bound(s in setup(), ops in prop::collection::vec(op(), 1..300)) {
            let table = Table(s.endpoints.iter().map(|(_, e, l)| (*e, *l)).collect());
            let mut core = Core::new(s.limits.clone());
            let mut now = Instant::now();
            let mut in_flight: Vec<Job> = Vec::new();
            let mut wakes: Vec<EndpointId> = Vec::new();
            let (mut admitted, mut sent, mut deferred, mut purged) = (0usize, 0usize, 0usize, 0usize);
            let take = |actions: Vec<Action>, in_flight: &mut Vec<Job>, wakes: &mut Vec<EndpointId>,
                            sent: &mut usize, deferred: &mut usize| {
                for a in actions {
                    match a {
                        Action::Send(job) => { *sent += 1; in_flight.push(job) }
                        Action::Defer { .. } => *deferred += 1,
                        Action::Wake { endpoint, after } => {
                            assert!(after <= Duration::from_secs(86_400), "{after:?}");
                            wakes.push(endpoint);
                        }
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Admit(e, partition) => {
                        let (tenant, endpoint, _) = s.endpoints[e % s.endpoints.len()];
                        admitted += 1;
                        let actions = core.admit(Job::for_endpoint(tenant, endpoint, partition), &table, now);
                        take(actions, &mut in_flight, &mut wakes, &mut sent, &mut deferred);
                    }
                    Op::Finish(n, signal, took) if !in_flight.is_empty() => {
                        let job = in_flight.remove(n % in_flight.len());
                        let signal = match signal {
                            0 => Signal::Success,
                            1 => Signal::Failure,
                            2 => Signal::Pause(Duration::from_millis(took)),
                            _ => Signal::Nothing,
                        };
                        let r = &job.record;
                        let actions = core.sent(r.endpoint_id, r.tenant_id, signal, job.sent_at,
                            Duration::from_millis(took), &table, now);
                        take(actions, &mut in_flight, &mut wakes, &mut sent, &mut deferred);
                    }
                    Op::Finish(..) => {}
                    Op::Wake => {
                        for endpoint in std::mem::take(&mut wakes) {
                            let actions = core.wake(endpoint, &table, now);
                            take(actions, &mut in_flight, &mut wakes, &mut sent, &mut deferred);
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        core.housekeeping(now);
                    }
                    Op::Revoke(p) => purged += core.purge(&HashSet::from([p])),
                    Op::Shed => {
                        let actions = core.shed(&table, now);
                        take(actions, &mut in_flight, &mut wakes, &mut sent, &mut deferred);
                        // A lane that does not drain holds at most its share of the pending
                        // budget, and nothing queued while its tenant holds more than its own.
                        for (tenant, endpoint, _) in &s.endpoints {
                            let Some(lane) = core.lanes.get(endpoint) else { continue };
                            if !core.stuck(lane, tenant, now) {
                                continue;
                            }
                            let keep = s.limits.endpoint_pending.saturating_sub(lane.in_flight as usize);
                            prop_assert!(lane.queue.len() <= keep, "{} queued, share {}", lane.queue.len(), keep);
                            if core.tenant_held(tenant, now) > s.limits.tenant_pending {
                                prop_assert!(lane.queue.is_empty());
                            }
                        }
                    }
                }
                // The budgets hold.
                prop_assert_eq!(core.in_flight(), in_flight.len());
                prop_assert!(core.in_flight() <= s.limits.max_in_flight);
                for (tenant, endpoint, limits) in &s.endpoints {
                    let ep = in_flight.iter().filter(|j| j.record.endpoint_id == *endpoint).count();
                    let cap = limits.max_in_flight.min(s.limits.endpoint_in_flight).max(1) as usize;
                    prop_assert!(ep <= cap, "endpoint {} in flight over {}", ep, cap);
                    let t = in_flight.iter().filter(|j| j.record.tenant_id == *tenant).count();
                    // Beyond its share only into slots spare for the others (module docs).
                    let bound = s.limits.tenant_in_flight.max(s.limits.max_in_flight - s.limits.tenant_in_flight);
                    prop_assert!(t <= bound, "tenant {} over {}", t, bound);
                    prop_assert_eq!(core.tenant_usage(tenant).0, t);
                }
                // Each tenant's unproven count is what its lanes of unknown pace hold.
                for tenant in s.endpoints.iter().map(|(t, _, _)| *t).collect::<HashSet<_>>() {
                    let held: usize = s
                        .endpoints
                        .iter()
                        .filter(|(t, _, _)| *t == tenant)
                        .filter_map(|(_, e, _)| core.lanes.get(e))
                        .filter(|l| !l.proven())
                        .map(Lane::held)
                        .sum();
                    prop_assert_eq!(core.tenant_usage(&tenant).2, held);
                }
                // Every record admitted is accounted for exactly once.
                let queued: usize = core.lanes.values().map(|l| l.queue.len()).sum();
                prop_assert_eq!(admitted, sent + deferred + queued + purged);
                let tenant_queued: usize = s.endpoints.iter().map(|(t, _, _)| *t)
                    .collect::<HashSet<_>>().iter().map(|t| core.tenant_usage(t).1).sum();
                prop_assert_eq!(tenant_queued, queued);
            }
        }
    }

    /// The budgets of the default configuration.
    fn defaults() -> Limits {
        Limits {
            max_in_flight: 1000,
            tenant_in_flight: 250,
            endpoint_in_flight: 100,
            tenant_pending: 2500,
            endpoint_pending: 1000,
            endpoint_queue: 10_000,
            max_queue_wait: Duration::from_secs(5),
            max_pause: Duration::from_secs(36_000),
            breaker: Breaker {
                threshold: 10,
                cooldown: Duration::from_secs(30),
                max_cooldown: Duration::from_secs(600),
            },
        }
    }

    #[test]
    fn a_healthy_backlog_is_not_held_back_by_the_shares() {
        let limits = defaults();
        let tenant = TenantId::new();
        let endpoints: Vec<EndpointId> = (0..100).map(|_| EndpointId::new()).collect();
        let table = Table(
            endpoints
                .iter()
                .map(|e| {
                    (
                        *e,
                        EndpointLimits {
                            max_in_flight: 10,
                            rate: None,
                        },
                    )
                })
                .collect(),
        );
        let mut core = Core::new(limits);
        let now = Instant::now();
        // Each endpoint answers once (1 ms): its pace is known.
        for e in &endpoints {
            for a in core.admit(Job::for_endpoint(tenant, *e, 0), &table, now) {
                if let Action::Send(job) = a {
                    core.sent(
                        *e,
                        tenant,
                        Signal::Success,
                        job.sent_at,
                        Duration::from_millis(1),
                        &table,
                        now,
                    );
                }
            }
        }
        // A backlog of 9,000 records for one tenant: none deferred, most slots used.
        let (mut sends, mut defers) = (0, 0);
        for n in 0..9_000 {
            let e = endpoints[n % endpoints.len()];
            for a in core.admit(Job::for_endpoint(tenant, e, 0), &table, now) {
                match a {
                    Action::Send(_) => sends += 1,
                    Action::Defer { .. } => defers += 1,
                    Action::Wake { .. } => {}
                }
            }
        }
        assert_eq!(defers, 0, "a healthy backlog is queued, not deferred");
        assert_eq!(
            sends, 750,
            "a tenant alone uses its share and the spare slots"
        );
    }

    /// Ten endpoints that answer, each with a deep queue: `answers` gives each endpoint's
    /// latency. Returns the records deferred (by reason) while 800 more per endpoint arrive
    /// and a shed runs.
    fn backlog(answers: &[Duration]) -> (HashMap<EndpointId, usize>, Vec<EndpointId>) {
        let limits = defaults();
        let tenant = TenantId::new();
        let endpoints: Vec<EndpointId> = answers.iter().map(|_| EndpointId::new()).collect();
        let table = Table(
            endpoints
                .iter()
                .map(|e| {
                    (
                        *e,
                        EndpointLimits {
                            max_in_flight: 10,
                            rate: None,
                        },
                    )
                })
                .collect(),
        );
        let mut core = Core::new(limits);
        let now = Instant::now();
        // Each endpoint answers its first ten requests with its latency: its pace is known,
        // and so is the consumer's reference.
        for _ in 0..10 {
            for (e, took) in endpoints.iter().zip(answers) {
                for a in core.admit(Job::for_endpoint(tenant, *e, 0), &table, now) {
                    if let Action::Send(job) = a {
                        core.sent(*e, tenant, Signal::Success, job.sent_at, *took, &table, now);
                    }
                }
            }
        }
        let mut deferred: HashMap<EndpointId, usize> = HashMap::new();
        let mut count = |actions: Vec<Action>| {
            for a in actions {
                if let Action::Defer { job, why, .. } = a {
                    assert_eq!(why, Deferral::Overflow);
                    *deferred.entry(job.record.endpoint_id).or_default() += 1;
                }
            }
        };
        for _ in 0..800 {
            for e in &endpoints {
                count(core.admit(Job::for_endpoint(tenant, *e, 0), &table, now));
            }
        }
        count(core.shed(&table, now));
        (deferred, endpoints)
    }

    /// Issue 20: every endpoint answering in 200 ms (the consumer is what is slow: a restart's
    /// backlog on a busy machine) with 800 queued each, 16 s of waiting at their pace: queued,
    /// none deferred.
    #[test]
    fn a_backlog_of_endpoints_that_keep_up_with_each_other_is_queued() {
        let (deferred, _) = backlog(&[Duration::from_millis(200); 10]);
        assert!(deferred.is_empty(), "{deferred:?}");
    }

    /// One endpoint answering in 2 s beside nine answering in 5 ms: it is deferred for its
    /// pace (its 800 would wait 160 s), the others are not.
    #[test]
    fn a_slow_endpoint_beside_fast_ones_is_deferred_for_its_pace() {
        let mut answers = [Duration::from_millis(5); 10];
        answers[0] = Duration::from_secs(2);
        let (deferred, endpoints) = backlog(&answers);
        let slow = deferred.get(&endpoints[0]).copied().unwrap_or(0);
        assert!(slow > 700, "the slow endpoint's excess is deferred: {slow}");
        assert_eq!(deferred.len(), 1, "only the slow one: {deferred:?}");
    }

    /// One endpoint alone (its latency is the whole reference), `rate` its limit: after its
    /// first answers, 20,000 records arrive and a shed runs. Returns what its lane holds.
    fn alone(latency: Duration, rate: Option<f64>) -> usize {
        let limits = defaults();
        let tenant = TenantId::new();
        let e = EndpointId::new();
        let table = Table(HashMap::from([(
            e,
            EndpointLimits {
                max_in_flight: 10,
                rate,
            },
        )]));
        let mut core = Core::new(limits);
        let now = Instant::now();
        for a in core.admit(Job::for_endpoint(tenant, e, 0), &table, now) {
            if let Action::Send(job) = a {
                core.sent(
                    e,
                    tenant,
                    Signal::Success,
                    job.sent_at,
                    latency,
                    &table,
                    now,
                );
            }
        }
        for _ in 0..20_000 {
            let _ = core.admit(Job::for_endpoint(tenant, e, 0), &table, now);
        }
        let _ = core.shed(&table, now);
        core.lanes[&e].held()
    }

    /// A slow endpoint alone is its own reference, so it does not look slower than the rest:
    /// it still may not take the pending budget (reading would stop for every record behind).
    #[test]
    fn a_lone_slow_endpoint_holds_at_most_half_the_pending_budget() {
        let held = alone(Duration::from_secs(1), None);
        assert!(held <= 5 * defaults().endpoint_pending, "{held}");
    }

    /// Very slow alone (3 s, beyond 4 × the reference's ceiling of 0.5 s): bounded by its pace.
    #[test]
    fn a_lone_very_slow_endpoint_is_bounded_by_its_pace() {
        let held = alone(Duration::from_secs(3), None);
        assert!(held <= 30, "{held}");
    }

    /// A fast endpoint whose rate limit is 1/s: its pace is its own setting, and its queue is
    /// bounded by it (5 s of records), as before.
    #[test]
    fn a_rate_limited_endpoint_is_bounded_by_its_rate() {
        let held = alone(Duration::from_millis(5), Some(1.0));
        assert!(held <= 10, "{held}");
    }

    #[test]
    fn a_stuck_endpoint_holds_only_its_share() {
        let limits = defaults();
        let (attacker, victim) = (TenantId::new(), TenantId::new());
        let (stuck, healthy) = (EndpointId::new(), EndpointId::new());
        let table = Table(HashMap::from([
            (
                stuck,
                EndpointLimits {
                    max_in_flight: 1000,
                    rate: None,
                },
            ),
            (
                healthy,
                EndpointLimits {
                    max_in_flight: 10,
                    rate: None,
                },
            ),
        ]));
        let mut core = Core::new(limits);
        let start = Instant::now();
        let (mut sends, mut defers) = (0, 0);
        let count = |actions: Vec<Action>, sends: &mut usize, defers: &mut usize| {
            for a in actions {
                match a {
                    Action::Send(_) => *sends += 1,
                    Action::Defer { why, .. } => {
                        assert_eq!(why, Deferral::Overflow);
                        *defers += 1;
                    }
                    Action::Wake { .. } => {}
                }
            }
        };
        // 2,000 records for an endpoint that never answers arrive before anything is known...
        for _ in 0..2_000 {
            let actions = core.admit(Job::for_endpoint(attacker, stuck, 0), &table, start);
            count(actions, &mut sends, &mut defers);
        }
        assert_eq!(sends, 100, "its share of in-flight slots, not its own 1000");
        // ...and 18,000 more once its first requests have gone unanswered: all deferred, and
        // what it queued beyond its share of the pending budget is shed.
        let later = start + SUSPECT_AFTER * 2;
        for _ in 0..18_000 {
            let actions = core.admit(Job::for_endpoint(attacker, stuck, 0), &table, later);
            count(actions, &mut sends, &mut defers);
        }
        let actions = core.shed(&table, later);
        count(actions, &mut sends, &mut defers);
        let lane = &core.lanes[&stuck];
        assert_eq!(lane.held(), 1000, "its share of pending");
        assert_eq!(defers + sends + lane.queue.len(), 20_000);
        let now = later;
        // The victim still gets slots at once.
        let actions = core.admit(Job::for_endpoint(victim, healthy, 1), &table, now);
        assert!(
            matches!(actions.as_slice(), [Action::Send(_)]),
            "{actions:?}"
        );
    }

    /// The reviewer's attack: a tenant's endpoints that never answer take every slot its
    /// share allows; a flood for another endpoint of the same tenant must not pile up behind
    /// them (it would fill `max_pending` and stop reading for everyone).
    #[test]
    fn a_stalled_tenant_does_not_queue_behind_its_own_slots() {
        let limits = defaults();
        let (attacker, victim) = (TenantId::new(), TenantId::new());
        let hangs: Vec<EndpointId> = (0..8).map(|_| EndpointId::new()).collect();
        let (flooded, healthy) = (EndpointId::new(), EndpointId::new());
        let mut table: HashMap<EndpointId, EndpointLimits> = hangs
            .iter()
            .map(|e| {
                (
                    *e,
                    EndpointLimits {
                        max_in_flight: 1000,
                        rate: None,
                    },
                )
            })
            .collect();
        for e in [flooded, healthy] {
            table.insert(
                e,
                EndpointLimits {
                    max_in_flight: 100,
                    rate: None,
                },
            );
        }
        let table = Table(table);
        let mut core = Core::new(limits.clone());
        let start = Instant::now();
        // The flooded endpoint has answered before: its pace is known (fast).
        for a in core.admit(Job::for_endpoint(attacker, flooded, 0), &table, start) {
            if let Action::Send(job) = a {
                core.sent(
                    flooded,
                    attacker,
                    Signal::Success,
                    job.sent_at,
                    Duration::from_millis(1),
                    &table,
                    start,
                );
            }
        }
        let mut sends = 0;
        for e in &hangs {
            for _ in 0..100 {
                let actions = core.admit(Job::for_endpoint(attacker, *e, 0), &table, start);
                sends += actions
                    .iter()
                    .filter(|a| matches!(a, Action::Send(_)))
                    .count();
            }
        }
        assert_eq!(sends, 750, "its share and the spare slots");
        // None of them answers; a flood for the tenant's healthy endpoint arrives later.
        let later = start + SUSPECT_AFTER * 2;
        let mut deferred = 0;
        for _ in 0..20_000 {
            for a in core.admit(Job::for_endpoint(attacker, flooded, 0), &table, later) {
                if let Action::Defer { why, .. } = a {
                    assert_eq!(why, Deferral::Overflow);
                    deferred += 1;
                }
            }
        }
        deferred += core.shed(&table, later).len();
        let flood = core.lanes[&flooded].queue.len();
        assert!(
            flood <= limits.endpoint_pending,
            "{flood} queued behind slots that do not come back"
        );
        assert_eq!(deferred + flood, 20_000);
        let (in_flight, queued, _) = core.tenant_usage(&attacker);
        assert!(
            in_flight + queued <= limits.tenant_pending,
            "{in_flight} + {queued}"
        );
        // Another tenant still gets a slot at once.
        let actions = core.admit(Job::for_endpoint(victim, healthy, 1), &table, later);
        assert!(
            matches!(actions.as_slice(), [Action::Send(_)]),
            "{actions:?}"
        );
    }
}
