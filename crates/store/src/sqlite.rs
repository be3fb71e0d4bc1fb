//! The embedded store: users and history in one SQLite file, schema from
//! `migrations/sqlite`.
//!
//! Appends run in `BEGIN IMMEDIATE` transactions: the write lock is taken before
//! anything is read, so two writers never both read the same `last_seq`, and
//! SQLite's busy timeout (rather than a failed upgrade) handles contention. A
//! batch is a fixed handful of set-based statements (see [`crate::append`]); the
//! rows travel as one JSON array per statement, unpacked by `json_each`, because
//! SQLite has no array parameters and each statement costs sqlx a thread hop.
//!
//! **Group commit.** A database has one writer, and task runs a lane per
//! partition, each appending small batches. So appends go to one writer task,
//! which takes every append waiting at that moment into a single transaction
//! (their streams are disjoint: one writer per stream) and answers each with
//! its own positions. The statements and the commit are paid once per group
//! rather than once per lane. If the group's transaction fails, each append is
//! tried alone, so a batch the store refuses fails only its own caller (whose
//! persister then finds the poison record) and never an innocent lane's.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use crate::rows::{
    DEAD_LETTER_COLUMNS, dead_letter_from_row, heads_from_rows, page_query, positions_from_rows, storable_text,
    stored_from_row, user_from_row,
};
use crate::{
    DeadLetter, Error, HistoryStore, Message, Page, Position, Result, StoredMessage, StreamId, StreamInfo, User,
    UserStore, append,
};

/// Users and history in SQLite; cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The group-committing writer (see the module docs). Appends queue here
    /// rather than on SQLite's lock, whose waiters poll it with sleeps of up to
    /// 100 ms (the busy handler): at a few hundred appends a second from
    /// parallel lanes that cost more than the appends (100 ms each measured).
    appends: mpsc::Sender<AppendRequest>,
}

/// One caller's batch, and where its positions go.
#[derive(Debug)]
struct AppendRequest {
    batch: Vec<Message>,
    reply: oneshot::Sender<Result<Vec<Vec<Position>>>>,
}

/// Most appends committed in one group.
const MAX_GROUP: usize = 64;

impl SqliteStore {
    /// Opens (creating if needed) the store in the file `path` and applies any
    /// pending migration.
    pub async fn open(path: &Path) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit on disk before it returns: task commits the queue
            // offset after the store's commit, so a power cut can never keep
            // an offset that covers history it took back (the queue is
            // another file, synced on its own terms).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(connect).await?;
        let (appends, queued) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(write_loop(pool.clone(), queued));
        let store = Self { pool, appends };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations from `migrations/sqlite`.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../../migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64> {
        let result = sqlx::query_scalar::<_, i64>(
            "INSERT INTO users (name, password_hash, created_ms) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .bind(courier_ids::now_unix_ms())
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(id) => Ok(id as u64),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::NameTaken),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE id = ?")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }
}

/// Commits the appends waiting, a group at a time, until every store handle
/// is gone.
async fn write_loop(pool: SqlitePool, mut queued: mpsc::Receiver<AppendRequest>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queued.recv_many(&mut group, MAX_GROUP).await > 0 {
        let results = append_group(&pool, &mut group).await;
        for (request, result) in group.drain(..).zip(results) {
            // A caller that went away (shutdown) no longer needs its answer.
            let _ = request.reply.send(result);
        }
    }
}

/// Appends every request's batch in one transaction, or, if that fails, each
/// in its own; returns each request's outcome, in order. Takes the batches.
async fn append_group(pool: &SqlitePool, group: &mut [AppendRequest]) -> Vec<Result<Vec<Vec<Position>>>> {
    let lengths: Vec<usize> = group.iter().map(|r| r.batch.len()).collect();
    let mut all: Vec<Message> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.batch)).collect();
    if group.len() > 1 {
        match append_tx(pool, &all).await {
            Ok(mut positions) => {
                return lengths.iter().map(|n| Ok(positions.drain(..*n).collect())).collect();
            }
            Err(e) => tracing::debug!(error = %e, appends = group.len(), "a group append failed; appending one by one"),
        }
    }
    let mut results = Vec::with_capacity(group.len());
    for n in lengths {
        let batch: Vec<Message> = all.drain(..n).collect();
        results.push(append_tx(pool, &batch).await);
    }
    results
}

