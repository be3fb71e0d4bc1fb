//! Recovery, offline messages and history: test bodies written once and run
//! against both backend sets (standalone on the embedded backends in
//! `tests/recovery.rs`, every tier on Kafka, Redis and PostgreSQL in
//! `tests/cluster.rs`). Names and room ids come from the [`Target`], so runs can
//! share a database.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{Api, Ws};

/// A running Courier and the names this run may use.
pub struct Target {
    pub api: SocketAddr,
    pub ws: SocketAddr,
    /// Prepended to user names (keep it under 10 characters).
    pub prefix: String,
    /// Added to room ids.
    pub room_base: u64,
}

impl Target {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn room(&self, n: u64) -> u64 {
        self.room_base + n
    }
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().expect("seq")).collect()
}

fn bodies(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["msg"].as_str().expect("msg").to_owned()).collect()
}

/// A client that reconnects with `since` gets exactly the messages it missed, in
/// order, then live ones without a duplicate.
pub async fn reconnecting_with_since_gets_exactly_the_missed_messages(target: &Target) {
    let api = Api::new(target.api);
    let (alice_token, alice) = api.register(&target.name("alice")).await;
    let (bob_token, _) = api.register(&target.name("bob")).await;
    let mut alice_ws = Ws::connect(target.ws, &alice_token, target.room(7)).await;
    alice_ws.await_members(&[alice]).await;
    let send = |i: u32| {
        let api = api.clone();
        let token = bob_token.clone();
        async move {
            let answer = api
                .post("/push/pushRoom", json!({"authToken": token, "msg": format!("m{i}"), "roomId": target.room(7)}))
                .await;
            assert_eq!(answer["code"], 0, "{answer}");
        }
    };
    for i in 0..5 {
        send(i).await;
    }
    let seen = alice_ws.take_op(3, 5).await;
    let position = json!({"epoch": seen[4]["epoch"], "seq": seen[4]["seq"]});
    drop(alice_ws);

    for i in 5..10 {
        send(i).await;
    }
    let mut alice_ws =
        Ws::connect_with(target.ws, json!({"authToken": alice_token, "roomId": target.room(7), "since": position}))
            .await;
    let missed = alice_ws.take_op(3, 5).await;
    assert_eq!(seqs(&missed), vec![6, 7, 8, 9, 10]);
    assert_eq!(bodies(&missed), vec!["m5", "m6", "m7", "m8", "m9"]);
    send(10).await;
    let live = alice_ws.next_op(3).await;
    assert_eq!((live["seq"].as_u64(), live["msg"].as_str()), (Some(11), Some("m10")), "then live, no duplicate");
}

