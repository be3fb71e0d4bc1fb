//! Consul: tiers register themselves with the local agent and follow each
//! other through the health endpoint.
//!
//! Registration ([`Consul::keep_registered`]) puts the instance in the agent's
//! catalog with an HTTP check on the tier's `/readyz`, so an instance that stops
//! answering (or is draining) leaves every set within a check interval, and one
//! that dies without deregistering is removed by the agent after
//! `DeregisterCriticalServiceAfter`. The keeper re-registers if the agent lost
//! the service (an agent restart), retries while the agent is unreachable, and
//! deregisters on a clean shutdown.
//!
//! Following ([`Consul::watch`]) uses blocking queries on
//! `/v1/health/service/<name>?passing=true`, as Consul's documentation
//! describes them: each query carries the `X-Consul-Index` of the previous
//! answer and returns when the set may have changed or `wait` ran out; an index
//! that goes backwards resets the query to 0, one below 1 is raised to 1, and
//! queries that return at once are spaced out. Errors back off, and the last
//! known set stays in the watch: a Consul outage never empties it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Discovery, Error, Instance, Instances, OnFailure, Result, Tier};

/// The header that carries the ACL token.
const TOKEN_HEADER: &str = "X-Consul-Token";
/// The header that carries a blocking query's index.
const INDEX_HEADER: &str = "X-Consul-Index";

/// How Courier talks to Consul.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// The agent's HTTP API: `host:port` or `http://host:port` (forms
    /// `CONSUL_HTTP_ADDR` takes; the agent's HTTPS port is not supported).
    pub addr: String,
    /// ACL token sent as `X-Consul-Token` (`CONSUL_HTTP_TOKEN`).
    pub token: Option<String>,
    /// Datacenter whose instances are followed; the agent's own when `None`.
    pub datacenter: Option<String>,
    /// Prefix of the service names: `courier-` gives `courier-logic`, ….
    pub prefix: String,
    /// Longest a blocking query waits for a change.
    pub wait: Duration,
    /// Shortest time between two queries for the same service (Consul asks
    /// clients to rate-limit blocking queries that return at once).
    pub min_query_interval: Duration,
    /// How often the agent runs each instance's readiness check.
    pub check_interval: Duration,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// How long an instance may stay critical before the agent removes it.
    pub deregister_critical_after: Duration,
    /// How often a registered instance makes sure the agent still has it.
    pub recheck: Duration,
    /// Told of every failed health query.
    pub on_failure: OnFailure,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8500".into(),
            token: None,
            datacenter: None,
            prefix: "courier-".into(),
            wait: Duration::from_secs(60),
            min_query_interval: Duration::from_millis(100),
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(2),
            deregister_critical_after: Duration::from_secs(60),
            recheck: Duration::from_secs(30),
            on_failure: OnFailure::default(),
        }
    }
}

/// What an instance tells Consul about itself.
#[derive(Debug, Clone)]
pub struct Registration {
    pub tier: Tier,
    /// Unique among every instance of every tier on the agent (connect nodes
    /// carry their serverId in meta `serverId`, which is what followers see).
    pub id: String,
    /// Where others reach it.
    pub address: String,
    /// Its main port: logic's gRPC, connect's push service, api's and site's
    /// HTTP; task has none and registers its admin port.
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// The URL of its readiness endpoint, which the agent checks.
    pub check_url: String,
}

/// A client of one Consul agent.
#[derive(Debug, Clone)]
pub struct Consul {
    http: reqwest::Client,
    base: String,
    config: Arc<ConsulConfig>,
}

