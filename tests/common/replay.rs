//! `courier replay` checked against what was sent: traffic in two rooms and
//! three private conversations, sent in two phases, then exported whole, by
//! room, by user and by time, and the history as the API answers it,
//! compared before and after a rebuild. Written once; run on a standalone
//! data directory (`tests/replay.rs`) and on Kafka (`tests/cluster.rs`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use courier_queue::TopicReader;
use courier_replay::report::{Progress, Summary};
use courier_replay::{Plan, Selection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Api, PATIENCE};

/// One message sent and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub room: Option<u64>,
    pub from: u64,
    pub to: Option<u64>,
    pub body: String,
}

/// A user of the traffic.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub id: u64,
    pub token: String,
}

/// What was sent, and when the second phase began.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub rooms: [u64; 2],
    pub users: [User; 3],
    pub sent: Vec<Sent>,
    /// Unix ms: every first-phase record was appended before it, every
    /// second-phase one at or after it.
    pub boundary: i64,
}

impl Traffic {
    pub fn room_bodies(&self, room: u64) -> Vec<String> {
        self.sent.iter().filter(|s| s.room == Some(room) && s.to.is_none()).map(|s| s.body.clone()).collect()
    }

    /// Private messages from `from` to `to`, in send order.
    pub fn conversation(&self, from: u64, to: u64) -> Vec<String> {
        self.sent.iter().filter(|s| s.from == from && s.to == Some(to)).map(|s| s.body.clone()).collect()
    }
}

/// Waits until the clock is past every record appended so far, and returns
/// the time from which new records are stamped.
async fn next_millisecond() -> i64 {
    let before = courier_ids::now_unix_ms();
    while courier_ids::now_unix_ms() <= before {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    courier_ids::now_unix_ms()
}

/// Sends the traffic through `api`: room messages in `rooms`, private ones
/// between three new users named with `prefix`, the three conversations at
/// once (each one's messages in turn), so ann's inbox takes what she sends
/// and what she gets at the same moments.
pub async fn send_traffic(api: SocketAddr, prefix: &str, rooms: [u64; 2]) -> Traffic {
    let api = Api::new(api);
    let mut users = Vec::new();
    for name in ["ann", "bob", "cat"] {
        let name = format!("{prefix}{name}");
        let (token, id) = api.register(&name).await;
        users.push(User { name, id, token });
    }
    let [ann, bob, cat]: [User; 3] = users.try_into().expect("three users");
    let mut sent = Vec::new();
    let mut boundary = 0;
    for phase in 1..=2 {
        if phase == 2 {
            boundary = next_millisecond().await;
        }
        for i in 0..4 {
            for (user, room) in [(&ann, rooms[0]), (&bob, rooms[1])] {
                let body = format!("{}-room{room}-{phase}.{i}", user.name);
                let answer =
                    api.post("/push/pushRoom", json!({"authToken": user.token, "msg": body, "roomId": room})).await;
                assert_eq!(answer["code"], 0, "{answer}");
                sent.push(Sent { room: Some(room), from: user.id, to: None, body });
            }
        }
        let conversation = |from: &User, to: &User| {
            let (api, from, to) = (api.clone(), from.clone(), to.clone());
            async move {
                let mut sent = Vec::new();
                for i in 0..3 {
                    let body = format!("{}-to-{}-{phase}.{i}", from.name, to.name);
                    let send = json!({"authToken": from.token, "msg": body, "toUserId": to.id, "roomId": rooms[0]});
                    let answer = api.post("/push/push", send).await;
                    assert_eq!(answer["code"], 0, "{answer}");
                    sent.push(Sent { room: None, from: from.id, to: Some(to.id), body });
                }
                sent
            }
        };
        let (ab, ba, ca) = tokio::join!(conversation(&ann, &bob), conversation(&bob, &ann), conversation(&cat, &ann));
        sent.extend(ab.into_iter().chain(ba).chain(ca));
    }
    Traffic { rooms, users: [ann, bob, cat], sent, boundary }
}

/// A message as the history API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub msg_id: String,
    pub body: String,
}

