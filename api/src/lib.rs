//! The api tier: gochat's HTTP API, answered in gochat's envelope.
//!
//! Every route is `POST` with a JSON body and every answer is HTTP 200 with
//! `{"code", "message", "data"}`: 0 success, 1 failure, 40000 session error. That
//! includes bad input: a body that is too large, not JSON, or has a wrong type gets
//! code 1 and a message saying what is wrong, never a 4xx/5xx page that gochat's
//! clients could not read. The handlers only translate; logic does the work.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, FromRequest, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use courier_proto::logic::{
    Credentials, HistoryRequest, RoomRequest, SendRequest, SessionReply, TokenRequest, UserReply,
};
use courier_proto::{InternalAuth, LogicClient};
use courier_telemetry::{Metrics, ReadyFlag, RouteCodeLabel, RouteLabel};
use courier_wire::frame::{bounded_seq_opt, lenient_id};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tower_http::cors::CorsLayer;

/// gochat's answer codes.
pub mod code {
    pub const SUCCESS: i64 = 0;
    pub const FAIL: i64 = 1;
    pub const SESSION_ERROR: i64 = 40000;
}

/// The api tier's configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body read, in bytes.
    pub body_limit: usize,
    /// Requests one client address may make per second (0: no limit); bursts of
    /// `per_ip_burst`. Per-user send and login limits are logic's.
    pub per_ip_per_second: u32,
    pub per_ip_burst: u32,
    /// Proves this tier to logic (see `courier_proto::InternalAuth`).
    pub internal_auth: InternalAuth,
    /// Proxies whose `X-Forwarded-For` is believed (a load balancer, an
    /// ingress); from anyone else the header is ignored, or a client could
    /// name any address and dodge every per-address limit.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            per_ip_per_second: 100,
            per_ip_burst: 200,
            internal_auth: InternalAuth::open(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone)]
struct ApiState {
    logic: LogicClient,
    config: Arc<ApiConfig>,
    metrics: Arc<Metrics>,
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

/// An answer in gochat's envelope.
#[derive(Debug, Clone)]
struct Answer {
    code: i64,
    message: Value,
    data: Value,
}

impl Answer {
    fn ok(message: &str, data: Value) -> Self {
        Self { code: code::SUCCESS, message: message.into(), data }
    }

    fn fail(message: impl Into<String>) -> Self {
        Self { code: code::FAIL, message: Value::String(message.into()), data: Value::Null }
    }

    fn session_error() -> Self {
        Self { code: code::SESSION_ERROR, message: "Session error".into(), data: Value::Null }
    }
}

/// The envelope code of an answer, for the request metrics.
#[derive(Debug, Clone, Copy)]
struct AnswerCode(i64);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response =
            axum::Json(json!({"code": self.code, "message": self.message, "data": self.data})).into_response();
        response.extensions_mut().insert(AnswerCode(self.code));
        response
    }
}

