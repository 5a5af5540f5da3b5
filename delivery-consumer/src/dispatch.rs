//! The dispatcher: reads `deliveries`, hands each record to the admission core (admission.rs)
//! which decides what is sent, deferred or woken later, starts the HTTP work as tasks, and
//! releases offsets through the watermark.
//!
//! **No head-of-line blocking.** The dispatcher never waits on an endpoint. A record goes into
//! its endpoint's lane; a lane sends while it is under its caps (its own, its share, its
//! tenant's share, the global cap) and its rate limit, each send a task of its own. A slow
//! endpoint therefore fills only its own lane, and what it cannot take in time is deferred to
//! a retry tier without counting an attempt (durable, so its offsets move on). Everything that
//! waits is bounded: reading stops at `delivery.max_pending` records whose outcome is not yet
//! durable, and resumes as they finish; no endpoint or tenant holds more than its share.
//!
//! **Offsets.** See offsets.rs: records finish out of order, offsets are released in order.
//!
//! **Rebalance.** The revoke callback (which runs inside this task's `recv`) commits what was
//! stored and records which partitions went (shared::kafka::rebalance). Right after every
//! wake-up, before anything else is done, the dispatcher forgets those partitions: their
//! watermarks, and the records still queued in lanes (the next owner reads them from the
//! committed offset). So nothing of a revoked partition is sent after the revoke, and, under
//! `cooperative-sticky`, the partitions that stay keep their queues and watermarks. Requests
//! already in flight finish, but their offsets are no longer stored here (their partition's
//! generation moved on): the next owner may send them again, with the same `webhook-id`.
//!
//! **Shutdown.** Reading stops, queued records are handed back, requests in flight get
//! `delivery.drain_timeout` to finish and be recorded, then the stored offsets are committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use shared::ids::EndpointId;
use shared::kafka::{Generations, Rebalancing, commit};
use shared::liveness::Heartbeat;
use shared::records::DeliveryRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission::{Action, Core, EndpointLimits, Limits};
use crate::job::{self, Deps, Event, Job};
use crate::offsets::Watermarks;

pub struct Settings {
    pub max_pending: usize,
    pub drain_timeout: Duration,
    pub limits: Limits,
}

pub struct Dispatcher {
    pub consumer: Arc<StreamConsumer<Rebalancing>>,
    pub topic: String,
    pub deps: Arc<Deps>,
    pub settings: Settings,
    pub heartbeat: Heartbeat,
    /// Cancelled when the drain time is over: tasks still retrying give up.
    pub abandon: CancellationToken,
}

struct State {
    core: Core,
    marks: Watermarks,
    generations: Generations,
    pending: usize,
    tx: mpsc::Sender<Event>,
}

/// The endpoint cache, as the core sees it.
struct Endpoints<'a>(&'a crate::endpoints::EndpointCache);

impl crate::admission::Settings for Endpoints<'_> {
    fn limits(&self, endpoint: &EndpointId) -> Option<EndpointLimits> {
        self.0.get(endpoint).map(|e| EndpointLimits {
            max_in_flight: e.max_in_flight,
            rate: e.rate_limit_per_sec,
        })
    }
}

