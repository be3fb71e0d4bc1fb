//! The embedded store: users and history in one SQLite file, schema from
//! `migrations/sqlite`.
//!
//! **Appends** go to one writer thread that owns a connection of its own (see
//! `courier-sqlite`): a batch is a handful of prepared statements per message
//! run synchronously there, so a transaction costs one hand-off between
//! threads, not one per statement. An entry is one row of `history`,
//! appended at the end of the table (see `migrations/sqlite/0003_*`), so an
//! append writes, per stream it moves, a leaf of the (stream, seq) index (and
//! of the conversation index for an inbox), plus the right edge of the
//! message-id index. Transactions are `BEGIN IMMEDIATE`: the write lock is
//! taken before anything is read, so two writers (another process, say) never
//! both read the same `last_seq`. Reads, accounts and
//! migrations go through a small sqlx pool; SQLite's write-ahead log lets
//! them run beside the writer.
//!
//! **Group commit.** A database has one writer, and task runs a lane per
//! partition, each appending small batches. Appends are grouped on the writer
//! thread (`courier_sqlite::GroupCommit`): every append pending when a flush
//! runs goes into a single transaction (their streams are disjoint: one writer
//! per stream), and each is answered with its own positions. The commit and its sync to disk are paid once
//! per group rather than once per lane. If the group's transaction fails, each
//! append is tried alone, so a batch the store refuses fails only its own
//! caller (whose persister then finds the poison record) and never an
//! innocent lane's.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_sqlite::rusqlite::{self, Connection, TransactionBehavior, params};
use courier_sqlite::{GroupCommit, Options, SqliteThread};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::oneshot;

use crate::rows::{
    DEAD_LETTER_COLUMNS, Dialect, dead_letter_from_row, page_query, storable_text, stored_from_row, user_from_row,
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
    /// rather than on SQLite's lock, whose waiters poll it with sleeps of up
    /// to 100 ms (the busy handler).
    appends: Arc<GroupCommit<AppendRequest>>,
}

/// One caller's batch, and where its positions go.
#[derive(Debug)]
struct AppendRequest {
    batch: Vec<Message>,
    reply: oneshot::Sender<Result<Vec<Vec<Position>>>>,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(courier_sqlite::Error::Sqlite(e))
    }
}

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
        migrate(&pool).await?;
        // The writer opens the migrated file, with every commit synced as above.
        let thread = SqliteThread::open(path, Options::writer("store-writer"))?;
        Ok(Self { pool, appends: GroupCommit::new(thread, flush) })
    }

    /// Applies pending migrations from `migrations/sqlite`.
    pub async fn migrate(&self) -> Result<()> {
        migrate(&self.pool).await
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::migrate!("../../migrations/sqlite").run(pool).await?;
    Ok(())
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

/// Writes a group of appends and answers each caller. Runs on the writer
/// thread.
fn flush(connection: &mut Connection, mut group: Vec<AppendRequest>) {
    let results = append_group(connection, &mut group);
    for (request, result) in group.into_iter().zip(results) {
        // A caller that went away (shutdown) no longer needs its answer.
        let _ = request.reply.send(result);
    }
}

/// Appends every request's batch in one transaction, or, if that fails, each
/// in its own; returns each request's outcome, in order. Takes the batches.
fn append_group(connection: &mut Connection, group: &mut [AppendRequest]) -> Vec<Result<Vec<Vec<Position>>>> {
    let lengths: Vec<usize> = group.iter().map(|r| r.batch.len()).collect();
    let mut all: Vec<Message> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.batch)).collect();
    if group.len() > 1 {
        match append_tx(connection, &all) {
            Ok(mut positions) => {
                return lengths.iter().map(|n| Ok(positions.drain(..*n).collect())).collect();
            }
            Err(e) => tracing::debug!(error = %e, appends = group.len(), "a group append failed; appending one by one"),
        }
    }
    let mut results = Vec::with_capacity(group.len());
    for n in lengths {
        let batch: Vec<Message> = all.drain(..n).collect();
        results.push(append_tx(connection, &batch));
    }
    results
}

/// Appends `batch` in one `BEGIN IMMEDIATE` transaction (rolled back if any
/// statement fails).
fn append_tx(connection: &mut Connection, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let plan = {
        // 1. The heads of every stream the batch moves (BEGIN IMMEDIATE
        //    already holds the database's write lock); missing streams start
        //    at seq 0.
        let mut head = tx.prepare_cached(
            "INSERT INTO streams (stream, epoch, last_seq) VALUES (?1, ?2, 0)
             ON CONFLICT (stream) DO UPDATE SET last_seq = last_seq RETURNING last_seq, epoch",
        )?;
        let mut heads = HashMap::new();
        for (stream, epoch) in append::streams_to_lock(batch) {
            let (last_seq, epoch): (i64, String) =
                head.query_row(params![stream, epoch], |row| Ok((row.get(0)?, row.get(1)?)))?;
            heads.insert(stream, StreamInfo { epoch, last_seq: last_seq as u64 });
        }

        // 2. Positions of messages stored before (a redelivered record): a
        //    look-up at the right edge of the message id index, in cache.
        let mut existing = HashMap::new();
        let mut seq_of = tx.prepare_cached("SELECT seq FROM history WHERE msg_id = ?1 AND stream = ?2")?;
        for m in batch {
            for stream in m.streams() {
                let stream = stream.to_string();
                let seq: Option<i64> = rusqlite::OptionalExtension::optional(
                    seq_of.query_row(params![m.msg_id as i64, stream], |row| row.get(0)),
                )?;
                if let Some(seq) = seq {
                    existing.insert((stream, m.msg_id), seq as u64);
                }
            }
        }

        // 3. New entries and heads.
        let plan = append::plan(batch, heads, existing)?;
        let mut insert_entry = tx.prepare_cached(
            "INSERT INTO history (stream, seq, msg_id, peer_user_id, kind, room_id, from_user_id, from_user_name,
                to_user_id, to_user_name, body, admitted_ms, client_msg_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for e in &plan.entries {
            let m = &batch[e.message];
            insert_entry.execute(params![
                e.stream,
                e.seq as i64,
                m.msg_id as i64,
                e.peer as i64,
                m.kind as i64,
                m.room_id as i64,
                m.from_user_id as i64,
                m.from_user_name,
                m.to_user_id as i64,
                m.to_user_name,
                m.body,
                m.admitted_ms(),
                m.client_msg_id,
            ])?;
        }
        let mut move_head = tx.prepare_cached("UPDATE streams SET last_seq = ?2 WHERE stream = ?1")?;
        for (stream, last) in &plan.heads {
            move_head.execute(params![stream, *last as i64])?;
        }
        plan
    };
    tx.commit()?;
    Ok(plan.positions)
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.appends.push(AppendRequest { batch: batch.to_vec(), reply })?;
        answer.await.map_err(|_| Error::Sqlite(courier_sqlite::Error::Stopped("store-writer".into())))?
    }

    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = page_query(stream, peer, page, limit, Dialect::Sqlite).fetch_all(&self.pool).await?;
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
