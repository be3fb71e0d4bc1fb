//! `courier replay` on a standalone data directory: exports compared with
//! exactly what was sent, and a history wiped and rebuilt from the embedded
//! queue answering the history API as before, epochs included. The same
//! checks run on Kafka in `tests/cluster.rs`.

mod common;

use std::process::Stdio;
use std::sync::Arc;

use common::replay;
use courier::standalone::{Standalone, StandaloneConfig};
use courier_model::topics;
use courier_queue::sqlite::SqliteTopicReader;
use courier_store::sqlite::SqliteStore;

async fn start(data: &std::path::Path) -> Standalone {
    let mut config = StandaloneConfig::ephemeral(data.to_owned());
    config.demo_users = false;
    Standalone::start(config).await.expect("standalone starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_rebuild_on_a_standalone_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let courier = start(&data).await;
    let mut traffic = replay::send_traffic(courier.addresses.api, "rp", [11, 12]).await;
    replay::await_persisted(courier.addresses.api, &traffic).await;

    // Exports read beside the running standalone.
    let reader = SqliteTopicReader::open(&data.join("queue.sqlite")).await.expect("reader");
    let before = replay::history(courier.addresses.api, &traffic).await;
    replay::exports_match_what_was_sent(&reader, &traffic, &before, (topics::ROOM, topics::PRIVATE)).await;
    courier.stop().await;

    // The history is lost; users and the queue are not.
    let database = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("courier.sqlite").display()))
        .await
        .expect("open the database");
    for table in ["history", "streams"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&database)
            .await
            .expect("wipe history");
    }
    database.close().await;
    let store = Arc::new(SqliteStore::open(&data.join("courier.sqlite")).await.expect("store"));
    let summary = replay::rebuild(&reader, store.clone(), (topics::ROOM, topics::PRIVATE)).await;
    let entries = traffic.sent.iter().map(|s| if s.to.is_some() { 2 } else { 1 }).sum::<u64>();
    assert_eq!(summary.entries_added, Some(entries), "every room entry and both inbox copies: {summary:?}");
    assert!(summary.new_epochs.is_empty(), "the queue holds every stream's beginning");

    let courier = start(&data).await;
    replay::log_in_again(courier.addresses.api, &mut traffic).await;
    let after = replay::history(courier.addresses.api, &traffic).await;
    assert_eq!(after, before, "the history API answers as before: same epochs, seqs, ids and bodies");

    let again = replay::rebuild(&reader, store, (topics::ROOM, topics::PRIVATE)).await;
    assert_eq!(again.entries_added, Some(0), "rebuilding what the store holds changes nothing");
    courier.stop().await;
}

/// The `courier` binary on the embedded backends, whatever services the
/// test run has in its environment.
fn courier() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
    for var in ["COURIER_KAFKA", "COURIER_POSTGRES", "COURIER_REDIS"] {
        command.env_remove(var);
    }
    command
}

