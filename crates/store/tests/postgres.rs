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
