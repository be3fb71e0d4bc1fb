//! The whole message path in one process, over real sockets: gochat's HTTP API,
//! WebSocket and TCP clients against `courier standalone` on loopback ports.

mod common;

use common::{Api, Tcp, Ws};
use courier::standalone::{Standalone, StandaloneConfig};
use serde_json::json;

async fn start() -> (Standalone, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    (Standalone::start(config).await.expect("standalone starts"), dir)
}

fn is_create_time(text: &str) -> bool {
    // YYYY-MM-DD HH:MM:SS
    text.len() == 19 && text.as_bytes()[4] == b'-' && text.as_bytes()[10] == b' ' && text.as_bytes()[13] == b':'
}

#[tokio::test]
async fn room_and_private_messages_reach_websocket_and_tcp_clients() {
    let (courier, _dir) = start().await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (alice_token, alice) = api.register("alice").await;
    let (_, bob) = api.register("bob").await;
    // A second login for bob: a fresh token that works alongside the first.
    let login = api.post("/user/login", json!({"userName": "bob", "passWord": "secret-pw"})).await;
    assert_eq!((login["code"].as_i64(), login["message"].as_str()), (Some(0), Some("login success")));
    let bob_token = login["data"].as_str().expect("token").to_owned();
    let (carol_token, carol) = api.register("carol").await;

    let mut alice_ws = Ws::connect(addrs.ws, &alice_token, 1).await;
    let mut bob_ws = Ws::connect(addrs.ws, &bob_token, 1).await;
    let mut carol_tcp = Tcp::connect(addrs.tcp, &carol_token, 1).await;
    // Presence: everyone is in the room once the member list says so.
    alice_ws.await_members(&[alice, bob, carol]).await;
    bob_ws.await_members(&[alice, bob, carol]).await;

    // Room message over HTTP.
    let sent = api.post("/push/pushRoom", json!({"authToken": alice_token, "msg": "hello room", "roomId": 1})).await;
    assert_eq!(sent, json!({"code": 0, "message": "ok", "data": ""}));
    let mut first_msg_id = String::new();
    for frame in [alice_ws.next_op(3).await, bob_ws.next_op(3).await, carol_tcp.next_op(3).await] {
        assert_eq!(frame["msg"], "hello room");
        assert_eq!(frame["fromUserId"], alice);
        assert_eq!(frame["fromUserName"], "alice");
        assert_eq!(frame["roomId"], 1);
        assert_eq!(frame["code"], 0);
        assert_eq!(frame["stream"], "room:1");
        assert_eq!(frame["seq"], 1);
        assert!(is_create_time(frame["createTime"].as_str().expect("createTime")), "{frame}");
        let msg_id = frame["msgId"].as_str().expect("msgId is a string");
        assert!(msg_id.parse::<u64>().is_ok_and(|id| id > 0), "{msg_id}");
        if first_msg_id.is_empty() {
            first_msg_id = msg_id.to_owned();
        }
        assert_eq!(msg_id, first_msg_id, "one message, one id, at every client");
    }

    // Private message over HTTP, with toUserId as a string as gochat's site sends it.
    let sent = api
        .post(
            "/push/push",
            json!({"authToken": alice_token, "msg": "hi bob", "toUserId": bob.to_string(), "roomId": 1}),
        )
        .await;
    assert_eq!(sent, json!({"code": 0, "message": "ok", "data": null}));
    let to_bob = bob_ws.next_op(2).await;
    assert_eq!(to_bob["msg"], "hi bob");
    assert_eq!((to_bob["fromUserId"].as_u64(), to_bob["toUserId"].as_u64()), (Some(alice), Some(bob)));
    assert_eq!(to_bob["toUserName"], "bob");
    assert_eq!(to_bob["stream"], format!("user:{bob}"));
    assert_eq!(to_bob["seq"], 1);
    // The sender's copy lands in her own inbox, for her other devices.
    let copy = alice_ws.next_op(2).await;
    assert_eq!(copy["stream"], format!("user:{alice}"));
    assert_eq!(copy["msgId"], to_bob["msgId"]);

    // gochat's TCP room send: the sender is the session's user, not the frame's claim.
    carol_tcp
        .send(json!({"op": 3, "msg": "from tcp", "roomId": 1, "fromUserId": 999, "fromUserName": "mallory"}))
        .await;
    let frame = alice_ws.next_op(3).await;
    assert_eq!((frame["msg"].as_str(), frame["fromUserId"].as_u64()), (Some("from tcp"), Some(carol)));
    assert_eq!(frame["fromUserName"], "carol");
    assert_eq!(frame["seq"], 2, "room seqs are gap-free");

    // Courier's op 7 send over the WebSocket: ack with the id, then the message.
    bob_ws.send(json!({"op": 7, "roomId": 1, "msg": "via socket", "clientMsgId": "c-1"})).await;
    let ack = bob_ws.next_op(8).await;
    assert_eq!(ack["clientMsgId"], "c-1");
    let pushed = alice_ws.next_op(3).await;
    assert_eq!(pushed["msg"], "via socket");
    assert_eq!(pushed["msgId"], ack["msgId"]);
    assert_eq!(pushed["seq"], 3);

    courier.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_nothing_is_queued() {
    let (courier, _dir) = start().await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (token, _) = api.register("dave").await;
    let mut ws = Ws::connect(addrs.ws, &token, 2).await;
    ws.await_members(&[]).await;

    let too_long = "x".repeat(4_001);
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": too_long, "roomId": 2})).await;
    assert_eq!(answer["code"], 1);
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("4000")), "{answer}");
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": "x", "roomId": 0})).await;
    assert_eq!(answer["code"], 1, "roomId 0 is refused: {answer}");
    let answer = api.post("/push/pushRoom", json!({"authToken": "forged", "msg": "x", "roomId": 2})).await;
    assert_eq!(answer, json!({"code": 40000, "message": "Session error", "data": null}));
    // A forged token outranks a bad field, as in gochat.
    for bad in [json!({"authToken": "forged", "msg": "x", "roomId": 0}), json!({"authToken": "forged", "msg": 5})] {
        assert_eq!(api.post("/push/pushRoom", bad.clone()).await["code"], 40000, "{bad}");
        assert_eq!(api.post("/push/push", bad.clone()).await["code"], 40000, "{bad}");
    }
    let answer = api.post_raw("/push/pushRoom", "{not json".into()).await;
    assert_eq!(answer["code"], 40000, "gochat checks the session first: {answer}");
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": 5, "roomId": 2})).await;
    assert_eq!(answer["code"], 1);
    let answer = api.post("/nowhere", json!({})).await;
    assert_eq!(answer["message"], "please check request url !");
    let answer = api.post("/user/register", json!({"userName": "dave", "passWord": "x"})).await;
    assert_eq!(answer["message"], "this user name already have , please login !!!");
    let answer = api.post("/user/login", json!({"userName": "dave", "passWord": "wrong"})).await;
    assert_eq!(answer["message"], "no this user or password error!");
    let answer = api.post("/user/login", json!({"userName": "nobody", "passWord": "wrong"})).await;
    assert_eq!(answer["message"], "no this user or password error!", "one answer for both failures");

    // A private message to a user who does not exist is refused with gochat's
    // text, twice (an unknown recipient is never remembered as known).
    for _ in 0..2 {
        let answer =
            api.post("/push/push", json!({"authToken": token, "msg": "x", "toUserId": 987_654_321, "roomId": 2})).await;
        assert_eq!(
            (answer["code"].as_i64(), answer["message"].as_str()),
            (Some(1), Some("rpc fail get friend userName"))
        );
    }

    // Over the socket: an oversized send and an unknown op each get an op 9 error.
    ws.send(json!({"op": 7, "roomId": 2, "msg": "y".repeat(4_001), "clientMsgId": "big"})).await;
    let error = ws.next_op(9).await;
    assert_eq!(error["clientMsgId"], "big");
    ws.send(json!({"op": 99})).await;
    assert!(ws.next_op(9).await["message"].as_str().is_some_and(|m| m.contains("99")));

    // Text the history store could not keep (a NUL) is refused on every path,
    // so it never becomes a record that stalls its partition.
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": "a\u{0}b", "roomId": 2})).await;
    assert_eq!(answer["code"], 1);
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("NUL")), "{answer}");
    ws.send(json!({"op": 7, "roomId": 2, "msg": "a\u{0}b", "clientMsgId": "nul"})).await;
    let error = ws.next_op(9).await;
    assert!(error["message"].as_str().is_some_and(|m| m.contains("NUL")), "{error}");
    ws.send(json!({"op": 7, "roomId": 2, "msg": "fine", "clientMsgId": "a\u{0}"})).await;
    assert!(ws.next_op(9).await["message"].as_str().is_some_and(|m| m.contains("clientMsgId")));
    // Numbers beyond what the stores hold are refused where they enter.
    ws.send(json!({"op": 10, "roomId": 3, "since": {"epoch": "", "seq": u64::MAX}})).await;
    assert!(ws.next_op(9).await["message"].as_str().is_some_and(|m| m.contains("out of range")));
    ws.send(json!({"op": 12, "since": {"seq": 9_223_372_036_854_775_808u64}})).await;
    assert!(ws.next_op(9).await["message"].as_str().is_some_and(|m| m.contains("out of range")));
    let answer = api.post("/history/room", json!({"authToken": token, "roomId": 2, "afterSeq": u64::MAX})).await;
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("out of range")), "{answer}");
    let mut tcp = Tcp::connect(addrs.tcp, &token, 2).await;
    tcp.send(json!({"op": 3, "roomId": 2, "msg": "a\u{0}b"})).await;
    assert!(tcp.next_op(9).await["message"].as_str().is_some_and(|m| m.contains("NUL")));

    // Nothing above reached the room: the next message is seq 1.
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": "first", "roomId": 2})).await;
    assert_eq!(answer["code"], 0);
    let frame = ws.next_op(3).await;
    assert_eq!((frame["msg"].as_str(), frame["seq"].as_u64()), (Some("first"), Some(1)));

    // A bad auth message closes that connection with a reason; the server goes on.
    let mut intruder = Ws::connect(addrs.ws, "forged-token", 2).await;
    let (code, reason) = intruder.closed().await.expect("close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("Session error"), "{reason}");
    let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": "still here", "roomId": 2})).await;
    assert_eq!(answer["code"], 0);
    assert_eq!(ws.next_op(3).await["msg"], "still here");

    courier.stop().await;
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let (courier, _dir) = start().await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (token, _) = api.register("erin").await;
    let mut ws = Ws::connect(addrs.ws, &token, 3).await;
    ws.await_members(&[]).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{}{path}", addrs.admin)).send();
    let check_auth_calls = || async {
        let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
        let sample = "courier_grpc_requests_total{method=\"CheckAuth\",code=\"Ok\"} ";
        let calls = metrics.lines().find_map(|l| l.strip_prefix(sample)?.parse::<u64>().ok());
        // The connection's own authentication made the series.
        calls.unwrap_or_else(|| panic!("no {sample} in\n{metrics}"))
    };
    let before = check_auth_calls().await;
    assert_eq!(api.post("/push/pushRoom", json!({"authToken": token, "msg": "m", "roomId": 3})).await["code"], 0);
    ws.next_op(3).await;
    // A send over HTTP is one call to logic: Send checks the session itself.
    assert_eq!(check_auth_calls().await, before, "no CheckAuth call for a send");

    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    let ready = get("/readyz").await.expect("readyz");
    assert_eq!(ready.status(), 200, "every tier is ready");
    let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
    for expected in [
        "courier_messages_admitted_total{kind=\"room\"} 1",
        "courier_connections{transport=\"ws\"} 1",
        "courier_rooms 1",
        "courier_records_consumed_total{topic=\"courier-room\"} 1",
        "courier_deliveries_total{transport=\"ws\"}",
        "courier_delivery_latency_seconds_count",
        "courier_http_requests_total{route=\"/push/pushRoom\",code=\"0\"} 1",
        "courier_grpc_requests_total{method=\"Send\",code=\"Ok\"} 1",
        "courier_produce_duration_seconds_count 1",
        "courier_history_write_duration_seconds_count",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    }
    // The message's way, timed stage by stage from its admission: each tier
    // counted it once (the write is counted just after the client has it).
    for stage in courier_telemetry::Stage::ALL {
        let sample = format!("courier_message_stage_seconds_count{{stage=\"{}\"}}", stage.name());
        common::tiers::until_metric(addrs.admin, &sample, 1.0).await;
    }
    courier.stop().await;
}

