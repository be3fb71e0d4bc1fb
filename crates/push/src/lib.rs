//! Handing frames to connect nodes without ever waiting on them.
//!
//! Task persists and commits at the pace of the store; a connect node may be slow,
//! restarting or dead. So a [`Pusher`] keeps one bounded queue and one worker per
//! node: [`Pusher::deliver`] only `try_send`s into the queues, and each worker
//! drains its queue into batched `Push` calls. A full queue drops the frames for
//! that node (counted as `courier_pushes_total{result="dropped"}`); the messages
//! are already persisted, and clients recover them by resuming from their last
//! seq. The node list follows discovery: nodes that appear are pushed to at
//! once, and a node that leaves takes its queue with it.
//!
//! With routes (a cluster's shared presence, [`Pusher::with_routes`]) a frame goes
//! only to the nodes holding its user's connections or its room's members: one
//! lookup per call, for every target in it. The lookup comes after the message
//! was persisted, and a connection registers its route before reading where its
//! streams stand, so a connection never misses a message newer than that
//! position. Without routes, or when the lookup fails, frames go to every node
//! (correct, only wasteful: a node drops frames it has no channel for).
//!
//! [`frames`] says what a persisted message looks like on the wire.

pub mod frames;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_discovery::{ConnectNode, Instances};
use courier_presence::{Presence, Routes};
use courier_proto::connect::{Delivery, PushRequest, delivery::Target};
use courier_proto::{ConnectClient, InternalAuth};
use courier_telemetry::{Metrics, NodeLabel, ResultLabel, TierLabel};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Tuning of the push path.
#[derive(Debug, Clone)]
pub struct PusherOptions {
    /// Frames waiting per node before new ones are dropped for that node.
    pub queue_capacity: usize,
    /// Most frames in one `Push` call (and at most
    /// [`courier_proto::BATCH_BYTES`] of them).
    pub max_batch: usize,
    /// Deadline of one `Push` call.
    pub call_timeout: Duration,
    /// Attempts per batch before it is dropped (the node is likely gone).
    pub attempts: u32,
    /// Proves this tier to the connect nodes.
    pub secret: InternalAuth,
}

impl Default for PusherOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_batch: 512,
            call_timeout: Duration::from_secs(5),
            attempts: 3,
            secret: InternalAuth::open(),
        }
    }
}

/// One thing to tell a connect node.
#[derive(Debug, Clone)]
enum Item {
    Frame(Delivery),
    /// A session ended: close its connections.
    Revoked(String),
}

struct NodeQueue {
    node: ConnectNode,
    tx: mpsc::Sender<Item>,
    stop: CancellationToken,
}

