//! Courier's message vocabulary, in one place every tier shares.
//!
//! A [`Message`] belongs to **streams** ([`StreamId`]): a room, or a user's
//! private inbox. The same names serve as the stream's key in the history
//! store, the `stream` field of the frames clients see (`room:<id>`,
//! `user:<id>`) and the queue key a message is produced under, so they are
//! formatted and parsed here alone. [`MessageKind`] says which of the two a
//! message is, [`Position`] where it stands in a stream once stored, and
//! [`topics`] names the queue topics each kind travels on.
//!
//! A message crosses the queue as a versioned protobuf record
//! (`courier.record.v1.MessageRecord`): [`Message::into_record`] writes it and
//! [`Message::from_record`] reads it back, refusing a record that is not a
//! whole message or that a newer writer made ([`RECORD_VERSION`]) rather than
//! guess at it.

use std::fmt;
use std::str::FromStr;

use courier_proto::record::{MessageKind as RecordKind, MessageRecord};
use prost::Message as _;

/// The record version this build writes and the newest it reads.
pub const RECORD_VERSION: u32 = courier_proto::record::RECORD_VERSION;

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

/// Where a message stands in one of its streams: the stream's epoch, fixed
/// when the stream was created, and the message's gap-free seq in it. A
/// client resumes from `(epoch, seq)`; a seq from another epoch means nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub stream: StreamId,
    pub epoch: String,
    pub seq: u64,
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

/// Which inbox the record of a private message writes. Every stream has one
/// writer, the partition of its key: a private message travels as two
/// records, one keyed by its recipient for the recipient's inbox and the
/// sender's copy keyed by the sender for the sender's inbox, so each inbox's
/// entries are all written, and pushed, by one partition in its order.
/// Ignored for room messages (`Recipient`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inboxes {
    /// The recipient's inbox (for a note to self, the only record).
    Recipient,
    /// The sender's own copy, in the sender's inbox.
    Sender,
    /// Both, from the recipient's partition: a version 1 record, from before
    /// sender copies had records of their own.
    Both,
}

/// A message as admitted, before it has positions in streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg_id: u64,
    pub kind: MessageKind,
    /// The room of a room message; for a private message, the room the
    /// sender was in (gochat's frames carry it), or 0.
    pub room_id: u64,
    pub from_user_id: u64,
    pub from_user_name: String,
    pub to_user_id: u64,
    pub to_user_name: String,
    pub body: String,
    /// Admission time, microseconds since the Unix epoch (history keeps
    /// milliseconds: see [`Message::admitted_ms`]).
    pub admitted_us: i64,
    pub client_msg_id: String,
    /// Which inbox this record of a private message writes.
    pub inboxes: Inboxes,
}

/// Why queue bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a message record: {0}")]
    Undecodable(String),
    #[error("record version {found} is newer than this build reads ({RECORD_VERSION})")]
    TooNew { found: u32 },
    #[error("record without a version")]
    NoVersion,
    #[error("not a whole message: {0}")]
    Incomplete(String),
}

impl Message {
    /// The streams this record writes: the room; for a private message the
    /// recipient's inbox, or (the sender's copy) the sender's; both for a
    /// version 1 record.
    pub fn streams(&self) -> Vec<StreamId> {
        let (to, from) = (StreamId::Inbox(self.to_user_id), StreamId::Inbox(self.from_user_id));
        match (self.kind, self.inboxes) {
            (MessageKind::Room, _) => vec![StreamId::Room(self.room_id)],
            (MessageKind::Private, Inboxes::Both) if to != from => vec![to, from],
            (MessageKind::Private, Inboxes::Sender) => vec![from],
            (MessageKind::Private, _) => vec![to],
        }
    }

    /// The queue key: the stream the record writes first, so each stream's
    /// records stay in one partition, in order.
    pub fn key(&self) -> StreamId {
        match (self.kind, self.inboxes) {
            (MessageKind::Room, _) => StreamId::Room(self.room_id),
            (MessageKind::Private, Inboxes::Sender) => StreamId::Inbox(self.from_user_id),
            (MessageKind::Private, _) => StreamId::Inbox(self.to_user_id),
        }
    }