#[tokio::test]
async fn rate_limits_refuse_floods_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    // One token a second (the slowest rate there is) and one login a minute:
    // each check below sends more than the test's own duration could refill.
    config.logic.sends_per_second = 1;
    config.logic.send_burst = 5;
    config.logic.logins_per_minute = 1;
    config.logic.login_burst = 3;
    let courier = Standalone::start(config).await.expect("standalone starts");
    let api = Api::new(courier.addresses.api);
    let (token, me) = api.register("gina").await;
    let mut ws = Ws::connect(courier.addresses.ws, &token, 4).await;
    ws.await_members(&[me]).await;

    // Ten sends at once: the burst of five passes, the rest are refused, each
    // answered, none lost silently.
    for i in 0..10 {
        ws.send(json!({"op": 7, "roomId": 4, "msg": format!("f{i}"), "clientMsgId": i.to_string()})).await;
    }
    let (mut acked, mut refused) = (0, 0);
    while acked + refused < 10 {
        let frame = ws.next().await.expect("socket open");
        match frame["op"].as_i64() {
            Some(8) => acked += 1,
            Some(9) => {
                assert!(frame["message"].as_str().is_some_and(|m| m.contains("too many messages")), "{frame}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(acked >= 5 && refused >= 1, "acked {acked}, refused {refused}");
    // The same limit holds over HTTP: it is the user's, whatever the path.
    // Ten more sends: only ten seconds of refill would let them all through.
    let mut refused_over_http = Vec::new();
    for i in 0..10 {
        let answer = api.post("/push/pushRoom", json!({"authToken": token, "msg": format!("h{i}"), "roomId": 4})).await;
        if answer["code"] == 1 {
            refused_over_http.push(answer);
        }
    }
    assert!(!refused_over_http.is_empty(), "every HTTP send was accepted");
    for answer in &refused_over_http {
        assert!(answer["message"].as_str().is_some_and(|m| m.contains("too many messages")), "{answer}");
    }

    // Password guessing: after the burst, even the right password waits.
    for _ in 0..3 {
        let answer = api.post("/user/login", json!({"userName": "gina", "passWord": "guess"})).await;
        assert_eq!(answer["message"], "no this user or password error!");
    }
    let answer = api.post("/user/login", json!({"userName": "gina", "passWord": "secret-pw"})).await;
    assert_eq!(answer["code"], 1);
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("too many login attempts")), "{answer}");
    courier.stop().await;
}

#[tokio::test]
async fn logout_closes_the_sessions_connections() {
    let (courier, _dir) = start().await;
    let api = Api::new(courier.addresses.api);
    let (token, me) = api.register("hank").await;
    let mut ws = Ws::connect(courier.addresses.ws, &token, 6).await;
    ws.await_members(&[me]).await;
    let mut tcp = Tcp::connect(courier.addresses.tcp, &token, 6).await;
    ws.await_members(&[me]).await;

    let answer = api.post("/user/logout", json!({"authToken": token})).await;
    assert_eq!(answer, json!({"code": 0, "message": "logout ok!", "data": null}));
    let (code, reason) = ws.closed().await.expect("close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("session ended"), "{reason}");
    let error = tcp.next_op(9).await;
    assert!(error["message"].as_str().is_some_and(|m| m.contains("session ended")), "{error}");
    assert!(tcp.next().await.is_none(), "the TCP connection is closed");

    let answer = api.post("/user/checkAuth", json!({"authToken": token})).await;
    assert_eq!(answer["code"], 40000, "the token is gone");
    let answer = api.post("/user/logout", json!({"authToken": token})).await;
    assert_eq!(answer["code"], 40000, "gochat checks the session before logout");
    courier.stop().await;
}

#[tokio::test]
async fn count_and_room_info_are_pushed_as_op_4_and_op_5() {
    let (courier, _dir) = start().await;
    let api = Api::new(courier.addresses.api);
    let (ivy_token, ivy) = api.register("ivy").await;
    let (jack_token, jack) = api.register("jack").await;
    let mut ivy_ws = Ws::connect(courier.addresses.ws, &ivy_token, 11).await;
    let mut jack_ws = Ws::connect(courier.addresses.ws, &jack_token, 11).await;
    // A second tab of jack's: online counts users, not tabs.
    let mut jack_tab = Ws::connect(courier.addresses.ws, &jack_token, 11).await;
    ivy_ws.await_members(&[ivy, jack]).await;
    jack_tab.await_members(&[ivy, jack]).await;

    let answer = api.post("/push/count", json!({"authToken": ivy_token, "roomId": 11})).await;
    assert_eq!(answer, json!({"code": 0, "message": "ok", "data": ""}));
    // Presence updates also carry op 4; an older one may still be on its way.
    loop {
        let count = jack_ws.next_op(4).await;
        assert!(count["count"].as_u64().is_some_and(|c| c <= 2), "three tabs, two users: {count}");
        if count == json!({"count": 2, "op": 4}) {
            break;
        }
    }
    let answer = api.post("/push/getRoomInfo", json!({"authToken": ivy_token, "roomId": "11"})).await;
    assert_eq!(answer, json!({"code": 0, "message": "ok", "data": ""}));
    let info = loop {
        let frame = ivy_ws.next_op(5).await;
        if frame["count"] == 2 {
            break frame;
        }
    };
    assert_eq!(info["roomId"], 11);
    assert_eq!(info["roomUserInfo"][ivy.to_string()], "ivy");
    assert_eq!(info["roomUserInfo"][jack.to_string()], "jack");
    let answer = api.post("/push/count", json!({"authToken": ivy_token})).await;
    assert_eq!(answer["code"], 1, "roomId is required: {answer}");

    // When ivy leaves, the others get an updated member list (never an empty frame).
    drop(ivy_ws);
    let update = loop {
        let frame = jack_ws.next_op(5).await;
        if frame["count"] == 1 {
            break frame;
        }
    };
    assert!(update["roomUserInfo"].get(ivy.to_string()).is_none());

    let doc = reqwest::get(format!("http://{}/openapi.json", courier.addresses.api)).await.expect("openapi");
    let doc: serde_json::Value = doc.json().await.expect("JSON");
    assert!(doc["paths"]["/push/getRoomInfo"]["post"].is_object());
    courier.stop().await;
}

#[tokio::test]
async fn a_retried_client_message_id_gets_the_same_id_and_one_copy() {
    let (courier, _dir) = start().await;
    let api = Api::new(courier.addresses.api);
    let (token, me) = api.register("kim").await;
    let mut ws = Ws::connect(courier.addresses.ws, &token, 12).await;
    ws.await_members(&[me]).await;
    // The same send three times, as a client that lost its acks would retry.
    for _ in 0..3 {
        ws.send(json!({"op": 7, "roomId": 12, "msg": "once", "clientMsgId": "retry-1"})).await;
    }
    ws.send(json!({"op": 7, "roomId": 12, "msg": "after", "clientMsgId": "retry-2"})).await;
    // Acks and pushed messages interleave on the socket: sort them by op.
    let (mut acks, mut frames) = (Vec::new(), Vec::new());
    while acks.len() < 4 || frames.len() < 2 {
        let frame = ws.next().await.expect("socket open");
        match frame["op"].as_i64() {
            Some(8) => acks.push(frame),
            Some(3) => frames.push(frame),
            _ => {}
        }
    }
    assert!(acks[..3].iter().all(|a| a["msgId"] == acks[0]["msgId"]), "one message id for every retry: {acks:?}");
    assert_ne!(acks[3]["msgId"], acks[0]["msgId"]);
    let got: Vec<(&str, u64)> =
        frames.iter().map(|f| (f["msg"].as_str().unwrap_or(""), f["seq"].as_u64().unwrap_or(0))).collect();
    assert_eq!(got, vec![("once", 1), ("after", 2)], "a single copy, and no seq taken by the retries");
    assert_eq!(frames[0]["msgId"], acks[0]["msgId"]);
    // Reusing the id for a different message is refused, not swallowed.
    ws.send(json!({"op": 7, "roomId": 12, "msg": "different", "clientMsgId": "retry-1"})).await;
    let error = ws.next_op(9).await;
    assert_eq!(error["clientMsgId"], "retry-1");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("already used")), "{error}");
    courier.stop().await;
}

