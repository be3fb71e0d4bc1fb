//! Limits that keep one client from costing the others: messages that fit the
//! size limit always fit the transport, and connections, rooms per connection
//! and connections per session are bounded with a clear refusal. Over real
//! sockets against `courier standalone`.

mod common;

use common::{Api, Ws};
use courier::standalone::{Standalone, StandaloneConfig};
use serde_json::json;

async fn start(adjust: impl FnOnce(&mut StandaloneConfig)) -> (Standalone, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    adjust(&mut config);
    (Standalone::start(config).await.expect("standalone starts"), dir)
}

/// The `msg` and `seq` of each frame.
fn bodies_and_seqs(frames: &[serde_json::Value]) -> Vec<(String, u64)> {
    frames.iter().map(|f| (f["msg"].as_str().unwrap_or("").to_owned(), f["seq"].as_u64().unwrap_or(0))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_fit_the_limit_always_fit_the_transport() {
    let (courier, _dir) = start(|config| {
        config.logic.sends_per_second = 0;
        config.api.per_ip_per_second = 0;
    })
    .await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (alice_token, alice) = api.register("alice").await;
    let (bob_token, _) = api.register("bob").await;
    let mut alice_ws = Ws::connect(addrs.ws, &alice_token, 1).await;
    alice_ws.await_members(&[alice]).await;

    // 4,000 bytes of control characters: each escapes to six in JSON, so a
    // frame is ~24 KB and 250 of them are ~6 MB, over tonic's 4 MiB default.
    // Sent all at once, so task persists and pushes them in large batches.
    const N: usize = 250;
    let body = |i: usize| format!("{i:04}{}", "\u{1}".repeat(3_996));
    let sends = (0..N).map(|i| {
        let api = &api;
        let token = &bob_token;
        async move { api.post("/push/pushRoom", json!({"authToken": token, "msg": body(i), "roomId": 1})).await }
    });
    for answer in futures_util::future::join_all(sends).await {
        assert_eq!(answer["code"], 0, "{answer}");
    }
    let live = alice_ws.take_op(3, N).await;
    let seqs: Vec<u64> = live.iter().map(|f| f["seq"].as_u64().unwrap_or(0)).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>(), "every live frame, whole and in order");
    assert!(live.iter().all(|f| f["msg"].as_str().is_some_and(|m| m.len() == 4_000)));

    // A newcomer asks for the room from its start: the history pages are cut
    // by bytes and replayed one after another.
    let mut carol_ws =
        Ws::connect_with(addrs.ws, json!({"authToken": alice_token, "roomId": 1, "since": {"epoch": "", "seq": 0}}))
            .await;
    let replayed = carol_ws.take_op(3, N).await;
    assert_eq!(bodies_and_seqs(&replayed), bodies_and_seqs(&live), "the whole room, once, in order");
    courier.stop().await;
}

#[tokio::test]
async fn a_connection_is_in_a_bounded_number_of_rooms() {
    let (courier, _dir) = start(|config| config.connect.max_rooms_per_connection = 3).await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (token, me) = api.register("roomy").await;
    let mut ws = Ws::connect(addrs.ws, &token, 1).await;
    ws.await_members(&[me]).await;
    for room in [2, 3] {
        ws.send(json!({"op": 10, "roomId": room})).await;
        ws.await_members(&[me]).await;
    }
    ws.send(json!({"op": 10, "roomId": 4})).await;
    let refused = ws.next_op(9).await;
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("at most 3 rooms")), "{refused}");

    // Leaving one makes room for another.
    ws.send(json!({"op": 11, "roomId": 2})).await;
    ws.send(json!({"op": 10, "roomId": 4})).await;
    ws.await_members(&[me]).await;
    assert_eq!(api.post("/push/pushRoom", json!({"authToken": token, "msg": "in 4", "roomId": 4})).await["code"], 0);
    let frame = ws.next_op(3).await;
    assert_eq!((frame["msg"].as_str(), frame["roomId"].as_u64()), (Some("in 4"), Some(4)));
    courier.stop().await;
}

#[tokio::test]
async fn connections_are_bounded_per_user_and_per_session() {
    let (courier, _dir) = start(|config| {
        config.logic.max_connections_per_user = 3;
        config.connect.max_connections_per_token = 2;
    })
    .await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (first_token, me) = api.register("tabby").await;
    let login = api.post("/user/login", json!({"userName": "tabby", "passWord": "secret-pw"})).await;
    let second_token = login["data"].as_str().expect("a second session").to_owned();

    let mut first = Ws::connect(addrs.ws, &first_token, 1).await;
    first.await_members(&[me]).await;
    // Registered before the third opens: opens finish in the order logic
    // answers them, not the order they began.
    let mut second = Ws::connect(addrs.ws, &first_token, 1).await;
    second.await_members(&[me]).await;
    let mut third = Ws::connect(addrs.ws, &first_token, 1).await;
    let (code, reason) = third.closed().await.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("session already holds 2 connections"), "{reason}");

    // Another session of the same user may open one more: three in all.
    let mut other = Ws::connect(addrs.ws, &second_token, 1).await;
    other.await_members(&[me]).await;
    let mut fourth = Ws::connect(addrs.ws, &second_token, 1).await;
    let (code, reason) = fourth.closed().await.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("already hold 3 connections"), "{reason}");

    // Closing one makes room.
    drop(first);
    let mut again = common::eventually_connects(addrs.ws, &second_token, 1).await;
    again.await_members(&[me]).await;
    courier.stop().await;
}

#[tokio::test]
async fn nobody_can_lock_another_address_out_of_an_account() {
    let (courier, _dir) = start(|config| {
        // The test's requests come through a "proxy" on loopback.
        config.api.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        config.logic.logins_per_minute = 3;
        config.logic.login_burst = 3;
        // A burst of eight, refilled one a minute: no token comes back while
        // the test runs, however loaded the machine (at eight a minute one
        // did, every 7.5 s).
        config.logic.logins_per_minute_per_address = 1;
        config.logic.address_login_burst = 8;
    })
    .await;
    let api = Api::new(courier.addresses.api);
    let (_, _) = api.register("victim").await;
    let login = |password: &str| json!({"userName": "victim", "passWord": password});

    // An attacker guessing the victim's password is slowed down…
    for _ in 0..3 {
        let answer = api.post_from("198.51.100.1", "/user/login", login("guess")).await;
        assert_eq!(answer["message"], "no this user or password error!");
    }
    let refused = api.post_from("198.51.100.1", "/user/login", login("guess")).await;
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("too many login attempts")), "{refused}");
    // …a header the attacker writes itself changes nothing past the proxy…
    let forged = api.post_from("203.0.113.5, 198.51.100.1", "/user/login", login("guess")).await;
    assert!(forged["message"].as_str().is_some_and(|m| m.contains("too many login attempts")), "{forged}");
    // …and the victim, elsewhere, still logs in.
    let answer = api.post_from("203.0.113.5", "/user/login", login("secret-pw")).await;
    assert_eq!(answer["message"], "login success", "{answer}");

    // One address trying many accounts is limited as a whole.
    let mut refused_at = None;
    for n in 0..12 {
        let answer =
            api.post_from("198.51.100.2", "/user/login", json!({"userName": format!("u{n}"), "passWord": "x"})).await;
        if answer["message"].as_str().is_some_and(|m| m.contains("from your address")) {
            refused_at = Some(n);
            break;
        }
    }
    assert_eq!(refused_at, Some(8), "the ninth attempt from one address is refused");
    courier.stop().await;
}
