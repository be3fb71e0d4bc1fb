//! The embedded queue: Kafka's contract kept in one SQLite file, for `courier
//! standalone` and small installs.
//!
//! - **One writer thread** owns the file's write connection (see
//!   `courier-sqlite`), and a second connection on a thread of its own serves
//!   the consumers' reads, so a read never waits behind a commit's disk sync.
//!   Each piece of work is one hand-off to its thread, whatever the number of
//!   statements in it: on a busy machine, waiting for a thread per statement
//!   cost more than the statements.
//! - **Group commit.** A send (or a consumer's commit) joins the writes
//!   pending; the first to find none pending queues one flush job on the writer
//!   thread, which takes every write pending when it runs into one `BEGIN
//!   IMMEDIATE` transaction and answers each sender only after the commit: an
//!   acknowledged record survives `kill -9`, and by default a power cut too (WAL
//!   with `synchronous=FULL`; `sync_full: false` gives `NORMAL`, which survives
//!   a process crash and may lose the last commits to a power cut). One sync
//!   pays for everything that arrived while the previous one was on disk.
//! - Offsets are computed inside that write transaction, so they are gap-free and
//!   stay correct even if another process appends to the same file.
//! - A consumer group is a table of members with expiry times. Each member renews
//!   its entry on a heartbeat and derives the same assignment as every other member
//!   (partitions sorted, dealt round-robin to the live members sorted by id), so no
//!   coordinator is needed; an expired member's partitions move to the others on
//!   their next heartbeat. Handover is at-least-once, like Kafka's: the new owner
//!   resumes from the last committed offset. A commit returns once queued, as
//!   Kafka's stored offsets do: it is written with the next group (milliseconds
//!   later), before any later write of this queue, and `close` waits for it.
//! - **Waking consumers.** The queue keeps where each partition ends as its
//!   writer last saw it; a consumer reads only partitions that hold something
//!   new, and an idle one sleeps on a [`Notify`] the writer rings after each
//!   commit. Appends by another process are found by re-reading the ends every
//!   `poll_interval`.
//! - **Retention**, like Kafka's `retention.ms` and `retention.bytes` (per
//!   partition): every `retention_interval` the writer deletes a partition's
//!   records older than `retention` or beyond `retention_bytes`, but never one
//!   that a consumer group has not committed past, and never the newest (it
//!   carries the next offset). SQLite reuses the freed pages, so the file stops
//!   growing once traffic and retention balance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_sqlite::rusqlite::{self, Connection, OptionalExtension as _, TransactionBehavior, params};
use courier_sqlite::{GroupCommit, Options, SqliteThread};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::{Notify, oneshot};

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
            poll_interval: Duration::from_millis(250),
            sync_full: true,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: 64 * 1024 * 1024,
            retention_interval: Duration::from_secs(60),
        }
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS queue_topics (
        name TEXT PRIMARY KEY,
        partitions INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS queue_records (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, partition, offset)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS queue_group_offsets (
        group_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS queue_group_members (
        group_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (group_id, member_id)
    ) WITHOUT ROWID;
";

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(courier_sqlite::Error::Sqlite(e))
    }
}

/// A write waiting for the writer's next group.
enum Write {
    Append {
        topic: String,
        partition: u32,
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<Position>>,
    },
    /// A group's position: `next` is the first offset not yet processed.
    Commit {
        group: String,
        topic: String,
        partition: u32,
        next: u64,
    },
}

/// What the writer's commits tell the consumers.
#[derive(Default)]
struct Tail {
    /// Rung after every commit that appended records.
    appended: Notify,
    /// Where each partition ends (its next offset), as last seen: after this
    /// queue's own commits, and on consumers' re-reads of the file.
    ends: Mutex<HashMap<TopicPartition, u64>>,
}

/// What every handle on one queue shares.
struct Shared {
    /// Sends and commits, grouped on the writer thread.
    writes: Arc<GroupCommit<Write>>,
    reader: SqliteThread,
    tail: Arc<Tail>,
    partitions: Mutex<HashMap<String, u32>>,
    options: SqliteQueueOptions,
}