#[tokio::test]
async fn an_expired_session_closes_its_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    config.sessions.ttl = std::time::Duration::from_secs(2);
    config.connect.session_check_interval = std::time::Duration::from_millis(200);
    let courier = Standalone::start(config).await.expect("standalone starts");
    let api = Api::new(courier.addresses.api);
    let (token, me) = api.register("lena").await;
    let mut ws = Ws::connect(courier.addresses.ws, &token, 13).await;
    ws.await_members(&[me]).await;
    // It never sends anything; the expiry alone ends it.
    let (code, reason) = ws.closed().await.expect("close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("session expired"), "{reason}");
    courier.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_even_while_messages_reach_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StandaloneConfig::ephemeral(dir.path().join("data"));
    config.demo_users = false;
    config.logic.sends_per_second = 0;
    config.connect.pong_timeout = std::time::Duration::from_secs(1);
    let courier = Standalone::start(config).await.expect("standalone starts");
    let api = Api::new(courier.addresses.api);
    let (token, me) = api.register("mia").await;
    let (sender_token, _) = api.register("noor").await;
    let mut ws = Ws::connect(courier.addresses.ws, &token, 14).await;
    ws.await_members(&[me]).await;
    // Room traffic keeps reaching the silent client, which answers nothing: the
    // heartbeat deadline counts from what the client sent, not from what it got.
    let sender = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            every.tick().await;
            api.post("/push/pushRoom", json!({"authToken": sender_token, "msg": "hi", "roomId": 14})).await;
        }
    });
    // `closed` skips the frames; a connection never dropped ends the wait.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), ws.closed()).await;
    sender.abort();
    let (code, reason) = closed.expect("dropped within 15 s").expect("close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("no answer to heartbeat"), "{reason}");
    courier.stop().await;
}

