//! How a tier process finds the others, and makes itself found.
//!
//! `--discovery` picks the backend (see `courier_discovery`): `static` uses
//! the addresses on the command line (`--logic-addr`, `--connect-node`), which
//! is what standalone and a hand-started cluster need; `consul` registers this
//! process with the local Consul agent and follows the other tiers there; `dns`
//! follows Kubernetes headless services. The choice is the same flag on every
//! tier, so a cluster is switched by one environment variable.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use courier_discovery::consul::{Consul, ConsulConfig, Registration};
use courier_discovery::dns::{Dns, DnsConfig};
use courier_discovery::{Discovery, Instance, Instances, OnFailure, StaticDiscovery, Tier};
use courier_telemetry::{Metrics, TierLabel};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The discovery backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The addresses given on the command line.
    Static,
    /// The local Consul agent.
    Consul,
    /// Kubernetes headless services.
    Dns,
}

/// How the tiers find each other.
#[derive(Debug, Clone, Args)]
pub struct DiscoveryArgs {
    /// How this tier finds the others: static (addresses on the command line),
    /// consul (register with the local agent, follow the others there) or dns
    /// (Kubernetes headless services).
    #[arg(long, env = "COURIER_DISCOVERY", value_enum, default_value_t = Mode::Static)]
    pub discovery: Mode,
    /// The Consul agent's HTTP address (host:port or http://host:port).
    #[arg(long, env = "CONSUL_HTTP_ADDR", default_value = "127.0.0.1:8500")]
    pub consul_addr: String,
    /// Consul ACL token (needs service:write on the courier services and
    /// service:read, node:read on the ones it follows).
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// Datacenter whose instances are followed (the agent's own by default).
    #[arg(long, env = "COURIER_CONSUL_DATACENTER")]
    pub consul_datacenter: Option<String>,
    /// Prefix of the Consul service names (courier-logic, courier-connect, …).
    #[arg(long, env = "COURIER_CONSUL_PREFIX", default_value = "courier-")]
    pub consul_prefix: String,
    /// Milliseconds between the agent's checks of this tier's /readyz.
    #[arg(long, env = "COURIER_CONSUL_CHECK_INTERVAL_MS", default_value_t = 5_000)]
    pub consul_check_interval_ms: u64,
    /// Seconds a failing instance stays in Consul before the agent removes it
    /// (Consul's minimum is 60).
    #[arg(long, env = "COURIER_CONSUL_DEREGISTER_AFTER_SECS", default_value_t = 60)]
    pub consul_deregister_after_secs: u64,
    /// Host or IP the other tiers (and Consul's check) reach this one at; by
    /// default the address this host uses to reach the Consul agent.
    #[arg(long, env = "COURIER_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// dns: logic's headless service as HOST:PORT.
    #[arg(long, env = "COURIER_LOGIC_DNS")]
    pub logic_dns: Option<String>,
    /// dns: the SRV name of the connect nodes' push port
    /// (_push._tcp.<service>.<namespace>.svc.cluster.local).
    #[arg(long, env = "COURIER_CONNECT_DNS")]
    pub connect_dns: Option<String>,
    /// dns: milliseconds between lookups.
    #[arg(long, env = "COURIER_DNS_REFRESH_MS", default_value_t = 5_000)]
    pub dns_refresh_ms: u64,
}

/// What one tier process registers, besides its host.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub tier: Tier,
    /// A name unique among the tier's instances (a connect node's serverId);
    /// `None`: the registered host and port. The Consul service id is
    /// `<prefix><tier>-<name>`, so clusters sharing an agent (other prefixes)
    /// never take each other's ids.
    pub id: Option<String>,
    /// The address its main port listens on.
    pub listen: SocketAddr,
    /// Its admin endpoints (the check calls /readyz there).
    pub admin: SocketAddr,
    pub meta: BTreeMap<String, String>,
}

impl Advertised {
    /// A tier listening on `listen`, with its admin endpoints on `admin`.
    pub fn new(tier: Tier, listen: SocketAddr, admin: SocketAddr) -> Self {
        Self { tier, id: None, listen, admin, meta: BTreeMap::new() }
    }
}

/// A registration kept alive in the background; [`Registered::finish`]
/// deregisters.
#[derive(Debug, Default)]
pub struct Registered {
    keeper: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl Registered {
    /// Deregisters (on a clean shutdown).
    pub async fn finish(self) {
        if let Some((keeper, stop)) = self.keeper {
            stop.cancel();
            let _ = keeper.await;
        }
    }
}

impl DiscoveryArgs {
    fn consul(&self, on_failure: OnFailure) -> anyhow::Result<Consul> {
        let config = ConsulConfig {
            addr: self.consul_addr.clone(),
            token: self.consul_token.clone().filter(|t| !t.is_empty()),
            datacenter: self.consul_datacenter.clone(),
            prefix: self.consul_prefix.clone(),
            check_interval: Duration::from_millis(self.consul_check_interval_ms.max(100)),
            check_timeout: Duration::from_millis(self.consul_check_interval_ms.clamp(100, 2_000)),
            deregister_critical_after: Duration::from_secs(self.consul_deregister_after_secs.max(1)),
            on_failure,
            ..ConsulConfig::default()
        };
        Consul::new(config).context("--consul-addr")
    }

