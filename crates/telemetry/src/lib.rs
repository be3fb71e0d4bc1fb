//! Observability shared by every tier: the `courier_*` Prometheus metrics, the
//! admin HTTP server (`/metrics`, `/healthz`, `/readyz`) and log set-up.
//!
//! One [`Metrics`] value is shared by whatever tiers run in a process and
//! exports the families of those tiers only ([`Metrics::for_tiers`]): a
//! connect node does not list admission latencies that would always read zero
//! and make a dashboard lie, and `courier standalone` serves every tier's in
//! one `/metrics`. `courier_build_info{version,tier}` says which tiers a
//! process runs. Labels never carry a room or user id: cardinality stays
//! bounded however many rooms exist (the push families carry the connect
//! node, bounded by the cluster's size).

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// A point on a message's way from admission to its recipients' sockets, for
/// `courier_message_stage_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// logic: the queue acknowledged every record of the message.
    Produced,
    /// task: a lane took the record to persist it.
    Consumed,
    /// task: the transaction holding it committed.
    Persisted,
    /// task: its frames were handed to the connect nodes' push queues.
    Pushed,
    /// connect: a push carrying it arrived.
    Received,
    /// connect: a frame of it was written to a client socket (also
    /// `courier_delivery_latency_seconds`, which dashboards and alerts read).
    Written,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Produced, Stage::Consumed, Stage::Persisted, Stage::Pushed, Stage::Received, Stage::Written];

    /// The `stage` label value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Produced => "produced",
            Stage::Consumed => "consumed",
            Stage::Persisted => "persisted",
            Stage::Pushed => "pushed",
            Stage::Received => "received",
            Stage::Written => "written",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
    pub tier: &'static str,
}

/// A tier, for the families it exports (the tiers as discovery names them).
pub use courier_discovery::Tier;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry of one process and the tiers it runs.
struct Families<'a> {
    registry: &'a mut Registry,
    tiers: &'a [Tier],
    /// The names registered, for [`Metrics::families`].
    names: Vec<String>,
}

impl Families<'_> {
    /// Registers `metric` if the process runs one of its `owners`, and
    /// returns it (the tiers move it either way; unregistered, nobody sees).
    fn add<M: prometheus_client::registry::Metric + Clone>(
        &mut self,
        owners: &[Tier],
        name: &str,
        help: &str,
        metric: M,
    ) -> M {
        if owners.iter().any(|owner| self.tiers.contains(owner)) {
            self.registry.register(name, help, metric.clone());
            self.names.push(name.to_owned());
        }
        metric
    }
}

/// Batch-size buckets: 1, 2, 4 … 1,024 records.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Error reasons that `dashboards/alerts.yml` alerts on, by the tier that
/// counts them.
const WATCHED_ERRORS: [(Tier, &str); 6] = [
    (Tier::Logic, "produce"),
    (Tier::Logic, "node_lease_lapsed"),
    (Tier::Logic, "store"),
    (Tier::Task, "dead_letter"),
    (Tier::Task, "history_write"),
    (Tier::Connect, "gap_fill_failed"),
];

/// Seconds from `from_us` to `to_us` (0 if the clocks of two machines put
/// them the other way round).
fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    to_us.saturating_sub(from_us).max(0) as f64 / 1e6
}

/// Stage buckets from 100 µs to about 13 s, twice as fine as
/// [`latency_histogram`]'s: the stages of one message are often a fraction of
/// a millisecond apart.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, std::f64::consts::SQRT_2, 35))
}

