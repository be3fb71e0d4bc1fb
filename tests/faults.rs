//! Faults of the backends as a tier sees them: PostgreSQL and Redis out of
//! reach when a tier starts, and going away and coming back while it runs.
//! Each backend sits behind a proxy the test cuts and mends, so the shared
//! services other tests use are never stopped.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::Proxy;
use common::tiers::{cluster_env, free_port, readyz, spawn};

/// Points the service URL of `var` in `env` at a proxy to the service, cut.
async fn behind_a_proxy(env: &mut [(&'static str, String)], var: &str) -> Proxy {
    let slot = env.iter_mut().find(|(k, _)| *k == var).expect("in the env");
    let mut url = reqwest::Url::parse(&slot.1).expect("a service URL");
    let proxy = Proxy::start(url.socket_addrs(|| None).expect("the service's address")[0], false).await;
    url.set_ip_host(proxy.addr.ip()).expect("an IP host");
    url.set_port(Some(proxy.addr.port())).expect("a port");
    slot.1 = url.to_string();
    proxy
}

/// Waits until `/readyz` answers `ready`, and, when not ready, names every one
/// of `away` and nothing of `back`.
async fn until_readyz(admin: SocketAddr, ready: bool, away: &[&str], back: &[&str]) -> String {
    let what = format!("readyz: ready {ready}, away {away:?}, back {back:?}");
    courier_testkit::eventually(&what, Duration::from_secs(60), || async {
        let (is_ready, body) = readyz(admin).await?;
        let names = away.iter().all(|name| body.contains(name)) && !back.iter().any(|name| body.contains(name));
        (is_ready == ready && (ready || names)).then_some(body)
    })
    .await
}

/// logic started while PostgreSQL and Redis do not answer keeps running and
/// says which it waits for; it becomes ready once both answer; and its
/// readiness follows each one going away and coming back.
#[tokio::test]
async fn a_tier_waits_for_its_backends_and_follows_their_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut env) = cluster_env(dir.path(), None, courier_testkit::unique()) else { return };
    let postgres = behind_a_proxy(&mut env, "COURIER_POSTGRES").await;
    let redis = behind_a_proxy(&mut env, "COURIER_REDIS").await;
    let args = ["logic".to_owned(), "--listen".to_owned(), format!("127.0.0.1:{}", free_port())];
    let (mut logic, admin) = spawn("faults-logic", &args, &env);

    until_readyz(admin, false, &["postgres", "redis"], &[]).await;
    postgres.set_open(true);
    until_readyz(admin, false, &["redis"], &["postgres"]).await;
    assert!(logic.try_wait().expect("logic's status").is_none(), "logic waits instead of exiting");
    redis.set_open(true);
    until_readyz(admin, true, &[], &[]).await;

    postgres.set_open(false);
    until_readyz(admin, false, &["postgres"], &["redis"]).await;
    postgres.set_open(true);
    until_readyz(admin, true, &[], &[]).await;
    redis.set_open(false);
    until_readyz(admin, false, &["redis"], &["postgres"]).await;
    redis.set_open(true);
    until_readyz(admin, true, &[], &[]).await;
    assert!(logic.try_wait().expect("logic's status").is_none(), "logic kept running throughout");
}
