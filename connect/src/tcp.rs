//! gochat's TCP transport: `v1` frames (see `courier_wire::tcp`).
//!
//! The first frame must be op 6 with `authToken` and a non-zero `roomId`; later
//! frames are op 3 room sends (gochat) or Courier's ops, and need not repeat the
//! token. The server writes a `ping msg` frame every `ping_interval`, as gochat
//! does; gochat's TCP clients send no heartbeat of their own, so a silent client
//! is not dropped. A malformed frame (bad version bytes, a length below 4) gets an
//! op 9 error and closes this connection only.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use courier_wire::frame::{ErrorFrame, to_text};
use courier_wire::request::Auth;
use courier_wire::tcp::{FrameError, V1Codec};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::ConnectState;
use crate::channel::{Channel, close_code};
use crate::conn::{self, Frames, Framing, Incoming};

const TRANSPORT: &str = "tcp";
const PING: &[u8] = b"ping msg";

type Socket = Box<Framed<TcpStream, V1Codec>>;

/// Serves a new connection until it ends. Every stage is boxed, as in
/// `ws::serve`: this future lives as long as the connection.
pub(crate) async fn serve(state: Arc<ConnectState>, stream: TcpStream) {
    let Some((socket, channel, auth)) = Box::pin(establish(&state, stream)).await else { return };
    let framing = Framing {
        transport: TRANSPORT,
        frame: |text| Frames::one(Bytes::from(text)),
        ping: || Bytes::from_static(PING),
        incoming,
        read_timeout: None,
        idle: release_buffers,
    };
    let socket = Box::pin(conn::drive(socket, channel.clone(), auth, &state, framing)).await;
    let _ = Box::pin(tokio::time::timeout(conn::CLOSE_DEADLINE, goodbye(socket, &channel))).await;
    // The socket is closed: release the presence, which waits for logic
    // (retried until logic answers, however long it is away).
    Box::pin(state.gateway.close(&channel)).await;
}

/// TCP has no close frame: tells the client why in an op 9 error, then closes.
async fn goodbye(mut socket: Socket, channel: &Channel) -> Result<(), FrameError> {
    if let Some(reason) = channel.close_reason().filter(|r| r.code != close_code::NORMAL) {
        socket.feed(Bytes::from(to_text(&ErrorFrame::new(reason.text, None)))).await?;
    }
    SinkExt::<Bytes>::close(&mut socket).await
}

/// Reads the op 6 frame and opens the channel; `None` when that failed (the
/// client was told why).
async fn establish(state: &ConnectState, stream: TcpStream) -> Option<(Socket, Arc<Channel>, Box<Auth>)> {
    let gateway = &state.gateway;
    // One allocation of its own, so futures taking it hold a pointer (see `conn`).
    let mut socket = Box::new(Framed::with_capacity(stream, V1Codec, BUFFER));
    let first = tokio::time::timeout(gateway.config.auth_timeout, socket.next()).await;
    let auth = match first {
        Ok(Some(Ok(payload))) => Auth::from_tcp(&payload),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => return None,
        Err(_) => Err("no op 6 frame in time".to_owned()),
    };
    let auth = match auth {
        Ok(auth) => Box::new(auth),
        Err(reason) => {
            refuse(socket, &reason).await;
            return None;
        }
    };
    // Boxed: see `conn` on the size of calls to logic.
    match Box::pin(gateway.open(&auth, TRANSPORT)).await {
        Ok(channel) => Some((socket, channel, auth)),
        Err(reason) => {
            refuse(socket, &reason).await;
            None
        }
    }
}

/// Read and write buffers a connection starts with (tokio-util's default is 8
/// KiB each; gochat's client frames and most pushes are far smaller).
const BUFFER: usize = 256;

/// Gives back buffers a large frame grew, once nothing is pending in them.
fn release_buffers(socket: &mut Socket) {
    shrink(socket.read_buffer_mut());
    shrink(socket.write_buffer_mut());
}

fn shrink(buffer: &mut BytesMut) {
    if buffer.is_empty() && buffer.capacity() > BUFFER {
        *buffer = BytesMut::with_capacity(BUFFER);
    }
}

/// What a decoded `v1` frame means for the connection.
fn incoming(frame: Result<BytesMut, FrameError>) -> Incoming {
    match frame {
        Ok(payload) => Incoming::Frame(payload.freeze()),
        Err(e) => Incoming::Broken(e.to_string()),
    }
}

async fn refuse(mut socket: Socket, reason: &str) {
    let text = to_text(&ErrorFrame::new(reason, None));
    let goodbye = async {
        socket.send(Bytes::from(text)).await?;
        SinkExt::<Bytes>::close(&mut socket).await
    };
    let _ = tokio::time::timeout(conn::CLOSE_DEADLINE, goodbye).await;
}
