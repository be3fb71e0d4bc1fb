//! Drives one authenticated connection, for both transports, in a single task.
//!
//! Connect holds tens of thousands of mostly idle connections, so what one costs
//! while idle is what the node costs. Hence one task per connection (a task is
//! an allocation holding its future; a reader and a writer would be two, plus
//! the lock a split socket shares), and the large futures that run now and then
//! (a send, a join: calls to logic) are boxed while they run
//! instead of enlarging every connection's future. The transports box the
//! socket and this driver too: an async fn that takes a value and awaits a
//! future built from it keeps both copies in its state, so passing big values
//! down by value would store them twice for the connection's whole life.
//!
//! The loop waits on, in this order: the client frame being handled; a gap in
//! a stream's pushes being filled; the channel's attention (its close, frames
//! queued for the client — every frame waiting is written before one flush —,
//! a new gap: one wait for the three, see `Channel::attention`); the timer; the
//! next client frame. Every wait the loop is parked on is part of the future
//! for the connection's whole life, and so is the largest thing it awaits, so
//! writes are boxed while they run. One timer serves the heartbeat and the
//! silence limit (it sleeps until the earlier of them), since a timer costs about a
//! hundred bytes and most connections only ever wait. Sessions are re-checked
//! by the node for all its connections at once (`Gateway::check_sessions`),
//! not by each connection. A
//! client frame is read only once the previous one is handled, so one
//! connection's sends reach logic in order, while pushes keep being written
//! during a slow send. A write that takes longer than `write_timeout` ends the
//! connection.
//! When the channel closes, what is still queued (an error explaining the close,
//! say) is written within [`CLOSE_DEADLINE`] and the socket handed back for the
//! transport's goodbye, itself bounded the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_telemetry::TransportLabel;
use courier_wire::frame::{ErrorFrame, to_text};
use courier_wire::request::Auth;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ConnectState;
use crate::channel::{Attention, Channel, close_code};
use crate::outbox::Outbound;

/// What the transport made of one item read from the socket.
pub(crate) enum Incoming {
    /// A client frame's JSON.
    Frame(Bytes),
    /// A frame this transport does not accept (a WebSocket binary frame).
    Unsupported(&'static str),
    /// Nothing for the application (a WebSocket ping or pong).
    Nothing,
    /// The client closed the connection.
    Closed,
    /// The client broke the protocol; the connection ends with this reason.
    Broken(String),
}

/// The socket items one frame is written as: one, or a fragmented message.
pub(crate) enum Frames<T> {
    One(Option<T>),
    Many(std::vec::IntoIter<T>),
}

impl<T> Frames<T> {
    pub(crate) fn one(item: T) -> Self {
        Self::One(Some(item))
    }

    pub(crate) fn many(items: Vec<T>) -> Self {
        Self::Many(items.into_iter())
    }
}

impl<T> Iterator for Frames<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Self::One(item) => item.take(),
            Self::Many(items) => items.next(),
        }
    }
}

/// How a transport reads and writes.
pub(crate) struct Framing<S, T, I> {
    pub(crate) transport: &'static str,
    pub(crate) frame: fn(Utf8Bytes) -> Frames<T>,
    pub(crate) ping: fn() -> T,
    pub(crate) incoming: fn(I) -> Incoming,
    /// A client silent this long is dropped (WebSocket clients answer pings;
    /// gochat's TCP clients send nothing, so TCP has no limit).
    pub(crate) read_timeout: Option<Duration>,
    /// Called when everything queued was written: a chance to give back
    /// buffers a large frame grew.
    pub(crate) idle: fn(&mut S),
}