/// Reads and parses a JSON body, or says in gochat's envelope what is wrong.
async fn parse<T: DeserializeOwned>(state: &ApiState, body: Body) -> Result<T, Answer> {
    let bytes = axum::body::to_bytes(body, state.config.body_limit)
        .await
        .map_err(|_| Answer::fail(format!("request body is larger than {} bytes", state.config.body_limit)))?;
    if bytes.is_empty() {
        return Err(Answer::fail("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| Answer::fail(format!("invalid request body: {e}")))
}

/// A route's JSON body, read within the body limit: a body too large, empty or
/// of the wrong shape is answered in gochat's envelope before the handler runs.
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = Answer;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Answer> {
        parse(state, request.into_body()).await.map(Self)
    }
}

/// The body of a route behind a session. As gochat does, the session comes
/// first: a body without a valid `authToken` is a session error whatever else
/// is wrong with it; then the route's own fields are read.
struct SessionBody<T> {
    user: UserReply,
    token: String,
    fields: T,
}

impl<T: DeserializeOwned> FromRequest<ApiState> for SessionBody<T> {
    type Rejection = Answer;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Answer> {
        let (token, bytes) = token_body(request, state).await?;
        let user = session(state, token.as_deref()).await?;
        Ok(Self { user, token: token.unwrap_or_default(), fields: fields(&bytes)? })
    }
}

/// A body within the limit and the `authToken` it carries (a body that is
/// not a JSON object is a session error, as in gochat).
async fn token_body(request: Request, state: &ApiState) -> Result<(Option<String>, axum::body::Bytes), Answer> {
    let bytes = axum::body::to_bytes(request.into_body(), state.config.body_limit)
        .await
        .map_err(|_| Answer::fail(format!("request body is larger than {} bytes", state.config.body_limit)))?;
    let token: TokenBody = serde_json::from_slice(&bytes).map_err(|_| Answer::session_error())?;
    Ok((token.auth_token, bytes))
}

/// A route's own fields from its body.
fn fields<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(bytes).map_err(|e| Answer::fail(format!("invalid request body: {e}")))
}

/// The body of a send route. logic's Send checks the session itself, so a
/// send is one call to logic; only a body that is wrong has its session asked
/// for first ([`session_first`]), so a bad token still outranks a bad field,
/// as in gochat.
struct SendBody<T> {
    token: String,
    fields: Result<T, Answer>,
}

impl<T: DeserializeOwned> FromRequest<ApiState> for SendBody<T> {
    type Rejection = Answer;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Answer> {
        let (token, bytes) = token_body(request, state).await?;
        let token = token.filter(|t| !t.is_empty()).ok_or_else(Answer::session_error)?;
        Ok(Self { token, fields: fields(&bytes) })
    }
}

/// `answer` for a request that cannot be sent, unless its session is not
/// valid: then the session error, as gochat orders them.
async fn session_first(state: &ApiState, token: &str, answer: Answer) -> Answer {
    match session(state, Some(token)).await {
        Ok(_) => answer,
        Err(session_answer) => session_answer,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsBody {
    user_name: String,
    pass_word: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    #[serde(default)]
    auth_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushBody {
    #[serde(default)]
    msg: Option<String>,
    #[serde(default, deserialize_with = "lenient_id")]
    to_user_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient_id")]
    room_id: Option<u64>,
}

/// gochat checks the session before any `/push/*`, `/user/checkAuth` or
/// `/user/logout` handler runs; so does Courier.
async fn session(state: &ApiState, token: Option<&str>) -> Result<UserReply, Answer> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(Answer::session_error)?;
    let request = TokenRequest { auth_token: token.to_owned() };
    match state.logic.clone().check_auth(request).await {
        Ok(reply) => Ok(reply.into_inner()),
        Err(status) if status.code() == Code::Unauthenticated => Err(Answer::session_error()),
        Err(status) => Err(unavailable(state, &status)),
    }
}

/// A failed call to logic; its text is logged, never shown (it may carry a
/// backend's or the transport's own words).
fn unavailable(state: &ApiState, status: &Status) -> Answer {
    state.metrics.error("logic_call");
    tracing::warn!(error = %status, "logic call failed");
    Answer::fail(UNAVAILABLE)
}

/// What a client sees when something behind the API failed.
const UNAVAILABLE: &str = "service unavailable, try again";

/// The address a request came from: the peer, or, when the peer is a trusted
/// proxy, the last address in `X-Forwarded-For` that is not one (each proxy
/// appends the address it saw; what a client wrote itself comes first and is
/// never reached past an untrusted hop).
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            // A malformed hop: the proxies' chain is broken here.
            Err(_) => return client,
        }
    }
    client
}

/// The client address the `limit` middleware resolved, for handlers.
#[derive(Debug, Clone, Copy)]
struct ClientAddr(IpAddr);

fn room_required(room: Option<u64>) -> Result<u64, Answer> {
    room.filter(|r| *r != 0).ok_or_else(|| Answer::fail("roomId is required and must not be 0"))
}

impl CredentialsBody {
    /// The credentials, sent from `client`.
    fn sent_from(self, client: ClientAddr) -> Credentials {
        Credentials { user_name: self.user_name, password: self.pass_word, client_addr: client.0.to_string() }
    }
}

/// The answer to a register or login call: the new session's token, the
/// refusal `refused` words for the client, or "unavailable".
fn session_answer(
    state: &ApiState,
    reply: Result<tonic::Response<SessionReply>, Status>,
    success: &str,
    refused: impl FnOnce(&Status) -> Option<String>,
) -> Answer {
    match reply {
        Ok(reply) => Answer::ok(success, reply.into_inner().auth_token.into()),
        Err(s) => match refused(&s) {
            Some(text) => Answer::fail(text),
            None => unavailable(state, &s),
        },
    }
}

