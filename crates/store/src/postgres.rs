//! The production store: users and history in PostgreSQL, schema from
//! `migrations/postgres`.
//!
//! An append takes each stream's row lock through its `INSERT … ON CONFLICT DO
//! UPDATE` before writing the entry, so concurrent writers to one stream queue up
//! on that row and seqs stay gap-free. If two writers race on the same message id
//! (a record redelivered during a rebalance), the loser's transaction fails on the
//! `(stream, msg_id)` unique key and rolls back its seq; the caller retries and
//! then finds the existing position.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::rows::{MESSAGE_COLUMNS, stored_from_row, user_from_row};
use crate::{Appended, Error, HistoryStore, Message, Result, StoredMessage, StreamInfo, User, UserStore, new_epoch};

/// Users and history in PostgreSQL; cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies pending
    /// migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool =
            PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations from `migrations/postgres`.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../../migrations/postgres").run(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64> {
        let result = sqlx::query_scalar::<_, i64>(
            "INSERT INTO users (name, password_hash, created_ms) VALUES ($1, $2, $3) RETURNING id",
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
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>> {
        let Ok(id) = i64::try_from(id) else { return Ok(None) };
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }
}

#[async_trait]
impl HistoryStore for PgStore {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Appended>>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for message in batch {
            sqlx::query(
                "INSERT INTO messages (msg_id, kind, room_id, from_user_id, from_user_name, to_user_id,
                    to_user_name, body, admitted_ms, client_msg_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (msg_id) DO NOTHING",
            )
            .bind(message.msg_id as i64)
            .bind(message.kind as i16)
            .bind(message.room_id as i64)
            .bind(message.from_user_id as i64)
            .bind(&message.from_user_name)
            .bind(message.to_user_id as i64)
            .bind(&message.to_user_name)
            .bind(&message.body)
            .bind(message.admitted_ms)
            .bind(&message.client_msg_id)
            .execute(&mut *tx)
            .await?;
            let mut positions = Vec::new();
            for stream in message.streams() {
                let existing = sqlx::query(
                    "SELECT e.seq, s.epoch FROM stream_entries e JOIN streams s ON s.stream = e.stream
                     WHERE e.stream = $1 AND e.msg_id = $2",
                )
                .bind(&stream)
                .bind(message.msg_id as i64)
                .fetch_optional(&mut *tx)
                .await?;
                let (seq, epoch) = match existing {
                    Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
                    None => {
                        let row = sqlx::query(
                            "INSERT INTO streams (stream, epoch, last_seq) VALUES ($1, $2, 1)
                             ON CONFLICT (stream) DO UPDATE SET last_seq = streams.last_seq + 1
                             RETURNING last_seq, epoch",
                        )
                        .bind(&stream)
                        .bind(new_epoch())
                        .fetch_one(&mut *tx)
                        .await?;
                        let seq: i64 = row.try_get(0)?;
                        sqlx::query("INSERT INTO stream_entries (stream, seq, msg_id) VALUES ($1, $2, $3)")
                            .bind(&stream)
                            .bind(seq)
                            .bind(message.msg_id as i64)
                            .execute(&mut *tx)
                            .await?;
                        (seq, row.try_get::<String, _>(1)?)
                    }
                };
                positions.push(Appended { stream, seq: seq as u64, epoch });
            }
            out.push(positions);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn read_after(&self, stream: &str, after: u64, limit: u32) -> Result<Vec<StoredMessage>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM stream_entries e
             JOIN streams s ON s.stream = e.stream JOIN messages m ON m.msg_id = e.msg_id
             WHERE e.stream = $1 AND e.seq > $2 ORDER BY e.seq ASC LIMIT $3"
        ));
        let rows = sqlx::query(sql)
            .bind(stream)
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn read_before(&self, stream: &str, before: u64, limit: u32) -> Result<Vec<StoredMessage>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM stream_entries e
             JOIN streams s ON s.stream = e.stream JOIN messages m ON m.msg_id = e.msg_id
             WHERE e.stream = $1 AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
        ));
        let rows = sqlx::query(sql)
            .bind(stream)
            .bind(before.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>> {
        let row = sqlx::query("SELECT epoch, last_seq FROM streams WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(StreamInfo { epoch: row.try_get(0)?, last_seq: row.try_get::<i64, _>(1)? as u64 })).transpose()
    }
}