/// A boxed piece of work on behalf of the client.
type Work<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Serves `channel` over `socket` until the channel closes; returns the socket.
/// `auth` is the authentication frame, whose recovery requests run first.
pub(crate) async fn drive<S, T, I>(
    mut socket: S,
    channel: Arc<Channel>,
    auth: Box<Auth>,
    state: &ConnectState,
    framing: Framing<S, T, I>,
) -> S
where
    S: Sink<T> + Stream<Item = I> + Unpin,
{
    let gateway = &state.gateway;
    let config = &gateway.config;
    let metrics = gateway.metrics();
    let deliveries = metrics.deliveries.get_or_create(&TransportLabel { transport: framing.transport }).clone();
    let now = tokio::time::Instant::now();
    let mut next_ping = now + config.ping_interval;
    // When the client must have said something by; moved only by what it sends,
    // not by the loop waking for pushes or pings.
    let mut silent_until = framing.read_timeout.map(|limit| now + limit);
    let timer = tokio::time::sleep_until(earliest(next_ping, silent_until));
    tokio::pin!(timer);
    let mut handling: Option<Work<'_>> = {
        let channel = channel.clone();
        Some(Box::pin(async move { gateway.resume(&channel, &auth).await }))
    };
    let mut filling: Option<Work<'_>> = None;
    loop {
        let gaps = filling.is_none();
        tokio::select! {
            biased;
            _ = async { if let Some(work) = handling.as_mut() { work.await } }, if handling.is_some() => {
                handling = None;
            }
            _ = async { if let Some(work) = filling.as_mut() { work.await } }, if filling.is_some() => {
                filling = None;
            }
            attention = channel.attention(64, gaps) => match attention {
                Attention::Closing => break,
                Attention::Frames(batch) => {
                    let texts = batch.frames.iter().map(|Outbound::Frame { text, .. }| text.clone());
                    match Box::pin(tokio::time::timeout(config.write_timeout, write(&mut socket, texts, framing.frame))).await {
                        Ok(Ok(())) => {
                            let now = courier_ids::now_unix_us();
                            for Outbound::Frame { admitted_us, .. } in &batch.frames {
                                deliveries.inc();
                                metrics.delivered(*admitted_us, now);
                            }
                            if batch.emptied {
                                (framing.idle)(&mut socket);
                            }
                        }
                        Ok(Err(_)) => channel.close(close_code::GOING_AWAY, "write failed"),
                        Err(_) => channel.close(close_code::TRY_AGAIN_LATER, "write timed out"),
                    }
                }
                Attention::Gap(stream, after) => {
                    let channel = channel.clone();
                    filling = Some(Box::pin(async move { gateway.fill_gap(&channel, stream, after).await }));
                }
            },
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if silent_until.is_some_and(|deadline| now >= deadline) {
                    channel.close(close_code::POLICY, "no answer to heartbeat in time");
                    continue;
                }
                if now >= next_ping {
                    next_ping = now + config.ping_interval;
                    let sent = tokio::time::timeout(config.write_timeout, socket.send((framing.ping)())).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        channel.close(close_code::GOING_AWAY, "heartbeat write failed");
                    }
                }
                timer.as_mut().reset(earliest(next_ping, silent_until));
            }
            read = socket.next(), if handling.is_none() => {
                // The timer still wakes at the old limit, finds it moved, and
                // sleeps again: one wake per limit, not a reset per frame.
                silent_until = framing.read_timeout.map(|limit| tokio::time::Instant::now() + limit);
                match read.map(framing.incoming) {
                    Some(Incoming::Frame(text)) => {
                        let channel = channel.clone();
                        handling = Some(Box::pin(async move { gateway.handle(&channel, &text).await }));
                    }
                    Some(Incoming::Unsupported(why)) => {
                        channel.reply(to_text(&ErrorFrame::new(why, None)), metrics);
                    }
                    Some(Incoming::Nothing) => {}
                    Some(Incoming::Closed) | None => channel.close(close_code::NORMAL, "closed by the client"),
                    // Oversized or malformed frames end here, for this connection only.
                    Some(Incoming::Broken(reason)) => channel.close(close_code::POLICY, &reason),
                }
            }
        }
    }
    drop((handling, filling));
    // The last frames (an error explaining the close, say) get one deadline
    // in all: a client that stopped reading must not keep this task, and with
    // it the connection's presence and routes, alive.
    let texts = channel.remaining_frames().into_iter().map(|Outbound::Frame { text, .. }| text);
    let _ = Box::pin(tokio::time::timeout(CLOSE_DEADLINE, write(&mut socket, texts, framing.frame))).await;
    socket
}

