//! How the tiers find each other.
//!
//! api and connect call logic; logic and task push to connect nodes. Which
//! instances of a tier exist changes while Courier runs (a node is added,
//! replaced or dies), so a [`Discovery`] does not answer once: it *follows* a
//! tier, handing out a [`tokio::sync::watch`] receiver that always holds the last
//! known set of healthy [`Instance`]s and wakes its holder when the set changes.
//! Holders react to the change (start or stop pushing to a node, add or drop a
//! logic from the balancer) instead of polling.
//!
//! Three backends, chosen by the operator:
//!
//! - [`StaticDiscovery`]: fixed lists from the command line (standalone, local
//!   clusters, tests).
//! - [`consul::Consul`]: each tier registers itself with the local Consul agent
//!   (with an HTTP check on its `/readyz`) and follows the others with blocking
//!   queries on the health endpoint.
//! - [`dns::Dns`]: a Kubernetes headless service, resolved periodically: one
//!   address per ready pod (logic), or one SRV record per pod (connect nodes,
//!   whose `serverId` is their pod name).
//!
//! A registry outage never empties a set: the last known one stays until the
//! registry answers again.

pub mod consul;
pub mod dns;

use std::sync::Arc;

use tokio::sync::watch;

/// Errors from a discovery backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid instance {0:?}: expected ID=HOST:PORT")]
    InvalidInstance(String),
    #[error("discovery unavailable: {0}")]
    Unavailable(String),
    #[error("discovery misconfigured: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Called on every failed registry query (after it is logged), so the caller
/// can count them; the last known set is kept either way.
#[derive(Clone, Default)]
pub struct OnFailure(Option<Arc<FailureHook>>);

type FailureHook = dyn Fn(&Error) + Send + Sync;

impl OnFailure {
    pub fn new(hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(hook)))
    }

    fn call(&self, error: &Error) {
        if let Some(hook) = &self.0 {
            hook(error);
        }
    }
}

impl std::fmt::Debug for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "OnFailure(set)" } else { "OnFailure(none)" })
    }
}

/// The tiers, as discovery names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Api,
    Logic,
    Connect,
    Task,
    Site,
}

impl Tier {
    /// Every tier, as `courier standalone` runs them.
    pub const ALL: [Tier; 5] = [Tier::Api, Tier::Logic, Tier::Connect, Tier::Task, Tier::Site];

    /// The tier's name, as in `courier <tier>` (and, prefixed, its Consul service).
    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Logic => "logic",
            Self::Connect => "connect",
            Self::Task => "task",
            Self::Site => "site",
        }
    }
}

/// One running instance of a tier: a stable id and the address of its
/// internal service (logic's gRPC service, a connect node's push service).
///
/// For connect nodes the id is the node's `serverId`, the name routes use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub id: String,
    pub addr: String,
}

impl Instance {
    pub fn new(id: impl Into<String>, addr: impl Into<String>) -> Self {
        Self { id: id.into(), addr: addr.into() }
    }
}

impl std::str::FromStr for Instance {
    type Err = Error;

    /// Parses `ID=HOST:PORT`.
    fn from_str(s: &str) -> Result<Self> {
        let (id, addr) = s.split_once('=').ok_or_else(|| Error::InvalidInstance(s.to_owned()))?;
        let (id, addr) = (id.trim(), addr.trim());
        if id.is_empty() || addr.is_empty() || !addr.contains(':') {
            return Err(Error::InvalidInstance(s.to_owned()));
        }
        Ok(Self::new(id, addr))
    }
}

/// A connect node: its `serverId` and the address of its push service.
pub type ConnectNode = Instance;

/// A set of instances, sorted by id, shared by every holder of a watch.
pub type Instances = Arc<[Instance]>;

/// Sorts `instances` by id and keeps one address per id (the lowest).
pub fn instances(mut list: Vec<Instance>) -> Instances {
    list.sort();
    list.dedup_by(|a, b| a.id == b.id);
    list.into()
}

/// A watch of a set that never changes.
pub fn fixed(list: Vec<Instance>) -> watch::Receiver<Instances> {
    // The sender goes at once: holders keep the value and never see a change.
    watch::channel(instances(list)).1
}

/// Puts `list` in `tx` if it differs from what is there (`source` names the
/// backend in the log).
fn publish(tx: &watch::Sender<Instances>, list: Vec<Instance>, tier: Tier, source: &str) {
    let set = instances(list);
    tx.send_if_modified(|current| {
        let changed = *current != set;
        if changed {
            tracing::info!(tier = tier.name(), instances = set.len(), "{source}: instances changed");
            *current = set;
        }
        changed
    });
}

/// Where the instances of a tier are.
pub trait Discovery: Send + Sync + 'static {
    /// Follows the healthy instances of `tier`. The receiver holds the last
    /// known set (empty until the backend first answers) and is marked changed
    /// whenever the set changes; it keeps its last value if the backend stops.
    fn watch(&self, tier: Tier) -> watch::Receiver<Instances>;
}

/// Fixed lists of instances.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    logic: Vec<Instance>,
    connect: Vec<Instance>,
}

impl StaticDiscovery {
    /// Connect nodes only (what logic and task need).
    pub fn new(connect: Vec<ConnectNode>) -> Self {
        Self { logic: Vec::new(), connect }
    }

    /// The logic instances (what api and connect need).
    #[must_use]
    pub fn with_logic(mut self, logic: Vec<Instance>) -> Self {
        self.logic = logic;
        self
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self, tier: Tier) -> watch::Receiver<Instances> {
        let list = match tier {
            Tier::Logic => self.logic.clone(),
            Tier::Connect => self.connect.clone(),
            _ => Vec::new(),
        };
        fixed(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instances_and_refuses_malformed_ones() {
        let node: ConnectNode = "connect-0=127.0.0.1:7201".parse().expect("valid");
        assert_eq!(node, Instance::new("connect-0", "127.0.0.1:7201"));
        for bad in ["connect-0", "=127.0.0.1:1", "c=", "c=localhost"] {
            assert!(bad.parse::<ConnectNode>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_static_set_is_sorted_deduplicated_and_kept() {
        let discovery =
            StaticDiscovery::new(vec![Instance::new("b", "h:2"), Instance::new("a", "h:1"), Instance::new("b", "h:3")]);
        let watch = discovery.watch(Tier::Connect);
        let set = watch.borrow().clone();
        let ids: Vec<&str> = set.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(discovery.watch(Tier::Logic).borrow().is_empty());
    }
}
