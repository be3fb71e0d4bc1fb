//! One long connection's state: who it is, its outbound queue, and per stream
//! the sequencing that makes delivery exactly-once and in order for clients
//! that cannot deduplicate — the last seq sent, the live frames held back
//! while history is replayed, and the gaps waiting to be filled.
//!
//! A frame newer than the next expected seq is a gap: it is held back (with
//! every later one) and reported, and the connection fills it from history
//! (`Gateway::fill_gap`); a frame not newer than the last sent is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use courier_model::StreamId;
use courier_telemetry::Metrics;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::lock;
use crate::outbox::{Batch, Outbound, Outbox};

/// One long connection of one user.
#[derive(Debug)]
pub struct Channel {
    pub id: u64,
    pub user_id: u64,
    pub auth_token: String,
    pub transport: &'static str,
    outbox: Outbox,
    /// Per stream: the last seq queued, so a redelivered or replayed frame is never
    /// sent twice or out of order (gochat clients cannot deduplicate), and while the
    /// stream is being recovered, the live frames held back until history is sent.
    streams: Mutex<Streams>,
    /// The rooms joined (usually one; a list is smaller than a set).
    pub(crate) rooms: Mutex<Vec<u64>>,
    /// Streams whose pushes arrived with a gap, with the last seq sent before it.
    /// A gap, like the close, rings the outbox's wake: every wait a
    /// connection's task is parked on is kept in its future for the
    /// connection's whole life, so frames, gaps and the close share one (see
    /// [`Channel::attention`]).
    gaps: Mutex<Vec<(StreamId, u64)>>,
    /// Set when the connection must end (the reason says why); `closing` wakes
    /// the other waiters (recoveries). A flag and a notify are smaller than a
    /// cancellation token, which allocates.
    closed: AtomicBool,
    closing: Notify,
    close_reason: Mutex<Option<CloseReason>>,
}

/// What a connection's task is woken for (see [`Channel::attention`]).
#[derive(Debug)]
pub enum Attention {
    /// The connection must end.
    Closing,
    /// Frames to write.
    Frames(Batch),
    /// A gap in a stream's pushes to fill, after this seq.
    Gap(StreamId, u64),
}

/// Why a connection ends: a WebSocket close code and a text for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub text: String,
}

/// WebSocket close codes Courier uses (RFC 6455 §7.4.1).
pub mod close_code {
    /// The client closed, or asked to.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect (to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol (bad auth message, bad frame).
    pub const POLICY: u16 = 1008;
    /// The client did not keep up; reconnect and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Most live frames held back per stream while its history is being sent.
const MAX_HELD_BACK: usize = 10_000;

/// Per-stream state of one channel, as a short list: a connection has its
/// inbox and a room or two, and a hash map's smallest table costs several
/// times what two entries do.
#[derive(Debug, Default)]
struct Streams(Vec<(StreamId, StreamState)>);

impl Streams {
    fn get(&self, stream: StreamId) -> Option<&StreamState> {
        self.0.iter().find(|(id, _)| *id == stream).map(|(_, state)| state)
    }

