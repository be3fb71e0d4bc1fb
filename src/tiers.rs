//! One tier per process, as a cluster runs them.
//!
//! Each command builds the backends its tier needs, binds its listeners and its
//! admin endpoints, and runs until SIGTERM/Ctrl-C. Backends are chosen by
//! [`Backends`]: Kafka, PostgreSQL and Redis when their addresses are given (the
//! production set), otherwise the embedded ones in a data directory. With the
//! embedded set, logic and task share the SQLite files of one directory (the
//! embedded queue supports consumers in other processes) and sessions and presence
//! live in the logic process, so run exactly one logic.
//!
//! logic and task wait for PostgreSQL and Redis when they start, and follow
//! every external backend's health in `/readyz` while they run ([`health`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use courier_discovery::ConnectNode;
use courier_presence::memory::{MemoryClientMsgIds, MemoryPresence, MemorySessions, SessionPolicy};
use courier_presence::{ClientMsgIds, Presence, Sessions};
use courier_proto::InternalAuth;
use courier_queue::Queue;
use courier_queue::kafka::{KafkaOptions, KafkaQueue};
use courier_queue::sqlite::{SqliteQueue, SqliteQueueOptions};
use courier_store::postgres::PgStore;
use courier_store::sqlite::SqliteStore;
use courier_store::{HistoryStore, UserStore};
use courier_telemetry::{Metrics, Readiness};
use tokio_util::sync::CancellationToken;

use crate::discovery::{Advertised, DiscoveryArgs};
use crate::{bind, compose, health, shutdown_signal};

/// Where a tier's state lives.
#[derive(Debug, Clone, Args)]
pub struct Backends {
    /// Data directory of the embedded backends (used for what is not given below).
    #[arg(long, env = "COURIER_DATA_DIR", default_value = "courier-data")]
    pub data_dir: PathBuf,
    /// Kafka brokers (host:port,…); the embedded queue when absent.
    #[arg(long, env = "COURIER_KAFKA")]
    pub kafka: Option<String>,
    /// Replication factor of the topics Courier creates in Kafka.
    #[arg(long, env = "COURIER_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
    /// min.insync.replicas of the topics Courier creates (2 with replication
    /// 3); the broker's default when absent.
    #[arg(long, env = "COURIER_KAFKA_MIN_INSYNC_REPLICAS")]
    pub kafka_min_insync_replicas: Option<i32>,
    /// Milliseconds after which a silent task worker loses its partitions.
    #[arg(long, env = "COURIER_KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u64,
    /// Milliseconds a send may wait for Kafka's acknowledgement before the client
    /// is told it failed.
    #[arg(long, env = "COURIER_KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_delivery_timeout_ms: u64,
    /// Milliseconds the producer waits to gather a batch (librdkafka's
    /// `linger.ms`): 0 sends at once; more makes fewer, larger requests for
    /// the broker at a high rate.
    #[arg(long, env = "COURIER_KAFKA_LINGER_MS", default_value_t = 5)]
    pub kafka_linger_ms: u64,
    /// Milliseconds the broker holds a consumer's fetch while nothing arrives
    /// (it answers as soon as one record does): longer is quieter when idle.
    #[arg(long, env = "COURIER_KAFKA_FETCH_WAIT_MS", default_value_t = 2_000)]
    pub kafka_fetch_wait_ms: u64,
    /// Bytes a consumer's fetch waits for (up to the fetch wait) before the
    /// broker answers: 1 answers at the first record; more makes fewer, fuller
    /// fetches at a high rate, at the price of up to the fetch wait of latency
    /// while traffic is below it.
    #[arg(long, env = "COURIER_KAFKA_FETCH_MIN_BYTES", default_value_t = 1)]
    pub kafka_fetch_min_bytes: u32,
    /// PostgreSQL URL for users and history; the embedded SQLite store when absent.
    #[arg(long, env = "COURIER_POSTGRES")]
    pub postgres: Option<String>,
    /// Redis URL for sessions and presence; in process when absent.
    #[arg(long, env = "COURIER_REDIS")]
    pub redis: Option<String>,
    /// Prefix of Courier's Redis keys.
    #[arg(long, env = "COURIER_REDIS_PREFIX", default_value = "courier:")]
    pub redis_prefix: String,
}

