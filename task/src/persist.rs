//! Turning queue records into history: decode, append in one transaction,
//! retry, and set aside what cannot be kept. Task's lanes persist through a
//! [`Persister`] and so does `courier replay rebuild`, so a rebuilt history
//! is written exactly as the live one was (same batching rule, same
//! idempotence by message id, same dead letters).

use std::sync::Arc;
use std::time::Instant;

use courier_queue::Record;
use courier_store::{DeadLetter, HistoryStore, Message, Position};
use courier_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use crate::backoff;

/// Persists records into the history store; cheap to clone.
#[derive(Clone)]
pub struct Persister {
    history: Arc<dyn HistoryStore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Persister {
    /// A persister that gives up waiting for the store at `shutdown`.
    pub fn new(history: Arc<dyn HistoryStore>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        Self { history, metrics, shutdown }
    }

    /// Persists one partition's records, in offset order, and returns each
    /// stored message with its positions; `None` if shutdown interrupted it.
    ///
    /// A store that is out of reach is waited for, however long: skipping
    /// would lose messages, and going on would reorder streams. A batch the
    /// store refuses for another reason is retried a few times, then tried
    /// record by record; a record refused alone [`RECORD_ATTEMPTS`] times, like
    /// one that cannot be decoded, is set aside as a dead letter so the rest of
    /// the partition moves on.
    pub async fn persist(&self, records: &[Record]) -> Option<Vec<(Message, Vec<Position>)>> {
        let mut decoded = Vec::with_capacity(records.len());
        for record in records {
            match Message::from_record(&record.value) {
                Ok(message) => decoded.push((record, message)),
                Err(reason) => {
                    self.metrics.error("bad_record");
                    if !self.set_aside(record, &format!("undecodable record: {reason}")).await {
                        return None;
                    }
                }
            }
        }
        self.persist_decoded(decoded).await
    }

    /// [`Persister::persist`] for records already decoded (each with the
    /// record it came from, for a dead letter): what `courier replay
    /// rebuild`, which decoded them to select them, hands over.
    pub async fn persist_decoded(&self, decoded: Vec<(&Record, Message)>) -> Option<Vec<(Message, Vec<Position>)>> {
        let (sources, messages): (Vec<&Record>, Vec<Message>) = decoded.into_iter().unzip();
        let stored: Vec<(Message, Vec<Position>)> = match self.append(&messages, BATCH_ATTEMPTS).await {
            Outcome::Stored(positions) => messages.into_iter().zip(positions).collect(),
            Outcome::Stopped => return None,
            Outcome::Refused(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "the store refuses this batch; trying its records one by one");
                let mut stored = Vec::with_capacity(messages.len());
                for (record, message) in sources.into_iter().zip(messages) {
                    match self.append(std::slice::from_ref(&message), RECORD_ATTEMPTS).await {
                        Outcome::Stored(mut positions) => stored.push((message, positions.pop().unwrap_or_default())),
                        Outcome::Stopped => return None,
                        Outcome::Refused(e) => {
                            if !self.set_aside(record, &format!("the history store refused it: {e}")).await {
                                return None;
                            }
                        }
                    }
                }
                stored
            }
        };
        Some(stored)
    }

    /// Appends `messages` in one transaction: a store out of reach is retried
    /// until shutdown, any other failure up to `attempts` times.
    async fn append(&self, messages: &[Message], attempts: u32) -> Outcome {
        let mut backoff = backoff();
        let mut refusals = 0;
        loop {
            let started = Instant::now();
            match self.history.append(messages).await {
                Ok(positions) => {
                    self.metrics.history_write_duration.observe(started.elapsed().as_secs_f64());
                    self.metrics.history_batch_size.observe(messages.len() as f64);
                    return Outcome::Stored(positions);
                }
                Err(e) => {
                    tracing::warn!(error = %e, messages = messages.len(), "persisting failed; retrying");
                    self.metrics.error("history_write");
                    if !e.is_transient() {
                        refusals += 1;
                        if refusals >= attempts {
                            return Outcome::Refused(e);
                        }
                    }
                    if !backoff.wait(&self.shutdown).await {
                        return Outcome::Stopped;
                    }
                }
            }
        }
    }

    /// Keeps `record` in the store's dead letters with `reason`, retrying until
    /// that works (the partition must not move on past a record kept nowhere);
    /// false if shutdown came first.
    async fn set_aside(&self, record: &Record, reason: &str) -> bool {
        tracing::error!(
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            reason,
            "setting a record aside as a dead letter"
        );
        let letter = DeadLetter {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_bytes().to_vec(),
            value: record.value.clone(),
            error: reason.to_owned(),
            dead_at_ms: courier_ids::now_unix_ms(),
        };
        let mut backoff = backoff();
        loop {
            match self.history.set_aside(&letter).await {
                Ok(()) => {
                    self.metrics.error("dead_letter");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = record.offset, "could not keep a dead letter; retrying");
                    self.metrics.error("dead_letter_write");
                    if !backoff.wait(&self.shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// What came of an append.
enum Outcome {
    Stored(Vec<Vec<Position>>),
    /// The store refused it, not for being out of reach.
    Refused(courier_store::Error),
    /// Shutdown came first.
    Stopped,
}

/// Refusals of a whole batch before its records are tried one by one.
const BATCH_ATTEMPTS: u32 = 3;
/// Refusals of one record alone before it is set aside.
const RECORD_ATTEMPTS: u32 = 3;
