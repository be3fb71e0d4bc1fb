//! Behavioural tests every store backend must pass, written once and run against
//! each backend (SQLite here, PostgreSQL in its own suite). Each takes a `prefix`
//! so several can share one database: user names and ids derive from it.

use crate::{DeadLetter, Error, HistoryStore, Inboxes, Message, MessageKind, Page, StreamId, UserStore};

/// A room message with a given id.
pub fn room_message(msg_id: u64, room_id: u64, body: &str) -> Message {
    Message {
        msg_id,
        kind: MessageKind::Room,
        room_id,
        from_user_id: 1,
        from_user_name: "alice".into(),
        to_user_id: 0,
        to_user_name: String::new(),
        body: body.into(),
        admitted_us: 1_700_000_000_000_000 + (msg_id % 1_000_000_000) as i64 * 1000,
        client_msg_id: String::new(),
        inboxes: Inboxes::Recipient,
    }
}

/// A private message with a given id, as one record writing both inboxes (a
/// version 1 record: the store's multi-stream append).
pub fn private_message(msg_id: u64, from: u64, to: u64, body: &str) -> Message {
    Message {
        kind: MessageKind::Private,
        inboxes: Inboxes::Both,
        room_id: 0,
        from_user_id: from,
        to_user_id: to,
        to_user_name: format!("user{to}"),
        ..room_message(msg_id, 0, body)
    }
}

/// Names are unique; users are found by name and id; lookups of strangers are
/// `None`, not errors.
pub async fn users_are_unique_by_name(store: &dyn UserStore, prefix: &str) {
    let name = format!("{prefix}-ann");
    let id = store.create_user(&name, "$argon2id$hash").await.expect("create");
    assert!(matches!(store.create_user(&name, "other").await, Err(Error::NameTaken)), "duplicate name");
    let by_name = store.user_by_name(&name).await.expect("by name").expect("exists");
    assert_eq!((by_name.id, by_name.password_hash.as_str()), (id, "$argon2id$hash"));
    let by_id = store.user_by_id(id).await.expect("by id").expect("exists");
    assert_eq!(by_id.name, name);
    assert!(store.user_by_name(&format!("{prefix}-nobody")).await.expect("lookup").is_none());
    assert!(store.user_by_id(u64::from(u32::MAX) * 7).await.expect("lookup").is_none());
    let other = store.create_user(&format!("{prefix}-bob"), "h").await.expect("create");
    assert_ne!(id, other);
}

/// Seqs of a stream are 1, 2, 3… in append order, across batches, and each stream
/// counts on its own.
pub async fn seqs_are_gap_free_per_stream(store: &dyn HistoryStore, prefix: u64) {
    let (room_a, room_b) = (prefix * 1000 + 1, prefix * 1000 + 2);
    let batch: Vec<Message> =
        (0..6).map(|i| room_message(prefix * 1_000_000 + i, if i % 2 == 0 { room_a } else { room_b }, "x")).collect();
    let positions = store.append(&batch[..4]).await.expect("append");
    let more = store.append(&batch[4..]).await.expect("append");
    let seqs: Vec<(StreamId, u64)> = positions.iter().chain(more.iter()).map(|p| (p[0].stream, p[0].seq)).collect();
    let (a, b) = (StreamId::Room(room_a), StreamId::Room(room_b));
    assert_eq!(seqs, vec![(a, 1), (b, 1), (a, 2), (b, 2), (a, 3), (b, 3)]);
    let info = store.stream_info(a).await.expect("info").expect("stream exists");
    assert_eq!(info.last_seq, 3);
    assert!(positions.iter().flatten().filter(|p| p.stream == a).all(|p| p.epoch == info.epoch));
    assert!(store.stream_info(StreamId::Room(prefix * 1000 + 3)).await.expect("info").is_none());
}

/// Appending a message id again (a redelivered record) returns its existing
/// positions and adds nothing.
pub async fn redelivery_keeps_its_seq(store: &dyn HistoryStore, prefix: u64) {
    let room = prefix * 1000 + 5;
    let first = room_message(prefix * 1_000_000 + 1, room, "one");
    let second = room_message(prefix * 1_000_000 + 2, room, "two");
    let original = store.append(&[first.clone(), second.clone()]).await.expect("append");
    let again = store.append(&[second.clone(), first.clone()]).await.expect("append again");
    assert_eq!(again, vec![original[1].clone(), original[0].clone()]);
    let third = store.append(&[room_message(prefix * 1_000_000 + 3, room, "three")]).await.expect("append");
    assert_eq!(third[0][0].seq, 3, "no seq was consumed by the redelivery");
    let all = store.read_after(StreamId::Room(room), 0, 100).await.expect("read");
    let bodies: Vec<&str> = all.iter().map(|m| m.message.body.as_str()).collect();
    assert_eq!(bodies, vec!["one", "two", "three"]);
}

