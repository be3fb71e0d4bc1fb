//! The channels this node holds, indexed by user and by room.
//!
//! Channels are spread over buckets by user id (all of one user's channels share a
//! bucket), each bucket behind its own mutex: a push to a user touches one bucket,
//! a room broadcast visits each bucket briefly, and joins and leaves in different
//! buckets never contend. Locks are held only to copy out the `Arc`s of the
//! channels concerned; frames are queued after the lock is released, and queueing
//! never waits (see [`Channel::offer`]).
//!
//! A connection being opened is not in the hub yet: one `Attach` call to logic
//! checks its session, routes the user's pushes here and says who the user is,
//! so the channel (which is indexed by user) can only be made from the answer.
//! Logic may route a push here before that answer arrives, so while any open
//! is under way the hub also keeps the pushes it is given ([`Opening`]), and a
//! channel registered when its answer arrives takes those meant for it that
//! arrived since its open began. Pushes that find no open under way cost one
//! atomic read more than before.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use courier_model::StreamId;
use courier_telemetry::{Metrics, TransportLabel};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::channel::{Channel, close_code};
use crate::lock;

/// One shard of the channels, indexed by (user, channel) and (room, channel):
/// ordered maps answer "this user's channels" and "this room's channels" as
/// ranges, without a set allocated per user or per room.
#[derive(Debug, Default)]
struct Bucket {
    channels: BTreeMap<(u64, u64), Arc<Channel>>,
    rooms: BTreeMap<(u64, u64), Arc<Channel>>,
}

/// Whom a pushed frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(u64),
    Room(u64),
}

/// A pushed frame, as [`Channel::offer`] takes it.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub target: Target,
    pub stream: Option<StreamId>,
    pub seq: u64,
    pub text: Utf8Bytes,
    pub admitted_us: i64,
}

/// What a connection whose session ended is told.
const REVOKED: &str = "session ended (logged out or signed in elsewhere); log in again";

/// Most pushes kept for opens under way; beyond it the oldest go (counted as
/// `open_push_overflow`; a channel that missed a stream frame this way finds
/// the gap and reads it from history).
const MAX_KEPT_FOR_OPENS: usize = 65_536;

/// The opens under way and the pushes that arrived meanwhile.
#[derive(Debug, Default)]
struct Opening {
    /// The newest ticket issued.
    issued: u64,
    /// Tickets of the opens under way, with the room each joins (0: none).
    under_way: BTreeMap<u64, u64>,
    /// Pushes in arrival order, each with the newest ticket issued when it
    /// arrived: an open may take only those that arrived after it began.
    kept: VecDeque<(u64, Pushed)>,
    /// Session tokens that ended, kept the same way.
    revoked: VecDeque<(u64, String)>,
}

impl Opening {
    /// Forgets the pushes no open under way can take.
    fn trim(&mut self) {
        match self.under_way.keys().next() {
            None => {
                self.kept.clear();
                self.revoked.clear();
            }
            Some(&oldest) => {
                while self.kept.front().is_some_and(|(issued, _)| *issued < oldest) {
                    self.kept.pop_front();
                }
                while self.revoked.front().is_some_and(|(issued, _)| *issued < oldest) {
                    self.revoked.pop_front();
                }
            }
        }
    }

    /// Whether an open under way may be waiting for `target`'s pushes: every
    /// user's might (the user of an open is not known until logic answers),
    /// only the rooms being joined.
    fn wants(&self, target: Target) -> bool {
        match target {
            Target::User(_) => true,
            Target::Room(room) => self.under_way.values().any(|joining| *joining == room),
        }
    }
}

/// An open under way: logic has been or is being asked to attach it. Ends
/// with [`Hub::finish_open`], or when dropped (the open failed or was given up).
#[derive(Debug)]
pub struct OpenTicket<'a> {
    hub: &'a Hub,
    ticket: u64,
}

impl Drop for OpenTicket<'_> {
    fn drop(&mut self) {
        self.hub.end_open(self.ticket, None);
    }
}

/// Pushes being delivered as one batch (see [`Hub::deliver`]).
pub struct Delivering<'a> {
    hub: &'a Hub,
    opening: Option<MutexGuard<'a, Opening>>,
    rooms: HashMap<u64, Vec<Arc<Channel>>>,
}

