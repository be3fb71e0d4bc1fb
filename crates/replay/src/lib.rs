//! `courier replay`: message history read back from the queue topics, to
//! export it (audits, feeding another system) or to rebuild a lost or damaged
//! history store.
//!
//! The topics are the source of truth for every message ever acknowledged:
//! logic answers a sender only once the queue has the record, and task builds
//! history from the same records. Replay reads them with a
//! [`TopicReader`] — manual assignment, no consumer group, no commit — so it
//! runs beside a live cluster without moving anything task relies on.
//!
//! - [`Selection`] and [`plan`]: which topics, partitions and offset ranges
//!   to read, checked before anything is read (a bad argument is an error,
//!   never an empty or partial answer).
//! - [`feed`]: the records of those ranges in one sequence: each partition in
//!   offset order (so each room, and each inbox's received messages, come out
//!   in the order task persisted them), partitions interleaved by record time.
//! - [`export`]: JSON lines, one object per message.
//! - [`rebuild`]: the records re-persisted through task's own
//!   [`courier_task::Persister`]: idempotent by message id, and because an
//!   epoch derives from a stream's first message, a stream rebuilt from its
//!   beginning keeps its epoch and its seqs.
//! - [`report`]: progress bars on a terminal, and the summary.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use courier_model::{Inboxes, Message, MessageKind, StreamId, topics};
use courier_queue::{Bounds, Record, TopicReader};
use report::Summary;

pub mod export;
pub mod feed;
pub mod rebuild;
pub mod report;
pub mod time;

/// Which topics to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicChoice {
    Room,
    Private,
    All,
}

/// What to read: topics, messages and the offset range.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Topics to read: room, private or all (default: all, or what --room and
    /// --user imply).
    #[arg(long, value_enum)]
    pub topic: Option<TopicChoice>,
    /// Only this room's messages.
    #[arg(long, value_name = "ROOM_ID")]
    pub room: Option<u64>,
    /// Only this user's private messages, sent or received.
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<u64>,
    /// Start at the oldest record each partition still holds (the default).
    #[arg(long, conflicts_with_all = ["from_offset", "since"])]
    pub from_beginning: bool,
    /// Start partition PARTITION at OFFSET; repeatable, and only the
    /// partitions named are read (of one topic: give --topic).
    #[arg(long, value_name = "PARTITION:OFFSET", value_parser = partition_offset, conflicts_with = "since")]
    pub from_offset: Vec<(u32, u64)>,
    /// Start at the first record appended at or after TIME (RFC 3339, such
    /// as 2026-11-29T10:00:00Z, or a Unix time in milliseconds).
    #[arg(long, value_name = "TIME", value_parser = time::parse_arg)]
    pub since: Option<i64>,
    /// End after the last record appended at or before TIME (default: the
    /// records there when the command started).
    #[arg(long, value_name = "TIME", value_parser = time::parse_arg, conflicts_with = "follow")]
    pub until: Option<i64>,
    /// After the records there at the start, go on with new ones until
    /// interrupted (Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// Fail on a record that cannot be decoded, instead of reporting it and
    /// going on.
    #[arg(long)]
    pub strict: bool,
    /// Topic of room traffic.
    #[arg(long, env = "COURIER_ROOM_TOPIC", default_value = topics::ROOM)]
    pub room_topic: String,
    /// Topic of private traffic.
    #[arg(long, env = "COURIER_PRIVATE_TOPIC", default_value = topics::PRIVATE)]
    pub private_topic: String,
}

impl Selection {
    /// Everything, from the beginning, on the default topics.
    pub fn everything() -> Self {
        Self {
            topic: None,
            room: None,
            user: None,
            from_beginning: false,
            from_offset: Vec::new(),
            since: None,
            until: None,
            follow: false,
            strict: false,
            room_topic: topics::ROOM.into(),
            private_topic: topics::PRIVATE.into(),
        }
    }
}

/// `PARTITION:OFFSET`.
fn partition_offset(text: &str) -> Result<(u32, u64), String> {
    let bad = || format!("{text:?} is not PARTITION:OFFSET (two numbers, such as 3:1200)");
    let (partition, offset) = text.split_once(':').ok_or_else(bad)?;
    Ok((partition.parse().map_err(|_| bad())?, offset.parse().map_err(|_| bad())?))
}