    /// The backend, with the command line's static addresses (`--logic-addr`
    /// where the tier calls logic, `--connect-node`s where it pushes) for
    /// `static`. Failed registry queries count as
    /// `courier_errors_total{reason="discovery"}`.
    fn backend(
        &self,
        logic: Option<&str>,
        connect: &[Instance],
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Arc<dyn Discovery>> {
        let counted = metrics.clone();
        let on_failure = OnFailure::new(move |_| counted.error("discovery"));
        Ok(match self.discovery {
            Mode::Static => {
                let mut logic_instances = Vec::new();
                if let Some(logic) = logic {
                    if !logic.contains(':') {
                        anyhow::bail!("--logic-addr {logic:?} is not HOST:PORT");
                    }
                    logic_instances.push(Instance::new(logic, logic));
                }
                Arc::new(StaticDiscovery::new(connect.to_vec()).with_logic(logic_instances))
            }
            Mode::Consul => {
                let consul = self.consul(on_failure)?;
                tracing::info!(agent = consul.base_url(), "discovery: Consul");
                Arc::new(consul)
            }
            Mode::Dns => {
                let config = DnsConfig {
                    logic: self.logic_dns.clone(),
                    connect: self.connect_dns.clone(),
                    refresh: Duration::from_millis(self.dns_refresh_ms.max(100)),
                    server: None,
                    on_failure,
                };
                Arc::new(Dns::new(config).context("dns discovery")?)
            }
        })
    }

    /// Follows the logic instances (`logic_addr` with static discovery),
    /// keeping `courier_discovered_instances{tier="logic"}` current.
    pub fn logic(&self, logic_addr: &str, metrics: &Arc<Metrics>) -> anyhow::Result<watch::Receiver<Instances>> {
        let watch = self.backend(Some(logic_addr), &[], metrics)?.watch(Tier::Logic);
        let gauge = metrics.discovered.get_or_create(&TierLabel { tier: Tier::Logic.name() }).clone();
        let mut counted = watch.clone();
        tokio::spawn(async move {
            loop {
                gauge.set(counted.borrow_and_update().len() as i64);
                if counted.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(watch)
    }

    /// Follows the connect nodes (`nodes` with static discovery); the pusher
    /// that uses them counts them.
    pub fn connect_nodes(
        &self,
        nodes: &[Instance],
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<watch::Receiver<Instances>> {
        Ok(self.backend(None, nodes, metrics)?.watch(Tier::Connect))
    }

    /// Registers this process with Consul (when that is the backend) until
    /// `shutdown` (deregistered at once, so traffic moves away while the tier
    /// drains; [`Registered::finish`] waits for that). The agent being down is
    /// retried in the background; only a configuration error fails here.
    pub async fn register(&self, advertised: Advertised, shutdown: &CancellationToken) -> anyhow::Result<Registered> {
        if self.discovery != Mode::Consul {
            return Ok(Registered::default());
        }
        let consul = self.consul(OnFailure::default())?;
        let host = match &self.advertise_host {
            Some(host) => host.clone(),
            None if !advertised.listen.ip().is_unspecified() => advertised.listen.ip().to_string(),
            None => local_ip_towards(consul.base_url()).await.to_string(),
        };
        let admin_host =
            if advertised.admin.ip().is_unspecified() { host.clone() } else { advertised.admin.ip().to_string() };
        let port = advertised.listen.port();
        let name = advertised.id.unwrap_or_else(|| format!("{host}-{port}"));
        let id = format!("{}{}-{name}", self.consul_prefix, advertised.tier.name());
        let mut meta = advertised.meta;
        meta.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("admin_port".into(), advertised.admin.port().to_string());
        let registration = Registration {
            tier: advertised.tier,
            id,
            address: host,
            port,
            tags: vec![advertised.tier.name().to_owned(), format!("v{}", env!("CARGO_PKG_VERSION"))],
            meta,
            check_url: format!("http://{}/readyz", host_port(&admin_host, advertised.admin.port())),
        };
        let advertised_loopback = registration.address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if advertised.admin.ip().is_loopback() && !advertised_loopback {
            tracing::warn!(
                admin = %advertised.admin,
                "the admin endpoints listen on loopback: a Consul agent on another host cannot run this tier's check"
            );
        }
        let stop = shutdown.child_token();
        let keeper = tokio::spawn(consul.keep_registered(registration, stop.clone()));
        Ok(Registered { keeper: Some((keeper, stop)) })
    }
}

/// `host:port`, bracketing an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The local address this host uses to reach `url`'s host (no packet is
/// sent); loopback if that cannot be found.
async fn local_ip_towards(url: &str) -> IpAddr {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let found = async {
        let target = tokio::net::lookup_host(authority).await.ok()?.next()?;
        let bind: SocketAddr = if target.is_ipv6() { "[::]:0".parse().ok()? } else { "0.0.0.0:0".parse().ok()? };
        let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
        socket.connect(target).await.ok()?;
        Some(socket.local_addr().ok()?.ip())
    };
    found.await.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}