/// Latency buckets from 100 µs to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Every Courier metric. Counters are registered without `_total`; the encoder adds
/// it (prometheus-client refuses the suffix in debug builds).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The families this process exports, as registered (counters without
    /// `_total`, as in OpenMetrics).
    families: Vec<String>,
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
    /// From admission to each stage (see [`Stage`]).
    pub message_stages: HistogramFamily<StageLabel>,
    /// Each stage's series, taken from `message_stages` on first use (so a
    /// tier exports only the stages it reaches) and kept: every message
    /// observes several, and the family's lookup is a lock and a hash.
    stage_series: [std::sync::OnceLock<Histogram>; Stage::ALL.len()],
    pub slow_consumer_closes: Counter,
    pub http_requests: Family<RouteCodeLabel, Counter>,
    pub http_request_duration: HistogramFamily<RouteLabel>,
    pub grpc_requests: Family<MethodCodeLabel, Counter>,
    pub grpc_request_duration: HistogramFamily<MethodLabel>,
    pub errors: Family<ReasonLabel, Counter>,
    /// Records persisted per history transaction.
    pub history_batch_size: Histogram,
    /// Items waiting in the push queue of each connect node.
    pub push_queue_depth: Family<NodeLabel, Gauge>,
    /// Push requests to a connect node that failed after every retry.
    pub push_failures: Family<NodeLabel, Counter>,
    /// Sessions live (logged in, not expired, not revoked), as logic last counted.
    pub sessions: Gauge,
    /// Instances of another tier this process knows from discovery.
    pub discovered: Family<TierLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every tier's families (`courier standalone`, tests).
    pub fn new() -> Self {
        Self::for_tiers(&Tier::ALL)
    }

    /// The families `tiers` move, and `courier_build_info` for each.
    pub fn for_tiers(tiers: &[Tier]) -> Self {
        let mut registry = Registry::default();
        let build_info: Family<BuildLabel, Gauge> = Family::default();
        for tier in tiers {
            build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION"), tier: tier.name() }).set(1);
        }
        registry.register("courier_build_info", "The Courier version and tier a process runs (always 1)", build_info);
        use Tier::{Api, Connect, Logic, Task};
        let mut families = Families { registry: &mut registry, tiers, names: vec!["courier_build_info".to_owned()] };
        let connections = families.add(&[Connect], "courier_connections", "Open long connections", Family::default());
        let rooms = families.add(&[Connect], "courier_rooms", "Rooms with a local channel", Gauge::default());
        let messages_admitted =
            families.add(&[Logic], "courier_messages_admitted", "Messages accepted into the queue", Family::default());
        let produce_duration = families.add(
            &[Logic],
            "courier_produce_duration_seconds",
            "Seconds for the queue to acknowledge a message (every record of it)",
            latency_histogram(),
        );
        let records_consumed =
            families.add(&[Task], "courier_records_consumed", "Queue records consumed by task", Family::default());
        let consumer_lag = families.add(
            &[Task],
            "courier_consumer_lag",
            "Records of a partition not yet handed to task",
            Family::default(),
        );
        let history_write_duration = families.add(
            &[Task],
            "courier_history_write_duration_seconds",
            "Seconds to persist one batch of records",
            latency_histogram(),
        );
        let pushes = families.add(&[Logic, Task], "courier_pushes", "Push calls to connect nodes", Family::default());
        let pushed_frames = families.add(
            &[Connect],
            "courier_pushed_frames",
            "Frames received by a connect node, by whether a local channel took them",
            Family::default(),
        );
        let deliveries =
            families.add(&[Connect], "courier_deliveries", "Frames written to client sockets", Family::default());
        let delivery_latency = families.add(
            &[Connect],
            "courier_delivery_latency_seconds",
            "Seconds from admission (the time in the record) to the socket write",
            latency_histogram(),
        );
        let message_stages: HistogramFamily<StageLabel> = families.add(
            &[Logic, Task, Connect],
            "courier_message_stage_seconds",
            "Seconds from a message's admission until it reached a stage: produced (logic), consumed, persisted and \
             pushed (task), received and written (connect)",
            Family::new_with_constructor(stage_histogram),
        );
        let slow_consumer_closes = families.add(
            &[Connect],
            "courier_slow_consumer_closes",
            "Connections closed because their outbound queue overflowed",
            Counter::default(),
        );
        let http_requests = families.add(
            &[Api],
            "courier_http_requests",
            "HTTP API requests by route and answer code",
            Family::default(),
        );
        let http_request_duration: HistogramFamily<RouteLabel> = families.add(
            &[Api],
            "courier_http_request_duration_seconds",
            "HTTP API request duration in seconds",
            Family::new_with_constructor(latency_histogram),
        );
        let grpc_requests = families.add(
            &[Logic],
            "courier_grpc_requests",
            "Internal gRPC requests by method and code",
            Family::default(),
        );
        let grpc_request_duration: HistogramFamily<MethodLabel> = families.add(
            &[Logic],
            "courier_grpc_request_duration_seconds",
            "Internal gRPC request duration in seconds",
            Family::new_with_constructor(latency_histogram),
        );
        let errors =
            families.add(&[Api, Logic, Connect, Task], "courier_errors", "Errors by reason", Family::default());
        // The reasons alerts watch start at 0 where they can happen: a series
        // born at 1 shows no increase, and its first occurrence would pass
        // unseen.
        for (owner, reason) in WATCHED_ERRORS {
            if tiers.contains(&owner) {
                drop(errors.get_or_create(&ReasonLabel { reason }));
            }
        }
        let sessions = families.add(
            &[Logic],
            "courier_sessions",
            "Sessions live: logged in, not expired, not revoked (counted every 15 s)",
            Gauge::default(),
        );
        let history_batch_size = families.add(
            &[Task],
            "courier_history_batch_size",
            "Records persisted per history transaction",
            batch_histogram(),
        );
        let push_queue_depth = families.add(
            &[Logic, Task],
            "courier_push_queue_depth",
            "Items waiting in a connect node's push queue",
            Family::default(),
        );
        let push_failures = families.add(
            &[Logic, Task],
            "courier_push_failures",
            "Push requests to a connect node that failed after every retry (their frames are dropped for it)",
            Family::default(),
        );
        let discovered = families.add(
            &[Api, Logic, Connect, Task],
            "courier_discovered_instances",
            "Healthy instances of a tier (logic for api and connect, connect for logic and task) known from discovery",
            Family::default(),
        );
        let families = families.names;
        Self {
            registry,
            families,
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
            message_stages,
            stage_series: Default::default(),
            slow_consumer_closes,
            http_requests,
            http_request_duration,
            grpc_requests,
            grpc_request_duration,
            errors,
            history_batch_size,
            push_queue_depth,
            push_failures,
            discovered,
            sessions,
        }
    }

    /// The names of the families this process exports (counters without
    /// `_total`), whether or not they have samples yet.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Counts an error by reason.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records that a message admitted at `admitted_us` (µs since the Unix
    /// epoch; 0 for frames that are not messages, which are not counted)
    /// reached `stage` at `now_us`.
    pub fn reached(&self, stage: Stage, admitted_us: i64, now_us: i64) {
        if admitted_us > 0 {
            let series = self.stage_series[stage as usize]
                .get_or_init(|| self.message_stages.get_or_create(&StageLabel { stage: stage.name() }).clone());
            series.observe(seconds_between(admitted_us, now_us));
        }
    }

    /// Records a message admitted at `admitted_us` written to a client socket
    /// at `now_us` (0: not a message, not counted).
    pub fn delivered(&self, admitted_us: i64, now_us: i64) {
        if admitted_us > 0 {
            self.delivery_latency.observe(seconds_between(admitted_us, now_us));
            self.reached(Stage::Written, admitted_us, now_us);
        }
    }

    /// Records one gRPC call (`code` is the gRPC status code name).
    pub fn grpc_call(&self, method: &'static str, code: &str, started: Instant) {
        self.grpc_requests.get_or_create(&MethodCodeLabel { method, code: code.to_owned() }).inc();
        self.grpc_request_duration.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
    }

    /// The classic Prometheus text format (0.0.4) of every metric, for
    /// scrapers and tools that do not speak OpenMetrics (`promtool check
    /// metrics`, `curl`): a counter's HELP and TYPE name its `_total` samples,
    /// and there is no `# EOF`.
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
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