fn stored(page: &Value) -> (String, Vec<Stored>) {
    let epoch = page["data"]["epoch"].as_str().unwrap_or_default().to_owned();
    let messages = page["data"]["messages"].as_array().cloned().unwrap_or_default();
    let messages = messages
        .iter()
        .map(|m| Stored {
            seq: m["seq"].as_u64().expect("seq"),
            msg_id: m["msgId"].as_str().expect("msgId").to_owned(),
            body: m["msg"].as_str().expect("msg").to_owned(),
        })
        .collect();
    (epoch, messages)
}

async fn conversation_page(api: &Api, me: &User, peer: u64) -> (String, Vec<Stored>) {
    let page =
        api.post("/history/private", json!({"authToken": me.token, "userId": peer, "afterSeq": 0, "limit": 100})).await;
    stored(&page)
}

/// Every room's and every conversation's history as the API answers it:
/// epoch, seqs, ids and bodies.
pub async fn history(api: SocketAddr, traffic: &Traffic) -> BTreeMap<String, (String, Vec<Stored>)> {
    let api = Api::new(api);
    let mut all = BTreeMap::new();
    let reader = &traffic.users[0];
    for room in traffic.rooms {
        let page = api
            .post("/history/room", json!({"authToken": reader.token, "roomId": room, "afterSeq": 0, "limit": 100}))
            .await;
        all.insert(format!("room {room}"), stored(&page));
    }
    for me in &traffic.users {
        for peer in &traffic.users {
            all.insert(format!("{} with {}", me.name, peer.name), conversation_page(&api, me, peer.id).await);
        }
    }
    all
}

/// Waits until the history API holds every message sent, in every stream it
/// was sent to.
pub async fn await_persisted(api: SocketAddr, traffic: &Traffic) {
    courier_testkit::eventually("every message in history", PATIENCE, || async {
        let history = history(api, traffic).await;
        let rooms: usize = traffic.rooms.iter().map(|room| history[&format!("room {room}")].1.len()).sum();
        let private = traffic.sent.iter().filter(|s| s.to.is_some()).count();
        // Each private message is in two inboxes, seen from either side.
        let inboxes: usize = traffic.users.iter().map(|me| conversations_of(&history, me).len()).sum();
        (rooms == traffic.sent.len() - private && inboxes == 2 * private).then_some(())
    })
    .await;
}

/// Every message in `me`'s inbox, from the conversation pages.
fn conversations_of(history: &BTreeMap<String, (String, Vec<Stored>)>, me: &User) -> Vec<Stored> {
    let prefix = format!("{} with ", me.name);
    history.iter().filter(|(name, _)| name.starts_with(&prefix)).flat_map(|(_, (_, page))| page.clone()).collect()
}

/// Logs the users in again (after a restart, sessions are gone).
pub async fn log_in_again(api: SocketAddr, traffic: &mut Traffic) {
    let api = Api::new(api);
    for user in &mut traffic.users {
        let answer = api.post("/user/login", json!({"userName": user.name, "passWord": "secret-pw"})).await;
        assert_eq!(answer["code"], 0, "{answer}");
        user.token = answer["data"].as_str().expect("token").to_owned();
    }
}

/// Exports what `selection` picks, as the parsed JSON lines.
pub async fn export(reader: &dyn TopicReader, selection: &Selection) -> Vec<Value> {
    let plan = courier_replay::plan(reader, selection).await.expect("a valid selection");
    let mut out = Vec::new();
    courier_replay::export::export(reader, &plan, &mut out, Progress::hidden(), CancellationToken::new())
        .await
        .expect("export");
    String::from_utf8(out)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn bodies(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["body"].as_str().expect("body").to_owned()).collect()
}

/// The bodies of `lines` that go from `from` to `to`, in export order.
fn conversation_in(lines: &[Value], from: u64, to: u64) -> Vec<String> {
    let lines: Vec<Value> = lines
        .iter()
        .filter(|l| l["fromUserId"] == from && l["toUserId"] == to && l["kind"] == "private")
        .cloned()
        .collect();
    bodies(&lines)
}

