//! Durable state: user accounts and message history.
//!
//! History is organised in **streams**: a room (`room:<id>`) or a user's private
//! inbox (`user:<id>`). Appending a message to a stream gives it the next gap-free
//! **seq** of that stream, in the same transaction as the insert, and appending the
//! same message id again returns the seq it already has; this is what lets the task
//! tier commit queue offsets only after persisting, yet never duplicate a message
//! when a record is redelivered. Each stream also has an **epoch**, fixed when the
//! stream is created, so a client's `(epoch, seq)` position stays meaningful.
//!
//! Both traits have an embedded SQLite implementation ([`sqlite`]) and a PostgreSQL
//! one ([`postgres`]); the behavioural
//! tests in [`conformance`] are written once and run against every backend.

use async_trait::async_trait;

mod append;
pub mod conformance;
pub mod postgres;
mod rows;
pub mod sqlite;

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user name already taken")]
    NameTaken,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] courier_sqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether the failure is the store being out of reach or busy rather than
    /// something about the data: the same write may then succeed later, and
    /// nothing can be written meanwhile, not even a dead letter. Transient are
    /// lost connections and pools, and the database codes that say "not now":
    /// PostgreSQL's connection exceptions (08), rollbacks such as deadlocks
    /// (40), insufficient resources (53), operator intervention such as a
    /// restart (57) and system errors (58); SQLite's BUSY and LOCKED.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_),
            ) => true,
            Self::Database(sqlx::Error::Database(e)) => {
                if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    ["08", "40", "53", "57", "58"].iter().any(|class| pg.code().starts_with(class))
                } else {
                    e.code().and_then(|code| code.parse::<u32>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6))
                }
            }
            Self::Sqlite(courier_sqlite::Error::Sqlite(e)) => courier_sqlite::is_busy(e),
            Self::Sqlite(courier_sqlite::Error::Stopped(_) | courier_sqlite::Error::Spawn(_)) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub name: String,
    /// PHC string (argon2id).
    pub password_hash: String,
}

/// Accounts.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates a user; [`Error::NameTaken`] if the name exists.
    async fn create_user(&self, name: &str, password_hash: &str) -> Result<u64>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: u64) -> Result<Option<User>>;
}

pub use courier_model::{Inboxes, Message, MessageKind, Position, StreamId};

/// Which side of a seq a history page reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Seqs greater than this, oldest first.
    After(u64),
    /// Seqs less than this, newest first.
    Before(u64),
}

/// A queue record task could not turn into history, set aside with the reason
/// so its partition moves on (see `courier-task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    /// The record's bytes as they were in the queue.
    pub value: Vec<u8>,
    pub error: String,
    pub dead_at_ms: i64,
}

/// A message read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub position: Position,
    pub message: Message,
}

/// A stream's epoch and its last seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub epoch: String,
    pub last_seq: u64,
}

/// Message history by stream.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends each message to each of its [`Message::streams`] in one transaction
    /// and returns, per message, its positions (in `streams()` order). A message id
    /// already stored keeps its positions.
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>>;

    /// Up to `limit` messages of `stream` on `page`'s side of a seq (see
    /// [`Page`] for the order); with a `peer`, only the entries of the inbox
    /// `stream` exchanged with that user: one index range, whatever else the
    /// inbox holds.
    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>>;

    /// Up to `limit` messages of `stream` with seq greater than `after`, oldest first.
    async fn read_after(&self, stream: StreamId, after: u64, limit: u32) -> Result<Vec<StoredMessage>> {
        self.read(stream, None, Page::After(after), limit).await
    }

    /// Up to `limit` messages of `stream` with seq less than `before`, newest first.
    async fn read_before(&self, stream: StreamId, before: u64, limit: u32) -> Result<Vec<StoredMessage>> {
        self.read(stream, None, Page::Before(before), limit).await
    }

    /// The stream's epoch and last seq, if it has any message.
    async fn stream_info(&self, stream: StreamId) -> Result<Option<StreamInfo>>;

    /// Keeps a record that could not become history; setting the same record
    /// (topic, partition, offset) aside again changes nothing.
    async fn set_aside(&self, letter: &DeadLetter) -> Result<()>;

    /// Up to `limit` records set aside from `topic`, in (partition, offset) order.
    async fn dead_letters(&self, topic: &str, limit: u32) -> Result<Vec<DeadLetter>>;
}

/// The epoch of a stream whose first message is `first_msg_id`: 64 bits of
/// SHA-256 over both, in hex. Derived rather than drawn at random, so a
/// history rebuilt from the queue (`courier replay rebuild`) gives each
/// stream the epoch it had, and clients' positions stay valid; a stream
/// whose first message is gone from the queue is rebuilt from a later one
/// and so gets another epoch, which tells clients to start over.
pub fn epoch_for(stream: StreamId, first_msg_id: u64) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"courier-epoch\0")
        .chain_update(stream.to_string())
        .chain_update(first_msg_id.to_be_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
