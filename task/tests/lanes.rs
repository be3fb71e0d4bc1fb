//! Partitions are processed in parallel inside one task worker: a partition
//! whose writes are stuck holds back only its own records, and its records are
//! persisted, in order, once the store answers again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_proto::record::{MessageKind, MessageRecord};
use courier_push::{Pusher, PusherOptions};
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions};
use courier_queue::{Queue, partition_for};
use courier_store::sqlite::SqliteStore;
use courier_store::{DeadLetter, HistoryStore, Message, Page, Position, Result, StoredMessage, StreamId, StreamInfo};
use courier_task::{TaskBackends, TaskConfig};
use courier_telemetry::{Metrics, Readiness};
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the test store does to an append before the embedded store sees it.
enum Interference {
    /// Appends touching this room wait for a permit of the gate.
    Gate(Arc<Semaphore>, u64),
    /// Appends holding a message with this body are refused, as PostgreSQL
    /// refuses a NUL.
    Refuse(&'static str),
}

/// The embedded store, with one kind of interference.
struct TestStore {
    inner: SqliteStore,
    interference: Interference,
}

#[async_trait]
impl HistoryStore for TestStore {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        match &self.interference {
            Interference::Gate(gate, room) if batch.iter().any(|m| m.room_id == *room) => {
                let _permit = gate.acquire().await;
                self.inner.append(batch).await
            }
            Interference::Refuse(body) if batch.iter().any(|m| m.body == *body) => {
                Err(courier_store::Error::Corrupt("the store cannot keep this text".into()))
            }
            _ => self.inner.append(batch).await,
        }
    }
    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        self.inner.read(stream, peer, page, limit).await
    }
    async fn stream_info(&self, stream: StreamId) -> Result<Option<StreamInfo>> {
        self.inner.stream_info(stream).await
    }
    async fn set_aside(&self, letter: &DeadLetter) -> Result<()> {
        self.inner.set_aside(letter).await
    }
    async fn dead_letters(&self, topic: &str, limit: u32) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(topic, limit).await
    }
}

fn record(msg_id: u64, room_id: u64) -> Vec<u8> {
    record_with_body(msg_id, room_id, &format!("message {msg_id}"))
}

fn record_with_body(msg_id: u64, room_id: u64, body: &str) -> Vec<u8> {
    MessageRecord {
        version: 1,
        msg_id,
        kind: MessageKind::Room as i32,
        room_id,
        from_user_id: 1,
        from_user_name: "alice".into(),
        body: body.into(),
        admitted_us: 1_000,
        ..MessageRecord::default()
    }
    .encode_to_vec()
}

/// A task worker over `queue` and `history` with no connect node to push to.
async fn start_task(
    config: TaskConfig,
    queue: SqliteQueue,
    history: Arc<dyn HistoryStore>,
    shutdown: &CancellationToken,
) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let nodes = courier_discovery::fixed(Vec::new());
    let pusher = Pusher::start(nodes, metrics.clone(), PusherOptions::default(), shutdown.clone());
    let backends = TaskBackends { queue: Arc::new(queue), history, pusher, metrics: metrics.clone() };
    let ready = Readiness::default().flag("task");
    (tokio::spawn(courier_task::run(config, backends, ready, shutdown.clone())), metrics)
}

