//! The embedded queue: Kafka's contract kept in one SQLite file, for `courier
//! standalone` and small installs.
//!
//! - Records live in `records(topic, partition, offset)`. One writer task appends
//!   them, taking every send waiting at that moment into a single `BEGIN
//!   IMMEDIATE` transaction (group commit) of two statements whatever its size
//!   (where the partitions stand, then every record, as JSON rows: each
//!   statement costs sqlx a thread hop), and answers each sender only after the
//!   commit: an acknowledged record survives `kill -9`, and by default a power
//!   cut too (WAL with `synchronous=FULL`: the commit is on disk before the
//!   sender is answered; `sync_full: false` gives `NORMAL`, which survives a
//!   process crash and may lose the last commits to a power cut).
//! - Offsets are computed inside that write transaction, so they are gap-free and
//!   stay correct even if another process appends to the same file.
//! - A consumer group is a table of members with expiry times. Each member renews
//!   its entry on a heartbeat and derives the same assignment as every other member
//!   (partitions sorted, dealt round-robin to the live members sorted by id), so no
//!   coordinator is needed; an expired member's partitions move to the others on
//!   their next heartbeat. Handover is at-least-once, like Kafka's: the new owner
//!   resumes from the last committed offset.
//! - A consumer in the same process is woken by a [`Notify`] on append; one in
//!   another process falls back to polling every `poll_interval`.
//! - **Retention**, like Kafka's `retention.ms` and `retention.bytes` (per
//!   partition): every `retention_interval` the writer deletes a partition's
//!   records older than `retention` or beyond `retention_bytes`, but never one
//!   that a consumer group has not committed past, and never the newest (it
//!   carries the next offset). SQLite reuses the freed pages, so the file stops
//!   growing once traffic and retention balance.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{
    Bounds, Consumer, Cursor, Error, Position, Queue, Record, Result, TopicPartition, TopicReader, partition_for,
};

/// Tuning of the embedded queue.
#[derive(Debug, Clone)]
pub struct SqliteQueueOptions {
    /// A group member that has not renewed its entry for this long loses its
    /// partitions (Kafka's `session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often a member renews its entry and re-reads the group.
    pub heartbeat_interval: Duration,
    /// How often an idle consumer looks for records appended by another process.
    pub poll_interval: Duration,
    /// `synchronous=FULL` (survives power loss) instead of `NORMAL` (survives a
    /// process crash).
    pub sync_full: bool,
    /// Records older than this may be deleted (Kafka's `retention.ms`).
    pub retention: Duration,
    /// Bytes of records kept per partition, oldest deleted first (Kafka's
    /// `retention.bytes`); 0 for no size limit.
    pub retention_bytes: u64,
    /// How often retention runs.
    pub retention_interval: Duration,
}