/// Fan-out of frames to connect nodes; cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    nodes: Arc<Mutex<HashMap<String, NodeQueue>>>,
    /// Where users and rooms are held; `None`: every node gets every frame.
    routes: Option<Arc<dyn Presence>>,
    metrics: Arc<Metrics>,
    options: PusherOptions,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts a pusher to the connect nodes in `nodes`, following its changes
    /// until `shutdown`: a node that appears gets a queue and a worker at once;
    /// one that leaves has its worker stopped and what was queued for it
    /// dropped (counted as `dropped`: clients catch up from their last seq).
    pub fn start(
        mut nodes: watch::Receiver<Instances>,
        metrics: Arc<Metrics>,
        options: PusherOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let pusher = Self { nodes: Arc::default(), routes: None, metrics, options };
        pusher.follow(&nodes.borrow_and_update(), &shutdown);
        let background = pusher.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = nodes.changed() => match changed {
                        Ok(()) => {
                            let set = nodes.borrow_and_update().clone();
                            background.follow(&set, &shutdown);
                        }
                        // Discovery stopped (a fixed list): keep these nodes.
                        Err(_) => {
                            shutdown.cancelled().await;
                            break;
                        }
                    },
                }
            }
            for (_, queue) in background.lock().drain() {
                queue.stop.cancel();
            }
        });
        pusher
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeQueue>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the workers match `nodes`: starts workers for new nodes, stops
    /// those of nodes that left (or moved to another address).
    fn follow(&self, nodes: &[ConnectNode], shutdown: &CancellationToken) {
        let mut current = self.lock();
        current.retain(|id, queue| {
            let keep = nodes.iter().any(|n| n.id == *id && n.addr == queue.node.addr);
            if !keep {
                queue.stop.cancel();
                let queued = queue.tx.max_capacity() - queue.tx.capacity();
                self.metrics.pushes.get_or_create(&ResultLabel { result: "dropped" }).inc_by(queued as u64);
                self.metrics.push_queue_depth.remove(&NodeLabel { node: id.clone() });
                tracing::info!(node = %id, addr = %queue.node.addr, dropped = queued, "connect node left; its queue is dropped");
            }
            keep
        });
        for node in nodes {
            if current.contains_key(&node.id) {
                continue;
            }
            let channel = match courier_proto::lazy_channel(&node.addr, self.options.call_timeout, &self.options.secret)
            {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::error!(node = %node.id, addr = %node.addr, error = %e, "invalid connect node address");
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(self.options.queue_capacity);
            let stop = shutdown.child_token();
            tokio::spawn(node_worker(
                node.clone(),
                courier_proto::connect_client(channel, &self.options.secret),
                rx,
                self.metrics.clone(),
                self.options.clone(),
                stop.clone(),
            ));
            tracing::info!(node = %node.id, addr = %node.addr, "pushing to connect node");
            current.insert(node.id.clone(), NodeQueue { node: node.clone(), tx, stop });
        }
        self.metrics
            .discovered
            .get_or_create(&TierLabel { tier: courier_discovery::Tier::Connect.name() })
            .set(current.len() as i64);
    }

    /// The serverIds of the connect nodes pushed to now.
    pub fn nodes(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Routes frames with `presence`, which must be the one the connect nodes
    /// register their connections in (a cluster's shared presence).
    #[must_use]
    pub fn with_routes(mut self, presence: Arc<dyn Presence>) -> Self {
        self.routes = Some(presence);
        self
    }

    /// Queues each delivery to the nodes holding its target (see the module
    /// docs); waits only for the route lookup, never for a node.
    pub async fn deliver(&self, deliveries: &[Delivery]) {
        if deliveries.is_empty() {
            return;
        }
        let routes = match &self.routes {
            // One node gets everything anyway.
            Some(presence) if self.lock().len() > 1 => lookup(presence.as_ref(), deliveries, &self.metrics).await,
            _ => None,
        };
        let nodes = self.lock();
        for (server, queue) in nodes.iter() {
            for delivery in deliveries {
                if let Some(routes) = &routes
                    && !reaches(routes, delivery, server)
                {
                    continue;
                }
                if queue.tx.try_send(Item::Frame(delivery.clone())).is_err() {
                    self.metrics.pushes.get_or_create(&ResultLabel { result: "dropped" }).inc();
                }
            }
        }
    }

    /// Tells every connect node that these session tokens ended, so it closes
    /// their connections; never waits.
    pub fn revoke(&self, tokens: &[String]) {
        let nodes = self.lock();
        for queue in nodes.values() {
            for token in tokens {
                if queue.tx.try_send(Item::Revoked(token.clone())).is_err() {
                    self.metrics.pushes.get_or_create(&ResultLabel { result: "dropped" }).inc();
                }
            }
        }
    }
}

/// The routes of every target in `deliveries`; `None` (send everywhere) if the
/// lookup failed.
async fn lookup(presence: &dyn Presence, deliveries: &[Delivery], metrics: &Metrics) -> Option<Routes> {
    let (mut users, mut rooms) = (Vec::new(), Vec::new());
    for delivery in deliveries {
        match delivery.target {
            Some(Target::UserId(user)) => users.push(user),
            Some(Target::RoomId(room)) => rooms.push(room),
            None => {}
        }
    }
    for ids in [&mut users, &mut rooms] {
        ids.sort_unstable();
        ids.dedup();
    }
    match presence.routes(&users, &rooms).await {
        Ok(routes) => Some(routes),
        Err(e) => {
            tracing::warn!(error = %e, "route lookup failed; pushing to every connect node");
            metrics.error("push_routes");
            None
        }
    }
}

fn reaches(routes: &Routes, delivery: &Delivery, server: &str) -> bool {
    let servers = match delivery.target {
        Some(Target::UserId(user)) => routes.user(user),
        Some(Target::RoomId(room)) => routes.room(room),
        None => return false,
    };
    servers.iter().any(|s| s == server)
}

async fn node_worker(
    node: ConnectNode,
    mut client: ConnectClient,
    mut rx: mpsc::Receiver<Item>,
    metrics: Arc<Metrics>,
    options: PusherOptions,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    // Revocations a failed push could not deliver: retried until delivered or
    // the node is gone, since a revoked session must not stay open anywhere.
    let mut revoked: Vec<String> = Vec::new();
    let mut revocation_pause = courier_retry::Backoff::new(REVOCATION_RETRY, Duration::from_secs(30));
    let label = NodeLabel { node: node.id.clone() };
    let (depth, failures) =
        (metrics.push_queue_depth.get_or_create(&label).clone(), metrics.push_failures.get_or_create(&label).clone());
    loop {
        let retrying = !revoked.is_empty();
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, options.max_batch) => if n == 0 { return },
            _ = revocation_pause.sleep(), if retrying => {}
        }
        depth.set(rx.len() as i64);
        let mut deliveries = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            match item {
                Item::Frame(delivery) => deliveries.push(delivery),
                Item::Revoked(token) => revoked.push(token),
            }
        }
        for request in requests_within(deliveries, std::mem::take(&mut revoked), courier_proto::BATCH_BYTES) {
            match push_with_retries(&mut client, &request, &node, &metrics, &options, &stop).await {
                Pushed::Ok => {}
                Pushed::Failed => {
                    failures.inc();
                    revoked.extend(request.revoked_tokens);
                }
                Pushed::Stopped => return,
            }
        }
        if revoked.is_empty() {
            revocation_pause.reset();
        }
        if revoked.len() > MAX_PENDING_REVOCATIONS {
            let dropped = revoked.len() - MAX_PENDING_REVOCATIONS;
            revoked.drain(..dropped);
            tracing::warn!(node = %node.id, dropped, "too many revocations waiting for this node; the oldest were dropped");
            metrics.pushes.get_or_create(&ResultLabel { result: "dropped" }).inc_by(dropped as u64);
        }
    }
}

