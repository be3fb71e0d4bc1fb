//! Sessions and presence in Redis, shared by every logic instance of a cluster.
//!
//! Keys (all prefixed `courier:`):
//! - `session:<token>` → `<userId>|<userName>`, with the session's TTL.
//! - `user-sessions:<userId>` → sorted set of the user's tokens by creation time,
//!   for the device cap.
//! - `room:<room>:users` → hash userId → live connections in the room (all nodes).
//! - `room:<room>:names` → hash userId → user name.
//! - `route:room:<room>` → hash serverId → connections of the room's members there.
//! - `route:user:<userId>` → hash serverId → the user's connections there.
//! - `server:<serverId>` → hash of that node's connections: `<room>|<userId>|<conn>`
//!   (membership) and `@<userId>|<conn>` (attachment), so an update repeated
//!   is a no-op and a node's departure removes exactly its own connections and
//!   routes.
//! - `node-leases` → sorted set of connect nodes by lease expiry (unix ms);
//!   `node-boots` and `node-epochs` → hashes serverId → the boot holding the
//!   lease and the lease's epoch; `node-due` → set of lapsed nodes whose
//!   entries are still to be removed.
//!
//! Every compound update is a Lua script (in `src/lua/`, one file each), so
//! concurrent joins and leaves from many nodes never leave the counts
//! inconsistent. A departed node's entries are removed in slices of
//! [`DROP_SLICE`] entries, one script call each, so dropping a node of 15,000
//! connections never blocks Redis for everyone else.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::memory::SessionPolicy;
use crate::{Error, NewSession, NodeLease, Presence, Result, Routes, SessionUser, Sessions, new_token};

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(e.to_string())
}

/// Commands in flight on one process's Redis connection at most; the rest
/// wait their turn (see [`connect`]).
pub const IN_FLIGHT: usize = 256;

/// How long a command in flight may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects a connection manager (it reconnects by itself after a failure).
///
/// Every caller in the process shares its one multiplexed connection, and
/// the response timeout runs from when a command enters its pipeline. Without
/// a limit, a burst (every connection of a big node closing at once) puts tens
/// of thousands of commands in the pipeline: those at the back time out before
/// Redis reaches them, their callers retry, and the connection does nothing
/// useful again. So at most [`IN_FLIGHT`] commands are in the pipeline and the
/// others queue before it, their wait not counted against the timeout (the
/// caller's own deadline still bounds it).
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_concurrency_limit(IN_FLIGHT)
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_connection_manager_with_config(config).await.map_err(unavailable)
}

/// Sessions in Redis.
#[derive(Clone)]
pub struct RedisSessions {
    redis: ConnectionManager,
    policy: SessionPolicy,
    prefix: String,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// `prefix` namespaces the keys (tests use a fresh one each).
    pub fn new(redis: ConnectionManager, policy: SessionPolicy, prefix: &str) -> Self {
        Self { redis, policy, prefix: prefix.to_owned() }
    }
}

/// Stores a token, trims the user's tokens to the cap, returns the revoked ones.
const CREATE_SESSION: &str = include_str!("lua/create_session.lua");

/// A session's value: `<userId>|<userName>`.
fn session_value(user: &SessionUser) -> String {
    format!("{}|{}", user.user_id, user.user_name)
}

fn parse_session(value: &str) -> Option<SessionUser> {
    let (id, name) = value.split_once('|')?;
    Some(SessionUser { user_id: id.parse().ok()?, user_name: name.to_owned() })
}

#[async_trait]
impl Sessions for RedisSessions {
    async fn create(&self, user: SessionUser) -> Result<NewSession> {
        let token = new_token();
        let ttl = self.policy.ttl.max(Duration::from_millis(1)).as_millis() as i64;
        let revoked: Vec<String> = Script::new(CREATE_SESSION)
            .key(format!("{}session:{token}", self.prefix))
            .key(format!("{}user-sessions:{}", self.prefix, user.user_id))
            .key(self.all_sessions())
            .arg(&token)
            .arg(session_value(&user))
            .arg(ttl)
            .arg(courier_ids::now_unix_ms())
            .arg(self.policy.max_devices.max(1))
            .arg(&self.prefix)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(NewSession { token, revoked })
    }

    async fn get(&self, token: &str) -> Result<Option<SessionUser>> {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{}session:{token}", self.prefix))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(value.as_deref().and_then(parse_session))
    }

