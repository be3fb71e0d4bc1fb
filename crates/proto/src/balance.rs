//! Calling logic over however many instances discovery knows.
//!
//! A [`crate::LogicClient`] runs over a [`Bounded`] channel: tonic's balanced
//! channel (power of two choices over the instances, each connecting lazily
//! and reconnecting after failures) fed by a discovery watch, so an instance
//! that appears takes calls as soon as it is known and one that leaves takes
//! none. A call that finds no instance (none known yet, or all gone) waits in
//! the channel, so each call is bounded by a deadline and answered
//! `UNAVAILABLE` when it passes.

use std::collections::BTreeMap;
use std::task::{Context, Poll};
use std::time::Duration;

use courier_discovery::Instances;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::transport::Channel;
use tonic::transport::channel::Change;

use crate::InternalAuth;

/// A channel whose every call ends by a deadline.
#[derive(Clone, Debug)]
pub struct Bounded {
    inner: Channel,
    timeout: Duration,
}

impl Bounded {
    pub fn new(inner: Channel, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl Service<http::Request<Body>> for Bounded {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::unavailable(format!("logic did not answer within {timeout:?}")))
                    as StdError),
            }
        })
    }
}

/// A channel balanced over the instances in `instances`, following its
/// changes for as long as the channel is used.
pub fn balanced_channel(mut instances: watch::Receiver<Instances>, timeout: Duration, auth: &InternalAuth) -> Channel {
    let (channel, changes) = Channel::balance_channel::<String>(64);
    let auth = auth.clone();
    tokio::spawn(async move {
        // id → address of the instances in the channel.
        let mut current: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let set = instances.borrow_and_update().clone();
            for (id, addr) in current.clone() {
                if !set.iter().any(|i| i.id == id && i.addr == addr) {
                    current.remove(&id);
                    if changes.send(Change::Remove(id)).await.is_err() {
                        return;
                    }
                }
            }
            for instance in set.iter() {
                if current.contains_key(&instance.id) {
                    continue;
                }
                let endpoint = match crate::endpoint(&instance.addr, timeout, &auth) {
                    Ok(endpoint) => endpoint,
                    Err(e) => {
                        tracing::error!(id = %instance.id, addr = %instance.addr, error = %e, "unusable logic address");
                        continue;
                    }
                };
                current.insert(instance.id.clone(), instance.addr.clone());
                if changes.send(Change::Insert(instance.id.clone(), endpoint)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                // Every clone of the channel is gone.
                _ = changes.closed() => return,
                changed = instances.changed() => if changed.is_err() {
                    // A fixed set: it is in the channel; keep the sender (and
                    // so the set) for as long as the channel lives.
                    changes.closed().await;
                    return;
                },
            }
        }
    });
    channel
}
