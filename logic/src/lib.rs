//! The logic tier: accounts, sessions, presence bookkeeping and message admission.
//!
//! Logic is stateless; its state lives behind the backend traits (users in the
//! store, tokens in [`Sessions`], membership in [`Presence`]). Admission is the
//! heart of it: [`Logic::send`] checks the session, the rate limit, the recipient
//! and the size limit, stamps a snowflake id (or, for a retried client message id,
//! the first attempt's id), wraps the message in a versioned protobuf envelope and
//! answers only once the queue has acknowledged the record (keyed by room or by
//! recipient, so each stream stays in order).
//!
//! Membership changes mark a room dirty; a flusher pushes each dirty room's count
//! (op 4) and member list (op 5) at most once per `presence_flush_interval`, so a
//! room where many join at once costs one update, not one per join. Connect nodes
//! hold leases renewed by heartbeats; the same loop reaps the presence of a node
//! whose lease lapsed, so a crashed node's members do not stay counted.
//!
//! Here: [`Logic`] and the work it does. Beside it: `config` (one struct,
//! its defaults), `validate` (what a client may send), [`password`]
//! (argon2id, bounded), and `service` (the gRPC interface and its server).

mod config;
pub mod password;
mod service;
mod validate;

pub use config::{LeaseClock, LogicConfig};
pub use service::serve;
use validate::client_address;
pub use validate::{validate_body, validate_client_msg_id, validate_password, validate_user_name};

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_ids::Snowflake;
use courier_model::{Inboxes, Message, MessageKind, StreamId};
use courier_presence::{Claim, ClientMsgIds, Presence, SessionUser, Sessions};
use courier_proto::connect::{Delivery, delivery::Target};
use courier_proto::logic::{
    Empty, HistoryFrame, HistoryReply, HistoryRequest, RoomRequest, SendReply, SendRequest, SessionReply,
};
use courier_push::Pusher;
use courier_queue::Queue;
use courier_store::{Error as StoreError, HistoryStore, Page, UserStore};
use courier_telemetry::{KindLabel, LogThrottle, Metrics, Stage};
use courier_wire::frame::{CountFrame, MessageFrame, RoomInfoFrame, to_text};
use futures_util::StreamExt as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Response, Status};

use crate::password::PasswordHasher;

/// The backends logic works with.
#[derive(Clone)]
pub struct LogicBackends {
    pub users: Arc<dyn UserStore>,
    /// Read for history requests; task writes it.
    pub history: Arc<dyn HistoryStore>,
    pub sessions: Arc<dyn Sessions>,
    pub presence: Arc<dyn Presence>,
    /// Retried sends (same client message id) get the first send's message id.
    pub client_msg_ids: Arc<dyn ClientMsgIds>,
    pub queue: Arc<dyn Queue>,
    pub pusher: Pusher,
    pub metrics: Arc<Metrics>,
}

/// Which of a room's presence frames to push.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RoomFrame {
    Count,
    Info,
}

/// The logic service; cheap to clone.
#[derive(Clone)]
pub struct Logic {
    inner: Arc<Inner>,
}

struct Inner {
    config: LogicConfig,
    backends: LogicBackends,
    /// Message ids; `None` while admission is paused because the worker id's
    /// lease is in doubt (see [`Logic::pause_ids`]).
    ids: std::sync::RwLock<Option<Arc<Snowflake>>>,
    hasher: PasswordHasher,
    dirty_rooms: Mutex<HashSet<u64>>,
    /// Names of recipients seen lately: a user's name never changes, and a
    /// private send would otherwise read it from the store every time.
    recipient_names: quick_cache::sync::Cache<u64, Arc<str>>,
    /// Whose session each token lately seen sending with a client message id
    /// is (a token never changes hands). Whether the session is still live is
    /// asked with the id's claim, in one step (see [`Logic::send`]).
    senders: quick_cache::sync::Cache<String, SessionUser>,
    send_limiter: Option<DefaultKeyedRateLimiter<u64>>,
    /// Logins per (user name, client address): guessing one account's
    /// password is slowed, yet nobody elsewhere can lock its owner out.
    login_limiter: Option<DefaultKeyedRateLimiter<(String, String)>>,
    /// Logins and registrations per client address (each costs a hash).
    address_limiter: Option<DefaultKeyedRateLimiter<String>>,
}