impl Default for SqliteQueueOptions {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(100),
            sync_full: true,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: 64 * 1024 * 1024,
            retention_interval: Duration::from_secs(60),
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS queue_topics (
        name TEXT PRIMARY KEY,
        partitions INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS queue_records (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, partition, offset)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS queue_group_offsets (
        group_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS queue_group_members (
        group_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (group_id, member_id)
    ) WITHOUT ROWID",
];

/// Most sends the writer puts into one transaction.
const MAX_GROUP_COMMIT: usize = 1024;

struct Append {
    topic: String,
    key: String,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<Position>>,
}

/// The embedded queue; cheap to clone.
#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    appends: mpsc::Sender<Append>,
    appended: Arc<Notify>,
    partitions: Arc<Mutex<HashMap<String, u32>>>,
    options: SqliteQueueOptions,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").field("options", &self.options).finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue stored in the file `path`.
    pub async fn open(path: &Path, options: SqliteQueueOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.sync_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(connect).await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&pool).await?;
        }
        let (appends, rx) = mpsc::channel(4 * MAX_GROUP_COMMIT);
        let appended = Arc::new(Notify::new());
        let partitions = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(write_loop(pool.clone(), rx, appended.clone(), options.clone()));
        Ok(Self { pool, appends, appended, partitions, options })
    }

    async fn topic_partitions(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.cached_partitions(topic) {
            return Ok(n);
        }
        let row = sqlx::query("SELECT partitions FROM queue_topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?;
        let n: i64 = row.ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?.try_get(0)?;
        let n = n as u32;
        self.lock_partitions().insert(topic.to_owned(), n);
        Ok(n)
    }

    fn cached_partitions(&self, topic: &str) -> Option<u32> {
        self.lock_partitions().get(topic).copied()
    }

    fn lock_partitions(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies retention now (the writer also does every
    /// `retention_interval`); returns the records deleted.
    pub async fn enforce_retention(&self) -> Result<u64> {
        enforce_retention(&self.pool, &self.options).await
    }
}

/// Records deleted per statement, so one sweep never holds the write lock long.
const RETENTION_CHUNK: u64 = 10_000;

/// Deletes what retention allows in every partition (see the module docs).
async fn enforce_retention(pool: &SqlitePool, options: &SqliteQueueOptions) -> Result<u64> {
    let topics: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, partitions FROM queue_topics").fetch_all(pool).await?;
    let too_old = courier_ids::now_unix_ms().saturating_sub(options.retention.as_millis() as i64);
    let mut deleted = 0;
    for (topic, partitions) in topics {
        for partition in 0..partitions {
            // Offsets below `bound` may go: every group committed past them, and
            // the newest record stays.
            let bound: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(c.next_offset, r.newest) FROM
                    (SELECT MIN(next_offset) AS next_offset FROM queue_group_offsets WHERE topic = ?1 AND partition = ?2) c,
                    (SELECT MAX(offset) AS newest FROM queue_records WHERE topic = ?1 AND partition = ?2) r",
            )
            .bind(&topic)
            .bind(partition)
            .fetch_one(pool)
            .await?;
            let Some(bound) = bound else { continue };
            // The last offset beyond the size limit, counting from the newest.
            let oversize: Option<i64> = if options.retention_bytes == 0 {
                None
            } else {
                sqlx::query_scalar(
                    "SELECT offset FROM (
                        SELECT offset, SUM(length(key) + length(value)) OVER (ORDER BY offset DESC) AS kept
                        FROM queue_records WHERE topic = ?1 AND partition = ?2)
                     WHERE kept > ?3 ORDER BY offset DESC LIMIT 1",
                )
                .bind(&topic)
                .bind(partition)
                .bind(i64::try_from(options.retention_bytes).unwrap_or(i64::MAX))
                .fetch_optional(pool)
                .await?
            };
            loop {
                let removed = sqlx::query(
                    "DELETE FROM queue_records WHERE topic = ?1 AND partition = ?2 AND offset IN (
                        SELECT offset FROM queue_records WHERE topic = ?1 AND partition = ?2 AND offset < ?3
                        AND (timestamp_ms < ?4 OR offset <= ?5) ORDER BY offset LIMIT ?6)",
                )
                .bind(&topic)
                .bind(partition)
                .bind(bound)
                .bind(too_old)
                .bind(oversize.unwrap_or(-1))
                .bind(RETENTION_CHUNK as i64)
                .execute(pool)
                .await?
                .rows_affected();
                deleted += removed;
                if removed < RETENTION_CHUNK {
                    break;
                }
            }
        }
    }
    if deleted > 0 {
        tracing::debug!(deleted, "embedded queue retention");
    }
    Ok(deleted)
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        sqlx::query("INSERT INTO queue_topics (name, partitions) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(topic)
            .bind(i64::from(partitions))
            .execute(&self.pool)
            .await?;
        self.lock_partitions().remove(topic);
        let existing = self.topic_partitions(topic).await?;
        if existing != partitions {
            return Err(Error::PartitionMismatch { topic: topic.to_owned(), existing, wanted: partitions });
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> Result<Position> {
        // Resolve the topic first so an unknown topic fails before queueing.
        self.topic_partitions(topic).await?;
        let (reply, answer) = oneshot::channel();
        let append = Append { topic: topic.to_owned(), key: key.to_owned(), value: value.to_vec(), reply };
        self.appends.send(append).await.map_err(|_| Error::Unavailable("the queue writer has stopped".into()))?;
        answer.await.map_err(|_| Error::Unavailable("the queue writer has stopped".into()))?
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        for topic in topics {
            self.topic_partitions(topic).await?;
        }
        let member_id = format!("{:016x}-{:016x}", courier_ids::now_unix_ms(), rand::random::<u64>());
        Ok(Box::new(SqliteConsumer {
            queue: self.clone(),
            group: group.to_owned(),
            topics: topics.to_vec(),
            member_id,
            assignment: Vec::new(),
            rotation: 0,
            lag: Vec::new(),
            positions: BTreeMap::new(),
            next_heartbeat: None,
        }))
    }

    async fn partitions(&self, topic: &str) -> Result<u32> {
        self.topic_partitions(topic).await
    }
}

/// Reads an embedded queue file outside any group, read-only: it never writes
/// to the file, so it cannot disturb the standalone process that owns it (no
/// retention runs from here, no group is joined).
#[derive(Debug, Clone)]
pub struct SqliteTopicReader {
    pool: SqlitePool,
    poll_interval: Duration,
}

impl SqliteTopicReader {
    /// Opens the queue file `path`, which must exist.
    pub async fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Unavailable(format!("no embedded queue at {}", path.display())));
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(connect).await?;
        Ok(Self { pool, poll_interval: SqliteQueueOptions::default().poll_interval })
    }
}

