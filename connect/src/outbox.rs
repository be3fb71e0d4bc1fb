//! A connection's queue of frames to write: bounded, first in first out, and
//! holding no allocation while empty, so an idle connection pays only for the
//! struct (a channel's preallocated block would cost over a kilobyte each).
//! Pushes offer frames without waiting (a full queue is the caller's to act
//! on); replays wait for room, so a long replay never overflows it. Its wake
//! is the connection task's only one: a queued frame rings it, and so do the
//! channel's close and gaps (see `Channel::attention`).

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
    /// The connection's task (its one waiter): frames queued, or whatever
    /// else its channel rings it for.
    wake: Notify,
    /// Room was made (waiters: recoveries sending history).
    drained: Notify,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { frames: Mutex::default(), capacity: capacity.max(1), wake: Notify::new(), drained: Notify::new() }
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
        self.wake();
        Ok(())
    }

    /// Wakes the connection's task (a permit is kept if it is not waiting).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until `ready` finds something, looking again at every wake.
    pub(crate) async fn wait_until<R>(&self, mut ready: impl FnMut() -> Option<R>) -> R {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Register before looking, so a wake in between is not lost.
            woken.as_mut().enable();
            if let Some(found) = ready() {
                return found;
            }
            woken.await;
        }
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
