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

#[tokio::test]
async fn topics_are_created_with_the_configured_durability() {
    use courier_queue::Queue as _;
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let Some(brokers) = courier_testkit::service("COURIER_KAFKA") else { return };
    let mut options = KafkaOptions::new(brokers.clone());
    // One broker here: replication 1, and min.insync.replicas 1 set
    // explicitly (the broker's default is also 1, so read back the source).
    options.min_insync_replicas = Some(1);
    options.retention = Duration::from_secs(3_600);
    let queue = KafkaQueue::connect(options).expect("kafka client");
    let topic = format!("t{}-durable", courier_testkit::unique());
    queue.ensure_topic(&topic, 3).await.expect("topic");
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin");
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("describe")
        .pop()
        .expect("one resource")
        .expect("the topic's configuration");
    let entry = |name: &str| described.get(name).unwrap_or_else(|| panic!("{name} is described"));
    let min_insync = entry("min.insync.replicas");
    assert_eq!(min_insync.value.as_deref(), Some("1"));
    assert!(!min_insync.is_default, "set on the topic, not inherited: {:?}", min_insync.source);
    assert_eq!(entry("retention.ms").value.as_deref(), Some("3600000"));
    assert_eq!(queue.partitions(&topic).await.expect("partitions"), 3);
}

#[tokio::test]
async fn concurrent_producers_get_their_own_offsets() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::concurrent_producers_get_their_own_offsets(&queue, &prefix).await;
}

#[tokio::test]
async fn a_paused_partition_waits_while_others_flow() {
    let Some((queue, prefix)) = queue() else { return };
    conformance::a_paused_partition_waits_while_others_flow(&queue, &prefix).await;
}