#[async_trait]
impl TopicReader for SqliteTopicReader {
    async fn partitions(&self, topic: &str) -> Result<u32> {
        let row = sqlx::query("SELECT partitions FROM queue_topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&self.pool)
            .await?;
        let n: i64 = row.ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?.try_get(0)?;
        Ok(n as u32)
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<Bounds> {
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(offset), MAX(offset) FROM queue_records WHERE topic = ? AND partition = ?")
                .bind(topic)
                .bind(i64::from(partition))
                .fetch_one(&self.pool)
                .await?;
        // Retention always keeps the newest record, so an empty partition
        // never had one.
        Ok(match (first, last) {
            (Some(first), Some(last)) => Bounds { first: first as u64, end: last as u64 + 1 },
            _ => Bounds { first: 0, end: 0 },
        })
    }

    async fn offset_at(&self, topic: &str, partition: u32, unix_ms: i64) -> Result<u64> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(offset) FROM queue_records WHERE topic = ? AND partition = ? AND timestamp_ms >= ?",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(unix_ms)
        .fetch_one(&self.pool)
        .await?;
        match found {
            Some(offset) => Ok(offset as u64),
            None => Ok(self.bounds(topic, partition).await?.end),
        }
    }

    async fn cursor(&self, topic: &str, partition: u32, offset: u64) -> Result<Box<dyn Cursor>> {
        self.partitions(topic).await?;
        Ok(Box::new(SqliteCursor { reader: self.clone(), topic: topic.to_owned(), partition, next: offset }))
    }
}

/// One partition of an embedded queue being read; records appended by the
/// owning process are found by polling.
struct SqliteCursor {
    reader: SqliteTopicReader,
    topic: String,
    partition: u32,
    next: u64,
}

#[async_trait]
impl Cursor for SqliteCursor {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let records = read_partition(&self.reader.pool, &self.topic, self.partition, self.next, max).await?;
            if let Some(last) = records.last() {
                self.next = last.offset + 1;
                return Ok(records);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            tokio::time::sleep(self.reader.poll_interval.min(deadline - now)).await;
        }
    }
}

/// Appends records in group commits, and applies retention now and then,
/// until every sender is gone.
async fn write_loop(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Append>,
    appended: Arc<Notify>,
    options: SqliteQueueOptions,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut partitions: HashMap<String, u32> = HashMap::new();
    let mut retention = tokio::time::interval(options.retention_interval.max(Duration::from_millis(10)));
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, MAX_GROUP_COMMIT) => received,
            _ = retention.tick() => {
                if let Err(e) = enforce_retention(&pool, &options).await {
                    tracing::warn!(error = %e, "embedded queue retention failed; trying again later");
                }
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let result = append_batch(&pool, &batch, &mut partitions).await;
        match result {
            Ok(positions) => {
                for (append, position) in batch.drain(..).zip(positions) {
                    let _ = append.reply.send(Ok(position));
                }
                appended.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "embedded queue append failed");
                let message = e.to_string();
                for append in batch.drain(..) {
                    let _ = append.reply.send(Err(Error::Unavailable(message.clone())));
                }
            }
        }
    }
}

