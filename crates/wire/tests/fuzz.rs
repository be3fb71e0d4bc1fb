//! Property tests (proptest) for the decoders that read client bytes: whatever a
//! client sends, the TCP frame decoder and the JSON frame parser answer with a
//! frame or an error, never a panic, and valid frames survive a round trip.

use bytes::BytesMut;
use courier_wire::frame::{ClientFrame, MAX_CLIENT_NUMBER};
use courier_wire::tcp::{MAX_FRAME_LEN, MAX_PAYLOAD_LEN, V1Codec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Decodes everything in `bytes`, as a connection would, until an error or a
/// need for more input.
fn decode_all(bytes: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let (frames, failed, _) = decode_all_keeping_the_buffer(bytes);
    (frames, failed)
}

/// [`decode_all`], also returning the connection's read buffer as the
/// decoder left it (its capacity is what the decoder made it reserve).
fn decode_all_keeping_the_buffer(bytes: &[u8]) -> (Vec<Vec<u8>>, bool, BytesMut) {
    let mut codec = V1Codec;
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame.to_vec()),
            Ok(None) => return (frames, false, buf),
            Err(_) => return (frames, true, buf),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_tcp_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (frames, _) = decode_all(&bytes);
        // Whatever was decoded fits in what was received.
        prop_assert!(frames.iter().map(|f| f.len() + 4).sum::<usize>() <= bytes.len());
    }

    #[test]
    fn arbitrary_headers_never_panic_or_overallocate(len in any::<i16>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = b"v1".to_vec();
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&tail);
        let (frames, failed, buf) = decode_all_keeping_the_buffer(&bytes);
        if len < 4 {
            prop_assert!(failed, "a length below 4 is an error");
            prop_assert!(frames.is_empty());
        }
        // Whatever length a header announces, the decoder makes room for one
        // frame of at most MAX_FRAME_LEN bytes, never more: a client cannot
        // make the server reserve memory by lying about a length.
        let allowed = MAX_FRAME_LEN.max(2 * bytes.len());
        prop_assert!(buf.capacity() <= allowed, "reserved {} bytes for a {}-byte header claim", buf.capacity(), len);
    }

    #[test]
    fn payloads_round_trip_through_split_reads(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        split in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for p in &payloads {
            V1Codec.encode(p.as_slice(), &mut wire).expect("fits");
        }
        let mut codec = V1Codec;
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(split) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).expect("valid stream") {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(got, payloads);
    }

    #[test]
    fn oversized_payloads_are_refused_not_truncated(extra in 1usize..100) {
        let mut wire = BytesMut::new();
        prop_assert!(V1Codec.encode(vec![0u8; MAX_PAYLOAD_LEN + extra], &mut wire).is_err());
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn arbitrary_text_never_panics_the_json_parser(text in ".{0,300}") {
        let _ = ClientFrame::parse(text.as_bytes());
    }

    #[test]
    fn json_shaped_noise_never_panics_the_parser(
        op in prop_oneof![Just("null".to_string()), any::<i64>().prop_map(|n| n.to_string()), "[a-z0-9]{0,8}".prop_map(|s| format!("{s:?}"))],
        room in prop_oneof![Just("null".to_string()), any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| format!("{f:?}")), "[0-9a-z-]{0,24}".prop_map(|s| format!("{s:?}"))],
        nested in 0usize..200,
    ) {
        let deep = "[".repeat(nested) + &"]".repeat(nested);
        let text = format!(r#"{{"op":{op},"roomId":{room},"toUserId":{room},"msg":{deep},"since":{{"seq":{room}}}}}"#);
        let _ = ClientFrame::parse(text.as_bytes());
    }

    #[test]
    fn extreme_numbers_are_parsed_in_range_or_refused(
        room in any::<u64>(),
        user in any::<u64>(),
        seq in prop_oneof![any::<u64>(), Just(u64::MAX), Just(MAX_CLIENT_NUMBER), Just(MAX_CLIENT_NUMBER + 1)],
        as_text in any::<bool>(),
    ) {
        let id = |n: u64| if as_text { format!("\"{n}\"") } else { n.to_string() };
        let text = format!(
            r#"{{"op":10,"roomId":{},"toUserId":{},"since":{{"epoch":"e","seq":{seq}}},"inboxSince":{{"seq":{seq}}}}}"#,
            id(room),
            id(user),
        );
        match ClientFrame::parse(text.as_bytes()) {
            Ok(frame) => {
                prop_assert!(room <= MAX_CLIENT_NUMBER && user <= MAX_CLIENT_NUMBER && seq <= MAX_CLIENT_NUMBER);
                prop_assert_eq!(frame.room_id, Some(room));
                prop_assert_eq!(frame.to_user_id, Some(user));
                prop_assert_eq!(frame.since.map(|s| s.seq), Some(seq));
            }
            Err(_) => prop_assert!(room > MAX_CLIENT_NUMBER || user > MAX_CLIENT_NUMBER || seq > MAX_CLIENT_NUMBER),
        }
    }
}
