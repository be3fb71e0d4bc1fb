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
async fn routes_follow_connections() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::routes_follow_connections(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn a_big_node_is_dropped_whole() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::a_big_node_is_dropped_whole(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn claims_in_a_session_need_it_live() {
    let Some((redis, prefix)) = redis().await else { return };
    let sessions = RedisSessions::new(redis.clone(), SessionPolicy::default(), &prefix);
    let ids = courier_presence::redis::RedisClientMsgIds::new(redis, &prefix, std::time::Duration::from_secs(600));
    conformance::claims_in_a_session_need_it_live(&sessions, &ids, 0).await;
}

#[tokio::test]
async fn client_msg_ids_return_the_first_claim() {
    let Some((redis, prefix)) = redis().await else { return };
    let ids = courier_presence::redis::RedisClientMsgIds::new(redis, &prefix, std::time::Duration::from_secs(600));
    conformance::client_msg_ids_return_the_first_claim(&ids, 0).await;
}

#[tokio::test]
async fn worker_ids_are_leased_once_and_remember_the_last_millisecond() {
    use courier_presence::WorkerIds;
    let Some((redis, prefix)) = redis().await else { return };
    let leases = courier_presence::redis::RedisWorkerIds::new(redis, &prefix, std::time::Duration::from_millis(300));
    let a = leases.acquire("logic-a").await.expect("acquire");
    let b = leases.acquire("logic-b").await.expect("acquire");
    assert_ne!(a.worker_id, b.worker_id, "two live instances never share an id");
    assert!(leases.renew(a.worker_id, "logic-a", 5_000).await.expect("renew"));
    assert!(!leases.renew(a.worker_id, "logic-b", 6_000).await.expect("renew"), "only the holder renews");
    // a stops renewing; once its lease lapses, its id is free again and its
    // successor learns the last millisecond a used.
    let c = courier_testkit::eventually("a's lease to lapse", std::time::Duration::from_secs(5), || async {
        let lease = leases.acquire("logic-c").await.expect("acquire");
        (lease.worker_id == a.worker_id).then_some(lease)
    })
    .await;
    assert_eq!(c.not_before_unix_ms, 5_000);
    assert!(!leases.renew(a.worker_id, "logic-a", 7_000).await.expect("renew"), "a lost its lease");
}

#[tokio::test]
async fn node_leases_lapse_until_reaped() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::node_leases_lapse_until_reaped(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn reaps_spare_nodes_that_came_back() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::reaps_spare_nodes_that_came_back(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    let Some((redis, prefix)) = redis().await else { return };
    conformance::connections_per_user_are_capped(&RedisPresence::new(redis, &prefix), 0).await;
}

#[tokio::test]
async fn expired_sessions_are_not_active() {
    use courier_presence::Sessions as _;
    let Some((redis, prefix)) = redis().await else { return };
    let policy = SessionPolicy { ttl: std::time::Duration::from_millis(200), max_devices: 2 };
    let sessions = RedisSessions::new(redis, policy, &prefix);
    let me = courier_presence::SessionUser { user_id: 1, user_name: "a".into() };
    let s = sessions.create(me).await.expect("create");
    assert_eq!(sessions.active().await.expect("active"), 1);
    courier_testkit::eventually("the token to expire", std::time::Duration::from_secs(10), || async {
        sessions.get(&s.token).await.expect("get").is_none().then_some(())
    })
    .await;
    assert_eq!(sessions.active().await.expect("active"), 0, "expired is not active");
}

/// Tens of thousands of presence calls at once (a mass disconnect: every
/// connection of a big node closing together) all complete: they queue for
/// the one Redis connection instead of crowding its pipeline until every call
/// times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_presence_calls_completes_without_timeouts() {
    use courier_presence::Presence as _;
    let Some((redis, prefix)) = redis().await else { return };
    let presence = std::sync::Arc::new(RedisPresence::new(redis, &prefix));
    let calls = (0..40_000u64).map(|conn| {
        let presence = presence.clone();
        tokio::spawn(async move {
            let user = courier_presence::SessionUser { user_id: conn, user_name: format!("u{conn}") };
            presence.attach(conn, "burst-node", conn, 20).await?;
            presence.join(1 + conn % 4000, &user, "burst-node", conn).await?;
            presence.leave(1 + conn % 4000, conn, "burst-node", conn).await?;
            presence.detach(conn, "burst-node", conn).await
        })
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let failed: Vec<String> =
        outcomes.into_iter().filter_map(|o| o.expect("task").err().map(|e| e.to_string())).take(3).collect();
    assert!(failed.is_empty(), "calls failed, the first: {failed:?}");
}