/// A private message lands in the recipient's inbox and the sender's, with each
/// inbox's own seq: as one version 1 record writing both, or as today's two
/// records (the recipient's and the sender's copy, appended by two writers),
/// the message stored once either way and read back as the record of the
/// inbox it is read from.
pub async fn private_message_reaches_both_inboxes(store: &dyn HistoryStore, prefix: u64) {
    let (alice, bob) = (prefix * 1000 + 1, prefix * 1000 + 2);
    let (bob_inbox, alice_inbox) = (StreamId::Inbox(bob), StreamId::Inbox(alice));
    let old = private_message(prefix * 1_000_000 + 1, alice, bob, "psst");
    let positions = store.append(std::slice::from_ref(&old)).await.expect("append");
    let streams: Vec<StreamId> = positions[0].iter().map(|p| p.stream).collect();
    assert_eq!(streams, vec![bob_inbox, alice_inbox]);

    let new = Message { msg_id: prefix * 1_000_000 + 2, inboxes: Inboxes::Recipient, ..old.clone() };
    let [to_bob, copy]: [Message; 2] = new.records().try_into().expect("two records");
    let copied = store.append(std::slice::from_ref(&copy)).await.expect("append the copy");
    let delivered = store.append(std::slice::from_ref(&to_bob)).await.expect("append the recipient's");
    assert_eq!((copied[0][0].stream, copied[0][0].seq), (alice_inbox, 2));
    assert_eq!((delivered[0][0].stream, delivered[0][0].seq), (bob_inbox, 2));
    for (inbox, second) in [(bob_inbox, &to_bob), (alice_inbox, &copy)] {
        let read = store.read_after(inbox, 0, 10).await.expect("read");
        let seqs: Vec<u64> = read.iter().map(|m| m.position.seq).collect();
        assert_eq!(seqs, [1, 2], "{inbox}");
        assert_eq!(&read[1].message, second, "message round-trips through {inbox}");
        assert_eq!(read[0].message.body, old.body);
    }
}

/// Reads page forwards after a seq and backwards before one, both bounded.
pub async fn pages_in_both_directions(store: &dyn HistoryStore, prefix: u64) {
    let room = prefix * 1000 + 9;
    let batch: Vec<Message> = (1..=10).map(|i| room_message(prefix * 1_000_000 + i, room, &i.to_string())).collect();
    store.append(&batch).await.expect("append");
    let stream = StreamId::Room(room);
    let seqs = |page: Vec<crate::StoredMessage>| page.iter().map(|m| m.position.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.read_after(stream, 3, 4).await.expect("read")), vec![4, 5, 6, 7]);
    assert_eq!(seqs(store.read_after(stream, 8, 100).await.expect("read")), vec![9, 10]);
    assert_eq!(seqs(store.read_before(stream, 4, 100).await.expect("read")), vec![3, 2, 1]);
    assert_eq!(seqs(store.read_before(stream, u64::MAX, 2).await.expect("read")), vec![10, 9]);
    assert!(store.read_after(stream, 10, 5).await.expect("read").is_empty());
}

/// Writers running at once — private traffic crossing between two inboxes in
/// both directions (two partitions), and two writers of the same batch (a
/// record redelivered while its old owner still works) — all succeed, and each
/// inbox holds every message once with seqs 1, 2, 3….
pub async fn concurrent_writers_stay_gap_free(store: &dyn HistoryStore, prefix: u64) {
    let (alice, bob) = (prefix * 1000 + 1, prefix * 1000 + 2);
    let id = |i: u64| prefix * 1_000_000 + i;
    let to_bob: Vec<Message> = (0..40).map(|i| private_message(id(i), alice, bob, "a→b")).collect();
    let to_alice: Vec<Message> = (100..140).map(|i| private_message(id(i), bob, alice, "b→a")).collect();
    let writer = |batch: Vec<Message>| async move {
        let mut positions = Vec::new();
        for chunk in batch.chunks(5) {
            positions.extend(store.append(chunk).await.expect("a concurrent append must succeed"));
        }
        positions
    };
    let (a, b, a_again) = tokio::join!(writer(to_bob.clone()), writer(to_alice), writer(to_bob));
    assert_eq!(a, a_again, "both writers of one batch get the same positions");
    assert_eq!(b.len(), 40);
    for inbox in [StreamId::Inbox(alice), StreamId::Inbox(bob)] {
        let stored = store.read_after(inbox, 0, 1000).await.expect("read");
        let seqs: Vec<u64> = stored.iter().map(|m| m.position.seq).collect();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>(), "{inbox} is gap-free");
        let ids: std::collections::BTreeSet<u64> = stored.iter().map(|m| m.message.msg_id).collect();
        assert_eq!(ids.len(), 80, "{inbox} holds each message once");
    }
}