/// A keyed limiter allowing `per_period` events per `period` with bursts of
/// `burst`; `None` when `per_period` is 0 (no limit).
fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_period: u32,
    period: Duration,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_period)?;
    let quota = Quota::with_period(period / rate.get())?.allow_burst(NonZeroU32::new(burst.max(1))?);
    Some(RateLimiter::keyed(quota))
}

/// Why logic could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    WorkerId(#[from] courier_ids::WorkerIdError),
    #[error("could not prepare queue topics: {0}")]
    Queue(#[from] courier_queue::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Password(#[from] password::HashError),
}

impl Logic {
    pub fn new(config: LogicConfig, backends: LogicBackends) -> Result<Self, StartError> {
        let ids = Snowflake::starting_after(config.worker_id, config.worker_not_before_unix_ms)?;
        let hasher = PasswordHasher::new(config.hash_concurrency, config.hash_queue, config.password_cost)?;
        let send_limiter = limiter(config.sends_per_second, Duration::from_secs(1), config.send_burst);
        let login_limiter = limiter(config.logins_per_minute, Duration::from_secs(60), config.login_burst);
        let address_limiter =
            limiter(config.logins_per_minute_per_address, Duration::from_secs(60), config.address_login_burst);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                backends,
                ids: std::sync::RwLock::new(Some(Arc::new(ids))),
                hasher,
                dirty_rooms: Mutex::default(),
                recipient_names: quick_cache::sync::Cache::new(RECIPIENT_NAMES),
                senders: quick_cache::sync::Cache::new(SENDERS),
                send_limiter,
                login_limiter,
                address_limiter,
            }),
        })
    }

    /// The last millisecond used in a message id (recorded with the worker lease).
    pub fn last_id_unix_ms(&self) -> u64 {
        self.id_generator().map_or(0, |ids| ids.last_unix_ms())
    }

    /// Stops giving message ids: sends are refused with a clear "try again"
    /// until [`Logic::resume_ids`]. Called when this instance can no longer be
    /// sure it alone holds its worker id (its lease lost, or not renewed for
    /// nearly its whole time to live).
    /// Returns the last millisecond an id was given in, if it was giving ids.
    pub fn pause_ids(&self) -> Option<u64> {
        let paused = self.inner.ids.write().unwrap_or_else(|p| p.into_inner()).take();
        if paused.is_some() {
            self.metrics().error("ids_paused");
        }
        paused.map(|ids| ids.last_unix_ms())
    }

    /// Gives message ids again, as `worker_id`, each after `not_before_unix_ms`.
    pub fn resume_ids(&self, worker_id: u32, not_before_unix_ms: u64) -> Result<(), courier_ids::WorkerIdError> {
        let ids = Snowflake::starting_after(worker_id, not_before_unix_ms)?;
        *self.inner.ids.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ids));
        Ok(())
    }

    /// Whether sends are admitted (message ids are being given).
    pub fn admitting(&self) -> bool {
        self.id_generator().is_some()
    }

    fn id_generator(&self) -> Option<Arc<Snowflake>> {
        self.inner.ids.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Creates the topics if they do not exist (and checks their partition count).
    pub async fn ensure_topics(&self) -> Result<(), courier_queue::Error> {
        let c = &self.inner.config;
        self.inner.backends.queue.ensure_topic(&c.room_topic, c.partitions).await?;
        self.inner.backends.queue.ensure_topic(&c.private_topic, c.partitions).await
    }

    /// Creates a user, or does nothing if the name exists (for demo accounts).
    pub async fn ensure_user(&self, name: &str, password: &str) -> Result<(), Status> {
        match self.register(name, password).await {
            Ok(_) | Err(RegisterError::Taken) => Ok(()),
            Err(RegisterError::Status(s)) => Err(s),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.backends.metrics
    }

    async fn session(&self, token: &str) -> Result<SessionUser, Status> {
        if token.is_empty() || token.len() > 128 {
            return Err(Status::unauthenticated("Session error"));
        }
        match self.inner.backends.sessions.get(token).await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(Status::unauthenticated("Session error")),
            Err(e) => Err(self.sessions_unavailable(e)),
        }
    }

    /// A sessions failure: logged and counted here; the caller sees only that
    /// the service is unavailable (backend text never reaches clients).
    fn sessions_unavailable(&self, e: courier_presence::Error) -> Status {
        self.metrics().error("sessions");
        static SESSIONS_FAILED: LogThrottle = LogThrottle::per_second();
        if let Some(suppressed) = SESSIONS_FAILED.allow() {
            tracing::warn!(error = %e, suppressed, "sessions failed");
        }
        Status::unavailable(UNAVAILABLE)
    }

    async fn new_session(&self, user: SessionUser) -> Result<SessionReply, Status> {
        let session =
            self.inner.backends.sessions.create(user.clone()).await.map_err(|e| self.sessions_unavailable(e))?;
        // Tokens evicted by the device cap lose their connections too.
        self.inner.backends.pusher.revoke(&session.revoked);
        Ok(SessionReply { auth_token: session.token, user_id: user.user_id, user_name: user.user_name })
    }

    async fn register(&self, name: &str, password: &str) -> Result<SessionReply, RegisterError> {
        validate_user_name(name)?;
        validate_password(password)?;
        let hash = self.inner.hasher.hash(password.to_owned()).await.map_err(|e| self.hashing_failed(e))?;
        let id = match self.inner.backends.users.create_user(name, &hash).await {
            Ok(id) => id,
            Err(StoreError::NameTaken) => return Err(RegisterError::Taken),
            Err(e) => return Err(self.store_unavailable(e).into()),
        };
        Ok(self.new_session(SessionUser { user_id: id, user_name: name.to_owned() }).await?)
    }

    /// The name of a private message's recipient; NOT_FOUND if there is no
    /// such user (never cached, so a user registered since is found).
    async fn recipient_name(&self, user_id: u64) -> Result<Arc<str>, Status> {
        if let Some(name) = self.inner.recipient_names.get(&user_id) {
            return Ok(name);
        }
        let user = self
            .inner
            .backends
            .users
            .user_by_id(user_id)
            .await
            .map_err(|e| self.store_unavailable(e))?
            .ok_or_else(|| Status::not_found("rpc fail get friend userName"))?;
        let name: Arc<str> = user.name.into();
        self.inner.recipient_names.insert(user_id, name.clone());
        Ok(name)
    }

    /// Connection `conn` of `user` on `server` joins `room`; returns where the
    /// room stands, read after the membership (and so its route) exists. On a
    /// failure nothing stays registered.
    async fn join_at(&self, room: u64, user: &SessionUser, server: &str, conn: u64) -> Result<u64, Status> {
        let presence = &self.inner.backends.presence;
        presence.join(room, user, server, conn).await.map_err(|e| self.presence_unavailable(e))?;
        self.mark_dirty(room);
        let position = self.last_seq(StreamId::Room(room)).await;
        if position.is_err() {
            // Harmless if it fails too: the node's lease or close releases it.
            let _ = presence.leave(room, user.user_id, server, conn).await;
        }
        position
    }

    /// Where `stream` stands (0: no message yet). A connection's live delivery
    /// starts there, so a store failure refuses the call rather than guess.
    async fn last_seq(&self, stream: StreamId) -> Result<u64, Status> {
        let info = self.inner.backends.history.stream_info(stream).await.map_err(|e| self.store_unavailable(e))?;
        Ok(info.map_or(0, |i| i.last_seq))
    }

    fn store_unavailable(&self, e: StoreError) -> Status {
        self.metrics().error("store");
        static STORE_FAILED: LogThrottle = LogThrottle::per_second();
        if let Some(suppressed) = STORE_FAILED.allow() {
            tracing::warn!(error = %e, suppressed, "user store failed");
        }
        Status::unavailable(UNAVAILABLE)
    }

    /// Admits one message: answered once the queue has it.
    pub async fn send(&self, request: SendRequest) -> Result<SendReply, Status> {
        // Admission is when the send arrived: the stage latencies count the
        // session check and the client message id claim too.
        let arrived_us = courier_ids::now_unix_us();
        // A sender known by its token has the liveness of its session checked
        // with the claim of its client message id, in one step (one Redis
        // round trip per send); otherwise the session is read first.
        let claiming = !request.client_msg_id.is_empty();
        let known = if claiming { self.inner.senders.get(&request.auth_token) } else { None };
        let sender = match &known {
            Some(user) => user.clone(),
            None => self.session(&request.auth_token).await?,
        };
        if let Some(limiter) = &self.inner.send_limiter
            && limiter.check_key(&sender.user_id).is_err()
        {
            self.metrics().error("send_rate_limited");
            return Err(Status::resource_exhausted(format!(
                "too many messages: at most {} per second; slow down and retry",
                self.inner.config.sends_per_second
            )));
        }
        validate_body(&request.body)?;
        validate_client_msg_id(&request.client_msg_id, self.inner.config.max_client_msg_id)?;
        let config = &self.inner.config;
        let (kind, topic, to_user_name) = if request.to_user_id != 0 {
            let name = self.recipient_name(request.to_user_id).await?;
            (MessageKind::Private, &config.private_topic, name.to_string())
        } else if request.room_id != 0 {
            (MessageKind::Room, &config.room_topic, String::new())
        } else {
            return Err(Status::invalid_argument("roomId or toUserId is required"));
        };
        let Some(ids) = self.id_generator() else {
            return Err(Status::unavailable(
                "message ids are paused while this server renews its lease on them; try again in a few seconds",
            ));
        };
        let mut msg_id = ids.next_id();
        if claiming {
            // A retry re-sends the first attempt's record under its id: if that one
            // reached the queue, the store keeps a single copy of the two.
            let mut print = Vec::with_capacity(request.body.len() + 16);
            print.extend_from_slice(&request.room_id.to_le_bytes());
            print.extend_from_slice(&request.to_user_id.to_le_bytes());
            print.extend_from_slice(request.body.as_bytes());
            let fingerprint = courier_queue::murmur2(&print) as u32;
            let (claims, token) = (&self.inner.backends.client_msg_ids, &request.auth_token);
            let claim = if known.is_some() {
                let sessions = self.inner.backends.sessions.as_ref();
                let claimed = claims
                    .claim_in_session(sessions, token, &sender, &request.client_msg_id, msg_id, fingerprint)
                    .await
                    .map_err(|e| self.presence_unavailable(e))?;
                claimed.ok_or_else(|| {
                    self.inner.senders.remove(token);
                    Status::unauthenticated("Session error")
                })?
            } else {
                let claimed = claims
                    .claim(sender.user_id, &request.client_msg_id, msg_id, fingerprint)
                    .await
                    .map_err(|e| self.presence_unavailable(e))?;
                self.inner.senders.insert(token.clone(), sender.clone());
                claimed
            };
            match claim {
                Claim::New => {}
                Claim::Retry(first) => msg_id = first,
                Claim::Conflict => {
                    return Err(Status::already_exists(
                        "clientMsgId was already used for a different message; use a new id per message",
                    ));
                }
            }
        }
        let message = Message {
            msg_id,
            kind,
            room_id: request.room_id,
            to_user_id: request.to_user_id,
            to_user_name,
            from_user_id: sender.user_id,
            from_user_name: sender.user_name,
            body: request.body,
            admitted_us: arrived_us,
            client_msg_id: request.client_msg_id,
            inboxes: Inboxes::Recipient,
        };
        let (started, admitted_us) = (Instant::now(), message.admitted_us);
        // A private message is two records, the recipient's and the sender's
        // copy, each keyed by the inbox it writes (one writer per stream); it
        // is accepted once the queue has both. A retry produces both again:
        // the store keeps one of each.
        let records: Vec<(String, Vec<u8>)> =
            message.records().into_iter().map(|record| (record.key().to_string(), record.into_record())).collect();
        let queue = &self.inner.backends.queue;
        let produced =
            futures_util::future::try_join_all(records.iter().map(|(key, record)| queue.produce(topic, key, record)));
        if let Err(e) = produced.await {
            self.metrics().error("produce");
            tracing::warn!(error = %e, %topic, "queue did not take a message");
            return Err(Status::unavailable("message not accepted; try again"));
        }
        self.metrics().produce_duration.observe(started.elapsed().as_secs_f64());
        self.metrics().reached(Stage::Produced, admitted_us, courier_ids::now_unix_us());
        self.metrics().messages_admitted.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
        Ok(SendReply { msg_id })
    }

    /// A page of a stream's history as pushed frames (see [`HistoryRequest`]).
    pub async fn history(&self, request: HistoryRequest) -> Result<HistoryReply, Status> {
        let me = self.session(&request.auth_token).await?;
        let history = &self.inner.backends.history;
        let stream = if request.room_id != 0 { StreamId::Room(request.room_id) } else { StreamId::Inbox(me.user_id) };
        let limit = match request.limit {
            0 => 50,
            n => n.min(self.inner.config.history_page_limit),
        };
        let info = history.stream_info(stream).await.map_err(|e| self.store_unavailable(e))?;
        let (epoch, last_seq) = info.map(|i| (i.epoch, i.last_seq)).unwrap_or_default();
        let peer = (request.room_id == 0 && request.peer_user_id != 0).then_some(request.peer_user_id);
        let page =
            if request.before_seq != 0 { Page::Before(request.before_seq) } else { Page::After(request.after_seq) };
        // A conversation is the inbox's entries with one peer: one index range.
        let stored = history.read(stream, peer, page, limit).await.map_err(|e| self.store_unavailable(e))?;
        // Cut by bytes too, so a page always fits the transport: the caller
        // goes on from the last seq it got until it reaches `last_seq`.
        let mut frames = Vec::with_capacity(stored.len());
        let mut bytes = 0;
        for stored in stored {
            let body = to_text(&MessageFrame::new(&stored.message, &stored.position));
            bytes += body.len();
            if bytes > courier_proto::BATCH_BYTES && !frames.is_empty() {
                break;
            }
            frames.push(HistoryFrame { seq: stored.position.seq, body });
        }
        Ok(HistoryReply { stream: stream.to_string(), epoch, last_seq, frames })
    }

    /// Refuses a login or registration from an address over its rate.
    fn admit_from(&self, address: &str) -> Result<(), Status> {
        if let Some(limiter) = &self.inner.address_limiter
            && limiter.check_key(&address.to_owned()).is_err()
        {
            self.metrics().error("login_rate_limited");
            return Err(Status::resource_exhausted("too many logins from your address; wait a minute"));
        }
        Ok(())
    }

    fn mark_dirty(&self, room: u64) {
        self.inner.dirty_rooms.lock().unwrap_or_else(|p| p.into_inner()).insert(room);
    }

    /// Pushes a room's op 4 (`RoomFrame::Count`) or op 5 (`RoomFrame::Info`)
    /// to its members now, for a client that asked (gochat's `/push/count`
    /// and `/push/getRoomInfo`).
    pub(crate) async fn push_room_frame(&self, request: RoomRequest, kind: RoomFrame) -> Result<Empty, Status> {
        self.session(&request.auth_token).await?;
        let room = request.room_id;
        if room == 0 {
            return Err(Status::invalid_argument("roomId is required"));
        }
        let text = match kind {
            RoomFrame::Count => {
                let count = self.inner.backends.presence.count(room).await.map_err(|e| self.presence_unavailable(e))?;
                to_text(&CountFrame::new(count))
            }
            RoomFrame::Info => {
                let (count, members) = self.room_members(room).await?;
                to_text(&RoomInfoFrame::new(room, count, members))
            }
        };
        self.inner.backends.pusher.deliver(&[room_delivery(room, text)]).await;
        Ok(Empty {})
    }

    /// A room's online count and (capped) member list.
    async fn room_members(&self, room: u64) -> Result<(u64, Vec<(u64, String)>), Status> {
        let presence = &self.inner.backends.presence;
        let count = presence.count(room).await.map_err(|e| self.presence_unavailable(e))?;
        let members = presence
            .members(room, self.inner.config.room_member_cap)
            .await
            .map_err(|e| self.presence_unavailable(e))?;
        Ok((count, members))
    }

    fn presence_unavailable(&self, e: courier_presence::Error) -> Status {
        self.metrics().error("presence");
        static PRESENCE_FAILED: LogThrottle = LogThrottle::per_second();
        if let Some(suppressed) = PRESENCE_FAILED.allow() {
            tracing::warn!(error = %e, suppressed, "presence failed");
        }
        Status::unavailable(UNAVAILABLE)
    }

    /// A password check that did not happen: busy (refused at once, the client
    /// may retry) or an internal failure (logged, never shown).
    fn hashing_failed(&self, e: password::HashError) -> Status {
        match e {
            password::HashError::Busy => {
                self.metrics().error("password_queue_full");
                Status::resource_exhausted("the server is busy checking passwords; try again in a moment")
            }
            password::HashError::Failed(reason) => {
                self.metrics().error("password_hash");
                tracing::error!(%reason, "password hashing failed");
                Status::internal(UNAVAILABLE)
            }
        }
    }

    /// Sets `courier_sessions` to the sessions live now.
    pub(crate) async fn count_sessions(&self) {
        match self.inner.backends.sessions.active().await {
            Ok(count) => {
                self.metrics().sessions.set(count as i64);
            }
            Err(e) => {
                self.metrics().error("sessions");
                tracing::warn!(error = %e, "could not count the live sessions");
            }
        }
    }

    /// Removes the presence of connect nodes whose lease lapsed (they died without
    /// saying goodbye) and marks their rooms for an update.
    async fn reap_lapsed_nodes(&self) {
        let presence = &self.inner.backends.presence;
        let lapsed = match presence.take_lapsed_nodes(self.inner.config.lease_clock.now_unix_ms()).await {
            Ok(lapsed) => lapsed,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for lapsed connect nodes");
                return;
            }
        };
        for server in lapsed {
            match presence.reap_node(&server).await {
                Ok(rooms) => {
                    tracing::warn!(
                        %server,
                        rooms = rooms.len(),
                        "connect node lease lapsed; its presence was reaped (kept if it leased again first)"
                    );
                    self.metrics().error("node_lease_lapsed");
                    rooms.into_iter().for_each(|room| self.mark_dirty(room));
                }
                // Still due: tried again on the next pass.
                Err(e) => tracing::warn!(%server, error = %e, "could not remove a lapsed node's presence; retrying"),
            }
        }
    }

    /// Pushes op 4 and op 5 for every room whose membership changed since the last
    /// flush: the rooms are read a few at a time and their frames pushed in one
    /// call (one route lookup), since thousands of rooms change at once when a
    /// node starts or dies.
    async fn flush_dirty_rooms(&self) {
        let rooms: Vec<u64> = self.inner.dirty_rooms.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let read: Vec<_> = futures_util::stream::iter(rooms)
            .map(|room| async move { (room, self.room_members(room).await) })
            .buffer_unordered(FLUSH_READS)
            .collect()
            .await;
        let mut deliveries = Vec::with_capacity(read.len() * 2);
        for (room, members) in read {
            match members {
                Ok((count, members)) => {
                    deliveries.push(room_delivery(room, to_text(&CountFrame::new(count))));
                    deliveries.push(room_delivery(room, to_text(&RoomInfoFrame::new(room, count, members))));
                }
                Err(_) => self.mark_dirty(room), // try again on the next flush
            }
        }
        self.inner.backends.pusher.deliver(&deliveries).await;
    }

    async fn observed<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = work.await;
        let code = match &result {
            Ok(_) => "Ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics().grpc_call(method, &code, started);
        result.map(Response::new)
    }
}

