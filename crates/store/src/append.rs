//! How a batch of messages gets its positions, shared by the SQLite and
//! PostgreSQL stores.
//!
//! Both stores append a whole batch with a fixed handful of statements, not a
//! few per message (a round trip each on PostgreSQL):
//!
//! 1. lock the heads of every stream the batch touches, **in sorted order** (so
//!    two writers whose batches cross — A→B and B→A private traffic in different
//!    partitions — queue up instead of deadlocking), creating missing streams;
//! 2. find the positions messages of the batch already have (a redelivered
//!    record), by message id: once the heads are locked, no other writer can
//!    be adding them;
//! 3. [`plan`] the seqs here, in batch order, then insert one `history` row per
//!    new entry, with the message's columns, and move the heads.
//!
//! Keeping step 3 in Rust makes the seq rule — gap-free, in batch order, a known
//! message keeps its seq — one function with unit tests, whatever the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use courier_model::{Position, StreamId};

use crate::{Error, Message, MessageKind, Result, StreamInfo, epoch_for};

/// A new row of `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub stream: String,
    pub seq: u64,
    /// The message's index in the batch (its other columns).
    pub message: usize,
    /// The other party of a private message in this inbox; 0 in a room.
    pub peer: u64,
}

/// The other party of `message` in `stream`: in the recipient's inbox the
/// sender, in the sender's inbox the recipient (oneself for a note to self);
/// 0 for a room message.
pub(crate) fn peer_in(stream: StreamId, message: &Message) -> u64 {
    match (message.kind, stream) {
        (MessageKind::Room, _) | (_, StreamId::Room(_)) => 0,
        (MessageKind::Private, StreamId::Inbox(user)) if user == message.from_user_id => message.to_user_id,
        (MessageKind::Private, StreamId::Inbox(_)) => message.from_user_id,
    }
}

/// What a batch writes, and the positions it returns.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per message, its positions in [`Message::streams`] order.
    pub positions: Vec<Vec<Position>>,
    pub entries: Vec<Entry>,
    /// Streams whose last seq moved, with the new value.
    pub heads: Vec<(String, u64)>,
}

/// Every stream the batch touches, sorted (the order in which heads are
/// locked), with the epoch it gets if it is new: the one of its first message
/// in the batch, which is then its seq 1.
pub(crate) fn streams_to_lock(batch: &[Message]) -> Vec<(String, String)> {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for message in batch {
        for stream in message.streams() {
            first.entry(stream.to_string()).or_insert_with(|| epoch_for(stream, message.msg_id));
        }
    }
    first.into_iter().collect()
}

