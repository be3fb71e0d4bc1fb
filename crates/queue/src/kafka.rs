//! The production queue: Apache Kafka through librdkafka (`rdkafka`).
//!
//! - The producer is idempotent with `acks=all`, so a record acknowledged to the
//!   sender is on every in-sync replica and a librdkafka retry never duplicates or
//!   reorders it. Keys are placed with `murmur2_random`, Kafka's Java partitioner,
//!   so every client of these topics agrees where a key lives.
//! - Consumers use cooperative-sticky assignment (a rebalance moves only the
//!   partitions that must move). An offset becomes committable only when the task
//!   tier calls [`Consumer::commit`] after persisting the record: that *stores* it,
//!   and librdkafka commits stored offsets every `commit_interval` and on
//!   rebalance and close. Committing each record synchronously would cost the
//!   broker a write to `__consumer_offsets` per message; a crash between store and
//!   commit only redelivers persisted records, which the store recognises. Session
//!   and heartbeat timeouts are options so a dead worker's partitions move within
//!   seconds.
//! - Topics are created with `cleanup.policy=delete` and a retention; a topic that
//!   exists with another partition count is refused, never altered (changing it
//!   moves keys and breaks per-key order).

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::{Bounds, Consumer, Cursor, Error, Position, Queue, Record, Result, TopicPartition, TopicReader};

mod producer;

/// How Courier talks to Kafka.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,…` of the brokers.
    pub brokers: String,
    /// Replication factor of topics Courier creates (3 in production).
    pub replication: i32,
    /// `min.insync.replicas` of topics Courier creates (with `acks=all`, a
    /// send is acknowledged once this many replicas have it); the broker's
    /// default when `None`.
    pub min_insync_replicas: Option<i32>,
    /// How long topics keep records (replay reaches back this far).
    pub retention: Duration,
    /// A consumer silent this long loses its partitions.
    pub session_timeout: Duration,
    /// How often a consumer tells the group it is alive.
    pub heartbeat_interval: Duration,
    /// A send Kafka has not acknowledged within this time fails.
    pub delivery_timeout: Duration,
    /// How long the producer waits to fill a batch.
    pub linger: Duration,
    /// How often stored offsets are committed.
    pub commit_interval: Duration,
    /// How long the broker holds a consumer's fetch while nothing arrives (a
    /// long poll: with the default `fetch_min_bytes` of 1 the fetch is
    /// answered as soon as one record is there). A chat's trickle never fills
    /// a size threshold, so a short wait only makes an idle broker answer
    /// empty fetches many times a second.
    pub fetch_wait: Duration,
    /// Bytes a fetch waits for, up to `fetch_wait` (1: the first record).
    pub fetch_min_bytes: u32,
    /// How often librdkafka reports statistics (the consumer lag comes from them).
    pub statistics_interval: Duration,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            replication: 1,
            min_insync_replicas: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(5),
            commit_interval: Duration::from_millis(200),
            fetch_wait: Duration::from_secs(2),
            fetch_min_bytes: 1,
            statistics_interval: Duration::from_secs(5),
        }
    }
}

fn unavailable(e: KafkaError) -> Error {
    Error::Unavailable(e.to_string())
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The Kafka queue; cheap to clone.
#[derive(Clone)]
pub struct KafkaQueue {
    options: KafkaOptions,
    /// Made on the first send: only logic sends, and an idle producer's
    /// client still wakes several times a second (task, which only consumes,
    /// spent more CPU idling on it than on anything else).
    producer: std::sync::Arc<tokio::sync::OnceCell<producer::Sender>>,
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueue").field("options", &self.options).finish_non_exhaustive()
    }
}

