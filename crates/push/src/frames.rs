//! The frames of a persisted message: op 3 to its room, or op 2 to each inbox it
//! was appended to (the recipient's, and the sender's copy for their other
//! devices). Task builds them for live pushes and logic for history reads, so a
//! message looks the same whether it arrives live or is recovered.

use courier_proto::connect::{Delivery, delivery::Target};
use courier_store::{Appended, Message, MessageKind};
use courier_wire::frame::{MessageFrame, op, to_text};

/// The frame of `message` at `position` in one of its streams.
pub fn message_frame(message: &Message, position: &Appended) -> MessageFrame {
    MessageFrame {
        code: 0,
        msg: message.body.clone(),
        from_user_id: message.from_user_id,
        from_user_name: message.from_user_name.clone(),
        to_user_id: message.to_user_id,
        to_user_name: message.to_user_name.clone(),
        room_id: message.room_id,
        op: if message.kind == MessageKind::Room { op::ROOM } else { op::PRIVATE },
        create_time: courier_wire::time::create_time(message.admitted_ms),
        msg_id: message.msg_id.to_string(),
        stream: position.stream.clone(),
        seq: position.seq,
        epoch: position.epoch.clone(),
    }
}

/// The pushes of one persisted message, one per stream it was appended to.
pub fn frames_for(message: &Message, positions: &[Appended]) -> Vec<Delivery> {
    positions
        .iter()
        .filter_map(|position| {
            let target = match message.kind {
                MessageKind::Room => Target::RoomId(message.room_id),
                MessageKind::Private => {
                    Target::UserId(position.stream.parse::<courier_model::StreamId>().ok()?.inbox_of()?)
                }
            };
            Some(Delivery {
                target: Some(target),
                stream: position.stream.clone(),
                seq: position.seq,
                body: to_text(&message_frame(message, position)),
                admitted_ms: message.admitted_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            admitted_ms: 0,
            client_msg_id: String::new(),
        };
        let positions = vec![
            Appended { stream: "user:9".into(), seq: 3, epoch: "e9".into() },
            Appended { stream: "user:7".into(), seq: 5, epoch: "e7".into() },
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