    /// The records admission produces for this message: one for a room or a
    /// note to self, and for a private message the recipient's and the
    /// sender's copy.
    pub fn records(self) -> Vec<Message> {
        if self.kind == MessageKind::Room || self.to_user_id == self.from_user_id {
            return vec![Message { inboxes: Inboxes::Recipient, ..self }];
        }
        let copy = Message { inboxes: Inboxes::Sender, ..self.clone() };
        vec![Message { inboxes: Inboxes::Recipient, ..self }, copy]
    }

    /// Admission time in milliseconds since the Unix epoch, as history keeps it.
    pub fn admitted_ms(&self) -> i64 {
        self.admitted_us.div_euclid(1000)
    }

    /// The queue record of this message, at [`RECORD_VERSION`] (a version 1
    /// message, which writes both inboxes, keeps its version); it takes the
    /// message, so admission encodes without copying the body.
    pub fn into_record(self) -> Vec<u8> {
        let admitted_ms = self.admitted_ms();
        MessageRecord {
            version: if self.inboxes == Inboxes::Both { 1 } else { RECORD_VERSION },
            msg_id: self.msg_id,
            kind: match self.kind {
                MessageKind::Room => RecordKind::Room,
                MessageKind::Private => RecordKind::Private,
            } as i32,
            room_id: self.room_id,
            to_user_id: self.to_user_id,
            to_user_name: self.to_user_name,
            from_user_id: self.from_user_id,
            from_user_name: self.from_user_name,
            body: self.body,
            admitted_ms,
            admitted_us: self.admitted_us,
            client_msg_id: self.client_msg_id,
            sender_copy: self.inboxes == Inboxes::Sender,
        }
        .encode_to_vec()
    }

