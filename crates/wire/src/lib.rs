//! gochat's client-facing wire formats, shared by every tier that speaks to clients.
//!
//! - [`frame`]: the JSON bodies of WebSocket text frames and TCP payloads, both the
//!   frames gochat's clients already understand (ops 2–6) and Courier's extensions
//!   (ops 7–12), parsed leniently where gochat's clients are loose (ids as strings
//!   or numbers) and strictly where safety needs it (message size). A stored
//!   message's frame is rendered here from its `courier_model` message and
//!   position ([`frame::MessageFrame::new`]), whichever tier sends it.
//! - [`request`]: a client frame read once into what it asks for ([`request::Auth`],
//!   [`request::ClientRequest`]), its fields validated.
//! - [`tcp`]: the `v1` length-prefixed TCP framing, as a `tokio_util` codec so a
//!   malformed length is an error for that connection only.
//! - [`time`]: gochat's `createTime` text.
//! - [`upgrade`]: the WebSocket opening handshake, both ends, leaving each
//!   connection only the read buffer it is configured with.

pub mod frame;
pub mod request;
pub mod tcp;
pub mod time;
pub mod upgrade;

/// The largest message body accepted on any path, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 4_000;
