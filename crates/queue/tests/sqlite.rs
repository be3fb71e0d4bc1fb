//! The queue conformance tests against the embedded SQLite queue.

use std::time::Duration;

use courier_queue::conformance;
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions};

async fn open(dir: &tempfile::TempDir) -> SqliteQueue {
    let options = SqliteQueueOptions {
        session_timeout: Duration::from_millis(1500),
        heartbeat_interval: Duration::from_millis(100),
        ..SqliteQueueOptions::default()
    };
    SqliteQueue::open(&dir.path().join("queue.sqlite"), options).await.expect("open queue")
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
