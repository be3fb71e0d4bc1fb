//! The pusher sends each frame only to the connect nodes its routes name, and
//! to every node when the routes cannot be read (wasteful, never lossy).
//! Two in-process gRPC servers stand in for connect nodes and record what
//! reaches them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_discovery::{ConnectNode, Instances};
use courier_presence::memory::MemoryPresence;
use courier_presence::{Presence, Routes, SessionUser};
use courier_proto::connect::connect_server::{Connect, ConnectServer};
use courier_proto::connect::{Delivery, PushReply, PushRequest, delivery::Target};
use courier_push::{Pusher, PusherOptions};
use courier_telemetry::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// A connect node that reports the body of every frame it receives, and each
/// revoked token as `revoked <token>`.
struct Recorder(mpsc::UnboundedSender<String>);

#[tonic::async_trait]
impl Connect for Recorder {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        let request = request.into_inner();
        for token in request.revoked_tokens {
            let _ = self.0.send(format!("revoked {token}"));
        }
        for delivery in request.deliveries {
            let _ = self.0.send(delivery.body);
        }
        Ok(Response::new(PushReply::default()))
    }
}

async fn node(id: &str, stop: &CancellationToken) -> (ConnectNode, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(ConnectServer::new(Recorder(tx))).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        ),
    );
    (ConnectNode::new(id, addr.to_string()), rx)
}

fn frame(target: Target, body: &str) -> Delivery {
    Delivery { target: Some(target), stream: String::new(), seq: 0, body: body.to_owned(), admitted_us: 0 }
}

/// The frames a node receives up to and including `last` (frames reach a node in
/// the order they were queued, so `last` closes what was sent before it).
async fn received_until(rx: &mut mpsc::UnboundedReceiver<String>, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some(last) {
        let body = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a frame in time");
        got.push(body.expect("node running"));
    }
    got
}

async fn pusher_to_two_nodes(
    routes: Arc<dyn Presence>,
    stop: &CancellationToken,
) -> (Pusher, [mpsc::UnboundedReceiver<String>; 2]) {
    let (a, rx_a) = node("a", stop).await;
    let (b, rx_b) = node("b", stop).await;
    let nodes = courier_discovery::fixed(vec![a, b]);
    let pusher = Pusher::start(nodes, Arc::new(Metrics::new()), PusherOptions::default(), stop.clone());
    (pusher.with_routes(routes), [rx_a, rx_b])
}

#[tokio::test]
async fn frames_go_only_to_the_nodes_holding_their_targets() {
    let stop = CancellationToken::new();
    let presence = Arc::new(MemoryPresence::default());
    presence.attach(1, "a", 1, 0).await.expect("attach");
    presence.attach(2, "a", 2, 0).await.expect("attach");
    presence.attach(2, "b", 1, 0).await.expect("attach");
    let member = SessionUser { user_id: 3, user_name: "carol".into() };
    presence.join(7, &member, "b", 2).await.expect("join");
    presence.join(8, &member, "a", 3).await.expect("join");
    presence.join(8, &member, "b", 2).await.expect("join");
    let (pusher, [mut a, mut b]) = pusher_to_two_nodes(presence, &stop).await;

    pusher
        .deliver(&[
            frame(Target::UserId(1), "to user 1"),
            frame(Target::UserId(2), "to user 2"),
            frame(Target::RoomId(7), "to room 7"),
            frame(Target::UserId(99), "to nobody"),
            frame(Target::RoomId(8), "to room 8"),
        ])
        .await;
    assert_eq!(received_until(&mut a, "to room 8").await, ["to user 1", "to user 2", "to room 8"]);
    assert_eq!(received_until(&mut b, "to room 8").await, ["to user 2", "to room 7", "to room 8"]);
    stop.cancel();
}

/// Routes that cannot be read.
struct Unavailable;

#[async_trait]
impl Presence for Unavailable {
    async fn join(&self, _: u64, _: &SessionUser, _: &str, _: u64) -> courier_presence::Result<bool> {
        Err(down())
    }
    async fn leave(&self, _: u64, _: u64, _: &str, _: u64) -> courier_presence::Result<bool> {
        Err(down())
    }
    async fn count(&self, _: u64) -> courier_presence::Result<u64> {
        Err(down())
    }
    async fn members(&self, _: u64, _: usize) -> courier_presence::Result<Vec<(u64, String)>> {
        Err(down())
    }
    async fn drop_server(&self, _: &str) -> courier_presence::Result<Vec<u64>> {
        Err(down())
    }
    async fn renew_node(&self, _: &str, _: &str, _: i64) -> courier_presence::Result<courier_presence::NodeLease> {
        Err(down())
    }
    async fn take_lapsed_nodes(&self, _: i64) -> courier_presence::Result<Vec<String>> {
        Err(down())
    }
    async fn reap_node(&self, _: &str) -> courier_presence::Result<Vec<u64>> {
        Err(down())
    }
    async fn attach(&self, _: u64, _: &str, _: u64, _: usize) -> courier_presence::Result<bool> {
        Err(down())
    }
    async fn detach(&self, _: u64, _: &str, _: u64) -> courier_presence::Result<()> {
        Err(down())
    }
    async fn routes(&self, _: &[u64], _: &[u64]) -> courier_presence::Result<Routes> {
        Err(down())
    }
}

