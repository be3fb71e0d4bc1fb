//! The production store: users and history in PostgreSQL, schema from
//! `migrations/postgres`.
//!
//! An append is two set-based statements per batch (`UNNEST` of one array per
//! column; see [`crate::append`]) in a transaction. It takes the row lock of
//! every stream head it moves, in sorted order, before reading them, so
//! concurrent writers to one stream queue up and seqs stay gap-free, and
//! writers whose streams cross cannot deadlock. Nothing else is shared between
//! streams: the two copies of a private message, appended by two lanes, are
//! two rows of `history` and never wait for each other.
//!
//! A batch is planned as if none of its messages were stored (the common
//! case, and no look-up); the rows are inserted with `ON CONFLICT DO NOTHING`
//! on (message id, stream), and if any was already there (a redelivered
//! record), the transaction is rolled back and the batch appended again with
//! the positions it holds, read under the same head locks.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::rows::{
    DEAD_LETTER_COLUMNS, Dialect, dead_letter_from_row, heads_from_rows, page_query, positions_from_rows,
    storable_text, stored_from_row, user_from_row,
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

/// Whether an append looks for positions its messages already have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redelivery {
    /// The first attempt: no look-up, and a row found stored undoes it.
    Unlikely,
    /// The second: the batch holds a message stored before; look them up.
    Found,
}

impl PgStore {
    /// One transaction of [`HistoryStore::append`]: four round trips (begin,
    /// heads, rows and heads moved, commit), or five with the look-up. `None`
    /// when the rows met a message stored before, and nothing was written.
    async fn append_tx(&self, batch: &[Message], redelivery: Redelivery) -> Result<Option<Vec<Vec<Position>>>> {
        let mut tx = self.pool.begin().await?;

        // 1. Every head the batch moves, locked in sorted order (the no-op
        //    update takes the row lock); missing streams are created at seq 0.
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

        // 2. Positions of messages stored before (a redelivered record). Read
        //    in a statement after the heads are locked, so it sees whatever
        //    the last holder of those locks committed.
        let mut existing = HashMap::new();
        if redelivery == Redelivery::Found {
            let (ids, streams): (Vec<i64>, Vec<String>) =
                batch.iter().flat_map(|m| m.streams().into_iter().map(|s| (clamp_id(m.msg_id), s.to_string()))).unzip();
            let rows = sqlx::query(
                "SELECT h.stream, h.msg_id, h.seq FROM history h
                 JOIN UNNEST($1::bigint[], $2::text[]) AS t(msg_id, stream) ON h.msg_id = t.msg_id AND h.stream = t.stream",
            )
            .bind(&ids)
            .bind(&streams)
            .fetch_all(&mut *tx)
            .await?;
            existing = positions_from_rows(&rows)?;
        }

        // 3. New rows and heads, one statement.
        let plan = append::plan(batch, heads, existing)?;
        if !plan.entries.is_empty() {
            let column = |f: fn(&Message) -> i64| plan.entries.iter().map(|e| f(&batch[e.message])).collect::<Vec<_>>();
            let text = |f: fn(&Message) -> &str| plan.entries.iter().map(|e| f(&batch[e.message])).collect::<Vec<_>>();
            let written: i64 = sqlx::query_scalar(
                "WITH written AS (
                    INSERT INTO history (stream, seq, msg_id, peer_user_id, kind, room_id, from_user_id,
                        from_user_name, to_user_id, to_user_name, body, admitted_ms, client_msg_id)
                    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::smallint[],
                        $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::text[], $11::text[],
                        $12::bigint[], $13::text[])
                    ON CONFLICT (msg_id, stream) DO NOTHING RETURNING 1
                 ), moved AS (
                    UPDATE streams SET last_seq = t.last_seq
                    FROM UNNEST($14::text[], $15::bigint[]) AS t(stream, last_seq) WHERE streams.stream = t.stream
                 )
                 SELECT count(*) FROM written",
            )
            .bind(plan.entries.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>())
            .bind(plan.entries.iter().map(|e| clamp_id(e.seq)).collect::<Vec<_>>())
            .bind(column(|m| clamp_id(m.msg_id)))
            .bind(plan.entries.iter().map(|e| clamp_id(e.peer)).collect::<Vec<_>>())
            .bind(plan.entries.iter().map(|e| batch[e.message].kind as i16).collect::<Vec<_>>())
            .bind(column(|m| clamp_id(m.room_id)))
            .bind(column(|m| clamp_id(m.from_user_id)))
            .bind(text(|m| m.from_user_name.as_str()))
            .bind(column(|m| clamp_id(m.to_user_id)))
            .bind(text(|m| m.to_user_name.as_str()))
            .bind(text(|m| m.body.as_str()))
            .bind(column(Message::admitted_ms))
            .bind(text(|m| m.client_msg_id.as_str()))
            .bind(plan.heads.iter().map(|(stream, _)| stream.as_str()).collect::<Vec<_>>())
            .bind(plan.heads.iter().map(|(_, last)| clamp_id(*last)).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await?;
            if usize::try_from(written).ok() != Some(plan.entries.len()) {
                // A message of the batch was stored before and the plan gave it
                // a new seq: undo, and plan again with what is stored.
                tx.rollback().await?;
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(plan.positions))
    }
}

#[async_trait]
impl HistoryStore for PgStore {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(positions) = self.append_tx(batch, Redelivery::Unlikely).await? {
            return Ok(positions);
        }
        self.append_tx(batch, Redelivery::Found)
            .await?
            .ok_or_else(|| Error::Corrupt("a message the look-up did not find was stored meanwhile".into()))
    }

    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        let rows = page_query(stream, peer, page, limit, Dialect::Postgres).fetch_all(&self.pool).await?;
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