enum RegisterError {
    Taken,
    Status(Status),
}

impl From<Status> for RegisterError {
    fn from(s: Status) -> Self {
        Self::Status(s)
    }
}

/// Recipient names remembered by one logic instance.
const RECIPIENT_NAMES: usize = 100_000;
/// Senders' tokens remembered (about 100 bytes each).
const SENDERS: usize = 100_000;

/// Rooms whose presence is read at once when flushing updates.
const FLUSH_READS: usize = 32;

fn room_delivery(room: u64, body: String) -> Delivery {
    Delivery { target: Some(Target::RoomId(room)), stream: String::new(), seq: 0, body, admitted_us: 0 }
}

/// What a client sees when a backend failed; the failure itself is logged.
const UNAVAILABLE: &str = "service unavailable, try again";

#[cfg(test)]
mod tests {
    use std::path::Path;

    use courier_presence::SessionUser;
    use courier_presence::memory::{MemoryClientMsgIds, MemoryPresence, MemorySessions, SessionPolicy};
    use courier_proto::logic::NodeHeartbeatRequest;
    use courier_proto::logic::logic_server::Logic as _;

    use super::*;

    /// Logic on the embedded backends, its leases on the runtime's clock.
    async fn logic(dir: &Path, presence: Arc<MemoryPresence>) -> Logic {
        let store = Arc::new(courier_store::sqlite::SqliteStore::open(&dir.join("s.sqlite")).await.expect("store"));
        let queue =
            courier_queue::sqlite::SqliteQueue::open(&dir.join("q.sqlite"), Default::default()).await.expect("queue");
        let metrics = Arc::new(Metrics::new());
        let nodes = courier_discovery::fixed(Vec::new());
        let pusher =
            Pusher::start(nodes, metrics.clone(), Default::default(), tokio_util::sync::CancellationToken::new());
        let backends = LogicBackends {
            users: store.clone(),
            history: store,
            sessions: Arc::new(MemorySessions::new(SessionPolicy::default())),
            presence,
            client_msg_ids: Arc::new(MemoryClientMsgIds::new(Duration::from_secs(60))),
            queue: Arc::new(queue),
            pusher,
            metrics,
        };
        let config = LogicConfig { lease_clock: LeaseClock::runtime(), ..LogicConfig::default() };
        Logic::new(config, backends).expect("logic")
    }

