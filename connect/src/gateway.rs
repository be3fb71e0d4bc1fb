//! What every connection does, whatever its transport: authenticate through
//! logic, register in the hub, act on client frames, and clean up.
//!
//! Frames from one connection are handled one after another (the transport's
//! reader awaits [`Gateway::handle`]), so a client's sends reach logic, and so the
//! queue, in the order the client sent them.

use std::sync::Arc;

use courier_proto::logic::logic_client::LogicClient;
use courier_proto::logic::{JoinRoomRequest, LeaveRoomRequest, SendRequest, TokenRequest};
use courier_telemetry::Metrics;
use courier_wire::frame::{AckFrame, ClientFrame, ErrorFrame, op, to_text};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

use crate::ConnectConfig;
use crate::hub::{Channel, Hub, Outbound, close_code};

/// Shared by every connection of this node.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub hub: Arc<Hub>,
    pub logic: LogicClient<GrpcChannel>,
    pub config: Arc<ConnectConfig>,
}

impl Gateway {
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.hub.metrics()
    }

    /// Authenticates `token`, registers a channel and joins `room` (0: none).
    /// The error text is fit to show the client.
    pub async fn open(
        &self,
        token: &str,
        room: u64,
        transport: &'static str,
        tx: mpsc::Sender<Outbound>,
    ) -> Result<Arc<Channel>, String> {
        let request = TokenRequest { auth_token: token.to_owned() };
        let user = self.logic.clone().check_auth(request).await.map_err(|s| status_text(&s))?.into_inner();
        let channel = Arc::new(Channel::new(
            self.hub.next_channel_id(),
            user.user_id,
            user.user_name,
            token.to_owned(),
            transport,
            tx,
        ));
        self.hub.add(channel.clone());
        if room != 0
            && let Err(reason) = self.join(&channel, room).await
        {
            self.hub.remove(&channel);
            return Err(reason);
        }
        Ok(channel)
    }

    /// Acts on one client frame; answers (ack, error) go to the channel's queue.
    pub async fn handle(&self, channel: &Arc<Channel>, text: &[u8]) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.metrics().error("bad_frame");
                channel.reply(to_text(&ErrorFrame::new(e.to_string(), None)), self.metrics());
                return;
            }
        };
        match frame.op {
            // gochat's TCP room send: the sender is the session's user, whatever
            // the frame claims.
            Some(op::ROOM) => {
                let room = frame.room_id.or_else(|| channel.rooms().first().copied()).unwrap_or(0);
                self.send(channel, room, 0, frame.msg.unwrap_or_default(), None).await;
            }
            Some(op::SEND) => {
                let (room, to_user) = match frame.to_user_id {
                    Some(user) if user != 0 => (frame.room_id.unwrap_or(0), user),
                    _ => (frame.room_id.unwrap_or(0), 0),
                };
                self.send(
                    channel,
                    room,
                    to_user,
                    frame.msg.unwrap_or_default(),
                    Some(frame.client_msg_id.unwrap_or_default()),
                )
                .await;
            }
            Some(op::JOIN) | Some(op::TCP_JOIN) => match frame.room_id {
                Some(room) if room != 0 => {
                    if let Err(reason) = self.join(channel, room).await {
                        self.error(channel, &reason, None);
                    }
                }
                _ => self.error(channel, "roomId is required", None),
            },
            Some(op::LEAVE) => match frame.room_id {
                Some(room) if room != 0 => self.leave(channel, room).await,
                _ => self.error(channel, "roomId is required", None),
            },
            Some(other) => self.error(channel, &format!("unsupported op {other}"), None),
            None => self.error(channel, "op is required", None),
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
    async fn join(&self, channel: &Arc<Channel>, room: u64) -> Result<(), String> {
        if !self.hub.join(channel, room) {
            return Ok(());
        }
        let request = JoinRoomRequest {
            auth_token: channel.auth_token.clone(),
            room_id: room,
            server_id: self.config.server_id.clone(),
        };
        match self.logic.clone().join_room(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                self.hub.leave(channel, room);
                if status.code() == Code::Unauthenticated {
                    channel.close(close_code::POLICY, "session expired or revoked; log in again");
                }
                Err(status_text(&status))
            }
        }
    }

    async fn leave(&self, channel: &Arc<Channel>, room: u64) {
        if self.hub.leave(channel, room) {
            self.leave_presence(channel.user_id, room).await;
        }
    }

    async fn leave_presence(&self, user_id: u64, room: u64) {
        let request = LeaveRoomRequest { user_id, room_id: room, server_id: self.config.server_id.clone() };
        if let Err(status) = self.logic.clone().leave_room(request).await {
            // Presence heals when this node's lease is reaped; report and go on.
            self.metrics().error("leave_room");
            tracing::warn!(user_id, room, error = %status, "could not release presence");
        }
    }

    /// Unregisters a finished connection and releases its presence.
    pub async fn close(&self, channel: &Arc<Channel>) {
        for room in self.hub.remove(channel) {
            self.leave_presence(channel.user_id, room).await;
        }
    }
}

/// A status as text for a client: the message logic chose, or the code.
pub fn status_text(status: &tonic::Status) -> String {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded if status.message().is_empty() => {
            "service unavailable, try again".to_owned()
        }
        _ if status.message().is_empty() => format!("{:?}", status.code()),
        _ => status.message().to_owned(),
    }
}
