//! What every connection does, whatever its transport: authenticate through
//! logic, register in the hub, act on client frames, and clean up.
//!
//! Frames from one connection are handled one after another (the transport's
//! reader awaits [`Gateway::handle`]), so a client's sends reach logic, and so the
//! queue, in the order the client sent them.
//!
//! Joining a stream with a `since` position recovers what the client missed:
//! the channel enters the room (live frames start arriving) and holds those frames
//! back, the history after `since` is read from logic and queued, then the held
//! frames follow, each only if newer than the last queued. Without `since` a
//! client gets live traffic only, as gochat's clients expect.

use std::future::Future;
use std::sync::Arc;

use courier_model::StreamId;
use courier_proto::logic::{
    AttachRequest, DetachRequest, Empty, HistoryRequest, JoinRoomRequest, LeaveRoomRequest, SendRequest,
    SessionsRequest,
};
use courier_proto::{LogicClient, MAX_TOKENS_PER_SESSION_CHECK};
use courier_retry::Backoff;
use courier_telemetry::{LogThrottle, Metrics};
use courier_wire::frame::{AckFrame, ErrorFrame, Since, to_text};
use courier_wire::request::{Auth, ClientRequest};
use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::ConnectConfig;
use crate::channel::{Channel, close_code};
use crate::hub::Hub;

/// Messages read per history request while recovering.
const RECOVERY_PAGE: u32 = 500;

/// Shared by every connection of this node.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub hub: Arc<Hub>,
    pub logic: LogicClient,
    pub config: Arc<ConnectConfig>,
    /// Bounds the presence calls (joins, leaves) in flight to logic: when thousands of
    /// connections close at once, their leaves queue here instead of thousands
    /// of streams hitting one HTTP/2 connection, which failed them (14,000 of
    /// 15,000 measured) and left their users counted as present.
    pub presence_calls: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the node shuts down: releases stop retrying then (the
    /// node's lease lapses and logic's reaper drops what it held).
    pub stopping: CancellationToken,
}

/// Most presence calls in flight from one connect node.
pub const PRESENCE_CALLS: usize = 256;

/// What registering a connection again came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registered {
    Yes,
    /// Its session is gone (presence came back empty, or it expired): closed,
    /// and the client told to log in again.
    SessionGone,
    /// Logic refused it (a connection cap): closed, the client to reconnect.
    Refused,
    /// It closed meanwhile, or the node is stopping.
    Closed,
}

