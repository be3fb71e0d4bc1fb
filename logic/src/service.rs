//! logic's gRPC service: each RPC translated to the [`Logic`] method that does
//! the work, timed and counted by method and code, and the server that runs it
//! (with the presence flusher and reaper beside it).

use courier_model::StreamId;
use courier_presence::{NodeLease, SessionUser};
use courier_proto::MAX_TOKENS_PER_SESSION_CHECK;
use courier_proto::logic::logic_server::Logic as LogicRpc;
use courier_proto::logic::{
    AttachReply, AttachRequest, Credentials, DetachRequest, Empty, HistoryReply, HistoryRequest, JoinRoomRequest,
    LeaveRoomRequest, NodeHeartbeatReply, NodeHeartbeatRequest, RoomRequest, SendReply, SendRequest, SessionReply,
    SessionsReply, SessionsRequest, TokenRequest, UserReply,
};
use courier_telemetry::ReadyFlag;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{Logic, RegisterError, RoomFrame, StartError, client_address, validate_password, validate_user_name};

#[tonic::async_trait]
impl LogicRpc for Logic {
    async fn register(&self, request: Request<Credentials>) -> Result<Response<SessionReply>, Status> {
        let c = request.into_inner();
        self.observed("Register", async {
            self.admit_from(client_address(&c.client_addr))?;
            self.register(&c.user_name, &c.password).await.map_err(|e| match e {
                RegisterError::Taken => Status::already_exists("this user name already have , please login !!!"),
                RegisterError::Status(s) => s,
            })
        })
        .await
    }

    async fn login(&self, request: Request<Credentials>) -> Result<Response<SessionReply>, Status> {
        let c = request.into_inner();
        self.observed("Login", async {
            let denied = || Status::unauthenticated("no this user or password error!");
            // Checked before any limiter, so its keys stay short.
            if validate_user_name(&c.user_name).is_err() || validate_password(&c.password).is_err() {
                return Err(denied());
            }
            let address = client_address(&c.client_addr);
            self.admit_from(address)?;
            if let Some(limiter) = &self.inner.login_limiter
                && limiter.check_key(&(c.user_name.clone(), address.to_owned())).is_err()
            {
                self.metrics().error("login_rate_limited");
                return Err(Status::resource_exhausted("too many login attempts for this user; wait a minute"));
            }
            let user =
                self.inner.backends.users.user_by_name(&c.user_name).await.map_err(|e| self.store_unavailable(e))?;
            let ok = self
                .inner
                .hasher
                .verify(c.password, user.as_ref().map(|u| u.password_hash.clone()))
                .await
                .map_err(|e| self.hashing_failed(e))?;
            match user {
                Some(user) if ok => self.new_session(SessionUser { user_id: user.id, user_name: user.name }).await,
                _ => Err(denied()),
            }
        })
        .await
    }

    async fn check_auth(&self, request: Request<TokenRequest>) -> Result<Response<UserReply>, Status> {
        let request = request.into_inner();
        self.observed("CheckAuth", async {
            let user = self.session(&request.auth_token).await?;
            Ok(UserReply { user_id: user.user_id, user_name: user.user_name, last_seq: 0 })
        })
        .await
    }

