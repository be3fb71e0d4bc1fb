//! The connect tier: holds clients' long connections (WebSocket and TCP) and writes
//! to them the frames that task and logic push.
//!
//! - [`channel`]: one connection's state and the per-stream sequencing (no
//!   duplicate, no step back, gaps held and filled); its [`outbox`] is a
//!   bounded queue of frames to write.
//! - [`hub`]: the channels, indexed by user and room in locked buckets.
//! - [`gateway`]: what every connection does, whatever the transport.
//! - [`ws`] and [`tcp`]: gochat's two transports, each connection driven by [`conn`].
//! - [`push`]: the gRPC service task and logic call.
//!
//! Shutdown stops accepting, closes every connection with "going away" (clients
//! reconnect, to another node in a cluster), releases presence, and returns once
//! the connections are gone or `drain_timeout` has passed.

pub mod channel;
pub mod conn;
pub mod gateway;
pub mod hub;
pub mod outbox;
pub mod push;
pub mod tcp;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::logic::NodeHeartbeatRequest;
use courier_proto::{InternalAuth, LogicClient};
use courier_telemetry::{Metrics, ReadyFlag};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::close_code;
use crate::gateway::Gateway;
use crate::hub::Hub;

/// The connect tier's configuration.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// This node's `serverId`, unique in the cluster (a pod name in Kubernetes).
    pub server_id: String,
    /// Buckets of the hub; more buckets, less lock contention.
    pub buckets: usize,
    /// Frames waiting per connection before it is closed as too slow.
    pub outbound_capacity: usize,
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// WebSocket read buffer. tungstenite's default (128 KiB) per connection is
    /// most of an idle connection's memory; client frames are small.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer before a flush is forced.
    pub ws_write_buffer: usize,
    /// Most bytes buffered for a WebSocket that cannot write.
    pub ws_max_write_buffer: usize,
    /// Time a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// Server heartbeat interval (gochat: 54 s).
    pub ping_interval: Duration,
    /// A WebSocket silent this long is dropped (gochat: 60 s).
    pub pong_timeout: Duration,
    /// A write that takes longer drops the connection (gochat: 10 s).
    pub write_timeout: Duration,
    /// Longest wait for connections to finish at shutdown.
    pub drain_timeout: Duration,
    /// How often the node re-checks the sessions of all its connections (in
    /// batches), so one whose token expired is closed even if it never sends.
    pub session_check_interval: Duration,
    /// How often the node renews its presence lease with logic (a third of the
    /// lease, 15 s by default).
    pub heartbeat_interval: Duration,
    /// Proves this node to logic, and callers of its push service to it (see
    /// `courier_proto::InternalAuth`).
    pub internal_auth: InternalAuth,
    /// Rooms one connection may be in at once: each costs the connection a
    /// stream's state and the room a member.
    pub max_rooms_per_connection: usize,
    /// Connections one session token may hold on this node (the per-user cap,
    /// over the whole cluster, is logic's).
    pub max_connections_per_token: usize,
    /// How long a gap in a stream's pushes may close by itself (a late push,
    /// as when a partition moves between task workers) before history is read.
    pub gap_grace: Duration,
    /// Reads of history for one gap before the connection is closed; the
    /// pauses between them double from four times `gap_grace` (with the
    /// defaults about 0.2, 0.4, 0.8 and 1.6 s, plus jitter).
    pub gap_fill_attempts: u32,
    /// This run of the node: logic cleans up a previous boot's presence when
    /// it sees a new one (and discovery publishes it).
    pub boot_id: String,
}

/// A boot id unique to this process and moment.
pub fn new_boot_id() -> String {
    format!("{:x}-{:x}", std::process::id(), courier_ids::now_unix_ms())
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            server_id: "connect-0".into(),
            buckets: 64,
            outbound_capacity: 1024,
            max_frame_bytes: 16 * 1024,
            ws_read_buffer: 256,
            ws_write_buffer: 0,
            ws_max_write_buffer: 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            session_check_interval: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(5),
            internal_auth: InternalAuth::open(),
            max_rooms_per_connection: 100,
            max_connections_per_token: 10,
            gap_grace: Duration::from_millis(50),
            gap_fill_attempts: 5,
            boot_id: new_boot_id(),
        }
    }
}

/// The sockets connect serves on, bound by the caller (so tests can use port 0).
#[derive(Debug)]
pub struct ConnectListeners {
    /// WebSocket, at `/ws`.
    pub ws: TcpListener,
    /// gochat's TCP protocol.
    pub tcp: Option<TcpListener>,
    /// The gRPC push service.
    pub push: TcpListener,
}

/// State shared by connection tasks.
#[derive(Debug, Clone)]
pub(crate) struct ConnectState {
    pub(crate) gateway: Gateway,
    pub(crate) tracker: TaskTracker,
}

