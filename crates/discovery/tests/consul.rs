//! The Consul backend against the in-repo double of Consul's HTTP API (the
//! tests that need to shape what the agent answers), and against a real
//! agent at `CONSUL_HTTP_ADDR` (`scripts/services consul-up` runs one).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use courier_consul_double::{ConsulDouble, Status};
use courier_discovery::consul::{Consul, ConsulConfig, Registration};
use courier_discovery::{Discovery, Instance, Instances, OnFailure, Tier};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A readiness endpoint the test turns on and off.
struct Ready {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl Ready {
    async fn start() -> Self {
        use axum::http::StatusCode;
        let ready = Arc::new(AtomicBool::new(true));
        let flag = ready.clone();
        let app =
            axum::Router::new().route(
                "/readyz",
                axum::routing::get(move || {
                    let flag = flag.clone();
                    async move {
                        if flag.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, ready }
    }

    fn url(&self) -> String {
        format!("http://{}/readyz", self.addr)
    }
}

fn config(agent: &str) -> ConsulConfig {
    ConsulConfig {
        addr: agent.to_owned(),
        prefix: format!("courier-test-{}-", courier_testkit::unique()),
        wait: Duration::from_secs(10),
        check_interval: Duration::from_millis(200),
        check_timeout: Duration::from_millis(500),
        recheck: Duration::from_millis(200),
        ..ConsulConfig::default()
    }
}

fn registration(tier: Tier, id: &str, port: u16, check_url: String) -> Registration {
    let meta = BTreeMap::from([("serverId".to_owned(), id.to_owned()), ("version".to_owned(), "test".to_owned())]);
    Registration {
        tier,
        id: id.to_owned(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["test".into()],
        meta,
        check_url,
    }
}

/// Waits until the watched set has exactly these ids.
async fn until_ids(watch: &mut watch::Receiver<Instances>, ids: &[&str]) -> Instances {
    let wanted: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    let found = match tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|set| set.iter().map(|i| i.id.clone()).collect::<Vec<_>>() == wanted),
    )
    .await
    {
        Ok(Ok(set)) => Some(set.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| {
        panic!("the set never became {ids:?}; it is {:?}", watch.borrow().iter().collect::<Vec<_>>())
    })
}

#[tokio::test]
async fn instances_appear_when_ready_leave_when_failing_and_go_when_deregistered() {
    let double = ConsulDouble::start().await.expect("double");
    let consul = Consul::new(config(&double.url())).expect("client");
    let (a, b) = (Ready::start().await, Ready::start().await);
    let mut logic = consul.watch(Tier::Logic);
    consul.register(&registration(Tier::Logic, "logic-a", 7170, a.url())).await.expect("register a");
    consul.register(&registration(Tier::Logic, "logic-b", 7171, b.url())).await.expect("register b");
    let set = until_ids(&mut logic, &["logic-a", "logic-b"]).await;
    assert_eq!(set[0], Instance::new("logic-a", "127.0.0.1:7170"), "serverId meta names it, address and port reach it");
    assert_eq!(double.services(&consul.service_name(Tier::Logic)).len(), 2);

    // Its readiness fails: it leaves the set, and comes back when ready again.
    b.ready.store(false, Ordering::Relaxed);
    until_ids(&mut logic, &["logic-a"]).await;
    b.ready.store(true, Ordering::Relaxed);
    until_ids(&mut logic, &["logic-a", "logic-b"]).await;

    consul.deregister("logic-a").await.expect("deregister");
    until_ids(&mut logic, &["logic-b"]).await;
    assert!(consul.deregister("logic-a").await.is_err(), "an unknown id is an error, not silence");
    // Other tiers are other services.
    assert!(consul.watch(Tier::Connect).borrow().is_empty());
}

#[tokio::test]
async fn watching_blocks_instead_of_polling() {
    let double = ConsulDouble::start().await.expect("double");
    let consul = Consul::new(config(&double.url())).expect("client");
    let ready = Ready::start().await;
    let mut connect = consul.watch(Tier::Connect);
    consul.register(&registration(Tier::Connect, "connect-0", 7270, ready.url())).await.expect("register");
    until_ids(&mut connect, &["connect-0"]).await;
    // The set is settled; the check keeps passing (no index change). A
    // polling client would query about ten times a second.
    let before = double.queries();
    let changed = tokio::time::timeout(Duration::from_secs(2), connect.changed()).await;
    assert!(changed.is_err(), "nothing changed");
    assert!(double.queries() - before <= 2, "{} queries in 2 s of no change", double.queries() - before);
}

#[tokio::test]
async fn an_index_that_goes_backwards_starts_the_query_over() {
    let double = ConsulDouble::start().await.expect("double");
    let consul = Consul::new(ConsulConfig { wait: Duration::from_secs(2), ..config(&double.url()) }).expect("client");
    let ready = Ready::start().await;
    let mut logic = consul.watch(Tier::Logic);
    consul.register(&registration(Tier::Logic, "logic-a", 1, ready.url())).await.expect("register");
    until_ids(&mut logic, &["logic-a"]).await;
    // A snapshot restore: the index is now far below the client's. The first
    // answer after it (at the end of a wait) carries the lower index.
    double.rewind_index();
    consul.register(&registration(Tier::Logic, "logic-b", 2, ready.url())).await.expect("register");
    until_ids(&mut logic, &["logic-a", "logic-b"]).await;
    // A client that kept its old index would ask from it again, and block a
    // whole wait on every query; one that started over asks from an index
    // the server has.
    let seen = double.indexes_asked().len();
    let next = courier_testkit::eventually("the client's next query", Duration::from_secs(30), || async {
        double.indexes_asked().get(seen).copied()
    })
    .await;
    assert!(next <= double.index(), "asked to wait past {next}, but the server's index is {}", double.index());
    consul.deregister("logic-a").await.expect("deregister");
    until_ids(&mut logic, &["logic-b"]).await;
}

#[tokio::test]
async fn an_outage_keeps_the_last_known_set_until_consul_answers_again() {
    let double = ConsulDouble::start().await.expect("double");
    let addr = double.addr();
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = failures.clone();
    let on_failure = OnFailure::new(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let consul = Consul::new(ConsulConfig { on_failure, ..config(&double.url()) }).expect("client");
    let ready = Ready::start().await;
    let mut logic = consul.watch(Tier::Logic);
    consul.register(&registration(Tier::Logic, "logic-a", 1, ready.url())).await.expect("register");
    until_ids(&mut logic, &["logic-a"]).await;

    double.stop().await;
    // Queries fail and are retried (and counted); the set stays meanwhile.
    courier_testkit::eventually("three failed queries", Duration::from_secs(20), || async {
        (failures.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    assert!(!logic.has_changed().unwrap_or(true), "the set changed during the outage: {:?}", logic.borrow());
    assert_eq!(logic.borrow().len(), 1);

    // Consul comes back (a new agent on the same address, with other
    // instances): the watch follows it without being restarted.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("same address");
    let double = ConsulDouble::serve(listener, None).expect("double again");
    consul.register(&registration(Tier::Logic, "logic-c", 3, ready.url())).await.expect("register");
    until_ids(&mut logic, &["logic-c"]).await;
    drop(double);
}

#[tokio::test]
async fn a_registration_is_kept_through_an_agent_that_forgets_it_and_removed_on_shutdown() {
    let double = ConsulDouble::start().await.expect("double");
    let consul = Consul::new(config(&double.url())).expect("client");
    let ready = Ready::start().await;
    let name = consul.service_name(Tier::Task);
    let stop = CancellationToken::new();
    let keeper = tokio::spawn(
        consul.clone().keep_registered(registration(Tier::Task, "task-1", 9104, ready.url()), stop.clone()),
    );
    let mut task = consul.watch(Tier::Task);
    until_ids(&mut task, &["task-1"]).await;
    assert_eq!(double.services(&name), [("task-1".to_owned(), Status::Passing)]);
    // The agent loses it (an agent restarted without its data): registered again.
    consul.deregister("task-1").await.expect("forget");
    until_ids(&mut task, &[]).await;
    until_ids(&mut task, &["task-1"]).await;
    stop.cancel();
    keeper.await.expect("keeper ends");
    assert!(double.services(&name).is_empty(), "deregistered on shutdown");
}

#[tokio::test]
async fn a_token_is_sent_and_a_refusal_says_it_is_about_acls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let double = ConsulDouble::serve(listener, Some("s3cret-token".into())).expect("double");
    let ready = Ready::start().await;
    let anonymous = Consul::new(config(&double.url())).expect("client");
    let refused = anonymous.register(&registration(Tier::Api, "api-1", 7070, ready.url())).await;
    let message = refused.expect_err("no token").to_string();
    assert!(message.contains("403") && message.contains("ACL"), "{message}");
    let consul =
        Consul::new(ConsulConfig { token: Some("s3cret-token".into()), ..config(&double.url()) }).expect("client");
    consul.register(&registration(Tier::Api, "api-1", 7070, ready.url())).await.expect("with the token");
    let mut api = consul.watch(Tier::Api);
    until_ids(&mut api, &["api-1"]).await;
}

/// The same life cycle against a real agent, when there is one.
#[tokio::test]
async fn against_a_real_consul_agent() {
    // scripts/services up starts one; under COURIER_REQUIRE_SERVICES a
    // missing agent fails here instead of skipping.
    let Some(agent) = courier_testkit::service("CONSUL_HTTP_ADDR") else { return };
    let token = std::env::var("CONSUL_HTTP_TOKEN").ok();
    // A real agent's checks need a second or so; its index moves with the
    // whole cluster, so the tests above that shape the index stay on the double.
    let consul =
        Consul::new(ConsulConfig { token, check_interval: Duration::from_secs(1), ..config(&agent) }).expect("client");
    let ready = Ready::start().await;
    let mut logic = consul.watch(Tier::Logic);
    consul.register(&registration(Tier::Logic, "logic-real-a", 7170, ready.url())).await.expect("register");
    until_ids(&mut logic, &["logic-real-a"]).await;
    ready.ready.store(false, Ordering::Relaxed);
    until_ids(&mut logic, &[]).await;
    ready.ready.store(true, Ordering::Relaxed);
    until_ids(&mut logic, &["logic-real-a"]).await;
    consul.deregister("logic-real-a").await.expect("deregister");
    until_ids(&mut logic, &[]).await;
}
