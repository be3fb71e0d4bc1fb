//! Behavioural tests every queue backend must pass, written once and run against
//! each backend (the embedded SQLite queue here, Kafka in its own test suite).
//!
//! Each test takes a fresh `prefix` for its topic and group names, so several can
//! share one broker. They panic with a message saying which promise broke.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::{Bounds, Consumer, Queue, Record, TopicReader, partition_for};

/// How long a test waits for a condition that depends on asynchronous work.
const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `consumer` until `want` records arrived (or panics after [`PATIENCE`]).
pub async fn drain(consumer: &mut dyn Consumer, want: usize) -> Vec<Record> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(Instant::now() < deadline, "only {} of {want} records arrived", got.len());
        let batch = consumer.poll(want - got.len(), Duration::from_millis(200)).await.expect("poll");
        got.extend(batch);
    }
    got
}

/// Records of one key arrive in the order they were produced, all in one
/// partition, and every record arrives exactly once.
pub async fn keyed_records_keep_order(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-order");
    queue.ensure_topic(&topic, 4).await.expect("create topic");
    let keys: Vec<String> = (0..8).map(|k| format!("room:{k}")).collect();
    for i in 0..25u32 {
        for key in &keys {
            let position = queue.produce(&topic, key, &i.to_be_bytes()).await.expect("produce");
            assert_eq!(position.partition, partition_for(key, 4), "key must map to its partition");
        }
    }
    let mut consumer = queue.subscribe(&format!("{prefix}-g"), std::slice::from_ref(&topic)).await.expect("subscribe");
    let records = drain(consumer.as_mut(), 200).await;
    let mut per_key: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for r in &records {
        let value: [u8; 4] = r.value.as_slice().try_into().expect("4-byte value");
        per_key.entry(r.key.as_str()).or_default().push(u32::from_be_bytes(value));
    }
    for key in &keys {
        assert_eq!(per_key.get(key.as_str()), Some(&(0..25).collect::<Vec<_>>()), "order of {key}");
    }
    let offsets: BTreeSet<(u32, u64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(offsets.len(), 200, "no record may be handed out twice");
}

/// Records produced at once, many in flight (they share commits), each get
/// their own offset: consecutive per partition, each value read back whole and
/// exactly once.
pub async fn concurrent_producers_get_their_own_offsets(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-concurrent");
    queue.ensure_topic(&topic, 2).await.expect("create topic");
    let sends = (0..120u32).map(|i| {
        let topic = topic.clone();
        async move {
            // Binary values, zero bytes and all.
            let value = [i.to_le_bytes().as_slice(), &[0, 255, 0]].concat();
            let position = queue.produce(&topic, &format!("user:{}", i % 5), &value).await.expect("produce");
            (position, value)
        }
    });
    let produced = futures_util::future::join_all(sends).await;
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (position, _) in &produced {
        per_partition.entry(position.partition).or_default().push(position.offset);
    }
    let base: BTreeMap<u32, u64> =
        per_partition.iter().map(|(p, o)| (*p, o.iter().copied().min().unwrap_or(0))).collect();
    for (partition, offsets) in &mut per_partition {
        offsets.sort_unstable();
        let first = base[partition];
        assert_eq!(*offsets, (first..first + offsets.len() as u64).collect::<Vec<_>>(), "partition {partition}");
    }
    let mut consumer = queue.subscribe(&format!("{prefix}-cg"), std::slice::from_ref(&topic)).await.expect("subscribe");
    let records = drain(consumer.as_mut(), produced.len()).await;
    let read: BTreeMap<(u32, u64), &[u8]> =
        records.iter().map(|r| ((r.partition, r.offset), r.value.as_slice())).collect();
    assert_eq!(read.len(), produced.len(), "each record once");
    for (position, value) in &produced {
        assert_eq!(read.get(&(position.partition, position.offset)), Some(&value.as_slice()), "{position:?}");
    }
}

/// A new member of a group resumes after the last committed offset.
pub async fn group_resumes_after_commit(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-resume");
    let group = format!("{prefix}-g");
    queue.ensure_topic(&topic, 1).await.expect("create topic");
    for i in 0..10u8 {
        queue.produce(&topic, "user:1", &[i]).await.expect("produce");
    }
    let mut first = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe");
    let records = drain(first.as_mut(), 10).await;
    // Process only the first six, then go away.
    first.commit(&topic, 0, records[5].offset).await.expect("commit");
    first.close().await.expect("close");

    let mut second = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe");
    let rest = drain(second.as_mut(), 4).await;
    assert_eq!(rest.iter().map(|r| r.value[0]).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
    second.close().await.expect("close");

    // A group that never committed starts from the beginning.
    let mut other = queue.subscribe(&format!("{prefix}-other"), &[topic]).await.expect("subscribe");
    assert_eq!(drain(other.as_mut(), 10).await.len(), 10);
}

/// A reader sees a partition's offsets, finds a record by time, and reads in
/// offset order from anywhere, all without disturbing a group: one that
/// committed half the records still resumes after its commit.
pub async fn a_reader_reads_without_disturbing_groups(queue: &dyn Queue, reader: &dyn TopicReader, prefix: &str) {
    let topic = format!("{prefix}-reader");
    let group = format!("{prefix}-g");
    queue.ensure_topic(&topic, 2).await.expect("create topic");
    let (key, partition) = ("room:1", partition_for("room:1", 2));
    for i in 0..5u8 {
        queue.produce(&topic, key, &[i]).await.expect("produce");
    }
    // Records appended from here on are stamped at `since` or later (the
    // clock must move past the first five's millisecond).
    let before = courier_ids::now_unix_ms();
    while courier_ids::now_unix_ms() <= before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let since = courier_ids::now_unix_ms();
    for i in 5..10u8 {
        queue.produce(&topic, key, &[i]).await.expect("produce");
    }
    let mut member = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe");
    let got = drain(member.as_mut(), 10).await;
    member.commit(&topic, partition, got[4].offset).await.expect("commit");
    member.close().await.expect("close");

    assert_eq!(reader.partitions(&topic).await.expect("partitions"), 2);
    assert_eq!(reader.bounds(&topic, partition).await.expect("bounds"), Bounds { first: 0, end: 10 });
    assert_eq!(reader.bounds(&topic, 1 - partition).await.expect("bounds"), Bounds { first: 0, end: 0 });
    assert_eq!(reader.offset_at(&topic, partition, 0).await.expect("offset"), 0);
    assert_eq!(reader.offset_at(&topic, partition, since).await.expect("offset"), 5, "first record at `since`");
    assert_eq!(reader.offset_at(&topic, partition, since + 3_600_000).await.expect("offset"), 10, "none: the end");
    let mut cursor = reader.cursor(&topic, partition, 3).await.expect("cursor");
    let mut read = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while read.len() < 7 {
        assert!(Instant::now() < deadline, "the cursor read only {read:?}");
        read.extend(cursor.next(7 - read.len(), Duration::from_millis(200)).await.expect("read"));
    }
    let values: Vec<u8> = read.iter().map(|r| r.value[0]).collect();
    assert_eq!(values, vec![3, 4, 5, 6, 7, 8, 9], "in offset order from where it started");
    assert!(cursor.next(10, Duration::from_millis(300)).await.expect("read").is_empty(), "nothing after the end");
    assert!(reader.partitions(&format!("{prefix}-missing")).await.is_err(), "an unknown topic is an error");

    let mut again = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe");
    let rest = drain(again.as_mut(), 5).await;
    assert_eq!(rest.iter().map(|r| r.value[0]).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9], "the group's commit held");
    again.close().await.expect("close");
}

/// Two members split the partitions between them; when one leaves, the other
/// takes over all of them and continues after the committed offsets.
pub async fn members_split_and_take_over(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-split");
    let group = format!("{prefix}-g");
    queue.ensure_topic(&topic, 4).await.expect("create topic");
    let mut a = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe a");
    let mut b = queue.subscribe(&group, std::slice::from_ref(&topic)).await.expect("subscribe b");

    let deadline = Instant::now() + PATIENCE;
    loop {
        a.poll(10, Duration::from_millis(100)).await.expect("poll a");
        b.poll(10, Duration::from_millis(100)).await.expect("poll b");
        let (pa, pb) = (a.assignment(), b.assignment());
        let union: BTreeSet<_> = pa.iter().chain(pb.iter()).cloned().collect();
        if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4 && union.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "members never split the partitions: {pa:?} / {pb:?}");
    }

    a.close().await.expect("close a");
    for i in 0..40u8 {
        queue.produce(&topic, &format!("room:{i}"), &[i]).await.expect("produce");
    }
    let records = drain(b.as_mut(), 40).await;
    assert_eq!(b.assignment().len(), 4, "the remaining member owns every partition");
    let values: BTreeSet<u8> = records.iter().map(|r| r.value[0]).collect();
    assert_eq!(values.len(), 40);
}

