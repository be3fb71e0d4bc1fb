//! Who is logged in and who is online where.
//!
//! - [`Sessions`]: login tokens. A token is 256 random bits, base64url with padding
//!   (44 characters, gochat's shape), valid for a fixed time. A user may hold
//!   several (one per device) up to a cap; beyond it the oldest is revoked.
//!   gochat's one-session-per-user rule is the cap of one.
//! - [`Presence`]: room membership of live connections, counted per user and per
//!   connect node, so two tabs count once and a node's departure removes exactly
//!   its own connections. It also knows the **routes**: which connect nodes hold
//!   a user's connections and a room's members, so a push goes only to the nodes
//!   that can deliver it instead of to every node.
//!
//! The in-process implementations in [`memory`] serve `courier standalone`, where
//! one process holds every connection; those in [`redis`] serve a cluster. The
//! tests in [`conformance`] are written once and run against both.

use std::collections::HashMap;

use async_trait::async_trait;

pub mod conformance;
pub mod memory;
pub mod redis;

/// Errors from a sessions or presence backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The user a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: u64,
    pub user_name: String,
}

/// A new login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub token: String,
    /// Tokens of the same user revoked to make room for this one.
    pub revoked: Vec<String>,
}

/// Login tokens.
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Issues a token for the user, revoking the oldest beyond the device cap.
    async fn create(&self, user: SessionUser) -> Result<NewSession>;
    /// The user of a live token; `None` for an unknown, expired or revoked one.
    async fn get(&self, token: &str) -> Result<Option<SessionUser>>;
    /// For each of `tokens`, whether it is live now: one question for many
    /// tokens, so a connect node re-checks the sessions of every connection it
    /// holds in a few calls instead of one per connection. Here one
    /// [`Sessions::get`] each; a backend over the network answers in one round
    /// trip.
    async fn live(&self, tokens: &[String]) -> Result<Vec<bool>> {
        let mut live = Vec::with_capacity(tokens.len());
        for token in tokens {
            live.push(self.get(token).await?.is_some());
        }
        Ok(live)
    }
    /// Revokes a token; returns its user if it was live.
    async fn revoke(&self, token: &str) -> Result<Option<SessionUser>>;
    /// Sessions live now: issued, not expired, not revoked.
    async fn active(&self) -> Result<u64>;
}

/// Membership of live connections in rooms, and the routes to them.
///
/// A connection is named by its node (`server`) and an id unique on that node
/// (`conn`), so every update is idempotent: a retried join, leave, attach or
/// detach (a reply lost on the way) never counts a connection twice or takes
/// away another one.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connection `conn` of `user` on `server` joins `room`; true if the user was
    /// not in the room before.
    async fn join(&self, room: u64, user: &SessionUser, server: &str, conn: u64) -> Result<bool>;
    /// Connection `conn` leaves `room`; true if the user has no connection left
    /// in the room (false also when the connection was not in it).
    async fn leave(&self, room: u64, user_id: u64, server: &str, conn: u64) -> Result<bool>;
    /// Distinct users online in the room.
    async fn count(&self, room: u64) -> Result<u64>;
    /// Up to `cap` members of the room (id, name), lowest ids first.
    async fn members(&self, room: u64, cap: usize) -> Result<Vec<(u64, String)>>;
    /// Forgets every connection on `server` and its lease (a node that
    /// restarted under the same id); returns the rooms whose membership changed.
    async fn drop_server(&self, server: &str) -> Result<Vec<u64>>;

    /// Renews boot `boot_id` of `server`'s lease until `expires_unix_ms`. A
    /// server with no lease (new, or reaped or lost while it was away) is
    /// leased afresh under a new epoch; a lease held by another boot of the
    /// server is left alone (see [`NodeLease::Restarted`]).
    async fn renew_node(&self, server: &str, boot_id: &str, expires_unix_ms: i64) -> Result<NodeLease>;

    /// Servers whose lease ended before `now_unix_ms`, with those whose reap
    /// has not finished yet: their leases are forgotten, and each stays due
    /// until [`Presence::reap_node`] finishes it (so a reap that failed half
    /// way is tried again).
    async fn take_lapsed_nodes(&self, now_unix_ms: i64) -> Result<Vec<String>>;

    /// Removes a lapsed server's connections, unless the server leases again
    /// meanwhile: a node that was only away keeps its entries and registers
    /// what it holds under its new epoch (what was removed before it came back
    /// is among that). Either way the server is no longer due. Returns the rooms
    /// whose membership changed.
    async fn reap_node(&self, server: &str) -> Result<Vec<u64>>;

    /// Connection `conn` of `user_id` opened on `server`, whatever rooms it
    /// joins: the user's inbox pushes are routed there. With `cap` > 0, a user
    /// already holding `cap` connections (on every node together) is refused:
    /// false, and nothing is registered. Attaching a connection again is true.
    async fn attach(&self, user_id: u64, server: &str, conn: u64, cap: usize) -> Result<bool>;
    /// Connection `conn` closed; harmless if it was not attached.
    async fn detach(&self, user_id: u64, server: &str, conn: u64) -> Result<()>;
    /// The servers holding a connection of each user in `users` and of a member
    /// of each room in `rooms`.
    async fn routes(&self, users: &[u64], rooms: &[u64]) -> Result<Routes>;
}

