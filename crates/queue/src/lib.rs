//! The message queue, shaped after Kafka: named topics split into a fixed number of
//! partitions, records placed by a hash of their key, offsets per partition, and
//! consumer groups whose members split the partitions and commit how far they got.
//!
//! Courier's ordering guarantee rests on this shape: every record of one key lands
//! in one partition, a partition is read by one group member at a time, in offset
//! order, and a member resumes from the last committed offset. The embedded
//! [`sqlite::SqliteQueue`] keeps that contract in one file so `courier standalone`
//! needs no broker; the Kafka backend implements the same traits, and
//! [`conformance`] holds the behavioural tests both must pass.

use std::time::Duration;

use async_trait::async_trait;

pub mod conformance;
pub mod sqlite;

/// Errors from a queue backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} exists with {existing} partitions, not {wanted}")]
    PartitionMismatch { topic: String, existing: u32, wanted: u32 },
    #[error("queue storage failed: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// One record read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
    /// Milliseconds since the Unix epoch at which the record was appended.
    pub timestamp_ms: i64,
}

/// A topic and partition pair.
pub type TopicPartition = (String, u32);

/// A queue backend.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions, or checks an existing one has
    /// exactly that many (changing the count would move keys and break order).
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()>;

    /// Appends a record; returns once the record is durable.
    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> Result<Position>;

    /// Joins consumer group `group` for `topics`.
    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>>;

    /// Reads up to `max` records of one partition from `offset` on, without any
    /// group (for replay and tests).
    async fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>>;

    /// The number of partitions of `topic`.
    async fn partitions(&self, topic: &str) -> Result<u32>;
}

/// One member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `timeout` for records of this member's partitions and returns
    /// up to `max` of them, each partition's records in offset order. Returns an
    /// empty batch on timeout. Records handed out are not handed out again by this
    /// member unless its assignment changes before they are committed.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>>;

    /// Records that the group has processed `topic`/`partition` up to and
    /// including `offset`.
    async fn commit(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()>;

    /// The partitions this member currently owns.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Leaves the group so the other members take over at once.
    async fn close(&mut self) -> Result<()>;
}

/// The partition of `key` among `partitions`: a stable 64-bit FNV-1a hash, so the
/// mapping never changes between builds or machines.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}
