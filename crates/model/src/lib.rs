//! Courier's message vocabulary, in one place every tier shares.
//!
//! A message belongs to **streams** ([`StreamId`]): a room, or a user's private
//! inbox. The same names serve as the stream's key in the history store, the
//! `stream` field of the frames clients see (`room:<id>`, `user:<id>`) and the
//! queue key a message is produced under, so they are formatted and parsed
//! here alone. [`MessageKind`] says which of the two a message is, and
//! [`topics`] names the queue topics each kind travels on.

use std::fmt;
use std::str::FromStr;

/// A stream: a room, or a user's private inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    Room(u64),
    Inbox(u64),
}

impl StreamId {
    /// The room, if this is a room's stream.
    pub fn room(self) -> Option<u64> {
        match self {
            Self::Room(room) => Some(room),
            Self::Inbox(_) => None,
        }
    }

    /// The user whose inbox this is, if it is one.
    pub fn inbox_of(self) -> Option<u64> {
        match self {
            Self::Inbox(user) => Some(user),
            Self::Room(_) => None,
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Room(room) => write!(f, "room:{room}"),
            Self::Inbox(user) => write!(f, "user:{user}"),
        }
    }
}

/// A stream name that is neither `room:<id>` nor `user:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream name (room:<id> or user:<id>)")]
pub struct BadStreamName(pub String);

impl FromStr for StreamId {
    type Err = BadStreamName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let bad = || BadStreamName(name.to_owned());
        let (kind, id) = name.split_once(':').ok_or_else(bad)?;
        // Digits only: `u64::from_str` would also take a leading `+`.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let id = id.parse().map_err(|_| bad())?;
        match kind {
            "room" => Ok(Self::Room(id)),
            "user" => Ok(Self::Inbox(id)),
            _ => Err(bad()),
        }
    }
}

/// Whether a message went to a room or to one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Room = 1,
    Private = 2,
}

impl MessageKind {
    /// The kind stored as `code` (the enum's value).
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Room),
            2 => Some(Self::Private),
            _ => None,
        }
    }

    /// The kind's name in metrics and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Private => "private",
        }
    }
}

/// The queue topics' default names: room traffic keyed by room, private
/// traffic keyed by recipient (see [`StreamId`]: the key is the stream the
/// message is written to first).
pub mod topics {
    pub const ROOM: &str = "courier-room";
    pub const PRIVATE: &str = "courier-private";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip_and_nothing_else_parses() {
        for stream in [StreamId::Room(42), StreamId::Inbox(7), StreamId::Room(u64::MAX), StreamId::Inbox(0)] {
            assert_eq!(stream.to_string().parse::<StreamId>(), Ok(stream));
        }
        assert_eq!(StreamId::Room(3).to_string(), "room:3");
        assert_eq!(StreamId::Inbox(9).to_string(), "user:9");
        for bad in
            ["", "room", "room:", "room:x", "room:+1", "room:-1", "user:1:2", "inbox:1", "room:99999999999999999999"]
        {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
        assert_eq!(StreamId::Room(3).room(), Some(3));
        assert_eq!(StreamId::Inbox(3).room(), None);
        assert_eq!(StreamId::Inbox(3).inbox_of(), Some(3));
    }

    #[test]
    fn kinds_keep_their_stored_codes() {
        assert_eq!(MessageKind::from_code(MessageKind::Room as i64), Some(MessageKind::Room));
        assert_eq!(MessageKind::from_code(MessageKind::Private as i64), Some(MessageKind::Private));
        assert_eq!(MessageKind::from_code(0), None);
        assert_eq!(MessageKind::Private.as_str(), "private");
    }
}
