//! The command line: `courier <tier>` runs one tier, `courier standalone` runs them
//! all in one process, and the tools (`migrate`, `replay`, `bench`) work on a
//! data directory or a cluster. Every
//! option can also be set through the `COURIER_…` environment variable shown in
//! `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use courier_discovery::ConnectNode;

use courier_presence::memory::SessionPolicy;

use crate::discovery::{Advertised, DiscoveryArgs};
use crate::standalone::{Standalone, StandaloneConfig};
use crate::tiers::Admin;
use courier_telemetry::Tier;

/// Courier: a durable, observable instant-messaging platform that speaks gochat's
/// protocol.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about, long_about = None)]
pub struct Cli {
    /// Log JSON lines instead of text (filter with RUST_LOG).
    #[arg(long, global = true, env = "COURIER_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every tier in one process with embedded storage (no external service).
    Standalone(StandaloneArgs),
    /// Run the HTTP API tier (gochat's /user/* and /push/* routes).
    Api(ApiArgs),
    /// Run the logic tier (accounts, sessions, message admission).
    Logic(LogicArgs),
    /// Run a connect node (WebSocket and TCP long connections).
    Connect(ConnectArgs),
    /// Run a task worker (persist messages, push them to connect nodes).
    Task(TaskArgs),
    /// Serve the browser chat.
    Site(SiteArgs),
    /// Create or upgrade the database schema of a data directory.
    Migrate(MigrateArgs),
    /// Drive a running Courier with load and report loss, order, throughput, latency.
    Bench(courier_bench::BenchArgs),
    /// Read message history back from the queue topics: export it, or rebuild
    /// the history store from it.
    Replay(crate::replay::ReplayArgs),
}

/// The connect nodes logic and task push to (with `--discovery static`).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Connect nodes as SERVER_ID=HOST:PORT (their push service); repeatable.
    #[arg(
        long = "connect-node",
        env = "COURIER_CONNECT_NODES",
        value_delimiter = ',',
        default_value = "connect-0=127.0.0.1:7270"
    )]
    pub connect_nodes: Vec<ConnectNode>,
}

/// Abuse limits; 0 turns a limit off (benchmarks and local clusters do).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Messages one user may send per second, over every path together.
    #[arg(long, env = "COURIER_SENDS_PER_SECOND", default_value_t = 20)]
    pub sends_per_second: u32,
    /// Login attempts per user name and client address per minute.
    #[arg(long, env = "COURIER_LOGINS_PER_MINUTE", default_value_t = 20)]
    pub logins_per_minute: u32,
    /// Logins and registrations per client address per minute.
    #[arg(long, env = "COURIER_LOGINS_PER_MINUTE_PER_IP", default_value_t = 60)]
    pub logins_per_minute_per_ip: u32,
    /// Password checks that may wait for a core; more are refused as busy.
    #[arg(long, env = "COURIER_PASSWORD_QUEUE", default_value_t = 64)]
    pub password_queue: usize,
    /// Most devices (tokens) one user may be logged in with; 1 is gochat's rule.
    #[arg(long, env = "COURIER_MAX_DEVICES", default_value_t = 8)]
    pub max_devices: usize,
    /// argon2id memory of new password hashes, KiB (OWASP: 19456). Lower only
    /// for load tests that register many users.
    #[arg(long, env = "COURIER_PASSWORD_MEMORY_KIB", default_value_t = 19_456)]
    pub password_memory_kib: u32,
    /// argon2id passes of new password hashes (OWASP: 2).
    #[arg(long, env = "COURIER_PASSWORD_ITERATIONS", default_value_t = 2)]
    pub password_iterations: u32,
    /// Long connections one user may hold over every connect node (0: no limit).
    #[arg(long, env = "COURIER_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,
}

impl LimitArgs {
    fn apply(&self, logic: &mut courier_logic::LogicConfig) {
        logic.sends_per_second = self.sends_per_second;
        logic.send_burst = self.sends_per_second.saturating_mul(3);
        logic.logins_per_minute = self.logins_per_minute;
        logic.logins_per_minute_per_address = self.logins_per_minute_per_ip;
        logic.address_login_burst = self.logins_per_minute_per_ip.div_ceil(2);
        logic.hash_queue = self.password_queue;
        logic.max_connections_per_user = self.max_connections_per_user;
        logic.password_cost = courier_logic::password::PasswordCost {
            memory_kib: self.password_memory_kib,
            iterations: self.password_iterations,
        };
    }
}