async fn register(
    State(state): State<ApiState>,
    Extension(from): Extension<ClientAddr>,
    JsonBody(c): JsonBody<CredentialsBody>,
) -> Answer {
    let reply = state.logic.clone().register(c.sent_from(from)).await;
    session_answer(&state, reply, "register success", |s| match s.code() {
        Code::AlreadyExists => Some("this user name already have , please login !!!".into()),
        Code::InvalidArgument | Code::ResourceExhausted => Some(s.message().into()),
        _ => None,
    })
}

async fn login(
    State(state): State<ApiState>,
    Extension(from): Extension<ClientAddr>,
    JsonBody(c): JsonBody<CredentialsBody>,
) -> Answer {
    let reply = state.logic.clone().login(c.sent_from(from)).await;
    session_answer(&state, reply, "login success", |s| match s.code() {
        Code::Unauthenticated => Some("no this user or password error!".into()),
        Code::ResourceExhausted => Some(s.message().into()),
        _ => None,
    })
}

async fn check_auth(SessionBody { user, .. }: SessionBody<TokenBody>) -> Answer {
    Answer::ok("auth success", json!({"userId": user.user_id, "userName": user.user_name}))
}

async fn logout(State(state): State<ApiState>, SessionBody { token, .. }: SessionBody<TokenBody>) -> Answer {
    match state.logic.clone().logout(TokenRequest { auth_token: token }).await {
        Ok(_) => Answer::ok("logout ok!", Value::Null),
        Err(_) => Answer::fail("logout fail!"),
    }
}

fn send_failure(state: &ApiState, status: &Status, fallback: &str) -> Answer {
    match status.code() {
        Code::Unauthenticated => Answer::session_error(),
        Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted => Answer::fail(status.message()),
        Code::Unavailable => unavailable(state, status),
        _ => {
            state.metrics.error("logic_call");
            tracing::warn!(error = %status, "send failed");
            Answer::fail(fallback)
        }
    }
}

/// The answer of a handler that can fail at several steps.
fn either(result: Result<Answer, Answer>) -> Answer {
    result.unwrap_or_else(|answer| answer)
}

/// Sends a message through logic, answering gochat's `ok` with `data` (null
/// for `/push/push`, "" for `/push/pushRoom`), or `fallback` when logic failed
/// for a reason not meant for clients.
async fn send(state: &ApiState, request: SendRequest, data: Value, fallback: &str) -> Answer {
    match state.logic.clone().send(request).await {
        Ok(_) => Answer::ok("ok", data),
        Err(s) => send_failure(state, &s, fallback),
    }
}

async fn push(State(state): State<ApiState>, SendBody { token, fields }: SendBody<PushBody>) -> Answer {
    let request = fields.and_then(|b| {
        let room = room_required(b.room_id)?;
        let to_user = b.to_user_id.filter(|u| *u != 0).ok_or_else(|| Answer::fail("toUserId is required"))?;
        let body = b.msg.unwrap_or_default();
        Ok(SendRequest {
            auth_token: token.clone(),
            room_id: room,
            to_user_id: to_user,
            body,
            client_msg_id: String::new(),
        })
    });
    match request {
        Ok(request) => send(&state, request, Value::Null, "rpc fail get friend userName").await,
        Err(answer) => session_first(&state, &token, answer).await,
    }
}

async fn push_room(State(state): State<ApiState>, SendBody { token, fields }: SendBody<PushBody>) -> Answer {
    let request = fields.and_then(|b| {
        let room = room_required(b.room_id)?;
        let body = b.msg.unwrap_or_default();
        Ok(SendRequest { auth_token: token.clone(), room_id: room, to_user_id: 0, body, client_msg_id: String::new() })
    });
    match request {
        Ok(request) => send(&state, request, "".into(), "rpc push room msg fail!").await,
        Err(answer) => session_first(&state, &token, answer).await,
    }
}

/// Which room update `/push/count` and `/push/getRoomInfo` ask logic to push.
#[derive(Clone, Copy)]
enum RoomUpdate {
    Count,
    Info,
}

/// Has logic push a room's count (op 4) or member list (op 5) to its members;
/// gochat answers `ok` with "" (the update itself arrives on the sockets).
async fn push_room_update(state: &ApiState, token: String, b: PushBody, update: RoomUpdate) -> Answer {
    either(
        async {
            let request = RoomRequest { auth_token: token, room_id: room_required(b.room_id)? };
            let mut logic = state.logic.clone();
            let (pushed, fallback) = match update {
                RoomUpdate::Count => (logic.push_room_count(request).await, "rpc get room count fail!"),
                RoomUpdate::Info => (logic.push_room_info(request).await, "rpc get room info fail!"),
            };
            pushed.map(|_| Answer::ok("ok", "".into())).map_err(|s| send_failure(state, &s, fallback))
        }
        .await,
    )
}

