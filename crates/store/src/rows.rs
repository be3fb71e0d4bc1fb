//! Reading rows into domain types, shared by the SQLite and PostgreSQL stores:
//! both select the same columns (`kind` cast to BIGINT so both decode `i64`), so
//! one generic function per type serves every database.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{DeadLetter, Error, Message, MessageKind, Page, Position, Result, StoredMessage, User};

/// The columns [`stored_from_row`] reads, for `stream_entries e JOIN streams s JOIN messages m`.
pub(crate) const MESSAGE_COLUMNS: &str = "e.stream, e.seq, s.epoch, m.msg_id, CAST(m.kind AS BIGINT) AS kind,
    m.room_id, m.from_user_id, m.from_user_name, m.to_user_id, m.to_user_name, m.body, m.admitted_ms,
    m.client_msg_id";

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

pub(crate) fn user_from_row<'r, R>(row: &'r R) -> Result<User>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(User {
        id: row.try_get::<i64, _>("id")? as u64,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
    })
}

pub(crate) fn stored_from_row<'r, R>(row: &'r R) -> Result<StoredMessage>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: i64 = row.try_get("kind")?;
    let int = |column: &'static str| -> Result<u64> { Ok(row.try_get::<i64, _>(column)? as u64) };
    Ok(StoredMessage {
        position: Position {
            stream: row.try_get::<String, _>("stream")?.parse().map_err(|e| Error::Corrupt(format!("{e}")))?,
            seq: int("seq")?,
            epoch: row.try_get("epoch")?,
        },
        message: Message {
            msg_id: int("msg_id")?,
            kind: MessageKind::from_code(kind).ok_or_else(|| Error::Corrupt(format!("message kind {kind}")))?,
            room_id: int("room_id")?,
            from_user_id: int("from_user_id")?,
            from_user_name: row.try_get("from_user_name")?,
            to_user_id: int("to_user_id")?,
            to_user_name: row.try_get("to_user_name")?,
            body: row.try_get("body")?,
            admitted_ms: row.try_get("admitted_ms")?,
            client_msg_id: row.try_get("client_msg_id")?,
        },
    })
}

/// The columns [`dead_letter_from_row`] reads, in `dead_letters` (the
/// partition cast to BIGINT so both databases decode `i64`).
pub(crate) const DEAD_LETTER_COLUMNS: &str =
    "topic, CAST(partition_id AS BIGINT) AS partition_id, record_offset, record_key, record_value, error, dead_at_ms";

pub(crate) fn dead_letter_from_row<'r, R>(row: &'r R) -> Result<DeadLetter>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(DeadLetter {
        topic: row.try_get("topic")?,
        partition: u32::try_from(row.try_get::<i64, _>("partition_id")?)
            .map_err(|_| Error::Corrupt("dead letter partition out of range".into()))?,
        offset: row.try_get::<i64, _>("record_offset")? as u64,
        key: row.try_get("record_key")?,
        value: row.try_get("record_value")?,
        error: row.try_get("error")?,
        dead_at_ms: row.try_get("dead_at_ms")?,
    })
}

/// `text` as a database text column accepts it: PostgreSQL refuses NUL, so
/// the reason a record was set aside (which may quote the record) loses them.
pub(crate) fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
