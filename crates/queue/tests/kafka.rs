//! The queue conformance tests against Apache Kafka (`COURIER_KAFKA`, set by
//! `scripts/services up`). Topic and group names are fresh per run.

use std::time::Duration;

use courier_queue::conformance;
use courier_queue::kafka::{KafkaOptions, KafkaQueue};

fn queue() -> Option<(KafkaQueue, String)> {
    let brokers = courier_testkit::service("COURIER_KAFKA")?;
    let mut options = KafkaOptions::new(brokers);
    // Low timeouts so a departed member's partitions move quickly in the tests.
    options.session_timeout = Duration::from_secs(6);
    options.heartbeat_interval = Duration::from_millis(500);
    options.statistics_interval = Duration::from_millis(200);
    let prefix = format!("t{}", courier_testkit::unique());
    Some((KafkaQueue::connect(options).expect("kafka client"), prefix))
}

#[tokio::test]
async fn keyed_records_keep_order() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::keyed_records_keep_order(&queue, &prefix).await;
}

#[tokio::test]
async fn group_resumes_after_commit() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::group_resumes_after_commit(&queue, &prefix).await;
}

#[tokio::test]
async fn members_split_and_take_over() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::members_split_and_take_over(&queue, &prefix).await;
}

#[tokio::test]
async fn partition_count_is_fixed() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::partition_count_is_fixed(&queue, &prefix).await;
}

#[tokio::test]
async fn lag_reaches_zero_once_consumed() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::lag_reaches_zero_once_consumed(&queue, &prefix).await;
}

#[tokio::test]
async fn a_reader_reads_without_disturbing_groups() {
    let Some((queue, prefix)) = queue() else { return };
    let brokers = courier_testkit::service("COURIER_KAFKA").expect("brokers");
    let reader = courier_queue::kafka::KafkaTopicReader::connect(&brokers).expect("reader");
    conformance::a_reader_reads_without_disturbing_groups(&queue, &reader, &prefix).await;
}
