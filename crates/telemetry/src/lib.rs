//! Observability shared by every tier: the `courier_*` Prometheus metrics, the
//! admin HTTP server (`/metrics`, `/healthz`, `/readyz`) and log set-up.
//!
//! One [`Metrics`] value holds every family and is shared by whatever tiers run in
//! a process, so `courier standalone` serves one coherent `/metrics` and a tier in
//! its own process serves the families it uses (the others stay empty). Labels
//! never carry a room or user id: cardinality stays bounded however many rooms
//! exist.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCodeLabel {
    pub route: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCodeLabel {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Every Courier metric. Counters are registered without `_total`; the encoder adds
/// it (prometheus-client refuses the suffix in debug builds).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open long connections by transport (`ws`, `tcp`).
    pub connections: Family<TransportLabel, Gauge>,
    /// Rooms with at least one local channel.
    pub rooms: Gauge,
    /// Messages accepted into the queue, by kind (`room`, `private`).
    pub messages_admitted: Family<KindLabel, Counter>,
    /// Time for the queue to acknowledge one message.
    pub produce_duration: Histogram,
    pub records_consumed: Family<TopicLabel, Counter>,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Time to persist one batch of records.
    pub history_write_duration: Histogram,
    /// Push calls to connect nodes by result (`ok`, `error`, `dropped`).
    pub pushes: Family<ResultLabel, Counter>,
    /// Frames a connect node received by whether a local channel took them
    /// (`matched`) or none was there (`unmatched`: waste routing avoids).
    pub pushed_frames: Family<ResultLabel, Counter>,
    /// Frames written to client sockets, by transport.
    pub deliveries: Family<TransportLabel, Counter>,
    /// From admission to the socket write.
    pub delivery_latency: Histogram,
    pub slow_consumer_closes: Counter,
    pub http_requests: Family<RouteCodeLabel, Counter>,
    pub http_request_duration: HistogramFamily<RouteLabel>,
    pub grpc_requests: Family<MethodCodeLabel, Counter>,
    pub grpc_request_duration: HistogramFamily<MethodLabel>,
    pub errors: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Family::default();
        registry.register("courier_connections", "Open long connections", connections.clone());
        let rooms = Gauge::default();
        registry.register("courier_rooms", "Rooms with a local channel", rooms.clone());
        let messages_admitted = Family::default();
        registry.register("courier_messages_admitted", "Messages accepted into the queue", messages_admitted.clone());
        let produce_duration = latency_histogram();
        registry.register(
            "courier_produce_duration_seconds",
            "Time for the queue to acknowledge a message",
            produce_duration.clone(),
        );
        let records_consumed = Family::default();
        registry.register("courier_records_consumed", "Queue records consumed", records_consumed.clone());
        let consumer_lag = Family::default();
        registry.register("courier_consumer_lag", "Records not yet consumed", consumer_lag.clone());
        let history_write_duration = latency_histogram();
        registry.register(
            "courier_history_write_duration_seconds",
            "Time to persist a batch of records",
            history_write_duration.clone(),
        );
        let pushes = Family::default();
        registry.register("courier_pushes", "Push calls to connect nodes", pushes.clone());
        let pushed_frames = Family::default();
        registry.register(
            "courier_pushed_frames",
            "Frames received by a connect node, by whether a local channel took them",
            pushed_frames.clone(),
        );
        let deliveries = Family::default();
        registry.register("courier_deliveries", "Frames written to client sockets", deliveries.clone());
        let delivery_latency = latency_histogram();
        registry.register(
            "courier_delivery_latency_seconds",
            "Time from admission to the socket write",
            delivery_latency.clone(),
        );
        let slow_consumer_closes = Counter::default();
        registry.register(
            "courier_slow_consumer_closes",
            "Connections closed because their outbound queue overflowed",
            slow_consumer_closes.clone(),
        );
        let http_requests = Family::default();
        registry.register("courier_http_requests", "HTTP API requests by route and answer code", http_requests.clone());
        let http_request_duration: HistogramFamily<RouteLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "courier_http_request_duration_seconds",
            "HTTP API request duration",
            http_request_duration.clone(),
        );
        let grpc_requests = Family::default();
        registry.register("courier_grpc_requests", "Internal gRPC requests by method and code", grpc_requests.clone());
        let grpc_request_duration: HistogramFamily<MethodLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "courier_grpc_request_duration_seconds",
            "Internal gRPC request duration",
            grpc_request_duration.clone(),
        );
        let errors = Family::default();
        registry.register("courier_errors", "Errors by reason", errors.clone());
        Self {
            registry,
            connections,
            rooms,
            messages_admitted,
            produce_duration,
            records_consumed,
            consumer_lag,
            history_write_duration,
            pushes,
            pushed_frames,
            deliveries,
            delivery_latency,
            slow_consumer_closes,
            http_requests,
            http_request_duration,
            grpc_requests,
            grpc_request_duration,
            errors,
        }
    }

    /// Counts an error by reason.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records one gRPC call (`code` is the gRPC status code name).
    pub fn grpc_call(&self, method: &'static str, code: &str, started: Instant) {
        self.grpc_requests.get_or_create(&MethodCodeLabel { method, code: code.to_owned() }).inc();
        self.grpc_request_duration.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// A named readiness condition a tier raises once it can do its job.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    name: String,
    ready: Arc<AtomicBool>,
}

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// The readiness of everything running in this process: ready when every flag is.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flags: Arc<Mutex<Vec<ReadyFlag>>>,
}

