//! In-process sessions and presence for a single-process deployment.
//!
//! Plain `std` mutexes: every critical section is a few map operations and never
//! awaits, so an async lock would only add overhead. Time is tokio's clock, so
//! tests of expiry run in paused time instead of waiting it out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use crate::{NewSession, NodeLease, Presence, Result, Routes, SessionUser, Sessions, new_token};

/// Session rules.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// How long a token stays valid (gochat: 24 h).
    pub ttl: Duration,
    /// Most tokens one user may hold at once; 1 is gochat's single-session rule.
    pub max_devices: usize,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(24 * 3600), max_devices: 8 }
    }
}

#[derive(Debug, Default)]
struct SessionTable {
    by_token: HashMap<String, (SessionUser, Instant)>,
    /// Each user's tokens, oldest first.
    by_user: HashMap<u64, VecDeque<String>>,
    /// Size of `by_token` at which expired sessions are next swept out:
    /// twice what was live after the last sweep, so sweeping costs O(1) per
    /// login on average and memory stays within twice the live sessions.
    sweep_at: usize,
}

/// The smallest table size at which a sweep runs.
const FIRST_SWEEP: usize = 1024;

impl SessionTable {
    /// Forgets every expired session.
    fn sweep(&mut self, now: Instant) {
        self.by_token.retain(|_, (_, expires)| *expires > now);
        let by_token = &self.by_token;
        self.by_user.retain(|_, tokens| {
            tokens.retain(|t| by_token.contains_key(t));
            !tokens.is_empty()
        });
        self.sweep_at = (2 * self.by_token.len()).max(FIRST_SWEEP);
    }
}

/// Sessions in process memory (lost on restart: users log in again).
#[derive(Debug, Default)]
pub struct MemorySessions {
    policy: SessionPolicy,
    table: Mutex<SessionTable>,
}

