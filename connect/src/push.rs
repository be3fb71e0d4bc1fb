//! The connect tier's gRPC push service: frames from task (messages) and logic
//! (counts, member lists) are queued to the local channels they target, and
//! connections whose session ended are closed.

use std::collections::HashMap;
use std::sync::Arc;

use courier_model::StreamId;
use courier_proto::connect::connect_server::Connect;
use courier_proto::connect::{PushReply, PushRequest, delivery::Target};
use courier_telemetry::{ResultLabel, Stage};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::{Request, Response, Status};

use crate::channel::{Channel, close_code};
use crate::hub::Hub;

/// Queues pushed frames to this node's channels.
#[derive(Debug, Clone)]
pub struct PushService {
    pub hub: Arc<Hub>,
}

#[tonic::async_trait]
impl Connect for PushService {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        let metrics = self.hub.metrics().clone();
        let mut queued = 0u64;
        // A batch often holds several frames for one room: look its channels up once.
        let mut rooms: HashMap<u64, Vec<Arc<Channel>>> = HashMap::new();
        let request = request.into_inner();
        let received = courier_ids::now_unix_us();
        let mut closed = 0u64;
        if !request.revoked_tokens.is_empty() {
            for channel in self.hub.all() {
                if request.revoked_tokens.contains(&channel.auth_token) {
                    channel
                        .close(close_code::POLICY, "session ended (logged out or signed in elsewhere); log in again");
                    closed += 1;
                }
            }
        }
        let matched = metrics.pushed_frames.get_or_create(&ResultLabel { result: "matched" }).clone();
        let unmatched = metrics.pushed_frames.get_or_create(&ResultLabel { result: "unmatched" }).clone();
        let mut user_channels: Vec<Arc<Channel>>;
        for delivery in request.deliveries {
            metrics.reached(Stage::Received, delivery.admitted_us, received);
            // Only message frames name a stream; a name this build cannot read
            // is a sender's bug, and its frame cannot be sequenced: drop it.
            let stream = match delivery.stream.as_str() {
                "" => None,
                name => match name.parse::<StreamId>() {
                    Ok(stream) => Some(stream),
                    Err(e) => {
                        tracing::warn!(error = %e, "a pushed frame names no stream; dropped");
                        unmatched.inc();
                        continue;
                    }
                },
            };
            let text = Utf8Bytes::from(delivery.body);
            let channels: &[Arc<Channel>] = match delivery.target {
                Some(Target::RoomId(room)) => rooms.entry(room).or_insert_with(|| self.hub.room(room)),
                Some(Target::UserId(user)) => {
                    user_channels = self.hub.user(user);
                    &user_channels
                }
                None => continue,
            };
            if channels.is_empty() { &unmatched } else { &matched }.inc();
            for channel in channels {
                if channel.offer(stream, delivery.seq, &text, delivery.admitted_us, &metrics) {
                    queued += 1;
                }
            }
        }
        Ok(Response::new(PushReply { queued, closed }))
    }
}