    async fn live(&self, tokens: &[String]) -> Result<Vec<bool>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for token in tokens {
            pipe.cmd("EXISTS").arg(format!("{}session:{token}", self.prefix));
        }
        let found: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(found.into_iter().map(|n| n > 0).collect())
    }

    async fn revoke(&self, token: &str) -> Result<Option<SessionUser>> {
        let value: Option<String> = redis::cmd("GETDEL")
            .arg(format!("{}session:{token}", self.prefix))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let user = value.as_deref().and_then(parse_session);
        if let Some(user) = &user {
            let _: (i64, i64) = redis::pipe()
                .cmd("ZREM")
                .arg(format!("{}user-sessions:{}", self.prefix, user.user_id))
                .arg(token)
                .cmd("ZREM")
                .arg(self.all_sessions())
                .arg(token)
                .query_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
        }
        Ok(user)
    }

    async fn active(&self) -> Result<u64> {
        // Tokens expire by TTL alone; their entries here go when counted.
        let (_, count): (i64, u64) = redis::pipe()
            .atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.all_sessions())
            .arg("-inf")
            .arg(courier_ids::now_unix_ms())
            .cmd("ZCARD")
            .arg(self.all_sessions())
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(count)
    }
}

impl RedisSessions {
    /// Every live token, scored by its expiry (ms).
    fn all_sessions(&self) -> String {
        format!("{}sessions-by-expiry", self.prefix)
    }
}

/// Presence in Redis.
#[derive(Clone)]
pub struct RedisPresence {
    redis: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisPresence {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self { redis, prefix: prefix.to_owned() }
    }

    /// Runs ATTACH or DETACH for connection `conn` of `user_id` on `server`
    /// (`cap`: see [`Presence::attach`]); returns the script's answer.
    async fn route_script(&self, script: &str, user_id: u64, server: &str, conn: u64, cap: usize) -> Result<i64> {
        Script::new(script)
            .key(self.server_key(server))
            .key(format!("{}route:user:{user_id}", self.prefix))
            .arg(format!("@{user_id}|{conn}"))
            .arg(server)
            .arg(cap)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }

    fn server_key(&self, server: &str) -> String {
        format!("{}server:{server}", self.prefix)
    }

    fn room_keys(&self, room: u64) -> (String, String) {
        (format!("{}room:{room}:users", self.prefix), format!("{}room:{room}:names", self.prefix))
    }

    /// The node lease keys: leases, boots, epochs, due reaps.
    fn node_keys(&self) -> [String; 4] {
        ["node-leases", "node-boots", "node-epochs", "node-due"].map(|key| format!("{}{key}", self.prefix))
    }

    /// Removes `server`'s entries slice by slice; with `only_lapsed`, stops as
    /// soon as the server holds a lease again.
    async fn drop_entries(&self, server: &str, only_lapsed: bool) -> Result<Vec<u64>> {
        let leases = &self.node_keys()[0];
        let mut rooms = std::collections::BTreeSet::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, changed): (String, Vec<String>) = Script::new(DROP_SERVER_SLICE)
                .key(self.server_key(server))
                .key(leases)
                .arg(&self.prefix)
                .arg(server)
                .arg(DROP_SLICE)
                .arg(&cursor)
                .arg(if only_lapsed { "lapsed" } else { "always" })
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            rooms.extend(changed.iter().filter_map(|r| r.parse::<u64>().ok()));
            cursor = next;
            if cursor == "0" {
                return Ok(rooms.into_iter().collect());
            }
        }
    }
}

/// Returns the user's connections in the room, 0 if this one was in already.
const JOIN: &str = include_str!("lua/join.lua");

/// Returns the user's connections left in the room, -1 if this one was not in.
const LEAVE: &str = include_str!("lua/leave.lua");

/// Attaches a connection unless its user holds ARGV[3] (> 0) already, summed
/// over every node's count in the user's route; 1 if attached (or was), 0 if
/// refused.
const ATTACH: &str = include_str!("lua/attach.lua");

const DETACH: &str = include_str!("lua/detach.lua");

/// Entries of a departed server removed per script call.
pub const DROP_SLICE: usize = 500;

/// Removes one HSCAN page (about ARGV[3] entries from cursor ARGV[4]) of a
/// server's entries: its connections leave their rooms and its routes go.
/// Returns {next cursor, rooms whose membership changed}; cursor "0" ends it.
/// Entries deleted behind the cursor do not upset the scan: every entry present
/// from start to end is returned once.
const DROP_SERVER_SLICE: &str = include_str!("lua/drop_server_slice.lua");

/// Moves the servers whose lease ended to the due set; returns that set.
const TAKE_LAPSED: &str = include_str!("lua/take_lapsed.lua");

/// Renews a boot's lease; `{epoch}`, or `{}` when another boot holds it.
const RENEW_NODE: &str = include_str!("lua/renew_node.lua");

