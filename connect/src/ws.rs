//! gochat's WebSocket transport at `/ws`.
//!
//! The first text message authenticates (`{"authToken": "...", "roomId": N}`);
//! later ones are client frames (Courier's ops 7–12). The shared writer (see
//! `writer`) sends frames and pings; the reader drops a connection that sends
//! nothing (pongs included) for `pong_timeout`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use courier_wire::frame::{ClientFrame, ErrorFrame, to_text};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::ConnectState;
use crate::hub::{Channel, CloseReason, Outbound, close_code};
use crate::writer::{self, Framing};

const TRANSPORT: &str = "ws";

pub(crate) async fn upgrade(State(state): State<ConnectState>, ws: WebSocketUpgrade) -> Response {
    let config = &state.gateway.config;
    ws.read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_write_buffer_size(config.ws_max_write_buffer)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            tracker.track_future(serve(state, socket))
        })
}

async fn serve(state: ConnectState, socket: WebSocket) {
    let gateway = &state.gateway;
    let config = gateway.config.clone();
    let (mut sink, mut stream) = socket.split();

    // The auth message.
    let first = tokio::time::timeout(config.auth_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => return Err("the auth message must be a text frame".to_owned()),
                _ => return Err("connection closed before the auth message".to_owned()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no auth message in time".to_owned()));
    let auth = first.and_then(|text| ClientFrame::parse(text.as_bytes()).map_err(|e| e.to_string()));
    let auth = match auth {
        Ok(frame) if frame.auth_token.as_deref().is_some_and(|t| !t.is_empty()) && frame.room_id.unwrap_or(0) != 0 => {
            frame
        }
        Ok(_) => return refuse(&mut sink, "the auth message needs authToken and a non-zero roomId").await,
        Err(reason) => return refuse(&mut sink, &reason).await,
    };
    let (tx, rx) = mpsc::channel(config.outbound_capacity);
    // The large, rarely running futures (calls to logic) are boxed, so that
    // the connection's task, alive for hours, only holds their size while
    // they run.
    let channel = match Box::pin(gateway.open(&auth, TRANSPORT, tx)).await {
        Ok(channel) => channel,
        Err(reason) => return refuse(&mut sink, &reason).await,
    };
    tracing::debug!(user = channel.user_id, "websocket authenticated");

    let writer = tokio::spawn(write_loop(sink, rx, channel.clone(), state.clone()));
    Box::pin(gateway.resume(&channel, &auth)).await;
    drop(auth);
    let mut session_check = gateway.session_check_timer();
    loop {
        let next = tokio::select! {
            _ = channel.closing() => break,
            _ = session_check.tick() => {
                Box::pin(gateway.check_session(&channel)).await;
                continue;
            }
            next = tokio::time::timeout(config.pong_timeout, stream.next()) => next,
        };
        match next {
            Ok(Some(Ok(Message::Text(text)))) => Box::pin(gateway.handle(&channel, text.as_bytes())).await,
            Ok(Some(Ok(Message::Binary(_)))) => {
                channel.reply(
                    to_text(&ErrorFrame::new("binary frames are not supported; send JSON text", None)),
                    gateway.metrics(),
                );
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(_))) | None) => {
                channel.close(close_code::NORMAL, "closed by the client");
            }
            Ok(Some(Err(e))) => {
                // Oversized or malformed frames end here, for this connection only.
                channel.close(close_code::POLICY, &format!("protocol error: {e}"));
            }
            Err(_) => {
                channel.close(close_code::POLICY, "no answer to heartbeat in time");
            }
        }
    }
    let _ = writer.await;
    Box::pin(gateway.close(&channel)).await;
}

/// Closes a connection that failed to authenticate, saying why.
async fn refuse(sink: &mut SplitSink<WebSocket, Message>, reason: &str) {
    tracing::debug!(reason, "websocket refused");
    let frame = CloseFrame { code: close_code::POLICY, reason: Utf8Bytes::from(truncate(reason, 120)) };
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(Some(frame)))).await;
}

/// Close reasons must fit a control frame (125 bytes).
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

async fn write_loop(
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outbound>,
    channel: Arc<Channel>,
    state: ConnectState,
) {
    let framing = Framing { transport: TRANSPORT, frame: Message::Text, ping: || Message::Ping(Default::default()) };
    let mut sink = writer::write_loop(sink, rx, channel.clone(), state, framing).await;
    // Say goodbye with the reason.
    let reason = channel.close_reason().unwrap_or(CloseReason { code: close_code::NORMAL, text: String::new() });
    let frame = CloseFrame { code: reason.code, reason: Utf8Bytes::from(truncate(&reason.text, 120)) };
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(Some(frame)))).await;
}
