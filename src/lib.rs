//! The `courier` binary's wiring: how the tiers are assembled into processes.
//!
//! - [`compose`]: how a tier is built from its configuration, for both below.
//! - [`discovery`]: how a tier process finds the others and registers itself.
//! - [`health`]: waiting for backends at start and following their health.
//! - [`standalone`]: every tier in one process on the embedded backends.
//! - [`tiers`]: one tier per process, as a cluster runs them.
//! - [`site`]: the browser chat and its runtime configuration.
//! - `courier bench` is the load generator of the `courier-bench` crate.
//! - [`replay`]: `courier replay`, history read back from the queue topics.
//! - [`cli`]: the command line.
//!
//! Tiers never call each other in process, even in standalone: they talk over the
//! same gRPC interfaces and queue as in a cluster, on loopback, so what standalone
//! tests is what a cluster runs.

pub mod cli;
pub mod compose;
pub mod discovery;
pub mod health;
pub mod replay;
pub mod site;
pub mod standalone;
pub mod tiers;

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
