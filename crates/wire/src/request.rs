//! Client frames parsed once into what they ask for.
//!
//! [`ClientFrame`] is the loose JSON shape every client frame shares; a
//! gateway should not re-check in each handler that a join names a room. So a
//! frame is read here, once, into an [`Auth`] (a connection's first frame) or a
//! [`ClientRequest`] (every later one), each variant holding its fields already
//! validated; a frame that asks for nothing Courier does is an error with the
//! text the client is shown.

use crate::frame::{ClientFrame, Since, op};

/// A connection's first frame: who it is and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub token: String,
    /// The room to join, never 0.
    pub room: u64,
    /// Resume the room after this position (missed messages first).
    pub since: Option<Since>,
    /// Resume the user's inbox after this position.
    pub inbox_since: Option<Since>,
}

impl Auth {
    /// gochat's WebSocket auth message: `{"authToken", "roomId"}`, no op.
    pub fn from_websocket(text: &[u8]) -> Result<Self, String> {
        let frame = ClientFrame::parse(text).map_err(|e| e.to_string())?;
        Self::from_frame(frame).ok_or_else(|| "the auth message needs authToken and a non-zero roomId".to_owned())
    }

    /// gochat's TCP protocol: the first frame is op 6 with a token and a room.
    pub fn from_tcp(text: &[u8]) -> Result<Self, String> {
        let frame = ClientFrame::parse(text).map_err(|e| e.to_string())?;
        if frame.op != Some(op::TCP_JOIN) {
            return Err("the first frame must be op 6 (authenticate and join)".to_owned());
        }
        Self::from_frame(frame).ok_or_else(|| "op 6 needs authToken and a non-zero roomId".to_owned())
    }

    fn from_frame(frame: ClientFrame) -> Option<Self> {
        let token = frame.auth_token.filter(|t| !t.is_empty())?;
        let room = frame.room_id.filter(|r| *r != 0)?;
        Some(Self { token, room, since: frame.since, inbox_since: frame.inbox_since })
    }
}

/// What a frame after the first asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// gochat's TCP room send (op 3): to the room named, or the connection's
    /// first room. The sender is the session's user, whatever the frame says.
    RoomSend { room: Option<u64>, body: String },
    /// Courier's send with an ack (op 7): to a user when `to_user` is set (the
    /// room then only says where the sender was), else to `room` (0: none,
    /// which logic refuses with a reason).
    Send { room: u64, to_user: Option<u64>, body: String, client_msg_id: String },
    /// Join a room (op 10, or op 6 again on TCP), resuming after `since`.
    Join { room: u64, since: Option<Since> },
    /// Leave a room (op 11).
    Leave { room: u64 },
    /// Resume the inbox after `since` (op 12; from the start without it).
    Sync { since: Since },
}

impl ClientRequest {
    /// Reads one frame; the error is the text shown to the client.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let frame = ClientFrame::parse(text).map_err(|e| e.to_string())?;
        let room = || frame.room_id.filter(|r| *r != 0).ok_or_else(|| "roomId is required".to_owned());
        match frame.op {
            Some(op::ROOM) => Ok(Self::RoomSend { room: frame.room_id, body: frame.msg.unwrap_or_default() }),
            Some(op::SEND) => Ok(Self::Send {
                room: frame.room_id.unwrap_or(0),
                to_user: frame.to_user_id.filter(|u| *u != 0),
                body: frame.msg.unwrap_or_default(),
                client_msg_id: frame.client_msg_id.unwrap_or_default(),
            }),
            Some(op::JOIN | op::TCP_JOIN) => Ok(Self::Join { room: room()?, since: frame.since }),
            Some(op::LEAVE) => Ok(Self::Leave { room: room()? }),
            Some(op::SYNC) => Ok(Self::Sync { since: frame.since.unwrap_or(Since { epoch: String::new(), seq: 0 }) }),
            Some(other) => Err(format!("unsupported op {other}")),
            None => Err("op is required".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frames_name_a_token_and_a_room() {
        let auth = Auth::from_websocket(br#"{"authToken":"t","roomId":"3","since":{"epoch":"e","seq":4}}"#);
        let since = Some(Since { epoch: "e".into(), seq: 4 });
        assert_eq!(auth, Ok(Auth { token: "t".into(), room: 3, since, inbox_since: None }));
        for refused in [&br#"{"authToken":"t","roomId":0}"#[..], br#"{"roomId":1}"#, br#"{"authToken":"","roomId":1}"#]
        {
            let error = Auth::from_websocket(refused).expect_err("refused");
            assert!(error.contains("authToken and a non-zero roomId"), "{error}");
        }
        assert!(Auth::from_websocket(b"{").is_err_and(|e| e.contains("JSON")));
        assert!(Auth::from_tcp(br#"{"op":6,"authToken":"t","roomId":1}"#).is_ok());
        let error = Auth::from_tcp(br#"{"op":3,"authToken":"t","roomId":1}"#).expect_err("op 3 first");
        assert!(error.contains("must be op 6"), "{error}");
        assert!(Auth::from_tcp(br#"{"op":6,"roomId":1}"#).is_err_and(|e| e.contains("op 6 needs")));
    }

    #[test]
    fn each_op_becomes_its_request_with_its_fields_checked() {
        let parse = |text: &str| ClientRequest::parse(text.as_bytes());
        assert_eq!(
            parse(r#"{"op":7,"toUserId":"9","roomId":1,"msg":"hi","clientMsgId":"c"}"#),
            Ok(ClientRequest::Send { room: 1, to_user: Some(9), body: "hi".into(), client_msg_id: "c".into() })
        );
        assert_eq!(
            parse(r#"{"op":7,"toUserId":"","roomId":2,"msg":"hi"}"#),
            Ok(ClientRequest::Send { room: 2, to_user: None, body: "hi".into(), client_msg_id: String::new() })
        );
        assert_eq!(parse(r#"{"op":3,"msg":"yo"}"#), Ok(ClientRequest::RoomSend { room: None, body: "yo".into() }));
        assert_eq!(parse(r#"{"op":10,"roomId":5}"#), Ok(ClientRequest::Join { room: 5, since: None }));
        assert_eq!(parse(r#"{"op":6,"roomId":5}"#), Ok(ClientRequest::Join { room: 5, since: None }));
        assert_eq!(parse(r#"{"op":11,"roomId":5}"#), Ok(ClientRequest::Leave { room: 5 }));
        assert_eq!(parse(r#"{"op":12}"#), Ok(ClientRequest::Sync { since: Since { epoch: String::new(), seq: 0 } }));
        for (text, error) in [
            (r#"{"op":10}"#, "roomId is required"),
            (r#"{"op":11,"roomId":0}"#, "roomId is required"),
            (r#"{"op":99}"#, "unsupported op 99"),
            (r#"{"msg":"no op"}"#, "op is required"),
        ] {
            assert_eq!(parse(text), Err(error.to_owned()), "{text}");
        }
    }
}
