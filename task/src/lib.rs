//! The task tier: consumes the queue, persists each message with its stream seq,
//! commits, then hands the frames to the connect nodes.
//!
//! The store is the point of durability, so the order inside one poll is fixed:
//! persist the whole batch in one transaction → commit each partition's last
//! offset → push. A crash before the commit redelivers the batch, and the store's
//! idempotence by message id gives the redelivered messages their original seqs,
//! which connect then drops as already sent. Persisting is retried until it
//! succeeds (skipping would lose a message, and going on would reorder a stream);
//! pushing never waits (see `courier-push`). A record that cannot be decoded is
//! logged, counted and skipped, so one bad record cannot stall its partition.
//!
//! Records of one partition are handled in offset order; a batch holds records of
//! several partitions, each in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_proto::record::{MessageKind as RecordKind, MessageRecord};
use courier_push::Pusher;
use courier_queue::{Consumer, Queue, Record};
use courier_store::{HistoryStore, Message, MessageKind};
use courier_telemetry::{Metrics, ReadyFlag, TopicLabel};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// The task tier's configuration.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Consumer group shared by all task workers.
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
            room_topic: "courier-room".into(),
            private_topic: "courier-private".into(),
            partitions: 8,
            max_batch: 512,
        }
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

/// Consumes until `shutdown`; never returns early because a backend failed (it
/// retries, with backoff, and reports).
pub async fn run(config: TaskConfig, backends: TaskBackends, ready: ReadyFlag, shutdown: CancellationToken) {
    let topics = vec![config.room_topic.clone(), config.private_topic.clone()];
    let mut backoff = Backoff::default();
    let mut consumer = loop {
        let subscribed = async {
            for topic in &topics {
                backends.queue.ensure_topic(topic, config.partitions).await?;
            }
            backends.queue.subscribe(&config.group, &topics).await
        };
        match subscribed.await {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(error = %e, "task could not join its consumer group; retrying");
                backends.metrics.error("subscribe");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    };
    ready.set(true);
    tracing::info!(group = %config.group, "task consuming");
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = consumer.poll(config.max_batch, Duration::from_millis(500)) => polled,
        };
        match polled {
            Ok(records) if records.is_empty() => {}
            Ok(records) => {
                backoff.reset();
                if !handle_batch(&backends, consumer.as_mut(), records, &shutdown).await {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; retrying");
                backends.metrics.error("poll");
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
    ready.set(false);
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "leaving the consumer group failed");
    }
}

/// Persists, commits and pushes one batch. Returns false if shutdown interrupted
/// it (nothing is committed then, so the records will be redelivered).
async fn handle_batch(
    backends: &TaskBackends,
    consumer: &mut dyn Consumer,
    records: Vec<Record>,
    shutdown: &CancellationToken,
) -> bool {
    let mut last_offsets: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut messages = Vec::with_capacity(records.len());
    let mut consumed: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &records {
        *consumed.entry(record.topic.as_str()).or_default() += 1;
        last_offsets.insert((record.topic.clone(), record.partition), record.offset);
        match decode(record) {
            Ok(message) => messages.push(message),
            Err(reason) => {
                backends.metrics.error("bad_record");
                tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "skipping undecodable record");
            }
        }
    }

    for (topic, count) in consumed {
        backends.metrics.records_consumed.get_or_create(&TopicLabel { topic: topic.to_owned() }).inc_by(count);
    }

    let mut backoff = Backoff::default();
    let positions = loop {
        let started = Instant::now();
        match backends.history.append(&messages).await {
            Ok(positions) => {
                backends.metrics.history_write_duration.observe(started.elapsed().as_secs_f64());
                break positions;
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "persisting failed; retrying");
                backends.metrics.error("history_write");
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    };

    for ((topic, partition), offset) in &last_offsets {
        if let Err(e) = consumer.commit(topic, *partition, *offset).await {
            // Not fatal: the records are persisted, and a redelivery keeps its seqs.
            tracing::warn!(error = %e, %topic, partition, "commit failed; records may be redelivered");
            backends.metrics.error("commit");
        }
    }

    let mut deliveries = Vec::with_capacity(messages.len() * 2);
    for (message, positions) in messages.iter().zip(&positions) {
        deliveries.extend(courier_push::frames::frames_for(message, positions));
    }
    backends.pusher.broadcast(&deliveries);
    true
}

/// Decodes a queue record into a message.
fn decode(record: &Record) -> Result<Message, String> {
    let r = MessageRecord::decode(record.value.as_slice()).map_err(|e| e.to_string())?;
    let kind = match RecordKind::try_from(r.kind) {
        Ok(RecordKind::Room) if r.room_id != 0 => MessageKind::Room,
        Ok(RecordKind::Private) if r.to_user_id != 0 => MessageKind::Private,
        _ => return Err(format!("kind {} with room {} and recipient {}", r.kind, r.room_id, r.to_user_id)),
    };
    if r.msg_id == 0 {
        return Err("message id 0".into());
    }
    Ok(Message {
        msg_id: r.msg_id,
        kind,
        room_id: r.room_id,
        from_user_id: r.from_user_id,
        from_user_name: r.from_user_name,
        to_user_id: r.to_user_id,
        to_user_name: r.to_user_name,
        body: r.body,
        admitted_ms: r.admitted_ms,
        client_msg_id: r.client_msg_id,
    })
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps the next delay; false if shutdown came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_records_are_refused_not_panicked_on() {
        let record = Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: "k".into(),
            value: vec![0xff, 0xff, 0xff],
            timestamp_ms: 0,
        };
        assert!(decode(&record).is_err());
        let empty = MessageRecord::default().encode_to_vec();
        assert!(decode(&Record { value: empty, ..record }).is_err(), "kind unspecified");
    }
}