/// `courier replay` itself: a bad argument is refused with a reason and a
/// non-zero exit before anything is read or written.
#[tokio::test]
async fn bad_arguments_are_refused_before_anything_is_read() {
    let (dir, data, _queue) = queue_with_topics().await;
    let run = |args: &[&str]| {
        let mut command = courier();
        command.args(["replay", "export", "--quiet", "--data-dir"]).arg(&data).args(args);
        command.stdin(Stdio::null()).output().expect("courier runs")
    };
    for (args, says) in [
        (&["--room", "abc"][..], "invalid value 'abc'"),
        (&["--topic", "room", "--user", "3"], "--user selects private messages"),
        (&["--since", "2026-11-30T00:00:00Z", "--until", "2026-11-29T00:00:00Z"], "is after --until"),
        (&["--topic", "room", "--from-offset", "99:0"], "there is no partition 99"),
        (&["--topic", "room", "--from-offset", "0:5"], "5 is outside"),
        (&["--room-topic", "no-such-topic"], "does not exist"),
        (&["--since", "yesterday"], "neither RFC 3339"),
    ] {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing exported");
    }
    let missing = courier()
        .args(["replay", "rebuild", "--data-dir"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .expect("courier runs");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no queue to read"));
    assert!(!dir.path().join("nothing-here").exists(), "replay creates no data directory");
}

/// A data directory holding an embedded queue with Courier's two topics.
async fn queue_with_topics() -> (tempfile::TempDir, std::path::PathBuf, courier_queue::sqlite::SqliteQueue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data directory");
    let options = courier_queue::sqlite::SqliteQueueOptions::default();
    let queue = courier_queue::sqlite::SqliteQueue::open(&data.join("queue.sqlite"), options).await.expect("queue");
    for topic in [topics::ROOM, topics::PRIVATE] {
        courier_queue::Queue::ensure_topic(&queue, topic, 8).await.expect("topic");
    }
    (dir, data, queue)
}

/// A message record as logic writes it.
fn record(msg_id: u64, room: u64, body: &str) -> Vec<u8> {
    courier_model::Message {
        msg_id,
        kind: courier_model::MessageKind::Room,
        room_id: room,
        from_user_id: 1,
        from_user_name: "ann".into(),
        to_user_id: 0,
        to_user_name: String::new(),
        body: body.into(),
        admitted_us: courier_ids::now_unix_us(),
        client_msg_id: String::new(),
        inboxes: courier_model::Inboxes::Recipient,
    }
    .into_record()
}

/// A record that is not a message is reported with where it is and skipped,
/// or fails the export with `--strict`; `--follow` goes on with records
/// appended after it started, until stopped.
#[tokio::test]
async fn undecodable_records_are_reported_and_follow_passes_new_records_on() {
    use courier_queue::Queue as _;

    let (_dir, data, queue) = queue_with_topics().await;
    queue.produce(topics::ROOM, "room:3", &record(1, 3, "before")).await.expect("produce");
    let garbage = queue.produce(topics::ROOM, "room:3", b"\xff\xfe not a record").await.expect("produce");
    queue.produce(topics::ROOM, "room:3", &record(2, 3, "after")).await.expect("produce");

    let export = |strict: bool| {
        let mut command = courier();
        command.args(["replay", "export", "--room", "3", "--data-dir"]).arg(&data);
        if strict {
            command.arg("--strict");
        }
        command.output().expect("courier runs")
    };
    let lenient = export(false);
    assert!(lenient.status.success(), "{}", String::from_utf8_lossy(&lenient.stderr));
    let bodies: Vec<String> = String::from_utf8_lossy(&lenient.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["body"].as_str().expect("body").to_owned())
        .collect();
    assert_eq!(bodies, ["before", "after"], "the bad record is skipped, nothing else");
    let said = String::from_utf8_lossy(&lenient.stderr);
    let place = format!("partition {} offset {}", garbage.partition, garbage.offset);
    assert!(said.contains(&place) && said.contains("1 undecodable"), "{said}");
    let strict = export(true);
    assert!(!strict.status.success(), "--strict fails");
    assert!(String::from_utf8_lossy(&strict.stderr).contains(&place), "{}", String::from_utf8_lossy(&strict.stderr));

    // Following: what is there, then what comes.
    let reader = SqliteTopicReader::open(&data.join("queue.sqlite")).await.expect("reader");
    let selection =
        courier_replay::Selection { room: Some(3), follow: true, ..courier_replay::Selection::everything() };
    let plan = courier_replay::plan(&reader, &selection).await.expect("plan");
    let out = SharedBuffer::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let following = tokio::spawn({
        let (mut out, stop) = (out.clone(), stop.clone());
        async move {
            let progress = courier_replay::report::Progress::hidden();
            courier_replay::export::export(&reader, &plan, &mut out, progress, stop).await.expect("export")
        }
    });
    eventually_lines(&out, 2).await;
    queue.produce(topics::ROOM, "room:3", &record(3, 3, "later")).await.expect("produce");
    let lines = eventually_lines(&out, 3).await;
    assert!(lines[2].contains("\"later\""), "{lines:?}");
    stop.cancel();
    let summary = following.await.expect("the export ends when stopped");
    assert_eq!(summary.topics[topics::ROOM].written, 3);
}

/// Bytes written by an export running in another task.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `out` holds `n` whole lines, and returns them.
async fn eventually_lines(out: &SharedBuffer, n: usize) -> Vec<String> {
    courier_testkit::eventually(&format!("{n} exported lines"), common::PATIENCE, || async {
        let text = String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= n && text.ends_with('\n')).then_some(lines)
    })
    .await
}