/// What woke the loop.
enum Wake<'a> {
    Shutdown,
    Event(Option<Event>),
    Message(rdkafka::error::KafkaResult<BorrowedMessage<'a>>),
    Tick,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(4096);
        let mut st = State {
            core: Core::new(self.settings.limits.clone()),
            marks: Watermarks::default(),
            generations: Generations::default(),
            pending: 0,
            tx,
        };
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        loop {
            let can_read = st.pending < self.settings.max_pending;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                ev = rx.recv() => Wake::Event(ev),
                m = self.consumer.recv(), if can_read => Wake::Message(m),
                _ = gauges.tick() => Wake::Tick,
            };
            // Before anything else: forget what a rebalance took away (module docs).
            self.forget_revoked(&mut st);
            // The loop's liveness is that it runs (a tick a second at least); how fast records
            // finish is up to the endpoints, not a sign of a stuck loop.
            self.heartbeat.ran();
            match wake {
                Wake::Shutdown => break,
                Wake::Event(Some(ev)) => self.on_event(&mut st, ev),
                Wake::Event(None) => {}
                Wake::Message(Ok(m)) => self.on_message(&mut st, &m),
                Wake::Message(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Wake::Tick => self.housekeeping(&mut st),
            }
        }
        self.drain(&mut st, &mut rx).await;
    }

    async fn drain(&self, st: &mut State, rx: &mut mpsc::Receiver<Event>) {
        let handed_back = purge_queued(st);
        tracing::info!(
            in_flight = st.core.in_flight(),
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

    fn forget_revoked(&self, st: &mut State) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        let revoked = st.generations.revoke(revoked);
        let partitions: HashSet<i32> = revoked
            .iter()
            .filter(|(topic, _)| *topic == self.topic)
            .map(|(_, p)| *p)
            .collect();
        for p in &partitions {
            st.marks.forget(*p);
        }
        let handed_back = st.core.purge(&partitions);
        st.pending -= handed_back;
        tracing::info!(
            partitions = partitions.len(),
            handed_back,
            "rebalance: forgot revoked partitions"
        );
    }

    fn on_message(&self, st: &mut State, m: &BorrowedMessage<'_>) {
        let (partition, offset) = (m.partition(), m.offset());
        st.marks.track(partition, offset);
        st.pending += 1;
        let generation = st.generations.of(m.topic(), partition);
        let record: DeliveryRecord = match m.payload().map(serde_json::from_slice) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return self.skip(st, partition, offset, generation, &e.to_string()),
            None => return self.skip(st, partition, offset, generation, "no payload"),
        };
        let job = Job {
            record: Arc::new(record),
            partition,
            offset,
            generation,
            trace: shared::kafka::or_new_trace(&shared::kafka::extract_trace_context(m.headers())),
            sent_at: Instant::now(),
        };
        let actions = st
            .core
            .admit(job, &Endpoints(&self.deps.endpoints), Instant::now());
        self.execute(st, actions);
    }

    /// A malformed record is logged, counted and released: it never stalls the partition.
    fn skip(&self, st: &mut State, partition: i32, offset: i64, generation: u64, why: &str) {
        tracing::error!(
            partition,
            offset,
            error = why,
            "malformed delivery record skipped"
        );
        self.deps.outcomes.metrics.malformed.inc();
        self.finish(st, partition, offset, generation, true);
    }

    fn finish(&self, st: &mut State, partition: i32, offset: i64, generation: u64, durable: bool) {
        st.pending -= 1;
        if !durable || generation != st.generations.of(&self.topic, partition) {
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

    /// Carries out the core's decisions; every task is guarded (job.rs) so that a panic in one
    /// record's work frees its slot and quarantines the record instead of leaking both.
    fn execute(&self, st: &State, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(job) => {
                    tokio::spawn(job::guarded(
                        self.deps.clone(),
                        job,
                        st.tx.clone(),
                        job::Work::Deliver,
                    ));
                }
                Action::Defer { job, why, wanted } => {
                    tokio::spawn(job::guarded(
                        self.deps.clone(),
                        job,
                        st.tx.clone(),
                        job::Work::Defer(why, wanted),
                    ));
                }
                Action::Wake { endpoint, after } => {
                    let tx = st.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(Event::Wake(endpoint)).await;
                    });
                }
            }
        }
    }

    fn on_event(&self, st: &mut State, ev: Event) {
        let endpoints = Endpoints(&self.deps.endpoints);
        match ev {
            Event::Sent {
                endpoint,
                tenant,
                signal,
                started,
                took,
            } => {
                let actions = st.core.sent(
                    endpoint,
                    tenant,
                    signal,
                    started,
                    took,
                    &endpoints,
                    Instant::now(),
                );
                self.execute(st, actions);
            }
            Event::Done {
                partition,
                offset,
                generation,
                durable,
            } => self.finish(st, partition, offset, generation, durable),
            Event::Wake(id) => {
                let actions = st.core.wake(id, &endpoints, Instant::now());
                self.execute(st, actions);
            }
        }
    }

    fn housekeeping(&self, st: &mut State) {
        let now = Instant::now();
        let shed = st.core.shed(&Endpoints(&self.deps.endpoints), now);
        self.execute(st, shed);
        let (paused, open) = st.core.housekeeping(now);
        let m = &self.deps.outcomes.metrics;
        m.paused.set(paused);
        m.circuits_open.set(open);
        m.pending.set(i64::try_from(st.pending).unwrap_or(i64::MAX));
    }
}

/// Drops every queued record (shutdown): not stored, so read again by the next owner.
fn purge_queued(st: &mut State) -> usize {
    let partitions: HashSet<i32> = st
        .core
        .lanes
        .values()
        .flat_map(|l| l.queue.iter().map(|j| j.partition))
        .collect();
    let n = st.core.purge(&partitions);
    st.pending -= n;
    n
}
