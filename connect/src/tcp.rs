//! gochat's TCP transport: `v1` frames (see `courier_wire::tcp`).
//!
//! The first frame must be op 6 with `authToken` and a non-zero `roomId`; later
//! frames are op 3 room sends (gochat) or Courier's ops, and need not repeat the
//! token. The server writes a `ping msg` frame every `ping_interval`, as gochat
//! does; gochat's TCP clients send no heartbeat of their own, so a silent client
//! is not dropped. A malformed frame (bad version bytes, a length below 4) gets an
//! op 9 error and closes this connection only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_wire::frame::{ClientFrame, ErrorFrame, op, to_text};
use courier_wire::tcp::V1Codec;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::ConnectState;
use crate::hub::{Channel, Outbound, close_code};
use crate::writer::{self, Framing};

const TRANSPORT: &str = "tcp";
const PING: &[u8] = b"ping msg";

type Sink = SplitSink<Framed<TcpStream, V1Codec>, Bytes>;

/// Accepts TCP clients until `shutdown`.
pub(crate) async fn accept_loop(listener: TcpListener, state: ConnectState, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                state.tracker.spawn(serve(state.clone(), stream));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                state.gateway.metrics().error("accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(state: ConnectState, stream: TcpStream) {
    let gateway = &state.gateway;
    let config = gateway.config.clone();
    let (mut sink, mut frames) = Framed::new(stream, V1Codec).split();

    let first = tokio::time::timeout(config.auth_timeout, frames.next()).await;
    let frame = match first {
        Ok(Some(Ok(payload))) => ClientFrame::parse(&payload).map_err(|e| e.to_string()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => return,
        Err(_) => Err("no op 6 frame in time".to_owned()),
    };
    let auth = match frame {
        Ok(f) if f.op == Some(op::TCP_JOIN) => {
            if f.auth_token.as_deref().is_some_and(|t| !t.is_empty()) && f.room_id.unwrap_or(0) != 0 {
                f
            } else {
                return refuse(&mut sink, "op 6 needs authToken and a non-zero roomId").await;
            }
        }
        Ok(_) => return refuse(&mut sink, "the first frame must be op 6 (authenticate and join)").await,
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
            next = frames.next() => next,
        };
        match next {
            Some(Ok(payload)) => Box::pin(gateway.handle(&channel, &payload)).await,
            Some(Err(e)) => channel.close(close_code::POLICY, &e.to_string()),
            None => channel.close(close_code::NORMAL, "closed by the client"),
        }
    }
    let _ = writer.await;
    Box::pin(gateway.close(&channel)).await;
}

async fn refuse(sink: &mut Sink, reason: &str) {
    let text = to_text(&ErrorFrame::new(reason, None));
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Bytes::from(text))).await;
    let _ = sink.close().await;
}

async fn write_loop(sink: Sink, rx: mpsc::Receiver<Outbound>, channel: Arc<Channel>, state: ConnectState) {
    let framing = Framing { transport: TRANSPORT, frame: Bytes::from, ping: || Bytes::from_static(PING) };
    let mut sink = writer::write_loop(sink, rx, channel.clone(), state, framing).await;
    // TCP has no close frame: tell the client why in an op 9 error, then close.
    if let Some(reason) = channel.close_reason().filter(|r| r.code != close_code::NORMAL) {
        let _ = sink.feed(Bytes::from(to_text(&ErrorFrame::new(reason.text, None)))).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}
