//! Reading rows into domain types, shared by the SQLite and PostgreSQL stores:
//! both select the same columns (`kind` cast to BIGINT so both decode `i64`), so
//! one generic function per type serves every database.

use sqlx::{ColumnIndex, Decode, Row, Type};

use std::collections::HashMap;

use crate::{
    DeadLetter, Error, Inboxes, Message, MessageKind, Page, Position, Result, StoredMessage, StreamId, StreamInfo, User,
};

/// The columns [`stored_from_row`] reads, for `history h JOIN streams s`.
pub(crate) const MESSAGE_COLUMNS: &str = "h.stream, h.seq, s.epoch, h.msg_id, CAST(h.kind AS BIGINT) AS kind,
    h.room_id, h.from_user_id, h.from_user_name, h.to_user_id, h.to_user_name, h.body, h.admitted_ms,
    h.client_msg_id";

impl Page {
    /// The bound (clamped to SQL's BIGINT), its comparison and the order.
    pub(crate) fn sql(self) -> (i64, &'static str, &'static str) {
        let clamp = |seq: u64| seq.min(i64::MAX as u64) as i64;
        match self {
            Self::After(seq) => (clamp(seq), ">", "ASC"),
            Self::Before(seq) => (clamp(seq), "<", "DESC"),
        }
    }
}

/// Which database a query is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Numbered placeholders (`$1`).
    Postgres,
    /// `?` placeholders; index hints.
    Sqlite,
}

/// A page of history (see `HistoryStore::read`) as one query for either
/// database, bound in the order stream, seq, peer (when given), limit.
pub(crate) fn page_query<'q, DB>(
    stream: StreamId,
    peer: Option<u64>,
    page: Page,
    limit: u32,
    dialect: Dialect,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + Type<DB>,
    i64: sqlx::Encode<'q, DB> + Type<DB>,
{
    let (seq, condition, order) = page.sql();
    let mut bound = 0;
    let mut next = || {
        bound += 1;
        if dialect == Dialect::Postgres { format!("${bound}") } else { "?".to_owned() }
    };
    let (stream_at, seq_at) = (next(), next());
    // `<> 0` as the peer index's own condition, so both databases see that
    // the index covers the query (no user has id 0).
    let peer_filter =
        peer.map(|_| format!("AND h.peer_user_id = {} AND h.peer_user_id <> 0", next())).unwrap_or_default();
    let limit_at = next();
    // SQLite's planner, without statistics, prefers the table's own (stream,
    // seq) order to a narrower index it would have to look rows up from, and
    // would scan the whole inbox for one conversation; PostgreSQL chooses the
    // peer index by itself. `INDEXED BY` also makes the read an error rather
    // than a scan should the index ever stop covering it.
    let hint = if peer.is_some() && dialect == Dialect::Sqlite { "INDEXED BY history_by_peer" } else { "" };
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM history h {hint} JOIN streams s ON s.stream = h.stream
         WHERE h.stream = {stream_at} AND h.seq {condition} {seq_at} {peer_filter}
         ORDER BY h.seq {order} LIMIT {limit_at}"
    ));
    let mut query = sqlx::query(sql).bind(stream.to_string()).bind(seq);
    if let Some(peer) = peer {
        query = query.bind(peer.min(i64::MAX as u64) as i64);
    }
    query.bind(i64::from(limit))
}

