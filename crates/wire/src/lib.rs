//! gochat's client-facing wire formats, shared by every tier that speaks to clients.
//!
//! - [`frame`]: the JSON bodies of WebSocket text frames and TCP payloads, both the
//!   frames gochat's clients already understand (ops 2–6) and Courier's extensions
//!   (ops 7–12), parsed leniently where gochat's clients are loose (ids as strings
//!   or numbers) and strictly where safety needs it (message size).
//! - [`tcp`]: the `v1` length-prefixed TCP framing, as a `tokio_util` codec so a
//!   malformed length is an error for that connection only.
//! - [`time`]: gochat's `createTime` text.

pub mod frame;
pub mod tcp;
pub mod time;

/// The largest message body accepted on any path, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 4_000;

/// The stream name of a room.
pub fn room_stream(room_id: u64) -> String {
    format!("room:{room_id}")
}

/// The stream name of a user's private inbox.
pub fn user_stream(user_id: u64) -> String {
    format!("user:{user_id}")
}

/// The room a stream name stands for (`room:<id>`), if it is a room's.
pub fn stream_room(stream: &str) -> Option<u64> {
    stream.strip_prefix("room:")?.parse().ok()
}

/// The user whose inbox a stream name stands for (`user:<id>`), if it is one.
pub fn stream_user(stream: &str) -> Option<u64> {
    stream.strip_prefix("user:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        assert_eq!(stream_room(&room_stream(42)), Some(42));
        assert_eq!(stream_user(&user_stream(7)), Some(7));
        assert_eq!(stream_room(&user_stream(7)), None);
        assert_eq!(stream_user("user:x"), None);
    }
}