/// How tiers prove themselves to each other.
#[derive(Debug, Clone, Args)]
pub struct InternalArgs {
    /// Secret every tier of the cluster shares (16–256 visible ASCII
    /// characters): internal gRPC calls without it are refused. Without it,
    /// anyone who reaches logic's or connect's internal ports can call them.
    #[arg(long, env = "COURIER_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: Option<String>,
    /// This tier's certificate (PEM) for mutual TLS between tiers; with
    /// --internal-tls-key and --internal-tls-ca, every internal call is
    /// encrypted and only tiers holding a certificate of that CA can connect.
    #[arg(long, env = "COURIER_INTERNAL_TLS_CERT", requires_all = ["internal_tls_key", "internal_tls_ca"])]
    pub internal_tls_cert: Option<PathBuf>,
    /// The key of --internal-tls-cert (PEM).
    #[arg(long, env = "COURIER_INTERNAL_TLS_KEY", requires = "internal_tls_cert")]
    pub internal_tls_key: Option<PathBuf>,
    /// The CA that signs every tier's certificate (PEM).
    #[arg(long, env = "COURIER_INTERNAL_TLS_CA", requires = "internal_tls_cert")]
    pub internal_tls_ca: Option<PathBuf>,
    /// The name the tiers' certificates are issued for (checked by callers).
    #[arg(long, env = "COURIER_INTERNAL_TLS_DOMAIN", default_value = "courier-internal")]
    pub internal_tls_domain: String,
}

impl InternalArgs {
    fn secret(&self) -> anyhow::Result<courier_proto::InternalAuth> {
        let auth = match &self.internal_secret {
            Some(secret) => courier_proto::InternalAuth::new(secret).context("--internal-secret")?,
            None => {
                tracing::warn!("no --internal-secret: internal gRPC calls are not authenticated");
                courier_proto::InternalAuth::open()
            }
        };
        let (Some(cert), Some(key), Some(ca)) =
            (&self.internal_tls_cert, &self.internal_tls_key, &self.internal_tls_ca)
        else {
            return Ok(auth);
        };
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let tls =
            courier_proto::InternalTls::from_pem(&read(cert)?, &read(key)?, &read(ca)?, &self.internal_tls_domain);
        Ok(auth.with_tls(tls))
    }
}

/// What one long connection may hold on a connect node.
#[derive(Debug, Clone, Args)]
pub struct ConnectLimitArgs {
    /// Rooms one connection may be in at once.
    #[arg(long, env = "COURIER_MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: usize,
    /// Connections one session token may hold on one connect node.
    #[arg(long, env = "COURIER_MAX_CONNECTIONS_PER_TOKEN", default_value_t = 10)]
    pub max_connections_per_token: usize,
}

impl ConnectLimitArgs {
    fn apply(&self, connect: &mut courier_connect::ConnectConfig) {
        connect.max_rooms_per_connection = self.max_rooms_per_connection.max(1);
        connect.max_connections_per_token = self.max_connections_per_token.max(1);
    }
}