/// Why connect stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("push service failed: {0}")]
    Push(#[from] tonic::transport::Error),
    #[error("websocket server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Locks a mutex, going on past a poisoned one: every critical section in
/// connect leaves its data consistent, so a panic elsewhere must not stop
/// delivery.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the connect tier until `shutdown`, then drains.
pub async fn run(
    config: ConnectConfig,
    listeners: ConnectListeners,
    logic: LogicClient,
    metrics: Arc<Metrics>,
    ready: ReadyFlag,
    reaching_logic: ReadyFlag,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let hub = Arc::new(Hub::new(config.buckets, metrics));
    let gateway = Gateway {
        hub: hub.clone(),
        logic,
        config: Arc::new(config),
        presence_calls: Arc::new(tokio::sync::Semaphore::new(gateway::PRESENCE_CALLS)),
        stopping: shutdown.clone(),
    };
    let tracker = TaskTracker::new();
    // Shared by pointer: every connection's task holds it, so its size counts
    // once per connection.
    let state = Arc::new(ConnectState { gateway, tracker: tracker.clone() });

    // Announce this boot before taking connections, so a restart's cleanup of the
    // previous boot's presence cannot remove new members; then keep the lease.
    let mut lease = Lease {
        boot_id: state.gateway.config.boot_id.clone(),
        epoch: None,
        registering: None,
        reaching_logic,
        failures: 0,
    };
    lease.heartbeat(&state.gateway).await;
    tokio::spawn({
        let (gateway, stop) = (state.gateway.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(lease.next_in(gateway.config.heartbeat_interval)) => {
                        lease.heartbeat(&gateway).await;
                    }
                }
            }
        }
    });

    tokio::spawn({
        let (gateway, stop) = (state.gateway.clone(), shutdown.clone());
        async move {
            let interval = gateway.config.session_check_interval;
            let mut sweeps = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sweeps.tick() => {
                        let closed = gateway.check_sessions().await;
                        if closed > 0 {
                            tracing::info!(closed, "closed connections whose session ended");
                        }
                    }
                }
            }
        }
    });

    let stop_accepting = CancellationToken::new();
    let ws_server = tokio::spawn(accept_loop(listeners.ws, state.clone(), stop_accepting.clone(), ws::serve));
    if let Some(tcp) = listeners.tcp {
        tokio::spawn(accept_loop(tcp, state.clone(), stop_accepting.clone(), tcp::serve));
    }
    let push_stop = CancellationToken::new();
    let push_secret = {
        let metrics = hub.metrics().clone();
        state.gateway.config.internal_auth.clone().counting_refusals(move || metrics.error("internal_call_refused"))
    };
    let mut push_builder = state.gateway.config.internal_auth.server()?;
    let push_server = tokio::spawn(
        push_builder
            .add_service(courier_proto::connect_server(push::PushService { hub: hub.clone() }, &push_secret))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listeners.push),
                push_stop.clone().cancelled_owned(),
            ),
    );
    ready.set(true);
    tracing::info!(server_id = %state.gateway.config.server_id, "connect serving");

    shutdown.cancelled().await;
    ready.set(false);
    stop_accepting.cancel();
    for channel in hub.all() {
        channel.close(close_code::GOING_AWAY, "server shutting down; reconnect");
    }
    tracker.close();
    if tokio::time::timeout(state.gateway.config.drain_timeout, tracker.wait()).await.is_err() {
        tracing::warn!(left = tracker.len(), "connections still open after the drain timeout");
    }
    push_stop.cancel();
    let _ = push_server.await;
    let _ = ws_server.await;
    Ok(())
}

/// Accepts clients until `shutdown`, serving each in a tracked task (so
/// shutdown can wait for them to drain).
async fn accept_loop<F>(
    listener: TcpListener,
    state: Arc<ConnectState>,
    shutdown: CancellationToken,
    serve: fn(Arc<ConnectState>, TcpStream) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = courier_retry::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff.reset();
                let _ = stream.set_nodelay(true);
                state.tracker.spawn(serve(state.clone(), stream));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                state.gateway.metrics().error("accept");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}

/// This node's presence lease, renewed by heartbeats.
struct Lease {
    boot_id: String,
    /// The lease epoch this node's connections were registered under.
    epoch: Option<i64>,
    /// The registration running for the latest epoch.
    registering: Option<tokio::task::JoinHandle<()>>,
    /// Ready while heartbeats reach logic: a node that cannot reach logic
    /// can neither authenticate a new client nor keep its presence.
    reaching_logic: ReadyFlag,
    /// Heartbeats failed in a row.
    failures: u32,
}

/// Heartbeats that may fail in a row before the node says it is not ready (one
/// failure is a blip; the lease outlives a few).
const FAILURES_BEFORE_NOT_READY: u32 = 3;

/// How soon a node that has not reached logic yet (or any more) tries again.
const RETRY_WHILE_AWAY: Duration = Duration::from_millis(250);

impl Lease {
    /// When to send the next heartbeat: every `interval`, and sooner while
    /// logic has not answered (so a node starting before logic, or one whose
    /// logic came back, is ready again within moments).
    fn next_in(&self, interval: Duration) -> Duration {
        if self.failures > 0 { RETRY_WHILE_AWAY.min(interval) } else { interval }
    }

    /// Renews the lease; a failure is reported and retried on the next tick
    /// (the lease outlives a few). When the lease's epoch changed (granted
    /// afresh: presence may have lost every connection here), the connections
    /// are registered again in the background, replacing a registration still
    /// running for an older epoch.
    async fn heartbeat(&mut self, gateway: &Gateway) {
        let request =
            NodeHeartbeatRequest { server_id: gateway.config.server_id.clone(), boot_id: self.boot_id.clone() };
        let epoch = match gateway.logic.clone().node_heartbeat(request).await {
            Ok(reply) => reply.into_inner().lease_epoch,
            Err(status) => {
                gateway.metrics().error("node_heartbeat");
                tracing::warn!(error = %status, "presence heartbeat failed");
                self.failures += 1;
                if self.failures == FAILURES_BEFORE_NOT_READY || self.epoch.is_none() {
                    self.reaching_logic.set(false);
                }
                return;
            }
        };
        self.failures = 0;
        self.reaching_logic.set(true);
        if self.epoch == Some(epoch) {
            return;
        }
        self.epoch = Some(epoch);
        if let Some(earlier) = self.registering.take() {
            earlier.abort();
        }
        let gateway = gateway.clone();
        self.registering = Some(tokio::spawn(async move { gateway.register_again().await }));
    }
}
