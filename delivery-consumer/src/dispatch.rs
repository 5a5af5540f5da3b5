//! The dispatcher: reads `deliveries`, routes each record to its endpoint's lane, starts the
//! HTTP work as tasks, and releases offsets through the watermark.
//!
//! **No head-of-line blocking.** The dispatcher never waits on an endpoint. A record goes into
//! its endpoint's lane; a lane sends while it is under its in-flight cap (per endpoint, default
//! 10), its rate limit and the global cap (`delivery.max_in_flight`), each send a task of its
//! own. A slow endpoint therefore fills only its own lane: when its queue reaches
//! `delivery.endpoint_queue`, or a new record would wait longer than `delivery.max_queue_wait`
//! at the endpoint's recent pace, further records are deferred to the first retry tier without
//! counting an attempt (durable, so their offsets move on). A paused (`Retry-After`) or open
//! endpoint sends nothing and its records are deferred to the tier that covers the rest of the
//! pause. Everything that waits is bounded: reading stops at `delivery.max_pending` records
//! whose outcome is not yet durable, and resumes as they finish.
//!
//! **Offsets.** See offsets.rs: records finish out of order, offsets are released in order.
//!
//! **Rebalance.** Partitions are revoked eagerly. The revoke callback (which runs inside this
//! task's `recv`) commits what was stored and bumps the epoch; the dispatcher then forgets the
//! watermarks and hands back the records still queued in lanes (the next owner reads them from
//! the committed offset). Requests already in flight finish, but their offsets are no longer
//! stored here: the next owner may send them again, with the same `webhook-id`.
//!
//! **Shutdown.** Reading stops, queued records are handed back, requests in flight get
//! `delivery.drain_timeout` to finish and be recorded, then the stored offsets are committed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message as _};
use shared::ids::EndpointId;
use shared::records::DeliveryRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::job::{self, Deferral, Deps, Event, Job, Signal};
use crate::lanes::{Admission, Breaker, Circuit, Lane};
use crate::offsets::Watermarks;

/// Commits on revoke and bumps the epoch so the dispatcher forgets the revoked partitions.
pub struct DeliveryContext {
    pub epoch: Arc<AtomicU64>,
}

impl ClientContext for DeliveryContext {}

impl ConsumerContext for DeliveryContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing"
            );
            commit(consumer);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn commit<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed"),
    }
}

pub struct Settings {
    pub max_pending: usize,
    pub max_in_flight: usize,
    pub endpoint_queue: usize,
    pub max_queue_wait: Duration,
    pub drain_timeout: Duration,
    /// The longest pause a `Retry-After` may impose (the largest tier's delay).
    pub max_pause: Duration,
    pub breaker: Breaker,
}

pub struct Dispatcher {
    pub consumer: Arc<StreamConsumer<DeliveryContext>>,
    pub topic: String,
    pub deps: Arc<Deps>,
    pub epoch: Arc<AtomicU64>,
    pub settings: Settings,
    /// Cancelled when the drain time is over: tasks still retrying give up.
    pub abandon: CancellationToken,
}