impl Delivering<'_> {
    /// Closes the connections of sessions that ended (logged out, signed in
    /// elsewhere); returns how many. Kept while opens are under way, so one
    /// that logic attached just before the session ended is closed too.
    pub fn revoke(&mut self, tokens: &[String]) -> u64 {
        let mut closed = 0;
        for channel in self.hub.all() {
            if tokens.contains(&channel.auth_token) {
                channel.close(close_code::POLICY, REVOKED);
                closed += 1;
            }
        }
        if let Some(opening) = self.opening.as_mut() {
            let issued = opening.issued;
            opening.revoked.extend(tokens.iter().map(|token| (issued, token.clone())));
        }
        closed
    }

    /// Queues `frame` to the channels it targets; returns how many took it
    /// and whether any channel was targeted. Kept as well while opens are
    /// under way, for them.
    pub fn offer(&mut self, frame: Pushed) -> (u64, bool) {
        let hub = self.hub;
        let metrics = &hub.metrics;
        let user_channels;
        let channels: &[Arc<Channel>] = match frame.target {
            // A batch often holds several frames for one room: its channels
            // are looked up once (while opens are under way, none can join
            // during the batch, which holds the opening lock).
            Target::Room(room) => self.rooms.entry(room).or_insert_with(|| hub.room(room)),
            Target::User(user) => {
                user_channels = hub.user(user);
                &user_channels
            }
        };
        let mut queued = 0;
        for channel in channels {
            if channel.offer(frame.stream, frame.seq, &frame.text, frame.admitted_us, metrics) {
                queued += 1;
            }
        }
        let matched = !channels.is_empty();
        if let Some(opening) = self.opening.as_mut()
            && opening.wants(frame.target)
        {
            if opening.kept.len() >= MAX_KEPT_FOR_OPENS {
                opening.kept.pop_front();
                metrics.error("open_push_overflow");
            }
            let issued = opening.issued;
            opening.kept.push_back((issued, frame));
        }
        (queued, matched)
    }
}