/// An embedded queue in `dir` with the room topic `config` names.
async fn room_queue(dir: &std::path::Path, config: &TaskConfig) -> SqliteQueue {
    let queue = SqliteQueue::open(&dir.join("queue.sqlite"), SqliteQueueOptions::default()).await.expect("queue");
    queue.ensure_topic(&config.room_topic, config.partitions).await.expect("topic");
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_holds_back_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One record per poll: the stuck room's twenty batches are more than its
    // lane's queue holds, so the dispatcher must set them aside rather than
    // wait for room.
    let config = TaskConfig { partitions: 8, max_batch: 1, ..TaskConfig::default() };
    let queue = room_queue(dir.path(), &config).await;
    let stuck = 1;
    let free = (2..100)
        .find(|r| partition_for(&format!("room:{r}"), 8) != partition_for("room:1", 8))
        .expect("a room in another partition");
    let gate = Arc::new(Semaphore::new(0));
    let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("store");
    let history = Arc::new(TestStore { inner: store, interference: Interference::Gate(gate.clone(), stuck) });

    // The stuck room's records come first in the log.
    for i in 0..20 {
        queue.produce(&config.room_topic, "room:1", &record(1000 + i, stuck)).await.expect("produce");
    }
    for i in 0..20 {
        queue.produce(&config.room_topic, &format!("room:{free}"), &record(2000 + i, free)).await.expect("produce");
    }

    let shutdown = CancellationToken::new();
    let (worker, _) = start_task(config, queue, history.clone(), &shutdown).await;

    let patience = Duration::from_secs(20);
    let free_stream = StreamId::Room(free);
    courier_testkit::eventually("the free room's records are persisted", patience, || async {
        let info = history.stream_info(free_stream).await.expect("stream info");
        info.filter(|i| i.last_seq == 20)
    })
    .await;
    assert!(
        history.stream_info(StreamId::Room(1)).await.expect("stream info").is_none(),
        "the stuck room is still waiting"
    );

    gate.add_permits(1_000);
    courier_testkit::eventually("the stuck room's records are persisted", patience, || async {
        let info = history.stream_info(StreamId::Room(1)).await.expect("stream info");
        info.filter(|i| i.last_seq == 20)
    })
    .await;
    let stored = history.read_after(StreamId::Room(1), 0, 100).await.expect("read");
    let ids: Vec<u64> = stored.iter().map(|m| m.message.msg_id).collect();
    assert_eq!(ids, (1000..1020).collect::<Vec<_>>(), "in log order, each once");

    shutdown.cancel();
    worker.await.expect("task worker ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_store_refuses_or_cannot_read_is_set_aside_and_its_partition_moves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TaskConfig { partitions: 2, ..TaskConfig::default() };
    let queue = room_queue(dir.path(), &config).await;
    let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("store");
    let history = Arc::new(TestStore { inner: store, interference: Interference::Refuse("poison") });

    // One room, so one partition: a good record, a poison one, garbage, then more good ones.
    let topic = config.room_topic.clone();
    queue.produce(&topic, "room:7", &record(1, 7)).await.expect("produce");
    let poison = queue.produce(&topic, "room:7", &record_with_body(2, 7, "poison")).await.expect("produce");
    let garbage = queue.produce(&topic, "room:7", &[0xff, 0xff, 0xff]).await.expect("produce");
    for id in 3..=5 {
        queue.produce(&topic, "room:7", &record(id, 7)).await.expect("produce");
    }

    let shutdown = CancellationToken::new();
    let (worker, metrics) = start_task(config, queue, history.clone(), &shutdown).await;
    courier_testkit::eventually("the records after the bad ones are persisted", Duration::from_secs(30), || async {
        history.stream_info(StreamId::Room(7)).await.expect("stream info").filter(|i| i.last_seq == 4)
    })
    .await;
    let stored = history.read_after(StreamId::Room(7), 0, 100).await.expect("read");
    let ids: Vec<u64> = stored.iter().map(|m| m.message.msg_id).collect();
    assert_eq!(ids, vec![1, 3, 4, 5], "every good record, in log order");

    let letters = history.dead_letters(&topic, 10).await.expect("dead letters");
    let places: Vec<(u32, u64)> = letters.iter().map(|l| (l.partition, l.offset)).collect();
    assert_eq!(places, vec![(poison.partition, poison.offset), (garbage.partition, garbage.offset)]);
    assert_eq!(letters[0].value, record_with_body(2, 7, "poison"), "the raw record is kept");
    assert!(letters[0].error.contains("cannot keep this text"), "{}", letters[0].error);
    assert!(letters[1].error.contains("undecodable"), "{}", letters[1].error);
    assert_eq!(letters[0].key, b"room:7");
    let text = metrics.encode();
    assert!(text.contains(r#"courier_errors_total{reason="dead_letter"} 2"#), "{text}");

    shutdown.cancel();
    worker.await.expect("task worker ends cleanly");
}