impl Gateway {
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.hub.metrics()
    }

    /// Authenticates `token`, registers a channel and joins `room` (0: none),
    /// in one `Attach` call to logic. The error text is fit to show the client.
    ///
    /// Logic routes the user's pushes here and reads where the inbox (and the
    /// room) stand before it answers; the hub keeps the pushes that arrive
    /// meanwhile and hands the channel those meant for it when it is
    /// registered (see [`Hub::begin_open`]). Its streams are held back until
    /// the positions are known: a message newer than that position reaches the
    /// channel, one not newer is dropped as already known.
    /// `since` resumes the room and `inbox_since` the user's inbox (see module docs).
    pub async fn open(&self, auth: &Auth, transport: &'static str) -> Result<Arc<Channel>, String> {
        let (token, room) = (auth.token.as_str(), auth.room);
        let conn_id = self.hub.next_channel_id();
        let ticket = self.hub.begin_open(room);
        let request = AttachRequest {
            auth_token: token.to_owned(),
            server_id: self.config.server_id.clone(),
            conn_id,
            room_id: room,
        };
        let attached = {
            let _permit = self.presence_calls.acquire().await;
            self.logic.clone().attach(request).await
        };
        let reply = match attached {
            Ok(reply) => reply.into_inner(),
            // Refused before anything was registered.
            Err(status)
                if matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument | Code::ResourceExhausted) =>
            {
                return Err(status_text(&status));
            }
            Err(status) => {
                // Logic may have registered the connection and the answer got
                // lost: release it by the token (a release of what never
                // happened changes nothing; presence calls name the connection).
                self.release_unopened(None, token, conn_id, room);
                return Err(status_text(&status));
            }
        };
        let channel =
            Arc::new(Channel::new(conn_id, reply.user_id, token.to_owned(), transport, self.config.outbound_capacity));
        let inbox = StreamId::Inbox(channel.user_id);
        channel.begin_recovery(inbox);
        if room != 0 {
            channel.begin_recovery(StreamId::Room(room));
        }
        let most = self.config.max_connections_per_token;
        if !self.hub.finish_open(ticket, &channel, room, most) {
            self.metrics().error("connection_limit");
            self.release_unopened(Some(reply.user_id), token, conn_id, room);
            return Err(format!("this session already holds {most} connections on this server; close one first"));
        }
        // Held back until `resume` sends what the client asked for; otherwise
        // live from the position read.
        if auth.inbox_since.is_none() {
            channel.start_live(inbox, reply.inbox_last_seq).await;
        }
        if room != 0 && auth.since.is_none() {
            channel.start_live(StreamId::Room(room), reply.room_last_seq).await;
        }
        Ok(channel)
    }

    /// Releases, in the background, what logic registered for an open that
    /// will not become a channel: by `user_id` when logic's answer named it,
    /// otherwise by the token the open sent.
    fn release_unopened(&self, user_id: Option<u64>, token: &str, conn_id: u64, room: u64) {
        let release = DetachRequest {
            user_id: user_id.unwrap_or(0),
            server_id: self.config.server_id.clone(),
            conn_id,
            room_ids: if room == 0 { Vec::new() } else { vec![room] },
            auth_token: if user_id.is_some() { String::new() } else { token.to_owned() },
        };
        let gateway = self.clone();
        tokio::spawn(async move { gateway.release_detach(release).await });
    }

    /// Recovers what the auth message asked for (`since`, `inboxSince`); call once
    /// the connection is being driven (frames are written meanwhile).
    pub async fn resume(&self, channel: &Arc<Channel>, auth: &Auth) {
        if let Some(since) = &auth.since {
            self.recover(channel, StreamId::Room(auth.room), since).await;
        }
        if let Some(since) = &auth.inbox_since {
            self.recover(channel, StreamId::Inbox(channel.user_id), since).await;
        }
    }

    /// Acts on one client frame; answers (ack, error) go to the channel's queue.
    pub async fn handle(&self, channel: &Arc<Channel>, text: &[u8]) {
        let request = match ClientRequest::parse(text) {
            Ok(request) => request,
            Err(reason) => {
                self.metrics().error("bad_frame");
                self.error(channel, &reason, None);
                return;
            }
        };
        match request {
            // gochat's TCP room send: the sender is the session's user, whatever
            // the frame claims.
            ClientRequest::RoomSend { room, body } => {
                let room = room.or_else(|| channel.rooms().first().copied()).unwrap_or(0);
                self.send(channel, room, 0, body, None).await;
            }
            ClientRequest::Send { room, to_user, body, client_msg_id } => {
                self.send(channel, room, to_user.unwrap_or(0), body, Some(client_msg_id)).await;
            }
            ClientRequest::Join { room, since } => {
                if let Err(reason) = self.join(channel, room, since.as_ref()).await {
                    self.error(channel, &reason, None);
                }
            }
            ClientRequest::Sync { since } => self.recover(channel, StreamId::Inbox(channel.user_id), &since).await,
            ClientRequest::Leave { room } => self.leave(channel, room).await,
        }
    }

    fn error(&self, channel: &Channel, message: &str, client_msg_id: Option<String>) {
        channel.reply(to_text(&ErrorFrame::new(message, client_msg_id)), self.metrics());
    }

    async fn send(&self, channel: &Arc<Channel>, room: u64, to_user: u64, body: String, client_msg_id: Option<String>) {
        let request = SendRequest {
            auth_token: channel.auth_token.clone(),
            room_id: room,
            to_user_id: to_user,
            body,
            client_msg_id: client_msg_id.clone().unwrap_or_default(),
        };
        match self.logic.clone().send(request).await {
            Ok(reply) => {
                if let Some(id) = client_msg_id {
                    channel.reply(to_text(&AckFrame::new(id, reply.into_inner().msg_id)), self.metrics());
                }
            }
            Err(status) => {
                self.error(channel, &status_text(&status), client_msg_id);
                if status.code() == Code::Unauthenticated {
                    channel.close(close_code::POLICY, "session expired or revoked; log in again");
                }
            }
        }
    }

    /// Joins a room: the channel enters the hub's room first, then presence, so
    /// the member-list update that presence triggers always finds the channel.
    async fn join(&self, channel: &Arc<Channel>, room: u64, since: Option<&Since>) -> Result<(), String> {
        if channel.in_room(room) {
            return Ok(());
        }
        let most = self.config.max_rooms_per_connection;
        if channel.rooms().len() >= most {
            self.metrics().error("room_limit");
            return Err(format!("a connection may be in at most {most} rooms; leave one first"));
        }
        // Held back until the room's position is known (see `open`).
        let stream = StreamId::Room(room);
        channel.begin_recovery(stream);
        self.hub.join(channel, room);
        let request = JoinRoomRequest {
            auth_token: channel.auth_token.clone(),
            room_id: room,
            server_id: self.config.server_id.clone(),
            conn_id: channel.id,
        };
        let joined = {
            let _permit = self.presence_calls.acquire().await;
            self.logic.clone().join_room(request).await
        };
        match joined {
            Ok(reply) => {
                match since {
                    Some(since) => self.recover(channel, stream, since).await,
                    None => channel.start_live(stream, reply.into_inner().last_seq).await,
                }
                Ok(())
            }
            Err(status) => {
                self.hub.leave(channel, room);
                channel.finish_recovery(stream, Vec::new()).await;
                if status.code() == Code::Unauthenticated {
                    channel.close(close_code::POLICY, "session expired or revoked; log in again");
                }
                Err(status_text(&status))
            }
        }
    }

    /// Fills a gap in `stream` after seq `after` (see `Channel::offer`): a
    /// gap is a late push (a partition moving between task workers) closed
    /// within moments, or a lost one; whatever is still missing after the
    /// grace is read from history. Either
    /// way the held-back frames follow, in order, each once. A history that
    /// cannot be read is tried again with growing pauses, and after
    /// `gap_fill_attempts` the connection is closed with the reason: the
    /// client reconnects and resumes from what it has, rather than wait on a
    /// stream that has stopped.
    pub async fn fill_gap(&self, channel: &Arc<Channel>, stream: StreamId, after: u64) {
        let (grace, attempts) = (self.config.gap_grace, self.config.gap_fill_attempts.max(1));
        tokio::time::sleep(grace).await;
        if channel.held_back_is_contiguous(stream, after) {
            channel.finish_recovery(stream, Vec::new()).await;
            return;
        }
        self.metrics().error("push_gap_filled_from_history");
        let mut pauses = Backoff::new(grace * 4, std::time::Duration::from_secs(16));
        for attempt in 1..=attempts {
            let from = channel.position(stream).unwrap_or(after);
            let reason = match self.replay(channel, stream, &Since { epoch: String::new(), seq: from }).await {
                Ok(()) => return,
                Err(reason) => reason,
            };
            self.metrics().error("gap_fill_failed");
            tracing::warn!(user = channel.user_id, %stream, attempt, %reason, "could not fill a gap from history");
            if attempt == attempts {
                break;
            }
            tokio::select! {
                _ = channel.closing() => return,
                _ = pauses.sleep() => {}
            }
        }
        channel.close(
            close_code::TRY_AGAIN_LATER,
            &format!("could not load the messages missed in {stream}; reconnect and resume"),
        );
    }

    /// Sends what the client missed in `stream` (a room, or its own inbox)
    /// after `since`, then releases the live frames held back meanwhile; a
    /// failure is reported to the client as an op 9 error (live frames then go
    /// on, and the hole is filled as a gap).
    async fn recover(&self, channel: &Arc<Channel>, stream: StreamId, since: &Since) {
        if let Err(reason) = self.replay(channel, stream, since).await {
            channel.finish_recovery(stream, Vec::new()).await;
            self.error(channel, &format!("could not load the messages you missed in {stream}: {reason}"), None);
        }
    }

    /// Replays `stream` after `since` page by page, each page queued under the
    /// connection's flow control before the next is read, then releases the
    /// held-back live frames. On a failed read, what was queued stays queued
    /// and the stream stays held back; the reason is returned.
    async fn replay(&self, channel: &Arc<Channel>, stream: StreamId, since: &Since) -> Result<(), String> {
        // The client has the stream up to `since`: send what follows, even what
        // this channel already sent (it asked again) or what came before its
        // baseline.
        channel.begin_recovery_after(stream, since.seq);
        let mut after = since.seq;
        let mut checked_epoch = false;
        while !channel.is_closing() {
            let request = HistoryRequest {
                auth_token: channel.auth_token.clone(),
                // No room: the caller's own inbox.
                room_id: stream.room().unwrap_or(0),
                peer_user_id: 0,
                after_seq: after,
                before_seq: 0,
                limit: RECOVERY_PAGE,
            };
            let page = self.logic.clone().history(request).await.map_err(|status| status_text(&status))?.into_inner();
            if !checked_epoch {
                checked_epoch = true;
                if !since.epoch.is_empty() && !page.epoch.is_empty() && since.epoch != page.epoch && after != 0 {
                    self.error(
                        channel,
                        &format!(
                            "your position in {stream} is void (its history was rebuilt); resending it from the start"
                        ),
                        None,
                    );
                    after = 0;
                    channel.begin_recovery_after(stream, 0);
                    continue;
                }
            }
            let Some(last) = page.frames.last().map(|frame| frame.seq) else { break };
            for frame in page.frames {
                channel.send_recovered(stream, frame.seq, Utf8Bytes::from(frame.body)).await;
            }
            after = last;
            if after >= page.last_seq {
                break;
            }
        }
        channel.finish_recovery(stream, Vec::new()).await;
        Ok(())
    }

    async fn leave(&self, channel: &Arc<Channel>, room: u64) {
        if self.hub.leave(channel, room) {
            channel.forget_stream(StreamId::Room(room));
            let request = LeaveRoomRequest {
                user_id: channel.user_id,
                room_id: room,
                server_id: self.config.server_id.clone(),
                conn_id: channel.id,
            };
            self.release("leave_room", channel.user_id, |mut logic| {
                let request = request.clone();
                async move { logic.leave_room(request).await }
            })
            .await;
        }
    }

    /// Releases presence (a room left, a connection closed), retrying until
    /// logic takes it or the node stops: a lost release leaves the user counted
    /// and routed here for as long as this node lives, and logic may be away
    /// for a while (a restart, an outage). Presence calls name the connection,
    /// so a retry of a call that did happen changes nothing. A refusal that
    /// retrying cannot change (bad input, internal auth) is not retried.
    async fn release<F, Fut>(&self, what: &'static str, user_id: u64, call: F)
    where
        F: Fn(LogicClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Empty>, tonic::Status>>,
    {
        let mut backoff = Backoff::new(std::time::Duration::from_millis(200), std::time::Duration::from_secs(5));
        let mut reported = false;
        loop {
            let result = {
                let _permit = self.presence_calls.acquire().await;
                call(self.logic.clone()).await
            };
            let status = match result {
                Ok(_) => return,
                Err(status) => status,
            };
            let lasting = retrying_cannot_help(status.code());
            if !reported || lasting {
                // Counted once per release, not per retry.
                self.metrics().error(what);
                static RELEASE_FAILED: LogThrottle = LogThrottle::per_second();
                if let Some(suppressed) = RELEASE_FAILED.allow() {
                    tracing::warn!(user_id, error = %status, suppressed, "could not release presence ({what}); retrying until logic answers");
                }
                reported = true;
            }
            if lasting || self.stopping.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = self.stopping.cancelled() => {}
                _ = backoff.sleep() => {}
            }
        }
    }

    /// Closes every connection whose session has expired or been revoked
    /// (called every `session_check_interval`; revocations also arrive as
    /// pushes, so this catches expiry and pushes that were lost). The node's
    /// distinct tokens go to logic in calls of
    /// [`MAX_TOKENS_PER_SESSION_CHECK`]: a node holding 18,000 connections
    /// asks 18 times per interval, where one call per connection saturated
    /// logic at 600,000 connections. A call that fails leaves its tokens for
    /// the next sweep (only logic's word that a session ended closes a
    /// connection). Returns the connections closed.
    pub async fn check_sessions(&self) -> usize {
        let channels = self.hub.all();
        let mut tokens: Vec<&str> = channels.iter().map(|channel| channel.auth_token.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let mut ended = std::collections::HashSet::new();
        for chunk in tokens.chunks(MAX_TOKENS_PER_SESSION_CHECK) {
            if self.stopping.is_cancelled() {
                return 0;
            }
            let request = SessionsRequest { auth_tokens: chunk.iter().map(|token| (*token).to_owned()).collect() };
            match self.logic.clone().check_sessions(request).await {
                Ok(reply) => ended.extend(reply.into_inner().ended_tokens),
                Err(status) => {
                    self.metrics().error("session_check");
                    tracing::warn!(error = %status, tokens = chunk.len(), "could not re-check sessions; next sweep");
                }
            }
        }
        let mut closed = 0;
        for channel in channels.iter().filter(|channel| ended.contains(&channel.auth_token)) {
            channel.close(close_code::POLICY, "session expired or revoked; log in again");
            closed += 1;
        }
        closed
    }

    /// Registers every connection this node holds with presence again: the
    /// node's lease was granted afresh (it was reaped while away, or presence
    /// came back empty), so presence may hold none of them and pushes to
    /// their users would go nowhere. Each connection is attached and joined to
    /// its rooms again (presence calls name the connection, so what is still
    /// there is not counted twice). One whose session is gone is closed and
    /// told to log in again; a failure behind logic is retried until the
    /// connection is registered or closed, or the node stops.
    pub async fn register_again(&self) {
        let channels = self.hub.all();
        if channels.is_empty() {
            return;
        }
        self.metrics().error("presence_lost");
        tracing::warn!(connections = channels.len(), "presence lost this node's connections; registering them again");
        let outcomes: Vec<Registered> = futures_util::stream::iter(channels)
            .map(|channel| async move { self.register_channel(&channel).await })
            .buffer_unordered(PRESENCE_CALLS)
            .collect()
            .await;
        let count = |which| outcomes.iter().filter(|o| **o == which).count();
        tracing::info!(
            registered = count(Registered::Yes),
            session_gone = count(Registered::SessionGone),
            refused = count(Registered::Refused),
            closed = count(Registered::Closed),
            "connections registered again"
        );
    }

    async fn register_channel(&self, channel: &Arc<Channel>) -> Registered {
        let mut backoff = Backoff::new(std::time::Duration::from_millis(200), std::time::Duration::from_secs(5));
        loop {
            if channel.is_closing() || self.stopping.is_cancelled() {
                return Registered::Closed;
            }
            let rooms = channel.rooms();
            let status = match self.register_once(channel, &rooms).await {
                Ok(()) => {
                    if channel.is_closing() {
                        // Its close may have released it before this
                        // registered it: release again (harmless if not).
                        self.release_all(channel, rooms).await;
                        return Registered::Closed;
                    }
                    return Registered::Yes;
                }
                Err(status) => status,
            };
            match status.code() {
                Code::Unauthenticated => {
                    channel.close(close_code::POLICY, "session expired or revoked; log in again");
                    return Registered::SessionGone;
                }
                code if code == Code::ResourceExhausted || retrying_cannot_help(code) => {
                    static REGISTER_FAILED: LogThrottle = LogThrottle::per_second();
                    if let Some(suppressed) = REGISTER_FAILED.allow() {
                        tracing::warn!(user_id = channel.user_id, error = %status, suppressed, "could not register a connection again");
                    }
                    channel.close(close_code::TRY_AGAIN_LATER, &status_text(&status));
                    return Registered::Refused;
                }
                _ => {}
            }
            tokio::select! {
                _ = self.stopping.cancelled() => {}
                _ = channel.closing() => {}
                _ = backoff.sleep() => {}
            }
        }
    }

    /// Attaches `channel` and joins it to `rooms`, once.
    async fn register_once(&self, channel: &Channel, rooms: &[u64]) -> Result<(), tonic::Status> {
        let _permit = self.presence_calls.acquire().await;
        let (first, rest) = rooms.split_first().map_or((0, &[][..]), |(first, rest)| (*first, rest));
        let attach = AttachRequest {
            auth_token: channel.auth_token.clone(),
            server_id: self.config.server_id.clone(),
            conn_id: channel.id,
            room_id: first,
        };
        self.logic.clone().attach(attach).await?;
        for room in rest {
            let join = JoinRoomRequest {
                auth_token: channel.auth_token.clone(),
                room_id: *room,
                server_id: self.config.server_id.clone(),
                conn_id: channel.id,
            };
            self.logic.clone().join_room(join).await?;
        }
        Ok(())
    }

    /// Unregisters a finished connection and releases its presence and route.
    pub async fn close(&self, channel: &Arc<Channel>) {
        // Marked closing first, so a registration running now releases what
        // it registers after this release.
        channel.close(close_code::NORMAL, "");
        let rooms = self.hub.remove(channel);
        self.release_all(channel, rooms).await;
    }

    /// Releases a connection's rooms and route.
    async fn release_all(&self, channel: &Channel, room_ids: Vec<u64>) {
        let request = DetachRequest {
            user_id: channel.user_id,
            server_id: self.config.server_id.clone(),
            conn_id: channel.id,
            room_ids,
            auth_token: String::new(),
        };
        self.release_detach(request).await;
    }

    async fn release_detach(&self, request: DetachRequest) {
        self.release("detach", request.user_id, |mut logic| {
            let request = request.clone();
            async move { logic.detach(request).await }
        })
        .await;
    }
}

/// Refusals that the same call retried cannot turn into a success: bad input,
/// a dead session, internal authentication, an RPC the peer lacks.
fn retrying_cannot_help(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented)
}