    /// A connect node that stops renewing its lease keeps its members until
    /// the lease (15 s) ends, and loses them then, its rooms marked for an
    /// update: in paused time, not waited out.
    #[tokio::test]
    async fn a_silent_nodes_members_go_when_its_lease_ends_and_not_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let presence = Arc::new(MemoryPresence::default());
        // The stores open before time stops: they wait on threads, not timers.
        let logic = logic(dir.path(), presence.clone()).await;
        tokio::time::pause();
        let heartbeat = NodeHeartbeatRequest { server_id: "connect-9".into(), boot_id: "boot-1".into() };
        logic.node_heartbeat(tonic::Request::new(heartbeat)).await.expect("heartbeat");
        let user = SessionUser { user_id: 7, user_name: "ann".into() };
        presence.join(5, &user, "connect-9", 1).await.expect("join");
        let count = || async { presence.count(5).await.expect("count") };

        tokio::time::advance(Duration::from_secs(14)).await;
        logic.reap_lapsed_nodes().await;
        assert_eq!(count().await, 1, "the lease still holds");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        logic.reap_lapsed_nodes().await;
        assert_eq!(count().await, 0, "the lease ended: the node's members are gone");
        assert!(logic.inner.dirty_rooms.lock().unwrap_or_else(|p| p.into_inner()).contains(&5), "room 5 is updated");
        assert!(logic.metrics().encode().contains(r#"courier_errors_total{reason="node_lease_lapsed"} 1"#));
    }

    /// A node's batched session check names exactly the tokens that ended, and
    /// a batch over the limit is refused whole rather than half answered.
    #[tokio::test]
    async fn a_session_check_names_the_ended_tokens_and_bounds_its_batch() {
        use courier_proto::logic::{SessionsRequest, TokenRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let logic = logic(dir.path(), Arc::new(MemoryPresence::default())).await;
        let mut tokens = Vec::new();
        for id in 1..=3 {
            let user = SessionUser { user_id: id, user_name: format!("u{id}") };
            tokens.push(logic.new_session(user).await.expect("session").auth_token);
        }
        let logout = TokenRequest { auth_token: tokens[1].clone() };
        logic.logout(tonic::Request::new(logout)).await.expect("logout");
        let mut asked = tokens.clone();
        asked.push("never-issued".into());
        let reply = logic
            .check_sessions(tonic::Request::new(SessionsRequest { auth_tokens: asked }))
            .await
            .expect("checked")
            .into_inner();
        assert_eq!(reply.ended_tokens, [tokens[1].clone(), "never-issued".to_owned()]);

        let too_many = vec![tokens[0].clone(); courier_proto::MAX_TOKENS_PER_SESSION_CHECK + 1];
        let refused = logic.check_sessions(tonic::Request::new(SessionsRequest { auth_tokens: too_many })).await;
        assert_eq!(refused.expect_err("over the limit").code(), tonic::Code::InvalidArgument);
    }

    /// A connect node whose `Attach` went unanswered knows the token it sent,
    /// not the user: its release by token removes the route and the room.
    #[tokio::test]
    async fn a_release_by_token_undoes_an_unanswered_attach() {
        use courier_proto::logic::{AttachRequest, DetachRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let presence = Arc::new(MemoryPresence::default());
        let logic = logic(dir.path(), presence.clone()).await;
        let user = SessionUser { user_id: 9, user_name: "ida".into() };
        let token = logic.new_session(user).await.expect("session").auth_token;
        let attach =
            AttachRequest { auth_token: token.clone(), server_id: "connect-3".into(), conn_id: 41, room_id: 12 };
        let reply = logic.attach(tonic::Request::new(attach)).await.expect("attached").into_inner();
        assert_eq!((reply.user_id, reply.user_name.as_str()), (9, "ida"), "the user, from the token");
        assert_eq!(presence.routes(&[9], &[12]).await.expect("routes").user(9), ["connect-3"]);

        let release = DetachRequest {
            user_id: 0,
            server_id: "connect-3".into(),
            conn_id: 41,
            room_ids: vec![12],
            auth_token: token,
        };
        logic.detach(tonic::Request::new(release)).await.expect("released");
        let routes = presence.routes(&[9], &[12]).await.expect("routes");
        assert!(routes.user(9).is_empty() && routes.room(12).is_empty(), "{routes:?}");
        assert_eq!(presence.count(12).await.expect("count"), 0);
    }
}