impl KafkaQueue {
    /// Connects an admin client (lazily: brokers may be down); the producer
    /// comes with the first send.
    pub fn connect(options: KafkaOptions) -> Result<Self> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &options.brokers).create().map_err(unavailable)?;
        let producer = std::sync::Arc::new(tokio::sync::OnceCell::new());
        Ok(Self { options, producer, admin: std::sync::Arc::new(admin) })
    }

    /// The producer, made on first use.
    async fn producer(&self) -> Result<&producer::Sender> {
        let options = &self.options;
        self.producer.get_or_try_init(|| async { Self::make_producer(options) }).await
    }

    fn make_producer(options: &KafkaOptions) -> Result<producer::Sender> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("linger.ms", ms(options.linger))
            // A send is one small request: Nagle's algorithm would hold it
            // back until the previous one's acknowledgement.
            .set("socket.nagle.disable", "true")
            .set("delivery.timeout.ms", ms(options.delivery_timeout))
            .set("request.timeout.ms", ms(options.delivery_timeout.min(Duration::from_secs(30))));
        producer::Sender::new(&config, options.delivery_timeout)
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.options.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", ms(self.options.commit_interval))
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", ms(self.options.session_timeout))
            .set("heartbeat.interval.ms", ms(self.options.heartbeat_interval))
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", ms(self.options.fetch_wait))
            .set("fetch.min.bytes", self.options.fetch_min_bytes.max(1).to_string())
            .set("socket.nagle.disable", "true")
            .set("statistics.interval.ms", ms(self.options.statistics_interval));
        config
    }
}

#[async_trait]
impl Queue for KafkaQueue {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        match self.partitions(topic).await {
            Ok(existing) if existing == partitions => return Ok(()),
            Ok(existing) => {
                return Err(Error::PartitionMismatch { topic: topic.to_owned(), existing, wanted: partitions });
            }
            Err(Error::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
        let retention = ms(self.options.retention);
        let min_insync = self.options.min_insync_replicas.map(|n| n.to_string());
        let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(self.options.replication))
            .set("cleanup.policy", "delete")
            .set("retention.ms", &retention);
        if let Some(min_insync) = &min_insync {
            new = new.set("min.insync.replicas", min_insync);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics([&new], &options).await.map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(Error::Unavailable(format!("creating topic {name}: {code}"))),
            }
        }
        // Creation is asynchronous in the cluster: wait until metadata shows it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.partitions(topic).await {
                Ok(n) if n == partitions => return Ok(()),
                Ok(existing) => {
                    return Err(Error::PartitionMismatch { topic: topic.to_owned(), existing, wanted: partitions });
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> Result<Position> {
        self.producer().await?.send(topic, key, value).await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        let context = LagContext::default();
        let consumer: StreamConsumer<LagContext> =
            self.consumer_config(group).create_with_context(context).map_err(unavailable)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(unavailable)?;
        Ok(Box::new(KafkaConsumer { consumer, leave_within: self.options.session_timeout }))
    }

    async fn partitions(&self, topic: &str) -> Result<u32> {
        let (admin, topic) = (self.admin.clone(), topic.to_owned());
        blocking(move || partition_count(admin.inner(), &topic)).await
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(call).await.map_err(|e| Error::Unavailable(e.to_string()))?
}

/// How long a metadata or offset lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The partitions of `topic` (blocking).
fn partition_count<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>, topic: &str) -> Result<u32> {
    let metadata = client.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(unavailable)?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as u32),
        _ => Err(Error::UnknownTopic(topic.to_owned())),
    }
}

/// Reads Kafka topics by manual assignment: no group is joined (each cursor
/// assigns itself one partition) and nothing is committed, so the task
/// tier's groups never see a reader.
pub struct KafkaTopicReader {
    brokers: String,
    /// For metadata, watermarks and offsets-for-times lookups.
    lookups: std::sync::Arc<BaseConsumer>,
}

impl std::fmt::Debug for KafkaTopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTopicReader").field("brokers", &self.brokers).finish_non_exhaustive()
    }
}

impl KafkaTopicReader {
    /// A reader of the cluster at `brokers` (connecting lazily).
    pub fn connect(brokers: &str) -> Result<Self> {
        let lookups = Self::config(brokers).create().map_err(unavailable)?;
        Ok(Self { brokers: brokers.to_owned(), lookups: std::sync::Arc::new(lookups) })
    }