/// HTTP request limit per client address.
#[derive(Debug, Clone, Args)]
pub struct HttpLimitArgs {
    /// Requests one client address may make per second (0: no limit).
    #[arg(long, env = "COURIER_REQUESTS_PER_SECOND_PER_IP", default_value_t = 100)]
    pub requests_per_second_per_ip: u32,
    /// Proxies (addresses or CIDR networks, comma-separated) whose
    /// X-Forwarded-For names the client; from others it is ignored.
    #[arg(long, env = "COURIER_TRUSTED_PROXIES", value_delimiter = ',', value_parser = proxy_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A proxy as a network: `10.0.0.0/8`, or one address (`10.0.0.7`).
fn proxy_net(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a network such as 10.0.0.0/8"))
}

impl HttpLimitArgs {
    fn config(&self) -> courier_api::ApiConfig {
        courier_api::ApiConfig {
            per_ip_per_second: self.requests_per_second_per_ip,
            per_ip_burst: self.requests_per_second_per_ip.saturating_mul(2),
            trusted_proxies: self.trusted_proxies.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Where messages, users and the queue are stored.
    #[arg(long, env = "COURIER_DATA_DIR", default_value = "courier-data")]
    pub data_dir: PathBuf,
    /// HTTP API address.
    #[arg(long, env = "COURIER_API_ADDR", default_value = "0.0.0.0:7070")]
    pub api_addr: SocketAddr,
    /// WebSocket address (path /ws).
    #[arg(long, env = "COURIER_WS_ADDR", default_value = "0.0.0.0:7000")]
    pub ws_addr: SocketAddr,
    /// TCP protocol address.
    #[arg(long, env = "COURIER_TCP_ADDR", default_value = "0.0.0.0:7001")]
    pub tcp_addr: SocketAddr,
    /// Browser chat address.
    #[arg(long, env = "COURIER_SITE_ADDR", default_value = "0.0.0.0:8080")]
    pub site_addr: SocketAddr,
    /// Admin endpoints (/metrics, /healthz, /readyz).
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: SocketAddr,
    /// Do not create the demo users demo, test and admin (password 111111).
    #[arg(long, env = "COURIER_NO_DEMO_USERS")]
    pub no_demo_users: bool,
    /// Seconds the embedded queue keeps a record once it is delivered
    /// (Kafka's retention.ms; default 7 days). Message history is kept apart
    /// and is not affected.
    #[arg(long, env = "COURIER_QUEUE_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub queue_retention_secs: u64,
    /// Bytes of records the embedded queue keeps per partition once delivered
    /// (Kafka's retention.bytes; default 64 MiB, 0 for no size limit).
    #[arg(long, env = "COURIER_QUEUE_RETENTION_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub queue_retention_bytes: u64,
    /// When an acknowledged message is safe: `power-loss` (the queue syncs
    /// every commit to disk before a sender is answered) or `crash` (it
    /// survives the process being killed; a power cut may take back the last
    /// second or so of acknowledged messages). History is synced on every
    /// commit either way, so the two files never disagree after a power cut.
    #[arg(long, env = "COURIER_DURABILITY", value_enum, default_value_t = Durability::PowerLoss)]
    pub durability: Durability,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
    #[command(flatten)]
    pub connect_limits: ConnectLimitArgs,
}

/// What the embedded queue's acknowledgement survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// A power cut: every commit is synced to disk.
    PowerLoss,
    /// The process being killed: the OS writes the commit out later.
    Crash,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    #[arg(long, env = "COURIER_API_ADDR", default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// Logic's gRPC address (with `--discovery static`).
    #[arg(long, env = "COURIER_LOGIC_ADDR", default_value = "127.0.0.1:7170")]
    pub logic_addr: String,
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub http_limits: HttpLimitArgs,
    #[command(flatten)]
    pub internal: InternalArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

/// Names of the queue's topics and group.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Topic of room traffic (keyed room:<id>).
    #[arg(long, env = "COURIER_ROOM_TOPIC", default_value = courier_model::topics::ROOM)]
    pub room_topic: String,
    /// Topic of private traffic (keyed user:<recipient>).
    #[arg(long, env = "COURIER_PRIVATE_TOPIC", default_value = courier_model::topics::PRIVATE)]
    pub private_topic: String,
    /// Partitions of each topic when created (fixed afterwards).
    #[arg(long, env = "COURIER_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
}

#[derive(Debug, Args)]
pub struct LogicArgs {
    /// gRPC address.
    #[arg(long, env = "COURIER_LOGIC_ADDR", default_value = "127.0.0.1:7170")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub backends: crate::tiers::Backends,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Snowflake worker id (0–1023), unique among running logic instances; by
    /// default leased from Redis (or 0 on the embedded backends).
    #[arg(long, env = "COURIER_WORKER_ID")]
    pub worker_id: Option<u32>,
    /// Milliseconds a leased worker id lasts without renewal (renewed every
    /// third; sends pause a sixth before it could lapse).
    #[arg(long, env = "COURIER_WORKER_LEASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(600..))]
    pub worker_lease_ms: u64,
    /// Create the demo users (development only).
    #[arg(long, env = "COURIER_DEMO_USERS")]
    pub demo_users: bool,
    /// Milliseconds after which a silent connect node's presence is removed.
    #[arg(long, env = "COURIER_NODE_LEASE_MS", default_value_t = 15_000)]
    pub node_lease_ms: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9102")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub internal: InternalArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// This node's serverId, unique in the cluster.
    #[arg(long, env = "COURIER_SERVER_ID", default_value = "connect-0")]
    pub server_id: String,
    #[arg(long, env = "COURIER_WS_ADDR", default_value = "0.0.0.0:7000")]
    pub ws_addr: SocketAddr,
    /// TCP protocol address ("off" to disable).
    #[arg(long, env = "COURIER_TCP_ADDR", default_value = "0.0.0.0:7001")]
    pub tcp_addr: String,
    /// Push service (gRPC) address.
    #[arg(long, env = "COURIER_PUSH_ADDR", default_value = "127.0.0.1:7270")]
    pub push_addr: SocketAddr,
    /// Logic's gRPC address (with `--discovery static`).
    #[arg(long, env = "COURIER_LOGIC_ADDR", default_value = "127.0.0.1:7170")]
    pub logic_addr: String,
    /// Server heartbeat interval in seconds.
    #[arg(long, env = "COURIER_PING_SECS", default_value_t = 54)]
    pub ping_secs: u64,
    /// Drop a WebSocket silent for this many seconds.
    #[arg(long, env = "COURIER_PONG_TIMEOUT_SECS", default_value_t = 60)]
    pub pong_timeout_secs: u64,
    /// Milliseconds between presence heartbeats to logic (a third of its node lease).
    #[arg(long, env = "COURIER_HEARTBEAT_MS", default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9103")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub connect_limits: ConnectLimitArgs,
    #[command(flatten)]
    pub internal: InternalArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub backends: crate::tiers::Backends,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Consumer group shared by the task workers.
    #[arg(long, env = "COURIER_TASK_GROUP", default_value = "courier-task")]
    pub group: String,
    #[command(flatten)]
    pub nodes: NodeArgs,
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9104")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub internal: InternalArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub struct SiteArgs {
    #[arg(long, env = "COURIER_SITE_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// API base URL the browser uses (default: this host, --api-port).
    #[arg(long, env = "COURIER_PUBLIC_API_URL")]
    pub api_url: Option<String>,
    /// WebSocket URL the browser uses (default: this host, --ws-port, /ws).
    #[arg(long, env = "COURIER_PUBLIC_WS_URL")]
    pub ws_url: Option<String>,
    #[arg(long, env = "COURIER_PUBLIC_API_PORT", default_value_t = 7070)]
    pub api_port: u16,
    #[arg(long, env = "COURIER_PUBLIC_WS_PORT", default_value_t = 7000)]
    pub ws_port: u16,
    #[arg(long, env = "COURIER_ADMIN_ADDR", default_value = "127.0.0.1:9105")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub backends: crate::tiers::Backends,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Standalone(args) => {
            let mut config = StandaloneConfig::gochat_ports(args.data_dir);
            config.api_addr = args.api_addr;
            config.ws_addr = args.ws_addr;
            config.tcp_addr = args.tcp_addr;
            config.site_addr = args.site_addr;
            config.admin_addr = args.admin_addr;
            config.demo_users = !args.no_demo_users;
            config.queue.retention = Duration::from_secs(args.queue_retention_secs);
            config.queue.retention_bytes = args.queue_retention_bytes;
            config.queue.sync_full = args.durability == Durability::PowerLoss;
            config.sessions.max_devices = args.limits.max_devices.max(1);
            args.limits.apply(&mut config.logic);
            args.connect_limits.apply(&mut config.connect);
            config.api = args.http_limits.config();
            let standalone = Standalone::start(config).await?;
            let mut banner = standalone.describe();
            if !args.no_demo_users {
                banner.push_str("  demo users: demo, test, admin (password 111111)\n");
            }
            say(&banner);
            standalone.run_until(crate::shutdown_signal()).await
        }
        Command::Api(args) => {
            let admin = Admin::start(args.admin_addr, Tier::Api).await?;
            let listener = crate::bind(args.listen, "the HTTP API").await?;
            tracing::info!(addr = %args.listen, "api listening");
            let ready = admin.readiness.flag("api");
            let config = courier_api::ApiConfig { internal_auth: args.internal.secret()?, ..args.http_limits.config() };
            let logic = crate::tiers::logic_client(&args.discovery, &args.logic_addr, &config.internal_auth, &admin)?;
            let advertised = Advertised::new(courier_discovery::Tier::Api, args.listen, args.admin_addr);
            let registered = args.discovery.register(advertised, &admin.shutdown).await?;
            courier_api::serve(config, listener, logic, admin.metrics.clone(), ready, admin.shutdown).await?;
            registered.finish().await;
            Ok(())
        }
        Command::Logic(args) => {
            let admin = Admin::start(args.admin_addr, Tier::Logic).await?;
            let mut config = courier_logic::LogicConfig {
                room_topic: args.topics.room_topic,
                private_topic: args.topics.private_topic,
                partitions: args.topics.partitions,
                node_lease: Duration::from_millis(args.node_lease_ms.max(100)),
                internal_auth: args.internal.secret()?,
                ..Default::default()
            };
            args.limits.apply(&mut config);
            let policy = SessionPolicy { max_devices: args.limits.max_devices.max(1), ..SessionPolicy::default() };
            let tier = crate::tiers::LogicTier {
                config,
                worker_id: args.worker_id,
                worker_lease: Duration::from_millis(args.worker_lease_ms),
                policy,
                listen: args.listen,
                nodes: args.nodes.connect_nodes,
                demo_users: args.demo_users,
            };
            crate::tiers::logic(tier, &args.backends, &args.discovery, admin).await
        }
        Command::Connect(args) => {
            let admin = Admin::start(args.admin_addr, Tier::Connect).await?;
            let tcp = if args.tcp_addr == "off" {
                None
            } else {
                let addr: SocketAddr = args.tcp_addr.parse().context("--tcp-addr")?;
                Some(crate::bind(addr, "TCP clients").await?)
            };
            let listeners = courier_connect::ConnectListeners {
                ws: crate::bind(args.ws_addr, "WebSocket clients").await?,
                tcp,
                push: crate::bind(args.push_addr, "the push service").await?,
            };
            let mut config = courier_connect::ConnectConfig {
                server_id: args.server_id,
                ping_interval: Duration::from_secs(args.ping_secs.max(1)),
                pong_timeout: Duration::from_secs(args.pong_timeout_secs.max(1)),
                heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(50)),
                internal_auth: args.internal.secret()?,
                ..Default::default()
            };
            args.connect_limits.apply(&mut config);
            let ready = admin.readiness.flag("connect");
            let reaching_logic = admin.readiness.flag("logic heartbeat");
            let logic = crate::tiers::logic_client(&args.discovery, &args.logic_addr, &config.internal_auth, &admin)?;
            let mut advertised = Advertised::new(courier_discovery::Tier::Connect, args.push_addr, args.admin_addr);
            advertised.id = Some(config.server_id.clone());
            advertised.meta.insert(courier_discovery::consul::SERVER_ID_META.into(), config.server_id.clone());
            advertised.meta.insert("bootId".into(), config.boot_id.clone());
            advertised.meta.insert("ws_port".into(), args.ws_addr.port().to_string());
            if let Ok(tcp) = args.tcp_addr.parse::<SocketAddr>() {
                advertised.meta.insert("tcp_port".into(), tcp.port().to_string());
            }
            let registered = args.discovery.register(advertised, &admin.shutdown).await?;
            courier_connect::run(
                config,
                listeners,
                logic,
                admin.metrics.clone(),
                ready,
                reaching_logic,
                admin.shutdown,
            )
            .await?;
            registered.finish().await;
            Ok(())
        }
        Command::Task(args) => {
            let admin = Admin::start(args.admin_addr, Tier::Task).await?;
            let config = courier_task::TaskConfig {
                group: args.group,
                room_topic: args.topics.room_topic,
                private_topic: args.topics.private_topic,
                partitions: args.topics.partitions,
                ..Default::default()
            };
            let secret = args.internal.secret()?;
            let nodes = args.nodes.connect_nodes;
            crate::tiers::task(config, &args.backends, &args.discovery, nodes, secret, admin).await
        }
        Command::Site(args) => {
            let admin = Admin::start(args.admin_addr, Tier::Site).await?;
            admin.readiness.flag("site").set(true);
            let listener = crate::bind(args.listen, "the browser chat").await?;
            let config = crate::site::SiteConfig {
                api_url: args.api_url,
                ws_url: args.ws_url,
                api_port: args.api_port,
                ws_port: args.ws_port,
            };
            let advertised = Advertised::new(courier_discovery::Tier::Site, args.listen, args.admin_addr);
            let registered = args.discovery.register(advertised, &admin.shutdown).await?;
            crate::site::serve(config, listener, admin.shutdown).await?;
            registered.finish().await;
            Ok(())
        }
        Command::Bench(args) => courier_bench::run(args).await,
        Command::Replay(args) => crate::replay::run(args).await,
        Command::Migrate(args) => {
            args.backends.stores().await?;
            let what = match &args.backends.postgres {
                Some(_) => "PostgreSQL".to_owned(),
                None => args.backends.data_dir.display().to_string(),
            };
            say(&format!("schema of {what} is up to date\n"));
            Ok(())
        }
    }
}

/// Writes to stdout, ignoring a closed pipe: a server must not die because the
/// program reading its banner went away.
fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