impl Consul {
    /// A client of the agent in `config`; nothing is contacted yet.
    pub fn new(config: ConsulConfig) -> Result<Self> {
        let base = base_url(&config.addr)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &config.token {
            let value = reqwest::header::HeaderValue::from_str(token)
                .map_err(|_| Error::Config("the Consul token is not a valid header value".into()))?;
            headers.insert(TOKEN_HEADER, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self { http, base, config: Arc::new(config) })
    }

    /// The agent's base URL (`http://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The Consul service name of `tier`.
    pub fn service_name(&self, tier: Tier) -> String {
        format!("{}{}", self.config.prefix, tier.name())
    }

    /// Registers (or re-registers) an instance with the agent.
    pub async fn register(&self, registration: &Registration) -> Result<()> {
        let duration = |d: Duration| format!("{}ms", d.as_millis().max(1));
        let body = ServiceDefinition {
            id: &registration.id,
            name: self.service_name(registration.tier),
            tags: &registration.tags,
            address: &registration.address,
            port: registration.port,
            meta: &registration.meta,
            check: CheckDefinition {
                check_id: format!("{}:readyz", registration.id),
                name: format!("{} readiness", self.service_name(registration.tier)),
                http: &registration.check_url,
                method: "GET",
                interval: duration(self.config.check_interval),
                timeout: duration(self.config.check_timeout),
                deregister_critical_service_after: duration(self.config.deregister_critical_after),
            },
        };
        let url = format!("{}/v1/agent/service/register?replace-existing-checks=true", self.base);
        let response = self.http.put(url).json(&body).send().await.map_err(unavailable)?;
        expect_success(response, "registering").await.map(drop)
    }

    /// Removes an instance from the agent.
    pub async fn deregister(&self, id: &str) -> Result<()> {
        let url = format!("{}/v1/agent/service/deregister/{}", self.base, encode(id));
        let response = self.http.put(url).send().await.map_err(unavailable)?;
        expect_success(response, "deregistering").await.map(drop)
    }

    /// Whether the agent has the instance `id` registered.
    pub async fn is_registered(&self, id: &str) -> Result<bool> {
        let url = format!("{}/v1/agent/service/{}", self.base, encode(id));
        let response = self.http.get(url).send().await.map_err(unavailable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect_success(response, "reading a registration").await.map(|_| true)
    }

    /// Keeps `registration` in the agent until `stop`, then deregisters it.
    /// Never gives up: an unreachable agent is retried with backoff (the tier
    /// keeps serving meanwhile; it is only not discoverable).
    pub async fn keep_registered(self, registration: Registration, stop: CancellationToken) {
        let mut backoff = courier_retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut registered = false;
        loop {
            let outcome = match self.is_registered(&registration.id).await {
                Ok(true) => Ok(()),
                Ok(false) => self.register(&registration).await,
                Err(e) => Err(e),
            };
            let pause = match outcome {
                Ok(()) => {
                    if !registered {
                        tracing::info!(id = %registration.id, service = %self.service_name(registration.tier), agent = %self.base, "registered with Consul");
                    }
                    registered = true;
                    backoff.reset();
                    self.config.recheck
                }
                Err(e) => {
                    tracing::warn!(id = %registration.id, error = %e, "could not register with Consul; retrying");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        match self.deregister(&registration.id).await {
            Ok(()) => tracing::info!(id = %registration.id, "deregistered from Consul"),
            Err(e) => {
                tracing::warn!(id = %registration.id, error = %e, "could not deregister from Consul; its check will go critical")
            }
        }
    }

    /// One query of the passing instances of `tier`: blocks while the index is
    /// still `index` (up to `wait`; 0 answers at once). Returns the set and the
    /// index to pass next.
    pub async fn healthy(&self, tier: Tier, index: u64) -> Result<(Vec<Instance>, u64)> {
        let name = self.service_name(tier);
        let mut url = format!("{}/v1/health/service/{}?passing=true", self.base, encode(&name));
        if index > 0 {
            url.push_str(&format!("&index={index}&wait={}ms", self.config.wait.as_millis()));
        }
        if let Some(dc) = &self.config.datacenter {
            url.push_str(&format!("&dc={}", encode(dc)));
        }
        // Consul adds up to wait/16 of jitter to a blocking query.
        let deadline = self.config.wait + self.config.wait / 16 + Duration::from_secs(5);
        let response = self.http.get(url).timeout(deadline).send().await.map_err(unavailable)?;
        let next = response
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::Unavailable(format!("Consul's answer has no {INDEX_HEADER}")))?;
        let body = expect_success(response, "reading healthy instances").await?;
        let entries: Vec<HealthEntry> = serde_json::from_slice(&body)
            .map_err(|e| Error::Unavailable(format!("unreadable health answer for {name}: {e}")))?;
        let list = entries.into_iter().map(|entry| entry.instance()).collect();
        Ok((list, next))
    }

    /// Follows `tier` until every receiver is dropped.
    async fn follow(self, tier: Tier, tx: watch::Sender<Instances>) {
        let mut index = 0u64;
        let mut backoff = courier_retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let started = tokio::time::Instant::now();
            let answer = tokio::select! {
                _ = tx.closed() => return,
                answer = self.healthy(tier, index) => answer,
            };
            match answer {
                Ok((list, next)) => {
                    backoff.reset();
                    index = next_index(index, next);
                    crate::publish(&tx, list, tier, "Consul");
                    let spacing = self.config.min_query_interval.saturating_sub(started.elapsed());
                    tokio::time::sleep(spacing).await;
                }
                Err(e) => {
                    tracing::warn!(tier = tier.name(), error = %e, "Consul query failed; keeping the last known instances");
                    self.config.on_failure.call(&e);
                    let pause = backoff.next_delay();
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

impl Discovery for Consul {
    fn watch(&self, tier: Tier) -> watch::Receiver<Instances> {
        let (tx, rx) = watch::channel(Instances::from(Vec::new()));
        tokio::spawn(self.clone().follow(tier, tx));
        rx
    }
}

/// The index of the next blocking query, given the one just used and the one
/// Consul answered, following Consul's rules: an index that went backwards
/// starts over from 0; one below 1 becomes 1.
pub fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous { 0 } else { answered.max(1) }
}

/// `addr` in the forms `CONSUL_HTTP_ADDR` accepts, as a base URL.
fn base_url(addr: &str) -> Result<String> {
    let addr = addr.trim();
    let url = if let Some(host) = addr.strip_prefix("http://") {
        format!("http://{}", host.trim_end_matches('/'))
    } else if addr.contains("://") {
        // The local agent's plain HTTP port is what tiers talk to.
        return Err(Error::Config(format!("Consul address {addr:?}: only http:// agents are supported")));
    } else {
        format!("http://{}", addr.trim_end_matches('/'))
    };
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    if host.is_empty() {
        return Err(Error::Config(format!("Consul address {addr:?} names no host")));
    }
    Ok(url)
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn unavailable(e: reqwest::Error) -> Error {
    Error::Unavailable(format!("Consul: {e}"))
}

/// The body of a successful answer; an error naming what failed otherwise.
async fn expect_success(response: reqwest::Response, what: &str) -> Result<bytes::Bytes> {
    let status = response.status();
    let body = response.bytes().await.map_err(unavailable)?;
    if status.is_success() {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_owned();
    let error = format!("Consul refused {what}: {status} {text}");
    Err(match status.as_u16() {
        401 | 403 => Error::Config(format!("{error} (does the token's ACL policy allow it?)")),
        _ => Error::Unavailable(error),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceDefinition<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: String,
    tags: &'a [String],
    address: &'a str,
    port: u16,
    meta: &'a BTreeMap<String, String>,
    check: CheckDefinition<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckDefinition<'a> {
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    #[serde(rename = "HTTP")]
    http: &'a str,
    method: &'static str,
    interval: String,
    timeout: String,
    deregister_critical_service_after: String,
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

impl HealthEntry {
    /// The instance: connect nodes are known by their `serverId`; an instance
    /// that registered no address is at its node's.
    fn instance(self) -> Instance {
        let HealthService { id, address, port, meta } = self.service;
        let id = meta.and_then(|mut meta| meta.remove(SERVER_ID_META)).unwrap_or(id);
        let host = if address.is_empty() { self.node.address } else { address };
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Instance { id, addr }
    }
}

/// The meta key that carries a connect node's serverId.
pub const SERVER_ID_META: &str = "serverId";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_consuls_rules() {
        assert_eq!(next_index(0, 7), 7, "the first answer's index is used");
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 9), 9, "unchanged: block again");
        assert_eq!(next_index(9, 4), 0, "went backwards: start over");
        assert_eq!(next_index(0, 0), 1, "never below 1");
    }

    #[test]
    fn agent_addresses_take_consuls_forms() {
        assert_eq!(base_url("127.0.0.1:8500").ok().as_deref(), Some("http://127.0.0.1:8500"));
        assert_eq!(base_url("http://consul.local:8500/").ok().as_deref(), Some("http://consul.local:8500"));
        assert!(base_url("https://consul.local:8501").is_err(), "TLS to the agent is refused, not attempted");
        assert!(base_url("unix:///var/run/consul.sock").is_err());
        assert!(base_url("http://").is_err());
    }

    #[test]
    fn health_entries_become_instances() {
        let json = r#"[
          {"Node":{"Node":"n1","Address":"10.0.0.5"},"Service":{"ID":"courier-connect-a1","Service":"courier-connect","Address":"","Port":7270,"Meta":{"serverId":"connect-0"}},"Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.0.6"},"Service":{"ID":"logic-1","Service":"courier-logic","Address":"fd00::7","Port":7170,"Meta":null},"Checks":[]}
        ]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(json).expect("health JSON");
        let list: Vec<Instance> = entries.into_iter().map(HealthEntry::instance).collect();
        assert_eq!(list, [Instance::new("connect-0", "10.0.0.5:7270"), Instance::new("logic-1", "[fd00::7]:7170")]);
    }
}
