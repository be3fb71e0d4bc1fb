//! JSON bodies exchanged with clients over WebSocket text frames and TCP payloads.
//!
//! Parsing is lenient in the ways gochat's clients need (ids as JSON numbers or
//! numeric strings, unknown fields ignored) and strict where it matters: a wrong
//! type is an error, never a silent zero. Encoding produces gochat's field names so
//! gochat's own clients read Courier's frames unchanged.

use std::collections::BTreeMap;

use courier_model::{Message, MessageKind, Position};
use serde::{Deserialize, Deserializer, Serialize};

/// gochat's op numbers, plus Courier's extensions (7 and up).
pub mod op {
    pub const PRIVATE: i64 = 2;
    pub const ROOM: i64 = 3;
    pub const ROOM_COUNT: i64 = 4;
    pub const ROOM_INFO: i64 = 5;
    pub const TCP_JOIN: i64 = 6;
    pub const SEND: i64 = 7;
    pub const ACK: i64 = 8;
    pub const ERROR: i64 = 9;
    pub const JOIN: i64 = 10;
    pub const LEAVE: i64 = 11;
    pub const SYNC: i64 = 12;
}

/// The largest id or seq a client may name: what the stores hold (a signed
/// 64-bit integer). Larger numbers are refused where they enter, so no tier
/// ever computes with them (`seq + 1` of `u64::MAX` would overflow).
pub const MAX_CLIENT_NUMBER: u64 = i64::MAX as u64;

/// A client's position in a stream: resume after `seq` of history `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Since {
    #[serde(default)]
    pub epoch: String,
    #[serde(default, deserialize_with = "bounded_seq")]
    pub seq: u64,
}

/// Any frame a client sends. gochat's WebSocket auth message has no `op`; its TCP
/// frames carry `op` 6 or 3; Courier's extensions use 7, 10, 11 and 12. Fields a
/// frame does not use are `None`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFrame {
    #[serde(default)]
    pub op: Option<i64>,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub room_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient_id")]
    pub to_user_id: Option<u64>,
    #[serde(default)]
    pub msg: Option<String>,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    #[serde(default)]
    pub since: Option<Since>,
    #[serde(default)]
    pub inbox_since: Option<Since>,
}

/// Why a client frame could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("frame is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientFrame {
    /// Parses one frame's JSON text.
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        Ok(serde_json::from_slice(text)?)
    }
}

/// Deserializes an id given as a JSON number or a string of digits; `null` and an
/// empty string mean absent (gochat's site sends `""` for "no recipient").
pub fn lenient_id<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let id = match Option::<Raw>::deserialize(de)? {
        None => return Ok(None),
        Some(Raw::Number(n)) => n,
        Some(Raw::Text(s)) if s.trim().is_empty() => return Ok(None),
        Some(Raw::Text(s)) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a non-negative integer id, got {s:?}")))?,
    };
    in_range("id", id).map(Some)
}

/// Deserializes a seq (a JSON number), refusing one beyond [`MAX_CLIENT_NUMBER`].
pub fn bounded_seq<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    in_range("seq", u64::deserialize(de)?)
}

/// Like [`bounded_seq`], for an optional field.
pub fn bounded_seq_opt<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(de)?.map(|seq| in_range("seq", seq)).transpose()
}

fn in_range<E: serde::de::Error>(what: &str, n: u64) -> Result<u64, E> {
    if n > MAX_CLIENT_NUMBER {
        return Err(E::custom(format!("{what} {n} is out of range (at most {MAX_CLIENT_NUMBER})")));
    }
    Ok(n)
}

/// A chat message pushed to a client: op 2 (private) or op 3 (room), gochat's fields
/// plus Courier's `msgId`, `stream`, `seq` and `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageFrame {
    pub code: i64,
    pub msg: String,
    pub from_user_id: u64,
    pub from_user_name: String,
    pub to_user_id: u64,
    pub to_user_name: String,
    pub room_id: u64,
    pub op: i64,
    pub create_time: String,
    /// The message id, as a string so JavaScript clients keep every digit.
    pub msg_id: String,
    pub stream: String,
    pub seq: u64,
    pub epoch: String,
}

impl MessageFrame {
    /// The frame of `message` at `position` in one of its streams: the same
    /// frame whether the message arrives live or is read back from history.
    pub fn new(message: &Message, position: &Position) -> Self {
        Self {
            code: 0,
            msg: message.body.clone(),
            from_user_id: message.from_user_id,
            from_user_name: message.from_user_name.clone(),
            to_user_id: message.to_user_id,
            to_user_name: message.to_user_name.clone(),
            room_id: message.room_id,
            op: match message.kind {
                MessageKind::Room => op::ROOM,
                MessageKind::Private => op::PRIVATE,
            },
            create_time: crate::time::create_time(message.admitted_ms()),
            msg_id: message.msg_id.to_string(),
            stream: position.stream.to_string(),
            seq: position.seq,
            epoch: position.epoch.clone(),
        }
    }
}

/// op 4: a room's online count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountFrame {
    pub count: u64,
    pub op: i64,
}

impl CountFrame {
    pub fn new(count: u64) -> Self {
        Self { count, op: op::ROOM_COUNT }
    }
}

/// op 5: a room's members, `userId` (as text) to user name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfoFrame {
    pub op: i64,
    pub room_id: u64,
    pub count: u64,
    pub room_user_info: BTreeMap<String, String>,
}