    /// Reads a queue record back.
    pub fn from_record(bytes: &[u8]) -> Result<Self, RecordError> {
        let r = MessageRecord::decode(bytes).map_err(|e| RecordError::Undecodable(e.to_string()))?;
        match r.version {
            0 => return Err(RecordError::NoVersion),
            found if found > RECORD_VERSION => return Err(RecordError::TooNew { found }),
            _ => {}
        }
        let kind = match RecordKind::try_from(r.kind) {
            Ok(RecordKind::Room) if r.room_id != 0 => MessageKind::Room,
            Ok(RecordKind::Private) if r.to_user_id != 0 => MessageKind::Private,
            _ => {
                return Err(RecordError::Incomplete(format!(
                    "kind {} with room {} and recipient {}",
                    r.kind, r.room_id, r.to_user_id
                )));
            }
        };
        if r.msg_id == 0 {
            return Err(RecordError::Incomplete("message id 0".into()));
        }
        Ok(Self {
            msg_id: r.msg_id,
            kind,
            room_id: r.room_id,
            from_user_id: r.from_user_id,
            from_user_name: r.from_user_name,
            to_user_id: r.to_user_id,
            to_user_name: r.to_user_name,
            body: r.body,
            admitted_us: match r.admitted_us {
                0 => r.admitted_ms.saturating_mul(1000),
                us => us,
            },
            client_msg_id: r.client_msg_id,
            inboxes: match (r.version, r.sender_copy) {
                (1, _) => Inboxes::Both,
                (_, true) => Inboxes::Sender,
                (_, false) => Inboxes::Recipient,
            },
        })
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

    fn private(from: u64, to: u64) -> Message {
        Message {
            msg_id: 7,
            kind: MessageKind::Private,
            room_id: 1,
            from_user_id: from,
            from_user_name: "ann".into(),
            to_user_id: to,
            to_user_name: "bob".into(),
            body: "hi \u{1F600}".into(),
            admitted_us: 1_700_000_000_000_123,
            client_msg_id: "c1".into(),
            inboxes: Inboxes::Recipient,
        }
    }

    #[test]
    fn a_message_round_trips_through_its_record() {
        let message = private(1, 2);
        let [to, copy]: [Message; 2] = message.clone().records().try_into().expect("two records");
        for record in [&to, &copy] {
            assert_eq!(Message::from_record(&record.clone().into_record()).as_ref(), Ok(record));
        }
        assert_eq!((to.key(), to.streams()), (StreamId::Inbox(2), vec![StreamId::Inbox(2)]), "the recipient's");
        assert_eq!((copy.key(), copy.streams()), (StreamId::Inbox(1), vec![StreamId::Inbox(1)]), "the sender's copy");
        assert_eq!(private(3, 3).records().len(), 1, "a note to self is one record");
        assert_eq!(private(3, 3).streams(), [StreamId::Inbox(3)], "in one inbox");
        let both = Message { inboxes: Inboxes::Both, ..message.clone() };
        assert_eq!(both.streams(), [StreamId::Inbox(2), StreamId::Inbox(1)], "a version 1 record writes both");
        assert_eq!(Message::from_record(&both.clone().into_record()), Ok(both), "and is read as one");
        let room = Message { kind: MessageKind::Room, room_id: 9, to_user_id: 0, ..message };
        assert_eq!(room.clone().records(), vec![room.clone()], "a room message is one record");
        assert_eq!((room.key(), room.streams()), (StreamId::Room(9), vec![StreamId::Room(9)]));
    }

    #[test]
    fn admission_time_keeps_microseconds_and_reads_older_records_in_milliseconds() {
        let record = MessageRecord::decode(private(1, 2).into_record().as_slice()).expect("decodes");
        assert_eq!((record.admitted_us, record.admitted_ms), (1_700_000_000_000_123, 1_700_000_000_000));
        let older = MessageRecord { admitted_us: 0, ..record }.encode_to_vec();
        let read = Message::from_record(&older).expect("an older writer's record reads");
        assert_eq!(read.admitted_us, 1_700_000_000_000_000);
        assert_eq!(read.admitted_ms(), 1_700_000_000_000);
    }

    #[test]
    fn records_that_are_not_whole_messages_of_a_known_version_are_refused() {
        let record = |change: fn(&mut MessageRecord)| {
            let mut r = MessageRecord::decode(private(1, 2).into_record().as_slice()).expect("decodes");
            change(&mut r);
            r.encode_to_vec()
        };
        assert!(matches!(Message::from_record(&[0xff, 0xff, 0xff]), Err(RecordError::Undecodable(_))));
        assert_eq!(Message::from_record(&record(|r| r.version = 0)), Err(RecordError::NoVersion));
        let newer = record(|r| r.version = RECORD_VERSION + 1);
        assert_eq!(Message::from_record(&newer), Err(RecordError::TooNew { found: RECORD_VERSION + 1 }));
        assert!(matches!(Message::from_record(&record(|r| r.msg_id = 0)), Err(RecordError::Incomplete(_))));
        assert!(matches!(Message::from_record(&record(|r| r.to_user_id = 0)), Err(RecordError::Incomplete(_))));
        assert!(matches!(Message::from_record(&record(|r| r.kind = 0)), Err(RecordError::Incomplete(_))));
    }

    #[test]
    fn kinds_keep_their_stored_codes() {
        // The codes `history.kind` holds in every database written so far:
        // renumbering the enum would misread them, whatever from_code says.
        assert_eq!((MessageKind::Room as i64, MessageKind::Private as i64), (1, 2));
        assert_eq!(MessageKind::from_code(1), Some(MessageKind::Room));
        assert_eq!(MessageKind::from_code(2), Some(MessageKind::Private));
        for unknown in [0, 3, -1] {
            assert_eq!(MessageKind::from_code(unknown), None, "{unknown}");
        }
        assert_eq!((MessageKind::Room.as_str(), MessageKind::Private.as_str()), ("room", "private"));
    }
}