    /// The stream's state, added if new.
    fn entry(&mut self, stream: StreamId) -> &mut StreamState {
        let index = match self.0.iter().position(|(id, _)| *id == stream) {
            Some(index) => index,
            None => {
                self.0.reserve_exact(1);
                self.0.push((stream, StreamState::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[index].1
    }
}

#[derive(Debug, Default)]
struct StreamState {
    last: u64,
    /// Whether `last` is a real position (set from where the stream stood when
    /// the channel joined it, a client's resume position, or a frame sent). A
    /// new user's inbox stands at 0, and its first pushes can arrive out of
    /// order like any others: a hole after 0 is a gap too.
    known: bool,
    /// `Some` while recovering: live frames (seq, text, admitted) waiting.
    held_back: Option<Vec<(u64, Utf8Bytes, i64)>>,
}

impl StreamState {
    /// Moves the position to `seq` if that is newer; false for a duplicate or
    /// a step back, which must not be sent.
    fn advance(&mut self, seq: u64) -> bool {
        if self.known && seq <= self.last {
            return false;
        }
        self.last = seq;
        self.known = true;
        true
    }
}

impl Channel {
    pub fn new(id: u64, user_id: u64, auth_token: String, transport: &'static str, capacity: usize) -> Self {
        Self {
            id,
            user_id,
            auth_token,
            transport,
            outbox: Outbox::new(capacity),
            streams: Mutex::default(),
            rooms: Mutex::default(),
            gaps: Mutex::default(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            close_reason: Mutex::default(),
        }
    }

    /// Queues a pushed frame. A frame of a stream (`stream` given) whose seq is
    /// not newer than the last queued for that stream is dropped as a duplicate;
    /// other frames (counts, member lists) are not sequenced. A full queue
    /// closes the connection: the client is not keeping up, and skipping frames
    /// silently would leave a gap it cannot see.
    pub fn offer(
        &self,
        stream: Option<StreamId>,
        seq: u64,
        text: &Utf8Bytes,
        admitted_us: i64,
        metrics: &Metrics,
    ) -> bool {
        let Some(stream) = stream else {
            return self.queue(Outbound::Frame { text: text.clone(), admitted_us }, metrics);
        };
        let mut streams = lock(&self.streams);
        let state = streams.entry(stream);
        if let Some(held) = &mut state.held_back {
            if held.len() >= MAX_HELD_BACK {
                drop(streams);
                self.close(
                    close_code::TRY_AGAIN_LATER,
                    "too many messages arrived while catching up; reconnect and resume",
                );
                return false;
            }
            held.push((seq, text.clone(), admitted_us));
            return true;
        }
        if state.known && seq > state.last.saturating_add(1) {
            // A gap: the frames between are late (a partition changed
            // workers, and the old one's pushes are still on the way; a
            // version 1 record writing a sender's inbox from another
            // partition) or were lost on the way. Hold this one back until the gap is filled (see
            // `Gateway::fill_gap`): sending it would make the missing ones
            // look stale, and they would never reach the client.
            state.held_back = Some(vec![(seq, text.clone(), admitted_us)]);
            let after = state.last;
            drop(streams);
            metrics.error("push_gap");
            self.report_gap(stream, after);
            return true;
        }
        self.queue_in_order(state, seq, text.clone(), admitted_us, metrics)
    }

    /// Starts recovering `stream` for a client that has it up to `after`.
    pub fn begin_recovery_after(&self, stream: StreamId, after: u64) {
        let mut streams = lock(&self.streams);
        let state = streams.entry(stream);
        state.held_back.get_or_insert_with(Vec::new);
        state.last = after;
        state.known = true;
    }

    /// Ends holding `stream` back while the channel joined it: live delivery
    /// starts after `last_seq` (where the stream stood once the channel was
    /// registered), and the frames held meanwhile follow if newer, a hole
    /// before them being caught like any other.
    pub async fn start_live(&self, stream: StreamId, last_seq: u64) {
        {
            let mut streams = lock(&self.streams);
            let state = streams.entry(stream);
            state.last = state.last.max(last_seq);
            state.known = true;
        }
        self.finish_recovery(stream, Vec::new()).await;
    }

    /// Has the connection fill the gap in `stream` after seq `after`.
    fn report_gap(&self, stream: StreamId, after: u64) {
        lock(&self.gaps).push((stream, after));
        self.outbox.wake();
    }

    /// Waits for what the connection's task must act on, in this order: the
    /// close, up to `max` queued frames, a gap to fill (only when `gaps`: one
    /// is filled at a time).
    pub async fn attention(&self, max: usize, gaps: bool) -> Attention {
        self.outbox
            .wait_until(|| {
                if self.is_closing() {
                    return Some(Attention::Closing);
                }
                let batch = self.outbox.drain(max);
                if !batch.frames.is_empty() {
                    return Some(Attention::Frames(batch));
                }
                gaps.then(|| lock(&self.gaps).pop()).flatten().map(|(stream, after)| Attention::Gap(stream, after))
            })
            .await
    }

    /// Waits for a stream with a gap; returns it and the last seq sent before.
    #[cfg(test)]
    pub async fn next_gap(&self) -> (StreamId, u64) {
        self.outbox.wait_until(|| lock(&self.gaps).pop()).await
    }

    /// Whether the frames held back for `stream` that are newer than `after`
    /// follow it without a hole.
    pub fn held_back_is_contiguous(&self, stream: StreamId, after: u64) -> bool {
        let streams = lock(&self.streams);
        let Some(held) = streams.get(stream).and_then(|s| s.held_back.as_ref()) else { return true };
        // Frames not newer than `after` are stale and will be dropped.
        let mut seqs: Vec<u64> = held.iter().map(|(seq, _, _)| *seq).filter(|seq| *seq > after).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.iter().enumerate().all(|(i, seq)| after.checked_add(1 + i as u64) == Some(*seq))
    }

    /// Queues a stream frame if it is newer than the last one queued.
    fn queue_in_order(
        &self,
        state: &mut StreamState,
        seq: u64,
        text: Utf8Bytes,
        admitted_us: i64,
        metrics: &Metrics,
    ) -> bool {
        if !state.advance(seq) {
            return false;
        }
        self.queue(Outbound::Frame { text, admitted_us }, metrics)
    }

    /// Starts recovering `stream`: live frames are held back from now on.
    pub fn begin_recovery(&self, stream: StreamId) {
        lock(&self.streams).entry(stream).held_back.get_or_insert_with(Vec::new);
    }

    /// Ends recovering `stream`: queues the missed frames `history` (in seq
    /// order), then the live frames held back meanwhile, each only if newer than
    /// what was queued before it, so the client sees no gap and no duplicate. It
    /// waits for room in the outbound queue rather than overflowing it, and only
    /// returns the stream to live delivery once nothing is held back.
    pub async fn finish_recovery(&self, stream: StreamId, history: Vec<(u64, Utf8Bytes)>) {
        for (seq, text) in history {
            self.send_in_order(stream, seq, text, 0).await;
        }
        loop {
            let held = {
                let mut streams = lock(&self.streams);
                let state = streams.entry(stream);
                match &mut state.held_back {
                    Some(held) if !held.is_empty() => std::mem::take(held),
                    _ => {
                        state.held_back = None;
                        return;
                    }
                }
            };
            let mut held = held;
            held.sort_by_key(|(seq, _, _)| *seq);
            let mut rest = held.into_iter();
            while let Some((seq, text, admitted_us)) = rest.next() {
                if let Some(last) = self.position(stream)
                    && seq > last.saturating_add(1)
                {
                    // A new gap: keep holding from here and have it filled.
                    let mut streams = lock(&self.streams);
                    let state = streams.entry(stream);
                    let held = state.held_back.get_or_insert_with(Vec::new);
                    held.push((seq, text, admitted_us));
                    held.extend(rest);
                    drop(streams);
                    self.report_gap(stream, last);
                    return;
                }
                self.send_in_order(stream, seq, text, admitted_us).await;
            }
        }
    }

    /// The last seq queued on `stream`, if its position is known.
    pub fn position(&self, stream: StreamId) -> Option<u64> {
        lock(&self.streams).get(stream).filter(|s| s.known).map(|s| s.last)
    }

    /// Queues one frame of a stream being recovered, if newer than the last,
    /// waiting for room in the outbound queue (so a replay of any length
    /// holds one page in memory, never the whole of it).
    pub async fn send_recovered(&self, stream: StreamId, seq: u64, text: Utf8Bytes) {
        self.send_in_order(stream, seq, text, 0).await;
    }

    /// Forgets `stream` (a room left): its position, held frames and gaps.
    pub fn forget_stream(&self, stream: StreamId) {
        lock(&self.streams).0.retain(|(id, _)| *id != stream);
        lock(&self.gaps).retain(|(id, _)| *id != stream);
    }

    /// How many streams this channel keeps state for.
    #[cfg(test)]
    fn stream_count(&self) -> usize {
        lock(&self.streams).0.len()
    }

    /// Queues one recovered frame if newer than the last, waiting for room.
    async fn send_in_order(&self, stream: StreamId, seq: u64, text: Utf8Bytes, admitted_us: i64) {
        {
            let mut streams = lock(&self.streams);
            if !streams.entry(stream).advance(seq) {
                return;
            }
        }
        tokio::select! {
            _ = self.closing() => {}
            _ = self.outbox.offer_waiting(Outbound::Frame { text, admitted_us }) => {}
        }
    }

    /// Queues a reply (ack, error) to this connection.
    pub fn reply(&self, text: String, metrics: &Metrics) -> bool {
        self.queue(Outbound::Frame { text: text.into(), admitted_us: 0 }, metrics)
    }

    fn queue(&self, outbound: Outbound, metrics: &Metrics) -> bool {
        if self.is_closing() {
            return false;
        }
        if self.outbox.offer(outbound).is_ok() {
            return true;
        }
        metrics.slow_consumer_closes.inc();
        self.close(
            close_code::TRY_AGAIN_LATER,
            "outbound queue full: the client is not reading fast enough; reconnect and resume",
        );
        false
    }

    /// Waits for frames to write and takes up to `max` of them.
    #[cfg(test)]
    pub async fn next_frames(&self, max: usize) -> Batch {
        self.outbox.wait_until(|| Some(self.outbox.drain(max)).filter(|batch| !batch.frames.is_empty())).await
    }

    /// The frames still queued, for a last write before the connection ends.
    pub fn remaining_frames(&self) -> VecDeque<Outbound> {
        self.outbox.drain(usize::MAX).frames
    }

    /// Asks the connection to end with `reason` (the first reason wins).
    pub fn close(&self, code: u16, reason: &str) {
        let mut slot = lock(&self.close_reason);
        if slot.is_none() {
            *slot = Some(CloseReason { code, text: reason.to_owned() });
        }
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        self.outbox.wake();
    }

    /// Resolves when the connection must end.
    pub async fn closing(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            // Register before looking, so a close in between still wakes us.
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why the connection is ending, if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.close_reason).clone()
    }

    /// The rooms this channel is in.
    pub fn rooms(&self) -> Vec<u64> {
        let mut rooms = lock(&self.rooms).clone();
        rooms.sort_unstable();
        rooms
    }

    pub fn in_room(&self, room: u64) -> bool {
        lock(&self.rooms).contains(&room)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::Hub;
    use StreamId::{Inbox, Room};

    /// The texts of the frames queued on `ch` (taking them).
    fn sent(ch: &Channel) -> Vec<String> {
        ch.remaining_frames().into_iter().map(|Outbound::Frame { text, .. }| text.as_str().to_owned()).collect()
    }

    fn text(n: u64) -> Utf8Bytes {
        Utf8Bytes::from(n.to_string())
    }

    fn channel(hub: &Hub, user: u64, capacity: usize) -> Arc<Channel> {
        let ch = Arc::new(Channel::new(hub.next_channel_id(), user, "t".into(), "ws", capacity));
        hub.add(ch.clone());
        ch
    }

    #[tokio::test]
    async fn recovery_sends_history_then_held_back_live_frames_without_duplicates() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        ch.begin_recovery(Room(1));
        // Live frames 4 and 5 arrive while history 2..=4 is being read.
        assert!(ch.offer(Some(Room(1)), 5, &text(5), 0, &metrics));
        assert!(ch.offer(Some(Room(1)), 4, &text(4), 0, &metrics));
        assert!(ch.remaining_frames().is_empty(), "held back during recovery");
        ch.finish_recovery(Room(1), (2..=4).map(|n| (n, text(n))).collect()).await;
        assert_eq!(sent(&ch), ["2", "3", "4", "5"]);
        assert!(!ch.offer(Some(Room(1)), 5, &text(5), 0, &metrics), "already sent");
    }

    #[tokio::test]
    async fn frames_pushed_while_a_connection_opens_start_after_its_position() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        // The inbox stood at 5 when logic read it; 5 (late) and 6, 7 were pushed
        // while the open was under way.
        ch.begin_recovery(Inbox(1));
        for seq in [7, 5, 6] {
            assert!(ch.offer(Some(Inbox(1)), seq, &text(seq), 0, &metrics));
        }
        assert!(sent(&ch).is_empty(), "held until the position is known");
        ch.start_live(Inbox(1), 5).await;
        assert_eq!(sent(&ch), ["6", "7"], "only what is newer than the position, in order");
        assert!(ch.offer(Some(Inbox(1)), 8, &text(8), 0, &metrics), "live from here on");
        assert_eq!(sent(&ch), ["8"]);

        // A hole between the position and the first held frame is a gap to fill.
        ch.begin_recovery(Room(2));
        assert!(ch.offer(Some(Room(2)), 12, &text(12), 0, &metrics));
        ch.start_live(Room(2), 10).await;
        assert!(sent(&ch).is_empty(), "12 waits for 11");
        assert_eq!(ch.next_gap().await, (Room(2), 10));
    }

    #[tokio::test]
    async fn a_new_streams_first_pushes_out_of_order_are_a_gap_too() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        // A new user's inbox stands at 0; its first two messages come from two
        // writers, and 2 arrives first.
        ch.begin_recovery(Inbox(1));
        ch.start_live(Inbox(1), 0).await;
        assert!(ch.offer(Some(Inbox(1)), 2, &text(2), 0, &metrics));
        assert!(sent(&ch).is_empty(), "2 waits for 1");
        assert_eq!(ch.next_gap().await, (Inbox(1), 0));
        assert!(ch.offer(Some(Inbox(1)), 1, &text(1), 0, &metrics));
        assert!(ch.held_back_is_contiguous(Inbox(1), 0));
        ch.finish_recovery(Inbox(1), Vec::new()).await;
        assert_eq!(sent(&ch), ["1", "2"]);
    }

    #[test]
    fn stale_seqs_are_dropped_and_overflow_closes() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 2);
        let text = Utf8Bytes::from("{}");
        assert!(ch.offer(Some(Room(1)), 5, &text, 0, &metrics));
        assert!(!ch.offer(Some(Room(1)), 5, &text, 0, &metrics), "same seq again");
        assert!(!ch.offer(Some(Room(1)), 4, &text, 0, &metrics), "older seq");
        assert!(ch.offer(Some(Room(2)), 1, &text, 0, &metrics), "streams count separately");
        assert!(!ch.is_closing());
        assert!(!ch.offer(None, 0, &text, 0, &metrics), "queue of two is full");
        assert!(ch.is_closing(), "overflow closes the connection");
        assert!(ch.close_reason().is_some_and(|r| r.text.contains("not reading fast enough") && r.code == 1013));
        assert_eq!(ch.remaining_frames().len(), 2, "what was queued before the overflow stays queued");
    }