async fn append_batch(
    pool: &SqlitePool,
    batch: &[Append],
    partitions: &mut HashMap<String, u32>,
) -> Result<Vec<Position>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // Each record's partition (a topic's count is read once: it never changes).
    let mut placed = Vec::with_capacity(batch.len());
    for append in batch {
        let count = match partitions.get(&append.topic) {
            Some(n) => *n,
            None => {
                let n: i64 = sqlx::query_scalar("SELECT partitions FROM queue_topics WHERE name = ?")
                    .bind(&append.topic)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::UnknownTopic(append.topic.clone()))?;
                partitions.insert(append.topic.clone(), n as u32);
                n as u32
            }
        };
        placed.push(partition_for(&append.key, count));
    }
    // Where each partition the group writes stands, read in one statement (the
    // write lock is held: nobody appends meanwhile)…
    let touched: Vec<(&str, u32)> = {
        let mut touched: Vec<(&str, u32)> = batch.iter().zip(&placed).map(|(a, p)| (a.topic.as_str(), *p)).collect();
        touched.sort_unstable();
        touched.dedup();
        touched
    };
    let heads: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT t.value->>0, t.value->>1,
            (SELECT MAX(offset) FROM queue_records WHERE topic = t.value->>0 AND partition = t.value->>1)
         FROM json_each(?) AS t",
    )
    .bind(json(&touched)?)
    .fetch_all(&mut *tx)
    .await?;
    let mut next: HashMap<(String, u32), u64> =
        heads.into_iter().map(|(topic, p, last)| ((topic, p as u32), last.map_or(0, |o| o as u64 + 1))).collect();
    // …then the records, in one statement (values hex-encoded: JSON has no
    // bytes), with offsets following on in each partition.
    let now = courier_ids::now_unix_ms();
    let mut positions = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for (append, partition) in batch.iter().zip(placed) {
        let slot = next.entry((append.topic.clone(), partition)).or_insert(0);
        let offset = *slot;
        *slot += 1;
        positions.push(Position { partition, offset });
        rows.push((append.topic.as_str(), partition, offset, append.key.as_str(), hex::encode(&append.value)));
    }
    sqlx::query(
        "INSERT INTO queue_records (topic, partition, offset, key, value, timestamp_ms)
         SELECT value->>0, value->>1, value->>2, value->>3, unhex(value->>4), ?2 FROM json_each(?1)",
    )
    .bind(json(&rows)?)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(positions)
}

/// One statement parameter holding `rows` as a JSON array, for `json_each`.
fn json<T: serde::Serialize>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Unavailable(format!("encoding a group of records: {e}")))
}

async fn read_partition(
    pool: &SqlitePool,
    topic: &str,
    partition: u32,
    offset: u64,
    max: usize,
) -> Result<Vec<Record>> {
    let rows = sqlx::query(
        "SELECT offset, key, value, timestamp_ms FROM queue_records
         WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
    )
    .bind(topic)
    .bind(i64::from(partition))
    .bind(offset as i64)
    .bind(max as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Record {
                topic: topic.to_owned(),
                partition,
                offset: row.try_get::<i64, _>(0)? as u64,
                key: row.try_get(1)?,
                value: row.try_get(2)?,
                timestamp_ms: row.try_get(3)?,
            })
        })
        .collect()
}

/// One member of a consumer group on the embedded queue.
struct SqliteConsumer {
    queue: SqliteQueue,
    group: String,
    topics: Vec<String>,
    member_id: String,
    assignment: Vec<TopicPartition>,
    /// Next offset to hand out, per owned partition.
    positions: BTreeMap<TopicPartition, u64>,
    /// Which owned partition a poll reads first.
    rotation: usize,
    /// Records not yet handed out per owned partition, as of the last heartbeat.
    lag: Vec<(TopicPartition, u64)>,
    next_heartbeat: Option<Instant>,
}