    /// A consumer that is only ever assigned partitions: librdkafka wants a
    /// group id, which is never used (no subscribe, no commit, no stored offset).
    fn config(brokers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("courier-reader-{}-{:08x}", std::process::id(), rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        config
    }
}

#[async_trait]
impl TopicReader for KafkaTopicReader {
    async fn partitions(&self, topic: &str) -> Result<u32> {
        let (lookups, topic) = (self.lookups.clone(), topic.to_owned());
        blocking(move || partition_count(lookups.client(), &topic)).await
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<Bounds> {
        let (lookups, topic) = (self.lookups.clone(), topic.to_owned());
        blocking(move || {
            let (low, high) =
                lookups.fetch_watermarks(&topic, partition as i32, LOOKUP_TIMEOUT).map_err(unavailable)?;
            Ok(Bounds { first: low.max(0) as u64, end: high.max(0) as u64 })
        })
        .await
    }

    async fn offset_at(&self, topic: &str, partition: u32, unix_ms: i64) -> Result<u64> {
        let (lookups, name) = (self.lookups.clone(), topic.to_owned());
        let found = blocking(move || {
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition_offset(&name, partition as i32, Offset::Offset(unix_ms)).map_err(unavailable)?;
            let answer = lookups.offsets_for_times(wanted, LOOKUP_TIMEOUT).map_err(unavailable)?;
            let found = answer.find_partition(&name, partition as i32).map(|p| p.offset());
            Ok(match found {
                Some(Offset::Offset(offset)) if offset >= 0 => Some(offset as u64),
                _ => None,
            })
        })
        .await?;
        match found {
            Some(offset) => Ok(offset),
            // No record at or after that time.
            None => Ok(self.bounds(topic, partition).await?.end),
        }
    }

    async fn cursor(&self, topic: &str, partition: u32, offset: u64) -> Result<Box<dyn Cursor>> {
        let consumer: StreamConsumer = Self::config(&self.brokers).create().map_err(unavailable)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64)).map_err(unavailable)?;
        consumer.assign(&assignment).map_err(unavailable)?;
        Ok(Box::new(KafkaCursor { consumer }))
    }
}

/// One partition of a Kafka topic being read.
struct KafkaCursor {
    consumer: StreamConsumer,
}

#[async_trait]
impl Cursor for KafkaCursor {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut wait = wait;
        while records.len() < max {
            // After the first record, take only what has already arrived.
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(message)) => records.push(to_record(&message)),
                Ok(Err(e)) => transient(e)?,
                Err(_) => break,
            }
            if !records.is_empty() {
                wait = Duration::ZERO;
            }
        }
        Ok(records)
    }
}

fn to_record<M: rdkafka::message::Message>(message: &M) -> Record {
    Record {
        topic: message.topic().to_owned(),
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
    }
}

/// Sorts a consumer error: fatal ones end the poll; the others are librdkafka
/// reporting what it is already recovering from (a broker down, a connection
/// reset), one event per failed attempt. Returning those as failures made the
/// caller back off per event, and after a broker restart it spent minutes
/// draining the backlog while records waited.
fn transient(e: KafkaError) -> Result<()> {
    match e {
        KafkaError::MessageConsumptionFatal(_) => Err(unavailable(e)),
        other => {
            tracing::debug!(error = %other, "consumer is recovering");
            Ok(())
        }
    }
}

/// Keeps the consumer lag from librdkafka's statistics (served while polling).
#[derive(Default)]
struct LagContext {
    lag: std::sync::Mutex<Vec<(TopicPartition, u64)>>,
}