/// A user store and a history store (one object implements both).
pub type Stores = (Arc<dyn UserStore>, Arc<dyn HistoryStore>);

/// Sessions, presence and client message ids.
pub type SessionBackends = (Arc<dyn Sessions>, Arc<dyn Presence>, Arc<dyn ClientMsgIds>);

impl Backends {
    fn data_file(&self, name: &str) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))?;
        Ok(self.data_dir.join(name))
    }

    /// The queue: Kafka, or the embedded queue.
    pub async fn queue(&self) -> anyhow::Result<Arc<dyn Queue>> {
        Ok(match &self.kafka {
            Some(brokers) => {
                let mut options = KafkaOptions::new(brokers.clone());
                options.replication = self.kafka_replication;
                options.min_insync_replicas = self.kafka_min_insync_replicas;
                options.session_timeout = Duration::from_millis(self.kafka_session_timeout_ms);
                options.heartbeat_interval = (options.session_timeout / 6).max(Duration::from_millis(100));
                options.delivery_timeout = Duration::from_millis(self.kafka_delivery_timeout_ms);
                options.linger = Duration::from_millis(self.kafka_linger_ms);
                options.fetch_wait = Duration::from_millis(self.kafka_fetch_wait_ms);
                options.fetch_min_bytes = self.kafka_fetch_min_bytes.max(1);
                Arc::new(KafkaQueue::connect(options).context("connecting to Kafka")?)
            }
            None => Arc::new(
                SqliteQueue::open(&self.data_file("queue.sqlite")?, SqliteQueueOptions::default())
                    .await
                    .context("opening the embedded queue")?,
            ),
        })
    }

    /// The stores: PostgreSQL, or SQLite. Either applies pending migrations.
    pub async fn stores(&self) -> anyhow::Result<Stores> {
        Ok(match &self.postgres {
            Some(url) => {
                let store = Arc::new(PgStore::connect(url).await.context("connecting to PostgreSQL")?);
                (store.clone(), store)
            }
            None => {
                let store =
                    Arc::new(SqliteStore::open(&self.data_file("courier.sqlite")?).await.context("opening the store")?);
                (store.clone(), store)
            }
        })
    }

    /// Sessions, presence and client message ids: Redis, or in process.
    pub async fn sessions(&self, policy: SessionPolicy) -> anyhow::Result<SessionBackends> {
        use courier_presence::redis::{RedisClientMsgIds, RedisPresence, RedisSessions};
        Ok(match &self.redis {
            Some(url) => {
                let redis = courier_presence::redis::connect(url).await.context("connecting to Redis")?;
                let prefix = &self.redis_prefix;
                (
                    Arc::new(RedisSessions::new(redis.clone(), policy, prefix)),
                    Arc::new(RedisPresence::new(redis.clone(), prefix)),
                    Arc::new(RedisClientMsgIds::new(redis, prefix, compose::CLIENT_MSG_ID_TTL)),
                )
            }
            None => (
                Arc::new(MemorySessions::new(policy)),
                Arc::new(MemoryPresence::default()),
                Arc::new(MemoryClientMsgIds::new(compose::CLIENT_MSG_ID_TTL)),
            ),
        })
    }
}

impl Backends {
    /// [`Backends::stores`], waiting for PostgreSQL until it answers (see
    /// [`health::until_up`]); the embedded store opens at once or fails.
    pub async fn stores_when_up(&self, shutdown: &CancellationToken) -> anyhow::Result<Stores> {
        match self.postgres {
            Some(_) => health::until_up("PostgreSQL", shutdown, || self.stores()).await,
            None => self.stores().await,
        }
    }

