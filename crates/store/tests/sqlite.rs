//! The store conformance tests against the embedded SQLite store.

use courier_store::conformance;
use courier_store::sqlite::SqliteStore;

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("courier.sqlite")).await.expect("open store")
}

#[tokio::test]
async fn users_are_unique_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::users_are_unique_by_name(&open(&dir).await, "t").await;
}

#[tokio::test]
async fn seqs_are_gap_free_per_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::seqs_are_gap_free_per_stream(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn redelivery_keeps_its_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::redelivery_keeps_its_seq(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn private_message_reaches_both_inboxes() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::private_message_reaches_both_inboxes(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn pages_in_both_directions() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::pages_in_both_directions(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = open(&dir).await;
        courier_store::HistoryStore::append(&store, &[conformance::room_message(1, 1, "kept")]).await.expect("append");
        courier_store::UserStore::create_user(&store, "keeper", "h").await.expect("create")
    };
    let store = open(&dir).await;
    let read =
        courier_store::HistoryStore::read_after(&store, courier_store::StreamId::Room(1), 0, 10).await.expect("read");
    assert_eq!(read.len(), 1);
    assert!(courier_store::UserStore::user_by_id(&store, id).await.expect("lookup").is_some());
}

#[tokio::test]
async fn concurrent_writers_stay_gap_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::concurrent_writers_stay_gap_free(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn conversations_page_by_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::conversations_page_by_peer(&open(&dir).await, 1).await;
}

#[tokio::test]
async fn dead_letters_keep_the_raw_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::dead_letters_keep_the_raw_record(&open(&dir).await, 1).await;
}

/// Task's lanes append at once; their appends are committed together (one
/// writer, group commit), and each lane still gets exactly its own positions,
/// gap-free and in its order.
#[tokio::test]
async fn parallel_lanes_each_get_their_own_positions() {
    use courier_store::HistoryStore as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir).await;
    let lane = |room: u64| {
        let store = store.clone();
        async move {
            let mut seqs = Vec::new();
            for batch in 0..10 {
                let messages: Vec<_> =
                    (0..3).map(|i| conformance::room_message(room * 1_000 + batch * 3 + i + 1, room, "lane")).collect();
                for positions in store.append(&messages).await.expect("append") {
                    assert_eq!(positions.len(), 1, "a room message is one stream's");
                    assert_eq!(positions[0].stream, courier_store::StreamId::Room(room));
                    seqs.push(positions[0].seq);
                }
            }
            seqs
        }
    };
    let lanes = futures_util::future::join_all((100..116).map(lane)).await;
    for (room, seqs) in (100..116).zip(lanes) {
        assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "room {room}'s positions");
        let stored = store.read_after(courier_store::StreamId::Room(room), 0, 100).await.expect("read");
        let ids: Vec<u64> = stored.iter().map(|m| m.message.msg_id).collect();
        assert_eq!(ids, (1..=30).map(|i| room * 1_000 + i).collect::<Vec<_>>(), "room {room} in order");
    }
}
