//! The writing half of a connection, shared by both transports.
//!
//! One task owns the sink. It drains the channel's bounded queue, writing every
//! frame already waiting before a single flush (one syscall for a burst of room
//! traffic), sends a heartbeat every `ping_interval`, and drops the connection when
//! a write takes longer than `write_timeout`. When the channel closes it writes
//! what is still queued (an error explaining the close, say) and hands the sink
//! back for the transport's own goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use courier_telemetry::TransportLabel;
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;

use crate::ConnectState;
use crate::hub::{Channel, Outbound, close_code};

/// How a transport puts frames on the wire.
pub(crate) struct Framing<T> {
    pub(crate) transport: &'static str,
    pub(crate) frame: fn(Utf8Bytes) -> T,
    pub(crate) ping: fn() -> T,
}

/// Writes the channel's frames until it closes; returns the sink.
pub(crate) async fn write_loop<S, T>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outbound>,
    channel: Arc<Channel>,
    state: ConnectState,
    framing: Framing<T>,
) -> S
where
    S: Sink<T> + Unpin,
{
    let config = state.gateway.config.clone();
    let metrics = state.gateway.metrics().clone();
    let deliveries = metrics.deliveries.get_or_create(&TransportLabel { transport: framing.transport }).clone();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + config.ping_interval, config.ping_interval);
    // Grown on first use: an idle connection should not pay for a burst buffer.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = channel.closing() => break,
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                let write = async {
                    for Outbound::Frame { text, .. } in &batch {
                        sink.feed((framing.frame)(text.clone())).await?;
                    }
                    sink.flush().await
                };
                match tokio::time::timeout(config.write_timeout, write).await {
                    Ok(Ok(())) => {
                        let now = courier_ids::now_unix_ms();
                        for Outbound::Frame { admitted_ms, .. } in batch.drain(..) {
                            deliveries.inc();
                            if admitted_ms > 0 {
                                metrics.delivery_latency.observe((now - admitted_ms).max(0) as f64 / 1000.0);
                            }
                        }
                    }
                    Ok(Err(_)) => {
                        channel.close(close_code::GOING_AWAY, "write failed");
                        break;
                    }
                    Err(_) => {
                        channel.close(close_code::TRY_AGAIN_LATER, "write timed out");
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(config.write_timeout, sink.send((framing.ping)())).await;
                if !matches!(sent, Ok(Ok(()))) {
                    channel.close(close_code::GOING_AWAY, "heartbeat write failed");
                    break;
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(Outbound::Frame { text, .. }) = rx.try_recv() {
        if Instant::now() > deadline || sink.feed((framing.frame)(text)).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
    sink
}