impl SqliteConsumer {
    /// Renews membership and recomputes the assignment when a heartbeat is due.
    async fn heartbeat(&mut self) -> Result<()> {
        if self.next_heartbeat.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let pool = &self.queue.pool;
        let now = courier_ids::now_unix_ms();
        let expires = now + self.queue.options.session_timeout.as_millis() as i64;
        sqlx::query(
            "INSERT INTO queue_group_members (group_id, member_id, expires_ms) VALUES (?, ?, ?)
             ON CONFLICT (group_id, member_id) DO UPDATE SET expires_ms = excluded.expires_ms",
        )
        .bind(&self.group)
        .bind(&self.member_id)
        .bind(expires)
        .execute(pool)
        .await?;
        sqlx::query("DELETE FROM queue_group_members WHERE group_id = ? AND expires_ms < ?")
            .bind(&self.group)
            .bind(now)
            .execute(pool)
            .await?;
        let members: Vec<String> =
            sqlx::query_scalar("SELECT member_id FROM queue_group_members WHERE group_id = ? ORDER BY member_id")
                .bind(&self.group)
                .fetch_all(pool)
                .await?;
        let me = members.iter().position(|m| *m == self.member_id).unwrap_or(0);
        let mut all = Vec::new();
        for topic in &self.topics {
            let n = self.queue.topic_partitions(topic).await?;
            all.extend((0..n).map(|p| (topic.clone(), p)));
        }
        all.sort();
        let assignment: Vec<TopicPartition> =
            all.into_iter().enumerate().filter(|(i, _)| i % members.len().max(1) == me).map(|(_, tp)| tp).collect();
        if assignment != self.assignment {
            let mut positions = BTreeMap::new();
            for tp in &assignment {
                let position = match self.positions.get(tp) {
                    Some(p) => *p,
                    None => self.committed(tp).await?,
                };
                positions.insert(tp.clone(), position);
            }
            tracing::info!(group = %self.group, member = %self.member_id, partitions = assignment.len(), "embedded queue assignment changed");
            self.positions = positions;
            self.assignment = assignment;
        }
        self.lag = self.measure_lag().await?;
        self.next_heartbeat = Some(Instant::now() + self.queue.options.heartbeat_interval);
        Ok(())
    }

    /// The records after each owned partition's position.
    async fn measure_lag(&self) -> Result<Vec<(TopicPartition, u64)>> {
        let mut lag = Vec::with_capacity(self.positions.len());
        for (tp, position) in &self.positions {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT MAX(offset) FROM queue_records WHERE topic = ? AND partition = ?")
                    .bind(&tp.0)
                    .bind(i64::from(tp.1))
                    .fetch_one(&self.queue.pool)
                    .await?;
            let end = last.map_or(0, |last| last as u64 + 1);
            lag.push((tp.clone(), end.saturating_sub(*position)));
        }
        Ok(lag)
    }

    async fn committed(&self, (topic, partition): &TopicPartition) -> Result<u64> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM queue_group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
        )
        .bind(&self.group)
        .bind(topic)
        .bind(i64::from(*partition))
        .fetch_optional(&self.queue.pool)
        .await?;
        Ok(next.unwrap_or(0) as u64)
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.heartbeat().await?;
            // Listen before reading, so an append between the read and the wait
            // still wakes us.
            let appended = self.queue.appended.clone();
            let notified = appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // Start at the next partition each poll, so a busy partition that
            // fills `max` on its own cannot starve the ones after it.
            let owned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
            self.rotation = self.rotation.wrapping_add(1);
            let mut records = Vec::new();
            for i in 0..owned.len() {
                if records.len() >= max {
                    break;
                }
                let tp = &owned[(self.rotation + i) % owned.len()];
                let Some(position) = self.positions.get_mut(tp) else { continue };
                let batch = read_partition(&self.queue.pool, &tp.0, tp.1, *position, max - records.len()).await?;
                if let Some(last) = batch.last() {
                    *position = last.offset + 1;
                }
                records.extend(batch);
            }
            if !records.is_empty() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let wait =
                (deadline - now).min(self.queue.options.poll_interval).min(self.queue.options.heartbeat_interval);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn commit(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO queue_group_offsets (group_id, topic, partition, next_offset) VALUES (?, ?, ?, ?)
             ON CONFLICT (group_id, topic, partition)
             DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
        )
        .bind(&self.group)
        .bind(topic)
        .bind(i64::from(partition))
        .bind(offset as i64 + 1)
        .execute(&self.queue.pool)
        .await?;
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.clone()
    }

    fn lag(&self) -> Vec<(TopicPartition, u64)> {
        self.lag.clone()
    }

    async fn close(&mut self) -> Result<()> {
        sqlx::query("DELETE FROM queue_group_members WHERE group_id = ? AND member_id = ?")
            .bind(&self.group)
            .bind(&self.member_id)
            .execute(&self.queue.pool)
            .await?;
        self.assignment.clear();
        self.positions.clear();
        self.lag.clear();
        self.next_heartbeat = None;
        Ok(())
    }
}