/// Lanes append at once, each to its own room (one writer per stream), as
/// task's lanes do; whatever the store does with concurrent appends (the
/// embedded one commits them together), each lane gets exactly its own
/// positions, gap-free and in its order.
pub async fn parallel_lanes_each_get_their_own_positions(store: &dyn HistoryStore, prefix: u64) {
    let lane = |lane: u64| async move {
        let room = prefix * 100 + lane;
        let mut seqs = Vec::new();
        for batch in 0..10 {
            let messages: Vec<Message> = (0..3)
                .map(|i| room_message(prefix * 1_000_000 + lane * 1_000 + batch * 3 + i + 1, room, "lane"))
                .collect();
            for positions in store.append(&messages).await.expect("append") {
                assert_eq!(positions.iter().map(|p| p.stream).collect::<Vec<_>>(), [StreamId::Room(room)]);
                seqs.push(positions[0].seq);
            }
        }
        seqs
    };
    let lanes = futures_util::future::join_all((0..16).map(lane)).await;
    for (lane, seqs) in (0..16u64).zip(lanes) {
        let room = prefix * 100 + lane;
        assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "room {room}'s positions");
        let stored = store.read_after(StreamId::Room(room), 0, 100).await.expect("read");
        let ids: Vec<u64> = stored.iter().map(|m| m.message.msg_id).collect();
        let expected: Vec<u64> = (1..=30).map(|i| prefix * 1_000_000 + lane * 1_000 + i).collect();
        assert_eq!(ids, expected, "room {room} in order");
    }
}

/// A conversation is read from the inbox by the other party alone: pages hold
/// only messages exchanged with that user, in both directions, whatever else
/// the inbox holds between them.
pub async fn conversations_page_by_peer(store: &dyn HistoryStore, prefix: u64) {
    let (alice, bob, carol) = (prefix * 1000 + 1, prefix * 1000 + 2, prefix * 1000 + 3);
    let id = |i: u64| prefix * 1_000_000 + i;
    let mut batch = Vec::new();
    for i in 0..30 {
        // Alice's inbox: mostly Carol, now and then Bob, in both directions.
        batch.push(match i % 10 {
            3 => private_message(id(i), bob, alice, &format!("bob {i}")),
            7 => private_message(id(i), alice, bob, &format!("to bob {i}")),
            _ => private_message(id(i), carol, alice, &format!("carol {i}")),
        });
    }
    batch.push(private_message(id(99), alice, alice, "note to self"));
    store.append(&batch).await.expect("append");
    let inbox = StreamId::Inbox(alice);
    let bodies = |page: Vec<crate::StoredMessage>| page.into_iter().map(|m| m.message.body).collect::<Vec<_>>();
    let with_bob = store.read(inbox, Some(bob), Page::After(0), 100).await.expect("read");
    assert_eq!(bodies(with_bob), ["bob 3", "to bob 7", "bob 13", "to bob 17", "bob 23", "to bob 27"]);
    let newest = store.read(inbox, Some(bob), Page::Before(u64::MAX), 2).await.expect("read");
    assert_eq!(bodies(newest), ["to bob 27", "bob 23"], "newest first, bounded");
    let seq_of_13 = store.read(inbox, Some(bob), Page::After(0), 3).await.expect("read")[2].position.seq;
    let after = store.read(inbox, Some(bob), Page::After(seq_of_13), 2).await.expect("read");
    assert_eq!(bodies(after), ["to bob 17", "bob 23"]);
    let own = store.read(inbox, Some(alice), Page::After(0), 10).await.expect("read");
    assert_eq!(bodies(own), ["note to self"]);
    let bob_side = store.read(StreamId::Inbox(bob), Some(alice), Page::After(0), 100).await.expect("read");
    assert_eq!(bob_side.len(), 6, "the same conversation from Bob's inbox");
    assert!(store.read(inbox, Some(prefix * 1000 + 4), Page::After(0), 10).await.expect("read").is_empty());
}