/// A selection that cannot be read, said before anything is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--user selects private messages, which are not on the room topic; drop --topic room")]
    UserOnRoomTopic,
    #[error("--room selects room messages, which are not on the private topic; drop --topic private")]
    RoomOnPrivateTopic,
    #[error("--from-offset names partitions of one topic: add --topic room or --topic private")]
    OffsetsNeedOneTopic,
    #[error("--since ({since}) is after --until ({until})")]
    SinceAfterUntil { since: String, until: String },
    #[error("topic {topic:?} does not exist in this queue (check --kafka or --data-dir, and the topic names)")]
    UnknownTopic { topic: String },
    #[error("topic {topic:?} has {partitions} partitions (0 to {}); there is no partition {partition}", partitions.saturating_sub(1))]
    NoSuchPartition { topic: String, partitions: u32, partition: u32 },
    #[error("--from-offset names partition {partition}, but what is selected lives in partitions {selected:?}")]
    PartitionNotSelected { partition: u32, selected: Vec<u32> },
    #[error("partition {partition} of {topic:?} holds offsets {first} to {end} (exclusive); {offset} is outside")]
    OffsetOutOfRange { topic: String, partition: u32, first: u64, end: u64, offset: u64 },
    #[error("the queue cannot be read: {0}")]
    Queue(String),
}

impl From<courier_queue::Error> for PlanError {
    fn from(e: courier_queue::Error) -> Self {
        match e {
            courier_queue::Error::UnknownTopic(topic) => Self::UnknownTopic { topic },
            other => Self::Queue(other.to_string()),
        }
    }
}

/// One partition's records to read: from `start` up to `end` (exclusive;
/// `None` reads on until interrupted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub topic: String,
    pub partition: u32,
    pub start: u64,
    pub end: Option<u64>,
    /// The oldest offset the partition held when planned: a range starting
    /// above 0 may miss the beginning of its streams.
    pub held: Bounds,
}

impl Range {
    /// The records in range when planned (offsets may have gaps; fewer then).
    pub fn len(&self) -> Option<u64> {
        self.end.map(|end| end.saturating_sub(self.start))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

/// Which messages of the records read are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    pub room: Option<u64>,
    pub user: Option<u64>,
}

impl Filter {
    /// Whether the record of `message` is selected. With `--user`, the
    /// records that write that user's inbox: what they received, and the
    /// copies of what they sent, which are in their inbox's partition and
    /// order. Otherwise an export leaves sender copies out (`copies` false):
    /// each message is exported once, from its recipient's record.
    pub fn keeps(&self, message: &Message, copies: bool) -> bool {
        match message.kind {
            MessageKind::Room => self.room.is_none_or(|room| message.room_id == room),
            MessageKind::Private => match self.user {
                Some(user) => message.streams().contains(&StreamId::Inbox(user)),
                None => copies || message.inboxes != Inboxes::Sender,
            },
        }
    }
}

/// What a replay reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ranges: Vec<Range>,
    pub filter: Filter,
    pub follow: bool,
    pub strict: bool,
}

impl Plan {
    /// The records in range, over every partition.
    pub fn records_in_range(&self) -> u64 {
        self.ranges.iter().filter_map(Range::len).sum()
    }

    /// The message of `record` if it is selected, counting it in `summary`. A
    /// record that is not a message is reported with where it is and
    /// skipped, or with `--strict` ends the replay.
    /// `copies` keeps sender copies (rebuild) rather than leaving them to
    /// their recipient's record (export).
    pub fn select(&self, record: &Record, summary: &mut Summary, copies: bool) -> Result<Option<Message>, Undecodable> {
        let counts = summary.topic(&record.topic);
        counts.read += 1;
        match Message::from_record(&record.value) {
            Ok(message) if self.filter.keeps(&message, copies) => Ok(Some(message)),
            Ok(_) => {
                counts.skipped += 1;
                Ok(None)
            }
            Err(reason) => {
                counts.undecodable += 1;
                let error = Undecodable {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    reason: reason.to_string(),
                };
                if self.strict {
                    return Err(error);
                }
                tracing::warn!("{error}; skipped");
                Ok(None)
            }
        }
    }
}

/// A record that is not a message this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic} partition {partition} offset {offset} is not a message: {reason}")]
pub struct Undecodable {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
}