/// All channels of this node.
#[derive(Debug)]
pub struct Hub {
    buckets: Box<[Mutex<Bucket>]>,
    opening: Mutex<Opening>,
    /// How many opens are under way (read without the lock by every push).
    opens_under_way: AtomicUsize,
    /// Local channels per room, for the `courier_rooms` gauge.
    room_channels: Mutex<HashMap<u64, usize>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(buckets: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| Mutex::default()).collect(),
            opening: Mutex::default(),
            opens_under_way: AtomicUsize::new(0),
            room_channels: Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    fn bucket(&self, user_id: u64) -> MutexGuard<'_, Bucket> {
        lock(&self.buckets[(user_id % self.buckets.len() as u64) as usize])
    }

    /// A fresh channel id.
    pub fn next_channel_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts an open that will join `room` (0: none): from now until it
    /// ends, pushes are kept for it.
    pub fn begin_open(&self, room: u64) -> OpenTicket<'_> {
        let mut opening = lock(&self.opening);
        opening.issued += 1;
        let ticket = opening.issued;
        opening.under_way.insert(ticket, room);
        self.opens_under_way.store(opening.under_way.len(), Ordering::SeqCst);
        OpenTicket { hub: self, ticket }
    }

    /// Ends an open whose channel logic attached: unless its session already
    /// holds `most_per_token` channels here (then false, and nothing is
    /// registered), the channel is registered (in `room`, if not 0) and given
    /// the pushes meant for it that arrived since the open began, all while
    /// pushes wait, so each reaches it once and in arrival order. Opens finish
    /// one at a time, so opens of one session racing each other cannot pass
    /// the limit together.
    pub fn finish_open(
        &self,
        ticket: OpenTicket<'_>,
        channel: &Arc<Channel>,
        room: u64,
        most_per_token: usize,
    ) -> bool {
        let id = ticket.ticket;
        std::mem::forget(ticket);
        self.end_open(id, Some((channel, room, most_per_token)))
    }

    fn end_open(&self, ticket: u64, attached: Option<(&Arc<Channel>, u64, usize)>) -> bool {
        let mut opening = lock(&self.opening);
        let same_session = |channel: &Arc<Channel>| {
            let user = self.bucket(channel.user_id);
            user.channels
                .range((channel.user_id, 0)..=(channel.user_id, u64::MAX))
                .filter(|(_, held)| held.auth_token == channel.auth_token)
                .count()
        };
        let attached = attached.filter(|(channel, _, most)| same_session(channel) < *most);
        let registered = attached.is_some();
        if let Some((channel, room, _)) = attached {
            self.add(channel.clone());
            if room != 0 {
                self.join(channel, room);
            }
            if opening.revoked.iter().any(|(issued, token)| *issued >= ticket && *token == channel.auth_token) {
                channel.close(close_code::POLICY, REVOKED);
            }
            let (user, metrics) = (channel.user_id, &self.metrics);
            for (_, frame) in opening.kept.iter().filter(|(issued, _)| *issued >= ticket) {
                if frame.target == Target::User(user) || (room != 0 && frame.target == Target::Room(room)) {
                    channel.offer(frame.stream, frame.seq, &frame.text, frame.admitted_us, metrics);
                }
            }
        }
        opening.under_way.remove(&ticket);
        opening.trim();
        self.opens_under_way.store(opening.under_way.len(), Ordering::SeqCst);
        registered
    }

    /// Starts delivering a batch of pushes. While opens are under way the
    /// batch holds the opening lock throughout, so an open that finishes
    /// meanwhile either is found by a push or is handed it, never neither.
    pub fn deliver(&self) -> Delivering<'_> {
        let opening = (self.opens_under_way.load(Ordering::SeqCst) > 0).then(|| lock(&self.opening));
        Delivering { hub: self, opening, rooms: HashMap::new() }
    }

    /// Registers a channel (in no room yet).
    pub fn add(&self, channel: Arc<Channel>) {
        self.metrics.connections.get_or_create(&TransportLabel { transport: channel.transport }).inc();
        self.bucket(channel.user_id).channels.insert((channel.user_id, channel.id), channel);
    }

    /// Puts a channel into a room; false if it was already there.
    pub fn join(&self, channel: &Arc<Channel>, room: u64) -> bool {
        {
            let mut rooms = lock(&channel.rooms);
            if rooms.contains(&room) {
                return false;
            }
            rooms.reserve_exact(1);
            rooms.push(room);
        }
        self.bucket(channel.user_id).rooms.insert((room, channel.id), channel.clone());
        let mut rooms = lock(&self.room_channels);
        *rooms.entry(room).or_default() += 1;
        self.metrics.rooms.set(rooms.len() as i64);
        true
    }

    /// Takes a channel out of a room; false if it was not there.
    pub fn leave(&self, channel: &Channel, room: u64) -> bool {
        {
            let mut rooms = lock(&channel.rooms);
            let Some(index) = rooms.iter().position(|r| *r == room) else { return false };
            rooms.swap_remove(index);
        }
        self.bucket(channel.user_id).rooms.remove(&(room, channel.id));
        let mut rooms = lock(&self.room_channels);
        if let Some(n) = rooms.get_mut(&room) {
            *n -= 1;
            if *n == 0 {
                rooms.remove(&room);
            }
        }
        self.metrics.rooms.set(rooms.len() as i64);
        true
    }

    /// Unregisters a channel; returns the rooms it was in.
    pub fn remove(&self, channel: &Channel) -> Vec<u64> {
        let rooms = channel.rooms();
        for room in &rooms {
            self.leave(channel, *room);
        }
        if self.bucket(channel.user_id).channels.remove(&(channel.user_id, channel.id)).is_some() {
            self.metrics.connections.get_or_create(&TransportLabel { transport: channel.transport }).dec();
        }
        rooms
    }

    /// The channels in a room.
    pub fn room(&self, room: u64) -> Vec<Arc<Channel>> {
        let mut out = Vec::new();
        for bucket in self.buckets.iter() {
            out.extend(lock(bucket).rooms.range((room, 0)..=(room, u64::MAX)).map(|(_, channel)| channel.clone()));
        }
        out
    }

    /// The channels of a user.
    pub fn user(&self, user_id: u64) -> Vec<Arc<Channel>> {
        self.bucket(user_id).channels.range((user_id, 0)..=(user_id, u64::MAX)).map(|(_, c)| c.clone()).collect()
    }

    /// Every channel (for shutdown and session revocation).
    pub fn all(&self) -> Vec<Arc<Channel>> {
        let mut out = Vec::new();
        for bucket in self.buckets.iter() {
            out.extend(lock(bucket).channels.values().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(hub: &Hub, user: u64, capacity: usize) -> Arc<Channel> {
        let ch = Arc::new(Channel::new(hub.next_channel_id(), user, "t".into(), "ws", capacity));
        hub.add(ch.clone());
        ch
    }

    #[test]
    fn rooms_and_users_index_channels() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        let a1 = channel(&hub, 1, 8);
        let a2 = channel(&hub, 1, 8);
        let b = channel(&hub, 2, 8);
        assert!(hub.join(&a1, 10));
        assert!(!hub.join(&a1, 10), "joining twice is a no-op");
        hub.join(&b, 10);
        hub.join(&a2, 11);
        assert_eq!(hub.room(10).len(), 2);
        assert_eq!(hub.user(1).len(), 2);
        assert_eq!(hub.remove(&a1), vec![10]);
        assert_eq!(hub.room(10).iter().map(|c| c.user_id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(hub.user(1).len(), 1);
        assert_eq!(hub.all().len(), 2);
    }

    fn pushed(target: Target, text: &str) -> Pushed {
        Pushed { target, stream: None, seq: 0, text: Utf8Bytes::from(text.to_owned()), admitted_us: 0 }
    }

    fn texts(channel: &Channel) -> Vec<String> {
        use crate::outbox::Outbound;
        channel.remaining_frames().into_iter().map(|Outbound::Frame { text, .. }| text.as_str().to_owned()).collect()
    }

    /// Logic may route a user's pushes (and the room's) to this node before
    /// its answer to the open arrives: the channel registered with the answer
    /// gets those that arrived since its open began, once each, in order, and
    /// none meant for others or from before.
    #[test]
    fn an_open_gets_the_pushes_that_arrived_before_logic_answered() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        hub.deliver().offer(pushed(Target::User(7), "before the open"));
        let ticket = hub.begin_open(10);
        {
            let mut delivering = hub.deliver();
            for frame in [
                pushed(Target::User(7), "inbox 1"),
                pushed(Target::User(8), "someone else's"),
                pushed(Target::Room(10), "room count"),
                pushed(Target::Room(11), "another room"),
                pushed(Target::User(7), "inbox 2"),
            ] {
                assert_eq!(delivering.offer(frame), (0, false), "no channel yet");
            }
        }
        let channel = Arc::new(Channel::new(hub.next_channel_id(), 7, "t".into(), "ws", 8));
        assert!(hub.finish_open(ticket, &channel, 10, 2));
        assert_eq!(texts(&channel), ["inbox 1", "room count", "inbox 2"]);
        assert_eq!(hub.room(10).len(), 1, "in its room");

        // Registered: found directly, and nothing is kept any more.
        assert_eq!(hub.deliver().offer(pushed(Target::User(7), "live")), (1, true));
        assert_eq!(texts(&channel), ["live"]);
        assert!(lock(&hub.opening).kept.is_empty());
        assert_eq!(hub.opens_under_way.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn opens_of_one_session_cannot_pass_its_limit_together() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        let (a, b, c) = (hub.begin_open(0), hub.begin_open(0), hub.begin_open(0));
        let channel = |token: &str| Arc::new(Channel::new(hub.next_channel_id(), 7, token.into(), "ws", 8));
        assert!(hub.finish_open(a, &channel("t"), 0, 1));
        assert!(!hub.finish_open(b, &channel("t"), 0, 1), "the session's one connection is taken");
        assert!(hub.finish_open(c, &channel("other"), 0, 1), "another session of the user has its own");
        assert_eq!(hub.user(7).len(), 2, "the refused one was not registered");
        assert_eq!(hub.opens_under_way.load(Ordering::SeqCst), 0);
    }

    /// Pushes are kept only while an open that may take them is under way: a
    /// failed open (its ticket dropped) frees what it kept, and a session that
    /// ended while an open was under way closes the channel logic attached.
    #[test]
    fn kept_pushes_go_with_the_opens_that_could_take_them() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        let first = hub.begin_open(0);
        hub.deliver().offer(pushed(Target::User(7), "for the first"));
        let second = hub.begin_open(0);
        let closed = hub.deliver().revoke(&["t".to_owned()]);
        assert_eq!(closed, 0, "no channel has the token yet");
        drop(first);
        assert!(lock(&hub.opening).kept.is_empty(), "no open under way can take it");
        let channel = Arc::new(Channel::new(hub.next_channel_id(), 7, "t".into(), "ws", 8));
        assert!(hub.finish_open(second, &channel, 0, 2));
        assert!(texts(&channel).is_empty(), "it arrived before the second open began");
        let reason = channel.close_reason().expect("its session ended meanwhile");
        assert_eq!(reason.code, close_code::POLICY);
        assert!(lock(&hub.opening).revoked.is_empty());
    }
}