impl Shared {
    /// The writer thread, for work other than sends and commits.
    fn writer(&self) -> &SqliteThread {
        self.writes.thread()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// maps it guards are still consistent (every update is one insert).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The embedded queue; cheap to clone.
#[derive(Clone)]
pub struct SqliteQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").field("options", &self.shared.options).finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue stored in the file `path`.
    pub async fn open(path: &Path, options: SqliteQueueOptions) -> Result<Self> {
        let writer =
            SqliteThread::open(path, Options { sync_full: options.sync_full, ..Options::writer("queue-writer") })?;
        writer.call(|c| c.execute_batch(SCHEMA).map_err(Error::from)).await?;
        let reader = SqliteThread::open(path, Options::reader("queue-reader"))?;
        let tail = Arc::new(Tail::default());
        let written = tail.clone();
        let writes = GroupCommit::new(writer, move |c, writes| flush(&written, c, writes));
        let shared = Arc::new(Shared { writes, reader, tail, partitions: Mutex::new(HashMap::new()), options });
        tokio::spawn(retain(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    async fn topic_partitions(&self, topic: &str) -> Result<u32> {
        if let Some(n) = lock(&self.shared.partitions).get(topic).copied() {
            return Ok(n);
        }
        let name = topic.to_owned();
        let n: Option<i64> = self
            .shared
            .reader
            .call(move |c| {
                c.query_row("SELECT partitions FROM queue_topics WHERE name = ?1", [&name], |row| row.get(0))
                    .optional()
                    .map_err(Error::from)
            })
            .await?;
        let n = n.ok_or_else(|| Error::UnknownTopic(topic.to_owned()))? as u32;
        lock(&self.shared.partitions).insert(topic.to_owned(), n);
        Ok(n)
    }

    /// Applies retention now (the writer also does every
    /// `retention_interval`); returns the records deleted.
    pub async fn enforce_retention(&self) -> Result<u64> {
        let options = self.shared.options.clone();
        self.shared.writer().call(move |c| enforce_retention(c, &options)).await
    }
}

/// Runs retention every `retention_interval` while the queue is open.
async fn retain(shared: Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.options.retention_interval.max(Duration::from_millis(10))) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(queue) = shared.upgrade().map(|shared| SqliteQueue { shared }) else { return };
        if let Err(e) = queue.enforce_retention().await {
            tracing::warn!(error = %e, "embedded queue retention failed; trying again later");
        }
    }
}

/// Writes a group in one transaction, then answers the senders and wakes
/// the consumers. Runs on the writer thread.
fn flush(tail: &Tail, connection: &mut Connection, writes: Vec<Write>) {
    match write_group(connection, &writes) {
        Ok(positions) => {
            // Where each partition written now ends, then one update each.
            let mut grown: HashMap<(&str, u32), u64> = HashMap::new();
            for (write, position) in writes.iter().zip(&positions) {
                if let (Write::Append { topic, .. }, Some(p)) = (write, position) {
                    let end = grown.entry((topic.as_str(), p.partition)).or_insert(0);
                    *end = (*end).max(p.offset + 1);
                }
            }
            let appended = !grown.is_empty();
            {
                let mut ends = lock(&tail.ends);
                for ((topic, partition), end) in grown {
                    let known = ends.entry((topic.to_owned(), partition)).or_insert(0);
                    *known = (*known).max(end);
                }
            }
            for (write, position) in writes.into_iter().zip(positions) {
                if let (Write::Append { reply, .. }, Some(position)) = (write, position) {
                    let _ = reply.send(Ok(position));
                }
            }
            if appended {
                tail.appended.notify_waiters();
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = writes.len(), "embedded queue write failed");
            let message = e.to_string();
            for write in writes {
                if let Write::Append { reply, .. } = write {
                    let _ = reply.send(Err(Error::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// Writes a group in one transaction; each append's position, in order (none
/// for a commit).
fn write_group(connection: &mut Connection, writes: &[Write]) -> Result<Vec<Option<Position>>> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = courier_ids::now_unix_ms();
    // Where each partition the group writes stands, read once (the write lock
    // is held: nobody appends meanwhile).
    let mut next: HashMap<(&str, u32), u64> = HashMap::new();
    let mut positions = Vec::with_capacity(writes.len());
    {
        let mut last =
            tx.prepare_cached("SELECT MAX(offset) FROM queue_records WHERE topic = ?1 AND partition = ?2")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO queue_records (topic, partition, offset, key, value, timestamp_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut commit = tx.prepare_cached(
            "INSERT INTO queue_group_offsets (group_id, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, topic, partition)
             DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
        )?;
        for write in writes {
            match write {
                Write::Append { topic, partition, key, value, .. } => {
                    let slot = match next.get_mut(&(topic.as_str(), *partition)) {
                        Some(slot) => slot,
                        None => {
                            let newest: Option<i64> = last.query_row(params![topic, partition], |row| row.get(0))?;
                            next.entry((topic.as_str(), *partition)).or_insert(newest.map_or(0, |o| o as u64 + 1))
                        }
                    };
                    let offset = *slot;
                    *slot += 1;
                    insert.execute(params![topic, partition, offset as i64, key, value, now])?;
                    positions.push(Some(Position { partition: *partition, offset }));
                }
                Write::Commit { group, topic, partition, next } => {
                    commit.execute(params![group, topic, partition, *next as i64])?;
                    positions.push(None);
                }
            }
        }
    }
    tx.commit()?;
    Ok(positions)
}

/// Records deleted per statement, so one sweep never holds the write lock long.
const RETENTION_CHUNK: u64 = 10_000;

/// Deletes what retention allows in every partition (see the module docs).
fn enforce_retention(connection: &mut Connection, options: &SqliteQueueOptions) -> Result<u64> {
    let topics: Vec<(String, i64)> = {
        let mut statement = connection.prepare_cached("SELECT name, partitions FROM queue_topics")?;
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?
    };
    let too_old = courier_ids::now_unix_ms().saturating_sub(options.retention.as_millis() as i64);
    let limit_bytes = i64::try_from(options.retention_bytes).unwrap_or(i64::MAX);
    let mut deleted = 0;
    for (topic, partitions) in topics {
        for partition in 0..partitions {
            // Offsets below `bound` may go: every group committed past them, and
            // the newest record stays.
            let bound: Option<i64> = connection.query_row(
                "SELECT MIN(c.next_offset, r.newest) FROM
                    (SELECT MIN(next_offset) AS next_offset FROM queue_group_offsets WHERE topic = ?1 AND partition = ?2) c,
                    (SELECT MAX(offset) AS newest FROM queue_records WHERE topic = ?1 AND partition = ?2) r",
                params![topic, partition],
                |row| row.get(0),
            )?;
            let Some(bound) = bound else { continue };
            // The last offset beyond the size limit, counting from the newest.
            let oversize: Option<i64> = if options.retention_bytes == 0 {
                None
            } else {
                connection
                    .query_row(
                        "SELECT offset FROM (
                            SELECT offset, SUM(length(key) + length(value)) OVER (ORDER BY offset DESC) AS kept
                            FROM queue_records WHERE topic = ?1 AND partition = ?2)
                         WHERE kept > ?3 ORDER BY offset DESC LIMIT 1",
                        params![topic, partition, limit_bytes],
                        |row| row.get(0),
                    )
                    .optional()?
            };
            loop {
                let removed = connection.execute(
                    "DELETE FROM queue_records WHERE topic = ?1 AND partition = ?2 AND offset IN (
                        SELECT offset FROM queue_records WHERE topic = ?1 AND partition = ?2 AND offset < ?3
                        AND (timestamp_ms < ?4 OR offset <= ?5) ORDER BY offset LIMIT ?6)",
                    params![topic, partition, bound, too_old, oversize.unwrap_or(-1), RETENTION_CHUNK as i64],
                )? as u64;
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
        let name = topic.to_owned();
        let existing: i64 = self
            .shared
            .writer()
            .call(move |c| {
                c.execute(
                    "INSERT INTO queue_topics (name, partitions) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                    params![name, partitions],
                )?;
                c.query_row("SELECT partitions FROM queue_topics WHERE name = ?1", [&name], |row| row.get(0))
                    .map_err(Error::from)
            })
            .await?;
        let existing = existing as u32;
        lock(&self.shared.partitions).insert(topic.to_owned(), existing);
        if existing != partitions {
            return Err(Error::PartitionMismatch { topic: topic.to_owned(), existing, wanted: partitions });
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> Result<Position> {
        // Resolve the topic first so an unknown topic fails before queueing.
        let partitions = self.topic_partitions(topic).await?;
        let (reply, answer) = oneshot::channel();
        self.shared.writes.push(Write::Append {
            topic: topic.to_owned(),
            partition: partition_for(key, partitions),
            key: key.to_owned(),
            value: value.to_vec(),
            reply,
        })?;
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
            paused: HashSet::new(),
            lag: Vec::new(),
            positions: BTreeMap::new(),
            next_heartbeat: None,
            next_reread: Instant::now(),
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

/// Reads a partition for a [`SqliteCursor`].
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
    /// Owned partitions not read (see [`Consumer::pause`]).
    paused: HashSet<TopicPartition>,
    /// Records not yet handed out per owned partition, as of the last heartbeat.
    lag: Vec<(TopicPartition, u64)>,
    next_heartbeat: Option<Instant>,
    /// When an idle poll next re-reads where the owned partitions end (for
    /// appends by another process, which ring no [`Notify`] here).
    next_reread: Instant,
}

impl SqliteConsumer {
    /// Renews membership and recomputes the assignment when a heartbeat is due.
    async fn heartbeat(&mut self) -> Result<()> {
        if self.next_heartbeat.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let (group, member) = (self.group.clone(), self.member_id.clone());
        let session = self.queue.shared.options.session_timeout.as_millis() as i64;
        let members: Vec<String> = self
            .queue
            .shared
            .writer()
            .call(move |c| {
                let now = courier_ids::now_unix_ms();
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.prepare_cached(
                    "INSERT INTO queue_group_members (group_id, member_id, expires_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (group_id, member_id) DO UPDATE SET expires_ms = excluded.expires_ms",
                )?
                .execute(params![group, member, now + session])?;
                tx.prepare_cached("DELETE FROM queue_group_members WHERE group_id = ?1 AND expires_ms < ?2")?
                    .execute(params![group, now])?;
                let members = tx
                    .prepare_cached("SELECT member_id FROM queue_group_members WHERE group_id = ?1 ORDER BY member_id")?
                    .query_map([&group], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                tx.commit()?;
                Ok::<_, Error>(members)
            })
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
            let committed = self.committed(&assignment).await?;
            for (tp, committed) in assignment.iter().zip(committed) {
                positions.insert(tp.clone(), self.positions.get(tp).copied().unwrap_or(committed));
            }
            tracing::info!(group = %self.group, member = %self.member_id, partitions = assignment.len(), "embedded queue assignment changed");
            self.positions = positions;
            self.paused.retain(|tp| assignment.contains(tp));
            self.assignment = assignment;
        }
        self.reread_ends().await?;
        let ends = lock(&self.queue.shared.tail.ends);
        self.lag = self
            .positions
            .iter()
            .map(|(tp, position)| (tp.clone(), ends.get(tp).copied().unwrap_or(0).saturating_sub(*position)))
            .collect();
        drop(ends);
        self.next_heartbeat = Some(Instant::now() + self.queue.shared.options.heartbeat_interval);
        Ok(())
    }

    /// Re-reads from the file where each owned partition ends; true if any
    /// moved past what was known.
    async fn reread_ends(&mut self) -> Result<bool> {
        self.next_reread = Instant::now() + self.queue.shared.options.poll_interval;
        let owned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        if owned.is_empty() {
            return Ok(false);
        }
        let found: Vec<(TopicPartition, u64)> = self
            .queue
            .shared
            .reader
            .call(move |c| {
                let mut last =
                    c.prepare_cached("SELECT MAX(offset) FROM queue_records WHERE topic = ?1 AND partition = ?2")?;
                let mut found = Vec::with_capacity(owned.len());
                for tp in owned {
                    let newest: Option<i64> = last.query_row(params![tp.0, tp.1], |row| row.get(0))?;
                    found.push((tp, newest.map_or(0, |o| o as u64 + 1)));
                }
                Ok::<_, Error>(found)
            })
            .await?;
        let mut ends = lock(&self.queue.shared.tail.ends);
        let mut moved = false;
        for (tp, end) in found {
            let known = ends.entry(tp).or_insert(0);
            if end > *known {
                *known = end;
                moved = true;
            }
        }
        Ok(moved)
    }

    /// The group's committed position of each of `partitions`, in order.
    async fn committed(&self, partitions: &[TopicPartition]) -> Result<Vec<u64>> {
        let (group, partitions) = (self.group.clone(), partitions.to_vec());
        self.queue
            .shared
            .reader
            .call(move |c| {
                let mut read = c.prepare_cached(
                    "SELECT next_offset FROM queue_group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                )?;
                let mut committed = Vec::with_capacity(partitions.len());
                for (topic, partition) in &partitions {
                    let next: Option<i64> =
                        read.query_row(params![group, topic, partition], |row| row.get(0)).optional()?;
                    committed.push(next.unwrap_or(0) as u64);
                }
                Ok::<_, Error>(committed)
            })
            .await
    }

    /// Reads up to `max` records from the owned partitions that hold new ones,
    /// starting at the next partition each poll (so a busy partition that fills
    /// `max` on its own cannot starve the ones after it).
    async fn read_new(&mut self, max: usize) -> Result<Vec<Record>> {
        let mut wanted: Positions = {
            let ends = lock(&self.queue.shared.tail.ends);
            self.positions
                .iter()
                .filter(|(tp, position)| !self.paused.contains(*tp) && ends.get(*tp).is_none_or(|end| end > *position))
                .map(|(tp, position)| (tp.clone(), *position))
                .collect()
        };
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.rotation = self.rotation.wrapping_add(1);
        let start = self.rotation % wanted.len();
        wanted.rotate_left(start);
        let (records, moved) = self.queue.shared.reader.call(move |c| read_partitions(c, wanted, max)).await?;
        for (tp, next) in moved {
            if let Some(position) = self.positions.get_mut(&tp) {
                *position = (*position).max(next);
            }
        }
        Ok(records)
    }
}

/// Partitions with the offset a consumer reads next in each.
type Positions = Vec<(TopicPartition, u64)>;

/// Up to `max` records after each of `wanted`'s positions, partition by
/// partition in that order, each partition's in offset order; and the next
/// position of each partition that gave any.
fn read_partitions(connection: &mut Connection, wanted: Positions, max: usize) -> Result<(Vec<Record>, Positions)> {
    let mut statement = connection.prepare_cached(
        "SELECT offset, key, value, timestamp_ms FROM queue_records
         WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
    )?;
    let mut records: Vec<Record> = Vec::new();
    let mut moved = Vec::new();
    for ((topic, partition), position) in wanted {
        if records.len() >= max {
            break;
        }
        let limit = (max - records.len()) as i64;
        let before = records.len();
        let rows = statement.query_map(params![topic, partition, position as i64, limit], |row| {
            Ok(Record {
                topic: topic.clone(),
                partition,
                offset: row.get::<_, i64>(0)? as u64,
                key: row.get(1)?,
                value: row.get(2)?,
                timestamp_ms: row.get(3)?,
            })
        })?;
        for row in rows {
            records.push(row?);
        }
        if let Some(last) = records[before..].last() {
            let next = last.offset + 1;
            moved.push(((topic, partition), next));
        }
    }
    Ok((records, moved))
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        let shared = self.queue.shared.clone();
        loop {
            self.heartbeat().await?;
            // Listen before reading, so an append between the read and the wait
            // still wakes us.
            let notified = shared.tail.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let records = self.read_new(max).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            if now >= self.next_reread && self.reread_ends().await? {
                continue;
            }
            let mut wake = deadline.min(self.next_reread);
            if let Some(heartbeat) = self.next_heartbeat {
                wake = wake.min(heartbeat);
            }
            let _ = tokio::time::timeout(wake.saturating_duration_since(now), notified).await;
        }
    }

    async fn commit(&mut self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        self.queue.shared.writes.push(Write::Commit {
            group: self.group.clone(),
            topic: topic.to_owned(),
            partition,
            next: offset + 1,
        })?;
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.clone()
    }

    fn pause(&mut self, topic: &str, partition: u32) -> Result<()> {
        let tp = (topic.to_owned(), partition);
        if self.assignment.contains(&tp) {
            self.paused.insert(tp);
        }
        Ok(())
    }

    fn resume(&mut self, topic: &str, partition: u32) -> Result<()> {
        self.paused.remove(&(topic.to_owned(), partition));
        Ok(())
    }

    fn lag(&self) -> Vec<(TopicPartition, u64)> {
        self.lag.clone()
    }

    async fn close(&mut self) -> Result<()> {
        // Runs after every commit queued before it (the writer takes its jobs
        // in order), so those are on disk when this returns.
        let (group, member) = (self.group.clone(), self.member_id.clone());
        self.queue
            .shared
            .writer()
            .call(move |c| {
                c.execute(
                    "DELETE FROM queue_group_members WHERE group_id = ?1 AND member_id = ?2",
                    params![group, member],
                )
                .map_err(Error::from)
            })
            .await?;
        self.assignment.clear();
        self.paused.clear();
        self.positions.clear();
        self.lag.clear();
        self.next_heartbeat = None;
        Ok(())
    }
}