/// Exports whole, by room, by user and by time, each compared with exactly
/// what was sent.
pub async fn exports_match_what_was_sent(
    reader: &dyn TopicReader,
    traffic: &Traffic,
    history: &BTreeMap<String, (String, Vec<Stored>)>,
    topics: (&str, &str),
) {
    let selection =
        || Selection { room_topic: topics.0.to_owned(), private_topic: topics.1.to_owned(), ..Selection::everything() };
    let [ann, bob, cat] = &traffic.users;
    let all = export(reader, &selection()).await;
    assert_eq!(all.len(), traffic.sent.len(), "every message once");
    for room in traffic.rooms {
        let in_room: Vec<Value> = all.iter().filter(|l| l["kind"] == "room" && l["roomId"] == room).cloned().collect();
        assert_eq!(bodies(&in_room), traffic.room_bodies(room), "room {room} in order");
    }
    for (from, to) in [(ann, bob), (bob, ann), (cat, ann)] {
        assert_eq!(conversation_in(&all, from.id, to.id), traffic.conversation(from.id, to.id));
    }
    let line = &all[0];
    for field in ["msgId", "kind", "roomId", "fromUserId", "fromUserName", "toUserId", "body", "admittedAt"] {
        assert!(line.get(field).is_some(), "{field} in {line}");
    }
    assert!(line["admittedAt"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{line}");
    assert!(line["topic"] == topics.0 || line["topic"] == topics.1, "{line}");

    let room = traffic.rooms[1];
    let by_room = export(reader, &Selection { room: Some(room), ..selection() }).await;
    assert_eq!(bodies(&by_room), traffic.room_bodies(room), "--room: that room only, in order");

    let by_user = export(reader, &Selection { user: Some(cat.id), ..selection() }).await;
    assert_eq!(bodies(&by_user), traffic.conversation(cat.id, ann.id), "--user: what cat sent or got");
    let ann_lines = export(reader, &Selection { user: Some(ann.id), ..selection() }).await;
    let ann_private = traffic.sent.iter().filter(|s| s.to.is_some() && (s.from == ann.id || s.to == Some(ann.id)));
    assert_eq!(ann_lines.len(), ann_private.count(), "--user: sent and received, nothing else");
    // Her inbox's order, sent and received interleaved as task persisted them.
    for peer in [bob, cat] {
        let with_peer: Vec<Value> =
            ann_lines.iter().filter(|l| l["fromUserId"] == peer.id || l["toUserId"] == peer.id).cloned().collect();
        let stored: Vec<String> =
            history[&format!("{} with {}", ann.name, peer.name)].1.iter().map(|m| m.body.clone()).collect();
        assert_eq!(bodies(&with_peer), stored, "--user: ann's conversation with {} in her inbox's order", peer.name);
    }

    let first_phase = traffic.sent.iter().filter(|s| s.body.contains("-1.")).count();
    assert!(first_phase > 0 && first_phase < traffic.sent.len());
    let before = export(reader, &Selection { until: Some(traffic.boundary - 1), ..selection() }).await;
    assert_eq!(before.len(), first_phase, "--until: the first phase");
    assert!(bodies(&before).iter().all(|b| b.contains("-1.")), "{before:?}");
    let after = export(reader, &Selection { since: Some(traffic.boundary), ..selection() }).await;
    assert_eq!(after.len(), traffic.sent.len() - first_phase, "--since: the second phase");
    assert!(bodies(&after).iter().all(|b| b.contains("-2.")), "{after:?}");
}

/// Rebuilds `history` from the topics.
pub async fn rebuild(
    reader: &dyn TopicReader,
    history: std::sync::Arc<dyn courier_store::HistoryStore>,
    topics: (&str, &str),
) -> Summary {
    let selection =
        Selection { room_topic: topics.0.to_owned(), private_topic: topics.1.to_owned(), ..Selection::everything() };
    let plan: Plan = courier_replay::plan(reader, &selection).await.expect("a valid selection");
    courier_replay::rebuild::rebuild(reader, &plan, history, Progress::hidden(), CancellationToken::new())
        .await
        .expect("rebuild")
}