impl Readiness {
    /// Adds a condition, initially not ready.
    pub fn flag(&self, name: impl Into<String>) -> ReadyFlag {
        let flag = ReadyFlag { name: name.into(), ready: Arc::new(AtomicBool::new(false)) };
        self.flags.lock().unwrap_or_else(|p| p.into_inner()).push(flag.clone());
        flag
    }

    /// Names of the conditions not yet met (empty when ready). Before any tier
    /// has registered a condition, the process is still starting.
    pub fn pending(&self) -> Vec<String> {
        let flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        if flags.is_empty() {
            return vec!["starting".to_owned()];
        }
        flags.iter().filter(|f| !f.ready.load(Ordering::Acquire)).map(|f| f.name.clone()).collect()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The admin router: `/metrics`, `/healthz` (the process answers) and `/readyz`
/// (every tier in the process can do its job; 503 naming those that cannot).
pub fn admin_router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                let pending = s.readiness.pending();
                if pending.is_empty() {
                    (StatusCode::OK, "ready\n".to_owned())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", pending.join(", ")))
                }
            }),
        )
        .with_state(AdminState { metrics, readiness })
}

/// Serves the admin router on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, admin_router(metrics, readiness)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), JSON lines when
/// `json` is set, human-readable text otherwise. Safe to call more than once.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_match_the_design() {
        let metrics = Metrics::new();
        metrics.messages_admitted.get_or_create(&KindLabel { kind: "room" }).inc();
        metrics.connections.get_or_create(&TransportLabel { transport: "ws" }).inc();
        metrics.error("test");
        let text = metrics.encode();
        for name in [
            "courier_messages_admitted_total{kind=\"room\"} 1",
            "courier_connections{transport=\"ws\"} 1",
            "courier_errors_total{reason=\"test\"} 1",
            "# TYPE courier_delivery_latency_seconds histogram",
            "# TYPE courier_slow_consumer_closes counter",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    #[test]
    fn readiness_names_pending_conditions() {
        let readiness = Readiness::default();
        assert_eq!(readiness.pending(), vec!["starting"], "nothing registered yet is not ready");
        let logic = readiness.flag("logic");
        let task = readiness.flag("task");
        assert_eq!(readiness.pending(), vec!["logic", "task"]);
        logic.set(true);
        task.set(true);
        assert!(readiness.pending().is_empty());
        task.set(false);
        assert_eq!(readiness.pending(), vec!["task"]);
    }
}
