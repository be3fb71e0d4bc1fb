//! The task tier: consumes the queue, persists each message with its stream seq,
//! commits, then hands the frames to the connect nodes.
//!
//! Shape, from the queue inwards:
//!
//! - **One consumer per topic**, each in its own group (`<group>.<topic>`), so
//!   room and private partitions are balanced across workers independently (one
//!   group over both topics balances partition *counts*, and can leave all
//!   private traffic on one worker).
//! - **One lane per partition.** A dispatcher polls and hands each partition's
//!   records, in offset order, to that partition's lane, a task with a bounded
//!   queue. Lanes run in parallel, so a busy room or a slow transaction delays
//!   only its own partition. The dispatcher never waits for a lane: records a
//!   full lane cannot take wait in that lane's backlog, and the partition is
//!   paused in the consumer until the backlog has gone into the lane, which is
//!   the backpressure on that partition alone.
//! - **Inside a lane the order is fixed**: persist the records (merging what is
//!   queued, up to `max_batch`, into one transaction; the embedded store
//!   also commits the lanes appending at the same moment together, as SQLite
//!   has one writer anyway) → report the last offset to
//!   the dispatcher, which owns the consumer and commits it → push. A crash before
//!   the commit redelivers the records, and the store's idempotence by message id
//!   gives them their original seqs, which connect then drops as already sent.
//!   Persisting is retried while the store is out of reach (skipping would lose
//!   a message, and going on would reorder a stream); pushing never waits (see
//!   `courier-push`). A record that cannot be decoded, or that the store keeps
//!   refusing on its own, is a **dead letter**: kept with the reason in the
//!   store's `dead_letters`, logged with its topic, partition and offset,
//!   counted (`courier_errors_total{reason="dead_letter"}`), and the partition
//!   moves on, so one poison record cannot stall every room and inbox keyed to
//!   it.
//! - Lanes of partitions this worker no longer owns are retired: their queues
//!   drain (the new owner's redelivery of the same records is idempotent) and
//!   their offsets are no longer committed. Every couple of seconds the
//!   dispatcher also publishes the consumer's lag per owned partition
//!   (`courier_consumer_lag`).

mod persist;

pub use persist::Persister;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_push::Pusher;
use courier_queue::{Consumer, Queue, Record};
use courier_retry::Backoff;
use courier_store::HistoryStore;
use courier_telemetry::{Metrics, PartitionLabel, ReadyFlag, Stage, TopicLabel};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The task tier's configuration.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Prefix of the consumer groups shared by all task workers (one per topic).
    pub group: String,
    pub room_topic: String,
    pub private_topic: String,
    /// Partitions of each topic, should task be first to create them.
    pub partitions: u32,
    /// Most records persisted in one transaction.
    pub max_batch: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            group: "courier-task".into(),
            room_topic: courier_model::topics::ROOM.into(),
            private_topic: courier_model::topics::PRIVATE.into(),
            partitions: 8,
            max_batch: 512,
        }
    }
}

impl TaskConfig {
    /// The consumer group that consumes `topic`.
    pub fn group_for(&self, topic: &str) -> String {
        format!("{}.{topic}", self.group)
    }
}

/// What task works with.
#[derive(Clone)]
pub struct TaskBackends {
    pub queue: Arc<dyn Queue>,
    pub history: Arc<dyn HistoryStore>,
    pub pusher: Pusher,
    pub metrics: Arc<Metrics>,
}

/// The pauses between retries of the queue and the store: 100 ms doubling to 5 s.
pub(crate) fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Batches a lane may have queued before the dispatcher waits for it.
const LANE_DEPTH: usize = 4;
/// How long the dispatcher polls before committing what lanes finished.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often the dispatcher retires lanes of partitions it no longer owns.
const PRUNE_EVERY: Duration = Duration::from_secs(2);

/// Consumes until `shutdown`; never returns early because a backend failed (it
/// retries, with backoff, and reports).
pub async fn run(config: TaskConfig, backends: TaskBackends, ready: ReadyFlag, shutdown: CancellationToken) {
    let mut consumers = Vec::new();
    for topic in [&config.room_topic, &config.private_topic] {
        let Some(consumer) = subscribe(&config, &backends, topic, &shutdown).await else { return };
        consumers.push((topic.clone(), consumer));
    }
    ready.set(true);
    tracing::info!(group = %config.group, "task consuming");
    let dispatchers = consumers.into_iter().map(|(topic, consumer)| {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            config: config.clone(),
            backends: backends.clone(),
            shutdown: shutdown.clone(),
            topic,
            lanes: HashMap::new(),
            finished_tx,
            finished,
            tasks: JoinSet::new(),
            lag_reported: HashSet::new(),
        };
        dispatcher.run(consumer)
    });
    futures_util::future::join_all(dispatchers).await;
    ready.set(false);
}