/// A topic's partition count is fixed once created.
pub async fn partition_count_is_fixed(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-fixed");
    queue.ensure_topic(&topic, 3).await.expect("create topic");
    queue.ensure_topic(&topic, 3).await.expect("same count is fine");
    assert!(queue.ensure_topic(&topic, 5).await.is_err(), "a different count must be refused");
    assert_eq!(queue.partitions(&topic).await.expect("partitions"), 3);
    assert!(queue.produce(&format!("{prefix}-missing"), "k", b"v").await.is_err(), "unknown topic");
}

/// The lag reports each owned partition, and falls to zero once every record
/// is consumed.
pub async fn lag_reaches_zero_once_consumed(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-lag");
    queue.ensure_topic(&topic, 2).await.expect("create topic");
    for i in 0..10u8 {
        queue.produce(&topic, &format!("room:{i}"), &[i]).await.expect("produce");
    }
    let mut consumer = queue.subscribe(&format!("{prefix}-g"), std::slice::from_ref(&topic)).await.expect("subscribe");
    drain(consumer.as_mut(), 10).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Polling serves the backends' refreshes; nothing is left to consume.
        assert!(consumer.poll(10, Duration::from_millis(100)).await.expect("poll").is_empty(), "no new records");
        let lag = consumer.lag();
        let partitions: BTreeSet<u32> = lag.iter().map(|((_, p), _)| *p).collect();
        if partitions.len() == 2 && lag.iter().all(|(tp, records)| tp.0 == topic && *records == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag never settled at zero for both partitions: {lag:?}");
    }
    consumer.close().await.expect("close");
}