    /// [`Backends::sessions`], waiting for Redis until it answers.
    pub async fn sessions_when_up(
        &self,
        policy: SessionPolicy,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<SessionBackends> {
        match self.redis {
            Some(_) => health::until_up("Redis", shutdown, || self.sessions(policy.clone())).await,
            None => self.sessions(policy).await,
        }
    }

    /// The presence that routes pushes, given this process's `presence`: only a
    /// cluster's shared one (Redis). With presence in process, a separate task
    /// process cannot see the connections logic registered, so its pushes go to
    /// every node.
    pub fn routes(&self, presence: &Arc<dyn Presence>) -> Option<Arc<dyn Presence>> {
        self.redis.is_some().then(|| presence.clone())
    }
}

/// Metrics, readiness and the admin server of one tier process.
pub struct Admin {
    /// Where the admin endpoints listen.
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

impl Admin {
    /// Starts the admin server and a task that cancels `shutdown` on a signal.
    /// `tier`'s metric families only (see `courier_telemetry::Metrics::for_tiers`).
    pub async fn start(addr: SocketAddr, tier: courier_telemetry::Tier) -> anyhow::Result<Self> {
        let listener = bind(addr, "the admin endpoints").await?;
        let metrics = Arc::new(Metrics::for_tiers(&[tier]));
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        tokio::spawn(courier_telemetry::serve_admin(listener, metrics.clone(), readiness.clone(), shutdown.clone()));
        let signal = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signal.cancel();
        });
        tracing::info!(%addr, "admin endpoints listening");
        Ok(Self { addr, metrics, readiness, shutdown })
    }
}

/// The timing of a worker-id lease, all derived from its time to live.
#[derive(Debug, Clone, Copy)]
struct LeaseTimes {
    /// How long the lease lasts without renewal.
    ttl: Duration,
}

impl LeaseTimes {
    /// Renewed every third of the lease.
    fn renew_every(self) -> Duration {
        self.ttl / 3
    }

    /// How long before its lease could lapse logic stops giving ids while it
    /// cannot renew it (5 s of the default 30).
    fn safety(self) -> Duration {
        self.ttl / 6
    }

    /// How long a newly leased id waits when another instance might still use
    /// it: until that one has tried to renew and found its lease gone.
    fn confirm_after(self) -> Duration {
        self.renew_every() + self.safety()
    }
}

/// What the logic command runs with, besides its backends.
#[derive(Debug)]
pub struct LogicTier {
    pub config: courier_logic::LogicConfig,
    /// A fixed worker id; `None` leases one (Redis) or uses 0 (embedded).
    pub worker_id: Option<u32>,
    /// How long a leased worker id lasts without renewal.
    pub worker_lease: Duration,
    pub policy: SessionPolicy,
    pub listen: SocketAddr,
    pub nodes: Vec<ConnectNode>,
    pub demo_users: bool,
}

/// How long a call to logic may take, including waiting for an instance.
const LOGIC_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of logic for api and connect: the instances discovery finds
/// (`logic_addr` with static discovery), balanced.
pub fn logic_client(
    discovery: &DiscoveryArgs,
    logic_addr: &str,
    auth: &InternalAuth,
    admin: &Admin,
) -> anyhow::Result<courier_proto::LogicClient> {
    let instances = discovery.logic(logic_addr, &admin.metrics)?;
    Ok(courier_proto::logic_over(instances, LOGIC_CALL_TIMEOUT, auth))
}

