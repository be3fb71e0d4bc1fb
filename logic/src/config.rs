//! The logic tier's configuration: one struct, loaded once by the binary and
//! passed down, with the defaults a production deployment starts from.

use std::time::Duration;

use courier_proto::InternalAuth;

use crate::password;

/// The logic tier's configuration.
#[derive(Debug, Clone)]
pub struct LogicConfig {
    /// Snowflake worker id of this instance (0–1023), unique among live instances
    /// (leased from Redis in a cluster).
    pub worker_id: u32,
    /// The last millisecond an earlier holder of `worker_id` used; ids start after it.
    pub worker_not_before_unix_ms: u64,
    /// Topic of room traffic, keyed `room:<roomId>`.
    pub room_topic: String,
    /// Topic of private traffic, keyed `user:<recipientId>`.
    pub private_topic: String,
    /// Partitions of each topic when logic creates them.
    pub partitions: u32,
    /// Password hashing workers, each with its own argon2 memory (0: one per core).
    pub hash_concurrency: usize,
    /// argon2id cost of new password hashes.
    pub password_cost: password::PasswordCost,
    /// Most members listed in an op 5 frame.
    pub room_member_cap: usize,
    /// Shortest interval between two op 4/5 updates of one room.
    pub presence_flush_interval: Duration,
    /// A connect node silent this long loses its presence (the reaper removes its
    /// members and pushes the changed counts).
    pub node_lease: Duration,
    /// The clock node leases are read on.
    pub lease_clock: LeaseClock,
    /// Longest client message id accepted.
    pub max_client_msg_id: usize,
    /// Most messages one history request returns.
    pub history_page_limit: u32,
    /// Messages one user may send per second, over every path together (0: no
    /// limit); bursts of `send_burst` are allowed.
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// Login attempts per user name and client address per minute (0: no
    /// limit), against password guessing; bursts of `login_burst`.
    pub logins_per_minute: u32,
    pub login_burst: u32,
    /// Logins and registrations per client address per minute (0: no limit);
    /// bursts of `address_login_burst`.
    pub logins_per_minute_per_address: u32,
    pub address_login_burst: u32,
    /// Password checks waiting for a worker beyond those running; more are
    /// refused as busy.
    pub hash_queue: usize,
    /// Callers of logic's service must present it (see `courier_proto::InternalAuth`).
    pub internal_auth: InternalAuth,
    /// Long connections one user may hold over every connect node (0: no limit).
    pub max_connections_per_user: usize,
}

impl Default for LogicConfig {
    fn default() -> Self {
        Self {
            worker_id: 0,
            worker_not_before_unix_ms: 0,
            room_topic: courier_model::topics::ROOM.into(),
            private_topic: courier_model::topics::PRIVATE.into(),
            partitions: 8,
            hash_concurrency: 0,
            password_cost: password::PasswordCost::default(),
            room_member_cap: 200,
            presence_flush_interval: Duration::from_secs(1),
            node_lease: Duration::from_secs(15),
            lease_clock: LeaseClock::Wall,
            max_client_msg_id: 64,
            history_page_limit: 500,
            sends_per_second: 20,
            send_burst: 60,
            logins_per_minute: 20,
            login_burst: 10,
            logins_per_minute_per_address: 60,
            address_login_burst: 30,
            hash_queue: 64,
            internal_auth: InternalAuth::open(),
            max_connections_per_user: 20,
        }
    }
}

/// The clock connect nodes' leases are read on: the wall clock, since the
/// leases are shared through Redis by every logic instance; or, for tests, a
/// clock that starts at the wall clock and then moves with tokio's, so a
/// paused runtime can move it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseClock {
    #[default]
    Wall,
    /// `start_ms` at `at`, then moving with the runtime's clock.
    Runtime { start_ms: i64, at: tokio::time::Instant },
}

impl LeaseClock {
    /// A clock moving with the runtime's, from now.
    pub fn runtime() -> Self {
        Self::Runtime { start_ms: courier_ids::now_unix_ms(), at: tokio::time::Instant::now() }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_unix_ms(self) -> i64 {
        match self {
            Self::Wall => courier_ids::now_unix_ms(),
            Self::Runtime { start_ms, at } => start_ms.saturating_add(at.elapsed().as_millis() as i64),
        }
    }
}
