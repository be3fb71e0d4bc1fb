//! A test double of the Consul agent HTTP API endpoints Courier uses, written
//! from Consul's API documentation, because no Consul agent can be installed
//! where Courier's tests run.
//!
//! It serves, on one listener:
//!
//! - `PUT /v1/agent/service/register` — a service with one HTTP check
//!   (`HTTP`, `Interval`, `Timeout`, `DeregisterCriticalServiceAfter`); the
//!   double runs the check as an agent does: 2xx is passing, 429 warning,
//!   anything else critical, and a service critical for longer than
//!   `DeregisterCriticalServiceAfter` is removed. A new check starts critical.
//! - `PUT /v1/agent/service/deregister/<id>` and `GET /v1/agent/service/<id>`.
//! - `GET /v1/health/service/<name>` with `passing`, `dc` and blocking queries
//!   (`index`, `wait`): the answer carries `X-Consul-Index`, and a query whose
//!   index is current waits until something changes or `wait` ends.
//! - ACL: with a token configured, a request without it (`X-Consul-Token` or
//!   `?token=`) is refused with 403, as an agent with default-deny ACLs does.
//!
//! Tests drive what a real cluster would do to a client: [`ConsulDouble::rewind_index`]
//! (a snapshot restore: the index goes backwards), [`ConsulDouble::stop`] (an
//! outage), [`ConsulDouble::queries`] (to see that clients block rather than
//! poll). One index covers every service (Consul's is per query result; a
//! coarser index only wakes clients more often, which they must accept).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The datacenter the double pretends to be in.
pub const DATACENTER: &str = "dc1";
/// The node every service is registered on.
const NODE: &str = "consul-double";

/// The status of a check, as Consul names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

struct Service {
    definition: Value,
    name: String,
    status: Status,
    critical_since: Option<Instant>,
    /// Stops its check runner.
    check: CancellationToken,
}

#[derive(Default)]
struct Catalog {
    services: BTreeMap<String, Service>,
}

struct Shared {
    catalog: Mutex<Catalog>,
    /// The raft index stand-in: raised on every change.
    index: watch::Sender<u64>,
    token: Option<String>,
    queries: AtomicU64,
    /// The `index` of the last [`ASKED_KEPT`] health queries, oldest first
    /// (0: none given); bounded, as a local cluster's double runs for days.
    asked: Mutex<VecDeque<u64>>,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.index.send_modify(|index| *index += 1);
    }
}

/// How many health queries' indexes [`ConsulDouble::indexes_asked`] keeps.
pub const ASKED_KEPT: usize = 10_000;

