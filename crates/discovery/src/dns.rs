//! DNS: the instances of a tier are the records of a name, as a Kubernetes
//! headless service publishes them (one record per ready pod).
//!
//! - logic is `HOST:PORT`: every address `HOST` resolves to is an instance on
//!   `PORT` (its id is the address).
//! - connect nodes are an SRV name (`_push._tcp.courier-connect.<ns>.svc…`):
//!   every SRV record is a node, its target's first label (the pod name, which
//!   the chart makes the node's `serverId`) is its id, and the target's address
//!   with the record's port is its push service.
//!
//! DNS cannot notify, so names are resolved every `refresh`, with the
//! resolver's cache off (the set must follow pods, not TTLs). A name without
//! records is an empty set (the service has no ready pod); a resolver failure
//! keeps the last known set.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::watch;

use crate::{Discovery, Error, Instance, Instances, OnFailure, Result, Tier};

/// Which names to resolve.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// logic as `HOST:PORT`.
    pub logic: Option<String>,
    /// The SRV name of the connect nodes' push port.
    pub connect: Option<String>,
    /// How often names are resolved again.
    pub refresh: Duration,
    /// The name server to ask; the system's (`/etc/resolv.conf`) when `None`.
    pub server: Option<SocketAddr>,
    /// Told of every failed lookup.
    pub on_failure: OnFailure,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            logic: None,
            connect: None,
            refresh: Duration::from_secs(5),
            server: None,
            on_failure: OnFailure::default(),
        }
    }
}

/// Discovery by DNS names; cheap to clone.
#[derive(Clone)]
pub struct Dns {
    resolver: Resolver<TokioRuntimeProvider>,
    config: DnsConfig,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Dns {
    pub fn new(config: DnsConfig) -> Result<Self> {
        if let Some(logic) = &config.logic {
            split_host_port(logic)?;
        }
        let builder = match config.server {
            Some(server) => {
                let mut connection = ConnectionConfig::udp();
                connection.port = server.port();
                let mut name_server = NameServerConfig::udp(server.ip());
                name_server.connections = vec![connection];
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => Resolver::builder_tokio()
                .map_err(|e| Error::Config(format!("reading the system's DNS configuration: {e}")))?,
        };
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(2);
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| Error::Config(format!("building the DNS resolver: {e}")))?;
        Ok(Self { resolver, config })
    }

    /// The instances of `tier` now; `Ok(None)` when no name is configured for it.
    pub async fn resolve(&self, tier: Tier) -> Result<Option<Vec<Instance>>> {
        match tier {
            Tier::Logic => match &self.config.logic {
                Some(name) => self.addresses(name).await.map(Some),
                None => Ok(None),
            },
            Tier::Connect => match &self.config.connect {
                Some(name) => self.services(name).await.map(Some),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>> {
        match self.resolver.lookup_ip(host).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(Error::Unavailable(format!("resolving {host}: {e}"))),
        }
    }

    async fn addresses(&self, name: &str) -> Result<Vec<Instance>> {
        let (host, port) = split_host_port(name)?;
        let list = self.ips(host).await?.into_iter().map(|ip| {
            let addr = SocketAddr::new(ip, port).to_string();
            Instance { id: addr.clone(), addr }
        });
        Ok(list.collect())
    }

    async fn services(&self, name: &str) -> Result<Vec<Instance>> {
        let found = match self.resolver.srv_lookup(name).await {
            Ok(found) => found,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(Error::Unavailable(format!("resolving SRV {name}: {e}"))),
        };
        let mut list = Vec::new();
        for record in found.answers() {
            let RData::SRV(srv) = &record.data else { continue };
            let target = srv.target.to_utf8();
            let Some(id) = target.split('.').next().filter(|label| !label.is_empty()) else { continue };
            // A target that has no address yet is a pod not ready: skipped.
            if let Some(ip) = self.ips(&target).await?.first() {
                list.push(Instance { id: id.to_owned(), addr: SocketAddr::new(*ip, srv.port).to_string() });
            }
        }
        Ok(list)
    }

    async fn follow(self, tier: Tier, tx: watch::Sender<Instances>) {
        loop {
            match self.resolve(tier).await {
                Ok(Some(list)) => {
                    crate::publish(&tx, list, tier, "DNS");
                }
                Ok(None) => {
                    tracing::warn!(tier = tier.name(), "no DNS name configured for this tier; it has no instances");
                    return;
                }
                Err(e) => {
                    tracing::warn!(tier = tier.name(), error = %e, "DNS lookup failed; keeping the last known instances");
                    self.config.on_failure.call(&e);
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(self.config.refresh) => {}
            }
        }
    }
}

impl Discovery for Dns {
    fn watch(&self, tier: Tier) -> watch::Receiver<Instances> {
        let (tx, rx) = watch::channel(Instances::from(Vec::new()));
        tokio::spawn(self.clone().follow(tier, tx));
        rx
    }
}

/// `HOST:PORT` split, the port parsed.
fn split_host_port(name: &str) -> Result<(&str, u16)> {
    let bad = || Error::Config(format!("{name:?} is not HOST:PORT"));
    let (host, port) = name.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}