/// OpenMetrics text as the classic text format: the two differ, for what
/// Courier exports, only in counters' family names and the end marker.
fn classic(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The admin router: `/metrics` (OpenMetrics to a scraper that asks for it,
/// as Prometheus does, else the classic text format), `/healthz` (the process
/// answers) and `/readyz` (every tier in the process can do its job; 503
/// naming those that cannot).
pub fn admin_router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>, headers: axum::http::HeaderMap| async move {
                let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                if accept.contains("application/openmetrics-text") {
                    (
                        [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        s.metrics.encode(),
                    )
                } else {
                    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], s.metrics.encode_classic())
                }
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

/// Lets a repeated log line through at most once per interval, counting what it
/// held back. A backend failing under load fails thousands of calls a second;
/// one line each (a million-connection run wrote 14 million, 2.3 GB) costs the
/// overloaded process more CPU and tells an operator nothing the metric of the
/// same failure does not. One per call site, in a `static`:
///
/// ```
/// static FAILED: courier_telemetry::LogThrottle = courier_telemetry::LogThrottle::per_second();
/// if let Some(suppressed) = FAILED.allow() {
///     tracing::warn!(suppressed, "presence failed");
/// }
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    /// When the next line may go (ms since the epoch; 0: now).
    next_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    const EVERY_MS: u64 = 1_000;

    pub const fn per_second() -> Self {
        Self { next_ms: std::sync::atomic::AtomicU64::new(0), held_back: std::sync::atomic::AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last one let through)` if a line may
    /// be written now; `None` (and one more held back) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self.next_ms.compare_exchange(next, now + Self::EVERY_MS, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if due {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
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
    fn a_throttled_line_goes_once_per_second_and_counts_the_rest() {
        let throttle = LogThrottle::per_second();
        assert_eq!(throttle.allow(), Some(0), "the first line goes");
        for _ in 0..999 {
            assert_eq!(throttle.allow(), None);
        }
        // The next second's first line says how many were held back.
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.allow(), Some(999));
        assert_eq!(throttle.allow(), None);
    }

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

    /// Every family of every tier with a sample in it.
    fn exercised(tiers: &[Tier]) -> Metrics {
        let metrics = Metrics::for_tiers(tiers);
        metrics.connections.get_or_create(&TransportLabel { transport: "ws" }).inc();
        metrics.messages_admitted.get_or_create(&KindLabel { kind: "room" }).inc();
        metrics.consumer_lag.get_or_create(&PartitionLabel { topic: "t".into(), partition: 0 }).set(3);
        metrics.push_queue_depth.get_or_create(&NodeLabel { node: "connect-0".into() }).set(1);
        metrics.http_request_duration.get_or_create(&RouteLabel { route: "/user/login".into() }).observe(0.01);
        metrics.grpc_call("Send", "Ok", Instant::now());
        metrics.error("test");
        metrics
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let metrics = Metrics::for_tiers(&[Tier::Api]);
        metrics.error("test");
        let text = metrics.encode_classic();
        assert!(text.contains("# HELP courier_errors_total Errors by reason."), "{text}");
        assert!(
            text.contains("# TYPE courier_errors_total counter\ncourier_errors_total{reason=\"test\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE courier_build_info gauge") && !text.contains("# EOF"), "{text}");
    }

    #[test]
    fn each_tier_exports_its_own_families_and_its_build_info() {
        let connect = Metrics::for_tiers(&[Tier::Connect]).encode();
        let build = format!("courier_build_info{{version=\"{}\",tier=\"connect\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(connect.contains(&build), "{connect}");
        assert!(connect.contains("# TYPE courier_delivery_latency_seconds histogram"), "{connect}");
        for foreign in ["courier_produce_duration_seconds", "courier_consumer_lag", "courier_http_requests"] {
            assert!(!connect.contains(foreign), "connect must not export {foreign}");
        }
        let logic = Metrics::for_tiers(&[Tier::Logic]).encode();
        assert!(logic.contains("courier_errors_total{reason=\"node_lease_lapsed\"} 0"), "alerts see the first one");
        assert!(!connect.contains("reason=\"node_lease_lapsed\""), "only where it can happen");
        let task = Metrics::for_tiers(&[Tier::Task]).encode();
        assert!(task.contains("# TYPE courier_history_batch_size histogram") && !task.contains("courier_connections"));
        let everything = Metrics::new().encode();
        for tier in Tier::ALL {
            assert!(everything.contains(&format!("tier=\"{}\"", tier.name())), "standalone runs {tier:?}");
        }
    }

    /// `promtool check metrics` (naming, HELP, units) passes on what every
    /// tier exports.
    #[test]
    fn promtool_accepts_every_tiers_exposition() {
        let Some(promtool) = courier_testkit::tool("promtool") else { return };
        for tier in Tier::ALL {
            let text = exercised(&[tier]).encode_classic();
            let mut child = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("promtool runs");
            if let Some(mut stdin) = child.stdin.take() {
                std::io::Write::write_all(&mut stdin, text.as_bytes()).expect("exposition written");
            }
            let out = child.wait_with_output().expect("promtool ends");
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "{tier:?}: {said}\n{text}");
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
