//! The connect tier's gRPC push service: frames from task (messages) and logic
//! (counts, member lists) are queued to the local channels they target, and
//! connections whose session ended are closed.

use std::sync::Arc;

use courier_model::StreamId;
use courier_proto::connect::connect_server::Connect;
use courier_proto::connect::{PushReply, PushRequest, delivery::Target};
use courier_telemetry::{ResultLabel, Stage};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::{Request, Response, Status};

use crate::hub::{self, Hub, Pushed};

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
        let request = request.into_inner();
        let received = courier_ids::now_unix_us();
        let matched = metrics.pushed_frames.get_or_create(&ResultLabel { result: "matched" }).clone();
        let unmatched = metrics.pushed_frames.get_or_create(&ResultLabel { result: "unmatched" }).clone();
        let mut delivering = self.hub.deliver();
        let closed = if request.revoked_tokens.is_empty() { 0 } else { delivering.revoke(&request.revoked_tokens) };
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
            let target = match delivery.target {
                Some(Target::RoomId(room)) => hub::Target::Room(room),
                Some(Target::UserId(user)) => hub::Target::User(user),
                None => continue,
            };
            let text = Utf8Bytes::from(delivery.body);
            let frame = Pushed { target, stream, seq: delivery.seq, text, admitted_us: delivery.admitted_us };
            let (taken, found) = delivering.offer(frame);
            queued += taken;
            if found { &matched } else { &unmatched }.inc();
        }
        drop(delivering);
        Ok(Response::new(PushReply { queued, closed }))
    }
}
