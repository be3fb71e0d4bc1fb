//! A connection's queue of frames to write: bounded, first in first out, and
//! holding no allocation while empty, so an idle connection pays only for the
//! struct (a channel's preallocated block would cost over a kilobyte each).
//! Pushes offer frames without waiting (a full queue is the caller's to act
//! on); replays wait for room, so a long replay never overflows it. The
//! connection's task is woken by its `Channel`, which queues here.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::lock;

/// What a connection's writer sends next.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON frame; `admitted_us` is the message's admission time (0 if none).
    Frame { text: Utf8Bytes, admitted_us: i64 },
}

/// A connection's queue of frames to write: bounded, first in first out, and
/// holding no allocation while empty, so an idle connection pays only for the
/// struct (a channel's preallocated block would cost over a kilobyte each).
#[derive(Debug)]
pub(crate) struct Outbox {
    frames: Mutex<VecDeque<Outbound>>,
    capacity: usize,
    /// Room was made (waiters: recoveries sending history).
    drained: Notify,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { frames: Mutex::default(), capacity: capacity.max(1), drained: Notify::new() }
    }

    /// Queues a frame unless the outbox is full (then hands it back).
    pub(crate) fn offer(&self, outbound: Outbound) -> Result<(), Outbound> {
        {
            let mut frames = lock(&self.frames);
            if frames.len() >= self.capacity {
                return Err(outbound);
            }
            frames.push_back(outbound);
        }
        Ok(())
    }

    /// Queues a frame, waiting for room.
    pub(crate) async fn offer_waiting(&self, mut outbound: Outbound) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Register before looking, so a drain in between still wakes us.
            drained.as_mut().enable();
            match self.offer(outbound) {
                Ok(()) => return,
                Err(back) => outbound = back,
            }
            drained.await;
        }
    }

    /// Takes up to `max` frames without waiting. When that is all of them the
    /// queue hands its allocation over with them, so an idle connection keeps
    /// no buffer and a busy one allocates once per batch, not twice.
    pub(crate) fn drain(&self, max: usize) -> Batch {
        let batch = {
            let mut frames = lock(&self.frames);
            if frames.len() <= max {
                Batch { frames: std::mem::take(&mut *frames), emptied: true }
            } else {
                Batch { frames: frames.drain(..max).collect(), emptied: false }
            }
        };
        if !batch.frames.is_empty() {
            self.drained.notify_waiters();
        }
        batch
    }
}

/// Frames taken from a connection's queue to be written.
#[derive(Debug)]
pub struct Batch {
    pub frames: VecDeque<Outbound>,
    /// Nothing was left queued behind them.
    pub emptied: bool,
}
