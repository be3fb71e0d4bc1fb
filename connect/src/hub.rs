//! The channels this node holds, indexed by user and by room.
//!
//! Channels are spread over buckets by user id (all of one user's channels share a
//! bucket), each bucket behind its own mutex: a push to a user touches one bucket,
//! a room broadcast visits each bucket briefly, and joins and leaves in different
//! buckets never contend. Locks are held only to copy out the `Arc`s of the
//! channels concerned; frames are queued after the lock is released, and queueing
//! never waits (see [`Channel::offer`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use courier_telemetry::{Metrics, TransportLabel};

use crate::channel::Channel;
use crate::lock;

/// One shard of the channels, indexed by (user, channel) and (room, channel):
/// ordered maps answer "this user's channels" and "this room's channels" as
/// ranges, without a set allocated per user or per room.
#[derive(Debug, Default)]
struct Bucket {
    channels: BTreeMap<(u64, u64), Arc<Channel>>,
    rooms: BTreeMap<(u64, u64), Arc<Channel>>,
}

/// All channels of this node.
#[derive(Debug)]
pub struct Hub {
    buckets: Box<[Mutex<Bucket>]>,
    /// Local channels per room, for the `courier_rooms` gauge.
    room_channels: Mutex<HashMap<u64, usize>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(buckets: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| Mutex::default()).collect(),
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
        let ch = Arc::new(Channel::new(hub.next_channel_id(), user, format!("u{user}"), "t".into(), "ws", capacity));
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
}