#[tokio::test]
async fn internal_calls_without_the_secret_are_refused_and_counted() {
    use courier_proto::connect::{Delivery, PushRequest, delivery::Target};
    use courier_proto::logic::NodeHeartbeatRequest;

    let (courier, _dir) = start().await;
    let addrs = courier.addresses;
    let api = Api::new(addrs.api);
    let (token, alice) = api.register("mallory-target").await;
    let mut ws = Ws::connect(addrs.ws, &token, 4).await;
    ws.await_members(&[alice]).await;

    // Whoever reaches the internal ports cannot wipe presence with a new boot
    // id, with no secret or a wrong one, nor push a forged frame to a room.
    let channel = |addr: std::net::SocketAddr| {
        let open = courier_proto::InternalAuth::open();
        courier_proto::lazy_channel(&addr.to_string(), std::time::Duration::from_secs(5), &open).expect("channel")
    };
    let heartbeat = || NodeHeartbeatRequest { server_id: "connect-0".into(), boot_id: "forged".into() };
    let mut bare = courier_proto::logic::logic_client::LogicClient::new(channel(addrs.logic));
    let refused = bare.node_heartbeat(heartbeat()).await.expect_err("no secret");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let wrong = courier_proto::InternalAuth::new("not-the-cluster-secret").expect("valid");
    let mut guessing = courier_proto::logic_client(channel(addrs.logic), std::time::Duration::from_secs(5), &wrong);
    assert_eq!(
        guessing.node_heartbeat(heartbeat()).await.expect_err("wrong secret").code(),
        tonic::Code::Unauthenticated
    );
    let forged = PushRequest {
        deliveries: vec![Delivery {
            target: Some(Target::RoomId(4)),
            body: r#"{"op":3,"msg":"from admin, honest","fromUserName":"admin"}"#.into(),
            ..Delivery::default()
        }],
        revoked_tokens: vec![token.clone()],
    };
    let mut push = courier_proto::connect::connect_client::ConnectClient::new(channel(addrs.push));
    assert_eq!(push.push(forged).await.expect_err("no secret").code(), tonic::Code::Unauthenticated);

    // The tiers themselves still work, and nothing forged arrived.
    assert_eq!(api.post("/push/pushRoom", json!({"authToken": token, "msg": "real", "roomId": 4})).await["code"], 0);
    let frame = ws.next_op(3).await;
    assert_eq!(frame["msg"], "real", "the forged frame never reached the room");
    let metrics = reqwest::get(format!("http://{}/metrics", addrs.admin)).await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains(r#"courier_errors_total{reason="internal_call_refused"} 3"#), "{text}");
    courier.stop().await;
}