/// Forgets a server's lease, boot, epoch and due reap.
const FORGET_NODE: &str = include_str!("lua/forget_node.lua");

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: u64, user: &SessionUser, server: &str, conn: u64) -> Result<bool> {
        let (users, names) = self.room_keys(room);
        let count: i64 = Script::new(JOIN)
            .key(users)
            .key(names)
            .key(self.server_key(server))
            .key(format!("{}route:room:{room}", self.prefix))
            .arg(user.user_id)
            .arg(&user.user_name)
            .arg(format!("{room}|{}|{conn}", user.user_id))
            .arg(server)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(count == 1)
    }

    async fn leave(&self, room: u64, user_id: u64, server: &str, conn: u64) -> Result<bool> {
        let (users, names) = self.room_keys(room);
        let left: i64 = Script::new(LEAVE)
            .key(users)
            .key(names)
            .key(self.server_key(server))
            .key(format!("{}route:room:{room}", self.prefix))
            .arg(user_id)
            .arg(format!("{room}|{user_id}|{conn}"))
            .arg(server)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(left == 0)
    }

    async fn count(&self, room: u64) -> Result<u64> {
        let (users, _) = self.room_keys(room);
        redis::cmd("HLEN").arg(users).query_async(&mut self.redis.clone()).await.map_err(unavailable)
    }

    async fn members(&self, room: u64, cap: usize) -> Result<Vec<(u64, String)>> {
        let (_, names) = self.room_keys(room);
        let all: Vec<(String, String)> =
            redis::cmd("HGETALL").arg(names).query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        let mut members: Vec<(u64, String)> =
            all.into_iter().filter_map(|(id, name)| Some((id.parse().ok()?, name))).collect();
        members.sort_unstable();
        members.truncate(cap);
        Ok(members)
    }

    async fn renew_node(&self, server: &str, boot_id: &str, expires_unix_ms: i64) -> Result<NodeLease> {
        let [leases, boots, epochs, _] = self.node_keys();
        let held: Vec<i64> = Script::new(RENEW_NODE)
            .key(leases)
            .key(boots)
            .key(epochs)
            .arg(server)
            .arg(boot_id)
            .arg(expires_unix_ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(match held.first() {
            Some(&epoch) => NodeLease::Held { epoch },
            None => NodeLease::Restarted,
        })
    }

    async fn take_lapsed_nodes(&self, now_unix_ms: i64) -> Result<Vec<String>> {
        let script = Script::new(TAKE_LAPSED);
        let mut invocation = script.prepare_invoke();
        for key in self.node_keys() {
            invocation.key(key);
        }
        let mut due: Vec<String> =
            invocation.arg(now_unix_ms).invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        due.sort();
        Ok(due)
    }

    async fn reap_node(&self, server: &str) -> Result<Vec<u64>> {
        let rooms = self.drop_entries(server, true).await?;
        let due = &self.node_keys()[3];
        let () =
            redis::cmd("SREM").arg(due).arg(server).query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(rooms)
    }

    async fn drop_server(&self, server: &str) -> Result<Vec<u64>> {
        let rooms = self.drop_entries(server, false).await?;
        let script = Script::new(FORGET_NODE);
        let mut invocation = script.prepare_invoke();
        for key in self.node_keys() {
            invocation.key(key);
        }
        let _: i64 = invocation.arg(server).invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(rooms)
    }

    async fn attach(&self, user_id: u64, server: &str, conn: u64, cap: usize) -> Result<bool> {
        Ok(self.route_script(ATTACH, user_id, server, conn, cap).await? == 1)
    }

    async fn detach(&self, user_id: u64, server: &str, conn: u64) -> Result<()> {
        self.route_script(DETACH, user_id, server, conn, 0).await.map(drop)
    }

    async fn routes(&self, users: &[u64], rooms: &[u64]) -> Result<Routes> {
        if users.is_empty() && rooms.is_empty() {
            return Ok(Routes::default());
        }
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HKEYS").arg(format!("{}route:user:{user}", self.prefix));
        }
        for room in rooms {
            pipe.cmd("HKEYS").arg(format!("{}route:room:{room}", self.prefix));
        }
        let answers: Vec<Vec<String>> = pipe.query_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        let mut answers = answers.into_iter();
        let mut collect = |keys: &[u64]| {
            keys.iter()
                .zip(answers.by_ref())
                .filter(|(_, servers)| !servers.is_empty())
                .map(|(key, mut servers)| {
                    servers.sort();
                    (*key, servers)
                })
                .collect()
        };
        let users = collect(users);
        let rooms = collect(rooms);
        Ok(Routes { users, rooms })
    }
}