async fn count(State(state): State<ApiState>, SessionBody { token, fields, .. }: SessionBody<PushBody>) -> Answer {
    push_room_update(&state, token, fields, RoomUpdate::Count).await
}

async fn room_info(State(state): State<ApiState>, SessionBody { token, fields, .. }: SessionBody<PushBody>) -> Answer {
    push_room_update(&state, token, fields, RoomUpdate::Info).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryBody {
    #[serde(default, deserialize_with = "lenient_id")]
    room_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient_id")]
    user_id: Option<u64>,
    #[serde(default, deserialize_with = "bounded_seq_opt")]
    after_seq: Option<u64>,
    #[serde(default, deserialize_with = "bounded_seq_opt")]
    before_seq: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `/history/room` (`roomId`) and `/history/private` (`userId`, the other party):
/// a page of messages as they were pushed, by seq. `afterSeq` pages forwards
/// (oldest first), `beforeSeq` backwards (newest first); neither means the newest
/// page. `data` is `{stream, epoch, lastSeq, messages}`.
async fn history(state: &ApiState, body: SessionBody<HistoryBody>, private: bool) -> Answer {
    let SessionBody { token, fields: b, .. } = body;
    either(
        async {
            let (room_id, peer_user_id) = if private {
                (0, b.user_id.filter(|u| *u != 0).ok_or_else(|| Answer::fail("userId is required"))?)
            } else {
                (room_required(b.room_id)?, 0)
            };
            let (after_seq, before_seq) = match (b.after_seq, b.before_seq) {
                (Some(_), Some(_)) => return Err(Answer::fail("give afterSeq or beforeSeq, not both")),
                (Some(after), None) => (after, 0),
                (None, Some(0)) => return Err(Answer::fail("beforeSeq must be at least 1")),
                (None, Some(before)) => (0, before),
                (None, None) => (0, u64::MAX),
            };
            let request = HistoryRequest {
                auth_token: token,
                room_id,
                peer_user_id,
                after_seq,
                before_seq,
                limit: b.limit.unwrap_or(50),
            };
            let page = state
                .logic
                .clone()
                .history(request)
                .await
                .map_err(|s| send_failure(state, &s, "history unavailable"))?;
            let page = page.into_inner();
            let messages: Vec<Value> = page.frames.iter().filter_map(|f| serde_json::from_str(&f.body).ok()).collect();
            Ok(Answer::ok(
                "ok",
                json!({"stream": page.stream, "epoch": page.epoch, "lastSeq": page.last_seq, "messages": messages}),
            ))
        }
        .await,
    )
}

async fn room_history(State(state): State<ApiState>, body: SessionBody<HistoryBody>) -> Answer {
    history(&state, body, false).await
}

async fn private_history(State(state): State<ApiState>, body: SessionBody<HistoryBody>) -> Answer {
    history(&state, body, true).await
}

async fn unknown_path() -> Answer {
    Answer::fail("please check request url !")
}

/// Refuses a client address over its request rate, in gochat's envelope.
async fn limit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = client_ip(peer.ip(), request.headers(), &state.config.trusted_proxies);
    request.extensions_mut().insert(ClientAddr(client));
    if let Some(limiter) = &state.per_ip
        && limiter.check_key(&client).is_err()
    {
        state.metrics.error("http_rate_limited");
        return Answer::fail("too many requests from your address; slow down and retry").into_response();
    }
    next.run(request).await
}

/// Counts and times every request by route and answer code.
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<AnswerCode>()
        .map_or_else(|| response.status().as_u16().to_string(), |c| c.0.to_string());
    state.metrics.http_requests.get_or_create(&RouteCodeLabel { route: route.clone(), code }).inc();
    state.metrics.http_request_duration.get_or_create(&RouteLabel { route }).observe(started.elapsed().as_secs_f64());
    response
}