/// Where pushes must go: the servers per user and per room. A user or room
/// nobody holds is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub users: HashMap<u64, Vec<String>>,
    pub rooms: HashMap<u64, Vec<String>>,
}

impl Routes {
    /// The servers holding `user_id`'s connections, sorted.
    pub fn user(&self, user_id: u64) -> &[String] {
        self.users.get(&user_id).map_or(&[], Vec::as_slice)
    }

    /// The servers holding connections of `room`'s members, sorted.
    pub fn room(&self, room: u64) -> &[String] {
        self.rooms.get(&room).map_or(&[], Vec::as_slice)
    }
}

/// What renewing a connect node's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLease {
    /// The lease is held until the expiry asked for. `epoch` names the lease
    /// since it was last granted afresh: it changes whenever presence may have
    /// lost what the node holds (the node was reaped, or the backend came back
    /// empty), and then the node must register its connections again.
    Held { epoch: i64 },
    /// Another boot of the server holds the lease: the server restarted, and
    /// what its earlier boot registered must be dropped
    /// ([`Presence::drop_server`]) before this boot is leased. Nothing changed.
    Restarted,
}

/// What a client message id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use: send under the proposed message id.
    New,
    /// A retry of the same message: send again under its first message id.
    Retry(u64),
    /// The id was used for a different message (another body or recipient).
    Conflict,
}

/// Remembers which message id a user's client message id was given, so a retried
/// send gets the same id (and logic re-sends the same record: the store keeps one
/// copy per message id, so a retry never makes a second message). A fingerprint of
/// the message tells a retry from a different message that reuses the id, which
/// is refused rather than swallowed.
#[async_trait]
pub trait ClientMsgIds: Send + Sync + 'static {
    /// Claims (`user_id`, `client_msg_id`) for `msg_id` with the message's
    /// `fingerprint`, or reports what it was claimed for (within the TTL).
    async fn claim(&self, user_id: u64, client_msg_id: &str, msg_id: u64, fingerprint: u32) -> Result<Claim>;

    /// [`ClientMsgIds::claim`] for `user`, only while `token` is a live
    /// session of that user; `None` if it is not (ended, expired, revoked).
    /// Here two steps, the session read from `sessions`; a backend that
    /// keeps sessions beside its claims does both in one (Redis: one round
    /// trip, on the send path of every message with a client id).
    async fn claim_in_session(
        &self,
        sessions: &dyn Sessions,
        token: &str,
        user: &SessionUser,
        client_msg_id: &str,
        msg_id: u64,
        fingerprint: u32,
    ) -> Result<Option<Claim>> {
        match sessions.get(token).await? {
            Some(live) if live == *user => {
                Ok(Some(self.claim(user.user_id, client_msg_id, msg_id, fingerprint).await?))
            }
            _ => Ok(None),
        }
    }
}

/// A snowflake worker id held by one logic instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLease {
    pub worker_id: u32,
    /// The last millisecond an earlier holder of this id recorded using; ids must
    /// start after it.
    pub not_before_unix_ms: u64,
    /// The backend held no record of earlier leases (it is new, or came back
    /// empty): a live instance may still use this id until its next renewal
    /// finds its lease gone, so the id must not be used before that.
    pub fresh_registry: bool,
}

/// Leases of snowflake worker ids, so no two live logic instances share one.
#[async_trait]
pub trait WorkerIds: Send + Sync + 'static {
    /// Takes a free worker id for `holder`.
    async fn acquire(&self, holder: &str) -> Result<WorkerLease>;
    /// Extends `holder`'s lease and records the last millisecond used; false if
    /// the lease was lost (expired and taken by someone else).
    async fn renew(&self, worker_id: u32, holder: &str, last_unix_ms: u64) -> Result<bool>;
}

/// A fresh token: 32 random bytes, base64url with padding.
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}