/// Client message ids in Redis (`client-msg:<userId>:<clientMsgId>`), with a TTL.
///
/// Built on the connection and prefix [`RedisSessions`] uses (logic builds
/// both from one): [`crate::ClientMsgIds::claim_in_session`] reads the
/// session in the same script as the claim, from this Redis.
#[derive(Clone)]
pub struct RedisClientMsgIds {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisClientMsgIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClientMsgIds").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl RedisClientMsgIds {
    pub fn new(redis: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self { redis, prefix: prefix.to_owned(), ttl }
    }
}

/// Sets the key if absent and returns its value either way.
const CLAIM: &str = include_str!("lua/claim.lua");
/// The same, only while a session is live.
const CLAIM_IN_SESSION: &str = include_str!("lua/claim_in_session.lua");

/// What a claim's stored value says of a claim that proposed `proposed`.
fn claim_outcome(value: &str, proposed: &str, fingerprint: u32) -> Result<crate::Claim> {
    if value == proposed {
        return Ok(crate::Claim::New);
    }
    let corrupt = || Error::Unavailable(format!("corrupt client message id entry {value:?}"));
    let (first, print) = value.split_once(':').ok_or_else(corrupt)?;
    let first: u64 = first.parse().map_err(|_| corrupt())?;
    Ok(if print == fingerprint.to_string() { crate::Claim::Retry(first) } else { crate::Claim::Conflict })
}

#[async_trait]
impl crate::ClientMsgIds for RedisClientMsgIds {
    async fn claim(&self, user_id: u64, client_msg_id: &str, msg_id: u64, fingerprint: u32) -> Result<crate::Claim> {
        let proposed = format!("{msg_id}:{fingerprint}");
        let value: String = Script::new(CLAIM)
            .key(format!("{}client-msg:{user_id}:{client_msg_id}", self.prefix))
            .arg(&proposed)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        claim_outcome(&value, &proposed, fingerprint)
    }

    async fn claim_in_session(
        &self,
        _sessions: &dyn crate::Sessions,
        token: &str,
        user: &SessionUser,
        client_msg_id: &str,
        msg_id: u64,
        fingerprint: u32,
    ) -> Result<Option<crate::Claim>> {
        let proposed = format!("{msg_id}:{fingerprint}");
        let value: Option<String> = Script::new(CLAIM_IN_SESSION)
            .key(format!("{}session:{token}", self.prefix))
            .key(format!("{}client-msg:{}:{client_msg_id}", self.prefix, user.user_id))
            .arg(session_value(user))
            .arg(&proposed)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        value.map(|value| claim_outcome(&value, &proposed, fingerprint)).transpose()
    }
}

/// Snowflake worker-id leases in Redis: `worker:<id>` holds the holder's name with
/// a TTL, `worker-last:<id>` (no TTL) the last millisecond any holder used, and
/// `worker-registry` (no TTL) says the records are whole since Redis last
/// started empty.
#[derive(Clone)]
pub struct RedisWorkerIds {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisWorkerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisWorkerIds").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl RedisWorkerIds {
    pub fn new(redis: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self { redis, prefix: prefix.to_owned(), ttl }
    }
}

/// Takes the lowest free id; returns {id, last ms} or {-1, 0} when all are taken.
const ACQUIRE_WORKER: &str = include_str!("lua/acquire_worker.lua");

/// Extends the lease if `holder` still has it and records the last ms used.
const RENEW_WORKER: &str = include_str!("lua/renew_worker.lua");

#[async_trait]
impl crate::WorkerIds for RedisWorkerIds {
    async fn acquire(&self, holder: &str) -> Result<crate::WorkerLease> {
        let (id, last, fresh): (i64, String, i64) = Script::new(ACQUIRE_WORKER)
            .arg(&self.prefix)
            .arg(holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let worker_id = u32::try_from(id).map_err(|_| Error::Unavailable("all 1,024 worker ids are leased".into()))?;
        Ok(crate::WorkerLease { worker_id, not_before_unix_ms: last.parse().unwrap_or(0), fresh_registry: fresh == 1 })
    }

    async fn renew(&self, worker_id: u32, holder: &str, last_unix_ms: u64) -> Result<bool> {
        let renewed: i64 = Script::new(RENEW_WORKER)
            .key(format!("{}worker:{worker_id}", self.prefix))
            .key(format!("{}worker-last:{worker_id}", self.prefix))
            .arg(holder)
            .arg(self.ttl.as_millis() as u64)
            .arg(last_unix_ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(renewed == 1)
    }
}