/// Gives each message of `batch` its seq in each of its streams. `heads` holds
/// the locked head of every stream of [`streams_to_lock`]; `existing` the
/// positions already stored for `(stream, msg_id)`.
pub(crate) fn plan(
    batch: &[Message],
    mut heads: HashMap<String, StreamInfo>,
    mut existing: HashMap<(String, u64), u64>,
) -> Result<Plan> {
    let mut plan = Plan { positions: Vec::with_capacity(batch.len()), ..Plan::default() };
    let mut moved = BTreeSet::new();
    for (index, message) in batch.iter().enumerate() {
        let mut positions = Vec::with_capacity(2);
        for id in message.streams() {
            let stream = id.to_string();
            let head = heads
                .get_mut(&stream)
                .ok_or_else(|| Error::Corrupt(format!("stream {stream} was not locked for the append")))?;
            let key = (stream, message.msg_id);
            let seq = match existing.get(&key) {
                Some(seq) => *seq,
                None => {
                    head.last_seq += 1;
                    moved.insert(key.0.clone());
                    plan.entries.push(Entry {
                        peer: peer_in(id, message),
                        stream: key.0.clone(),
                        seq: head.last_seq,
                        message: index,
                    });
                    // The same id twice in one batch is one message.
                    existing.insert(key.clone(), head.last_seq);
                    head.last_seq
                }
            };
            positions.push(Position { stream: id, seq, epoch: head.epoch.clone() });
        }
        plan.positions.push(positions);
    }
    plan.heads = moved
        .into_iter()
        .map(|stream| {
            let last = heads.get(&stream).map_or(0, |h| h.last_seq);
            (stream, last)
        })
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(msg_id: u64, from: u64, to: u64) -> Message {
        Message {
            msg_id,
            kind: MessageKind::Private,
            room_id: 0,
            from_user_id: from,
            from_user_name: format!("u{from}"),
            to_user_id: to,
            to_user_name: format!("u{to}"),
            body: "hi".into(),
            admitted_us: 0,
            client_msg_id: String::new(),
            // One record writing both inboxes: a batch that moves several streams.
            inboxes: crate::Inboxes::Both,
        }
    }

    fn head(last_seq: u64) -> StreamInfo {
        StreamInfo { epoch: "e".into(), last_seq }
    }

    #[test]
    fn seqs_follow_batch_order_and_known_messages_keep_theirs() {
        let batch = [private(10, 1, 2), private(11, 2, 1), private(12, 1, 2)];
        let locked = streams_to_lock(&batch);
        assert_eq!(locked.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["user:1", "user:2"]);
        // user:1's first message in the batch is 10 (its sender), user:2's too.
        assert_eq!(locked[0].1, epoch_for(StreamId::Inbox(1), 10));
        assert_eq!(locked[1].1, epoch_for(StreamId::Inbox(2), 10));
        let heads = HashMap::from([("user:1".to_owned(), head(5)), ("user:2".to_owned(), head(0))]);
        // Message 10 was stored before (a redelivery): it keeps seqs 1 and 5.
        let existing = HashMap::from([(("user:2".to_owned(), 10), 1), (("user:1".to_owned(), 10), 5)]);
        let plan = plan(&batch, heads, existing).expect("plan");
        let seqs: Vec<Vec<u64>> = plan.positions.iter().map(|p| p.iter().map(|a| a.seq).collect()).collect();
        // Streams are [recipient, sender].
        assert_eq!(seqs, vec![vec![1, 5], vec![6, 1], vec![2, 7]]);
        assert_eq!(plan.entries.len(), 4, "only the new message entries are written");
        assert_eq!(plan.entries.iter().map(|e| e.message).collect::<Vec<_>>(), [1, 1, 2, 2], "rows of 11 and 12");
        assert_eq!(plan.heads, vec![("user:1".to_owned(), 7), ("user:2".to_owned(), 2)]);
        // Each inbox entry names the other party.
        let peers: Vec<(&str, u64)> = plan.entries.iter().map(|e| (e.stream.as_str(), e.peer)).collect();
        assert_eq!(peers, vec![("user:1", 2), ("user:2", 1), ("user:2", 1), ("user:1", 2)]);
        assert_eq!(peer_in(StreamId::Inbox(1), &private(13, 1, 1)), 1, "a note to self");
    }

    #[test]
    fn epochs_are_derived_and_never_change_meaning() {
        // A rebuilt history keeps clients' positions only if this stays fixed:
        // SHA-256("courier-epoch\0" · "room:1" · 1 as 8 big-endian bytes), first 8 bytes.
        assert_eq!(epoch_for(StreamId::Room(1), 1), "f4d36ba6cc3f28ee");
        assert_ne!(epoch_for(StreamId::Room(1), 1), epoch_for(StreamId::Room(1), 2), "another first message");
        assert_ne!(epoch_for(StreamId::Room(1), 1), epoch_for(StreamId::Inbox(1), 1), "another stream");
    }

    #[test]
    fn a_repeated_id_in_one_batch_is_one_message() {
        let batch = [private(10, 1, 1), private(10, 1, 1)];
        let plan = plan(&batch, HashMap::from([("user:1".to_owned(), head(0))]), HashMap::new()).expect("plan");
        assert_eq!(plan.entries.len(), 1);
        assert_eq!(plan.entries[0].message, 0, "the first copy is the one written");
        assert_eq!(plan.positions[0], plan.positions[1]);
    }

    #[test]
    fn an_unlocked_stream_is_an_error_not_a_guess() {
        assert!(plan(&[private(1, 1, 2)], HashMap::new(), HashMap::new()).is_err());
    }
}
