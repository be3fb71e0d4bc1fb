//! Finding the connect nodes that task and logic push to.
//!
//! A [`Discovery`] answers "which connect nodes exist now, and where is their push
//! service". [`StaticDiscovery`] answers from configuration (standalone and local
//! clusters); Consul and DNS backends answer from a registry, behind the same trait.

use async_trait::async_trait;

/// Errors from a discovery backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid connect node {0:?}: expected SERVER_ID=HOST:PORT")]
    InvalidNode(String),
    #[error("discovery unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connect node: its `serverId` and the address of its push service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectNode {
    pub server_id: String,
    pub push_addr: String,
}

impl std::str::FromStr for ConnectNode {
    type Err = Error;

    /// Parses `SERVER_ID=HOST:PORT`.
    fn from_str(s: &str) -> Result<Self> {
        let (id, addr) = s.split_once('=').ok_or_else(|| Error::InvalidNode(s.to_owned()))?;
        let (id, addr) = (id.trim(), addr.trim());
        if id.is_empty() || addr.is_empty() || !addr.contains(':') {
            return Err(Error::InvalidNode(s.to_owned()));
        }
        Ok(Self { server_id: id.to_owned(), push_addr: addr.to_owned() })
    }
}

/// Where the connect nodes are.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// The connect nodes known now.
    async fn connect_nodes(&self) -> Result<Vec<ConnectNode>>;
}

/// A fixed list of connect nodes.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    nodes: Vec<ConnectNode>,
}

impl StaticDiscovery {
    pub fn new(nodes: Vec<ConnectNode>) -> Self {
        Self { nodes }
    }
}

#[async_trait]
impl Discovery for StaticDiscovery {
    async fn connect_nodes(&self) -> Result<Vec<ConnectNode>> {
        Ok(self.nodes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_and_refuses_malformed_ones() {
        let node: ConnectNode = "connect-0=127.0.0.1:7201".parse().expect("valid");
        assert_eq!(node.server_id, "connect-0");
        assert_eq!(node.push_addr, "127.0.0.1:7201");
        for bad in ["connect-0", "=127.0.0.1:1", "c=", "c=localhost"] {
            assert!(bad.parse::<ConnectNode>().is_err(), "{bad:?} must be refused");
        }
    }
}