/// A row of either database, read by column name: the `sqlx` bounds that say
/// "this database decodes these types" are written once, here, instead of on
/// every function that reads a row.
pub(crate) trait Columns {
    fn int(&self, column: &'static str) -> Result<i64>;
    fn text(&self, column: &'static str) -> Result<String>;
    fn bytes(&self, column: &'static str) -> Result<Vec<u8>>;

    /// A column holding a number Courier wrote from a `u64` (ids, seqs, offsets).
    fn unsigned(&self, column: &'static str) -> Result<u64> {
        Ok(self.int(column)? as u64)
    }
}

impl<R> Columns for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &'static str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: &'static str) -> Result<String> {
        Ok(self.try_get(column)?)
    }

    fn bytes(&self, column: &'static str) -> Result<Vec<u8>> {
        Ok(self.try_get(column)?)
    }
}

/// Where each stream stands, from the rows an append's upsert of its streams
/// returned (`stream`, `last_seq`, `epoch`).
pub(crate) fn heads_from_rows(rows: &[impl Columns]) -> Result<HashMap<String, StreamInfo>> {
    let mut heads = HashMap::with_capacity(rows.len());
    for row in rows {
        heads
            .insert(row.text("stream")?, StreamInfo { last_seq: row.unsigned("last_seq")?, epoch: row.text("epoch")? });
    }
    Ok(heads)
}

/// The seqs messages already hold, by (stream, message id), from rows of
/// `stream`, `msg_id`, `seq` (a redelivered record keeps its positions).
pub(crate) fn positions_from_rows(rows: &[impl Columns]) -> Result<HashMap<(String, u64), u64>> {
    let mut existing = HashMap::with_capacity(rows.len());
    for row in rows {
        existing.insert((row.text("stream")?, row.unsigned("msg_id")?), row.unsigned("seq")?);
    }
    Ok(existing)
}

pub(crate) fn user_from_row(row: &impl Columns) -> Result<User> {
    Ok(User { id: row.unsigned("id")?, name: row.text("name")?, password_hash: row.text("password_hash")? })
}

pub(crate) fn stored_from_row(row: &impl Columns) -> Result<StoredMessage> {
    let kind = row.int("kind")?;
    let stream: StreamId = row.text("stream")?.parse().map_err(|e| Error::Corrupt(format!("{e}")))?;
    let (from_user_id, to_user_id) = (row.unsigned("from_user_id")?, row.unsigned("to_user_id")?);
    Ok(StoredMessage {
        position: Position { stream, seq: row.unsigned("seq")?, epoch: row.text("epoch")? },
        message: Message {
            msg_id: row.unsigned("msg_id")?,
            kind: MessageKind::from_code(kind).ok_or_else(|| Error::Corrupt(format!("message kind {kind}")))?,
            room_id: row.unsigned("room_id")?,
            from_user_id,
            from_user_name: row.text("from_user_name")?,
            to_user_id,
            to_user_name: row.text("to_user_name")?,
            body: row.text("body")?,
            // History keeps milliseconds.
            admitted_us: row.int("admitted_ms")?.saturating_mul(1000),
            client_msg_id: row.text("client_msg_id")?,
            // Read from the sender's inbox, a message is the sender's copy.
            inboxes: if stream == StreamId::Inbox(from_user_id) && from_user_id != to_user_id {
                Inboxes::Sender
            } else {
                Inboxes::Recipient
            },
        },
    })
}

/// The columns [`dead_letter_from_row`] reads, in `dead_letters` (the
/// partition cast to BIGINT so both databases decode `i64`).
pub(crate) const DEAD_LETTER_COLUMNS: &str =
    "topic, CAST(partition_id AS BIGINT) AS partition_id, record_offset, record_key, record_value, error, dead_at_ms";

pub(crate) fn dead_letter_from_row(row: &impl Columns) -> Result<DeadLetter> {
    Ok(DeadLetter {
        topic: row.text("topic")?,
        partition: u32::try_from(row.int("partition_id")?)
            .map_err(|_| Error::Corrupt("dead letter partition out of range".into()))?,
        offset: row.unsigned("record_offset")?,
        key: row.bytes("record_key")?,
        value: row.bytes("record_value")?,
        error: row.text("error")?,
        dead_at_ms: row.int("dead_at_ms")?,
    })
}

/// `text` as a database text column accepts it: PostgreSQL refuses NUL, so
/// the reason a record was set aside (which may quote the record) loses them.
pub(crate) fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
