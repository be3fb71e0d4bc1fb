//! `courier standalone`: every tier in one process on the embedded backends
//! (SQLite queue and store, in-process sessions and presence, static discovery).
//!
//! The tiers still talk to each other over gRPC on loopback and through the queue,
//! exactly as in a cluster. Shutdown runs in two phases: first the client-facing
//! tiers (api, site, connect) drain, while logic can still release their presence;
//! then logic, task and the admin server stop. Everything durable is in the data
//! directory, so a restart, even after `kill -9`, resumes where the queue's
//! committed offsets say.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_api::ApiConfig;
use courier_connect::{ConnectConfig, ConnectListeners};
use courier_discovery::{ConnectNode, Discovery as _, StaticDiscovery};
use courier_logic::{LogicBackends, LogicConfig};
use courier_presence::memory::{MemoryClientMsgIds, MemoryPresence, MemorySessions, SessionPolicy};
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions};
use courier_store::sqlite::SqliteStore;
use courier_task::{TaskBackends, TaskConfig};
use courier_telemetry::{Metrics, Readiness};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::site::SiteConfig;
use crate::{bind, compose};

/// Everything standalone needs.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub site_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Create `demo`, `test` and `admin` (password `111111`).
    pub demo_users: bool,
    pub api: ApiConfig,
    pub logic: LogicConfig,
    pub task: TaskConfig,
    pub connect: ConnectConfig,
    pub queue: SqliteQueueOptions,
    pub sessions: SessionPolicy,
}

impl StandaloneConfig {
    /// gochat's ports on every interface; admin on loopback.
    pub fn gochat_ports(data_dir: PathBuf) -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            data_dir,
            api_addr: any(7070),
            ws_addr: any(7000),
            tcp_addr: any(7001),
            site_addr: any(8080),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
            demo_users: true,
            api: ApiConfig::default(),
            logic: LogicConfig::default(),
            task: TaskConfig::default(),
            connect: ConnectConfig::default(),
            queue: SqliteQueueOptions::default(),
            sessions: SessionPolicy::default(),
        }
    }

    /// Every listener on a free loopback port (for tests and benchmarks).
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        let free = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            api_addr: free,
            ws_addr: free,
            tcp_addr: free,
            site_addr: free,
            admin_addr: free,
            ..Self::gochat_ports(data_dir)
        }
    }
}

/// Where a running standalone listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub api: SocketAddr,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub site: SocketAddr,
    pub admin: SocketAddr,
    pub logic: SocketAddr,
    pub push: SocketAddr,
}

/// A running standalone Courier.
#[derive(Debug)]
pub struct Standalone {
    pub addresses: Addresses,
    pub data_dir: PathBuf,
    front: CancellationToken,
    back: CancellationToken,
    front_tasks: JoinSet<anyhow::Result<()>>,
    back_tasks: JoinSet<anyhow::Result<()>>,
}

