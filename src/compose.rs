//! The composition root: how a tier is built from its configuration and its
//! backends, written once for both ways Courier runs — every tier in one
//! process ([`crate::standalone`]) and one tier per process ([`crate::tiers`]).
//! Those two only choose the backends and the listeners; what a logic or a
//! pusher is made of, and what it does before serving, is decided here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_discovery::Instances;
use courier_logic::{Logic, LogicBackends, LogicConfig};
use courier_presence::Presence;
use courier_proto::InternalAuth;
use courier_push::{Pusher, PusherOptions};
use courier_telemetry::Metrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The demo accounts of a development install (gochat's own).
pub const DEMO_USERS: [&str; 3] = ["demo", "test", "admin"];
/// Their password.
pub const DEMO_PASSWORD: &str = "111111";

/// How long a client message id is remembered for retries.
pub const CLIENT_MSG_ID_TTL: Duration = Duration::from_secs(15 * 60);

/// A pusher to the connect nodes in `nodes` (a discovery watch), proving
/// itself with `auth`, and routing with `routes` when given (a cluster's
/// shared presence).
pub fn pusher(
    nodes: watch::Receiver<Instances>,
    routes: Option<Arc<dyn Presence>>,
    auth: InternalAuth,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Pusher {
    let options = PusherOptions { secret: auth, ..PusherOptions::default() };
    let pusher = Pusher::start(nodes, metrics, options, shutdown);
    match routes {
        Some(presence) => pusher.with_routes(presence),
        None => pusher,
    }
}

/// Logic, ready to serve: its queue topics exist and, if asked, the demo users.
pub async fn logic(config: LogicConfig, backends: LogicBackends, demo_users: bool) -> anyhow::Result<Logic> {
    let logic = Logic::new(config, backends)?;
    logic.ensure_topics().await.context("creating the queue topics")?;
    if demo_users {
        for name in DEMO_USERS {
            logic.ensure_user(name, DEMO_PASSWORD).await.map_err(|s| anyhow::anyhow!("demo user {name}: {s}"))?;
        }
    }
    Ok(logic)
}
