//! The store conformance tests against PostgreSQL (`COURIER_POSTGRES`, set by
//! `scripts/services up`). Each run uses fresh names and ids, so runs can share
//! one database.

use courier_store::conformance;
use courier_store::postgres::PgStore;

async fn store() -> Option<PgStore> {
    let url = courier_testkit::service("COURIER_POSTGRES")?;
    Some(PgStore::connect(&url).await.expect("connect to PostgreSQL"))
}

#[tokio::test]
async fn users_are_unique_by_name() {
    let Some(store) = store().await else { return };
    conformance::users_are_unique_by_name(&store, &format!("t{}", courier_testkit::unique())).await;
}

#[tokio::test]
async fn seqs_are_gap_free_per_stream() {
    let Some(store) = store().await else { return };
    conformance::seqs_are_gap_free_per_stream(&store, courier_testkit::unique()).await;
}

#[tokio::test]
async fn redelivery_keeps_its_seq() {
    let Some(store) = store().await else { return };
    conformance::redelivery_keeps_its_seq(&store, courier_testkit::unique() + 1).await;
}

#[tokio::test]
async fn private_message_reaches_both_inboxes() {
    let Some(store) = store().await else { return };
    conformance::private_message_reaches_both_inboxes(&store, courier_testkit::unique() + 2).await;
}

#[tokio::test]
async fn pages_in_both_directions() {
    let Some(store) = store().await else { return };
    conformance::pages_in_both_directions(&store, courier_testkit::unique() + 3).await;
}

#[tokio::test]
async fn concurrent_writers_stay_gap_free() {
    let Some(store) = store().await else { return };
    conformance::concurrent_writers_stay_gap_free(&store, courier_testkit::unique() + 4).await;
}

#[tokio::test]
async fn conversations_page_by_peer() {
    let Some(store) = store().await else { return };
    conformance::conversations_page_by_peer(&store, courier_testkit::unique() + 5).await;
}

#[tokio::test]
async fn dead_letters_keep_the_raw_record() {
    let Some(store) = store().await else { return };
    conformance::dead_letters_keep_the_raw_record(&store, courier_testkit::unique() + 6).await;
}

#[tokio::test]
async fn parallel_lanes_each_get_their_own_positions() {
    let Some(store) = store().await else { return };
    conformance::parallel_lanes_each_get_their_own_positions(&store, courier_testkit::unique() + 7).await;
}

/// A database written before history became one row per entry is migrated
/// when the store connects, and keeps every message. Runs in a database of
/// its own, made for it and dropped after.
#[tokio::test]
async fn history_survives_the_layout_change() {
    let Some(url) = courier_testkit::service("COURIER_POSTGRES") else { return };
    let admin = sqlx::PgPool::connect(&url).await.expect("connect to PostgreSQL");
    let name = format!("courier_layout_{}", courier_testkit::unique());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create db");
    let (base, _) = url.rsplit_once('/').expect("the URL names a database");
    let db_url = format!("{base}/{name}");

    let before = tempfile::tempdir().expect("tempdir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/postgres");
    for name in
        ["0001_users_and_history.sql", "0002_dead_letters_and_conversations.sql", "0003_stream_keys_in_byte_order.sql"]
    {
        std::fs::copy(all.join(name), before.path().join(name)).expect("copy a migration");
    }
    let pool = sqlx::PgPool::connect(&db_url).await.expect("connect to the new database");
    sqlx::migrate::Migrator::new(before.path()).await.expect("migrations").run(&pool).await.expect("migrate");
    sqlx::raw_sql(conformance::HISTORY_BEFORE_ONE_ROW_PER_ENTRY).execute(&pool).await.expect("old rows");
    pool.close().await;

    let store = PgStore::connect(&db_url).await.expect("connect and migrate");
    conformance::history_survives_the_layout_change(&store).await;
    drop(store);
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&admin).await;
}

/// The two copies of a private message are appended by two lanes (the
/// recipient's partition and the sender's). While the recipient's lane holds
/// its transaction open — stuck on a slow disk, say — the sender's copy is
/// appended and committed: the lanes share no row and no key.
#[tokio::test]
async fn a_private_message_s_copies_never_wait_for_each_other() {
    use courier_store::{HistoryStore, Inboxes, Message, StreamId};
    let Some(url) = courier_testkit::service("COURIER_POSTGRES") else { return };
    let store = PgStore::connect(&url).await.expect("connect to PostgreSQL");
    let prefix = courier_testkit::unique() + 8;
    let (ann, bob) = (prefix * 1000 + 1, prefix * 1000 + 2);
    let message =
        Message { inboxes: Inboxes::Recipient, ..conformance::private_message(prefix * 1_000_000, ann, bob, "hi") };
    let [to_bob, copy]: [Message; 2] = message.records().try_into().expect("two records");

    // The recipient's lane, mid-append: its head locked and its row written,
    // not committed.
    let stuck = sqlx::PgPool::connect(&url).await.expect("connect");
    let mut lane = stuck.begin().await.expect("begin");
    sqlx::query("INSERT INTO streams (stream, epoch, last_seq) VALUES ($1, 'e', 1)")
        .bind(StreamId::Inbox(bob).to_string())
        .execute(&mut *lane)
        .await
        .expect("lock bob's head");
    sqlx::query(
        "INSERT INTO history (stream, seq, msg_id, peer_user_id, kind, room_id, from_user_id, from_user_name,
            to_user_id, to_user_name, body, admitted_ms, client_msg_id)
         VALUES ($1, 1, $2, $3, 2, 0, $3, 'ann', $4, 'bob', 'hi', 0, '')",
    )
    .bind(StreamId::Inbox(bob).to_string())
    .bind(to_bob.msg_id as i64)
    .bind(ann as i64)
    .bind(bob as i64)
    .execute(&mut *lane)
    .await
    .expect("write bob's copy");

    // Bounded only so that a regression fails instead of hanging the suite.
    let appended = tokio::time::timeout(std::time::Duration::from_secs(60), store.append(std::slice::from_ref(&copy)))
        .await
        .expect("the sender's copy must not wait for the recipient's lane")
        .expect("append");
    assert_eq!((appended[0][0].stream, appended[0][0].seq), (StreamId::Inbox(ann), 1));
    lane.rollback().await.expect("the stuck lane gives up");
    let read = store.read_after(StreamId::Inbox(ann), 0, 10).await.expect("read");
    assert_eq!(read.iter().map(|m| m.message.msg_id).collect::<Vec<_>>(), [copy.msg_id]);
}
