//! The production store: users and history in PostgreSQL, schema from
//! `migrations/postgres`.
//!
//! An append is a fixed handful of set-based statements per batch (`UNNEST` of
//! one array per column; see [`crate::append`]). It takes the row lock of every
//! stream head it moves, in sorted order, before reading them, so concurrent
//! writers to one stream queue up and seqs stay gap-free, and writers whose
//! streams cross cannot deadlock. Two writers of the same message id (a record
//! redelivered during a rebalance) meet on the message's primary key: the second
//! waits for the first to commit, then finds its positions.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::rows::{
    DEAD_LETTER_COLUMNS, dead_letter_from_row, heads_from_rows, page_query, positions_from_rows, storable_text,
    stored_from_row, user_from_row,
};
use crate::{
    DeadLetter, Error, HistoryStore, Message, Page, Position, Result, StoredMessage, StreamId, StreamInfo, User,
    UserStore, append,
};

/// An id or offset as PostgreSQL's BIGINT (ids above `i64::MAX` never exist).
fn clamp_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

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
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;

        // 1. The messages, in id order so two writers of one partition (a
        //    rebalance overlap) take the id locks alike.
        let mut sorted: Vec<&Message> = batch.iter().collect();
        sorted.sort_by_key(|m| m.msg_id);
        let inserted: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO messages (msg_id, kind, room_id, from_user_id, from_user_name, to_user_id,
                to_user_name, body, admitted_ms, client_msg_id)
             SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::bigint[], $4::bigint[], $5::text[],
                $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::text[])
             ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id",
        )
        .bind(sorted.iter().map(|m| m.msg_id as i64).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.kind as i16).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.room_id as i64).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.from_user_id as i64).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.from_user_name.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.to_user_id as i64).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.to_user_name.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.admitted_ms()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;

        // 2. Every head the batch moves, locked in sorted order (the no-op update
        //    takes the row lock); missing streams are created at seq 0.
        let (streams, epochs): (Vec<String>, Vec<String>) = append::streams_to_lock(batch).into_iter().unzip();
        let rows = sqlx::query(
            "INSERT INTO streams (stream, epoch, last_seq)
             SELECT stream, epoch, 0 FROM UNNEST($1::text[], $2::text[]) AS t(stream, epoch) ORDER BY stream
             ON CONFLICT (stream) DO UPDATE SET last_seq = streams.last_seq
             RETURNING stream, last_seq, epoch",
        )
        .bind(&streams)
        .bind(&epochs)
        .fetch_all(&mut *tx)
        .await?;
        let heads = heads_from_rows(&rows)?;

        // 3. Positions of messages stored before (a redelivered record).
        let mut existing = HashMap::new();
        let known = append::known_ids(batch, &inserted);
        if !known.is_empty() {
            let rows = sqlx::query(
                "SELECT stream, msg_id, seq FROM stream_entries WHERE stream = ANY($1) AND msg_id = ANY($2)",
            )
            .bind(&streams)
            .bind(known.iter().map(|id| *id as i64).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            existing = positions_from_rows(&rows)?;
        }

        // 4. New entries and heads.
        let plan = append::plan(batch, heads, existing)?;
        if !plan.entries.is_empty() {
            sqlx::query(
                "INSERT INTO stream_entries (stream, seq, msg_id, peer_user_id)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])",
            )
            .bind(plan.entries.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>())
            .bind(plan.entries.iter().map(|e| e.seq as i64).collect::<Vec<_>>())
            .bind(plan.entries.iter().map(|e| e.msg_id as i64).collect::<Vec<_>>())
            .bind(plan.entries.iter().map(|e| e.peer as i64).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE streams SET last_seq = t.last_seq
                 FROM UNNEST($1::text[], $2::bigint[]) AS t(stream, last_seq) WHERE streams.stream = t.stream",
            )
            .bind(plan.heads.iter().map(|(stream, _)| stream.as_str()).collect::<Vec<_>>())
            .bind(plan.heads.iter().map(|(_, last)| *last as i64).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(plan.positions)
    }

    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = page_query(stream, peer, page, limit, true).fetch_all(&self.pool).await?;
        rows.iter().map(stored_from_row).collect()
    }

    async fn set_aside(&self, letter: &DeadLetter) -> Result<()> {
        sqlx::query(
            "INSERT INTO dead_letters (topic, partition_id, record_offset, record_key, record_value, error, dead_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(storable_text(&letter.topic))
        .bind(i32::try_from(letter.partition).unwrap_or(i32::MAX))
        .bind(clamp_id(letter.offset))
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
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE topic = $1
             ORDER BY partition_id, record_offset LIMIT $2"
        ));
        let rows = sqlx::query(sql).bind(topic).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn stream_info(&self, stream: StreamId) -> Result<Option<StreamInfo>> {
        let row = sqlx::query("SELECT epoch, last_seq FROM streams WHERE stream = $1")
            .bind(stream.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(StreamInfo { epoch: row.try_get(0)?, last_seq: row.try_get::<i64, _>(1)? as u64 })).transpose()
    }
}
