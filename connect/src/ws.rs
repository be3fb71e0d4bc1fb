//! gochat's WebSocket transport at `/ws`.
//!
//! The first text message authenticates (`{"authToken": "...", "roomId": N}`);
//! later ones are client frames (Courier's ops 7–12). `conn` drives the
//! connection from there; a client that sends nothing (pongs included) for
//! `pong_timeout` is dropped.
//!
//! The listener speaks WebSocket only, so connections are upgraded by
//! `courier_wire::upgrade` and served by tokio-tungstenite rather than through
//! an HTTP router: a connection then costs the socket and tungstenite's state,
//! with no HTTP server's upgrade machinery kept beside it (and not the 4 KiB
//! head buffer tungstenite's own handshake would leave it). tungstenite keeps its write buffer at the size of
//! the largest frame it ever wrote, so a frame longer than [`FRAGMENT`] (an op 5
//! member list of a big room is ~6 KB) is sent as a fragmented message (RFC
//! 6455 §5.4: clients see one message), keeping an idle connection's buffer at
//! one fragment.

use std::sync::Arc;

use bytes::Bytes;
use courier_wire::request::Auth;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::ConnectState;
use crate::channel::{Channel, CloseReason, close_code};
use crate::conn::{self, Frames, Framing, Incoming};

const TRANSPORT: &str = "ws";

/// Longest frame sent whole; longer ones go out in fragments of this size.
pub(crate) const FRAGMENT: usize = 1024;

type Socket = Box<WebSocketStream<TcpStream>>;

/// Upgrades a new connection and serves it until it ends.
///
/// This future is the connection's task for as long as the connection lives,
/// and a future is as large as the largest it awaits: every stage is boxed,
/// so what an idle connection keeps here is a few pointers.
pub(crate) async fn serve(state: Arc<ConnectState>, stream: TcpStream) {
    let Some((socket, channel, auth)) = Box::pin(establish(&state, stream)).await else { return };
    let framing = Framing {
        transport: TRANSPORT,
        frame: fragments,
        ping: || Message::Ping(Bytes::new()),
        incoming,
        read_timeout: Some(state.gateway.config.pong_timeout),
        // tungstenite's buffers are out of reach; fragments bound the write one.
        idle: |_| {},
    };
    let mut socket = Box::pin(conn::drive(socket, channel.clone(), auth, &state, framing)).await;
    // Say goodbye with the reason.
    let _ = Box::pin(tokio::time::timeout(conn::CLOSE_DEADLINE, socket.send(goodbye(&channel)))).await;
    // Let the client go before releasing its presence, which waits for logic
    // (retried until logic answers, however long it is away).
    drop(socket);
    Box::pin(state.gateway.close(&channel)).await;
}

/// The close frame telling the client why its connection ended.
fn goodbye(channel: &Channel) -> Message {
    let reason = channel.close_reason().unwrap_or(CloseReason { code: close_code::NORMAL, text: String::new() });
    close(reason.code, &reason.text)
}

/// Upgrades the connection, reads the auth message and opens the channel;
/// `None` when any of it failed (the client was told why where it can be).
async fn establish(state: &ConnectState, stream: TcpStream) -> Option<(Socket, Arc<Channel>, Box<Auth>)> {
    let gateway = &state.gateway;
    let config = &gateway.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_write_buffer_size(config.ws_max_write_buffer)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let handshake = courier_wire::upgrade::accept(stream, "/ws", ws_config);
    // One allocation of its own, so futures taking it hold a pointer (see `conn`).
    let mut socket: Socket = match tokio::time::timeout(config.auth_timeout, Box::pin(handshake)).await {
        Ok(Ok(socket)) => Box::new(socket),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            gateway.metrics().error("ws_handshake");
            return None;
        }
        Err(_) => {
            gateway.metrics().error("ws_handshake");
            return None;
        }
    };

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
    let auth = match first.and_then(|text| Auth::from_websocket(text.as_bytes())) {
        Ok(auth) => Box::new(auth),
        Err(reason) => {
            refuse(socket, &reason).await;
            return None;
        }
    };
    // Calls to logic are large futures: boxed, so this one does not carry
    // their size while it waits for the client.
    match Box::pin(gateway.open(&auth, TRANSPORT)).await {
        Ok(channel) => {
            tracing::debug!(user = channel.user_id, "websocket authenticated");
            Some((socket, channel, auth))
        }
        Err(reason) => {
            refuse(socket, &reason).await;
            None
        }
    }
}

