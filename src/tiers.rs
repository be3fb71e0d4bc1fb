//! One tier per process, as a cluster runs them.
//!
//! Each command builds the backends its tier needs, binds its listeners and its
//! admin endpoints, and runs until SIGTERM/Ctrl-C. With the embedded backends,
//! logic and task share the SQLite files of one data directory (the embedded queue
//! supports consumers in other processes); sessions and presence then live in the
//! logic process, so run exactly one logic.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use courier_discovery::{ConnectNode, StaticDiscovery};
use courier_presence::memory::{MemoryPresence, MemorySessions, SessionPolicy};
use courier_push::{Pusher, PusherOptions};
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions};
use courier_store::sqlite::SqliteStore;
use courier_telemetry::{Metrics, Readiness};
use tokio_util::sync::CancellationToken;

use crate::{bind, shutdown_signal};

/// Metrics, readiness and the admin server of one tier process.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

impl Admin {
    /// Starts the admin server and a task that cancels `shutdown` on a signal.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = bind(addr, "the admin endpoints").await?;
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        tokio::spawn(courier_telemetry::serve_admin(listener, metrics.clone(), readiness.clone(), shutdown.clone()));
        let signal = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signal.cancel();
        });
        tracing::info!(%addr, "admin endpoints listening");
        Ok(Self { metrics, readiness, shutdown })
    }
}

/// Opens the embedded store and queue of a data directory.
pub async fn open_embedded(data_dir: &Path) -> anyhow::Result<(Arc<SqliteStore>, Arc<SqliteQueue>)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let store = SqliteStore::open(&data_dir.join("courier.sqlite")).await.context("opening the store")?;
    let queue = SqliteQueue::open(&data_dir.join("queue.sqlite"), SqliteQueueOptions::default())
        .await
        .context("opening the embedded queue")?;
    Ok((Arc::new(store), Arc::new(queue)))
}

/// A pusher to a fixed list of connect nodes.
pub async fn static_pusher(nodes: Vec<ConnectNode>, admin: &Admin) -> Pusher {
    Pusher::start(
        Arc::new(StaticDiscovery::new(nodes)),
        admin.metrics.clone(),
        PusherOptions::default(),
        admin.shutdown.clone(),
    )
    .await
}

/// Runs logic on the embedded backends.
pub async fn logic(
    config: courier_logic::LogicConfig,
    listen: SocketAddr,
    data_dir: &Path,
    nodes: Vec<ConnectNode>,
    demo_users: bool,
    admin: Admin,
) -> anyhow::Result<()> {
    let (store, queue) = open_embedded(data_dir).await?;
    let pusher = static_pusher(nodes, &admin).await;
    let logic = courier_logic::Logic::new(
        config,
        courier_logic::LogicBackends {
            users: store,
            sessions: Arc::new(MemorySessions::new(SessionPolicy::default())),
            presence: Arc::new(MemoryPresence::default()),
            queue,
            pusher,
            metrics: admin.metrics.clone(),
        },
    )?;
    logic.ensure_topics().await.context("creating the queue topics")?;
    if demo_users {
        for name in crate::standalone::DEMO_USERS {
            logic
                .ensure_user(name, crate::standalone::DEMO_PASSWORD)
                .await
                .map_err(|s| anyhow::anyhow!("demo user {name}: {s}"))?;
        }
    }
    let listener = bind(listen, "logic's gRPC service").await?;
    tracing::info!(addr = %listener.local_addr()?, "logic listening");
    courier_logic::serve(logic, listener, admin.readiness.flag("logic"), admin.shutdown.clone()).await?;
    Ok(())
}

/// Runs task on the embedded backends.
pub async fn task(
    config: courier_task::TaskConfig,
    data_dir: &Path,
    nodes: Vec<ConnectNode>,
    admin: Admin,
) -> anyhow::Result<()> {
    let (store, queue) = open_embedded(data_dir).await?;
    let pusher = static_pusher(nodes, &admin).await;
    let backends = courier_task::TaskBackends { queue, history: store, pusher, metrics: admin.metrics.clone() };
    courier_task::run(config, backends, admin.readiness.flag("task"), admin.shutdown.clone()).await;
    Ok(())
}