/// Runs logic. Without a fixed worker id, a cluster (Redis) leases one; the
/// embedded set has a single logic and uses 0.
pub async fn logic(
    tier: LogicTier,
    backends: &Backends,
    discovery: &DiscoveryArgs,
    admin: Admin,
) -> anyhow::Result<()> {
    let LogicTier { mut config, worker_id, worker_lease, policy, listen, nodes, demo_users } = tier;
    let times = LeaseTimes { ttl: worker_lease };
    let nodes = discovery.connect_nodes(&nodes, &admin.metrics)?;
    // The tier's own condition first: until it serves, the backends' answers
    // alone must not make it ready.
    let serving = admin.readiness.flag("logic");
    health::follow(backends, &admin.readiness, &admin.metrics, &admin.shutdown);
    let (users, history) = backends.stores_when_up(&admin.shutdown).await?;
    let queue = backends.queue().await?;
    let (sessions, presence, client_msg_ids) = backends.sessions_when_up(policy, &admin.shutdown).await?;
    let lease = match (worker_id, &backends.redis) {
        (Some(id), _) => {
            config.worker_id = id;
            None
        }
        (None, Some(url)) => {
            let holder = format!("logic-{}-{:x}", std::process::id(), rand::random::<u32>());
            let (leases, lease) = health::until_up("Redis (a worker id lease)", &admin.shutdown, || async {
                let redis = courier_presence::redis::connect(url).await.context("connecting to Redis")?;
                let leases = courier_presence::redis::RedisWorkerIds::new(redis, &backends.redis_prefix, times.ttl);
                let lease =
                    courier_presence::WorkerIds::acquire(&leases, &holder).await.context("leasing a worker id")?;
                Ok((leases, lease))
            })
            .await?;
            tracing::info!(worker_id = lease.worker_id, fresh = lease.fresh_registry, "leased snowflake worker id");
            config.worker_id = lease.worker_id;
            config.worker_not_before_unix_ms = lease.not_before_unix_ms;
            Some((leases, lease, holder))
        }
        (None, None) => None,
    };
    let (routes, auth, metrics) = (backends.routes(&presence), config.internal_auth.clone(), admin.metrics.clone());
    let pusher = compose::pusher(nodes, routes, auth, metrics, admin.shutdown.clone());
    let logic = compose::logic(
        config,
        courier_logic::LogicBackends {
            users,
            history,
            sessions,
            presence,
            client_msg_ids,
            queue,
            pusher,
            metrics: admin.metrics.clone(),
        },
        demo_users,
    )
    .await?;
    if let Some((leases, lease, holder)) = lease {
        // Not ready while sends are paused over the lease.
        let leased = admin.readiness.flag("worker id lease");
        let state = if lease.fresh_registry {
            // Redis is new or came back empty: wait out whoever may still use this id.
            logic.pause_ids();
            tracing::warn!(
                worker_id = lease.worker_id,
                wait = ?times.confirm_after(),
                "Redis holds no record of earlier worker id leases; sends wait until no other instance can be using this id"
            );
            LeaseState::Confirming { after: tokio::time::Instant::now() + times.confirm_after() }
        } else {
            LeaseState::Held
        };
        leased.set(state == LeaseState::Held);
        let keeper = WorkerLeaseKeeper { leases, holder, times, logic: logic.clone(), leased };
        tokio::spawn(keeper.run(lease.worker_id, state, admin.shutdown.clone()));
    }
    let listener = bind(listen, "logic's gRPC service").await?;
    tracing::info!(addr = %listener.local_addr()?, "logic listening");
    let mut advertised = Advertised::new(courier_discovery::Tier::Logic, listen, admin.addr);
    advertised.meta.insert("grpc_port".into(), listen.port().to_string());
    let registered = discovery.register(advertised, &admin.shutdown).await?;
    courier_logic::serve(logic, listener, serving, admin.shutdown.clone()).await?;
    registered.finish().await;
    Ok(())
}

/// Runs a task worker.
pub async fn task(
    config: courier_task::TaskConfig,
    backends: &Backends,
    discovery: &DiscoveryArgs,
    nodes: Vec<ConnectNode>,
    secret: InternalAuth,
    admin: Admin,
) -> anyhow::Result<()> {
    let nodes = discovery.connect_nodes(&nodes, &admin.metrics)?;
    let consuming = admin.readiness.flag("task");
    health::follow(backends, &admin.readiness, &admin.metrics, &admin.shutdown);
    let (_, history) = backends.stores_when_up(&admin.shutdown).await?;
    let queue = backends.queue().await?;
    let (_, presence, _) = backends.sessions_when_up(SessionPolicy::default(), &admin.shutdown).await?;
    let routes = backends.routes(&presence);
    let pusher = compose::pusher(nodes, routes, secret, admin.metrics.clone(), admin.shutdown.clone());
    let task_backends = courier_task::TaskBackends { queue, history, pusher, metrics: admin.metrics.clone() };
    // task serves nothing but its admin endpoints: that is what it registers.
    let advertised = Advertised::new(courier_discovery::Tier::Task, admin.addr, admin.addr);
    let registered = discovery.register(advertised, &admin.shutdown).await?;
    courier_task::run(config, task_backends, consuming, admin.shutdown.clone()).await;
    registered.finish().await;
    Ok(())
}

/// Where logic stands with its worker-id lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    /// Held and renewed; sends admitted unless renewals failed for too long.
    Held,
    /// Lost: sends paused, a worker id to be leased again.
    Lost,
    /// A worker id leased that another instance may still be using: sends
    /// paused until `after`, and admitted once a renewal after it finds the
    /// lease still this instance's.
    Confirming { after: tokio::time::Instant },
}

