//! The sessions and presence conformance tests against Redis (`COURIER_REDIS`,
//! set by `scripts/services up`).

use courier_presence::conformance;
use courier_presence::memory::SessionPolicy;
use courier_presence::redis::{RedisPresence, RedisSessions, connect};

async fn redis() -> Option<(redis::aio::ConnectionManager, String)> {
    let url = courier_testkit::service("COURIER_REDIS")?;
    let prefix = format!("courier-test-{}:", courier_testkit::unique());
    Some((connect(&url).await.expect("connect to Redis"), prefix))
}

#[tokio::test]
async fn device_cap_revokes_the_oldest_token() {
    let Some((redis, prefix)) = redis().await else { return };
    let sessions = RedisSessions::new(redis, SessionPolicy { max_devices: 2, ..SessionPolicy::default() }, &prefix);
    conformance::device_cap_revokes_the_oldest_token(&sessions, 0).await;
}

#[tokio::test]
async fn presence_counts_users_not_tabs() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::presence_counts_users_not_tabs(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn client_msg_ids_return_the_first_claim() {
    let Some((redis, prefix)) = redis().await else { return };
    let ids = courier_presence::redis::RedisClientMsgIds::new(redis, &prefix, std::time::Duration::from_secs(600));
    conformance::client_msg_ids_return_the_first_claim(&ids, 0).await;
}