struct State {
    lanes: HashMap<EndpointId, Lane>,
    marks: Watermarks,
    pending: usize,
    in_flight: usize,
    /// Lanes with work, blocked only by the global in-flight cap, in arrival order.
    waiting: VecDeque<EndpointId>,
    epoch: u64,
    tx: mpsc::Sender<Event>,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(4096);
        let mut st = State {
            lanes: HashMap::new(),
            marks: Watermarks::default(),
            pending: 0,
            in_flight: 0,
            waiting: VecDeque::new(),
            epoch: self.epoch.load(Ordering::SeqCst),
            tx,
        };
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        loop {
            let can_read = st.pending < self.settings.max_pending;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = rx.recv() => if let Some(ev) = ev { self.on_event(&mut st, ev) },
                m = self.consumer.recv(), if can_read => match m {
                    Ok(m) => self.on_message(&mut st, &m),
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = gauges.tick() => self.housekeeping(&mut st),
            }
        }
        self.drain(&mut st, &mut rx).await;
    }

    async fn drain(&self, st: &mut State, rx: &mut mpsc::Receiver<Event>) {
        let handed_back = purge(st);
        tracing::info!(
            in_flight = st.in_flight,
            handed_back,
            "shutting down: finishing requests in flight"
        );
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        while st.pending > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => self.on_event(st, ev),
                _ => break,
            }
        }
        if st.pending > 0 {
            tracing::warn!(
                pending = st.pending,
                "drain time over; handing the rest back"
            );
            self.abandon.cancel();
        }
        commit(&*self.consumer);
    }

    fn check_epoch(&self, st: &mut State) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if epoch != st.epoch {
            st.epoch = epoch;
            st.marks.reset();
            let handed_back = purge(st);
            tracing::info!(handed_back, "rebalance: forgot revoked partitions");
        }
    }

    fn on_message(&self, st: &mut State, m: &BorrowedMessage<'_>) {
        self.check_epoch(st);
        let (partition, offset) = (m.partition(), m.offset());
        st.marks.track(partition, offset);
        st.pending += 1;
        let record: DeliveryRecord = match m.payload().map(serde_json::from_slice) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return self.skip(st, partition, offset, &e.to_string()),
            None => return self.skip(st, partition, offset, "no payload"),
        };
        let job = Job {
            record,
            partition,
            offset,
            epoch: st.epoch,
            headers: m.headers().map(|h| h.detach()),
        };
        self.admit(st, job);
    }

    /// A malformed record is logged, counted and released: it never stalls the partition.
    fn skip(&self, st: &mut State, partition: i32, offset: i64, why: &str) {
        tracing::error!(
            partition,
            offset,
            error = why,
            "malformed delivery record skipped"
        );
        self.deps.metrics.malformed.inc();
        let epoch = st.epoch;
        self.finish(st, partition, offset, epoch, true);
    }

    fn finish(&self, st: &mut State, partition: i32, offset: i64, epoch: u64, durable: bool) {
        st.pending -= 1;
        if !durable || epoch != st.epoch {
            return;
        }
        if let Some(position) = st.marks.finish(partition, offset)
            && let Err(e) = self
                .consumer
                .store_offset(&self.topic, partition, position - 1)
        {
            // Only for a partition revoked meanwhile; its next owner repeats the record.
            tracing::debug!(partition, position, error = %e, "offset not stored");
        }
    }

    fn defer(&self, st: &State, job: Job, why: Deferral, wanted: Duration) {
        tokio::spawn(job::defer(
            self.deps.clone(),
            job,
            why,
            wanted,
            st.tx.clone(),
        ));
    }

    fn admit(&self, st: &mut State, job: Job) {
        let id = job.record.endpoint_id;
        let now = Instant::now();
        let lane = st.lanes.entry(id).or_default();
        if let Some(until) = lane.paused_until.filter(|t| *t > now) {
            return self.defer(st, job, Deferral::Paused, until - now);
        }
        if let Circuit::Open { until, .. } = lane.circuit
            && until > now
        {
            return self.defer(st, job, Deferral::CircuitOpen, until - now);
        }
        // A lane is over its bound when its queue is full, or when a new record would wait
        // longer than `max_queue_wait` at the endpoint's recent pace (a slow endpoint); a
        // fast endpoint's deep queue drains in time and is not deferred.
        if !lane.waiting_global && !lane.queue.is_empty() {
            let endpoint = self.deps.endpoints.get(&id);
            let cap = endpoint.as_ref().map_or(1, |e| e.max_in_flight);
            let rate = endpoint.as_ref().and_then(|e| e.rate_limit_per_sec);
            if lane.queue.len() >= self.settings.endpoint_queue
                || lane.expected_wait(cap, rate) > self.settings.max_queue_wait
            {
                return self.defer(st, job, Deferral::Overflow, Duration::ZERO);
            }
        }
        lane.queue.push_back(job);
        self.pump(st, id);
    }

    /// Starts as many of the lane's records as its state allows.
    fn pump(&self, st: &mut State, id: EndpointId) {
        let endpoint = self.deps.endpoints.get(&id);
        // Until the endpoint is loaded (by the first task), one at a time.
        let cap = endpoint.as_ref().map_or(1, |e| e.max_in_flight.max(1));
        let rate = endpoint.as_ref().and_then(|e| e.rate_limit_per_sec);
        loop {
            let now = Instant::now();
            let Some(lane) = st.lanes.get_mut(&id) else {
                return;
            };
            if lane.queue.is_empty() || lane.in_flight >= cap {
                return;
            }
            if let Some(until) = lane.paused_until.filter(|t| *t > now) {
                let jobs: Vec<Job> = lane.queue.drain(..).collect();
                for job in jobs {
                    self.defer(st, job, Deferral::Paused, until - now);
                }
                return;
            }
            if st.in_flight >= self.settings.max_in_flight {
                if !lane.waiting_global {
                    lane.waiting_global = true;
                    st.waiting.push_back(id);
                }
                return;
            }
            let admission = lane.circuit.admit(now);
            match admission {
                Admission::Defer(rest) => {
                    let jobs: Vec<Job> = lane.queue.drain(..).collect();
                    for job in jobs {
                        self.defer(st, job, Deferral::CircuitOpen, rest);
                    }
                    return;
                }
                Admission::Wait => return,
                Admission::Send | Admission::Probe => {}
            }
            if let Err(wait) = lane.take_token(rate) {
                if admission == Admission::Probe {
                    lane.circuit.unprobe();
                }
                if !lane.wake_pending {
                    lane.wake_pending = true;
                    let tx = st.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(Event::Wake(id)).await;
                    });
                }
                return;
            }
            let Some(job) = lane.queue.pop_front() else {
                return;
            };
            lane.in_flight += 1;
            st.in_flight += 1;
            tokio::spawn(job::deliver(self.deps.clone(), job, st.tx.clone()));
        }
    }

    fn on_event(&self, st: &mut State, ev: Event) {
        match ev {
            Event::Sent {
                endpoint,
                signal,
                took,
            } => {
                st.in_flight -= 1;
                let now = Instant::now();
                if let Some(lane) = st.lanes.get_mut(&endpoint) {
                    lane.in_flight -= 1;
                    lane.observe(took);
                    match signal {
                        Signal::Success => {
                            if lane.circuit.success() {
                                tracing::info!(endpoint_id = %endpoint, "circuit closed: the probe succeeded");
                            }
                        }
                        Signal::Failure => {
                            if let Some(cooldown) =
                                lane.circuit.failure(now, &self.settings.breaker)
                            {
                                // Once per opening, not per deferred record: the runbook's signal.
                                tracing::warn!(endpoint_id = %endpoint, cooldown = ?cooldown,
                                    "circuit opened: nothing is sent to this endpoint until a probe succeeds");
                            }
                        }
                        Signal::Pause(d) => {
                            lane.circuit.unprobe();
                            lane.paused_until = Some(now + d.min(self.settings.max_pause));
                        }
                        Signal::Nothing => lane.circuit.unprobe(),
                    }
                }
                self.pump(st, endpoint);
                while st.in_flight < self.settings.max_in_flight {
                    let Some(next) = st.waiting.pop_front() else {
                        break;
                    };
                    if let Some(lane) = st.lanes.get_mut(&next) {
                        lane.waiting_global = false;
                    }
                    self.pump(st, next);
                }
            }
            Event::Done {
                partition,
                offset,
                epoch,
                durable,
            } => self.finish(st, partition, offset, epoch, durable),
            Event::Wake(id) => {
                if let Some(lane) = st.lanes.get_mut(&id) {
                    lane.wake_pending = false;
                }
                self.pump(st, id);
            }
        }
    }

    fn housekeeping(&self, st: &mut State) {
        let now = Instant::now();
        let (mut paused, mut open) = (0i64, 0i64);
        for lane in st.lanes.values_mut() {
            if lane.paused_until.is_some_and(|t| t > now) {
                paused += 1;
            } else if lane.paused_until.is_some() {
                lane.paused_until = None;
            }
            if lane.circuit.is_open() {
                open += 1;
            }
        }
        st.lanes
            .retain(|_, lane| !lane.idle(now) || lane.wake_pending);
        let m = &self.deps.metrics;
        m.paused.set(paused);
        m.circuits_open.set(open);
        m.pending.set(i64::try_from(st.pending).unwrap_or(i64::MAX));
    }
}

/// Drops every queued (not started) record: not stored, so it is read again by whoever owns
/// its partition next. Returns how many.
fn purge(st: &mut State) -> usize {
    let mut n = 0;
    for lane in st.lanes.values_mut() {
        n += lane.queue.len();
        lane.queue.clear();
    }
    st.waiting.clear();
    for lane in st.lanes.values_mut() {
        lane.waiting_global = false;
    }
    st.pending -= n;
    n
}