/// Appends `batch` in one `BEGIN IMMEDIATE` transaction.
async fn append_tx(pool: &SqlitePool, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // 1. The messages, learning which ids were new.
    let rows: Vec<serde_json::Value> = batch
        .iter()
        .map(|m| {
            serde_json::json!([
                m.msg_id as i64,
                m.kind as i64,
                m.room_id as i64,
                m.from_user_id as i64,
                m.from_user_name,
                m.to_user_id as i64,
                m.to_user_name,
                m.body,
                m.admitted_ms(),
                m.client_msg_id,
            ])
        })
        .collect();
    let inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO messages (msg_id, kind, room_id, from_user_id, from_user_name, to_user_id,
            to_user_name, body, admitted_ms, client_msg_id)
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7,
            value->>8, value->>9
         FROM json_each(?) WHERE true
         ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id",
    )
    .bind(json(&rows)?)
    .fetch_all(&mut *tx)
    .await?;

    // 2. The heads of every stream the batch moves (BEGIN IMMEDIATE already
    //    holds the database's write lock); missing streams start at seq 0.
    let new_streams = append::streams_to_lock(batch);
    let streams: Vec<&String> = new_streams.iter().map(|(stream, _)| stream).collect();
    let rows = sqlx::query(
        "INSERT INTO streams (stream, epoch, last_seq)
         SELECT value->>0, value->>1, 0 FROM json_each(?) WHERE true
         ON CONFLICT (stream) DO UPDATE SET last_seq = last_seq
         RETURNING stream, last_seq, epoch",
    )
    .bind(json(&new_streams)?)
    .fetch_all(&mut *tx)
    .await?;
    let heads = heads_from_rows(&rows)?;

    // 3. Positions of messages stored before (a redelivered record).
    let mut existing = HashMap::new();
    let known = append::known_ids(batch, &inserted);
    if !known.is_empty() {
        let rows = sqlx::query(
            "SELECT stream, msg_id, seq FROM stream_entries
             WHERE stream IN (SELECT value FROM json_each(?)) AND msg_id IN (SELECT value FROM json_each(?))",
        )
        .bind(json(&streams)?)
        .bind(json(&known.iter().map(|id| *id as i64).collect::<Vec<_>>())?)
        .fetch_all(&mut *tx)
        .await?;
        existing = positions_from_rows(&rows)?;
    }

    // 4. New entries and heads.
    let plan = append::plan(batch, heads, existing)?;
    if !plan.entries.is_empty() {
        let entries: Vec<(&str, i64, i64, i64)> =
            plan.entries.iter().map(|e| (e.stream.as_str(), e.seq as i64, e.msg_id as i64, e.peer as i64)).collect();
        sqlx::query(
            "INSERT INTO stream_entries (stream, seq, msg_id, peer_user_id)
             SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?)",
        )
        .bind(json(&entries)?)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE streams SET last_seq = t.value->>1 FROM json_each(?) AS t WHERE streams.stream = t.value->>0",
        )
        .bind(json(&plan.heads)?)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(plan.positions)
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Database(sqlx::Error::WorkerCrashed);
        self.appends.send(AppendRequest { batch: batch.to_vec(), reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = page_query(stream, peer, page, limit, false).fetch_all(&self.pool).await?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn set_aside(&self, letter: &DeadLetter) -> Result<()> {
        sqlx::query(
            "INSERT INTO dead_letters (topic, partition_id, record_offset, record_key, record_value, error, dead_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(storable_text(&letter.topic))
        .bind(i64::from(letter.partition))
        .bind(i64::try_from(letter.offset).unwrap_or(i64::MAX))
        .bind(&letter.key)
        .bind(&letter.value)
        .bind(storable_text(&letter.error))
        .bind(letter.dead_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dead_letters(&self, topic: &str, limit: u32) -> Result<Vec<DeadLetter>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE topic = ?
             ORDER BY partition_id, record_offset LIMIT ?"
        ));
        let rows = sqlx::query(sql).bind(topic).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn stream_info(&self, stream: StreamId) -> Result<Option<StreamInfo>> {
        let row = sqlx::query("SELECT epoch, last_seq FROM streams WHERE stream = ?")
            .bind(stream.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(StreamInfo { epoch: row.try_get(0)?, last_seq: row.try_get::<i64, _>(1)? as u64 })).transpose()
    }
}

/// One statement parameter holding `rows` as a JSON array, for `json_each`.
fn json<T: serde::Serialize>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| Error::Corrupt(format!("encoding a batch: {e}")))
}
