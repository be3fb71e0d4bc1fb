//! The sessions and presence conformance tests against the in-process backends.

use courier_presence::conformance;
use courier_presence::memory::{MemoryPresence, MemorySessions, SessionPolicy};

#[tokio::test]
async fn device_cap_revokes_the_oldest_token() {
    let sessions = MemorySessions::new(SessionPolicy { max_devices: 2, ..SessionPolicy::default() });
    conformance::device_cap_revokes_the_oldest_token(&sessions, 0).await;
}

#[tokio::test]
async fn presence_counts_users_not_tabs() {
    conformance::presence_counts_users_not_tabs(&MemoryPresence::default(), 0).await;
}

#[tokio::test]
async fn expired_tokens_are_invalid() {
    let sessions = MemorySessions::new(SessionPolicy { ttl: std::time::Duration::ZERO, max_devices: 1 });
    let s = courier_presence::Sessions::create(
        &sessions,
        courier_presence::SessionUser { user_id: 1, user_name: "a".into() },
    )
    .await
    .expect("create");
    assert_eq!(courier_presence::Sessions::get(&sessions, &s.token).await.expect("get"), None);
    assert_eq!(courier_presence::Sessions::active(&sessions).await.expect("active"), 0, "expired is not active");
}

#[tokio::test]
async fn claims_in_a_session_need_it_live() {
    let sessions = MemorySessions::new(SessionPolicy::default());
    let ids = courier_presence::memory::MemoryClientMsgIds::new(std::time::Duration::from_secs(600));
    conformance::claims_in_a_session_need_it_live(&sessions, &ids, 0).await;
}

#[tokio::test]
async fn client_msg_ids_return_the_first_claim() {
    let ids = courier_presence::memory::MemoryClientMsgIds::new(std::time::Duration::from_secs(600));
    conformance::client_msg_ids_return_the_first_claim(&ids, 0).await;
}

#[tokio::test]
async fn node_leases_lapse_until_reaped() {
    conformance::node_leases_lapse_until_reaped(&MemoryPresence::default(), 0).await;
}

#[tokio::test]
async fn reaps_spare_nodes_that_came_back() {
    conformance::reaps_spare_nodes_that_came_back(&MemoryPresence::default(), 0).await;
}

#[tokio::test]
async fn routes_follow_connections() {
    conformance::routes_follow_connections(&MemoryPresence::default(), 0).await;
}

#[tokio::test]
async fn a_big_node_is_dropped_whole() {
    conformance::a_big_node_is_dropped_whole(&MemoryPresence::default(), 0).await;
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    conformance::connections_per_user_are_capped(&MemoryPresence::default(), 0).await;
}