fn down() -> courier_presence::Error {
    courier_presence::Error::Unavailable("connection refused".into())
}

#[tokio::test]
async fn frames_go_to_every_node_when_routes_cannot_be_read() {
    let stop = CancellationToken::new();
    let (pusher, [mut a, mut b]) = pusher_to_two_nodes(Arc::new(Unavailable), &stop).await;
    pusher.deliver(&[frame(Target::UserId(1), "to user 1"), frame(Target::RoomId(7), "to room 7")]).await;
    for rx in [&mut a, &mut b] {
        assert_eq!(received_until(rx, "to room 7").await, ["to user 1", "to room 7"]);
    }
    stop.cancel();
}

#[tokio::test]
async fn a_revocation_reaches_a_node_that_was_down_when_it_was_pushed() {
    let stop = CancellationToken::new();
    // A node whose address answers nothing yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let node = ConnectNode::new("late", addr.to_string());
    let metrics = Arc::new(Metrics::new());
    let options = PusherOptions { attempts: 2, ..PusherOptions::default() };
    let pusher = Pusher::start(courier_discovery::fixed(vec![node]), metrics.clone(), options, stop.clone());
    pusher.revoke(&["stolen-token".to_owned()]);
    courier_testkit::eventually("the first push fails", Duration::from_secs(20), || async {
        metrics.encode().contains(r#"courier_pushes_total{result="error"} 1"#).then_some(())
    })
    .await;

    // The node comes up: the revocation is pushed again and arrives.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the node's address");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(ConnectServer::new(Recorder(tx))).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        ),
    );
    assert_eq!(received_until(&mut rx, "revoked stolen-token").await, ["revoked stolen-token"]);
    stop.cancel();
}

#[tokio::test]
async fn nodes_follow_discovery_a_new_one_is_pushed_to_and_a_departed_ones_queue_is_dropped() {
    let stop = CancellationToken::new();
    let (a, mut rx_a) = node("a", &stop).await;
    let (b, mut rx_b) = node("b", &stop).await;
    let metrics = Arc::new(Metrics::new());
    let (set, nodes) = tokio::sync::watch::channel(Instances::from(vec![a.clone()]));
    let pusher = Pusher::start(nodes, metrics.clone(), PusherOptions::default(), stop.clone());
    pusher.deliver(&[frame(Target::RoomId(1), "one")]).await;
    assert_eq!(received_until(&mut rx_a, "one").await, ["one"]);

    // b appears: frames go to both, without waiting for any refresh period.
    set.send_replace(courier_discovery::instances(vec![a.clone(), b.clone()]));
    courier_testkit::eventually("b is pushed to", Duration::from_secs(5), || async {
        (pusher.nodes() == ["a", "b"]).then_some(())
    })
    .await;
    pusher.deliver(&[frame(Target::RoomId(1), "two")]).await;
    assert_eq!(received_until(&mut rx_a, "two").await, ["two"]);
    assert_eq!(received_until(&mut rx_b, "two").await, ["two"]);
    assert!(metrics.encode().contains(r#"courier_discovered_instances{tier="connect"} 2"#));

    // a leaves: nothing is queued for it any more.
    set.send_replace(courier_discovery::instances(vec![b.clone()]));
    courier_testkit::eventually("a is dropped", Duration::from_secs(5), || async {
        (pusher.nodes() == ["b"]).then_some(())
    })
    .await;
    pusher.deliver(&[frame(Target::RoomId(1), "three")]).await;
    assert_eq!(received_until(&mut rx_b, "three").await, ["three"]);
    assert!(metrics.encode().contains(r#"courier_discovered_instances{tier="connect"} 1"#));

    // a comes back and a frame is pushed to it: the first thing a receives
    // after leaving is that frame, so nothing was sent to it while it was gone.
    set.send_replace(courier_discovery::instances(vec![a.clone(), b.clone()]));
    courier_testkit::eventually("a is pushed to again", Duration::from_secs(5), || async {
        (pusher.nodes() == ["a", "b"]).then_some(())
    })
    .await;
    pusher.deliver(&[frame(Target::RoomId(1), "four")]).await;
    assert_eq!(received_until(&mut rx_a, "four").await, ["four"], "a departed node gets nothing");
    stop.cancel();
}