/// A status as text for a client: the reason logic gave for a refusal meant
/// for the client (bad input, a session error, a limit); for a failure behind
/// it only "service unavailable" (the text may carry a backend's or the
/// transport's own words, which are logged by whoever failed, never shown).
pub fn status_text(status: &tonic::Status) -> String {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::FailedPrecondition
            if !status.message().is_empty() =>
        {
            status.message().to_owned()
        }
        _ => "service unavailable, try again".to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outbox::Outbound;

    /// A gateway whose logic answers nothing (its address refuses connections).
    pub(crate) fn gateway_without_logic(config: ConnectConfig) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(1, |a| a.port());
        let logic = courier_proto::logic_at(
            &format!("127.0.0.1:{port}"),
            std::time::Duration::from_secs(1),
            &courier_proto::InternalAuth::open(),
        )
        .expect("logic client");
        let metrics = Arc::new(courier_telemetry::Metrics::new());
        Gateway {
            hub: Arc::new(Hub::new(1, metrics)),
            logic,
            config: Arc::new(config),
            presence_calls: Arc::new(tokio::sync::Semaphore::new(PRESENCE_CALLS)),
            stopping: CancellationToken::new(),
        }
    }

    /// The texts queued on `channel`, taking them.
    fn sent(channel: &Channel) -> Vec<String> {
        channel.remaining_frames().into_iter().map(|Outbound::Frame { text, .. }| text.as_str().to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_the_late_push_closes_within_the_grace_is_not_read_from_history() {
        let grace = std::time::Duration::from_millis(300);
        let gateway = gateway_without_logic(ConnectConfig { gap_grace: grace, ..ConnectConfig::default() });
        let metrics = gateway.metrics().clone();
        let channel = Arc::new(Channel::new(1, 7, "token".into(), "ws", 64));
        gateway.hub.add(channel.clone());
        let text = |n: u64| Utf8Bytes::from(n.to_string());
        let inbox = Some(StreamId::Inbox(7));
        assert!(channel.offer(inbox, 1, &text(1), 0, &metrics));
        assert!(channel.offer(inbox, 3, &text(3), 0, &metrics), "held behind the gap");
        let (stream, after) = channel.next_gap().await;
        let filling = tokio::spawn({
            let (gateway, channel) = (gateway.clone(), channel.clone());
            async move { gateway.fill_gap(&channel, stream, after).await }
        });
        let started = tokio::time::Instant::now();
        tokio::time::sleep(grace / 2).await;
        assert_eq!(sent(&channel), ["1"], "3 waits for 2");
        assert!(channel.offer(inbox, 2, &text(2), 0, &metrics), "the late push");
        filling.await.expect("gap filled");
        assert_eq!(started.elapsed(), grace, "released when the grace ended");
        assert_eq!(sent(&channel), ["2", "3"], "in order, each once");
        assert!(channel.close_reason().is_none());
        assert!(!metrics.encode().contains("push_gap_filled_from_history"), "history was not read");
    }

    #[tokio::test]
    async fn a_gap_history_cannot_fill_backs_off_then_closes_with_a_reason() {
        let config = ConnectConfig {
            gap_grace: std::time::Duration::from_millis(5),
            gap_fill_attempts: 3,
            ..ConnectConfig::default()
        };
        let gateway = gateway_without_logic(config);
        let metrics = gateway.metrics().clone();
        let channel = Arc::new(Channel::new(1, 7, "token".into(), "ws", 64));
        gateway.hub.add(channel.clone());
        let text = |n: u64| Utf8Bytes::from(n.to_string());
        assert!(channel.offer(Some(StreamId::Inbox(7)), 1, &text(1), 0, &metrics));
        assert!(channel.offer(Some(StreamId::Inbox(7)), 3, &text(3), 0, &metrics), "held behind the gap");
        let (stream, after) = channel.next_gap().await;

        let started = std::time::Instant::now();
        gateway.fill_gap(&channel, stream, after).await;
        // Grace, then three reads with pauses of at least 20 and 40 ms between them.
        assert!(started.elapsed() >= std::time::Duration::from_millis(65), "{:?}", started.elapsed());
        let reason = channel.close_reason().expect("closed");
        assert_eq!(reason.code, close_code::TRY_AGAIN_LATER);
        assert!(reason.text.contains("reconnect and resume"), "{}", reason.text);
        assert!(metrics.encode().contains(r#"courier_errors_total{reason="gap_fill_failed"} 3"#));
        assert_eq!(sent(&channel), ["1"], "nothing after the gap was sent out of order");
    }

    #[test]
    fn backend_text_never_reaches_clients() {
        let leaky = tonic::Status::unavailable("error returned from database: connection refused (os error 111)");
        assert_eq!(status_text(&leaky), "service unavailable, try again");
        assert_eq!(status_text(&tonic::Status::internal("h2 protocol error")), "service unavailable, try again");
        assert_eq!(status_text(&tonic::Status::invalid_argument("msg is empty")), "msg is empty");
        assert_eq!(status_text(&tonic::Status::unauthenticated("Session error")), "Session error");
    }
}