/// Joins `topic`'s consumer group, retrying until it works or shutdown.
async fn subscribe(
    config: &TaskConfig,
    backends: &TaskBackends,
    topic: &str,
    shutdown: &CancellationToken,
) -> Option<Box<dyn Consumer>> {
    let mut backoff = backoff();
    loop {
        let subscribed = async {
            backends.queue.ensure_topic(topic, config.partitions).await?;
            backends.queue.subscribe(&config.group_for(topic), &[topic.to_owned()]).await
        };
        match subscribed.await {
            Ok(consumer) => return Some(consumer),
            Err(e) => {
                tracing::warn!(error = %e, topic, "task could not join its consumer group; retrying");
                backends.metrics.error("subscribe");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Polls one topic and feeds its partitions' lanes; owns the consumer, so every
/// commit goes through it.
struct Dispatcher {
    config: TaskConfig,
    backends: TaskBackends,
    shutdown: CancellationToken,
    topic: String,
    lanes: HashMap<u32, LaneQueue>,
    /// Lanes report `(partition, last persisted offset)` here.
    finished_tx: mpsc::UnboundedSender<(u32, u64)>,
    finished: mpsc::UnboundedReceiver<(u32, u64)>,
    tasks: JoinSet<()>,
    /// Partitions whose lag the gauge shows.
    lag_reported: HashSet<u32>,
}

impl Dispatcher {
    async fn run(mut self, mut consumer: Box<dyn Consumer>) {
        let mut backoff = backoff();
        let mut pruned = Instant::now();
        'polling: loop {
            self.commit_finished(consumer.as_mut()).await;
            if !self.drain_backlogs(consumer.as_mut()) {
                break;
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                self.retire_lost_lanes(consumer.as_ref());
                self.report_lag(consumer.as_ref());
                pruned = Instant::now();
            }
            let polled = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                polled = consumer.poll(self.config.max_batch, POLL_WAIT) => polled,
            };
            let records = match polled {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "poll failed; retrying");
                    self.backends.metrics.error("poll");
                    if !backoff.wait(&self.shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            if records.is_empty() {
                continue;
            }
            let label = TopicLabel { topic: self.topic.clone() };
            self.backends.metrics.records_consumed.get_or_create(&label).inc_by(records.len() as u64);
            for (partition, records) in by_partition(records) {
                if !self.offer(consumer.as_mut(), partition, records) {
                    // A lane only ends early on shutdown.
                    break 'polling;
                }
            }
        }
        // Lanes finish what they hold (or stop at shutdown, uncommitted); then
        // commit what they persisted and leave the group.
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
        self.commit_finished(consumer.as_mut()).await;
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, topic = %self.topic, "leaving the consumer group failed");
        }
    }

    /// Hands `records` to their partition's lane (started on first use)
    /// without waiting: a lane whose queue is full keeps them in its backlog
    /// and its partition is paused, so a stuck partition never holds up the
    /// others. False once the lane has ended (shutdown).
    fn offer(&mut self, consumer: &mut dyn Consumer, partition: u32, records: Vec<Record>) -> bool {
        let Self { lanes, tasks, backends, shutdown, config, finished_tx, topic, .. } = self;
        let lane = lanes.entry(partition).or_insert_with(|| {
            let (queue, rx) = mpsc::channel(LANE_DEPTH);
            let lane = Lane {
                persister: Persister::new(backends.history.clone(), backends.metrics.clone(), shutdown.clone()),
                pusher: backends.pusher.clone(),
                metrics: backends.metrics.clone(),
                max_batch: config.max_batch,
                partition,
                finished: finished_tx.clone(),
            };
            tasks.spawn(lane.run(rx));
            LaneQueue { queue, backlog: VecDeque::new(), paused: false }
        });
        if !lane.backlog.is_empty() {
            // Polled before the pause took hold.
            lane.backlog.push_back(records);
            return true;
        }
        match lane.queue.try_send(records) {
            Ok(()) => true,
            Err(TrySendError::Full(records)) => {
                lane.backlog.push_back(records);
                match consumer.pause(topic, partition) {
                    Ok(()) => lane.paused = true,
                    Err(e) => {
                        // Records keep coming into the backlog; nothing is lost.
                        tracing::warn!(error = %e, %topic, partition, "could not pause a partition whose lane is full");
                        backends.metrics.error("pause");
                    }
                }
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Moves backlogs into lanes that have room again, in order, and resumes
    /// each paused partition whose backlog is gone (a resume that fails is
    /// tried again next round). False once a lane has ended.
    fn drain_backlogs(&mut self, consumer: &mut dyn Consumer) -> bool {
        for (partition, lane) in &mut self.lanes {
            while let Some(records) = lane.backlog.pop_front() {
                match lane.queue.try_send(records) {
                    Ok(()) => {}
                    Err(TrySendError::Full(records)) => {
                        lane.backlog.push_front(records);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            if lane.paused && lane.backlog.is_empty() {
                match consumer.resume(&self.topic, *partition) {
                    Ok(()) => lane.paused = false,
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %self.topic, partition, "could not resume a partition; retrying");
                        self.backends.metrics.error("resume");
                    }
                }
            }
        }
        true
    }

    /// Commits, per partition, the highest offset its lane reported persisted.
    async fn commit_finished(&mut self, consumer: &mut dyn Consumer) {
        let mut highest: BTreeMap<u32, u64> = BTreeMap::new();
        while let Ok((partition, offset)) = self.finished.try_recv() {
            let entry = highest.entry(partition).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        for (partition, offset) in highest {
            if !self.lanes.contains_key(&partition) && !self.shutdown.is_cancelled() {
                continue; // retired: the partition has another owner now
            }
            if let Err(e) = consumer.commit(&self.topic, partition, offset).await {
                // Not fatal: the records are persisted, and a redelivery keeps its seqs.
                tracing::warn!(error = %e, topic = %self.topic, partition, "commit failed; records may be redelivered");
                self.backends.metrics.error("commit");
            }
        }
    }

    /// Publishes the consumer's lag per owned partition; partitions it no longer
    /// owns disappear from the gauge (their new owner reports them).
    fn report_lag(&mut self, consumer: &dyn Consumer) {
        let family = &self.backends.metrics.consumer_lag;
        let mut reported = HashSet::new();
        for ((topic, partition), records) in consumer.lag() {
            if topic != self.topic {
                continue;
            }
            family.get_or_create(&PartitionLabel { topic, partition }).set(records as i64);
            reported.insert(partition);
        }
        for gone in self.lag_reported.difference(&reported) {
            family.remove(&PartitionLabel { topic: self.topic.clone(), partition: *gone });
        }
        self.lag_reported = reported;
    }

    /// Drops the lanes of partitions the consumer no longer owns.
    fn retire_lost_lanes(&mut self, consumer: &dyn Consumer) {
        let owned: HashSet<u32> =
            consumer.assignment().into_iter().filter(|(topic, _)| *topic == self.topic).map(|(_, p)| p).collect();
        self.lanes.retain(|partition, _| owned.contains(partition));
    }
}

/// Splits a poll's records by partition, each partition's in offset order.
fn by_partition(records: Vec<Record>) -> BTreeMap<u32, Vec<Record>> {
    let mut split: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    for record in records {
        split.entry(record.partition).or_default().push(record);
    }
    split
}

/// The dispatcher's side of a lane.
struct LaneQueue {
    queue: mpsc::Sender<Vec<Record>>,
    /// Records polled while the lane's queue was full, oldest first.
    backlog: VecDeque<Vec<Record>>,
    /// Whether the consumer holds the partition back (from a full queue
    /// until the backlog is gone).
    paused: bool,
}

/// Persists and pushes one partition's records, in order.
struct Lane {
    persister: Persister,
    pusher: Pusher,
    metrics: Arc<Metrics>,
    max_batch: usize,
    partition: u32,
    finished: mpsc::UnboundedSender<(u32, u64)>,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Vec<Record>>) {
        while let Some(mut records) = queue.recv().await {
            // Whatever queued up behind goes into the same transaction.
            while records.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(more) => records.extend(more),
                    Err(_) => break,
                }
            }
            let Some(last) = records.last().map(|r| r.offset) else { continue };
            if !self.persist_and_push(&records).await {
                return;
            }
            // The dispatcher is gone only at shutdown, after lanes ended.
            let _ = self.finished.send((self.partition, last));
        }
    }

    /// Persists the records and pushes their frames, timing each message's
    /// stages (see [`Stage`]). False if shutdown interrupted it: nothing is
    /// committed then, so the records will be redelivered.
    async fn persist_and_push(&self, records: &[Record]) -> bool {
        let consumed = courier_ids::now_unix_us();
        let Some(stored) = self.persister.persist(records).await else { return false };
        let persisted = courier_ids::now_unix_us();
        let mut deliveries = Vec::with_capacity(stored.len());
        for (message, positions) in &stored {
            self.metrics.reached(Stage::Consumed, message.admitted_us, consumed);
            self.metrics.reached(Stage::Persisted, message.admitted_us, persisted);
            deliveries.extend(courier_push::frames::frames_for(message, positions));
        }
        self.pusher.deliver(&deliveries).await;
        let pushed = courier_ids::now_unix_us();
        for (message, _) in &stored {
            self.metrics.reached(Stage::Pushed, message.admitted_us, pushed);
        }
        true
    }
}