/// A frame as WebSocket messages: whole, or fragments of at most [`FRAGMENT`]
/// bytes split on character boundaries.
fn fragments(text: Utf8Bytes) -> Frames<Message> {
    if text.len() <= FRAGMENT {
        return Frames::one(Message::Text(text));
    }
    let bytes = Bytes::from(text);
    let mut pieces = Vec::with_capacity(bytes.len().div_ceil(FRAGMENT - 3));
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + FRAGMENT).min(bytes.len());
        // Back up to a character boundary (a UTF-8 continuation byte is 10xxxxxx).
        while end < bytes.len() && bytes[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let opcode = if start == 0 { Data::Text } else { Data::Continue };
        pieces.push(Message::Frame(Frame::message(bytes.slice(start..end), OpCode::Data(opcode), end == bytes.len())));
        start = end;
    }
    Frames::many(pieces)
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(truncate(reason, 120)) }))
}

/// What a WebSocket message means for the connection.
fn incoming(message: Result<Message, tokio_tungstenite::tungstenite::Error>) -> Incoming {
    match message {
        Ok(Message::Text(text)) => Incoming::Frame(text.into()),
        Ok(Message::Binary(_)) => Incoming::Unsupported("binary frames are not supported; send JSON text"),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Incoming::Nothing,
        Ok(Message::Close(_)) => Incoming::Closed,
        Err(e) => Incoming::Broken(format!("protocol error: {e}")),
    }
}

/// Closes a connection that failed to authenticate, saying why.
async fn refuse(mut socket: Socket, reason: &str) {
    tracing::debug!(reason, "websocket refused");
    let _ = tokio::time::timeout(conn::CLOSE_DEADLINE, socket.send(close(close_code::POLICY, reason))).await;
}

/// Close reasons must fit a control frame (125 bytes).
fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(frames: Frames<Message>) -> (Vec<usize>, String) {
        let mut sizes = Vec::new();
        let mut text = Vec::new();
        for (i, message) in frames.enumerate() {
            match message {
                Message::Text(whole) => return (vec![whole.len()], whole.to_string()),
                Message::Frame(frame) => {
                    let header = frame.header();
                    let want = if i == 0 { Data::Text } else { Data::Continue };
                    assert_eq!(header.opcode, OpCode::Data(want));
                    sizes.push(frame.payload().len());
                    let last = header.is_final;
                    text.extend_from_slice(frame.payload());
                    if last {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (sizes, String::from_utf8(text).expect("fragments split on character boundaries"))
    }

    #[test]
    fn long_frames_go_out_in_fragments_that_reassemble_to_the_frame() {
        let short = "x".repeat(FRAGMENT);
        assert_eq!(reassemble(fragments(Utf8Bytes::from(short.clone()))), (vec![FRAGMENT], short));
        // Multi-byte characters straddle every fragment boundary.
        let long: String = "é€😀a".repeat(700);
        let (sizes, text) = reassemble(fragments(Utf8Bytes::from(long.clone())));
        assert_eq!(text, long);
        let (last, rest) = sizes.split_last().expect("fragments");
        assert!(!rest.is_empty() && rest.iter().all(|size| *size <= FRAGMENT && *size > FRAGMENT - 4), "{sizes:?}");
        assert!(*last <= FRAGMENT);
    }
}