impl rdkafka::ClientContext for LagContext {
    /// Reads only what the lag needs from the statistics JSON: per partition, the
    /// high watermark minus the application's position (`hi_offset -
    /// app_offset`). librdkafka's own `consumer_lag` counts from the committed
    /// offset, and is unknown (-1) until a first commit.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else { return };
        let mut lag = Vec::new();
        let topics = stats.get("topics").and_then(|t| t.as_object()).into_iter().flatten();
        for (topic, stats) in topics {
            let partitions = stats.get("partitions").and_then(|p| p.as_object()).into_iter().flatten();
            for (partition, p) in partitions {
                // Negative offsets are librdkafka's "unknown"; partition -1 is internal.
                let offset = |name: &str| p.get(name).and_then(serde_json::Value::as_i64).unwrap_or(-1);
                let (high, position) = (offset("hi_offset"), offset("app_offset"));
                if let (Ok(partition), true) = (partition.parse::<u32>(), high >= 0 && position >= 0) {
                    lag.push(((topic.clone(), partition), high.saturating_sub(position).max(0) as u64));
                }
            }
        }
        lag.sort();
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {
    /// Partitions this member is given start resumed, whatever a pause said
    /// while it owned them before (see [`Consumer::pause`]).
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(partitions) = rebalance
            && let Err(e) = consumer.resume(partitions)
        {
            tracing::warn!(error = %e, "could not resume newly assigned partitions");
        }
    }
}

/// `topic`/`partition` as the list librdkafka's pause and resume take.
fn one_partition(topic: &str, partition: u32) -> Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    list.add_partition(
        topic,
        i32::try_from(partition).map_err(|_| Error::UnknownTopic(format!("{topic} partition {partition}")))?,
    );
    Ok(list)
}

struct KafkaConsumer {
    consumer: StreamConsumer<LagContext>,
    /// How long [`Consumer::close`] waits for the group to take its partitions
    /// back; past this the broker's session timeout frees them anyway.
    leave_within: Duration,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while records.is_empty() {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => return Ok(records),
                Ok(Ok(message)) => records.push(to_record(&message)),
                Ok(Err(e)) => transient(e)?,
            }
        }
        // Take whatever else is ready now, without waiting.
        while records.len() < max {
            use futures_util::FutureExt as _;
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => records.push(to_record(&message)),
                Some(Err(e)) => transient(e)?,
                None => break,
            }
        }
        Ok(records)
    }

    async fn commit(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        // Marks the record processed; librdkafka commits it shortly (see module docs).
        self.consumer.store_offset(topic, partition as i32, offset as i64).map_err(unavailable)
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| (e.topic().to_owned(), e.partition() as u32)).collect())
            .unwrap_or_default()
    }

    fn pause(&mut self, topic: &str, partition: u32) -> Result<()> {
        self.consumer.pause(&one_partition(topic, partition)?).map_err(unavailable)
    }

    fn resume(&mut self, topic: &str, partition: u32) -> Result<()> {
        self.consumer.resume(&one_partition(topic, partition)?).map_err(unavailable)
    }

    fn lag(&self) -> Vec<(TopicPartition, u64)> {
        let owned = self.assignment();
        let lag = self.consumer.context().lag.lock().unwrap_or_else(|p| p.into_inner());
        lag.iter().filter(|(tp, _)| owned.contains(tp)).cloned().collect()
    }

    async fn close(&mut self) -> Result<()> {
        // Commit what was stored before leaving, so the next owner starts there.
        let committed = match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(unavailable(e)),
        };
        // Leaving is a rebalance: librdkafka hands the revocation to this
        // consumer's queue and the partitions stay ours, held by heartbeats from
        // its background thread, until the queue is served. Serve it until they
        // are gone; records that arrive meanwhile were not stored, so the next
        // owner receives them.
        self.consumer.unsubscribe();
        let deadline = tokio::time::Instant::now() + self.leave_within;
        while !self.assignment().is_empty() && tokio::time::Instant::now() < deadline {
            let served = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await;
            if let Ok(Err(e)) = served {
                tracing::debug!(error = %e, "while leaving the group");
            }
        }
        committed
    }
}
