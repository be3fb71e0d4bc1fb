//! A cluster whose tiers are given only the Consul agent's address: no logic
//! address, no connect node list. They register themselves, find each other,
//! and follow each other as instances come and go.
//!
//! Runs against a real Consul agent when `CONSUL_HTTP_ADDR` names one
//! (`scripts/services up` starts one, and `scripts/test` requires it), or
//! else against the in-repo double of Consul's HTTP API (prints which).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tiers::{cluster_env, connect_args, free_port, local, metric, start, until_metric};
use common::{Api, Ws};
use courier_consul_double::ConsulDouble;
use serde_json::json;
use tokio::process::Child;

/// A connect node of the test, and where clients reach it.
struct Node {
    child: Child,
    ws: SocketAddr,
}

async fn connect_node(server_id: &str, env: &[(&'static str, String)]) -> Node {
    let ws = local(free_port());
    let args = connect_args(server_id, ws, local(free_port()), local(free_port()));
    let (child, _) = start(server_id, &args, env).await;
    Node { child, ws }
}

async fn logic(name: &str, env: &[(&'static str, String)]) -> (Child, SocketAddr) {
    start(name, &["logic".into(), "--listen".into(), local(free_port()).to_string()], env).await
}

/// Sends `msg` to `room`; whether the API acknowledged it.
async fn send(api: &Api, token: &str, room: u64, msg: &str) -> bool {
    let sent = api.post("/push/pushRoom", json!({"authToken": token, "msg": msg, "roomId": room})).await;
    sent["code"] == 0
}

/// The messages of room frames on `ws` until `last` arrives.
async fn room_messages_until(ws: &mut Ws, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some(last) {
        let frame = ws.next_op(3).await;
        got.push(frame["msg"].as_str().unwrap_or_default().to_owned());
    }
    got
}

#[tokio::test]
async fn a_cluster_given_only_consul_finds_itself_and_follows_its_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = courier_testkit::unique();
    let Some(mut env) = cluster_env(dir.path(), None, run) else { return };
    // A real agent when there is one (always under COURIER_REQUIRE_SERVICES,
    // which scripts/test sets), the double otherwise.
    let (agent, _double) = match courier_testkit::service("CONSUL_HTTP_ADDR") {
        Some(agent) => {
            println!("discovery on the real Consul agent at {agent}");
            (agent, None)
        }
        None => {
            let double = ConsulDouble::start().await.expect("consul double");
            println!("discovery on the Consul double at {} (set CONSUL_HTTP_ADDR for a real agent)", double.url());
            (double.url(), Some(double))
        }
    };
    env.extend([
        ("COURIER_DISCOVERY", "consul".to_owned()),
        ("CONSUL_HTTP_ADDR", agent),
        ("COURIER_CONSUL_PREFIX", format!("e2e-{run}-")),
        ("COURIER_CONSUL_CHECK_INTERVAL_MS", "300".to_owned()),
    ]);

    let (mut logic_a, logic_a_admin) = logic("logic-a", &env).await;
    let (_task, task_admin) = start("task", &["task".into()], &env).await;
    let node0 = connect_node("connect-0", &env).await;
    let api_addr = local(free_port());
    let (_api, api_admin) = start("api", &["api".into(), "--listen".into(), api_addr.to_string()], &env).await;
    let api = Api::new(api_addr);

    // Messages flow: api found logic, logic and task found connect-0.
    let room = 5_000_000_000 + run % 1_000_000_000;
    let (alice_token, alice) = api.register(&format!("da{}", run % 1_000_000_000)).await;
    let (bob_token, bob) = api.register(&format!("db{}", run % 1_000_000_000)).await;
    let mut alice_ws = Ws::connect(node0.ws, &alice_token, room).await;
    alice_ws.await_members(&[alice]).await;
    assert!(send(&api, &bob_token, room, "m0").await, "a send through the discovered logic");
    assert_eq!(room_messages_until(&mut alice_ws, "m0").await, ["m0"]);

    // A second logic joins and takes traffic.
    let (_logic_b, logic_b_admin) = logic("logic-b", &env).await;
    until_metric(api_admin, r#"courier_discovered_instances{tier="logic"}"#, 2.0).await;
    let admitted = r#"courier_messages_admitted_total{kind="room"}"#;
    let mut acknowledged = Vec::new();
    for i in 1..=40 {
        let msg = format!("m{i}");
        assert!(send(&api, &bob_token, room, &msg).await, "{msg} is acknowledged");
        acknowledged.push(msg);
    }
    assert!(metric(logic_b_admin, admitted).await > 0.0, "the new logic admitted some of the sends");
    assert!(metric(logic_a_admin, admitted).await > 0.0, "the first one still does too");

    // logic-a dies without a word: after a short window every send succeeds
    // again, and nothing acknowledged is lost.
    logic_a.kill().await.expect("kill -9 logic-a");
    let killed = tokio::time::Instant::now();
    let mut succeeded_in_a_row = 0;
    let mut failed = 0;
    let mut i = 41;
    while succeeded_in_a_row < 20 {
        let msg = format!("m{i}");
        i += 1;
        if send(&api, &bob_token, room, &msg).await {
            acknowledged.push(msg);
            succeeded_in_a_row += 1;
        } else {
            failed += 1;
            succeeded_in_a_row = 0;
            assert!(failed < 200, "sends still fail long after logic-a died");
            // A client's pause before it retries (a refused call returns in
            // about a millisecond): 200 failures are 10 s of this.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "after logic-a was killed: {failed} sends failed; 20 in a row succeeded {:?} after the kill",
        killed.elapsed()
    );
    until_metric(api_admin, r#"courier_discovered_instances{tier="logic"}"#, 1.0).await;
    let last = acknowledged.last().cloned().unwrap_or_default();
    let received = room_messages_until(&mut alice_ws, &last).await;
    let missing: Vec<&String> = acknowledged.iter().filter(|m| !received.contains(m)).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");

    // A connect node added: its clients receive messages.
    let mut node1 = connect_node("connect-1", &env).await;
    until_metric(task_admin, r#"courier_discovered_instances{tier="connect"}"#, 2.0).await;
    let mut bob_ws = Ws::connect(node1.ws, &bob_token, room).await;
    bob_ws.await_members(&[alice, bob]).await;
    assert!(send(&api, &alice_token, room, "to both nodes").await);
    assert_eq!(room_messages_until(&mut bob_ws, "to both nodes").await, ["to both nodes"]);
    room_messages_until(&mut alice_ws, "to both nodes").await;

    // It dies: its check goes critical and task stops queueing for it.
    node1.child.kill().await.expect("kill -9 connect-1");
    until_metric(task_admin, r#"courier_discovered_instances{tier="connect"}"#, 1.0).await;
    assert!(send(&api, &bob_token, room, "after connect-1").await);
    room_messages_until(&mut alice_ws, "after connect-1").await;
    drop(node0);
}
