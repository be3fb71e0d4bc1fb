//! The pushes of a persisted message: op 3 to its room, or op 2 to each inbox
//! it was appended to (the recipient's, and the sender's copy for their other
//! devices). Task builds them for live pushes; the frame itself is rendered by
//! `courier_wire` from the message and its position, as for history reads, so a
//! message looks the same whether it arrives live or is recovered.

use courier_proto::connect::{Delivery, delivery::Target};
use courier_store::{Message, Position, StreamId};
use courier_wire::frame::{MessageFrame, to_text};

/// The pushes of one persisted message, one per stream it was appended to.
pub fn frames_for(message: &Message, positions: &[Position]) -> Vec<Delivery> {
    positions
        .iter()
        .map(|position| Delivery {
            target: Some(match position.stream {
                StreamId::Room(room) => Target::RoomId(room),
                StreamId::Inbox(user) => Target::UserId(user),
            }),
            stream: position.stream.to_string(),
            seq: position.seq,
            body: to_text(&MessageFrame::new(message, position)),
            admitted_us: message.admitted_us,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_store::MessageKind;

    #[test]
    fn private_message_frames_go_to_each_inbox_with_its_seq() {
        let message = Message {
            msg_id: 42,
            kind: MessageKind::Private,
            room_id: 1,
            from_user_id: 7,
            from_user_name: "ann".into(),
            to_user_id: 9,
            to_user_name: "bob".into(),
            body: "hi".into(),
            admitted_us: 0,
            client_msg_id: String::new(),
            inboxes: courier_model::Inboxes::Recipient,
        };
        let positions = vec![
            Position { stream: StreamId::Inbox(9), seq: 3, epoch: "e9".into() },
            Position { stream: StreamId::Inbox(7), seq: 5, epoch: "e7".into() },
        ];
        let deliveries = frames_for(&message, &positions);
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[0].target, Some(Target::UserId(9)));
        assert_eq!(deliveries[1].target, Some(Target::UserId(7)));
        let frame = courier_wire::frame::parse_server_frame(&deliveries[1].body).expect("valid frame");
        assert_eq!((frame.op, frame.seq, frame.stream.as_str(), frame.msg_id.as_str()), (2, 5, "user:7", "42"));
        assert_eq!(frame.create_time, "1970-01-01 00:00:00");
    }
}
