//! Recovery, offline messages and history on the embedded backends (the same
//! bodies run on the production backends in `tests/cluster.rs`).

mod common;

use common::recovery::{self, Target};
use courier::standalone::{Standalone, StandaloneConfig};

async fn start() -> (Standalone, Target, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    config.logic.sends_per_second = 0; // these tests stream messages
    let courier = Standalone::start(config).await.expect("standalone starts");
    let target = Target { api: courier.addresses.api, ws: courier.addresses.ws, prefix: String::new(), room_base: 0 };
    (courier, target, dir)
}

#[tokio::test]
async fn reconnecting_with_since_gets_exactly_the_missed_messages() {
    let (courier, target, _dir) = start().await;
    recovery::reconnecting_with_since_gets_exactly_the_missed_messages(&target).await;
    courier.stop().await;
}

#[tokio::test]
async fn joining_while_messages_flow_has_no_gap_or_duplicate() {
    let (courier, target, _dir) = start().await;
    recovery::joining_while_messages_flow_has_no_gap_or_duplicate(&target).await;
    courier.stop().await;
}

#[tokio::test]
async fn offline_private_messages_arrive_on_the_next_connect() {
    let (courier, target, _dir) = start().await;
    recovery::offline_private_messages_arrive_on_the_next_connect(&target).await;
    courier.stop().await;
}

#[tokio::test]
async fn history_pages_are_complete_and_ordered() {
    let (courier, target, _dir) = start().await;
    recovery::history_pages_are_complete_and_ordered(&target).await;
    courier.stop().await;
}