impl RoomInfoFrame {
    pub fn new(room_id: u64, count: u64, members: impl IntoIterator<Item = (u64, String)>) -> Self {
        Self {
            op: op::ROOM_INFO,
            room_id,
            count,
            room_user_info: members.into_iter().map(|(id, name)| (id.to_string(), name)).collect(),
        }
    }
}

/// op 8: the queue has the message sent with `clientMsgId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckFrame {
    pub op: i64,
    pub client_msg_id: String,
    pub msg_id: String,
}

impl AckFrame {
    pub fn new(client_msg_id: String, msg_id: u64) -> Self {
        Self { op: op::ACK, client_msg_id, msg_id: msg_id.to_string() }
    }
}

/// op 9: a request failed; `clientMsgId` when it answers a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    pub op: i64,
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_msg_id: Option<String>,
}

impl ErrorFrame {
    pub fn new(message: impl Into<String>, client_msg_id: Option<String>) -> Self {
        Self { op: op::ERROR, code: 1, message: message.into(), client_msg_id }
    }
}

/// Encodes a server frame as JSON text. Server frames hold only strings, integers
/// and string maps, which always serialize.
pub fn to_text<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).unwrap_or_else(|e| {
        // Unreachable for the frame types above; keep the connection informed anyway.
        format!(r#"{{"op":9,"code":1,"message":"internal encoding error: {e}"}}"#)
    })
}

/// Parses a server message frame (op 2 or 3); for clients and tests.
pub fn parse_server_frame(text: &str) -> Result<MessageFrame, ParseError> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gochat_websocket_auth_message() {
        let f = ClientFrame::parse(br#"{"authToken":"abc=","roomId":1}"#).expect("parses");
        assert_eq!(f.auth_token.as_deref(), Some("abc="));
        assert_eq!(f.room_id, Some(1));
        assert_eq!(f.op, None);
    }

    #[test]
    fn parses_gochat_tcp_frame_with_string_ids_and_extra_fields() {
        let f = ClientFrame::parse(
            br#"{"code":0,"msg":"hi","fromUserId":99,"fromUserName":"spoof","toUserId":"2",
                "toUserName":"","roomId":"1","op":3,"createTime":"","authToken":"t"}"#,
        )
        .expect("parses");
        assert_eq!((f.op, f.room_id, f.to_user_id), (Some(3), Some(1), Some(2)));
        assert_eq!(f.msg.as_deref(), Some("hi"));
    }

    #[test]
    fn empty_string_id_is_absent_and_garbage_is_an_error() {
        let f = ClientFrame::parse(br#"{"toUserId":""}"#).expect("parses");
        assert_eq!(f.to_user_id, None);
        assert!(ClientFrame::parse(br#"{"roomId":"one"}"#).is_err());
        assert!(ClientFrame::parse(br#"{"roomId":-1}"#).is_err());
        assert!(ClientFrame::parse(br#"{"msg":5}"#).is_err());
        assert!(ClientFrame::parse(b"not json").is_err());
    }

    #[test]
    fn numbers_beyond_what_the_stores_hold_are_refused() {
        let max = MAX_CLIENT_NUMBER;
        let f = ClientFrame::parse(format!(r#"{{"roomId":{max},"since":{{"seq":{max}}}}}"#).as_bytes()).expect("max");
        assert_eq!((f.room_id, f.since.map(|s| s.seq)), (Some(max), Some(max)));
        for text in [
            format!(r#"{{"roomId":{}}}"#, max + 1),
            format!(r#"{{"toUserId":"{}"}}"#, u64::MAX),
            format!(r#"{{"since":{{"seq":{}}}}}"#, u64::MAX),
            format!(r#"{{"inboxSince":{{"seq":{}}}}}"#, max + 1),
        ] {
            let error = ClientFrame::parse(text.as_bytes()).expect_err(&text).to_string();
            assert!(error.contains("out of range"), "{text}: {error}");
        }
    }

    #[test]
    fn message_frame_uses_gochat_field_names() {
        let message = Message {
            msg_id: 42,
            kind: MessageKind::Room,
            room_id: 1,
            from_user_id: 1,
            from_user_name: "a".into(),
            to_user_id: 0,
            to_user_name: String::new(),
            body: "hi".into(),
            admitted_us: 1_704_067_200_000_000,
            client_msg_id: "c1".into(),
            inboxes: courier_model::Inboxes::Recipient,
        };
        let position = Position { stream: courier_model::StreamId::Room(1), epoch: "e".into(), seq: 7 };
        let frame = MessageFrame::new(&message, &position);
        assert_eq!(
            (frame.op, frame.create_time.as_str(), frame.stream.as_str()),
            (op::ROOM, "2024-01-01 00:00:00", "room:1")
        );
        let private = Message { kind: MessageKind::Private, to_user_id: 2, ..message };
        assert_eq!(MessageFrame::new(&private, &position).op, op::PRIVATE);
        let v: serde_json::Value = serde_json::from_str(&to_text(&frame)).expect("json");
        for key in [
            "code",
            "msg",
            "fromUserId",
            "fromUserName",
            "toUserId",
            "toUserName",
            "roomId",
            "op",
            "createTime",
            "msgId",
            "stream",
            "seq",
            "epoch",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["msgId"], "42");
    }

    #[test]
    fn room_info_keys_are_text_user_ids() {
        let text = to_text(&RoomInfoFrame::new(3, 1, [(7, "demo".to_string())]));
        assert_eq!(text, r#"{"op":5,"roomId":3,"count":1,"roomUserInfo":{"7":"demo"}}"#);
    }
}