/// Keeps the worker-id lease, recording the last millisecond used, and never
/// ends logic (before, a lost lease stopped it, and every send failed until
/// someone restarted it). While sends are paused, `leased` reports logic not
/// ready (`/readyz`), so balancers and discovery send traffic elsewhere:
///
/// - Redis out of reach: renewals are retried; once nothing has renewed the
///   lease for its time to live less its safety margin, sends are paused (the
///   lease may lapse and another instance take the id), and they resume when a
///   renewal finds the lease still this instance's.
/// - The lease lost (Redis came back empty, or another instance holds the id):
///   sends pause at once, and a worker id is leased again. Sends resume only a
///   renewal interval and the margin later, once the new lease still holds:
///   by then any instance that was still using that id has tried to renew it,
///   found it gone and paused. Ids resume after the last millisecond this
///   instance used, so its own earlier ids are never repeated either.
/// - Started on a Redis with no record of earlier leases (new, or emptied):
///   the same wait before the first send, for the same reason.
struct WorkerLeaseKeeper {
    leases: courier_presence::redis::RedisWorkerIds,
    holder: String,
    times: LeaseTimes,
    logic: courier_logic::Logic,
    leased: courier_telemetry::ReadyFlag,
}

impl WorkerLeaseKeeper {
    async fn run(self, mut worker_id: u32, mut state: LeaseState, shutdown: CancellationToken) {
        use courier_presence::WorkerIds as _;
        let renew_every = self.times.renew_every();
        let mut ticker = tokio::time::interval(renew_every);
        let mut renewed = tokio::time::Instant::now();
        let mut last_used = 0u64;
        loop {
            let pause_at = renewed + self.times.ttl - self.times.safety();
            let confirm_at = match state {
                LeaseState::Confirming { after } => after,
                _ => pause_at,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(pause_at), if state == LeaseState::Held && self.logic.admitting() => {
                    self.pause(&mut last_used);
                    tracing::warn!(worker_id, "worker id lease not renewed for too long; sends paused until it is");
                    continue;
                }
                _ = tokio::time::sleep_until(confirm_at), if matches!(state, LeaseState::Confirming { .. }) => {}
                _ = ticker.tick() => {}
            }
            last_used = last_used.max(self.logic.last_id_unix_ms());
            if state == LeaseState::Lost {
                match self.leases.acquire(&self.holder).await {
                    Ok(lease) => {
                        worker_id = lease.worker_id;
                        last_used = last_used.max(lease.not_before_unix_ms);
                        state =
                            LeaseState::Confirming { after: tokio::time::Instant::now() + self.times.confirm_after() };
                        tracing::info!(
                            worker_id,
                            "leased a worker id again; sends wait until no other instance can be using it"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "could not lease a worker id; retrying"),
                }
                continue;
            }
            match tokio::time::timeout(renew_every / 2, self.leases.renew(worker_id, &self.holder, last_used)).await {
                Ok(Ok(true)) => {
                    renewed = tokio::time::Instant::now();
                    let confirmed = match state {
                        LeaseState::Confirming { after } => renewed >= after,
                        _ => !self.logic.admitting(),
                    };
                    if confirmed && resume(&self.logic, worker_id, last_used) {
                        state = LeaseState::Held;
                        self.leased.set(true);
                        tracing::info!(worker_id, "worker id lease holds; sends admitted");
                    }
                }
                Ok(Ok(false)) => {
                    self.pause(&mut last_used);
                    state = LeaseState::Lost;
                    tracing::error!(worker_id, "worker id lease lost; sends paused while a worker id is leased again");
                }
                Ok(Err(e)) => tracing::warn!(worker_id, error = %e, "could not renew the worker id lease; retrying"),
                Err(_) => tracing::warn!(worker_id, "renewing the worker id lease timed out; retrying"),
            }
        }
    }

    /// Pauses sends (if admitted) and reports logic not ready.
    fn pause(&self, last_used: &mut u64) {
        if let Some(last) = self.logic.pause_ids() {
            *last_used = (*last_used).max(last);
        }
        self.leased.set(false);
    }
}

/// Resumes giving ids as `worker_id` after `not_before`; false if it cannot.
fn resume(logic: &courier_logic::Logic, worker_id: u32, not_before: u64) -> bool {
    match logic.resume_ids(worker_id, not_before) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot give ids as this worker id");
            false
        }
    }
}