/// A running double; stopped when dropped.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ConsulDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDouble").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl ConsulDouble {
    /// Serves on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, None)
    }

    /// Serves on `listener`, refusing requests without `token` when given.
    pub fn serve(listener: tokio::net::TcpListener, token: Option<String>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder().build().map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            catalog: Mutex::default(),
            // Consul's indexes start well above 1; so does this one.
            index: watch::channel(10).0,
            token,
            queries: AtomicU64::new(0),
            asked: Mutex::default(),
            http,
            stop: CancellationToken::new(),
        });
        let app = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/agent/service/{id}", get(agent_service))
            .route("/v1/health/service/{name}", get(health))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), acl))
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "consul double stopped");
            }
        });
        Ok(Self { addr, shared, server: Some(server) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, as `CONSUL_HTTP_ADDR` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Health queries answered so far.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// The index each of the last [`ASKED_KEPT`] health queries asked to
    /// wait past, in arrival order (0 for a query that gave none).
    pub fn indexes_asked(&self) -> Vec<u64> {
        self.shared.asked.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    /// The index answers carry now.
    pub fn index(&self) -> u64 {
        *self.shared.index.borrow()
    }

    /// The ids of the registered services of `name` and their check status.
    pub fn services(&self, name: &str) -> Vec<(String, Status)> {
        let catalog = self.shared.lock();
        catalog.services.iter().filter(|(_, s)| s.name == name).map(|(id, s)| (id.clone(), s.status)).collect()
    }

    /// Moves the index back to 1, as restoring a snapshot can; clients must
    /// start over rather than block on an index that will not come back.
    pub fn rewind_index(&self) {
        self.shared.index.send_modify(|index| *index = 1);
    }

    /// Stops serving (an outage: connections are refused afterwards) and stops
    /// every check.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn shutdown(&self) {
        self.shared.stop.cancel();
        for service in self.shared.lock().services.values() {
            service.check.cancel();
        }
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn consul_error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

/// Checks the ACL token of every request, as an agent with
/// `default_policy = "deny"` does.
async fn acl(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(required) = &shared.token else { return next.run(request).await };
    let header = request.headers().get("x-consul-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let query = request.uri().query().unwrap_or_default();
    let param = query.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_owned);
    match header.or(param) {
        Some(token) if token == *required => next.run(request).await,
        Some(_) => consul_error(StatusCode::FORBIDDEN, "ACL not found"),
        None => consul_error(StatusCode::FORBIDDEN, "Permission denied: anonymous token lacks permission"),
    }
}

/// A service definition's check, as the double runs it.
#[derive(Debug, Clone)]
struct Check {
    http: String,
    interval: Duration,
    timeout: Duration,
    deregister_after: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "HTTP")]
    http: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    deregister_critical_service_after: Option<String>,
}

fn parse_check(body: &Value) -> Result<Option<Check>, String> {
    let Some(check) = body.get("Check").filter(|c| !c.is_null()) else { return Ok(None) };
    let check: CheckBody = serde_json::from_value(check.clone()).map_err(|e| format!("Request decode failed: {e}"))?;
    let Some(http) = check.http else { return Err("only HTTP checks are supported by this double".into()) };
    let interval = check.interval.ok_or("Interval must be > 0 for Script, HTTP, or TCP checks")?;
    let interval = go_duration(&interval)?;
    if interval.is_zero() {
        return Err("Interval must be > 0 for Script, HTTP, or TCP checks".into());
    }
    let timeout = check.timeout.as_deref().map(go_duration).transpose()?.unwrap_or(Duration::from_secs(10));
    let deregister_after = check.deregister_critical_service_after.as_deref().map(go_duration).transpose()?;
    Ok(Some(Check { http, interval, timeout, deregister_after }))
}

/// Parses a Go duration (`1m30s`, `500ms`, `1.5s`), the form Consul's fields take.
pub fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {text:?}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

async fn register(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Ok(definition) = serde_json::from_slice::<Value>(&body) else {
        return consul_error(StatusCode::BAD_REQUEST, "Request decode failed: invalid JSON");
    };
    let Some(name) = definition.get("Name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned) else {
        return consul_error(StatusCode::BAD_REQUEST, "Missing service name");
    };
    let id = definition.get("ID").and_then(Value::as_str).filter(|i| !i.is_empty()).unwrap_or(&name).to_owned();
    let check = match parse_check(&definition) {
        Ok(check) => check,
        Err(e) => return consul_error(StatusCode::BAD_REQUEST, format!("Invalid check: {e}")),
    };
    let stop = shared.stop.child_token();
    {
        let mut catalog = shared.lock();
        let previous = catalog.services.remove(&id);
        if let Some(previous) = &previous {
            previous.check.cancel();
        }
        // Re-registering keeps the status the check had; a new check starts
        // critical, and no check at all is passing.
        let status = match (&check, previous) {
            (None, _) => Status::Passing,
            (Some(_), Some(previous)) => previous.status,
            (Some(_), None) => Status::Critical,
        };
        let critical_since = (status == Status::Critical).then(Instant::now);
        let service = Service { definition, name, status, critical_since, check: stop.clone() };
        catalog.services.insert(id.clone(), service);
    }
    shared.changed();
    if let Some(check) = check {
        tokio::spawn(run_check(shared.clone(), id, check, stop));
    }
    StatusCode::OK.into_response()
}

/// Runs one service's check until it is deregistered: at once, then every
/// interval, as an agent does (without its random start offset).
async fn run_check(shared: Arc<Shared>, id: String, check: Check, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let status = match shared.http.get(&check.http).timeout(check.timeout).send().await {
            Ok(response) if response.status().is_success() => Status::Passing,
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => Status::Warning,
            _ => Status::Critical,
        };
        let mut changed = false;
        {
            let mut catalog = shared.lock();
            let Some(service) = catalog.services.get_mut(&id) else { return };
            if service.status != status {
                service.status = status;
                service.critical_since = (status == Status::Critical).then(Instant::now);
                changed = true;
            }
            let expired = match (service.critical_since, check.deregister_after) {
                (Some(since), Some(after)) => since.elapsed() >= after,
                _ => false,
            };
            if expired {
                catalog.services.remove(&id);
                changed = true;
            }
        }
        if changed {
            shared.changed();
        }
    }
}

