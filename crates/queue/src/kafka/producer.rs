//! The Kafka producer: librdkafka's, with Courier's own delivery wiring.
//!
//! rust-rdkafka's `FutureProducer` polls for delivery reports in a thread
//! that wakes every 100 ms, and the last millisecond of each wait rounds down
//! to a zero timeout, so that thread spins: about 1 % of a core for a producer
//! with nothing to send, more than an idle logic tier spends on anything else.
//! Here each record carries the sender of its own answer as librdkafka's
//! delivery opaque, and one thread serves the reports with a wait of
//! [`POLL_WAIT`]: a report still wakes it at once, and idle it wakes once a
//! second.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use tokio::sync::oneshot;

use super::unavailable;
use crate::{Error, Position, Result};

/// How long the delivery thread waits for a report before checking that the
/// producer is still wanted.
const POLL_WAIT: Duration = Duration::from_secs(1);

/// How long a send waits before trying again when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

type Answer = oneshot::Sender<Result<Position>>;

/// Answers each record's sender from its delivery report.
struct Deliveries;

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Answer>;

    fn delivery(&self, report: &DeliveryResult<'_>, answer: Self::DeliveryOpaque) {
        let result = match report {
            Ok(delivered) => {
                Ok(Position { partition: delivered.partition() as u32, offset: delivered.offset().max(0) as u64 })
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition), record)) => {
                Err(Error::UnknownTopic(record.topic().to_owned()))
            }
            Err((e, _)) => Err(unavailable(e.clone())),
        };
        // The sender may have given up (shutdown); the record is in Kafka anyway.
        let _ = answer.send(result);
    }
}

/// A producer whose sends are answered once Kafka acknowledged them.
pub(super) struct Sender {
    producer: Arc<BaseProducer<Deliveries>>,
    /// How long a send may wait in a full local queue.
    queue_timeout: Duration,
}

impl Sender {
    /// Creates the producer from `config` and starts its delivery thread,
    /// which ends within [`POLL_WAIT`] of the last handle being dropped (then
    /// librdkafka's own teardown answers any record still in flight).
    pub(super) fn new(config: &ClientConfig, queue_timeout: Duration) -> Result<Self> {
        let producer: Arc<BaseProducer<Deliveries>> =
            Arc::new(config.create_with_context(Deliveries).map_err(unavailable)?);
        let weak = Arc::downgrade(&producer);
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || serve_deliveries(weak))
            .map_err(|e| Error::Unavailable(format!("starting the Kafka delivery thread: {e}")))?;
        Ok(Self { producer, queue_timeout })
    }

    /// Sends one record; answers with where Kafka put it.
    pub(super) async fn send(&self, topic: &str, key: &str, value: &[u8]) -> Result<Position> {
        let (answer, answered) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(answer)).key(key).payload(value);
        let started = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if started.elapsed() < self.queue_timeout =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => return Err(unavailable(e)),
            }
        }
        answered.await.map_err(|_| Error::Unavailable("the Kafka producer has stopped".into()))?
    }
}

/// Serves delivery reports while the producer is wanted.
fn serve_deliveries(producer: Weak<BaseProducer<Deliveries>>) {
    while let Some(producer) = producer.upgrade() {
        producer.poll(POLL_WAIT);
    }
}