/// How long undelivered revocations first wait before they are pushed again
/// (then longer, doubling to 30 s, while the node stays away).
const REVOCATION_RETRY: Duration = Duration::from_secs(1);
/// Most revocations kept for a node that does not answer (its sessions also
/// close at their next session check).
const MAX_PENDING_REVOCATIONS: usize = 10_000;

/// Push requests carrying `deliveries` in order, each at most `max_bytes` of
/// frames (one oversized frame goes alone), the revocations in the first.
fn requests_within(deliveries: Vec<Delivery>, revoked: Vec<String>, max_bytes: usize) -> Vec<PushRequest> {
    use prost::Message as _;
    let mut requests = vec![PushRequest { deliveries: Vec::new(), revoked_tokens: revoked }];
    let mut bytes = 0;
    for delivery in deliveries {
        let size = delivery.encoded_len();
        let last = requests.len() - 1;
        if bytes + size > max_bytes && !requests[last].deliveries.is_empty() {
            requests.push(PushRequest::default());
            bytes = 0;
        }
        bytes += size;
        let last = requests.len() - 1;
        requests[last].deliveries.push(delivery);
    }
    requests.retain(|r| !r.deliveries.is_empty() || !r.revoked_tokens.is_empty());
    requests
}

/// What came of pushing one request.
enum Pushed {
    Ok,
    /// Every attempt failed; the frames are dropped for this node.
    Failed,
    /// The node's worker is stopping.
    Stopped,
}

async fn push_with_retries(
    client: &mut ConnectClient,
    request: &PushRequest,
    node: &ConnectNode,
    metrics: &Metrics,
    options: &PusherOptions,
    stop: &CancellationToken,
) -> Pushed {
    let mut backoff = courier_retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for attempt in 1..=options.attempts {
        match client.push(request.clone()).await {
            Ok(_) => {
                metrics.pushes.get_or_create(&ResultLabel { result: "ok" }).inc();
                return Pushed::Ok;
            }
            Err(status) if attempt == options.attempts => {
                tracing::warn!(node = %node.id, error = %status, frames = request.deliveries.len(), "push failed; frames dropped for this node");
                metrics.pushes.get_or_create(&ResultLabel { result: "error" }).inc();
            }
            Err(status) => {
                tracing::debug!(node = %node.id, error = %status, attempt, "push failed; retrying");
                if !backoff.wait(stop).await {
                    return Pushed::Stopped;
                }
            }
        }
    }
    Pushed::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body_bytes: usize) -> Delivery {
        Delivery { target: Some(Target::RoomId(1)), body: "x".repeat(body_bytes), ..Delivery::default() }
    }

    #[test]
    fn requests_are_cut_by_bytes_in_order() {
        let deliveries: Vec<Delivery> = (0..10).map(|_| delivery(1_000)).collect();
        let requests = requests_within(deliveries, vec!["t".into()], 3_500);
        let sizes: Vec<usize> = requests.iter().map(|r| r.deliveries.len()).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert_eq!(requests[0].revoked_tokens, vec!["t".to_owned()], "revocations go first");
        assert!(requests[1..].iter().all(|r| r.revoked_tokens.is_empty()));
        // A frame larger than the budget still goes, alone.
        let requests = requests_within(vec![delivery(10), delivery(5_000), delivery(10)], Vec::new(), 1_000);
        assert_eq!(requests.iter().map(|r| r.deliveries.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert!(requests_within(Vec::new(), Vec::new(), 1_000).is_empty());
        assert_eq!(requests_within(Vec::new(), vec!["t".into()], 1_000).len(), 1);
    }
}
