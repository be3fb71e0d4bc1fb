//! The message queue, shaped after Kafka: named topics split into a fixed number of
//! partitions, records placed by a hash of their key, offsets per partition, and
//! consumer groups whose members split the partitions and commit how far they got.
//!
//! Courier's ordering guarantee rests on this shape: every record of one key lands
//! in one partition, a partition is read by one group member at a time, in offset
//! order, and a member resumes from the last committed offset. The embedded
//! [`sqlite::SqliteQueue`] keeps that contract in one file so `courier standalone`
//! needs no broker; the Kafka backend implements the same traits, and
//! [`conformance`] holds the behavioural tests both must pass. A
//! [`TopicReader`] reads a topic's records outside any group, for replay.

use std::time::Duration;

use async_trait::async_trait;

pub mod conformance;
pub mod kafka;
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
    #[error("queue storage failed: {0}")]
    Sqlite(#[from] courier_sqlite::Error),
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

    /// The number of partitions of `topic`.
    async fn partitions(&self, topic: &str) -> Result<u32>;
}

/// The offsets one partition holds: `first` is the oldest record retention
/// has kept, `end` the offset the next record will get (so `end - first`
/// records, fewer where offsets were skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub first: u64,
    pub end: u64,
}

/// Reads what a topic holds without any consumer group: nothing is joined and
/// nothing committed, so a reader moves nothing for the tiers that consume
/// (`courier replay` reads while the cluster runs).
#[async_trait]
pub trait TopicReader: Send + Sync {
    /// The number of partitions of `topic`.
    async fn partitions(&self, topic: &str) -> Result<u32>;

    /// The offsets `partition` holds now.
    async fn bounds(&self, topic: &str, partition: u32) -> Result<Bounds>;

    /// The first offset of `partition` whose record was appended at or after
    /// `unix_ms`; the partition's end when there is none.
    async fn offset_at(&self, topic: &str, partition: u32, unix_ms: i64) -> Result<u64>;

    /// Reads `partition` in offset order from `offset` on.
    async fn cursor(&self, topic: &str, partition: u32, offset: u64) -> Result<Box<dyn Cursor>>;
}

/// One partition being read, in offset order.
#[async_trait]
pub trait Cursor: Send {
    /// Up to `max` next records, waiting up to `wait` for the first of them;
    /// empty if none came.
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>>;
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

    /// Stops handing out records of an owned partition (others go on), so a
    /// consumer whose work on one partition is stuck does not take more of it
    /// in. Records already handed out stay handed out; [`Consumer::resume`]
    /// goes on after them. A partition this member loses and later gets back
    /// starts resumed.
    fn pause(&mut self, topic: &str, partition: u32) -> Result<()>;

    /// Hands out records of a paused partition again, after the last one
    /// handed out; nothing happens to a partition that is not paused.
    fn resume(&mut self, topic: &str, partition: u32) -> Result<()>;

    /// Per owned partition, the records not yet handed to this member, as last
    /// observed (the backends refresh it every few seconds; empty until then).
    /// Feeds `courier_consumer_lag`.
    fn lag(&self) -> Vec<(TopicPartition, u64)>;

    /// Leaves the group so the other members take over at once.
    async fn close(&mut self) -> Result<()>;
}

/// The partition of `key` among `partitions`: Kafka's default (Java) partitioner,
/// the positive murmur2 hash modulo the count. The embedded queue and Kafka
/// (whose producer is set to `murmur2_random`) thus place every key alike.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// Kafka's murmur2 variant (seed 0x9747b28c), as its Java client computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // Vectors from Kafka's own UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }
}