    #[tokio::test]
    async fn one_wake_brings_the_close_first_then_frames_then_a_gap_when_one_is_wanted() {
        use futures_util::FutureExt as _;
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        assert!(ch.attention(64, true).now_or_never().is_none(), "nothing to do: the task waits");
        assert!(ch.offer(Some(Inbox(1)), 1, &text(1), 0, &metrics));
        assert!(ch.offer(Some(Inbox(1)), 3, &text(3), 0, &metrics), "a gap after 1");
        match ch.attention(64, true).await {
            Attention::Frames(batch) => assert!(batch.emptied && batch.frames.len() == 1),
            other => panic!("frames come before the gap: {other:?}"),
        }
        // While a gap is being filled, another waits (its wake is not lost).
        assert!(ch.attention(64, false).now_or_never().is_none());
        assert!(matches!(ch.attention(64, true).await, Attention::Gap(Inbox(1), 1)));
        assert!(ch.reply("{}".into(), &metrics));
        ch.close(close_code::NORMAL, "bye");
        assert!(matches!(ch.attention(64, true).await, Attention::Closing), "the close wins over queued frames");
        assert_eq!(sent(&ch), vec!["{}"], "what was queued stays for the last write");
    }

    #[tokio::test]
    async fn a_gap_holds_frames_back_until_it_is_filled() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        assert!(ch.offer(Some(Inbox(1)), 1, &text(1), 0, &metrics));
        // 3 and 4 arrive before 2 (another writer's push is late).
        assert!(ch.offer(Some(Inbox(1)), 3, &text(3), 0, &metrics));
        assert!(ch.offer(Some(Inbox(1)), 4, &text(4), 0, &metrics));
        assert_eq!(sent(&ch), vec!["1"], "nothing after the gap goes out");
        assert_eq!(ch.next_gap().await, (Inbox(1), 1));
        assert!(!ch.held_back_is_contiguous(Inbox(1), 1));
        assert!(ch.offer(Some(Inbox(1)), 2, &text(2), 0, &metrics));
        assert!(ch.held_back_is_contiguous(Inbox(1), 1), "the late push closed the gap");
        ch.finish_recovery(Inbox(1), Vec::new()).await;
        assert_eq!(sent(&ch), vec!["2", "3", "4"]);
        // A gap that no push closes is filled from history.
        assert!(ch.offer(Some(Inbox(1)), 7, &text(7), 0, &metrics));
        assert_eq!(ch.next_gap().await, (Inbox(1), 4));
        ch.finish_recovery(Inbox(1), vec![(5, text(5)), (6, text(6)), (7, text(7))]).await;
        assert_eq!(sent(&ch), vec!["5", "6", "7"], "each once, in order");
        // A frame held back beyond a new hole stays held, and the hole is reported.
        assert!(ch.offer(Some(Inbox(1)), 9, &text(9), 0, &metrics));
        assert!(ch.offer(Some(Inbox(1)), 11, &text(11), 0, &metrics));
        assert_eq!(ch.next_gap().await, (Inbox(1), 7));
        ch.finish_recovery(Inbox(1), vec![(8, text(8))]).await;
        assert_eq!(sent(&ch), vec!["8", "9"]);
        assert_eq!(ch.next_gap().await, (Inbox(1), 9));
    }