/// Writes `texts` as the transport frames them, then flushes. Boxed by the
/// caller with its deadline: it runs now and then, and a connection's future
/// is as large as the largest thing it awaits.
async fn write<S, T>(
    socket: &mut S,
    texts: impl Iterator<Item = Utf8Bytes>,
    frame: fn(Utf8Bytes) -> Frames<T>,
) -> Result<(), S::Error>
where
    S: Sink<T> + Unpin,
{
    for text in texts {
        for item in frame(text) {
            socket.feed(item).await?;
        }
    }
    socket.flush().await
}

/// How long a closing connection may take to write what is still queued.
pub(crate) const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// The earlier of the timer's deadlines.
fn earliest(ping: tokio::time::Instant, silent_until: Option<tokio::time::Instant>) -> tokio::time::Instant {
    silent_until.map_or(ping, |silent| ping.min(silent))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::ConnectConfig;

    /// A client that stopped reading: nothing can be written, nothing arrives.
    struct Stuck;

    impl Sink<String> for Stuck {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: String) -> Result<(), Self::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    impl Stream for Stuck {
        type Item = ();
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<()>> {
            Poll::Pending
        }
    }

    /// A client that reads everything and says nothing; it counts the pings.
    struct Silent(Arc<std::sync::atomic::AtomicUsize>);

    impl Sink<String> for Silent {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: String) -> Result<(), Self::Error> {
            if item == "ping" {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Stream for Silent {
        type Item = ();
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<()>> {
            Poll::Pending
        }
    }

    fn auth() -> Box<Auth> {
        Box::new(Auth { token: "token".into(), room: 1, since: None, inbox_since: None })
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_dropped_at_the_silence_limit() {
        // gochat's heartbeat: a ping every 54 s, dropped after 60 s of silence.
        let config = ConnectConfig::default();
        let (ping, silence) = (config.ping_interval, config.pong_timeout);
        let state = ConnectState {
            gateway: crate::gateway::tests::gateway_without_logic(config),
            tracker: tokio_util::task::TaskTracker::new(),
        };
        let channel = Arc::new(Channel::new(1, 7, "token".into(), "ws", 64));
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let framing = Framing {
            transport: "ws",
            frame: |text: Utf8Bytes| Frames::one(text.to_string()),
            ping: || "ping".to_owned(),
            incoming: |()| Incoming::Nothing,
            read_timeout: Some(silence),
            idle: |_: &mut Silent| {},
        };
        let started = tokio::time::Instant::now();
        drive(Silent(pings.clone()), channel.clone(), auth(), &state, framing).await;
        let lasted = started.elapsed();
        assert!(lasted >= silence && lasted < silence + Duration::from_secs(1), "{lasted:?}");
        assert!(ping < silence);
        assert_eq!(pings.load(std::sync::atomic::Ordering::Relaxed), 1, "pinged once, at {ping:?}");
        let reason = channel.close_reason().expect("closed");
        assert_eq!((reason.code, reason.text.as_str()), (close_code::POLICY, "no answer to heartbeat in time"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stopped_reading_cannot_hold_its_connection_open() {
        let gateway = crate::gateway::tests::gateway_without_logic(ConnectConfig::default());
        let metrics = gateway.metrics().clone();
        let state = ConnectState { gateway, tracker: tokio_util::task::TaskTracker::new() };
        let channel = Arc::new(Channel::new(1, 7, "token".into(), "tcp", 64));
        for _ in 0..3 {
            channel.reply("{}".into(), &metrics);
        }
        channel.close(close_code::TRY_AGAIN_LATER, "outbound queue full");
        let framing = Framing {
            transport: "tcp",
            frame: |text: Utf8Bytes| Frames::one(text.to_string()),
            ping: String::new,
            incoming: |()| Incoming::Nothing,
            read_timeout: None,
            idle: |_: &mut Stuck| {},
        };
        let driven = drive(Stuck, channel, auth(), &state, framing);
        let ended = tokio::time::timeout(CLOSE_DEADLINE + Duration::from_secs(1), driven).await;
        assert!(ended.is_ok(), "the close path gave up on the stuck socket within its deadline");
    }
}
