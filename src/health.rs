//! Backends that are away: a tier waits for them at start and follows their
//! health while it runs, both through `/readyz`.
//!
//! A tier that starts while PostgreSQL or Redis does not answer keeps running,
//! reports not ready and tries again with growing, jittered pauses
//! ([`until_up`]), instead of exiting and leaving the restart to a supervisor
//! (which, with every tier restarting at once, hammers the backend as it comes
//! back). Once a tier runs, [`follow`] probes each external backend every
//! [`PROBE_EVERY`] with the cheapest request that proves it answers
//! (PostgreSQL `SELECT 1`, Redis `PING`, Kafka a metadata request), on a
//! connection of its own, so a probe neither waits behind the tier's work nor
//! takes a connection from it. Each backend is one readiness condition
//! (`postgres`, `redis`, `kafka`), so `/readyz` names the one that is away.
//! The embedded backends live in the process and are not probed.

use std::future::Future;
use std::time::Duration;

use courier_retry::Backoff;
use courier_telemetry::{Metrics, Readiness, ReadyFlag};
use tokio_util::sync::CancellationToken;

use crate::tiers::Backends;

/// How often each backend is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long a probe may take before the backend counts as away.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `connect` until it succeeds, pausing longer after each failure (from
/// 200 ms to 10 s, jittered); `what` names the backend in the log. An error
/// only when `shutdown` comes first.
pub async fn until_up<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match connect().await {
            Ok(connected) => return Ok(connected),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "{what} does not answer yet; not ready, trying again"),
        }
        if !backoff.wait(shutdown).await {
            anyhow::bail!("stopped while waiting for {what}");
        }
    }
}

/// Probes every external backend of `backends` until `shutdown`, each one's
/// readiness condition following its answers.
pub fn follow(
    backends: &Backends,
    readiness: &Readiness,
    metrics: &std::sync::Arc<Metrics>,
    shutdown: &CancellationToken,
) {
    if let Some(url) = &backends.postgres {
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(1).acquire_timeout(PROBE_TIMEOUT).connect_lazy(url);
        match pool {
            Ok(pool) => spawn_probe("postgres", readiness, metrics, shutdown, move || {
                let pool = pool.clone();
                async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop).map_err(|e| e.to_string()) }
            }),
            Err(e) => tracing::error!(error = %e, "the PostgreSQL URL cannot be used; not probing it"),
        }
    }
    if let Some(url) = &backends.redis {
        match redis::Client::open(url.as_str()) {
            Ok(client) => spawn_probe("redis", readiness, metrics, shutdown, move || {
                let client = client.clone();
                async move {
                    let mut connection = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
                    redis::cmd("PING").query_async::<String>(&mut connection).await.map(drop).map_err(|e| e.to_string())
                }
            }),
            Err(e) => tracing::error!(error = %e, "the Redis URL cannot be used; not probing it"),
        }
    }
    if let Some(brokers) = &backends.kafka {
        let client: Result<rdkafka::consumer::BaseConsumer, _> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create();
        match client {
            Ok(client) => {
                let client = std::sync::Arc::new(client);
                spawn_probe("kafka", readiness, metrics, shutdown, move || {
                    let client = client.clone();
                    async move {
                        let metadata = tokio::task::spawn_blocking(move || {
                            use rdkafka::consumer::Consumer as _;
                            client.fetch_metadata(None, PROBE_TIMEOUT).map(drop)
                        });
                        metadata.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "the Kafka brokers cannot be used; not probing them"),
        }
    }
}

/// Probes one backend every [`PROBE_EVERY`]; its condition `name` follows the
/// last answer, and a change is logged (and counted when it goes away).
fn spawn_probe<F, Fut>(
    name: &'static str,
    readiness: &Readiness,
    metrics: &std::sync::Arc<Metrics>,
    shutdown: &CancellationToken,
    probe: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let flag: ReadyFlag = readiness.flag(name);
    let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let answer = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            let now_up = answer.is_ok();
            if up != Some(now_up) {
                match &answer {
                    Ok(()) => tracing::info!(backend = name, "backend answers; ready as far as it goes"),
                    Err(e) => {
                        metrics.error("backend_unreachable");
                        tracing::warn!(backend = name, error = %e, "backend does not answer; not ready until it does");
                    }
                }
                flag.set(now_up);
                up = Some(now_up);
            }
        }
    });
}