/// Checks `selection` against the queue and works out what to read; every
/// error comes before any record is read.
pub async fn plan(reader: &dyn TopicReader, selection: &Selection) -> Result<Plan, PlanError> {
    let s = selection;
    let (room_topic, private_topic) = match s.topic {
        Some(TopicChoice::Room) if s.user.is_some() => return Err(PlanError::UserOnRoomTopic),
        Some(TopicChoice::Private) if s.room.is_some() => return Err(PlanError::RoomOnPrivateTopic),
        Some(TopicChoice::Room) => (true, false),
        Some(TopicChoice::Private) => (false, true),
        Some(TopicChoice::All) => (true, true),
        // A filter names its topic; with neither, both.
        None => (s.room.is_some() || s.user.is_none(), s.user.is_some() || s.room.is_none()),
    };
    if !s.from_offset.is_empty() && room_topic && private_topic {
        return Err(PlanError::OffsetsNeedOneTopic);
    }
    if let (Some(since), Some(until)) = (s.since, s.until)
        && since > until
    {
        return Err(PlanError::SinceAfterUntil { since: time::rfc3339(since), until: time::rfc3339(until) });
    }
    // Per topic: its partition count and the partitions to read.
    let mut wanted: Vec<(&str, u32, Vec<u32>)> = Vec::new();
    if room_topic {
        let partitions = reader.partitions(&s.room_topic).await?;
        let chosen = match s.room {
            // A room's records all live in the partition of its key.
            Some(room) => vec![courier_queue::partition_for(&StreamId::Room(room).to_string(), partitions)],
            None => (0..partitions).collect(),
        };
        wanted.push((&s.room_topic, partitions, chosen));
    }
    if private_topic {
        // A user's received messages are in one partition, but the ones they
        // sent are keyed by their recipients: every partition.
        let partitions = reader.partitions(&s.private_topic).await?;
        wanted.push((&s.private_topic, partitions, (0..partitions).collect()));
    }
    let offsets: BTreeMap<u32, u64> = s.from_offset.iter().copied().collect();
    if let Some((topic, partitions, chosen)) = wanted.first()
        && !offsets.is_empty()
    {
        let partitions = *partitions;
        if let Some(&partition) = offsets.keys().find(|p| **p >= partitions) {
            return Err(PlanError::NoSuchPartition { topic: (*topic).to_owned(), partitions, partition });
        }
        if let Some(&partition) = offsets.keys().find(|p| !chosen.contains(p)) {
            return Err(PlanError::PartitionNotSelected { partition, selected: chosen.clone() });
        }
    }
    let mut ranges = Vec::new();
    for (topic, _, partitions) in wanted {
        for partition in partitions {
            let held = reader.bounds(topic, partition).await?;
            let start = if !offsets.is_empty() {
                let Some(&offset) = offsets.get(&partition) else { continue };
                if offset < held.first || offset > held.end {
                    return Err(PlanError::OffsetOutOfRange {
                        topic: topic.to_owned(),
                        partition,
                        first: held.first,
                        end: held.end,
                        offset,
                    });
                }
                offset
            } else if let Some(since) = s.since {
                reader.offset_at(topic, partition, since).await?
            } else {
                held.first
            };
            let end = match (s.follow, s.until) {
                (true, _) => None,
                // The first record after `until` ends the range.
                (false, Some(until)) => Some(reader.offset_at(topic, partition, until.saturating_add(1)).await?),
                (false, None) => Some(held.end),
            };
            ranges.push(Range { topic: topic.to_owned(), partition, start, end: end.map(|e| e.max(start)), held });
        }
    }
    Ok(Plan { ranges, filter: Filter { room: s.room, user: s.user }, follow: s.follow, strict: s.strict })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_offsets_are_two_numbers() {
        assert_eq!(partition_offset("3:1200"), Ok((3, 1200)));
        for bad in ["3", "x:1", "3:-1", ":", "3:1:2", ""] {
            assert!(partition_offset(bad).is_err(), "{bad:?}");
        }
    }

    fn message(kind: MessageKind, room: u64, from: u64, to: u64) -> Message {
        Message {
            msg_id: 1,
            kind,
            room_id: room,
            from_user_id: from,
            from_user_name: "a".into(),
            to_user_id: to,
            to_user_name: "b".into(),
            body: "hi".into(),
            admitted_us: 0,
            client_msg_id: String::new(),
            inboxes: courier_model::Inboxes::Recipient,
        }
    }

    #[test]
    fn filters_keep_a_rooms_messages_and_a_users_inbox() {
        let filter = Filter { room: Some(5), user: Some(7) };
        let keeps = |m: &Message| filter.keeps(m, false);
        assert!(keeps(&message(MessageKind::Room, 5, 1, 0)));
        assert!(!keeps(&message(MessageKind::Room, 6, 7, 0)), "another room, even from the user");
        let [to_8, copy]: [Message; 2] = message(MessageKind::Private, 5, 7, 8).records().try_into().expect("two");
        assert!(keeps(&copy) && !keeps(&to_8), "what the user sent: their own copy");
        assert!(keeps(&message(MessageKind::Private, 0, 8, 7)), "received");
        assert!(!keeps(&message(MessageKind::Private, 5, 8, 9)), "between others");
        let v1 = Message { inboxes: Inboxes::Both, ..to_8.clone() };
        assert!(keeps(&v1), "a version 1 record writes the sender's inbox too");
        let everything = Filter::default();
        assert!(everything.keeps(&to_8, false) && !everything.keeps(&copy, false), "a message once");
        assert!(everything.keeps(&copy, true), "rebuild keeps the copies");
    }
}