/// The OpenAPI 3 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the API: one table, so the OpenAPI test covers all of them.
fn routes() -> Vec<(&'static str, MethodRouter<ApiState>)> {
    vec![
        ("/user/register", post(register)),
        ("/user/login", post(login)),
        ("/user/checkAuth", post(check_auth)),
        ("/user/logout", post(logout)),
        ("/push/push", post(push)),
        ("/push/pushRoom", post(push_room)),
        ("/push/count", post(count)),
        ("/push/getRoomInfo", post(room_info)),
        ("/history/room", post(room_history)),
        ("/history/private", post(private_history)),
    ]
}

/// The API's routes.
pub fn router(config: ApiConfig, logic: LogicClient, metrics: Arc<Metrics>) -> Router {
    let per_ip = NonZeroU32::new(config.per_ip_per_second).and_then(|rate| {
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(config.per_ip_burst.max(1))?);
        Some(Arc::new(RateLimiter::keyed(quota)))
    });
    if let Some(limiter) = &per_ip {
        // Forget quiet addresses now and then, so memory stays bounded.
        let limiter = Arc::downgrade(limiter);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticker.tick().await;
                match limiter.upgrade() {
                    Some(l) => l.retain_recent(),
                    None => break,
                }
            }
        });
    }
    let state = ApiState { logic, config: Arc::new(config), metrics, per_ip };
    let mut app = Router::new();
    for (path, handler) in routes() {
        app = app.route(path, handler);
    }
    app.route("/openapi.json", axum::routing::get(|| async { ([("content-type", "application/json")], OPENAPI) }))
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .layer(middleware::from_fn_with_state(state.clone(), limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Why the api tier stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("http server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    config: ApiConfig,
    listener: TcpListener,
    logic: LogicClient,
    metrics: Arc<Metrics>,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let app = router(config, logic, metrics);
    ready.set(true);
    // An answer goes out as soon as it is written, not held back by Nagle's
    // algorithm until the client acknowledges an earlier segment.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not turn Nagle's algorithm off for a client");
        }
    });
    let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    ready.set(false);
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        let headers = |value: &str| {
            let mut map = axum::http::HeaderMap::new();
            map.insert("x-forwarded-for", value.parse().expect("header"));
            map
        };
        let forged = headers("1.1.1.1");
        assert_eq!(client_ip(ip("203.0.113.9"), &forged, &trusted), ip("203.0.113.9"), "a client's own header");
        assert_eq!(client_ip(ip("10.1.2.3"), &headers("198.51.100.7"), &trusted), ip("198.51.100.7"));
        // What the client wrote comes first; the proxies appended what they saw.
        let chain = headers("1.1.1.1, 198.51.100.7, 10.9.9.9");
        assert_eq!(client_ip(ip("10.1.2.3"), &chain, &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.1.2.3"), &headers("garbage"), &trusted), ip("10.1.2.3"));
        assert_eq!(client_ip(ip("10.1.2.3"), &axum::http::HeaderMap::new(), &trusted), ip("10.1.2.3"));
        assert_eq!(client_ip(ip("10.1.2.3"), &chain, &[]), ip("10.1.2.3"), "no proxy trusted");
    }

    #[tokio::test]
    async fn backend_text_never_reaches_clients() {
        let state = ApiState {
            logic: courier_proto::logic_at("127.0.0.1:1", Duration::from_secs(1), &InternalAuth::open())
                .expect("logic client"),
            config: Arc::new(ApiConfig::default()),
            metrics: Arc::new(Metrics::new()),
            per_ip: None,
        };
        let leaky =
            Status::unavailable("error returned from database: password authentication failed for user postgres");
        for answer in [unavailable(&state, &leaky), send_failure(&state, &leaky, "rpc push room msg fail!")] {
            assert_eq!(answer.message, Value::String(UNAVAILABLE.into()));
        }
        let internal = Status::internal("tcp connect error: Connection refused (os error 111)");
        assert_eq!(send_failure(&state, &internal, "rpc push room msg fail!").message, "rpc push room msg fail!");
        let clear = Status::invalid_argument("msg is empty");
        assert_eq!(send_failure(&state, &clear, "x").message, "msg is empty", "reasons meant for clients stay");
    }

    #[test]
    fn openapi_describes_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let routes: Vec<&str> = routes().iter().map(|(path, _)| *path).collect();
        for route in &routes {
            assert!(paths.get(*route).is_some_and(|p| p.get("post").is_some()), "{route} is not documented");
        }
        for documented in paths.keys() {
            assert!(routes.contains(&documented.as_str()), "{documented} is documented but not served");
        }
    }
}
