//! Every tier in its own process on the production backends (Kafka, PostgreSQL,
//! Redis from `scripts/services up`): clients on two connect nodes exchange room
//! and private messages, and every frame arrives once and in order.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::tiers::{cluster_env, connect_args, count, free_port, local, metric, start};
use common::{Api, Tcp, Ws};
use serde_json::json;
use tokio::process::{Child, Command};

/// One cluster at a time: two would share two cores with Kafka and starve.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    /// logic, task, task, connect-0, connect-1, api.
    children: Vec<Child>,
    /// Their admin addresses, in the same order.
    admins: Vec<SocketAddr>,
    api: SocketAddr,
    ws: [SocketAddr; 2],
    tcp: [SocketAddr; 2],
    /// This cluster's topics.
    room_topic: String,
    private_topic: String,
    /// The task tier's consumer group prefix.
    task_group: String,
    /// logic's gRPC address.
    logic: SocketAddr,
    /// How logic was started (`children[0]`), to start it again.
    logic_start: (String, Vec<String>, Vec<(&'static str, String)>),
}

impl Cluster {
    /// A cluster on `kafka` (the shared broker when `None`), with `extra`
    /// environment for every tier.
    async fn start_with(data: &Path, kafka: Option<String>, extra: &[(&'static str, &str)]) -> Option<Self> {
        let run = courier_testkit::unique();
        let mut env = cluster_env(data, kafka, run)?;
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let (logic, push) = (free_port(), [free_port(), free_port()]);
        let ws = [local(free_port()), local(free_port())];
        let tcp = [local(free_port()), local(free_port())];
        let api = local(free_port());
        let nodes = format!("connect-0=127.0.0.1:{},connect-1=127.0.0.1:{}", push[0], push[1]);
        let logic_addr = format!("127.0.0.1:{logic}");
        let tiers: Vec<Vec<String>> = vec![
            vec!["logic".into(), "--listen".into(), logic_addr.clone(), "--connect-node".into(), nodes.clone()],
            vec!["task".into(), "--connect-node".into(), nodes.clone()],
            vec!["task".into(), "--connect-node".into(), nodes.clone()],
            connect_args("connect-0", ws[0], tcp[0], local(push[0])),
            connect_args("connect-1", ws[1], tcp[1], local(push[1])),
            vec!["api".into(), "--listen".into(), api.to_string(), "--logic-addr".into(), logic_addr.clone()],
        ];
        let logic_start = (format!("{run}-logic-again"), tiers[0].clone(), env.clone());
        let mut children = Vec::new();
        let mut admins = Vec::new();
        for (n, mut args) in tiers.into_iter().enumerate() {
            if args[0] == "connect" {
                args.extend(["--logic-addr".to_owned(), logic_addr.clone()]);
            }
            let (child, admin) = start(&format!("{run}-{n}-{}", args[0]), &args, &env).await;
            children.push(child);
            admins.push(admin);
        }
        Some(Self {
            children,
            admins,
            api,
            ws,
            tcp,
            room_topic: format!("e2e-{run}-room"),
            private_topic: format!("e2e-{run}-private"),
            task_group: format!("e2e-{run}"),
            logic: local(logic),
            logic_start,
        })
    }

    /// Starts logic again (after a test killed it), on the same address.
    async fn restart_logic(&mut self) {
        let (name, args, env) = &self.logic_start;
        let (child, admin) = start(name, args, env).await;
        (self.children[0], self.admins[0]) = (child, admin);
    }

    /// A connection to the cluster's Redis, and the prefix of its keys.
    async fn redis(&self) -> (redis::aio::MultiplexedConnection, String) {
        let env = &self.logic_start.2;
        let value = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).expect("in the env");
        let client = redis::Client::open(value("COURIER_REDIS")).expect("redis url");
        (client.get_multiplexed_async_connection().await.expect("redis"), value("COURIER_REDIS_PREFIX"))
    }

    /// Sends `signal` (`STOP`, `CONT`) to tier `n`.
    async fn signal(&self, n: usize, signal: &str) {
        let pid = self.children[n].id().expect("the tier runs").to_string();
        let status = Command::new("kill").args([format!("-{signal}"), pid]).status().await.expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }
}

/// One test's turn: the clusters run one at a time, each in a data directory
/// of its own, with an API client and a number unique to the test for names.
/// `None` when the services are not configured. Fields drop in order: the
/// cluster's processes stop before their directory goes and the next test
/// gets its turn.
struct Turn {
    cluster: Cluster,
    api: Api,
    /// Below 10⁹, so names built from it stay within 20 characters.
    run: u64,
    _dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Turn {
    /// Waits for the turn and starts a cluster with `extra` environment.
    async fn take(extra: &[(&'static str, &str)]) -> Option<Self> {
        let serial = ONE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = Cluster::start_with(dir.path(), None, extra).await?;
        let api = Api::new(cluster.api);
        let run = courier_testkit::unique() % 1_000_000_000;
        Some(Self { cluster, api, run, _dir: dir, _serial: serial })
    }
}

#[tokio::test]
async fn messages_cross_processes_once_and_in_order() {
    let Some(Turn { mut cluster, _dir, _serial, .. }) = Turn::take(&[]).await else { return };
    // The tiers speak mutual TLS with each other: plain text, even with the
    // secret, gets nowhere.
    let secret = courier_proto::InternalAuth::new("a-secret-but-no-certificate").expect("secret");
    let plain =
        courier_proto::lazy_channel(&cluster.logic.to_string(), Duration::from_secs(5), &secret).expect("channel");
    let request = courier_proto::logic::TokenRequest { auth_token: "x".into() };
    let refused = courier_proto::logic_client(plain, Duration::from_secs(5), &secret)
        .check_auth(request)
        .await
        .expect_err("plain text");
    // Refused by the transport, before any service (which would answer
    // UNAUTHENTICATED or OK) saw it.
    assert_ne!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let api = Api::new(cluster.api);
    let run = courier_testkit::unique();
    let room = 1_000_000 + run % 1_000_000_000;
    let (alice_token, alice) = api.register(&format!("a{}", run % 1_000_000_000)).await;
    let (bob_token, bob) = api.register(&format!("b{}", run % 1_000_000_000)).await;
    let (carol_token, carol) = api.register(&format!("c{}", run % 1_000_000_000)).await;

    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room).await;
    let mut carol_tcp = Tcp::connect(cluster.tcp[1], &carol_token, room).await;
    alice_ws.await_members(&[alice, bob, carol]).await;
    bob_ws.await_members(&[alice, bob, carol]).await;

    const N: u64 = 30;
    // Room traffic over HTTP from alice, private traffic over the socket from bob.
    for i in 0..N {
        let sent =
            api.post("/push/pushRoom", json!({"authToken": alice_token, "msg": format!("r{i}"), "roomId": room})).await;
        assert_eq!(sent["code"], 0, "{sent}");
        bob_ws.send(json!({"op": 7, "toUserId": alice, "roomId": room, "msg": format!("p{i}"), "clientMsgId": i.to_string()})).await;
    }

    // Every room member, on either node and either transport, gets r0..r29 with
    // seqs 1..30, in order, once.
    let mut room_frames = [Vec::new(), Vec::new(), Vec::new()];
    let mut private_frames = Vec::new();
    while room_frames[0].len() < N as usize || private_frames.len() < N as usize {
        let frame = alice_ws.next().await.expect("alice's socket stays open");
        match frame["op"].as_i64() {
            Some(3) => room_frames[0].push(frame),
            Some(2) => private_frames.push(frame),
            _ => {}
        }
    }
    while room_frames[1].len() < N as usize {
        let frame = bob_ws.next_op(3).await;
        room_frames[1].push(frame);
    }
    while room_frames[2].len() < N as usize {
        room_frames[2].push(carol_tcp.next_op(3).await);
    }
    for frames in &room_frames {
        let got: Vec<(String, u64)> = frames
            .iter()
            .map(|f| (f["msg"].as_str().unwrap_or("").to_owned(), f["seq"].as_u64().unwrap_or(0)))
            .collect();
        let want: Vec<(String, u64)> = (0..N).map(|i| (format!("r{i}"), i + 1)).collect();
        assert_eq!(got, want);
        assert!(frames.iter().all(|f| f["stream"] == format!("room:{room}") && f["fromUserId"] == alice));
    }
    let got: Vec<(String, u64)> = private_frames
        .iter()
        .map(|f| (f["msg"].as_str().unwrap_or("").to_owned(), f["seq"].as_u64().unwrap_or(0)))
        .collect();
    let want: Vec<(String, u64)> = (0..N).map(|i| (format!("p{i}"), i + 1)).collect();
    assert_eq!(got, want, "bob's private messages reach alice once, in order");
    assert!(private_frames.iter().all(|f| f["fromUserId"] == bob && f["stream"] == format!("user:{alice}")));

    // connect-0 dies with alice on it; she reconnects to connect-1 and resumes.
    let position = json!({"epoch": room_frames[0][N as usize - 1]["epoch"], "seq": N});
    cluster.children[3].kill().await.expect("kill connect-0");
    drop(alice_ws);
    for i in N..N + 10 {
        let sent =
            api.post("/push/pushRoom", json!({"authToken": bob_token, "msg": format!("r{i}"), "roomId": room})).await;
        assert_eq!(sent["code"], 0, "{sent}");
    }
    let mut alice_ws =
        Ws::connect_with(cluster.ws[1], json!({"authToken": alice_token, "roomId": room, "since": position})).await;
    let missed = alice_ws.take_op(3, 10).await;
    let got: Vec<(String, u64)> =
        missed.iter().map(|f| (f["msg"].as_str().unwrap_or("").to_owned(), f["seq"].as_u64().unwrap_or(0))).collect();
    let want: Vec<(String, u64)> = (N..N + 10).map(|i| (format!("r{i}"), i + 1)).collect();
    assert_eq!(got, want, "exactly the messages missed while moving nodes");
}

#[tokio::test]
async fn a_task_worker_killed_mid_stream_loses_nothing() {
    let Some(Turn { mut cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let (alice_token, alice) = api.register(&format!("ka{run}")).await;
    let (bob_token, bob) = api.register(&format!("kb{run}")).await;
    // Several rooms, so both workers own some of their partitions.
    let rooms: Vec<u64> = (0..6).map(|i| 2_000_000_000 + (run % 1_000_000) * 10 + i).collect();
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, rooms[0]).await;
    alice_ws.await_members(&[alice]).await;
    for room in &rooms[1..] {
        alice_ws.send(json!({"op": 10, "roomId": room})).await;
    }
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, rooms[0]).await;
    bob_ws.await_members(&[alice, bob]).await;

    const PER_ROOM: u64 = 40;
    let sender_rooms = rooms.clone();
    let sender = tokio::spawn(async move {
        for i in 0..PER_ROOM {
            for room in &sender_rooms {
                let frame = json!({"op": 7, "roomId": room, "msg": format!("{room}:{i}"), "clientMsgId": format!("{room}-{i}")});
                bob_ws.send(frame).await;
            }
            // Private traffic too: its topic's partitions may sit with the other worker.
            let frame = json!({"op": 7, "toUserId": alice, "roomId": sender_rooms[0], "msg": format!("p{i}"), "clientMsgId": format!("p-{i}")});
            bob_ws.send(frame).await;
        }
        bob_ws.take_op(8, (PER_ROOM as usize) * (sender_rooms.len() + 1)).await
    });

    // Per stream (each room, and alice's inbox), the seqs alice received.
    let mut per_stream: std::collections::BTreeMap<String, Vec<u64>> = std::collections::BTreeMap::new();
    let total = PER_ROOM as usize * (rooms.len() + 1);
    let mut received = 0;
    let mut killed = false;
    while received < total {
        let frame = alice_ws.next().await.expect("alice's socket stays open");
        if frame["op"] != 3 && frame["op"] != 2 {
            continue;
        }
        let stream = frame["stream"].as_str().expect("stream").to_owned();
        per_stream.entry(stream).or_default().push(frame["seq"].as_u64().expect("seq"));
        received += 1;
        if received == total / 5 && !killed {
            // Both workers are handling records (the group split the partitions);
            // now kill -9 one of them while messages flow.
            let metrics = format!("http://{}/metrics", cluster.admins[2]);
            courier_testkit::eventually("task-1 consuming", Duration::from_secs(15), || async {
                let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
                text.contains("courier_records_consumed_total{").then_some(())
            })
            .await;
            cluster.children[2].kill().await.expect("kill task-1");
            killed = true;
        }
    }
    let acks = sender.await.expect("sender");
    assert_eq!(acks.len(), total, "every send acknowledged");
    let streams: Vec<String> =
        rooms.iter().map(|r| format!("room:{r}")).chain(std::iter::once(format!("user:{alice}"))).collect();
    for stream in &streams {
        let want: Vec<u64> = (1..=PER_ROOM).collect();
        assert_eq!(per_stream.get(stream), Some(&want), "{stream}: every message once, in order");
    }
}

#[tokio::test]
async fn recovery_offline_messages_and_history_on_the_production_backends() {
    let Some(Turn { cluster, run, _dir, _serial, .. }) = Turn::take(&[]).await else { return };
    // The same bodies as tests/recovery.rs, clients on connect-1.
    let target = |n: u64| common::recovery::Target {
        api: cluster.api,
        ws: cluster.ws[1],
        prefix: format!("r{n}{}", run % 10_000_000),
        room_base: 3_000_000_000 + run * 100 + n * 10,
    };
    common::recovery::reconnecting_with_since_gets_exactly_the_missed_messages(&target(1)).await;
    common::recovery::joining_while_messages_flow_has_no_gap_or_duplicate(&target(2)).await;
    common::recovery::offline_private_messages_arrive_on_the_next_connect(&target(3)).await;
    common::recovery::history_pages_are_complete_and_ordered(&target(4)).await;
}

#[tokio::test]
async fn a_record_the_store_cannot_keep_is_set_aside_and_its_partition_moves_on() {
    use courier_proto::record::{MessageKind, MessageRecord};
    use prost::Message as _;

    let Some(Turn { cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let room = 5_000_000_000 + run;
    let (alice_token, alice) = api.register(&format!("da{run}")).await;
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    alice_ws.await_members(&[alice]).await;

    // Admission refuses a NUL on every path, so this record is produced straight
    // to the room's partition, as a buggy or hostile producer could.
    let kafka = courier_testkit::service("COURIER_KAFKA").expect("kafka address");
    let queue = courier_queue::kafka::KafkaQueue::connect(courier_queue::kafka::KafkaOptions::new(kafka))
        .expect("kafka client");
    let poison = MessageRecord {
        version: 1,
        msg_id: 1_000_000 + run,
        kind: MessageKind::Room as i32,
        room_id: room,
        from_user_id: alice,
        from_user_name: format!("da{run}"),
        body: "PostgreSQL cannot store \0 in text".into(),
        admitted_us: 1_000,
        ..MessageRecord::default()
    }
    .encode_to_vec();
    let key = format!("room:{room}");
    let at = courier_queue::Queue::produce(&queue, &cluster.room_topic, &key, &poison).await.expect("produce");

    // Later messages of the same room (the same partition) still arrive.
    for i in 0..5 {
        let sent =
            api.post("/push/pushRoom", json!({"authToken": alice_token, "msg": format!("m{i}"), "roomId": room})).await;
        assert_eq!(sent["code"], 0, "{sent}");
    }
    let frames = alice_ws.take_op(3, 5).await;
    let got: Vec<(String, u64)> =
        frames.iter().map(|f| (f["msg"].as_str().unwrap_or("").to_owned(), f["seq"].as_u64().unwrap_or(0))).collect();
    assert_eq!(got, (0..5).map(|i| (format!("m{i}"), i + 1)).collect::<Vec<_>>());

    // The poison record is kept, raw, with PostgreSQL's reason.
    let postgres = courier_testkit::service("COURIER_POSTGRES").expect("postgres address");
    let store = courier_store::postgres::PgStore::connect(&postgres).await.expect("store");
    let letters = courier_store::HistoryStore::dead_letters(&store, &cluster.room_topic, 10).await.expect("read");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].partition, letters[0].offset), (at.partition, at.offset));
    assert_eq!(letters[0].value, poison);
    assert_eq!(letters[0].key, key.as_bytes());
    assert!(letters[0].error.contains("0x00"), "PostgreSQL's reason: {}", letters[0].error);
    let task_admins = [cluster.admins[1], cluster.admins[2]];
    let counted = count(task_admins[0], r#"courier_errors_total{reason="dead_letter"}"#).await
        + count(task_admins[1], r#"courier_errors_total{reason="dead_letter"}"#).await;
    assert_eq!(counted, 1.0, "counted once, by the worker owning the partition");
}

/// While logic is away, a closing connection closes at once: its presence is
/// released in the background, retried until logic answers, so once logic is
/// back the room counts only who is still in it.
#[tokio::test]
async fn connections_close_while_logic_is_away_and_presence_catches_up() {
    let Some(Turn { mut cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let room = 6_000_000_000 + run;
    let (stay_token, stay) = api.register(&format!("ls{run}")).await;
    let mut staying = Ws::connect(cluster.ws[1], &stay_token, room).await;
    let mut leaving = Vec::new();
    let mut everyone = vec![stay];
    for i in 0..5 {
        let (token, id) = api.register(&format!("lg{run}x{i}")).await;
        leaving.push(Ws::connect(cluster.ws[0], &token, room).await);
        everyone.push(id);
    }
    staying.await_members(&everyone).await;

    cluster.children[0].kill().await.expect("kill logic");
    for ws in leaving {
        ws.close().await;
    }
    // connect-0 says it cannot serve while its heartbeats do not reach logic.
    let connect_admin = cluster.admins[3];
    let connect_ready = || async { common::tiers::readyz(connect_admin).await.expect("connect answers") };
    courier_testkit::eventually("connect to say logic is away", Duration::from_secs(30), || async {
        let (ready, body) = connect_ready().await;
        (!ready && body.contains("logic heartbeat")).then_some(())
    })
    .await;
    cluster.restart_logic().await;
    courier_testkit::eventually("connect to be ready again", Duration::from_secs(30), || async {
        connect_ready().await.0.then_some(())
    })
    .await;
    // The five releases reach the new logic; the member list pushed to who
    // stayed ends up naming them alone.
    loop {
        let members = staying.next_op(5).await;
        let names = members["roomUserInfo"].as_object().map(|m| m.len()).unwrap_or_default();
        if names == 1 && members["roomUserInfo"].get(stay.to_string()).is_some() {
            break;
        }
    }
}

/// logic's worker-id lease lost (here: deleted from Redis, as a Redis that
/// restarts empty loses it): sends pause with a clear error instead of logic
/// stopping, logic leases a worker id again and, after waiting out anyone who
/// might still use that id, admits sends again — by itself.
#[tokio::test]
async fn a_lost_worker_id_lease_pauses_sends_until_logic_leases_one_again() {
    // A lease long enough that the pause is seen (sends are refused for at
    // least two fifths of it).
    let lease = [("COURIER_WORKER_LEASE_MS", "12000")];
    let Some(Turn { mut cluster, api, run, _dir, _serial }) = Turn::take(&lease).await else { return };
    let room = 7_000_000_000 + run;
    let (token, me) = api.register(&format!("wl{run}")).await;
    let mut ws = Ws::connect(cluster.ws[0], &token, room).await;
    ws.await_members(&[me]).await;
    let send = |msg: String| {
        let (api, token) = (&api, &token);
        async move { api.post("/push/pushRoom", json!({"authToken": token, "msg": msg, "roomId": room})).await }
    };
    assert_eq!(send("before".into()).await["code"], 0);

    let logic_admin = cluster.admins[0];
    let paused = || metric(logic_admin, "courier_errors_total{reason=\"ids_paused\"}");
    let paused_before = paused().await;
    assert_eq!(paused_before, 1.0, "started on a Redis with no lease records, logic waited before its first send");
    let (mut redis, prefix) = cluster.redis().await;
    let leases: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}worker:*")).query_async(&mut redis).await.expect("keys");
    assert_eq!(leases.len(), 1, "logic holds one worker id: {leases:?}");
    let _: i64 = redis::cmd("DEL").arg(&leases).query_async(&mut redis).await.expect("del");

    let mut n = 0;
    let refusal = courier_testkit::eventually("sends to be paused", Duration::from_secs(30), || {
        n += 1;
        let sent = send(format!("during-{n}"));
        async move {
            let reply = sent.await;
            (reply["code"] != 0).then_some(reply)
        }
    })
    .await;
    assert!(refusal["message"].as_str().is_some_and(|m| !m.is_empty()), "a clear error: {refusal}");
    let readyz = format!("http://{}/readyz", cluster.admins[0]);
    let ready = || async { reqwest::get(&readyz).await.expect("readyz answers").status().is_success() };
    courier_testkit::eventually("logic to say it is not ready while paused", Duration::from_secs(30), || async {
        (!ready().await).then_some(())
    })
    .await;
    courier_testkit::eventually("sends to be admitted again", Duration::from_secs(60), || async {
        (send("after".into()).await["code"] == 0).then_some(())
    })
    .await;
    assert!(cluster.children[0].try_wait().expect("logic's status").is_none(), "logic kept running");
    assert!(ready().await, "ready again once it admits sends");
    while ws.next_op(3).await["msg"] != "after" {}
    assert_eq!(paused().await - paused_before, 1.0, "paused once");
}

/// A connect node that stalls past its lease (here: stopped with SIGSTOP; a
/// long pause or a partition from logic does the same) is reaped, and once it
/// runs again it registers the connections it still holds: its users count
/// and are reached again, without reconnecting.
#[tokio::test]
async fn a_connect_node_reaped_while_stalled_registers_its_connections_again() {
    let Some(Turn { cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let (room, other_room) = (8_000_000_000 + run, 8_500_000_000 + run);
    let (alice_token, alice) = api.register(&format!("sa{run}")).await;
    let (bob_token, bob) = api.register(&format!("sb{run}")).await;
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    alice_ws.send(json!({"op": 10, "roomId": other_room})).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room).await;
    bob_ws.await_members(&[alice, bob]).await;
    alice_ws.await_members(&[alice, bob]).await;

    cluster.signal(3, "STOP").await; // connect-0, holding alice
    let reaped = loop {
        let frame = bob_ws.next_op(5).await;
        if frame["count"] == 1 {
            break frame;
        }
    };
    assert!(reaped["roomUserInfo"].get(alice.to_string()).is_none(), "alice was reaped: {reaped}");
    cluster.signal(3, "CONT").await;
    bob_ws.await_members(&[alice, bob]).await;

    // Routes are back too: her private messages and both rooms reach her.
    let sends = [
        ("/push/push", json!({"authToken": bob_token, "msg": "to alice", "toUserId": alice, "roomId": room})),
        ("/push/pushRoom", json!({"authToken": bob_token, "msg": "to the room", "roomId": room})),
        ("/push/pushRoom", json!({"authToken": bob_token, "msg": "to the other room", "roomId": other_room})),
    ];
    for (path, body) in sends {
        let answer = api.post(path, body).await;
        assert_eq!(answer["code"], 0, "{answer}");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = alice_ws.next().await.expect("alice stays connected");
        if matches!(frame["op"].as_i64(), Some(2 | 3)) {
            got.push(frame["msg"].as_str().expect("msg").to_owned());
        }
    }
    got.sort();
    assert_eq!(got, ["to alice", "to the other room", "to the room"]);
    assert_eq!(metric(cluster.admins[3], "courier_errors_total{reason=\"presence_lost\"}").await, 1.0);
}

/// Redis comes back empty (a restart without persistence): every session,
/// presence entry and lease is gone. Connected clients are told to log in
/// again; once they do, the cluster works again by itself (logic leases a
/// worker id again and admits sends).
#[tokio::test]
async fn a_redis_that_comes_back_empty_sends_clients_to_log_in_and_recovers() {
    let Some(Turn { cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let room = 9_000_000_000 + run;
    let (alice_name, bob_name) = (format!("ea{run}"), format!("eb{run}"));
    let (alice_token, alice) = api.register(&alice_name).await;
    let (bob_token, bob) = api.register(&bob_name).await;
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room).await;
    bob_ws.await_members(&[alice, bob]).await;

    let (mut redis, prefix) = cluster.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.expect("keys");
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.expect("del");

    for ws in [&mut alice_ws, &mut bob_ws] {
        let (code, reason) = ws.closed().await.expect("a close frame");
        assert_eq!(code, 1008, "{reason}");
        assert!(reason.contains("log in again"), "{reason}");
    }
    let log_in = |name: String| {
        let api = &api;
        async move {
            let answer = api.post("/user/login", json!({"userName": name, "passWord": "secret-pw"})).await;
            assert_eq!(answer["code"], 0, "{answer}");
            answer["data"].as_str().expect("token").to_owned()
        }
    };
    let (alice_token, bob_token) = (log_in(alice_name).await, log_in(bob_name).await);
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room).await;
    bob_ws.await_members(&[alice, bob]).await;
    courier_testkit::eventually("sends to be admitted again", Duration::from_secs(60), || async {
        let sent = api.post("/push/pushRoom", json!({"authToken": bob_token, "msg": "back", "roomId": room})).await;
        (sent["code"] == 0).then_some(())
    })
    .await;
    while alice_ws.next_op(3).await["msg"] != "back" {}
}

#[tokio::test]
async fn a_crashed_connect_node_is_reaped_from_presence() {
    let Some(Turn { mut cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let room = 4_000_000_000 + run;
    let (alice_token, alice) = api.register(&format!("na{run}")).await;
    let (bob_token, bob) = api.register(&format!("nb{run}")).await;
    let _alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room).await;
    bob_ws.await_members(&[alice, bob]).await;

    // connect-0 dies without a goodbye: alice's connection is never released.
    cluster.children[3].kill().await.expect("kill connect-0");
    let update = loop {
        let frame = bob_ws.next_op(5).await;
        if frame["count"] == 1 {
            break frame;
        }
    };
    assert!(update["roomUserInfo"].get(alice.to_string()).is_none(), "alice is no longer counted: {update}");
    assert_eq!(update["roomUserInfo"][bob.to_string()], format!("nb{run}"));
}

#[tokio::test]
async fn pushes_reach_only_the_nodes_holding_their_users_and_rooms() {
    let Some(Turn { cluster, api, run, _dir, _serial }) = Turn::take(&[]).await else { return };
    let (room_0, room_1) = (5_000_000_000 + run, 6_000_000_000 + run);
    let (alice_token, alice) = api.register(&format!("ra{run}")).await;
    let (bob_token, bob) = api.register(&format!("rb{run}")).await;
    let (carol_token, carol) = api.register(&format!("rc{run}")).await;
    let (dave_token, dave) = api.register(&format!("rd{run}")).await;
    // alice and dave in room_0 on connect-0; bob and carol in room_1 on connect-1.
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room_0).await;
    let mut dave_ws = Ws::connect(cluster.ws[0], &dave_token, room_0).await;
    let mut bob_ws = Ws::connect(cluster.ws[1], &bob_token, room_1).await;
    let mut carol_ws = Ws::connect(cluster.ws[1], &carol_token, room_1).await;
    dave_ws.await_members(&[alice, dave]).await;
    carol_ws.await_members(&[bob, carol]).await;

    const N: usize = 10;
    for i in 0..N {
        alice_ws.send(json!({"op": 7, "toUserId": bob, "msg": format!("ab{i}"), "clientMsgId": format!("a{i}")})).await;
        bob_ws.send(json!({"op": 7, "toUserId": alice, "msg": format!("ba{i}"), "clientMsgId": format!("b{i}")})).await;
        for (token, room) in [(&carol_token, room_1), (&dave_token, room_0)] {
            let sent =
                api.post("/push/pushRoom", json!({"authToken": token, "msg": format!("r{i}"), "roomId": room})).await;
            assert_eq!(sent["code"], 0, "{sent}");
        }
    }
    // Each gets the other's messages and the copies of its own (op 2), and its
    // room's (op 3): all of it, so every push for these users has arrived.
    for (ws, from) in [(&mut alice_ws, bob), (&mut bob_ws, alice)] {
        let frames = ws.take_op(2, 2 * N).await;
        assert_eq!(frames.iter().filter(|f| f["fromUserId"] == from).count(), N);
    }
    for ws in [&mut carol_ws, &mut dave_ws] {
        assert_eq!(ws.take_op(3, N).await.len(), N);
    }

    // Without routes every frame went to both nodes, and each dropped the half
    // it had no channel for.
    let unmatched = r#"courier_pushed_frames_total{result="unmatched"}"#;
    let matched = r#"courier_pushed_frames_total{result="matched"}"#;
    for (node, admin) in [("connect-0", cluster.admins[3]), ("connect-1", cluster.admins[4])] {
        assert_eq!(metric(admin, unmatched).await, 0.0, "{node} received frames for users it does not hold");
        assert!(metric(admin, matched).await >= (3 * N) as f64, "{node} received its users' frames");
    }
}

/// A Kafka broker of the test's own (ports, directory), started and stopped with
/// `scripts/services kafka-up | kafka-down`, so stopping it disturbs no other test.
struct Broker {
    env: Vec<(&'static str, String)>,
    addr: String,
}

impl Broker {
    async fn start(dir: &Path) -> Self {
        let (port, controller) = (free_port(), free_port());
        let env = vec![
            ("COURIER_KAFKA_PORT", port.to_string()),
            ("COURIER_KAFKA_CONTROLLER_PORT", controller.to_string()),
            ("COURIER_KAFKA_DIR", dir.display().to_string()),
        ];
        let broker = Self { env, addr: format!("127.0.0.1:{port}") };
        broker.run("kafka-up").await;
        broker
    }

    async fn run(&self, command: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .status()
            .await
            .expect("scripts/services runs");
        assert!(status.success(), "scripts/services {command} failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
            .arg("kafka-down")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn the_kafka_broker_stopped_and_restarted_during_sends() {
    let _serial = ONE_AT_A_TIME.lock().await;
    if courier_testkit::service("COURIER_KAFKA").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&dir.path().join("kafka")).await;
    let extra = [("COURIER_KAFKA_DELIVERY_TIMEOUT_MS", "3000")];
    let Some(cluster) = Cluster::start_with(dir.path(), Some(broker.addr.clone()), &extra).await else { return };
    let api = Api::new(cluster.api);
    let run = courier_testkit::unique() % 1_000_000_000;
    let room = 5_000_000_000 + run;
    let (alice_token, alice) = api.register(&format!("ba{run}")).await;
    let (bob_token, bob) = api.register(&format!("bb{run}")).await;
    let mut alice_ws = Ws::connect(cluster.ws[0], &alice_token, room).await;
    alice_ws.await_members(&[alice]).await;

    // Alice reads all along (her connection must keep answering heartbeats).
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let done = tokio_util::sync::CancellationToken::new();
    let reader = tokio::spawn({
        let (received, done) = (received.clone(), done.clone());
        async move {
            while !done.is_cancelled() {
                match alice_ws.next_within(Duration::from_millis(500)).await {
                    Ok(Some(frame)) if frame["op"] == 3 => received.lock().expect("frames").push(frame),
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => panic!("alice's connection closed"),
                }
            }
        }
    });

    let send = |i: usize| {
        let body = json!({"authToken": bob_token, "msg": format!("m{i}"), "roomId": room});
        let api = &api;
        async move { api.post("/push/pushRoom", body).await }
    };
    // Whether each send, m0, m1, …, was acknowledged.
    let mut acked = Vec::new();
    for i in 0..15 {
        let answer = send(i).await;
        assert_eq!(answer["code"], 0, "the broker is up: {answer}");
        acked.push(true);
    }
    broker.run("kafka-down").await;
    for i in 15..18 {
        let answer = send(i).await;
        assert_ne!(answer["code"], 0, "a send while the broker is down is refused: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "with a reason: {answer}");
        acked.push(false);
    }
    broker.run("kafka-up").await;
    // Sends succeed again once the clients have reconnected.
    let mut acked_after = 0;
    while acked_after < 15 {
        let i = acked.len();
        assert!(i < 300, "sends keep failing after the broker came back");
        let ok = send(i).await["code"] == 0;
        acked_after += usize::from(ok);
        acked.push(ok);
    }

    // Every acknowledged message reaches alice once, in order, with gap-free
    // seqs; a refused one may have reached Kafka anyway (its fate was unknown),
    // but then also only once and in order.
    let want: Vec<String> = (0..acked.len()).filter(|i| acked[*i]).map(|i| format!("m{i}")).collect();
    let frames = courier_testkit::eventually("every acknowledged message delivered", Duration::from_secs(60), || {
        let frames = received.lock().expect("frames").clone();
        let bodies: Vec<String> = frames.iter().map(|f| f["msg"].as_str().unwrap_or_default().to_owned()).collect();
        let complete = want.iter().all(|w| bodies.contains(w));
        async move { complete.then_some(frames) }
    })
    .await;
    done.cancel();
    reader.await.expect("reader");
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap_or(0)).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>(), "gap-free seqs, no duplicate");
    let sent: Vec<usize> = frames
        .iter()
        .map(|f| f["msg"].as_str().and_then(|m| m.strip_prefix('m')).and_then(|n| n.parse().ok()).expect("mN"))
        .collect();
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "in send order, each once: {sent:?}");
    assert!(frames.iter().all(|f| f["fromUserId"] == bob));
}

/// The offsets task's groups have committed for the cluster's topics.
fn committed_offsets(brokers: &str, cluster: &Cluster) -> Vec<(String, i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let mut committed = Vec::new();
    for topic in [&cluster.room_topic, &cluster.private_topic] {
        // A consumer of the group that never subscribes: it only asks.
        let group = format!("{}.{topic}", cluster.task_group);
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut partitions = rdkafka::TopicPartitionList::new();
        for partition in 0..8 {
            partitions.add_partition(topic, partition);
        }
        let offsets = consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
        for element in offsets.elements() {
            let offset = match element.offset() {
                rdkafka::Offset::Offset(offset) => offset,
                _ => -1,
            };
            committed.push((element.topic().to_owned(), element.partition(), offset));
        }
    }
    committed
}

/// The consumer groups the broker knows.
fn groups(brokers: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    let list = consumer.fetch_group_list(None, Duration::from_secs(10)).expect("group list");
    list.groups().iter().map(|g| g.name().to_owned()).collect()
}

#[tokio::test]
async fn replay_exports_and_rebuilds_from_kafka_without_disturbing_the_cluster() {
    use std::sync::Arc;

    use common::replay;
    use courier_queue::kafka::KafkaTopicReader;
    use courier_store::HistoryStore as _;
    use courier_store::postgres::PgStore;

    let Some(Turn { cluster, run, _dir, _serial, .. }) = Turn::take(&[]).await else { return };
    let brokers = courier_testkit::service("COURIER_KAFKA").expect("brokers");
    let postgres = courier_testkit::service("COURIER_POSTGRES").expect("PostgreSQL");
    let rooms = [4_000_000_000 + run * 10, 4_000_000_000 + run * 10 + 1];
    let traffic = replay::send_traffic(cluster.api, &format!("k{}", run % 1_000_000), rooms).await;
    replay::await_persisted(cluster.api, &traffic).await;
    let topics = (cluster.room_topic.as_str(), cluster.private_topic.as_str());
    let reader = KafkaTopicReader::connect(&brokers).expect("reader");

    // Reading moves nothing task relies on: its committed offsets stay
    // where they are, and no group of the reader's ever exists.
    let committed = courier_testkit::eventually("task to commit every record", common::PATIENCE, || async {
        let committed = committed_offsets(&brokers, &cluster);
        for (topic, partition, offset) in &committed {
            let end = courier_queue::TopicReader::bounds(&reader, topic, *partition as u32).await.expect("bounds").end;
            if end > 0 && *offset != end as i64 {
                return None;
            }
        }
        Some(committed)
    })
    .await;
    let history = replay::history(cluster.api, &traffic).await;
    replay::exports_match_what_was_sent(&reader, &traffic, &history, topics).await;
    assert_eq!(committed_offsets(&brokers, &cluster), committed, "task's offsets did not move");
    let readers: Vec<String> = groups(&brokers).into_iter().filter(|g| g.starts_with("courier-reader")).collect();
    assert!(readers.is_empty(), "replay joined no group: {readers:?}");

    // Exports running beside live traffic disturb no client.
    let api = common::Api::new(cluster.api);
    let (token, me) = api.register(&format!("k{}live", run % 1_000_000)).await;
    let live_room = rooms[0] + 2;
    let mut client = Ws::connect(cluster.ws[0], &token, live_room).await;
    client.await_members(&[me]).await;
    let sending = tokio::spawn({
        let api = api.clone();
        async move {
            for i in 0..60 {
                let body = format!("live-{i}");
                let answer =
                    api.post("/push/pushRoom", json!({"authToken": token, "msg": body, "roomId": live_room})).await;
                assert_eq!(answer["code"], 0, "{answer}");
            }
        }
    });
    let exporting = async {
        let mut exports = 0;
        while !sending.is_finished() {
            replay::export(
                &reader,
                &courier_replay::Selection {
                    room_topic: topics.0.to_owned(),
                    private_topic: topics.1.to_owned(),
                    ..courier_replay::Selection::everything()
                },
            )
            .await;
            exports += 1;
        }
        exports
    };
    let (frames, exports) = tokio::join!(client.take_op(3, 60), exporting);
    let bodies: Vec<String> = frames.iter().map(|f| f["msg"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(bodies, (0..60).map(|i| format!("live-{i}")).collect::<Vec<_>>(), "every live message, in order");
    assert!(exports >= 1, "exports ran while the traffic flowed");

    // The history rebuilt into an empty database is the one the cluster built.
    let database = format!("courier_replay_{run}");
    let admin = sqlx::PgPool::connect(&postgres).await.expect("PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin).await.expect("create");
    let (base, _) = postgres.rsplit_once('/').expect("a database URL");
    let fresh = Arc::new(PgStore::connect(&format!("{base}/{database}")).await.expect("fresh database"));
    let summary = replay::rebuild(&reader, fresh.clone(), topics).await;
    assert!(summary.new_epochs.is_empty(), "{summary:?}");
    let original = PgStore::connect(&postgres).await.expect("the cluster's database");
    let mut streams: Vec<courier_store::StreamId> =
        rooms.iter().map(|room| courier_store::StreamId::Room(*room)).collect();
    streams.extend(traffic.users.iter().map(|u| courier_store::StreamId::Inbox(u.id)));
    for stream in streams {
        let read = |store: &PgStore| {
            let store = store.clone();
            async move {
                let page = store.read_after(stream, 0, 1000).await.expect("read");
                page.into_iter().map(|m| (m.position, m.message.msg_id, m.message.body)).collect::<Vec<_>>()
            }
        };
        let (was, rebuilt) = (read(&original).await, read(&fresh).await);
        assert!(!was.is_empty(), "{stream} has history");
        assert_eq!(rebuilt, was, "{stream}: same epoch, seqs, ids and bodies");
    }
}

/// `courier bench connections` over several worker processes: the path a
/// million connections take, at three thousand. Every user is registered and
/// its connection opened from its worker's own source address; room and
/// private messages reach every receiver while all are held; when a connect
/// node is killed, its users come back on the other one and messages reach
/// them there.
#[tokio::test]
async fn the_bench_holds_connections_over_several_processes_and_through_a_node_kill() {
    // Three thousand registrations from one address, in a debug build: no
    // login limits, and a cheap password hash.
    let env = [
        ("COURIER_PASSWORD_MEMORY_KIB", "64"),
        ("COURIER_PASSWORD_ITERATIONS", "1"),
        ("COURIER_LOGINS_PER_MINUTE", "0"),
        ("COURIER_LOGINS_PER_MINUTE_PER_IP", "0"),
    ];
    let Some(Turn { cluster, run, _dir, _serial, .. }) = Turn::take(&env).await else { return };
    let pids: Vec<String> = cluster.children.iter().filter_map(|c| c.id()).map(|p| p.to_string()).collect();
    let redis = cluster.logic_start.2.iter().find(|(k, _)| *k == "COURIER_REDIS").map(|(_, v)| v.clone());
    let ws = format!("ws://{}/ws,ws://{}/ws", cluster.ws[0], cluster.ws[1]);
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["bench", "--json", "--api", &format!("http://{}", cluster.api), "--ws", &ws])
        .args(["--prefix", &format!("h{run}"), "--pid", &pids.join(",")])
        .args(["connections", "--count", "3000", "--per-process", "750", "--rooms", "300", "--probe", "20"])
        .args(["--kill-node", "1", "--redis", &redis.expect("the cluster's Redis"), "--reap-wait", "3"])
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("courier bench runs");
    assert!(output.status.success(), "bench failed: {}", String::from_utf8_lossy(&output.stdout));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");

    assert_eq!(report["workers"], 4);
    assert_eq!(report["connections_held"], 3000, "errors: {}", report["errors"]);
    let phases = report["phases"].as_array().expect("phases");
    let named = |name: &str| phases.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("phase {name}"));
    for phase in ["log in", "open"] {
        assert_eq!(named(phase)["done"], 3000, "{phase}: {}", named(phase));
        assert_eq!(named(phase)["failed"], 0, "{phase}: {}", named(phase));
    }
    // Workers took the nodes in turn: two workers, 1500 connections each.
    let processes = report["connect_processes"].as_array().expect("connect processes");
    assert_eq!(processes.len(), 2);
    assert!(processes.iter().all(|p| p["connections"] == 1500), "{processes:?}");
    assert!(processes.iter().all(|p| p["held_bytes"].as_u64() > p["logged_in_bytes"].as_u64()), "{processes:?}");

    // Ten members a room: a room message reaches ten connections, a private
    // message its recipient and its sender's own copy.
    let probes = report["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 2, "{probes:?}");
    for probe in probes {
        assert_eq!(probe["send_failures"], 0, "{probe}");
        assert_eq!(probe["expected_deliveries"], 20 * 10 + 20 * 2, "{probe}");
        assert_eq!(probe["delivered"], probe["expected_deliveries"], "{probe}");
    }
    let kill = &report["kill"];
    assert_eq!(kill["connections_on_node"], 1500, "{kill}");
    assert_eq!(kill["reconnected"], 1500, "{kill}");
    assert!(kill["redis_pings"].as_u64() > Some(0), "{kill}");
    assert!(report["timeline"].as_array().is_some_and(|t| !t.is_empty()));
}