/// A record set aside keeps its bytes exactly (NULs included, which text
/// columns refuse), its reason and its place in the log; setting the same
/// record aside again (a redelivery) keeps one copy.
pub async fn dead_letters_keep_the_raw_record(store: &dyn HistoryStore, prefix: u64) {
    let topic = format!("dead-{prefix}");
    let letter = |partition: u32, offset: u64| DeadLetter {
        topic: topic.clone(),
        partition,
        offset,
        key: b"room:\0\x01".to_vec(),
        value: vec![0, 159, 146, 150, 0, 10],
        error: "refused: invalid byte sequence \0 here".into(),
        dead_at_ms: 1_700_000_000_000,
    };
    store.set_aside(&letter(3, 42)).await.expect("set aside");
    store.set_aside(&letter(3, 42)).await.expect("set aside again");
    store.set_aside(&letter(1, 7)).await.expect("set aside");
    let kept = store.dead_letters(&topic, 10).await.expect("read dead letters");
    assert_eq!(kept.len(), 2, "one copy per record");
    assert_eq!((kept[0].partition, kept[0].offset), (1, 7), "in log order");
    assert_eq!(kept[1].value, letter(3, 42).value, "the raw bytes");
    assert_eq!(kept[1].key, letter(3, 42).key);
    assert!(kept[1].error.starts_with("refused: invalid byte sequence"), "{}", kept[1].error);
    assert!(store.dead_letters(&format!("other-{prefix}"), 10).await.expect("read").is_empty());
}

/// History as the layout before `history` held it (`streams`, `messages`,
/// `stream_entries`), as SQL both databases run: room 7 with two messages,
/// and one private message from user 1 to user 2 in both inboxes.
pub const HISTORY_BEFORE_ONE_ROW_PER_ENTRY: &str = "
    INSERT INTO streams (stream, epoch, last_seq)
    VALUES ('room:7', 'e-room', 2), ('user:1', 'e-one', 1), ('user:2', 'e-two', 1);
    INSERT INTO messages (msg_id, kind, room_id, from_user_id, from_user_name, to_user_id, to_user_name,
        body, admitted_ms, client_msg_id)
    VALUES (101, 1, 7, 1, 'ann', 0, '', 'first', 1700000000000, 'c-1'),
           (102, 1, 7, 2, 'bob', 0, '', 'second', 1700000000001, ''),
           (103, 2, 0, 1, 'ann', 2, 'bob', 'psst', 1700000000002, 'c-3');
    INSERT INTO stream_entries (stream, seq, msg_id, peer_user_id)
    VALUES ('room:7', 1, 101, 0), ('room:7', 2, 102, 0), ('user:2', 1, 103, 1), ('user:1', 1, 103, 2);";

/// After the migration to one row per entry, history written in the layout
/// before ([`HISTORY_BEFORE_ONE_ROW_PER_ENTRY`]) reads back as it was (epochs,
/// seqs, every column, conversations), a redelivered old message keeps its
/// seq, and new messages go on from the old heads.
pub async fn history_survives_the_layout_change(store: &dyn HistoryStore) {
    let room = store.read_after(StreamId::Room(7), 0, 10).await.expect("read the room");
    let seen: Vec<(u64, &str, u64, &str, &str)> = room
        .iter()
        .map(|m| {
            let (p, m) = (&m.position, &m.message);
            (p.seq, p.epoch.as_str(), m.msg_id, m.body.as_str(), m.client_msg_id.as_str())
        })
        .collect();
    assert_eq!(seen, [(1, "e-room", 101, "first", "c-1"), (2, "e-room", 102, "second", "")]);
    assert_eq!((room[1].message.from_user_name.as_str(), room[1].message.admitted_ms()), ("bob", 1_700_000_000_001));

    let conversation = store.read(StreamId::Inbox(1), Some(2), Page::After(0), 10).await.expect("read ann's inbox");
    assert_eq!(conversation.len(), 1, "the conversation with bob, found by peer");
    let psst = &conversation[0];
    assert_eq!((psst.position.epoch.as_str(), psst.message.body.as_str()), ("e-one", "psst"));
    assert_eq!((psst.message.kind, psst.message.to_user_name.as_str()), (MessageKind::Private, "bob"));
    assert_eq!(psst.message.inboxes, Inboxes::Sender, "read from the sender's inbox");
    let bobs = store.read(StreamId::Inbox(2), Some(1), Page::After(0), 10).await.expect("read bob's inbox");
    assert_eq!(bobs.iter().map(|m| m.message.msg_id).collect::<Vec<_>>(), [103]);

    let again = room_message(102, 7, "second");
    assert_eq!(store.append(&[again]).await.expect("redeliver")[0][0].seq, 2, "an old message keeps its seq");
    let next = store.append(&[room_message(104, 7, "third")]).await.expect("append");
    assert_eq!((next[0][0].seq, next[0][0].epoch.as_str()), (3, "e-room"), "the room goes on from its head");
    let info = store.stream_info(StreamId::Room(7)).await.expect("info").expect("the room exists");
    assert_eq!(info.last_seq, 3);
}