impl MemorySessions {
    pub fn new(policy: SessionPolicy) -> Self {
        Self { policy, table: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Sessions for MemorySessions {
    async fn create(&self, user: SessionUser) -> Result<NewSession> {
        let token = new_token();
        let now = Instant::now();
        let expires = now + self.policy.ttl;
        let mut table = self.lock();
        if table.by_token.len() >= table.sweep_at.max(FIRST_SWEEP) {
            table.sweep(now);
        }
        let SessionTable { by_token, by_user, .. } = &mut *table;
        let tokens = by_user.entry(user.user_id).or_default();
        // Expired tokens do not count against the cap, and are forgotten.
        tokens.retain(|t| match by_token.get(t) {
            Some((_, exp)) if *exp > now => true,
            _ => {
                by_token.remove(t);
                false
            }
        });
        let mut revoked = Vec::new();
        while tokens.len() >= self.policy.max_devices.max(1) {
            if let Some(old) = tokens.pop_front() {
                by_token.remove(&old);
                revoked.push(old);
            }
        }
        tokens.push_back(token.clone());
        by_token.insert(token.clone(), (user, expires));
        Ok(NewSession { token, revoked })
    }

    async fn get(&self, token: &str) -> Result<Option<SessionUser>> {
        let table = self.lock();
        Ok(table.by_token.get(token).filter(|(_, exp)| *exp > Instant::now()).map(|(u, _)| u.clone()))
    }

    async fn revoke(&self, token: &str) -> Result<Option<SessionUser>> {
        let mut table = self.lock();
        let Some((user, expires)) = table.by_token.remove(token) else {
            return Ok(None);
        };
        if let Some(tokens) = table.by_user.get_mut(&user.user_id) {
            tokens.retain(|t| t != token);
            if tokens.is_empty() {
                table.by_user.remove(&user.user_id);
            }
        }
        Ok((expires > Instant::now()).then_some(user))
    }

    async fn active(&self) -> Result<u64> {
        let now = Instant::now();
        Ok(self.lock().by_token.values().filter(|(_, expires)| *expires > now).count() as u64)
    }
}

impl MemorySessions {
    /// Sessions held in memory, expired or not.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().by_token.len()
    }
}

/// A connection: its node and its id there.
type Conn = (String, u64);

#[derive(Debug, Default)]
struct Member {
    name: String,
    connections: HashSet<Conn>,
}

/// Connections counted per (room or user) and server.
type Counts = HashMap<u64, HashMap<String, u32>>;

#[derive(Debug, Default)]
struct Tables {
    rooms: HashMap<u64, BTreeMap<u64, Member>>,
    /// Room → server → connections of its members there (the room's routes).
    room_nodes: Counts,
    /// User → the user's attached connections.
    attached: HashMap<u64, HashSet<Conn>>,
}

fn count_up(map: &mut Counts, key: u64, server: &str) {
    *map.entry(key).or_default().entry(server.to_owned()).or_default() += 1;
}

/// One fewer for `key` on `server`, forgetting what drops to zero.
fn count_down(map: &mut Counts, key: u64, server: &str) {
    let Some(servers) = map.get_mut(&key) else { return };
    match servers.get_mut(server) {
        Some(count) if *count > 1 => *count -= 1,
        _ => {
            servers.remove(server);
        }
    }
    if servers.is_empty() {
        map.remove(&key);
    }
}

fn sorted(servers: impl Iterator<Item = String>) -> Vec<String> {
    let mut servers: Vec<String> = servers.collect();
    servers.sort();
    servers.dedup();
    servers
}

/// Presence in process memory.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    tables: Mutex<Tables>,
    nodes: Mutex<Nodes>,
}

/// Connect nodes' leases.
#[derive(Debug, Default)]
struct Nodes {
    /// Server id → its lease.
    leases: HashMap<String, NodeEntry>,
    /// Lapsed servers whose presence is still to be removed.
    due: HashSet<String>,
}

#[derive(Debug)]
struct NodeEntry {
    boot: String,
    expires: i64,
    epoch: i64,
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tables {
    /// Forgets every connection on `server`; returns the rooms whose
    /// membership changed.
    fn drop_server(&mut self, server: &str) -> Vec<u64> {
        let Tables { rooms, room_nodes, attached } = self;
        let mut changed = Vec::new();
        for (room, members) in rooms.iter_mut() {
            let before = members.len();
            for member in members.values_mut() {
                member.connections.retain(|(s, _)| s != server);
            }
            members.retain(|_, m| !m.connections.is_empty());
            if members.len() != before {
                changed.push(*room);
            }
        }
        rooms.retain(|_, m| !m.is_empty());
        room_nodes.retain(|_, servers| {
            servers.remove(server);
            !servers.is_empty()
        });
        attached.retain(|_, conns| {
            conns.retain(|(s, _)| s != server);
            !conns.is_empty()
        });
        changed.sort_unstable();
        changed
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, room: u64, user: &SessionUser, server: &str, conn: u64) -> Result<bool> {
        let mut tables = self.lock();
        let members = tables.rooms.entry(room).or_default();
        let new = !members.contains_key(&user.user_id);
        let member = members.entry(user.user_id).or_default();
        member.name.clone_from(&user.user_name);
        if member.connections.insert((server.to_owned(), conn)) {
            count_up(&mut tables.room_nodes, room, server);
        }
        Ok(new)
    }

    async fn leave(&self, room: u64, user_id: u64, server: &str, conn: u64) -> Result<bool> {
        let mut tables = self.lock();
        let Tables { rooms, room_nodes, .. } = &mut *tables;
        let Some(members) = rooms.get_mut(&room) else { return Ok(false) };
        let Some(member) = members.get_mut(&user_id) else { return Ok(false) };
        if !member.connections.remove(&(server.to_owned(), conn)) {
            return Ok(false);
        }
        count_down(room_nodes, room, server);
        let gone = member.connections.is_empty();
        if gone {
            members.remove(&user_id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
        Ok(gone)
    }

    async fn count(&self, room: u64) -> Result<u64> {
        Ok(self.lock().rooms.get(&room).map_or(0, |m| m.len() as u64))
    }

    async fn members(&self, room: u64, cap: usize) -> Result<Vec<(u64, String)>> {
        let tables = self.lock();
        Ok(tables
            .rooms
            .get(&room)
            .map(|m| m.iter().take(cap).map(|(id, member)| (*id, member.name.clone())).collect())
            .unwrap_or_default())
    }

    async fn drop_server(&self, server: &str) -> Result<Vec<u64>> {
        let mut nodes = self.nodes();
        nodes.leases.remove(server);
        nodes.due.remove(server);
        Ok(self.lock().drop_server(server))
    }

    async fn renew_node(&self, server: &str, boot_id: &str, expires_unix_ms: i64) -> Result<NodeLease> {
        let mut nodes = self.nodes();
        match nodes.leases.get_mut(server) {
            Some(lease) if lease.boot != boot_id => Ok(NodeLease::Restarted),
            Some(lease) => {
                lease.expires = expires_unix_ms;
                Ok(NodeLease::Held { epoch: lease.epoch })
            }
            None => {
                let lease = NodeEntry { boot: boot_id.to_owned(), expires: expires_unix_ms, epoch: expires_unix_ms };
                nodes.leases.insert(server.to_owned(), lease);
                Ok(NodeLease::Held { epoch: expires_unix_ms })
            }
        }
    }

    async fn take_lapsed_nodes(&self, now_unix_ms: i64) -> Result<Vec<String>> {
        let mut nodes = self.nodes();
        let Nodes { leases, due } = &mut *nodes;
        leases.retain(|server, lease| {
            let lapsed = lease.expires < now_unix_ms;
            if lapsed {
                due.insert(server.clone());
            }
            !lapsed
        });
        let mut due: Vec<String> = due.iter().cloned().collect();
        due.sort();
        Ok(due)
    }

    async fn reap_node(&self, server: &str) -> Result<Vec<u64>> {
        let mut nodes = self.nodes();
        nodes.due.remove(server);
        if nodes.leases.contains_key(server) {
            return Ok(Vec::new()); // back before it was reaped
        }
        Ok(self.lock().drop_server(server))
    }

    async fn attach(&self, user_id: u64, server: &str, conn: u64, cap: usize) -> Result<bool> {
        let mut tables = self.lock();
        let conns = tables.attached.entry(user_id).or_default();
        let key = (server.to_owned(), conn);
        if cap > 0 && conns.len() >= cap && !conns.contains(&key) {
            return Ok(false);
        }
        conns.insert(key);
        Ok(true)
    }

    async fn detach(&self, user_id: u64, server: &str, conn: u64) -> Result<()> {
        let mut tables = self.lock();
        if let Some(conns) = tables.attached.get_mut(&user_id) {
            conns.remove(&(server.to_owned(), conn));
            if conns.is_empty() {
                tables.attached.remove(&user_id);
            }
        }
        Ok(())
    }

    async fn routes(&self, users: &[u64], rooms: &[u64]) -> Result<Routes> {
        let tables = self.lock();
        let users = users
            .iter()
            .filter_map(|user| Some((*user, sorted(tables.attached.get(user)?.iter().map(|(s, _)| s.clone())))))
            .collect();
        let rooms = rooms
            .iter()
            .filter_map(|room| Some((*room, sorted(tables.room_nodes.get(room)?.keys().cloned()))))
            .collect();
        Ok(Routes { users, rooms })
    }
}

type Claimed = (u64, u32, Instant);

/// Most client message ids remembered; past it the oldest are forgotten early.
const MAX_CLIENT_MSG_IDS: usize = 1_000_000;

/// Client message ids in process memory, forgotten after `ttl`.
#[derive(Debug)]
pub struct MemoryClientMsgIds {
    ttl: Duration,
    ids: Mutex<ClaimedIds>,
}

/// The claims, and their keys in the order they were first seen, so expiry
/// pops from the front (a whole-map sweep per claim made admission quadratic
/// once many ids were live: 66 % of a standalone node's CPU at 4,500 msg/s).
#[derive(Debug, Default)]
struct ClaimedIds {
    /// (user, client message id) → (message id, fingerprint, first seen).
    by_key: HashMap<(u64, String), Claimed>,
    order: std::collections::VecDeque<(Instant, (u64, String))>,
}

impl ClaimedIds {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ttl && self.by_key.len() <= MAX_CLIENT_MSG_IDS {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.by_key.get(&key).is_some_and(|claim| claim.2 == at)
            {
                self.by_key.remove(&key);
            }
        }
    }
}

impl MemoryClientMsgIds {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, ids: Mutex::default() }
    }
}

#[async_trait]
impl crate::ClientMsgIds for MemoryClientMsgIds {
    async fn claim(&self, user_id: u64, client_msg_id: &str, msg_id: u64, fingerprint: u32) -> Result<crate::Claim> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ids.expire(now, self.ttl);
        let key = (user_id, client_msg_id.to_owned());
        match ids.by_key.get(&key) {
            Some((first, print, at)) if now.duration_since(*at) < self.ttl => {
                Ok(if *print == fingerprint { crate::Claim::Retry(*first) } else { crate::Claim::Conflict })
            }
            _ => {
                ids.order.push_back((now, key.clone()));
                ids.by_key.insert(key, (msg_id, fingerprint, now));
                Ok(crate::Claim::New)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_lives_its_lifetime_and_not_a_moment_longer() {
        let day = Duration::from_secs(24 * 3600);
        let sessions = MemorySessions::new(SessionPolicy { ttl: day, max_devices: 8 });
        let user = SessionUser { user_id: 1, user_name: "ann".into() };
        let token = sessions.create(user.clone()).await.expect("create").token;
        tokio::time::advance(day - Duration::from_secs(1)).await;
        assert_eq!(sessions.get(&token).await.expect("get"), Some(user));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(sessions.get(&token).await.expect("get"), None, "expired");
        assert_eq!(sessions.revoke(&token).await.expect("revoke"), None, "an expired session is not live");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_message_id_is_remembered_for_its_window_only() {
        use crate::ClientMsgIds as _;
        let ids = MemoryClientMsgIds::new(Duration::from_secs(900));
        assert_eq!(ids.claim(1, "c1", 100, 7).await.expect("claim"), crate::Claim::New);
        tokio::time::advance(Duration::from_secs(899)).await;
        assert_eq!(ids.claim(1, "c1", 101, 7).await.expect("claim"), crate::Claim::Retry(100), "a retry");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(ids.claim(1, "c1", 102, 7).await.expect("claim"), crate::Claim::New, "forgotten after the window");
    }

    #[tokio::test]
    async fn expired_sessions_are_forgotten_not_kept_forever() {
        // Sessions that expire at once: memory must stay bounded however many
        // logins there are.
        let sessions = MemorySessions::new(SessionPolicy { ttl: Duration::ZERO, max_devices: 8 });
        for id in 0..20_000 {
            let user = SessionUser { user_id: id % 5_000, user_name: format!("u{id}") };
            sessions.create(user).await.expect("create");
        }
        assert!(sessions.held() <= 2 * FIRST_SWEEP, "{} sessions held", sessions.held());
        assert!(sessions.lock().by_user.len() <= 2 * FIRST_SWEEP);

        // Live sessions are never swept.
        let lasting = MemorySessions::new(SessionPolicy { ttl: Duration::from_secs(3600), max_devices: 8 });
        let mut tokens = Vec::new();
        for id in 0..3_000 {
            tokens
                .push(lasting.create(SessionUser { user_id: id, user_name: format!("u{id}") }).await.expect("create"));
        }
        for new in &tokens {
            assert!(lasting.get(&new.token).await.expect("get").is_some());
        }
    }
}