impl Standalone {
    /// Opens the data directory, binds every listener and starts every tier.
    pub async fn start(mut config: StandaloneConfig) -> anyhow::Result<Self> {
        // The tiers talk over loopback ports that other local users could
        // reach too: a secret made for this process keeps them out.
        let secret = courier_proto::InternalAuth::random();
        config.logic.internal_auth = secret.clone();
        config.connect.internal_auth = secret.clone();
        config.api.internal_auth = secret.clone();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let store = SqliteStore::open(&config.data_dir.join("courier.sqlite")).await.context("opening the store")?;
        let queue = SqliteQueue::open(&config.data_dir.join("queue.sqlite"), config.queue.clone())
            .await
            .context("opening the embedded queue")?;
        let store = Arc::new(store);
        let queue = Arc::new(queue);

        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let api_listener = bind(config.api_addr, "the HTTP API").await?;
        let ws_listener = bind(config.ws_addr, "WebSocket clients").await?;
        let tcp_listener = bind(config.tcp_addr, "TCP clients").await?;
        let site_listener = bind(config.site_addr, "the browser chat").await?;
        let admin_listener = bind(config.admin_addr, "the admin endpoints").await?;
        let logic_listener = bind(loopback, "logic's gRPC service").await?;
        let push_listener = bind(loopback, "connect's push service").await?;
        let addresses = Addresses {
            api: api_listener.local_addr()?,
            ws: ws_listener.local_addr()?,
            tcp: tcp_listener.local_addr()?,
            site: site_listener.local_addr()?,
            admin: admin_listener.local_addr()?,
            logic: logic_listener.local_addr()?,
            push: push_listener.local_addr()?,
        };

        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        let front = CancellationToken::new();
        let back = CancellationToken::new();
        let mut front_tasks = JoinSet::new();
        let mut back_tasks = JoinSet::new();

        let node = ConnectNode::new(config.connect.server_id.clone(), addresses.push.to_string());
        let nodes = StaticDiscovery::new(vec![node]).watch(courier_discovery::Tier::Connect);
        let pusher = compose::pusher(nodes, None, secret, metrics.clone(), back.clone());

        let logic = compose::logic(
            config.logic.clone(),
            LogicBackends {
                users: store.clone(),
                history: store.clone(),
                sessions: Arc::new(MemorySessions::new(config.sessions.clone())),
                presence: Arc::new(MemoryPresence::default()),
                client_msg_ids: Arc::new(MemoryClientMsgIds::new(compose::CLIENT_MSG_ID_TTL)),
                queue: queue.clone(),
                pusher: pusher.clone(),
                metrics: metrics.clone(),
            },
            config.demo_users,
        )
        .await?;

        {
            let (metrics, readiness, stop) = (metrics.clone(), readiness.clone(), back.clone());
            back_tasks.spawn(async move {
                Ok(courier_telemetry::serve_admin(admin_listener, metrics, readiness, stop).await?)
            });
        }
        {
            let ready = readiness.flag("logic");
            let stop = back.clone();
            back_tasks.spawn(async move { Ok(courier_logic::serve(logic, logic_listener, ready, stop).await?) });
        }
        {
            let backends = TaskBackends { queue, history: store, pusher, metrics: metrics.clone() };
            let (ready, stop, task_config) = (readiness.flag("task"), back.clone(), config.task.clone());
            back_tasks.spawn(async move {
                courier_task::run(task_config, backends, ready, stop).await;
                Ok(())
            });
        }
        {
            let listeners = ConnectListeners { ws: ws_listener, tcp: Some(tcp_listener), push: push_listener };
            let (ready, stop, connect_config, metrics) =
                (readiness.flag("connect"), front.clone(), config.connect.clone(), metrics.clone());
            let reaching_logic = readiness.flag("logic heartbeat");
            let logic = logic_client(addresses.logic, &connect_config.internal_auth)?;
            front_tasks.spawn(async move {
                Ok(courier_connect::run(connect_config, listeners, logic, metrics, ready, reaching_logic, stop).await?)
            });
        }
        {
            let (ready, stop, api_config, metrics) =
                (readiness.flag("api"), front.clone(), config.api.clone(), metrics.clone());
            let logic = logic_client(addresses.logic, &api_config.internal_auth)?;
            front_tasks.spawn(async move {
                Ok(courier_api::serve(api_config, api_listener, logic, metrics, ready, stop).await?)
            });
        }
        {
            let site = SiteConfig {
                api_url: None,
                ws_url: None,
                api_port: addresses.api.port(),
                ws_port: addresses.ws.port(),
            };
            let stop = front.clone();
            front_tasks.spawn(async move { Ok(crate::site::serve(site, site_listener, stop).await?) });
        }

        Ok(Self { addresses, data_dir: config.data_dir, front, back, front_tasks, back_tasks })
    }

    /// Prints what listens where.
    pub fn describe(&self) -> String {
        let a = &self.addresses;
        format!(
            "Courier standalone is running.\n\
             \x20 HTTP API     http://{}\n\
             \x20 WebSocket    ws://{}/ws\n\
             \x20 TCP          {}\n\
             \x20 browser chat http://{}\n\
             \x20 admin        http://{}/metrics  /healthz  /readyz\n\
             \x20 data         {}\n",
            a.api,
            a.ws,
            a.tcp,
            a.site,
            a.admin,
            self.data_dir.display()
        )
    }

    /// Runs until `signal` resolves or a tier stops on its own, then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let failure = tokio::select! {
            _ = signal => None,
            Some(ended) = self.front_tasks.join_next() => Some(ended),
            Some(ended) = self.back_tasks.join_next() => Some(ended),
        };
        let result = match failure {
            None => Ok(()),
            Some(Ok(Ok(()))) => Err(anyhow::anyhow!("a tier stopped unexpectedly")),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("a tier panicked: {e}")),
        };
        self.stop().await;
        result
    }

    /// Drains the client-facing tiers, then stops the rest.
    pub async fn stop(mut self) {
        self.front.cancel();
        drain(&mut self.front_tasks).await;
        self.back.cancel();
        drain(&mut self.back_tasks).await;
    }
}

async fn drain(tasks: &mut JoinSet<anyhow::Result<()>>) {
    let all = async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "tier ended with an error"),
                Err(e) => tracing::warn!(error = %e, "tier task failed"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), all).await.is_err() {
        tracing::warn!("tiers did not stop in 20 s; aborting them");
        tasks.abort_all();
    }
}

/// The in-process logic's client (over loopback, as in a cluster).
fn logic_client(addr: SocketAddr, auth: &courier_proto::InternalAuth) -> anyhow::Result<courier_proto::LogicClient> {
    Ok(courier_proto::logic_at(&addr.to_string(), Duration::from_secs(30), auth)?)
}