    async fn check_sessions(&self, request: Request<SessionsRequest>) -> Result<Response<SessionsReply>, Status> {
        let tokens = request.into_inner().auth_tokens;
        self.observed("CheckSessions", async {
            if tokens.len() > MAX_TOKENS_PER_SESSION_CHECK {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_TOKENS_PER_SESSION_CHECK} tokens a call, not {}",
                    tokens.len()
                )));
            }
            let live = self.inner.backends.sessions.live(&tokens).await.map_err(|e| self.sessions_unavailable(e))?;
            let ended_tokens = tokens.into_iter().zip(live).filter(|(_, live)| !live).map(|(token, _)| token).collect();
            Ok(SessionsReply { ended_tokens })
        })
        .await
    }

    async fn logout(&self, request: Request<TokenRequest>) -> Result<Response<Empty>, Status> {
        let token = request.into_inner().auth_token;
        self.observed("Logout", async {
            match self.inner.backends.sessions.revoke(&token).await {
                Ok(Some(_)) => {
                    self.inner.senders.remove(&token);
                    self.inner.backends.pusher.revoke(std::slice::from_ref(&token));
                    Ok(Empty {})
                }
                Ok(None) => Err(Status::unauthenticated("Session error")),
                Err(e) => Err(self.sessions_unavailable(e)),
            }
        })
        .await
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachReply>, Status> {
        let r = request.into_inner();
        self.observed("Attach", async {
            let user = self.session(&r.auth_token).await?;
            if r.server_id.is_empty() {
                return Err(Status::invalid_argument("serverId is required"));
            }
            let presence = &self.inner.backends.presence;
            let cap = self.inner.config.max_connections_per_user;
            let attached = presence
                .attach(user.user_id, &r.server_id, r.conn_id, cap)
                .await
                .map_err(|e| self.presence_unavailable(e))?;
            if !attached {
                self.metrics().error("connection_limit");
                return Err(Status::resource_exhausted(format!(
                    "you already hold {cap} connections; close one before opening another"
                )));
            }
            let registered = async {
                // Read after the route exists: see AttachReply.
                let inbox = self.last_seq(StreamId::Inbox(user.user_id)).await?;
                let room = match r.room_id {
                    0 => 0,
                    room => self.join_at(room, &user, &r.server_id, r.conn_id).await?,
                };
                Ok::<_, Status>((inbox, room))
            };
            let (inbox_last_seq, room_last_seq) = match registered.await {
                Ok(positions) => positions,
                Err(status) => {
                    // Nothing stays registered after a failed open; if this
                    // fails too, the node's close or lease releases it.
                    let _ = presence.detach(user.user_id, &r.server_id, r.conn_id).await;
                    return Err(status);
                }
            };
            Ok(AttachReply { user_id: user.user_id, user_name: user.user_name, inbox_last_seq, room_last_seq })
        })
        .await
    }

    async fn detach(&self, request: Request<DetachRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.observed("Detach", async {
            let user_id = match r.user_id {
                0 => self.session(&r.auth_token).await?.user_id,
                known => known,
            };
            let presence = &self.inner.backends.presence;
            for room in &r.room_ids {
                presence
                    .leave(*room, user_id, &r.server_id, r.conn_id)
                    .await
                    .map_err(|e| self.presence_unavailable(e))?;
                self.mark_dirty(*room);
            }
            presence.detach(user_id, &r.server_id, r.conn_id).await.map_err(|e| self.presence_unavailable(e))?;
            Ok(Empty {})
        })
        .await
    }

    async fn join_room(&self, request: Request<JoinRoomRequest>) -> Result<Response<UserReply>, Status> {
        let r = request.into_inner();
        self.observed("JoinRoom", async {
            let user = self.session(&r.auth_token).await?;
            if r.room_id == 0 {
                return Err(Status::invalid_argument("roomId is required"));
            }
            let last_seq = self.join_at(r.room_id, &user, &r.server_id, r.conn_id).await?;
            Ok(UserReply { user_id: user.user_id, user_name: user.user_name, last_seq })
        })
        .await
    }

    async fn leave_room(&self, request: Request<LeaveRoomRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.observed("LeaveRoom", async {
            self.inner
                .backends
                .presence
                .leave(r.room_id, r.user_id, &r.server_id, r.conn_id)
                .await
                .map_err(|e| self.presence_unavailable(e))?;
            self.mark_dirty(r.room_id);
            Ok(Empty {})
        })
        .await
    }

    async fn node_heartbeat(
        &self,
        request: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatReply>, Status> {
        let r = request.into_inner();
        self.observed("NodeHeartbeat", async {
            if r.server_id.is_empty() || r.boot_id.is_empty() {
                return Err(Status::invalid_argument("serverId and bootId are required"));
            }
            let presence = &self.inner.backends.presence;
            let expires = self.inner.config.lease_clock.now_unix_ms() + self.inner.config.node_lease.as_millis() as i64;
            let renew = || async {
                presence.renew_node(&r.server_id, &r.boot_id, expires).await.map_err(|e| self.presence_unavailable(e))
            };
            let lease = match renew().await? {
                NodeLease::Restarted => {
                    // The node restarted: what its previous boot held is gone.
                    // Dropped before this boot is leased, so a drop that fails
                    // is tried again on the next heartbeat.
                    let rooms = presence.drop_server(&r.server_id).await.map_err(|e| self.presence_unavailable(e))?;
                    rooms.into_iter().for_each(|room| self.mark_dirty(room));
                    renew().await?
                }
                held => held,
            };
            match lease {
                NodeLease::Held { epoch } => Ok(NodeHeartbeatReply { lease_epoch: epoch }),
                NodeLease::Restarted => Err(Status::failed_precondition(format!(
                    "another boot of connect node {} is running: give each node its own server id",
                    r.server_id
                ))),
            }
        })
        .await
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        let r = request.into_inner();
        self.observed("Send", self.send(r)).await
    }

    async fn push_room_count(&self, request: Request<RoomRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.observed("PushRoomCount", self.push_room_frame(r, RoomFrame::Count)).await
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        let r = request.into_inner();
        self.observed("History", self.history(r)).await
    }

    async fn push_room_info(&self, request: Request<RoomRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.observed("PushRoomInfo", self.push_room_frame(r, RoomFrame::Info)).await
    }
}

/// How often logic counts the live sessions.
const SESSION_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves logic's gRPC interface on `listener` until `shutdown`, flushing presence
/// updates in the background.
///
/// Also counts the live sessions every [`SESSION_COUNT_INTERVAL`] for the
/// `courier_sessions` gauge.
pub async fn serve(
    logic: Logic,
    listener: TcpListener,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let flusher = logic.clone();
    let flush_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(flusher.inner.config.presence_flush_interval);
        let mut sessions = tokio::time::interval(SESSION_COUNT_INTERVAL);
        loop {
            tokio::select! {
                _ = flush_stop.cancelled() => break,
                _ = sessions.tick() => flusher.count_sessions().await,
                _ = ticker.tick() => {
                    flusher.reap_lapsed_nodes().await;
                    flusher.flush_dirty_rooms().await;
                    // Forget limiter state of users who went quiet (bounded memory).
                    if let Some(l) = &flusher.inner.send_limiter { l.retain_recent(); }
                    if let Some(l) = &flusher.inner.login_limiter { l.retain_recent(); }
                    if let Some(l) = &flusher.inner.address_limiter { l.retain_recent(); }
                }
            }
        }
    });
    let secret = {
        let metrics = logic.inner.backends.metrics.clone();
        logic.inner.config.internal_auth.clone().counting_refusals(move || metrics.error("internal_call_refused"))
    };
    let mut builder = secret.server()?;
    ready.set(true);
    let result = builder
        .add_service(courier_proto::logic_server(logic, &secret))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await;
    ready.set(false);
    Ok(result?)
}