    #[tokio::test]
    async fn a_forgotten_stream_keeps_no_state() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        assert!(ch.offer(Some(Room(1)), 1, &text(1), 0, &metrics));
        assert!(ch.offer(Some(Room(1)), 3, &text(3), 0, &metrics), "held back behind a gap");
        assert!(ch.offer(Some(Room(2)), 1, &text(1), 0, &metrics));
        assert_eq!(ch.stream_count(), 2);
        ch.forget_stream(Room(1));
        assert_eq!(ch.stream_count(), 1, "a room left costs nothing");
        assert_eq!(ch.position(Room(1)), None);
        assert!(ch.offer(Some(Room(2)), 3, &text(3), 0, &metrics));
        assert_eq!(ch.next_gap().await, (Room(2), 1), "room:1's gap went with it");
    }

    #[tokio::test]
    async fn extreme_positions_never_overflow() {
        let metrics = Metrics::new();
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 64);
        // A client claiming to have everything up to the largest seq.
        ch.begin_recovery_after(Room(1), u64::MAX);
        assert!(ch.offer(Some(Room(1)), u64::MAX, &text(1), 0, &metrics), "held back");
        assert!(ch.held_back_is_contiguous(Room(1), u64::MAX), "nothing can follow the largest seq");
        ch.finish_recovery(Room(1), vec![(u64::MAX, text(2))]).await;
        assert!(sent(&ch).is_empty(), "nothing newer than the position");
        assert!(!ch.offer(Some(Room(1)), 5, &text(3), 0, &metrics), "older than the position");
        ch.start_live(Inbox(1), u64::MAX - 1).await;
        assert!(ch.offer(Some(Inbox(1)), u64::MAX, &text(4), 0, &metrics));
        assert_eq!(sent(&ch), ["4"]);
    }

    #[tokio::test]
    async fn a_recovery_waits_for_room_instead_of_overflowing() {
        let hub = Hub::new(1, Arc::new(Metrics::new()));
        let ch = channel(&hub, 1, 2);
        ch.begin_recovery(Room(1));
        let writer = {
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                while written.len() < 5 {
                    let batch = ch.next_frames(1).await;
                    written
                        .extend(batch.frames.into_iter().map(|Outbound::Frame { text, .. }| text.as_str().to_owned()));
                }
                written
            })
        };
        ch.finish_recovery(Room(1), (1..=5).map(|n| (n, text(n))).collect()).await;
        assert_eq!(writer.await.expect("writer"), vec!["1", "2", "3", "4", "5"]);
        assert!(!ch.is_closing(), "history never overflows the queue");
    }
}
