//! The queue conformance tests against the embedded SQLite queue.

use std::time::Duration;

use courier_queue::conformance;
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions, SqliteTopicReader};
use courier_queue::{Bounds, TopicReader as _};

/// The queue in `dir`, with `options`.
async fn open_with(dir: &tempfile::TempDir, options: SqliteQueueOptions) -> SqliteQueue {
    SqliteQueue::open(&dir.path().join("queue.sqlite"), options).await.expect("open queue")
}

/// A queue whose group members come and go quickly.
async fn open(dir: &tempfile::TempDir) -> SqliteQueue {
    let fast = Duration::from_millis(100);
    open_with(dir, SqliteQueueOptions { session_timeout: fast * 15, heartbeat_interval: fast, ..Default::default() })
        .await
}

#[tokio::test]
async fn keyed_records_keep_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::keyed_records_keep_order(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn group_resumes_after_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::group_resumes_after_commit(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn members_split_and_take_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::members_split_and_take_over(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn partition_count_is_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::partition_count_is_fixed(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn acknowledged_records_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let queue = open(&dir).await;
        courier_queue::Queue::ensure_topic(&queue, "durable", 2).await.expect("topic");
        for i in 0..5u8 {
            courier_queue::Queue::produce(&queue, "durable", "user:7", &[i]).await.expect("produce");
        }
    }
    let queue = open(&dir).await;
    let mut consumer = courier_queue::Queue::subscribe(&queue, "g", &["durable".to_string()]).await.expect("subscribe");
    let values: Vec<u8> = conformance::drain(consumer.as_mut(), 5).await.iter().map(|r| r.value[0]).collect();
    assert_eq!(values, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn lag_reaches_zero_once_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::lag_reaches_zero_once_consumed(&open(&dir).await, "t").await;
}

/// With a heartbeat on every poll, the lag a poll reports is what the previous
/// poll left behind.
#[tokio::test]
async fn lag_counts_the_records_not_yet_handed_out() {
    use courier_queue::Queue as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteQueueOptions { heartbeat_interval: Duration::ZERO, ..SqliteQueueOptions::default() };
    let queue = SqliteQueue::open(&dir.path().join("queue.sqlite"), options).await.expect("open queue");
    queue.ensure_topic("lag", 1).await.expect("topic");
    for i in 0..10u8 {
        queue.produce("lag", "k", &[i]).await.expect("produce");
    }
    let mut consumer = queue.subscribe("g", &["lag".to_owned()]).await.expect("subscribe");
    assert_eq!(consumer.poll(4, Duration::from_secs(5)).await.expect("poll").len(), 4);
    assert_eq!(consumer.lag(), vec![(("lag".to_owned(), 0), 10)], "measured before the first read");
    assert_eq!(consumer.poll(1, Duration::from_secs(5)).await.expect("poll").len(), 1);
    assert_eq!(consumer.lag(), vec![(("lag".to_owned(), 0), 6)]);
}

/// A queue whose retention is driven by the test (`enforce_retention`).
/// A queue with a retention, applied only when a test asks.
async fn open_with_retention(dir: &tempfile::TempDir, retention: Duration, bytes: u64) -> SqliteQueue {
    let hourly = Duration::from_secs(3600);
    open_with(
        dir,
        SqliteQueueOptions { retention, retention_bytes: bytes, retention_interval: hourly, ..Default::default() },
    )
    .await
}

#[tokio::test]
async fn retention_deletes_only_what_every_group_committed() {
    use courier_queue::Queue as _;
    let dir = tempfile::tempdir().expect("tempdir");
    // Every record is "old" at once.
    let queue = open_with_retention(&dir, Duration::ZERO, 0).await;
    queue.ensure_topic("t", 1).await.expect("topic");
    for i in 0..10u8 {
        queue.produce("t", "k", &[i]).await.expect("produce");
    }
    assert_eq!(queue.enforce_retention().await.expect("retention"), 0, "nothing committed, nothing deleted");
    let mut consumer = queue.subscribe("g", &["t".to_owned()]).await.expect("subscribe");
    consumer.commit("t", 0, 5).await.expect("commit");
    assert_eq!(queue.enforce_retention().await.expect("retention"), 6);
    let reader = SqliteTopicReader::open(&dir.path().join("queue.sqlite")).await.expect("reader");
    let left = |from: u64| {
        let reader = reader.clone();
        async move {
            let mut cursor = reader.cursor("t", 0, from).await.expect("cursor");
            cursor.next(100, Duration::ZERO).await.expect("read").iter().map(|r| r.offset).collect::<Vec<u64>>()
        }
    };
    assert_eq!(left(0).await, (6..10).collect::<Vec<_>>(), "uncommitted records stay");
    assert_eq!(reader.bounds("t", 0).await.expect("bounds"), Bounds { first: 6, end: 10 });

    consumer.commit("t", 0, 9).await.expect("commit");
    queue.enforce_retention().await.expect("retention");
    assert_eq!(left(0).await, vec![9], "the newest record stays: it carries the next offset");
    assert_eq!(reader.bounds("t", 0).await.expect("bounds"), Bounds { first: 9, end: 10 });
    let next = queue.produce("t", "k", b"after").await.expect("produce");
    assert_eq!(next.offset, 10, "offsets go on, never reused");
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_bytes_and_the_file_stops_growing() {
    use courier_queue::Queue as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open_with_retention(&dir, Duration::from_secs(3600), 256 * 1024).await;
    queue.ensure_topic("t", 1).await.expect("topic");
    let mut consumer = queue.subscribe("g", &["t".to_owned()]).await.expect("subscribe");
    let reader = SqliteTopicReader::open(&dir.path().join("queue.sqlite")).await.expect("reader");
    let files = || {
        std::fs::read_dir(dir.path()).expect("data dir").filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
    };
    let value = vec![7u8; 1000];
    let mut sizes: Vec<u64> = Vec::new();
    for round in 0..8u64 {
        // A steady rate: 1,000 records a round, each committed once handled.
        let mut last = 0;
        for _ in 0..1_000 {
            last = queue.produce("t", "key", &value).await.expect("produce").offset;
        }
        consumer.commit("t", 0, last).await.expect("commit");
        queue.enforce_retention().await.expect("retention");
        let held = reader.bounds("t", 0).await.expect("bounds");
        // Offsets are gap-free here: every record held is `key` and `value`.
        let kept = (held.end - held.first) * (value.len() + 3) as u64;
        assert!(kept <= 256 * 1024 + 1003, "round {round}: {kept} bytes kept");
        sizes.push(files());
    }
    // After the first rounds fill the retained size, the files stay flat.
    assert!(sizes[7] <= sizes[2] + sizes[2] / 4, "data files grew: {sizes:?}");
}

#[tokio::test]
async fn a_reader_reads_without_disturbing_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir).await;
    let reader = SqliteTopicReader::open(&dir.path().join("queue.sqlite")).await.expect("reader");
    conformance::a_reader_reads_without_disturbing_groups(&queue, &reader, "t").await;
    let missing = SqliteTopicReader::open(&dir.path().join("nothing-here.sqlite")).await;
    assert!(missing.is_err(), "a reader never creates a queue");
}

#[tokio::test]
async fn concurrent_producers_get_their_own_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::concurrent_producers_get_their_own_offsets(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn a_paused_partition_waits_while_others_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::a_paused_partition_waits_while_others_flow(&open(&dir).await, "t").await;
}