/// Joining a room from seq 0 while messages flow into it gives every message once,
/// in order: history first, then the live frames held back meanwhile.
pub async fn joining_while_messages_flow_has_no_gap_or_duplicate(target: &Target) {
    let api = Api::new(target.api);
    let (alice_token, alice) = api.register(&target.name("alice")).await;
    let (bob_token, bob) = api.register(&target.name("bob")).await;
    let mut alice_ws = Ws::connect(target.ws, &alice_token, target.room(1)).await;
    alice_ws.await_members(&[alice]).await;
    let mut bob_ws = Ws::connect(target.ws, &bob_token, target.room(8)).await;
    bob_ws.await_members(&[bob]).await;

    const N: usize = 200;
    let room = target.room(8);
    let (halfway, reached) = tokio::sync::oneshot::channel();
    // Bob streams messages over his socket; alice joins once a quarter is in.
    let sender = tokio::spawn(async move {
        for i in 0..N {
            bob_ws.send(json!({"op": 7, "roomId": room, "msg": format!("m{i}"), "clientMsgId": i.to_string()})).await;
        }
        let mut halfway = Some(halfway);
        for acked in 1..=N {
            bob_ws.next_op(8).await;
            if acked == N / 4 {
                halfway.take().map(|h| h.send(()));
            }
        }
    });
    reached.await.expect("bob's messages are flowing");
    alice_ws.send(json!({"op": 10, "roomId": target.room(8), "since": {"epoch": "", "seq": 0}})).await;
    let frames = alice_ws.take_op(3, N).await;
    assert_eq!(seqs(&frames), (1..=N as u64).collect::<Vec<_>>(), "no gap, no duplicate, in order");
    assert_eq!(bodies(&frames), (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    sender.await.expect("sender finished");
}

/// Private messages to a user with no connection arrive, in order, when they next
/// connect with `inboxSince`, and op 12 resumes the inbox on a live connection.
pub async fn offline_private_messages_arrive_on_the_next_connect(target: &Target) {
    let api = Api::new(target.api);
    let (alice_token, alice) = api.register(&target.name("alice")).await;
    let (carol_token, carol) = api.register(&target.name("carol")).await;
    // Carol is offline while alice writes to her.
    for i in 0..5 {
        let body =
            json!({"authToken": alice_token, "msg": format!("p{i}"), "toUserId": carol, "roomId": target.room(1)});
        assert_eq!(api.post("/push/push", body).await["code"], 0);
    }
    let mut carol_ws = Ws::connect_with(
        target.ws,
        json!({"authToken": carol_token, "roomId": target.room(1), "inboxSince": {"epoch": "", "seq": 0}}),
    )
    .await;
    let inbox = carol_ws.take_op(2, 5).await;
    assert_eq!(bodies(&inbox), vec!["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(seqs(&inbox), vec![1, 2, 3, 4, 5]);
    assert!(inbox.iter().all(|f| f["fromUserId"] == alice && f["stream"] == format!("user:{carol}")));

    // Op 12 on a live connection resumes the inbox from a position.
    let body = json!({"authToken": alice_token, "msg": "p5", "toUserId": carol, "roomId": target.room(1)});
    assert_eq!(api.post("/push/push", body).await["code"], 0);
    assert_eq!(carol_ws.next_op(2).await["msg"], "p5", "live delivery");
    let mut second = Ws::connect(target.ws, &carol_token, target.room(1)).await;
    second.send(json!({"op": 12, "since": {"epoch": inbox[0]["epoch"], "seq": 4}})).await;
    let synced = second.take_op(2, 2).await;
    assert_eq!(bodies(&synced), vec!["p4", "p5"]);
}

/// History pages forwards and backwards by seq, bounded by `limit`; a private
/// conversation is the inbox filtered to one other party.
pub async fn history_pages_are_complete_and_ordered(target: &Target) {
    let api = Api::new(target.api);
    let (alice_token, alice) = api.register(&target.name("alice")).await;
    let (bob_token, bob) = api.register(&target.name("bob")).await;
    let (_, carol) = api.register(&target.name("carol")).await;
    let mut ws = Ws::connect(target.ws, &alice_token, target.room(9)).await;
    ws.await_members(&[alice]).await;
    for i in 0..25 {
        let answer = api
            .post("/push/pushRoom", json!({"authToken": alice_token, "msg": format!("m{i}"), "roomId": target.room(9)}))
            .await;
        assert_eq!(answer["code"], 0);
    }
    ws.take_op(3, 25).await; // all persisted: they were pushed
    let page = |body: Value| {
        let api = api.clone();
        async move {
            let answer = api.post("/history/room", body).await;
            assert_eq!(answer["code"], 0, "{answer}");
            answer["data"].clone()
        }
    };
    let t = alice_token.as_str();
    let first = page(json!({"authToken": t, "roomId": target.room(9), "afterSeq": 0, "limit": 10})).await;
    assert_eq!(seqs(first["messages"].as_array().expect("messages")), (1..=10).collect::<Vec<_>>());
    assert_eq!(first["lastSeq"], 25);
    assert_eq!(first["stream"], format!("room:{}", target.room(9)));
    let next = page(json!({"authToken": t, "roomId": target.room(9), "afterSeq": 20, "limit": 10})).await;
    assert_eq!(seqs(next["messages"].as_array().expect("messages")), vec![21, 22, 23, 24, 25]);
    let back = page(json!({"authToken": t, "roomId": target.room(9), "beforeSeq": 11, "limit": 5})).await;
    assert_eq!(seqs(back["messages"].as_array().expect("messages")), vec![10, 9, 8, 7, 6]);
    let newest = page(json!({"authToken": t, "roomId": target.room(9), "limit": 3})).await;
    assert_eq!(seqs(newest["messages"].as_array().expect("messages")), vec![25, 24, 23]);
    assert_eq!(newest["messages"][0]["msg"], "m24");
    let answer = api.post("/history/room", json!({"authToken": t, "roomId": 0})).await;
    assert_eq!(answer["code"], 1, "roomId is required");
    let answer = api.post("/history/room", json!({"authToken": "forged", "roomId": target.room(9)})).await;
    assert_eq!(answer["code"], 40000);

    // A private conversation is the inbox filtered to one other party.
    let mut bob_ws = Ws::connect(target.ws, &bob_token, target.room(9)).await;
    bob_ws.await_members(&[alice, bob]).await;
    for (to, text) in [(bob, "to bob 1"), (carol, "to carol"), (bob, "to bob 2")] {
        let body = json!({"authToken": t, "msg": text, "toUserId": to, "roomId": target.room(9)});
        assert_eq!(api.post("/push/push", body).await["code"], 0);
    }
    // Pushed means persisted: alice's copies (her inbox) and bob's messages
    // (his, written by another partition) are all in history.
    ws.take_op(2, 3).await;
    bob_ws.take_op(2, 2).await;
    let answer = api.post("/history/private", json!({"authToken": bob_token, "userId": alice, "afterSeq": 0})).await;
    assert_eq!(bodies(answer["data"]["messages"].as_array().expect("messages")), vec!["to bob 1", "to bob 2"]);
    let answer = api.post("/history/private", json!({"authToken": t, "userId": bob, "afterSeq": 0})).await;
    assert_eq!(bodies(answer["data"]["messages"].as_array().expect("messages")), vec!["to bob 1", "to bob 2"]);
}