/// A paused partition hands out nothing while the member's other partitions
/// go on, and once resumed hands out what it held, in order, after the
/// records handed out before the pause.
pub async fn a_paused_partition_waits_while_others_flow(queue: &dyn Queue, prefix: &str) {
    let topic = format!("{prefix}-pause");
    queue.ensure_topic(&topic, 2).await.expect("create topic");
    let held = "room:held".to_owned();
    let flowing = (0..100)
        .map(|i| format!("room:{i}"))
        .find(|key| partition_for(key, 2) != partition_for(&held, 2))
        .expect("a key in the other partition");
    let paused = partition_for(&held, 2);
    let mut consumer = queue.subscribe(&format!("{prefix}-g"), std::slice::from_ref(&topic)).await.expect("subscribe");
    for i in 0..5u8 {
        queue.produce(&topic, &held, &[i]).await.expect("produce");
        queue.produce(&topic, &flowing, &[i]).await.expect("produce");
    }
    drain(consumer.as_mut(), 10).await;

    consumer.pause(&topic, paused).expect("pause");
    // The paused partition's records go first, so a pause that did nothing
    // would hand them out no later than the other partition's.
    for i in 5..10u8 {
        queue.produce(&topic, &held, &[i]).await.expect("produce");
    }
    for i in 5..10u8 {
        queue.produce(&topic, &flowing, &[i]).await.expect("produce");
    }
    // One record a poll, so a backend that takes turns between partitions
    // would get to the paused one before the other's five are in.
    let deadline = Instant::now() + PATIENCE;
    let mut while_paused = Vec::new();
    while while_paused.iter().filter(|r: &&Record| r.partition != paused).count() < 5 {
        assert!(Instant::now() < deadline, "the other partition stopped too: {} records", while_paused.len());
        while_paused.extend(consumer.poll(1, Duration::from_millis(200)).await.expect("poll"));
    }
    assert!(
        while_paused.iter().all(|r| r.partition != paused),
        "the paused partition handed out {:?}",
        while_paused.iter().filter(|r| r.partition == paused).map(|r| r.value[0]).collect::<Vec<_>>()
    );
    assert_eq!(while_paused.iter().map(|r| r.value[0]).collect::<Vec<_>>(), [5, 6, 7, 8, 9]);

    consumer.resume(&topic, paused).expect("resume");
    let resumed = drain(consumer.as_mut(), 5).await;
    assert!(resumed.iter().all(|r| r.partition == paused));
    assert_eq!(resumed.iter().map(|r| r.value[0]).collect::<Vec<_>>(), [5, 6, 7, 8, 9], "what it held, in order");
    consumer.close().await.expect("close");
}
