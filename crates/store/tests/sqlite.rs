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

#[tokio::test]
async fn parallel_lanes_each_get_their_own_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::parallel_lanes_each_get_their_own_positions(&open(&dir).await, 1).await;
}

/// A file written before history became one row per entry is migrated when
/// the store opens it, and keeps every message.
#[tokio::test]
async fn history_survives_the_layout_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("courier.sqlite");
    // The migrations up to the layout before, from a folder of their own.
    let before = tempfile::tempdir().expect("tempdir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/sqlite");
    for name in ["0001_users_and_history.sql", "0002_dead_letters_and_conversations.sql"] {
        std::fs::copy(all.join(name), before.path().join(name)).expect("copy a migration");
    }
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("create the file");
    sqlx::migrate::Migrator::new(before.path()).await.expect("migrations").run(&pool).await.expect("migrate");
    sqlx::raw_sql(conformance::HISTORY_BEFORE_ONE_ROW_PER_ENTRY).execute(&pool).await.expect("old rows");
    pool.close().await;

    let store = SqliteStore::open(&path).await.expect("open and migrate");
    conformance::history_survives_the_layout_change(&store).await;
}