async fn deregister(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let removed = shared.lock().services.remove(&id);
    match removed {
        Some(service) => {
            service.check.cancel();
            shared.changed();
            StatusCode::OK.into_response()
        }
        None => consul_error(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
        ),
    }
}

async fn agent_service(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let catalog = shared.lock();
    match catalog.services.get(&id) {
        Some(service) => axum::Json(service_json(&id, service)).into_response(),
        None => consul_error(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")),
    }
}

fn service_json(id: &str, service: &Service) -> Value {
    let field = |name: &str, default: Value| service.definition.get(name).cloned().unwrap_or(default);
    json!({
        "ID": id,
        "Service": service.name,
        "Tags": field("Tags", json!([])),
        "Address": field("Address", json!("")),
        "Port": field("Port", json!(0)),
        "Meta": field("Meta", json!({})),
        "Datacenter": DATACENTER,
    })
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    Path(name): Path<String>,
) -> Response {
    if let Some(dc) = query.get("dc")
        && dc != DATACENTER
    {
        return consul_error(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    shared.queries.fetch_add(1, Ordering::Relaxed);
    let wanted: u64 = match query.get("index").map(|i| i.parse()) {
        None => 0,
        Some(Ok(index)) => index,
        Some(Err(_)) => return consul_error(StatusCode::BAD_REQUEST, "Invalid index"),
    };
    {
        let mut asked = shared.asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked.len() == ASKED_KEPT {
            asked.pop_front();
        }
        asked.push_back(wanted);
    }
    let wait = match query.get("wait").map(|w| go_duration(w)) {
        None => Duration::from_secs(300),
        Some(Ok(wait)) => wait.min(Duration::from_secs(600)),
        Some(Err(e)) => return consul_error(StatusCode::BAD_REQUEST, format!("Invalid wait time: {e}")),
    };
    let mut index = shared.index.subscribe();
    if wanted > 0 {
        // Block until the index passes the client's (as Consul does, which is
        // why a client whose index went backwards must start over from 0).
        let _ = tokio::time::timeout(wait, index.wait_for(|current| *current > wanted)).await;
    }
    let current = *index.borrow();
    let passing_only = query.get("passing").is_some_and(|p| p.is_empty() || p == "true" || p == "1");
    let entries: Vec<Value> = {
        let catalog = shared.lock();
        catalog
            .services
            .iter()
            .filter(|(_, s)| s.name == name && (!passing_only || s.status == Status::Passing))
            .map(|(id, service)| {
                json!({
                    "Node": {"ID": "00000000-0000-0000-0000-000000000001", "Node": NODE, "Address": "127.0.0.1", "Datacenter": DATACENTER},
                    "Service": service_json(id, service),
                    "Checks": [{
                        "Node": NODE,
                        "CheckID": format!("{id}:check"),
                        "Status": service.status.name(),
                        "ServiceID": id,
                        "ServiceName": service.name,
                    }],
                })
            })
            .collect()
    };
    ([("X-Consul-Index", current.to_string())], axum::Json(entries)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_consul_reads_them() {
        assert_eq!(go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "10x", "1..5s"] {
            assert!(go_duration(bad).is_err(), "{bad:?}");
        }
    }
}
