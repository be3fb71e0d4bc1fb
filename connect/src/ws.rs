//! gochat's WebSocket transport at `/ws`.
//!
//! The first text message authenticates (`{"authToken": "...", "roomId": N}`);
//! later ones are client frames (Courier's ops 7–12). `conn` drives the
//! connection from there; a client that sends nothing (pongs included) for
//! `pong_timeout` is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use courier_wire::frame::ClientFrame;
use futures_util::StreamExt;

use crate::ConnectState;
use crate::conn::{self, Framing, Incoming};
use crate::hub::{CloseReason, close_code};

const TRANSPORT: &str = "ws";

pub(crate) async fn upgrade(State(state): State<Arc<ConnectState>>, ws: WebSocketUpgrade) -> Response {
    let config = &state.gateway.config;
    ws.read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_write_buffer_size(config.ws_max_write_buffer)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            // The socket lives in one allocation of its own: futures that take
            // it by value then hold a pointer, not another copy (see `conn`).
            tracker.track_future(serve(state, Box::new(socket)))
        })
}

async fn serve(state: Arc<ConnectState>, mut socket: Box<WebSocket>) {
    let gateway = &state.gateway;
    let config = gateway.config.clone();

    // The auth message.
    let first = tokio::time::timeout(config.auth_timeout, async {
        loop {
            match socket.next().await {
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
            Box::new(frame)
        }
        Ok(_) => return refuse(socket, "the auth message needs authToken and a non-zero roomId").await,
        Err(reason) => return refuse(socket, &reason).await,
    };
    // Calls to logic are large futures: boxed, so the connection's task, alive
    // for hours, does not carry their size.
    let channel = match Box::pin(gateway.open(&auth, TRANSPORT)).await {
        Ok(channel) => channel,
        Err(reason) => return refuse(socket, &reason).await,
    };
    tracing::debug!(user = channel.user_id, "websocket authenticated");

    let framing = Framing {
        transport: TRANSPORT,
        frame: Message::Text,
        ping: || Message::Ping(Default::default()),
        incoming,
        read_timeout: Some(config.pong_timeout),
    };
    let mut socket = Box::pin(conn::drive(socket, channel.clone(), auth, &state, framing)).await;
    // Say goodbye with the reason.
    let reason = channel.close_reason().unwrap_or(CloseReason { code: close_code::NORMAL, text: String::new() });
    let frame = CloseFrame { code: reason.code, reason: Utf8Bytes::from(truncate(&reason.text, 120)) };
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(Some(frame)))).await;
    Box::pin(gateway.close(&channel)).await;
}

/// What a WebSocket message means for the connection.
fn incoming(message: Result<Message, axum::Error>) -> Incoming {
    match message {
        Ok(Message::Text(text)) => Incoming::Frame(text.into()),
        Ok(Message::Binary(_)) => Incoming::Unsupported("binary frames are not supported; send JSON text"),
        Ok(Message::Ping(_) | Message::Pong(_)) => Incoming::Nothing,
        Ok(Message::Close(_)) => Incoming::Closed,
        Err(e) => Incoming::Broken(format!("protocol error: {e}")),
    }
}

/// Closes a connection that failed to authenticate, saying why.
async fn refuse(mut socket: Box<WebSocket>, reason: &str) {
    tracing::debug!(reason, "websocket refused");
    let frame = CloseFrame { code: close_code::POLICY, reason: Utf8Bytes::from(truncate(reason, 120)) };
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(Some(frame)))).await;
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
